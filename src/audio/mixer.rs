//! The capture level: the card's mixer, else a software gain.
//!
//! Runs on the capture thread, once after every successful open of the
//! device (a replugged USB interface, or a card after a reboot of the
//! read-only image, comes back at its driver's default level, often low or
//! muted). `capture.level` in the configuration is a [`Level`]: "" leaves
//! the mixer as found; `-6dB` sets the card's capture volume in dB where
//! the control has a dB scale; `75%` sets a share of the control's range.
//! The card's capture switch is turned on with it.
//!
//! A card with no capture volume control (many cheap USB dongles, I2S
//! HATs, JACK, a loopback) gets a [`SoftGain`] on the PCM instead, applied
//! to every frame before the level meter and the encoder: samples saturate
//! at full scale, never wrap, and every clipped sample is counted.
//!
//! The mixer sits behind the [`Mixer`] trait: [`AlsaMixer`] (alsa-lib's
//! simple mixer API) on the appliance, [`FakeMixer`] in tests.

use std::fmt;
#[cfg(any(test, feature = "test-hooks"))]
use std::sync::{Arc, Mutex};

use super::PcmFrame;

/// What `capture.level` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Level {
    /// Leave the card as found (the default).
    #[default]
    Keep,
    /// Capture volume in dB (the control's dB scale), or a software gain.
    Db(f64),
    /// A share of the control's range, 0 to 100.
    Percent(f64),
}

/// The accepted forms, for error messages.
pub const LEVEL_FORMS: &str = "\"\" (leave the card as found), a gain in dB from -60 to +40 (\"-6dB\", \"+3.5 dB\") \
                               or a share of the control's range from 0 to 100 (\"75%\")";

impl Level {
    /// Parses `capture.level`; the error says what was wrong.
    pub fn parse(text: &str) -> Result<Level, LevelError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(Level::Keep);
        }
        let lower = t.to_ascii_lowercase();
        if let Some(num) = lower.strip_suffix("db") {
            let v: f64 = num.trim().parse().map_err(|_| LevelError::NotDb(t.to_string()))?;
            if !(-60.0..=40.0).contains(&v) {
                return Err(LevelError::DbRange(v));
            }
            return Ok(Level::Db(v));
        }
        if let Some(num) = lower.strip_suffix('%') {
            let v: f64 = num.trim().parse().map_err(|_| LevelError::NotPercent(t.to_string()))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(LevelError::PercentRange(v));
            }
            return Ok(Level::Percent(v));
        }
        Err(LevelError::NoUnit(t.to_string()))
    }

    /// The gain in dB a software gain applies for this level: dB as given;
    /// a percentage as a share of full amplitude (100% is unity).
    pub fn soft_db(self) -> Option<f64> {
        match self {
            Level::Keep => None,
            Level::Db(db) => Some(db),
            Level::Percent(p) if p <= 0.0 => Some(f64::NEG_INFINITY),
            Level::Percent(p) => Some(20.0 * (p / 100.0).log10()),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Keep => f.write_str("as found"),
            Level::Db(db) => write!(f, "{db:+.1} dB"),
            Level::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A `capture.level` that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LevelError {
    #[error("{0:?} is not a number of dB")]
    NotDb(String),
    #[error("{0} dB is out of range")]
    DbRange(f64),
    #[error("{0:?} is not a percentage")]
    NotPercent(String),
    #[error("{0}% is out of range")]
    PercentRange(f64),
    #[error("{0:?} has no unit (dB or %)")]
    NoUnit(String),
}

/// What the mixer did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The card's capture control was set (or read); `value` is what the
    /// card now reports (e.g. "-6.00 dB (volume 40 of 0..64)").
    Hardware {
        control: String,
        value: String,
        /// The level in dB and the control's dB range, when it has a dB
        /// scale (what calibration needs).
        db: Option<(f64, f64, f64)>,
        /// Said once when the card could not take the value exactly
        /// (clamped to its range).
        note: Option<String>,
    },
    /// The card has no capture volume control: use a software gain.
    NoControl,
}

/// A card whose mixer could not be set. Streaming goes on regardless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixerError {
    #[error("cannot open the mixer of card {card:?}: {reason}")]
    Open { card: String, reason: String },
    #[error("card {card:?} refused {control:?} = {value}: {reason}")]
    Refused {
        card: String,
        control: String,
        value: String,
        reason: String,
    },
    #[error(
        "card {card:?}'s capture control {control:?} has no dB scale; set capture.level as a percentage (e.g. \"75%\")"
    )]
    NoDbScale { card: String, control: String },
}

/// A sound card's capture controls.
pub trait Mixer: Send {
    /// Sets `card`'s capture volume to `level` and turns its capture
    /// switch on; [`Level::Keep`] only reads the control as it is.
    fn set_capture(&mut self, card: &str, level: Level) -> Result<Applied, MixerError>;
}

/// The card's mixer on this build: alsa-lib's, or none without ALSA.
pub fn system_mixer() -> Box<dyn Mixer> {
    #[cfg(feature = "alsa-backend")]
    {
        Box::new(AlsaMixer)
    }
    #[cfg(not(feature = "alsa-backend"))]
    {
        Box::new(NoMixer)
    }
}

/// No mixer: every card gets the software gain.
pub struct NoMixer;

impl Mixer for NoMixer {
    fn set_capture(&mut self, _: &str, _: Level) -> Result<Applied, MixerError> {
        Ok(Applied::NoControl)
    }
}

/// Control names that carry a card's main capture level, best first.
const PREFERRED: [&str; 5] = ["Capture", "Mic", "Line", "Mic Capture", "Line Capture"];

/// Of the controls with a capture volume, the one to set.
pub fn pick_control<'a>(names: &[&'a str]) -> Option<&'a str> {
    PREFERRED
        .iter()
        .find_map(|p| names.iter().find(|n| n.eq_ignore_ascii_case(p)).copied())
        .or_else(|| names.first().copied())
}

/// The value to set on a control with range `min..=max` for `percent`.
pub fn percent_to_raw(percent: f64, min: i64, max: i64) -> i64 {
    let span = (max - min) as f64;
    min + (span * percent.clamp(0.0, 100.0) / 100.0).round() as i64
}

/// alsa-lib's simple mixer interface.
#[cfg(feature = "alsa-backend")]
pub struct AlsaMixer;

#[cfg(feature = "alsa-backend")]
impl Mixer for AlsaMixer {
    fn set_capture(&mut self, card: &str, level: Level) -> Result<Applied, MixerError> {
        use alsa::Round;
        use alsa::mixer::{MilliBel, Mixer as AMixer, Selem, SelemChannelId};

        let ctl = if card.chars().all(|c| c.is_ascii_digit()) {
            format!("hw:{card}")
        } else {
            format!("hw:CARD={card}")
        };
        let open = |e: alsa::Error| MixerError::Open {
            card: card.to_string(),
            reason: e.to_string(),
        };
        let mixer = AMixer::new(&ctl, false).map_err(open)?;
        let selems: Vec<Selem> = mixer.iter().filter_map(Selem::new).collect();
        let names: Vec<String> = selems
            .iter()
            .map(|s| s.get_id().get_name().unwrap_or_default().to_string())
            .collect();
        // Switches first: a muted capture is the commonest "no sound".
        if level != Level::Keep {
            for s in selems.iter().filter(|s| s.has_capture_switch()) {
                let _ = s.set_capture_switch_all(1);
            }
        }
        let with_volume: Vec<&str> = selems
            .iter()
            .zip(&names)
            .filter(|(s, _)| s.has_capture_volume())
            .map(|(_, n)| n.as_str())
            .collect();
        let Some(control) = pick_control(&with_volume) else {
            return Ok(Applied::NoControl);
        };
        let Some(selem) = selems
            .iter()
            .zip(&names)
            .find(|(_, n)| n.as_str() == control)
            .map(|(s, _)| s)
        else {
            return Ok(Applied::NoControl);
        };
        let refused = |value: String, e: alsa::Error| MixerError::Refused {
            card: card.to_string(),
            control: control.to_string(),
            value,
            reason: e.to_string(),
        };
        let (vmin, vmax) = selem.get_capture_volume_range();
        let mut note = None;
        match level {
            Level::Keep => {}
            Level::Db(db) => {
                let (dmin, dmax) = selem.get_capture_db_range();
                if dmin >= dmax {
                    return Err(MixerError::NoDbScale {
                        card: card.to_string(),
                        control: control.to_string(),
                    });
                }
                let (lo, hi) = (dmin.to_db() as f64, dmax.to_db() as f64);
                let want = db.clamp(lo, hi);
                if want != db {
                    note = Some(format!(
                        "{control:?} on card {card:?} goes from {lo:+.1} to {hi:+.1} dB: {db:+.1} dB was set to {want:+.1} dB"
                    ));
                }
                let raw = selem
                    .ask_capture_db_vol(MilliBel::from_db(want as f32), Round::Floor)
                    .map_err(|e| refused(format!("{db:+.1} dB"), e))?;
                selem
                    .set_capture_volume_all(raw)
                    .map_err(|e| refused(format!("{db:+.1} dB"), e))?;
            }
            Level::Percent(p) => {
                selem
                    .set_capture_volume_all(percent_to_raw(p, vmin, vmax))
                    .map_err(|e| refused(format!("{p}%"), e))?;
            }
        }
        let ch = SelemChannelId::mono();
        let raw = selem.get_capture_volume(ch).unwrap_or(vmin);
        let (dmin, dmax) = selem.get_capture_db_range();
        let db = match selem.get_capture_vol_db(ch) {
            Ok(db) if dmin < dmax => Some((db.to_db() as f64, dmin.to_db() as f64, dmax.to_db() as f64)),
            _ => None,
        };
        let value = match db {
            Some((db, _, _)) => format!("{db:+.2} dB (volume {raw} of {vmin}..{vmax})"),
            None => format!("volume {raw} of {vmin}..{vmax}"),
        };
        Ok(Applied::Hardware {
            control: control.to_string(),
            value,
            db,
            note,
        })
    }
}

/// A mixer for tests: cards with or without a capture control, or one
/// that refuses; records what was asked, and keeps each control's level.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Clone, Default)]
pub struct FakeMixer {
    /// Cards that have a capture control, by id, with its dB range.
    pub controls: Vec<(String, f64, f64)>,
    /// Cards whose mixer refuses every value.
    pub refusing: Vec<String>,
    pub calls: Arc<Mutex<Vec<(String, Level)>>>,
    /// Each control's level now, in dB (0 until set).
    pub levels: Arc<Mutex<Vec<(String, f64)>>>,
}

#[cfg(any(test, feature = "test-hooks"))]
impl Mixer for FakeMixer {
    fn set_capture(&mut self, card: &str, level: Level) -> Result<Applied, MixerError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((card.to_string(), level));
        }
        if self.refusing.iter().any(|c| c == card) {
            return Err(MixerError::Refused {
                card: card.into(),
                control: "Mic".into(),
                value: level.to_string(),
                reason: "Invalid argument".into(),
            });
        }
        match self.controls.iter().find(|(c, _, _)| c == card) {
            Some((_, lo, hi)) => {
                let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
                let now = levels.iter().find(|(c, _)| c == card).map_or(0.0, |(_, d)| *d);
                let db = match level {
                    Level::Db(db) => db.clamp(*lo, *hi),
                    Level::Percent(p) => lo + (hi - lo) * p / 100.0,
                    Level::Keep => now,
                };
                levels.retain(|(c, _)| c != card);
                levels.push((card.to_string(), db));
                Ok(Applied::Hardware {
                    control: "Mic".into(),
                    value: format!("{db:+.2} dB"),
                    db: Some((db, *lo, *hi)),
                    note: None,
                })
            }
            None => Ok(Applied::NoControl),
        }
    }
}

/// A gain applied to the PCM itself, for cards with no capture control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftGain {
    db: f64,
    /// Amplitude factor in 1/65536ths.
    factor_q16: i64,
}

impl SoftGain {
    /// `None` for unity (0 dB): nothing to do.
    pub fn from_db(db: f64) -> Option<SoftGain> {
        if db == 0.0 {
            return None;
        }
        let factor = 10f64.powf(db / 20.0);
        Some(SoftGain {
            db,
            factor_q16: (factor * 65_536.0).round() as i64,
        })
    }

    pub fn db(&self) -> f64 {
        self.db
    }

    /// Scales every sample, saturating at full scale; returns how many
    /// samples were clipped.
    pub fn apply(&self, frame: &mut PcmFrame) -> u32 {
        let mut clipped = 0;
        for pair in frame.as_bytes_mut().chunks_exact_mut(2) {
            let s = i64::from(i16::from_le_bytes([pair[0], pair[1]]));
            let scaled = (s * self.factor_q16 + (1 << 15)) >> 16;
            let out = scaled.clamp(i64::from(i16::MIN), i64::from(i16::MAX));
            clipped += u32::from(out != scaled);
            pair.copy_from_slice(&(out as i16).to_le_bytes());
        }
        clipped
    }
}

/// Samples at full scale in a frame: what the converter clipped (or the
/// software gain saturated).
pub fn full_scale_samples(frame: &PcmFrame) -> u32 {
    frame
        .as_bytes()
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .filter(|&s| s == i16::MAX || s == i16::MIN)
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::PCM_FRAME_BYTES;

    #[test]
    fn levels_parse_with_their_units_and_ranges() {
        assert_eq!(Level::parse(""), Ok(Level::Keep));
        assert_eq!(Level::parse("  "), Ok(Level::Keep));
        assert_eq!(Level::parse("-6dB"), Ok(Level::Db(-6.0)));
        assert_eq!(Level::parse("+3.5 dB"), Ok(Level::Db(3.5)));
        assert_eq!(Level::parse("0 db"), Ok(Level::Db(0.0)));
        assert_eq!(Level::parse("75%"), Ok(Level::Percent(75.0)));
        assert_eq!(Level::parse("100 %"), Ok(Level::Percent(100.0)));
        for (bad, says) in [
            ("loud", "no unit"),
            ("12", "no unit"),
            ("x dB", "not a number"),
            ("-61dB", "out of range"),
            ("41 dB", "out of range"),
            ("101%", "out of range"),
            ("-1%", "out of range"),
        ] {
            let e = Level::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_percentage_maps_onto_the_controls_range() {
        assert_eq!(percent_to_raw(0.0, 0, 64), 0);
        assert_eq!(percent_to_raw(50.0, 0, 64), 32);
        assert_eq!(percent_to_raw(100.0, 0, 64), 64);
        assert_eq!(percent_to_raw(75.0, -20, 20), 10);
    }

    #[test]
    fn the_main_capture_control_is_preferred_by_name() {
        assert_eq!(pick_control(&["Auto Gain", "Mic"]), Some("Mic"));
        assert_eq!(pick_control(&["Digital", "Boost"]), Some("Digital"));
        assert_eq!(pick_control(&["Digital", "Capture", "Mic"]), Some("Capture"));
        assert_eq!(pick_control(&["Digital", "mic"]), Some("mic"));
        assert_eq!(pick_control(&[]), None);
    }

    fn frame_of(samples: &[i16]) -> PcmFrame {
        let mut bytes = vec![0u8; PCM_FRAME_BYTES];
        for (i, s) in samples.iter().enumerate() {
            bytes[2 * i..2 * i + 2].copy_from_slice(&s.to_le_bytes());
        }
        PcmFrame::from_bytes(&bytes).expect("frame")
    }

    #[test]
    fn software_gain_scales_and_saturates_without_wrapping() {
        let g = SoftGain::from_db(6.0206).expect("not unity"); // x2
        let mut f = frame_of(&[1000, -1000, 20_000, -20_000, 32_767, -32_768]);
        let clipped = g.apply(&mut f);
        let got: Vec<i16> = (0..6).map(|i| f.sample(i)).collect();
        assert_eq!(got, [2000, -2000, 32_767, -32_768, 32_767, -32_768]);
        assert_eq!(clipped, 4);
        assert_eq!(full_scale_samples(&f), 4);

        let half = SoftGain::from_db(-6.0206).expect("not unity");
        let mut f = frame_of(&[1000, -1000, 32_767]);
        assert_eq!(half.apply(&mut f), 0);
        assert_eq!((f.sample(0), f.sample(1), f.sample(2)), (500, -500, 16_384));
        assert!(SoftGain::from_db(0.0).is_none());
    }

    #[test]
    fn a_percentage_in_software_is_a_share_of_full_amplitude() {
        assert_eq!(Level::Percent(100.0).soft_db(), Some(0.0));
        let half = Level::Percent(50.0).soft_db().expect("db");
        assert!((half + 6.0206).abs() < 0.001, "{half}");
        assert_eq!(Level::Percent(0.0).soft_db(), Some(f64::NEG_INFINITY));
        let mute = SoftGain::from_db(f64::NEG_INFINITY).expect("gain");
        let mut f = frame_of(&[1000, -32_768]);
        mute.apply(&mut f);
        assert_eq!((f.sample(0), f.sample(1)), (0, 0));
        assert_eq!(Level::Keep.soft_db(), None);
    }

    #[test]
    fn the_fake_mixer_records_and_refuses_like_a_card() {
        let mut m = FakeMixer {
            controls: vec![("Device".into(), -20.0, 30.0)],
            refusing: vec!["Broken".into()],
            ..FakeMixer::default()
        };
        assert!(matches!(
            m.set_capture("Device", Level::Db(-6.0)),
            Ok(Applied::Hardware { .. })
        ));
        assert_eq!(m.set_capture("Dongle", Level::Db(6.0)), Ok(Applied::NoControl));
        let e = m.set_capture("Broken", Level::Percent(50.0)).expect_err("refuses");
        assert!(e.to_string().contains("refused"), "{e}");
        assert_eq!(m.calls.lock().expect("calls").len(), 3);
    }
}
