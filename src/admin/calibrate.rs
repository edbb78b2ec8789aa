//! Calibrate: sets the capture level so that the loudest passage peaks
//! near [`TARGET_DBFS`]. Pure: the admin thread feeds it the input's peak
//! level (every ~100 ms) and the time, and does what [`Calibration::step`]
//! says.
//!
//! The owner plays the loudest passage and presses Calibrate. Tower
//! listens for [`LISTEN`], takes the highest peak, and moves the gain in
//! force by the difference to the target: through the card's capture
//! control when it has one (within its range), else as the software gain.
//! The new level goes through the same path as any other change (checked,
//! saved, applied). Then it listens for [`VERIFY`] more and reports the
//! peak before and after, and says so when the card could not go far
//! enough.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where the loudest peaks should sit: 6 dB of headroom.
pub const TARGET_DBFS: f64 = -6.0;
pub const LISTEN: Duration = Duration::from_secs(5);
pub const VERIFY: Duration = Duration::from_secs(3);
/// Peaks below this are no signal to calibrate on.
pub const NO_SIGNAL_DBFS: f64 = -70.0;

/// The gain in force, and the range it can be set in, in dB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gain {
    pub db: f64,
    pub min_db: f64,
    pub max_db: f64,
    /// The card's own control (else the software gain).
    pub hardware: bool,
}

/// What the admin thread must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Wait,
    /// Set `capture.level` to this many dB (once).
    SetLevel(f64),
}

/// What the page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// idle, listening, verifying, done, failed
    pub state: &'static str,
    pub peak_before_dbfs: Option<f64>,
    pub gain_before_db: Option<f64>,
    pub gain_after_db: Option<f64>,
    pub peak_after_dbfs: Option<f64>,
    pub target_dbfs: f64,
    /// The card or software gain reached what the target needs.
    pub reachable: Option<bool>,
    pub message: String,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Listening { until: Instant },
    Setting,
    Verifying { until: Instant },
    Finished { failed: bool },
}

#[derive(Debug, Clone)]
pub struct Calibration {
    phase: Phase,
    before: Option<Gain>,
    peak: f64,
    peak_before: Option<f64>,
    gain_after: Option<f64>,
    reachable: Option<bool>,
    message: String,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            phase: Phase::Idle,
            before: None,
            peak: f64::NEG_INFINITY,
            peak_before: None,
            gain_after: None,
            reachable: None,
            message: String::new(),
        }
    }
}

impl Calibration {
    pub fn running(&self) -> bool {
        matches!(
            self.phase,
            Phase::Listening { .. } | Phase::Setting | Phase::Verifying { .. }
        )
    }

    /// Starts listening, from the gain in force (`Err` says why it cannot
    /// be known, e.g. a card control with no dB scale).
    pub fn start(&mut self, gain: Result<Gain, String>, now: Instant) {
        *self = Calibration::default();
        match gain {
            Ok(g) => {
                self.before = Some(g);
                self.phase = Phase::Listening { until: now + LISTEN };
                self.message = format!("listening for {} s: play the loudest passage now", LISTEN.as_secs());
            }
            Err(why) => self.finish(true, format!("cannot calibrate: {why}")),
        }
    }

    /// The input's peak over the last moment, in dBFS.
    pub fn observe(&mut self, peak_dbfs: f64, _now: Instant) {
        if matches!(self.phase, Phase::Listening { .. } | Phase::Verifying { .. }) && peak_dbfs.is_finite() {
            self.peak = self.peak.max(peak_dbfs);
        }
    }

    pub fn step(&mut self, now: Instant) -> Step {
        match self.phase {
            Phase::Listening { until } if now >= until => {
                let peak = self.peak;
                self.peak_before = peak.is_finite().then_some(round(peak));
                let Some(before) = self.before else { return Step::Wait };
                if peak < NO_SIGNAL_DBFS {
                    self.finish(
                        true,
                        format!(
                            "heard no signal (peaks below {NO_SIGNAL_DBFS} dBFS): play the loudest passage, then press Calibrate again"
                        ),
                    );
                    return Step::Wait;
                }
                let wanted = before.db + (TARGET_DBFS - peak);
                let set = round(wanted.clamp(before.min_db, before.max_db));
                self.reachable = Some((set - wanted).abs() < 0.1);
                self.gain_after = Some(set);
                self.phase = Phase::Setting;
                Step::SetLevel(set)
            }
            Phase::Verifying { until } if now >= until => {
                let after = self.peak.is_finite().then_some(round(self.peak));
                let before = self.before.map(|g| g.db).unwrap_or_default();
                let control = if self.before.is_some_and(|g| g.hardware) {
                    "the card's capture control"
                } else {
                    "the software gain"
                };
                let mut message = format!(
                    "peaks {} dBFS at {before:+.1} dB before, {} dBFS at {:+.1} dB now ({control})",
                    fmt_db(self.peak_before),
                    fmt_db(after),
                    self.gain_after.unwrap_or(before)
                );
                if self.reachable == Some(false) {
                    let limit = self.gain_after.unwrap_or_default();
                    message.push_str(&format!(
                        "; {control} cannot go beyond {limit:+.1} dB, so peaks stay away from {TARGET_DBFS} dBFS"
                    ));
                }
                if self.peak_before.is_some_and(|p| p > -0.5) {
                    message.push_str("; the input was clipping, so press Calibrate again to fine-tune");
                }
                self.peak = after.unwrap_or(f64::NEG_INFINITY);
                self.finish(false, message);
                Step::Wait
            }
            _ => Step::Wait,
        }
    }

    /// The level was set (or could not be).
    pub fn level_set(&mut self, outcome: Result<(), String>, now: Instant) {
        if !matches!(self.phase, Phase::Setting) {
            return;
        }
        match outcome {
            Ok(()) => {
                self.peak = f64::NEG_INFINITY;
                self.phase = Phase::Verifying { until: now + VERIFY };
                self.message = format!("level set; listening {} s more to check", VERIFY.as_secs());
            }
            Err(why) => self.finish(true, format!("could not set the level: {why}")),
        }
    }

    fn finish(&mut self, failed: bool, message: String) {
        self.phase = Phase::Finished { failed };
        self.message = message;
    }

    pub fn report(&self) -> Report {
        let state = match self.phase {
            Phase::Idle => "idle",
            Phase::Listening { .. } => "listening",
            Phase::Setting | Phase::Verifying { .. } => "verifying",
            Phase::Finished { failed: false } => "done",
            Phase::Finished { failed: true } => "failed",
        };
        let finished = matches!(self.phase, Phase::Finished { failed: false });
        Report {
            state,
            peak_before_dbfs: self.peak_before,
            gain_before_db: self.before.map(|g| g.db),
            gain_after_db: self.gain_after,
            peak_after_dbfs: (finished && self.peak.is_finite()).then_some(self.peak),
            target_dbfs: TARGET_DBFS,
            reachable: self.reachable,
            message: self.message.clone(),
        }
    }
}

fn round(db: f64) -> f64 {
    (db * 10.0).round() / 10.0
}

fn fmt_db(v: Option<f64>) -> String {
    v.map_or_else(|| "(none)".into(), |d| format!("{d:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gain(db: f64, min_db: f64, max_db: f64, hardware: bool) -> Result<Gain, String> {
        Ok(Gain {
            db,
            min_db,
            max_db,
            hardware,
        })
    }

    fn run(cal: &mut Calibration, peak: f64, from: Instant, span: Duration) -> Instant {
        let mut t = from;
        while t < from + span {
            cal.observe(peak, t);
            t += Duration::from_millis(100);
        }
        t
    }

    #[test]
    fn a_quiet_input_is_raised_so_its_peaks_sit_at_minus_6() {
        let mut cal = Calibration::default();
        let t0 = Instant::now();
        cal.start(gain(0.0, -60.0, 40.0, false), t0);
        assert!(cal.running());
        let t = run(&mut cal, -30.0, t0, LISTEN);
        assert_eq!(cal.step(t), Step::SetLevel(24.0));
        cal.level_set(Ok(()), t);
        let t2 = run(&mut cal, -6.1, t, VERIFY);
        assert_eq!(cal.step(t2), Step::Wait);
        let r = cal.report();
        assert_eq!(r.state, "done");
        assert_eq!(
            (r.peak_before_dbfs, r.gain_after_db, r.peak_after_dbfs),
            (Some(-30.0), Some(24.0), Some(-6.1))
        );
        assert_eq!(r.reachable, Some(true));
        assert!(r.message.contains("-30.0 dBFS at +0.0 dB before"), "{}", r.message);
    }

    #[test]
    fn a_card_that_cannot_reach_the_target_says_so() {
        let mut cal = Calibration::default();
        let t0 = Instant::now();
        cal.start(gain(10.0, -20.0, 20.0, true), t0);
        let t = run(&mut cal, -40.0, t0, LISTEN);
        assert_eq!(cal.step(t), Step::SetLevel(20.0));
        cal.level_set(Ok(()), t);
        let t2 = run(&mut cal, -30.0, t, VERIFY);
        cal.step(t2);
        let r = cal.report();
        assert_eq!(r.reachable, Some(false));
        assert!(r.message.contains("cannot go beyond +20.0 dB"), "{}", r.message);
    }

    #[test]
    fn no_signal_or_an_unknown_gain_changes_nothing() {
        let mut cal = Calibration::default();
        let t0 = Instant::now();
        cal.start(gain(0.0, -60.0, 40.0, false), t0);
        let t = run(&mut cal, -90.0, t0, LISTEN);
        assert_eq!(cal.step(t), Step::Wait);
        assert_eq!(cal.report().state, "failed");
        assert!(cal.report().message.contains("no signal"));
        cal.start(Err("the card's control has no dB scale".into()), t);
        assert_eq!(cal.report().state, "failed");
        assert!(!cal.running());
    }
}
