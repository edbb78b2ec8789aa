//! How a program feeding Tower's socket input paces itself: std and
//! serde_json only, so it can be read (and ported) on its own.
//!
//! Tower's pump takes one 4608-byte frame (24 ms) from its input queue
//! every 24 ms and is the only clock. A producer that has audio ready
//! faster than real time (a playout program decoding files, a mixer)
//! keeps the queue near a target fill: every `poll` it reads
//! `GET /tower/buffer` (`{"fill": n, "capacity": c}`) and writes the
//! frames missing to the target, but never more than `max_rate` times
//! real time allows for one poll interval. Between two polls the pump
//! takes `poll / 24 ms` frames, so the fill swings between the target
//! and about that much below it. A target well under half the capacity
//! is kept as it is; Tower trims only a fill held above half the
//! capacity for 2 s.

#![allow(dead_code)] // the example and the tests use different parts

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes in one frame: 1152 samples × 2 channels × 2 bytes (24 ms).
pub const FRAME_BYTES: usize = 4608;
/// One frame's duration.
pub const FRAME: Duration = Duration::from_millis(24);

/// How a producer paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// The fill to keep, in frames.
    pub target: usize,
    /// How often to read `/tower/buffer`.
    pub poll: Duration,
    /// The fastest the producer may write, as a multiple of real time.
    pub max_rate: f64,
}

impl Default for Pace {
    /// 8 frames (192 ms) ahead, polled every 48 ms, at most 2× real time.
    fn default() -> Self {
        Pace {
            target: 8,
            poll: Duration::from_millis(48),
            max_rate: 2.0,
        }
    }
}

impl Pace {
    /// The most frames one poll interval may write at `max_rate`.
    pub fn burst(&self) -> usize {
        ((self.max_rate * self.poll.as_secs_f64() / FRAME.as_secs_f64()).ceil() as usize).max(1)
    }

    /// How many frames to write after reading `fill`.
    pub fn frames_to_write(&self, fill: usize) -> usize {
        self.target.saturating_sub(fill).min(self.burst())
    }
}

/// Reads `GET /tower/buffer` at `addr`: (fill, capacity).
pub fn buffer(addr: SocketAddr) -> std::io::Result<(usize, usize)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET /tower/buffer HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let start = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP body"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply[start + 4..]).map_err(|e| bad(&e.to_string()))?;
    match (v["fill"].as_u64(), v["capacity"].as_u64()) {
        (Some(f), Some(c)) => Ok((f as usize, c as usize)),
        _ => Err(bad("no fill and capacity in /tower/buffer")),
    }
}

/// What a paced run saw.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// The fill read at each poll.
    pub fills: Vec<usize>,
    pub frames_written: u64,
    /// Polls that started more than one interval late.
    pub late_polls: u64,
}

impl Run {
    /// The lowest and highest fill seen, ignoring the first `skip` polls
    /// (the climb to the target).
    pub fn band(&self, skip: usize) -> Option<(usize, usize)> {
        let rest = self.fills.get(skip..)?;
        Some((*rest.iter().min()?, *rest.iter().max()?))
    }
}

/// Writes frames from `next_frame` into `out` for `length`, paced by
/// `/tower/buffer` at `http`. `next_frame` fills one frame and may note
/// when it was written (it is called just before the write).
pub fn run(
    out: &mut impl Write,
    http: SocketAddr,
    pace: Pace,
    length: Duration,
    mut next_frame: impl FnMut(&mut [u8; FRAME_BYTES]),
) -> std::io::Result<Run> {
    let mut run = Run::default();
    let mut frame = [0u8; FRAME_BYTES];
    let start = Instant::now();
    let mut due = start;
    while due.saturating_duration_since(start) < length {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > pace.poll {
            // Late by more than a poll: start again from now, no burst.
            run.late_polls += 1;
            due = now;
        }
        due += pace.poll;
        let (fill, _capacity) = buffer(http)?;
        run.fills.push(fill);
        for _ in 0..pace.frames_to_write(fill) {
            next_frame(&mut frame);
            out.write_all(&frame)?;
            run.frames_written += 1;
        }
    }
    Ok(run)
}

/// A sine tone at half scale, phase-continuous from frame to frame.
pub struct Tone {
    phase: f64,
    step: f64,
}

impl Tone {
    pub fn new(hz: f64) -> Tone {
        Tone {
            phase: 0.0,
            step: std::f64::consts::TAU * hz / 48_000.0,
        }
    }

    pub fn fill(&mut self, frame: &mut [u8; FRAME_BYTES]) {
        for sample in frame.chunks_exact_mut(4) {
            let v = (self.phase.sin() * 0.5 * f64::from(i16::MAX)) as i16;
            sample[..2].copy_from_slice(&v.to_le_bytes());
            sample[2..].copy_from_slice(&v.to_le_bytes());
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
    }
}
