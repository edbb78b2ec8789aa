//! The service: wires the pipeline, owns every worker, and decides what
//! happens when one dies [T1].
//!
//! Start order: encoder (supervisor and drains) → Icecast outputs and their
//! titles → pump → capture → status LEDs (and the amplifier line) → the
//! owner's desk → HTTP server → speakers → broadcast loop → MQTT link →
//! systemd watchdog (and the producer's title socket with the socket
//! input). Stop is the reverse, each step bounded in time, so a SIGTERM
//! completes well within 2 s.
//!
//! Supervision: every worker reports its end (a return or a panic) on one
//! channel, and [`Service::supervise`], called in a loop by `main`,
//! decides. Workers whose state can be rebuilt (capture, the status LEDs,
//! the HTTP front end, the MQTT link, the connection log, each Icecast
//! output) are started again in place, at once the first time and with a
//! growing delay if they keep dying ([`RestartBook`]); listeners stay
//! connected, and each end is logged and
//! counted (`workers` in `/status`). The pump and the broadcast loop carry
//! the stream's clock and position and cannot be rebuilt in place: their
//! end makes `/health` answer 503 with the reason, stops the systemd
//! watchdog (it is fed only by their progress), and `supervise` returns
//! [`Fatal`] so the process exits non-zero and systemd starts it afresh.
//!
//! Changes while running: the admin thread (see `admin`) checks and saves
//! what the owner changed, and asks this thread, through the same inbox
//! the workers report to, first to prepare the change (build what can
//! still fail, before anything changes), then to apply it. [`Service::apply`]
//! is the one table of who takes what: each stage gets its new settings in
//! its own type (`Settings`), and none reads the file again. Only this
//! thread starts and stops workers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant, SystemTime};

use crate::admin::calibrate::Gain;
use crate::admin::{Admin, Control};
use crate::audio::capture::{Capture, CaptureConfig, CaptureHandle, CaptureSource};
use crate::audio::mixer::Mixer;
use crate::audio::router::AudioInputRouter;
use crate::audio::socket::Input;
use crate::broadcast::title::{IcecastTitles, TitleFeed, TitleSocket, TitleStats};
use crate::broadcast::{Broadcast, NowPlaying, Station, TitleAudit, clean_title};
use crate::config::change::{FieldErrors, Proposal, Taker, taker};
use crate::config::store::Store;
use crate::config::{Config, Loaded, Settings};
use crate::encoder::EncoderManager;
use crate::encoder::command::{EncoderCommand, at_sample_rate, custom_command, default_command};
use crate::encoder::process::{EncoderLauncher, FfmpegLauncher};
use crate::encoder::ring::FrameRing;
use crate::hooks::TestHooks;
use crate::http::{ConnLog, ConnLogger, Desk, HttpServer, HttpStats, Hub, Site, Who};
use crate::leds::{AmpBoard, LedConfig, Leds};
use crate::live::Live;
use crate::mqtt::{MqttSettings, MqttStats};
use crate::pump::fallback::Fallback;
use crate::pump::{Pump, PumpChange, PumpConfig};
use crate::speakers::{SpeakersConfig, SpeakersDesk, SpeakersInbox, SpeakersWorker};
use crate::status::{AdminCounters, Board, ChangeLog};
use crate::worker::{Ended, Mailbox, Post, Supervisor, Worker, WorkerError};

/// Per-step stop timeout; the steps together stay under SIGTERM's 2 s.
const STEP_TIMEOUT: Duration = Duration::from_millis(400);

/// How long the admin thread waits for this thread to prepare or apply a
/// change.
const ORDER_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes a piece of hardware (again, when the worker using it died).
pub type Factory<T> = Box<dyn Fn() -> T + Send>;
/// Makes the capture source for an input and a device name.
pub type CaptureFactory = Box<dyn Fn(&Input, &str) -> std::io::Result<Box<dyn CaptureSource>> + Send>;
/// Makes the encoder's launcher for a command (the configured one at
/// start, a new one when the owner changes the bitrate).
pub type EncoderFactory = Box<dyn Fn(EncoderCommand) -> Box<dyn EncoderLauncher> + Send>;
/// Opens the status LEDs on the configured pins.
pub type LedFactory = Box<dyn Fn(&LedConfig) -> Box<dyn Leds> + Send>;

/// The hardware behind the pipeline.
pub struct Backends {
    pub capture: CaptureFactory,
    /// The capture card's mixer, for `capture.level`.
    pub mixer: Factory<Box<dyn Mixer>>,
    pub encoder: EncoderFactory,
    /// Fault injection for tests (see `hooks`); disabled in production.
    pub hooks: Arc<TestHooks>,
    /// The status LEDs.
    pub leds: LedFactory,
}

/// What the owner's desk starts from: the configuration as loaded, where
/// changes are saved, and what to say about how it was loaded.
pub struct AdminSetup {
    pub loaded: Loaded,
    pub store: Box<dyn Store>,
    pub notice: Option<String>,
    /// The SD image's Wi-Fi manager's state (the LEDs show its setup
    /// hotspot; the settings page its network).
    pub wifi: Option<Arc<crate::wifi::WifiWatch>>,
}

impl Backends {
    /// Capture from `config.input` (ALSA from `config.device`, or the
    /// socket, bound here) and the configured ffmpeg command.
    /// Returns notes about replaced custom-command flags, to log once.
    pub fn real(config: &Config) -> Result<(Backends, Vec<String>), ServiceError> {
        let (_, notes) = encoder_command(config)?;
        Ok((
            Backends {
                capture: {
                    // Bound now, so that a socket path that cannot be used
                    // stops start-up naming the key; made again only when
                    // the capture thread died or the owner chose another.
                    let settings = config.settings();
                    let first = crate::audio::input_capture(&settings.input, &settings.device)
                        .map_err(|e| ServiceError::Config(e.to_string()))?;
                    let first = std::sync::Mutex::new(Some(first));
                    Box::new(move |input: &Input, device: &str| {
                        if let Some(source) = first.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            return Ok(source);
                        }
                        crate::audio::input_capture(input, device).map_err(std::io::Error::other)
                    })
                },
                mixer: Box::new(crate::audio::mixer::system_mixer),
                encoder: Box::new(|command| Box::new(FfmpegLauncher::new(command))),
                hooks: Arc::new(TestHooks::from_env()),
                leds: Box::new(crate::leds::open),
            },
            notes,
        ))
    }
}

/// The ffmpeg command `config` asks for (`encoder.args`, or the default
/// at `encoder.bitrate_kbps`, at `mp3.sample_rate`), with a note for each
/// custom flag Tower replaced.
pub fn encoder_command(config: &Config) -> Result<(EncoderCommand, Vec<String>), ServiceError> {
    let (command, notes) = if config.encoder.args.is_empty() {
        (
            default_command(&config.ffmpeg, config.settings().bitrate_kbps),
            Vec::new(),
        )
    } else {
        custom_command(&config.ffmpeg, &config.encoder.args).map_err(|e| ServiceError::Config(e.to_string()))?
    };
    Ok((at_sample_rate(command, config.settings().mp3_sample_rate), notes))
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

/// What the service's thread hears about: a worker that ended, or an
/// order from the owner's desk.
enum Inbox {
    Ended(Ended),
    Order(Order),
}

/// What the admin thread asks of the service's thread (see `admin`).
enum Order {
    Prepare(Box<Proposal>, SyncSender<Result<Prepared, FieldErrors>>),
    Apply(Box<Prepared>, SyncSender<BTreeMap<String, String>>),
    Restart,
}

/// What `supervise` says the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Continue,
    /// The owner asked for a restart: stop, then start the process again.
    Restart,
}

/// A change, prepared: the stages' new settings, and what was built
/// before anything changed.
pub struct Prepared {
    /// What runs once it is applied (restart-only keys at their running
    /// values: `config::change::live_part`).
    running: Config,
    settings: Settings,
    takers: BTreeSet<Taker>,
    /// The new capture source, when the input changes (a socket already
    /// bound). `None` when it can only be made once the old one is closed
    /// (the same socket path).
    source: Option<Box<dyn CaptureSource>>,
    /// The new fallback, when it changes (its WAV already read).
    fallback: Option<Fallback>,
    /// The encoder's new command, when it changes.
    command: Option<EncoderCommand>,
    warnings: BTreeMap<String, String>,
}

/// What the service needs to start the restartable workers again, with
/// the settings in force.
struct Rebuild {
    supervisor: Supervisor,
    inbox: Mailbox<Inbox>,
    capture: CaptureFactory,
    encoder: EncoderFactory,
    input: Input,
    device: String,
    mixer: Factory<Box<dyn Mixer>>,
    leds: LedFactory,
    led_config: LedConfig,
    wifi: Option<Arc<crate::wifi::WifiWatch>>,
    mqtt: Option<MqttSettings>,
    capture_config: CaptureConfig,
    router: Arc<AudioInputRouter>,
    hooks: Arc<TestHooks>,
    site: Arc<Live<Site>>,
    desk: Option<Arc<dyn Desk>>,
    now_playing: NowPlaying,
    title_feed: TitleFeed,
    /// The speakers thread's inbox and settings (when it runs).
    speakers: Option<(SpeakersInbox, Arc<SpeakersConfig>)>,
    book: RestartBook,
    /// Restarts waiting for their time.
    due: Vec<(Instant, String)>,
    /// The configuration running now: the one Tower started with, and the
    /// live part of each change since.
    running: Config,
}

/// A running Tower.
pub struct Service {
    encoder: Arc<EncoderManager>,
    pump: Option<Pump>,
    capture: Option<Capture>,
    leds: Option<Worker<()>>,
    mqtt: Option<Worker<()>>,
    watchdog: Option<Worker<()>>,
    http: Option<HttpServer>,
    broadcast: Option<Broadcast>,
    admin: Option<crate::admin::Running>,
    /// Writes out the hubs' connection events.
    conn_log: Option<ConnLogger>,
    /// The producer's title socket, while the input is a socket.
    titles: Option<TitleSocket>,
    speakers: Option<SpeakersWorker>,
    icecast_titles: Option<IcecastTitles>,
    hub: Arc<Hub>,
    board: Arc<Board>,
    station: Arc<Live<Station>>,
    /// `station.title` in force: the title at start, which a change of
    /// other station texts must not put back over what is playing.
    configured_title: String,
    addr: SocketAddr,
    rebuild: Rebuild,
}

impl Service {
    /// Starts the pipeline; with `admin`, also the owner's desk.
    pub fn start(config: &Config, backends: Backends, admin: Option<AdminSetup>) -> Result<Service, ServiceError> {
        let thread = |what: &'static str| move |source| ServiceError::Thread { what, source };
        let started = Instant::now();
        let settings = config.settings();
        let (post, inbox) = Mailbox::new().map_err(thread("service"))?;
        let reports = post.clone();
        let supervisor = Supervisor::reporting(move |ended| drop(reports.send(Inbox::Ended(ended))));
        let hooks = backends.hooks;
        let router = Arc::new(AudioInputRouter::new(settings.pcm_queue_frames));
        let ring = Arc::new(FrameRing::new(settings.mp3_ring_frames));

        // 1. Encoder: its supervisor (ffmpeg's output is read by the broadcast loop).
        let manager_config = settings.manager;
        let launcher = (backends.encoder)(encoder_command(config)?.0);
        tracing::info!(component = "encoder", command = %launcher.describe(), "starting encoder");
        let encoder = Arc::new(EncoderManager::start(manager_config, launcher, ring).map_err(thread("encoder"))?);

        // Icecast outputs, fed by the broadcast loop; those set to stream
        // only while program plays ask the capture thread's detector,
        // which starts below.
        let detector: Arc<std::sync::OnceLock<CaptureHandle>> = Arc::default();
        let program = detector.clone();
        let outputs = Arc::new(
            crate::broadcast::icecast::Outputs::start(
                &settings.icecast,
                &settings.station,
                u64::from(settings.bitrate_kbps),
                settings.mp3_sample_rate,
                &supervisor,
                &hooks,
                Arc::new(move || program.get().is_some_and(|c| c.program().is_program())),
            )
            .map_err(thread("icecast"))?,
        );

        // 2. Pump.
        let fallback = Fallback::new(settings.fallback_wav.as_deref(), settings.fallback_tone);
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
        let first_source = (backends.capture)(&settings.input, &settings.device).map_err(thread("capture"))?;
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
        capture.handle().program().tune(settings.program);
        let _ = detector.set(capture.handle());

        // LEDs show the encoder's and the input's states; the amplifier
        // line follows program.
        let first_leds = (backends.leds)(&settings.leds);
        let led_status = first_leds.status();
        let amp = Arc::new(AmpBoard::default());
        amp.reset(settings.leds.amp.as_ref(), first_leds.drives_pins());
        let wifi = admin.as_ref().and_then(|a| a.wifi.clone());
        let leds = start_leds(
            first_leds,
            &settings.leds,
            &amp,
            &encoder,
            &pump_stats,
            &capture.handle(),
            wifi.clone(),
            &supervisor,
            &hooks,
        )
        .map_err(thread("leds"))?;

        // 4. HTTP server and the thread that logs its connections, and the
        // owner's desk.
        let conn_log = Arc::new(ConnLog::default());
        let conn_logger = conn_log.start(&supervisor).map_err(thread("conn-log"))?;
        let hub = Arc::new(Hub::new(settings.hub, Who::Listener, conn_log));
        let station = Arc::new(Live::new(Station {
            title: clean_title(&settings.station.title),
            ..settings.station.clone()
        }));
        let changes = Arc::new(ChangeLog::default());
        let admin_counters = Arc::new(AdminCounters::default());
        let now_playing = NowPlaying::new(station.clone(), title_audit(changes.clone()));
        let title_feed = TitleFeed {
            station: station.clone(),
            outputs: outputs.clone(),
            targets: Arc::new(Live::new(settings.icecast.clone())),
            stats: Arc::new(TitleStats::default()),
        };
        // Only while there are targets to tell (see `restart`).
        let icecast_titles = if settings.icecast.is_empty() {
            None
        } else {
            Some(IcecastTitles::start(title_feed.clone(), &supervisor).map_err(thread("icecast-titles"))?)
        };
        let titles = start_title_socket(&settings.input, &now_playing, &supervisor);
        let board = Arc::new(Board {
            started,
            started_wall: SystemTime::now(),
            router: router.clone(),
            encoder: encoder.clone(),
            pump: pump_stats,
            capture: capture.handle(),
            hub: hub.clone(),
            outputs: outputs.clone(),
            http: Arc::new(HttpStats::default()),
            station: station.clone(),
            leds: std::sync::Mutex::new(led_status),
            amp,
            mqtt: Arc::new(MqttStats::default()),
            changes: changes.clone(),
            admin: admin_counters.clone(),
            titles: title_feed.stats.clone(),
            config_notice: admin.as_ref().and_then(|a| a.notice.clone()),
            workers: Default::default(),
        });
        let speakers_desk = settings.speakers.then(|| {
            let hub = hub.clone();
            crate::speakers::desk(Arc::new(move || {
                hub.listeners(Instant::now())
                    .iter()
                    .filter_map(|l| l.peer.parse::<SocketAddr>().ok().map(|a| a.ip()))
                    .collect()
            }))
        });
        let (admin_worker, desk) = match admin {
            Some(setup) => {
                let control = ServiceControl {
                    inbox: post.clone(),
                    board: board.clone(),
                    now_playing: now_playing.clone(),
                    speakers: speakers_desk.as_ref().map(|(d, _)| d.clone()),
                };
                let running = Admin::new(
                    control,
                    setup.loaded,
                    setup.store,
                    setup.notice,
                    changes,
                    admin_counters,
                )
                .with_wifi(setup.wifi)
                .start(&supervisor)
                .map_err(thread("admin"))?;
                let desk = running.desk.clone() as Arc<dyn Desk>;
                (Some(running), Some(desk))
            }
            None => (None, None),
        };
        let addr = settings.listen;
        let site = Arc::new(Live::new(Site::new(&settings.site, station.clone())));
        let http = HttpServer::start(
            addr,
            site.clone(),
            desk.clone(),
            hub.clone(),
            board.clone(),
            board.http.clone(),
            hooks.clone(),
            &supervisor,
        )
        .map_err(|source| ServiceError::Bind { addr, source })?;
        let bound = http.local_addr();

        // The speakers thread: it gives renderers the port bound.
        let speakers = match speakers_desk {
            Some((_, inbox)) => {
                let config = Arc::new(SpeakersConfig {
                    listen: bound,
                    station: station.clone(),
                });
                let worker =
                    crate::speakers::start(inbox.clone(), config.clone(), &supervisor).map_err(thread("speakers"))?;
                Some((worker, (inbox, config)))
            }
            None => None,
        };
        let (speakers, speakers_rebuild) = match speakers {
            Some((w, r)) => (Some(w), Some(r)),
            None => (None, None),
        };

        // 5. Broadcast loop.
        let broadcast = Broadcast::start(encoder.clone(), hub.clone(), outputs, &supervisor, hooks.clone())
            .map_err(thread("broadcast"))?;
        let turns = broadcast.turns();

        // The MQTT link to Home Assistant, if configured: last, as nothing
        // in the stream depends on it.
        let mqtt = match &settings.mqtt {
            Some(m) => Some(start_mqtt(m.clone(), &board, &now_playing, &supervisor).map_err(thread("mqtt"))?),
            None => None,
        };

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
            mqtt,
            watchdog,
            http: Some(http),
            broadcast: Some(broadcast),
            admin: admin_worker,
            conn_log: Some(conn_logger),
            titles,
            speakers,
            icecast_titles,
            hub,
            board,
            station,
            configured_title: settings.station.title.clone(),
            addr: bound,
            rebuild: Rebuild {
                supervisor,
                inbox,
                capture: backends.capture,
                encoder: backends.encoder,
                input: settings.input,
                device: settings.device,
                mixer: backends.mixer,
                leds: backends.leds,
                led_config: settings.leds,
                wifi,
                mqtt: settings.mqtt,
                capture_config,
                router,
                hooks,
                site,
                desk,
                now_playing,
                title_feed,
                speakers: speakers_rebuild,
                book: RestartBook::default(),
                due: Vec::new(),
                running: config.clone(),
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

    /// Waits for a worker to end or for an order from the owner's desk,
    /// and deals with it; also starts the restarts that are due. Returns
    /// when one came, a restart is due, `also` (the caller's own wake-up:
    /// `main`'s signal pipe) is readable, or `limit` passed (never, for
    /// `None`): no timer wakes it while all is well. `Err` when the process
    /// must exit (see the module header).
    pub fn supervise(&mut self, also: Option<RawFd>, limit: Option<Duration>) -> Result<Turn, Fatal> {
        let now = Instant::now();
        self.restart_due(now);
        let next_due = self.rebuild.due.iter().map(|(at, _)| *at).min();
        let deadline = [next_due, limit.map(|l| now + l)].into_iter().flatten().min();
        match self.rebuild.inbox.wait(also, deadline) {
            Some(Inbox::Ended(ended)) => self.ended(ended, Instant::now()).map(|()| Turn::Continue),
            Some(Inbox::Order(Order::Prepare(proposal, reply))) => {
                let _ = reply.send(self.prepare(&proposal));
                Ok(Turn::Continue)
            }
            Some(Inbox::Order(Order::Apply(prepared, reply))) => {
                let _ = reply.send(self.apply(*prepared));
                Ok(Turn::Continue)
            }
            Some(Inbox::Order(Order::Restart)) => Ok(Turn::Restart),
            None => Ok(Turn::Continue),
        }
    }

    /// Builds what a change needs that can still fail, before anything
    /// changes: a new capture source (a socket bound), a new fallback (its
    /// WAV read).
    fn prepare(&mut self, proposal: &Proposal) -> Result<Prepared, FieldErrors> {
        let running = crate::config::change::live_part(&proposal.loaded.config, &self.rebuild.running);
        let settings = running.settings();
        let takers: BTreeSet<Taker> = proposal.changed.iter().map(|k| taker(k)).collect();
        let mut warnings = BTreeMap::new();
        let mut source = None;
        if takers.contains(&Taker::Input) {
            let same_socket = matches!(
                (&settings.input, &self.rebuild.input),
                (Input::Socket(a), Input::Socket(b)) if a.path == b.path
            );
            if !same_socket {
                let made = (self.rebuild.capture)(&settings.input, &settings.device);
                source = Some(made.map_err(|e| FieldErrors::from([("input".to_string(), e.to_string())]))?);
            }
        }
        let mut fallback = None;
        if proposal.changed.iter().any(|k| k.starts_with("fallback.")) {
            let (made, problem) = Fallback::build(settings.fallback_wav.as_deref(), settings.fallback_tone);
            if let Some(e) = problem {
                warnings.insert(
                    "fallback.wav_path".to_string(),
                    format!("{e}; the {:?} plays instead", made.kind()).to_lowercase(),
                );
            }
            fallback = Some(made);
        }
        let command = if takers.contains(&Taker::Encoder) {
            let (command, _) = encoder_command(&running)
                .map_err(|e| FieldErrors::from([("encoder.args".to_string(), e.to_string())]))?;
            Some(command)
        } else {
            None
        };
        Ok(Prepared {
            running,
            settings,
            takers,
            source,
            fallback,
            command,
            warnings,
        })
    }

    /// Hands each stage its new settings, in its own type. The one table
    /// of who takes which change (keys to takers: `config::change::taker`).
    fn apply(&mut self, mut p: Prepared) -> BTreeMap<String, String> {
        self.rebuild.running = p.running.clone();
        let s = &p.settings;
        let mut warnings = std::mem::take(&mut p.warnings);
        for taker in &p.takers {
            match taker {
                Taker::Capture => {
                    self.rebuild.capture_config = s.capture.clone();
                    if let Some(c) = &self.capture {
                        c.handle().tune(s.capture.clone());
                    }
                }
                Taker::Input => {
                    self.switch_input(p.source.take(), s, &mut warnings);
                    self.restart_titles();
                }
                Taker::Pump => {
                    let change = PumpChange {
                        grace: s.pump.grace,
                        fallback: p.fallback.take(),
                    };
                    if !self.pump.as_ref().is_some_and(|pump| pump.tune(change)) {
                        warnings.insert("pcm.grace_sec".into(), "the pump is busy; try again".into());
                    }
                }
                Taker::Station => {
                    // What is playing stays, unless the owner changed the
                    // title itself.
                    let playing = self.station.get().title.clone();
                    let title = if s.station.title == self.configured_title {
                        playing
                    } else {
                        clean_title(&s.station.title)
                    };
                    self.configured_title = s.station.title.clone();
                    self.station.set(Station {
                        title,
                        ..s.station.clone()
                    });
                    let (kbps, rate) = (u64::from(s.bitrate_kbps), s.mp3_sample_rate);
                    self.board.outputs.retune(&s.station, kbps, rate);
                }
                Taker::Http => {
                    self.rebuild.site.set(Site::new(&s.site, self.station.clone()));
                    self.hub.set_burst_frames(s.hub.burst_frames);
                }
                Taker::Program => self.board.capture.program().tune(s.program),
                Taker::Leds => {
                    self.rebuild.led_config = s.leds.clone();
                    if let Err(e) = self.restart("leds") {
                        warnings.insert("gpio.enabled".into(), format!("cannot start the LEDs: {e}"));
                    }
                }
                Taker::Mqtt => {
                    self.rebuild.mqtt = s.mqtt.clone();
                    if let Err(e) = self.restart("mqtt") {
                        warnings.insert("mqtt.url".into(), format!("cannot start the MQTT link: {e}"));
                    }
                }
                Taker::Icecast => {
                    let (started, stopped) = self.board.outputs.replace(
                        &s.icecast,
                        &s.station,
                        u64::from(s.bitrate_kbps),
                        s.mp3_sample_rate,
                        &self.rebuild.supervisor,
                        &self.rebuild.hooks,
                        STEP_TIMEOUT,
                    );
                    for e in stopped {
                        tracing::warn!(component = "service", "{e}");
                    }
                    self.rebuild.title_feed.targets.set(s.icecast.clone());
                    if let Err(e) = started {
                        warnings.insert("icecast".into(), format!("cannot start the outputs: {e}"));
                    }
                    if let Err(e) = self.restart("icecast-titles") {
                        warnings.insert("icecast".into(), format!("cannot start the title updates: {e}"));
                    }
                }
                Taker::Encoder => {
                    if let Some(command) = p.command.take() {
                        let reason = "the owner changed encoder settings";
                        self.encoder.relaunch((self.rebuild.encoder)(command), reason);
                    }
                    // New listeners' headers, and each Icecast target's next
                    // connect, name the new bitrate.
                    self.rebuild.site.set(Site::new(&s.site, self.station.clone()));
                    let (kbps, rate) = (u64::from(s.bitrate_kbps), s.mp3_sample_rate);
                    self.board.outputs.retune(&s.station, kbps, rate);
                }
                // The admin thread keeps the password itself.
                Taker::Admin | Taker::Restart => {}
            }
        }
        warnings
    }

    /// Captures from the input the owner chose instead: the old capture
    /// thread is stopped and a new one started on the same counters.
    /// Listeners hear silence meanwhile, on the same connections.
    fn switch_input(
        &mut self,
        source: Option<Box<dyn CaptureSource>>,
        s: &Settings,
        warnings: &mut BTreeMap<String, String>,
    ) {
        let handle = match self.capture.take() {
            Some(old) => {
                let handle = old.handle();
                if let Err(e) = old.stop(STEP_TIMEOUT) {
                    tracing::warn!(component = "service", "{e}");
                }
                handle
            }
            None => self.board.capture.clone(),
        };
        self.rebuild.input = s.input.clone();
        self.rebuild.device = s.device.clone();
        let r = &self.rebuild;
        let started = source
            .map_or_else(|| (r.capture)(&r.input, &r.device), Ok)
            .and_then(|source| {
                Capture::start_on(
                    handle.for_device(source.device()),
                    source,
                    (r.mixer)(),
                    r.router.clone(),
                    r.capture_config.clone(),
                    r.hooks.clone(),
                    &r.supervisor,
                )
            });
        match started {
            Ok(capture) => self.capture = Some(capture),
            Err(e) => {
                warnings.insert("input".into(), format!("{e}; retrying"));
                self.rebuild
                    .due
                    .push((Instant::now() + RESTART_FIRST, "capture".into()));
            }
        }
    }

    /// Closes the title socket and opens the one for the input in force.
    fn restart_titles(&mut self) {
        if let Some(old) = self.titles.take() {
            let _ = stop_worker(old.worker);
        }
        let r = &self.rebuild;
        self.titles = start_title_socket(&r.input, &r.now_playing, &r.supervisor);
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
                let handle = match self.capture.take() {
                    Some(dead) => {
                        let handle = dead.handle();
                        let _ = dead.stop(STEP_TIMEOUT);
                        handle
                    }
                    None => self.board.capture.clone(),
                };
                self.capture = Some(Capture::start_on(
                    handle,
                    (r.capture)(&r.input, &r.device)?,
                    (r.mixer)(),
                    r.router.clone(),
                    r.capture_config.clone(),
                    r.hooks.clone(),
                    &r.supervisor,
                )?);
            }
            "leds" => {
                if let Some(old) = self.leds.take() {
                    let _ = crate::leds::stop(old, STEP_TIMEOUT);
                }
                let leds = (r.leds)(&r.led_config);
                *self.board.leds.lock().unwrap_or_else(|p| p.into_inner()) = leds.status();
                self.board.amp.reset(r.led_config.amp.as_ref(), leds.drives_pins());
                self.leds = Some(start_leds(
                    leds,
                    &r.led_config,
                    &self.board.amp,
                    &self.encoder,
                    &self.board.pump,
                    &self.board.capture,
                    r.wifi.clone(),
                    &r.supervisor,
                    &r.hooks,
                )?);
            }
            "mqtt" => {
                if let Some(old) = self.mqtt.take() {
                    let _ = old.stop(MQTT_STOP_TIMEOUT);
                }
                self.board.mqtt.off();
                if let Some(settings) = r.mqtt.clone() {
                    self.mqtt = Some(start_mqtt(settings, &self.board, &r.now_playing, &r.supervisor)?);
                }
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
                    r.desk.clone(),
                    self.hub.clone(),
                    self.board.clone(),
                    self.board.http.clone(),
                    r.hooks.clone(),
                    &r.supervisor,
                )?);
            }
            "conn-log" => {
                if let Some(dead) = self.conn_log.take() {
                    let _ = dead.stop(STEP_TIMEOUT);
                }
                self.conn_log = Some(self.hub.log().start(&r.supervisor)?);
            }
            "titles" => self.restart_titles(),
            "speakers" => {
                if let Some((inbox, config)) = &r.speakers {
                    if let Some(old) = self.speakers.take() {
                        let _ = old.stop(STEP_TIMEOUT);
                    }
                    self.speakers = Some(crate::speakers::start(inbox.clone(), config.clone(), &r.supervisor)?);
                }
            }
            "icecast-titles" => {
                if let Some(old) = self.icecast_titles.take() {
                    let _ = old.worker.stop(STEP_TIMEOUT);
                }
                // No thread while there is no target to tell.
                if !r.title_feed.targets.get().is_empty() {
                    self.icecast_titles = Some(IcecastTitles::start(r.title_feed.clone(), &r.supervisor)?);
                }
            }
            other if other.starts_with("icecast-") => {
                self.board.outputs.restart(other, &r.supervisor, &r.hooks)?;
            }
            "admin" => tracing::error!(
                component = "service",
                "the settings desk cannot be restarted in place; settings can be changed again after Tower restarts"
            ),
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
        // The MQTT thread may be in a connection attempt (up to 2 s): it is
        // told now and joined last, so its wait overlaps the other steps.
        if let Some(m) = &self.mqtt {
            m.stop_signal().stop();
        }
        if let Some(admin) = self.admin.take() {
            note(stop_admin(admin, &self.rebuild.inbox));
        }
        if let Some(b) = self.broadcast.take() {
            note(b.stop(STEP_TIMEOUT));
        }
        if let Some(s) = self.speakers.take() {
            note(s.stop(STEP_TIMEOUT));
        }
        if let Some(h) = self.http.take() {
            note(h.stop(STEP_TIMEOUT));
        }
        self.hub.close_all();
        if let Some(l) = self.conn_log.take() {
            note(l.stop(STEP_TIMEOUT));
        }
        if let Some(t) = self.titles.take() {
            note(stop_worker(t.worker));
        }
        if let Some(t) = self.icecast_titles.take() {
            note(stop_worker(t.worker));
        }
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
        if let Some(m) = self.mqtt.take() {
            note(m.stop(STEP_TIMEOUT));
        }
        problems
    }
}

fn stop_worker(worker: Worker<()>) -> Result<(), WorkerError> {
    worker.stop_signal().stop();
    worker.stop(STEP_TIMEOUT)
}

/// The journal line and the history entry for a new title.
fn title_audit(changes: Arc<ChangeLog>) -> TitleAudit {
    Arc::new(move |who: &str, old: &str, new: &str| {
        tracing::info!(
            component = "broadcast",
            peer = who,
            key = "title",
            "now playing, set by {who}: {old:?} → {new:?} (not saved)"
        );
        changes.record(who, "title", old, new);
    })
}

/// The producer's title socket beside the socket input (none for a sound
/// card). One that cannot be made is a warning: the audio matters more.
fn start_title_socket(input: &Input, now: &NowPlaying, supervisor: &Supervisor) -> Option<TitleSocket> {
    let Input::Socket(pcm) = input else { return None };
    match TitleSocket::start(pcm, now.clone(), supervisor) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(
                component = "titles",
                "no title socket: {e}; titles can still be set on the page"
            );
            None
        }
    }
}

/// Stops the admin thread. It may be waiting for this thread to answer an
/// order: orders are dropped meanwhile, which tells it at once.
fn stop_admin(running: crate::admin::Running, inbox: &Mailbox<Inbox>) -> Result<(), WorkerError> {
    let admin = running.worker;
    admin.stop_signal().stop();
    running.desk.wake();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !admin.is_finished() && Instant::now() < deadline {
        while inbox.try_take().is_some() {}
        std::thread::sleep(Duration::from_millis(5));
    }
    admin.stop(Duration::from_millis(10))
}

/// The service as the owner's desk sees it: orders go to the service's
/// thread through its inbox; readings come straight from the board.
struct ServiceControl {
    inbox: Post<Inbox>,
    board: Arc<Board>,
    now_playing: NowPlaying,
    speakers: Option<SpeakersDesk>,
}

/// Why an order got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// The service's thread is gone or dropped the order: Tower stops.
    Stopping,
    /// No answer within [`ORDER_TIMEOUT`]: the service's thread is busy
    /// (it may still carry the order out).
    Busy,
}

impl Unanswered {
    fn text(self) -> String {
        match self {
            Unanswered::Stopping => "Tower is stopping".into(),
            Unanswered::Busy => format!(
                "Tower is busy and did not answer within {} s; try again in a moment",
                ORDER_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Posts `order` to the service's `inbox` and waits up to `within` for
/// its answer.
fn ask<T>(inbox: &Post<Inbox>, within: Duration, order: impl FnOnce(SyncSender<T>) -> Order) -> Result<T, Unanswered> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    inbox.send(Inbox::Order(order(tx))).map_err(|_| Unanswered::Stopping)?;
    rx.recv_timeout(within).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => Unanswered::Busy,
        std::sync::mpsc::RecvTimeoutError::Disconnected => Unanswered::Stopping,
    })
}

impl ServiceControl {
    fn ask<T>(&self, order: impl FnOnce(SyncSender<T>) -> Order) -> Result<T, Unanswered> {
        ask(&self.inbox, ORDER_TIMEOUT, order)
    }
}

impl Control for ServiceControl {
    type Prepared = Prepared;

    fn prepare(&self, proposal: &Proposal) -> Result<Prepared, FieldErrors> {
        self.ask(|reply| Order::Prepare(Box::new(proposal.clone()), reply))
            .unwrap_or_else(|why| Err(FieldErrors::from([("(settings)".into(), why.text())])))
    }

    fn apply(&self, prepared: Prepared) -> BTreeMap<String, String> {
        self.ask(|reply| Order::Apply(Box::new(prepared), reply)).unwrap_or_else(|why| {
            let text = match why {
                Unanswered::Stopping => "saved; Tower is stopping".into(),
                Unanswered::Busy => format!(
                    "saved; Tower is busy and did not confirm within {} s: the change takes effect when it gets to it",
                    ORDER_TIMEOUT.as_secs()
                ),
            };
            BTreeMap::from([("(settings)".into(), text)])
        })
    }

    fn restart(&self) {
        let _ = self.inbox.send(Inbox::Order(Order::Restart));
    }

    fn set_title(&self, who: &str, title: &str) -> String {
        self.now_playing.set(who, title)
    }

    fn speakers(&self) -> Option<&SpeakersDesk> {
        self.speakers.as_ref()
    }

    fn listeners(&self) -> serde_json::Value {
        serde_json::json!(self.board.hub.listeners(Instant::now()))
    }

    fn peak_dbfs(&self) -> f64 {
        let reading = self.board.capture.levels(Instant::now());
        let peak = reading.levels.peak_dbfs.iter().copied().fold(f32::MIN, f32::max);
        f64::from(peak)
    }

    fn gain(&self) -> Result<Gain, String> {
        let gain = self.board.capture.snapshot().gain;
        match (gain.db, gain.range_db) {
            (Some(db), Some((min_db, max_db))) => Ok(Gain {
                db,
                min_db,
                max_db,
                hardware: gain.hardware,
            }),
            _ => Err(format!(
                "the gain in force is not known in dB ({}); a card whose control has no dB scale can only be set in %",
                gain.applied
            )),
        }
    }

    fn inputs(&self) -> serde_json::Value {
        let list = crate::audio::devices::list();
        let pick = crate::audio::devices::choose(&list).ok();
        let cards: Vec<serde_json::Value> = list
            .cards
            .iter()
            .map(|c| {
                serde_json::json!({
                    "device": c.plughw(),
                    "card": c.card_name,
                    "name": c.device_name,
                    "usb": c.usb,
                    "auto": pick.as_ref().is_some_and(|p| p.device == c.plughw()),
                })
            })
            .collect();
        let others: Vec<serde_json::Value> = list
            .others
            .iter()
            .map(|o| serde_json::json!({ "device": o.name, "name": o.description }))
            .collect();
        let capture = self.board.capture.snapshot();
        serde_json::json!({
            "cards": cards,
            "others": others,
            "auto_pick": pick.map(|p| serde_json::json!({ "device": p.device, "reason": p.reason })),
            "in_use": capture.selection,
            "gain": capture.gain,
        })
    }
}

/// The LED thread, showing the encoder's and the input's states, and
/// switching the amplifier with program.
#[allow(clippy::too_many_arguments)]
fn start_leds(
    leds: Box<dyn Leds>,
    config: &LedConfig,
    amp: &Arc<AmpBoard>,
    encoder: &Arc<EncoderManager>,
    pump: &Arc<crate::pump::PumpStats>,
    capture: &CaptureHandle,
    wifi: Option<Arc<crate::wifi::WifiWatch>>,
    supervisor: &Supervisor,
    hooks: &Arc<TestHooks>,
) -> std::io::Result<Worker<()>> {
    let (enc, pump, capture) = (encoder.clone(), pump.clone(), capture.clone());
    let amp = config.amp.as_ref().map(|a| (a.off_delay, amp.clone()));
    crate::leds::start(
        leds,
        amp,
        move || crate::leds::Looks {
            encoder: enc.state(),
            input: pump.input_state(),
            program: capture.program().is_program(),
            wifi: wifi
                .as_ref()
                .and_then(|w| w.state(Instant::now()))
                .and_then(|s| s.led_show()),
        },
        supervisor,
        hooks.clone(),
    )
}

/// How long the service waits for the MQTT thread when it restarts it
/// (it may be in a connection attempt).
const MQTT_STOP_TIMEOUT: Duration = Duration::from_millis(2500);

/// The MQTT thread, reading Tower's state from atomics and the capture
/// thread's boards (nothing the pump or the broadcast loop locks).
fn start_mqtt(
    settings: MqttSettings,
    board: &Arc<Board>,
    now_playing: &NowPlaying,
    supervisor: &Supervisor,
) -> std::io::Result<Worker<()>> {
    let (capture, hub, encoder, pump, station) = (
        board.capture.clone(),
        board.hub.clone(),
        board.encoder.clone(),
        board.pump.clone(),
        board.station.clone(),
    );
    let read = move || {
        let now = Instant::now();
        let st = station.get();
        let level = capture.levels(now).levels.rms_dbfs;
        crate::mqtt::discovery::Readings {
            program: capture.program().is_program(),
            level_dbfs: level.iter().copied().fold(f32::MIN, f32::max),
            listeners: hub.admitted(),
            encoder: encoder.state().to_string(),
            input: crate::status::input_source(pump.input_state(), pump.fallback(), &capture.selection().name),
            title: st.title.clone(),
            station: st.name.clone(),
        }
    };
    crate::mqtt::start(
        settings,
        Box::new(read),
        now_playing.clone(),
        board.mqtt.clone(),
        supervisor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::fake::{FakeCapture, FakeCaptureScript};
    use crate::config::change::{Incoming, propose};
    use crate::config::{Overrides, load_text};
    use crate::encoder::fake::{FakeLauncher, FakeMode};
    use std::sync::Mutex;

    /// A service on fakes, recording which devices and LED pins it was
    /// asked for.
    /// What a fake service was asked for: capture devices, LED configs.
    type Asked<T> = Arc<Mutex<Vec<T>>>;

    fn fake_service(file: &str) -> (Service, Loaded, Asked<String>, Asked<LedConfig>) {
        let loaded = load_text(
            Some((std::path::Path::new("tower.toml"), file)),
            &[],
            &Overrides::default(),
        )
        .expect("valid");
        let devices = Arc::new(Mutex::new(Vec::new()));
        let pins = Arc::new(Mutex::new(Vec::new()));
        let (d, p) = (devices.clone(), pins.clone());
        let backends = Backends {
            capture: Box::new(move |_: &Input, device: &str| {
                d.lock().expect("lock").push(device.to_string());
                let script = FakeCaptureScript {
                    paced: true,
                    ..FakeCaptureScript::default()
                };
                Ok(Box::new(FakeCapture::new(device, script)) as Box<dyn CaptureSource>)
            }),
            mixer: Box::new(|| Box::new(crate::audio::mixer::FakeMixer::default()) as Box<dyn Mixer>),
            encoder: Box::new(|_| Box::new(FakeLauncher::new(FakeMode::Healthy))),
            hooks: Arc::new(TestHooks::disabled()),
            leds: Box::new(move |config: &LedConfig| {
                p.lock().expect("lock").push(config.clone());
                Box::new(crate::leds::RecordingLeds::default()) as Box<dyn Leds>
            }),
        };
        let service = Service::start(&loaded.config, backends, None).expect("service");
        (service, loaded, devices, pins)
    }

    fn change(service: &mut Service, loaded: &Loaded, json: serde_json::Value) -> BTreeMap<String, String> {
        let asked: Vec<(String, Incoming)> = json
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), Incoming::Json(v.clone())))
            .collect();
        let proposal = propose(loaded, &asked).expect("valid change");
        let prepared = service.prepare(&proposal).expect("prepared");
        service.apply(prepared)
    }

    #[test]
    fn an_order_unanswered_says_whether_tower_is_busy_or_stopping() {
        let loaded = load_text(None, &[], &Overrides::default()).expect("defaults");
        let proposal = propose(&loaded, &[]).expect("no change");
        // An order that keeps its reply channel, as the desk's do.
        let order = |reply| Order::Prepare(Box::new(proposal.clone()), reply);
        let within = Duration::from_millis(20);
        // Nobody reads the inbox in time: busy, not stopping.
        let (post, mailbox) = Mailbox::<Inbox>::new().expect("mailbox");
        assert!(matches!(ask(&post, within, order), Err(Unanswered::Busy)));
        // The order is taken and dropped unanswered (the service stops).
        let taker = std::thread::spawn(move || drop(mailbox.wait(None, None)));
        assert!(matches!(
            ask(&post, Duration::from_secs(5), order),
            Err(Unanswered::Stopping)
        ));
        taker.join().expect("taker");
        // The inbox is gone.
        assert!(matches!(ask(&post, within, order), Err(Unanswered::Stopping)));
        assert!(Unanswered::Busy.text().contains("busy"));
    }

    #[test]
    fn a_live_change_beside_a_restart_only_one_takes_nothing_of_it_early() {
        let (mut service, loaded, _, _) = fake_service("listen = \"127.0.0.1:0\"\n[gpio]\nenabled = false\n");
        let asked: Vec<(String, Incoming)> = [
            ("encoder.bitrate_kbps", serde_json::json!(192)),
            ("mp3.sample_rate", serde_json::json!(44100)),
            ("ffmpeg", serde_json::json!("/opt/other/ffmpeg")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Incoming::Json(v)))
        .collect();
        let proposal = propose(&loaded, &asked).expect("valid change");
        let prepared = service.prepare(&proposal).expect("prepared");
        let command = prepared.command.clone().expect("the bitrate relaunches the encoder");
        let line = command.to_string();
        assert!(line.contains("192k"), "{line}");
        assert_eq!(command.program, "ffmpeg", "ffmpeg waits for the restart: {line}");
        assert!(!line.contains("44100"), "the sample rate waits for the restart: {line}");
        service.apply(prepared);
        let site = service.rebuild.site.get();
        assert_eq!((site.bitrate_kbps, site.sample_rate), (192, 48_000));
        // The next change starts from what runs, not from the file.
        let asked = vec![("station.name".to_string(), Incoming::Json(serde_json::json!("Garden")))];
        let prepared = service
            .prepare(&propose(&proposal.loaded, &asked).expect("valid"))
            .expect("prepared");
        assert_eq!(prepared.running.mp3.sample_rate, 48_000);
        assert_eq!(prepared.running.encoder.bitrate_kbps, 192);
        service.stop();
    }

    #[test]
    fn each_stage_takes_its_change_in_its_own_type() {
        let (mut service, loaded, devices, pins) =
            fake_service("listen = \"127.0.0.1:0\"\ndevice = \"fake-a\"\n[gpio]\nenabled = false\n");
        let warnings = change(
            &mut service,
            &loaded,
            serde_json::json!({
                "device": "fake-b",
                "station.name": "Garden",
                "http.burst_ms": 480,
                "gpio.encoder_pin": 5,
                "capture.level": "-6dB",
                "fallback.tone": false,
                "pcm.grace_sec": 1.5,
            }),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // The input: the capture thread was started again on the new device.
        assert_eq!(*devices.lock().expect("lock"), ["fake-a", "fake-b"]);
        // Published by the new capture thread as it starts (slow under
        // qemu-user).
        eventually(|| service.status().input.device.name, "fake-b".to_string());
        // The LEDs: opened again on the new pins.
        let opened = pins.lock().expect("lock").clone();
        assert_eq!(opened.iter().map(|c| c.encoder_pin).collect::<Vec<_>>(), [17, 5]);
        // The station, the burst, the level, the fallback.
        assert_eq!(service.status().station.name, "Garden");
        assert_eq!(service.hub.burst_frames.load(std::sync::atomic::Ordering::Relaxed), 20);
        eventually(|| service.status().input.gain.configured, "-6.0 dB".to_string());
        eventually(
            || service.status().input.fallback_source,
            crate::pump::fallback::FallbackKind::Silence,
        );
        assert!(service.stop().is_empty());
    }

    /// Asserts that `read` gives `want` within 5 s (what another thread
    /// publishes).
    fn eventually<T: PartialEq + std::fmt::Debug>(read: impl Fn() -> T, want: T) {
        crate::testing::wait_until(Duration::from_secs(5), || read() == want);
        assert_eq!(read(), want);
    }

    #[test]
    fn icecast_targets_are_replaced_live() {
        let (mut service, loaded, _, _) = fake_service(
            "listen = \"127.0.0.1:0\"\n[gpio]\nenabled = false\n\
             [[icecast]]\nurl = \"http://127.0.0.1:9/old\"\npassword = \"p\"\n",
        );
        assert_eq!(service.status().outputs[0].target, "127.0.0.1:9/old");
        let warnings = change(
            &mut service,
            &loaded,
            serde_json::json!({ "icecast": [
                {"url": "http://127.0.0.1:9/new", "password": "q"},
                {"url": "http://127.0.0.1:9/second", "password": "r"},
            ]}),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let targets: Vec<String> = service.status().outputs.into_iter().map(|o| o.target).collect();
        assert_eq!(targets, ["127.0.0.1:9/new", "127.0.0.1:9/second"]);
        assert!(service.stop().is_empty());
    }

    #[test]
    fn a_fallback_wav_that_cannot_be_played_is_taken_with_a_warning() {
        let (mut service, loaded, _, _) = fake_service("listen = \"127.0.0.1:0\"\n[gpio]\nenabled = false\n");
        let warnings = change(
            &mut service,
            &loaded,
            serde_json::json!({ "fallback.wav_path": "/nonexistent/fallback.wav" }),
        );
        let w = warnings.get("fallback.wav_path").expect("a warning");
        assert!(
            w.contains("/nonexistent/fallback.wav") && w.contains("tone plays instead"),
            "{w}"
        );
        assert!(service.stop().is_empty());
    }

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
