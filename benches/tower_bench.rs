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
//! Shares the test harness (tests/common) for processes and servers, and
//! `support` (percentiles, /proc readings, the click marker) with the
//! comparison bench.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::Tower;
use support::{
    ClickRig, cpu_over, cpu_percent, first_byte_times, listen_clicks_for, open_stream, pair_clicks, proc_stat, summary,
};

/// No capture device: the binary streams the fallback tone. Every
/// listener comes from 127.0.0.1, so the per-address listener cap is raised.
const NO_DEVICE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_bench_no_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
    ("TOWER_HTTP_MAX_LISTENERS_PER_ADDRESS", "10000"),
];

/// 1. Connect → first audio byte.
fn first_byte() {
    let tower = Tower::start(&[], NO_DEVICE);
    let times = first_byte_times(tower.addr, "/stream", 100).expect("first bytes");
    summary("connect to first audio byte (loopback, 100 connects)", " ms", times);
}

/// 2 and 3. Click latency through the JACK path, and pump tick error.
fn click_latency(seconds: u64) {
    let rig = ClickRig::start(seconds as f64 + 10.0);
    let heard = listen_clicks_for(rig.service.local_addr(), "/stream", seconds as f64);
    let sent = rig.sent();
    let status = rig.stop();
    let times = pair_clicks(&sent, &heard);
    println!("clicks captured {}, heard {}", sent.len(), heard.clicks.len());
    summary(
        &format!("capture to listener socket, JACK path ({seconds} s)"),
        " ms",
        times.arrival_ms,
    );
    let t = &status["pump"]["tick_error"];
    println!(
        "pump tick error over {seconds} s: n={} p50={} us p99={} us p99.9={} us max={} us (SCHED_FIFO: {})",
        t["count"], t["p50_us"], t["p99_us"], t["p999_us"], t["max_us"], status["pump"]["sched_fifo"]
    );
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
                    let mut s = open_stream(addr, "/stream").expect("listener");
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
    let elapsed = t0.elapsed();
    let status = tower.status();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    let cpu = cpu_percent(cpu0, cpu1, elapsed);
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
