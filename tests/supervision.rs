//! Supervision: a worker thread that dies is noticed by the service. The
//! test hook `POST /test/panic?worker=` makes one panic in a running Tower.
//! Capture, the HTTP front end, the LEDs and each Icecast output are
//! restarted in place with listeners connected; the pump and the broadcast
//! loop cannot be, so Tower says so in /health and exits non-zero for
//! systemd to restart it.

mod common;

use std::time::{Duration, Instant};

use common::{HOOKS, Listener, Tower, panic_worker, rig, tone_of, wait_for};

fn worker(tower: &Tower, name: &str) -> serde_json::Value {
    tower.status()["workers"][name].clone()
}

#[test]
fn after_a_capture_panic_live_input_is_heard_again_on_the_same_connection_within_2_s() {
    let r = rig(&[HOOKS]);
    let l = Listener::connect(r.tower.addr);
    assert!(l.wait_tone(1000.0, Duration::from_secs(15)), "no live input at first");
    let opens_before = r.tower.status()["input"]["capture"]["opens"].as_u64().expect("opens");
    let asked = Instant::now();
    assert_eq!(panic_worker(r.tower.addr, "capture").status, 200);
    assert!(
        wait_for(Duration::from_secs(2), || worker(&r.tower, "capture")["restarts"] == 1),
        "capture not restarted: {}",
        r.tower.status()["workers"]
    );
    let restarted = asked.elapsed();
    // Live again: the device was opened anew and its tone reaches the
    // listener that never left.
    assert!(wait_for(Duration::from_secs(2), || {
        r.tower.status()["input"]["capture"]["opens"].as_u64().unwrap_or(0) > opens_before
    }));
    let reopened = Instant::now();
    // The first four frames in a row that carry the tone, after the
    // re-open (frames encoded before it still carry the gap's silence).
    let mut live = None;
    assert!(
        wait_for(Duration::from_secs(3), || {
            live = l
                .frames_since(reopened)
                .windows(4)
                .find(|w| tone_of(w, 1000.0) > 0.9)
                .map(|w| w[3].at);
            live.is_some()
        }),
        "not live after the restart\n{}",
        r.tower.log_text()
    );
    let live_at = live.map_or(Duration::MAX, |at| at.saturating_duration_since(asked));
    assert!(
        live_at <= Duration::from_secs(2),
        "live again {live_at:?} after the panic"
    );
    eprintln!("capture panic: restarted after {restarted:?}, live input at the listener after {live_at:?}");
    assert!(l.ended().is_none(), "the listener was disconnected");
    let w = worker(&r.tower, "capture");
    assert_eq!(w["ends"], 1);
    assert!(
        w["last_end"]
            .as_str()
            .unwrap_or("")
            .contains("test hook: capture made to panic"),
        "{w}"
    );
    assert_eq!(r.tower.get("/health").status, 200);
    let log = r.tower.log_text();
    assert!(log.contains("thread capture panicked"), "{log}");
    assert!(log.contains("worker capture restarted"), "{log}");
}

#[test]
fn a_pump_panic_makes_tower_exit_non_zero_within_2_s() {
    let mut tower = Tower::start(&[], &[HOOKS, ("TOWER_DEVICE", "tower_test_no_such_device")]);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(5, Duration::from_secs(10)));
    let asked = Instant::now();
    assert_eq!(panic_worker(tower.addr, "pump").status, 200);
    let status = tower.wait_exit(Duration::from_secs(5)).expect("tower must exit");
    let took = asked.elapsed();
    eprintln!("pump panic: tower exited with {status} after {took:?}");
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(took <= Duration::from_secs(2), "exited {took:?} after the panic");
    let log = tower.log_text();
    assert!(log.contains("the audio pump died"), "{log}");
    assert!(log.contains("exiting so that systemd restarts Tower"), "{log}");
}

#[test]
fn a_broadcast_loop_panic_makes_tower_exit_non_zero_within_2_s() {
    let mut tower = Tower::start(&[], &[HOOKS, ("TOWER_DEVICE", "tower_test_no_such_device")]);
    assert_eq!(tower.get("/health").status, 200);
    let asked = Instant::now();
    assert_eq!(panic_worker(tower.addr, "broadcast").status, 200);
    let status = tower.wait_exit(Duration::from_secs(5)).expect("tower must exit");
    let took = asked.elapsed();
    eprintln!("broadcast panic: tower exited with {status} after {took:?}");
    assert_eq!(status.code(), Some(1));
    assert!(took <= Duration::from_secs(2), "exited {took:?} after the panic");
    assert!(tower.log_text().contains("the broadcast loop died"));
}

#[test]
fn http_and_led_panics_are_restarted_in_place_and_listeners_keep_playing() {
    let tower = Tower::start(&[], &[HOOKS, ("TOWER_DEVICE", "tower_test_no_such_device")]);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(5, Duration::from_secs(10)));
    for name in ["http", "leds"] {
        let asked = Instant::now();
        assert_eq!(panic_worker(tower.addr, name).status, 200, "{name}");
        // The HTTP front end is down for a moment: retry until it answers.
        assert!(
            wait_for(Duration::from_secs(3), || {
                let r = common::http_get(tower.addr, "/status");
                r.status == 200
                    && serde_json::from_slice::<serde_json::Value>(&r.body)
                        .is_ok_and(|s| s["workers"][name]["restarts"] == 1)
            }),
            "{name} not restarted\n{}",
            tower.log_text()
        );
        eprintln!("{name} panic: restarted and answering after {:?}", asked.elapsed());
    }
    let since = Instant::now();
    assert!(l.wait_frames(l.frame_count() + 20, Duration::from_secs(5)));
    assert!(l.frames_since(since).len() >= 20, "the listener stopped receiving");
    assert!(l.ended().is_none(), "the listener was disconnected");
    assert_eq!(tower.get("/health").status, 200);
    let metrics = tower.get("/metrics").body_text();
    assert!(
        metrics.contains("tower_worker_restarts_total{worker=\"http\"} 1"),
        "{metrics}"
    );
}

#[test]
fn an_icecast_output_that_panics_is_restarted_and_keeps_its_counters() {
    let dir = tempfile::tempdir().expect("tmp");
    let tower = common::tower_with_unreachable_icecast(dir.path());
    assert!(wait_for(Duration::from_secs(5), || {
        tower.status()["outputs"][0]["reconnects"].as_u64().unwrap_or(0) >= 1
    }));
    assert_eq!(panic_worker(tower.addr, "icecast").status, 200);
    assert!(
        wait_for(Duration::from_secs(10), || worker(&tower, "icecast-0")["restarts"] == 1),
        "{}",
        tower.log_text()
    );
    assert!(wait_for(Duration::from_secs(10), || {
        tower.status()["outputs"][0]["reconnects"].as_u64().unwrap_or(0) >= 2
    }));
}

#[test]
fn the_panic_hook_needs_the_token_and_a_known_worker() {
    let tower = Tower::start(&[], &[HOOKS, ("TOWER_DEVICE", "tower_test_no_such_device")]);
    let r = common::http_raw(
        tower.addr,
        "POST /test/panic?worker=pump HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(panic_worker(tower.addr, "encoder").status, 400);
    let plain = Tower::start(&[], &[("TOWER_DEVICE", "tower_test_no_such_device")]);
    assert_eq!(panic_worker(plain.addr, "pump").status, 404);
    assert_eq!(tower.get("/health").status, 200);
}
