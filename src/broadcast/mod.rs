//! The broadcast stage: one thread ("broadcast") moves every whole MP3
//! frame from the encoder manager to the listeners and to each Icecast
//! server.
//!
//! The loop drains what the encoder has ready (reading the clock per
//! frame, so a slow turn drops nothing), hands each frame to the
//! [`Listeners`] (the HTTP listener hub) and to the Icecast [`Outputs`],
//! then waits in the encoder for more: it reads ffmpeg's output itself,
//! until the pacer's next deadline (`EncoderManager::wait`). Neither side
//! can block it: the hub drops slow listeners and each Icecast output has
//! its own queue. Its turn counter feeds the systemd watchdog, so a hung
//! loop gets the service restarted.

pub mod icecast;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::encoder::{EncoderManager, Mp3Frame};
use crate::hooks::{PanicTarget, TestHooks};
use crate::worker::{Supervisor, Worker, WorkerError};
use icecast::Outputs;

/// Whoever listens on this box. The HTTP listener hub implements it;
/// broadcasting to it must never block.
pub trait Listeners: Send + Sync + 'static {
    fn broadcast(&self, frame: &Mp3Frame, now: Instant);
}

/// The running broadcast loop; [`Broadcast::stop`] ends and joins it.
pub struct Broadcast {
    worker: Worker<()>,
    encoder: Arc<EncoderManager>,
    turns: Arc<AtomicU64>,
}

impl Broadcast {
    pub fn start(
        encoder: Arc<EncoderManager>,
        listeners: Arc<dyn Listeners>,
        outputs: Arc<Outputs>,
        supervisor: &Supervisor,
        hooks: Arc<TestHooks>,
    ) -> std::io::Result<Broadcast> {
        let turns = Arc::new(AtomicU64::new(0));
        let (enc, counter) = (encoder.clone(), turns.clone());
        let worker = Worker::spawn_supervised("broadcast", supervisor, move |stop| {
            while !stop.is_stopped() {
                hooks.panic_point(PanicTarget::Broadcast);
                counter.fetch_add(1, Ordering::Relaxed);
                enc.drain(Instant::now, |frame, now| {
                    listeners.broadcast(frame, now);
                    outputs.offer(frame);
                });
                enc.wait(Instant::now());
            }
        })?;
        Ok(Broadcast { worker, encoder, turns })
    }

    /// Turns of the loop so far: the watchdog's sign of life.
    pub fn turns(&self) -> Arc<AtomicU64> {
        self.turns.clone()
    }

    /// Signals the loop, wakes it from its wait and joins it.
    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        self.worker.stop_signal().stop();
        self.encoder.wake();
        self.worker.stop(timeout)
    }
}

/// How players and smart speakers name the station (ICY headers, the
/// playlist, the status page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Station {
    pub name: String,
    pub description: String,
    pub genre: String,
    pub url: String,
    /// What players show as the current title (ICY `StreamTitle`).
    pub title: String,
}

impl Default for Station {
    fn default() -> Self {
        Station {
            name: "Tower".into(),
            description: "Live from the Tower".into(),
            genre: "Various".into(),
            url: String::new(),
            title: "Live".into(),
        }
    }
}
