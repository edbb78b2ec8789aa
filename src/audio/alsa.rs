//! ALSA capture backend (the `alsa` crate, alsa-lib underneath).
//!
//! Runs on the capture thread. Opens the configured PCM non-blocking as
//! S16_LE / 48000 Hz / 2 channels with 1152-frame periods, and reads with
//! `snd_pcm_wait` so a silent or hung device never blocks the thread past
//! the read timeout. Errors are classified by [`ErrorClass::from_errno`]:
//! overruns (EPIPE) and suspends (ESTRPIPE) are recovered here (resume,
//! else prepare, then start); EAGAIN is handed back to be retried; anything
//! else is a failure for the capture loop to close and re-open the device.

use std::time::Duration;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::source::{Action, CaptureError, CaptureSource, ErrorClass};
use super::{BYTES_PER_SAMPLE_FRAME, CHANNELS, FRAME_SAMPLES, SAMPLE_RATE};

/// Periods in the device buffer: 8 × 24 ms gives the reader 190 ms of
/// slack before an overrun.
const PERIODS: u64 = 8;

pub struct AlsaCapture {
    device: String,
    pcm: Option<PCM>,
}

impl AlsaCapture {
    pub fn new(device: &str) -> Self {
        AlsaCapture {
            device: device.to_string(),
            pcm: None,
        }
    }

    fn open_err(&self, what: &str, e: alsa::Error) -> CaptureError {
        CaptureError::Open {
            device: self.device.clone(),
            reason: format!("{what}: {}", describe(&e)),
        }
    }

    fn failed(&self, e: &alsa::Error) -> CaptureError {
        CaptureError::Failed {
            device: self.device.clone(),
            class: ErrorClass::from_errno(e.errno()),
            reason: describe(e),
        }
    }
}

fn describe(e: &alsa::Error) -> String {
    format!(
        "{} (errno {}, in {})",
        std::io::Error::from_raw_os_error(e.errno()),
        e.errno(),
        e.func()
    )
}

fn configure(pcm: &PCM) -> Result<(), (String, alsa::Error)> {
    let hw = HwParams::any(pcm).map_err(|e| ("reading hardware parameters".to_string(), e))?;
    hw.set_access(Access::RWInterleaved)
        .map_err(|e| ("interleaved access".to_string(), e))?;
    hw.set_format(Format::S16LE)
        .map_err(|e| ("format S16_LE not supported (use a plughw: device)".to_string(), e))?;
    hw.set_channels(CHANNELS as u32)
        .map_err(|e| ("2 channels not supported (use a plughw: device)".to_string(), e))?;
    hw.set_rate(SAMPLE_RATE, ValueOr::Nearest)
        .map_err(|e| ("48000 Hz not supported (use a plughw: device)".to_string(), e))?;
    let period = FRAME_SAMPLES as alsa::pcm::Frames;
    hw.set_period_size_near(period, ValueOr::Nearest)
        .map_err(|e| ("period size".to_string(), e))?;
    hw.set_buffer_size_near(period * PERIODS as alsa::pcm::Frames)
        .map_err(|e| ("buffer size".to_string(), e))?;
    pcm.hw_params(&hw)
        .map_err(|e| ("applying hardware parameters".to_string(), e))?;
    let rate = hw.get_rate().map_err(|e| ("reading the rate".to_string(), e))?;
    if rate != SAMPLE_RATE {
        return Err((
            format!("device runs at {rate} Hz, not {SAMPLE_RATE}; use a plughw: device to resample"),
            alsa::Error::unsupported("snd_pcm_hw_params_set_rate"),
        ));
    }
    Ok(())
}

impl CaptureSource for AlsaCapture {
    fn device(&self) -> &str {
        &self.device
    }

    fn open(&mut self) -> Result<(), CaptureError> {
        self.close();
        // alsa-lib prints its own diagnostics to stderr, on every attempt.
        // Collect them on this thread instead and add them to Tower's one
        // log line (a fresh buffer each time keeps memory bounded).
        let messages = alsa::Output::local_error_handler().ok();
        let opened = PCM::new(&self.device, Direction::Capture, true)
            .map_err(|e| self.open_err("open", e))
            .and_then(|pcm| {
                configure(&pcm).map_err(|(what, e)| self.open_err(&what, e))?;
                pcm.start().map_err(|e| self.open_err("start", e))?;
                Ok(pcm)
            });
        match opened {
            Ok(pcm) => {
                self.pcm = Some(pcm);
                Ok(())
            }
            Err(CaptureError::Open { device, mut reason }) => {
                let said = messages.map(|m| m.borrow().to_string()).unwrap_or_default();
                let said: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                if !said.is_empty() {
                    reason = format!("{reason}; alsa-lib: {}", said.join(" | "));
                }
                Err(CaptureError::Open { device, reason })
            }
            Err(other) => Err(other),
        }
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        let Some(pcm) = self.pcm.as_ref() else {
            return Err(CaptureError::Failed {
                device: self.device.clone(),
                class: ErrorClass::BadState,
                reason: "device not open".into(),
            });
        };
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let result = pcm.wait(Some(timeout_ms)).and_then(|ready| {
            if !ready {
                return Ok(0);
            }
            let whole = buf.len() / BYTES_PER_SAMPLE_FRAME * BYTES_PER_SAMPLE_FRAME;
            pcm.io_bytes().readi(&mut buf[..whole])
        });
        let e = match result {
            Ok(frames) => return Ok(frames * BYTES_PER_SAMPLE_FRAME),
            Err(e) => e,
        };
        let class = ErrorClass::from_errno(e.errno());
        match class.action() {
            Action::Retry => Err(CaptureError::Again {
                device: self.device.clone(),
            }),
            Action::Recover => {
                // try_recover resumes a suspended stream (or prepares it if
                // the driver cannot resume) and prepares an overrun one.
                // After a resume the stream may already run; a failed start
                // is then harmless, and the next read tells the truth.
                match pcm.try_recover(e, true) {
                    Ok(()) => {
                        let _ = pcm.start();
                        Err(CaptureError::Recovered {
                            device: self.device.clone(),
                            class,
                        })
                    }
                    Err(e2) => Err(self.failed(&e2)),
                }
            }
            Action::Reopen => Err(self.failed(&e)),
        }
    }

    fn close(&mut self) {
        if let Some(pcm) = self.pcm.take() {
            let _ = pcm.drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_does_not_exist_fails_to_open_with_its_name_and_reason() {
        let mut c = AlsaCapture::new("tower_no_such_device_xyz");
        let err = c.open().expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("tower_no_such_device_xyz"), "{text}");
        assert!(matches!(err, CaptureError::Open { .. }));
        assert!(matches!(
            c.read(&mut [0u8; 64], Duration::ZERO),
            Err(CaptureError::Failed { .. })
        ));
    }
}
