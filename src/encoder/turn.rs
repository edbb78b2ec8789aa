//! When a gathered turn of the broadcast loop ends ([`Gather::Every`]).
//!
//! ffmpeg's frames come paced by the pump: one per 24 ms period, each a
//! moment (its encoding) after the pump's tick. A turn that takes `n`
//! periods of frames together should end just after the frame that closes
//! it comes: any sooner and that frame waits a whole turn; any later and
//! every frame of the turn waits for nothing. The loop cannot see a frame
//! come while it sleeps, so it learns when they come instead: it *sees* one
//! come (waits in `recv` for it) and from then on expects the frame that
//! closes each turn one span later, and sleeps until just after
//! ([`MARGIN`]), taking the turn's frames with one `recv`: one wake-up per
//! turn. It sees a frame come again
//! - when a turn's frames are short of its span (the closing frame came
//!   late, or not at all): for up to half a period more, so that frame
//!   goes out in its own turn, and the phase follows it;
//! - every [`RESEE`] turns (about a second), in case frames now come
//!   sooner (ffmpeg was slower for a while): it wakes half a period before
//!   the closing frame is due and waits for it;
//! - when the phase is unknown or stale (the first turn, a new encoder,
//!   after silence or a turn that was not gathered).
//!
//! Time is passed in; the reader does the waiting.
//!
//! [`Gather::Every`]: super::Gather::Every

use std::time::{Duration, Instant};

use crate::audio::FRAME_DURATION;

/// How long after it is expected the closing frame is looked for: more
/// than ffmpeg's usual delay varies by.
pub const MARGIN: Duration = Duration::from_millis(2);
/// Turns after which a frame is seen coming again.
pub const RESEE: u32 = 10;

/// What the reader does for the next turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Sleep until then, and take what came.
    Take(Instant),
    /// Sleep until `from` (if given), take what is there, and wait in
    /// `recv` for a frame to come, until `until` at the latest.
    See { from: Option<Instant>, until: Instant },
}

#[derive(Debug, Default)]
pub struct Phase {
    /// When the frame that closes the next turn is expected.
    closing: Option<Instant>,
    /// Turns since a frame was last seen coming.
    unseen: u32,
}

/// `span` in whole pump periods, at least one: frames come on the pump's
/// ticks, whatever their own length (26.1 ms at 44.1 kHz).
pub fn whole_periods(span: Duration) -> Duration {
    let n = (span.as_nanos() / FRAME_DURATION.as_nanos()).max(1);
    FRAME_DURATION * u32::try_from(n).unwrap_or(1)
}

impl Phase {
    /// The plan at `now` for a turn of `span`; `deadline` is the pacer's
    /// (silence due). A known turn may end up to half a span past it:
    /// while frames keep coming no silence is needed, and when they stop,
    /// silence goes out that much later, well within a player's buffer.
    pub fn plan(&self, now: Instant, deadline: Instant, span: Duration) -> Plan {
        let unknown = Plan::See {
            from: None,
            until: deadline,
        };
        let Some(closing) = self.closing else { return unknown };
        if closing <= now || closing > deadline + span / 2 {
            return unknown;
        }
        if self.unseen < RESEE {
            return Plan::Take(closing + MARGIN);
        }
        Plan::See {
            from: closing.checked_sub(FRAME_DURATION / 2).filter(|t| *t > now),
            until: deadline.max(closing + FRAME_DURATION / 2),
        }
    }

    /// A planned turn took `audio` (frames of `frame` each); returns
    /// whether it fell short of `span`, the closing frame late: then the
    /// reader waits a little for it ([`Phase::seen`]).
    pub fn taken(&mut self, audio: Duration, frame: Duration, span: Duration) -> bool {
        let short = audio + frame <= span;
        match self.closing {
            Some(closing) if !short => {
                self.closing = Some(closing + span);
                self.unseen += 1;
            }
            _ => {}
        }
        short
    }

    /// A frame came at `at` (`None`: nothing came before the deadline):
    /// the next turn closes one span later.
    pub fn seen(&mut self, at: Option<Instant>, span: Duration) {
        *self = Phase {
            closing: at.map(|t| t + span),
            unseen: 0,
        };
    }

    /// Forgets the phase: a new encoder, or a turn that was not gathered.
    pub fn forget(&mut self) {
        *self = Phase::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = FRAME_DURATION;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_turn_ends_just_after_its_closing_frame_once_a_frame_was_seen() {
        let t0 = Instant::now();
        let mut phase = Phase::default();
        let unknown = |until| Plan::See { from: None, until };
        assert_eq!(
            phase.plan(t0, t0 + ms(84), P * 4),
            unknown(t0 + ms(84)),
            "unknown: see one come"
        );
        phase.seen(Some(t0 + ms(5)), P * 4);
        let closing = t0 + ms(5) + P * 4;
        // The pacer's deadline 84 ms after the last frame: the turn passes it by 12 ms.
        assert_eq!(phase.plan(t0 + ms(6), t0 + ms(89), P * 4), Plan::Take(closing + MARGIN));
        // Four frames came: the next turn closes a span later.
        assert!(!phase.taken(P * 4, P, P * 4));
        assert_eq!(
            phase.plan(closing + MARGIN, closing + ms(84), P * 4),
            Plan::Take(closing + P * 4 + MARGIN)
        );
    }

    #[test]
    fn a_turn_short_of_its_span_says_so_and_keeps_no_phase_of_its_own() {
        let t0 = Instant::now();
        let mut phase = Phase::default();
        phase.seen(Some(t0), P * 4);
        assert!(
            phase.taken(P * 3, P, P * 4),
            "three frames of four: the closing one is late"
        );
        // The reader then sees it come (or not).
        phase.seen(Some(t0 + P * 4 + ms(7)), P * 4);
        assert_eq!(
            phase.plan(t0 + P * 4 + ms(8), t0 + ms(200), P * 4),
            Plan::Take(t0 + P * 8 + ms(7) + MARGIN)
        );
        phase.seen(None, P * 4);
        assert_eq!(
            phase.plan(t0 + ms(300), t0 + ms(384), P * 4),
            Plan::See {
                from: None,
                until: t0 + ms(384)
            },
            "nothing came: unknown"
        );
    }

    #[test]
    fn at_44_1_khz_three_frames_of_26_ms_fill_a_turn_of_four_periods() {
        let frame = Duration::from_nanos(26_122_449);
        let mut phase = Phase::default();
        phase.seen(Some(Instant::now()), P * 4);
        assert!(!phase.taken(frame * 3, frame, P * 4));
        assert!(!phase.taken(frame * 4, frame, P * 4));
        assert!(phase.taken(frame * 2, frame, P * 4));
        assert_eq!(whole_periods(frame * 4), P * 4);
        assert_eq!(whole_periods(ms(10)), P, "at least one period");
    }

    #[test]
    fn every_few_turns_a_frame_is_seen_coming_again_from_half_a_period_before() {
        let t0 = Instant::now();
        let mut phase = Phase::default();
        phase.seen(Some(t0), P * 4);
        let mut closing = t0 + P * 4;
        for _ in 0..RESEE {
            assert_eq!(
                phase.plan(closing - ms(90), closing - ms(10), P * 4),
                Plan::Take(closing + MARGIN)
            );
            phase.taken(P * 4, P, P * 4);
            closing += P * 4;
        }
        // Waiting for it past the pacer's deadline, as a taken turn would.
        assert_eq!(
            phase.plan(closing - ms(90), closing - ms(10), P * 4),
            Plan::See {
                from: Some(closing - P / 2),
                until: closing + P / 2
            }
        );
        // Already past half a period before: see it come from now.
        assert_eq!(
            phase.plan(closing - ms(5), closing + ms(60), P * 4),
            Plan::See {
                from: None,
                until: closing + ms(60)
            }
        );
    }

    #[test]
    fn a_stale_or_far_phase_is_not_trusted() {
        let t0 = Instant::now();
        let mut phase = Phase::default();
        phase.seen(Some(t0), P * 4);
        let unknown = |until| Plan::See { from: None, until };
        // Its closing frame is already past (a turn that was not gathered).
        assert_eq!(phase.plan(t0 + P * 5, t0 + ms(300), P * 4), unknown(t0 + ms(300)));
        // The pacer's deadline comes more than half a span sooner.
        assert_eq!(phase.plan(t0, t0 + P, P * 4), unknown(t0 + P));
        phase.forget();
        assert_eq!(phase.plan(t0, t0 + ms(84), P * 4), unknown(t0 + ms(84)));
    }
}
