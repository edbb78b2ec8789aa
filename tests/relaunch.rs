//! A new encoder command while listeners listen (`EncoderManager::relaunch`,
//! what the owner's bitrate setting calls): real ffmpeg at 128 kbit/s, then
//! 192, with a listener connected to a real Tower service in this process.
//! The listener stays connected, hears at most 0.5 s of silence, and the
//! frames after the change decode and carry the new bitrate; silence
//! inserted later (the new ffmpeg killed) matches the new bitrate too.

mod common;

use std::time::{Duration, Instant};

use common::faults::{bitrate, bitrate_switch, is_silence, signal};
use common::{Arrival, Listener, tone_of, wait_for};
use nix::sys::signal::Signal;
use tower::config::{self, Overrides};
use tower::encoder::EncoderState;
use tower::encoder::command::default_command;
use tower::encoder::process::FfmpegLauncher;
use tower::service::{Backends, Service};

#[test]
fn a_relaunch_at_192_kbps_keeps_the_listener_with_at_most_half_a_second_of_silence() {
    let env: Vec<(String, String)> = [
        ("TOWER_PCM_GRACE_SEC", "0.2"),
        ("TOWER_PUMP_REALTIME_PRIORITY", "0"),
        ("TOWER_GPIO_ENABLED", "false"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let flags = Overrides {
        listen: Some("127.0.0.1:0".into()),
        device: Some("tower_test_no_such_device".into()),
        ffmpeg: None,
    };
    let cfg = config::load(None, &env, &flags).expect("config").config;
    let (backends, _) = Backends::real(&cfg).expect("backends");
    let service = Service::start(&cfg, backends, None).expect("service");
    let listener = Listener::connect(service.local_addr());
    assert!(
        listener.wait_tone(440.0, Duration::from_secs(10)),
        "no tone at 128 kbit/s"
    );
    let pid_before = service.encoder().snapshot().supervisor.pid;

    let asked = Instant::now();
    service.encoder().relaunch(
        Box::new(FfmpegLauncher::new(default_command("ffmpeg", 192))),
        "bitrate 128 -> 192 kbit/s",
    );
    let running = wait_for(Duration::from_secs(10), || {
        let s = service.encoder().snapshot().supervisor;
        s.state == EncoderState::Running && s.pid != pid_before
    });
    assert!(running, "{:?}", service.encoder().snapshot().supervisor.history);
    let running_after = asked.elapsed();
    assert!(listener.wait_frames(80, Duration::from_secs(10)), "the stream stopped");

    // The gap: from the last real frame at 128 to the first at 192, in
    // stream time (what the listener hears) and in arrival time.
    let frames: Vec<Arrival> = listener.frames();
    let (last_old, first_new) = bitrate_switch(&frames, 128, 192);
    let between = &frames[last_old + 1..first_new];
    assert!(
        between.iter().all(|a| is_silence(&a.frame)),
        "only silence fills the gap"
    );
    let silence = Duration::from_millis(24) * between.len() as u32;
    assert!(silence <= Duration::from_millis(500), "{silence:?} of silence");
    let gap = frames[last_old..=first_new]
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    assert!(gap <= Duration::from_millis(200), "frames stopped for {gap:?}");
    // Everything after the change is at 192 and decodes to the tone.
    let after = &frames[first_new..];
    assert!(after.iter().all(|a| bitrate(&a.frame) == 192));
    let tone = tone_of(&after[..after.len().min(60)], 440.0);
    assert!(tone > 0.9, "tone ratio {tone} after the change");
    let s = service.encoder().snapshot().supervisor;
    assert_eq!((s.restarts, s.consecutive_failures), (0, 0), "{s:?}");
    assert!(s.failures.values().all(|n| *n == 0), "{:?}", s.failures);
    assert!(s.command.contains("192k"), "{}", s.command);
    let relaunched = s
        .history
        .iter()
        .filter(|t| t.reason.contains("relaunch: bitrate 128 -> 192"))
        .count();
    assert_eq!(
        relaunched, 2,
        "RESTARTING and STARTING give the reason: {:?}",
        s.history
    );
    eprintln!(
        "relaunch: {} silence frames ({silence:?}), largest arrival gap {gap:?}, RUNNING again {running_after:?} after asking",
        between.len()
    );

    // Silence inserted from now on is at the new bitrate.
    let kill_at = Instant::now();
    signal(s.pid.expect("pid") as i32, Signal::SIGKILL);
    assert!(listener.wait_frames(40, Duration::from_secs(10)));
    let inserted: Vec<Arrival> = listener
        .frames_since(kill_at)
        .into_iter()
        .filter(|a| is_silence(&a.frame))
        .collect();
    assert!(!inserted.is_empty(), "no silence after the kill");
    assert!(
        inserted
            .iter()
            .all(|a| bitrate(&a.frame) == 192 && a.frame.len() == 576)
    );
    assert!(listener.ended().is_none(), "the listener was disconnected");
    assert!(service.stop().is_empty());
}
