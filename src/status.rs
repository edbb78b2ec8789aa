//! The status document: what `/status`, `/events`, `/metrics` and
//! `/health` report, read from every stage's snapshot on request (the
//! HTTP thread calls it; nothing here runs on its own).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::audio::capture::CaptureHandle;
use crate::audio::router::AudioInputRouter;
use crate::encoder::EncoderManager;
use crate::http::{HttpStats, Hub, StatusSource};
use crate::pump::PumpStats;
use crate::pump::fallback::FallbackKind;

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
    pub(crate) fallback: FallbackKind,
    pub(crate) http: Arc<HttpStats>,
    pub(crate) station: crate::config::Station,
    pub(crate) leds: crate::leds::LedStatus,
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
                "device": capture.selection,
                "device_state": capture.state,
                "gain": capture.gain,
                "clipped_samples": capture.clipped_samples,
                "level_hint": capture.level_hint,
                "fallback_source": self.fallback,
                "level": self.capture.levels(Instant::now()),
                "capture": capture,
            },
            "leds": self.leds,
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
