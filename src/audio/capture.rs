//! The capture thread: device → canonical frames → router.
//!
//! One thread ("capture"), started by the service after the pump and
//! stopped before it. It opens a [`CaptureSource`] (ALSA on the appliance,
//! the socket input a program writes into, a generator in tests), cuts
//! whatever the device delivers into 4608-byte frames, meters them and
//! pushes them into the router, which never blocks it.
//!
//! It never gives up on the device. Errors are classified in one place
//! ([`ErrorClass::from_errno`]): overruns and suspends are recovered by the
//! source and reading goes on; EAGAIN is retried; anything else, a device
//! that cannot be opened, and an open device that delivers nothing for
//! [`STALL_AFTER`] (a JACK server that died, a wedged USB card) close it
//! and open it again with a backoff capped at 1 s ([`ReopenBackoff`]);
//! a source that is only waiting when nothing comes (the socket input
//! without a producer) is kept open instead and read on.
//! Each class is counted; each episode (from the first failure until audio
//! flows again) is logged once when it starts and once when it ends, with
//! the device name. Meanwhile the pump keeps listeners fed with grace
//! silence and then the fallback [A2]–[A3], on the same connections [H3].
//!
//! After every successful open it sets the card's capture level (see
//! `mixer`) and publishes which device is in use and why (see `auto`);
//! frames from a card with no capture control get the software gain before
//! they are metered and queued, and clipped samples are counted.
//!
//! Each frame's level also feeds program detection (see `program`
//! [D1]–[D3]), and every read that brings nothing tells it so; a change of
//! state is logged here, one line with its reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::level::{Hint, LevelAdvisor, LevelBoard, LevelMeter, LevelReading, SilenceEvent, SilenceWatch};
use super::mixer::{Applied, Level, Mixer, SoftGain, full_scale_samples};
use super::program::ProgramBoard;
pub use super::source::{Action, CaptureError, CaptureSource, ErrorClass, Selection, card_of};
use super::source::{SocketSnapshot, SocketStatus};
use super::{PCM_FRAME_BYTES, PcmFrame};
use crate::audio::router::AudioInputRouter;
use crate::hooks::{PanicTarget, TestHooks};
use crate::live::{Live, Watch};
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};

/// How long one read may wait for data, bounding how fast a stop is seen.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// An open device that delivers nothing for this long is re-opened: a
/// device configured for 24 ms periods is not merely slow.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to open the device.
pub const REOPEN_MAX: Duration = Duration::from_secs(1);
/// The first wait after a failure.
pub const REOPEN_FIRST: Duration = Duration::from_millis(100);
/// A card's capture level is set again this long after it was opened:
/// ALSA's own restore (`alsa-restore.service`, and udev's rule when a card
/// appears) runs `alsactl restore` or `init` on a card that has just come
/// up, at the same moment Tower opens it, and may undo the first setting
/// (seen in the image's boot test: 2 runs in 4).
pub const LEVEL_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// Waits between attempts to open a device: 100 ms, doubling, at most 1 s.
#[derive(Debug, Clone)]
pub struct ReopenBackoff {
    next: Duration,
}

impl Default for ReopenBackoff {
    fn default() -> Self {
        ReopenBackoff { next: REOPEN_FIRST }
    }
}

impl ReopenBackoff {
    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(REOPEN_MAX);
        d
    }

    /// Audio flows again: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.next = REOPEN_FIRST;
    }
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

/// Errors seen, by class (indexed by `ErrorClass as usize`).
#[derive(Default)]
struct ErrorCounters([AtomicU64; 8]);

impl ErrorCounters {
    fn count(&self, class: ErrorClass) -> u64 {
        self.0[class as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    fn get(&self, class: ErrorClass) -> u64 {
        self.0[class as usize].load(Ordering::Relaxed)
    }
}

/// [`ErrorCounters`] as `/status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub overrun: u64,
    pub suspended: u64,
    pub again: u64,
    pub no_device: u64,
    pub io: u64,
    pub bad_state: u64,
    pub stalled: u64,
    pub other: u64,
}

#[derive(Default)]
pub struct CaptureStats {
    state: AtomicU8,
    frames: AtomicU64,
    opens: AtomicU64,
    open_failures: AtomicU64,
    clipped_samples: AtomicU64,
    errors: ErrorCounters,
    levels: LevelBoard,
    /// Program detection, fed every frame.
    program: ProgramBoard,
    /// Written on open and when the hint changes, never per frame.
    info: std::sync::Mutex<CaptureInfo>,
    /// The socket input's own board (set when the source starts).
    socket: std::sync::Mutex<Option<Arc<dyn SocketStatus>>>,
}

/// The capture level as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GainState {
    /// `capture.level` as configured ("as found", "-6.0 dB", "75%").
    pub configured: String,
    /// What is in force: the card's control and value, a software gain,
    /// or the card as found.
    pub applied: String,
    /// The software gain applied to the PCM, when the card has no control.
    pub software_db: Option<f64>,
    /// The gain in force in dB (the card control's, or the software
    /// gain's), and the range it can be set in; `None` when unknown (a
    /// control with no dB scale).
    pub db: Option<f64>,
    pub range_db: Option<(f64, f64)>,
    /// Whether the gain is the card's own capture control.
    pub hardware: bool,
}

/// The software gain's range (what `capture.level` accepts in dB).
pub const SOFT_RANGE_DB: (f64, f64) = (-60.0, 40.0);

/// What the capture thread publishes besides counters.
#[derive(Debug, Clone, Default)]
struct CaptureInfo {
    selection: Option<Selection>,
    gain: GainState,
    hint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptureSnapshot {
    pub device: String,
    pub state: DeviceState,
    /// Frames read from the device.
    pub frames: u64,
    /// Successful opens (the first, and every re-open after a failure).
    pub opens: u64,
    pub open_failures: u64,
    /// Errors while reading, by class.
    pub errors: ErrorCounts,
    /// Which device, chosen how and why.
    pub selection: Selection,
    pub gain: GainState,
    /// Samples at full scale (clipped) since start.
    pub clipped_samples: u64,
    /// A plain suggestion when the level is far off.
    pub level_hint: Option<String>,
    /// The socket input's producer, when `input` is a socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketSnapshot>,
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

/// A cloneable view of the capture thread's stats, and the way to change
/// its settings while it runs.
#[derive(Clone)]
pub struct CaptureHandle {
    stats: Arc<CaptureStats>,
    device: String,
    /// The settings the thread runs with; a new value is taken at its next
    /// read (within [`READ_TIMEOUT`]), on the open device.
    config: Arc<Live<CaptureConfig>>,
}

impl CaptureHandle {
    /// Fresh counters for a capture of `device`.
    pub fn new(device: &str) -> CaptureHandle {
        CaptureHandle {
            stats: Arc::new(CaptureStats::default()),
            device: device.to_string(),
            config: Arc::new(Live::new(CaptureConfig::default())),
        }
    }

    /// The same counters, for a capture of another device (the owner
    /// chose another input, whose noise floor is learned afresh).
    pub fn for_device(&self, device: &str) -> CaptureHandle {
        if let Ok(mut info) = self.stats.info.lock() {
            info.selection = None;
        }
        self.stats.program.forget_floor();
        CaptureHandle {
            device: device.to_string(),
            ..self.clone()
        }
    }

    /// New settings for the running thread: the level is set on the open
    /// device at once (and at every open after).
    pub fn tune(&self, config: CaptureConfig) {
        self.config.set(config);
    }

    pub fn snapshot(&self) -> CaptureSnapshot {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &s.errors;
        let info = s.info.lock().map(|i| i.clone()).unwrap_or_default();
        let mut selection = info.selection.unwrap_or_else(|| Selection::configured(&self.device));
        let board = s.socket.lock().map(|b| b.clone()).unwrap_or_default();
        let socket = board.map(|b| b.snapshot(Instant::now()));
        if let Some(s) = &socket {
            // The producer comes and goes while the source stays open.
            selection.reason = s.state.reason().into();
        }
        CaptureSnapshot {
            socket,
            device: selection.name.clone(),
            selection,
            gain: info.gain,
            clipped_samples: l(&s.clipped_samples),
            level_hint: info.hint,
            state: s.state(),
            frames: l(&s.frames),
            opens: l(&s.opens),
            open_failures: l(&s.open_failures),
            errors: ErrorCounts {
                overrun: e.get(ErrorClass::Overrun),
                suspended: e.get(ErrorClass::Suspended),
                again: e.get(ErrorClass::Again),
                no_device: e.get(ErrorClass::NoDevice),
                io: e.get(ErrorClass::Io),
                bad_state: e.get(ErrorClass::BadState),
                stalled: e.get(ErrorClass::Stalled),
                other: e.get(ErrorClass::Other),
            },
        }
    }

    /// The input level over the last ~100 ms (silence when no input).
    pub fn levels(&self, now: Instant) -> LevelReading {
        self.stats.levels.read(now)
    }

    /// Which device is in use (or configured), without the counters.
    pub fn selection(&self) -> Selection {
        let chosen = self.stats.info.lock().ok().and_then(|i| i.selection.clone());
        chosen.unwrap_or_else(|| Selection::configured(&self.device))
    }

    /// Program detection on this input.
    pub fn program(&self) -> &ProgramBoard {
        &self.stats.program
    }
}

/// Capture settings from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptureConfig {
    /// Digital silence on a live input this long is reported; zero never.
    pub silence_warn: Duration,
    /// The capture level to set at every open.
    pub level: Level,
}

impl Capture {
    pub fn start(
        source: Box<dyn CaptureSource>,
        mixer: Box<dyn Mixer>,
        router: Arc<AudioInputRouter>,
        config: CaptureConfig,
        hooks: Arc<TestHooks>,
    ) -> std::io::Result<Capture> {
        let handle = CaptureHandle::new(source.device());
        Capture::start_on(handle, source, mixer, router, config, hooks, &Supervisor::none())
    }

    /// Starts the capture thread publishing into `handle` (a new one, or
    /// the one of a capture thread that died, whose counters carry on);
    /// its end is reported to `supervisor`.
    pub fn start_on(
        handle: CaptureHandle,
        source: Box<dyn CaptureSource>,
        mixer: Box<dyn Mixer>,
        router: Arc<AudioInputRouter>,
        config: CaptureConfig,
        hooks: Arc<TestHooks>,
        supervisor: &Supervisor,
    ) -> std::io::Result<Capture> {
        router.set_high_water(source.queue_high_water(router.capacity()));
        *handle.stats.socket.lock().unwrap_or_else(|p| p.into_inner()) = source.socket();
        handle.tune(config);
        let thread_stats = handle.stats.clone();
        let tuning = Watch::new(handle.config.clone());
        let worker = Worker::spawn_supervised("capture", supervisor, move |stop| {
            let mut c = CaptureLoop::new(source, mixer, &router, &thread_stats, tuning, &hooks);
            c.run(&stop);
        })?;
        Ok(Capture { worker, handle })
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

/// A time the device was not delivering, logged when it starts and ends.
#[derive(Debug)]
struct Outage {
    since: Instant,
    failed_opens: u64,
}

struct CaptureLoop<'a> {
    source: Box<dyn CaptureSource>,
    mixer: Box<dyn Mixer>,
    /// The settings, changed by the owner while the thread runs.
    tuning: Watch<CaptureConfig>,
    level: Level,
    /// The gain on the PCM, for a card with no capture control.
    soft_gain: Option<SoftGain>,
    /// When to set the card's level once more (see [`LEVEL_AGAIN_AFTER`]).
    level_again_at: Option<Instant>,
    advisor: LevelAdvisor,
    hint: Option<Hint>,
    /// The last mixer warning, so a card that keeps refusing warns once.
    mixer_warned: Option<String>,
    router: &'a AudioInputRouter,
    stats: &'a CaptureStats,
    hooks: &'a TestHooks,
    reblocker: Reblocker,
    meter: LevelMeter,
    silence: SilenceWatch,
    backoff: ReopenBackoff,
    outage: Option<Outage>,
    recovered_log: LogGate,
}

impl<'a> CaptureLoop<'a> {
    fn new(
        source: Box<dyn CaptureSource>,
        mixer: Box<dyn Mixer>,
        router: &'a AudioInputRouter,
        stats: &'a CaptureStats,
        mut tuning: Watch<CaptureConfig>,
        hooks: &'a TestHooks,
    ) -> Self {
        let config = tuning.changed().map(|c| (*c).clone()).unwrap_or_default();
        if let Ok(mut info) = stats.info.lock() {
            info.gain = GainState {
                configured: config.level.to_string(),
                applied: "as found".into(),
                ..GainState::default()
            };
        }
        CaptureLoop {
            source,
            mixer,
            tuning,
            level: config.level,
            soft_gain: None,
            level_again_at: None,
            advisor: LevelAdvisor::default(),
            hint: None,
            mixer_warned: None,
            router,
            stats,
            hooks,
            reblocker: Reblocker::new(),
            meter: LevelMeter::default(),
            silence: SilenceWatch::new(config.silence_warn),
            backoff: ReopenBackoff::default(),
            outage: None,
            recovered_log: LogGate::new(Duration::from_secs(60)),
        }
    }

    fn device(&self) -> String {
        self.source.device().to_string()
    }

    fn run(&mut self, stop: &StopSignal) {
        self.publish_selection();
        while !stop.is_stopped() {
            self.retune(false);
            self.stats.set_state(DeviceState::Opening);
            match self.source.open() {
                Ok(()) => {
                    self.stats.opens.fetch_add(1, Ordering::Relaxed);
                    self.stats.set_state(DeviceState::Open);
                    let selection = self.source.selection();
                    self.apply_level(&selection);
                    // Only a card's own control can be undone by ALSA.
                    let on_card = self.stats.info.lock().is_ok_and(|i| i.gain.hardware);
                    self.level_again_at =
                        (on_card && self.level != Level::Keep).then(|| Instant::now() + LEVEL_AGAIN_AFTER);
                    tracing::info!(
                        component = "capture",
                        device = self.source.device(),
                        state = "open",
                        reason = %selection.reason,
                        "capture device {} open: s16le 48000 Hz stereo ({}{})",
                        selection.name,
                        if selection.auto { "chosen automatically: " } else { "" },
                        selection.reason
                    );
                    self.publish_selection();
                    self.read_until_failure(stop);
                    self.source.close();
                }
                Err(e) => {
                    self.open_failed(&e);
                    self.publish_selection();
                }
            }
            self.stats.set_state(DeviceState::Unavailable);
            self.meter.reset();
            self.silence.reset();
            self.advisor.reset();
            self.publish_hint(None);
            self.no_input(Instant::now());
            stop.sleep(self.backoff.next_delay());
        }
        self.source.close();
    }

    fn open_failed(&mut self, e: &CaptureError) {
        self.stats.open_failures.fetch_add(1, Ordering::Relaxed);
        match &mut self.outage {
            Some(outage) => outage.failed_opens += 1,
            None => {
                tracing::error!(
                    component = "capture",
                    device = self.source.device(),
                    state = "unavailable",
                    reason = "cannot open the device",
                    "{e}. Listeners hear silence, then the fallback, until it opens; retrying every {} s. \
                     Run `tower devices` to list capture devices and set `device` in the configuration",
                    REOPEN_MAX.as_secs()
                );
                self.outage = Some(Outage {
                    since: Instant::now(),
                    failed_opens: 1,
                });
            }
        }
    }

    /// Reads until the device must be re-opened (or the thread stops).
    fn read_until_failure(&mut self, stop: &StopSignal) {
        let mut buf = vec![0u8; PCM_FRAME_BYTES];
        self.reblocker.reset();
        let mut last_data = Instant::now();
        while !stop.is_stopped() {
            self.hooks.capture_stall(stop);
            self.hooks.panic_point(PanicTarget::Capture);
            self.retune(true);
            let result = self.source.read(&mut buf, READ_TIMEOUT);
            let now = Instant::now();
            if self.level_again_at.is_some_and(|at| now >= at) {
                self.level_again_at = None;
                let selection = self.source.selection();
                self.apply_level(&selection);
            }
            match result {
                Ok(0) => {
                    self.no_input(now);
                    if now.saturating_duration_since(last_data) >= STALL_AFTER {
                        let reason = format!("no audio for {} ms", STALL_AFTER.as_millis());
                        if self.source.reopen_when_stalled() {
                            self.failed(ErrorClass::Stalled, &reason);
                            return;
                        }
                        // Kept open: the outage is reported once, and
                        // reading goes on.
                        if self.outage.is_none() {
                            let reason = format!("{reason} ({})", self.source.selection().reason);
                            self.failed(ErrorClass::Stalled, &reason);
                        }
                    }
                }
                Ok(n) => {
                    last_data = now;
                    self.delivering(now);
                    self.accept(&buf[..n], now);
                }
                Err(CaptureError::Again { .. }) => {
                    self.stats.errors.count(ErrorClass::Again);
                }
                Err(CaptureError::Recovered { device, class }) => {
                    let n = self.stats.errors.count(class);
                    self.reblocker.reset();
                    if let Some(suppressed) = self.recovered_log.allow(now) {
                        tracing::warn!(component = "capture", device = %device, class = ?class, total = n, suppressed, "capture {class:?}: audio was lost; recovered");
                    }
                }
                Err(CaptureError::Failed { class, reason, .. }) => {
                    self.failed(class, &reason);
                    return;
                }
                Err(CaptureError::Open { reason, .. }) => {
                    self.failed(ErrorClass::Other, &reason);
                    return;
                }
            }
        }
    }

    /// Sets the configured capture level on the card just opened (or
    /// open, when the owner changed it): its mixer, else a software gain.
    /// "As found" only reads the card's control. A card that refuses
    /// warns once and streams as it is.
    fn apply_level(&mut self, selection: &Selection) {
        self.soft_gain = None;
        let keep = self.level == Level::Keep;
        let result = match &selection.card {
            Some(card) => self.mixer.set_capture(card, self.level),
            None => Ok(Applied::NoControl),
        };
        let configured = self.level.to_string();
        let gain = match result {
            Ok(Applied::Hardware {
                control,
                value,
                db,
                note,
            }) => {
                if let Some(note) = note {
                    self.warn_mixer(note);
                }
                if !keep {
                    tracing::info!(component = "capture", device = %selection.name, "capture level: {control:?} set to {value}");
                }
                GainState {
                    configured,
                    applied: format!(
                        "{}card control {control:?}: {value}",
                        if keep { "as found: " } else { "" }
                    ),
                    software_db: None,
                    db: db.map(|(d, _, _)| d),
                    range_db: db.map(|(_, lo, hi)| (lo, hi)),
                    hardware: true,
                }
            }
            Ok(Applied::NoControl) if keep => GainState {
                configured,
                applied: "as found".into(),
                software_db: None,
                db: Some(0.0),
                range_db: Some(SOFT_RANGE_DB),
                hardware: false,
            },
            Ok(Applied::NoControl) => {
                let db = self.level.soft_db().unwrap_or(0.0);
                self.soft_gain = SoftGain::from_db(db);
                let why = match &selection.card {
                    Some(card) => format!("card {card:?} has no capture volume control"),
                    None => format!("{:?} names no sound card", selection.name),
                };
                tracing::info!(component = "capture", device = %selection.name, "capture level: {why}; software gain {db:+.1} dB on the PCM");
                GainState {
                    configured,
                    applied: format!("software gain {db:+.1} dB ({why})"),
                    software_db: Some(db),
                    db: db.is_finite().then_some(db),
                    range_db: Some(SOFT_RANGE_DB),
                    hardware: false,
                }
            }
            Err(e) if keep => GainState {
                configured,
                applied: format!("as found (the card's mixer cannot be read: {e})"),
                ..GainState::default()
            },
            Err(e) => {
                self.warn_mixer(format!("{e}; streaming at the card's current level"));
                GainState {
                    configured,
                    applied: format!("as found (the card refused: {e})"),
                    ..GainState::default()
                }
            }
        };
        if let Ok(mut info) = self.stats.info.lock() {
            info.gain = gain;
        }
    }

    /// Takes settings the owner changed: the level (set on the device at
    /// once when it is `open`) and the silence report's threshold.
    fn retune(&mut self, open: bool) {
        let Some(config) = self.tuning.changed() else { return };
        if config.silence_warn != self.silence.threshold() {
            self.silence = SilenceWatch::new(config.silence_warn);
        }
        if config.level == self.level {
            return;
        }
        self.level = config.level;
        self.mixer_warned = None;
        if let Ok(mut info) = self.stats.info.lock() {
            info.gain.configured = self.level.to_string();
        }
        if open {
            let selection = self.source.selection();
            self.apply_level(&selection);
        }
    }

    /// Which device is in use (or being looked for), for `/status`.
    fn publish_selection(&self) {
        let selection = self.source.selection();
        if let Ok(mut info) = self.stats.info.lock()
            && info.selection.as_ref() != Some(&selection)
        {
            info.selection = Some(selection);
        }
    }

    fn warn_mixer(&mut self, message: String) {
        if self.mixer_warned.as_ref() != Some(&message) {
            tracing::warn!(
                component = "capture",
                device = self.source.device(),
                "capture level: {message}"
            );
            self.mixer_warned = Some(message);
        }
    }

    fn publish_hint(&mut self, hint: Option<Hint>) {
        if hint == self.hint {
            return;
        }
        self.hint = hint;
        if let Some(h) = hint {
            tracing::warn!(
                component = "capture",
                device = self.source.device(),
                reason = "level",
                "{h}"
            );
        }
        if let Ok(mut info) = self.stats.info.lock() {
            info.hint = hint.map(|h| h.to_string());
        }
    }

    /// Nothing came from the input: program detection counts it as quiet.
    fn no_input(&self, now: Instant) {
        if let Some(change) = self.stats.program.no_input(now) {
            super::program::log_change(&change, self.source.device());
        }
    }

    /// Cuts, meters and queues delivered bytes.
    fn accept(&mut self, bytes: &[u8], now: Instant) {
        let (meter, silence, stats, router) = (&mut self.meter, &mut self.silence, self.stats, self.router);
        let (soft_gain, advisor) = (self.soft_gain, &mut self.advisor);
        let device = self.source.device();
        self.reblocker.push(bytes, |mut frame| {
            stats.frames.fetch_add(1, Ordering::Relaxed);
            let clipped = match soft_gain {
                Some(g) => g.apply(&mut frame),
                None => full_scale_samples(&frame),
            };
            if clipped > 0 {
                stats.clipped_samples.fetch_add(u64::from(clipped), Ordering::Relaxed);
            }
            let (levels, silent) = meter.add(&frame);
            let peak = levels.peak_dbfs.iter().copied().fold(f32::MIN, f32::max);
            advisor.observe(peak, silent, clipped, now);
            let rms = levels.rms_dbfs.iter().copied().fold(f32::MIN, f32::max);
            if let Some(change) = stats.program.observe(rms, now) {
                super::program::log_change(&change, device);
            }
            match silence.observe(silent, now) {
                Some(SilenceEvent::Began) => tracing::warn!(
                    component = "capture",
                    device,
                    reason = "digital silence",
                    "the input carries only digital silence for {:.0} s: is it muted, or the wrong input? \
                     (still broadcasting it; the fallback is only for a missing input)",
                    silence.silent_for(now).as_secs_f64()
                ),
                Some(SilenceEvent::Ended(d)) => tracing::info!(
                    component = "capture",
                    device,
                    "sound on the input again after {:.0} s of digital silence",
                    d.as_secs_f64()
                ),
                None => {}
            }
            stats.levels.publish(
                LevelReading {
                    levels,
                    silent_for_s: silence.silent_for(now).as_secs_f64(),
                },
                now,
            );
            router.push(frame);
        });
        let hint = self.advisor.hint(now);
        self.publish_hint(hint);
    }

    /// The device delivers: an outage, if any, is over.
    fn delivering(&mut self, now: Instant) {
        self.backoff.reset();
        if let Some(outage) = self.outage.take() {
            // A source kept open through its outage delivers again.
            self.stats.set_state(DeviceState::Open);
            tracing::info!(
                component = "capture",
                device = self.source.device(),
                state = "open",
                reason = "audio flows again",
                "capture device back after {:.1} s ({} failed open attempts)",
                now.saturating_duration_since(outage.since).as_secs_f64(),
                outage.failed_opens
            );
        }
    }

    fn failed(&mut self, class: ErrorClass, reason: &str) {
        self.stats.errors.count(class);
        self.stats.set_state(DeviceState::Unavailable);
        if self.outage.is_none() {
            let next = if self.source.reopen_when_stalled() {
                "re-opening it"
            } else {
                "waiting for it"
            };
            tracing::error!(
                component = "capture",
                device = %self.device(),
                state = "unavailable",
                reason = ?class,
                "capture device {:?} failed: {reason}. Listeners hear silence, then the fallback; {next}",
                self.device()
            );
            self.outage = Some(Outage {
                since: Instant::now(),
                failed_opens: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::fake::{FakeCapture, FakeCaptureScript};
    use crate::audio::mixer::FakeMixer;

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

    fn wait_for(cond: impl FnMut() -> bool) -> bool {
        crate::testing::wait_until(Duration::from_secs(10), cond)
    }

    fn start(script: FakeCaptureScript, router: &Arc<AudioInputRouter>) -> Capture {
        start_with("fake", script, Level::Keep, FakeMixer::default(), router)
    }

    fn start_with(
        device: &str,
        script: FakeCaptureScript,
        level: Level,
        mixer: FakeMixer,
        router: &Arc<AudioInputRouter>,
    ) -> Capture {
        let config = CaptureConfig {
            silence_warn: Duration::from_secs(30),
            level,
        };
        let source = FakeCapture::new(device, script);
        Capture::start(
            Box::new(source),
            Box::new(mixer),
            router.clone(),
            config,
            Arc::new(TestHooks::disabled()),
        )
        .expect("start")
    }

    fn peak(frame: &PcmFrame) -> i32 {
        (0..crate::audio::FRAME_SAMPLES * 2)
            .map(|i| i32::from(frame.sample(i)).abs())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_device_name_gives_the_card_whose_mixer_is_set() {
        assert_eq!(card_of("plughw:CARD=Device,DEV=0").as_deref(), Some("Device"));
        assert_eq!(card_of("hw:CARD=Loopback,DEV=1").as_deref(), Some("Loopback"));
        assert_eq!(card_of("hw:1,0").as_deref(), Some("1"));
        assert_eq!(card_of("plughw:2").as_deref(), Some("2"));
        assert_eq!(card_of("dsnoop:CARD=USB").as_deref(), Some("USB"));
        assert_eq!(card_of("default"), None);
        assert_eq!(card_of("jackcap"), None);
        assert_eq!(card_of("pulse:foo"), None);
        let sel = Selection::configured("hw:CARD=X,DEV=0");
        assert!(!sel.auto);
        assert_eq!(sel.reason, "set in the configuration (device)");
    }

    #[test]
    fn a_card_with_a_capture_control_is_set_at_every_open_and_its_audio_is_untouched() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let mixer = FakeMixer {
            controls: vec![("Device".into(), -20.0, 30.0)],
            ..FakeMixer::default()
        };
        let calls = mixer.calls.clone();
        let script = FakeCaptureScript {
            fail_after_frames: Some(20),
            ..FakeCaptureScript::default()
        };
        let c = start_with("plughw:CARD=Device,DEV=0", script, Level::Db(-6.0), mixer, &router);
        assert!(wait_for(|| c.snapshot().opens >= 2), "re-opened after the failure");
        let snap = c.snapshot();
        assert_eq!(snap.gain.configured, "-6.0 dB");
        assert_eq!(snap.gain.applied, "card control \"Mic\": -6.00 dB");
        assert_eq!(snap.gain.software_db, None);
        let frame = router.pop(Some(Duration::from_secs(1))).expect("a frame");
        assert_eq!(peak(&frame), 16_384, "0.5 of full scale, as delivered");
        c.stop(Duration::from_secs(2)).expect("stop");
        let calls = calls.lock().expect("calls");
        assert!(calls.len() >= 2, "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|(card, level)| card == "Device" && *level == Level::Db(-6.0))
        );
    }

    #[test]
    fn a_cards_level_is_set_again_after_alsas_own_restore_may_have_undone_it() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let mixer = FakeMixer {
            controls: vec![("Late".into(), -20.0, 30.0)],
            ..FakeMixer::default()
        };
        let calls = mixer.calls.clone();
        let script = FakeCaptureScript {
            paced: true,
            ..FakeCaptureScript::default()
        };
        let opened = Instant::now();
        let c = start_with("hw:CARD=Late,DEV=0", script, Level::Db(-9.0), mixer, &router);
        let count = || calls.lock().expect("calls").len();
        assert!(wait_for(|| count() >= 1), "set at the open");
        assert!(wait_for(|| count() >= 2), "set again");
        assert!(opened.elapsed() >= LEVEL_AGAIN_AFTER, "{:?}", opened.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(), 2, "only once more");
        assert_eq!(c.snapshot().opens, 1);
        c.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_card_without_a_capture_control_gets_a_software_gain_that_saturates_and_counts() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let c = start_with(
            "plughw:CARD=Dongle,DEV=0",
            FakeCaptureScript::default(),
            Level::Db(12.0),
            FakeMixer::default(),
            &router,
        );
        let frame = router.pop(Some(Duration::from_secs(2))).expect("a frame");
        assert_eq!(peak(&frame), 32_768, "0.5 of full scale + 12 dB saturates");
        assert!(wait_for(|| c.snapshot().clipped_samples > 0));
        let snap = c.snapshot();
        assert_eq!(snap.gain.software_db, Some(12.0));
        assert!(
            snap.gain.applied.contains("software gain +12.0 dB") && snap.gain.applied.contains("\"Dongle\""),
            "{:?}",
            snap.gain
        );
        assert!(wait_for(|| c.snapshot().level_hint.is_some()));
        let hint = c.snapshot().level_hint.unwrap_or_default();
        assert!(hint.contains("clips"), "{hint}");
        c.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_card_that_refuses_the_level_keeps_streaming_as_found() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let mixer = FakeMixer {
            refusing: vec!["Broken".into()],
            ..FakeMixer::default()
        };
        let c = start_with(
            "hw:CARD=Broken,DEV=0",
            FakeCaptureScript::default(),
            Level::Percent(80.0),
            mixer,
            &router,
        );
        let frame = router.pop(Some(Duration::from_secs(2))).expect("still streaming");
        assert_eq!(peak(&frame), 16_384);
        let snap = c.snapshot();
        assert!(
            snap.gain.applied.starts_with("as found (the card refused"),
            "{:?}",
            snap.gain
        );
        assert_eq!(snap.selection.name, "hw:CARD=Broken,DEV=0");
        c.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn errors_are_classified_by_errno_into_recover_retry_or_reopen() {
        let cases = [
            (libc::EPIPE, ErrorClass::Overrun, Action::Recover),
            (libc::ESTRPIPE, ErrorClass::Suspended, Action::Recover),
            (libc::EAGAIN, ErrorClass::Again, Action::Retry),
            (libc::ENODEV, ErrorClass::NoDevice, Action::Reopen),
            (libc::EIO, ErrorClass::Io, Action::Reopen),
            (libc::EBADFD, ErrorClass::BadState, Action::Reopen),
            (libc::EINVAL, ErrorClass::Other, Action::Reopen),
        ];
        for (errno, class, action) in cases {
            assert_eq!(ErrorClass::from_errno(errno), class, "errno {errno}");
            assert_eq!(class.action(), action, "{class:?}");
        }
        assert_eq!(ErrorClass::Stalled.action(), Action::Reopen);
    }

    #[test]
    fn reopen_backoff_doubles_to_one_second_and_resets() {
        let mut b = ReopenBackoff::default();
        let ms: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), REOPEN_FIRST);
    }

    #[test]
    fn frames_flow_to_the_router_and_overruns_are_counted() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let script = FakeCaptureScript {
            overrun_every: Some(10),
            ..FakeCaptureScript::default()
        };
        let cap = start(script, &router);
        assert!(wait_for(|| router.fill() >= 30));
        let snap = cap.snapshot();
        assert_eq!(snap.state, DeviceState::Open);
        assert!(snap.errors.overrun >= 2, "{snap:?}");
        assert_eq!(snap.opens, 1, "an overrun is recovered in place");
        cap.stop(Duration::from_secs(2)).expect("stop");
    }

    #[test]
    fn a_missing_device_is_retried_until_it_appears() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let script = FakeCaptureScript {
            fail_opens: 2,
            ..FakeCaptureScript::default()
        };
        let cap = start(script, &router);
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
        let script = FakeCaptureScript {
            fail_after_frames: Some(5),
            ..FakeCaptureScript::default()
        };
        let cap = start(script, &router);
        assert!(wait_for(|| cap.snapshot().opens >= 2));
        assert!(cap.snapshot().errors.no_device >= 1);
        cap.stop(Duration::from_secs(3)).expect("stop");
    }

    #[test]
    fn an_open_device_that_delivers_nothing_is_reopened() {
        let router = Arc::new(AudioInputRouter::new(1000));
        let script = FakeCaptureScript {
            mute_after_frames: Some(3),
            ..FakeCaptureScript::default()
        };
        let cap = start(script, &router);
        assert!(wait_for(|| cap.snapshot().opens >= 2));
        let snap = cap.snapshot();
        assert!(snap.errors.stalled >= 1, "{snap:?}");
        cap.stop(Duration::from_secs(3)).expect("stop");
    }

    #[test]
    fn the_input_level_is_published_while_frames_flow() {
        let router = Arc::new(AudioInputRouter::new(100_000));
        let script = FakeCaptureScript {
            amplitude: 0.5,
            paced: true,
            ..FakeCaptureScript::default()
        };
        let cap = start(script, &router);
        let handle = cap.handle();
        assert!(wait_for(|| handle.levels(Instant::now()).levels.peak_dbfs[0] > -7.0));
        let l = handle.levels(Instant::now());
        assert!((l.levels.peak_dbfs[1] - -6.0).abs() < 0.2, "{l:?}");
        assert!((l.levels.rms_dbfs[1] - -9.0).abs() < 0.2, "{l:?}");
        assert_eq!(l.silent_for_s, 0.0);
        cap.stop(Duration::from_secs(2)).expect("stop");
    }

    /// Cards a test plugs in and out.
    #[derive(Clone, Default)]
    struct Cards(Arc<std::sync::Mutex<Vec<crate::audio::devices::CardDevice>>>);

    impl crate::audio::auto::CardLister for Cards {
        fn list(&mut self) -> crate::audio::devices::DeviceList {
            crate::audio::devices::DeviceList {
                cards: self.0.lock().expect("cards").clone(),
                ..Default::default()
            }
        }
    }

    #[test]
    fn with_auto_a_card_plugged_in_after_start_is_live_within_2_s_and_its_level_is_set() {
        let cards = Cards::default();
        let auto = crate::audio::auto::AutoCapture::new(
            Box::new(cards.clone()),
            Box::new(|name: &str| {
                Box::new(FakeCapture::new(
                    name,
                    FakeCaptureScript {
                        paced: true,
                        ..FakeCaptureScript::default()
                    },
                )) as Box<dyn CaptureSource>
            }),
        );
        let router = Arc::new(AudioInputRouter::new(1000));
        let mixer = FakeMixer {
            controls: vec![("Device".into(), -20.0, 30.0)],
            ..FakeMixer::default()
        };
        let calls = mixer.calls.clone();
        let config = CaptureConfig {
            silence_warn: Duration::from_secs(30),
            level: Level::Percent(80.0),
        };
        let c = Capture::start(
            Box::new(auto),
            Box::new(mixer),
            router.clone(),
            config,
            Arc::new(TestHooks::disabled()),
        )
        .expect("start");
        // Long enough for the re-open backoff to reach its 1 s cap.
        assert!(wait_for(|| c.snapshot().open_failures >= 4));
        assert_eq!(c.snapshot().selection.name, "auto");
        assert!(router.pop(None).is_none());
        let plugged = Instant::now();
        cards.0.lock().expect("cards").push(crate::audio::devices::CardDevice {
            card_id: "Device".into(),
            card_index: 3,
            card_name: "USB Audio Device".into(),
            device: 0,
            device_name: "USB Audio".into(),
            usb: true,
        });
        let frame = router.pop(Some(Duration::from_secs(3)));
        let took = plugged.elapsed();
        assert!(frame.is_some(), "no audio after the card was plugged in");
        eprintln!("auto: a card plugged in was delivering audio {took:?} later");
        assert!(took <= Duration::from_secs(2), "live {took:?} after plugging in");
        let snap = c.snapshot();
        assert_eq!(snap.selection.name, "plughw:CARD=Device,DEV=0");
        assert!(snap.selection.auto);
        assert_eq!(
            snap.selection.reason,
            "USB, the only card with capture (USB Audio Device)"
        );
        assert_eq!(
            *calls.lock().expect("calls"),
            [("Device".to_string(), Level::Percent(80.0))]
        );
        c.stop(Duration::from_secs(2)).expect("stop");
    }
}
