//! Runs the audio pump for 60 s (`--seconds N` to change) with the
//! configured real-time priority; reports whether it got SCHED_FIFO and
//! locked memory, and its tick error.

use std::sync::Arc;
use std::time::Duration;

use tower::audio::PcmFrame;
use tower::audio::router::AudioInputRouter;
use tower::hooks::TestHooks;
use tower::pump::fallback::Fallback;
use tower::pump::{PcmSink, Pump, PumpConfig};

struct Discard;

impl PcmSink for Discard {
    fn write_pcm(&self, _: &PcmFrame) {}
}

fn main() {
    tower_hw_tests::logging();
    let cfg = tower_hw_tests::config();
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let pump = match Pump::start(
        PumpConfig {
            grace: Duration::from_secs(5),
            realtime_priority: cfg.pump.realtime_priority as u8,
            hooks: Arc::new(TestHooks::disabled()),
        },
        Arc::new(AudioInputRouter::new(100)),
        Arc::new(Discard),
        Fallback::tone(),
        &tower::worker::Supervisor::none(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot start the pump: {e}");
            std::process::exit(1);
        }
    };
    println!("running the pump for {seconds} s...");
    std::thread::sleep(Duration::from_secs(seconds));
    let s = pump.stats().snapshot();
    let _ = pump.stop(Duration::from_secs(2));
    let t = s.tick_error;
    println!(
        "SCHED_FIFO: {}; memory locked: {}; ticks {} (expected ~{}); late (>1 ms) {}; resyncs {}",
        s.sched_fifo,
        s.memory_locked,
        s.ticks,
        seconds * 1000 / 24,
        s.late_ticks,
        s.resyncs
    );
    println!(
        "tick error: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        t.p50_us, t.p99_us, t.p999_us, t.max_us
    );
    let ok = s.sched_fifo && t.p99_us <= 1_000;
    println!(
        "{}",
        if ok {
            "PASS"
        } else {
            "FAIL (needs SCHED_FIFO and p99 <= 1 ms)"
        }
    );
    std::process::exit(i32::from(!ok));
}
