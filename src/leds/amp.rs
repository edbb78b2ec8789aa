//! The amplifier line [D4]: a GPIO output on while program plays, off
//! `gpio.amp_off_delay_s` after it ends, so the speakers are not left on
//! for hours of silence and do not click off between two tracks.
//!
//! [`AmpSwitch`] is pure (time passed in); the "leds" thread runs it with
//! the LEDs (same backend, same request) and publishes what it did on an
//! [`AmpBoard`] for `/status`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The amplifier line's settings (`gpio.amp_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmpConfig {
    /// BCM number.
    pub pin: u8,
    /// The amplifier is on when the pin is low.
    pub active_low: bool,
    /// How long after program ends it goes off.
    pub off_delay: Duration,
}

/// On with program; off a delay after it ends.
#[derive(Debug, Clone)]
pub struct AmpSwitch {
    off_delay: Duration,
    on: bool,
    quiet_since: Option<Instant>,
}

impl AmpSwitch {
    pub fn new(off_delay: Duration) -> AmpSwitch {
        AmpSwitch {
            off_delay,
            on: false,
            quiet_since: None,
        }
    }

    /// Whether the amplifier is on at `now`, program playing or not.
    pub fn update(&mut self, program: bool, now: Instant) -> bool {
        if program {
            self.on = true;
            self.quiet_since = None;
        } else if self.on {
            let since = *self.quiet_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.off_delay {
                self.on = false;
                self.quiet_since = None;
            }
        }
        self.on
    }

    /// When it goes off, if it is on and program has ended.
    pub fn off_at(&self) -> Option<Instant> {
        self.quiet_since.filter(|_| self.on).map(|s| s + self.off_delay)
    }
}

/// The amplifier line as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AmpStatus {
    /// The BCM pin, when one is configured.
    pub pin: Option<u8>,
    /// Whether the line drives the amplifier (false when the GPIO could
    /// not be opened: see `leds.off_because`).
    pub driven: bool,
    pub on: bool,
    /// Seconds until it goes off, while program has ended.
    pub off_in_s: Option<f64>,
    pub off_delay_s: f64,
    /// Times it was switched on.
    pub switched_on: u64,
}

/// What the "leds" thread last did with the amplifier line.
#[derive(Debug, Default)]
pub struct AmpBoard {
    state: Mutex<(AmpStatus, Option<Instant>)>,
}

impl AmpBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, (AmpStatus, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new line (or none), off.
    pub fn reset(&self, config: Option<&AmpConfig>, driven: bool) {
        let mut s = self.lock();
        let switched_on = s.0.switched_on;
        *s = (
            AmpStatus {
                pin: config.map(|c| c.pin),
                driven: driven && config.is_some(),
                on: false,
                off_in_s: None,
                off_delay_s: config.map_or(0.0, |c| c.off_delay.as_secs_f64()),
                switched_on,
            },
            None,
        );
    }

    /// The line was set.
    pub fn set(&self, on: bool, off_at: Option<Instant>) {
        let mut s = self.lock();
        if on && !s.0.on {
            s.0.switched_on += 1;
        }
        s.0.on = on;
        s.1 = off_at;
    }

    pub fn snapshot(&self, now: Instant) -> AmpStatus {
        let s = self.lock();
        AmpStatus {
            off_in_s: s.1.map(|at| at.saturating_duration_since(now).as_secs_f64()),
            ..s.0.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_with_program_off_after_the_delay_and_a_short_pause_keeps_it_on() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut amp = AmpSwitch::new(s(60));
        assert!(!amp.update(false, t0), "off until program");
        assert!(amp.update(true, t0 + s(1)));
        assert!(amp.update(false, t0 + s(2)));
        assert_eq!(amp.off_at(), Some(t0 + s(62)));
        assert!(amp.update(false, t0 + s(61)));
        assert!(amp.update(true, t0 + s(61)), "program again within the delay");
        assert_eq!(amp.off_at(), None);
        assert!(amp.update(false, t0 + s(70)));
        assert!(amp.update(false, t0 + s(129)));
        assert!(!amp.update(false, t0 + s(130)), "off 60 s after program ended");
        assert_eq!(amp.off_at(), None);
        let mut now_off = AmpSwitch::new(Duration::ZERO);
        assert!(now_off.update(true, t0));
        assert!(!now_off.update(false, t0), "no delay: off with program");
    }

    #[test]
    fn the_board_counts_switch_ons_and_says_when_it_goes_off() {
        let b = AmpBoard::default();
        let cfg = AmpConfig {
            pin: 22,
            active_low: false,
            off_delay: Duration::from_secs(5),
        };
        b.reset(Some(&cfg), true);
        let t0 = Instant::now();
        b.set(true, None);
        b.set(true, Some(t0 + Duration::from_secs(5)));
        let st = b.snapshot(t0 + Duration::from_secs(2));
        assert_eq!((st.pin, st.driven, st.on, st.switched_on), (Some(22), true, true, 1));
        assert!((st.off_in_s.expect("due") - 3.0).abs() < 1e-6);
        b.set(false, None);
        b.set(true, None);
        assert_eq!(b.snapshot(t0).switched_on, 2);
        b.reset(None, true);
        let st = b.snapshot(t0);
        assert_eq!((st.pin, st.driven, st.on, st.switched_on), (None, false, false, 2));
    }
}
