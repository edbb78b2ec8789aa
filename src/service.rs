//! The service: wires the pipeline and owns every worker [T1].
//!
//! Start order: encoder (supervisor and drains) → pump → capture → status
//! LEDs → HTTP server → broadcast loop → systemd watchdog. Stop is the
//! reverse, each step bounded in time, so a SIGTERM completes well within
//! 2 s. The broadcast loop ("broadcast") is the service's own thread: it
//! moves frames from the encoder manager to the listener hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audio::capture::{Capture, CaptureConfig, CaptureSource};
use crate::audio::router::AudioInputRouter;
use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::encoder::command::{custom_command, default_command};
use crate::encoder::process::{EncoderLauncher, FfmpegLauncher};
use crate::encoder::ring::FrameRing;
use crate::encoder::state::{Liveness, RestartPolicy};
use crate::encoder::supervisor::SupervisorConfig;
use crate::encoder::{EncoderManager, ManagerConfig};
use crate::hooks::TestHooks;
use crate::http::{HttpServer, HttpStats, Hub, HubConfig, Site, StatusSource};
use crate::pump::fallback::Fallback;
use crate::pump::{Pump, PumpConfig};
use crate::status::Board;
use crate::worker::{Worker, WorkerError};

/// Per-step stop timeout; the steps together stay under SIGTERM's 2 s.
const STEP_TIMEOUT: Duration = Duration::from_millis(400);

/// The hardware behind the pipeline.
pub struct Backends {
    pub capture: Box<dyn CaptureSource>,
    /// The capture card's mixer, for `capture.level`.
    pub mixer: Box<dyn crate::audio::mixer::Mixer>,
    pub encoder: Box<dyn EncoderLauncher>,
    /// Fault injection for tests (see `hooks`); disabled in production.
    pub hooks: Arc<TestHooks>,
    /// The status LEDs.
    pub leds: Box<dyn crate::leds::Leds>,
}

impl Backends {
    /// ALSA capture from `config.device` and the configured ffmpeg command.
    /// Returns notes about replaced custom-command flags, to log once.
    pub fn real(config: &Config) -> Result<(Backends, Vec<String>), ServiceError> {
        let (command, notes) = if config.encoder.args.is_empty() {
            (
                default_command(&config.ffmpeg, config.encoder.bitrate_kbps as u32),
                Vec::new(),
            )
        } else {
            custom_command(&config.ffmpeg, &config.encoder.args).map_err(|e| ServiceError::Config(e.to_string()))?
        };
        Ok((
            Backends {
                capture: crate::audio::system_capture(&config.device),
                mixer: crate::audio::mixer::system_mixer(),
                encoder: Box::new(FfmpegLauncher::new(command)),
                hooks: Arc::new(TestHooks::from_env()),
                leds: crate::leds::open(&config.leds()),
            },
            notes,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source} (is another Tower or web server using the port? change `listen`)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

/// A running Tower.
pub struct Service {
    encoder: Arc<EncoderManager>,
    pump: Option<Pump>,
    capture: Option<Capture>,
    leds: Option<Worker<()>>,
    watchdog: Option<Worker<()>>,
    http: Option<HttpServer>,
    broadcast: Option<Broadcast>,
    hub: Arc<Hub>,
    board: Arc<Board>,
    addr: SocketAddr,
}

impl Service {
    pub fn start(config: &Config, backends: Backends) -> Result<Service, ServiceError> {
        let thread = |what: &'static str| move |source| ServiceError::Thread { what, source };
        let started = Instant::now();
        let router = Arc::new(AudioInputRouter::new(config.pcm.buffer_size as usize));
        let ring = Arc::new(FrameRing::new(config.mp3.buffer_capacity_frames as usize));

        // 1. Encoder: supervisor and its drains.
        let e = &config.encoder;
        let manager_config = ManagerConfig {
            supervisor: SupervisorConfig {
                liveness: Liveness {
                    startup_timeout: Duration::from_millis(e.startup_timeout_ms),
                    stall_timeout: Duration::from_millis(e.stall_timeout_ms),
                },
                policy: RestartPolicy {
                    backoff: e.backoff_ms.iter().map(|&ms| Duration::from_millis(ms)).collect(),
                    max_restarts: e.max_restarts as u32,
                    failed_retry: Duration::from_secs(e.failed_retry_sec),
                    ..RestartPolicy::default()
                },
            },
            silence_after: Duration::from_millis(e.silence_after_ms),
            max_lead: Duration::from_millis(e.max_lead_ms),
        };
        tracing::info!(component = "encoder", command = %backends.encoder.describe(), "starting encoder");
        let encoder =
            Arc::new(EncoderManager::start(manager_config, backends.encoder, ring).map_err(thread("encoder"))?);

        // Icecast outputs, fed by the broadcast loop.
        let outputs = Arc::new(
            crate::broadcast::icecast::Outputs::start(&config.icecast, &config.station, config.encoder.bitrate_kbps)
                .map_err(|source| ServiceError::Thread {
                    what: "icecast",
                    source,
                })?,
        );

        // 2. Pump.
        let fallback = Fallback::new(config.fallback_wav().as_deref(), config.fallback.tone);
        let fallback_kind = fallback.kind();
        let pump = Pump::start(
            PumpConfig {
                grace: config.grace(),
                realtime_priority: config.pump.realtime_priority as u8,
                hooks: backends.hooks.clone(),
            },
            router.clone(),
            encoder.clone(),
            fallback,
        )
        .map_err(thread("pump"))?;
        let pump_stats = pump.stats();

        // 3. Capture.
        let capture = Capture::start(
            backends.capture,
            backends.mixer,
            router.clone(),
            CaptureConfig {
                silence_warn: Duration::from_secs_f64(config.pcm.silence_warn_sec),
                level: config.capture_level(),
            },
            backends.hooks.clone(),
        )
        .map_err(thread("capture"))?;

        // LEDs show the encoder's and the input's states.
        let led_status = backends.leds.status();
        let leds = {
            let (enc, pump) = (encoder.clone(), pump_stats.clone());
            crate::leds::start(backends.leds, move || (enc.state(), pump.input_state())).map_err(thread("leds"))?
        };

        // 4. HTTP server.
        let hub = Arc::new(Hub::new(HubConfig {
            slow_timeout: Duration::from_millis(config.http.slow_listener_timeout_ms),
            max_listeners: config.http.max_listeners as usize,
            burst_frames: HubConfig::frames_for(config.http.burst_ms),
        }));
        let board = Arc::new(Board {
            started,
            started_wall: SystemTime::now(),
            router,
            encoder: encoder.clone(),
            pump: pump_stats,
            capture: capture.handle(),
            hub: hub.clone(),
            outputs: outputs.clone(),
            fallback: fallback_kind,
            http: Arc::new(HttpStats::default()),
            station: config.station.clone(),
            leds: led_status,
        });
        let addr = config.listen_addr();
        let site = Site {
            station: config.station.clone(),
            bitrate_kbps: config.encoder.bitrate_kbps,
            icy_metaint: config.http.icy_metaint as usize,
            guard: crate::http::guard::Limits {
                header_timeout: Duration::from_millis(config.http.header_timeout_ms),
                per_address: config.http.max_connections_per_address as usize,
                total: config.http.max_other_connections as usize,
            },
        };
        let http = HttpServer::start(
            addr,
            site,
            hub.clone(),
            board.clone(),
            board.http.clone(),
            backends.hooks,
        )
        .map_err(|source| ServiceError::Bind { addr, source })?;
        let bound = http.local_addr();

        // 5. Broadcast loop.
        let broadcast = Broadcast::start(encoder.clone(), hub.clone(), outputs.clone()).map_err(thread("broadcast"))?;
        let turns = broadcast.turns();

        // 6. The systemd watchdog, if asked for.
        let pump_stats = board.pump.clone();
        let watchdog = crate::watchdog::start(move || crate::watchdog::Progress {
            pump_ticks: pump_stats.ticks(),
            broadcast_turns: turns.load(std::sync::atomic::Ordering::Relaxed),
        })
        .map_err(thread("watchdog"))?;

        tracing::info!(component = "http", "listening on http://{bound}/stream");
        Ok(Service {
            encoder,
            pump: Some(pump),
            capture: Some(capture),
            leds: Some(leds),
            watchdog,
            http: Some(http),
            broadcast: Some(broadcast),
            hub,
            board,
            addr: bound,
        })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        self.board.status()
    }

    /// Stops everything in reverse start order; returns the problems seen.
    pub fn stop(mut self) -> Vec<WorkerError> {
        let mut problems = Vec::new();
        let mut note = |r: Result<(), WorkerError>| {
            if let Err(e) = r {
                tracing::warn!(component = "service", "{e}");
                problems.push(e);
            }
        };
        if let Some(w) = self.watchdog.take() {
            note(w.stop(STEP_TIMEOUT));
        }
        if let Some(b) = self.broadcast.take() {
            note(b.stop(STEP_TIMEOUT));
        }
        if let Some(h) = self.http.take() {
            note(h.stop(STEP_TIMEOUT));
        }
        self.hub.close_all();
        for e in self.board.outputs.stop(STEP_TIMEOUT) {
            note(Err(e));
        }
        if let Some(c) = self.capture.take() {
            note(c.stop(STEP_TIMEOUT));
        }
        if let Some(l) = self.leds.take() {
            note(crate::leds::stop(l, STEP_TIMEOUT));
        }
        if let Some(p) = self.pump.take() {
            note(p.stop(STEP_TIMEOUT));
        }
        note(self.encoder.stop(STEP_TIMEOUT * 2));
        problems
    }
}
