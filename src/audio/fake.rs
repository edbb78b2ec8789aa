//! A hardware-free capture source: a sine generator with scripted faults.
//!
//! Runs on whichever thread owns it (the capture thread in the service).
//! Unpaced by default (reads return at once, for logic tests); paced, it
//! delivers one frame per 24 ms of wall time like a sound card.

use std::f64::consts::TAU;
use std::time::{Duration, Instant};

use super::source::{CaptureError, CaptureSource, ErrorClass};
use super::{CHANNELS, FRAME_DURATION, PCM_FRAME_BYTES, SAMPLE_RATE};

/// What the fake device does.
#[derive(Debug, Clone)]
pub struct FakeCaptureScript {
    /// Frequency of the generated tone.
    pub tone_hz: f64,
    /// Peak level, 0..1 of full scale.
    pub amplitude: f64,
    /// The first this-many `open` calls fail.
    pub fail_opens: u32,
    /// Every n-th read reports an overrun.
    pub overrun_every: Option<u32>,
    /// After this many frames in one open session, reads fail.
    pub fail_after_frames: Option<u32>,
    /// After this many frames in one open session, reads return nothing
    /// (like a JACK server that died, or a wedged USB card).
    pub mute_after_frames: Option<u32>,
    /// Deliver in real time (one frame per 24 ms).
    pub paced: bool,
}

impl Default for FakeCaptureScript {
    fn default() -> Self {
        FakeCaptureScript {
            tone_hz: 1000.0,
            amplitude: 0.5,
            fail_opens: 0,
            overrun_every: None,
            fail_after_frames: None,
            mute_after_frames: None,
            paced: false,
        }
    }
}

pub struct FakeCapture {
    device: String,
    script: FakeCaptureScript,
    opens: u32,
    open: bool,
    reads: u32,
    frames_this_session: u32,
    phase: f64,
    next_due: Option<Instant>,
}

impl FakeCapture {
    pub fn new(device: &str, script: FakeCaptureScript) -> Self {
        FakeCapture {
            device: device.to_string(),
            script,
            opens: 0,
            open: false,
            reads: 0,
            frames_this_session: 0,
            phase: 0.0,
            next_due: None,
        }
    }
}

impl CaptureSource for FakeCapture {
    fn device(&self) -> &str {
        &self.device
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        self.opens += 1;
        if self.opens <= self.script.fail_opens {
            return Err(CaptureError::Open {
                device: self.device.clone(),
                reason: "No such file or directory (scripted)".into(),
            });
        }
        self.open = true;
        self.frames_this_session = 0;
        self.next_due = None;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        if !self.open {
            return Err(CaptureError::Failed {
                device: self.device.clone(),
                class: ErrorClass::BadState,
                reason: "not open".into(),
            });
        }
        self.reads += 1;
        if self.script.overrun_every.is_some_and(|n| self.reads.is_multiple_of(n)) {
            return Err(CaptureError::Recovered {
                device: self.device.clone(),
                class: ErrorClass::Overrun,
            });
        }
        if self
            .script
            .fail_after_frames
            .is_some_and(|n| self.frames_this_session >= n)
        {
            return Err(CaptureError::Failed {
                device: self.device.clone(),
                class: ErrorClass::NoDevice,
                reason: "device disappeared (scripted)".into(),
            });
        }
        if self
            .script
            .mute_after_frames
            .is_some_and(|n| self.frames_this_session >= n)
        {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
            return Ok(0);
        }
        if self.script.paced {
            let now = Instant::now();
            let due = *self.next_due.get_or_insert(now);
            if due > now {
                let wait = due - now;
                if wait > timeout {
                    std::thread::sleep(timeout);
                    return Ok(0);
                }
                std::thread::sleep(wait);
            }
            self.next_due = Some(due + FRAME_DURATION);
        }
        let n = buf.len().min(PCM_FRAME_BYTES) / (2 * CHANNELS) * (2 * CHANNELS);
        let step = TAU * self.script.tone_hz / f64::from(SAMPLE_RATE);
        for sample_frame in buf[..n].chunks_exact_mut(2 * CHANNELS) {
            let v = (self.phase.sin() * self.script.amplitude * f64::from(i16::MAX)).round() as i16;
            for ch in sample_frame.chunks_exact_mut(2) {
                ch.copy_from_slice(&v.to_le_bytes());
            }
            self.phase = (self.phase + step) % TAU;
        }
        self.frames_this_session += 1;
        Ok(n)
    }

    fn close(&mut self) {
        self.open = false;
    }
}
