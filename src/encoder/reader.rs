//! Reading ffmpeg's stdout on the broadcast thread [S3], [P1].
//!
//! The supervisor hands each new encoder's stdout over (a `Feed`) and
//! wakes the reader. The broadcast loop waits here (through
//! `EncoderManager::wait`) in `poll(2)` on that pipe and the wake-up until
//! the pacer's next deadline, cuts what arrives into whole frames (the
//! packetizer) and pushes them into the MP3 ring, then sends them itself:
//! a frame from ffmpeg wakes one thread, not a reader that then wakes the
//! sender. The first frame and the end of the output are reported to the
//! supervisor by generation, so an old encoder's end is ignored.

use std::io::{ErrorKind, PipeReader, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::mp3::Packetizer;
use super::supervisor::Shared;
use crate::worker::{poll_until, readable};

/// Bytes read at a time: about 21 frames at 128 kbit/s.
const READ_BYTES: usize = 8 * 1024;

/// The encoder whose output is being read.
struct Current {
    generation: u64,
    stdout: PipeReader,
    packetizer: Packetizer,
    first: bool,
}

pub struct Reader {
    shared: Arc<Shared>,
    current: Option<Current>,
    buf: Box<[u8; READ_BYTES]>,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Reader {
            shared,
            current: None,
            buf: Box::new([0; READ_BYTES]),
        }
    }

    /// Waits until `deadline` for ffmpeg's output or a wake-up, and moves
    /// every whole frame that arrived into the ring.
    pub fn wait(&mut self, deadline: Instant) {
        self.take_feed();
        let wake = self.shared.reader_wake();
        let stdout = self.current.as_ref().map_or(-1, |c| c.stdout.as_raw_fd());
        let mut fds = [readable(wake.fd()), readable(stdout)];
        poll_until(&mut fds, Some(deadline));
        if fds[0].revents != 0 {
            wake.clear();
            self.take_feed();
        }
        if fds[1].revents != 0 {
            self.read();
        }
    }

    /// Takes a new encoder's stdout, if one was handed over; whatever is
    /// left of the old one's is dropped.
    fn take_feed(&mut self) {
        if let Some(feed) = self.shared.take_feed() {
            self.current = Some(Current {
                generation: feed.generation,
                stdout: feed.stdout,
                packetizer: Packetizer::new(),
                first: true,
            });
        }
    }

    /// Reads what the (non-blocking) pipe holds.
    fn read(&mut self) {
        let Reader { shared, current, buf } = self;
        let Some(c) = current.as_mut() else { return };
        loop {
            match c.stdout.read(&mut buf[..]) {
                Ok(0) => break,
                Ok(n) => {
                    let (generation, first) = (c.generation, &mut c.first);
                    c.packetizer.push(&buf[..n], |frame| {
                        shared.on_frame(generation, frame, std::mem::take(first));
                    });
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        // The end of this encoder's output (exit or kill).
        shared.on_eof(c.generation);
        *current = None;
    }
}
