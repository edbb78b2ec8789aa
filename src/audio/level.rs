//! Input level metering and digital-silence detection.
//!
//! The capture thread feeds every live frame to a [`LevelMeter`], which
//! keeps peak and RMS per channel over the last [`WINDOW_FRAMES`] frames
//! (96 ms) and publishes them for `/status`, `/events` and `/metrics`.
//! A [`SilenceWatch`] tells a live input that carries only digital silence
//! (a muted mixer, the wrong input selected) from one that carries sound:
//! it is reported, never switched to the fallback, because silence may be
//! what the owner wants to broadcast.
//!
//! A [`LevelAdvisor`] turns the readings into a plain hint for the owner
//! when the level is far off: peaks below [`QUIET_BELOW_DBFS`] for
//! [`QUIET_AFTER`] ("raise the gain by about N dB"), or clipping in the
//! last [`CLIP_MEMORY`] ("lower it").
//!
//! Levels are in dBFS against a full-scale square wave: a full-scale sine
//! reads 0 dBFS peak and −3 dBFS RMS. Zero reads [`FLOOR_DBFS`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CHANNELS, PcmFrame};

/// Frames in the metering window: 4 × 24 ms ≈ 100 ms.
pub const WINDOW_FRAMES: usize = 4;
/// What silence reads (JSON has no −∞).
pub const FLOOR_DBFS: f32 = -120.0;
/// A sample this small or smaller counts as digital silence (±1 LSB of
/// converter noise on a muted input).
pub const SILENT_SAMPLE: i32 = 1;
/// Readings older than this mean no input is being measured.
const STALE_AFTER: Duration = Duration::from_millis(250);

/// Peak and sum of squares of one frame, per channel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct FrameLevel {
    peak: [i32; CHANNELS],
    sum_sq: [f64; CHANNELS],
}

fn frame_level(frame: &PcmFrame) -> FrameLevel {
    let mut level = FrameLevel::default();
    for (i, pair) in frame.as_bytes().chunks_exact(2).enumerate() {
        let v = i32::from(i16::from_le_bytes([pair[0], pair[1]]));
        let ch = i % CHANNELS;
        level.peak[ch] = level.peak[ch].max(v.abs());
        level.sum_sq[ch] += f64::from(v) * f64::from(v);
    }
    level
}

/// `value` (0..=1 of full scale) in dBFS, floored.
pub fn dbfs(value: f64) -> f32 {
    if value <= 0.0 {
        return FLOOR_DBFS;
    }
    ((20.0 * value.log10()) as f32).max(FLOOR_DBFS)
}

/// Peak and RMS per channel, in dBFS.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Levels {
    pub peak_dbfs: [f32; CHANNELS],
    pub rms_dbfs: [f32; CHANNELS],
}

impl Levels {
    pub const SILENT: Levels = Levels {
        peak_dbfs: [FLOOR_DBFS; CHANNELS],
        rms_dbfs: [FLOOR_DBFS; CHANNELS],
    };
}

/// Peak and RMS over a sliding window of frames.
#[derive(Debug, Default)]
pub struct LevelMeter {
    window: [FrameLevel; WINDOW_FRAMES],
    next: usize,
    filled: usize,
}

impl LevelMeter {
    /// Adds a frame; returns the levels over the window ending with it, and
    /// whether this frame was digital silence.
    pub fn add(&mut self, frame: &PcmFrame) -> (Levels, bool) {
        let level = frame_level(frame);
        self.window[self.next] = level;
        self.next = (self.next + 1) % WINDOW_FRAMES;
        self.filled = (self.filled + 1).min(WINDOW_FRAMES);
        let silent = level.peak.iter().all(|&p| p <= SILENT_SAMPLE);
        (self.levels(), silent)
    }

    fn levels(&self) -> Levels {
        let frames = &self.window[..self.filled];
        let samples = (frames.len() * super::FRAME_SAMPLES) as f64;
        let full = f64::from(i16::MAX) + 1.0;
        let mut out = Levels::SILENT;
        for ch in 0..CHANNELS {
            let peak = frames.iter().map(|f| f.peak[ch]).max().unwrap_or(0);
            let sum: f64 = frames.iter().map(|f| f.sum_sq[ch]).sum();
            out.peak_dbfs[ch] = dbfs(f64::from(peak) / full);
            out.rms_dbfs[ch] = if samples > 0.0 {
                dbfs((sum / samples).sqrt() / full)
            } else {
                FLOOR_DBFS
            };
        }
        out
    }

    /// Forgets the window (the input went away; the next frames are new).
    pub fn reset(&mut self) {
        *self = LevelMeter::default();
    }
}

/// What [`SilenceWatch::observe`] has to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SilenceEvent {
    /// Digital silence has lasted the warning time.
    Began,
    /// Sound is back after a reported silence that lasted this long.
    Ended(Duration),
}

/// Tracks runs of digital silence on a live input.
#[derive(Debug)]
pub struct SilenceWatch {
    warn_after: Duration,
    since: Option<Instant>,
    reported: bool,
}

impl SilenceWatch {
    /// How long a run of silence lasts before it is reported.
    pub fn threshold(&self) -> Duration {
        self.warn_after
    }

    /// Warns once a run reaches `warn_after`; zero never warns.
    pub fn new(warn_after: Duration) -> Self {
        SilenceWatch {
            warn_after,
            since: None,
            reported: false,
        }
    }

    /// Records whether the frame captured at `now` was silent.
    pub fn observe(&mut self, silent: bool, now: Instant) -> Option<SilenceEvent> {
        if !silent {
            let ended = self.since.take().filter(|_| self.reported);
            self.reported = false;
            return ended.map(|s| SilenceEvent::Ended(now.saturating_duration_since(s)));
        }
        let since = *self.since.get_or_insert(now);
        if !self.reported && !self.warn_after.is_zero() && now.saturating_duration_since(since) >= self.warn_after {
            self.reported = true;
            return Some(SilenceEvent::Began);
        }
        None
    }

    /// How long the current run of silence has lasted (zero if none).
    pub fn silent_for(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The input went away: a silent run does not continue across it.
    pub fn reset(&mut self) {
        self.since = None;
        self.reported = false;
    }
}

/// The latest reading, shared between the capture thread and readers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LevelReading {
    #[serde(flatten)]
    pub levels: Levels,
    /// Length of the current run of digital silence on the live input.
    pub silent_for_s: f64,
}

/// Published levels: written by the capture thread once a frame, read by
/// status requests (a short uncontended lock on both sides).
#[derive(Debug, Default)]
pub struct LevelBoard {
    latest: Mutex<Option<(Instant, LevelReading)>>,
}

impl LevelBoard {
    pub fn publish(&self, reading: LevelReading, now: Instant) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, reading));
    }

    /// The reading, or silence if nothing was measured in the last 250 ms.
    pub fn read(&self, now: Instant) -> LevelReading {
        let latest = *self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match latest {
            Some((at, reading)) if now.saturating_duration_since(at) <= STALE_AFTER => reading,
            _ => LevelReading {
                levels: Levels::SILENT,
                silent_for_s: 0.0,
            },
        }
    }
}

/// A live input whose peaks stay below this is too quiet...
pub const QUIET_BELOW_DBFS: f32 = -30.0;
/// ...when it stays there this long.
pub const QUIET_AFTER: Duration = Duration::from_secs(120);
/// Where the hint aims the peaks: loud, with room for surprises.
pub const TARGET_PEAK_DBFS: f32 = -6.0;
/// Clipping is reported until this long after the last clipped sample.
pub const CLIP_MEMORY: Duration = Duration::from_secs(60);

/// What the owner should do about the level, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Peaks stayed below [`QUIET_BELOW_DBFS`]: raise by about this many dB.
    Raise { db: u32, loudest_dbfs: i32, minutes: u32 },
    /// Samples hit full scale within [`CLIP_MEMORY`].
    Lower,
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hint::Raise {
                db,
                loudest_dbfs,
                minutes,
            } => write!(
                f,
                "the input is quiet (peaks at most {loudest_dbfs} dBFS for {minutes} min): \
                 raise the gain by about {db} dB in tower.toml (capture.level), or turn the source up"
            ),
            Hint::Lower => f.write_str(
                "the input clips (samples at full scale in the last minute): \
                 lower the gain by about 6 dB in tower.toml (capture.level), or turn the source down",
            ),
        }
    }
}

/// Watches the live level for a hint; time is passed in.
#[derive(Debug, Clone, Default)]
pub struct LevelAdvisor {
    /// Since when every peak stayed below the quiet threshold, and the
    /// loudest peak since.
    quiet: Option<(Instant, f32)>,
    last_clip: Option<Instant>,
}

impl LevelAdvisor {
    /// One live frame: the metered peak (dBFS, loudest channel), whether
    /// it was digital silence (reported on its own, not a level problem),
    /// and how many samples clipped.
    pub fn observe(&mut self, peak_dbfs: f32, silent: bool, clipped: u32, now: Instant) {
        if clipped > 0 {
            self.last_clip = Some(now);
        }
        if silent {
            return;
        }
        if peak_dbfs >= QUIET_BELOW_DBFS {
            self.quiet = None;
        } else {
            match &mut self.quiet {
                Some((_, loudest)) => *loudest = loudest.max(peak_dbfs),
                None => self.quiet = Some((now, peak_dbfs)),
            }
        }
    }

    pub fn hint(&self, now: Instant) -> Option<Hint> {
        if let Some(at) = self.last_clip
            && now.saturating_duration_since(at) < CLIP_MEMORY
        {
            return Some(Hint::Lower);
        }
        let (since, loudest) = self.quiet?;
        let quiet_for = now.saturating_duration_since(since);
        (quiet_for >= QUIET_AFTER).then(|| Hint::Raise {
            db: (TARGET_PEAK_DBFS - loudest).round().max(1.0) as u32,
            loudest_dbfs: loudest.round() as i32,
            minutes: (quiet_for.as_secs() / 60) as u32,
        })
    }

    /// The input went away: what comes back is judged afresh.
    pub fn reset(&mut self) {
        *self = LevelAdvisor::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::FRAME_SAMPLES;

    fn frame(left: impl Fn(usize) -> i16, right: impl Fn(usize) -> i16) -> PcmFrame {
        let mut f = PcmFrame::silent();
        for i in 0..FRAME_SAMPLES {
            let b = f.as_bytes_mut();
            b[i * 4..i * 4 + 2].copy_from_slice(&left(i).to_le_bytes());
            b[i * 4 + 2..i * 4 + 4].copy_from_slice(&right(i).to_le_bytes());
        }
        f
    }

    fn sine(amplitude: f64) -> impl Fn(usize) -> i16 {
        move |i| ((std::f64::consts::TAU * 1000.0 * i as f64 / 48_000.0).sin() * amplitude * 32767.0).round() as i16
    }

    #[test]
    fn a_sine_reads_its_peak_and_3_db_less_rms_per_channel() {
        let mut m = LevelMeter::default();
        let (levels, silent) = m.add(&frame(sine(0.5), |_| 0));
        assert!(!silent);
        assert!((levels.peak_dbfs[0] - -6.02).abs() < 0.1, "{levels:?}");
        assert!((levels.rms_dbfs[0] - -9.03).abs() < 0.1, "{levels:?}");
        assert_eq!(levels.peak_dbfs[1], FLOOR_DBFS);
        assert_eq!(levels.rms_dbfs[1], FLOOR_DBFS);
    }

    #[test]
    fn the_window_forgets_after_four_frames() {
        let mut m = LevelMeter::default();
        m.add(&frame(sine(1.0), sine(1.0)));
        let quiet = frame(sine(0.01), sine(0.01));
        for _ in 0..3 {
            let (l, _) = m.add(&quiet);
            assert!(l.peak_dbfs[0] > -1.0, "the loud frame is still in the window");
        }
        let (l, _) = m.add(&quiet);
        assert!((l.peak_dbfs[0] - -40.0).abs() < 0.2, "{l:?}");
        m.reset();
        let (l, _) = m.add(&PcmFrame::silent());
        assert_eq!(l, Levels::SILENT);
    }

    #[test]
    fn one_lsb_of_noise_is_still_digital_silence() {
        let mut m = LevelMeter::default();
        let (_, silent) = m.add(&frame(|i| if i % 2 == 0 { 1 } else { -1 }, |_| 0));
        assert!(silent);
        let (_, silent) = m.add(&frame(|_| 2, |_| 0));
        assert!(!silent);
    }

    #[test]
    fn silence_is_reported_once_after_the_warning_time_and_its_end_too() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = SilenceWatch::new(Duration::from_secs(30));
        assert_eq!(w.observe(true, at(0)), None);
        assert_eq!(w.observe(true, at(29)), None);
        assert_eq!(w.observe(true, at(30)), Some(SilenceEvent::Began));
        assert_eq!(w.observe(true, at(100)), None, "once per run");
        assert_eq!(w.silent_for(at(100)), Duration::from_secs(100));
        assert_eq!(
            w.observe(false, at(101)),
            Some(SilenceEvent::Ended(Duration::from_secs(101)))
        );
        assert_eq!(w.silent_for(at(101)), Duration::ZERO);
        // A short pause is not worth a line, at either end.
        assert_eq!(w.observe(true, at(102)), None);
        assert_eq!(w.observe(false, at(110)), None);
        // Zero disables the warning.
        let mut off = SilenceWatch::new(Duration::ZERO);
        assert_eq!(off.observe(true, at(0)), None);
        assert_eq!(off.observe(true, at(1_000)), None);
    }

    #[test]
    fn a_stale_reading_reads_as_no_input() {
        let board = LevelBoard::default();
        let t0 = Instant::now();
        let reading = LevelReading {
            levels: Levels {
                peak_dbfs: [-6.0, -7.0],
                rms_dbfs: [-9.0, -10.0],
            },
            silent_for_s: 0.0,
        };
        assert_eq!(board.read(t0).levels, Levels::SILENT);
        board.publish(reading, t0);
        assert_eq!(board.read(t0 + Duration::from_millis(100)), reading);
        assert_eq!(board.read(t0 + Duration::from_secs(1)).levels, Levels::SILENT);
    }

    #[test]
    fn a_quiet_input_gets_a_hint_after_two_minutes_and_loses_it_when_loud() {
        let t0 = Instant::now();
        let mut a = LevelAdvisor::default();
        let mut at = t0;
        while at < t0 + Duration::from_secs(119) {
            a.observe(-42.4, false, 0, at);
            at += Duration::from_millis(24);
        }
        assert_eq!(a.hint(at), None, "not yet two minutes");
        a.observe(-40.0, false, 0, t0 + Duration::from_secs(121));
        let hint = a.hint(t0 + Duration::from_secs(121)).expect("hint");
        assert_eq!(
            hint,
            Hint::Raise {
                db: 34,
                loudest_dbfs: -40,
                minutes: 2
            }
        );
        assert!(hint.to_string().contains("raise the gain by about 34 dB"), "{hint}");
        // Digital silence is not a level problem: it neither clears nor feeds it.
        a.observe(FLOOR_DBFS, true, 0, t0 + Duration::from_secs(122));
        assert!(a.hint(t0 + Duration::from_secs(122)).is_some());
        a.observe(-12.0, false, 0, t0 + Duration::from_secs(123));
        assert_eq!(a.hint(t0 + Duration::from_secs(123)), None);
    }

    #[test]
    fn clipping_is_reported_for_a_minute_after_the_last_clipped_sample() {
        let t0 = Instant::now();
        let mut a = LevelAdvisor::default();
        a.observe(0.0, false, 3, t0);
        assert_eq!(a.hint(t0), Some(Hint::Lower));
        assert!(Hint::Lower.to_string().contains("lower the gain"));
        assert_eq!(a.hint(t0 + Duration::from_secs(59)), Some(Hint::Lower));
        assert_eq!(a.hint(t0 + Duration::from_secs(60)), None);
        a.reset();
        assert_eq!(a.hint(t0), None);
    }
}
