//! `GET /metrics`: Prometheus text format (version 0.0.4), names prefixed
//! `tower_`.
//!
//! Rendered from the `/status` document (one source of truth for both) and
//! the pump's tick-error histogram. Enumerations (encoder state, input
//! state) are one gauge per value, 1 for the current one, the Prometheus
//! way to graph a state.

use std::fmt::Write;

use serde_json::Value;

use crate::histogram::Histogram;

/// Upper bounds (µs) of the pump lateness buckets.
const LATENESS_BUCKETS_US: [u64; 10] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000];

const ENCODER_STATES: [&str; 5] = ["STARTING", "RUNNING", "RESTARTING", "FAILED", "STOPPED"];
const INPUT_STATES: [&str; 3] = ["live", "grace", "fallback"];

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

    /// A family with one sample per key of a JSON object of numbers.
    fn by(&mut self, name: &str, kind: &str, help: &str, label: &str, object: &Value) {
        self.family(name, kind, help);
        if let Some(map) = object.as_object() {
            for (k, v) in map {
                self.sample(name, &[(label, k)], v.as_f64().unwrap_or(0.0));
            }
        }
    }

    /// One gauge per possible value of an enumeration.
    fn state(&mut self, name: &str, help: &str, states: &[&str], current: &str) {
        self.family(name, "gauge", help);
        for s in states {
            self.sample(name, &[("state", s)], f64::from(u8::from(*s == current)));
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

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(0.0)
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

/// The metrics page for `status` (the `/status` document) and the pump's
/// tick-error histogram.
pub fn render(status: &Value, tick_error: &Histogram) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    o.family("build_info", "gauge", "Tower's version.");
    o.sample("build_info", &[("version", s(status, &["version"]))], 1.0);
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since Tower started.",
        f(status, &["uptime_s"]),
    );

    o.state(
        "encoder_state",
        "The encoder's state (1 for the current one).",
        &ENCODER_STATES,
        s(status, &["encoder", "state"]),
    );
    o.one(
        "encoder_restarts_total",
        "counter",
        "Encoder restarts.",
        f(status, &["encoder", "restarts"]),
    );
    o.by(
        "encoder_failures_total",
        "counter",
        "Encoder failures by cause.",
        "cause",
        &status["encoder"]["failures"],
    );

    o.state(
        "input_state",
        "Where the audio comes from (1 for the current one).",
        &INPUT_STATES,
        s(status, &["input", "state"]),
    );
    o.family("input_level_peak_dbfs", "gauge", "Input peak level over ~100 ms, dBFS.");
    for (i, ch) in ["left", "right"].iter().enumerate() {
        let v = status["input"]["level"]["peak_dbfs"][i].as_f64().unwrap_or(-120.0);
        o.sample("input_level_peak_dbfs", &[("channel", ch)], v);
    }
    o.family("input_level_rms_dbfs", "gauge", "Input RMS level over ~100 ms, dBFS.");
    for (i, ch) in ["left", "right"].iter().enumerate() {
        let v = status["input"]["level"]["rms_dbfs"][i].as_f64().unwrap_or(-120.0);
        o.sample("input_level_rms_dbfs", &[("channel", ch)], v);
    }
    o.one(
        "input_silent_seconds",
        "gauge",
        "How long the live input has carried only digital silence.",
        f(status, &["input", "level", "silent_for_s"]),
    );
    o.family(
        "input_device_info",
        "gauge",
        "The capture device in use; auto=\"true\" when device = \"auto\" chose it.",
    );
    let dev = &status["input"]["device"];
    let auto = if dev["auto"].as_bool().unwrap_or(false) {
        "true"
    } else {
        "false"
    };
    o.sample(
        "input_device_info",
        &[
            ("device", dev["name"].as_str().unwrap_or("")),
            ("auto", auto),
            ("reason", dev["reason"].as_str().unwrap_or("")),
        ],
        1.0,
    );
    o.one(
        "input_software_gain_db",
        "gauge",
        "Software gain on the PCM (0 when the card's own control sets the level).",
        f(status, &["input", "gain", "software_db"]),
    );
    o.one(
        "input_clipped_samples_total",
        "counter",
        "Input samples at full scale (clipped).",
        f(status, &["input", "clipped_samples"]),
    );
    o.one(
        "input_level_hint",
        "gauge",
        "1 while the input level is far off (see input.level_hint in /status).",
        if status["input"]["level_hint"].is_string() {
            1.0
        } else {
            0.0
        },
    );
    o.by(
        "capture_errors_total",
        "counter",
        "Capture device errors by class.",
        "class",
        &status["input"]["capture"]["errors"],
    );
    o.one(
        "capture_open_failures_total",
        "counter",
        "Failed attempts to open the capture device.",
        f(status, &["input", "capture", "open_failures"]),
    );

    o.one(
        "pcm_frames_in_total",
        "counter",
        "PCM frames queued from the input.",
        f(status, &["counters", "pcm_frames_in"]),
    );
    o.one(
        "mp3_frames_out_total",
        "counter",
        "MP3 frames sent to listeners.",
        f(status, &["counters", "mp3_frames_out"]),
    );
    o.one(
        "silence_frames_out_total",
        "counter",
        "Silent MP3 frames sent while the encoder was late or down.",
        f(status, &["counters", "silence_frames_out"]),
    );
    o.by(
        "drops_total",
        "counter",
        "Frames dropped, by cause.",
        "cause",
        &status["counters"]["drops"],
    );
    o.one(
        "pcm_queue_fill",
        "gauge",
        "Frames in the PCM input queue.",
        f(status, &["pcm_buffer", "fill"]),
    );

    o.one(
        "listeners",
        "gauge",
        "Listeners connected to /stream.",
        f(status, &["listeners", "current"]),
    );
    o.one(
        "listeners_max",
        "gauge",
        "The listener limit.",
        f(status, &["listeners", "max"]),
    );
    o.one(
        "listeners_connected_total",
        "counter",
        "Listeners that connected.",
        f(status, &["listeners", "connected_total"]),
    );
    o.one(
        "listeners_slow_dropped_total",
        "counter",
        "Listeners dropped because they could not keep up.",
        f(status, &["listeners", "slow_dropped"]),
    );
    o.one(
        "listeners_rejected_total",
        "counter",
        "Listeners refused with 503 at the limit.",
        f(status, &["listeners", "rejected_full"]),
    );
    let outputs = status["outputs"].as_array().cloned().unwrap_or_default();
    let per_output: [(&str, &str, &str, &str); 4] = [
        (
            "output_bytes_sent_total",
            "counter",
            "Bytes pushed to each Icecast target.",
            "bytes_sent",
        ),
        (
            "output_reconnects_total",
            "counter",
            "Reconnections to each Icecast target.",
            "reconnects",
        ),
        (
            "output_refusals_total",
            "counter",
            "Times each Icecast target refused Tower.",
            "refusals",
        ),
        (
            "output_dropped_total",
            "counter",
            "Frames dropped because an Icecast target fell behind.",
            "dropped_full",
        ),
    ];
    for (name, kind, help, field) in per_output {
        o.family(name, kind, help);
        for out in &outputs {
            o.sample(name, &[("target", s(out, &["target"]))], f(out, &[field]));
        }
    }
    o.family(
        "output_streaming",
        "gauge",
        "1 while Tower streams to the Icecast target.",
    );
    for out in &outputs {
        let up = f64::from(u8::from(s(out, &["state"]) == "streaming"));
        o.sample("output_streaming", &[("target", s(out, &["target"]))], up);
    }
    o.one(
        "http_requests_total",
        "counter",
        "HTTP requests answered.",
        f(status, &["http", "requests"]),
    );
    o.one(
        "http_bad_requests_total",
        "counter",
        "HTTP requests refused with 4xx or 5xx.",
        f(status, &["http", "bad_requests"]),
    );
    o.one(
        "http_pending_connections",
        "gauge",
        "Connections whose request is being read or answered.",
        f(status, &["http", "pending"]),
    );
    o.family(
        "http_connections_cut_total",
        "counter",
        "Connections closed by the guard, by reason.",
    );
    for (reason, field) in [
        ("header_timeout", "cut_header_timeout"),
        ("per_address", "cut_per_address"),
        ("total", "cut_total"),
        ("no_descriptors", "shed_no_descriptors"),
    ] {
        o.sample(
            "http_connections_cut_total",
            &[("reason", reason)],
            f(status, &["http", field]),
        );
    }

    o.one(
        "pump_ticks_total",
        "counter",
        "Audio pump ticks (one per 24 ms).",
        f(status, &["pump", "ticks"]),
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
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn states_are_one_gauge_each_and_maps_become_labels() {
        let status = json!({
            "version": "0.1.0",
            "encoder": {"state": "RUNNING", "restarts": 2, "failures": {"stall": 1, "eof": 0}},
            "input": {"state": "fallback", "level": {"peak_dbfs": [-6.5, -120.0]}},
            "counters": {"drops": {"slow_listeners": 3}},
        });
        let h = Histogram::new();
        h.record(Duration::from_micros(80));
        h.record(Duration::from_micros(2_000));
        let text = render(&status, &h);
        for line in [
            "tower_encoder_state{state=\"RUNNING\"} 1",
            "tower_encoder_state{state=\"FAILED\"} 0",
            "tower_encoder_restarts_total 2",
            "tower_encoder_failures_total{cause=\"stall\"} 1",
            "tower_input_state{state=\"fallback\"} 1",
            "tower_input_level_peak_dbfs{channel=\"left\"} -6.5",
            "tower_drops_total{cause=\"slow_listeners\"} 3",
            "tower_pump_tick_lateness_seconds_bucket{le=\"0.0001\"} 1",
            "tower_pump_tick_lateness_seconds_bucket{le=\"0.001\"} 1",
            "tower_pump_tick_lateness_seconds_bucket{le=\"0.0025\"} 2",
            "tower_pump_tick_lateness_seconds_bucket{le=\"+Inf\"} 2",
            "tower_pump_tick_lateness_seconds_sum 0.00208",
            "tower_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample belongs to a family declared just before it.
        let mut declared = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared = rest.split(' ').next().unwrap_or("").to_string();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&declared), "{l} outside {declared}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-6.25), "-6.25");
    }
}
