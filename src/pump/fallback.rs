//! Fallback source: what listeners hear when the input has been gone for
//! longer than the grace period [FB1]–[FB3].
//!
//! Owned and called by the pump thread only. Priority: a WAV file looped
//! seamlessly (at 48 kHz, or at 44.1 kHz resampled once to Tower's
//! 48 kHz when read), else a 440 Hz tone, else silence. The file is read once, at
//! start or when the owner changes the fallback (on the service's thread,
//! never the pump's); a file that cannot be used is logged once and
//! skipped. Filling a frame never fails and never allocates.

use std::f64::consts::TAU;
use std::path::Path;

use serde::Serialize;

use crate::audio::{CHANNELS, PCM_FRAME_BYTES, SAMPLE_RATE};

/// The tone's frequency.
pub const TONE_HZ: f64 = 440.0;
/// The tone's peak level: −14 dBFS, clearly audible, not loud.
pub const TONE_AMPLITUDE: f64 = 0.2;
/// Longest WAV accepted (kept in memory): 60 s is 11 MB.
pub const MAX_WAV_SECONDS: u32 = 60;

/// Which source the fallback plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackKind {
    Wav,
    Tone,
    Silence,
}

impl FallbackKind {
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => FallbackKind::Wav,
            1 => FallbackKind::Tone,
            _ => FallbackKind::Silence,
        }
    }
}

/// Why a fallback WAV file was not used.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("cannot read fallback WAV {path}: {source}")]
    Read { path: String, source: hound::Error },
    #[error(
        "fallback WAV {path} is {found}; it must be 16-bit integer PCM at 48000 or 44100 Hz, mono or stereo (convert it with: ffmpeg -i IN -ar 48000 -ac 2 -c:a pcm_s16le OUT.wav)"
    )]
    Format { path: String, found: String },
    #[error("fallback WAV {path} is longer than {MAX_WAV_SECONDS} s; trim it (it is held in memory)")]
    TooLong { path: String },
    #[error("fallback WAV {path} contains no audio")]
    Empty { path: String },
}

/// Interleaved s16le stereo bytes, played from `pos` and wrapping
/// around; empty for silence.
struct Loop {
    pcm: Vec<u8>,
    pos: usize,
}

pub struct Fallback {
    kind: FallbackKind,
    source: Loop,
}

impl Fallback {
    /// Builds the fallback from the configured WAV path (if any) and whether
    /// the tone is enabled. A WAV that cannot be used is logged once here.
    pub fn new(wav_path: Option<&Path>, tone: bool) -> Self {
        Fallback::build(wav_path, tone).0
    }

    /// Like [`Fallback::new`], also telling why the WAV was not used.
    pub fn build(wav_path: Option<&Path>, tone: bool) -> (Self, Option<WavError>) {
        if let Some(path) = wav_path {
            match load_wav(path) {
                Ok(pcm) => {
                    tracing::info!(component = "fallback", path = %path.display(), seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE) / 4.0, "fallback source: looping WAV file");
                    return (Fallback::looping(FallbackKind::Wav, pcm), None);
                }
                Err(e) => {
                    tracing::error!(component = "fallback", "{e}; using the next fallback source");
                    let next = if tone { Fallback::tone() } else { Fallback::silence() };
                    return (next, Some(e));
                }
            }
        }
        (if tone { Fallback::tone() } else { Fallback::silence() }, None)
    }

    /// The tone, computed once: [`tone_period`] samples hold a whole number
    /// of cycles, so looping them is seamless [FB3], and each frame is a
    /// copy instead of 1 152 sines (a fifth of the pump's idle CPU).
    pub fn tone() -> Self {
        let step = TAU * TONE_HZ / f64::from(SAMPLE_RATE);
        let pcm = (0..tone_period())
            .flat_map(|n| {
                let v = ((n as f64 * step).sin() * TONE_AMPLITUDE * f64::from(i16::MAX)).round() as i16;
                std::iter::repeat_n(v.to_le_bytes(), CHANNELS)
            })
            .flatten()
            .collect();
        Fallback::looping(FallbackKind::Tone, pcm)
    }

    pub fn silence() -> Self {
        Fallback::looping(FallbackKind::Silence, Vec::new())
    }

    fn looping(kind: FallbackKind, pcm: Vec<u8>) -> Self {
        Fallback {
            kind,
            source: Loop { pcm, pos: 0 },
        }
    }

    pub fn kind(&self) -> FallbackKind {
        self.kind
    }

    /// Writes the next 24 ms of fallback audio into `out` [FB1].
    pub fn fill(&mut self, out: &mut [u8; PCM_FRAME_BYTES]) {
        let Loop { pcm, pos } = &mut self.source;
        if pcm.is_empty() {
            out.fill(0);
            return;
        }
        let mut written = 0;
        while written < out.len() {
            let n = (out.len() - written).min(pcm.len() - *pos);
            out[written..written + n].copy_from_slice(&pcm[*pos..*pos + n]);
            written += n;
            *pos = (*pos + n) % pcm.len();
        }
    }
}

/// Samples in which the tone completes a whole number of cycles: 1 200
/// (11 cycles of 440 Hz at 48 kHz).
fn tone_period() -> usize {
    let gcd = |mut a: u32, mut b: u32| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (SAMPLE_RATE / gcd(TONE_HZ as u32, SAMPLE_RATE)) as usize
}

/// Reads a WAV into interleaved s16le stereo bytes, whole sample frames only.
fn load_wav(path: &Path) -> Result<Vec<u8>, WavError> {
    let shown = path.display().to_string();
    let mut reader = hound::WavReader::open(path).map_err(|source| WavError::Read {
        path: shown.clone(),
        source,
    })?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int
        || spec.bits_per_sample != 16
        || ![SAMPLE_RATE, CD_RATE].contains(&spec.sample_rate)
        || !(1..=2).contains(&spec.channels)
    {
        return Err(WavError::Format {
            path: shown,
            found: format!(
                "{}-bit {:?} at {} Hz with {} channel(s)",
                spec.bits_per_sample, spec.sample_format, spec.sample_rate, spec.channels
            ),
        });
    }
    let frames = reader.duration();
    if frames > MAX_WAV_SECONDS * spec.sample_rate {
        return Err(WavError::TooLong { path: shown });
    }
    let mut pcm = Vec::with_capacity(frames as usize * 4);
    let mono = spec.channels == 1;
    for sample in reader.samples::<i16>() {
        let s = sample.map_err(|source| WavError::Read {
            path: shown.clone(),
            source,
        })?;
        pcm.extend_from_slice(&s.to_le_bytes());
        if mono {
            pcm.extend_from_slice(&s.to_le_bytes());
        }
    }
    // Drop a trailing partial sample frame so the loop stays channel-aligned.
    pcm.truncate(pcm.len() - pcm.len() % (2 * CHANNELS));
    if pcm.is_empty() {
        return Err(WavError::Empty { path: shown });
    }
    if spec.sample_rate == CD_RATE {
        let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        return Ok(cd_to_48k(&samples).iter().flat_map(|s| s.to_le_bytes()).collect());
    }
    Ok(pcm)
}

/// The CD rate, which a fallback WAV may have too.
pub const CD_RATE: u32 = 44_100;
/// 44 100 Hz to 48 000 Hz is 147 input samples to 160 output samples.
const UP: usize = 160;
const DOWN: usize = 147;
/// Input samples each side of an output sample.
const HALF_TAPS: usize = 16;

/// Interleaved stereo at 44.1 kHz, resampled to 48 kHz as a loop: each
/// output sample is a Blackman-windowed sinc over the 32 nearest input
/// samples, read around the end of the loop, so the resampled loop joins
/// as seamlessly as the file did. Run once, when the WAV is read.
pub fn cd_to_48k(interleaved: &[i16]) -> Vec<i16> {
    let frames = interleaved.len() / CHANNELS;
    if frames == 0 {
        return Vec::new();
    }
    // One set of weights per output phase (160 of them).
    let cutoff = 0.95;
    let width = 2.0 * HALF_TAPS as f64;
    let weights: Vec<[f64; 2 * HALF_TAPS]> = (0..UP)
        .map(|phase| {
            let frac = phase as f64 / UP as f64;
            let mut w = [0.0; 2 * HALF_TAPS];
            for (i, slot) in w.iter_mut().enumerate() {
                // Input sample floor(t) - HALF_TAPS + 1 + i, at distance x.
                let x = (i as f64 - (HALF_TAPS as f64 - 1.0)) - frac;
                let sinc = if x.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
                };
                let n = (x + HALF_TAPS as f64) / width;
                let window = 0.42 - 0.5 * (TAU * n).cos() + 0.08 * (2.0 * TAU * n).cos();
                *slot = sinc * window;
            }
            let sum: f64 = w.iter().sum();
            w.map(|v| v / sum)
        })
        .collect();
    let out_frames = (frames * UP).div_ceil(DOWN);
    let mut out = Vec::with_capacity(out_frames * CHANNELS);
    for n in 0..out_frames {
        let pos = n * DOWN;
        let (base, phase) = (pos / UP, pos % UP);
        let first = base + frames - (HALF_TAPS - 1);
        for ch in 0..CHANNELS {
            let acc: f64 = weights[phase]
                .iter()
                .enumerate()
                .map(|(i, w)| w * f64::from(interleaved[((first + i) % frames) * CHANNELS + ch]))
                .sum();
            out.push(acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(frame: &[u8; PCM_FRAME_BYTES]) -> Vec<i16> {
        frame
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    fn next(f: &mut Fallback) -> Vec<i16> {
        let mut buf = [0u8; PCM_FRAME_BYTES];
        f.fill(&mut buf);
        samples(&buf)
    }

    #[test]
    fn tone_is_440_hz_at_a_moderate_level_on_both_channels() {
        let mut f = Fallback::tone();
        assert_eq!(f.kind(), FallbackKind::Tone);
        // One second of audio: left channel only.
        let left: Vec<i16> = (0..1000 / 24 + 1)
            .flat_map(|_| next(&mut f))
            .step_by(2)
            .take(SAMPLE_RATE as usize)
            .collect();
        let crossings = left.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!((878..=882).contains(&crossings), "{crossings} zero crossings in 1 s");
        let peak = left.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        let expected = (TONE_AMPLITUDE * f64::from(i16::MAX)) as u16;
        assert!(peak.abs_diff(expected) <= 2, "peak {peak}, expected {expected}");
        let mut f = Fallback::tone();
        let frame = next(&mut f);
        assert!(frame.chunks_exact(2).all(|lr| lr[0] == lr[1]));
    }

    #[test]
    fn tone_frames_join_without_a_click() {
        // The largest step between neighbouring samples of a 440 Hz sine at
        // this level is 2*pi*440/48000 * amplitude; a phase reset at a frame
        // boundary would jump far more.
        let max_step = TAU * TONE_HZ / f64::from(SAMPLE_RATE) * TONE_AMPLITUDE * f64::from(i16::MAX) + 2.0;
        // 200 frames cross the computed loop's end (1 200 samples) 192 times.
        assert_eq!(tone_period(), 1_200);
        let mut f = Fallback::tone();
        let mut previous: Option<i16> = None;
        for _ in 0..200 {
            let frame = next(&mut f);
            for left in frame.iter().step_by(2) {
                if let Some(p) = previous {
                    let step = f64::from((i32::from(*left) - i32::from(p)).abs());
                    assert!(step <= max_step, "jump of {step} between samples");
                }
                previous = Some(*left);
            }
        }
    }

    #[test]
    fn silence_is_all_zero() {
        let mut f = Fallback::silence();
        assert!(next(&mut f).iter().all(|&s| s == 0));
        assert_eq!(Fallback::new(None, false).kind(), FallbackKind::Silence);
        assert_eq!(Fallback::new(None, true).kind(), FallbackKind::Tone);
    }

    fn write_wav(path: &Path, rate: u32, channels: u16, bits: u16, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).expect("create wav");
        for s in samples {
            if bits == 16 {
                w.write_sample(*s).expect("write");
            } else {
                w.write_sample(i32::from(*s)).expect("write");
            }
        }
        w.finalize().expect("finalize");
    }

    #[test]
    fn wav_loops_seamlessly_across_frame_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("loop.wav");
        // 1000 stereo sample frames: not a multiple of 1152, so the loop
        // point falls inside frames.
        let wav: Vec<i16> = (0..1000).flat_map(|i| [i as i16, -(i as i16)]).collect();
        write_wav(&path, SAMPLE_RATE, 2, 16, &wav);
        let mut f = Fallback::new(Some(&path), true);
        assert_eq!(f.kind(), FallbackKind::Wav);
        let played: Vec<i16> = (0..5).flat_map(|_| next(&mut f)).collect();
        let expected: Vec<i16> = wav.iter().copied().cycle().take(played.len()).collect();
        assert_eq!(played, expected);
    }

    #[test]
    fn a_44_1_khz_wav_is_resampled_to_48_khz_keeping_its_pitch_and_its_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cd.wav");
        // 1 s of 1 kHz at 44.1 kHz: a whole number of cycles, so it loops.
        let wav: Vec<i16> = (0..CD_RATE)
            .flat_map(|i| {
                let v = ((TAU * 1000.0 * f64::from(i) / f64::from(CD_RATE)).sin() * 10_000.0) as i16;
                [v, v / 2]
            })
            .collect();
        write_wav(&path, CD_RATE, 2, 16, &wav);
        let mut f = Fallback::new(Some(&path), true);
        assert_eq!(f.kind(), FallbackKind::Wav);
        // Two seconds: through the loop point. Every sample is where a
        // 1 kHz sine at 48 kHz would be, to within a few LSB of 10 000.
        let played: Vec<i16> = (0..84).flat_map(|_| next(&mut f)).collect();
        assert_eq!(played.len(), 84 * 1152 * 2);
        let (mut worst, mut peak) = (0.0f64, 0i16);
        for (n, pair) in played.chunks_exact(2).enumerate() {
            let want = (TAU * 1000.0 * n as f64 / f64::from(SAMPLE_RATE)).sin() * 10_000.0;
            worst = worst.max((f64::from(pair[0]) - want).abs());
            peak = peak.max(pair[0]);
            assert!(
                (i32::from(pair[1]) - i32::from(pair[0]) / 2).abs() <= 40,
                "channels kept apart at {n}"
            );
        }
        assert!(worst < 40.0, "off by {worst}");
        assert!(peak > 9_900, "{peak}");
    }

    #[test]
    fn mono_wav_is_played_on_both_channels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mono.wav");
        write_wav(&path, SAMPLE_RATE, 1, 16, &[5, 6, 7]);
        let mut f = Fallback::new(Some(&path), true);
        assert_eq!(&next(&mut f)[..8], &[5, 5, 6, 6, 7, 7, 5, 5]);
    }

    #[test]
    fn unusable_wav_files_fall_back_to_the_tone_or_silence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wrong_rate = dir.path().join("32k.wav");
        write_wav(&wrong_rate, 32_000, 2, 16, &[1, 2, 3, 4]);
        let wrong_bits = dir.path().join("24bit.wav");
        write_wav(&wrong_bits, SAMPLE_RATE, 2, 24, &[1, 2, 3, 4]);
        let empty = dir.path().join("empty.wav");
        write_wav(&empty, SAMPLE_RATE, 2, 16, &[]);
        let garbage = dir.path().join("garbage.wav");
        std::fs::write(&garbage, b"not a wav file").expect("write");
        let missing = dir.path().join("missing.wav");
        for path in [&wrong_rate, &wrong_bits, &empty, &garbage, &missing] {
            assert_eq!(Fallback::new(Some(path), true).kind(), FallbackKind::Tone, "{path:?}");
            assert_eq!(
                Fallback::new(Some(path), false).kind(),
                FallbackKind::Silence,
                "{path:?}"
            );
        }
        assert!(matches!(load_wav(&wrong_rate), Err(WavError::Format { .. })));
        assert!(matches!(load_wav(&empty), Err(WavError::Empty { .. })));
        assert!(matches!(load_wav(&missing), Err(WavError::Read { .. })));
    }
}
