//! Rate limiting for repeated log lines ("logged once per episode").
//!
//! Any thread may call [`LogGate::allow`]; it decides with the time passed in,
//! so tests do not sleep. Counters stay exact; only the log lines are limited.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one log line through per `interval`, and tells the caller how many
/// were held back since the last one.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    pub const fn new(interval: Duration) -> Self {
        LogGate {
            interval,
            state: Mutex::new(GateState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when the caller should log now (`n` lines were suppressed
    /// since the previous one), `None` when it should stay quiet.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

/// Lets up to `lines` lines through per `window` (a burst, such as the
/// several lines of one ffmpeg error, passes whole); the rest are counted.
/// Owned by one thread.
#[derive(Debug)]
pub struct LineBudget {
    lines: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LineBudget {
    pub fn new(lines: u32, window: Duration) -> Self {
        LineBudget {
            lines,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this line (`n` were suppressed before it);
    /// `None`: over budget, stay quiet.
    pub fn take(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.lines {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_whole_then_the_flood_is_counted() {
        let mut b = LineBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0 + Duration::from_secs(5)), None);
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn one_line_per_interval_with_a_count_of_the_rest() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(gate.allow(t0), Some(0));
        assert_eq!(gate.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(gate.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(gate.allow(t0 + Duration::from_secs(11)), None);
    }
}
