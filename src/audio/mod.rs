//! The canonical PCM frame [F1] and the capture side of the pipeline.
//!
//! Every PCM frame in Tower is s16le, 48 000 Hz, 2 channels, 1152 samples per
//! channel: 4608 bytes, exactly 24 ms. [`PcmFrame`] can only be built with that
//! shape, so anything else is rejected where it enters (the router counts and
//! logs it) and the rest of the pipeline never checks again.

pub mod auto;
pub mod capture;
pub mod devices;
#[cfg(any(test, feature = "test-hooks"))]
pub mod fake;
pub mod level;
pub mod mixer;
pub mod program;
pub mod router;
pub mod socket;
pub mod source;

#[cfg(feature = "alsa-backend")]
pub mod alsa;

use std::fmt;
use std::time::Duration;

/// Samples per second, per channel.
pub const SAMPLE_RATE: u32 = 48_000;
/// Interleaved channels.
pub const CHANNELS: usize = 2;
/// Samples per channel in one frame (one MP3 frame's worth at 48 kHz).
pub const FRAME_SAMPLES: usize = 1152;
/// Bytes per sample frame (all channels of one instant).
pub const BYTES_PER_SAMPLE_FRAME: usize = 2 * CHANNELS;
/// Bytes in one PCM frame: 4608.
pub const PCM_FRAME_BYTES: usize = FRAME_SAMPLES * BYTES_PER_SAMPLE_FRAME;
/// Duration of one frame: exactly 24 ms.
pub const FRAME_DURATION: Duration = Duration::from_millis(24);

/// One canonical PCM frame. Owned, heap-allocated once by its producer and
/// moved through the router without copying.
#[derive(Clone, PartialEq, Eq)]
pub struct PcmFrame(Box<[u8; PCM_FRAME_BYTES]>);

/// A buffer that does not have the canonical frame's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "PCM frame of {0} bytes rejected: every frame must be {PCM_FRAME_BYTES} bytes (s16le, 48 kHz, stereo, 1152 samples)"
)]
pub struct FrameSizeError(pub usize);

impl PcmFrame {
    /// An all-zero (digital silence) frame.
    pub fn silent() -> Self {
        PcmFrame(Box::new([0; PCM_FRAME_BYTES]))
    }

    /// Copies `bytes` into a new frame; fails unless it is exactly 4608 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrameSizeError> {
        let array: [u8; PCM_FRAME_BYTES] = bytes.try_into().map_err(|_| FrameSizeError(bytes.len()))?;
        Ok(PcmFrame(Box::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8; PCM_FRAME_BYTES] {
        &self.0
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8; PCM_FRAME_BYTES] {
        &mut self.0
    }

    /// The sample at `index` (interleaved order).
    pub fn sample(&self, index: usize) -> i16 {
        i16::from_le_bytes([self.0[2 * index], self.0[2 * index + 1]])
    }
}

impl fmt::Debug for PcmFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PcmFrame({PCM_FRAME_BYTES} bytes)")
    }
}

/// The capture source for a device name on this build: `auto` chooses a
/// card itself (see [`auto`]); any other name is opened as it is.
pub fn system_capture(device: &str) -> Box<dyn source::CaptureSource> {
    if device == auto::AUTO {
        return Box::new(auto::AutoCapture::new(
            Box::new(auto::SystemCards),
            Box::new(|name: &str| named_capture(name)),
        ));
    }
    named_capture(device)
}

/// The capture source `input` names: the sound card `device` (see
/// [`system_capture`]), or the socket input, bound here so that a path
/// that cannot be used stops start-up with the key named.
pub fn input_capture(
    input: &socket::Input,
    device: &str,
) -> Result<Box<dyn source::CaptureSource>, socket::SocketError> {
    match input {
        socket::Input::Alsa => Ok(system_capture(device)),
        socket::Input::Socket(settings) => Ok(Box::new(socket::SocketCapture::bind(settings)?)),
    }
}

/// The capture source for one device name: ALSA, or (built without the
/// `alsa-backend` feature) a source that explains why there is no capture,
/// so the stream still serves the fallback.
pub fn named_capture(device: &str) -> Box<dyn source::CaptureSource> {
    #[cfg(feature = "alsa-backend")]
    {
        Box::new(alsa::AlsaCapture::new(device))
    }
    #[cfg(not(feature = "alsa-backend"))]
    {
        Box::new(NoCapture(device.to_string()))
    }
}

#[cfg(not(feature = "alsa-backend"))]
struct NoCapture(String);

#[cfg(not(feature = "alsa-backend"))]
impl source::CaptureSource for NoCapture {
    fn device(&self) -> &str {
        &self.0
    }
    fn open(&mut self) -> Result<(), source::CaptureError> {
        Err(source::CaptureError::Open {
            device: self.0.clone(),
            reason: "this build has no ALSA support (feature alsa-backend)".into(),
        })
    }
    fn read(&mut self, _: &mut [u8], _: Duration) -> Result<usize, source::CaptureError> {
        Ok(0)
    }
    fn close(&mut self) {}
}

/// Where the audio the pump sends to the encoder comes from, as listeners
/// would describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputState {
    /// PCM from the capture device.
    Live,
    /// No PCM right now, but some was seen within the grace period: silence.
    Grace,
    /// No PCM for longer than the grace period: the fallback source.
    Fallback,
}

impl InputState {
    pub fn as_str(self) -> &'static str {
        match self {
            InputState::Live => "live",
            InputState::Grace => "grace",
            InputState::Fallback => "fallback",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => InputState::Live,
            1 => InputState::Grace,
            _ => InputState::Fallback,
        }
    }
}

impl fmt::Display for InputState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_4608_bytes_and_24_ms() {
        assert_eq!(PCM_FRAME_BYTES, 4608);
        let samples = FRAME_SAMPLES as u32;
        assert_eq!(
            FRAME_DURATION.as_nanos(),
            u128::from(samples) * 1_000_000_000 / u128::from(SAMPLE_RATE)
        );
    }

    #[test]
    fn from_bytes_accepts_only_the_canonical_size() {
        assert!(PcmFrame::from_bytes(&[0; PCM_FRAME_BYTES]).is_ok());
        assert_eq!(PcmFrame::from_bytes(&[0; 4607]), Err(FrameSizeError(4607)));
        assert_eq!(PcmFrame::from_bytes(&[0; 4609]), Err(FrameSizeError(4609)));
        assert_eq!(PcmFrame::from_bytes(&[]), Err(FrameSizeError(0)));
    }

    #[test]
    fn input_state_round_trips_through_u8() {
        for s in [InputState::Live, InputState::Grace, InputState::Fallback] {
            assert_eq!(InputState::from_u8(s.to_u8()), s);
        }
    }
}
