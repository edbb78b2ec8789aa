//! The status document: what `/status`, `/events`, `/metrics` and
//! `/health` report, read from every stage's snapshot on request (the
//! HTTP and events threads call it; nothing here runs on its own).
//!
//! [`Status`] is one typed document built from the stages' snapshots;
//! `/status` and `/events` serialize it and [`metrics`] renders the
//! Prometheus page from its fields, so a renamed field fails to compile
//! instead of exporting 0.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::audio::InputState;
use crate::audio::capture::{CaptureHandle, CaptureSnapshot, DeviceState, GainState, Selection};
use crate::audio::level::LevelReading;
use crate::audio::program::{ProgramSnapshot, ProgramState};
use crate::audio::router::{AudioInputRouter, RouterStats};
use crate::broadcast::icecast::OutputSnapshot;
use crate::encoder::ring::RingStats;
use crate::encoder::{EncoderManager, EncoderSnapshot};
use crate::http::{HttpSnapshot, HttpStats, Hub, HubSnapshot, StatusSource};
use crate::pump::fallback::FallbackKind;
use crate::pump::{PumpSnapshot, PumpStats};

pub mod metrics;

/// Everything `/status` reads.
pub(crate) struct Board {
    pub(crate) started: Instant,
    pub(crate) started_wall: SystemTime,
    pub(crate) router: Arc<AudioInputRouter>,
    pub(crate) encoder: Arc<EncoderManager>,
    pub(crate) pump: Arc<PumpStats>,
    pub(crate) capture: CaptureHandle,
    pub(crate) hub: Arc<Hub>,
    pub(crate) outputs: Arc<crate::broadcast::icecast::Outputs>,
    pub(crate) http: Arc<HttpStats>,
    pub(crate) station: Arc<crate::live::Live<crate::broadcast::Station>>,
    pub(crate) leds: Mutex<crate::leds::LedStatus>,
    /// What the LED thread did with the amplifier line.
    pub(crate) amp: Arc<crate::leds::AmpBoard>,
    /// The MQTT link, kept across its restarts.
    pub(crate) mqtt: Arc<crate::mqtt::MqttStats>,
    /// Settings changed while running (the history beside the encoder's).
    pub(crate) changes: Arc<ChangeLog>,
    /// What the owner's desk counts.
    pub(crate) admin: Arc<AdminCounters>,
    /// Title updates sent to the Icecast servers.
    pub(crate) titles: Arc<crate::broadcast::title::TitleStats>,
    /// Why Tower started from the backup of its configuration file.
    pub(crate) config_notice: Option<String>,
    /// Workers that ended, by thread name.
    pub(crate) workers: std::sync::Mutex<BTreeMap<String, WorkerRecord>>,
}

/// Settings changed while Tower runs, newest last, at most
/// [`ChangeLog::KEEP`]: what the pages show beside the encoder's history.
#[derive(Debug, Default)]
pub struct ChangeLog(Mutex<VecDeque<SettingChange>>);

/// One changed setting; a secret's values are `***`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingChange {
    pub at: String,
    /// Who changed it: the address, or "calibrate".
    pub who: String,
    pub key: String,
    pub old: String,
    pub new: String,
}

impl ChangeLog {
    pub const KEEP: usize = 50;

    pub fn record(&self, who: &str, key: &str, old: &str, new: &str) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= Self::KEEP {
            log.pop_front();
        }
        log.push_back(SettingChange {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            who: who.to_string(),
            key: key.to_string(),
            old: old.to_string(),
            new: new.to_string(),
        });
    }

    pub fn list(&self) -> Vec<SettingChange> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What the owner's desk counts (the admin thread and the accept loop
/// write, `/status` reads).
#[derive(Debug, Default)]
pub struct AdminCounters {
    pub password_set: std::sync::atomic::AtomicBool,
    /// Passwords checked and found wrong (each cost a hash).
    pub wrong_passwords: AtomicU64,
    /// Password attempts refused by the throttle, without a hash.
    pub attempts_throttled: AtomicU64,
    /// Requests for the desk refused because its queue was full.
    pub desk_busy: AtomicU64,
    /// Settings changed (keys).
    pub settings_changed: AtomicU64,
}

/// [`AdminCounters`] as `/status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct AdminSnapshot {
    pub password_set: bool,
    pub wrong_passwords: u64,
    pub attempts_throttled: u64,
    pub desk_busy: u64,
    pub settings_changed: u64,
}

impl AdminCounters {
    pub fn snapshot(&self) -> AdminSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AdminSnapshot {
            password_set: self.password_set.load(Ordering::Relaxed),
            wrong_passwords: l(&self.wrong_passwords),
            attempts_throttled: l(&self.attempts_throttled),
            desk_busy: l(&self.desk_busy),
            settings_changed: l(&self.settings_changed),
        }
    }
}

/// A worker's ends and restarts, as `/status` shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerRecord {
    pub ends: u64,
    pub restarts: u64,
    /// How it last ended (a panic's message, or "ended on its own").
    pub last_end: String,
    pub last_end_at: String,
    /// Set when the worker cannot be rebuilt and Tower is exiting.
    pub fatal: bool,
}

impl Board {
    pub(crate) fn worker_ended(&self, ended: &crate::worker::Ended) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let r = w.entry(ended.name.clone()).or_default();
        r.ends += 1;
        r.last_end = ended.to_string();
        r.last_end_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    }

    pub(crate) fn worker_restarted(&self, name: &str) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(name.to_string()).or_default().restarts += 1;
    }

    /// A worker that cannot be rebuilt ended: `/health` says so.
    pub(crate) fn set_fatal(&self, name: &str) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(name.to_string()).or_default().fatal = true;
    }

    fn fatal_reasons(&self) -> Vec<String> {
        let w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .filter(|(_, r)| r.fatal)
            .map(|(name, r)| format!("worker {name} died and cannot be restarted in place: {}", r.last_end))
            .collect()
    }
}

/// A pump that has not ticked for this long is stalled (it ticks every 24 ms).
const PUMP_STALLED_AFTER: Duration = Duration::from_secs(1);

impl Board {
    /// The status document, typed: `/status`, `/events` and `/metrics` all
    /// render from it, so a renamed field fails to compile.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let router = self.router.stats();
        let ring = self.encoder.ring().stats();
        let enc = self.encoder.snapshot();
        let pump = self.pump.snapshot();
        let capture = self.capture.snapshot();
        let hub = self.hub.snapshot();
        let http = self.http.snapshot();
        let counters = Counters {
            pcm_frames_in: router.pushed,
            mp3_frames_out: enc.mp3_frames_out,
            silence_frames_out: enc.silence_frames_out,
            encoder_restarts: enc.supervisor.restarts,
            slow_listeners_dropped: hub.slow_dropped,
            drops: Drops {
                pcm_queue_full: router.dropped_full,
                pcm_malformed: router.rejected_malformed,
                pcm_encoder_down: enc.pcm_dropped_encoder_down + enc.supervisor.pcm_dropped_not_running,
                pcm_encoder_pipe_full: enc.supervisor.pcm_dropped_pipe_full,
                pcm_encoder_busy: enc.supervisor.pcm_dropped_busy,
                capture_overruns: capture.errors.overrun,
                pcm_drift_trimmed: router.drift_trimmed,
                mp3_ring_full: ring.dropped_oldest,
                mp3_late_trimmed: enc.mp3_frames_trimmed,
                mp3_broadcast_behind: enc.mp3_frames_skipped_behind,
                slow_listeners: hub.slow_dropped,
            },
        };
        let input_state = self.pump.input_state();
        let program = ProgramStatus {
            source: input_source(input_state, self.pump.fallback(), &capture.selection.name),
            detector: self.capture.program().snapshot(now),
        };
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_at: humantime::format_rfc3339_seconds(self.started_wall).to_string(),
            uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
            station: (*self.station.get()).clone(),
            encoder: enc,
            program,
            amp: self.amp.snapshot(now),
            mqtt: self.mqtt.snapshot(now),
            input: InputStatus {
                state: input_state,
                device: capture.selection.clone(),
                device_state: capture.state,
                gain: capture.gain.clone(),
                clipped_samples: capture.clipped_samples,
                level_hint: capture.level_hint.clone(),
                fallback_source: self.pump.fallback(),
                level: self.capture.levels(now),
                capture,
            },
            leds: self.leds.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            workers: self.workers.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            settings_history: self.changes.list(),
            config_notice: self.config_notice.clone(),
            admin: self.admin.snapshot(),
            listeners: hub,
            outputs: self.outputs.snapshot(),
            icecast_titles: self.titles.snapshot(),
            pcm_buffer: router,
            mp3_buffer: ring,
            pump,
            http,
            counters,
        }
    }
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: String,
    pub uptime_s: f64,
    pub station: crate::broadcast::Station,
    pub encoder: EncoderSnapshot,
    /// Whether something plays on the input [D1]–[D3].
    pub program: ProgramStatus,
    pub input: InputStatus,
    pub leds: crate::leds::LedStatus,
    /// The amplifier line [D4].
    pub amp: crate::leds::AmpStatus,
    /// The link to Home Assistant [D5].
    pub mqtt: crate::mqtt::MqttSnapshot,
    /// Workers that ended (and were restarted), by thread name.
    pub workers: BTreeMap<String, WorkerRecord>,
    /// Settings the owner changed while Tower runs (secrets as `***`).
    pub settings_history: Vec<SettingChange>,
    /// Set when the configuration file could not be used and Tower
    /// started from its backup.
    pub config_notice: Option<String>,
    /// The owner's desk: whether a password is set, and refused attempts.
    pub admin: AdminSnapshot,
    pub listeners: HubSnapshot,
    pub outputs: Vec<OutputSnapshot>,
    /// The title sent to the Icecast servers (metadata updates).
    pub icecast_titles: crate::broadcast::title::TitleSnapshot,
    pub pcm_buffer: RouterStats,
    pub mp3_buffer: RingStats,
    pub pump: PumpSnapshot,
    pub http: HttpSnapshot,
    pub counters: Counters,
}

/// Program detection, and what the listeners hear meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    #[serde(flatten)]
    pub detector: ProgramSnapshot,
    /// What plays: the input's device or socket, or the fallback (which is
    /// never program).
    pub source: String,
}

/// What the listeners hear, in words: the input's device (a sound card's
/// name, or `unix:PATH` for the socket input), or the fallback [D3].
pub fn input_source(state: InputState, fallback: FallbackKind, device: &str) -> String {
    match state {
        InputState::Live => device.to_string(),
        InputState::Grace => format!("{device} (silence: no audio from the input)"),
        InputState::Fallback => format!(
            "fallback ({})",
            serde_json::to_value(fallback)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
    }
}

/// Where the audio comes from and how it is.
#[derive(Debug, Clone, Serialize)]
pub struct InputStatus {
    pub state: InputState,
    pub device: Selection,
    pub device_state: DeviceState,
    pub gain: GainState,
    pub clipped_samples: u64,
    pub level_hint: Option<String>,
    pub fallback_source: FallbackKind,
    pub level: LevelReading,
    pub capture: CaptureSnapshot,
}

/// The headline counters.
#[derive(Debug, Clone, Serialize)]
pub struct Counters {
    pub pcm_frames_in: u64,
    pub mp3_frames_out: u64,
    pub silence_frames_out: u64,
    pub encoder_restarts: u64,
    pub slow_listeners_dropped: u64,
    pub drops: Drops,
}

/// Every drop in the pipeline, by cause.
#[derive(Debug, Clone, Serialize)]
pub struct Drops {
    pub pcm_queue_full: u64,
    pub pcm_malformed: u64,
    pub pcm_encoder_down: u64,
    pub pcm_encoder_pipe_full: u64,
    pub pcm_encoder_busy: u64,
    pub capture_overruns: u64,
    pub pcm_drift_trimmed: u64,
    pub mp3_ring_full: u64,
    pub mp3_late_trimmed: u64,
    pub mp3_broadcast_behind: u64,
    pub slow_listeners: u64,
}

/// The status pages' `level` event.
#[derive(Debug, Clone, Serialize)]
pub struct LevelEvent {
    #[serde(flatten)]
    pub reading: LevelReading,
    pub state: InputState,
    /// Whether program plays [D2].
    pub program: ProgramState,
}

impl StatusSource for Board {
    fn status_json(&self) -> String {
        serde_json::to_string(&self.status()).unwrap_or_default()
    }

    fn buffer(&self) -> (usize, usize) {
        (self.router.fill(), self.router.capacity())
    }

    fn metrics(&self) -> String {
        metrics::render(&self.status(), self.pump.tick_error())
    }

    fn level_json(&self) -> String {
        let program = if self.capture.program().is_program() {
            ProgramState::Program
        } else {
            ProgramState::Idle
        };
        let event = LevelEvent {
            reading: self.capture.levels(Instant::now()),
            state: self.pump.input_state(),
            program,
        };
        serde_json::to_string(&event).unwrap_or_default()
    }

    fn health(&self) -> Vec<String> {
        let now = Instant::now();
        let mut reasons = self.fatal_reasons();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_plays_is_the_device_or_the_fallback_by_name() {
        let dev = "plughw:CARD=Device,DEV=0";
        assert_eq!(input_source(InputState::Live, FallbackKind::Tone, dev), dev);
        assert_eq!(
            input_source(InputState::Grace, FallbackKind::Tone, "unix:/run/tower/pcm.sock"),
            "unix:/run/tower/pcm.sock (silence: no audio from the input)"
        );
        assert_eq!(
            input_source(InputState::Fallback, FallbackKind::Tone, dev),
            "fallback (tone)"
        );
        assert_eq!(
            input_source(InputState::Fallback, FallbackKind::Wav, dev),
            "fallback (wav)"
        );
    }
}
