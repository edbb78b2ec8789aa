//! `GET /metrics`: Prometheus text format (version 0.0.4), names prefixed
//! `tower_`.
//!
//! Rendered from the typed [`Status`] (one source of truth for both, so a
//! renamed field fails to compile) and the pump's tick-error histogram. Enumerations (encoder state, input
//! state) are one gauge per value, 1 for the current one, the Prometheus
//! way to graph a state.

use std::fmt::Write;

use serde::Serialize;

use super::Status;
use crate::audio::InputState;
use crate::audio::program::ProgramState;
use crate::encoder::EncoderState;
use crate::histogram::Histogram;
use crate::mqtt::LinkState;

/// Upper bounds (µs) of the pump lateness buckets.
const LATENESS_BUCKETS_US: [u64; 10] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

const ENCODER_STATES: [EncoderState; 5] = [
    EncoderState::Starting,
    EncoderState::Running,
    EncoderState::Restarting,
    EncoderState::Failed,
    EncoderState::Stopped,
];
const INPUT_STATES: [InputState; 3] = [InputState::Live, InputState::Grace, InputState::Fallback];
const MQTT_STATES: [LinkState; 5] = [
    LinkState::Off,
    LinkState::Connecting,
    LinkState::Connected,
    LinkState::Down,
    LinkState::Refused,
];

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP tower_{name} {help}");
        let _ = writeln!(self.0, "# TYPE tower_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.0, "tower_{name}");
        if !labels.is_empty() {
            let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.0, "{{{}}}", text.join(","));
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per field of a struct of counters (the
    /// field names are the label values).
    fn by(&mut self, name: &str, kind: &str, help: &str, label: &str, counters: &impl Serialize) {
        self.family(name, kind, help);
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(counters) {
            for (k, v) in map {
                self.sample(name, &[(label, &k)], v.as_f64().unwrap_or(0.0));
            }
        }
    }

    /// One gauge per possible value of an enumeration.
    fn state<S: PartialEq + std::fmt::Display>(&mut self, name: &str, help: &str, states: &[S], current: &S) {
        self.family(name, "gauge", help);
        for s in states {
            self.sample(name, &[("state", &s.to_string())], f64::from(u8::from(s == current)));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Counts as samples (Prometheus values are floats).
fn n(v: u64) -> f64 {
    v as f64
}

/// The metrics page for `status` and the pump's tick-error histogram.
pub fn render(status: &Status, tick_error: &Histogram) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    o.family("build_info", "gauge", "Tower's version.");
    o.sample("build_info", &[("version", status.version)], 1.0);
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since Tower started.",
        status.uptime_s,
    );

    let admin = &status.admin;
    o.one(
        "admin_password_set",
        "gauge",
        "1 when an admin password is set.",
        f64::from(u8::from(admin.password_set)),
    );
    o.one(
        "admin_wrong_passwords_total",
        "counter",
        "Admin passwords checked and found wrong.",
        n(admin.wrong_passwords),
    );
    o.one(
        "admin_attempts_throttled_total",
        "counter",
        "Password attempts refused by the throttle, without hashing.",
        n(admin.attempts_throttled),
    );
    o.one(
        "admin_desk_busy_total",
        "counter",
        "Settings requests refused because the settings desk was busy.",
        n(admin.desk_busy),
    );
    o.one(
        "admin_settings_changed_total",
        "counter",
        "Settings changed while running.",
        n(admin.settings_changed),
    );

    let enc = &status.encoder;
    o.state(
        "encoder_state",
        "The encoder's state (1 for the current one).",
        &ENCODER_STATES,
        &enc.supervisor.state,
    );
    o.one(
        "encoder_restarts_total",
        "counter",
        "Encoder restarts.",
        n(enc.supervisor.restarts),
    );
    o.by(
        "encoder_failures_total",
        "counter",
        "Encoder failures by cause.",
        "cause",
        &enc.supervisor.failures,
    );

    let input = &status.input;
    o.state(
        "input_state",
        "Where the audio comes from (1 for the current one).",
        &INPUT_STATES,
        &input.state,
    );
    let p = &status.program.detector;
    o.one(
        "program_playing",
        "gauge",
        "1 while program plays on the input (the level a margin above its noise floor).",
        f64::from(u8::from(p.state == ProgramState::Program)),
    );
    o.one(
        "program_changes_total",
        "counter",
        "Changes between program and idle.",
        n(p.changes),
    );
    o.one(
        "program_margin_db",
        "gauge",
        "How far above the noise floor program must be, dB.",
        f64::from(p.margin_db),
    );
    o.family(
        "program_floor_dbfs",
        "gauge",
        "The input's noise floor learned (the quietest second of the window), dBFS.",
    );
    if let Some(floor) = p.floor_dbfs {
        o.sample("program_floor_dbfs", &[], f64::from(floor));
    }
    o.one(
        "amp_on",
        "gauge",
        "1 while the amplifier line is on.",
        f64::from(u8::from(status.amp.on)),
    );
    o.state(
        "mqtt_state",
        "The MQTT link to Home Assistant (1 for the current state).",
        &MQTT_STATES,
        &status.mqtt.state,
    );
    o.one(
        "mqtt_connects_total",
        "counter",
        "Connections to the MQTT broker (the first, and every reconnection).",
        n(status.mqtt.connects),
    );
    o.one(
        "mqtt_published_total",
        "counter",
        "MQTT messages queued for the broker.",
        n(status.mqtt.published),
    );
    o.one(
        "mqtt_dropped_total",
        "counter",
        "MQTT messages dropped because the client's queue was full.",
        n(status.mqtt.dropped),
    );
    o.family("input_level_peak_dbfs", "gauge", "Input peak level over ~100 ms, dBFS.");
    for (i, ch) in ["left", "right"].iter().enumerate() {
        o.sample(
            "input_level_peak_dbfs",
            &[("channel", ch)],
            f64::from(input.level.levels.peak_dbfs[i]),
        );
    }
    o.family("input_level_rms_dbfs", "gauge", "Input RMS level over ~100 ms, dBFS.");
    for (i, ch) in ["left", "right"].iter().enumerate() {
        o.sample(
            "input_level_rms_dbfs",
            &[("channel", ch)],
            f64::from(input.level.levels.rms_dbfs[i]),
        );
    }
    o.one(
        "input_silent_seconds",
        "gauge",
        "How long the live input has carried only digital silence.",
        input.level.silent_for_s,
    );
    o.family(
        "input_device_info",
        "gauge",
        "The capture device in use; auto=\"true\" when device = \"auto\" chose it.",
    );
    o.sample(
        "input_device_info",
        &[
            ("device", &input.device.name),
            ("auto", if input.device.auto { "true" } else { "false" }),
            ("reason", &input.device.reason),
        ],
        1.0,
    );
    o.one(
        "input_software_gain_db",
        "gauge",
        "Software gain on the PCM (0 when the card's own control sets the level).",
        input.gain.software_db.unwrap_or(0.0),
    );
    o.one(
        "input_clipped_samples_total",
        "counter",
        "Input samples at full scale (clipped).",
        n(input.clipped_samples),
    );
    o.one(
        "input_level_hint",
        "gauge",
        "1 while the input level is far off (see input.level_hint in /status).",
        f64::from(u8::from(input.level_hint.is_some())),
    );
    o.family(
        "worker_restarts_total",
        "counter",
        "Worker threads started again after they died, by thread.",
    );
    for (name, w) in &status.workers {
        o.sample("worker_restarts_total", &[("worker", name)], n(w.restarts));
    }
    o.by(
        "capture_errors_total",
        "counter",
        "Capture device errors by class.",
        "class",
        &input.capture.errors,
    );
    o.one(
        "capture_open_failures_total",
        "counter",
        "Failed attempts to open the capture device.",
        n(input.capture.open_failures),
    );

    let c = &status.counters;
    o.one(
        "pcm_frames_in_total",
        "counter",
        "PCM frames queued from the input.",
        n(c.pcm_frames_in),
    );
    o.one(
        "mp3_frames_out_total",
        "counter",
        "MP3 frames sent to listeners.",
        n(c.mp3_frames_out),
    );
    o.one(
        "silence_frames_out_total",
        "counter",
        "Silent MP3 frames sent while the encoder was late or down.",
        n(c.silence_frames_out),
    );
    o.by("drops_total", "counter", "Frames dropped, by cause.", "cause", &c.drops);
    o.one(
        "pcm_queue_fill",
        "gauge",
        "Frames in the PCM input queue.",
        status.pcm_buffer.fill as f64,
    );

    let l = &status.listeners;
    o.one(
        "listeners",
        "gauge",
        "Listeners connected to /stream.",
        l.current as f64,
    );
    o.one("listeners_max", "gauge", "The listener limit.", l.max as f64);
    o.one(
        "listeners_connected_total",
        "counter",
        "Listeners that connected.",
        n(l.connected_total),
    );
    o.one(
        "listeners_slow_dropped_total",
        "counter",
        "Listeners dropped because they could not keep up.",
        n(l.slow_dropped),
    );
    o.one(
        "listeners_rejected_total",
        "counter",
        "Listeners refused with 503 at the limit.",
        n(l.rejected_full),
    );
    o.one(
        "listeners_rejected_per_address_total",
        "counter",
        "Listeners refused with 503 at the limit per client address.",
        n(l.rejected_per_address),
    );
    type Field = fn(&crate::broadcast::icecast::OutputSnapshot) -> u64;
    let per_output: [(&str, &str, Field); 4] = [
        ("output_bytes_sent_total", "Bytes pushed to each Icecast target.", |o| {
            o.bytes_sent
        }),
        (
            "output_reconnects_total",
            "Reconnections to each Icecast target.",
            |o| o.reconnects,
        ),
        (
            "output_refusals_total",
            "Times each Icecast target refused Tower.",
            |o| o.refusals,
        ),
        (
            "output_dropped_total",
            "Frames dropped because an Icecast target fell behind.",
            |o| o.dropped_full,
        ),
    ];
    for (name, help, field) in per_output {
        o.family(name, "counter", help);
        for out in &status.outputs {
            o.sample(name, &[("target", &out.target)], n(field(out)));
        }
    }
    o.family(
        "output_streaming",
        "gauge",
        "1 while Tower streams to the Icecast target.",
    );
    for out in &status.outputs {
        let up = out.state == crate::broadcast::icecast::OutputState::Streaming;
        o.sample("output_streaming", &[("target", &out.target)], f64::from(u8::from(up)));
    }

    let h = &status.http;
    o.one(
        "http_requests_total",
        "counter",
        "HTTP requests answered.",
        n(h.requests),
    );
    o.one(
        "http_bad_requests_total",
        "counter",
        "HTTP requests refused with 4xx or 5xx.",
        n(h.bad_requests),
    );
    o.one(
        "http_pending_connections",
        "gauge",
        "Connections whose request is being read or answered.",
        n(h.pending),
    );
    o.family(
        "http_connections_cut_total",
        "counter",
        "Connections closed by the guard, by reason.",
    );
    for (reason, value) in [
        ("header_timeout", h.cut_header_timeout),
        ("per_address", h.cut_per_address),
        ("total", h.cut_total),
        ("no_descriptors", h.shed_no_descriptors),
    ] {
        o.sample("http_connections_cut_total", &[("reason", reason)], n(value));
    }

    o.one(
        "pump_ticks_total",
        "counter",
        "Audio pump ticks (one per 24 ms).",
        n(status.pump.ticks),
    );
    o.family(
        "pump_tick_lateness_seconds",
        "histogram",
        "How late each pump tick started against its deadline.",
    );
    for us in LATENESS_BUCKETS_US {
        let le = number(us as f64 / 1e6);
        o.sample(
            "pump_tick_lateness_seconds_bucket",
            &[("le", &le)],
            tick_error.count_at_most_us(us) as f64,
        );
    }
    let (count, sum_us) = tick_error.count_and_sum_us();
    o.sample("pump_tick_lateness_seconds_bucket", &[("le", "+Inf")], count as f64);
    o.sample("pump_tick_lateness_seconds_sum", &[], sum_us as f64 / 1e6);
    o.sample("pump_tick_lateness_seconds_count", &[], count as f64);
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-6.25), "-6.25");
    }
}
