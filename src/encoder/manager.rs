//! EncoderManager: the only way into and out of the encoder [M1]–[M5].
//!
//! Creates and exclusively owns the supervisor, and passes it the MP3 ring
//! it was given [M1]. The pump thread calls [`EncoderManager::write_pcm`]
//! (forwarded only while the encoder is STARTING or RUNNING [M2]); the
//! broadcast thread calls [`EncoderManager::wait`], which reads ffmpeg's
//! output into the ring until the pacer's next deadline, and
//! [`EncoderManager::drain`] / [`EncoderManager::get_frame`]. The encoder
//! state is mirrored here through the supervisor's change callback [M3], so
//! `write_pcm` reads one atomic. The owner's settings change the encoder
//! through [`EncoderManager::relaunch`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Mp3Frame;
use super::pacer::Pacer;
use super::process::EncoderLauncher;
use super::reader::Reader;
use super::state::EncoderState;
use super::supervisor::{Supervisor, SupervisorConfig, SupervisorSnapshot};
use super::turn::whole_periods;
use crate::audio::{FRAME_DURATION, PcmFrame};
use crate::encoder::mp3::{FrameHeader, canonical_silent_frame, silent_frame_like};
use crate::encoder::ring::FrameRing;
use crate::pump::PcmSink;
use crate::worker::WorkerError;

/// Longest the broadcast loop sleeps when no deadline is due: only before
/// the first frame ever (afterwards a frame or a silence is always due
/// within 84 ms); it keeps the loop turning for the watchdog.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// The most MP3 frames that may wait for the broadcast loop: about 0.5 s.
/// A loop that falls further behind (an overloaded box, thousands of
/// listeners) skips the oldest, so listeners' lag behind live is bounded
/// instead of growing with every slow turn [M5].
pub const MAX_BACKLOG: usize = 21;

/// How the broadcast loop waits for ffmpeg's next frames
/// ([`EncoderManager::wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Each frame as it comes: one wake-up per frame.
    No,
    /// Frames are taken together, a turn per this much audio (whole pump
    /// periods), each turn ending just after the frame that closes it
    /// comes (`turn`): one wake-up per turn, for whoever writes each
    /// turn's frames at once. The oldest frame of a turn waits the span
    /// less a period (72 ms at 96 ms).
    Every(Duration),
    /// No one to send to: frames wait until the pacer's deadline.
    Idle,
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub supervisor: SupervisorConfig,
    pub silence_after: Duration,
    pub max_lead: Duration,
    /// How long one MP3 frame plays: the pacer's period. 24 ms (the PCM
    /// frame's) at 48 kHz; 26.1 ms when ffmpeg resamples to 44.1 kHz, where
    /// 1152 PCM samples in make 1058.4 out.
    pub frame: Duration,
}

struct Output {
    pacer: Pacer,
    /// The supervisor's count of encoder starts the pacer was told of.
    starts_seen: u64,
    /// Silence matching the stream's last real frame (bitrate, mode).
    silence: Mp3Frame,
    silence_header: [u8; 4],
}

#[derive(Default)]
struct Counters {
    dropped_not_running: AtomicU64,
    real_out: AtomicU64,
    silence_out: AtomicU64,
    trimmed: AtomicU64,
    behind: AtomicU64,
}

/// The manager's view for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderSnapshot {
    #[serde(flatten)]
    pub supervisor: SupervisorSnapshot,
    /// PCM frames dropped because the encoder was not STARTING/RUNNING.
    pub pcm_dropped_encoder_down: u64,
    pub mp3_frames_out: u64,
    pub silence_frames_out: u64,
    /// Late MP3 frames dropped to keep listener delay bounded.
    pub mp3_frames_trimmed: u64,
    /// Skipped because the broadcast loop fell more than [`MAX_BACKLOG`]
    /// frames behind.
    pub mp3_frames_skipped_behind: u64,
}

pub struct EncoderManager {
    supervisor: Supervisor,
    ring: Arc<FrameRing<Mp3Frame>>,
    state: Arc<AtomicU8>,
    output: Mutex<Output>,
    /// ffmpeg's stdout, read by the broadcast thread in `wait`.
    reader: Mutex<Reader>,
    /// PCM goes to ffmpeg two frames at a time ([`in_pairs`]): set by the
    /// broadcast thread in `wait`, read by the pump in `write_pcm`.
    pairs: AtomicBool,
    counters: Counters,
}

impl EncoderManager {
    /// Starts the supervisor (which launches the encoder at once).
    pub fn start(
        config: ManagerConfig,
        launcher: Box<dyn EncoderLauncher>,
        ring: Arc<FrameRing<Mp3Frame>>,
    ) -> std::io::Result<EncoderManager> {
        let state = Arc::new(AtomicU8::new(EncoderState::Stopped.to_u8()));
        let mirror = state.clone();
        let supervisor = Supervisor::start(
            config.supervisor,
            launcher,
            ring.clone(),
            Box::new(move |t| mirror.store(t.to.to_u8(), Ordering::SeqCst)),
        )?;
        let silence = canonical_silent_frame();
        let silence_header = silence_key(&silence);
        let reader = Mutex::new(supervisor.reader());
        Ok(EncoderManager {
            supervisor,
            ring,
            reader,
            pairs: AtomicBool::new(false),
            state,
            output: Mutex::new(Output {
                pacer: Pacer::new(config.frame, config.silence_after, config.max_lead),
                starts_seen: 0,
                silence: Mp3Frame::from(silence),
                silence_header,
            }),
            counters: Counters::default(),
        })
    }

    pub fn state(&self) -> EncoderState {
        EncoderState::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub fn ring(&self) -> &Arc<FrameRing<Mp3Frame>> {
        &self.ring
    }

    /// Forwards PCM while the encoder is STARTING or RUNNING; otherwise the
    /// frame is dropped (counted, not logged) [M2]. While the broadcast
    /// loop's turns allow it, frames go to ffmpeg in pairs ([`in_pairs`]).
    pub fn write_pcm(&self, frame: &PcmFrame) {
        match self.state() {
            EncoderState::Starting | EncoderState::Running => {
                let hold = self.pairs.load(Ordering::Relaxed);
                self.supervisor.write_pcm(frame, hold);
            }
            _ => {
                self.counters.dropped_not_running.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The next frame for listeners, never blocking [M4]: a real MP3 frame;
    /// before the first one ever, nothing; afterwards, when the encoder is
    /// really behind, a frame of silence [M5].
    pub fn get_frame(&self, now: Instant) -> Option<Mp3Frame> {
        let mut out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let starts = self.supervisor.starts();
        if starts != out.starts_seen {
            // A new ffmpeg (a relaunch, or a restart quicker than the
            // silence): its first frames are a burst, trimmed as after
            // silence, or the lead would stay at its cap for good.
            out.starts_seen = starts;
            out.pacer.new_encoder();
        }
        // Beyond the backlog: the loop fell behind, unless this is a new
        // encoder's first burst (its input's preamble and what queued while
        // it started), which the pacer trims anyway.
        if self.ring.len() > MAX_BACKLOG {
            let skipped = if out.pacer.settling(now) {
                &self.counters.trimmed
            } else {
                &self.counters.behind
            };
            while self.ring.len() > MAX_BACKLOG && self.ring.pop().is_some() {
                skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        loop {
            let waiting = self.ring.len();
            if waiting == 0 {
                break;
            }
            let decision = out.pacer.on_real(waiting, now);
            for _ in 0..decision.trim {
                if self.ring.pop().is_some() {
                    self.counters.trimmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let Some(frame) = self.ring.pop() else { break };
            if !decision.send {
                self.counters.trimmed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            refresh_silence(&mut out, &frame);
            self.counters.real_out.fetch_add(1, Ordering::Relaxed);
            return Some(frame);
        }
        if out.pacer.silence_due(now) {
            self.counters.silence_out.fetch_add(1, Ordering::Relaxed);
            return Some(out.silence.clone());
        }
        None
    }

    /// Hands every frame that is ready to `send`, reading `clock` before
    /// each. Sending to thousands of listeners takes a while: with one time
    /// for a whole backlog, the pacer would count each frame sent as 24 ms
    /// ahead of that stale time and soon drop real frames as too far
    /// ahead, though listeners were in fact behind.
    pub fn drain(&self, mut clock: impl FnMut() -> Instant, mut send: impl FnMut(&Mp3Frame, Instant)) {
        loop {
            let now = clock();
            let Some(frame) = self.get_frame(now) else { break };
            send(&frame, now);
        }
    }

    /// Waits for ffmpeg's output until silence becomes due (or 100 ms pass
    /// before the first frame ever), and moves the frames that arrived into
    /// the ring for [`EncoderManager::drain`]: one by one
    /// ([`Gather::No`]), together at that deadline ([`Gather::Idle`]), or
    /// in turns ([`Gather::Every`]; see `reader`). Broadcast thread only.
    pub fn wait(&self, now: Instant, gather: Gather) {
        let (due, settling) = {
            let out = self.output.lock().unwrap_or_else(|p| p.into_inner());
            (out.pacer.next_due(), out.pacer.settling(now))
        };
        let deadline = due.map_or(now + MAX_WAIT, |d| d.min(now + MAX_WAIT));
        let taking = taking(gather, settling);
        self.pairs.store(in_pairs(taking), Ordering::Relaxed);
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait(deadline, taking);
    }

    /// Wakes a thread sleeping in [`EncoderManager::wait`].
    pub fn wake(&self) {
        self.supervisor.wake_reader();
    }

    /// Restarts the encoder with `launcher`'s command (a new bitrate from
    /// the owner's settings): the current ffmpeg ends and the new one
    /// starts at once, through the restart path, with no backoff and no
    /// failure counted; the state history gives `reason`. Listeners stay
    /// connected and get silence frames for the gap (about ffmpeg's start,
    /// 0.1–0.4 s), then the new stream; the silence frame follows the new
    /// frames' header from their first one [M4].
    pub fn relaunch(&self, launcher: Box<dyn EncoderLauncher>, reason: &str) {
        self.supervisor.relaunch(launcher, reason);
    }

    pub fn snapshot(&self) -> EncoderSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EncoderSnapshot {
            supervisor: self.supervisor.snapshot(),
            pcm_dropped_encoder_down: l(&self.counters.dropped_not_running),
            mp3_frames_out: l(&self.counters.real_out),
            silence_frames_out: l(&self.counters.silence_out),
            mp3_frames_trimmed: l(&self.counters.trimmed),
            mp3_frames_skipped_behind: l(&self.counters.behind),
        }
    }

    /// Stops the supervisor and the encoder.
    pub fn stop(&self, timeout: Duration) -> Result<(), WorkerError> {
        self.supervisor.stop(timeout)
    }
}

impl PcmSink for EncoderManager {
    fn write_pcm(&self, frame: &PcmFrame) {
        EncoderManager::write_pcm(self, frame);
    }
}

/// The header bits a silence frame depends on: version, layer, bitrate,
/// sample rate, channel mode (not CRC, padding or joint-stereo extension,
/// which change from frame to frame).
fn silence_key(head: &[u8]) -> [u8; 4] {
    [head[0], head[1] | 0x01, head[2] & !0x03, head[3] & 0xC0]
}

/// Keeps the silence frame in step with the stream (same bitrate, rate and
/// channel mode), rebuilding it only when the header changes.
fn refresh_silence(out: &mut Output, frame: &[u8]) {
    let Some(head) = frame.get(..4) else { return };
    let key = silence_key(head);
    if key == out.silence_header {
        return;
    }
    if let Some(silence) = FrameHeader::parse([head[0], head[1], head[2], head[3]])
        .as_ref()
        .and_then(silent_frame_like)
    {
        out.silence_header = key;
        out.silence = Mp3Frame::from(silence);
    }
}

/// How the reader takes frames for a loop that wishes `gather`. While the
/// pacer settles (the first frames, those after silence or from a new
/// encoder) they are taken as they come: its tighter cap holds for a few
/// periods only, and the rest of a start's burst, taken in a turn after
/// them, would be judged against the full cap, leaving listeners that much
/// further ahead of the pace and the next turn that comes a little early
/// short of a frame (`tests/stream.rs` heard it in the fallback tone).
fn taking(gather: Gather, settling: bool) -> Gather {
    match gather {
        Gather::Every(_) if settling => Gather::No,
        wish => wish,
    }
}

/// Whether the pump's frames go to ffmpeg two at a time while the loop
/// takes them as `taking` says. ffmpeg wakes once per write, and a wake-up
/// costs it about as much as encoding a good part of a frame: in pairs it
/// used 0.61–0.65 % of a core here, frame by frame 0.71–0.79 % (5 and 100
/// listeners, the fallback tone), an eighth of the whole chain's CPU at a
/// home box's listener counts. A pair goes out on the tick of its second
/// frame, so the first waits a period; that costs nothing where the loop
/// would hold it anyway: in turns of an even number of periods, whose
/// phase the reader learns from the pairs themselves (each turn closing on
/// a pair's second frame), and when no one listens. Not when frames are
/// taken one by one (a listener asked for each as it comes, or the pacer
/// settles).
fn in_pairs(taking: Gather) -> bool {
    match taking {
        Gather::Idle => true,
        Gather::Every(span) => (whole_periods(span).as_nanos() / FRAME_DURATION.as_nanos()).is_multiple_of(2),
        Gather::No => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::FRAME_DURATION;
    use crate::encoder::fake::{FakeLauncher, FakeMode};
    use crate::encoder::state::{Liveness, RestartPolicy};

    /// What the broadcast thread does between sends: read ffmpeg's output
    /// into the ring, here for `d`.
    fn read_for(m: &EncoderManager, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            m.reader.lock().expect("reader").wait(until, Gather::No);
        }
    }

    fn manager(launcher: FakeLauncher) -> EncoderManager {
        EncoderManager::start(
            ManagerConfig {
                supervisor: SupervisorConfig {
                    liveness: Liveness {
                        startup_timeout: Duration::from_secs(2),
                        stall_timeout: Duration::from_secs(2),
                    },
                    policy: RestartPolicy {
                        backoff: vec![Duration::from_millis(300)],
                        ..RestartPolicy::default()
                    },
                },
                silence_after: Duration::from_millis(60),
                max_lead: Duration::from_millis(120),
                frame: FRAME_DURATION,
            },
            Box::new(launcher),
            Arc::new(FrameRing::new(100)),
        )
        .expect("start")
    }

    #[test]
    fn nothing_before_the_first_frame_then_real_frames_in_order() {
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        assert!(m.get_frame(Instant::now()).is_none());
        // Feed PCM a little slower than real time and take what is ready
        // each time, as the pump and the broadcast loop do: the pacer never
        // has a reason to drop anything (it may add silence, tag 0).
        let mut got = Vec::new();
        let feed = |tag: u8, got: &mut Vec<u8>| {
            let mut f = PcmFrame::silent();
            f.as_bytes_mut()[0] = tag;
            m.write_pcm(&f);
            read_for(&m, Duration::from_millis(30));
            while let Some(frame) = m.get_frame(Instant::now()) {
                got.push(frame[4]);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.state() != EncoderState::Running && Instant::now() < deadline {
            feed(1, &mut got);
        }
        assert_eq!(m.state(), EncoderState::Running);
        for tag in 2..6u8 {
            feed(tag, &mut got);
        }
        for _ in 0..3 {
            feed(0, &mut got);
        }
        // Frames come out in the order PCM went in.
        let tagged: Vec<u8> = got.iter().copied().filter(|&t| t > 1).collect();
        assert_eq!(tagged, vec![2, 3, 4, 5]);
        assert_eq!(m.snapshot().mp3_frames_trimmed, 0);
        m.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_broadcast_loop_far_behind_skips_the_oldest_frames_so_lag_stays_bounded() {
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        let frame: Mp3Frame = crate::encoder::mp3::canonical_silent_frame().into();
        let t0 = Instant::now();
        m.ring().push(frame.clone());
        assert!(m.get_frame(t0).is_some());
        for _ in 0..MAX_BACKLOG + 30 {
            m.ring().push(frame.clone());
        }
        assert!(m.get_frame(t0 + Duration::from_secs(1)).is_some());
        assert!(m.ring().len() < MAX_BACKLOG);
        assert_eq!(m.snapshot().mp3_frames_skipped_behind, 30);
        m.stop(Duration::from_secs(2)).expect("stop");
        // A new encoder's first burst is no sign of a loop behind: what the
        // pacer would trim anyway is counted as trimmed.
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        for _ in 0..MAX_BACKLOG + 30 {
            m.ring().push(frame.clone());
        }
        assert!(m.get_frame(Instant::now()).is_some());
        let s = m.snapshot();
        assert_eq!(s.mp3_frames_skipped_behind, 0);
        assert!(s.mp3_frames_trimmed >= 30, "{}", s.mp3_frames_trimmed);
        m.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_backlog_sent_slowly_is_not_taken_for_frames_too_far_ahead() {
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        let mut f = PcmFrame::silent();
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.state() != EncoderState::Running && Instant::now() < deadline {
            m.write_pcm(&f);
            read_for(&m, Duration::from_millis(24));
            m.drain(Instant::now, |_, _| {});
        }
        assert_eq!(m.state(), EncoderState::Running);
        // The broadcast loop was busy for 240 ms: ten frames wait. Each
        // then takes it 30 ms to send, longer than a frame lasts, and a new
        // frame arrives meanwhile. Listeners fall further behind, never
        // ahead: no frame may be dropped as too far ahead.
        for tag in 10..20u8 {
            f.as_bytes_mut()[0] = tag;
            m.write_pcm(&f);
        }
        let arrived = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while m.ring().len() < n && Instant::now() < deadline {
                read_for(&m, Duration::from_millis(1));
            }
        };
        arrived(10);
        let now = std::cell::Cell::new(Instant::now() + Duration::from_millis(240));
        let next = std::cell::Cell::new(20u8);
        let mut got = Vec::new();
        m.drain(
            || {
                // Once the last frame is in, the clock stands still and the
                // silence that brings listeners back to live ends.
                if next.get() < 50 {
                    now.set(now.get() + Duration::from_millis(30));
                }
                now.get()
            },
            |frame, _| {
                got.push(frame[4]);
                if next.get() < 50 {
                    let waiting = m.ring().len();
                    f.as_bytes_mut()[0] = next.get();
                    m.write_pcm(&f);
                    arrived(waiting + 1);
                    next.set(next.get() + 1);
                }
            },
        );
        let tagged: Vec<u8> = got.into_iter().filter(|&t| t >= 10).collect();
        assert_eq!(tagged, (10..50).collect::<Vec<u8>>());
        assert_eq!(m.snapshot().mp3_frames_trimmed, 0);
        m.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn pcm_is_dropped_silently_but_counted_while_the_encoder_is_down() {
        let launcher = FakeLauncher::new(FakeMode::Missing);
        let m = manager(launcher);
        wait_state(&m, EncoderState::Restarting);
        for _ in 0..5 {
            m.write_pcm(&PcmFrame::silent());
        }
        assert_eq!(m.snapshot().pcm_dropped_encoder_down, 5);
    }

    /// Waits (5 s at most) until `m` is in `state`.
    fn wait_state(m: &EncoderManager, state: EncoderState) {
        crate::testing::wait_until(Duration::from_secs(5), || m.state() == state);
    }

    /// Runs `m` like the pump and the broadcast loop for `d`: one PCM frame
    /// per 24 ms in, whatever is ready out. Returns the largest gap between
    /// frames handed out.
    fn run_for(m: &EncoderManager, d: Duration) -> Duration {
        let (start, frame) = (Instant::now(), PcmFrame::silent());
        let (mut next, mut last, mut gap) = (start, None::<Instant>, Duration::ZERO);
        while start.elapsed() < d {
            if Instant::now() >= next {
                m.write_pcm(&frame);
                next += FRAME_DURATION;
            }
            m.drain(Instant::now, |_, now| {
                gap = gap.max(last.map_or(Duration::ZERO, |l| now - l));
                last = Some(now);
            });
            read_for(m, Duration::from_millis(2));
        }
        gap
    }

    /// A manager whose fake encoder has run healthy for 300 ms, and its
    /// figures then.
    fn running_healthy() -> (EncoderManager, EncoderSnapshot) {
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        run_for(&m, Duration::from_millis(300));
        assert_eq!(m.state(), EncoderState::Running);
        let before = m.snapshot();
        (m, before)
    }

    /// A pump writing `frames` PCM frames 24 ms apart (calling
    /// `after_write` with each one's number) beside a broadcast loop that
    /// drains and waits with `gather`; returns the frames each turn sent.
    fn pump_beside_loop(
        m: &EncoderManager,
        frames: usize,
        gather: Gather,
        mut after_write: impl FnMut(usize) + Send,
    ) -> Vec<usize> {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let (frame, mut next) = (PcmFrame::silent(), Instant::now());
                for k in 0..frames {
                    m.write_pcm(&frame);
                    after_write(k);
                    next += FRAME_DURATION;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                stop.store(true, Ordering::SeqCst);
            });
            let mut per_turn = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let mut n = 0;
                m.drain(Instant::now, |_, _| n += 1);
                per_turn.push(n);
                m.wait(Instant::now(), gather);
            }
            per_turn
        })
    }

    #[test]
    fn with_no_one_to_send_to_frames_are_gathered_and_a_wake_up_ends_the_wait() {
        let (m, before) = running_healthy();
        // The pump for a second, beside the broadcast loop with no listener.
        let turns = pump_beside_loop(&m, 42, Gather::Idle, |_| {}).len() as u64;
        m.drain(Instant::now, |_, _| {});
        let after = m.snapshot();
        let real = after.mp3_frames_out - before.mp3_frames_out;
        let silence = after.silence_frames_out - before.silence_frames_out;
        assert!(real >= 35, "{real} frames of 42");
        // One turn per pacer deadline (3 to 4 frames), not one per frame.
        assert!(turns * 2 <= real, "{turns} turns for {real} frames");
        // The pacer's margin covers the wait: a wait past it would send
        // silence on every turn (10 or more here); a late wake-up on a
        // loaded or emulated machine (qemu-user, in CI) adds one now and then.
        assert!(
            silence * 10 <= real,
            "{silence} silence frames for {real} real ones in {turns} turns"
        );
        // A wake-up (a first listener, a stop) ends a gathering wait at once.
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                m.wake();
            });
            m.reader
                .lock()
                .expect("reader")
                .wait(t0 + Duration::from_secs(30), Gather::Idle);
        });
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }

    #[test]
    fn for_listeners_frames_are_taken_in_turns_of_four_that_end_as_the_fourth_comes() {
        let (m, before) = running_healthy();
        // The pump for two seconds, beside the broadcast loop for listeners
        // whose writes gather 4 frames.
        let per_turn = pump_beside_loop(&m, 84, Gather::Every(FRAME_DURATION * 4), |_| {});
        m.drain(Instant::now, |_, _| {});
        let after = m.snapshot();
        let real = after.mp3_frames_out - before.mp3_frames_out;
        let silence = after.silence_frames_out - before.silence_frames_out;
        assert!(real >= 75, "{real} frames of 84");
        let turns = per_turn.len() as u64;
        // One wake-up a turn, not one a frame.
        assert!(turns * 2 <= real, "{turns} turns for {real} frames: {per_turn:?}");
        // Most turns carry four frames: they end as the fourth comes, and a
        // late fourth is waited for, not left for the next turn.
        let full = per_turn.iter().filter(|n| **n == 4).count() as u64;
        assert!(full * 2 >= turns, "{full} turns of 4 frames of {turns}: {per_turn:?}");
        assert!(
            per_turn.iter().all(|n| *n <= 6),
            "no frame waits a turn more: {per_turn:?}"
        );
        assert!(
            silence * 10 <= real,
            "{silence} silence frames for {real} real ones: {per_turn:?}"
        );
    }

    #[test]
    fn while_the_pacer_settles_frames_are_taken_one_by_one_whatever_the_listeners_wish() {
        let every = Gather::Every(FRAME_DURATION * 4);
        assert_eq!(taking(every, true), Gather::No);
        assert_eq!(taking(every, false), every);
        assert_eq!(taking(Gather::Idle, true), Gather::Idle, "no one to send to: gathered");
        assert_eq!(taking(Gather::No, false), Gather::No);
    }

    #[test]
    fn pcm_goes_in_pairs_only_where_the_loop_holds_the_first_frame_anyway() {
        let every = |n| Gather::Every(FRAME_DURATION * n);
        assert!(in_pairs(every(4)), "turns of four close on a pair's second frame");
        assert!(in_pairs(every(2)));
        assert!(!in_pairs(every(3)), "an odd turn would split a pair");
        assert!(!in_pairs(every(1)));
        assert!(in_pairs(Gather::Idle), "no one listens: frames wait for the deadline");
        assert!(!in_pairs(Gather::No), "each frame as it comes");
        // 44.1 kHz frames (26.1 ms): a turn of four is four pump periods.
        assert!(in_pairs(Gather::Every(Duration::from_micros(26_122) * 4)));
        assert!(!in_pairs(taking(every(4), true)), "settling: one by one");
    }

    #[test]
    fn the_loops_way_of_taking_frames_decides_whether_the_pump_writes_pairs() {
        let (m, _) = running_healthy();
        let written = || m.snapshot().supervisor.pcm_frames_written;
        let frame = PcmFrame::silent();
        // No one to send to: the first frame is held, the second takes it along.
        m.wait(Instant::now(), Gather::Idle);
        let before = written();
        m.write_pcm(&frame);
        assert_eq!(written(), before, "the first of a pair is held");
        m.write_pcm(&frame);
        assert_eq!(written(), before + 2, "the pair goes out in one write");
        // A listener asks for every frame: each goes at once.
        m.wait(Instant::now(), Gather::No);
        m.write_pcm(&frame);
        assert_eq!(written(), before + 3);
    }

    #[test]
    fn a_relaunch_starts_the_new_command_at_once_counting_no_failure() {
        let m = manager(FakeLauncher::new(FakeMode::Healthy));
        run_for(&m, Duration::from_millis(500));
        assert_eq!(m.state(), EncoderState::Running);
        let before = m.snapshot();
        m.relaunch(
            Box::new(FakeLauncher::new(FakeMode::CrashAfter(1_000_000))),
            "new bitrate",
        );
        let gap = run_for(&m, Duration::from_millis(700));
        let s = m.snapshot();
        assert_eq!(m.state(), EncoderState::Running, "{:?}", s.supervisor.history);
        assert!(s.supervisor.command.contains("CrashAfter"), "{}", s.supervisor.command);
        assert_eq!((s.supervisor.restarts, s.supervisor.consecutive_failures), (0, 0));
        assert!(
            s.supervisor.failures.values().all(|n| *n == 0),
            "{:?}",
            s.supervisor.failures
        );
        let reasons: Vec<_> = s.supervisor.history.iter().map(|t| (t.to, t.reason.as_str())).collect();
        let tail = &reasons[reasons.len() - 3..];
        assert_eq!(tail[0], (EncoderState::Restarting, "relaunch: new bitrate"));
        assert_eq!(tail[1], (EncoderState::Starting, "relaunch: new bitrate"));
        assert_eq!(tail[2].0, EncoderState::Running);
        // Listeners got a frame (real or silence) at least every 60 ms + a
        // period, as through any restart.
        assert!(gap <= Duration::from_millis(150), "a {gap:?} gap");
        assert!(s.mp3_frames_out > before.mp3_frames_out + 10, "{s:?}");
        m.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_relaunch_of_a_failing_encoder_skips_the_backoff() {
        let launcher = FakeLauncher::new(FakeMode::Missing);
        let m = manager(launcher);
        wait_state(&m, EncoderState::Restarting);
        // Its next try is 300 ms away; the relaunch starts the new one now.
        let asked = Instant::now();
        m.relaunch(Box::new(FakeLauncher::new(FakeMode::Healthy)), "fixed the command");
        wait_state(&m, EncoderState::Starting);
        assert!(asked.elapsed() < Duration::from_millis(250), "{:?}", asked.elapsed());
        run_for(&m, Duration::from_millis(300));
        assert_eq!(m.state(), EncoderState::Running);
        assert_eq!(m.snapshot().supervisor.consecutive_failures, 0);
        m.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn silence_keeps_listeners_fed_while_the_encoder_restarts() {
        let launcher = FakeLauncher::new(FakeMode::Healthy);
        launcher.push_mode(FakeMode::CrashAfter(10));
        let m = manager(launcher);
        let start = Instant::now();
        let frame = PcmFrame::silent();
        let mut next = start;
        while start.elapsed() < Duration::from_secs(3) {
            // Like the pump: one PCM frame per 24 ms; like the broadcast
            // loop: take whatever is ready.
            if Instant::now() >= next {
                m.write_pcm(&frame);
                next += FRAME_DURATION;
            }
            while m.get_frame(Instant::now()).is_some() {}
            read_for(&m, Duration::from_millis(2));
        }
        let snap = m.snapshot();
        assert_eq!(snap.supervisor.restarts, 1, "{snap:?}");
        // The 300 ms restart gap was filled with silence frames...
        assert!(snap.silence_frames_out >= 8, "{snap:?}");
        // ...and listeners got about one frame per 24 ms throughout.
        let total = snap.mp3_frames_out + snap.silence_frames_out;
        assert!((100..=135).contains(&total), "{total} frames in 3 s");
        assert!(snap.mp3_frames_out > 50, "{snap:?}");
        m.stop(Duration::from_secs(2)).expect("stop");
    }
}
