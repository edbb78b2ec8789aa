//! AudioPump: the 24 ms metronome that paces the encoder [A0]–[A5].
//!
//! One thread ("audio-pump"), started by the service right after the encoder
//! and stopped just before it. Each tick, on an absolute schedule that never
//! drifts [A1], it takes a frame from the router (waiting at most 5 ms) and
//! writes exactly one frame to its [`PcmSink`]: live PCM, else cached silence
//! during the grace period, else the fallback [A2]–[A3]. It asks for SCHED_FIFO
//! and locked memory, and warns once if it cannot have them [A4]. It only
//! knows the sink trait, never the encoder's supervisor [A5].
//!
//! [`Schedule`] and [`InputSelector`] are the pure decisions, with time passed
//! in; the thread around them only sleeps, pops and writes.
//!
//! The owner may change the grace period and the fallback while it runs
//! ([`Pump::tune`]): the new fallback is built on the caller's thread and
//! taken by the pump at its next tick without waiting; the old one goes
//! back to be freed off the real-time thread.

pub mod fallback;
mod memlock;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio::router::{AudioInputRouter, FillGovernor};
use crate::audio::{FRAME_DURATION, InputState, PcmFrame};
use crate::histogram::{Histogram, Percentiles};
use crate::hooks::{PanicTarget, TestHooks};
use crate::pump::fallback::{Fallback, FallbackKind};
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};
use crossbeam::channel::{Receiver, Sender};

/// How long a tick waits for a frame from the router [A2].
pub const POP_TIMEOUT: Duration = Duration::from_millis(5);
/// A tick starting later than this counts as late in the stats.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(1);
/// A gap in the input shorter than this is not logged (it is still counted).
const GAP_LOG_AFTER: Duration = Duration::from_millis(500);

/// Where every frame the pump produces goes. `EncoderManager` implements it;
/// benches and tests use their own.
pub trait PcmSink: Send + Sync {
    /// Must not block: the pump runs at real-time priority.
    fn write_pcm(&self, frame: &PcmFrame);
}

/// The absolute tick schedule [A1].
#[derive(Debug, Clone)]
pub struct Schedule {
    period: Duration,
    next: Instant,
}

/// What [`Schedule::advance`] observed about the tick that just ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// How late the tick started against its deadline.
    pub lateness: Duration,
    /// True when the tick was more than one period late and the schedule
    /// was moved to now instead of bursting to catch up.
    pub resynced: bool,
}

impl Schedule {
    /// The first tick is due at `start`.
    pub fn new(start: Instant, period: Duration) -> Self {
        Schedule { period, next: start }
    }

    /// When the next tick is due.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Records that the due tick started at `started` and moves to the next
    /// deadline: `next += period`, or `started + period` when more than one
    /// period late.
    pub fn advance(&mut self, started: Instant) -> Tick {
        let lateness = started.saturating_duration_since(self.next);
        let resynced = lateness > self.period;
        self.next = if resynced {
            started + self.period
        } else {
            self.next + self.period
        };
        Tick { lateness, resynced }
    }
}

/// Chooses live, grace silence or fallback for each tick [A2]–[A3].
#[derive(Debug, Clone)]
pub struct InputSelector {
    grace: Duration,
    last_pcm: Instant,
}

impl InputSelector {
    /// `start` counts as the last time PCM was seen, so a box whose input
    /// takes a moment to open plays silence, not a burst of tone.
    pub fn new(grace: Duration, start: Instant) -> Self {
        InputSelector { grace, last_pcm: start }
    }

    pub fn select(&mut self, got_pcm: bool, now: Instant) -> InputState {
        if got_pcm {
            self.last_pcm = now;
            InputState::Live
        } else if now.saturating_duration_since(self.last_pcm) < self.grace {
            InputState::Grace
        } else {
            InputState::Fallback
        }
    }

    /// A new grace period, from the next tick.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn since_pcm(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_pcm)
    }
}

/// Counters the pump publishes; read by `/status` and the benches.
#[derive(Default)]
pub struct PumpStats {
    ticks: AtomicU64,
    frames_live: AtomicU64,
    frames_grace: AtomicU64,
    frames_fallback: AtomicU64,
    late_ticks: AtomicU64,
    resyncs: AtomicU64,
    input_gaps: AtomicU64,
    input_state: AtomicU8,
    realtime: AtomicBool,
    memory_locked: AtomicBool,
    /// The fallback's [`FallbackKind`], as a u8.
    fallback: AtomicU8,
    tick_error: Histogram,
    /// When the last tick ran, in ms on [`mono_ms`]'s clock; 0 before the first.
    last_tick_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts with the process (at
/// least 1, so 0 can mean "never").
pub fn mono_ms(now: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now - Duration::from_millis(1));
    now.saturating_duration_since(base).as_millis() as u64
}

#[derive(Debug, Clone, Serialize)]
pub struct PumpSnapshot {
    pub ticks: u64,
    pub frames_live: u64,
    pub frames_grace: u64,
    pub frames_fallback: u64,
    pub late_ticks: u64,
    pub resyncs: u64,
    /// Times the input went missing (each gap counted once).
    pub input_gaps: u64,
    pub sched_fifo: bool,
    pub memory_locked: bool,
    pub tick_error: Percentiles,
}

impl PumpStats {
    pub fn new() -> Self {
        PumpStats {
            input_state: AtomicU8::new(InputState::Grace.to_u8()),
            ..Default::default()
        }
    }

    pub fn input_state(&self) -> InputState {
        InputState::from_u8(self.input_state.load(Ordering::Relaxed))
    }

    /// What the fallback plays.
    pub fn fallback(&self) -> FallbackKind {
        FallbackKind::from_u8(self.fallback.load(Ordering::Relaxed))
    }

    /// Total ticks so far; a watchdog sees the pump alive while it grows.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// How long ago the last tick ran; `None` before the first.
    pub fn since_last_tick(&self, now: Instant) -> Option<Duration> {
        match self.last_tick_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(mono_ms(now).saturating_sub(at))),
        }
    }

    pub fn tick_error(&self) -> &Histogram {
        &self.tick_error
    }

    pub fn snapshot(&self) -> PumpSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PumpSnapshot {
            ticks: l(&self.ticks),
            frames_live: l(&self.frames_live),
            frames_grace: l(&self.frames_grace),
            frames_fallback: l(&self.frames_fallback),
            late_ticks: l(&self.late_ticks),
            resyncs: l(&self.resyncs),
            input_gaps: l(&self.input_gaps),
            sched_fifo: self.realtime.load(Ordering::Relaxed),
            memory_locked: self.memory_locked.load(Ordering::Relaxed),
            tick_error: self.tick_error.percentiles(),
        }
    }
}

/// Pump settings from the configuration.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub grace: Duration,
    /// SCHED_FIFO priority 1–99; 0 leaves the thread at normal priority.
    pub realtime_priority: u8,
    /// Fault injection for tests (a hung pump).
    pub hooks: Arc<TestHooks>,
}

/// A change the owner made: a new grace period, and a new fallback (built
/// before it is sent).
pub struct PumpChange {
    pub grace: Duration,
    pub fallback: Option<Fallback>,
}

/// Changes that may wait for the pump's next tick.
const CHANGES: usize = 4;

/// The running pump thread and its stats.
pub struct Pump {
    worker: Worker<()>,
    stats: Arc<PumpStats>,
    changes: Sender<PumpChange>,
    /// Fallbacks the pump has replaced, to be freed here.
    retired: Receiver<Fallback>,
}

impl Pump {
    pub fn start(
        config: PumpConfig,
        router: Arc<AudioInputRouter>,
        sink: Arc<dyn PcmSink>,
        fallback: Fallback,
        supervisor: &Supervisor,
    ) -> std::io::Result<Pump> {
        let stats = Arc::new(PumpStats::new());
        stats.fallback.store(fallback.kind().to_u8(), Ordering::Relaxed);
        let thread_stats = stats.clone();
        let (changes, changes_rx) = crossbeam::channel::bounded(CHANGES);
        let (retired_tx, retired) = crossbeam::channel::bounded(CHANGES);
        let worker = Worker::spawn_supervised("audio-pump", supervisor, move |stop| {
            let tuning = Tuning {
                changes: changes_rx,
                retired: retired_tx,
            };
            run(&stop, &config, &router, &*sink, fallback, &thread_stats, &tuning)
        })?;
        Ok(Pump {
            worker,
            stats,
            changes,
            retired,
        })
    }

    pub fn stats(&self) -> Arc<PumpStats> {
        self.stats.clone()
    }

    /// Hands the pump a change for its next tick; false when changes are
    /// arriving faster than it ticks (the caller says so).
    pub fn tune(&self, change: PumpChange) -> bool {
        while self.retired.try_recv().is_ok() {}
        self.changes.try_send(change).is_ok()
    }

    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        self.worker.stop(timeout)
    }
}

/// The pump's ends of its change channels.
struct Tuning {
    changes: Receiver<PumpChange>,
    retired: Sender<Fallback>,
}

fn run(
    stop: &StopSignal,
    config: &PumpConfig,
    router: &AudioInputRouter,
    sink: &dyn PcmSink,
    fallback: Fallback,
    stats: &PumpStats,
    tuning: &Tuning,
) {
    let (fifo, locked) = acquire_realtime(config.realtime_priority);
    stats.realtime.store(fifo, Ordering::Relaxed);
    stats.memory_locked.store(locked, Ordering::Relaxed);
    let mut ticker = Ticker::new(config, router, sink, fallback, stats, Instant::now());
    loop {
        let now = Instant::now();
        let deadline = ticker.deadline();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        if stop.is_stopped() {
            break;
        }
        if let Ok(change) = tuning.changes.try_recv()
            && let Some(old) = ticker.tune(change)
        {
            // Freed by the owner's thread, not here (it may be 11 MB).
            let _ = tuning.retired.try_send(old);
        }
        ticker.tick(Instant::now());
    }
}

/// The pump's work in one tick, the wait aside: what the "audio-pump"
/// thread runs every 24 ms (public so that benches can count it).
pub struct Ticker<'a> {
    config: &'a PumpConfig,
    router: &'a AudioInputRouter,
    sink: &'a dyn PcmSink,
    stats: &'a PumpStats,
    fallback: Fallback,
    silence: PcmFrame,
    fallback_frame: PcmFrame,
    schedule: Schedule,
    selector: InputSelector,
    shown: InputState,
    episode: Episode,
    governor: FillGovernor,
}

impl<'a> Ticker<'a> {
    /// The first tick is due at `start`.
    pub fn new(
        config: &'a PumpConfig,
        router: &'a AudioInputRouter,
        sink: &'a dyn PcmSink,
        fallback: Fallback,
        stats: &'a PumpStats,
        start: Instant,
    ) -> Self {
        Ticker {
            config,
            router,
            sink,
            stats,
            fallback,
            silence: PcmFrame::silent(),
            fallback_frame: PcmFrame::silent(),
            schedule: Schedule::new(start, FRAME_DURATION),
            selector: InputSelector::new(config.grace, start),
            shown: InputState::Grace,
            episode: Episode::default(),
            governor: FillGovernor::default(),
        }
    }

    /// Takes the owner's change; returns the fallback it replaced.
    pub fn tune(&mut self, change: PumpChange) -> Option<Fallback> {
        self.selector.set_grace(change.grace);
        let new = change.fallback?;
        self.stats.fallback.store(new.kind().to_u8(), Ordering::Relaxed);
        Some(std::mem::replace(&mut self.fallback, new))
    }

    /// When the next tick is due.
    pub fn deadline(&self) -> Instant {
        self.schedule.deadline()
    }

    /// Runs the tick that is due, started at `started`: one frame to the
    /// sink [A2].
    pub fn tick(&mut self, started: Instant) {
        let stats = self.stats;
        let tick = self.schedule.advance(started);
        stats.tick_error.record(tick.lateness);
        if tick.lateness > LATE_THRESHOLD {
            stats.late_ticks.fetch_add(1, Ordering::Relaxed);
        }
        if tick.resynced {
            stats.resyncs.fetch_add(1, Ordering::Relaxed);
        }

        self.config.hooks.pump_stall();
        self.config.hooks.panic_point(PanicTarget::Pump);
        let frame = next_input(self.router, &mut self.governor, started, pop_wait(self.shown));
        let now = Instant::now();
        let state = self.selector.select(frame.is_some(), now);
        match (&frame, state) {
            (Some(pcm), _) => {
                self.sink.write_pcm(pcm);
                stats.frames_live.fetch_add(1, Ordering::Relaxed);
            }
            (None, InputState::Fallback) => {
                self.fallback.fill(self.fallback_frame.as_bytes_mut());
                self.sink.write_pcm(&self.fallback_frame);
                stats.frames_fallback.fetch_add(1, Ordering::Relaxed);
            }
            (None, _) => {
                self.sink.write_pcm(&self.silence);
                stats.frames_grace.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        stats.last_tick_ms.store(mono_ms(started), Ordering::Relaxed);
        self.note_state(state, now);
    }

    /// Publishes and logs a change of input state [A3].
    fn note_state(&mut self, state: InputState, now: Instant) {
        let (stats, selector) = (self.stats, &self.selector);
        if state != self.shown {
            stats.input_state.store(state.to_u8(), Ordering::Relaxed);
            if self.shown == InputState::Live && state == InputState::Grace {
                stats.input_gaps.fetch_add(1, Ordering::Relaxed);
            }
            report_change(state, selector.since_pcm(now), &self.episode, self.fallback.kind());
            self.episode.enter(state);
            self.shown = state;
        } else if state == InputState::Grace && !self.episode.gap_logged && selector.since_pcm(now) >= GAP_LOG_AFTER {
            // Only gaps that last are worth a line; single missed periods
            // are visible in the counters.
            tracing::warn!(
                component = "pump",
                state = "grace",
                reason = "no PCM from the input",
                grace_s = self.config.grace.as_secs_f64(),
                "input silent: sending silence, fallback after the grace period"
            );
            self.episode.gap_logged = true;
        }
    }
}

/// How long a tick waits for a frame, in input state `shown` [A2]: up to
/// [`POP_TIMEOUT`] while the input is live or in its grace period; not at
/// all once the fallback plays, where a frame arriving a few ms late
/// changes nothing.
fn pop_wait(shown: InputState) -> Option<Duration> {
    (shown != InputState::Fallback).then_some(POP_TIMEOUT)
}

/// One tick's input: trims what the governor says the queue holds beyond
/// its need [R6], then takes the oldest frame, waiting at most `wait` [A2].
fn next_input(
    router: &AudioInputRouter,
    governor: &mut FillGovernor,
    now: Instant,
    wait: Option<Duration>,
) -> Option<PcmFrame> {
    governor.set_high_water(router.high_water());
    for _ in 0..governor.observe(router.fill(), now) {
        if !router.trim_oldest() {
            break;
        }
    }
    router.pop(wait)
}

/// What has been said about the input so far, so each gap is logged once.
#[derive(Debug, Default)]
struct Episode {
    ever_live: bool,
    gap_logged: bool,
}

impl Episode {
    fn enter(&mut self, state: InputState) {
        match state {
            InputState::Live => {
                self.ever_live = true;
                self.gap_logged = false;
            }
            InputState::Fallback => self.gap_logged = true,
            InputState::Grace => {}
        }
    }
}

fn report_change(
    to: InputState,
    since_pcm: Duration,
    episode: &Episode,
    fallback: crate::pump::fallback::FallbackKind,
) {
    match to {
        InputState::Fallback => tracing::warn!(
            component = "pump",
            state = "fallback",
            reason = "grace period expired",
            source = ?fallback,
            "no PCM for {:.1} s: playing the fallback",
            since_pcm.as_secs_f64()
        ),
        InputState::Live if !episode.ever_live => {
            tracing::info!(
                component = "pump",
                state = "live",
                reason = "PCM arrived",
                "input is live"
            )
        }
        InputState::Live if episode.gap_logged => {
            tracing::info!(
                component = "pump",
                state = "live",
                reason = "PCM arrived",
                "input is live again"
            )
        }
        // A short gap (less than GAP_LOG_AFTER) ending: counted, not logged.
        InputState::Live | InputState::Grace => {}
    }
}

/// Asks for SCHED_FIFO and locked memory for the calling thread [A4].
/// Returns (got SCHED_FIFO, memory locked); warns once if either failed.
fn acquire_realtime(priority: u8) -> (bool, bool) {
    if priority == 0 {
        tracing::info!(
            component = "pump",
            "real-time scheduling disabled by configuration (pump.realtime_priority = 0)"
        );
        return (false, false);
    }
    let mut problems = Vec::new();
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pthread_self() is the calling thread and `param` is a valid
    // sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    let fifo = rc == 0;
    if !fifo {
        problems.push(format!(
            "SCHED_FIFO priority {priority}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
        // Without real-time priority, at least ask for precise timers.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    }
    let locked = match memlock::lock_realtime_memory() {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(format!("mlock: {e}"));
            None
        }
    };
    if let (true, Some(l)) = (problems.is_empty(), &locked) {
        tracing::info!(
            component = "pump",
            priority,
            locked_ranges = l.ranges,
            locked_kib = l.bytes / 1024,
            "pump running with SCHED_FIFO and its memory locked (its code, the heap and its stack; locked as touched)"
        );
    } else {
        tracing::warn!(
            component = "pump",
            "pump runs without full real-time guarantees ({}); audio may glitch under heavy load. Grant CAP_SYS_NICE with LimitRTPRIO>={priority} and LimitMEMLOCK (the systemd unit does), or set pump.realtime_priority = 0 to silence this",
            problems.join("; ")
        );
    }
    (fifo, locked.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_waits_for_a_late_frame_only_while_the_input_may_come_back() {
        assert_eq!(pop_wait(InputState::Live), Some(POP_TIMEOUT));
        assert_eq!(pop_wait(InputState::Grace), Some(POP_TIMEOUT));
        assert_eq!(pop_wait(InputState::Fallback), None);
    }
    use std::sync::Mutex;

    const P: Duration = FRAME_DURATION;

    #[test]
    fn schedule_is_absolute_and_does_not_drift() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, P);
        // Every tick starts 3 ms late: the deadlines stay on the grid.
        for k in 0..1000u32 {
            let due = s.deadline();
            assert_eq!(due, t0 + P * k);
            let tick = s.advance(due + Duration::from_millis(3));
            assert_eq!(tick.lateness, Duration::from_millis(3));
            assert!(!tick.resynced);
        }
    }

    #[test]
    fn a_late_tick_catches_up_without_bursting_and_a_very_late_one_resyncs() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, P);
        // 20 ms late (less than a period): next deadline stays on the grid.
        let tick = s.advance(t0 + Duration::from_millis(20));
        assert!(!tick.resynced);
        assert_eq!(s.deadline(), t0 + P);
        // 100 ms late: resync to now + period instead of firing 4 ticks at once.
        let started = t0 + P + Duration::from_millis(100);
        let tick = s.advance(started);
        assert!(tick.resynced);
        assert_eq!(tick.lateness, Duration::from_millis(100));
        assert_eq!(s.deadline(), started + P);
        // Exactly one period late is not "more than one period".
        let due = s.deadline();
        assert!(!s.advance(due + P).resynced);
    }

    #[test]
    fn grace_then_fallback_and_the_timer_restarts_when_pcm_returns() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut sel = InputSelector::new(grace, t0);
        // Start-up counts as PCM seen: grace first, not the tone.
        assert_eq!(sel.select(false, t0 + Duration::from_secs(1)), InputState::Grace);
        assert_eq!(sel.select(false, t0 + grace), InputState::Fallback);
        // PCM returns: live, and the grace timer restarts from that moment.
        let back = t0 + Duration::from_secs(60);
        assert_eq!(sel.select(true, back), InputState::Live);
        assert_eq!(sel.select(false, back + Duration::from_millis(24)), InputState::Grace);
        assert_eq!(
            sel.select(false, back + grace - Duration::from_millis(1)),
            InputState::Grace
        );
        assert_eq!(sel.select(false, back + grace), InputState::Fallback);
        assert_eq!(sel.select(true, back + grace * 2), InputState::Live);
    }

    /// Records what the pump wrote: the first sample of each frame.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<i16>>);

    impl PcmSink for Recorder {
        fn write_pcm(&self, frame: &PcmFrame) {
            if let Ok(mut v) = self.0.lock() {
                v.push(frame.sample(0));
            }
        }
    }

    /// What one simulated hour of capture at `ppm` against the pump did.
    #[derive(Debug)]
    struct DriftRun {
        /// Lowest and highest fill the pump saw before a pop, after the
        /// first minute.
        band: (usize, usize),
        trimmed: u64,
        /// Ticks with no PCM while the input was live (one grace frame).
        underruns: u64,
        fallback_ticks: u64,
        /// Capture-to-pump delay of the frames popped in the first ten
        /// minutes (after the first) and in the last ten, worst case: each
        /// spans whole cycles of the fill's sawtooth.
        delay_first_min: Duration,
        delay_last_min: Duration,
    }

    /// A capture clock `ppm` faster than the pump's, delivering one frame
    /// per period with ±2 ms of scheduling jitter, against the pump's tick
    /// logic, for one hour of simulated time (nothing sleeps).
    fn simulate_drift(ppm: f64) -> DriftRun {
        const HOUR: Duration = Duration::from_secs(3600);
        let t0 = Instant::now();
        let period = FRAME_DURATION.mul_f64(1e6 / (1e6 + ppm));
        let router = AudioInputRouter::new(100);
        let mut governor = FillGovernor::default();
        let mut schedule = Schedule::new(t0, FRAME_DURATION);
        let mut selector = InputSelector::new(Duration::from_secs(5), t0);
        // Pseudo-random jitter, the same every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut jitter = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            Duration::from_micros(seed % 4_000)
        };
        let capture_at = |k: u32, jitter: Duration| t0 + Duration::from_millis(10) + period * k + jitter;
        // Capture times of the frames in the queue, oldest first.
        let mut queued = std::collections::VecDeque::new();
        let mut k = 0u32;
        let mut next_capture = capture_at(0, jitter());
        let (mut lo, mut hi) = (usize::MAX, 0);
        let (mut underruns, mut fallback_ticks) = (0, 0);
        let (mut delay_first, mut delay_last) = (Duration::ZERO, Duration::ZERO);
        let mut was_live = false;
        while schedule.deadline() < t0 + HOUR {
            let tick = schedule.deadline();
            schedule.advance(tick);
            // Frames captured by the tick, and one more if it arrives while
            // the pump waits on an empty queue (POP_TIMEOUT).
            loop {
                let waits = router.fill() == 0 && next_capture <= tick + POP_TIMEOUT;
                if next_capture > tick && !waits {
                    break;
                }
                router.push(PcmFrame::silent());
                queued.push_back(next_capture);
                k += 1;
                next_capture = capture_at(k, jitter());
            }
            let fill = router.fill();
            let trimmed_before = router.stats().drift_trimmed;
            let frame = next_input(&router, &mut governor, tick, None);
            if router.stats().drift_trimmed > trimmed_before {
                queued.pop_front();
            }
            let state = selector.select(frame.is_some(), tick);
            if frame.is_some() {
                let captured = queued.pop_front().expect("a capture time per frame");
                let delay = tick.saturating_duration_since(captured);
                let elapsed = tick - t0;
                if elapsed > Duration::from_secs(60) && elapsed < Duration::from_secs(660) {
                    delay_first = delay_first.max(delay);
                }
                if elapsed > HOUR - Duration::from_secs(600) {
                    delay_last = delay_last.max(delay);
                }
            }
            if tick - t0 > Duration::from_secs(60) {
                lo = lo.min(fill);
                hi = hi.max(fill);
            }
            match state {
                InputState::Grace if was_live => underruns += 1,
                InputState::Fallback => fallback_ticks += 1,
                _ => {}
            }
            was_live = state == InputState::Live;
        }
        DriftRun {
            band: (lo, hi),
            trimmed: router.stats().drift_trimmed,
            underruns,
            fallback_ticks,
            delay_first_min: delay_first,
            delay_last_min: delay_last,
        }
    }

    #[test]
    fn a_fast_sound_card_clock_is_trimmed_and_latency_does_not_creep() {
        let run = simulate_drift(200.0);
        eprintln!("{run:?}");
        // +200 ppm adds 0.72 s of audio an hour: ~30 frames to trim.
        assert!((25..=36).contains(&run.trimmed), "{run:?}");
        assert!(run.band.1 <= crate::audio::router::HIGH_WATER + 2, "{run:?}");
        assert!(run.delay_last_min <= run.delay_first_min + FRAME_DURATION, "{run:?}");
        assert!(run.delay_last_min < Duration::from_millis(100), "{run:?}");
        assert_eq!(run.fallback_ticks, 0, "{run:?}");
    }

    #[test]
    fn a_slow_sound_card_clock_costs_one_grace_frame_now_and_then() {
        let run = simulate_drift(-200.0);
        eprintln!("{run:?}");
        assert_eq!(run.trimmed, 0, "{run:?}");
        // −200 ppm leaves the pump one frame short every two minutes.
        assert!((20..=40).contains(&run.underruns), "{run:?}");
        assert!(run.band.1 <= crate::audio::router::HIGH_WATER + 2, "{run:?}");
        assert!(run.delay_last_min <= run.delay_first_min + FRAME_DURATION, "{run:?}");
        assert_eq!(run.fallback_ticks, 0, "{run:?}");
    }

    #[test]
    fn matched_clocks_are_left_alone() {
        let run = simulate_drift(0.0);
        eprintln!("{run:?}");
        assert_eq!((run.trimmed, run.underruns, run.fallback_ticks), (0, 0, 0), "{run:?}");
    }

    #[test]
    fn pump_thread_writes_live_then_silence_then_fallback() {
        let router = Arc::new(AudioInputRouter::new(10));
        let mut live = PcmFrame::silent();
        live.as_bytes_mut()[..2].copy_from_slice(&1234i16.to_le_bytes());
        for _ in 0..3 {
            router.push(live.clone());
        }
        let sink = Arc::new(Recorder::default());
        // A WAV-free fallback whose first sample is non-zero would need a
        // file; use silence-vs-tone by checking the tone's second frame.
        let pump = Pump::start(
            PumpConfig {
                grace: Duration::from_millis(100),
                realtime_priority: 0,
                hooks: Arc::new(TestHooks::disabled()),
            },
            router,
            sink.clone(),
            Fallback::tone(),
            &crate::worker::Supervisor::none(),
        )
        .expect("start");
        let stats = pump.stats();
        crate::testing::wait_until(Duration::from_secs(10), || stats.snapshot().frames_fallback >= 3);
        pump.stop(Duration::from_secs(2)).expect("stop");
        let snap = stats.snapshot();
        assert_eq!(snap.frames_live, 3);
        assert!(snap.frames_grace >= 1, "{snap:?}");
        assert!(snap.frames_fallback >= 3, "{snap:?}");
        assert_eq!(snap.ticks, snap.frames_live + snap.frames_grace + snap.frames_fallback);
        let written = sink.0.lock().expect("lock").clone();
        assert_eq!(&written[..3], &[1234, 1234, 1234]);
        let grace = snap.frames_grace as usize;
        assert!(written[3..3 + grace].iter().all(|&s| s == 0));
        // The tone's frames after the first start mid-cycle: not all zero.
        assert!(written[3 + grace..].iter().skip(1).any(|&s| s != 0));
        assert_eq!(stats.input_state(), InputState::Fallback);
    }
}
