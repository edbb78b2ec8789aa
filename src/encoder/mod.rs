//! The encoder: ffmpeg supervised, fed PCM by the pump, its output read
//! into the MP3 ring and paced by the broadcast thread, through the manager.

pub mod command;
#[cfg(any(test, feature = "test-hooks"))]
pub mod fake;
pub mod manager;
pub mod mp3;
pub mod pacer;
pub mod pipe;
pub mod process;
mod reader;
pub mod ring;
pub mod state;
pub mod supervisor;
mod turn;

use std::sync::Arc;

/// One whole MP3 frame, shared by every listener without copying.
pub type Mp3Frame = Arc<[u8]>;

pub use manager::{EncoderManager, EncoderSnapshot, Gather, ManagerConfig};
pub use state::{EncoderState, FailureKind};
