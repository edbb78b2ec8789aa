//! Program detection's cost on the capture thread: `cargo bench --bench
//! program`.
//!
//! Feeds `ProgramBoard::observe` (the lock, the floor's one-second blocks,
//! the threshold) a frame's level as the capture thread does, alternating
//! hum and a tone so the state changes, and prints the time per frame and
//! what that is as a share of one core at 41.7 frames a second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tower::audio::FRAME_DURATION;
use tower::audio::program::{ProgramBoard, ProgramConfig};

fn main() {
    let board = ProgramBoard::new(ProgramConfig {
        hold: Duration::from_secs(2),
        ..ProgramConfig::default()
    });
    let frames: u32 = 2_000_000;
    let mut at = Instant::now();
    let start = Instant::now();
    let mut changes = 0u32;
    for i in 0..frames {
        // 10 s of hum, then 10 s of tone, over and over.
        let level = if (i / 417) % 2 == 0 { -63.0 } else { -15.0 };
        changes += u32::from(board.observe(black_box(level), at).is_some());
        at += FRAME_DURATION;
    }
    let per_frame = start.elapsed().as_secs_f64() / f64::from(frames);
    let share = per_frame / FRAME_DURATION.as_secs_f64() * 100.0;
    println!(
        "program detection per 24 ms frame: {:.3} µs = {:.5} % of one core ({changes} changes in {} s of audio)",
        per_frame * 1e6,
        share,
        f64::from(frames) * FRAME_DURATION.as_secs_f64()
    );
}
