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

use serde_json::json;

use crate::audio::capture::{Capture, CaptureConfig, CaptureHandle, CaptureSource};
use crate::config::Config;
use crate::encoder::command::{custom_command, default_command};
use crate::encoder::process::{EncoderLauncher, FfmpegLauncher};
use crate::encoder::state::{Liveness, RestartPolicy};
use crate::encoder::supervisor::SupervisorConfig;
use crate::encoder::{EncoderManager, ManagerConfig};
use crate::fallback::{Fallback, FallbackKind};
use crate::hooks::TestHooks;
use crate::http::{HttpServer, HttpStats, Hub, HubConfig, Site, StatusSource};
use crate::pump::{Pump, PumpConfig, PumpStats};
use crate::ring::FrameRing;
use crate::router::AudioInputRouter;
use crate::worker::{Worker, WorkerError};

/// Per-step stop timeout; the steps together stay under SIGTERM's 2 s.
const STEP_TIMEOUT: Duration = Duration::from_millis(400);

/// The hardware behind the pipeline.
pub struct Backends {
    pub capture: Box<dyn CaptureSource>,
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

/// Everything `/status` reads.
struct Board {
    started: Instant,
    started_wall: SystemTime,
    router: Arc<AudioInputRouter>,
    encoder: Arc<EncoderManager>,
    pump: Arc<PumpStats>,
    capture: CaptureHandle,
    hub: Arc<Hub>,
    outputs: Arc<crate::icecast::Outputs>,
    fallback: FallbackKind,
    http: Arc<HttpStats>,
    station: crate::config::Station,
}

/// A pump that has not ticked for this long is stalled (it ticks every 24 ms).
const PUMP_STALLED_AFTER: Duration = Duration::from_secs(1);

impl StatusSource for Board {
    fn status(&self) -> serde_json::Value {
        let router = self.router.stats();
        let ring = self.encoder.ring().stats();
        let enc = self.encoder.snapshot();
        let pump = self.pump.snapshot();
        let capture = self.capture.snapshot();
        let hub = self.hub.snapshot();
        let http = self.http.snapshot();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": humantime::format_rfc3339_seconds(self.started_wall).to_string(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "station": {
                "name": self.station.name,
                "description": self.station.description,
                "genre": self.station.genre,
                "url": self.station.url,
                "title": self.station.title,
            },
            "encoder": enc,
            "input": {
                "state": self.pump.input_state(),
                "device": capture.device,
                "device_state": capture.state,
                "fallback_source": self.fallback,
                "level": self.capture.levels(Instant::now()),
                "capture": capture,
            },
            "listeners": hub,
            "outputs": self.outputs.snapshot(),
            "pcm_buffer": router,
            "mp3_buffer": ring,
            "pump": pump,
            "http": http,
            "counters": {
                "pcm_frames_in": router.pushed,
                "mp3_frames_out": enc.mp3_frames_out,
                "silence_frames_out": enc.silence_frames_out,
                "encoder_restarts": enc.supervisor.restarts,
                "slow_listeners_dropped": hub.slow_dropped,
                "drops": {
                    "pcm_queue_full": router.dropped_full,
                    "pcm_malformed": router.rejected_malformed,
                    "pcm_encoder_down": enc.pcm_dropped_encoder_down + enc.supervisor.pcm_dropped_not_running,
                    "pcm_encoder_pipe_full": enc.supervisor.pcm_dropped_pipe_full,
                    "pcm_encoder_busy": enc.supervisor.pcm_dropped_busy,
                    "capture_overruns": capture.errors.overrun,
                    "pcm_drift_trimmed": router.drift_trimmed,
                    "mp3_ring_full": ring.dropped_oldest,
                    "mp3_late_trimmed": enc.mp3_frames_trimmed,
                    "mp3_broadcast_behind": enc.mp3_frames_skipped_behind,
                    "slow_listeners": hub.slow_dropped,
                },
            },
        })
    }

    fn buffer(&self) -> (usize, usize) {
        (self.router.fill(), self.router.capacity())
    }

    fn metrics(&self) -> String {
        crate::http::metrics::render(&self.status(), self.pump.tick_error())
    }

    fn level(&self) -> serde_json::Value {
        let reading = self.capture.levels(Instant::now());
        json!({
            "peak_dbfs": reading.levels.peak_dbfs,
            "rms_dbfs": reading.levels.rms_dbfs,
            "silent_for_s": reading.silent_for_s,
            "state": self.pump.input_state(),
        })
    }

    fn health(&self) -> Vec<String> {
        let now = Instant::now();
        let mut reasons = Vec::new();
        let enc = self.encoder.snapshot();
        if enc.supervisor.state == crate::encoder::state::EncoderState::Failed {
            let why = enc
                .supervisor
                .history
                .last()
                .map(|t| t.reason.clone())
                .unwrap_or_default();
            reasons.push(format!("encoder FAILED: {why}"));
        }
        let stalled = match self.pump.since_last_tick(now) {
            Some(d) => (d >= PUMP_STALLED_AFTER).then_some(d),
            None => {
                let up = now.saturating_duration_since(self.started);
                (up >= PUMP_STALLED_AFTER).then_some(up)
            }
        };
        if let Some(d) = stalled {
            reasons.push(format!("audio pump stalled: no tick for {} ms", d.as_millis()));
        }
        reasons
    }
}

/// A running Tower.
pub struct Service {
    encoder: Arc<EncoderManager>,
    pump: Option<Pump>,
    capture: Option<Capture>,
    leds: Option<Worker<()>>,
    watchdog: Option<Worker<()>>,
    http: Option<HttpServer>,
    broadcast: Option<Worker<()>>,
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
            crate::icecast::Outputs::start(&config.icecast, &config.station, config.encoder.bitrate_kbps).map_err(
                |source| ServiceError::Thread {
                    what: "icecast",
                    source,
                },
            )?,
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
            router.clone(),
            CaptureConfig {
                silence_warn: Duration::from_secs_f64(config.pcm.silence_warn_sec),
            },
            backends.hooks.clone(),
        )
        .map_err(thread("capture"))?;

        // LEDs show the encoder's and the input's states.
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
        let (enc, h, out) = (encoder.clone(), hub.clone(), outputs.clone());
        let turns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = turns.clone();
        let broadcast = Worker::spawn("broadcast", move |stop| {
            while !stop.is_stopped() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                enc.drain(Instant::now, |frame, now| {
                    h.broadcast(frame, now);
                    out.offer(frame);
                });
                enc.wait(Instant::now());
            }
        })
        .map_err(thread("broadcast"))?;

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
            b.stop_signal().stop();
            self.encoder.wake();
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
