//! The systemd watchdog [T1]: pings (`WATCHDOG=1`) only while the pipeline
//! is really alive.
//!
//! Under `WatchdogSec=`, systemd sets `WATCHDOG_USEC`; the "watchdog"
//! thread, owned by the service, then looks every half period whether the
//! audio pump has ticked and the broadcast loop has turned since its last
//! look ([`Liveness`]). Only then does it ping. A hung pump or broadcast
//! loop stops the pings, and systemd restarts Tower. Without systemd
//! (`NOTIFY_SOCKET` unset) nothing is sent.

use std::time::{Duration, Instant};

use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Worker};

/// Progress counters of the threads that must be alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Audio pump ticks.
    pub pump_ticks: u64,
    /// Broadcast loop turns.
    pub broadcast_turns: u64,
}

/// Whether both counters moved since the last look.
#[derive(Debug, Default)]
pub struct Liveness {
    last: Option<Progress>,
}

impl Liveness {
    /// `Ok` when everything moved since the previous call (the first call
    /// only records); otherwise what is stuck.
    pub fn check(&mut self, now: Progress) -> Result<(), &'static str> {
        let previous = self.last.replace(now);
        let Some(p) = previous else { return Ok(()) };
        match (now.pump_ticks > p.pump_ticks, now.broadcast_turns > p.broadcast_turns) {
            (true, true) => Ok(()),
            (false, true) => Err("the audio pump has not ticked"),
            (true, false) => Err("the broadcast loop has not turned"),
            (false, false) => Err("neither the audio pump nor the broadcast loop moved"),
        }
    }
}

/// Starts the watchdog thread if systemd asked for one.
pub fn start(read: impl Fn() -> Progress + Send + 'static) -> std::io::Result<Option<Worker<()>>> {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return Ok(None);
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(
        component = "watchdog",
        period_ms = period.as_millis() as u64,
        "systemd watchdog on: pinging every {} ms while the pipeline runs",
        every.as_millis()
    );
    Worker::spawn("watchdog", move |stop: StopSignal| {
        let mut liveness = Liveness::default();
        let stalled_log = LogGate::new(Duration::from_secs(60));
        let mut stalled = false;
        while !stop.is_stopped() {
            match liveness.check(read()) {
                Ok(()) => {
                    if stalled {
                        tracing::info!(component = "watchdog", "pipeline moving again: pinging the watchdog");
                        stalled = false;
                    }
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                Err(what) => {
                    stalled = true;
                    if let Some(suppressed) = stalled_log.allow(Instant::now()) {
                        tracing::error!(
                            component = "watchdog",
                            state = "stalled",
                            reason = what,
                            suppressed,
                            "{what} for {} ms: withholding watchdog pings so systemd restarts Tower",
                            every.as_millis()
                        );
                    }
                }
            }
            stop.sleep(every);
        }
    })
    .map(Some)
}

/// Tells systemd the service is ready (the HTTP server listens).
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pump_ticks: u64, broadcast_turns: u64) -> Progress {
        Progress {
            pump_ticks,
            broadcast_turns,
        }
    }

    #[test]
    fn alive_only_when_both_moved_since_the_last_look() {
        let mut l = Liveness::default();
        assert_eq!(l.check(p(0, 0)), Ok(()), "the first look only records");
        assert_eq!(l.check(p(20, 5)), Ok(()));
        assert!(l.check(p(20, 9)).unwrap_err().contains("pump"));
        assert!(l.check(p(40, 9)).unwrap_err().contains("broadcast"));
        assert!(l.check(p(40, 9)).unwrap_err().contains("neither"));
        assert_eq!(l.check(p(41, 10)), Ok(()));
    }
}
