//! Tower, Icecast2 and Liquidsoap side by side, on this machine, in one
//! run: `scripts/bench.sh` (or `cargo bench --bench compare -- [--quick]`).
//!
//! The peers. Tower: its own process and its ffmpeg child. Icecast
//! (Debian's stock configuration): an ffmpeg source, with Tower's encoder
//! arguments, standing in for DarkIce, that this process feeds PCM at the
//! real-time pace (a 24 ms frame every 24 ms on an absolute schedule),
//! timestamping each click onset as it is written. Liquidsoap (`output.
//! harbor`, MP3 128 kbit/s 48 kHz, its defaults otherwise): the same PCM,
//! paced and timestamped the same way, through a FIFO that its
//! `input.external.rawaudio` reads; it encodes in-process (see
//! `compare/liquidsoap.rs` for the choices). All listen on 127.0.0.1.
//!
//! 1. `first`: connect → first audio byte (100 connects, one after
//!    another; `--quick`: 30).
//! 2. `lag`: an input of clicks (10 ms of 1 kHz every 500 ms). Tower
//!    captures it through real ALSA (JACK dummy backend), a probe
//!    timestamping each click as the device delivers it; the others get
//!    it from this process as above. A new listener decodes the stream:
//!    each click's arrival at its socket, and how far behind live it plays
//!    (the click's place in the stream, played from the first byte,
//!    against when the source delivered it; this includes the burst).
//! 3. `held`: N readers for a window each (5, 100, 1000, 2000 for 30 s;
//!    `--quick`: 5 and 100 for 5 s) from the load generator (`loadgen`), the
//!    servers fed a 440 Hz tone (Tower: its fallback tone): held, dropped,
//!    settle time, first byte under load, CPU (% of one core) and RSS
//!    (the maximum of 0.5 s samples) of the server alone and of the whole
//!    chain (server + its encoder process: Tower's ffmpeg child, Icecast's
//!    ffmpeg source; Liquidsoap is one process: the `cat` that feeds it
//!    is the bench's, in the JSON only), threads, bytes received
//!    against 128 kbit/s, memory per listener ((RSS at N − RSS before the
//!    load, once it stopped growing) ÷ N). System calls over the window, counted in the kernel by
//!    `perf stat -e raw_syscalls:sys_enter` (plus a handful of single
//!    calls, and instructions where the PMU allows) on the server and on
//!    its encoder, turned on and off with the window (`compare/perf.rs`):
//!    per second, and per listener-second after subtracting what the same
//!    server does with 0 listeners over a window of the same length
//!    (measured once per server before the first N: that window also
//!    gives the idle rows, CPU, calls and wake-ups a second, the latter
//!    from each thread's voluntary context switches, by thread for Tower).
//!    A count of calls per listener-second carries over to ARM where CPU %
//!    does not. The chain leaves out, for Icecast and Liquidsoap, the
//!    bench's thread that plays the PCM into it at the real-time pace
//!    (DarkIce's capture, in a real set-up); Tower's pump does that work
//!    inside Tower and is counted. The "with its input" rows add that
//!    thread's CPU (and Liquidsoap's `cat`), so that the two chains do
//!    the same work.
//!    The trade-off: at each N, Tower once more with `http.burst_ms =
//!    400` (writes to each listener gather 8 frames, not 4); and in the
//!    lag part a second listener asking for that burst.
//! 4. `side`: Tower and Icecast (with its ffmpeg source) serving N
//!    listeners each at the same time, each from its own load generator,
//!    their chains' CPU measured over the same window, cut in three parts
//!    (`compare/side.rs`): whatever else the machine does lands on both,
//!    so the ratio holds up where two windows one after another do not.
//!    Also "with its input", and the lowest and highest ratio of the parts.
//! 5. `pump`: Tower's pump tick error with every core busy (a hog process
//!    per core), with SCHED_FIFO (as root) and without (as nobody, no
//!    RLIMIT_RTPRIO).
//! 6. `encoder`: Tower's default ffmpeg command on 60 s (`--quick`: 20 s)
//!    of music-like PCM as fast as it goes: CPU (user + system, from
//!    wait4) per second of audio, best of 3, for libmp3lame's
//!    `-compression_level` unset and 0…9; output bytes and a crude SNR of
//!    the decoded output (`compare/encoder.rs`). SNR is not what a
//!    listener hears: LAME's better levels shape noise where it is masked,
//!    which can lower the SNR.
//! 7. `locked`: Tower's RSS and VmLck after 10 s (`--quick`: 5 s) of
//!    streaming, capturing real ALSA (JACK dummy) or the fallback tone, as
//!    root and under the systemd unit's conditions (`compare/locked.rs`).
//!    With JACK, RSS includes JACK's shared memory, which a sound card
//!    does not have: a row gives RSS without it.
//!
//! Prints one Markdown table (a column per server, Tower ÷ the best of
//! the others: the lowest, or the highest for held and bytes; Tower's
//! targets: first byte p99 ≤ 5 ms, lag ≤ 0.3 s, click → listener socket
//! p99 ≤ 150 ms, whole-chain CPU ≤ 0.9 ×
//! the best peer's up to 1 000 listeners and ≤ it beyond (issue 22), idle
//! CPU and calls and memory per listener ≤ the best peer's, 0 dropped at
//! the largest N, pump p99 ≤ 1 ms with SCHED_FIFO) and writes every figure as JSON
//! (target/bench/compare.json, or `--json PATH`). Every part is bounded in
//! time; every child process is ended on exit, panic or signal.
//! `--only first,lag,held,side,pump,encoder,locked` runs some parts;
//! `--listeners 100,500` and `--seconds S` change parts 3 and 4 (and the
//! window of part 5). Needs icecast2, liquidsoap, ffmpeg, jackd2,
//! libasound2-plugins and linux-perf.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "compare/encoder.rs"]
mod encoder;
#[path = "compare/liquidsoap.rs"]
mod liquidsoap;
#[path = "compare/loadgen.rs"]
mod loadgen;
#[path = "compare/locked.rs"]
mod locked;
#[path = "compare/peers.rs"]
mod peers;
#[path = "compare/perf.rs"]
mod perf;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/servers.rs"]
mod servers;
#[path = "compare/side.rs"]
mod side;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::Tower;
use peers::{Peer, Running, TONE};
use perf::Counts;
use report::{Better, Report};
use servers::{Hog, StockConfig, own};
use support::{
    BYTES_PER_S_128K, ClickRig, cpu_percent, first_byte_times, listen_clicks_for, own_thread_ticks, p50_p99_max,
    pair_clicks, percentile, proc_stat,
};

/// The trade-off the held and lag parts also measure: Tower with this
/// burst (ms), whose writes to each listener gather 8 frames, not 4.
const WIDE_BURST_MS: &str = "400";
/// Load generator threads.
const LOAD_THREADS: usize = 2;
const PARTS: [&str; 7] = ["first", "lag", "held", "side", "pump", "encoder", "locked"];

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
                || PARTS.map(String::from).to_vec(),
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
            None if self.quick => vec![5, 100],
            None => vec![5, 100, 1000, 2000],
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.seconds.unwrap_or(if self.quick { 5 } else { 30 }))
    }

    fn lag_listen_s(&self) -> f64 {
        if self.quick { 8.0 } else { 20.0 }
    }

    /// Connects, one after another, of the first-byte part.
    fn connects(&self) -> usize {
        if self.quick { 30 } else { 100 }
    }

    /// Streaming before the locked part reads Tower's memory.
    fn locked_stream(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 10 })
    }

    /// Seconds of audio for the encoder part.
    fn encoder_audio_s(&self) -> f64 {
        if self.quick { 20.0 } else { 60.0 }
    }
}

fn ms_stats(v: Vec<f64>) -> Value {
    let n = v.len();
    let (p50, p99, max) = p50_p99_max(v);
    json!({ "n": n, "p50_ms": p50, "p99_ms": p99, "max_ms": max })
}

/// `f` of each peer's figures, in the table's order.
fn per_peer<T>(all: &[T; 3], f: impl Fn(&T) -> f64) -> [Option<f64>; 3] {
    [Some(f(&all[0])), Some(f(&all[1])), Some(f(&all[2]))]
}

/// Part 1: connect → first audio byte.
fn first_byte(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let connects = opts.connects();
    let times: [Vec<f64>; 3] = Peer::ALL.map(|peer| {
        let server = peers::start(peer, stock, 100, support::tone_raw());
        first_byte_times(server.addr(), server.path(), connects)
            .unwrap_or_else(|e| panic!("{} first bytes: {e}", peer.name()))
    });
    let stats = times.clone().map(p50_p99_max);
    report.row("first byte p50", " ms", per_peer(&stats, |s| s.0));
    report.row("first byte p99", " ms", per_peer(&stats, |s| s.1));
    report.target("≤ 5 ms", stats[0].1 <= 5.0);
    let mut j = serde_json::Map::new();
    for (peer, t) in Peer::ALL.iter().zip(times) {
        j.insert(peer.key().into(), ms_stats(t));
    }
    j.insert("connects".into(), json!(connects));
    report.json.insert("first_byte".into(), Value::Object(j));
}

/// Part 2: the click marker through each.
fn lag(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let listen = opts.lag_listen_s();
    // Tower first: it sets this process's ALSA and JACK environment.
    let rig = ClickRig::start(2.0 * listen + 15.0);
    own(rig.jack_pid());
    thread::sleep(Duration::from_secs(2));
    let heard = listen_clicks_for(rig.service.local_addr(), "/stream", listen);
    // The trade-off: a listener with the wider burst (see the held part).
    let wide_path = format!("/stream?burst_ms={WIDE_BURST_MS}");
    let heard_wide = listen_clicks_for(rig.service.local_addr(), &wide_path, listen);
    let sent = rig.sent();
    drop(rig.stop());
    let wide = pair_clicks(&sent, &heard_wide);
    let mut results = vec![(sent, heard)];
    for peer in [Peer::Icecast, Peer::Liquidsoap] {
        let server = peers::start(peer, stock, 100, support::clicks_raw(12.0));
        // Let its burst buffer (64 KiB, 4 s) fill before the listener comes.
        thread::sleep(Duration::from_secs(5));
        let heard = listen_clicks_for(server.addr(), server.path(), listen);
        results.push((server.sent(), heard));
        note_underruns(report, &server, "lag");
    }
    let times: Vec<support::ClickTimes> = results.iter().map(|(s, h)| pair_clicks(s, h)).collect();
    for (peer, t) in Peer::ALL.iter().zip(&times) {
        if t.mismatched > 0 {
            report.notes.push(format!(
                "{}: {} live clicks paired differently by order and by time (a missed or extra click)",
                peer.name(),
                t.mismatched
            ));
        }
        if t.behind_live_ms.is_empty() {
            report.notes.push(format!("{}: no click heard", peer.name()));
        }
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let arrival: Vec<f64> = times.iter().map(|t| med(&t.arrival_ms)).collect();
    let behind: Vec<f64> = times.iter().map(|t| med(&t.behind_live_ms) / 1000.0).collect();
    report.row(
        "click → listener socket",
        " ms",
        [Some(arrival[0]), Some(arrival[1]), Some(arrival[2])],
    );
    let p99: Vec<f64> = times
        .iter()
        .map(|t| {
            let mut v = t.arrival_ms.clone();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.99)
        })
        .collect();
    report.row(
        "click → listener socket p99",
        " ms",
        [Some(p99[0]), Some(p99[1]), Some(p99[2])],
    );
    report.target("≤ 150 ms", p99[0] <= 150.0);
    report.row(
        "new listener's lag",
        " s",
        [Some(behind[0]), Some(behind[1]), Some(behind[2])],
    );
    report.target("≤ 0.3 s", behind[0] <= 0.3);
    report.row(
        format!("new listener's lag, Tower at burst {WIDE_BURST_MS} ms"),
        " s",
        [
            Some(med(&wide.behind_live_ms) / 1000.0),
            Some(behind[1]),
            Some(behind[2]),
        ],
    );
    report.row(
        format!("click → listener socket, Tower at burst {WIDE_BURST_MS} ms"),
        " ms",
        [Some(med(&wide.arrival_ms)), Some(arrival[1]), Some(arrival[2])],
    );
    let mut j = serde_json::Map::new();
    for ((peer, t), (sent, heard)) in Peer::ALL.iter().zip(&times).zip(&results) {
        j.insert(
            peer.key().into(),
            json!({ "arrival": ms_stats(t.arrival_ms.clone()), "behind_live": ms_stats(t.behind_live_ms.clone()),
                    "clicks_sent": sent.len(), "clicks_heard": heard.clicks.len(), "mismatched": t.mismatched }),
        );
    }
    j.insert("listen_s".into(), json!(listen));
    j.insert("liquidsoap_input_buffer_s".into(), json!(liquidsoap::INPUT_BUFFER_S));
    report.json.insert("lag".into(), Value::Object(j));
}

/// Notes it if `server`'s input ran dry during `part`.
fn note_underruns(report: &mut Report, server: &Running, part: &str) {
    let n = server.underruns();
    if n > 0 {
        report.notes.push(format!(
            "{part}: Liquidsoap's input ran dry {n} times (mksafe switched to silence)"
        ));
    }
}

/// System calls of a server alone and of its whole chain, over a span.
#[derive(Debug, Clone, Default)]
struct Syscalls {
    server: Counts,
    chain: Counts,
}

impl Syscalls {
    fn to_json(&self) -> Value {
        json!({ "server": self.server.to_json(), "chain": self.chain.to_json() })
    }
}

/// What one server did with `n` listeners.
#[derive(Debug, Default, Clone)]
struct Held {
    n: usize,
    admitted: usize,
    dropped: usize,
    refused: usize,
    settle_s: f64,
    window_s: f64,
    cpu_pct: f64,
    /// Server + encoder process.
    chain_cpu_pct: f64,
    encoder_cpu_pct: f64,
    /// A process that only feeds the server (Liquidsoap's `cat`).
    feeder_cpu_pct: f64,
    /// The bench's thread playing the input into the chain in real time
    /// (`Running::input_thread`), with the feeder process if any: the part
    /// of the work Tower's pump does that the chain leaves out.
    input_cpu_pct: f64,
    /// RSS before the load, once it stopped growing ([`steady_rss`]).
    rss_idle_kb: u64,
    rss_steady_after_s: f64,
    rss_max_kb: u64,
    /// The maximum over the window of the chain's summed RSS.
    chain_rss_max_kb: u64,
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
    syscalls: Option<Syscalls>,
}

impl Held {
    fn per_listener_kb(&self) -> f64 {
        (self.rss_max_kb as f64 - self.rss_idle_kb as f64) / self.admitted.max(1) as f64
    }

    fn held(&self) -> usize {
        self.admitted - self.dropped
    }

    /// The chain and what plays its input (see `input_cpu_pct`).
    fn chain_with_input_pct(&self) -> f64 {
        self.chain_cpu_pct + self.input_cpu_pct
    }

    fn to_json(&self) -> Value {
        json!({
            "n": self.n, "admitted": self.admitted, "dropped": self.dropped, "refused": self.refused,
            "settle_s": self.settle_s, "window_s": self.window_s, "cpu_pct_of_one_core": self.cpu_pct,
            "chain_cpu_pct_of_one_core": self.chain_cpu_pct,
            "encoder_cpu_pct_of_one_core": self.encoder_cpu_pct,
            "feeder_cpu_pct_of_one_core": self.feeder_cpu_pct,
            "input_cpu_pct_of_one_core": self.input_cpu_pct,
            "rss_idle_kb": self.rss_idle_kb, "rss_idle_steady_after_s": self.rss_steady_after_s, "rss_max_kb": self.rss_max_kb, "chain_rss_max_kb": self.chain_rss_max_kb,
            "threads": self.threads,
            "first_byte_under_load_p50_ms": self.first_byte.0, "first_byte_under_load_p99_ms": self.first_byte.1,
            "per_listener_kb": self.per_listener_kb(),
            "received_vs_expected_median": self.received_median, "received_vs_expected_min": self.received_min,
            "loadgen_share_of_machine": self.loadgen_share,
            "attempts": self.attempts,
            "end_reasons": self.reasons.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "status": self.status,
            "syscalls": self.syscalls.as_ref().map(Syscalls::to_json),
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

/// CPU ticks of each of `pids`.
fn ticks(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|p| proc_stat(*p).0).collect()
}

/// Summed RSS (kB) of `pids`.
fn rss_sum(pids: &[u32]) -> u64 {
    pids.iter().map(|p| proc_stat(*p).1).sum()
}

/// Attaches perf to `server` and its encoder, if perf is to count.
fn attach_perf(server: &Running, count: bool) -> Option<perf::Chain> {
    if !count {
        return None;
    }
    perf::Chain::attach(server.pid(), server.encoder())
        .map_err(|e| eprintln!("perf stat: {e}"))
        .ok()
}

/// Turns `perf` on (`true`) or off.
fn switch_perf(perf: &mut Option<perf::Chain>, on: bool) {
    if let Some(p) = perf {
        let r = if on { p.enable() } else { p.disable() };
        if let Err(e) = r {
            eprintln!("perf stat: {e}");
            *perf = None;
        }
    }
}

fn finish_perf(perf: Option<perf::Chain>) -> Option<Syscalls> {
    let (server, chain) = perf?.finish().map_err(|e| eprintln!("perf stat: {e}")).ok()?;
    Some(Syscalls { server, chain })
}

/// A server with no listener, over a window.
struct Idle {
    syscalls: Option<Syscalls>,
    /// CPU of the server, and of its chain (% of one core).
    cpu: f64,
    chain_cpu: f64,
    /// The server's wake-ups a second (voluntary context switches), by
    /// thread name (threads of one name added up).
    wakeups: Vec<(String, f64)>,
    /// What plays the input into the chain (`Held::input_cpu_pct`).
    input_cpu: f64,
}

/// Voluntary context switches of each of `pid`'s threads, by name.
fn wakeups_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by;
    };
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let switches: u64 = read("status")
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        *by.entry(read("comm").trim().to_string()).or_insert(0) += switches;
    }
    by
}

/// The server with no listener for `window`: its system calls (if `count`),
/// CPU, and wake-ups by thread.
fn idle(server: &Running, window: Duration, count: bool) -> Idle {
    let chain = server.chain();
    let mut perf = attach_perf(server, count);
    let (thread, feeder) = (server.input_thread().unwrap_or(0), server.feeder().unwrap_or(0));
    let input_ticks = || own_thread_ticks(thread) + proc_stat(feeder).0;
    let (before, woke, fed) = (ticks(&chain), wakeups_by_thread(server.pid()), input_ticks());
    let t0 = Instant::now();
    switch_perf(&mut perf, true);
    thread::sleep(window);
    switch_perf(&mut perf, false);
    let (after, woken, fed_after) = (ticks(&chain), wakeups_by_thread(server.pid()), input_ticks());
    let elapsed = t0.elapsed();
    let input_cpu = cpu_percent(fed, fed_after, elapsed);
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| cpu_percent(*b, *a, elapsed))
        .collect();
    let wakeups = woken
        .iter()
        .map(|(name, n)| {
            let was = woke.get(name).copied().unwrap_or(0);
            (name.clone(), n.saturating_sub(was) as f64 / elapsed.as_secs_f64())
        })
        .collect();
    Idle {
        syscalls: finish_perf(perf),
        cpu: cpu[0],
        chain_cpu: cpu.iter().sum(),
        wakeups,
        input_cpu,
    }
}

impl Idle {
    fn to_json(&self, window: Duration) -> Value {
        json!({ "syscalls": self.syscalls.as_ref().map(Syscalls::to_json), "cpu_pct_of_one_core": self.cpu,
                "chain_cpu_pct_of_one_core": self.chain_cpu, "input_cpu_pct_of_one_core": self.input_cpu, "window_s": window.as_secs(),
                "wakeups_per_s_by_thread": self.wakeups.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>() })
    }

    fn wakeups_per_s(&self) -> f64 {
        self.wakeups.iter().map(|(_, v)| v).sum()
    }
}

/// The idle rows: each server with no listener.
fn idle_rows(report: &mut Report, idles: &[Option<Idle>; 3]) {
    let [Some(t), Some(i), Some(l)] = idles else { return };
    let all = [t, i, l];
    let of = |f: &dyn Fn(&Idle) -> f64| [Some(f(t)), Some(f(i)), Some(f(l))];
    report.row("idle CPU server", " %", of(&|x| x.cpu));
    report.target_best_peer();
    report.row("idle CPU server with its input", " %", of(&|x| x.cpu + x.input_cpu));
    report.row("idle CPU chain", " %", of(&|x| x.chain_cpu));
    report.row(
        "idle CPU chain with its input",
        " %",
        of(&|x| x.chain_cpu + x.input_cpu),
    );
    if all.iter().all(|x| x.syscalls.is_some()) {
        let per_s = |x: &Idle| {
            x.syscalls
                .as_ref()
                .map_or(f64::NAN, |s| s.server.syscalls() / s.server.seconds)
        };
        report.row("idle calls/s server", "", of(&per_s));
        report.target_best_peer();
    }
    report.row("idle wake-ups/s server, all threads", "", of(&Idle::wakeups_per_s));
    let mut threads = t.wakeups.clone();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, n) in threads {
        report.tower_row(format!("idle wake-ups/s, Tower's {name}"), "", n);
    }
}

/// Waits until `pid`'s RSS has stopped growing (by at most 0.5 % over
/// the last 12 s; 75 s at most), so that growth under load is the
/// listeners'. Liquidsoap's grows in steps, 5 to 10 s apart, from about
/// 150 to 210 MB in its first 50 s with no listener. Returns the RSS (kB)
/// and how long it took (s).
fn steady_rss(pid: u32) -> (u64, f64) {
    const STILL: usize = 12;
    let t0 = Instant::now();
    let mut samples = vec![proc_stat(pid).1];
    loop {
        let rss = *samples.last().unwrap_or(&0);
        let steady = samples.len() > STILL && rss as f64 <= samples[samples.len() - 1 - STILL] as f64 * 1.005;
        if steady || t0.elapsed() > Duration::from_secs(75) {
            return (rss, t0.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_secs(1));
        samples.push(proc_stat(pid).1);
    }
}

/// Holds `n` listeners of `server` for `window`, sampling the server and
/// its chain; counts their system calls if `count`.
fn hold(server: &Running, n: usize, window: Duration, count: bool) -> Held {
    let (pid, chain) = (server.pid(), server.chain());
    let (rss_idle_kb, rss_steady_after_s) = steady_rss(pid);
    let settle_limit = Duration::from_secs(60);
    let deadline = Instant::now() + settle_limit + window + Duration::from_secs(20);
    let retry_until = Instant::now() + settle_limit;
    let load = loadgen::Load::start(server.addr(), server.path(), n, LOAD_THREADS, (retry_until, deadline))
        .expect("load generator");
    let settle = load.wait_settled(settle_limit);
    let mut perf = attach_perf(server, count);
    thread::sleep(Duration::from_millis(500));
    let feeder = server.feeder().unwrap_or(0);
    let input = server.input_thread().unwrap_or(0);
    let (c0, f0, i0, own0) = (ticks(&chain), proc_stat(feeder).0, own_thread_ticks(input), own_cpu());
    let t0 = Instant::now();
    switch_perf(&mut perf, true);
    load.begin_window();
    let (mut rss_max_kb, mut chain_rss_max_kb) = (0, 0);
    loop {
        rss_max_kb = rss_max_kb.max(proc_stat(pid).1);
        chain_rss_max_kb = chain_rss_max_kb.max(rss_sum(&chain));
        if t0.elapsed() >= window {
            break;
        }
        thread::sleep(Duration::from_millis(500).min(window.saturating_sub(t0.elapsed())));
    }
    switch_perf(&mut perf, false);
    load.end_window();
    let elapsed = t0.elapsed();
    let (c1, f1, i1, own1) = (ticks(&chain), proc_stat(feeder).0, own_thread_ticks(input), own_cpu());
    let cpu: Vec<f64> = c0.iter().zip(&c1).map(|(a, b)| cpu_percent(*a, *b, elapsed)).collect();
    let status = server.status();
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
        window_s: elapsed.as_secs_f64(),
        cpu_pct: cpu[0],
        chain_cpu_pct: cpu.iter().sum(),
        encoder_cpu_pct: cpu.get(1).copied().unwrap_or(0.0),
        feeder_cpu_pct: if feeder > 0 { cpu_percent(f0, f1, elapsed) } else { 0.0 },
        input_cpu_pct: if input > 0 { cpu_percent(i0, i1, elapsed) } else { 0.0 }
            + if feeder > 0 { cpu_percent(f0, f1, elapsed) } else { 0.0 },
        rss_idle_kb,
        rss_steady_after_s,
        rss_max_kb,
        chain_rss_max_kb,
        threads,
        attempts: outcomes.iter().map(|o| u64::from(o.attempts)).sum(),
        first_byte: (first_p50, first_p99),
        received_median: percentile(&received, 0.5),
        received_min: received.first().copied().unwrap_or(f64::NAN),
        loadgen_share: (own1 - own0).as_secs_f64() / (elapsed.as_secs_f64() * cores() as f64),
        reasons: reasons.into_iter().collect(),
        status,
        syscalls: finish_perf(perf),
    }
}

/// `of(window)` per listener-second, less what `of(idle)` does per second.
fn per_listener_s(window: &Counts, idle: &Counts, listeners: usize, of: impl Fn(&Counts) -> f64) -> f64 {
    if window.seconds <= 0.0 || idle.seconds <= 0.0 || listeners == 0 {
        return f64::NAN;
    }
    (of(window) - of(idle) / idle.seconds * window.seconds) / (listeners as f64 * window.seconds)
}

/// The system-call figures of one server at one N, for the JSON and rows.
struct CallFigures {
    /// Per listener-second: (server, chain).
    per_listener: (f64, f64),
    /// Per second: (server, chain).
    per_s: (f64, f64),
    /// Instructions per listener-second of the chain, where counted.
    instructions: Option<f64>,
    /// Each call of [`perf::SYSCALLS`] per listener-second, server alone.
    by_call: Vec<(&'static str, f64)>,
    json: Value,
}

fn call_figures(h: &Held, idle: &Syscalls) -> Option<CallFigures> {
    let w = h.syscalls.as_ref()?;
    let n = h.admitted;
    let all = |c: &Counts| c.syscalls();
    let per_listener = (
        per_listener_s(&w.server, &idle.server, n, all),
        per_listener_s(&w.chain, &idle.chain, n, all),
    );
    let per_s = (
        w.server.syscalls() / w.server.seconds,
        w.chain.syscalls() / w.chain.seconds,
    );
    let instructions = match (w.chain.instructions(), idle.chain.instructions()) {
        (Some(_), Some(_)) => Some(per_listener_s(&w.chain, &idle.chain, n, |c| {
            c.instructions().unwrap_or(0.0)
        })),
        _ => None,
    };
    let by_call: Vec<(&'static str, f64)> = perf::SYSCALLS
        .iter()
        .map(|s| (*s, per_listener_s(&w.server, &idle.server, n, |c| c.syscall(s))))
        .collect();
    let by_call_chain: serde_json::Map<String, Value> = perf::SYSCALLS
        .iter()
        .map(|s| {
            (
                s.to_string(),
                json!(per_listener_s(&w.chain, &idle.chain, n, |c| c.syscall(s))),
            )
        })
        .collect();
    let json = json!({
        "listeners_divided_by": n,
        "per_listener_s": { "server": per_listener.0, "chain": per_listener.1 },
        "per_s": { "server": per_s.0, "chain": per_s.1 },
        "idle_per_s": { "server": idle.server.syscalls() / idle.server.seconds, "chain": idle.chain.syscalls() / idle.chain.seconds },
        "instructions_per_listener_s_chain": instructions,
        "by_call_per_listener_s": {
            "server": by_call.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "chain": by_call_chain,
        },
    });
    Some(CallFigures {
        per_listener,
        per_s,
        instructions,
        by_call,
        json,
    })
}

/// Part 3: N listeners on each server.
fn held(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let window = opts.window();
    let count = perf::available();
    if !count {
        report
            .notes
            .push("perf stat cannot count system calls here (apt-get install linux-perf): no system-call rows".into());
    }
    let counts = opts.listener_counts();
    let largest = counts.iter().copied().max().unwrap_or(0);
    let mut idles: [Option<Idle>; 3] = [None, None, None];
    let mut backlogs: [Option<u32>; 3] = [None; 3];
    let mut all = Vec::new();
    let mut instructions_noted = false;
    for &n in &counts {
        let mut results: Vec<Held> = Vec::new();
        for (i, peer) in Peer::ALL.into_iter().enumerate() {
            let server = peers::start(peer, stock, n, support::tone_raw());
            thread::sleep(Duration::from_secs(1));
            if idles[i].is_none() {
                idles[i] = Some(idle(&server, window, count));
            }
            backlogs[i] = server.listen_backlog();
            let h = hold(&server, n, window, count);
            note_underruns(report, &server, &format!("held, {n} listeners"));
            drop(server);
            eprintln!(
                "{}, {n} listeners: {} dropped, {:.1} % CPU ({:.1} % chain)",
                peer.name(),
                h.dropped,
                h.cpu_pct,
                h.chain_cpu_pct
            );
            results.push(h);
        }
        let r: [Held; 3] = results.try_into().expect("a result for each of the three peers");
        // The trade-off: Tower with a 400 ms burst, whose writes gather 8
        // frames instead of 4 (half the calls), for 0.2 s more lag.
        let wide = {
            let server = peers::start_tower_with(n, &[("TOWER_HTTP_BURST_MS", WIDE_BURST_MS)]);
            thread::sleep(Duration::from_secs(1));
            let h = hold(&server, n, window, count);
            eprintln!(
                "Tower at http.burst_ms = {WIDE_BURST_MS}, {n} listeners: {} dropped, {:.1} % CPU ({:.1} % chain)",
                h.dropped, h.cpu_pct, h.chain_cpu_pct
            );
            h
        };
        let w = window.as_secs();
        report.row_better(
            format!("N={n} held"),
            "",
            per_peer(&r, |h| h.held() as f64),
            Better::Higher,
        );
        if n == largest {
            report.target(format!("{n}, 0 dropped"), r[0].admitted == n && r[0].dropped == 0);
        }
        report.row(format!("N={n} dropped"), "", per_peer(&r, |h| h.dropped as f64));
        report.row(format!("N={n} settle"), " s", per_peer(&r, |h| h.settle_s));
        report.row(format!("N={n} first byte p99"), " ms", per_peer(&r, |h| h.first_byte.1));
        report.row(format!("N={n} CPU server"), " %", per_peer(&r, |h| h.cpu_pct));
        report.row(format!("N={n} CPU chain"), " %", per_peer(&r, |h| h.chain_cpu_pct));
        // Issue 22: 0.9 × the best peer's up to 1 000 listeners, ahead beyond.
        let chain_target = if n <= 1000 { 0.9 } else { 1.0 };
        report.target_ratio(chain_target);
        report.row(
            format!("N={n} CPU chain with its input"),
            " %",
            per_peer(&r, Held::chain_with_input_pct),
        );
        report.target_ratio(chain_target);
        report.row(
            format!("N={n} CPU chain, Tower at burst {WIDE_BURST_MS} ms"),
            " %",
            [
                Some(wide.chain_cpu_pct),
                Some(r[1].chain_cpu_pct),
                Some(r[2].chain_cpu_pct),
            ],
        );
        report.target_ratio(chain_target);
        report.row(
            format!("N={n} RSS server"),
            " MB",
            per_peer(&r, |h| h.rss_max_kb as f64 / 1024.0),
        );
        report.row(
            format!("N={n} RSS chain"),
            " MB",
            per_peer(&r, |h| h.chain_rss_max_kb as f64 / 1024.0),
        );
        report.row(format!("N={n} threads"), "", per_peer(&r, |h| h.threads as f64));
        report.row_better(
            format!("N={n} bytes ÷ 128 kbit/s·{w} s"),
            "",
            per_peer(&r, |h| h.received_median),
            Better::Higher,
        );
        report.row(
            format!("N={n} memory/listener"),
            " kB",
            per_peer(&r, Held::per_listener_kb),
        );
        report.target_best_peer();
        let figures: Vec<Option<CallFigures>> = r
            .iter()
            .zip(&idles)
            .map(|(h, idle)| call_figures(h, idle.as_ref()?.syscalls.as_ref()?))
            .collect();
        if figures.iter().all(Option::is_some) {
            let f: Vec<&CallFigures> = figures.iter().flatten().collect();
            let of = |g: &dyn Fn(&CallFigures) -> f64| [Some(g(f[0])), Some(g(f[1])), Some(g(f[2]))];
            report.row(format!("N={n} calls/listener·s server"), "", of(&|c| c.per_listener.0));
            report.row(format!("N={n} calls/listener·s chain"), "", of(&|c| c.per_listener.1));
            if let Some(c) = idles[0]
                .as_ref()
                .and_then(|i| call_figures(&wide, i.syscalls.as_ref()?))
            {
                report.row(
                    format!("N={n} calls/listener·s server, Tower at burst {WIDE_BURST_MS} ms"),
                    "",
                    [
                        Some(c.per_listener.0),
                        Some(f[1].per_listener.0),
                        Some(f[2].per_listener.0),
                    ],
                );
            }
            report.row(format!("N={n} calls/s server"), "", of(&|c| c.per_s.0));
            report.row(format!("N={n} calls/s chain"), "", of(&|c| c.per_s.1));
            if f.iter().all(|c| c.instructions.is_some()) {
                report.row(
                    format!("N={n} instructions/listener·s chain"),
                    "",
                    of(&|c| c.instructions.unwrap_or(f64::NAN)),
                );
            } else if !instructions_noted {
                instructions_noted = true;
                report
                    .notes
                    .push("instructions: not supported by this machine's PMU (perf says <not supported>)".into());
            }
            // The calls that make up most of each server's cost.
            let mut top: Vec<&'static str> = Vec::new();
            for c in &f {
                let mut v = c.by_call.clone();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                top.extend(v.iter().take(3).filter(|(_, x)| *x >= 0.5).map(|(s, _)| *s));
            }
            for s in perf::SYSCALLS.iter().filter(|s| top.contains(s)) {
                let by = |c: &CallFigures| c.by_call.iter().find(|(k, _)| k == s).map_or(f64::NAN, |(_, v)| *v);
                report.row_better(
                    format!("N={n} {s}/listener·s server"),
                    "",
                    of(&|c| by(c)),
                    Better::Neither,
                );
            }
        }
        let mut j = json!({ "n": n, "window_s": w });
        for ((peer, h), fig) in Peer::ALL.iter().zip(&r).zip(&figures) {
            let mut v = h.to_json();
            v["syscall_figures"] = fig.as_ref().map_or(Value::Null, |f| f.json.clone());
            j[peer.key()] = v;
        }
        let mut v = wide.to_json();
        if let Some(c) = idles[0]
            .as_ref()
            .and_then(|i| call_figures(&wide, i.syscalls.as_ref()?))
        {
            v["syscall_figures"] = c.json;
        }
        v["http_burst_ms"] = json!(WIDE_BURST_MS);
        j["tower_wide_burst"] = v;
        all.push(j);
    }
    let idle_json: serde_json::Map<String, Value> = Peer::ALL
        .iter()
        .zip(&idles)
        .map(|(peer, idle)| {
            let v = idle.as_ref().map_or(Value::Null, |i| i.to_json(window));
            (peer.key().to_string(), v)
        })
        .collect();
    idle_rows(report, &idles);
    report.json.insert("held".into(), Value::Array(all));
    // The load generator sets up at most this many connections at once.
    let at_once = largest.min(loadgen::IN_FLIGHT * LOAD_THREADS);
    for (peer, b) in Peer::ALL.iter().zip(backlogs) {
        if let Some(b) = b.filter(|b| (*b as usize) < at_once) {
            report.notes.push(format!(
                "{}'s listen backlog is {b} (ss): of up to {at_once} connections the load generator sets up at \
                 once, those beyond it wait for TCP retransmissions (settle, first byte under load)",
                peer.name()
            ));
        }
    }
    report.json.insert(
        "listen_backlog_at_largest_n".into(),
        Peer::ALL
            .iter()
            .zip(backlogs)
            .map(|(p, b)| (p.key().to_string(), json!(b)))
            .collect(),
    );
    report.json.insert("idle".into(), Value::Object(idle_json));
}

/// Part 5: pump tick error with every core busy.
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
        let label = if fifo { "SCHED_FIFO" } else { "SCHED_OTHER" };
        let got_fifo = p["sched_fifo"].as_bool() == Some(fifo);
        if !got_fifo {
            report.notes.push(format!(
                "pump run meant as {label} reported sched_fifo = {}",
                p["sched_fifo"]
            ));
        }
        report.tower_row(
            format!("pump tick error p99, busy, {label}"),
            " ms",
            us("p99_us") / 1000.0,
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

/// Part 6: the encoder's CPU per second of audio, by LAME quality.
fn encoder_cost(report: &mut Report, opts: &Options) {
    let seconds = opts.encoder_audio_s();
    let settings = encoder::measure(seconds).expect("encoder runs (apt-get install ffmpeg)");
    for s in &settings {
        report.tower_row(
            format!("encoder {}: CPU/audio-s (SNR {:.1} dB)", s.label(), s.snr_db),
            " ms",
            s.cpu_ms_per_audio_s,
        );
    }
    let same: Vec<String> = settings
        .iter()
        .filter(|s| s.level.is_some() && s.same_as_default)
        .map(|s| s.label())
        .collect();
    report.notes.push(format!(
        "encoder: output with -compression_level unset is byte-identical to {}",
        if same.is_empty() {
            "none of the levels tried".into()
        } else {
            same.join(", ")
        }
    ));
    let sizes: Vec<usize> = settings.iter().map(|s| s.bytes).collect();
    if sizes.iter().any(|b| *b != sizes[0]) {
        report
            .notes
            .push(format!("encoder: output sizes differ between levels: {sizes:?} bytes"));
    } else {
        report.notes.push(format!(
            "encoder: every level gives the same {} bytes for {seconds} s ({:.1} kbit/s, CBR)",
            sizes[0],
            sizes[0] as f64 * 8.0 / seconds / 1000.0
        ));
    }
    report.json.insert(
        "encoder".into(),
        json!({
            "command": default_command_text(),
            "audio_s": seconds, "runs_each": encoder::RUNS,
            "settings": settings.iter().map(|s| s.to_json(seconds)).collect::<Vec<_>>(),
        }),
    );
}

fn default_command_text() -> String {
    tower::encoder::command::default_command("ffmpeg", 128).to_string()
}

/// Part 7: Tower's memory with the pump's memory lock.
fn locked_memory(report: &mut Report, stream: Duration) {
    if !common::icecast::is_root() {
        report
            .notes
            .push("locked: needs root (to run Tower as nobody like the unit): skipped".into());
        return;
    }
    let unit = locked::Unit::emulate();
    if !unit.limits_set {
        report.notes.push(
            "locked, unit: this process may not raise RLIMIT_MEMLOCK/RLIMIT_RTPRIO (no CAP_SYS_RESOURCE): \
             ambient CAP_IPC_LOCK stands in for LimitMEMLOCK=infinity, CAP_SYS_NICE alone grants SCHED_FIFO"
                .into(),
        );
    }
    let mut runs = Vec::new();
    let mut all_realtime = true;
    for (alsa, input) in [(true, "ALSA"), (false, "tone")] {
        for (as_unit, who) in [(false, "root"), (true, "unit")] {
            let jack_name = if as_unit { "tower-bench-2" } else { "tower-bench-1" };
            let r = locked::run(as_unit.then_some(&unit), alsa, jack_name, stream);
            let fifo = r.json["sched_fifo"].as_bool() == Some(true);
            let locked = r.json["memory_locked"].as_bool() == Some(true);
            if !(fifo && locked) {
                report.notes.push(format!(
                    "locked, {input}, {who}: /status says sched_fifo = {fifo}, memory_locked = {locked}"
                ));
            }
            if alsa && r.json["frames_live"].as_u64().unwrap_or(0) == 0 {
                report.notes.push(format!(
                    "locked, {input}, {who}: no live frame: the capture did not work"
                ));
            }
            report.tower_row(format!("RSS, {input}, {who}"), " MB", r.rss_kb as f64 / 1024.0);
            if alsa {
                let private = r.rss_kb.saturating_sub(r.shmem_kb);
                report.tower_row(
                    format!("RSS less JACK shm, {input}, {who}"),
                    " MB",
                    private as f64 / 1024.0,
                );
            }
            report.tower_row(format!("VmLck, {input}, {who}"), " MB", r.locked_kb as f64 / 1024.0);
            all_realtime &= fifo && locked;
            runs.push(r.json);
        }
    }
    if all_realtime {
        report
            .notes
            .push("locked: /status said sched_fifo and memory_locked true in every run".into());
    }
    report.json.insert(
        "locked".into(),
        json!({ "stream_s": stream.as_secs(), "unit_limits_set": unit.limits_set, "runs": runs }),
    );
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

/// The first line a program prints with `arg`.
fn version(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
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
        "Tower {} vs icecast2 and liquidsoap, {} cores, open files {nofile}, {}",
        env!("CARGO_PKG_VERSION"),
        cores(),
        if opts.quick { "quick run" } else { "full run" }
    );
    let mut report = Report::default();
    let mut timing = serde_json::Map::new();
    let mut part = |name: &str, report: &mut Report, f: &dyn Fn(&mut Report)| {
        if opts.runs(name) {
            let t0 = Instant::now();
            f(report);
            eprintln!("part {name}: {:.0} s", t0.elapsed().as_secs_f64());
            timing.insert(name.into(), json!(t0.elapsed().as_secs_f64()));
        }
    };
    // The lag part sets the ALSA and JACK environment: it runs first,
    // before other threads are started.
    part("lag", &mut report, &|r| lag(r, &stock, &opts));
    part("first", &mut report, &|r| first_byte(r, &stock, &opts));
    part("held", &mut report, &|r| held(r, &stock, &opts));
    part("side", &mut report, &|r| side::side_by_side(r, &stock, &opts));
    part("pump", &mut report, &|r| pump(r, &opts));
    part("encoder", &mut report, &|r| encoder_cost(r, &opts));
    part("locked", &mut report, &|r| locked_memory(r, opts.locked_stream()));
    report.json.insert(
        "machine".into(),
        json!({ "cores": cores(), "quick": opts.quick, "icecast": version("icecast2", "-v"),
                "liquidsoap": version("liquidsoap", "--version"), "perf": version("perf", "--version"),
                "tower": env!("CARGO_PKG_VERSION"), "duration_s": started.elapsed().as_secs_f64(),
                "part_duration_s": timing,
                "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) }),
    );
    report.json.insert("notes".into(), json!(report.notes));
    println!("{}", report.markdown());
    println!(
        "CPU: % of one core. Chain: the server and its encoder process (Tower's ffmpeg, Icecast's ffmpeg source; \
         Liquidsoap is one process). calls: system calls (perf stat), per listener-second less the server's \
         own at 0 listeners. Tower ÷ best peer: the lowest of the others (highest for held and bytes). \
         encoder: CPU ms per second of audio (÷ 10: % of one core at real time). locked: from /proc/PID/status; \
         unit: as nobody with the systemd unit's capabilities and limits."
    );
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
