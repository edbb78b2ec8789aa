//! The pump's tick allocates nothing (issue 26 item 8): it runs at
//! SCHED_FIFO, and a malloc there can wait on another thread's arena lock.
//!
//! A counting global allocator counts the allocations of the threads that
//! switched counting on, while a window is open. Three checks: the PCM
//! pipe alone over many frames with partial writes and full pipes; the
//! real pump ticking into the real encoder manager whose stdin pipe is
//! read too slowly, so frames are split and dropped; and the same with an
//! encoder that closes its stdin again and again, so the pump finds the
//! pipe broken and reports it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower::audio::PcmFrame;
use tower::audio::router::AudioInputRouter;
use tower::encoder::fake::{FakeLauncher, FakeMode};
use tower::encoder::pipe::{PcmPipe, PipeWrite};
use tower::encoder::process::{EncoderChild, EncoderLauncher, EncoderProcess, ExitInfo, LaunchError};
use tower::encoder::ring::FrameRing;
use tower::encoder::state::{Liveness, RestartPolicy};
use tower::encoder::supervisor::SupervisorConfig;
use tower::encoder::{EncoderManager, EncoderState, ManagerConfig};
use tower::hooks::TestHooks;
use tower::pump::fallback::Fallback;
use tower::pump::{PcmSink, Pump, PumpConfig};

struct Counting;

/// Counting happens only while the window is open...
static WINDOW: AtomicBool = AtomicBool::new(false);
// ...and only on threads that asked for it.
thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note() {
    if WINDOW.load(Ordering::Relaxed) && COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the allocations and frees `f` makes on this thread.
fn counted(f: impl FnOnce()) -> u64 {
    COUNTED.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    WINDOW.store(true, Ordering::SeqCst);
    f();
    WINDOW.store(false, Ordering::SeqCst);
    COUNTED.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// A pipe that takes an odd number of bytes per call and is full every
/// third call.
struct Choppy {
    calls: u64,
    taken: u64,
}

impl Write for Choppy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(1000 + (self.calls * 7919 % 3000) as usize);
        self.taken += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_pcm_pipe_allocates_nothing_for_pairs_partial_writes_and_full_pipes() {
    let frame = PcmFrame::silent();
    let mut pipe = PcmPipe::new(Choppy { calls: 0, taken: 0 });
    let (mut partial, mut full, mut held, mut pairs) = (0, 0, 0, 0);
    let allocations = counted(|| {
        for i in 0..10_000 {
            // Held for pairs most of the time, frame by frame now and then.
            match pipe.write_frame(frame.as_bytes(), i % 5 != 0) {
                PipeWrite::Written(0) => held += 1,
                PipeWrite::Written(n) if pipe.pending() > 0 => {
                    partial += 1;
                    pairs += usize::from(n == 2);
                }
                PipeWrite::Written(n) => pairs += usize::from(n == 2),
                PipeWrite::Full(_) => full += 1,
                PipeWrite::Broken(e, _) => panic!("{e}"),
            }
        }
    });
    assert!(
        partial > 1000 && full > 1000 && held > 1000 && pairs > 1000,
        "{partial} partial, {full} full, {held} held, {pairs} pairs"
    );
    assert_eq!(allocations, 0, "allocations or frees over 10 000 frames");
}

/// An encoder whose stdin is read a little slower than real time (175
/// bytes per ms against the pump's 192), so the pipe fills and frames are
/// split across ticks; it never answers (the manager stays STARTING).
struct SlowReader;

struct SlowProcess {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EncoderProcess for SlowProcess {
    fn pid(&self) -> Option<u32> {
        None
    }
    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>> {
        Ok(None)
    }
    fn kill(&mut self) -> ExitInfo {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        ExitInfo::code(0)
    }
}

impl EncoderLauncher for SlowReader {
    fn describe(&self) -> String {
        "slow reader".into()
    }
    fn launch(&self) -> Result<EncoderChild, LaunchError> {
        let err = |source| LaunchError::Spawn {
            program: "slow reader".into(),
            source,
        };
        let (mut stdin_r, stdin_w) = io::pipe().map_err(err)?;
        let (stdout_r, stdout_w) = std::os::unix::net::UnixStream::pair().map_err(err)?;
        let (stderr_r, stderr_w) = io::pipe().map_err(err)?;
        tower::encoder::process::set_nonblocking(&stdin_w).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let _keep = (stdout_w, stderr_w);
            let mut buf = [0u8; 700];
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(4));
                if stdin_r.read(&mut buf).is_err() {
                    break;
                }
            }
        });
        Ok(EncoderChild {
            stdin: Box::new(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
            process: Box::new(SlowProcess {
                stop,
                thread: Some(thread),
            }),
        })
    }
}

/// Passes frames on, counting from the pump thread's first write on.
struct CountingSink(Arc<EncoderManager>);

impl PcmSink for CountingSink {
    fn write_pcm(&self, frame: &PcmFrame) {
        COUNTED.with(|c| c.set(true));
        self.0.write_pcm(frame);
    }
}

/// The real encoder manager with `launcher`, restarting 50 ms after a
/// failure, with liveness timeouts too long to end an encoder.
fn manager(launcher: Box<dyn EncoderLauncher>) -> Arc<EncoderManager> {
    let long = Duration::from_secs(600);
    Arc::new(
        EncoderManager::start(
            ManagerConfig {
                supervisor: SupervisorConfig {
                    liveness: Liveness {
                        startup_timeout: long,
                        stall_timeout: long,
                    },
                    policy: RestartPolicy {
                        backoff: vec![Duration::from_millis(50)],
                        max_restarts: 1000,
                        ..RestartPolicy::default()
                    },
                },
                silence_after: Duration::from_millis(60),
                max_lead: Duration::from_millis(120),
                frame: tower::audio::FRAME_DURATION,
            },
            launcher,
            Arc::new(FrameRing::new(16)),
        )
        .expect("manager"),
    )
}

/// The real pump, fed by its fallback tone, writing to `manager` and
/// counting its own allocations.
fn pump(manager: &Arc<EncoderManager>) -> Pump {
    let router = Arc::new(AudioInputRouter::new(8));
    Pump::start(
        PumpConfig {
            grace: Duration::from_millis(50),
            realtime_priority: 0,
            hooks: Arc::new(TestHooks::disabled()),
        },
        router,
        Arc::new(CountingSink(manager.clone())),
        Fallback::tone(),
        &tower::worker::Supervisor::none(),
    )
    .expect("pump")
}

#[test]
fn the_pump_tick_allocates_nothing_while_the_encoder_pipe_is_full() {
    let manager = manager(Box::new(SlowReader));
    let deadline = Instant::now() + Duration::from_secs(5);
    while manager.state() != EncoderState::Starting && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pump = pump(&manager);
    // Warm up: the fallback starts, the pipe fills.
    std::thread::sleep(Duration::from_secs(1));
    let before = (
        pump.stats().ticks(),
        manager.snapshot().supervisor.pcm_dropped_pipe_full,
    );
    let start = ALLOCATIONS.load(Ordering::SeqCst);
    WINDOW.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    WINDOW.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - start;
    let ticks = pump.stats().ticks() - before.0;
    let full = manager.snapshot().supervisor.pcm_dropped_pipe_full - before.1;
    pump.stop(Duration::from_secs(2)).expect("pump stops");
    manager.stop(Duration::from_secs(2)).expect("manager stops");
    assert!(ticks >= 100, "{ticks} ticks in 3 s");
    assert!(full > 0, "the pipe never filled");
    assert_eq!(
        allocations, 0,
        "allocations or frees over {ticks} pump ticks ({full} frames dropped on a full pipe)"
    );
}

#[test]
fn the_pump_tick_allocates_nothing_when_the_encoder_closes_its_stdin() {
    // Each encoder takes 20 frames (about 0.5 s), then closes its stdin
    // and lives on: the pump's next write fails with EPIPE.
    let manager = manager(Box::new(FakeLauncher::new(FakeMode::ClosesStdinAfter(20))));
    let pump = pump(&manager);
    let broken = || manager.snapshot().supervisor.failures["stdin_broken"];
    // Warm up: the first encoder breaks once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broken() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = (broken(), manager.snapshot().supervisor.pcm_dropped_not_running);
    let start = ALLOCATIONS.load(Ordering::SeqCst);
    WINDOW.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    WINDOW.store(false, Ordering::SeqCst);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - start;
    let breaks = broken() - before.0;
    let dropped = manager.snapshot().supervisor.pcm_dropped_not_running - before.1;
    pump.stop(Duration::from_secs(2)).expect("pump stops");
    manager.stop(Duration::from_secs(2)).expect("manager stops");
    assert!(breaks >= 2, "{breaks} broken stdins in 3 s");
    assert!(dropped >= breaks, "{dropped} frames dropped on {breaks} broken pipes");
    assert_eq!(
        allocations, 0,
        "allocations or frees on the pump thread over {breaks} broken stdins"
    );
}
