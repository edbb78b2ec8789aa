//! Live input through real ALSA: alsa-lib's `file` plugin on top of the
//! `jack` plugin, paced by a JACK dummy-backend server, carrying a 1 kHz
//! tone. Stopping the JACK server (SIGSTOP) stops the input the way a hung
//! device would; continuing it brings the input back. Clauses: [A2], [A3],
//! [FB], [H3].

mod common;

use std::time::{Duration, Instant};

use common::{Jack, Listener, Tower, frame_levels, tone_of, wait_for, write_alsa_conf, write_tone_raw};
use nix::sys::signal::Signal;

#[test]
fn live_then_silence_then_fallback_then_live_again_on_one_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("input.raw");
    write_tone_raw(&input, 1000.0, 90.0);
    let conf = write_alsa_conf(dir.path(), &input);
    let jack = Jack::start();
    let tower = Tower::start(
        &["--device", "jackfile"],
        &[
            ("ALSA_CONFIG_PATH", conf.to_str().expect("utf8")),
            ("JACK_DEFAULT_SERVER", &jack.name),
            ("JACK_NO_START_SERVER", "1"),
            ("TOWER_PCM_GRACE_SEC", "1"),
        ],
    );
    let l = Listener::connect(tower.addr);
    let connected = Instant::now();

    // 1. Live: the listener hears the input's 1 kHz.
    assert!(
        l.wait_tone(1000.0, Duration::from_secs(15)),
        "no 1 kHz from the live input\n{}",
        tower.log_text()
    );
    assert_eq!(tower.status()["input"]["state"], "live");
    assert_eq!(tower.status()["input"]["device_state"], "open");

    // 2. The input stops: silence first (the grace period), then 440 Hz.
    let stopped = Instant::now();
    jack.signal(Signal::SIGSTOP);
    assert!(
        l.wait_tone(440.0, Duration::from_secs(10)),
        "no fallback tone after the input stopped"
    );
    let fallback_at = Instant::now();
    let during = l.frames_since(stopped);
    let levels = frame_levels(&during);
    let silent = levels.iter().filter(|&&db| db < -80.0).count();
    // About 1 s of grace silence (42 frames); allow for pipeline edges.
    assert!(
        silent >= 30,
        "only {silent} silent frames between live input and fallback"
    );
    let took = fallback_at.saturating_duration_since(stopped);
    assert!(took >= Duration::from_millis(900), "fallback after only {took:?}");
    assert_eq!(tower.status()["input"]["state"], "fallback");

    // 3. The input comes back: 1 kHz again.
    let resumed = Instant::now();
    jack.signal(Signal::SIGCONT);
    assert!(
        l.wait_tone(1000.0, Duration::from_secs(10)),
        "live input did not come back\n{}",
        tower.log_text()
    );
    eprintln!(
        "live audio back at the listener {:?} after the input resumed",
        resumed.elapsed()
    );
    assert!(wait_for(Duration::from_secs(5), || tower.status()["input"]["state"] == "live"));

    // One unbroken connection, fed all along.
    assert!(l.ended().is_none(), "the listener was disconnected");
    let gap = l.max_gap_since(connected + Duration::from_secs(1));
    assert!(gap < Duration::from_millis(200), "{gap:?} without data");
    // And it stays live: the next second is all 1 kHz.
    let since = Instant::now();
    assert!(l.wait_frames(42, Duration::from_secs(5)));
    let after = l.frames_since(since);
    assert!(tone_of(&after, 1000.0) > 0.9, "live audio did not last");
}
