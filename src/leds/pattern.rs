//! What each LED shows (pure): the state → [`Pattern`] mapping and the
//! blinking, with time passed in. Runs on whichever thread calls it (the
//! "leds" thread in the service); never sleeps, never touches hardware.

use std::time::Duration;

use crate::audio::InputState;
use crate::encoder::state::EncoderState;

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
    /// 8 Hz.
    pub const FAST: Pattern = Pattern::Blink {
        period: Duration::from_millis(125),
    };
    /// 2 Hz.
    pub const MEDIUM: Pattern = Pattern::Blink {
        period: Duration::from_millis(500),
    };
    /// 0.5 Hz.
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

    /// When, after the pattern's clock started, the level next changes
    /// (after `elapsed`); `None` for a steady pattern.
    pub fn next_change(self, elapsed: Duration) -> Option<Duration> {
        match self {
            Pattern::Off | Pattern::On => None,
            Pattern::Blink { period } => {
                let half = (period.as_micros() / 2).max(1);
                let next = (elapsed.as_micros() / half + 1) * half;
                Some(Duration::from_micros(u64::try_from(next).unwrap_or(u64::MAX)))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_blink_changes_level_exactly_at_each_half_period() {
        let p = Pattern::MEDIUM;
        assert_eq!(p.next_change(MS(0)), Some(MS(250)));
        assert_eq!(p.next_change(MS(249)), Some(MS(250)));
        assert_eq!(p.next_change(MS(250)), Some(MS(500)));
        for t in [0, 100, 250, 499, 500, 1_234] {
            let at = p.next_change(MS(t)).expect("blinks");
            assert_ne!(p.level(at - Duration::from_micros(1)), p.level(at), "at {at:?}");
            assert!(at > MS(t));
        }
        assert_eq!(Pattern::On.next_change(MS(7)), None);
        assert_eq!(Pattern::Off.next_change(MS(7)), None);
    }

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
}
