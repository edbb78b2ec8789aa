//! Tower and Icecast2 side by side, on this machine, in one run:
//! `scripts/bench.sh` (or `cargo bench --bench compare -- [--quick]`).
//!
//! 1. Connect → first audio byte (100 connects, one after another).
//! 2. Lag: an input of clicks (10 ms of 1 kHz every 500 ms). Tower captures
//!    it through real ALSA (JACK dummy backend), a probe timestamping each
//!    click as the device delivers it; Icecast gets it from an ffmpeg
//!    source this process feeds in real time, timestamping each click as it
//!    is written (ffmpeg stands in for DarkIce; both encode with Tower's
//!    encoder arguments). A new listener decodes the stream: each click's
//!    arrival at its socket, and how far behind live it plays (the click's
//!    place in the stream, played from the first byte, against when the
//!    source delivered it; this includes the server's burst).
//! 3. Listeners held: N readers for a window each (100, 1000, 2000 for
//!    30 s; `--quick`: 100 for 5 s) from the load generator (`loadgen`),
//!    servers fed a 440 Hz tone (Tower: its fallback tone; Icecast: the
//!    same tone through the ffmpeg source): dropped, server CPU and RSS,
//!    bytes received against 128 kbit/s, and memory per listener.
//! 4. Tower's pump tick error with every core busy (a hog process per
//!    core), with SCHED_FIFO (as root) and without (as nobody, no
//!    RLIMIT_RTPRIO).
//!
//! Prints a Markdown table and writes the figures as JSON
//! (target/bench/compare.json, or `--json PATH`). Both servers listen on
//! 127.0.0.1 only; every part is bounded in time; every child process is
//! ended on exit, panic or signal. `--only first,lag,held,pump` runs some
//! parts; `--listeners 100,500` and `--seconds S` change part 3 (and the
//! window of part 4). Needs icecast2, ffmpeg, jackd2 and libasound2-plugins.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "compare/loadgen.rs"]
mod loadgen;
#[path = "compare/servers.rs"]
mod servers;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::Tower;
use servers::{Hog, MOUNT, Source, StockConfig, own};
use support::{
    BYTES_PER_S_128K, ClickRig, cpu_percent, first_byte_times, listen_clicks_for, p50_p99_max, pair_clicks, percentile,
    proc_stat, wait_audio,
};

/// Tower with no capture device: its 440 Hz fallback tone after 0.2 s.
const TONE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_bench_no_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];
/// Load generator threads.
const LOAD_THREADS: usize = 2;

struct Options {
    quick: bool,
    parts: Vec<String>,
    json: std::path::PathBuf,
    /// `--listeners 100,500`: other listener counts.
    listeners: Option<Vec<usize>>,
    /// `--seconds S`: another window for the listener and pump parts.
    seconds: Option<u64>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        Options {
            quick: args.iter().any(|a| a == "--quick"),
            parts: value("--only").map_or_else(
                || ["first", "lag", "held", "pump"].map(String::from).to_vec(),
                |v| v.split(',').map(String::from).collect(),
            ),
            json: value("--json").map_or_else(|| target.join("bench").join("compare.json"), Into::into),
            listeners: value("--listeners").map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect()),
            seconds: value("--seconds").and_then(|v| v.parse().ok()),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }

    fn listener_counts(&self) -> Vec<usize> {
        match &self.listeners {
            Some(v) => v.clone(),
            None if self.quick => vec![100],
            None => vec![100, 1000, 2000],
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.seconds.unwrap_or(if self.quick { 5 } else { 30 }))
    }

    fn lag_listen_s(&self) -> f64 {
        if self.quick { 8.0 } else { 20.0 }
    }
}

/// One line of the table.
struct Row {
    figure: String,
    tower: Option<f64>,
    icecast: Option<f64>,
    unit: &'static str,
    /// The target, and whether Tower met it.
    target: Option<(String, bool)>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, figure: impl Into<String>, unit: &'static str, tower: Option<f64>, icecast: Option<f64>) {
        self.rows.push(Row {
            figure: figure.into(),
            tower,
            icecast,
            unit,
            target: None,
        });
    }

    /// Sets the target of the last row; `met` says whether Tower met it.
    fn target(&mut self, text: impl Into<String>, met: bool) {
        if let Some(r) = self.rows.last_mut() {
            r.target = Some((text.into(), met));
        }
    }

    fn markdown(&self) -> String {
        let fmt = |v: Option<f64>, unit: &str| match v {
            Some(x) if x.is_finite() => {
                let digits = if x.abs() >= 100.0 {
                    0
                } else if x.abs() >= 10.0 {
                    1
                } else {
                    2
                };
                format!("{x:.digits$}{unit}")
            }
            Some(_) => "n/a".into(),
            None => "–".into(),
        };
        let mut out =
            String::from("| figure | Tower | Icecast | Tower ÷ Icecast | Tower target |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = match (r.tower, r.icecast) {
                (Some(t), Some(i)) if i.abs() > 1e-9 && t.is_finite() && i.is_finite() => format!("{:.2}", t / i),
                _ => "–".into(),
            };
            let target = r.target.as_ref().map_or_else(
                || "–".into(),
                |(t, met)| format!("{t} {}", if *met { "**met**" } else { "**missed**" }),
            );
            out.push_str(&format!(
                "| {} | {} | {} | {ratio} | {target} |\n",
                r.figure,
                fmt(r.tower, r.unit),
                fmt(r.icecast, r.unit)
            ));
        }
        out
    }
}

fn ms_stats(v: Vec<f64>) -> Value {
    let n = v.len();
    let (p50, p99, max) = p50_p99_max(v);
    json!({ "n": n, "p50_ms": p50, "p99_ms": p99, "max_ms": max })
}

/// Starts an icecast2 with room for `listeners` and a live source of
/// `pcm`; waits until the mount streams.
fn icecast_with_source(stock: &Arc<StockConfig>, listeners: usize, pcm: Vec<u8>) -> (common::icecast::Icecast, Source) {
    let ice = stock.start(listeners);
    let source = Source::start(&ice, pcm).expect("ffmpeg source (apt-get install ffmpeg)");
    assert!(
        wait_audio(ice.addr(), MOUNT, Duration::from_secs(15)),
        "Icecast's mount never streamed:\n{}",
        ice.error_log()
    );
    (ice, source)
}

fn start_tower(env: &[(&str, &str)]) -> Tower {
    let tower = Tower::start(&[], env);
    own(tower.pid());
    assert!(
        wait_audio(tower.addr, "/stream", Duration::from_secs(15)),
        "Tower never streamed:\n{}",
        tower.log_text()
    );
    tower
}

/// Part 1: connect → first audio byte.
fn first_byte(report: &mut Report, stock: &Arc<StockConfig>) {
    let tower = start_tower(TONE);
    let t = first_byte_times(tower.addr, "/stream", 100).expect("Tower first bytes");
    drop(tower);
    let (ice, source) = icecast_with_source(stock, 100, support::tone_raw());
    let i = first_byte_times(ice.addr(), MOUNT, 100).expect("Icecast first bytes");
    drop((source, ice));
    let (t50, t99, _) = p50_p99_max(t.clone());
    let (i50, i99, _) = p50_p99_max(i.clone());
    report.row(
        "connect → first audio byte, median (100 connects)",
        " ms",
        Some(t50),
        Some(i50),
    );
    report.row("connect → first audio byte, p99", " ms", Some(t99), Some(i99));
    report.target("≤ 5 ms", t99 <= 5.0);
    report.json.insert(
        "first_byte".into(),
        json!({ "tower": ms_stats(t), "icecast": ms_stats(i) }),
    );
}

/// Part 2: the click marker through both.
fn lag(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let listen = opts.lag_listen_s();
    // Tower first: it sets this process's ALSA and JACK environment.
    let rig = ClickRig::start(listen + 15.0);
    own(rig.jack_pid());
    thread::sleep(Duration::from_secs(2));
    let heard = listen_clicks_for(rig.service.local_addr(), "/stream", listen);
    let sent = rig.sent();
    drop(rig.stop());
    let tower = pair_clicks(&sent, &heard);

    // Icecast: let its burst buffer fill before the listener comes.
    let (ice, source) = icecast_with_source(stock, 100, support::clicks_raw(12.0));
    thread::sleep(Duration::from_secs(6));
    let heard_ice = listen_clicks_for(ice.addr(), MOUNT, listen);
    let sent_ice = source.sent();
    drop((source, ice));
    let icecast = pair_clicks(&sent_ice, &heard_ice);

    for (name, t) in [("Tower", &tower), ("Icecast", &icecast)] {
        if t.mismatched > 0 {
            report.notes.push(format!(
                "{name}: {} live clicks paired differently by order and by time (a missed or extra click)",
                t.mismatched
            ));
        }
        if t.behind_live_ms.is_empty() {
            report.notes.push(format!("{name}: no click heard"));
        }
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let (ta, ia) = (med(&tower.arrival_ms), med(&icecast.arrival_ms));
    let (tb, ib) = (
        med(&tower.behind_live_ms) / 1000.0,
        med(&icecast.behind_live_ms) / 1000.0,
    );
    report.row(
        "source → listener socket, median (live clicks)",
        " ms",
        Some(ta),
        Some(ia),
    );
    report.row(
        "lag behind live of a new listener at the default burst",
        " s",
        Some(tb),
        Some(ib),
    );
    report.target("≤ 0.3 s", tb <= 0.3);
    report.json.insert(
        "lag".into(),
        json!({
            "tower": { "arrival": ms_stats(tower.arrival_ms.clone()), "behind_live": ms_stats(tower.behind_live_ms.clone()),
                       "clicks_sent": sent.len(), "clicks_heard": heard.clicks.len(), "mismatched": tower.mismatched },
            "icecast": { "arrival": ms_stats(icecast.arrival_ms.clone()), "behind_live": ms_stats(icecast.behind_live_ms.clone()),
                         "clicks_sent": sent_ice.len(), "clicks_heard": heard_ice.clicks.len(), "mismatched": icecast.mismatched },
            "listen_s": listen,
        }),
    );
}

/// What one server did with `n` listeners.
#[derive(Debug, Default, Clone)]
struct Held {
    n: usize,
    admitted: usize,
    dropped: usize,
    refused: usize,
    settle_s: f64,
    cpu_pct: f64,
    encoder_cpu_pct: f64,
    rss_idle_kb: u64,
    rss_max_kb: u64,
    /// The server's threads at the end of the window.
    threads: u64,
    /// Connection attempts in all (more than `n`: some were retried).
    attempts: u64,
    /// Connect → first audio byte of the admitted, all connecting together (ms).
    first_byte: (f64, f64),
    /// Bytes in the window over 128 kbit/s × window, per listener that lasted.
    received_median: f64,
    received_min: f64,
    /// CPU of this bench process (the load generator) as a share of the machine.
    loadgen_share: f64,
    reasons: Vec<(String, usize)>,
    /// The server's own account at the end of the window (Tower's /status).
    status: Value,
}

impl Held {
    fn per_listener_kb(&self) -> f64 {
        (self.rss_max_kb as f64 - self.rss_idle_kb as f64) / self.admitted.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "n": self.n, "admitted": self.admitted, "dropped": self.dropped, "refused": self.refused,
            "settle_s": self.settle_s, "cpu_pct_of_one_core": self.cpu_pct,
            "encoder_cpu_pct_of_one_core": self.encoder_cpu_pct,
            "rss_idle_kb": self.rss_idle_kb, "rss_max_kb": self.rss_max_kb, "threads": self.threads,
            "first_byte_under_load_p50_ms": self.first_byte.0, "first_byte_under_load_p99_ms": self.first_byte.1,
            "per_listener_kb": self.per_listener_kb(),
            "received_vs_expected_median": self.received_median, "received_vs_expected_min": self.received_min,
            "loadgen_share_of_machine": self.loadgen_share,
            "attempts": self.attempts,
            "end_reasons": self.reasons.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "status": self.status,
        })
    }
}

/// This process's CPU time (user + system).
fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct passed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Holds `n` listeners of `path` at `addr` for `window`, sampling the
/// server and its encoder (`pids`); `status` is the server's own account,
/// taken at the end of the window.
fn hold(
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
    window: Duration,
    (pid, encoder): (u32, u32),
    status: &dyn Fn() -> Value,
) -> Held {
    let (_, rss_idle_kb) = proc_stat(pid);
    let settle_limit = Duration::from_secs(60);
    let deadline = Instant::now() + settle_limit + window + Duration::from_secs(20);
    let retry_until = Instant::now() + settle_limit;
    let load = loadgen::Load::start(addr, path, n, LOAD_THREADS, (retry_until, deadline)).expect("load generator");
    let settle = load.wait_settled(settle_limit);
    thread::sleep(Duration::from_secs(1));
    let ((c0, _), (e0, _), own0) = (proc_stat(pid), proc_stat(encoder), own_cpu());
    let t0 = Instant::now();
    load.begin_window();
    let mut rss_max_kb = 0;
    while t0.elapsed() < window {
        thread::sleep(Duration::from_millis(500).min(window.saturating_sub(t0.elapsed())));
        rss_max_kb = rss_max_kb.max(proc_stat(pid).1);
    }
    load.end_window();
    let elapsed = t0.elapsed();
    let ((c1, _), (e1, _), own1) = (proc_stat(pid), proc_stat(encoder), own_cpu());
    let status = status();
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    let outcomes = load.finish();
    let admitted: Vec<&loadgen::Outcome> = outcomes.iter().filter(|o| o.admitted()).collect();
    let expected = BYTES_PER_S_128K * elapsed.as_secs_f64();
    let first: Vec<f64> = admitted
        .iter()
        .filter_map(|o| o.first_byte)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let (first_p50, first_p99, _) = p50_p99_max(first);
    let mut received: Vec<f64> = admitted
        .iter()
        .filter(|o| !o.dropped())
        .map(|o| o.window_bytes as f64 / expected)
        .collect();
    received.sort_by(f64::total_cmp);
    let mut reasons: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for o in &outcomes {
        if let Some(r) = &o.ended {
            *reasons.entry(r.clone()).or_default() += 1;
        }
    }
    Held {
        n,
        admitted: admitted.len(),
        dropped: admitted.iter().filter(|o| o.dropped()).count(),
        refused: outcomes.len() - admitted.len(),
        settle_s: settle.as_secs_f64(),
        cpu_pct: cpu_percent(c0, c1, elapsed),
        encoder_cpu_pct: cpu_percent(e0, e1, elapsed),
        rss_idle_kb,
        rss_max_kb,
        threads,
        attempts: outcomes.iter().map(|o| u64::from(o.attempts)).sum(),
        first_byte: (first_p50, first_p99),
        received_median: percentile(&received, 0.5),
        received_min: received.first().copied().unwrap_or(f64::NAN),
        loadgen_share: (own1 - own0).as_secs_f64() / (elapsed.as_secs_f64() * cores() as f64),
        reasons: reasons.into_iter().collect(),
        status,
    }
}

/// Part 3: N listeners on each server.
fn held(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let window = opts.window();
    let mut all = Vec::new();
    for n in opts.listener_counts() {
        let limit = (n + 100).to_string();
        // Every listener comes from 127.0.0.1: the per-address guard caps
        // (for connections that are not yet listeners) are raised.
        let env = [
            TONE[0],
            TONE[1],
            ("TOWER_HTTP_MAX_LISTENERS", limit.as_str()),
            ("TOWER_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "10000"),
            ("TOWER_HTTP_MAX_OTHER_CONNECTIONS", "10000"),
        ];
        let tower = start_tower(&env);
        let encoder = tower.ffmpeg_pid() as u32;
        thread::sleep(Duration::from_secs(2));
        let t = hold(tower.addr, "/stream", n, window, (tower.pid() as u32, encoder), &|| {
            tower.status()
        });
        drop(tower);
        eprintln!("Tower, {n} listeners: {} dropped, {:.1} % CPU", t.dropped, t.cpu_pct);

        let (ice, source) = icecast_with_source(stock, n, support::tone_raw());
        thread::sleep(Duration::from_secs(2));
        let i = hold(ice.addr(), MOUNT, n, window, (ice.pid() as u32, source.pid()), &|| {
            Value::Null
        });
        drop((source, ice));
        eprintln!("Icecast, {n} listeners: {} dropped, {:.1} % CPU", i.dropped, i.cpu_pct);

        let w = window.as_secs();
        report.row(
            format!("{n} listeners for {w} s: held (of {n})"),
            "",
            Some((t.admitted - t.dropped) as f64),
            Some((i.admitted - i.dropped) as f64),
        );
        if n == *opts.listener_counts().iter().max().unwrap_or(&n) {
            report.target(format!("{n}, 0 dropped"), t.admitted == n && t.dropped == 0);
        }
        report.row(
            format!(
                "{n} listeners: dropped (never admitted: Tower {}, Icecast {})",
                t.refused, i.refused
            ),
            "",
            Some(t.dropped as f64),
            Some(i.dropped as f64),
        );
        report.row(
            format!("{n} listeners: all connected and receiving after"),
            " s",
            Some(t.settle_s),
            Some(i.settle_s),
        );
        report.row(
            format!(
                "{n} listeners connecting together: connect → first audio byte, p99 (median: Tower {:.1} ms, Icecast {:.1} ms)",
                t.first_byte.0, i.first_byte.0
            ),
            " ms",
            Some(t.first_byte.1),
            Some(i.first_byte.1),
        );
        report.row(
            format!("{n} listeners: server CPU (% of one core)"),
            " %",
            Some(t.cpu_pct),
            Some(i.cpu_pct),
        );
        report.row(
            format!("{n} listeners: server RSS"),
            " MB",
            Some(t.rss_max_kb as f64 / 1024.0),
            Some(i.rss_max_kb as f64 / 1024.0),
        );
        report.row(
            format!("{n} listeners: server threads"),
            "",
            Some(t.threads as f64),
            Some(i.threads as f64),
        );
        report.row(
            format!(
                "{n} listeners: bytes received ÷ (128 kbit/s × {w} s), median (min: Tower {:.3}, Icecast {:.3})",
                t.received_min, i.received_min
            ),
            "",
            Some(t.received_median),
            Some(i.received_median),
        );
        report.row(
            format!("{n} listeners: memory per listener (RSS at N − RSS at 0) ÷ N"),
            " kB",
            Some(t.per_listener_kb()),
            Some(i.per_listener_kb()),
        );
        report.target("≤ Icecast's", t.per_listener_kb() <= i.per_listener_kb());
        report.row(
            format!("{n} listeners: load generator's CPU, share of the machine"),
            " %",
            Some(t.loadgen_share * 100.0),
            Some(i.loadgen_share * 100.0),
        );
        all.push(json!({ "n": n, "window_s": w, "tower": t.to_json(), "icecast": i.to_json() }));
    }
    report.json.insert("held".into(), Value::Array(all));
}

/// Part 4: pump tick error with every core busy.
fn pump(report: &mut Report, opts: &Options) {
    let window = opts.window();
    let mut out = serde_json::Map::new();
    for fifo in [true, false] {
        let hog = Hog::start(cores(), window.as_secs() + 30).expect("hog");
        thread::sleep(Duration::from_millis(500));
        let tower = if fifo {
            Tower::start(&[], TONE)
        } else {
            Tower::start_unprivileged(&[], TONE)
        };
        own(tower.pid());
        let (h0, _) = proc_stat(hog.pids()[0]);
        let t0 = Instant::now();
        thread::sleep(window);
        let (h1, _) = proc_stat(hog.pids()[0]);
        let status = tower.status();
        drop(tower);
        drop(hog);
        let p = &status["pump"];
        let t = &p["tick_error"];
        let us = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
        let label = if fifo {
            "SCHED_FIFO"
        } else {
            "SCHED_OTHER (no right to real time)"
        };
        let got_fifo = p["sched_fifo"].as_bool() == Some(fifo);
        if !got_fifo {
            report.notes.push(format!(
                "pump run meant as {label} reported sched_fifo = {}",
                p["sched_fifo"]
            ));
        }
        report.row(
            format!(
                "pump tick error, cores busy, {label}: p99 (p50 {:.3} ms, p99.9 {:.3} ms, max {:.2} ms)",
                us("p50_us") / 1000.0,
                us("p999_us") / 1000.0,
                us("max_us") / 1000.0
            ),
            " ms",
            Some(us("p99_us") / 1000.0),
            None,
        );
        if fifo {
            report.target("p99 ≤ 1 ms", us("p99_us") <= 1000.0);
        }
        out.insert(
            if fifo { "sched_fifo" } else { "sched_other" }.into(),
            json!({ "tick_error": t, "late_ticks": p["late_ticks"], "resyncs": p["resyncs"], "sched_fifo": p["sched_fifo"],
                    "hog_cpu_pct_of_one_core": cpu_percent(h0, h1, t0.elapsed()), "hogs": cores() }),
        );
    }
    report.json.insert("pump".into(), Value::Object(out));
}

/// Lets this process (and so the servers it starts) open as many
/// descriptors as the system allows.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hog") {
        let seconds = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(10);
        servers::spin(seconds);
        return;
    }
    // `cargo bench` passes --bench; under `cargo test` this is a no-op.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let opts = Options::parse(&args);
    servers::end_children_on_signal().expect("signal handler");
    let nofile = raise_fd_limit();
    let stock = Arc::new(StockConfig::load().unwrap_or_else(|e| panic!("{e}")));
    let started = Instant::now();
    eprintln!(
        "Tower {} vs icecast2, {} cores, open files {nofile}, {}",
        env!("CARGO_PKG_VERSION"),
        cores(),
        if opts.quick { "quick run" } else { "full run" }
    );
    let mut report = Report::default();
    // The lag part sets the ALSA and JACK environment: it runs first,
    // before other threads are started.
    if opts.runs("lag") {
        lag(&mut report, &stock, &opts);
    }
    if opts.runs("first") {
        first_byte(&mut report, &stock);
    }
    if opts.runs("held") {
        held(&mut report, &stock, &opts);
    }
    if opts.runs("pump") {
        pump(&mut report, &opts);
    }
    let icecast_version = std::process::Command::new("icecast2")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    report.json.insert(
        "machine".into(),
        json!({ "cores": cores(), "quick": opts.quick, "icecast": icecast_version,
                "tower": env!("CARGO_PKG_VERSION"), "duration_s": started.elapsed().as_secs_f64(),
                "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) }),
    );
    report.json.insert("notes".into(), json!(report.notes));
    println!("{}", report.markdown());
    for n in &report.notes {
        println!("- {n}");
    }
    if let Some(dir) = opts.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&Value::Object(report.json.clone())).unwrap_or_default();
    match std::fs::write(&opts.json, text) {
        Ok(()) => println!("\nJSON: {}", opts.json.display()),
        Err(e) => eprintln!("cannot write {}: {e}", opts.json.display()),
    }
}
