//! Tower under systemd's notify protocol, with the test standing in for
//! systemd: a datagram socket named by `NOTIFY_SOCKET`, and `WATCHDOG_USEC`.
//! READY=1 once the HTTP server listens; WATCHDOG=1 only while the pump
//! ticks (a pump stalled through the test hook stops the pings, so systemd
//! would restart Tower); STOPPING=1 on SIGTERM. Clause: [T1].

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Tower;

/// Messages received on `sock` until `until`, with their arrival times.
fn receive(sock: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    out
}

#[test]
fn ready_then_watchdog_pings_only_while_the_pump_ticks_then_stopping() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    let path = path.to_str().expect("utf8").to_string();
    let mut tower = Tower::start(
        &[],
        &[
            ("TOWER_DEVICE", "tower_test_no_such_device"),
            common::HOOKS,
            ("NOTIFY_SOCKET", &path),
            // Pings every 200 ms.
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let first = receive(&sock, Instant::now() + Duration::from_secs(2));
    let ready = first.iter().position(|(_, m)| m.contains("READY=1")).expect("READY=1");
    assert!(first[ready].1.contains("STATUS=streaming on http://"), "{first:?}");
    let pings = first.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 5, "{pings} pings in 2 s: {first:?}");

    // A listener rides it out [H3].
    let listener = common::Listener::connect(tower.addr);
    assert!(listener.wait_frames(20, Duration::from_secs(5)), "no audio");

    // A hung pump: no pings while it hangs, pings again after.
    let r = common::stall(tower.addr, "pump", 2000);
    assert_eq!(r.status, 200);
    let stalled = Instant::now();
    let during = receive(&sock, stalled + Duration::from_millis(1900));
    let late_pings: Vec<_> = during
        .iter()
        .filter(|(at, m)| m.contains("WATCHDOG=1") && *at > stalled + Duration::from_millis(500))
        .collect();
    assert!(late_pings.is_empty(), "pinged while the pump hung: {late_pings:?}");
    assert!(tower.log_text().contains("withholding watchdog pings"));
    let after = receive(&sock, Instant::now() + Duration::from_secs(2));
    assert!(
        after.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count() >= 3,
        "no pings after the pump came back: {after:?}"
    );
    // Silence filled the hang; the listener is still there and all it got
    // decodes.
    let gap = listener.max_gap_since(stalled - Duration::from_millis(500));
    eprintln!("listener through a 2 s pump hang: largest gap between frames {gap:?}");
    // 150 ms of pacing and scheduling, plus up to 3 frames (72 ms) a
    // default-burst listener's gathered write may hold (as in faults.rs).
    assert!(gap < Duration::from_millis(150 + 72), "{gap:?} without a frame");
    common::faults::assert_intact(&tower, &[&listener]);

    let (status, _) = tower.terminate();
    assert!(status.success());
    let last = receive(&sock, Instant::now() + Duration::from_millis(300));
    assert!(last.iter().any(|(_, m)| m.contains("STOPPING=1")), "{last:?}");
}
