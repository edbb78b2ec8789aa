//! What every capture source is and says: the [`CaptureSource`] trait the
//! capture thread reads through, its errors sorted into classes in one
//! place ([`ErrorClass::from_errno`]), which device is in use and why
//! ([`Selection`]), and what a source fed by a program reports
//! ([`SocketStatus`]).
//!
//! The sources are the ALSA backend (`alsa`), `device = "auto"` (`auto`),
//! the socket input (`socket`) and the generator in tests (`fake`); the
//! loop that reads them is `capture`. Pure types: no thread runs here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::router::HIGH_WATER;

/// What went wrong with a capture device, and so what to do about it. The
/// one place where errors are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// EPIPE: the reader was late and audio was lost. Recover and go on.
    Overrun,
    /// ESTRPIPE: the system suspended the device. Resume (or prepare).
    Suspended,
    /// EAGAIN: nothing to read yet. Retry.
    Again,
    /// ENODEV: the device is gone (USB unplugged). Close, re-open.
    NoDevice,
    /// EIO: the driver failed. Close, re-open.
    Io,
    /// EBADFD: the PCM is in a state it cannot read from. Close, re-open.
    BadState,
    /// Open, but nothing delivered for 1 s. Close, re-open.
    Stalled,
    /// Anything else. Close, re-open.
    Other,
}

/// What the capture loop does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The source recovers the stream in place and reading goes on.
    Recover,
    /// Read again.
    Retry,
    /// Close the device and open it again after a backoff.
    Reopen,
}

impl ErrorClass {
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EPIPE => ErrorClass::Overrun,
            libc::ESTRPIPE => ErrorClass::Suspended,
            libc::EAGAIN => ErrorClass::Again,
            libc::ENODEV => ErrorClass::NoDevice,
            libc::EIO => ErrorClass::Io,
            libc::EBADFD => ErrorClass::BadState,
            _ => ErrorClass::Other,
        }
    }

    pub fn action(self) -> Action {
        match self {
            ErrorClass::Overrun | ErrorClass::Suspended => Action::Recover,
            ErrorClass::Again => Action::Retry,
            ErrorClass::NoDevice | ErrorClass::Io | ErrorClass::BadState | ErrorClass::Stalled | ErrorClass::Other => {
                Action::Reopen
            }
        }
    }
}

/// A capture error, already classified by the source.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture device {device:?}: {reason}")]
    Open { device: String, reason: String },
    /// An overrun or suspend: audio was lost, the source has recovered the
    /// stream and reading goes on.
    #[error("{class:?} on capture device {device:?}; recovered")]
    Recovered { device: String, class: ErrorClass },
    /// Nothing to read now (EAGAIN).
    #[error("capture device {device:?} has nothing to read (EAGAIN)")]
    Again { device: String },
    /// The device failed; it must be closed and opened again.
    #[error("capture device {device:?} failed ({class:?}): {reason}")]
    Failed {
        device: String,
        class: ErrorClass,
        reason: String,
    },
}

/// Which device is in use, whether Tower chose it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The ALSA device name in use (or `auto` before a card is found).
    pub name: String,
    /// Chosen by `device = "auto"`.
    pub auto: bool,
    pub reason: String,
    /// The card whose mixer holds the capture level, if known.
    #[serde(skip)]
    pub card: Option<String>,
}

impl Selection {
    /// A device named in the configuration.
    pub fn configured(name: &str) -> Selection {
        Selection {
            name: name.to_string(),
            auto: false,
            reason: "set in the configuration (device)".into(),
            card: card_of(name),
        }
    }
}

/// The card an ALSA device name refers to: `plughw:CARD=Device,DEV=0`
/// and `hw:CARD=Device` give `Device`, `hw:1,0` gives `1`; plugin names
/// (`default`, `dsnoop`, `jack`) name no card.
pub fn card_of(name: &str) -> Option<String> {
    let (kind, args) = name.split_once(':')?;
    if !["hw", "plughw", "sysdefault", "dsnoop", "front"].contains(&kind) {
        return None;
    }
    let first = args.split(',').next()?.trim();
    let card = first.strip_prefix("CARD=").unwrap_or(first);
    (!card.is_empty() && !card.contains('=')).then(|| card.to_string())
}

/// A source of interleaved s16le, 48 kHz, stereo audio.
pub trait CaptureSource: Send {
    /// The device name in use.
    fn device(&self) -> &str;
    /// The device in use and why; a configured name unless the source
    /// chooses for itself.
    fn selection(&self) -> Selection {
        Selection::configured(self.device())
    }
    /// Opens (or re-opens) the device in the canonical format.
    fn open(&mut self) -> Result<(), CaptureError>;
    /// Reads what is available into `buf` (whole sample frames), waiting at
    /// most `timeout`; `Ok(0)` when nothing came.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError>;
    fn close(&mut self);
    /// Whether an open source that delivers nothing for 1 s is
    /// closed and opened again. A sound card that stops is wedged and a
    /// re-open helps; a socket whose producer stopped is only waiting, and
    /// stays open so that the next producer is heard at once.
    fn reopen_when_stalled(&self) -> bool {
        true
    }
    /// The fill the input queue may keep through a whole drift window
    /// before the pump trims it [R6]. A sound card runs on its own clock,
    /// so its queue is kept near [`HIGH_WATER`]; a producer on Tower's own
    /// clock that paces itself from `/tower/buffer` needs room for the
    /// target it keeps.
    fn queue_high_water(&self, _capacity: usize) -> usize {
        HIGH_WATER
    }
    /// The socket input's own state, for `/status`; `None` for a sound card.
    fn socket(&self) -> Option<Arc<dyn SocketStatus>> {
        None
    }
}

/// What a source fed by a program (the socket input) says about its
/// producer, for `/status`.
pub trait SocketStatus: Send + Sync + std::fmt::Debug {
    fn snapshot(&self, now: Instant) -> SocketSnapshot;
}

/// What the socket input is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketState {
    /// No producer is connected.
    Waiting,
    /// A producer is connected and sent audio within 1 s.
    Receiving,
    /// A producer is connected but has sent nothing for 1 s.
    Idle,
}

impl SocketState {
    /// What `input.device.reason` says (no numbers: it is a metric label).
    pub fn reason(self) -> &'static str {
        match self {
            SocketState::Waiting => "set in the configuration (input); waiting for a producer to connect",
            SocketState::Receiving => "set in the configuration (input); a producer is connected and sending",
            SocketState::Idle => "set in the configuration (input); a producer is connected but sends nothing",
        }
    }
}

/// The connected producer, as the kernel identifies it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The socket input as `/status` shows it (`input.capture.socket`).
#[derive(Debug, Clone, Serialize)]
pub struct SocketSnapshot {
    pub path: String,
    pub state: SocketState,
    pub producer: Option<Peer>,
    /// How long the producer has been connected.
    pub connected_s: Option<f64>,
    /// How long since the producer's last whole frame.
    pub since_audio_s: Option<f64>,
    /// Producers accepted since start.
    pub producers_accepted: u64,
    /// Producers refused because another was connected and sending.
    pub producers_refused: u64,
    /// Producers that had sent nothing for [`GIVE_WAY_AFTER`] and were
    /// closed when a new one connected.
    ///
    /// [`GIVE_WAY_AFTER`]: super::socket::GIVE_WAY_AFTER
    pub producers_displaced: u64,
    /// Failed accepts of a producer's connection (out of descriptors or
    /// memory); each pauses accepting for a moment.
    pub accept_errors: u64,
    /// Partial frames lost when a producer left mid-frame.
    pub partial_frames_dropped: u64,
    /// Whole frames received.
    pub frames: u64,
}
