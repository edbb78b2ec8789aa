//! Captures 10 s from the configured device (`auto` by default: the card
//! Tower would choose), with the configured `capture.level` set on its
//! mixer; prints the device chosen and why, the gain in force, the level
//! every second and the overrun (xrun) count at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tower::audio::capture::{Capture, CaptureConfig};
use tower::audio::router::AudioInputRouter;
use tower::hooks::TestHooks;

fn main() {
    tower_hw_tests::logging();
    let cfg = tower_hw_tests::config();
    println!("capturing 10 s from {:?}", cfg.device);
    let router = Arc::new(AudioInputRouter::new(100_000));
    let capture = match Capture::start(
        tower::audio::system_capture(&cfg.device),
        tower::audio::mixer::system_mixer(),
        router.clone(),
        CaptureConfig {
            silence_warn: Duration::from_secs(5),
            level: cfg.capture_level(),
        },
        Arc::new(TestHooks::disabled()),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the capture thread: {e}");
            std::process::exit(1);
        }
    };
    let handle = capture.handle();
    std::thread::sleep(Duration::from_millis(500));
    let snap = handle.snapshot();
    println!(
        "device {} ({}{}); level: {}",
        snap.selection.name,
        if snap.selection.auto {
            "chosen automatically: "
        } else {
            ""
        },
        snap.selection.reason,
        snap.gain.applied
    );
    for s in 1..=10 {
        std::thread::sleep(Duration::from_secs(1));
        let l = handle.levels(Instant::now());
        println!(
            "{s:2} s: peak L {:6.1} R {:6.1} dBFS, RMS L {:6.1} R {:6.1} dBFS, frames {}",
            l.levels.peak_dbfs[0],
            l.levels.peak_dbfs[1],
            l.levels.rms_dbfs[0],
            l.levels.rms_dbfs[1],
            router.stats().pushed
        );
    }
    let snap = capture.snapshot();
    let _ = capture.stop(Duration::from_secs(2));
    println!(
        "device state {:?}; frames {} (expected ~417); xruns (overruns) {}; other errors {:?}; failed opens {}",
        snap.state, snap.frames, snap.errors.overrun, snap.errors, snap.open_failures
    );
    let ok = snap.frames >= 400 && snap.errors.overrun == 0;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(i32::from(!ok));
}
