//! Pacing what listeners are sent: silence only when the encoder is really
//! behind, and no creep [M4]–[M5].
//!
//! Pure; time passed in. Used by `EncoderManager::get_frame`, which only the
//! broadcast loop calls. The pacer keeps a media clock: from the first real
//! frame (the anchor), `sent` frames of 24 ms have gone to listeners, so
//! `lead = anchor + sent × 24 ms − now` is how far the audio given to
//! listeners runs ahead of the wall clock. Over hours the encoder delivers at
//! exactly the pump's rate, so the lead stays where it started, give or take
//! the encoder's jitter (25–50 ms per frame for ffmpeg).
//!
//! - Before the first real frame ever: nothing (listeners wait).
//! - Real frames are sent the moment they arrive (lowest latency), unless
//!   the lead would pass `max_lead` (a backlog after a stall): then the
//!   oldest waiting frames are dropped, so listener delay cannot grow.
//! - Nothing for more than `silence_after` past due: the encoder is behind
//!   (stalled, restarting); silence frames are sent to bring the lead back to
//!   zero and keep it there until real frames return, so listeners stay
//!   connected and their players' buffers stay full.
//! - When real frames return after silence (a restarted encoder), come
//!   for the first time, or come from a new encoder that started before
//!   silence was due (a relaunch), they come in a burst: the PCM that queued in the
//!   new ffmpeg's stdin while it started, and the silence its input starts
//!   with. For a short while the lead is capped at two periods, not
//!   `max_lead`, so the stale part of the burst is dropped: otherwise each
//!   start would leave listeners up to `max_lead` further behind live, and
//!   the next gap would reach them that much later.

use std::time::{Duration, Instant};

/// Default: how far past due a frame may be before silence is sent. Above
/// ffmpeg's normal jitter, below what a player's buffer notices.
pub const DEFAULT_SILENCE_AFTER: Duration = Duration::from_millis(60);
/// Default: the most audio listeners may be sent ahead of real time.
pub const DEFAULT_MAX_LEAD: Duration = Duration::from_millis(120);
/// After silence, how long (in periods) the tighter cap on the lead holds:
/// long enough for a new encoder's first burst.
const SETTLE_PERIODS: u32 = 4;

#[derive(Debug, Clone)]
pub struct Pacer {
    period: Duration,
    silence_after: Duration,
    max_lead: Duration,
    anchor: Option<Instant>,
    sent: u64,
    in_silence: bool,
    /// Until when real frames returning after silence are held to a lead
    /// of two periods.
    settle_until: Option<Instant>,
    /// A new encoder started: its first frames settle as after silence.
    new_encoder: bool,
}

/// What to do with the real frames that are waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealDecision {
    /// Drop this many of the oldest waiting frames first.
    pub trim: usize,
    /// Then send the next one (false: drop it too; the lead is at its cap).
    pub send: bool,
}

impl Pacer {
    pub fn new(period: Duration, silence_after: Duration, max_lead: Duration) -> Self {
        Pacer {
            period,
            silence_after,
            max_lead: max_lead.max(period),
            anchor: None,
            sent: 0,
            in_silence: false,
            settle_until: None,
            new_encoder: false,
        }
    }

    /// The media time sent so far: `sent` periods, in u128 nanoseconds, so
    /// it never overflows (a u32 count of frames would after 3.27 years).
    fn media_ns(&self) -> u128 {
        self.period.as_nanos() * u128::from(self.sent)
    }

    /// Media time given to listeners minus `now`, in nanoseconds.
    fn lead_ns(&self, now: Instant) -> i128 {
        match self.anchor {
            None => 0,
            Some(anchor) => {
                let media_end = self.media_ns() as i128;
                let elapsed = if now >= anchor {
                    (now - anchor).as_nanos() as i128
                } else {
                    -((anchor - now).as_nanos() as i128)
                };
                media_end - elapsed
            }
        }
    }

    /// How far ahead of real time listeners are (negative: behind).
    pub fn lead(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.lead_ns(now).max(0) as u64)
    }

    pub fn started(&self) -> bool {
        self.anchor.is_some()
    }

    pub fn in_silence(&self) -> bool {
        self.in_silence
    }

    /// Whether frames now would come in a burst that the pacer trims:
    /// the first ever, the first after silence or from a new encoder, and
    /// those of the short while after.
    pub fn settling(&self, now: Instant) -> bool {
        self.anchor.is_none()
            || self.in_silence
            || self.new_encoder
            || self.settle_until.is_some_and(|until| now < until)
    }

    /// A new encoder has started: its frames from now on come in a burst.
    pub fn new_encoder(&mut self) {
        self.new_encoder = true;
    }

    /// `waiting` real frames (≥ 1) are ready at `now`.
    pub fn on_real(&mut self, waiting: usize, now: Instant) -> RealDecision {
        if self.anchor.is_none() || self.in_silence || std::mem::take(&mut self.new_encoder) {
            self.anchor.get_or_insert(now);
            self.settle_until = Some(now + self.period * SETTLE_PERIODS);
        }
        self.in_silence = false;
        let cap = match self.settle_until {
            Some(until) if now < until => self.max_lead.min(self.period * 2),
            _ => self.max_lead,
        };
        let room = cap.as_nanos() as i128 - self.lead_ns(now);
        let fits = (room / self.period.as_nanos() as i128).max(0) as usize;
        let decision = if fits == 0 {
            RealDecision {
                trim: waiting.saturating_sub(1),
                send: false,
            }
        } else {
            RealDecision {
                trim: waiting.saturating_sub(fits),
                send: true,
            }
        };
        if decision.send {
            self.sent += 1;
        }
        decision
    }

    /// No real frame is waiting at `now`: true if a silence frame should be
    /// sent now (call again until false).
    pub fn silence_due(&mut self, now: Instant) -> bool {
        if self.anchor.is_none() {
            return false;
        }
        let lead = self.lead_ns(now);
        if !self.in_silence && lead < -(self.silence_after.as_nanos() as i128) {
            self.in_silence = true;
        }
        if self.in_silence && lead < 0 {
            self.sent += 1;
            return true;
        }
        false
    }

    /// When `silence_due` could next become true, if nothing arrives.
    pub fn next_due(&self) -> Option<Instant> {
        let anchor = self.anchor?;
        let ns = self.media_ns();
        let media = Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
        let media_end = anchor + media;
        Some(if self.in_silence {
            media_end
        } else {
            media_end + self.silence_after
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(24);

    fn pacer() -> Pacer {
        Pacer::new(P, DEFAULT_SILENCE_AFTER, DEFAULT_MAX_LEAD)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_before_the_first_frame_ever() {
        let t0 = Instant::now();
        let mut p = pacer();
        assert!(!p.silence_due(t0 + Duration::from_secs(100)));
        assert_eq!(p.next_due(), None);
        assert!(!p.started());
    }

    #[test]
    fn jittery_frames_at_the_nominal_rate_never_get_silence_or_trims() {
        let t0 = Instant::now();
        let mut p = pacer();
        let mut silence = 0;
        // Ten hours of frames, each 25–50 ms after its nominal time: the
        // lead stays bounded and nothing is ever inserted or dropped.
        for k in 0..1_500_000u64 {
            let jitter = ms(25 + (k * 7919) % 26);
            let arrive = t0 + P * u32::try_from(k).expect("fits") + jitter;
            while p.silence_due(arrive) {
                silence += 1;
            }
            assert_eq!(p.on_real(1, arrive), RealDecision { trim: 0, send: true });
        }
        assert_eq!(silence, 0);
    }

    #[test]
    fn a_gap_gets_silence_after_the_threshold_then_one_frame_per_period() {
        let t0 = Instant::now();
        let mut p = pacer();
        for k in 0..10u32 {
            p.on_real(1, t0 + P * k);
        }
        // Listeners have media up to t0 + 240 ms. Silence is due 60 ms later.
        assert_eq!(p.next_due(), Some(t0 + ms(300)));
        assert!(!p.silence_due(t0 + ms(299)));
        // At 301 ms the lead is −61 ms: three frames bring it back to ≥ 0.
        let now = t0 + ms(301);
        let mut n = 0;
        while p.silence_due(now) {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(p.in_silence());
        // From then on, one frame whenever the lead reaches zero.
        let due = p.next_due().expect("due");
        assert_eq!(due, t0 + ms(312));
        assert!(!p.silence_due(due - ms(1)));
        assert!(p.silence_due(due + ms(1)));
        assert!(!p.silence_due(due + ms(1)));
    }

    #[test]
    fn delay_does_not_creep_across_restarts() {
        // An encoder that dies every 5 s and comes back 300 ms later at a
        // random phase, for an hour: the lead stays within one period plus
        // the cap, never growing.
        let t0 = Instant::now();
        let mut p = pacer();
        let mut now = t0;
        let mut max_lead = Duration::ZERO;
        for cycle in 0..720u32 {
            for _ in 0..200 {
                now += P;
                let d = p.on_real(1, now);
                assert!(d.send);
            }
            let resume = now + ms(300) + ms(u64::from(cycle * 37 % 24));
            while now < resume {
                now += ms(4);
                while p.silence_due(now) {}
            }
            now = resume;
            max_lead = max_lead.max(p.lead(now));
        }
        assert!(max_lead <= P * 2, "lead grew to {max_lead:?}");
    }

    #[test]
    fn a_burst_after_silence_is_trimmed_so_the_delay_does_not_grow() {
        // A restarted encoder's first frames come at once: what sat in its
        // stdin while it started. Taking them all would put listeners that
        // much further behind live after every restart.
        let t0 = Instant::now();
        let mut p = pacer();
        let mut now = t0;
        for _ in 0..50 {
            now += P;
            assert!(p.on_real(1, now).send);
        }
        let before = p.lead(now);
        // 300 ms without frames: silence.
        let resume = now + ms(300);
        while now < resume {
            now += ms(4);
            while p.silence_due(now) {}
        }
        // The burst: 1 frame, then 3 more a few ms later.
        let d = p.on_real(1, now);
        assert_eq!(d, RealDecision { trim: 0, send: true });
        let d = p.on_real(3, now + ms(3));
        assert!(!d.send && d.trim == 2, "{d:?}");
        // Then the cadence: every frame is sent, none trimmed.
        for _ in 0..100 {
            now += P;
            assert_eq!(p.on_real(1, now), RealDecision { trim: 0, send: true });
        }
        assert!(
            p.lead(now) <= before.max(P) + P,
            "lead {:?}, was {before:?}",
            p.lead(now)
        );
    }

    #[test]
    fn the_next_due_time_keeps_advancing_past_2_pow_32_frames() {
        // 2^32 frames of 24 ms is 3.27 years of uptime. The anchor is set
        // that far back by starting the count near the limit instead.
        let t0 = Instant::now();
        let mut p = pacer();
        p.on_real(1, t0);
        p.sent = u64::from(u32::MAX) - 2;
        let mut last = p.next_due().expect("due");
        for _ in 0..6 {
            assert!(p.on_real(1, last).send);
            let due = p.next_due().expect("due");
            assert_eq!(due - last, P, "the deadline must move one period per frame");
            last = due;
        }
    }

    #[test]
    fn a_new_encoders_burst_without_silence_before_it_is_trimmed_too() {
        let t0 = Instant::now();
        let mut p = pacer();
        let mut now = t0;
        for _ in 0..50 {
            assert!(p.on_real(1, now).send);
            now += P;
        }
        let before = p.lead(now);
        // A relaunch: the new ffmpeg's first frames come 40 ms later, ten
        // at once (its silent preload and the PCM that queued), before any
        // silence was due.
        now += ms(40);
        p.new_encoder();
        let (mut waiting, mut sent) = (10usize, 0);
        while waiting > 0 {
            let d = p.on_real(waiting, now);
            sent += usize::from(d.send);
            waiting -= d.trim + 1;
        }
        assert!(p.lead(now) <= P * 2, "lead {:?} after the burst", p.lead(now));
        assert!(sent <= 3, "{sent} frames of the burst sent");
        for _ in 0..100 {
            now += P;
            assert!(p.on_real(1, now).send);
        }
        assert!(p.lead(now) <= before.max(P * 2), "lead {:?}", p.lead(now));
    }

    #[test]
    fn the_first_burst_ever_is_trimmed_too_so_a_later_gap_gets_silence_at_once() {
        // ffmpeg's start: 14 frames at once (the silence its input starts
        // with), then one frame per period.
        let t0 = Instant::now();
        let mut p = pacer();
        // As the manager takes them: trims, then one sent or dropped.
        let (mut waiting, mut sent) = (14usize, 0);
        while waiting > 0 {
            let d = p.on_real(waiting, t0);
            sent += usize::from(d.send);
            waiting -= d.trim + 1;
        }
        assert!(sent <= 2, "{sent} frames of the burst sent");
        let mut now = t0;
        for _ in 0..100 {
            now += P;
            assert!(p.on_real(1, now).send);
        }
        // A stall now gets silence 60 ms after the media runs out, which is
        // at most two periods ahead (not max_lead, 120 ms).
        let due = p.next_due().expect("due");
        assert!(due <= now + P * 2 + DEFAULT_SILENCE_AFTER, "{:?}", due - now);
    }

    #[test]
    fn a_backlog_burst_is_trimmed_to_the_cap_keeping_the_newest() {
        let start = Instant::now();
        let mut p = pacer();
        // Past the start's settling, at the cadence: the ordinary cap applies.
        for k in 0..=SETTLE_PERIODS {
            p.on_real(1, start + P * k);
        }
        let t0 = start + P * SETTLE_PERIODS;
        // 14 frames arrive at once 24 ms later (ffmpeg resumed after a stop).
        let now = t0 + P;
        let d = p.on_real(14, now);
        // Lead is 0 before sending: 120 ms of room is 5 frames; the 9 oldest
        // are dropped and the next is sent.
        assert_eq!(d, RealDecision { trim: 9, send: true });
        for left in (1..5).rev() {
            assert_eq!(p.on_real(left, now), RealDecision { trim: 0, send: true });
        }
        assert!(p.lead(now) <= DEFAULT_MAX_LEAD);
        // At the cap: a further frame is dropped rather than sent.
        assert_eq!(p.on_real(1, now), RealDecision { trim: 0, send: false });
    }
}
