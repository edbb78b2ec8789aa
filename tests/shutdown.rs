//! SIGTERM to exit stays within 2 s [T1] while every Icecast worker is
//! stuck where a blocking call would hold it: a connect that never
//! completes (a port behind a full accept queue), a host name whose DNS
//! lookup hangs (a resolver that never answers, in a mount namespace of
//! Tower's own), a server that accepts and never answers (the answer
//! loop), and one that accepted the source and stopped reading (a write
//! that cannot complete). The figure prints with `--nocapture`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::icecast::is_root;
use common::push::{FakeTarget, HangingDns};
use common::{Tower, wait_for};

/// A host name that exists nowhere: only the hanging resolver is asked.
const HANGING_NAME: &str = "tower-dns-never-answers.example";

#[test]
fn sigterm_exits_within_2_s_with_unreachable_hanging_and_stalled_icecast_targets() {
    if !is_root() {
        eprintln!("skipped: needs root (a DNS server on port 53 and a private /etc/resolv.conf)");
        return;
    }
    let dns = HangingDns::start();
    let unreachable = FakeTarget::full_backlog();
    let silent = FakeTarget::silent();
    let stalled = FakeTarget::accept_then_stall();
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("tower.toml");
    let urls = [
        unreachable.url(),
        format!("http://{HANGING_NAME}:8000/live"),
        silent.url(),
        stalled.url(),
    ];
    let tables: String = urls
        .iter()
        .map(|u| format!("[[icecast]]\nurl = \"{u}\"\npassword = \"p\"\n\n"))
        .collect();
    std::fs::write(&conf, format!("device = \"tower_test_no_such_device\"\n{tables}")).expect("tower.toml");
    let wrapper = HangingDns::wrapper(&dns.resolv_conf());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut tower = Tower::start_wrapped(&wrapper, &["--config", conf.to_str().expect("utf8")], &[]);
    let output = |i: usize| tower.status()["outputs"][i].clone();

    // The stalled target: streaming, and its byte count has stopped (a
    // write is blocked).
    let mut last = (0, Instant::now());
    let blocked = wait_for(Duration::from_secs(60), || {
        let o = output(3);
        let sent = o["bytes_sent"].as_u64().unwrap_or(0);
        if o["state"] != "streaming" || sent != last.0 {
            last = (sent, Instant::now());
        }
        sent > 0 && last.1.elapsed() > Duration::from_secs(1)
    });
    assert!(blocked, "the stalled target never blocked a write: {}", output(3));
    // The others: each at the start of an attempt (connecting, looking
    // up, waiting for an answer), at the same moment. Their attempts run
    // in step (each fails after the same timeout and waits the same
    // backoff), so the silent target's next accept marks the moment.
    let accepted = || silent.accepted.load(Ordering::Relaxed);
    let before = accepted();
    assert!(
        wait_for(Duration::from_secs(60), || accepted() > before),
        "{}",
        tower.status()["outputs"]
    );
    let all_stuck = wait_for(Duration::from_secs(2), || {
        (0..3).all(|i| output(i)["state"] == "connecting")
    });
    assert!(all_stuck, "{}", tower.status()["outputs"]);
    assert!(dns.queries.load(Ordering::Relaxed) > 0, "the resolver was not asked");

    let (status, took) = tower.terminate();
    eprintln!("SIGTERM to exit with 4 stuck Icecast targets: {took:?}");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Every worker stopped and was joined: none was left running.
    let log = tower.log_text();
    let left: Vec<&str> = log.lines().filter(|l| l.contains("did not stop")).collect();
    assert!(left.is_empty(), "{left:#?}");
}
