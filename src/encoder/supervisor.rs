//! FFmpegSupervisor: owns one encoder process at a time and keeps it alive
//! [S1]–[S8].
//!
//! Thread: "encoder-supervisor" (this module's loop; owned by the
//! supervisor, owned in turn by the EncoderManager). It sleeps in `poll(2)`
//! on its wake-up, ffmpeg's stderr (logged as `[FFMPEG]` lines) and
//! ffmpeg's pidfd, until the next moment a liveness rule could be broken:
//! while all is well it wakes about once per stall timeout, not on a timer.
//! ffmpeg's stdout is read by the broadcast thread (`encoder::reader`),
//! which this module hands each new encoder's stdout to; the reader and
//! `write_pcm` only report events (first frame, end of output, broken
//! stdin); the loop alone decides: it applies the liveness rules, kills and
//! restarts on the backoff schedule, relaunches with a new command when
//! asked, and records every state change with its reason and time.
//!
//! `write_pcm` runs on the pump thread and never blocks: it only `try_lock`s
//! the stdin pipe, which the loop holds just long enough to swap it.

use std::collections::VecDeque;
use std::io::{ErrorKind, PipeReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self as channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::Mp3Frame;
use super::pipe::{PcmPipe, PipeWrite};
use super::process::{EncoderChild, EncoderLauncher, EncoderProcess, ExitInfo, set_nonblocking, wait_for_exit};
use super::reader::Reader;
use super::state::{AfterFailure, EncoderState, FailureKind, Liveness, RestartPolicy, StateMachine, Transition};
use crate::audio::PcmFrame;
use crate::encoder::ring::FrameRing;
use crate::ratelog::LineBudget;
use crate::worker::{StopSignal, WakeFd, Worker, WorkerError, poll_until, readable};

/// Lines of ffmpeg's stderr kept for failure reports.
const STDERR_TAIL: usize = 20;
/// The longest stderr line kept whole; longer ones are cut.
const STDERR_LINE: usize = 4096;
/// How often the loop looks at a process that has no pidfd (the in-tree
/// fake, or a kernel before 5.3): without one, an exit that leaves the
/// pipes open is only seen by looking.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often, and for how long, a running encoder is asked again to undo
/// what it needed at start ([`EncoderProcess::running`]): ffmpeg empties
/// its input pipe within a frame or two once it keeps up.
const SETTLE_EVERY: Duration = Duration::from_millis(24);
const SETTLE_WITHIN: Duration = Duration::from_secs(5);
/// After stdout EOF, how long to wait for the exit status (to report
/// `process_exit` with its code rather than a bare `eof`).
const EXIT_GRACE: Duration = Duration::from_millis(50);

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub liveness: Liveness,
    pub policy: RestartPolicy,
}

/// Called on every state change [S8], [M3].
pub type ChangeCallback = Box<dyn Fn(&Transition) + Send + Sync>;

type Stdin = PcmPipe<Box<dyn std::io::Write + Send>>;

/// What the reader (broadcast thread) reports. The pump reports a broken
/// stdin through [`Shared::stdin_broken`] instead: a message here can
/// allocate (the channel's blocks), and the pump must not.
#[derive(Debug)]
enum Event {
    FirstFrame { generation: u64 },
    Eof { generation: u64 },
}

/// A new encoder's stdout, handed to the reader.
pub(super) struct Feed {
    pub generation: u64,
    pub stdout: UnixStream,
}

#[derive(Default)]
struct Counters {
    pcm_written: AtomicU64,
    dropped_pipe_full: AtomicU64,
    dropped_busy: AtomicU64,
    dropped_not_running: AtomicU64,
    mp3_frames: AtomicU64,
    mp3_bytes_skipped: AtomicU64,
    restarts: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
}

/// What the loop, `write_pcm` (pump thread) and the reader (broadcast
/// thread) share.
pub(super) struct Shared {
    machine: Mutex<StateMachine>,
    stdin: Mutex<Option<Stdin>>,
    generation: AtomicU64,
    /// Nanoseconds after `base` of the last MP3 frame (0: none yet) for the
    /// current generation.
    last_frame_ns: AtomicU64,
    /// Encoders whose first frame has arrived (the pacer settles each one's
    /// first burst).
    starts: AtomicU64,
    consecutive: AtomicU32,
    pid: AtomicU32,
    base: Instant,
    /// The pump's report that writing PCM failed: the generation whose
    /// stdin broke (0: none), and the OS error (0: none given).
    stdin_broken: AtomicU64,
    stdin_errno: AtomicI32,
    events: Sender<Event>,
    /// Wakes the loop: an event was posted, a relaunch asked, or stop.
    wake: WakeFd,
    /// The newest encoder's stdout, until the reader takes it.
    feed: Mutex<Option<Feed>>,
    /// Wakes the reader: a feed was handed over, or the broadcast loop stops.
    reader_wake: WakeFd,
    /// A relaunch asked for: the new command and why.
    relaunch: Mutex<Option<(Box<dyn EncoderLauncher>, String)>>,
    ring: Arc<FrameRing<Mp3Frame>>,
    counters: Counters,
    stderr_tail: Mutex<VecDeque<String>>,
    command: Mutex<String>,
    on_change: ChangeCallback,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Tells the loop (one system call to wake it).
    fn post(&self, event: Event) {
        let _ = self.events.send(event);
        self.wake.wake();
    }

    /// The newest encoder's stdout, once.
    pub(super) fn take_feed(&self) -> Option<Feed> {
        lock(&self.feed).take()
    }

    pub(super) fn reader_wake(&self) -> &WakeFd {
        &self.reader_wake
    }

    /// A whole MP3 frame from encoder `generation` (`first`: its first).
    pub(super) fn on_frame(&self, generation: u64, frame: &[u8], first: bool) {
        self.ring.push(Mp3Frame::from(frame));
        self.counters.mp3_frames.fetch_add(1, Ordering::Relaxed);
        // A frame still buffered from an encoder already replaced must not
        // count as a sign of life of the new one.
        if generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
        self.last_frame_ns.store(ns, Ordering::Release);
        if first {
            self.starts.fetch_add(1, Ordering::Release);
            self.post(Event::FirstFrame { generation });
        }
    }

    /// Bytes of ffmpeg's output that were not whole audio frames.
    pub(super) fn skipped_bytes(&self, n: u64) {
        if n > 0 {
            self.counters.mp3_bytes_skipped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Encoder `generation`'s stdout reached its end.
    pub(super) fn on_eof(&self, generation: u64) {
        self.post(Event::Eof { generation });
    }
}

/// One transition in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub from: EncoderState,
    pub to: EncoderState,
    pub reason: String,
    /// RFC 3339, UTC.
    pub at: String,
}

impl From<&Transition> for TransitionView {
    fn from(t: &Transition) -> Self {
        TransitionView {
            from: t.from,
            to: t.to,
            reason: t.reason.clone(),
            at: humantime::format_rfc3339_millis(t.wall).to_string(),
        }
    }
}

/// The supervisor's view for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorSnapshot {
    pub state: EncoderState,
    pub state_since_s: f64,
    pub pid: Option<u32>,
    pub command: String,
    pub restarts: u64,
    pub consecutive_failures: u32,
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    pub pcm_frames_written: u64,
    pub pcm_dropped_pipe_full: u64,
    pub pcm_dropped_busy: u64,
    pub pcm_dropped_not_running: u64,
    pub mp3_frames: u64,
    /// Bytes of ffmpeg's output that were not whole audio frames: garbage
    /// between frames, or a frame cut short when an encoder ended.
    pub mp3_bytes_skipped: u64,
    pub history: Vec<TransitionView>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    worker: Mutex<Option<Worker<()>>>,
}

impl Supervisor {
    /// Starts the supervisor thread, which launches the first encoder at once.
    pub fn start(
        config: SupervisorConfig,
        launcher: Box<dyn EncoderLauncher>,
        ring: Arc<FrameRing<Mp3Frame>>,
        on_change: ChangeCallback,
    ) -> std::io::Result<Supervisor> {
        let (tx, rx) = channel::channel();
        let now = Instant::now();
        let shared = Arc::new(Shared {
            machine: Mutex::new(StateMachine::new(now)),
            stdin: Mutex::new(None),
            generation: AtomicU64::new(0),
            last_frame_ns: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            base: now,
            stdin_broken: AtomicU64::new(0),
            stdin_errno: AtomicI32::new(0),
            events: tx,
            wake: WakeFd::new()?,
            feed: Mutex::new(None),
            reader_wake: WakeFd::new()?,
            relaunch: Mutex::new(None),
            ring,
            counters: Counters::default(),
            stderr_tail: Mutex::new(VecDeque::new()),
            command: Mutex::new(launcher.describe()),
            on_change,
        });
        let thread_shared = shared.clone();
        let worker = Worker::spawn("encoder-supervisor", move |stop| {
            Loop {
                shared: thread_shared,
                config,
                launcher,
                events: rx,
                current: None,
                next_start: Some(Instant::now()),
                last_failure: None,
            }
            .run(&stop)
        })?;
        Ok(Supervisor {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The reader of the encoders' stdout, for the broadcast thread.
    pub(super) fn reader(&self) -> Reader {
        Reader::new(self.shared.clone())
    }

    /// Wakes the reader from its wait (the broadcast loop is stopping).
    /// How many encoders have sent their first frame so far.
    pub(super) fn starts(&self) -> u64 {
        self.shared.starts.load(Ordering::Acquire)
    }

    pub(super) fn wake_reader(&self) {
        self.shared.reader_wake.wake();
    }

    /// Ends the current encoder and starts `launcher`'s at once, through
    /// the restart path but with no backoff and no failure counted; the
    /// state history gives `reason`.
    pub fn relaunch(&self, launcher: Box<dyn EncoderLauncher>, reason: &str) {
        *lock(&self.shared.relaunch) = Some((launcher, reason.to_string()));
        self.shared.wake.wake();
    }

    /// Feeds one PCM frame to the encoder's stdin; never blocks [S2] and
    /// never allocates or frees (the pump runs at SCHED_FIFO): a broken
    /// pipe stays in place for the loop to drop, and is reported through
    /// two atomics and the wake-up. With `hold` the frame may wait to go
    /// out with the next one, in one write (`PcmPipe::write_frame`).
    pub fn write_pcm(&self, frame: &PcmFrame, hold: bool) {
        let c = &self.shared.counters;
        let mut guard = match self.shared.stdin.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // The supervisor is swapping the encoder right now.
                c.dropped_busy.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(pipe) = guard.as_mut().filter(|p| !p.is_broken()) else {
            c.dropped_not_running.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match pipe.write_frame(frame.as_bytes(), hold) {
            PipeWrite::Written(n) => {
                c.pcm_written.fetch_add(u64::from(n), Ordering::Relaxed);
            }
            PipeWrite::Full(n) => {
                c.dropped_pipe_full.fetch_add(u64::from(n), Ordering::Relaxed);
            }
            PipeWrite::Broken(e, n) => {
                c.dropped_not_running.fetch_add(u64::from(n), Ordering::Relaxed);
                let shared = &self.shared;
                shared
                    .stdin_errno
                    .store(e.raw_os_error().unwrap_or(0), Ordering::Relaxed);
                shared
                    .stdin_broken
                    .store(shared.generation.load(Ordering::SeqCst), Ordering::Release);
                shared.wake.wake();
            }
        }
    }

    pub fn state(&self) -> EncoderState {
        lock(&self.shared.machine).state()
    }

    pub fn snapshot(&self) -> SupervisorSnapshot {
        let (state, since, history) = {
            let m = lock(&self.shared.machine);
            (m.state(), m.since(), m.history().map(TransitionView::from).collect())
        };
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pid = self.shared.pid.load(Ordering::Relaxed);
        SupervisorSnapshot {
            state,
            state_since_s: since.elapsed().as_secs_f64(),
            pid: (pid != 0).then_some(pid),
            command: lock(&self.shared.command).clone(),
            restarts: l(&c.restarts),
            consecutive_failures: self.shared.consecutive.load(Ordering::Relaxed),
            failures: FailureKind::ALL
                .iter()
                .map(|k| (k.as_str(), l(&c.failures[k.index()])))
                .collect(),
            pcm_frames_written: l(&c.pcm_written),
            pcm_dropped_pipe_full: l(&c.dropped_pipe_full),
            pcm_dropped_busy: l(&c.dropped_busy),
            pcm_dropped_not_running: l(&c.dropped_not_running),
            mp3_frames: l(&c.mp3_frames),
            mp3_bytes_skipped: l(&c.mp3_bytes_skipped),
            history,
        }
    }

    /// Stops the loop and the encoder (STOPPED); waits at most `timeout`.
    pub fn stop(&self, timeout: Duration) -> Result<(), WorkerError> {
        match lock(&self.worker).take() {
            Some(w) => {
                w.stop_signal().stop();
                self.shared.wake.wake();
                w.stop(timeout)
            }
            None => Ok(()),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
    }
}

/// The encoder instance the loop currently owns.
struct Instance {
    generation: u64,
    process: Box<dyn EncoderProcess>,
    /// Non-blocking; `None` once it reached its end.
    stderr: Option<PipeReader>,
    /// A stderr line not yet ended.
    line: Vec<u8>,
    /// ffmpeg can print a line per frame when something is wrong; keep the
    /// journal readable.
    budget: LineBudget,
    started: Instant,
    running_since: Option<Instant>,
    /// Until when [`EncoderProcess::running`] is asked again, while it
    /// says its start is not undone yet.
    settling_until: Option<Instant>,
}

impl Instance {
    /// Asks the process again to undo its start, until it has or
    /// [`SETTLE_WITHIN`] passed.
    fn settle(&mut self, now: Instant) {
        let Some(until) = self.settling_until else { return };
        if self.process.running() {
            self.settling_until = None;
        } else if now >= until {
            self.settling_until = None;
            tracing::warn!(
                component = "encoder",
                "ffmpeg's input pipe stayed full for {} s after its start (it is not keeping up): it stays at its start size, so up to 0.7 s of PCM may queue before ffmpeg",
                SETTLE_WITHIN.as_secs()
            );
        }
    }

    /// Logs what ffmpeg wrote on stderr since the last look, line by line,
    /// and keeps the last lines for failure reports.
    fn read_stderr(&mut self, shared: &Shared) {
        let Some(mut stderr) = self.stderr.take() else { return };
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
                        self.line.extend_from_slice(piece);
                        if piece.ends_with(b"\n") || self.line.len() >= STDERR_LINE {
                            let line = std::mem::take(&mut self.line);
                            self.log_line(&line, shared);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.stderr = Some(stderr);
                    return;
                }
                Err(_) => break,
            }
        }
        // Its end: what is left of the last line, and no more polling.
        let rest = std::mem::take(&mut self.line);
        self.log_line(&rest, shared);
    }

    fn log_line(&mut self, line: &[u8], shared: &Shared) {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if text.is_empty() {
            return;
        }
        match self.budget.take(Instant::now()) {
            Some(0) => tracing::warn!(component = "ffmpeg", "[FFMPEG] {text}"),
            Some(suppressed) => tracing::warn!(
                component = "ffmpeg",
                suppressed,
                "[FFMPEG] {text} ({suppressed} earlier lines suppressed)"
            ),
            None => {}
        }
        let mut tail = lock(&shared.stderr_tail);
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

struct Loop {
    shared: Arc<Shared>,
    config: SupervisorConfig,
    launcher: Box<dyn EncoderLauncher>,
    events: Receiver<Event>,
    current: Option<Instance>,
    /// When to (re)start the encoder if none is running.
    next_start: Option<Instant>,
    last_failure: Option<FailureKind>,
}

impl Loop {
    fn run(mut self, stop: &StopSignal) {
        while !stop.is_stopped() {
            let deadline = self.next_check(Instant::now());
            self.wait(deadline);
            if stop.is_stopped() {
                break;
            }
            self.shared.wake.clear();
            self.take_relaunch();
            while let Ok(e) = self.events.try_recv() {
                self.on_event(e);
            }
            self.take_stdin_broken();
            if let Some(c) = self.current.as_mut() {
                c.read_stderr(&self.shared);
                c.settle(Instant::now());
            }
            self.check(Instant::now());
        }
        self.shutdown();
    }

    /// Sleeps until `deadline` (for ever: `None`), or until woken, ffmpeg
    /// writes on stderr, or ffmpeg ends.
    fn wait(&self, deadline: Option<Instant>) {
        let mut fds = [readable(self.shared.wake.fd()), readable(-1), readable(-1)];
        if let Some(c) = &self.current {
            if let Some(e) = &c.stderr {
                fds[1].fd = e.as_raw_fd();
            }
            if let Some(p) = c.process.exit_fd() {
                fds[2].fd = p.as_raw_fd();
            }
        }
        poll_until(&mut fds, deadline);
    }

    /// When the loop must look next if nothing wakes it: a due start, the
    /// moment a liveness rule could be broken, the end of the time to a
    /// stable encoder, or (without a pidfd) [`CHECK_EVERY`].
    fn next_check(&self, now: Instant) -> Option<Instant> {
        let Some(c) = &self.current else {
            return self.next_start;
        };
        let state = lock(&self.shared.machine).state();
        let mut next = self.config.liveness.next_check(state, c.started, self.last_frame());
        let earliest = |a: Option<Instant>, b: Instant| Some(a.map_or(b, |a| a.min(b)));
        if let Some(since) = c.running_since
            && self.shared.consecutive.load(Ordering::Relaxed) > 0
        {
            next = earliest(next, since + self.config.policy.stable_after);
        }
        if c.process.exit_fd().is_none() {
            next = earliest(next, now + CHECK_EVERY);
        }
        if c.settling_until.is_some() {
            next = earliest(next, now + SETTLE_EVERY);
        }
        next
    }

    fn last_frame(&self) -> Option<Instant> {
        match self.shared.last_frame_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.shared.base + Duration::from_nanos(ns)),
        }
    }

    fn transition(&self, to: EncoderState, reason: String) {
        let result = lock(&self.shared.machine).transition(to, reason, Instant::now(), SystemTime::now());
        match result {
            Ok(t) => {
                let level_error = matches!(t.to, EncoderState::Failed);
                if level_error {
                    tracing::error!(component = "encoder", state = %t.to, from = %t.from, reason = %t.reason, "encoder state: {} -> {}", t.from, t.to);
                } else {
                    tracing::info!(component = "encoder", state = %t.to, from = %t.from, reason = %t.reason, "encoder state: {} -> {}", t.from, t.to);
                }
                (self.shared.on_change)(&t);
            }
            // A bug in this loop, not a runtime condition: make it loud.
            Err(e) => tracing::error!(component = "encoder", "{e}"),
        }
    }

    fn current_generation(&self, generation: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.generation == generation)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::FirstFrame { generation } if self.current_generation(generation) => {
                let now = Instant::now();
                if let Some(c) = self.current.as_mut() {
                    c.running_since = Some(now);
                    c.settling_until = (!c.process.running()).then_some(now + SETTLE_WITHIN);
                    let ms = now.saturating_duration_since(c.started).as_millis();
                    self.transition(EncoderState::Running, format!("first MP3 frame {ms} ms after start"));
                }
            }
            Event::Eof { generation } if self.current_generation(generation) => {
                self.fail_unless_exited(FailureKind::Eof, "ffmpeg closed its output".into());
            }
            _ => {} // from an instance already replaced
        }
    }

    /// The pump found the current encoder's stdin broken.
    fn take_stdin_broken(&mut self) {
        let generation = self.shared.stdin_broken.swap(0, Ordering::Acquire);
        if generation == 0 || !self.current_generation(generation) {
            return; // none, or an instance already replaced
        }
        let error = match self.shared.stdin_errno.load(Ordering::Relaxed) {
            0 => "the pipe took no bytes".to_string(),
            code => std::io::Error::from_raw_os_error(code).to_string(),
        };
        self.fail_unless_exited(FailureKind::StdinBroken, format!("writing PCM failed: {error}"));
    }

    /// A relaunch asked for: the current encoder ends and the new command
    /// starts at once; no failure is counted and the backoff starts over.
    fn take_relaunch(&mut self) {
        let Some((launcher, reason)) = lock(&self.shared.relaunch).take() else {
            return;
        };
        self.launcher = launcher;
        let command = self.launcher.describe();
        tracing::info!(component = "encoder", %command, "relaunching the encoder: {reason}");
        *lock(&self.shared.command) = command;
        self.end_instance();
        let state = lock(&self.shared.machine).state();
        if matches!(state, EncoderState::Starting | EncoderState::Running) {
            self.transition(EncoderState::Restarting, format!("relaunch: {reason}"));
        }
        self.shared.consecutive.store(0, Ordering::Relaxed);
        self.last_failure = None;
        self.launch(Instant::now(), Some(format!("relaunch: {reason}")));
    }

    /// A closed pipe usually means ffmpeg exited: if it has within
    /// [`EXIT_GRACE`], that is the failure, with its exit code; otherwise
    /// `kind`.
    fn fail_unless_exited(&mut self, kind: FailureKind, detail: String) {
        let exit = self
            .current
            .as_mut()
            .and_then(|c| wait_for_exit(c.process.as_mut(), EXIT_GRACE));
        match exit {
            Some(info) => self.fail(FailureKind::ProcessExit, info.to_string()),
            None => self.fail(kind, detail),
        }
    }

    fn check(&mut self, now: Instant) {
        let state = lock(&self.shared.machine).state();
        let last = self.last_frame();
        let Some(current) = self.current.as_mut() else {
            if self.next_start.is_some_and(|t| now >= t) {
                self.launch(now, None);
            }
            return;
        };
        if let Ok(Some(info)) = current.process.try_wait() {
            self.fail(FailureKind::ProcessExit, info.to_string());
            return;
        }
        if let Some(kind) = self.config.liveness.check(state, current.started, last, now) {
            let detail = match kind {
                FailureKind::StartupTimeout => format!(
                    "no MP3 frame within {} ms of start",
                    self.config.liveness.startup_timeout.as_millis()
                ),
                _ => format!(
                    "no MP3 frame for {} ms",
                    last.map_or(0, |l| now.saturating_duration_since(l).as_millis())
                ),
            };
            self.fail(kind, detail);
            return;
        }
        if let Some(since) = current.running_since
            && now.saturating_duration_since(since) >= self.config.policy.stable_after
            && self.shared.consecutive.load(Ordering::Relaxed) > 0
        {
            self.shared.consecutive.store(0, Ordering::Relaxed);
            tracing::debug!(component = "encoder", "encoder stable again; backoff reset");
        }
    }

    /// Starts an encoder; `why` overrides the reason the history gives.
    fn launch(&mut self, now: Instant, why: Option<String>) {
        self.next_start = None;
        let reason = why.unwrap_or_else(|| match (lock(&self.shared.machine).state(), self.last_failure) {
            (EncoderState::Stopped, _) => "service start".to_string(),
            (EncoderState::Failed, Some(k)) => format!("slow retry after {k}"),
            (_, Some(k)) => format!("restart after {k}"),
            (_, None) => "start".to_string(),
        });
        self.transition(EncoderState::Starting, reason);
        if self.last_failure.is_some() {
            self.shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.last_frame_ns.store(0, Ordering::Release);
        lock(&self.shared.stderr_tail).clear();
        let child = match self.launcher.launch() {
            Ok(c) => c,
            Err(e) => {
                self.fail(FailureKind::SpawnFailed, e.to_string());
                return;
            }
        };
        let EncoderChild {
            stdin,
            stdout,
            stderr,
            mut process,
        } = child;
        // Read only when poll(2) says so, but a read must never block the
        // loop. (stdout's reader waits with a receive timeout instead.)
        if let Err(e) = set_nonblocking(&stderr) {
            process.kill();
            self.fail(
                FailureKind::SpawnFailed,
                format!("cannot set up ffmpeg's output pipes: {e}"),
            );
            return;
        }
        self.shared.pid.store(process.pid().unwrap_or(0), Ordering::Relaxed);
        *lock(&self.shared.stdin) = Some(PcmPipe::new(stdin));
        *lock(&self.shared.feed) = Some(Feed { generation, stdout });
        self.shared.reader_wake.wake();
        self.current = Some(Instance {
            generation,
            process,
            stderr: Some(stderr),
            line: Vec::new(),
            budget: LineBudget::new(20, Duration::from_secs(10)),
            started: now,
            running_since: None,
            settling_until: None,
        });
    }

    /// Ends the current instance (its whole process group) and reaps it;
    /// its last stderr lines go to the tail.
    fn end_instance(&mut self) -> Option<ExitInfo> {
        self.close_stdin();
        self.shared.pid.store(0, Ordering::Relaxed);
        let mut current = self.current.take()?;
        let info = current.process.kill();
        current.read_stderr(&self.shared);
        Some(info)
    }

    /// Drops the current encoder's stdin; a frame it held for a pair
    /// (`PcmPipe`) is lost with it, and counted.
    fn close_stdin(&self) {
        if let Some(pipe) = lock(&self.shared.stdin).take() {
            let held = u64::from(pipe.held());
            self.shared
                .counters
                .dropped_not_running
                .fetch_add(held, Ordering::Relaxed);
        }
    }

    fn fail(&mut self, kind: FailureKind, detail: String) {
        let exit = self.end_instance();
        let c = &self.shared.counters;
        c.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
        let consecutive = self.shared.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_failure = Some(kind);
        let tail: Vec<String> = lock(&self.shared.stderr_tail).iter().cloned().collect();
        let exit_text = exit.map_or_else(|| "not started".to_string(), |e| e.to_string());
        tracing::error!(
            component = "encoder",
            failure = %kind,
            exit = %exit_text,
            consecutive,
            stderr_tail = %tail.join(" | "),
            "encoder failed ({kind}): {detail}"
        );
        let now = Instant::now();
        match self.config.policy.after_failure(consecutive) {
            AfterFailure::Restart(delay) => {
                self.next_start = Some(now + delay);
                self.transition(
                    EncoderState::Restarting,
                    format!("{kind}: {detail}; restart in {} ms", delay.as_millis()),
                );
            }
            AfterFailure::GiveUp(retry) => {
                self.next_start = Some(now + retry);
                self.transition(
                    EncoderState::Failed,
                    format!(
                        "{kind}: {detail}; {consecutive} failures in a row, retrying every {} s",
                        retry.as_secs()
                    ),
                );
            }
        }
    }

    fn shutdown(&mut self) {
        // Closing stdin lets ffmpeg flush and exit; kill it if it lingers.
        self.close_stdin();
        if let Some(c) = self.current.as_mut() {
            let _ = wait_for_exit(c.process.as_mut(), Duration::from_millis(200));
        }
        self.end_instance();
        self.transition(EncoderState::Stopped, "service stopping".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::fake::{FakeLauncher, FakeMode};
    use crate::encoder::mp3::canonical_silent_frame;

    fn config() -> SupervisorConfig {
        SupervisorConfig {
            // Short enough for quick tests, long enough for a loaded CI
            // machine and for qemu-emulated aarch64 runs.
            liveness: Liveness {
                startup_timeout: Duration::from_millis(1500),
                stall_timeout: Duration::from_millis(1500),
            },
            policy: RestartPolicy {
                backoff: vec![Duration::from_millis(10), Duration::from_millis(20)],
                max_restarts: 3,
                failed_retry: Duration::from_millis(200),
                stable_after: Duration::from_millis(100),
            },
        }
    }

    struct Rig {
        sup: Supervisor,
        ring: Arc<FrameRing<Mp3Frame>>,
        changes: Arc<Mutex<Vec<(EncoderState, EncoderState, String)>>>,
        /// The broadcast thread's part: reading ffmpeg's output.
        reading: Option<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            if let Some((stop, thread)) = self.reading.take() {
                stop.store(true, Ordering::SeqCst);
                let _ = thread.join();
            }
        }
    }

    fn rig(launcher: FakeLauncher) -> Rig {
        let ring = Arc::new(FrameRing::new(1000));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c = changes.clone();
        let sup = Supervisor::start(
            config(),
            Box::new(launcher),
            ring.clone(),
            Box::new(move |t| lock(&c).push((t.from, t.to, t.reason.clone()))),
        )
        .expect("start");
        let mut reader = sup.reader();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                reader.wait(Instant::now() + Duration::from_millis(20), crate::encoder::Gather::No);
            }
        });
        Rig {
            sup,
            ring,
            changes,
            reading: Some((stop, thread)),
        }
    }

    /// Feeds PCM like the pump until `done` holds or 10 s pass.
    fn pump_until(r: &Rig, mut done: impl FnMut(&Rig) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let frame = PcmFrame::silent();
        while Instant::now() < deadline {
            if done(r) {
                return true;
            }
            r.sup.write_pcm(&frame, false);
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// A rig whose first encoder runs `mode`, once the supervisor has
    /// restarted it after `failure` and the next one runs.
    fn recovered_from(mode: FakeMode, failure: &str) -> Rig {
        let launcher = FakeLauncher::new(FakeMode::Healthy);
        launcher.push_mode(mode);
        let r = rig(launcher);
        assert!(pump_until(&r, |r| saw(r, EncoderState::Restarting, failure)
            && r.sup.state() == EncoderState::Running));
        r
    }

    fn saw(r: &Rig, to: EncoderState, reason_part: &str) -> bool {
        lock(&r.changes)
            .iter()
            .any(|(_, t, why)| *t == to && why.contains(reason_part))
    }

    #[test]
    fn healthy_encoder_reaches_running_and_frames_reach_the_ring() {
        let r = rig(FakeLauncher::new(FakeMode::Healthy));
        assert!(pump_until(&r, |r| r.ring.len() >= 5));
        assert_eq!(r.sup.state(), EncoderState::Running);
        r.sup.stop(Duration::from_secs(2)).expect("stop");
        let changes = lock(&r.changes).clone();
        let states: Vec<_> = changes.iter().map(|c| c.1).collect();
        assert_eq!(
            states,
            [EncoderState::Starting, EncoderState::Running, EncoderState::Stopped]
        );
        assert!(changes[1].2.contains("first MP3 frame"));
        let snap = r.sup.snapshot();
        assert_eq!(snap.history.len(), 3);
        assert_eq!(snap.restarts, 0);
    }

    #[test]
    fn a_crash_is_restarted_and_the_ring_keeps_its_frames() {
        let r = recovered_from(FakeMode::CrashAfter(3), "process_exit");
        let snap = r.sup.snapshot();
        assert_eq!(snap.restarts, 1);
        assert_eq!(snap.failures["process_exit"], 1);
        // Frames from before the crash are still there [S7].
        assert!(r.ring.stats().pushed >= 3);
        assert!(r.ring.len() >= 3);
        r.sup.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_frame_cut_short_by_a_crash_is_counted_and_the_next_stream_is_whole() {
        let launcher = FakeLauncher::new(FakeMode::Healthy);
        launcher.push_mode(FakeMode::TornAfter(3));
        let r = rig(launcher);
        let before = r.ring.stats().pushed;
        assert!(pump_until(&r, |r| saw(r, EncoderState::Restarting, "process_exit")
            && r.sup.state() == EncoderState::Running
            && r.ring.stats().pushed >= before + 6));
        let snap = r.sup.snapshot();
        assert_eq!(snap.mp3_bytes_skipped, (canonical_silent_frame().len() / 2) as u64);
        // Every frame that reached the ring is whole.
        let whole = canonical_silent_frame().len();
        while let Some(f) = r.ring.pop() {
            assert_eq!(f.len(), whole);
        }
        assert_eq!(snap.mp3_frames, r.ring.stats().pushed);
    }

    #[test]
    fn what_an_encoder_wrote_before_a_relaunch_still_reaches_the_ring() {
        let sup = Supervisor::start(
            config(),
            Box::new(FakeLauncher::new(FakeMode::Healthy)),
            Arc::new(FrameRing::new(1000)),
            Box::new(|_| {}),
        )
        .expect("start");
        let mut reader = sup.reader();
        let silent = PcmFrame::silent();
        let read =
            |reader: &mut Reader| reader.wait(Instant::now() + Duration::from_millis(20), crate::encoder::Gather::No);
        // Running, with its stdout taken by the reader.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sup.state() != EncoderState::Running && Instant::now() < deadline {
            sup.write_pcm(&silent, false);
            read(&mut reader);
        }
        assert_eq!(sup.state(), EncoderState::Running);
        // Ten marked frames (the fake copies the first sample into bytes
        // 4 and 5 of its MP3 frame) wait unread when the relaunch comes.
        let mut marked = PcmFrame::silent();
        marked.as_bytes_mut()[..2].copy_from_slice(&[0x77, 0x77]);
        for _ in 0..10 {
            sup.write_pcm(&marked, false);
        }
        let whole = canonical_silent_frame().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while reader.unread() < 10 * whole && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(reader.unread() >= 10 * whole, "the fake wrote its frames");
        sup.relaunch(Box::new(FakeLauncher::new(FakeMode::Healthy)), "test");
        // The new encoder's stdout is handed over before the reader looks.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&sup.shared.feed).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sup.starts() < 2 && Instant::now() < deadline {
            sup.write_pcm(&silent, false);
            read(&mut reader);
        }
        assert_eq!(sup.starts(), 2, "the new encoder's first frame");
        let mut frames = Vec::new();
        while let Some(f) = sup.shared.ring.pop() {
            frames.push(f);
        }
        let first_marked = frames.iter().position(|f| f[4..6] == [0x77, 0x77]);
        let marked_frames = frames.iter().filter(|f| f[4..6] == [0x77, 0x77]).count();
        assert_eq!(marked_frames, 10, "{} frames in the ring", frames.len());
        // In order, before the new encoder's stream.
        let at = first_marked.expect("marked");
        assert!(frames[at..at + 10].iter().all(|f| f[4..6] == [0x77, 0x77]));
        assert!(frames[at + 10..].iter().all(|f| f[4..6] != [0x77, 0x77]));
        assert_eq!(sup.snapshot().mp3_bytes_skipped, 0);
        sup.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn no_first_frame_is_a_startup_timeout() {
        let r = recovered_from(FakeMode::Mute, "startup_timeout");
        assert_eq!(r.sup.snapshot().failures["startup_timeout"], 1);
    }

    #[test]
    fn a_stall_is_detected_and_restarted() {
        let r = recovered_from(FakeMode::StallAfter(5), "stall");
        assert_eq!(r.sup.snapshot().failures["stall"], 1);
    }

    #[test]
    fn a_closed_stdin_is_a_stdin_failure_that_is_restarted() {
        let r = recovered_from(FakeMode::ClosesStdinAfter(5), "stdin_broken");
        let snap = r.sup.snapshot();
        assert_eq!(snap.failures["stdin_broken"], 1);
        assert_eq!(snap.restarts, 1);
        assert!(
            saw(&r, EncoderState::Restarting, "writing PCM failed: Broken pipe"),
            "{:?}",
            lock(&r.changes)
        );
        // The PCM written while the broken pipe waited for the loop was
        // counted as dropped, and the new encoder is written to again.
        assert!(snap.pcm_dropped_not_running >= 1);
        let written = snap.pcm_frames_written;
        assert!(pump_until(&r, |r| r.sup.snapshot().pcm_frames_written > written + 5));
    }

    #[test]
    fn repeated_failures_end_in_failed_and_a_slow_retry_heals() {
        let launcher = FakeLauncher::new(FakeMode::Healthy);
        for _ in 0..3 {
            launcher.push_mode(FakeMode::ExitAtOnce(1));
        }
        let r = rig(launcher);
        assert!(pump_until(&r, |r| saw(r, EncoderState::Failed, "3 failures in a row")));
        assert!(pump_until(&r, |r| r.sup.state() == EncoderState::Running));
        assert!(saw(&r, EncoderState::Starting, "slow retry"));
        // Stable for long enough: the consecutive count resets.
        assert!(pump_until(&r, |r| r.sup.snapshot().consecutive_failures == 0));
    }

    #[test]
    fn a_missing_program_is_a_spawn_failure_that_is_retried() {
        let launcher = FakeLauncher::new(FakeMode::Healthy);
        launcher.push_mode(FakeMode::Missing);
        let r = rig(launcher);
        assert!(pump_until(&r, |r| r.sup.state() == EncoderState::Running));
        assert!(saw(&r, EncoderState::Restarting, "spawn_failed"));
    }

    #[test]
    fn pcm_is_dropped_and_counted_when_no_encoder_runs() {
        let launcher = FakeLauncher::new(FakeMode::Missing);
        let r = rig(launcher);
        assert!(pump_until(&r, |r| r.sup.snapshot().pcm_dropped_not_running > 10));
        assert_eq!(r.sup.snapshot().pcm_frames_written, 0);
    }
}
