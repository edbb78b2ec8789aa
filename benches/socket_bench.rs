//! The socket input's figures, measured (not asserted):
//! `cargo bench --bench socket_bench` (`-- --seconds 60` by default).
//!
//! The real `tower` binary with `input = "unix:PATH"` and a silent
//! fallback; a producer in this process writes silence with a 10 ms click
//! every 500 ms, paced from `/tower/buffer` by the example's pacer
//! (`examples/pace_producer/pacer.rs`) at 2× real time, and notes when it
//! writes each frame that carries a click; a listener on `/stream`
//! decodes the stream and notes when each click arrives.
//!
//! 1. Producer write → listener socket latency, p50/p99, at the example's
//!    default target (8 frames) and at a low-latency one (3 frames, polled
//!    every 24 ms).
//! 2. The fill band the pacer held over the run, and Tower's drop counters.
//! 3. Producer restart → live audio at the listener: the producer leaves,
//!    the stream falls back (silence here), it connects again and its
//!    first frame carries a click; 10 restarts.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../examples/pace_producer/pacer.rs"]
mod pacer;
#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Tower;
use pacer::{FRAME_BYTES, Pace};
use support::{Heard, Onsets, clicks_raw, listen_clicks, p50_p99_max, pair_clicks, summary};

/// A producer of clicks: the frames of [`clicks_raw`] in a loop, noting
/// when each frame carrying a click onset is written.
struct Clicks {
    raw: Vec<u8>,
    at: usize,
    onsets: Onsets,
    sent: Arc<Mutex<Vec<Instant>>>,
}

impl Clicks {
    fn new(sent: Arc<Mutex<Vec<Instant>>>) -> Clicks {
        // 10 s of clicks, a whole number of frames, looped.
        let mut raw = clicks_raw(10.0);
        raw.truncate(raw.len() / FRAME_BYTES * FRAME_BYTES);
        Clicks {
            raw,
            at: 0,
            onsets: Onsets::default(),
            sent,
        }
    }

    /// Starts again at the first click (after a producer restart).
    fn rewind(&mut self) {
        self.at = 0;
        self.onsets = Onsets::default();
    }

    fn fill(&mut self, frame: &mut [u8; FRAME_BYTES]) {
        frame.copy_from_slice(&self.raw[self.at..self.at + FRAME_BYTES]);
        self.at = (self.at + FRAME_BYTES) % self.raw.len();
        if self.onsets.feed_pcm(frame) {
            self.sent.lock().expect("sent").push(Instant::now());
        }
    }
}

/// Runs a click listener until the returned flag is set.
fn listener(addr: SocketAddr) -> (Arc<AtomicBool>, thread::JoinHandle<Heard>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    (stop, thread::spawn(move || listen_clicks(addr, "/stream", &s)))
}

fn paced(socket: &Path, addr: SocketAddr, pace: Pace, seconds: u64, label: &str) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut clicks = Clicks::new(sent.clone());
    let (stop, heard) = listener(addr);
    thread::sleep(Duration::from_millis(300));
    let mut out = UnixStream::connect(socket).expect("connect");
    let run = pacer::run(&mut out, addr, pace, Duration::from_secs(seconds), |f| clicks.fill(f)).expect("run");
    drop(out);
    stop.store(true, Ordering::Relaxed);
    let heard = heard.join().expect("listener");
    // Let the queue's tail play out, so the next run's listener does not
    // hear this run's last clicks.
    thread::sleep(Duration::from_secs(1));
    let sent = sent.lock().expect("sent").clone();
    let times = pair_clicks(&sent, &heard);
    println!(
        "{label}: clicks written {}, heard {}, mismatched {}",
        sent.len(),
        heard.clicks.len(),
        times.mismatched
    );
    summary(
        &format!("{label}: producer write → listener socket"),
        " ms",
        times.arrival_ms,
    );
    let skip = (1.0 / pace.poll.as_secs_f64()) as usize;
    let fills: Vec<f64> = run.fills.iter().skip(skip).map(|&f| f as f64).collect();
    let (lo, hi) = run.band(skip).unwrap_or((0, 0));
    let (p50, p99, _) = p50_p99_max(fills);
    println!(
        "{label}: fill {lo}..{hi} frames (p50 {p50}, p99 {p99}) over {seconds} s, {} polls, {} late",
        run.fills.len(),
        run.late_polls
    );
}

fn restarts(socket: &Path, addr: SocketAddr, n: usize) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut clicks = Clicks::new(sent.clone());
    let (stop, heard) = listener(addr);
    let pace = Pace::default();
    let mut connects = Vec::new();
    for _ in 0..n {
        clicks.rewind();
        let mut out = UnixStream::connect(socket).expect("connect");
        connects.push(Instant::now());
        pacer::run(&mut out, addr, pace, Duration::from_millis(1500), |f| clicks.fill(f)).expect("run");
        drop(out);
        // Gone: the queue drains, the grace (0.2 s) passes, the fallback
        // (silence here) plays.
        thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    let heard = heard.join().expect("listener");
    let live: Vec<f64> = connects
        .iter()
        .filter_map(|&c| {
            let (at, _) = heard.clicks.iter().find(|(at, _)| *at >= c)?;
            Some(at.saturating_duration_since(c).as_secs_f64() * 1000.0)
        })
        .collect();
    summary(
        &format!("producer (re)connect → its first click at the listener ({n} restarts)"),
        " ms",
        live,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("pcm.sock");
    let input = format!("unix:{}", socket.display());
    let tower = Tower::start(
        &[],
        &[
            ("TOWER_INPUT", input.as_str()),
            ("TOWER_PCM_GRACE_SEC", "0.2"),
            ("TOWER_FALLBACK_TONE", "false"),
            ("TOWER_GPIO_ENABLED", "false"),
        ],
    );
    paced(
        &socket,
        tower.addr,
        Pace::default(),
        seconds,
        "target 8, poll 48 ms, ≤2x",
    );
    let low = Pace {
        target: 3,
        poll: Duration::from_millis(24),
        max_rate: 2.0,
    };
    paced(&socket, tower.addr, low, seconds.min(20), "target 3, poll 24 ms, ≤2x");
    restarts(&socket, tower.addr, 10);
    let s = tower.status();
    println!("drops: {}", s["counters"]["drops"]);
    println!("socket: {}", s["input"]["capture"]["socket"]);
}
