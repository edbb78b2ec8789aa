//! The rppal backend: GPIO registers mapped through `/dev/gpiomem`
//! (Raspberry Pi OS's driver; `/dev/gpiomem0` on a Pi 5). Called on the
//! main thread at start-up ([`open`]) and then only from the "leds" thread.
//! rppal's repository was archived on 2025-07-01: this is the fallback for
//! systems whose GPIO character device does not serve.

use ::rppal::gpio::{Gpio, OutputPin};

use super::{Led, LedConfig, LedStatus, Leds};

pub struct RppalLeds {
    encoder: OutputPin,
    input: OutputPin,
    active_low: bool,
    pins: [u32; 2],
}

impl Leds for RppalLeds {
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

    fn status(&self) -> LedStatus {
        LedStatus {
            backend: "rppal",
            chip: Some("/dev/gpiomem".into()),
            lines: Some(self.pins),
            off_because: None,
        }
    }
}

/// Both pins as outputs, off; the error is rppal's, with what to check.
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
        encoder: pin(config.encoder_pin)?,
        input: pin(config.input_pin)?,
        active_low: config.active_low,
        pins: [config.encoder_pin.into(), config.input_pin.into()],
    };
    leds.release();
    Ok(Box::new(leds))
}
