//! Instruction counts that carry over to ARM, where CPU % on this machine
//! does not (issue 22; this machine's virtual CPU has no PMU for `perf`):
//! `cargo bench --bench instructions` (needs valgrind).
//!
//! Each figure is counted by `valgrind --tool=callgrind` (user-space
//! instructions; system calls are counted by `benches/compare.rs` with
//! perf) on this bench binary run as a child:
//!
//! - `hub`: the listener hub broadcasting to N listeners, each a real TCP
//!   connection on 127.0.0.1 written through Tower's socket sink (the
//!   `sendmsg` path), 400 frames on a clock advancing 24 ms a frame, in
//!   the broadcast loop's turns (`gather`, the turn's 4 frames, `end_turn`:
//!   each listener written once a turn). Only the turn is counted
//!   (`--toggle-collect`); the bench drains the other ends between turns.
//!   Per listener-frame: (I(N) − I(0)) ÷ (N × frames); idle: I(0) per
//!   audio-second (41.67 frames).
//! - `pump`: the pump's tick ([`tower::pump::Ticker`]) playing the fallback
//!   tone into the real encoder manager and supervisor, with the in-tree
//!   fake encoder behind the pipe: per audio-second (41.67 ticks).
//! - `idle`: the `tower` binary itself, with no listener and no capture
//!   device (the fallback tone), 10 s counted after 8 s of warm-up
//!   (`callgrind_control -z`, then `-d`), per thread (`--separate-threads`),
//!   per audio-second. The capture thread's share is its retry of the
//!   missing device once a second.
//!
//! Prints a Markdown table and writes `target/bench/instructions.json`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tower::audio::FRAME_DURATION;
use tower::audio::router::AudioInputRouter;
use tower::encoder::fake::{FakeLauncher, FakeMode};
use tower::encoder::mp3::canonical_silent_frame;
use tower::encoder::ring::FrameRing;
use tower::encoder::state::{Liveness, RestartPolicy};
use tower::encoder::supervisor::SupervisorConfig;
use tower::encoder::{EncoderManager, EncoderState, Gather, ManagerConfig, Mp3Frame};
use tower::hooks::TestHooks;
use tower::http::socket::SocketSink;
use tower::http::{ConnLog, Hub, HubConfig, Peer, Who};
use tower::pump::fallback::Fallback;
use tower::pump::{PumpConfig, PumpStats, Ticker};

/// Frames (hub) and ticks (pump) counted.
const FRAMES: u32 = 400;
const FRAMES_PER_S: f64 = 1.0 / 0.024;
const HUB_LISTENERS: [usize; 4] = [0, 5, 100, 1000];
/// The idle part: warm-up, then the window counted.
const IDLE_WARMUP: Duration = Duration::from_secs(8);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Frames in one turn of the broadcast loop at the default burst.
const TURN: u32 = 4;

/// One turn of the broadcast loop: how to wait, the turn's frames, its end.
#[inline(never)]
fn measured_turn(hub: &Hub, frame: &Mp3Frame, now: &mut Instant) {
    std::hint::black_box(hub.gather());
    for _ in 0..TURN {
        hub.broadcast(std::hint::black_box(frame), *now);
        *now += FRAME_DURATION;
    }
    hub.end_turn(*now);
}

#[inline(never)]
fn measured_tick(ticker: &mut Ticker<'_>, started: Instant) {
    ticker.tick(std::hint::black_box(started));
}

/// Reads whatever is waiting on each client, without blocking.
fn drain(clients: &mut [TcpStream]) {
    let mut buf = [0u8; 16 * 1024];
    for c in clients {
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    }
}

fn child_hub(n: usize) {
    let hub = Hub::new(
        HubConfig {
            slow_timeout: Duration::from_secs(60),
            max_listeners: n + 1,
            per_address: n + 1,
            burst_frames: HubConfig::frames_for(200, FRAME_DURATION),
            frame: FRAME_DURATION,
        },
        Who::Listener,
        Arc::new(ConnLog::default()),
    );
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let mut now = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        client.set_nonblocking(true).expect("nonblocking");
        let (conn, peer) = server.accept().expect("accept");
        let sink = SocketSink::new(conn).expect("sink");
        hub.add(
            hub.admit(peer).expect("room"),
            Peer::from(peer),
            Box::new(sink),
            None,
            now,
        );
        clients.push(client);
    }
    let frame = Mp3Frame::from(canonical_silent_frame());
    for counted in [false, true] {
        for _ in 0..if counted { FRAMES / TURN } else { 4 } {
            if counted {
                measured_turn(&hub, &frame, &mut now);
            } else {
                std::hint::black_box(hub.gather());
                for _ in 0..TURN {
                    hub.broadcast(&frame, now);
                    now += FRAME_DURATION;
                }
                hub.end_turn(now);
            }
            drain(&mut clients);
        }
    }
    let s = hub.snapshot();
    assert_eq!((s.current, s.slow_dropped), (n, 0), "listeners lost: {s:?}");
}

fn child_pump() {
    let ms = Duration::from_millis;
    let manager = EncoderManager::start(
        ManagerConfig {
            supervisor: SupervisorConfig {
                liveness: Liveness {
                    startup_timeout: Duration::from_secs(60),
                    stall_timeout: Duration::from_secs(60),
                },
                policy: RestartPolicy::default(),
            },
            silence_after: ms(60),
            max_lead: ms(120),
            frame: FRAME_DURATION,
        },
        Box::new(FakeLauncher::new(FakeMode::Healthy)),
        Arc::new(FrameRing::new(400)),
    )
    .expect("manager");
    let config = PumpConfig {
        grace: ms(50),
        realtime_priority: 0,
        hooks: Arc::new(TestHooks::disabled()),
    };
    let router = AudioInputRouter::new(100);
    let stats = PumpStats::new();
    let mut ticker = Ticker::new(&config, &router, &manager, Fallback::tone(), &stats, Instant::now());
    // Past the grace period, on the fallback, the encoder running.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (manager.state() != EncoderState::Running || stats.ticks() < 50) && Instant::now() < deadline {
        let due = ticker.deadline();
        ticker.tick(due);
        manager.wait(Instant::now(), Gather::No);
        manager.drain(Instant::now, |_, _| {});
    }
    assert_eq!(manager.state(), EncoderState::Running);
    for _ in 0..FRAMES {
        let due = ticker.deadline();
        measured_tick(&mut ticker, due);
        // The fake encoder reads the pipe meanwhile (not counted).
        manager.wait(Instant::now(), Gather::No);
        manager.drain(Instant::now, |_, _| {});
    }
    let s = stats.snapshot();
    assert!(s.frames_fallback >= u64::from(FRAMES), "{s:?}");
    manager.stop(Duration::from_secs(2)).expect("stop");
}

/// The totals of a callgrind output file.
fn totals(path: &Path) -> u64 {
    totals_of(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn totals_of(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs this binary's `args` part under callgrind, counting `function`.
fn counted_child(dir: &Path, function: &str, args: &[&str]) -> u64 {
    let out = dir.join(format!("child-{}.cg", args.join("-")));
    let exe = std::env::current_exe().expect("exe");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(format!("--toggle-collect=*{function}*"))
        .arg(exe)
        .arg("--child")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("valgrind (apt-get install valgrind)");
    assert!(status.success(), "{args:?} under callgrind failed: {status}");
    totals(&out)
}

/// Which thread a per-thread callgrind file is, from a function only it
/// runs (in this order: the broadcast loop also packetizes, once the
/// stdout reader is folded into it; the leds thread also waits on a
/// `Notify`).
fn thread_of(text: &str) -> &'static str {
    const MARKS: [(&str, &str); 10] = [
        ("Ticker::tick", "audio-pump"),
        ("EncoderManager::wait", "broadcast"),
        ("supervisor::Loop", "encoder-supervisor"),
        ("FrameRing<T>::push", "ffmpeg-stdout"),
        ("server::Server::run", "http"),
        ("LedDriver::update", "leds"),
        ("CaptureLoop", "capture"),
        ("Service::supervise", "main"),
        ("feed_events", "events"),
        ("Notify::wait_until", "events"),
    ];
    let named = |mark: &str| {
        text.lines()
            .any(|l| (l.starts_with("fn=") || l.starts_with("cfn=")) && l.contains(mark))
    };
    match MARKS.iter().find(|(mark, _)| named(mark)) {
        Some((_, name)) => name,
        None if totals_of(text) == 0 => "(asleep the whole window)",
        None => "other",
    }
}

/// The `tower` binary idle under callgrind: instructions per thread over
/// the window, and whether valgrind lacked `pidfd_open` (valgrind 3.19,
/// Debian 12's: the supervisor then looks every 100 ms instead of sleeping
/// until its next deadline, so its row overstates what it does natively).
fn idle_tower(dir: &Path) -> (Vec<(String, u64)>, bool) {
    let tower = std::env::var_os("CARGO_BIN_EXE_tower")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tower"));
    let out = dir.join("idle.cg");
    let log = dir.join("idle.valgrind.log");
    let mut child = Command::new("valgrind")
        .args(["--tool=callgrind", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&tower)
        .args(["--listen", "127.0.0.1:0"])
        .env("TOWER_DEVICE", "tower_bench_no_device")
        .env("TOWER_PCM_GRACE_SEC", "0.2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from))
        .spawn()
        .expect("valgrind (apt-get install valgrind)");
    let pid = child.id().to_string();
    let control = |what: &str| {
        let ok = Command::new("callgrind_control")
            .args([what, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "callgrind_control {what} {pid} failed");
    };
    std::thread::sleep(IDLE_WARMUP);
    control("-z");
    std::thread::sleep(IDLE_WINDOW);
    control("-d");
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let mut threads = Vec::new();
    let prefix = "idle.cg.1-";
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(prefix) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            threads.push((thread_of(&text).to_string(), totals(&entry.path())));
        }
    }
    threads.sort_by_key(|t| std::cmp::Reverse(t.1));
    let no_pidfd = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("unhandled amd64-linux syscall: 434"));
    (threads, no_pidfd)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        match args.get(i + 1).map(String::as_str) {
            Some("hub") => child_hub(args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(0)),
            Some("pump") => child_pump(),
            other => panic!("unknown part {other:?}"),
        }
        return;
    }
    // `cargo bench` passes --bench; under `cargo test` this is a no-op.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench").join("callgrind");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let t0 = Instant::now();
    let hub: Vec<(usize, u64)> = HUB_LISTENERS
        .iter()
        .map(|&n| (n, counted_child(&dir, "measured_turn", &["hub", &n.to_string()])))
        .collect();
    let pump = counted_child(&dir, "measured_tick", &["pump"]);
    let (idle, no_pidfd) = idle_tower(&dir);
    let frames = f64::from(FRAMES);
    let base = hub[0].1 as f64;
    println!("| figure | instructions |\n|---|---|");
    let mut j = serde_json::Map::new();
    for &(n, total) in &hub[1..] {
        let per = (total as f64 - base) / (n as f64 * frames);
        println!("| hub, per listener-frame, {n} listeners | {per:.0} |");
        j.insert(format!("hub_per_listener_frame_{n}"), json!(per));
    }
    let hub_idle = base / frames * FRAMES_PER_S;
    let pump_s = pump as f64 / frames * FRAMES_PER_S;
    println!("| hub, per idle audio-second (no listener) | {hub_idle:.0} |");
    println!("| pump tick, per audio-second (fallback tone into the encoder pipe) | {pump_s:.0} |");
    let window = IDLE_WINDOW.as_secs_f64();
    let all: u64 = idle.iter().map(|t| t.1).sum();
    println!(
        "| tower idle, all threads, per audio-second | {:.0} |",
        all as f64 / window
    );
    for (name, n) in &idle {
        println!("| tower idle, {name}, per audio-second | {:.0} |", *n as f64 / window);
    }
    if no_pidfd {
        println!(
            "\nThis valgrind has no pidfd_open: under it the encoder-supervisor looks every 100 ms; \
             natively it sleeps until its next deadline (about once per 2 s)."
        );
    }
    j.insert("hub_per_idle_audio_s".into(), json!(hub_idle));
    j.insert("pump_per_audio_s".into(), json!(pump_s));
    j.insert(
        "tower_idle_per_audio_s".into(),
        Value::Object(
            idle.iter()
                .map(|(name, n)| (name.clone(), json!(*n as f64 / window)))
                .collect(),
        ),
    );
    j.insert("hub_totals".into(), json!(hub));
    j.insert("frames".into(), json!(FRAMES));
    j.insert("idle_window_s".into(), json!(window));
    j.insert("valgrind_without_pidfd_open".into(), json!(no_pidfd));
    j.insert("duration_s".into(), json!(t0.elapsed().as_secs_f64()));
    let path = target.join("bench").join("instructions.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(j)).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nJSON: {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
