//! Writing PCM frames into ffmpeg's stdin without ever blocking [S2].
//!
//! Called from the pump thread (through `EncoderManager::write_pcm`). The
//! pipe is non-blocking: frames that do not fit are dropped whole and
//! counted. A write that fits only in part keeps its tail, which is written
//! before anything else, so ffmpeg never sees a torn frame (a torn frame
//! would swap channels or turn the rest of the stream into noise).
//!
//! A frame may be *held* and go out with the next one, in one write: ffmpeg
//! then wakes once for two frames. Each wake-up costs it as much as
//! encoding a good part of a frame (here 0.61–0.65 % of a core for ffmpeg
//! fed in pairs against 0.71–0.79 % fed frame by frame), and when listeners
//! take frames in turns of an even number of periods anyway, the first
//! frame of a pair loses nothing by waiting for the second: the turn waits
//! for that frame too (`EncoderManager` says when to hold).

use std::io::{self, ErrorKind, Write};

use crate::audio::PCM_FRAME_BYTES;

/// The most frames one write carries: a held frame and the next.
const MOST: usize = 2;

/// The result of offering one frame to the pipe.
#[derive(Debug)]
pub enum PipeWrite {
    /// This many frames went into the pipe (whole, or their tail kept to
    /// finish next time); none when the frame offered was held.
    Written(u8),
    /// The pipe is full (the encoder is behind): this many frames (the one
    /// offered, and the one held) were dropped.
    Full(u8),
    /// The reader is gone (EPIPE) or the pipe failed; this many frames
    /// were lost with it.
    Broken(io::Error, u8),
}

pub struct PcmPipe<W> {
    inner: W,
    /// What an earlier write did not get into the pipe.
    tail: Vec<u8>,
    /// A frame held to go out with the next one (empty: none).
    held: Vec<u8>,
    /// A write failed: nothing more is written (the pipe is dropped by
    /// whoever owns the encoder, not by the pump, which must not free).
    broken: bool,
}

impl<W: Write> PcmPipe<W> {
    pub fn new(inner: W) -> Self {
        PcmPipe {
            inner,
            tail: Vec::with_capacity(MOST * PCM_FRAME_BYTES),
            held: Vec::with_capacity(MOST * PCM_FRAME_BYTES),
            broken: false,
        }
    }

    /// A write failed: every later offer returns [`PipeWrite::Broken`]
    /// without writing.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes of an earlier write still waiting to be written.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Frames held, not yet written (0 or 1): lost if the pipe is dropped.
    pub fn held(&self) -> u8 {
        u8::from(!self.held.is_empty())
    }

    /// Offers one frame: the tail of an earlier write goes first. With
    /// `hold`, a frame that finds none held (and no tail waiting) is kept
    /// for the next offer instead; a frame that finds one held goes out
    /// with it, `hold` or not. Never allocates: the buffers are made once
    /// with room for two frames, so the pump's tick (SCHED_FIFO) never
    /// waits on malloc. Once broken, the pipe is not written again.
    pub fn write_frame(&mut self, frame: &[u8], hold: bool) -> PipeWrite {
        let written = self.offer(frame, hold);
        if matches!(written, PipeWrite::Broken(..)) {
            self.broken = true;
            self.held.clear();
        }
        written
    }

    fn offer(&mut self, frame: &[u8], hold: bool) -> PipeWrite {
        let frames = 1 + self.held();
        if self.broken {
            return PipeWrite::Broken(io::Error::from(ErrorKind::BrokenPipe), frames);
        }
        if !self.tail.is_empty() {
            match write_some(&mut self.inner, &self.tail) {
                Ok(n) if n == self.tail.len() => self.tail.clear(),
                Ok(n) => {
                    self.tail.drain(..n);
                    self.held.clear();
                    return PipeWrite::Full(frames);
                }
                Err(e) => return PipeWrite::Broken(e, frames),
            }
        }
        if hold && self.held.is_empty() {
            self.held.extend_from_slice(frame);
            return PipeWrite::Written(0);
        }
        let out: &[u8] = if self.held.is_empty() {
            frame
        } else {
            self.held.extend_from_slice(frame);
            &self.held
        };
        let written = match write_some(&mut self.inner, out) {
            Ok(0) => PipeWrite::Full(frames),
            Ok(n) => {
                self.tail.extend_from_slice(&out[n..]);
                PipeWrite::Written(frames)
            }
            Err(e) => PipeWrite::Broken(e, frames),
        };
        self.held.clear();
        written
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
        /// The most bytes offered in one write.
        largest: usize,
    }

    impl Write for FakePipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken {
                return Err(io::Error::from(ErrorKind::BrokenPipe));
            }
            if self.room == 0 {
                return Err(io::Error::from(ErrorKind::WouldBlock));
            }
            self.largest = self.largest.max(buf.len());
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
        let mut p = pipe(usize::MAX, false);
        for t in 0..3 {
            assert!(matches!(p.write_frame(&frame(t), false), PipeWrite::Written(1)));
        }
        let data = p.into_inner().data;
        assert_eq!(data.len(), 3 * PCM_FRAME_BYTES);
    }

    #[test]
    fn a_full_pipe_drops_whole_frames_and_never_tears_one() {
        let mut p = pipe(PCM_FRAME_BYTES + 100, false);
        assert!(matches!(p.write_frame(&frame(1), false), PipeWrite::Written(1)));
        // Only 100 bytes of frame 2 fit: it is accepted, its tail kept.
        assert!(matches!(p.write_frame(&frame(2), false), PipeWrite::Written(1)));
        assert_eq!(p.pending(), PCM_FRAME_BYTES - 100);
        // No room: frame 3 is dropped whole, the tail stays.
        assert!(matches!(p.write_frame(&frame(3), false), PipeWrite::Full(1)));
        // Room again: the tail of frame 2 goes first, then frame 4.
        p.inner.room = usize::MAX;
        assert!(matches!(p.write_frame(&frame(4), false), PipeWrite::Written(1)));
        assert_eq!(p.pending(), 0);
        assert_eq!(tags(&p.into_inner().data), vec![1, 2, 4]);
    }

    #[test]
    fn a_broken_pipe_is_reported() {
        let mut p = pipe(usize::MAX, true);
        match p.write_frame(&frame(1), false) {
            PipeWrite::Broken(e, 1) => assert_eq!(e.kind(), ErrorKind::BrokenPipe),
            other => panic!("expected Broken, got {other:?}"),
        }
    }

    /// The tags of the whole frames in `data`; panics on a torn one.
    fn tags(data: &[u8]) -> Vec<u8> {
        data.chunks(PCM_FRAME_BYTES)
            .map(|c| {
                assert_eq!(c.len(), PCM_FRAME_BYTES, "frame cut short");
                assert!(c.iter().all(|&b| b == c[0]), "torn frame");
                c[0]
            })
            .collect()
    }

    /// A pipe over a [`FakePipe`] that takes `room` bytes.
    fn pipe(room: usize, broken: bool) -> PcmPipe<FakePipe> {
        PcmPipe::new(FakePipe {
            data: vec![],
            room,
            broken,
            largest: 0,
        })
    }

    #[test]
    fn held_frames_go_out_in_pairs_with_one_write_each() {
        let mut p = pipe(usize::MAX, false);
        assert!(matches!(p.write_frame(&frame(1), true), PipeWrite::Written(0)));
        assert_eq!(p.held(), 1);
        assert!(p.inner.data.is_empty(), "a held frame waits");
        assert!(matches!(p.write_frame(&frame(2), true), PipeWrite::Written(2)));
        assert_eq!(p.held(), 0);
        assert!(matches!(p.write_frame(&frame(3), true), PipeWrite::Written(0)));
        // Holding stops: the held frame goes out with the next one.
        assert!(matches!(p.write_frame(&frame(4), false), PipeWrite::Written(2)));
        assert!(matches!(p.write_frame(&frame(5), false), PipeWrite::Written(1)));
        let inner = p.into_inner();
        assert_eq!(tags(&inner.data), vec![1, 2, 3, 4, 5]);
        // FakePipe takes 1 000 bytes a call: what matters is what one
        // call was offered, two frames, so that ffmpeg can read both at once.
        assert_eq!(inner.largest, 2 * PCM_FRAME_BYTES);
    }

    #[test]
    fn a_full_pipe_drops_a_held_frame_with_the_one_offered_and_never_tears_one() {
        let mut p = pipe(PCM_FRAME_BYTES + 100, false);
        assert!(matches!(p.write_frame(&frame(1), true), PipeWrite::Written(0)));
        // The pair fits only in part: it is taken, its tail kept.
        assert!(matches!(p.write_frame(&frame(2), true), PipeWrite::Written(2)));
        assert_eq!(p.pending(), PCM_FRAME_BYTES - 100);
        // No room for the tail: nothing is held behind it, the frame is dropped.
        assert!(matches!(p.write_frame(&frame(3), true), PipeWrite::Full(1)));
        assert_eq!(p.held(), 0);
        // Room for the tail and one frame held; the pair after it finds no room.
        p.inner.room = PCM_FRAME_BYTES - 100;
        assert!(matches!(p.write_frame(&frame(4), true), PipeWrite::Written(0)));
        assert!(matches!(p.write_frame(&frame(5), true), PipeWrite::Full(2)));
        assert_eq!(p.held(), 0);
        p.inner.room = usize::MAX;
        assert!(matches!(p.write_frame(&frame(6), false), PipeWrite::Written(1)));
        assert_eq!(tags(&p.into_inner().data), vec![1, 2, 6]);
    }

    #[test]
    fn a_broken_pipe_loses_the_held_frame_too() {
        let mut p = pipe(usize::MAX, false);
        assert!(matches!(p.write_frame(&frame(1), true), PipeWrite::Written(0)));
        p.inner.broken = true;
        assert!(matches!(p.write_frame(&frame(2), true), PipeWrite::Broken(_, 2)));
        assert_eq!(p.held(), 0);
        assert!(matches!(p.write_frame(&frame(3), true), PipeWrite::Broken(_, 1)));
    }
}
