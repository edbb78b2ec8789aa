//! The rppal backend: GPIO registers mapped through `/dev/gpiomem`
//! (Raspberry Pi OS's driver; `/dev/gpiomem0` on a Pi 5). Called on the
//! main thread at start-up ([`open`]) and then only from the "leds" thread.
//! rppal's repository was archived on 2025-07-01: this is the fallback for
//! systems whose GPIO character device does not serve.

use ::rppal::gpio::{Gpio, OutputPin};

use super::{Led, LedConfig, LedStatus, Leds};

/// Each [`Led`]'s pin (when configured), whether it is active low, and
/// its BCM number.
pub struct RppalLeds {
    pins: [Option<(OutputPin, bool, u8)>; 3],
}

impl Leds for RppalLeds {
    fn set(&mut self, led: Led, on: bool) {
        let Some((pin, active_low, _)) = &mut self.pins[led as usize] else {
            return;
        };
        if on != *active_low {
            pin.set_high();
        } else {
            pin.set_low();
        }
    }

    fn release(&mut self) {
        for led in Led::ALL {
            self.set(led, false);
        }
    }

    fn status(&self) -> LedStatus {
        let number = |led: Led| self.pins[led as usize].as_ref().map(|p| u32::from(p.2));
        LedStatus {
            backend: "rppal",
            chip: Some("/dev/gpiomem".into()),
            lines: number(Led::Encoder).zip(number(Led::Input)).map(|(a, b)| [a, b]),
            amp_line: number(Led::Amp),
            off_because: None,
        }
    }
}

/// The configured pins as outputs, off; the error is rppal's, with what to
/// check.
pub fn open(config: &LedConfig) -> Result<Box<dyn Leds>, String> {
    let gpio = Gpio::new().map_err(|e| format!("{e} (is the user in group gpio?)"))?;
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
    let mut leds = RppalLeds {
        pins: [None, None, None],
    };
    for (led, n, _) in config.lines() {
        let active_low = match led {
            Led::Amp => config.amp.as_ref().is_some_and(|a| a.active_low),
            Led::Encoder | Led::Input => config.active_low,
        };
        leds.pins[led as usize] = Some((pin(n)?, active_low, n));
    }
    leds.release();
    Ok(Box::new(leds))
}
