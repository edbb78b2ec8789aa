//! AudioInputRouter: the PCM input queue between capture and pump [R1]–[R5].
//!
//! Producers (the capture thread, tests) call [`AudioInputRouter::push`] or
//! [`AudioInputRouter::push_bytes`]; the single consumer is the pump thread,
//! which calls [`AudioInputRouter::pop`]. Promises: `push` never blocks and,
//! when the queue is full, drops the incoming (newest) frame and counts it;
//! `pop` waits at most its timeout on the monotonic clock; `stats` reads
//! atomics only, so monitoring never blocks a producer.
//!
//! Latency stays bounded under clock drift [R6]: the sound card's clock
//! and the pump's differ by tens of ppm, so a faster card adds a frame to
//! the queue every few minutes. The pump feeds a [`FillGovernor`] the fill
//! it sees each tick; when even the lowest fill over a whole window stays
//! above a small high-water mark, that excess is real (not jitter) and the
//! pump trims it with [`AudioInputRouter::trim_oldest`], counted as
//! `drift_trimmed`: one frame for drift, the whole backlog at once after a
//! stalled pump (which let capture queue up to a full buffer of latency).
//! A slower card empties the queue now and then instead; the pump covers
//! that tick with one frame of grace silence [A2].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use serde::Serialize;

use crate::audio::{FrameSizeError, PcmFrame};
use crate::ratelog::LogGate;

/// Default capacity (`TOWER_PCM_BUFFER_SIZE`): 100 frames, 2.4 s.
pub const DEFAULT_CAPACITY: usize = 100;
/// The fill the queue may keep through a whole [`DRIFT_WINDOW`] before one
/// frame is trimmed: 2 frames, 48 ms.
pub const HIGH_WATER: usize = 2;
/// How long the fill must stay above [`HIGH_WATER`] before a trim. Long
/// enough to see through a device's bursty delivery; short enough that a
/// backlog (after a stall) is gone within seconds.
pub const DRIFT_WINDOW: Duration = Duration::from_secs(2);

/// Decides when the queue holds frames it does not need [R6]. Pure: the
/// pump passes the fill and the time.
#[derive(Debug, Clone)]
pub struct FillGovernor {
    window: Duration,
    high_water: usize,
    window_start: Option<Instant>,
    lowest: usize,
}

impl FillGovernor {
    pub fn new(window: Duration, high_water: usize) -> Self {
        FillGovernor {
            window,
            high_water,
            window_start: None,
            lowest: usize::MAX,
        }
    }

    /// The fill the queue may keep through a window (the input's choice,
    /// see [`AudioInputRouter::set_high_water`]).
    pub fn set_high_water(&mut self, frames: usize) {
        self.high_water = frames;
    }

    /// Records the `fill` seen before a pop at `now`; returns how many
    /// frames to trim: when a window ends, what the lowest fill over it
    /// had above the high-water mark (0 for a window that touched it).
    pub fn observe(&mut self, fill: usize, now: Instant) -> usize {
        let start = *self.window_start.get_or_insert(now);
        self.lowest = self.lowest.min(fill);
        if now.saturating_duration_since(start) < self.window {
            return 0;
        }
        let trim = self.lowest.saturating_sub(self.high_water);
        self.window_start = Some(now);
        self.lowest = usize::MAX;
        trim
    }
}

impl Default for FillGovernor {
    fn default() -> Self {
        FillGovernor::new(DRIFT_WINDOW, HIGH_WATER)
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// The queue was full: this (newest) frame was dropped.
    DroppedFull,
}

/// A snapshot of the queue for `/tower/buffer` and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RouterStats {
    pub fill: usize,
    pub capacity: usize,
    /// Frames accepted into the queue since start.
    pub pushed: u64,
    /// Frames dropped because the queue was full (newest dropped).
    pub dropped_full: u64,
    /// Buffers rejected because they were not canonical frames [F1].
    pub rejected_malformed: u64,
    /// Frames dropped to keep latency bounded under clock drift [R6].
    pub drift_trimmed: u64,
}

pub struct AudioInputRouter {
    tx: Sender<PcmFrame>,
    rx: Receiver<PcmFrame>,
    capacity: usize,
    high_water: AtomicUsize,
    pushed: AtomicU64,
    dropped_full: AtomicU64,
    rejected_malformed: AtomicU64,
    drift_trimmed: AtomicU64,
    full_log: LogGate,
    trim_log: LogGate,
    malformed_log: LogGate,
}

impl AudioInputRouter {
    /// A queue holding at most `capacity` frames (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = channel::bounded(capacity);
        AudioInputRouter {
            tx,
            rx,
            capacity,
            high_water: AtomicUsize::new(HIGH_WATER),
            pushed: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            rejected_malformed: AtomicU64::new(0),
            drift_trimmed: AtomicU64::new(0),
            full_log: LogGate::new(Duration::from_secs(10)),
            trim_log: LogGate::new(Duration::from_secs(3600)),
            malformed_log: LogGate::new(Duration::from_secs(10)),
        }
    }

    /// Queues a frame without blocking; drops it if the queue is full [R2].
    pub fn push(&self, frame: PcmFrame) -> PushOutcome {
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.pushed.fetch_add(1, Ordering::Relaxed);
                PushOutcome::Queued
            }
            // The router owns a receiver, so the channel never disconnects;
            // treat both errors as "full".
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped_full.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.full_log.allow(Instant::now()) {
                    tracing::warn!(
                        component = "router",
                        dropped_total = dropped,
                        suppressed,
                        capacity = self.capacity,
                        "PCM input queue full: dropping the newest frames (the pump is not keeping up)"
                    );
                }
                PushOutcome::DroppedFull
            }
        }
    }

    /// Validates and queues raw bytes: the boundary where non-canonical
    /// buffers are rejected, counted and logged [F1].
    pub fn push_bytes(&self, bytes: &[u8]) -> Result<PushOutcome, FrameSizeError> {
        match PcmFrame::from_bytes(bytes) {
            Ok(frame) => Ok(self.push(frame)),
            Err(e) => {
                let rejected = self.rejected_malformed.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.malformed_log.allow(Instant::now()) {
                    tracing::error!(component = "router", rejected_total = rejected, suppressed, "{e}");
                }
                Err(e)
            }
        }
    }

    /// The oldest frame; with `None` returns at once, otherwise waits at
    /// most `timeout` [R3].
    pub fn pop(&self, timeout: Option<Duration>) -> Option<PcmFrame> {
        match timeout {
            None => match self.rx.try_recv() {
                Ok(f) => Some(f),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            },
            Some(t) => match self.rx.recv_timeout(t) {
                Ok(f) => Some(f),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
            },
        }
    }

    /// Drops the oldest frame, if any, to cut latency [R6]; counted.
    pub fn trim_oldest(&self) -> bool {
        if self.rx.try_recv().is_err() {
            return false;
        }
        let n = self.drift_trimmed.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.trim_log.allow(Instant::now()) {
            tracing::info!(
                component = "router",
                drift_trimmed = n,
                suppressed,
                "dropped one 24 ms frame to keep the delay from creeping (the sound card's clock runs faster than \
                 the pump's); normal every few minutes, said once an hour"
            );
        }
        true
    }

    /// Sets the fill the pump's governor lets the queue keep [R6]: the
    /// input decides (see `CaptureSource::queue_high_water`); at most the
    /// capacity.
    pub fn set_high_water(&self, frames: usize) {
        self.high_water.store(frames.min(self.capacity), Ordering::Relaxed);
    }

    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    pub fn fill(&self) -> usize {
        self.rx.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Fill, capacity and drop counts, read without blocking producers [R5].
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            fill: self.rx.len(),
            capacity: self.capacity,
            pushed: self.pushed.load(Ordering::Relaxed),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            rejected_malformed: self.rejected_malformed.load(Ordering::Relaxed),
            drift_trimmed: self.drift_trimmed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::PCM_FRAME_BYTES;
    use std::sync::Arc;
    use std::thread;

    fn frame(tag: u8) -> PcmFrame {
        PcmFrame::from_bytes(&[tag; PCM_FRAME_BYTES]).expect("frame")
    }

    #[test]
    fn fifo_order() {
        let r = AudioInputRouter::new(4);
        for i in 0..3 {
            assert_eq!(r.push(frame(i)), PushOutcome::Queued);
        }
        for i in 0..3 {
            assert_eq!(r.pop(None).expect("frame").as_bytes()[0], i);
        }
        assert!(r.pop(None).is_none());
    }

    #[test]
    fn full_queue_drops_the_newest_and_counts_it() {
        let r = AudioInputRouter::new(2);
        r.push(frame(1));
        r.push(frame(2));
        assert_eq!(r.push(frame(3)), PushOutcome::DroppedFull);
        assert_eq!(r.push(frame(4)), PushOutcome::DroppedFull);
        let s = r.stats();
        assert_eq!((s.fill, s.capacity, s.pushed, s.dropped_full), (2, 2, 2, 2));
        // The oldest frames survive.
        assert_eq!(r.pop(None).expect("f").as_bytes()[0], 1);
        assert_eq!(r.pop(None).expect("f").as_bytes()[0], 2);
    }

    #[test]
    fn wrong_sized_buffers_are_rejected_and_counted() {
        let r = AudioInputRouter::new(2);
        assert_eq!(r.push_bytes(&[0; 100]), Err(FrameSizeError(100)));
        assert_eq!(r.push_bytes(&[0; PCM_FRAME_BYTES]), Ok(PushOutcome::Queued));
        let s = r.stats();
        assert_eq!((s.rejected_malformed, s.pushed, s.fill), (1, 1, 1));
    }

    #[test]
    fn the_governor_trims_only_when_the_whole_window_stays_high() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut g = FillGovernor::new(Duration::from_secs(2), 2);
        // Jitter: high most of the time, but touching the mark once.
        assert_eq!(g.observe(5, at(0)), 0);
        assert_eq!(g.observe(2, at(1_000)), 0);
        assert_eq!(g.observe(6, at(2_000)), 0, "the window saw 2: no trim");
        // A whole window one above the mark (drift): one frame.
        assert_eq!(g.observe(3, at(3_000)), 0);
        assert_eq!(g.observe(4, at(4_000)), 1);
        // The next window starts afresh.
        assert_eq!(g.observe(3, at(4_100)), 0);
        assert_eq!(g.observe(1, at(5_000)), 0);
        assert_eq!(g.observe(3, at(6_100)), 0);
    }

    #[test]
    fn a_backlog_that_stays_a_whole_window_is_trimmed_at_once() {
        // The pump hung 1.5 s while capture went on: 63 frames queued. One
        // frame per window would keep 1.5 s of extra latency for two
        // minutes.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut g = FillGovernor::new(Duration::from_secs(2), 2);
        assert_eq!(g.observe(2, at(0)), 0);
        assert_eq!(g.observe(63, at(2_000)), 0, "the window saw 2");
        assert_eq!(g.observe(63, at(3_000)), 0);
        assert_eq!(g.observe(62, at(4_000)), 60);
    }

    #[test]
    fn the_high_water_mark_is_the_inputs_choice_within_capacity() {
        let r = AudioInputRouter::new(10);
        assert_eq!(r.high_water(), HIGH_WATER);
        r.set_high_water(5);
        assert_eq!(r.high_water(), 5);
        r.set_high_water(50);
        assert_eq!(r.high_water(), 10);
        let t0 = Instant::now();
        let mut g = FillGovernor::new(Duration::from_secs(2), HIGH_WATER);
        g.set_high_water(5);
        assert_eq!(g.observe(5, t0), 0);
        assert_eq!(g.observe(6, t0 + Duration::from_secs(2)), 0, "never above 5: kept");
        assert_eq!(g.observe(7, t0 + Duration::from_secs(3)), 0);
        assert_eq!(g.observe(7, t0 + Duration::from_secs(4)), 2);
    }

    #[test]
    fn trimming_drops_the_oldest_and_counts_it() {
        let r = AudioInputRouter::new(4);
        assert!(!r.trim_oldest(), "nothing to trim");
        r.push(frame(1));
        r.push(frame(2));
        assert!(r.trim_oldest());
        assert_eq!(r.pop(None).expect("f").as_bytes()[0], 2);
        assert_eq!(r.stats().drift_trimmed, 1);
    }

    #[test]
    fn pop_without_timeout_returns_at_once_and_with_timeout_gives_up() {
        let r = AudioInputRouter::new(2);
        assert!(r.pop(None).is_none());
        let t0 = Instant::now();
        assert!(r.pop(Some(Duration::from_millis(20))).is_none());
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(20), "returned early: {waited:?}");
        // "Never blocks forever": bounded far above the timeout.
        assert!(waited < Duration::from_secs(5), "blocked: {waited:?}");
    }

    #[test]
    fn pop_wakes_when_a_frame_arrives() {
        let r = Arc::new(AudioInputRouter::new(2));
        let producer = {
            let r = r.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(10));
                r.push(frame(7));
            })
        };
        let got = r.pop(Some(Duration::from_secs(10))).expect("frame");
        assert_eq!(got.as_bytes()[0], 7);
        producer.join().expect("join");
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing_below_capacity() {
        let r = Arc::new(AudioInputRouter::new(1000));
        let producers: Vec<_> = (0..4u8)
            .map(|p| {
                let r = r.clone();
                thread::spawn(move || {
                    for _ in 0..200 {
                        r.push(frame(p));
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().expect("join");
        }
        let mut per_producer = [0usize; 4];
        while let Some(f) = r.pop(None) {
            per_producer[usize::from(f.as_bytes()[0])] += 1;
        }
        assert_eq!(per_producer, [200; 4]);
        assert_eq!(r.stats().pushed, 800);
    }
}
