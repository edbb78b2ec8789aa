//! A change to the running configuration, checked exactly as the file is
//! checked at start. Pure: no threads, no files.
//!
//! The owner asks for new values by their dotted keys (`capture.level`).
//! [`propose`] writes them into the text of the file Tower loaded (see
//! `edit`: the owner's comments stay) and loads that text with
//! [`load_text`], the function that reads the file at start, under the
//! same `TOWER_*` variables and flags. So a value from the page passes
//! through exactly the checks a value in the file passes through, and the
//! text that passed is the text that will be saved. A key that fails is
//! named with what it accepts, and nothing is changed.
//!
//! [`taker`] says which part of Tower takes a changed key while running,
//! or that it needs a restart; the service hands each part its new
//! settings in its own type (see `service`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Value;

use super::edit::{self, Edit};
use super::load::{parse_text, schema, suggest};
use super::{Config, ConfigError, Loaded, Origin, is_secret, load_text};

/// Why each refused key was refused, by key.
pub type FieldErrors = BTreeMap<String, String>;

/// A new value as it arrived: text from a form, or JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(String),
    Json(serde_json::Value),
}

/// A change that passed: the configuration as it will load, and the text
/// to save.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub loaded: Loaded,
    /// Keys whose value changes (an unchanged value asked for again is
    /// not listed).
    pub changed: Vec<String>,
}

/// The part of Tower that takes a changed key while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Taker {
    /// The capture thread: level and silence report, on the open device.
    Capture,
    /// The capture source itself: reopened on the new device or socket.
    Input,
    /// The pump: grace period and fallback.
    Pump,
    /// The encoder: relaunched at once with the new command, through the
    /// restart path (listeners hear silence for ffmpeg's start).
    Encoder,
    /// The station's texts: new listeners' headers, ICY titles, the pages.
    Station,
    /// The HTTP front end: names it answers to, CORS, the burst.
    Http,
    /// Program detection: new thresholds, the floor kept.
    Program,
    /// The status LEDs and the amplifier line: restarted on the new pins.
    Leds,
    /// The MQTT link: restarted with the new broker or settings.
    Mqtt,
    /// The Icecast outputs: restarted with the new targets.
    Icecast,
    /// The admin password (used from the next login).
    Admin,
    /// Read only at start: saved, and in effect after a restart.
    Restart,
}

/// Which part takes `key` (see [`Taker`]).
pub fn taker(key: &str) -> Taker {
    match key {
        "capture.level" | "pcm.silence_warn_sec" => Taker::Capture,
        "input" | "device" | "socket.mode" | "socket.group" => Taker::Input,
        "pcm.grace_sec" | "fallback.wav_path" | "fallback.tone" => Taker::Pump,
        "http.burst_ms" | "http.hosts" | "http.cors_origins" => Taker::Http,
        "encoder.bitrate_kbps" | "encoder.args" => Taker::Encoder,
        "icecast" => Taker::Icecast,
        k if k.starts_with("station.") => Taker::Station,
        k if k.starts_with("program.") => Taker::Program,
        k if k.starts_with("gpio.") => Taker::Leds,
        k if k.starts_with("mqtt.") => Taker::Mqtt,
        k if k.starts_with("admin.") => Taker::Admin,
        _ => Taker::Restart,
    }
}

/// Where a change's errors say the value came from when Tower runs
/// without a file.
const NO_FILE: &str = "(the settings page)";

/// `current` with `asked` applied, checked as the file is; or, for every
/// key that cannot be taken, why.
pub fn propose(current: &Loaded, asked: &[(String, Incoming)]) -> Result<Proposal, FieldErrors> {
    let defaults: BTreeMap<String, Value> = schema().into_iter().collect();
    let known: Vec<String> = defaults.keys().cloned().chain(["icecast".to_string()]).collect();
    let mut errors = FieldErrors::new();
    let mut edits = Vec::new();
    for (key, incoming) in asked {
        match value_for(current, &defaults, &known, key, incoming) {
            Ok(value) => edits.push(Edit::Set(key.clone(), value)),
            Err(why) => {
                errors.insert(key.clone(), why);
            }
        }
    }
    // Each key alone first, so every bad one is named; then all together.
    for edit in &edits {
        if let Err(e) = with_edits(current, std::slice::from_ref(edit)) {
            let Edit::Set(key, _) = edit else { continue };
            errors.insert(key.clone(), message(&e));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let loaded = with_edits(current, &edits).map_err(|e| {
        let key = key_of(&e).unwrap_or("(settings)").to_string();
        FieldErrors::from([(key, message(&e))])
    })?;
    let changed = diff(&current.config, &loaded.config);
    Ok(Proposal { loaded, changed })
}

/// `current`'s file with `edits` applied, loaded as at start.
pub fn with_edits(current: &Loaded, edits: &[Edit]) -> Result<Loaded, ConfigError> {
    let path = current.file.clone().unwrap_or_else(|| PathBuf::from(NO_FILE));
    let text = edit::apply(&current.text, edits).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut loaded = load_text(Some((Path::new(&path), &text)), &current.env, &current.flags)?;
    loaded.file = current.file.clone();
    Ok(loaded)
}

/// The TOML value for `key` from what arrived, typed by the key's default.
fn value_for(
    current: &Loaded,
    defaults: &BTreeMap<String, Value>,
    known: &[String],
    key: &str,
    incoming: &Incoming,
) -> Result<Value, String> {
    if key == "icecast" {
        return icecast_list(current, incoming);
    }
    if key.starts_with("admin.") {
        return Err("the admin password is changed with POST /api/password".into());
    }
    let Some(default) = defaults.get(key) else {
        return Err(format!("unknown setting{}", suggest(key, known)));
    };
    if let Some(origin @ (Origin::Env(_) | Origin::Flag(_))) = current.origins.get(key) {
        return Err(format!("set by {origin}, which overrides the file; change it there"));
    }
    let origin = Origin::File(PathBuf::from(NO_FILE));
    let text = |t: &str| parse_text(key, t, default, &origin).map_err(|e| message(&e));
    // The page shows secrets blank and cannot send them back: a blank one
    // keeps the value saved (as an Icecast target's password does).
    let blank = matches!(incoming, Incoming::Text(t) if t.is_empty())
        || matches!(incoming, Incoming::Json(serde_json::Value::String(t)) if t.is_empty());
    if blank && is_secret(key) {
        let kept = flatten(&current.config).remove(key);
        return kept.ok_or_else(|| format!("unknown setting{}", suggest(key, known)));
    }
    match incoming {
        Incoming::Text(t) => text(t),
        Incoming::Json(serde_json::Value::String(s)) => text(s),
        Incoming::Json(json) => json_to_toml(json).ok_or_else(|| format!("expected {}", kind(default))),
    }
}

/// The new `[[icecast]]` list. A target whose password arrives empty
/// keeps the password of the target with the same URL (the page never
/// shows passwords, so it cannot send them back).
fn icecast_list(current: &Loaded, incoming: &Incoming) -> Result<Value, String> {
    let json = match incoming {
        Incoming::Json(j) => j.clone(),
        Incoming::Text(t) => serde_json::from_str(t).map_err(|_| "a JSON list of targets".to_string())?,
    };
    let Some(items) = json.as_array() else {
        return Err("a list of targets, each with url and password".into());
    };
    let mut list = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(Value::Table(mut table)) = json_to_toml(item) else {
            return Err(format!("target {i} must be an object with url and password"));
        };
        let url = table.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
        let blank = table.get("password").and_then(Value::as_str).is_none_or(str::is_empty);
        if blank {
            let Some(old) = current.config.icecast.iter().find(|t| t.url == url) else {
                return Err(format!("target {i} ({url}) is new: it needs its password"));
            };
            table.insert("password".into(), Value::String(old.password.clone()));
        }
        list.push(Value::Table(table));
    }
    Ok(Value::Array(list))
}

fn json_to_toml(json: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match json {
        J::Null => return None,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64()?),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(json_to_toml).collect::<Option<_>>()?),
        J::Object(map) => Value::Table(
            map.iter()
                .map(|(k, v)| json_to_toml(v).map(|v| (k.clone(), v)))
                .collect::<Option<_>>()?,
        ),
    })
}

fn kind(default: &Value) -> &'static str {
    match default {
        Value::String(_) => "text",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Array(_) => "a list",
        _ => "a value",
    }
}

/// The key an error is about.
fn key_of(e: &ConfigError) -> Option<&str> {
    match e {
        ConfigError::UnknownKey { key, .. } | ConfigError::WrongType { key, .. } | ConfigError::Invalid { key, .. } => {
            Some(key)
        }
        _ => None,
    }
}

/// An error in words for the page, beside its field: what is accepted,
/// never the secret that was refused.
pub fn message(e: &ConfigError) -> String {
    match e {
        ConfigError::WrongType { expected, .. } => format!("expected {expected}"),
        ConfigError::Invalid {
            key, value, accepted, ..
        } if value.is_empty() || is_secret(key) => {
            format!("accepted: {accepted}")
        }
        ConfigError::Invalid { value, accepted, .. } => format!("{value} is not accepted; accepted: {accepted}"),
        other => other.to_string(),
    }
}

/// Every key's value, icecast as one list: what [`diff`] compares.
pub fn flatten(config: &Config) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::Table::try_from(config) {
        for (k, v) in table {
            match v {
                Value::Table(section) => {
                    for (sk, sv) in section {
                        out.insert(format!("{k}.{sk}"), sv);
                    }
                }
                other => {
                    out.insert(k, other);
                }
            }
        }
    }
    out.entry("icecast".into()).or_insert_with(|| Value::Array(Vec::new()));
    out
}

/// The keys whose values differ.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys
}

/// What Tower runs once a change's live part is applied: `proposed`, with
/// every key that only a restart changes ([`Taker::Restart`]) kept at its
/// value in `running`. The stages are handed this, so no value that waits
/// for a restart reaches one early (a new bitrate must not relaunch ffmpeg
/// at a pending `mp3.sample_rate`, or with a pending `ffmpeg`).
pub fn live_part(proposed: &Config, running: &Config) -> Config {
    let (Ok(mut table), Ok(old)) = (toml::Table::try_from(proposed), toml::Table::try_from(running)) else {
        return running.clone();
    };
    for key in diff(running, proposed) {
        if taker(&key) != Taker::Restart {
            continue;
        }
        let (section, name) = match key.split_once('.') {
            Some((s, n)) => (s, Some(n)),
            None => (key.as_str(), None),
        };
        let kept = match name {
            Some(n) => old.get(section).and_then(|t| t.get(n)),
            None => old.get(section),
        }
        .cloned();
        let (place, n) = match name {
            Some(n) if kept.is_some() => (
                table
                    .entry(section)
                    .or_insert_with(|| Value::Table(toml::Table::new()))
                    .as_table_mut(),
                n,
            ),
            Some(n) => (table.get_mut(section).and_then(Value::as_table_mut), n),
            None => (Some(&mut table), section),
        };
        if let Some(t) = place {
            match kept {
                Some(v) => t.insert(n.to_string(), v),
                None => t.remove(n),
            };
        }
    }
    // Both were whole configurations: the mix is one too.
    Value::Table(table).try_into().unwrap_or_else(|_| running.clone())
}

/// A value as the journal and the history show it: secrets as `***`.
pub fn shown(key: &str, value: Option<&Value>) -> String {
    match value {
        None => "(unset)".into(),
        Some(v) if key == "icecast" => redact_icecast(v),
        Some(_) if is_secret(key) => "***".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
    }
}

/// Icecast targets as `[url, …]`: the passwords never shown.
fn redact_icecast(value: &Value) -> String {
    let urls: Vec<String> = value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let url = t.get("url").and_then(Value::as_str).unwrap_or("?");
                    format!("{} (password ***)", super::redact_url(url))
                })
                .collect()
        })
        .unwrap_or_default();
    format!("[{}]", urls.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load_text};

    fn loaded(text: &str, env: &[(&str, &str)]) -> Loaded {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_text(
            Some((Path::new("/etc/tower/tower.toml"), text)),
            &env,
            &Overrides::default(),
        )
        .expect("valid")
    }

    fn ask(pairs: &[(&str, serde_json::Value)]) -> Vec<(String, Incoming)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Incoming::Json(v.clone())))
            .collect()
    }

    #[test]
    fn a_change_is_checked_as_the_file_is_and_keeps_the_owners_comments() {
        let cur = loaded("# mine\n[capture]\nlevel = \"\" # as found\n", &[]);
        let p = propose(
            &cur,
            &ask(&[
                ("capture.level", serde_json::json!("-6dB")),
                ("encoder.bitrate_kbps", serde_json::json!("192")),
                ("station.name", serde_json::json!("Kitchen")),
                ("station.genre", serde_json::json!("Various")),
            ]),
        )
        .expect("valid");
        assert_eq!(p.loaded.config.capture.level, "-6dB");
        assert_eq!(p.loaded.config.encoder.bitrate_kbps, 192);
        assert_eq!(p.changed, ["capture.level", "encoder.bitrate_kbps", "station.name"]);
        assert!(p.loaded.text.starts_with("# mine\n"), "{}", p.loaded.text);
        assert!(
            p.loaded.text.contains("level = \"-6dB\" # as found"),
            "{}",
            p.loaded.text
        );
    }

    #[test]
    fn every_bad_key_is_named_and_nothing_is_proposed() {
        let cur = loaded("", &[("TOWER_DEVICE", "hw:CARD=X")]);
        let errors = propose(
            &cur,
            &ask(&[
                ("capture.level", serde_json::json!("loud")),
                ("encoder.bitrate_kbps", serde_json::json!(100)),
                ("http.burst_ms", serde_json::json!(true)),
                ("station.nmae", serde_json::json!("x")),
                ("device", serde_json::json!("auto")),
                ("admin.password", serde_json::json!("whatever1")),
                ("station.name", serde_json::json!("fine")),
            ]),
        )
        .expect_err("refused");
        let keys: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "admin.password",
                "capture.level",
                "device",
                "encoder.bitrate_kbps",
                "http.burst_ms",
                "station.nmae"
            ]
        );
        assert!(errors["capture.level"].contains("dB"), "{errors:?}");
        assert!(errors["encoder.bitrate_kbps"].contains("one of"), "{errors:?}");
        assert!(errors["http.burst_ms"].contains("whole number"), "{errors:?}");
        assert!(errors["station.nmae"].contains("station.name"), "{errors:?}");
        assert!(errors["device"].contains("TOWER_DEVICE"), "{errors:?}");
    }

    #[test]
    fn icecast_targets_keep_their_password_when_the_page_sends_none() {
        let cur = loaded(
            "[[icecast]]\nurl = \"http://a:8000/live\"\npassword = \"s3cret\"\n",
            &[],
        );
        let p = propose(
            &cur,
            &ask(&[(
                "icecast",
                serde_json::json!([{"url": "http://a:8000/live", "password": "", "public": true}]),
            )]),
        )
        .expect("valid");
        assert_eq!(p.loaded.config.icecast[0].password, "s3cret");
        assert!(p.loaded.config.icecast[0].public);
        assert_eq!(p.changed, ["icecast"]);
        let shown = shown("icecast", flatten(&p.loaded.config).get("icecast"));
        assert!(
            !shown.contains("s3cret") && shown.contains("http://a:8000/live"),
            "{shown}"
        );
        let e = propose(
            &cur,
            &ask(&[("icecast", serde_json::json!([{"url": "http://b:8000/x"}]))]),
        )
        .expect_err("new target without password");
        assert!(e["icecast"].contains("password"), "{e:?}");
    }

    #[test]
    fn a_blank_broker_password_keeps_the_saved_one_and_a_new_one_replaces_it() {
        let cur = loaded(
            "[mqtt]\nurl = \"mqtt://ha.lan\"\nuser = \"tower\"\npassword = \"s3cret\"\n",
            &[],
        );
        let p = propose(
            &cur,
            &ask(&[
                ("mqtt.password", serde_json::json!("")),
                ("mqtt.url", serde_json::json!("mqtt://ha.lan:1884")),
            ]),
        )
        .expect("valid");
        assert_eq!(p.loaded.config.mqtt.password, "s3cret");
        assert_eq!(p.changed, ["mqtt.url"]);
        let p = propose(&cur, &ask(&[("mqtt.password", serde_json::json!("n3w"))])).expect("valid");
        assert_eq!(p.loaded.config.mqtt.password, "n3w");
        assert_eq!(
            shown("mqtt.password", flatten(&p.loaded.config).get("mqtt.password")),
            "***"
        );
        let e = propose(&cur, &ask(&[("mqtt.url", serde_json::json!("mqtts://ha.lan"))])).expect_err("tls");
        assert!(e["mqtt.url"].contains("TLS"), "{e:?}");
    }

    #[test]
    fn keys_are_taken_by_their_stage_or_need_a_restart() {
        assert_eq!(taker("capture.level"), Taker::Capture);
        assert_eq!(taker("device"), Taker::Input);
        assert_eq!(taker("fallback.wav_path"), Taker::Pump);
        assert_eq!(taker("station.title"), Taker::Station);
        assert_eq!(taker("gpio.encoder_pin"), Taker::Leds);
        assert_eq!(taker("gpio.amp_pin"), Taker::Leds);
        assert_eq!(taker("program.hold_s"), Taker::Program);
        assert_eq!(taker("mqtt.url"), Taker::Mqtt);
        assert_eq!(taker("listen"), Taker::Restart);
        assert_eq!(taker("pcm.buffer_size"), Taker::Restart);
    }
}
