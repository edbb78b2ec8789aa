//! `/metrics` renders from the same typed status document as `/status`:
//! on a running Tower, every sample equals its `/status` value (counters
//! that move between the two requests lie between a `/status` taken just
//! before and one taken just after).

mod common;

use std::time::Duration;

use serde_json::Value;

use common::{panic_worker, wait_for};

/// One sample line: name, labels, value.
fn parse(line: &str) -> (String, Vec<(String, String)>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().expect("a number"),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').expect("closing brace");
            let mut labels = Vec::new();
            let mut rest = inner;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"").expect("label");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = after.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                value.push(if e == 'n' { '\n' } else { e });
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels.push((k.to_string(), value));
                rest = after[end..].trim_start_matches(',');
            }
            (name.to_string(), labels)
        }
    };
    (name, labels, value)
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Null => 0.0,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}

/// What `/status` says a sample should be, from one document.
fn expected(s: &Value, name: &str, labels: &[(String, String)]) -> Option<f64> {
    let label = |k: &str| {
        labels
            .iter()
            .find(|(l, _)| l == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} has no label {k}"))
    };
    let channel = |c: &str| usize::from(c == "right");
    let is = |v: &Value, want: &str| f64::from(u8::from(v.as_str() == Some(want)));
    let output = |target: &str| -> Value {
        s["outputs"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["target"] == target).cloned())
            .unwrap_or_else(|| panic!("no output {target} in /status"))
    };
    Some(match name {
        "tower_build_info" => f64::from(u8::from(s["version"] == label("version"))),
        "tower_uptime_seconds" => num(&s["uptime_s"]),
        "tower_admin_password_set" => num(&s["admin"]["password_set"]),
        "tower_admin_wrong_passwords_total" => num(&s["admin"]["wrong_passwords"]),
        "tower_admin_attempts_throttled_total" => num(&s["admin"]["attempts_throttled"]),
        "tower_admin_desk_busy_total" => num(&s["admin"]["desk_busy"]),
        "tower_admin_settings_changed_total" => num(&s["admin"]["settings_changed"]),
        "tower_encoder_state" => is(&s["encoder"]["state"], label("state")),
        "tower_encoder_restarts_total" => num(&s["encoder"]["restarts"]),
        "tower_encoder_failures_total" => num(&s["encoder"]["failures"][label("cause")]),
        "tower_input_state" => is(&s["input"]["state"], label("state")),
        "tower_input_level_peak_dbfs" => num(&s["input"]["level"]["peak_dbfs"][channel(label("channel"))]),
        "tower_input_level_rms_dbfs" => num(&s["input"]["level"]["rms_dbfs"][channel(label("channel"))]),
        "tower_input_silent_seconds" => num(&s["input"]["level"]["silent_for_s"]),
        "tower_input_device_info" => {
            let d = &s["input"]["device"];
            let same = d["name"] == label("device")
                && d["auto"].as_bool().map(|b| b.to_string()).as_deref() == Some(label("auto"))
                && d["reason"] == label("reason");
            f64::from(u8::from(same))
        }
        "tower_input_software_gain_db" => num(&s["input"]["gain"]["software_db"]),
        "tower_input_clipped_samples_total" => num(&s["input"]["clipped_samples"]),
        "tower_input_level_hint" => f64::from(u8::from(!s["input"]["level_hint"].is_null())),
        "tower_worker_restarts_total" => num(&s["workers"][label("worker")]["restarts"]),
        "tower_capture_errors_total" => num(&s["input"]["capture"]["errors"][label("class")]),
        "tower_capture_open_failures_total" => num(&s["input"]["capture"]["open_failures"]),
        "tower_pcm_frames_in_total" => num(&s["counters"]["pcm_frames_in"]),
        "tower_mp3_frames_out_total" => num(&s["counters"]["mp3_frames_out"]),
        "tower_silence_frames_out_total" => num(&s["counters"]["silence_frames_out"]),
        "tower_drops_total" => num(&s["counters"]["drops"][label("cause")]),
        "tower_pcm_queue_fill" => num(&s["pcm_buffer"]["fill"]),
        "tower_listeners" => num(&s["listeners"]["current"]),
        "tower_listeners_max" => num(&s["listeners"]["max"]),
        "tower_listeners_connected_total" => num(&s["listeners"]["connected_total"]),
        "tower_listeners_slow_dropped_total" => num(&s["listeners"]["slow_dropped"]),
        "tower_listeners_rejected_total" => num(&s["listeners"]["rejected_full"]),
        "tower_listeners_rejected_per_address_total" => num(&s["listeners"]["rejected_per_address"]),
        "tower_output_bytes_sent_total" => num(&output(label("target"))["bytes_sent"]),
        "tower_output_reconnects_total" => num(&output(label("target"))["reconnects"]),
        "tower_output_refusals_total" => num(&output(label("target"))["refusals"]),
        "tower_output_dropped_total" => num(&output(label("target"))["dropped_full"]),
        "tower_output_streaming" => is(&output(label("target"))["state"], "streaming"),
        "tower_http_requests_total" => num(&s["http"]["requests"]),
        "tower_http_bad_requests_total" => num(&s["http"]["bad_requests"]),
        "tower_http_pending_connections" => num(&s["http"]["pending"]),
        "tower_http_connections_cut_total" => {
            let field = match label("reason") {
                "header_timeout" => "cut_header_timeout",
                "per_address" => "cut_per_address",
                "total" => "cut_total",
                "no_descriptors" => "shed_no_descriptors",
                other => panic!("unknown cut reason {other}"),
            };
            num(&s["http"][field])
        }
        "tower_program_playing" => is(&s["program"]["state"], "program"),
        "tower_program_changes_total" => num(&s["program"]["changes"]),
        "tower_program_margin_db" => num(&s["program"]["margin_db"]),
        "tower_program_floor_dbfs" => num(&s["program"]["floor_dbfs"]),
        "tower_amp_on" => num(&s["amp"]["on"]),
        "tower_mqtt_state" => is(&s["mqtt"]["state"], label("state")),
        "tower_mqtt_connects_total" => num(&s["mqtt"]["connects"]),
        "tower_mqtt_published_total" => num(&s["mqtt"]["published"]),
        "tower_mqtt_dropped_total" => num(&s["mqtt"]["dropped"]),
        "tower_pump_ticks_total" => num(&s["pump"]["ticks"]),
        "tower_pump_tick_lateness_seconds_count" => num(&s["pump"]["tick_error"]["count"]),
        // The histogram's buckets and sum have no /status counterpart.
        "tower_pump_tick_lateness_seconds_bucket" | "tower_pump_tick_lateness_seconds_sum" => return None,
        other => panic!("metric {other} has no /status counterpart in this test: add it"),
    })
}

#[test]
fn every_metric_equals_its_status_value_on_a_running_tower() {
    let dir = tempfile::tempdir().expect("tmp");
    let tower = common::tower_with_unreachable_icecast(dir.path());
    let l = common::Listener::connect(tower.addr);
    assert!(l.wait_frames(10, Duration::from_secs(10)));
    // A worker that was restarted, so the per-worker family has a sample.
    assert_eq!(panic_worker(tower.addr, "leds").status, 200);
    assert!(wait_for(
        Duration::from_secs(3),
        || tower.status()["workers"]["leds"]["restarts"] == 1
    ));

    let before = tower.status();
    let text = tower.get("/metrics").body_text();
    let after = tower.status();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, labels, value) = parse(line);
        let (Some(a), Some(b)) = (expected(&before, &name, &labels), expected(&after, &name, &labels)) else {
            continue;
        };
        let (lo, hi) = (a.min(b), a.max(b));
        let tolerance = 1e-6 * hi.abs().max(1.0);
        assert!(
            value >= lo - tolerance && value <= hi + tolerance,
            "{line}: /status says {a} before and {b} after"
        );
        checked += 1;
    }
    eprintln!("{checked} metric samples checked against /status");
    assert!(checked >= 60, "only {checked} samples");
    for must in [
        "tower_worker_restarts_total{worker=\"leds\"} 1",
        "tower_encoder_state{state=\"RUNNING\"} 1",
    ] {
        assert!(text.lines().any(|l| l == must), "missing {must:?}\n{text}");
    }
    // Every sample belongs to the family declared just before it.
    let mut declared = String::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            declared = rest.split(' ').next().unwrap_or("").to_string();
        } else if !l.starts_with('#') {
            assert!(l.starts_with(&declared), "{l} outside {declared}");
        }
    }
}
