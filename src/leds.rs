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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audio::InputState;
use crate::encoder::state::EncoderState;
use crate::worker::{StopSignal, Worker, WorkerError};

/// How often the LED thread updates the pins.
pub const UPDATE_EVERY: Duration = Duration::from_millis(25);

/// Which LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    Encoder,
    Input,
}

/// What an LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Off,
    On,
    /// On for half of each period, starting on.
    Blink {
        period: Duration,
    },
}

impl Pattern {
    pub const FAST: Pattern = Pattern::Blink {
        period: Duration::from_millis(125),
    };
    pub const MEDIUM: Pattern = Pattern::Blink {
        period: Duration::from_millis(500),
    };
    pub const SLOW: Pattern = Pattern::Blink {
        period: Duration::from_millis(2000),
    };

    /// Whether the LED is lit `elapsed` after the pattern's clock started.
    pub fn level(self, elapsed: Duration) -> bool {
        match self {
            Pattern::Off => false,
            Pattern::On => true,
            Pattern::Blink { period } => {
                let p = period.as_micros().max(1);
                elapsed.as_micros() % p < p / 2
            }
        }
    }
}

pub fn encoder_pattern(state: EncoderState) -> Pattern {
    match state {
        EncoderState::Running => Pattern::On,
        EncoderState::Starting | EncoderState::Restarting => Pattern::MEDIUM,
        EncoderState::Failed => Pattern::FAST,
        EncoderState::Stopped => Pattern::Off,
    }
}

pub fn input_pattern(state: InputState) -> Pattern {
    match state {
        InputState::Live => Pattern::On,
        InputState::Grace => Pattern::SLOW,
        InputState::Fallback => Pattern::Off,
    }
}

/// The LED hardware.
pub trait Leds: Send {
    fn set(&mut self, led: Led, on: bool);
    /// Turns both off and gives the pins back.
    fn release(&mut self) {}
}

/// No LEDs.
pub struct NullLeds;

impl Leds for NullLeds {
    fn set(&mut self, _: Led, _: bool) {}
}

/// Records what was set, for tests.
#[derive(Clone, Default)]
pub struct RecordingLeds(pub Arc<Mutex<Vec<(Led, bool)>>>);

impl Leds for RecordingLeds {
    fn set(&mut self, led: Led, on: bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((led, on));
    }
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
    use super::{Led, LedConfig, Leds};
    use rppal::gpio::{Gpio, OutputPin};

    struct GpioLeds {
        encoder: OutputPin,
        input: OutputPin,
        active_low: bool,
    }

    impl Leds for GpioLeds {
        fn set(&mut self, led: Led, on: bool) {
            let pin = match led {
                Led::Encoder => &mut self.encoder,
                Led::Input => &mut self.input,
            };
            if on != self.active_low {
                pin.set_high();
            } else {
                pin.set_low();
            }
        }

        fn release(&mut self) {
            self.set(Led::Encoder, false);
            self.set(Led::Input, false);
        }
    }

    pub fn open(config: &LedConfig) -> Result<Box<dyn Leds>, String> {
        let gpio = Gpio::new()
            .map_err(|e| format!("no GPIO here ({e}); is this a Raspberry Pi, and is the user in group gpio?"))?;
        let pin = |n: u8| {
            gpio.get(n)
                .map(|p| {
                    let mut out = p.into_output_low();
                    // Pins go back to inputs when Tower stops.
                    out.set_reset_on_drop(true);
                    out
                })
                .map_err(|e| format!("GPIO {n}: {e}"))
        };
        let mut leds = GpioLeds {
            encoder: pin(config.encoder_pin)?,
            input: pin(config.input_pin)?,
            active_low: config.active_low,
        };
        leds.release();
        Ok(Box::new(leds))
    }
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
    fn states_map_to_the_documented_patterns() {
        assert_eq!(encoder_pattern(EncoderState::Running), Pattern::On);
        assert_eq!(encoder_pattern(EncoderState::Starting), Pattern::MEDIUM);
        assert_eq!(encoder_pattern(EncoderState::Restarting), Pattern::MEDIUM);
        assert_eq!(encoder_pattern(EncoderState::Failed), Pattern::FAST);
        assert_eq!(encoder_pattern(EncoderState::Stopped), Pattern::Off);
        assert_eq!(input_pattern(InputState::Live), Pattern::On);
        assert_eq!(input_pattern(InputState::Grace), Pattern::SLOW);
        assert_eq!(input_pattern(InputState::Fallback), Pattern::Off);
    }

    #[test]
    fn blinking_is_on_for_the_first_half_of_each_period() {
        let two_hz = Pattern::MEDIUM;
        let levels: Vec<bool> = [0, 249, 250, 499, 500, 749]
            .iter()
            .map(|&t| two_hz.level(MS(t)))
            .collect();
        assert_eq!(levels, [true, true, false, false, true, true]);
        assert!(Pattern::FAST.level(MS(0)) && !Pattern::FAST.level(MS(70)));
        assert!(!Pattern::SLOW.level(MS(1500)));
        assert!(Pattern::On.level(MS(12_345)) && !Pattern::Off.level(MS(0)));
    }

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
