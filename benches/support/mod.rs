//! What the benches share: percentiles, a process's CPU and memory, the
//! first-byte probe, and the click marker (an input of clicks, a probe that
//! timestamps them as the capture device delivers them, a listener that
//! hears them in the decoded stream, and the pairing of the two).

#![allow(dead_code)] // each bench uses a different part of this

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Jack, audio, write_alsa_conf};
use tower::audio::capture::{CaptureError, CaptureSource};
use tower::config::Config;
use tower::encoder::mp3::Packetizer;
use tower::encoder::process::FfmpegLauncher;
use tower::service::{Backends, Service};

/// A click every this many seconds…
pub const CLICK_EVERY_S: f64 = 0.5;
/// …lasting this long (a 1 kHz burst).
pub const CLICK_MS: f64 = 10.0;
/// Samples per channel per second.
pub const RATE: f64 = 48_000.0;
/// Bytes per second of a 128 kbit/s stream.
pub const BYTES_PER_S_128K: f64 = 16_000.0;
/// USER_HZ: the unit of utime and stime in /proc/PID/stat.
const TICKS_PER_S: f64 = 100.0;

/// The `q` quantile (0..=1) of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Sorts `v` and returns (p50, p99, max).
pub fn p50_p99_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

pub fn summary(name: &str, unit: &str, v: Vec<f64>) {
    let n = v.len();
    let (p50, p99, max) = p50_p99_max(v);
    println!("{name}: n={n} p50={p50:.3}{unit} p99={p99:.3}{unit} max={max:.3}{unit}");
}

/// CPU ticks (user + system) and RSS (kB) of a process.
pub fn proc_stat(pid: u32) -> (u64, u64) {
    let ticks = stat_ticks(&format!("/proc/{pid}/stat"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss_kb)
}

/// CPU ticks (user + system) of thread `tid` of this process alone:
/// `/proc/TID/stat` would sum every thread of the process.
pub fn own_thread_ticks(tid: u32) -> u64 {
    stat_ticks(&format!("/proc/self/task/{tid}/stat"))
}

/// User + system ticks from a `stat` file (0 if it cannot be read).
fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// CPU use of a process between two readings of [`proc_stat`], in % of
/// one core.
pub fn cpu_percent(ticks_before: u64, ticks_after: u64, elapsed: Duration) -> f64 {
    ticks_after.saturating_sub(ticks_before) as f64 / TICKS_PER_S / elapsed.as_secs_f64() * 100.0
}

/// A process's CPU (% of one core) over `seconds`.
pub fn cpu_over(pid: u32, seconds: u64) -> f64 {
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let (cpu1, _) = proc_stat(pid);
    cpu_percent(cpu0, cpu1, t0.elapsed())
}

/// Connects, sends a request for `path` and reads the response head,
/// which must be a 200.
pub fn open_stream(addr: SocketAddr, path: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::other("closed before the end of the response head"));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("GET {path}: {status}")));
    }
    Ok(s)
}

/// Waits until `path` at `addr` streams audio (a 200 and a frame's worth
/// of bytes), for at most `timeout`.
pub fn wait_audio(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    crate::common::wait_for(timeout, || {
        let mut buf = [0u8; 384];
        open_stream(addr, path).and_then(|mut s| s.read_exact(&mut buf)).is_ok()
    })
}

/// Connect → first audio byte of `path`, `n` times one after the other,
/// in ms. Waits for audio to flow first.
pub fn first_byte_times(addr: SocketAddr, path: &str, n: usize) -> std::io::Result<Vec<f64>> {
    let mut s = open_stream(addr, path)?;
    let mut buf = [0u8; 384];
    s.read_exact(&mut buf)?;
    drop(s);
    thread::sleep(Duration::from_millis(500));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = open_stream(addr, path)?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one)?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(s);
        thread::sleep(Duration::from_millis(20));
    }
    Ok(times)
}

/// Finds click onsets in a stream of samples: a sample above a fifth of
/// full scale after at least 100 ms below it.
#[derive(Debug, Default)]
pub struct Onsets {
    quiet: usize,
}

impl Onsets {
    /// Feeds one sample (full scale 1.0); true at an onset.
    pub fn feed(&mut self, x: f32) -> bool {
        let loud = x.abs() > 0.2;
        let onset = loud && self.quiet > 4800;
        self.quiet = if loud { 0 } else { self.quiet + 1 };
        onset
    }

    /// Feeds s16le stereo bytes (the left channel); true if an onset is in them.
    pub fn feed_pcm(&mut self, bytes: &[u8]) -> bool {
        let mut any = false;
        for s in bytes.chunks_exact(4) {
            any |= self.feed(f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0);
        }
        any
    }
}

/// A capture source that timestamps click onsets as the device delivers them.
pub struct Probe {
    inner: Box<dyn CaptureSource>,
    clicks: Arc<Mutex<Vec<Instant>>>,
    onsets: Onsets,
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
        if self.onsets.feed_pcm(&buf[..n]) {
            self.clicks.lock().expect("clicks").push(now);
        }
        Ok(n)
    }
    fn close(&mut self) {
        self.inner.close();
    }
}

/// Raw s16le stereo: silence with a 10 ms 1 kHz click every 500 ms.
pub fn clicks_raw(seconds: f64) -> Vec<u8> {
    let total = (RATE * seconds) as usize;
    let period = (RATE * CLICK_EVERY_S) as usize;
    let click = (RATE / 1000.0 * CLICK_MS) as usize;
    let mut raw = Vec::with_capacity(total * 4);
    for i in 0..total {
        let v = if i % period < click {
            ((std::f64::consts::TAU * 1000.0 * (i % period) as f64 / RATE).sin() * 0.6 * 32767.0) as i16
        } else {
            0
        };
        raw.extend_from_slice(&v.to_le_bytes());
        raw.extend_from_slice(&v.to_le_bytes());
    }
    raw
}

/// Raw s16le stereo: a 440 Hz tone at half scale, one second, which
/// loops seamlessly (440 whole periods).
pub fn tone_raw() -> Vec<u8> {
    let mut raw = Vec::with_capacity(RATE as usize * 4);
    for i in 0..RATE as usize {
        let v = ((std::f64::consts::TAU * 440.0 * i as f64 / RATE).sin() * 0.5 * 32767.0) as i16;
        raw.extend_from_slice(&v.to_le_bytes());
        raw.extend_from_slice(&v.to_le_bytes());
    }
    raw
}

/// What a listener heard: when its first audio byte came, and for each
/// click, when the frame carrying it arrived and its sample position in
/// the stream (counted from the first whole frame).
#[derive(Debug, Default)]
pub struct Heard {
    pub connected: Option<Instant>,
    pub first_byte: Option<Instant>,
    pub clicks: Vec<(Instant, u64)>,
}

/// Reads `path` at `addr` until `stop`, decoding it and noting each click.
pub fn listen_clicks(addr: SocketAddr, path: &str, stop: &AtomicBool) -> Heard {
    let mut heard = Heard {
        connected: Some(Instant::now()),
        ..Heard::default()
    };
    let Ok(mut s) = open_stream(addr, path) else {
        return heard;
    };
    if s.set_read_timeout(Some(Duration::from_millis(200))).is_err() {
        return heard;
    }
    let mut p = Packetizer::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut onsets = Onsets::default();
    let mut position = 0u64;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        heard.first_byte.get_or_insert(now);
        let mut new = Vec::new();
        p.push(&buf[..n], |f| new.push(f.to_vec()));
        for f in new {
            frames.push(f);
            // Decode the last few frames together (the decoder needs the
            // previous frame's overlap); look at the newest.
            let tail: Vec<&[u8]> = frames.iter().rev().take(3).rev().map(Vec::as_slice).collect();
            let d = audio::decode_frames(&tail);
            if let Some(last) = d.frames.last() {
                for (k, &x) in last.iter().step_by(d.channels.max(1)).enumerate() {
                    if onsets.feed(x) {
                        heard.clicks.push((now, position + k as u64));
                    }
                }
            }
            position += 1152;
            if frames.len() > 8 {
                frames.remove(0);
            }
        }
    }
    heard
}

/// A listener's clicks set against the source's.
#[derive(Debug, Default)]
pub struct ClickTimes {
    /// Source → arrival at the listener's socket (ms), for clicks sent
    /// after the listener connected (live ones, not the burst).
    pub arrival_ms: Vec<f64>,
    /// How far behind live the listener plays (ms): where the click sits
    /// in the stream, played from the first byte on, against when the
    /// source sent it. Includes the burst.
    pub behind_live_ms: Vec<f64>,
    /// Live clicks whose pairing by order disagreed with pairing by time.
    pub mismatched: usize,
}

/// Pairs heard clicks with `sent` ones. The last click heard is live, so
/// it is paired with the latest one sent before it arrived; the ones
/// before it, in order (a burst delivers several at once, so time alone
/// cannot pair those).
pub fn pair_clicks(sent: &[Instant], heard: &Heard) -> ClickTimes {
    let mut out = ClickTimes::default();
    let (Some(connected), Some(first)) = (heard.connected, heard.first_byte) else {
        return out;
    };
    let Some(&(last_at, _)) = heard.clicks.last() else {
        return out;
    };
    let Some(anchor) = sent.iter().rposition(|s| *s <= last_at) else {
        return out;
    };
    let last = heard.clicks.len() - 1;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (i, &(at, position)) in heard.clicks.iter().enumerate() {
        let Some(j) = (anchor + i).checked_sub(last) else {
            continue;
        };
        let src = sent[j];
        if src >= connected {
            out.arrival_ms.push(ms(at.saturating_duration_since(src)));
            if sent.iter().rposition(|s| *s <= at) != Some(j) {
                out.mismatched += 1;
            }
        }
        let played = first + Duration::from_secs_f64(position as f64 / RATE);
        out.behind_live_ms.push(ms(played.saturating_duration_since(src)));
    }
    out
}

/// An in-process Tower capturing, through real ALSA (JACK dummy backend
/// and alsa's jack and file plugins), an input of clicks, with a probe
/// timestamping each click as the device delivers it.
pub struct ClickRig {
    pub service: Service,
    pub clicks: Arc<Mutex<Vec<Instant>>>,
    _jack: Jack,
    _dir: tempfile::TempDir,
}

impl ClickRig {
    /// Starts JACK and Tower with an input of `seconds` of clicks. Sets
    /// this process's ALSA and JACK environment: call it before other
    /// threads that read the environment are started.
    pub fn start(seconds: f64) -> ClickRig {
        let dir = tempfile::tempdir().expect("tmp");
        let input = dir.path().join("clicks.raw");
        std::fs::write(&input, clicks_raw(seconds)).expect("write input");
        let conf = write_alsa_conf(dir.path(), &input);
        // Not a test server's name: tests may run meanwhile, and a second
        // server under the same name takes the first one's clients away.
        let jack = Jack::start_named("tower-bench-0");
        // SAFETY: the caller starts this before any thread that reads the
        // environment (the service's capture thread starts after).
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
        let probe_clicks = clicks.clone();
        let service = Service::start(
            &config,
            Backends {
                capture: Box::new(move |_: &tower::audio::socket::Input, _: &str| {
                    Ok(Box::new(Probe {
                        inner: tower::audio::system_capture("jackfile"),
                        clicks: probe_clicks.clone(),
                        onsets: Onsets::default(),
                    }) as Box<dyn CaptureSource>)
                }),
                mixer: Box::new(|| Box::new(tower::audio::mixer::NoMixer) as Box<dyn tower::audio::mixer::Mixer>),
                encoder: Box::new(|command| Box::new(FfmpegLauncher::new(command))),
                hooks: Arc::new(tower::hooks::TestHooks::disabled()),
                leds: Box::new(|_: &tower::leds::LedConfig| {
                    Box::new(tower::leds::NullLeds) as Box<dyn tower::leds::Leds>
                }),
            },
            None,
        )
        .expect("service");
        ClickRig {
            service,
            clicks,
            _jack: jack,
            _dir: dir,
        }
    }

    pub fn jack_pid(&self) -> i32 {
        self._jack.pid()
    }

    /// The clicks captured so far.
    pub fn sent(&self) -> Vec<Instant> {
        self.clicks.lock().expect("clicks").clone()
    }

    /// Stops the service (then JACK, on drop); returns its last status.
    pub fn stop(self) -> serde_json::Value {
        let status = serde_json::to_value(self.service.status()).expect("status is JSON");
        let _ = self.service.stop();
        status
    }
}

/// Runs a click listener of `path` at `addr` for `seconds` on its own thread.
pub fn listen_clicks_for(addr: SocketAddr, path: &str, seconds: f64) -> Heard {
    let stop = Arc::new(AtomicBool::new(false));
    let path = path.to_string();
    let listener = {
        let stop = stop.clone();
        thread::spawn(move || listen_clicks(addr, &path, &stop))
    };
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap_or_default()
}
