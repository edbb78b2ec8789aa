//! The encoder's cost per second of audio: Tower's default ffmpeg command
//! (`default_command("ffmpeg", 128)`, unchanged: it reads a WAV stream on
//! stdin, here a file of [`music_raw`] after Tower's header, and writes MP3
//! to stdout, here
//! /dev/null) run as fast as it goes, its user + system CPU taken from
//! `wait4`; then the same with libmp3lame's `-compression_level` (LAME's
//! `-q`) set. Best of [`RUNS`] each. One more run of each to a pipe gives
//! the output's bytes, and a crude quality figure: the output decoded
//! back by ffmpeg, aligned with the input (the codec's delay found by
//! cross-correlation) and compared sample by sample (SNR).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use tower::encoder::command::default_command;

/// Runs per setting; the best (least CPU) counts.
pub const RUNS: usize = 3;
/// `-compression_level` values tried besides ffmpeg's default (unset).
pub const LEVELS: [u8; 6] = [0, 2, 3, 5, 7, 9];
const RATE: usize = 48_000;

/// A deterministic xorshift generator: noise without a dependency.
struct Noise(u64);

impl Noise {
    /// Uniform in -1..1.
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Raw s16le stereo that an encoder finds as hard as music: at 120 beats
/// a minute, a bass note each beat, a chord of three sawtooth-like tones
/// changing every 2 s, a melody of eighth notes with vibrato, noise
/// bursts for hi-hat and snare, and a quiet noise floor; parts panned
/// differently, peak at 0.8 of full scale.
pub fn music_raw(seconds: f64) -> Vec<u8> {
    let n = (RATE as f64 * seconds) as usize;
    let tau = std::f64::consts::TAU;
    let rate = RATE as f64;
    let bass = [55.0, 73.42, 82.41, 98.0];
    let chords = [
        [220.0, 277.18, 329.63],
        [196.0, 246.94, 293.66],
        [174.61, 220.0, 261.63],
        [246.94, 311.13, 369.99],
    ];
    let scale = [440.0, 493.88, 554.37, 659.26, 739.99, 880.0];
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    let mut melody_step = 2i64;
    let mut melody_note = 0usize;
    let (mut floor, mut hat_prev) = (0.0f64, 0.0f64);
    let mut out = vec![(0.0f64, 0.0f64); n];
    for (i, o) in out.iter_mut().enumerate() {
        let t = i as f64 / rate;
        let beat = (t / 0.5) as usize;
        let in_beat = t - beat as f64 * 0.5;
        let eighth = (t / 0.25) as usize;
        let in_eighth = t - eighth as f64 * 0.25;
        if i % (RATE / 4) == 0 {
            // A random walk on the scale, one step per eighth note.
            melody_step = (melody_step + (noise.next() * 2.5).round() as i64).clamp(0, scale.len() as i64 - 1);
            melody_note = melody_step as usize;
        }
        let b = bass[beat % bass.len()];
        let bass_env = (-in_beat * 6.0).exp();
        let bass_v = bass_env * (0.5 * (tau * b * t).sin() + 0.2 * (tau * 2.0 * b * t).sin());
        let chord = chords[(t / 2.0) as usize % chords.len()];
        let pad: f64 = chord
            .iter()
            .map(|f| (1..=4).map(|h| (tau * f * h as f64 * t).sin() / h as f64).sum::<f64>())
            .sum::<f64>()
            * 0.06;
        let vib = 1.0 + 0.004 * (tau * 5.5 * t).sin();
        let lead = 0.18 * (-in_eighth * 8.0).exp() * (tau * scale[melody_note] * vib * t).sin();
        let white = noise.next();
        let hat = (white - hat_prev) * 0.5 * (-in_eighth * 120.0).exp() * 0.25;
        hat_prev = white;
        let snare = if beat % 2 == 1 {
            white * 0.3 * (-in_beat * 30.0).exp()
        } else {
            0.0
        };
        floor = 0.98 * floor + 0.02 * noise.next();
        let floor_v = floor * 0.05;
        let left = bass_v + 0.8 * pad + 0.4 * lead + 0.7 * hat + snare + floor_v;
        let right = bass_v + 0.5 * pad + 0.9 * lead + 1.0 * hat + 0.8 * snare - floor_v;
        *o = (left, right);
    }
    let peak = out.iter().map(|(l, r)| l.abs().max(r.abs())).fold(1e-9, f64::max);
    let scale_to = 0.8 * 32767.0 / peak;
    let mut raw = Vec::with_capacity(n * 4);
    for (l, r) in out {
        raw.extend_from_slice(&((l * scale_to) as i16).to_le_bytes());
        raw.extend_from_slice(&((r * scale_to) as i16).to_le_bytes());
    }
    raw
}

/// The default command with `-compression_level level` after the codec.
fn command(level: Option<u8>) -> Command {
    let mut cmd = default_command("ffmpeg", 128);
    if let Some(level) = level
        && let Some(i) = cmd.args.iter().position(|a| a == "libmp3lame")
    {
        cmd.args
            .splice(i + 1..i + 1, ["-compression_level".to_string(), level.to_string()]);
    }
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).stderr(Stdio::inherit());
    c
}

/// Runs `cmd` on `input` to `stdout`; its user + system CPU (from wait4)
/// and, if `collect`, what it wrote.
fn run(cmd: &mut Command, input: &std::path::Path, collect: bool) -> std::io::Result<(Duration, Vec<u8>)> {
    cmd.stdin(std::fs::File::open(input)?);
    cmd.stdout(if collect {
        Stdio::piped()
    } else {
        Stdio::from(std::fs::File::create("/dev/null")?)
    });
    let mut child = cmd.spawn()?;
    crate::servers::own(child.id() as i32);
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out)?;
    }
    let mut status = 0;
    // SAFETY: wait4 writes into the zeroed rusage passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is this process's unreaped child; both pointers are
    // valid and writable for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &raw mut status, 0, &raw mut usage) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(std::io::Error::other(format!("ffmpeg ended with status {status:#x}")));
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((tv(usage.ru_utime) + tv(usage.ru_stime), out))
}

/// Decodes MP3 `bytes` with ffmpeg into s16le stereo 48 kHz samples.
fn decode(bytes: &[u8], dir: &std::path::Path) -> std::io::Result<Vec<i16>> {
    let path = dir.join("out.mp3");
    std::fs::write(&path, bytes)?;
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "mp3", "-i"])
        .arg(&path)
        .args(["-f", "s16le", "-ac", "2", "-ar", "48000", "pipe:1"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    Ok(out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

fn samples(raw: &[u8]) -> Vec<i16> {
    raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// SNR (dB) of `decoded` against `input` (both interleaved stereo), after
/// shifting `decoded` by the delay (0..4000 frames) that correlates best
/// over one second; the first and last two seconds are left out.
fn snr_db(input: &[i16], decoded: &[i16]) -> (f64, usize) {
    let mono = |v: &[i16], i: usize| f64::from(v[2 * i]) + f64::from(v[2 * i + 1]);
    let frames = (input.len() / 2).min(decoded.len() / 2);
    let (from, len, max_delay) = (2 * RATE, RATE, 4000);
    if frames < from + len + max_delay + 2 * RATE {
        return (f64::NAN, 0);
    }
    let correlation = |d: usize| {
        (from..from + len)
            .map(|i| mono(input, i) * mono(decoded, i + d))
            .sum::<f64>()
    };
    let delay = (0..max_delay)
        .map(|d| (d, correlation(d)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(d, _)| d);
    let (mut signal, mut error) = (0.0, 0.0);
    for i in 2 * from..2 * (frames - max_delay - 2 * RATE) {
        let x = f64::from(input[i]);
        let y = f64::from(decoded[i + 2 * delay]);
        signal += x * x;
        error += (x - y) * (x - y);
    }
    (10.0 * (signal / error.max(1e-9)).log10(), delay)
}

/// One setting's figures.
pub struct Setting {
    /// `None`: ffmpeg's default (the option unset).
    pub level: Option<u8>,
    pub cpu_ms_per_audio_s: f64,
    pub bytes: usize,
    pub snr_db: f64,
    /// Whether its output is byte for byte the default's.
    pub same_as_default: bool,
    runs_ms: Vec<f64>,
    delay_frames: usize,
}

impl Setting {
    pub fn label(&self) -> String {
        self.level.map_or_else(|| "unset".into(), |l| format!("q{l}"))
    }

    pub fn to_json(&self, audio_s: f64) -> Value {
        json!({
            "compression_level": self.level, "cpu_ms_per_audio_s": self.cpu_ms_per_audio_s,
            "pct_of_one_core_at_real_time": self.cpu_ms_per_audio_s / 10.0,
            "runs_cpu_ms": self.runs_ms, "audio_s": audio_s, "output_bytes": self.bytes,
            "output_kbit_per_s": self.bytes as f64 * 8.0 / audio_s / 1000.0,
            "snr_db": self.snr_db, "codec_delay_frames": self.delay_frames,
            "output_identical_to_default": self.same_as_default,
        })
    }
}

/// Encodes `seconds` of [`music_raw`] with each setting.
pub fn measure(seconds: f64) -> std::io::Result<Vec<Setting>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("music.wav");
    let mut raw = music_raw(seconds);
    // Whole 24 ms frames, as Tower writes (a short last packet is "corrupt"
    // to the WAV demuxer).
    raw.truncate(raw.len() / tower::audio::PCM_FRAME_BYTES * tower::audio::PCM_FRAME_BYTES);
    // What Tower's encoder reads: the WAV header, then the PCM.
    std::fs::write(&input, [tower::encoder::command::wav_header(), raw.clone()].concat())?;
    let reference = samples(&raw);
    let mut out = Vec::new();
    let mut default_output = Vec::new();
    for level in std::iter::once(None).chain(LEVELS.map(Some)) {
        let mut runs_ms = Vec::new();
        for _ in 0..RUNS {
            let (cpu, _) = run(&mut command(level), &input, false)?;
            runs_ms.push(cpu.as_secs_f64() * 1000.0);
        }
        let (_, mp3) = run(&mut command(level), &input, true)?;
        let (snr_db, delay_frames) = snr_db(&reference, &decode(&mp3, dir.path())?);
        if level.is_none() {
            default_output = mp3.clone();
        }
        let best = runs_ms.iter().copied().fold(f64::INFINITY, f64::min);
        eprintln!(
            "encoder {}: {best:.0} ms CPU for {seconds} s of audio, SNR {snr_db:.1} dB",
            level.map_or_else(|| "unset".into(), |l| format!("q{l}"))
        );
        out.push(Setting {
            level,
            cpu_ms_per_audio_s: best / seconds,
            bytes: mp3.len(),
            snr_db,
            same_as_default: mp3 == default_output,
            runs_ms,
            delay_frames,
        });
    }
    Ok(out)
}
