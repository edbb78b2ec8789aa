//! Faults a test injects into a running Tower (signals to its ffmpeg, a
//! stalled pump), and what a listener got through them: Tower's silence
//! frames told apart from real encoded audio, the recovery after a fault,
//! decoder errors, and Tower's memory and descriptors from `/proc`.
//! Shared by `tests/faults.rs` and `tests/soak.rs`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Arrival, Listener, Tower};

/// The normal interval between frames at a listener.
pub const CADENCE: Duration = Duration::from_millis(24);

/// True for a frame Tower inserted while the encoder was behind [M4]: a
/// header followed by nothing but zeros. A frame ffmpeg encoded from any
/// sound, even a quiet one, carries side information and is never all zero.
pub fn is_silence(frame: &[u8]) -> bool {
    frame.len() > 4 && frame[4..].iter().all(|&b| b == 0)
}

/// The bitrate (kbit/s) in an MP3 frame's header, 0 if it has none.
pub fn bitrate(frame: &[u8]) -> u32 {
    frame
        .first_chunk::<4>()
        .and_then(|h| tower::encoder::mp3::FrameHeader::parse(*h))
        .map_or(0, |h| h.bitrate_kbps)
}

/// Where real audio at `old` kbit/s ends and at `new` begins in `frames`
/// (indices of the last old and the first new frame), after a relaunch.
pub fn bitrate_switch(frames: &[Arrival], old: u32, new: u32) -> (usize, usize) {
    let real = |a: &Arrival| !is_silence(&a.frame);
    let last_old = frames
        .iter()
        .rposition(|a| real(a) && bitrate(&a.frame) == old)
        .unwrap_or_else(|| panic!("no audio at {old} kbit/s"));
    let first_new = frames
        .iter()
        .position(|a| real(a) && bitrate(&a.frame) == new)
        .unwrap_or_else(|| panic!("no audio at {new} kbit/s"));
    assert!(first_new > last_old, "{old} and {new} kbit/s interleaved");
    (last_old, first_new)
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, sig: Signal) {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => panic!("{sig} to {pid}: {e}"),
    }
}

/// A process stopped with SIGSTOP, continued with SIGCONT when dropped (so
/// a failing test never leaves a stopped ffmpeg behind).
pub struct Stopped {
    pid: i32,
}

impl Stopped {
    pub fn new(pid: i32) -> Stopped {
        signal(pid, Signal::SIGSTOP);
        Stopped { pid }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.pid, Signal::SIGCONT);
    }
}

/// Asks Tower's pump to hang for `ms` through the test hook (needs
/// [`super::HOOKS`]).
pub fn stall_pump(tower: &Tower, ms: u64) {
    let r = super::stall(tower.addr, "pump", ms);
    assert_eq!(r.status, 200, "stall hook: {}", r.body_text());
}

/// Waits until ffmpeg runs with a pid other than `old`, and returns it.
pub fn new_ffmpeg_pid(tower: &Tower, old: i32, timeout: Duration) -> Option<i32> {
    let mut pid = 0;
    super::wait_for(timeout, || {
        let s = tower.status();
        pid = s["encoder"]["pid"].as_i64().unwrap_or(0) as i32;
        pid > 0 && pid != old && s["encoder"]["state"] == "RUNNING"
    })
    .then_some(pid)
}

/// How the stream at a listener went through a fault injected at `at`.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// The first silence frame after the fault.
    pub silence_after: Option<Duration>,
    /// The first real frame after that silence: the new encoder's audio.
    pub audio_back: Option<Duration>,
    /// Silence frames in between.
    pub silence_frames: usize,
}

/// Reads `frames` (as received) from the fault at `at` on: when silence
/// began and when real audio came back after it.
pub fn recovery(frames: &[Arrival], at: Instant) -> Recovery {
    let after: Vec<&Arrival> = frames.iter().filter(|a| a.at >= at).collect();
    let first_silence = after.iter().position(|a| is_silence(&a.frame));
    let back = first_silence.and_then(|s| after[s..].iter().position(|a| !is_silence(&a.frame)).map(|i| s + i));
    Recovery {
        silence_after: first_silence.map(|i| after[i].at.saturating_duration_since(at)),
        audio_back: back.map(|i| after[i].at.saturating_duration_since(at)),
        silence_frames: match (first_silence, back) {
            (Some(s), Some(b)) => b - s,
            (Some(s), None) => after.len() - s,
            _ => 0,
        },
    }
}

/// The index in `frames` of the first real frame at or after `at` that
/// follows a silence frame (the encoder's audio returning).
pub fn audio_back_index(frames: &[Arrival], at: Instant) -> Option<usize> {
    let start = frames.iter().position(|a| a.at >= at)?;
    let s = start + frames[start..].iter().position(|a| is_silence(&a.frame))?;
    frames[s..].iter().position(|a| !is_silence(&a.frame)).map(|i| s + i)
}

/// Frames the decoder could not decode, decoding all of `frames` in order.
pub fn decoder_errors(frames: &[Arrival]) -> usize {
    let refs: Vec<&[u8]> = frames.iter().map(|a| &a.frame[..]).collect();
    super::audio::decode_frames(&refs).errors
}

/// Asserts that every listener is still connected and Tower counted no
/// listener as dropped or gone, and that what each one received decodes
/// without an error; returns the frames each received.
pub fn assert_intact(tower: &Tower, listeners: &[&Listener]) -> Vec<usize> {
    for (i, l) in listeners.iter().enumerate() {
        assert!(l.ended().is_none(), "listener {i} was disconnected: {:?}", l.ended());
    }
    let s = tower.status();
    let hub = &s["listeners"];
    assert_eq!(hub["current"], listeners.len(), "{hub}");
    assert_eq!(hub["slow_dropped"], 0, "{hub}");
    assert_eq!(hub["disconnected"], 0, "{hub}");
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let frames = l.frames();
            let errors = decoder_errors(&frames);
            assert_eq!(
                errors,
                0,
                "listener {i}: {errors} of {} frames did not decode",
                frames.len()
            );
            frames.len()
        })
        .collect()
}

/// A field of `/proc/PID/status` in kB (e.g. "VmRSS").
pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// The largest and the 99th-percentile gap between arrivals in `frames`.
pub fn gaps(frames: &[Arrival]) -> (Duration, Duration) {
    let mut g: Vec<Duration> = frames
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at))
        .collect();
    if g.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    g.sort();
    (g[g.len() - 1], g[(g.len() * 99 / 100).min(g.len() - 1)])
}

/// How far behind its own schedule a listener received the frames that
/// arrived in `from..to`: the median of `arrival(i) − (arrival(0) + i × 24 ms)`
/// over them, in ms, where `arrivals` are all its frames from the first.
/// Its change over a run is how much the listener's delay from live grew
/// (positive: it fell behind; negative: it was sent audio ahead of time,
/// which its player buffers, so its delay grew by that much instead).
pub fn median_lag_ms(arrivals: &[Instant], from: Instant, to: Instant) -> Option<f64> {
    let t0 = *arrivals.first()?;
    let mut lags: Vec<f64> = arrivals
        .iter()
        .enumerate()
        .filter(|&(_, &at)| at >= from && at < to)
        .map(|(i, &at)| {
            let due = t0 + CADENCE * u32::try_from(i).unwrap_or(u32::MAX);
            (at.duration_since(t0).as_secs_f64() - due.duration_since(t0).as_secs_f64()) * 1000.0
        })
        .collect();
    if lags.is_empty() {
        return None;
    }
    lags.sort_by(f64::total_cmp);
    Some(lags[lags.len() / 2])
}
