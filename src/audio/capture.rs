//! The capture thread: device → canonical frames → router.
//!
//! One thread ("capture"), started by the service after the pump and
//! stopped before it. It opens a [`CaptureSource`] (ALSA on the appliance,
//! a generator in tests), cuts whatever the device delivers into 4608-byte
//! frames and pushes them into the router, which never blocks it. A device
//! that cannot be opened is logged once with the fix and retried every
//! second, while the pump keeps listeners fed with grace silence and then
//! the fallback. Overruns are recovered by the source and counted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{PCM_FRAME_BYTES, PcmFrame};
use crate::ratelog::LogGate;
use crate::router::AudioInputRouter;
use crate::worker::{StopSignal, Worker, WorkerError};

/// How long one read may wait for data, bounding how fast a stop is seen.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Delay between attempts to open a device that is not there.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// A capture error, already classified by the source.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture device {device:?}: {reason}")]
    Open { device: String, reason: String },
    /// Data was lost (xrun); the source has recovered and reading goes on.
    #[error("overrun on capture device {device:?}; recovered")]
    Overrun { device: String },
    /// The device failed; it must be closed and opened again.
    #[error("capture device {device:?} failed: {reason}")]
    Failed { device: String, reason: String },
}

/// A source of interleaved s16le, 48 kHz, stereo audio.
pub trait CaptureSource: Send {
    /// The device name, as configured.
    fn device(&self) -> &str;
    /// Opens (or re-opens) the device in the canonical format.
    fn open(&mut self) -> Result<(), CaptureError>;
    /// Reads what is available into `buf` (whole sample frames), waiting at
    /// most `timeout`; `Ok(0)` when nothing came.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError>;
    fn close(&mut self);
}

/// Cuts a byte stream into canonical frames, whatever the read sizes.
#[derive(Debug)]
pub struct Reblocker {
    frame: PcmFrame,
    filled: usize,
}

impl Default for Reblocker {
    fn default() -> Self {
        Self::new()
    }
}

impl Reblocker {
    pub fn new() -> Self {
        Reblocker {
            frame: PcmFrame::silent(),
            filled: 0,
        }
    }

    /// Adds `bytes`; calls `emit` for every frame completed.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(PcmFrame)) {
        while !bytes.is_empty() {
            let n = bytes.len().min(PCM_FRAME_BYTES - self.filled);
            self.frame.as_bytes_mut()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == PCM_FRAME_BYTES {
                self.filled = 0;
                emit(std::mem::replace(&mut self.frame, PcmFrame::silent()));
            }
        }
    }

    /// Forgets a partial frame (after an overrun or re-open, the next bytes
    /// do not continue it).
    pub fn reset(&mut self) {
        self.filled = 0;
    }
}

/// Whether the device is delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Opening,
    Open,
    Unavailable,
}

#[derive(Default)]
pub struct CaptureStats {
    state: AtomicU8,
    frames: AtomicU64,
    opens: AtomicU64,
    open_failures: AtomicU64,
    overruns: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureSnapshot {
    pub device: String,
    pub state: DeviceState,
    pub frames: u64,
    pub opens: u64,
    pub open_failures: u64,
    pub overruns: u64,
    pub failures: u64,
}

impl CaptureStats {
    fn set_state(&self, s: DeviceState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> DeviceState {
        match self.state.load(Ordering::Relaxed) {
            0 => DeviceState::Opening,
            1 => DeviceState::Open,
            _ => DeviceState::Unavailable,
        }
    }
}

pub struct Capture {
    worker: Worker<()>,
    handle: CaptureHandle,
}

/// A cloneable view of the capture thread's stats.
#[derive(Clone)]
pub struct CaptureHandle {
    stats: Arc<CaptureStats>,
    device: String,
}

impl CaptureHandle {
    pub fn snapshot(&self) -> CaptureSnapshot {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CaptureSnapshot {
            device: self.device.clone(),
            state: s.state(),
            frames: l(&s.frames),
            opens: l(&s.opens),
            open_failures: l(&s.open_failures),
            overruns: l(&s.overruns),
            failures: l(&s.failures),
        }
    }
}

impl Capture {
    pub fn start(source: Box<dyn CaptureSource>, router: Arc<AudioInputRouter>) -> std::io::Result<Capture> {
        let stats = Arc::new(CaptureStats::default());
        let device = source.device().to_string();
        let thread_stats = stats.clone();
        let worker = Worker::spawn("capture", move |stop| run(&stop, source, &router, &thread_stats))?;
        Ok(Capture {
            worker,
            handle: CaptureHandle { stats, device },
        })
    }

    pub fn handle(&self) -> CaptureHandle {
        self.handle.clone()
    }

    pub fn snapshot(&self) -> CaptureSnapshot {
        self.handle.snapshot()
    }

    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        self.worker.stop(timeout)
    }
}

fn run(stop: &StopSignal, mut source: Box<dyn CaptureSource>, router: &AudioInputRouter, stats: &CaptureStats) {
    let mut buf = vec![0u8; PCM_FRAME_BYTES];
    let mut reblocker = Reblocker::new();
    let mut unavailable_logged = false;
    let overrun_log = LogGate::new(Duration::from_secs(10));
    while !stop.is_stopped() {
        stats.set_state(DeviceState::Opening);
        match source.open() {
            Ok(()) => {
                stats.opens.fetch_add(1, Ordering::Relaxed);
                stats.set_state(DeviceState::Open);
                tracing::info!(
                    component = "capture",
                    device = source.device(),
                    state = "open",
                    "capture device open: s16le 48000 Hz stereo"
                );
                unavailable_logged = false;
            }
            Err(e) => {
                stats.open_failures.fetch_add(1, Ordering::Relaxed);
                stats.set_state(DeviceState::Unavailable);
                if !unavailable_logged {
                    tracing::error!(
                        component = "capture",
                        device = source.device(),
                        state = "unavailable",
                        reason = "cannot open the device",
                        "{e}. Listeners hear silence, then the fallback, until it works; retrying every {} s. List capture devices with `arecord -L` and set `device` in the configuration",
                        REOPEN_EVERY.as_secs()
                    );
                    unavailable_logged = true;
                }
                stop.sleep(REOPEN_EVERY);
                continue;
            }
        }
        reblocker.reset();
        while !stop.is_stopped() {
            match source.read(&mut buf, READ_TIMEOUT) {
                Ok(0) => {}
                Ok(n) => reblocker.push(&buf[..n], |frame| {
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    router.push(frame);
                }),
                Err(CaptureError::Overrun { device }) => {
                    let n = stats.overruns.fetch_add(1, Ordering::Relaxed) + 1;
                    reblocker.reset();
                    if let Some(suppressed) = overrun_log.allow(Instant::now()) {
                        tracing::warn!(component = "capture", device = %device, overruns = n, suppressed, "capture overrun (audio was lost); recovered");
                    }
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    stats.set_state(DeviceState::Unavailable);
                    tracing::error!(
                        component = "capture",
                        device = source.device(),
                        state = "unavailable",
                        reason = "device failed",
                        "{e}; re-opening"
                    );
                    unavailable_logged = true;
                    source.close();
                    stop.sleep(REOPEN_EVERY);
                    break;
                }
            }
        }
    }
    source.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::fake::{FakeCapture, FakeCaptureScript};

    #[test]
    fn reblocker_cuts_any_read_sizes_into_exact_frames() {
        let data: Vec<u8> = (0..PCM_FRAME_BYTES * 5).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 1000, 4608, 4609, 9999] {
            let mut r = Reblocker::new();
            let mut out = Vec::new();
            for piece in data.chunks(chunk) {
                r.push(piece, |f| out.extend_from_slice(f.as_bytes()));
            }
            assert_eq!(out, data, "chunk size {chunk}");
        }
    }

    #[test]
    fn reset_drops_a_partial_frame() {
        let mut r = Reblocker::new();
        let mut n = 0;
        r.push(&[1; 1000], |_| n += 1);
        r.reset();
        r.push(&[2; PCM_FRAME_BYTES], |f| {
            n += 1;
            assert!(f.as_bytes().iter().all(|&b| b == 2));
        });
        assert_eq!(n, 1);
    }

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn frames_flow_to_the_router_and_overruns_are_counted() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let source = FakeCapture::new(
            "fake",
            FakeCaptureScript {
                overrun_every: Some(10),
                ..FakeCaptureScript::default()
            },
        );
        let cap = Capture::start(Box::new(source), router.clone()).expect("start");
        assert!(wait_for(|| router.fill() >= 30));
        let snap = cap.snapshot();
        assert_eq!(snap.state, DeviceState::Open);
        assert!(snap.overruns >= 2, "{snap:?}");
        cap.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_missing_device_is_retried_until_it_appears() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let source = FakeCapture::new(
            "fake",
            FakeCaptureScript {
                fail_opens: 2,
                ..FakeCaptureScript::default()
            },
        );
        let cap = Capture::start(Box::new(source), router.clone()).expect("start");
        assert!(wait_for(|| cap.snapshot().open_failures >= 1));
        assert_eq!(cap.snapshot().state, DeviceState::Unavailable);
        assert!(wait_for(|| router.fill() > 0));
        let snap = cap.snapshot();
        assert_eq!((snap.open_failures, snap.opens, snap.state), (2, 1, DeviceState::Open));
        cap.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_failing_device_is_closed_and_opened_again() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let source = FakeCapture::new(
            "fake",
            FakeCaptureScript {
                fail_after_frames: Some(5),
                ..FakeCaptureScript::default()
            },
        );
        let cap = Capture::start(Box::new(source), router.clone()).expect("start");
        assert!(wait_for(|| cap.snapshot().opens >= 2));
        assert!(cap.snapshot().failures >= 1);
        cap.stop(Duration::from_secs(3)).expect("stop");
    }
}
