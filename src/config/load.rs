//! Loading: the file, then `TOWER_*` variables, then flags, each value
//! checked against its default's type and range, with errors that name the
//! key, the value, where it came from and what is accepted [T4].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::*;

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(v) => write!(f, "command-line flag {v}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// `message` never quotes the line: it may hold a secret.
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown configuration key `{key}` in {origin}{hint}")]
    UnknownKey { key: String, origin: Origin, hint: String },
    #[error("environment variable {name} is not valid UTF-8")]
    NotUtf8 { name: String },
    #[error("`{key}` = {value} (from {origin}) has the wrong type: expected {expected}")]
    WrongType {
        key: String,
        value: String,
        origin: Origin,
        expected: &'static str,
    },
    #[error("`{key}` = {value} (from {origin}) is invalid: accepted {accepted}")]
    Invalid {
        key: String,
        value: String,
        origin: Origin,
        accepted: String,
    },
}

/// Values given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub device: Option<String>,
    pub ffmpeg: Option<String>,
}

/// The configuration plus where each non-default value came from, and
/// what it was made from (so a change can be checked the same way).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origins: BTreeMap<String, Origin>,
    pub file: Option<PathBuf>,
    /// The file's text as read ("" without a file).
    pub text: String,
    /// The `TOWER_*` variables and the flags that were applied over it.
    pub env: Vec<(String, String)>,
    pub flags: Overrides,
    /// What was ignored, to log once (unknown `TOWER_*` variables).
    pub warnings: Vec<String>,
}

/// Keys whose values are secrets: never shown in an error, a log line,
/// `/status`, `--print-config` or the owner's page.
pub fn is_secret(key: &str) -> bool {
    matches!(key, "admin.password" | "admin.password_hash" | "mqtt.password")
        || (key.starts_with("icecast[") && key.ends_with("].password"))
}

/// How an error shows the value of `key`: as given, or [`HIDDEN`].
fn shown(key: &str, value: impl fmt::Display) -> String {
    if is_secret(key) {
        HIDDEN.to_string()
    } else {
        value.to_string()
    }
}

/// A URL with any `user:password@` replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("{HIDDEN}@{}", &rest[at + 1..]),
        Some(at) => format!("{scheme}://{HIDDEN}@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A TOML syntax error in words, with its line and column but never the
/// line itself (`password = hunter2` without quotes is a syntax error).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

pub(super) fn env_name(key: &str) -> String {
    format!("TOWER_{}", key.replace('.', "_").to_uppercase())
}

/// Every key path with its default value, in file order.
pub(super) fn schema() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Ok(table) = Table::try_from(Config::default()) {
        for (k, v) in table {
            match v {
                Value::Table(section) => {
                    for (sk, sv) in section {
                        out.push((format!("{k}.{sk}"), sv));
                    }
                }
                // A list of tables, from the file only (see `load`).
                _ if k == "icecast" => {}
                other => out.push((k, other)),
            }
        }
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a section",
    }
}

/// Closest known key, for "did you mean".
pub(super) fn suggest(unknown: &str, known: &[String]) -> String {
    let distance = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    };
    known
        .iter()
        .map(|k| (distance(unknown, k), k))
        .filter(|(d, k)| *d <= 3 || k.starts_with(unknown) || unknown.starts_with(k.as_str()))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Checks `value` against the default's type; integers are accepted where
/// numbers are expected.
fn coerce(key: &str, value: Value, default: &Value, origin: &Origin) -> Result<Value, ConfigError> {
    let wrong = |value: &Value| ConfigError::WrongType {
        key: key.to_string(),
        value: shown(key, value),
        origin: origin.clone(),
        expected: type_name(default),
    };
    match (default, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        // Every whole-number key counts something: none can be negative.
        (Value::Integer(_), Value::Integer(i)) if i < 0 => Err(ConfigError::Invalid {
            key: key.to_string(),
            value: shown(key, i),
            origin: origin.clone(),
            accepted: "a whole number, 0 or more".into(),
        }),
        (Value::Array(d), Value::Array(items)) => {
            let element = d.first().cloned().unwrap_or_else(|| Value::String(String::new()));
            let checked: Result<Vec<Value>, ()> = items
                .iter()
                .map(|item| {
                    if std::mem::discriminant(item) == std::mem::discriminant(&element) {
                        Ok(item.clone())
                    } else {
                        Err(())
                    }
                })
                .collect();
            checked.map(Value::Array).map_err(|()| wrong(&Value::Array(items)))
        }
        (d, v) if std::mem::discriminant(d) == std::mem::discriminant(&v) => Ok(v),
        (_, v) => Err(wrong(&v)),
    }
}

/// Parses an environment or flag string according to the default's type.
pub(super) fn parse_text(key: &str, text: &str, default: &Value, origin: &Origin) -> Result<Value, ConfigError> {
    let wrong = || ConfigError::WrongType {
        key: key.to_string(),
        value: shown(key, format_args!("{text:?}")),
        origin: origin.clone(),
        expected: type_name(default),
    };
    let t = text.trim();
    match default {
        Value::String(_) => Ok(Value::String(text.to_string())),
        Value::Integer(_) => {
            let v = t.parse::<i64>().map(Value::Integer).map_err(|_| wrong())?;
            coerce(key, v, default, origin)
        }
        Value::Float(_) => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(wrong),
        Value::Boolean(_) => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(wrong()),
        },
        Value::Array(_) => {
            // A TOML list (`[100, 500]`, `["-b:a", "192k"]`) or words.
            let parsed = if t.starts_with('[') {
                toml::from_str::<Table>(&format!("v = {t}"))
                    .ok()
                    .and_then(|mut tb| tb.remove("v"))
                    .ok_or_else(wrong)?
            } else {
                let element = match default {
                    Value::Array(d) => d.first().cloned(),
                    _ => None,
                };
                let words: Result<Vec<Value>, ConfigError> = t
                    .split_whitespace()
                    .map(|w| match &element {
                        Some(Value::Integer(_)) => w.parse::<i64>().map(Value::Integer).map_err(|_| wrong()),
                        _ => Ok(Value::String(w.to_string())),
                    })
                    .collect();
                Value::Array(words?)
            };
            coerce(key, parsed, default, origin)
        }
        _ => Err(wrong()),
    }
}

fn set(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = entry {
                t.insert(rest.to_string(), value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

/// The file to read when none is named: [`DEFAULT_PATH`] if it exists.
pub fn default_file() -> Option<PathBuf> {
    Path::new(DEFAULT_PATH).exists().then(|| PathBuf::from(DEFAULT_PATH))
}

/// A target's keys with their defaults (a password and a URL have none).
fn icecast_schema() -> Table {
    let mut t = Table::new();
    for (k, v) in [
        ("url", Value::String(String::new())),
        ("user", Value::String("source".into())),
        ("password", Value::String(String::new())),
        ("name", Value::String(String::new())),
        ("description", Value::String(String::new())),
        ("genre", Value::String(String::new())),
        ("public", Value::Boolean(false)),
        ("method", Value::String("put".into())),
        ("only_while_program", Value::Boolean(false)),
    ] {
        t.insert(k.to_string(), v);
    }
    t
}

/// The `[[icecast]]` tables of the file at `file`, each key checked like
/// every other (its value never echoed when it is the password).
fn icecast_targets(value: Value, file: &Path) -> Result<Vec<IcecastTarget>, ConfigError> {
    let origin = Origin::File(file.to_path_buf());
    let Value::Array(items) = value else {
        return Err(ConfigError::Invalid {
            key: "icecast".into(),
            value: type_name(&value).into(),
            origin,
            accepted: "[[icecast]] tables with url and password".into(),
        });
    };
    let schema = icecast_schema();
    let known: Vec<String> = schema.keys().cloned().collect();
    let mut targets = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let Value::Table(table) = item else {
            return Err(ConfigError::Invalid {
                key: format!("icecast[{i}]"),
                value: type_name(&item).into(),
                origin,
                accepted: "a table with url and password".into(),
            });
        };
        let mut checked = Table::new();
        for (k, v) in table {
            let key = format!("icecast[{i}].{k}");
            let Some(default) = schema.get(&k) else {
                return Err(ConfigError::UnknownKey {
                    hint: suggest(&k, &known),
                    key,
                    origin,
                });
            };
            checked.insert(k, coerce(&key, v, default, &origin)?);
        }
        for required in ["url", "password"] {
            if !checked.contains_key(required) {
                return Err(ConfigError::Invalid {
                    key: format!("icecast[{i}].{required}"),
                    value: "(missing)".into(),
                    origin,
                    accepted: "every [[icecast]] table needs url and password".into(),
                });
            }
        }
        // Every key and type was checked above.
        let target = IcecastTarget::deserialize(Value::Table(checked)).map_err(|e| ConfigError::Invalid {
            key: format!("icecast[{i}]"),
            value: String::new(),
            origin: origin.clone(),
            accepted: e.message().to_string(),
        })?;
        targets.push(target);
    }
    Ok(targets)
}

/// Loads the configuration: the file at `path` (if any), then `env`
/// (`TOWER_*` pairs), then `flags`.
pub fn load(path: Option<&Path>, env: &[(String, String)], flags: &Overrides) -> Result<Loaded, ConfigError> {
    let file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            Some((p, text))
        }
        None => None,
    };
    load_text(file.as_ref().map(|(p, t)| (*p, t.as_str())), env, flags)
}

/// Like [`load`], with the file's text already read (`file` is its path
/// and text). Never panics, whatever the text (fuzzed:
/// `fuzz/fuzz_targets/config.rs`).
pub fn load_text(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
    flags: &Overrides,
) -> Result<Loaded, ConfigError> {
    let schema = schema();
    let defaults: BTreeMap<&str, &Value> = schema.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let known: Vec<String> = schema.iter().map(|(k, _)| k.clone()).collect();
    let mut table = Table::new();
    let mut origins = BTreeMap::new();
    let mut icecast = Vec::new();

    let text = file.map(|(_, t)| t);
    let file = file.map(|(p, _)| p.to_path_buf());
    if let (Some(file), Some(text)) = (&file, text) {
        let parsed: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: file.clone(),
            message: syntax_message(text, &e),
        })?;
        let origin = Origin::File(file.clone());
        for (k, v) in parsed {
            if k == "icecast" {
                icecast = icecast_targets(v, file)?;
                origins.insert(k, origin.clone());
                continue;
            }
            let entries: Vec<(String, Value)> = match v {
                Value::Table(section) if defaults.keys().any(|d| d.starts_with(&format!("{k}."))) => {
                    section.into_iter().map(|(sk, sv)| (format!("{k}.{sk}"), sv)).collect()
                }
                other => vec![(k, other)],
            };
            for (key, value) in entries {
                let Some(default) = defaults.get(key.as_str()) else {
                    return Err(ConfigError::UnknownKey {
                        hint: suggest(&key, &known),
                        key,
                        origin,
                    });
                };
                let value = coerce(&key, value, default, &origin)?;
                set(&mut table, &key, value);
                origins.insert(key, origin.clone());
            }
        }
    }

    let known_vars: BTreeMap<String, &str> = known.iter().map(|k| (env_name(k), k.as_str())).collect();
    let mut warnings = Vec::new();
    let mut applied_env = Vec::new();
    // The historic name first, so that the new name wins whatever the
    // order of the environment.
    let historic = env.iter().filter(|(n, _)| n == HISTORIC_WAV_VAR);
    let others = env.iter().filter(|(n, _)| n != HISTORIC_WAV_VAR);
    for (name, text) in historic.chain(others) {
        if !name.starts_with("TOWER_") || NON_KEY_VARS.contains(&name.as_str()) {
            continue;
        }
        let key = if name == HISTORIC_WAV_VAR {
            "fallback.wav_path"
        } else if let Some(k) = known_vars.get(name) {
            k
        } else {
            // Other programs use the prefix too (AWX's TOWER_HOST).
            let names: Vec<String> = known_vars.keys().cloned().collect();
            warnings.push(format!(
                "environment variable {name} is not one of Tower's settings; ignored{}",
                suggest(name, &names)
            ));
            continue;
        };
        if let Some(Origin::Env(first)) = origins.get(key)
            && first == HISTORIC_WAV_VAR
        {
            warnings.push(format!("{name} is set, so {HISTORIC_WAV_VAR} is ignored"));
        }
        let origin = Origin::Env(name.clone());
        let value = parse_text(key, text, defaults[key], &origin)?;
        set(&mut table, key, value);
        origins.insert(key.to_string(), origin);
        applied_env.push((name.clone(), text.clone()));
    }

    for (key, flag, value) in [
        ("listen", "--listen", &flags.listen),
        ("device", "--device", &flags.device),
        ("ffmpeg", "--ffmpeg", &flags.ffmpeg),
    ] {
        if let Some(v) = value {
            set(&mut table, key, Value::String(v.clone()));
            origins.insert(key.to_string(), Origin::Flag(flag.to_string()));
        }
    }

    // Types were checked above, so this only fails on a bug in this module.
    let mut config = Config::deserialize(Value::Table(table)).map_err(|e| ConfigError::Invalid {
        key: "(configuration)".into(),
        value: String::new(),
        origin: Origin::Default,
        accepted: e.to_string(),
    })?;
    config.icecast = icecast;
    let loaded = Loaded {
        config,
        origins,
        file,
        text: text.unwrap_or_default().to_string(),
        env: applied_env,
        flags: flags.clone(),
        warnings,
    };
    loaded.validate()?;
    Ok(loaded)
}

impl Loaded {
    fn origin(&self, key: &str) -> Origin {
        let key = if key.starts_with("icecast[") { "icecast" } else { key };
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    fn invalid(&self, key: &str, value: impl fmt::Display, accepted: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            value: shown(key, value),
            origin: self.origin(key),
            accepted: accepted.into(),
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(
        &self,
        key: &str,
        v: T,
        lo: T,
        hi: T,
        unit: &str,
    ) -> Result<(), ConfigError> {
        // `contains` is false for NaN (which TOML allows), so it is refused.
        if !(lo..=hi).contains(&v) {
            return Err(self.invalid(key, v, format!("{lo} to {hi}{unit}")));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.listen.parse::<SocketAddr>().is_err() {
            return Err(self.invalid(
                "listen",
                format!("{:?}", c.listen),
                "an address and port such as 0.0.0.0:8000 or [::]:8000",
            ));
        }
        if c.device.trim().is_empty() {
            return Err(self.invalid(
                "device",
                "\"\"",
                "auto (Tower chooses a sound card with capture, USB first) or an ALSA device name such as plughw:CARD=Device,DEV=0 (see `tower devices`)",
            ));
        }
        if let Err(accepted) = crate::audio::socket::Input::parse(&c.input) {
            return Err(self.invalid("input", format!("{:?}", c.input), accepted));
        }
        if let Err(accepted) = crate::audio::socket::parse_mode(&c.socket.mode) {
            return Err(self.invalid("socket.mode", format!("{:?}", c.socket.mode), accepted));
        }
        if let Err(accepted) = crate::audio::socket::check_group(&c.socket.group) {
            return Err(self.invalid("socket.group", format!("{:?}", c.socket.group), accepted));
        }
        if c.ffmpeg.trim().is_empty() {
            return Err(self.invalid("ffmpeg", "\"\"", "the ffmpeg program name or path"));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&c.log_level.as_str()) {
            return Err(self.invalid(
                "log_level",
                format!("{:?}", c.log_level),
                "error, warn, info, debug or trace",
            ));
        }
        self.range("pcm.buffer_size", c.pcm.buffer_size, 2, 10_000, " frames")?;
        self.range("pcm.grace_sec", c.pcm.grace_sec, 0.05, 3600.0, " seconds")?;
        if let Err(e) = crate::audio::mixer::Level::parse(&c.capture.level) {
            return Err(self.invalid(
                "capture.level",
                format!("{:?}", c.capture.level),
                format!("{} ({e})", crate::audio::mixer::LEVEL_FORMS),
            ));
        }
        self.range(
            "pcm.silence_warn_sec",
            c.pcm.silence_warn_sec,
            0.0,
            86_400.0,
            " seconds",
        )?;
        self.range(
            "mp3.buffer_capacity_frames",
            c.mp3.buffer_capacity_frames,
            8,
            100_000,
            " frames",
        )?;
        if !MP3_SAMPLE_RATES.contains(&c.mp3.sample_rate) {
            return Err(self.invalid(
                "mp3.sample_rate",
                c.mp3.sample_rate,
                "48000 (Tower's own rate) or 44100 (for players that want it; ffmpeg resamples)",
            ));
        }
        if !MP3_BITRATES.contains(&(c.encoder.bitrate_kbps as u32)) || c.encoder.bitrate_kbps > 320 {
            let list: Vec<String> = MP3_BITRATES.iter().map(u32::to_string).collect();
            return Err(self.invalid(
                "encoder.bitrate_kbps",
                c.encoder.bitrate_kbps,
                format!("one of {}", list.join(", ")),
            ));
        }
        if !c.encoder.args.is_empty() {
            crate::encoder::command::custom_command(&c.ffmpeg, &c.encoder.args)
                .map_err(|e| self.invalid("encoder.args", format!("{:?}", c.encoder.args), e.to_string()))?;
        }
        self.range(
            "encoder.startup_timeout_ms",
            c.encoder.startup_timeout_ms,
            200,
            120_000,
            " ms",
        )?;
        self.range(
            "encoder.stall_timeout_ms",
            c.encoder.stall_timeout_ms,
            100,
            60_000,
            " ms",
        )?;
        self.range("encoder.max_restarts", c.encoder.max_restarts, 1, 1000, "")?;
        if c.encoder.backoff_ms.is_empty()
            || c.encoder.backoff_ms.len() > 20
            || c.encoder.backoff_ms.iter().any(|&d| d > 600_000)
        {
            return Err(self.invalid(
                "encoder.backoff_ms",
                format!("{:?}", c.encoder.backoff_ms),
                "a list of 1 to 20 delays, each 0 to 600000 ms",
            ));
        }
        self.range(
            "encoder.failed_retry_sec",
            c.encoder.failed_retry_sec,
            1,
            3600,
            " seconds",
        )?;
        self.range("encoder.silence_after_ms", c.encoder.silence_after_ms, 30, 2000, " ms")?;
        self.range("encoder.max_lead_ms", c.encoder.max_lead_ms, 24, 2000, " ms")?;
        self.range(
            "http.slow_listener_timeout_ms",
            c.http.slow_listener_timeout_ms,
            50,
            30_000,
            " ms",
        )?;
        self.range("http.max_listeners", c.http.max_listeners, 1, 10_000, "")?;
        self.range("http.burst_ms", c.http.burst_ms, 0, 5_000, " ms")?;
        self.range("http.icy_metaint", c.http.icy_metaint, 256, 65_536, " bytes")?;
        self.range("http.header_timeout_ms", c.http.header_timeout_ms, 500, 120_000, " ms")?;
        self.range(
            "http.max_connections_per_address",
            c.http.max_connections_per_address,
            1,
            10_000,
            "",
        )?;
        self.range(
            "http.max_other_connections",
            c.http.max_other_connections,
            1,
            10_000,
            "",
        )?;
        self.range(
            "http.max_listeners_per_address",
            c.http.max_listeners_per_address,
            1,
            10_000,
            "",
        )?;
        self.range(
            "http.max_status_pages_per_address",
            c.http.max_status_pages_per_address,
            1,
            crate::http::MAX_EVENT_CLIENTS as u64,
            " (the status pages open at once in all)",
        )?;
        self.range("gpio.encoder_pin", c.gpio.encoder_pin, 0, 27, " (a BCM GPIO number)")?;
        self.range("gpio.input_pin", c.gpio.input_pin, 0, 27, " (a BCM GPIO number)")?;
        if c.gpio.enabled && c.gpio.encoder_pin == c.gpio.input_pin {
            return Err(self.invalid(
                "gpio.input_pin",
                c.gpio.input_pin.to_string(),
                "a different pin from gpio.encoder_pin",
            ));
        }
        if let Err(accepted) = crate::leds::select::ChipSpec::parse(&c.gpio.chip) {
            return Err(self.invalid("gpio.chip", format!("{:?}", c.gpio.chip), accepted));
        }
        let amp = c.gpio.amp_pin;
        if amp == 1 || amp > 27 {
            return Err(self.invalid(
                "gpio.amp_pin",
                amp,
                "0 (no amplifier line) or a BCM GPIO number from 2 to 27",
            ));
        }
        if amp != 0 && c.gpio.enabled && (amp == c.gpio.encoder_pin || amp == c.gpio.input_pin) {
            return Err(self.invalid(
                "gpio.amp_pin",
                amp,
                "a pin that is neither LED's (gpio.encoder_pin, gpio.input_pin)",
            ));
        }
        self.range(
            "gpio.amp_off_delay_s",
            c.gpio.amp_off_delay_s,
            0.0,
            86_400.0,
            " seconds",
        )?;
        self.range("program.margin_db", c.program.margin_db, 3.0, 60.0, " dB")?;
        self.range("program.attack_s", c.program.attack_s, 0.05, 10.0, " seconds")?;
        self.range("program.hold_s", c.program.hold_s, 0.5, 3600.0, " seconds")?;
        self.range(
            "program.floor_window_s",
            c.program.floor_window_s,
            10.0,
            3600.0,
            " seconds",
        )?;
        if let Err((key, accepted)) = crate::mqtt::MqttSettings::from_section(&c.mqtt) {
            let value = match key {
                "mqtt.url" => format!("{:?}", redact_url(&c.mqtt.url)),
                "mqtt.user" => format!("{:?}", c.mqtt.user),
                "mqtt.discovery_prefix" => format!("{:?}", c.mqtt.discovery_prefix),
                _ => String::new(),
            };
            return Err(self.invalid(key, value, accepted));
        }
        for (i, t) in c.icecast.iter().enumerate() {
            if let Err(e) = crate::broadcast::icecast::Endpoint::parse(&t.url) {
                return Err(self.invalid(
                    &format!("icecast[{i}].url"),
                    format!("{:?}", redact_url(&t.url)),
                    format!("a URL that {e}"),
                ));
            }
            if !["put", "source"].contains(&t.method.as_str()) {
                return Err(self.invalid(
                    &format!("icecast[{i}].method"),
                    format!("{:?}", t.method),
                    "put (Icecast 2.4 and later) or source (older servers)",
                ));
            }
            if t.password.is_empty() || t.user.is_empty() {
                return Err(self.invalid(
                    &format!("icecast[{i}].password"),
                    "\"\"",
                    "the source user and password",
                ));
            }
        }
        let station = [
            ("station.name", &c.station.name),
            ("station.description", &c.station.description),
            ("station.genre", &c.station.genre),
            ("station.url", &c.station.url),
            ("station.title", &c.station.title),
        ];
        for (key, value) in station {
            // These go into HTTP headers, a playlist and metadata blocks.
            if value.chars().count() > 200 || value.chars().any(char::is_control) {
                return Err(self.invalid(key, format!("{value:?}"), "one line of text, at most 200 characters"));
            }
        }
        if c.http.hosts.len() > 16 || c.http.hosts.iter().any(|h| !crate::http::host::valid_name(h)) {
            return Err(self.invalid(
                "http.hosts",
                format!("{:?}", c.http.hosts),
                "up to 16 host names (letters, digits, '-' and '.') or IP addresses, e.g. [\"tower.lan\"]",
            ));
        }
        if c.http.cors_origins.len() > 16 || c.http.cors_origins.iter().any(|o| !crate::http::host::valid_origin(o)) {
            return Err(self.invalid(
                "http.cors_origins",
                format!("{:?}", c.http.cors_origins),
                "up to 16 web origins such as \"https://radio.example.org\" (scheme, host and port, no path), or \"*\" for any",
            ));
        }
        if !c.admin.password.is_empty()
            && let Err(accepted) = crate::admin::password::check_new(&c.admin.password)
        {
            return Err(self.invalid("admin.password", "", accepted));
        }
        if !c.admin.password_hash.is_empty()
            && let Err(accepted) = crate::admin::password::check_hash(&c.admin.password_hash)
        {
            return Err(self.invalid("admin.password_hash", "", accepted));
        }
        self.range(
            "pump.realtime_priority",
            c.pump.realtime_priority,
            0,
            99,
            " (0 disables real-time scheduling)",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("tower.toml");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn err_text(r: Result<Loaded, ConfigError>) -> String {
        r.expect_err("must be rejected").to_string()
    }

    #[test]
    fn defaults_are_valid_and_env_names_follow_the_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, "");
        let l = load(Some(&p), &[], &Overrides::default()).expect("defaults load");
        assert_eq!(l.config, Config::default());
        let names: Vec<String> = schema().iter().map(|(k, _)| env_name(k)).collect();
        for required in [
            "TOWER_PCM_GRACE_SEC",
            "TOWER_PCM_BUFFER_SIZE",
            "TOWER_MP3_BUFFER_CAPACITY_FRAMES",
            "TOWER_LISTEN",
            "TOWER_DEVICE",
            "TOWER_FFMPEG",
        ] {
            assert!(names.iter().any(|n| n == required), "{required} missing");
        }
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            &dir,
            "device = \"hw:CARD=File\"\nlisten = \"127.0.0.1:9000\"\n[pcm]\ngrace_sec = 2\nbuffer_size = 50\n",
        );
        let e = env(&[
            ("TOWER_DEVICE", "hw:CARD=Env"),
            ("TOWER_PCM_BUFFER_SIZE", "60"),
            ("PATH", "/bin"),
        ]);
        let flags = Overrides {
            device: Some("hw:CARD=Flag".into()),
            ..Overrides::default()
        };
        let l = load(Some(&p), &e, &flags).expect("valid");
        assert_eq!(l.config.device, "hw:CARD=Flag");
        assert_eq!(l.config.pcm.buffer_size, 60);
        assert_eq!(l.config.pcm.grace_sec, 2.0);
        assert_eq!(l.config.listen, "127.0.0.1:9000");
        assert_eq!(l.origins["device"], Origin::Flag("--device".into()));
        assert_eq!(
            l.origins["pcm.buffer_size"],
            Origin::Env("TOWER_PCM_BUFFER_SIZE".into())
        );
    }

    #[test]
    fn every_documented_env_variable_is_applied() {
        let e = env(&[
            ("TOWER_PCM_GRACE_SEC", "0.5"),
            ("TOWER_MP3_BUFFER_CAPACITY_FRAMES", "64"),
            ("TOWER_SILENCE_MP3_PATH", "/srv/fallback.wav"),
            ("TOWER_LISTEN", "[::]:8001"),
            ("TOWER_FFMPEG", "/usr/local/bin/ffmpeg"),
            ("TOWER_FALLBACK_TONE", "no"),
            ("TOWER_ENCODER_BACKOFF_MS", "[10, 20]"),
            ("TOWER_ENCODER_ARGS", "-b:a 192k"),
            ("TOWER_CONFIG", "/ignored/here"),
        ]);
        let c = load(None, &e, &Overrides::default()).expect("valid").config;
        assert_eq!(c.pcm.grace_sec, 0.5);
        assert_eq!(c.mp3.buffer_capacity_frames, 64);
        assert_eq!(c.fallback_wav(), Some(PathBuf::from("/srv/fallback.wav")));
        assert_eq!(c.listen_addr(), "[::]:8001".parse::<SocketAddr>().expect("addr"));
        assert_eq!(c.ffmpeg, "/usr/local/bin/ffmpeg");
        assert!(!c.fallback.tone);
        assert_eq!(c.encoder.backoff_ms, vec![10, 20]);
        assert_eq!(c.encoder.args, vec!["-b:a".to_string(), "192k".to_string()]);
    }

    #[test]
    fn out_of_range_values_name_the_key_value_origin_and_range() {
        let t = err_text(load(None, &env(&[("TOWER_PCM_GRACE_SEC", "0")]), &Overrides::default()));
        assert!(
            t.contains("pcm.grace_sec") && t.contains("TOWER_PCM_GRACE_SEC") && t.contains("0.05 to 3600"),
            "{t}"
        );
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, "[pcm]\nbuffer_size = 1\n");
        let t = err_text(load(Some(&p), &[], &Overrides::default()));
        assert!(
            t.contains("pcm.buffer_size") && t.contains("= 1") && t.contains("2 to 10000") && t.contains("tower.toml"),
            "{t}"
        );
        let t = err_text(load(
            None,
            &[],
            &Overrides {
                listen: Some("nowhere".into()),
                ..Overrides::default()
            },
        ));
        assert!(
            t.contains("listen") && t.contains("--listen") && t.contains("0.0.0.0:8000"),
            "{t}"
        );
        let t = err_text(load(
            None,
            &env(&[("TOWER_ENCODER_BITRATE_KBPS", "100")]),
            &Overrides::default(),
        ));
        assert!(t.contains("encoder.bitrate_kbps") && t.contains("128"), "{t}");
    }

    #[test]
    fn unknown_keys_are_refused_and_unknown_variables_ignored_with_a_suggestion() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, "[pcm]\ngrace_secs = 3\n");
        let t = err_text(load(Some(&p), &[], &Overrides::default()));
        assert!(
            t.contains("pcm.grace_secs") && t.contains("did you mean `pcm.grace_sec`"),
            "{t}"
        );
        let p = write(&dir, "colour = \"blue\"\n");
        assert!(err_text(load(Some(&p), &[], &Overrides::default())).contains("`colour`"));
        let p = write(&dir, "[nosuch]\nkey = 1\n");
        assert!(err_text(load(Some(&p), &[], &Overrides::default())).contains("nosuch"));
        // Other programs use the prefix (AWX's TOWER_HOST, TOWER_PASSWORD).
        let l = load(
            None,
            &env(&[
                ("TOWER_PCM_GRACE", "3"),
                ("TOWER_HOST", "awx.example"),
                ("TOWER_PASSWORD", "hunter2"),
            ]),
            &Overrides::default(),
        )
        .expect("ignored");
        assert_eq!(l.config, Config::default());
        let w = l.warnings.join("\n");
        assert!(
            w.contains("TOWER_PCM_GRACE") && w.contains("TOWER_PCM_GRACE_SEC"),
            "{w}"
        );
        assert!(w.contains("TOWER_HOST") && !w.contains("hunter2"), "{w}");
    }

    #[test]
    fn the_new_fallback_variable_wins_over_the_historic_one_in_any_order() {
        for order in [[0, 1], [1, 0]] {
            let pairs = [
                ("TOWER_SILENCE_MP3_PATH", "/old.wav"),
                ("TOWER_FALLBACK_WAV_PATH", "/new.wav"),
            ];
            let e = env(&[pairs[order[0]], pairs[order[1]]]);
            let l = load(None, &e, &Overrides::default()).expect("valid");
            assert_eq!(l.config.fallback.wav_path, "/new.wav", "{order:?}");
            assert!(
                l.warnings
                    .iter()
                    .any(|w| w.contains("TOWER_SILENCE_MP3_PATH is ignored"))
            );
        }
    }

    #[test]
    fn no_error_shows_a_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        for (text, key) in [
            ("[admin]\npassword = hunter2hunter2\n", "line 2"),
            ("[admin]\npassword = 12345678901\n", "admin.password"),
            ("[admin]\npassword = \"hunter2\"\n", "admin.password"),
            (
                "[[icecast]]\nurl = \"http://a/m\"\npassword = 12345678901\n",
                "icecast[0].password",
            ),
            (
                "[[icecast]]\nurl = \"http://source:hunter2hunter2@a/m\"\npassword = \"x\"\n",
                "icecast[0].url",
            ),
            ("[admin]\npassword_hash = \"hunter2hunter2\"\n", "admin.password_hash"),
            (
                "[mqtt]\nurl = \"mqtt://ha\"\npassword = \"hunter2hunter2\"\n",
                "mqtt.password",
            ),
            ("[mqtt]\npassword = 12345678901\n", "mqtt.password"),
            ("[mqtt]\nurl = \"mqtt://u:hunter2@ha\"\n", "mqtt.url"),
        ] {
            let p = write(&dir, text);
            let t = err_text(load(Some(&p), &[], &Overrides::default()));
            assert!(t.contains(key), "{key}: {t}");
            for secret in ["hunter2", "12345678901"] {
                assert!(!t.contains(secret), "{text:?} shows its secret: {t}");
            }
        }
        let t = err_text(load(
            None,
            &env(&[("TOWER_ADMIN_PASSWORD", "short")]),
            &Overrides::default(),
        ));
        assert!(t.contains("admin.password") && !t.contains("short"), "{t}");
    }

    #[test]
    fn nan_and_negative_numbers_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, "[pcm]\ngrace_sec = nan\n");
        assert!(err_text(load(Some(&p), &[], &Overrides::default())).contains("pcm.grace_sec"));
        let p = write(&dir, "[http]\nmax_listeners = -5\n");
        let t = err_text(load(Some(&p), &[], &Overrides::default()));
        assert!(t.contains("http.max_listeners") && t.contains("-5"), "{t}");
        let t = err_text(load(
            None,
            &env(&[("TOWER_PCM_BUFFER_SIZE", "-1")]),
            &Overrides::default(),
        ));
        assert!(t.contains("pcm.buffer_size"), "{t}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let t = err_text(load(
            None,
            &env(&[("TOWER_PCM_BUFFER_SIZE", "lots")]),
            &Overrides::default(),
        ));
        assert!(t.contains("pcm.buffer_size") && t.contains("whole number"), "{t}");
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, "[fallback]\ntone = \"yes\"\n");
        let t = err_text(load(Some(&p), &[], &Overrides::default()));
        assert!(t.contains("fallback.tone") && t.contains("true or false"), "{t}");
        let p = write(&dir, "[encoder]\nbackoff_ms = [1, \"2\"]\n");
        assert!(err_text(load(Some(&p), &[], &Overrides::default())).contains("encoder.backoff_ms"));
        let p = write(&dir, "listen = ");
        assert!(err_text(load(Some(&p), &[], &Overrides::default())).contains("not valid TOML"));
    }

    #[test]
    fn an_unsafe_custom_encoder_command_is_refused() {
        let t = err_text(load(
            None,
            &env(&[("TOWER_ENCODER_ARGS", "-i a.wav -i b.wav")]),
            &Overrides::default(),
        ));
        assert!(t.contains("encoder.args") && t.contains("only one input"), "{t}");
    }

    #[test]
    fn icecast_targets_load_from_the_file_are_checked_and_hide_their_password() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            &dir,
            "[[icecast]]\nurl = \"http://a:8000/live\"\npassword = \"s3cret\"\n\n\
             [[icecast]]\nurl = \"http://b/x\"\npassword = \"p\"\nmethod = \"source\"\npublic = true\n",
        );
        let l = load(Some(&p), &[], &Overrides::default()).expect("loads");
        assert_eq!(l.config.icecast.len(), 2);
        assert_eq!(l.config.icecast[0].user, "source");
        assert_eq!(l.config.icecast[1].method, "source");
        let shown = l.config.to_toml();
        assert!(!shown.contains("s3cret") && shown.contains(HIDDEN), "{shown}");
        let bad = write(
            &dir,
            "[[icecast]]\nurl = \"http://a/m\"\npassword = \"p\"\nmethod = \"post\"\n",
        );
        assert!(err_text(load(Some(&bad), &[], &Overrides::default())).contains("icecast[0].method"));
        let bad = write(&dir, "[[icecast]]\nurl = \"https://a/m\"\npassword = \"p\"\n");
        assert!(err_text(load(Some(&bad), &[], &Overrides::default())).contains("icecast[0].url"));
        let bad = write(&dir, "[[icecast]]\nurl = \"http://a/m\"\npasword = \"p\"\n");
        let t = err_text(load(Some(&bad), &[], &Overrides::default()));
        assert!(t.contains("icecast[0]") && t.contains("pasword"), "{t}");
    }

    #[test]
    fn gpio_chip_accepts_a_path_name_or_label_and_refuses_the_rest_by_name() {
        for ok in ["", "/dev/gpiochip4", "gpiochip0", "pinctrl-rp1"] {
            let c = load(None, &env(&[("TOWER_GPIO_CHIP", ok)]), &Overrides::default()).expect(ok);
            assert_eq!(c.config.leds().chip, ok);
        }
        let t = err_text(load(
            None,
            &env(&[("TOWER_GPIO_CHIP", "dev/gpiochip0")]),
            &Overrides::default(),
        ));
        assert!(
            t.contains("gpio.chip")
                && t.contains("TOWER_GPIO_CHIP")
                && t.contains("/dev/gpiochip0")
                && t.contains("label"),
            "{t}"
        );
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(&dir, &format!("[gpio]\nchip = \"{}\"\n", "x".repeat(40)));
        let t = err_text(load(Some(&p), &[], &Overrides::default()));
        assert!(t.contains("gpio.chip") && t.contains("tower.toml"), "{t}");
    }

    #[test]
    fn program_amp_and_mqtt_keys_are_checked_by_name_and_the_broker_password_never_shown() {
        let flags = Overrides::default();
        let c = load_text(
            None,
            &env(&[
                ("TOWER_PROGRAM_HOLD_S", "2"),
                ("TOWER_GPIO_AMP_PIN", "22"),
                ("TOWER_GPIO_AMP_ACTIVE_LOW", "true"),
                ("TOWER_MQTT_URL", "mqtt://127.0.0.1:1884"),
                ("TOWER_MQTT_USER", "tower"),
                ("TOWER_MQTT_PASSWORD", "hunter2hunter2"),
            ]),
            &flags,
        )
        .expect("valid")
        .config;
        let s = c.settings();
        assert_eq!(s.program.hold, std::time::Duration::from_secs(2));
        let amp = s.leds.amp.expect("amp");
        assert_eq!((amp.pin, amp.active_low, amp.off_delay.as_secs()), (22, true, 60));
        let m = s.mqtt.expect("mqtt");
        assert_eq!(
            (m.host.as_str(), m.port, m.prefix.as_str()),
            ("127.0.0.1", 1884, "homeassistant")
        );
        let shown = c.to_toml();
        assert!(!shown.contains("hunter2") && shown.contains(HIDDEN), "{shown}");
        assert!(format!("{:?}", c.redacted()).contains("(hidden)"));
        assert_eq!(Config::default().settings().leds.amp, None);
        assert_eq!(Config::default().settings().mqtt, None);
        for (var, value, key) in [
            ("TOWER_GPIO_AMP_PIN", "1", "gpio.amp_pin"),
            ("TOWER_GPIO_AMP_PIN", "28", "gpio.amp_pin"),
            ("TOWER_GPIO_AMP_PIN", "17", "gpio.amp_pin"),
            ("TOWER_GPIO_AMP_OFF_DELAY_S", "-1", "gpio.amp_off_delay_s"),
            ("TOWER_PROGRAM_MARGIN_DB", "1", "program.margin_db"),
            ("TOWER_PROGRAM_ATTACK_S", "0", "program.attack_s"),
            ("TOWER_PROGRAM_HOLD_S", "0.1", "program.hold_s"),
            ("TOWER_PROGRAM_FLOOR_WINDOW_S", "5", "program.floor_window_s"),
            ("TOWER_MQTT_URL", "ha.lan", "mqtt.url"),
            ("TOWER_MQTT_DISCOVERY_PREFIX", "a b", "mqtt.discovery_prefix"),
        ] {
            let t = err_text(load_text(None, &env(&[(var, value)]), &flags));
            assert!(t.contains(key) && t.contains(var), "{var}={value}: {t}");
        }
        // An LED pin may be the amplifier's once the LEDs are off.
        let e = env(&[("TOWER_GPIO_AMP_PIN", "17"), ("TOWER_GPIO_ENABLED", "false")]);
        assert!(load_text(None, &e, &flags).is_ok());
    }

    #[test]
    fn the_per_address_caps_of_listeners_and_status_pages_are_checked_by_name() {
        let flags = Overrides::default();
        for (var, value, key, range) in [
            (
                "TOWER_HTTP_MAX_LISTENERS_PER_ADDRESS",
                "0",
                "http.max_listeners_per_address",
                "1 to 10000",
            ),
            (
                "TOWER_HTTP_MAX_STATUS_PAGES_PER_ADDRESS",
                "33",
                "http.max_status_pages_per_address",
                "1 to 32",
            ),
        ] {
            let t = err_text(load_text(None, &env(&[(var, value)]), &flags));
            assert!(t.contains(key) && t.contains(range) && t.contains(var), "{t}");
        }
        let c = load_text(None, &env(&[("TOWER_HTTP_MAX_LISTENERS_PER_ADDRESS", "500")]), &flags)
            .expect("valid")
            .config;
        assert_eq!(c.http.max_listeners_per_address, 500);
    }

    #[test]
    fn the_example_file_lists_every_key_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tower.example.toml");
        let text = std::fs::read_to_string(&path).expect("tower.example.toml");
        let l = load(Some(&path), &[], &Overrides::default()).expect("example loads");
        assert_eq!(l.config, Config::default());
        for (key, _) in schema() {
            assert!(l.origins.contains_key(&key), "{key} is not in tower.example.toml");
        }
        // Each key line has a one-line comment above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_key = line.contains(" = ") && !line.starts_with('#');
            if is_key {
                assert!(i > 0 && lines[i - 1].starts_with('#'), "no comment above {line:?}");
            }
        }
    }

    #[test]
    fn the_socket_input_is_chosen_with_input_and_checked_with_its_keys_named() {
        use crate::audio::socket::{Input, SocketSettings};
        let flags = Overrides::default();
        assert_eq!(Config::default().input(), Input::Alsa);
        let e = env(&[
            ("TOWER_INPUT", "unix:/run/tower/pcm.sock"),
            ("TOWER_SOCKET_MODE", "0600"),
            ("TOWER_SOCKET_GROUP", ""),
        ]);
        let c = load_text(None, &e, &flags).expect("valid").config;
        assert_eq!(
            c.input(),
            Input::Socket(SocketSettings {
                path: PathBuf::from("/run/tower/pcm.sock"),
                mode: 0o600,
                group: None,
            })
        );
        let c = load_text(None, &env(&[("TOWER_INPUT", "unix:/tmp/x.sock")]), &flags)
            .expect("valid")
            .config;
        let Input::Socket(s) = c.input() else {
            panic!("a socket")
        };
        assert_eq!((s.mode, s.group.as_deref()), (0o660, Some("audio")));
        for (var, value, key) in [
            ("TOWER_INPUT", "unix:relative.sock", "`input`"),
            ("TOWER_INPUT", "jack", "`input`"),
            ("TOWER_SOCKET_MODE", "rw-rw----", "`socket.mode`"),
            ("TOWER_SOCKET_MODE", "0444", "`socket.mode`"),
            ("TOWER_SOCKET_GROUP", "a b", "`socket.group`"),
        ] {
            let t = err_text(load_text(None, &env(&[(var, value)]), &flags));
            assert!(t.contains(key) && t.contains(var), "{t}");
        }
    }

    #[test]
    fn capture_level_is_checked_at_start_with_the_key_named() {
        let flags = Overrides::default();
        let l = load_text(None, &env(&[("TOWER_CAPTURE_LEVEL", "-6dB")]), &flags).expect("valid");
        assert_eq!(l.config.capture_level(), crate::audio::mixer::Level::Db(-6.0));
        let l = load_text(Some((Path::new("t.toml"), "[capture]\nlevel = \"75%\"\n")), &[], &flags).expect("valid");
        assert_eq!(l.config.capture_level(), crate::audio::mixer::Level::Percent(75.0));
        assert_eq!(Config::default().capture_level(), crate::audio::mixer::Level::Keep);
        assert_eq!(Config::default().device, "auto");
        let t = err_text(load_text(None, &env(&[("TOWER_CAPTURE_LEVEL", "loud")]), &flags));
        assert!(t.contains("`capture.level` = \"loud\""), "{t}");
        assert!(t.contains("TOWER_CAPTURE_LEVEL") && t.contains("no unit"), "{t}");
        let t = err_text(load_text(
            Some((Path::new("t.toml"), "[capture]\nlevel = \"55dB\"\n")),
            &[],
            &flags,
        ));
        assert!(t.contains("capture.level") && t.contains("out of range"), "{t}");
    }
}
