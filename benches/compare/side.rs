//! Part `side`: Tower and Icecast serving N listeners each at the same
//! time, their chains' CPU measured over the same windows (issue 22).
//!
//! The held part measures each server in a window of its own, one after
//! another, and on a shared machine two runs of the same build differ by
//! up to a third at 5 listeners: whatever else the host does in one
//! window and not in the next lands on one server only. Here both chains
//! run side by side, fed alike (Tower its fallback tone, Icecast's ffmpeg
//! source the same tone from this process), each with its own load
//! generator, and every window is measured on both at once, so what the
//! host does lands on both. CPU comes from each thread's
//! `/proc/…/schedstat` (run time in ns), not from `stat`'s 10 ms ticks,
//! so that short windows still count: a 1 % chain is 10 ticks in a second.
//! The window is cut into [`ROUNDS`] parts, each giving its own ratio: the
//! spread of those says how far one figure can be trusted.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::peers::{self, Peer, Running};
use crate::report::Report;
use crate::servers::StockConfig;
use crate::{LOAD_THREADS, Options, loadgen, support};

/// Parts of the window, each measured on both chains.
const ROUNDS: usize = 3;
/// Descriptors this process keeps for itself besides the listeners'.
const SPARE_FDS: u64 = 256;

/// Run time (ns) of every thread of `pid`, from `/proc/PID/task/*/schedstat`.
fn runtime_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks.flatten().map(|t| schedstat_ns(&t.path().join("schedstat"))).sum()
}

/// The first field of a `schedstat` file: time spent running, in ns.
fn schedstat_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What one chain used in one window (% of one core).
#[derive(Debug, Clone, Copy)]
struct Use {
    chain: f64,
    /// The server's own process alone.
    server: f64,
    /// The bench's thread playing the PCM into the chain (Icecast's).
    input: f64,
}

/// Run time so far of a chain's processes, of its server alone, and of
/// its input thread.
fn sample(server: &Running) -> (u64, u64, u64) {
    let own = runtime_ns(server.pid());
    let chain = own + server.encoder().map_or(0, runtime_ns);
    let input = server.input_thread().map_or(0, |tid| {
        schedstat_ns(std::path::Path::new(&format!("/proc/self/task/{tid}/schedstat")))
    });
    (chain, own, input)
}

fn percent(ns: u64, over: Duration) -> f64 {
    ns as f64 / over.as_nanos() as f64 * 100.0
}

/// One listener count, both chains at once.
struct Side {
    n: usize,
    /// Per round: (Tower, Icecast).
    rounds: Vec<(Use, Use)>,
    /// Listeners that lasted the window: (Tower, Icecast).
    held: (usize, usize),
}

impl Side {
    fn total(&self, of: impl Fn(&(Use, Use)) -> (f64, f64)) -> (f64, f64) {
        let (t, i) = self
            .rounds
            .iter()
            .map(of)
            .fold((0.0, 0.0), |(a, b), (t, i)| (a + t, b + i));
        let k = self.rounds.len().max(1) as f64;
        (t / k, i / k)
    }

    /// Tower ÷ Icecast in each round, lowest first.
    fn ratios(&self, of: impl Fn(&(Use, Use)) -> (f64, f64)) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .rounds
            .iter()
            .map(|x| {
                let (t, i) = of(x);
                t / i
            })
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }

    fn to_json(&self) -> Value {
        let round = |u: &Use| {
            json!({ "chain_cpu_pct_of_one_core": u.chain, "server_cpu_pct_of_one_core": u.server,
                                  "input_cpu_pct_of_one_core": u.input })
        };
        json!({
            "n": self.n,
            "held": { "tower": self.held.0, "icecast": self.held.1 },
            "rounds": self.rounds.iter().map(|(t, i)| json!({ "tower": round(t), "icecast": round(i) })).collect::<Vec<_>>(),
        })
    }
}

/// Holds `n` listeners on Tower and on Icecast at once and measures both
/// chains in [`ROUNDS`] windows of `window / ROUNDS`.
fn measure(stock: &Arc<StockConfig>, n: usize, window: Duration) -> Side {
    let servers = [
        peers::start(Peer::Tower, stock, n, support::tone_raw()),
        peers::start(Peer::Icecast, stock, n, support::tone_raw()),
    ];
    let settle_limit = Duration::from_secs(60);
    let retry_until = Instant::now() + settle_limit;
    let deadline = retry_until + window + Duration::from_secs(20);
    let loads = servers.each_ref().map(|s| {
        loadgen::Load::start(s.addr(), s.path(), n, LOAD_THREADS, (retry_until, deadline)).expect("load generator")
    });
    for load in &loads {
        load.wait_settled(settle_limit);
    }
    thread::sleep(Duration::from_millis(500));
    for load in &loads {
        load.begin_window();
    }
    let part = window / ROUNDS as u32;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let before = servers.each_ref().map(sample);
        let t0 = Instant::now();
        thread::sleep(part);
        let after = servers.each_ref().map(sample);
        let elapsed = t0.elapsed();
        let used = |k: usize| Use {
            chain: percent(after[k].0.saturating_sub(before[k].0), elapsed),
            server: percent(after[k].1.saturating_sub(before[k].1), elapsed),
            input: percent(after[k].2.saturating_sub(before[k].2), elapsed),
        };
        rounds.push((used(0), used(1)));
    }
    for load in &loads {
        load.end_window();
    }
    let [t, i] = loads.map(|l| l.finish().iter().filter(|o| o.admitted() && !o.dropped()).count());
    Side {
        n,
        rounds,
        held: (t, i),
    }
}

/// The part: at each listener count, both chains side by side.
pub fn side_by_side(report: &mut Report, stock: &Arc<StockConfig>, opts: &Options) {
    let window = opts.window();
    let nofile = crate::raise_fd_limit();
    let mut all = Vec::new();
    for n in opts.listener_counts() {
        // Both servers' listeners are this process's sockets.
        if 2 * n as u64 + SPARE_FDS > nofile {
            report.notes.push(format!(
                "side by side, {n} listeners: skipped, {} sockets would pass this process's open-file limit ({nofile})",
                2 * n
            ));
            continue;
        }
        let side = measure(stock, n, window);
        let chain = |(t, i): &(Use, Use)| (t.chain, i.chain);
        let with_input = |(t, i): &(Use, Use)| (t.chain + t.input, i.chain + i.input);
        let (tc, ic) = side.total(chain);
        let (tw, iw) = side.total(with_input);
        let (ts, is) = side.total(|(t, i)| (t.server, i.server));
        eprintln!(
            "side by side, {n} listeners: Tower chain {tc:.2} % (its own process {ts:.2} %), Icecast + source \
             {ic:.2} % (Icecast {is:.2} %; {iw:.2} % with its input); held {} and {}",
            side.held.0, side.held.1
        );
        if side.held != (n, n) {
            report.notes.push(format!(
                "side by side, {n} listeners: Tower held {}, Icecast {} (CPU figures are for fewer listeners)",
                side.held.0, side.held.1
            ));
        }
        // Issue 22: 0.9 × Icecast's up to 1 000 listeners, ahead beyond.
        let target = if n <= 1000 { 0.9 } else { 1.0 };
        let secs = window.as_secs_f64() / ROUNDS as f64;
        report.row(
            format!("N={n} side by side: CPU chain"),
            " %",
            [Some(tc), Some(ic), None],
        );
        report.target_ratio(target);
        report.row(
            format!("N={n} side by side: CPU server"),
            " %",
            [Some(ts), Some(is), None],
        );
        report.row(
            format!("N={n} side by side: CPU chain with its input"),
            " %",
            [Some(tw), Some(iw), None],
        );
        report.target_ratio(target);
        for (what, ratios) in [
            ("chain", side.ratios(chain)),
            ("with its input", side.ratios(with_input)),
        ] {
            let (lo, hi) = (ratios.first().copied(), ratios.last().copied());
            report.tower_row(
                format!("N={n} side by side: Tower ÷ Icecast, {what}, lowest of {ROUNDS} × {secs:.0} s"),
                "",
                lo.unwrap_or(f64::NAN),
            );
            report.tower_row(
                format!("N={n} side by side: Tower ÷ Icecast, {what}, highest of {ROUNDS} × {secs:.0} s"),
                "",
                hi.unwrap_or(f64::NAN),
            );
        }
        all.push(side.to_json());
    }
    report.json.insert("side_by_side".into(), Value::Array(all));
}
