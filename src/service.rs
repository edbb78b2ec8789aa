//! The service: wires the pipeline, owns every worker, and decides what
//! happens when one dies [T1].
//!
//! Start order: encoder (its supervisor) → pump → capture → status
//! LEDs → HTTP server → broadcast loop → systemd watchdog. Stop is the
//! reverse, each step bounded in time, so a SIGTERM completes well within
//! 2 s.
//!
//! Supervision: every worker reports its end (a return or a panic) on one
//! channel, and [`Service::supervise`], called in a loop by `main`,
//! decides. Workers whose state can be rebuilt (capture, the status LEDs,
//! the HTTP front end, each Icecast output) are started again in place,
//! at once the first time and with a growing delay if they keep dying
//! ([`RestartBook`]); listeners stay connected, and each end is logged and
//! counted (`workers` in `/status`). The pump and the broadcast loop carry
//! the stream's clock and position and cannot be rebuilt in place: their
//! end makes `/health` answer 503 with the reason, stops the systemd
//! watchdog (it is fed only by their progress), and `supervise` returns
//! [`Fatal`] so the process exits non-zero and systemd starts it afresh.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audio::capture::{Capture, CaptureConfig, CaptureHandle, CaptureSource};
use crate::audio::mixer::Mixer;
use crate::audio::router::AudioInputRouter;
use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::encoder::EncoderManager;
use crate::encoder::command::{custom_command, default_command};
use crate::encoder::process::{EncoderLauncher, FfmpegLauncher};
use crate::encoder::ring::FrameRing;
use crate::hooks::TestHooks;
use crate::http::{HttpServer, HttpStats, Hub, Site};
use crate::leds::Leds;
use crate::pump::fallback::Fallback;
use crate::pump::{Pump, PumpConfig};
use crate::status::Board;
use crate::worker::{Ended, Ends, Supervisor, Worker, WorkerError};

/// Per-step stop timeout; the steps together stay under SIGTERM's 2 s.
const STEP_TIMEOUT: Duration = Duration::from_millis(400);

/// Makes a piece of hardware (again, when the worker using it died).
pub type Factory<T> = Box<dyn Fn() -> T + Send>;

/// The hardware behind the pipeline.
pub struct Backends {
    pub capture: Factory<std::io::Result<Box<dyn CaptureSource>>>,
    /// The capture card's mixer, for `capture.level`.
    pub mixer: Factory<Box<dyn Mixer>>,
    pub encoder: Box<dyn EncoderLauncher>,
    /// Fault injection for tests (see `hooks`); disabled in production.
    pub hooks: Arc<TestHooks>,
    /// The status LEDs.
    pub leds: Factory<Box<dyn Leds>>,
}

impl Backends {
    /// Capture from `config.input` (ALSA from `config.device`, or the
    /// socket, bound here) and the configured ffmpeg command.
    /// Returns notes about replaced custom-command flags, to log once.
    pub fn real(config: &Config) -> Result<(Backends, Vec<String>), ServiceError> {
        let (command, notes) = if config.encoder.args.is_empty() {
            (
                default_command(&config.ffmpeg, config.settings().bitrate_kbps),
                Vec::new(),
            )
        } else {
            custom_command(&config.ffmpeg, &config.encoder.args).map_err(|e| ServiceError::Config(e.to_string()))?
        };
        Ok((
            Backends {
                capture: {
                    // Bound now, so that a socket path that cannot be used
                    // stops start-up naming the key; made again only when
                    // the capture thread died.
                    let settings = config.settings();
                    let (input, device) = (settings.input, settings.device);
                    let first = crate::audio::input_capture(&input, &device)
                        .map_err(|e| ServiceError::Config(e.to_string()))?;
                    let first = std::sync::Mutex::new(Some(first));
                    Box::new(move || {
                        if let Some(source) = first.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            return Ok(source);
                        }
                        crate::audio::input_capture(&input, &device).map_err(std::io::Error::other)
                    })
                },
                mixer: Box::new(crate::audio::mixer::system_mixer),
                encoder: Box::new(FfmpegLauncher::new(command)),
                hooks: Arc::new(TestHooks::from_env()),
                leds: {
                    let leds = config.settings().leds;
                    Box::new(move || crate::leds::open(&leds))
                },
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

/// A worker that cannot be rebuilt in place has ended: the process must
/// exit (non-zero) so systemd starts it afresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; exiting so that systemd restarts Tower")]
pub struct Fatal(pub String);

/// The first wait before restarting a worker that died again soon after
/// its last restart; it doubles up to [`RESTART_MAX`].
pub const RESTART_FIRST: Duration = Duration::from_millis(100);
pub const RESTART_MAX: Duration = Duration::from_secs(10);
/// A worker that ran this long since its last end starts from no wait.
pub const RESTART_CALM: Duration = Duration::from_secs(60);

/// When to restart a worker, from its recent ends; time passed in.
#[derive(Debug, Clone, Default)]
pub struct RestartBook {
    /// Per worker: the last end and the wait used then.
    last: BTreeMap<String, (Instant, Duration)>,
}

impl RestartBook {
    /// The wait before restarting `worker`, which ended at `now`: none
    /// the first time (or after [`RESTART_CALM`]), then 100 ms doubling
    /// to 10 s while it keeps dying.
    pub fn delay(&mut self, worker: &str, now: Instant) -> Duration {
        let wait = match self.last.get(worker) {
            Some(&(at, prev)) if now.saturating_duration_since(at) < RESTART_CALM => {
                (prev * 2).clamp(RESTART_FIRST, RESTART_MAX)
            }
            _ => Duration::ZERO,
        };
        self.last.insert(worker.to_string(), (now, wait));
        wait
    }
}

/// What the service needs to start the restartable workers again.
struct Rebuild {
    supervisor: Supervisor,
    ends: Ends,
    capture: Factory<std::io::Result<Box<dyn CaptureSource>>>,
    mixer: Factory<Box<dyn Mixer>>,
    leds: Factory<Box<dyn Leds>>,
    capture_config: CaptureConfig,
    router: Arc<AudioInputRouter>,
    hooks: Arc<TestHooks>,
    site: Site,
    book: RestartBook,
    /// Restarts waiting for their time.
    due: Vec<(Instant, String)>,
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
    rebuild: Rebuild,
}

impl Service {
    pub fn start(config: &Config, backends: Backends) -> Result<Service, ServiceError> {
        let thread = |what: &'static str| move |source| ServiceError::Thread { what, source };
        let started = Instant::now();
        let settings = config.settings();
        let (supervisor, ends) = Supervisor::channel().map_err(thread("service"))?;
        let hooks = backends.hooks;
        let router = Arc::new(AudioInputRouter::new(settings.pcm_queue_frames));
        let ring = Arc::new(FrameRing::new(settings.mp3_ring_frames));

        // 1. Encoder: its supervisor (ffmpeg's output is read by the broadcast loop).
        let manager_config = settings.manager;
        tracing::info!(component = "encoder", command = %backends.encoder.describe(), "starting encoder");
        let encoder =
            Arc::new(EncoderManager::start(manager_config, backends.encoder, ring).map_err(thread("encoder"))?);

        // Icecast outputs, fed by the broadcast loop.
        let outputs = Arc::new(
            crate::broadcast::icecast::Outputs::start(
                &settings.icecast,
                &settings.station,
                u64::from(settings.bitrate_kbps),
                &supervisor,
                &hooks,
            )
            .map_err(thread("icecast"))?,
        );

        // 2. Pump.
        let fallback = Fallback::new(settings.fallback_wav.as_deref(), settings.fallback_tone);
        let fallback_kind = fallback.kind();
        let pump = Pump::start(
            PumpConfig {
                hooks: hooks.clone(),
                ..settings.pump
            },
            router.clone(),
            encoder.clone(),
            fallback,
            &supervisor,
        )
        .map_err(thread("pump"))?;
        let pump_stats = pump.stats();

        // 3. Capture.
        let capture_config = settings.capture;
        let first_source = (backends.capture)().map_err(thread("capture"))?;
        let capture_handle = CaptureHandle::new(first_source.device());
        let capture = Capture::start_on(
            capture_handle,
            first_source,
            (backends.mixer)(),
            router.clone(),
            capture_config.clone(),
            hooks.clone(),
            &supervisor,
        )
        .map_err(thread("capture"))?;

        // LEDs show the encoder's and the input's states.
        let first_leds = (backends.leds)();
        let led_status = first_leds.status();
        let leds = start_leds(first_leds, &encoder, &pump_stats, &supervisor, &hooks).map_err(thread("leds"))?;

        // 4. HTTP server.
        let hub = Arc::new(Hub::new(settings.hub));
        let board = Arc::new(Board {
            started,
            started_wall: SystemTime::now(),
            router: router.clone(),
            encoder: encoder.clone(),
            pump: pump_stats,
            capture: capture.handle(),
            hub: hub.clone(),
            outputs: outputs.clone(),
            fallback: fallback_kind,
            http: Arc::new(HttpStats::default()),
            station: settings.station.clone(),
            leds: led_status,
            workers: Default::default(),
        });
        let addr = settings.listen;
        let site = settings.site;
        let http = HttpServer::start(
            addr,
            site.clone(),
            hub.clone(),
            board.clone(),
            board.http.clone(),
            hooks.clone(),
            &supervisor,
        )
        .map_err(|source| ServiceError::Bind { addr, source })?;
        let bound = http.local_addr();

        // 5. Broadcast loop.
        let broadcast = Broadcast::start(encoder.clone(), hub.clone(), outputs, &supervisor, hooks.clone())
            .map_err(thread("broadcast"))?;
        let turns = broadcast.turns();

        // 6. The systemd watchdog, if asked for: fed only while the pump
        // ticks and the broadcast loop turns.
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
            rebuild: Rebuild {
                supervisor,
                ends,
                capture: backends.capture,
                mixer: backends.mixer,
                leds: backends.leds,
                capture_config,
                router,
                hooks,
                site,
                book: RestartBook::default(),
                due: Vec::new(),
            },
        })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The encoder: the owner's settings change its command through
    /// [`EncoderManager::relaunch`].
    pub fn encoder(&self) -> &Arc<EncoderManager> {
        &self.encoder
    }

    /// The `/status` document.
    pub fn status(&self) -> crate::status::Status {
        self.board.status()
    }

    /// Waits for a worker to end and decides what follows; also starts the
    /// restarts that are due. Returns when a worker ended, a restart is
    /// due, `also` (the caller's own wake-up: `main`'s signal pipe) is
    /// readable, or `limit` passed (never, for `None`): no timer wakes it
    /// while all is well. `Err` when the process must exit (see the module
    /// header).
    pub fn supervise(&mut self, also: Option<RawFd>, limit: Option<Duration>) -> Result<(), Fatal> {
        let now = Instant::now();
        self.restart_due(now);
        let next_due = self.rebuild.due.iter().map(|(at, _)| *at).min();
        let deadline = [next_due, limit.map(|l| now + l)].into_iter().flatten().min();
        match self.rebuild.ends.wait(also, deadline) {
            Some(ended) => self.ended(ended, Instant::now()),
            None => Ok(()),
        }
    }

    fn ended(&mut self, ended: Ended, now: Instant) -> Result<(), Fatal> {
        let name = ended.name.clone();
        self.board.worker_ended(&ended);
        if name == "audio-pump" || name == "broadcast" {
            let what = if name == "audio-pump" {
                "the audio pump"
            } else {
                "the broadcast loop"
            };
            let reason = format!("{what} died ({ended}); it cannot be restarted in place");
            tracing::error!(component = "service", state = "failed", reason = %reason, "{reason}; exiting so that systemd restarts Tower");
            self.board.set_fatal(&name);
            return Err(Fatal(reason));
        }
        let wait = self.rebuild.book.delay(&name, now);
        tracing::error!(
            component = "service",
            worker = %name,
            reason = %ended,
            "{ended}; restarting it in {} ms (listeners stay connected)",
            wait.as_millis()
        );
        self.rebuild.due.push((now + wait, name));
        self.restart_due(now);
        Ok(())
    }

    /// Starts again every worker whose restart is due.
    fn restart_due(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.rebuild.due.drain(..).partition(|(at, _)| *at <= now);
        self.rebuild.due = later;
        for (_, name) in due {
            match self.restart(&name) {
                Ok(()) => {
                    self.board.worker_restarted(&name);
                    tracing::info!(component = "service", worker = %name, "worker {name} restarted");
                }
                Err(e) => {
                    let wait = self.rebuild.book.delay(&name, now);
                    tracing::error!(component = "service", worker = %name, "cannot restart {name}: {e}; trying again in {} ms", wait.as_millis());
                    self.rebuild.due.push((now + wait, name));
                }
            }
        }
    }

    fn restart(&mut self, name: &str) -> std::io::Result<()> {
        let r = &self.rebuild;
        match name {
            "capture" => {
                let Some(dead) = self.capture.take() else { return Ok(()) };
                let handle = dead.handle();
                let _ = dead.stop(STEP_TIMEOUT);
                self.capture = Some(Capture::start_on(
                    handle,
                    (r.capture)()?,
                    (r.mixer)(),
                    r.router.clone(),
                    r.capture_config.clone(),
                    r.hooks.clone(),
                    &r.supervisor,
                )?);
            }
            "leds" => {
                if let Some(dead) = self.leds.take() {
                    let _ = dead.stop(STEP_TIMEOUT);
                }
                self.leds = Some(start_leds(
                    (r.leds)(),
                    &self.encoder,
                    &self.board.pump,
                    &r.supervisor,
                    &r.hooks,
                )?);
            }
            // The front end's two threads (the accept loop and the status
            // pages' feed) start and stop together.
            "http" | "events" => {
                if let Some(dead) = self.http.take() {
                    let _ = dead.stop(STEP_TIMEOUT);
                }
                self.http = Some(HttpServer::start(
                    self.addr,
                    r.site.clone(),
                    self.hub.clone(),
                    self.board.clone(),
                    self.board.http.clone(),
                    r.hooks.clone(),
                    &r.supervisor,
                )?);
            }
            other if other.starts_with("icecast-") => {
                self.board.outputs.restart(other, &r.supervisor, &r.hooks)?;
            }
            other => tracing::warn!(component = "service", "no way to restart worker {other}"),
        }
        Ok(())
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

/// The LED thread, showing the encoder's and the input's states.
fn start_leds(
    leds: Box<dyn Leds>,
    encoder: &Arc<EncoderManager>,
    pump: &Arc<crate::pump::PumpStats>,
    supervisor: &Supervisor,
    hooks: &Arc<TestHooks>,
) -> std::io::Result<Worker<()>> {
    let (enc, pump) = (encoder.clone(), pump.clone());
    crate::leds::start(
        leds,
        move || (enc.state(), pump.input_state()),
        supervisor,
        hooks.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_restarts_at_once_then_waits_longer_while_it_keeps_dying() {
        let mut book = RestartBook::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(book.delay("capture", t0), Duration::ZERO);
        assert_eq!(book.delay("capture", t0 + s(1)), RESTART_FIRST);
        assert_eq!(book.delay("capture", t0 + s(2)), RESTART_FIRST * 2);
        assert_eq!(book.delay("leds", t0 + s(2)), Duration::ZERO, "each worker has its own");
        let mut at = t0 + s(3);
        for _ in 0..20 {
            at += s(1);
            book.delay("capture", at);
        }
        assert_eq!(book.delay("capture", at + s(1)), RESTART_MAX);
        assert_eq!(
            book.delay("capture", at + s(1) + RESTART_CALM),
            Duration::ZERO,
            "calm for a minute: from the start"
        );
    }
}
