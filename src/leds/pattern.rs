//! What each LED shows (pure): the state → [`Pattern`] mapping and the
//! blinking, with time passed in. Runs on whichever thread calls it (the
//! "leds" thread in the service); never sleeps, never touches hardware.
//!
//! The SD image's Wi-Fi setup [W6] takes both LEDs over while it has
//! something to say ([`wifi_patterns`]): the setup hotspot open is the two
//! LEDs taking turns once a second (no state of the stream looks like
//! that); just after joining a network from the hotspot, both flash the
//! last number of the address, digit by digit ([`Pattern::Number`]).

use std::time::Duration;

use crate::audio::InputState;
use crate::encoder::state::EncoderState;
use crate::wifi::LedShow;

/// [`Pattern::Number`]: a flash (on, then off).
const FLASH_ON: Duration = Duration::from_millis(300);
const FLASH_OFF: Duration = Duration::from_millis(300);
/// Dark between two digits (after the last flash's own off time).
const DIGIT_GAP: Duration = Duration::from_millis(900);
/// Dark after the whole number, before it starts again.
const NUMBER_GAP: Duration = Duration::from_millis(2700);

/// What an LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Off,
    On,
    /// On for half of each period, starting on.
    Blink {
        period: Duration,
    },
    /// Off for half of each period, then on: with [`Pattern::Blink`] of
    /// the same period on the other LED, the two take turns.
    Alternate {
        period: Duration,
    },
    /// The number's decimal digits, each as that many flashes (ten for a
    /// 0), a pause between digits and a longer one before it repeats:
    /// 23 is flash flash … flash flash flash ……
    Number(u8),
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
    /// The setup hotspot: 1 Hz, and its other half on the other LED.
    pub const TURN_A: Pattern = Pattern::Blink {
        period: Duration::from_millis(1000),
    };
    pub const TURN_B: Pattern = Pattern::Alternate {
        period: Duration::from_millis(1000),
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
            Pattern::Alternate { period } => !Pattern::Blink { period }.level(elapsed),
            Pattern::Number(n) => {
                let (segments, cycle) = number_segments(n);
                let mut t = elapsed.as_micros() % cycle;
                for (on, length) in segments {
                    if t < length {
                        return on;
                    }
                    t -= length;
                }
                false
            }
        }
    }

    /// When, after the pattern's clock started, the level next changes
    /// (after `elapsed`); `None` for a steady pattern.
    pub fn next_change(self, elapsed: Duration) -> Option<Duration> {
        let micros = |m: u128| Duration::from_micros(u64::try_from(m).unwrap_or(u64::MAX));
        match self {
            Pattern::Off | Pattern::On => None,
            Pattern::Blink { period } | Pattern::Alternate { period } => {
                let half = (period.as_micros() / 2).max(1);
                let next = (elapsed.as_micros() / half + 1) * half;
                Some(micros(next))
            }
            Pattern::Number(n) => {
                let (segments, cycle) = number_segments(n);
                let now = elapsed.as_micros();
                let base = now - now % cycle;
                // The segments alternate on and off, so each boundary is a
                // change: the first one after now (in this cycle or at the
                // start of the next).
                let mut edge = base;
                for (_, length) in segments {
                    edge += length;
                    if edge > now {
                        return Some(micros(edge));
                    }
                }
                Some(micros(base + cycle))
            }
        }
    }
}

/// One cycle of [`Pattern::Number`] as (level, µs) segments that
/// alternate on and off, and its length in µs.
fn number_segments(n: u8) -> (Vec<(bool, u128)>, u128) {
    let digits: Vec<u32> = n.to_string().chars().filter_map(|c| c.to_digit(10)).collect();
    let mut segments = Vec::new();
    for (i, d) in digits.iter().enumerate() {
        let flashes = if *d == 0 { 10 } else { *d };
        for f in 0..flashes {
            segments.push((true, FLASH_ON.as_micros()));
            let last = f + 1 == flashes;
            let gap = match (last, i + 1 == digits.len()) {
                (false, _) => FLASH_OFF,
                (true, false) => FLASH_OFF + DIGIT_GAP,
                (true, true) => FLASH_OFF + NUMBER_GAP,
            };
            segments.push((false, gap.as_micros()));
        }
    }
    let cycle = segments.iter().map(|s| s.1).sum::<u128>().max(1);
    (segments, cycle)
}

/// The encoder's and the input's LED while the Wi-Fi setup has something
/// to say.
pub fn wifi_patterns(show: LedShow) -> [Pattern; 2] {
    match show {
        LedShow::Hotspot => [Pattern::TURN_A, Pattern::TURN_B],
        LedShow::Address(addr) => {
            let n = Pattern::Number(addr.octets()[3]);
            [n, n]
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
    fn the_hotspot_pattern_has_the_two_leds_take_turns_once_a_second() {
        let [a, b] = wifi_patterns(LedShow::Hotspot);
        for t in (0..3000).step_by(50) {
            assert_ne!(a.level(MS(t)), b.level(MS(t)), "exactly one LED is on at {t} ms");
        }
        assert!(a.level(MS(0)) && !a.level(MS(500)) && b.level(MS(500)) && b.level(MS(999)) && !b.level(MS(1000)));
        assert_eq!(b.next_change(MS(100)), Some(MS(500)));
        // No state of the stream looks like it: no other pair has both
        // LEDs blinking in opposite phase.
        use EncoderState::*;
        for e in [Running, Starting, Restarting, Failed, Stopped] {
            for i in [InputState::Live, InputState::Grace, InputState::Fallback] {
                let (pe, pi) = (encoder_pattern(e), input_pattern(i));
                let window: Vec<(bool, bool)> = (0..4000)
                    .step_by(10)
                    .map(|t| (pe.level(MS(t)), pi.level(MS(t))))
                    .collect();
                let blinks = |f: fn(&(bool, bool)) -> bool| window.iter().any(f) && !window.iter().all(f);
                let turns = blinks(|l| l.0) && blinks(|l| l.1) && window.iter().all(|l| l.0 != l.1);
                assert!(!turns, "{e:?} {i:?} takes turns too");
            }
        }
    }

    #[test]
    fn an_address_is_flashed_digit_by_digit() {
        let [a, b] = wifi_patterns(LedShow::Address(std::net::Ipv4Addr::new(192, 168, 1, 203)));
        assert_eq!(a, b, "both LEDs flash it");
        // Walk one cycle by its edges: count the flashes between pauses.
        let mut t = Duration::ZERO;
        let mut groups = vec![0u32];
        let mut edges = 0;
        loop {
            let next = a.next_change(t).expect("changes");
            assert!(next > t);
            let (level, length) = (a.level(t), next - t);
            if level {
                *groups.last_mut().expect("a group") += 1;
                assert_eq!(length, FLASH_ON);
            } else if length > FLASH_OFF {
                groups.push(0);
                if length >= FLASH_OFF + NUMBER_GAP {
                    break;
                }
                assert_eq!(length, FLASH_OFF + DIGIT_GAP);
            }
            assert_ne!(
                a.level(next - Duration::from_micros(1)),
                a.level(next),
                "an edge at {next:?}"
            );
            t = next;
            edges += 1;
            assert!(edges < 100);
        }
        assert_eq!(groups, [2, 10, 3, 0], "2, 0 (ten flashes), 3, then the long pause");
        // It starts again after the pause.
        let cycle = t + a.next_change(t).expect("end") - t;
        assert!(a.level(cycle) && a.level(Duration::ZERO));
        assert!(!a.level(cycle - Duration::from_micros(1)));
        assert_eq!(Pattern::Number(7).next_change(MS(0)), Some(FLASH_ON));
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
