//! Capture that never gives up, through real ALSA: the JACK dummy backend
//! behind alsa-lib's `jack` and `file` plugins stands in for a sound card
//! that can vanish (the server killed) and come back (started again under
//! the same name), and test hooks stall Tower's capture thread long enough
//! for a real overrun. Clauses: [A2], [A3], [H3], [R6].

mod common;

use std::time::{Duration, Instant};

use common::{Arrival, Listener, Tower, rig, rig_with_input, tone_of, wait_for};

/// When `freq` was first heard among `frames`: the arrival of the last of
/// the first four consecutive frames that carry it (a frame decoded alone
/// is blurred by the decoder's overlap, so four are judged together).
fn first_tone_at(frames: &[Arrival], freq: f64) -> Option<Instant> {
    frames.windows(4).find(|w| tone_of(w, freq) > 0.9).map(|w| w[3].at)
}

#[test]
fn killing_the_device_five_times_keeps_the_listener_and_live_audio_returns_within_2_s() {
    let mut r = rig(&[]);
    let l = Listener::connect(r.tower.addr);
    let connected = Instant::now();
    assert!(
        l.wait_tone(1000.0, Duration::from_secs(15)),
        "no live input at first\n{}",
        r.tower.log_text()
    );
    let mut returns = Vec::new();
    for round in 1..=5 {
        // The device vanishes: silence, then the fallback, same connection.
        r.jack.kill();
        assert!(
            l.wait_tone(440.0, Duration::from_secs(10)),
            "round {round}: no fallback after the device vanished\n{}",
            r.tower.log_text()
        );
        assert_eq!(r.tower.status()["input"]["state"], "fallback");
        // It comes back: live within 2 s.
        r.jack.spawn();
        let back = Instant::now();
        assert!(
            l.wait_tone(1000.0, Duration::from_secs(10)),
            "round {round}: live input did not come back\n{}",
            r.tower.log_text()
        );
        let first = first_tone_at(&l.frames_since(back), 1000.0).expect("a live frame");
        let took = first.saturating_duration_since(back);
        returns.push(took);
        assert!(took <= Duration::from_secs(2), "round {round}: live after {took:?}");
    }
    eprintln!("live audio back at the listener after the device returned: {returns:?}");
    assert!(l.ended().is_none(), "the listener was disconnected");
    // Fed all along: no pause a player's buffer would notice.
    let gap = l.max_gap_since(connected + Duration::from_secs(1));
    assert!(gap < Duration::from_millis(300), "{gap:?} without data");
    let s = r.tower.status();
    let capture = &s["input"]["capture"];
    assert!(capture["opens"].as_u64().expect("opens") >= 6, "{capture}");
    assert!(capture["errors"]["stalled"].as_u64().expect("n") >= 5, "{capture}");
    assert_eq!(s["listeners"]["disconnected"], 0, "{s}");
    // Not dropped as slow either, and all it got decodes [H3].
    common::faults::assert_intact(&r.tower, &[&l]);
    // One line when the device went, one when it came back: not one per try.
    let log = r.tower.log_text();
    let failed = log.matches("capture device \"jackfile\" failed").count();
    let back = log.matches("capture device back after").count();
    assert_eq!((failed, back), (5, 5), "{log}");
}

#[test]
fn a_capture_stall_overruns_and_is_recovered_counted_and_heard_through() {
    let r = rig(&[common::HOOKS]);
    let tower = &r.tower;
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    // The ALSA buffer holds 8 periods (192 ms): 600 ms without reading
    // overruns it.
    let resp = common::stall(tower.addr, "capture", 600);
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert!(
        wait_for(Duration::from_secs(5), || {
            tower.status()["input"]["capture"]["errors"]["overrun"].as_u64() >= Some(1)
        }),
        "no overrun counted\n{}",
        tower.status()
    );
    let s = tower.status();
    assert_eq!(
        s["input"]["capture"]["opens"], 1,
        "recovered in place, not re-opened: {s}"
    );
    assert_eq!(
        s["counters"]["drops"]["capture_overruns"],
        s["input"]["capture"]["errors"]["overrun"]
    );
    // Audio goes on.
    let since = Instant::now();
    assert!(l.wait_frames(60, Duration::from_secs(5)));
    assert!(
        l.wait_tone(1000.0, Duration::from_secs(5)),
        "no live audio after the overrun"
    );
    assert!(tone_of(&l.frames_since(since + Duration::from_millis(500)), 1000.0) > 0.8);
    assert!(l.ended().is_none());
    assert!(tower.log_text().contains("audio was lost; recovered"));
}

#[test]
fn the_input_level_shows_in_status_and_a_live_silent_input_is_reported_not_replaced() {
    // A 1 kHz tone at half scale: -6 dBFS peak, -9 dBFS RMS.
    let r = rig(&[]);
    let tower = &r.tower;
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    let level = tower.status()["input"]["level"].clone();
    for ch in 0..2 {
        let peak = level["peak_dbfs"][ch].as_f64().expect("peak");
        let rms = level["rms_dbfs"][ch].as_f64().expect("rms");
        assert!((peak - -6.0).abs() < 0.5, "{level}");
        assert!((rms - -9.0).abs() < 0.5, "{level}");
    }
    drop(l);
    drop(r);

    // Digital silence on a live input: reported, still live, no fallback.
    let r = rig_with_input(0.0, &[("TOWER_PCM_SILENCE_WARN_SEC", "1")]);
    let tower = &r.tower;
    let l = Listener::connect(tower.addr);
    assert!(
        wait_for(Duration::from_secs(15), || tower
            .log_text()
            .contains("the input carries only digital silence")),
        "silence not reported\n{}",
        tower.log_text()
    );
    let s = tower.status();
    assert_eq!(s["input"]["state"], "live", "{s}");
    assert!(s["input"]["level"]["silent_for_s"].as_f64().expect("s") >= 1.0, "{s}");
    assert_eq!(s["input"]["level"]["peak_dbfs"][0], -120.0, "{s}");
    assert_eq!(s["pump"]["frames_fallback"], 0, "{s}");
    assert!(l.wait_frames(20, Duration::from_secs(5)));
    assert!(tone_of(&l.frames_since(Instant::now() - Duration::from_millis(400)), 440.0) < 0.1);
}

#[test]
fn a_device_that_does_not_exist_is_named_with_the_fix_and_the_fallback_plays() {
    let tower = Tower::start(
        &["--device", "plughw:CARD=NoSuchCard,DEV=0"],
        &[("TOWER_PCM_GRACE_SEC", "0.2")],
    );
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no fallback");
    let log = tower.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("cannot open capture device"))
        .expect("a log line about the device");
    assert!(line.contains("plughw:CARD=NoSuchCard,DEV=0"), "{line}");
    assert!(line.contains("tower devices"), "{line}");
    // Retried for ever, said once.
    assert!(wait_for(Duration::from_secs(5), || {
        tower.status()["input"]["capture"]["open_failures"].as_u64() >= Some(3)
    }));
    assert_eq!(tower.log_text().matches("cannot open capture device").count(), 1);
}

#[test]
fn tower_devices_lists_capture_pcms_with_the_name_to_configure() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("alsa.conf");
    std::fs::write(
        &conf,
        "</usr/share/alsa/alsa.conf>\n\
         pcm.towermixer { type null hint { show on description \"Tower test mixer input\" } }\n",
    )
    .expect("conf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tower"))
        .arg("devices")
        .env("ALSA_CONFIG_PATH", &conf)
        .env("TOWER_DEVICE", "towermixer")
        .output()
        .expect("run tower devices");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"towermixer\"\n      Tower test mixer input"), "{text}");
    assert!(text.contains("Configured now: \"towermixer\""), "{text}");
    assert!(text.contains("\"default\""), "{text}");
}

#[test]
fn with_device_auto_and_no_sound_card_tower_says_why_and_streams_the_fallback() {
    // This machine has no sound card: what a Pi shows with only HDMI.
    let tower = Tower::start(&[], &[("TOWER_PCM_GRACE_SEC", "0.5")]);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "{}", tower.log_text());
    let s = tower.status();
    let device = &s["input"]["device"];
    assert_eq!(device["name"], "auto", "{s}");
    assert_eq!(device["auto"], true, "{s}");
    assert_eq!(s["input"]["device_state"], "unavailable");
    let log = tower.log_text();
    assert!(
        log.contains("cannot open capture device \"auto\": no sound card with a capture device"),
        "{log}"
    );
    // It keeps looking (about once a second), and says so once.
    assert!(wait_for(Duration::from_secs(5), || {
        tower.status()["input"]["capture"]["open_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    }));
    assert_eq!(
        tower.log_text().matches("no sound card with a capture device").count(),
        1
    );
    let metrics = tower.get("/metrics").body_text();
    assert!(
        metrics.contains("tower_input_device_info{device=\"auto\",auto=\"true\",reason=\"no sound card with a capture device; plug in a USB sound card\"} 1"),
        "{metrics}"
    );
}

#[test]
fn capture_level_on_a_device_without_a_mixer_is_a_software_gain_the_listener_hears() {
    // jackfile is an ALSA plugin chain with no card behind it: the level
    // becomes a software gain. The tone is written at 0.5 of full scale
    // (-6 dBFS peak, -9 dBFS RMS).
    let r = rig(&[("TOWER_CAPTURE_LEVEL", "-12dB")]);
    let l = Listener::connect(r.tower.addr);
    assert!(l.wait_tone(1000.0, Duration::from_secs(15)), "{}", r.tower.log_text());
    let s = r.tower.status();
    let gain = &s["input"]["gain"];
    assert_eq!(gain["configured"], "-12.0 dB", "{s}");
    assert_eq!(gain["software_db"], -12.0, "{s}");
    let applied = gain["applied"].as_str().unwrap_or_default();
    assert!(applied.contains("\"jackfile\" names no sound card"), "{applied}");
    let peak = s["input"]["level"]["peak_dbfs"][0].as_f64().expect("peak");
    assert!((peak - -18.0).abs() < 1.0, "metered peak {peak} dBFS, want about -18");
    // What the listener decodes is 12 dB down too.
    let since = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || l.frames_since(since).len() >= 40));
    let levels = common::frame_levels(&l.frames_since(since));
    let mut rms: Vec<f64> = levels.into_iter().skip(2).collect();
    rms.sort_by(f64::total_cmp);
    let median = rms[rms.len() / 2];
    eprintln!("capture.level -12dB: metered peak {peak:.1} dBFS, listener RMS median {median:.1} dBFS");
    assert!(
        (median - -21.0).abs() < 1.5,
        "listener RMS {median} dBFS, want about -21"
    );
    assert_eq!(s["input"]["clipped_samples"], 0);
}
