//! The encoder's state machine, restart policy and liveness rules [S4]–[S8].
//!
//! Pure: no threads, no I/O; every decision takes the time as an argument.
//! The supervisor thread is the only writer; everyone else reads snapshots.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// How many transitions the history keeps.
pub const HISTORY_LEN: usize = 50;

/// The supervisor's states [S8].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EncoderState {
    Stopped,
    Starting,
    Running,
    Restarting,
    Failed,
}

impl EncoderState {
    pub fn as_str(self) -> &'static str {
        match self {
            EncoderState::Stopped => "STOPPED",
            EncoderState::Starting => "STARTING",
            EncoderState::Running => "RUNNING",
            EncoderState::Restarting => "RESTARTING",
            EncoderState::Failed => "FAILED",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => EncoderState::Starting,
            2 => EncoderState::Running,
            3 => EncoderState::Restarting,
            4 => EncoderState::Failed,
            _ => EncoderState::Stopped,
        }
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: EncoderState) -> bool {
        use EncoderState::*;
        matches!(
            (self, to),
            (Stopped, Starting)
                | (Starting, Running | Restarting | Failed | Stopped)
                | (Running, Restarting | Failed | Stopped)
                | (Restarting, Starting | Stopped)
                | (Failed, Starting | Stopped)
        )
    }
}

impl fmt::Display for EncoderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an encoder instance was declared dead [S4], [S6].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// ffmpeg closed its stdout.
    Eof,
    /// The process ended.
    ProcessExit,
    /// Writing PCM to ffmpeg's stdin failed with a broken pipe.
    StdinBroken,
    /// No MP3 frame within the start-up timeout.
    StartupTimeout,
    /// No MP3 frame for longer than the stall threshold while running.
    Stall,
    /// The program could not be started at all (missing, not executable).
    SpawnFailed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Eof,
        FailureKind::ProcessExit,
        FailureKind::StdinBroken,
        FailureKind::StartupTimeout,
        FailureKind::Stall,
        FailureKind::SpawnFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Eof => "eof",
            FailureKind::ProcessExit => "process_exit",
            FailureKind::StdinBroken => "stdin_broken",
            FailureKind::StartupTimeout => "startup_timeout",
            FailureKind::Stall => "stall",
            FailureKind::SpawnFailed => "spawn_failed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, with its reason and time [S8].
#[derive(Debug, Clone)]
pub struct Transition {
    pub from: EncoderState,
    pub to: EncoderState,
    pub reason: String,
    pub at: Instant,
    pub wall: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal encoder state transition {from} -> {to} ({reason})")]
pub struct IllegalTransition {
    pub from: EncoderState,
    pub to: EncoderState,
    pub reason: String,
}

/// Current state plus the last [`HISTORY_LEN`] transitions.
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: EncoderState,
    since: Instant,
    history: VecDeque<Transition>,
}

impl StateMachine {
    pub fn new(now: Instant) -> Self {
        StateMachine {
            state: EncoderState::Stopped,
            since: now,
            history: VecDeque::with_capacity(HISTORY_LEN),
        }
    }

    pub fn state(&self) -> EncoderState {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Moves to `to` if legal; the transition is recorded and returned.
    pub fn transition(
        &mut self,
        to: EncoderState,
        reason: impl Into<String>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Transition, IllegalTransition> {
        let reason = reason.into();
        if !self.state.can_become(to) {
            return Err(IllegalTransition {
                from: self.state,
                to,
                reason,
            });
        }
        let t = Transition {
            from: self.state,
            to,
            reason,
            at: now,
            wall,
        };
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        self.state = to;
        self.since = now;
        Ok(t)
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// RESTARTING, then start again after this delay.
    Restart(Duration),
    /// FAILED; still try again after this (slow) delay [S5].
    GiveUp(Duration),
}

/// The backoff schedule [S5].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the 1st, 2nd, … restart in a row; the last repeats.
    pub backoff: Vec<Duration>,
    /// The `max_restarts`-th consecutive failure puts the encoder in FAILED.
    pub max_restarts: u32,
    /// How often a FAILED encoder is tried again.
    pub failed_retry: Duration,
    /// Running this long without failing resets the consecutive count.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: [100, 500, 1000, 2000, 4000, 8000, 10_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            max_restarts: 10,
            failed_retry: Duration::from_secs(30),
            stable_after: Duration::from_secs(2),
        }
    }
}

impl RestartPolicy {
    /// Decision after the `consecutive`-th failure in a row (1-based).
    pub fn after_failure(&self, consecutive: u32) -> AfterFailure {
        if consecutive >= self.max_restarts.max(1) {
            return AfterFailure::GiveUp(self.failed_retry);
        }
        let i = (consecutive.max(1) - 1) as usize;
        let delay = self
            .backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO);
        AfterFailure::Restart(delay)
    }
}

/// Start-up and stall timeouts [S4].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub startup_timeout: Duration,
    pub stall_timeout: Duration,
}

impl Liveness {
    /// A failure if the instance started at `started` has broken a rule by
    /// `now`, given when it last produced an MP3 frame. While STARTING the
    /// last frame is not looked at: the supervisor leaves STARTING when it
    /// takes the first frame's notice, and a time written late by the
    /// reader for the instance before must not switch the timeout off.
    pub fn check(
        &self,
        state: EncoderState,
        started: Instant,
        last_frame: Option<Instant>,
        now: Instant,
    ) -> Option<FailureKind> {
        match (state, last_frame) {
            (EncoderState::Starting, _) if now.saturating_duration_since(started) > self.startup_timeout => {
                Some(FailureKind::StartupTimeout)
            }
            (EncoderState::Running, Some(last)) if now.saturating_duration_since(last) > self.stall_timeout => {
                Some(FailureKind::Stall)
            }
            _ => None,
        }
    }

    /// When [`Liveness::check`] could first find a failure if no frame
    /// arrives meanwhile (a millisecond past the rule's limit), so the
    /// supervisor sleeps until then rather than looking on a timer.
    pub fn next_check(&self, state: EncoderState, started: Instant, last_frame: Option<Instant>) -> Option<Instant> {
        let margin = Duration::from_millis(1);
        match (state, last_frame) {
            (EncoderState::Starting, _) => Some(started + self.startup_timeout + margin),
            (EncoderState::Running, Some(last)) => Some(last + self.stall_timeout + margin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EncoderState::*;
    use super::*;

    const ALL: [EncoderState; 5] = [Stopped, Starting, Running, Restarting, Failed];

    #[test]
    fn legal_transitions_are_exactly_the_documented_ones() {
        let legal = [
            (Stopped, Starting),
            (Starting, Running),
            (Starting, Restarting),
            (Starting, Failed),
            (Starting, Stopped),
            (Running, Restarting),
            (Running, Failed),
            (Running, Stopped),
            (Restarting, Starting),
            (Restarting, Stopped),
            (Failed, Starting),
            (Failed, Stopped),
        ];
        for from in ALL {
            for to in ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn illegal_transitions_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut m = StateMachine::new(t0);
        for to in [Running, Restarting, Failed, Stopped] {
            let err = m.transition(to, "bad", t0, SystemTime::now()).unwrap_err();
            assert_eq!((err.from, err.to), (Stopped, to));
        }
        assert_eq!(m.state(), Stopped);
        assert_eq!(m.history().count(), 0);
        m.transition(Starting, "start", t0, SystemTime::now()).expect("legal");
        assert!(m.transition(Starting, "again", t0, SystemTime::now()).is_err());
        m.transition(Running, "first frame", t0, SystemTime::now())
            .expect("legal");
        assert!(
            m.transition(Starting, "skip restarting", t0, SystemTime::now())
                .is_err()
        );
        assert_eq!(m.state(), Running);
    }

    #[test]
    fn each_transition_keeps_its_reason_and_time_and_history_holds_the_last_50() {
        let t0 = Instant::now();
        let mut m = StateMachine::new(t0);
        m.transition(Starting, "start", t0, SystemTime::now()).expect("legal");
        for i in 0..40u64 {
            let t = t0 + Duration::from_secs(i);
            m.transition(Running, format!("up {i}"), t, SystemTime::now())
                .expect("legal");
            m.transition(Restarting, format!("down {i}"), t, SystemTime::now())
                .expect("legal");
            m.transition(Starting, format!("retry {i}"), t, SystemTime::now())
                .expect("legal");
        }
        let h: Vec<_> = m.history().collect();
        assert_eq!(h.len(), HISTORY_LEN);
        let last = h[HISTORY_LEN - 1];
        assert_eq!(
            (last.from, last.to, last.reason.as_str()),
            (Restarting, Starting, "retry 39")
        );
        assert_eq!(last.at, t0 + Duration::from_secs(39));
        assert_eq!(m.since(), last.at);
        // Consecutive entries chain: each one starts where the previous ended.
        assert!(h.windows(2).all(|w| w[0].to == w[1].from));
    }

    #[test]
    fn backoff_grows_then_gives_up_and_retries_slowly() {
        let p = RestartPolicy {
            backoff: [1, 2, 4, 8, 10].into_iter().map(Duration::from_secs).collect(),
            max_restarts: 7,
            failed_retry: Duration::from_secs(60),
            stable_after: Duration::from_secs(2),
        };
        let s = Duration::from_secs;
        let got: Vec<_> = (1..=8).map(|n| p.after_failure(n)).collect();
        assert_eq!(
            got,
            vec![
                AfterFailure::Restart(s(1)),
                AfterFailure::Restart(s(2)),
                AfterFailure::Restart(s(4)),
                AfterFailure::Restart(s(8)),
                AfterFailure::Restart(s(10)),
                AfterFailure::Restart(s(10)),
                AfterFailure::GiveUp(s(60)),
                AfterFailure::GiveUp(s(60)),
            ]
        );
    }

    #[test]
    fn liveness_catches_slow_starts_and_stalls_only() {
        let l = Liveness {
            startup_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(l.check(Starting, t0, None, t0 + s(5)), None);
        assert_eq!(
            l.check(Starting, t0, None, t0 + s(6)),
            Some(FailureKind::StartupTimeout)
        );
        // A frame time left by the instance before does not stop the clock.
        assert_eq!(
            l.check(Starting, t0, Some(t0), t0 + s(6)),
            Some(FailureKind::StartupTimeout)
        );
        assert_eq!(
            l.next_check(Starting, t0, Some(t0)),
            Some(t0 + s(5) + Duration::from_millis(1))
        );
        assert_eq!(l.check(Running, t0, Some(t0 + s(10)), t0 + s(12)), None);
        assert_eq!(
            l.check(Running, t0, Some(t0 + s(10)), t0 + s(13)),
            Some(FailureKind::Stall)
        );
        // Not judged while restarting, failed or stopped.
        for st in [Restarting, Failed, Stopped] {
            assert_eq!(l.check(st, t0, None, t0 + s(100)), None);
        }
    }

    #[test]
    fn the_next_check_is_the_first_moment_a_rule_can_be_broken() {
        let l = Liveness {
            startup_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        for (state, last, limit) in [(Starting, None, t0 + s(5)), (Running, Some(t0 + s(10)), t0 + s(12))] {
            let next = l.next_check(state, t0, last).expect("a deadline");
            assert!(next > limit && next <= limit + Duration::from_millis(1), "{state}");
            assert_eq!(l.check(state, t0, last, limit), None);
            assert!(l.check(state, t0, last, next).is_some(), "{state}");
        }
        for st in [Restarting, Failed, Stopped] {
            assert_eq!(l.next_check(st, t0, None), None);
        }
    }
}
