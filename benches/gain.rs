//! The software capture gain's cost: `cargo bench --bench gain`.
//!
//! Applies `SoftGain` (+6 dB, so some samples saturate) to 4608-byte
//! frames of a tone and prints the time per frame and what that is as a
//! share of one core at the stream's 41.7 frames a second (48 kHz stereo),
//! beside the full-scale scan every frame gets when no gain is set.

use std::hint::black_box;
use std::time::Instant;

use tower::audio::mixer::{SoftGain, full_scale_samples};
use tower::audio::{FRAME_DURATION, FRAME_SAMPLES, PCM_FRAME_BYTES, PcmFrame};

fn tone_frame() -> PcmFrame {
    let mut bytes = vec![0u8; PCM_FRAME_BYTES];
    for i in 0..FRAME_SAMPLES {
        let v = ((std::f64::consts::TAU * 1000.0 * i as f64 / 48_000.0).sin() * 0.7 * 32767.0) as i16;
        bytes[4 * i..4 * i + 2].copy_from_slice(&v.to_le_bytes());
        bytes[4 * i + 2..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    PcmFrame::from_bytes(&bytes).expect("frame")
}

fn per_frame(mut f: impl FnMut() -> u32) -> f64 {
    let frames = 200_000;
    for _ in 0..1_000 {
        black_box(f());
    }
    let start = Instant::now();
    for _ in 0..frames {
        black_box(f());
    }
    start.elapsed().as_secs_f64() / f64::from(frames)
}

fn main() {
    let source = tone_frame();
    let gain = SoftGain::from_db(6.0).expect("a gain");
    let mut frame = source.clone();
    let gained = per_frame(|| {
        frame.as_bytes_mut().copy_from_slice(source.as_bytes());
        gain.apply(&mut frame)
    });
    let copy_only = per_frame(|| {
        frame.as_bytes_mut().copy_from_slice(source.as_bytes());
        u32::from(frame.as_bytes()[0])
    });
    let scan = per_frame(|| full_scale_samples(black_box(&source)));
    let per_second = 1.0 / FRAME_DURATION.as_secs_f64();
    let share = |t: f64| t * per_second * 100.0;
    let gain_only = (gained - copy_only).max(0.0);
    println!(
        "software gain (+6 dB, saturating), per 24 ms frame: {:.2} µs = {:.4} % of one core",
        gain_only * 1e6,
        share(gain_only)
    );
    println!(
        "full-scale scan without a gain, per frame:          {:.2} µs = {:.4} % of one core",
        scan * 1e6,
        share(scan)
    );
}
