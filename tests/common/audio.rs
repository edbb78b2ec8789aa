//! What a listener hears: MP3 frames decoded with symphonia, and a Goertzel
//! filter to tell a 440 Hz tone from a 1 kHz one from silence.

use symphonia::core::codecs::audio::well_known::CODEC_ID_MP3;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};
use symphonia::default::codecs::MpaDecoder;

/// Per-frame decoded audio.
pub struct Decoded {
    /// Interleaved f32 samples of each input frame (empty if it failed).
    pub frames: Vec<Vec<f32>>,
    pub channels: usize,
    pub sample_rate: u32,
    pub errors: usize,
}

/// Decodes whole MP3 frames in order with one decoder, keeping the audio
/// of each frame apart so it can be matched to when the frame arrived.
pub fn decode_frames(frames: &[&[u8]]) -> Decoded {
    let mut params = AudioCodecParameters::new();
    params.for_codec(CODEC_ID_MP3);
    let mut opts = AudioDecoderOptions::default();
    opts.gapless = false;
    let mut out = Decoded {
        frames: Vec::with_capacity(frames.len()),
        channels: 0,
        sample_rate: 0,
        errors: 0,
    };
    let Ok(mut decoder) = MpaDecoder::try_new(&params, &opts) else {
        out.errors = frames.len();
        return out;
    };
    for (i, f) in frames.iter().enumerate() {
        let packet = PacketRef::new(0, Timestamp::new(i as i64 * 1152), Duration::new(1152), f);
        match decoder.decode_ref(&packet) {
            Ok(buf) => {
                if out.channels == 0 {
                    out.channels = buf.spec().channels().count();
                    out.sample_rate = buf.spec().rate();
                }
                let mut samples = Vec::new();
                buf.copy_to_vec_interleaved(&mut samples);
                out.frames.push(samples);
            }
            Err(_) => {
                out.errors += 1;
                out.frames.push(Vec::new());
            }
        }
    }
    out
}

/// The first channel of interleaved samples.
pub fn mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    interleaved.iter().step_by(channels.max(1)).copied().collect()
}

/// Goertzel power at `freq` over the total power of `samples`: a pure tone
/// at `freq` gives about 1.0, silence 0.0, another frequency near 0.0.
///
/// Precisely: `2 |X(freq)|² / (N Σ x²)`, where `X` is the Goertzel output
/// (the DFT at `freq`, not necessarily on a bin), which is 1 for a sine of
/// any amplitude at exactly `freq` over a whole number of periods.
pub fn tone_ratio(samples: &[f32], sample_rate: u32, freq: f64) -> f64 {
    let n = samples.len();
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    if n == 0 || energy <= 1e-12 {
        return 0.0;
    }
    let w = std::f64::consts::TAU * freq / f64::from(sample_rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    (2.0 * power / (n as f64 * energy)).min(1.0)
}

/// RMS level in dBFS (full scale 1.0); silence gives −∞.
pub fn dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let ms: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64;
    10.0 * ms.log10()
}

#[cfg(test)]
mod tests {
    fn sine(freq: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (std::f64::consts::TAU * freq * i as f64 / 48_000.0).sin() as f32 * 0.3)
            .collect()
    }

    #[test]
    fn goertzel_tells_tones_apart() {
        let a = sine(440.0, 4800);
        let k = sine(1000.0, 4800);
        assert!(super::tone_ratio(&a, 48_000, 440.0) > 0.99);
        assert!(super::tone_ratio(&a, 48_000, 1000.0) < 0.01);
        assert!(super::tone_ratio(&k, 48_000, 1000.0) > 0.99);
        assert!(super::tone_ratio(&k, 48_000, 440.0) < 0.01);
        assert_eq!(super::tone_ratio(&[0.0; 4800], 48_000, 440.0), 0.0);
        assert_eq!(super::dbfs(&[0.0; 10]), f64::NEG_INFINITY);
    }

    #[test]
    fn the_silent_frame_decodes_to_zeros() {
        let mut f = vec![0u8; 384];
        f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0x00]);
        let d = super::decode_frames(&[&f, &f]);
        assert_eq!(d.errors, 0);
        assert_eq!((d.channels, d.sample_rate), (2, 48_000));
        assert_eq!(d.frames[1].len(), 2304);
        assert!(d.frames.iter().flatten().all(|&s| s == 0.0));
    }
}
