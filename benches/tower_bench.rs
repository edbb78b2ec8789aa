//! Tower's figures, measured (not asserted): `cargo bench --bench tower_bench`.
//!
//! 1. Time from TCP connect to the first audio byte on loopback (100
//!    connects to the real `tower` binary).
//! 2. Capture-to-listener-socket latency: an in-process Tower captures from
//!    real ALSA (JACK dummy backend + alsa `jack`/`file` plugins) an input
//!    carrying a click every 500 ms; a probe around the capture source
//!    timestamps each click as the device delivers it, and a listener on
//!    the socket timestamps the decoded click. 60 s by default.
//! 3. Pump tick error p50/p99/max over that same run.
//! 4. RSS and CPU of the real `tower` binary serving 100 listeners
//!    (ffmpeg, a separate process, excluded).
//! 5. Tower's CPU serving 10 listeners, without and with 5 status pages
//!    open (`/events`: a level event every 100 ms, the status every second).
//!
//! Needs jackd (jackd2), libasound2-plugins and ffmpeg, as the tests do.
//! `cargo bench --bench tower_bench -- --seconds 20` shortens parts 2–4.
//! Shares the test harness (tests/common) for processes and servers.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Jack, Tower, audio, write_alsa_conf};
use tower::audio::capture::{CaptureError, CaptureSource};
use tower::config::Config;
use tower::encoder::command::default_command;
use tower::encoder::process::FfmpegLauncher;
use tower::mp3::Packetizer;
use tower::service::{Backends, Service};

const CLICK_EVERY_S: f64 = 0.5;
const CLICK_MS: f64 = 10.0;
/// No capture device: the binary streams the fallback tone.
const NO_DEVICE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_bench_no_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(name: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.3}{unit} p99={:.3}{unit} max={:.3}{unit}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Sends the /stream request and reads the response head.
fn open_stream(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: b\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    s
}

/// 1. Connect → first audio byte.
fn first_byte() {
    let tower = Tower::start(&[], NO_DEVICE);
    // Wait until audio flows.
    let mut s = open_stream(tower.addr);
    let mut buf = [0u8; 384];
    s.read_exact(&mut buf).expect("audio");
    drop(s);
    thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        let mut s = open_stream(tower.addr);
        let mut one = [0u8; 1];
        s.read_exact(&mut one).expect("first audio byte");
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(s);
        thread::sleep(Duration::from_millis(20));
    }
    summary("connect to first audio byte (loopback, 100 connects)", " ms", times);
}

/// A capture source that timestamps click onsets as the device delivers them.
struct Probe {
    inner: Box<dyn CaptureSource>,
    clicks: Arc<Mutex<Vec<Instant>>>,
    quiet: usize,
}

impl CaptureSource for Probe {
    fn device(&self) -> &str {
        self.inner.device()
    }
    fn open(&mut self) -> Result<(), CaptureError> {
        self.inner.open()
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        let n = self.inner.read(buf, timeout)?;
        let now = Instant::now();
        for s in buf[..n].chunks_exact(4) {
            let v = i16::from_le_bytes([s[0], s[1]]).unsigned_abs();
            if v > 8000 && self.quiet > 4800 {
                self.clicks.lock().expect("clicks").push(now);
                self.quiet = 0;
            } else if v <= 8000 {
                self.quiet += 1;
            } else {
                self.quiet = 0;
            }
        }
        Ok(n)
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Raw s16le stereo: silence with a 10 ms 1 kHz click every 500 ms.
fn clicks_raw(seconds: f64) -> Vec<u8> {
    let total = (48_000.0 * seconds) as usize;
    let period = (48_000.0 * CLICK_EVERY_S) as usize;
    let click = (48.0 * CLICK_MS) as usize;
    let mut raw = Vec::with_capacity(total * 4);
    for i in 0..total {
        let v = if i % period < click {
            ((std::f64::consts::TAU * 1000.0 * (i % period) as f64 / 48_000.0).sin() * 0.6 * 32767.0) as i16
        } else {
            0
        };
        raw.extend_from_slice(&v.to_le_bytes());
        raw.extend_from_slice(&v.to_le_bytes());
    }
    raw
}

/// Reads the stream at `addr` until `stop`, noting when each click is heard.
fn hear_clicks(addr: std::net::SocketAddr, stop: &AtomicBool, heard: &Mutex<Vec<Instant>>) {
    let mut s = open_stream(addr);
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut p = Packetizer::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut quiet = 0usize;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        let mut new = Vec::new();
        p.push(&buf[..n], |f| new.push(f.to_vec()));
        for f in new {
            frames.push(f);
            // Decode the last few frames together (the decoder needs the
            // previous frame's overlap); look at the newest.
            let tail: Vec<&[u8]> = frames.iter().rev().take(3).rev().map(Vec::as_slice).collect();
            let d = audio::decode_frames(&tail);
            let Some(last) = d.frames.last() else { continue };
            for &x in last.iter().step_by(d.channels.max(1)) {
                if x.abs() > 0.2 && quiet > 4800 {
                    heard.lock().expect("heard").push(now);
                    quiet = 0;
                } else if x.abs() <= 0.2 {
                    quiet += 1;
                } else {
                    quiet = 0;
                }
            }
            if frames.len() > 8 {
                frames.remove(0);
            }
        }
    }
}

/// 2 and 3. Click latency through the JACK path, and pump tick error.
fn click_latency(seconds: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("clicks.raw");
    std::fs::write(&input, clicks_raw(seconds as f64 + 10.0)).expect("write input");
    let conf = write_alsa_conf(dir.path(), &input);
    let jack = Jack::start();
    // SAFETY: set before any thread of this bench reads the environment
    // (the service's capture thread starts after).
    unsafe {
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        std::env::set_var("JACK_DEFAULT_SERVER", &jack.name);
        std::env::set_var("JACK_NO_START_SERVER", "1");
    }
    let config = Config {
        listen: "127.0.0.1:0".into(),
        device: "jackfile".into(),
        ..Config::default()
    };
    let clicks = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe {
        inner: tower::audio::system_capture("jackfile"),
        clicks: clicks.clone(),
        quiet: 0,
    };
    let service = Service::start(
        &config,
        Backends {
            capture: Box::new(probe),
            encoder: Box::new(FfmpegLauncher::new(default_command("ffmpeg", 128))),
            hooks: Arc::new(tower::hooks::TestHooks::disabled()),
            leds: Box::new(tower::leds::NullLeds),
        },
    )
    .expect("service");
    let addr = service.local_addr();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let (heard, stop) = (heard.clone(), stop.clone());
        thread::spawn(move || hear_clicks(addr, &stop, &heard))
    };
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let _ = listener.join();
    let status = service.status();
    let _ = service.stop();
    drop(jack);

    let sent = clicks.lock().expect("clicks").clone();
    let got = heard.lock().expect("heard").clone();
    // Pair each heard click with the latest captured click before it.
    let mut latencies = Vec::new();
    for h in &got {
        if let Some(c) = sent.iter().rev().find(|c| *c <= h) {
            let ms = h.duration_since(*c).as_secs_f64() * 1000.0;
            if ms < 1000.0 * CLICK_EVERY_S {
                latencies.push(ms);
            }
        }
    }
    println!("clicks captured {}, heard {}", sent.len(), got.len());
    summary(
        &format!("capture to listener socket, JACK path ({seconds} s)"),
        " ms",
        latencies,
    );
    let t = &status["pump"]["tick_error"];
    println!(
        "pump tick error over {seconds} s: n={} p50={} us p99={} us p99.9={} us max={} us (SCHED_FIFO: {})",
        t["count"], t["p50_us"], t["p99_us"], t["p999_us"], t["max_us"], status["pump"]["sched_fifo"]
    );
}

/// CPU ticks (user + system) and RSS (kB) of a process.
fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (utime + stime, rss_kb)
}

/// 4. RSS and CPU with 100 listeners.
fn hundred_listeners(seconds: u64) {
    let tower = Tower::start(&[], NO_DEVICE);
    let (addr, pid) = (tower.addr, tower.pid() as u32);
    thread::sleep(Duration::from_secs(2));
    let (_, rss_idle) = proc_stat(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let stop = stop.clone();
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut s = open_stream(addr);
                    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
                    let mut buf = [0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(0) = s.read(&mut buf) {
                            break;
                        }
                    }
                })
                .expect("reader thread")
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(seconds.min(30)));
    let (cpu1, rss) = proc_stat(pid);
    let elapsed = t0.elapsed().as_secs_f64();
    let status = tower.status();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    let ticks_per_s = 100.0; // USER_HZ
    let cpu = (cpu1 - cpu0) as f64 / ticks_per_s / elapsed * 100.0;
    println!(
        "100 listeners: tower RSS {:.1} MB (idle, no listeners: {:.1} MB), CPU {:.1} % of one core, listeners {}, slow listeners dropped {}",
        rss as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        cpu,
        status["listeners"]["current"],
        status["listeners"]["slow_dropped"]
    );
}

/// Readers of `path` that read and discard until `stop`.
fn readers(
    addr: std::net::SocketAddr,
    path: &'static str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<u64>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
                    .expect("request");
                s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
                let mut buf = [0u8; 8192];
                let mut total = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => {}
                    }
                }
                total
            })
        })
        .collect()
}

/// Tower's CPU (% of one core) over `seconds`.
fn cpu_over(pid: u32, seconds: u64) -> f64 {
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let (cpu1, _) = proc_stat(pid);
    (cpu1 - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0
}

/// Part 5, what status pages cost: CPU with 10 listeners, then with 10
/// listeners and 5 pages.
fn status_pages(seconds: u64) {
    let tower = Tower::start(&[], NO_DEVICE);
    let (addr, pid) = (tower.addr, tower.pid() as u32);
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = readers(addr, "/stream", 10, &stop);
    thread::sleep(Duration::from_secs(2));
    let without = cpu_over(pid, seconds);
    let pages = readers(addr, "/events", 5, &stop);
    thread::sleep(Duration::from_secs(1));
    let with = cpu_over(pid, seconds);
    let status = tower.status();
    stop.store(true, Ordering::Relaxed);
    let page_bytes: u64 = pages.into_iter().map(|p| p.join().unwrap_or(0)).sum();
    for l in listeners {
        let _ = l.join();
    }
    println!(
        "status pages: tower CPU {without:.2} % of one core with 10 listeners, {with:.2} % with 10 listeners and 5 status pages ({:.1} kB/s of events per page); slow listeners dropped {}",
        page_bytes as f64 / 5.0 / 1024.0 / (seconds as f64 + 1.0),
        status["listeners"]["slow_dropped"]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; under `cargo test` this is a no-op.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!(
        "Tower {} benchmarks (this machine: {} cores)",
        env!("CARGO_PKG_VERSION"),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    first_byte();
    click_latency(seconds);
    hundred_listeners(seconds / 2);
    status_pages((seconds / 3).max(5));
}
