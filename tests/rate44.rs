//! `mp3.sample_rate = 44100`: Tower's pipeline stays at 48 kHz and ffmpeg
//! resamples at its output, so MP3 frames are 1152 samples at 44.1 kHz
//! (26.12 ms). Proved with a real decoder (symphonia: the rate, the
//! 440 Hz fallback tone at 440 Hz, and frames at their real duration with
//! no drift and no silence inserted over a minute) and real players
//! (ffprobe, mpv, ffmpeg).

mod common;

use std::time::{Duration, Instant};

use common::audio::decode_frames;
use common::{Listener, Tower, http_raw};

const AT_44K: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_test_no_such_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
    ("TOWER_MP3_SAMPLE_RATE", "44100"),
];

/// 1152 samples at 44.1 kHz.
const FRAME: Duration = Duration::from_nanos(26_122_449);

#[test]
fn at_44_1_khz_the_stream_decodes_at_44100_with_the_tone_right_and_no_drift_over_a_minute() {
    let tower = Tower::start(&[], AT_44K);
    let head = http_raw(tower.addr, "HEAD /stream.mp3 HTTP/1.0\r\n\r\n");
    assert_eq!(head.header("icy-sr").as_deref(), Some("44100"), "{}", head.head);
    let l = Listener::connect_to(tower.addr, "/stream.mp3");
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no 440 Hz tone");
    let encoder = |t: &Tower| {
        let e = t.status()["encoder"].clone();
        (e["silence_frames_out"].as_u64(), e["mp3_frames_trimmed"].as_u64())
    };
    let before = encoder(&tower);
    let first = l.frame_count();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let frames = l.frames();
    let minute = &frames[first..];
    assert_eq!(
        encoder(&tower),
        before,
        "silence inserted or frames trimmed during the minute"
    );

    // The decoder's view: 44.1 kHz, 1152 samples a frame, 440 Hz.
    let refs: Vec<&[u8]> = minute.iter().map(|a| &a.frame[..]).collect();
    let d = decode_frames(&refs);
    assert_eq!((d.errors, d.sample_rate, d.channels), (0, 44_100, 2));
    assert!(d.frames.iter().skip(1).all(|f| f.len() == 1152 * 2));
    let tone = common::tone_of(minute, 440.0);
    assert!(tone > 0.9, "440 Hz share {tone}");
    let off = common::tone_of(minute, 480.0);
    assert!(off < 0.1, "the tone is not at 440 Hz (480 Hz share {off})");

    // No drift: frames come at 26.12 ms each, so over the minute the
    // arrival of frame k stays where k frames of 26.12 ms put it (within
    // the encoder's jitter), and the count matches the time.
    let t0 = minute[0].at;
    let offsets: Vec<f64> = minute
        .iter()
        .enumerate()
        .map(|(k, a)| a.at.duration_since(t0).as_secs_f64() - k as f64 * FRAME.as_secs_f64())
        .collect();
    let n = offsets.len();
    let early: f64 = offsets[..n / 10].iter().sum::<f64>() / (n / 10) as f64;
    let late: f64 = offsets[n - n / 10..].iter().sum::<f64>() / (n / 10) as f64;
    let elapsed = minute[n - 1].at.duration_since(t0).as_secs_f64();
    println!(
        "figure: 44.1 kHz: {n} frames in {elapsed:.1} s ({:.2} a second, 38.28 expected); the arrival offset moved {:+.1} ms over the minute; 440 Hz share {tone:.3}",
        n as f64 / elapsed,
        (late - early) * 1000.0
    );
    assert!(
        (late - early).abs() < 0.05,
        "drift of {:.1} ms",
        (late - early) * 1000.0
    );
    let expected = elapsed / FRAME.as_secs_f64() + 1.0;
    assert!((n as f64 - expected).abs() < 5.0, "{n} frames, {expected:.0} expected");
    assert!(started.elapsed() >= Duration::from_secs(60));
}

#[test]
fn real_players_play_the_44_1_khz_stream() {
    let tower = Tower::start(&[], AT_44K);
    let url = format!("http://{}/stream.mp3", tower.addr);
    let (ok, text) = common::run_player(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "csv=p=0",
            &url,
        ],
    );
    assert!(ok, "ffprobe: {text}");
    assert_eq!(text.trim(), "mp3,44100,2");
    common::mpv_and_ffmpeg_play(&url);
}
