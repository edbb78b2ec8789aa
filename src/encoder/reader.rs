//! Reading ffmpeg's stdout on the broadcast thread [S3], [P1].
//!
//! The supervisor hands each new encoder's stdout over (a `Feed`) and
//! wakes the reader. The broadcast loop waits here (through
//! `EncoderManager::wait`) until the pacer's next deadline, cuts what
//! arrives into whole frames (the packetizer) and pushes them into the MP3
//! ring, then sends them itself: a frame from ffmpeg wakes one thread, not
//! a reader that then wakes the sender. The first frame and the end of the
//! output are reported to the supervisor by generation, so an old
//! encoder's end is ignored. When a new encoder's stdout is taken, what the
//! old one wrote before it ended is read out first: it is audio from
//! before the switch, and goes out before the new stream. Bytes that are
//! not whole frames (garbage, a frame cut short when an encoder was
//! killed) are counted, never dropped silently.
//!
//! ffmpeg's stdout is a socket, so that waiting for a frame and reading it
//! is one `recv`, its receive timeout standing for the deadline: one
//! system call per frame, not `poll` and `read`. The timeout is lowered
//! when the deadline comes sooner and raised only when it is a period
//! later, so it is set again only around silence, not once per frame (the
//! deadline moves with every frame sent). A blocked `recv` does not see the
//! wake-up: a new encoder's stdout is taken when the old one ends (it was
//! killed) or at the latest when the timeout passes, as is a stop; with no
//! encoder output to read, the reader waits in `poll(2)` on the wake-up.
//!
//! Frames need not leave the socket one by one (`Gather`). With no one to
//! send to (no listener, no Icecast target) the reader *gathers*: it
//! sleeps in `poll(2)` on the wake-up alone until the pacer's deadline
//! (silence would be due, 84 ms after the last frame: three or four
//! frames) and then takes everything waiting in one `recv`. That is one
//! wake-up per deadline, not one per frame, while the box sits idle. The
//! pacer sees the same frames up to 60 ms later, within its silence
//! margin, so it sends no silence and trims nothing for it. A first
//! listener wakes it at once (`Hub::admit`), and `Hub::add` leaves out of
//! its burst what the wait made stale, so the listener is no further
//! behind live. With listeners whose writes gather frames anyway, it
//! takes frames in *turns* of that many, each ending just after the frame
//! that closes it comes (`turn` says how it knows when): one wake-up per
//! turn, and the hub writes each listener once per turn.

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::manager::Gather;
use super::mp3::Packetizer;
use super::supervisor::Shared;
use super::turn::{Phase, Plan, whole_periods};
use crate::audio::FRAME_DURATION;
use crate::worker::{poll_until, readable};

/// Bytes read at a time: about 21 frames at 128 kbit/s.
const READ_BYTES: usize = 8 * 1024;
/// A receive timeout this much past the deadline is still used as is (the
/// kernel keeps it in ticks of 1 to 10 ms anyway).
const LATE_OK: Duration = Duration::from_millis(2);

/// The encoder whose output is being read.
struct Current {
    generation: u64,
    stdout: UnixStream,
    packetizer: Packetizer,
    first: bool,
    /// The socket's receive timeout now.
    timeout: Option<Duration>,
    /// The packetizer's garbage bytes already counted.
    garbage_counted: u64,
}

/// What one `recv` got.
enum Got {
    Bytes(usize),
    /// Nothing before the timeout (or a signal).
    Nothing,
    /// The encoder's end (exit or kill), or a broken socket.
    End,
}

pub struct Reader {
    shared: Arc<Shared>,
    current: Option<Current>,
    buf: Box<[u8; READ_BYTES]>,
    /// When gathered turns end (see `turn`).
    phase: Phase,
    /// How long the last frame read plays.
    frame: Duration,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Reader {
            shared,
            current: None,
            buf: Box::new([0; READ_BYTES]),
            phase: Phase::default(),
            frame: FRAME_DURATION,
        }
    }

    /// Waits until `deadline` for ffmpeg's output, and moves every whole
    /// frame that arrived into the ring; how depends on `gather` (see the
    /// module header).
    pub fn wait(&mut self, deadline: Instant, gather: Gather) {
        self.take_feed();
        if self.current.is_none() {
            // No output to read: the wake-up alone.
            self.sleep_until(deadline);
            return;
        }
        match gather {
            Gather::No => {
                self.phase.forget();
                self.watch(deadline, FRAME_DURATION);
            }
            Gather::Idle => {
                self.phase.forget();
                self.sleep_until(deadline);
                self.take_now();
            }
            Gather::Every(span) => self.turn(deadline, whole_periods(span)),
        }
        // A new encoder's stdout replaces this one (see the module header).
        self.take_feed();
    }

    /// A gathered turn of `span` (see `turn`'s header).
    fn turn(&mut self, deadline: Instant, span: Duration) {
        match self.phase.plan(Instant::now(), deadline, span) {
            Plan::Take(at) => {
                if self.sleep_until(at) {
                    return;
                }
                let audio = self.take_now();
                if self.phase.taken(audio, self.frame, span) {
                    // The closing frame is late: see it come, briefly.
                    let came = self.watch(Instant::now() + FRAME_DURATION / 2, LATE_OK);
                    self.phase.seen(came, span);
                }
            }
            Plan::See { from, until } => {
                if from.is_some_and(|t| self.sleep_until(t)) {
                    return;
                }
                self.take_now();
                let came = self.watch(until, LATE_OK);
                self.phase.seen(came, span);
            }
        }
    }

    /// Sleeps in `poll(2)` on the wake-up alone until `deadline`; returns
    /// whether it was woken (a new feed is then taken).
    fn sleep_until(&mut self, deadline: Instant) -> bool {
        let wake = self.shared.reader_wake();
        if poll_until(&mut [readable(wake.fd())], Some(deadline)) > 0 {
            wake.clear();
            self.take_feed();
            return true;
        }
        false
    }

    /// Takes what is waiting, without waiting; returns the audio taken.
    fn take_now(&mut self) -> Duration {
        let Some(c) = self.current.as_mut() else {
            return Duration::ZERO;
        };
        match recv(&c.stdout, &mut self.buf[..], libc::MSG_DONTWAIT) {
            Got::Bytes(n) => self.take(n),
            Got::Nothing => Duration::ZERO,
            Got::End => {
                self.end();
                Duration::ZERO
            }
        }
    }

    /// Waits in `recv` until `deadline` for output, and takes it; returns
    /// when it came, if it did. The socket's receive timeout is kept when
    /// it ends at most `early` before the deadline (and not much after):
    /// a period, frame by frame, where the deadline moves with every frame;
    /// next to nothing when a turn waits for its closing frame.
    fn watch(&mut self, deadline: Instant, early: Duration) -> Option<Instant> {
        let c = self.current.as_mut()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let got = if left.is_zero() {
            recv(&c.stdout, &mut self.buf[..], libc::MSG_DONTWAIT)
        } else {
            let keep = c.timeout.is_some_and(|t| t <= left + LATE_OK && t + early >= left);
            if !keep && c.stdout.set_read_timeout(Some(left)).is_ok() {
                c.timeout = Some(left);
            }
            recv(&c.stdout, &mut self.buf[..], 0)
        };
        match got {
            Got::Bytes(n) => {
                let at = Instant::now();
                self.take(n);
                Some(at)
            }
            Got::Nothing => None,
            Got::End => {
                self.end();
                None
            }
        }
    }

    /// Takes a new encoder's stdout, if one was handed over, after reading
    /// out what the old one wrote (the supervisor hands a new stdout over
    /// only once the old encoder has ended, so that read ends).
    fn take_feed(&mut self) {
        let Some(feed) = self.shared.take_feed() else { return };
        if let Some(c) = self.current.as_mut() {
            while let Got::Bytes(n) = recv(&c.stdout, &mut self.buf[..], libc::MSG_DONTWAIT) {
                packetize(&self.shared, c, &self.buf[..n], &mut self.frame);
            }
        }
        self.close();
        self.phase.forget();
        self.current = Some(Current {
            generation: feed.generation,
            stdout: feed.stdout,
            packetizer: Packetizer::new(),
            first: true,
            timeout: None,
            garbage_counted: 0,
        });
    }

    /// Packetizes `n` bytes read; reads on without waiting while the
    /// buffer comes back full. Returns the audio taken.
    fn take(&mut self, mut n: usize) -> Duration {
        let Reader {
            shared,
            current,
            buf,
            frame,
            ..
        } = self;
        let Some(c) = current.as_mut() else {
            return Duration::ZERO;
        };
        let mut audio = Duration::ZERO;
        loop {
            audio += packetize(shared, c, &buf[..n], frame);
            if n < buf.len() {
                return audio;
            }
            match recv(&c.stdout, &mut buf[..], libc::MSG_DONTWAIT) {
                Got::Bytes(more) => n = more,
                Got::Nothing => return audio,
                Got::End => break,
            }
        }
        self.end();
        audio
    }

    /// The end of the current encoder's output (exit or kill).
    fn end(&mut self) {
        if let Some(generation) = self.close() {
            self.shared.on_eof(generation);
        }
    }

    /// Lets go of the current encoder's output: a frame it left unfinished
    /// is counted as skipped. Returns its generation.
    fn close(&mut self) -> Option<u64> {
        let c = self.current.take()?;
        self.shared.skipped_bytes(c.packetizer.pending() as u64);
        Some(c.generation)
    }
}

#[cfg(test)]
impl Reader {
    /// Bytes waiting unread in the current encoder's stdout.
    pub(super) fn unread(&self) -> usize {
        let Some(c) = &self.current else { return 0 };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer given; the
        // descriptor is owned by `c.stdout`.
        let rc = unsafe { libc::ioctl(c.stdout.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc < 0 { 0 } else { usize::try_from(n).unwrap_or(0) }
    }
}

/// Cuts `bytes` into frames for the ring; counts what was not a frame.
/// Returns the audio the frames hold; `length` becomes the last one's.
fn packetize(shared: &Shared, c: &mut Current, bytes: &[u8], length: &mut Duration) -> Duration {
    let (generation, first) = (c.generation, &mut c.first);
    let before = c.packetizer.stats().frames;
    c.packetizer.push(bytes, |frame| {
        shared.on_frame(generation, frame, std::mem::take(first));
    });
    // The frames of one push are of the stream locked onto.
    let frames = c.packetizer.stats().frames - before;
    if let Some(d) = c.packetizer.frame_duration() {
        *length = d;
    }
    let audio = *length * u32::try_from(frames).unwrap_or(u32::MAX);
    let garbage = c.packetizer.stats().garbage_bytes;
    if garbage > c.garbage_counted {
        shared.skipped_bytes(garbage - c.garbage_counted);
        c.garbage_counted = garbage;
    }
    audio
}

/// One `recv` on `socket` with `flags`.
fn recv(socket: &UnixStream, buf: &mut [u8], flags: libc::c_int) -> Got {
    // SAFETY: `buf` is valid for `buf.len()` bytes during the call; the
    // descriptor is owned by `socket`.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    match usize::try_from(n) {
        Ok(0) => Got::End,
        Ok(n) => Got::Bytes(n),
        Err(_) => match io::Error::last_os_error().kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::TimedOut => Got::Nothing,
            _ => Got::End,
        },
    }
}
