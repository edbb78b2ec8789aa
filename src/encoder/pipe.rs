//! Writing PCM frames into ffmpeg's stdin without ever blocking [S2].
//!
//! Called from the pump thread (through `EncoderManager::write_pcm`). The
//! pipe is non-blocking: a frame that does not fit is dropped whole and
//! counted. A frame that fits only in part keeps its tail, which is written
//! before anything else, so ffmpeg never sees a torn frame (a torn frame
//! would swap channels or turn the rest of the stream into noise).

use std::io::{self, ErrorKind, Write};

use crate::audio::PCM_FRAME_BYTES;

/// The result of offering one frame to the pipe.
#[derive(Debug)]
pub enum PipeWrite {
    /// Written whole, or its tail kept to finish next time.
    Written,
    /// The pipe is full (the encoder is behind): the frame was dropped.
    Full,
    /// The reader is gone (EPIPE) or the pipe failed.
    Broken(io::Error),
}

pub struct PcmPipe<W> {
    inner: W,
    tail: Vec<u8>,
    /// A write failed: nothing more is written (the pipe is dropped by
    /// whoever owns the encoder, not by the pump, which must not free).
    broken: bool,
}

impl<W: Write> PcmPipe<W> {
    pub fn new(inner: W) -> Self {
        PcmPipe {
            inner,
            tail: Vec::with_capacity(PCM_FRAME_BYTES),
            broken: false,
        }
    }

    /// A write failed: every later offer returns [`PipeWrite::Broken`]
    /// without writing.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes of an earlier frame still waiting to be written.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Offers one frame: the tail of an earlier frame goes first. Never
    /// allocates: the tail lives in a buffer of one frame's capacity made
    /// once, so the pump's tick (SCHED_FIFO) never waits on malloc. Once
    /// broken, the pipe is not written again.
    pub fn write_frame(&mut self, frame: &[u8]) -> PipeWrite {
        let written = self.offer(frame);
        if matches!(written, PipeWrite::Broken(_)) {
            self.broken = true;
        }
        written
    }

    fn offer(&mut self, frame: &[u8]) -> PipeWrite {
        if self.broken {
            return PipeWrite::Broken(io::Error::from(ErrorKind::BrokenPipe));
        }
        if !self.tail.is_empty() {
            match write_some(&mut self.inner, &self.tail) {
                Ok(n) if n == self.tail.len() => self.tail.clear(),
                Ok(n) => {
                    self.tail.drain(..n);
                    return PipeWrite::Full;
                }
                Err(e) => return PipeWrite::Broken(e),
            }
        }
        match write_some(&mut self.inner, frame) {
            Ok(0) => PipeWrite::Full,
            Ok(n) => {
                self.tail.extend_from_slice(&frame[n..]);
                PipeWrite::Written
            }
            Err(e) => PipeWrite::Broken(e),
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Writes as much of `buf` as `out` takes now; returns the count.
fn write_some(out: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match out.write(&buf[done..]) {
            // A kind alone: an error with a message would allocate.
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that takes at most `room` more bytes, then says WouldBlock.
    struct FakePipe {
        data: Vec<u8>,
        room: usize,
        broken: bool,
    }

    impl Write for FakePipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken {
                return Err(io::Error::from(ErrorKind::BrokenPipe));
            }
            if self.room == 0 {
                return Err(io::Error::from(ErrorKind::WouldBlock));
            }
            let n = buf.len().min(self.room).min(1000); // also short writes
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(tag: u8) -> Vec<u8> {
        vec![tag; PCM_FRAME_BYTES]
    }

    #[test]
    fn whole_frames_pass_through() {
        let mut p = PcmPipe::new(FakePipe {
            data: vec![],
            room: usize::MAX,
            broken: false,
        });
        for t in 0..3 {
            assert!(matches!(p.write_frame(&frame(t)), PipeWrite::Written));
        }
        let data = p.into_inner().data;
        assert_eq!(data.len(), 3 * PCM_FRAME_BYTES);
    }

    #[test]
    fn a_full_pipe_drops_whole_frames_and_never_tears_one() {
        let mut p = PcmPipe::new(FakePipe {
            data: vec![],
            room: PCM_FRAME_BYTES + 100,
            broken: false,
        });
        assert!(matches!(p.write_frame(&frame(1)), PipeWrite::Written));
        // Only 100 bytes of frame 2 fit: it is accepted, its tail kept.
        assert!(matches!(p.write_frame(&frame(2)), PipeWrite::Written));
        assert_eq!(p.pending(), PCM_FRAME_BYTES - 100);
        // No room: frame 3 is dropped whole, the tail stays.
        assert!(matches!(p.write_frame(&frame(3)), PipeWrite::Full));
        // Room again: the tail of frame 2 goes first, then frame 4.
        p.inner.room = usize::MAX;
        assert!(matches!(p.write_frame(&frame(4)), PipeWrite::Written));
        assert_eq!(p.pending(), 0);
        let data = p.into_inner().data;
        let frames: Vec<u8> = data
            .chunks(PCM_FRAME_BYTES)
            .map(|c| {
                assert!(c.iter().all(|&b| b == c[0]), "torn frame");
                c[0]
            })
            .collect();
        assert_eq!(frames, vec![1, 2, 4]);
    }

    #[test]
    fn a_broken_pipe_is_reported() {
        let mut p = PcmPipe::new(FakePipe {
            data: vec![],
            room: usize::MAX,
            broken: true,
        });
        match p.write_frame(&frame(1)) {
            PipeWrite::Broken(e) => assert_eq!(e.kind(), ErrorKind::BrokenPipe),
            other => panic!("expected Broken, got {other:?}"),
        }
    }
}
