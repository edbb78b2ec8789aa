//! Status LEDs on GPIO [T3]: one for the encoder, one for the input.
//!
//! | LED     | steady on | 2 Hz blink            | 8 Hz blink | 0.5 Hz blink | off      |
//! |---------|-----------|-----------------------|------------|--------------|----------|
//! | encoder | RUNNING   | STARTING / RESTARTING | FAILED     |              | STOPPED  |
//! | input   | live      |                       |            | grace        | fallback |
//!
//! [`encoder_pattern`] and [`input_pattern`] are the pure mapping and
//! [`Pattern::level`] the pure blinking, with time passed in. The "leds"
//! thread ([`LedDriver`], owned by the service) applies them every 25 ms
//! through the [`Leds`] trait: GPIO through rppal on a Raspberry Pi (Cargo
//! feature `gpio`, built for ARM targets), else [`NullLeds`]. No GPIO (not a
//! Pi, no permission, pins busy) is one warning; the stream never depends
//! on the LEDs.

use std::time::{Duration, Instant};

use crate::audio::InputState;
use crate::encoder::state::EncoderState;
use crate::worker::{StopSignal, Worker, WorkerError};

mod fake;
mod pattern;
#[cfg(all(feature = "gpio", any(target_arch = "aarch64", target_arch = "arm")))]
mod rppal;

pub use fake::{NullLeds, RecordingLeds};
pub use pattern::{Pattern, encoder_pattern, input_pattern};

/// How often the LED thread updates the pins.
pub const UPDATE_EVERY: Duration = Duration::from_millis(25);

/// Which LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    Encoder,
    Input,
}

/// The LED hardware.
pub trait Leds: Send {
    fn set(&mut self, led: Led, on: bool);
    /// Turns both off and gives the pins back.
    fn release(&mut self) {}
}

/// Pins from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct LedConfig {
    pub enabled: bool,
    /// BCM numbers.
    pub encoder_pin: u8,
    pub input_pin: u8,
    /// The LED lights when the pin is low.
    pub active_low: bool,
}

/// The configured LEDs, or [`NullLeds`] with one warning saying why.
pub fn open(config: &LedConfig) -> Box<dyn Leds> {
    if !config.enabled {
        return Box::new(NullLeds);
    }
    match gpio::open(config) {
        Ok(leds) => {
            tracing::info!(
                component = "leds",
                encoder_pin = config.encoder_pin,
                input_pin = config.input_pin,
                "status LEDs on GPIO {} (encoder) and {} (input)",
                config.encoder_pin,
                config.input_pin
            );
            leds
        }
        Err(why) => {
            tracing::warn!(
                component = "leds",
                "status LEDs off: {why}. Streaming is not affected; set gpio.enabled = false to silence this"
            );
            Box::new(NullLeds)
        }
    }
}

#[cfg(all(feature = "gpio", any(target_arch = "aarch64", target_arch = "arm")))]
mod gpio {
    pub use super::rppal::open;
}

#[cfg(not(all(feature = "gpio", any(target_arch = "aarch64", target_arch = "arm"))))]
mod gpio {
    use super::{LedConfig, Leds};

    pub fn open(_: &LedConfig) -> Result<Box<dyn Leds>, String> {
        Err("this build has no GPIO support (it is built with the gpio feature for ARM)".into())
    }
}

/// Applies the patterns; pure but for the [`Leds`] it drives.
pub struct LedDriver {
    leds: Box<dyn Leds>,
    start: Instant,
    shown: [Option<bool>; 2],
}

impl LedDriver {
    pub fn new(leds: Box<dyn Leds>, start: Instant) -> Self {
        LedDriver {
            leds,
            start,
            shown: [None, None],
        }
    }

    /// Sets each LED for the states at `now`; pins are written only when a
    /// level changes.
    pub fn update(&mut self, encoder: EncoderState, input: InputState, now: Instant) {
        let t = now.saturating_duration_since(self.start);
        let wanted = [
            (Led::Encoder, encoder_pattern(encoder).level(t)),
            (Led::Input, input_pattern(input).level(t)),
        ];
        for (i, (led, on)) in wanted.into_iter().enumerate() {
            if self.shown[i] != Some(on) {
                self.leds.set(led, on);
                self.shown[i] = Some(on);
            }
        }
    }

    pub fn release(&mut self) {
        self.leds.release();
    }
}

/// The "leds" thread, reading the states through `read`.
pub fn start(
    leds: Box<dyn Leds>,
    read: impl Fn() -> (EncoderState, InputState) + Send + 'static,
) -> std::io::Result<Worker<()>> {
    Worker::spawn("leds", move |stop: StopSignal| {
        let mut driver = LedDriver::new(leds, Instant::now());
        while !stop.is_stopped() {
            let (encoder, input) = read();
            driver.update(encoder, input, Instant::now());
            stop.sleep(UPDATE_EVERY);
        }
        driver.release();
    })
}

/// Stops the thread (the LEDs go off).
pub fn stop(worker: Worker<()>, timeout: Duration) -> Result<(), WorkerError> {
    worker.stop(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_driver_writes_pins_only_on_changes() {
        let rec = RecordingLeds::default();
        let t0 = Instant::now();
        let mut d = LedDriver::new(Box::new(rec.clone()), t0);
        d.update(EncoderState::Running, InputState::Live, t0);
        d.update(EncoderState::Running, InputState::Live, t0 + MS(25));
        d.update(EncoderState::Failed, InputState::Fallback, t0 + MS(100));
        d.update(EncoderState::Failed, InputState::Fallback, t0 + MS(125));
        let log = rec.0.lock().expect("lock").clone();
        assert_eq!(
            log,
            [
                (Led::Encoder, true),
                (Led::Input, true),
                // FAILED at 100 ms: off (second half of a 125 ms period)...
                (Led::Encoder, false),
                (Led::Input, false),
                // ...on again at 125 ms.
                (Led::Encoder, true),
            ]
        );
    }
}
