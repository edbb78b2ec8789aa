//! Walks the status LEDs through every pattern, 4 s each, saying which.
//! Watch the LEDs: each line tells what they should show. First it says
//! which backend and chip drive them, and fails if none does.

use std::time::{Duration, Instant};

use tower::audio::InputState;
use tower::encoder::state::EncoderState;
use tower::leds::{LedDriver, encoder_pattern, input_pattern};

fn main() {
    tower_hw_tests::logging();
    let cfg = tower_hw_tests::config();
    let leds = tower::leds::open(&cfg.leds());
    let status = leds.status();
    if let Some(why) = &status.off_because {
        eprintln!("FAIL: no LEDs: {why}");
        std::process::exit(1);
    }
    println!(
        "LEDs through {} on {} (lines {:?})",
        status.backend,
        status.chip.as_deref().unwrap_or("?"),
        status.lines.unwrap_or_default()
    );
    let mut driver = LedDriver::new(leds, Instant::now());
    let steps = [
        (EncoderState::Running, InputState::Live),
        (EncoderState::Starting, InputState::Grace),
        (EncoderState::Restarting, InputState::Fallback),
        (EncoderState::Failed, InputState::Live),
        (EncoderState::Stopped, InputState::Grace),
    ];
    for (encoder, input) in steps {
        println!(
            "encoder LED (GPIO {}): {encoder:?} -> {:?}; input LED (GPIO {}): {input:?} -> {:?}",
            cfg.gpio.encoder_pin,
            encoder_pattern(encoder),
            cfg.gpio.input_pin,
            input_pattern(input)
        );
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let next = driver
                .update(encoder, input, Instant::now())
                .map_or(until, |next| next.min(until));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    driver.release();
    println!("done: both LEDs off");
}
