//! Configuration: TOML file, overridden by `TOWER_*` environment variables,
//! overridden by command-line flags [T4].
//!
//! Read once at start-up on the main thread. Every key has a default (see
//! `tower.example.toml`), and an environment variable named after it:
//! `TOWER_` + the key's path in upper case with `.` as `_` (`pcm.grace_sec`
//! is `TOWER_PCM_GRACE_SEC`). Unknown keys, unknown `TOWER_*` variables,
//! wrong types and out-of-range values stop start-up with a message naming
//! the key, the value, where it came from, and what is accepted.
//!
//! `load` reads the sources, checks types and ranges and says what is
//! wrong; [`Config::settings`] turns a valid configuration into every
//! stage's own settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod change;
pub mod edit;
mod load;
pub mod store;
pub use load::{ConfigError, Loaded, Origin, Overrides, default_file, is_secret, load, load_text, redact_url};

pub use crate::broadcast::Station;
pub use crate::broadcast::icecast::IcecastTarget;

/// Default burst on connect, in ms (see `http.burst_ms`).
pub const DEFAULT_BURST_MS: u64 = 200;

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/tower/tower.toml";
/// Environment variables that are not configuration keys.
const NON_KEY_VARS: &[&str] = &["TOWER_CONFIG", crate::hooks::ENV];
/// The historic name of the fallback WAV path variable.
const HISTORIC_WAV_VAR: &str = "TOWER_SILENCE_MP3_PATH";
/// The MP3 sample rates Tower offers (`mp3.sample_rate`).
pub const MP3_SAMPLE_RATES: &[u64] = &[48_000, 44_100];
/// MP3 bitrates (kbit/s) valid at 48 and 44.1 kHz.
pub const MP3_BITRATES: &[u32] = &[32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP address and port.
    pub listen: String,
    /// ALSA capture device; `auto` chooses a sound card with capture.
    pub device: String,
    /// Where the audio comes from: `alsa` (the sound card `device`), or
    /// `unix:PATH`, a socket a program on this machine writes PCM into.
    pub input: String,
    /// The ffmpeg program.
    pub ffmpeg: String,
    /// Log level: error, warn, info, debug, trace.
    pub log_level: String,
    pub capture: CaptureSection,
    pub socket: SocketSection,
    pub pcm: Pcm,
    pub fallback: FallbackSection,
    pub mp3: Mp3,
    pub encoder: Encoder,
    pub http: Http,
    pub pump: PumpSection,
    pub station: Station,
    pub program: ProgramSection,
    pub gpio: GpioSection,
    pub mqtt: MqttSection,
    pub speakers: SpeakersSection,
    pub admin: AdminSection,
    /// Icecast servers to push the stream to (`[[icecast]]` tables).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub icecast: Vec<IcecastTarget>,
}

/// Shown instead of a password.
pub const HIDDEN: &str = "(hidden)";

/// Who may change Tower: the owner's password. Written in plain text by
/// the owner, it is replaced by `password_hash` (argon2id, salted) at
/// Tower's next start; see `admin`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The admin password in plain text, until Tower hashes it.
    pub password: String,
    /// The PHC string of the password's argon2id hash.
    pub password_hash: String,
}

impl AdminSection {
    /// Whether a password is set (plain or hashed).
    pub fn has_password(&self) -> bool {
        !self.password.is_empty() || !self.password_hash.is_empty()
    }
}

/// The capture card's level.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// "" leaves the card as found; "-6dB" or "75%" sets it at every open.
    pub level: String,
}

/// The socket file of `input = "unix:PATH"`: who may connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketSection {
    /// Permission bits, octal: "0660" lets the owner and the group connect.
    pub mode: String,
    /// The group given the socket; "" keeps Tower's own.
    pub group: String,
}

impl Default for SocketSection {
    fn default() -> Self {
        SocketSection {
            mode: "0660".into(),
            group: "audio".into(),
        }
    }
}

/// The speakers on the LAN (UPnP renderers found by SSDP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeakersSection {
    /// Search the local networks for speakers (every 5 minutes and on
    /// demand) and offer to play on them.
    pub enabled: bool,
}

impl Default for SpeakersSection {
    fn default() -> Self {
        SpeakersSection { enabled: true }
    }
}

/// Status LEDs and the amplifier line (BCM pin numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioSection {
    pub enabled: bool,
    pub encoder_pin: u64,
    pub input_pin: u64,
    pub active_low: bool,
    /// The GPIO chip: "" finds it by its line names; else a path, a chip
    /// name or a chip label (see `leds::select::ChipSpec`).
    pub chip: String,
    /// The amplifier's line, on while program plays; 0 for none.
    pub amp_pin: u64,
    /// The amplifier is on when its pin is low.
    pub amp_active_low: bool,
    /// Seconds after program ends before the amplifier goes off.
    pub amp_off_delay_s: f64,
}

impl Default for GpioSection {
    fn default() -> Self {
        GpioSection {
            enabled: true,
            encoder_pin: 17,
            input_pin: 27,
            active_low: false,
            chip: String::new(),
            amp_pin: 0,
            amp_active_low: false,
            amp_off_delay_s: 60.0,
        }
    }
}

/// Program detection: when something plays on the input (see
/// `audio::program`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramSection {
    /// How far above the noise floor the level must be.
    pub margin_db: f64,
    /// How long it must stay there.
    pub attack_s: f64,
    /// How long after the sound stops idle is reported.
    pub hold_s: f64,
    /// How far back the quietest second (the floor) is looked for.
    pub floor_window_s: f64,
}

impl Default for ProgramSection {
    fn default() -> Self {
        let d = crate::audio::program::ProgramConfig::default();
        ProgramSection {
            margin_db: f64::from(d.margin_db),
            attack_s: d.attack.as_secs_f64(),
            hold_s: d.hold.as_secs_f64(),
            floor_window_s: d.floor_window.as_secs_f64(),
        }
    }
}

/// An MQTT broker, for Home Assistant (see `mqtt`); off while `url` is
/// empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `mqtt://host:port`.
    pub url: String,
    pub user: String,
    /// A secret: never shown or logged.
    pub password: String,
    /// Where Home Assistant looks for discovery configs.
    pub discovery_prefix: String,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            url: String::new(),
            user: String::new(),
            password: String::new(),
            discovery_prefix: crate::mqtt::DEFAULT_PREFIX.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pcm {
    pub buffer_size: u64,
    pub grace_sec: f64,
    pub silence_warn_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackSection {
    pub wav_path: String,
    pub tone: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mp3 {
    pub buffer_capacity_frames: u64,
    /// The MP3's sample rate: 48000 (Tower's own), or 44100 (ffmpeg
    /// resamples at its output).
    pub sample_rate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encoder {
    pub bitrate_kbps: u64,
    pub args: Vec<String>,
    pub startup_timeout_ms: u64,
    pub stall_timeout_ms: u64,
    pub max_restarts: u64,
    pub backoff_ms: Vec<u64>,
    pub failed_retry_sec: u64,
    pub silence_after_ms: u64,
    pub max_lead_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub slow_listener_timeout_ms: u64,
    pub max_listeners: u64,
    pub burst_ms: u64,
    pub icy_metaint: u64,
    pub header_timeout_ms: u64,
    pub max_connections_per_address: u64,
    pub max_other_connections: u64,
    pub max_listeners_per_address: u64,
    pub max_status_pages_per_address: u64,
    /// Host names Tower answers to besides its own (its hostname, that
    /// name with `.local`, `localhost` and the address a client connected
    /// to): a name the router's DNS gives the box.
    pub hosts: Vec<String>,
    /// Web origins whose scripts may read `/stream` (CORS); `*` for any.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PumpSection {
    pub realtime_priority: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8000".into(),
            device: crate::audio::auto::AUTO.into(),
            input: crate::audio::socket::ALSA.into(),
            ffmpeg: "ffmpeg".into(),
            log_level: "info".into(),
            capture: CaptureSection::default(),
            socket: SocketSection::default(),
            pcm: Pcm::default(),
            fallback: FallbackSection::default(),
            mp3: Mp3::default(),
            encoder: Encoder::default(),
            http: Http::default(),
            pump: PumpSection::default(),
            station: Station::default(),
            program: ProgramSection::default(),
            gpio: GpioSection::default(),
            mqtt: MqttSection::default(),
            speakers: SpeakersSection::default(),
            admin: AdminSection::default(),
            icecast: Vec::new(),
        }
    }
}

impl Default for Pcm {
    fn default() -> Self {
        Pcm {
            buffer_size: crate::audio::router::DEFAULT_CAPACITY as u64,
            grace_sec: 5.0,
            silence_warn_sec: 30.0,
        }
    }
}

impl Default for FallbackSection {
    fn default() -> Self {
        FallbackSection {
            wav_path: String::new(),
            tone: true,
        }
    }
}

impl Default for Mp3 {
    fn default() -> Self {
        Mp3 {
            buffer_capacity_frames: crate::encoder::ring::DEFAULT_CAPACITY as u64,
            sample_rate: u64::from(crate::audio::SAMPLE_RATE),
        }
    }
}

impl Default for Encoder {
    fn default() -> Self {
        let policy = crate::encoder::state::RestartPolicy::default();
        Encoder {
            bitrate_kbps: 128,
            args: Vec::new(),
            startup_timeout_ms: 5000,
            stall_timeout_ms: 2000,
            max_restarts: u64::from(policy.max_restarts),
            backoff_ms: policy.backoff.iter().map(|d| d.as_millis() as u64).collect(),
            failed_retry_sec: policy.failed_retry.as_secs(),
            silence_after_ms: crate::encoder::pacer::DEFAULT_SILENCE_AFTER.as_millis() as u64,
            max_lead_ms: crate::encoder::pacer::DEFAULT_MAX_LEAD.as_millis() as u64,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            slow_listener_timeout_ms: 250,
            max_listeners: 500,
            burst_ms: DEFAULT_BURST_MS,
            icy_metaint: 16_000,
            header_timeout_ms: 10_000,
            max_connections_per_address: 32,
            max_other_connections: 256,
            max_listeners_per_address: 50,
            max_status_pages_per_address: 8,
            hosts: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

impl Default for PumpSection {
    fn default() -> Self {
        PumpSection { realtime_priority: 50 }
    }
}

/// Every stage's settings in the stage's own types: made from a validated
/// [`Config`] by [`Config::settings`], the one place where the file's
/// numbers (TOML integers) become durations, counts and priorities.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where the audio comes from: the sound card, or the socket input.
    pub input: crate::audio::socket::Input,
    pub device: String,
    /// Frames in the PCM input queue.
    pub pcm_queue_frames: usize,
    /// Frames in the MP3 ring.
    pub mp3_ring_frames: usize,
    /// The MP3's sample rate.
    pub mp3_sample_rate: u32,
    pub capture: crate::audio::capture::CaptureConfig,
    /// Program detection's thresholds.
    pub program: crate::audio::program::ProgramConfig,
    /// The pump's settings (its test hooks are the service's to add).
    pub pump: crate::pump::PumpConfig,
    pub fallback_wav: Option<PathBuf>,
    pub fallback_tone: bool,
    pub manager: crate::encoder::ManagerConfig,
    pub bitrate_kbps: u32,
    pub station: Station,
    pub icecast: Vec<IcecastTarget>,
    pub hub: crate::http::HubConfig,
    pub site: crate::http::SiteConfig,
    pub leds: crate::leds::LedConfig,
    /// The MQTT link to Home Assistant (`None`: off).
    pub mqtt: Option<crate::mqtt::MqttSettings>,
    /// Search for speakers and offer to play on them.
    pub speakers: bool,
}

impl Config {
    /// The stages' settings. Call on a configuration `load` accepted: the
    /// ranges checked there make every conversion here lossless.
    pub fn settings(&self) -> Settings {
        use crate::encoder::state::{Liveness, RestartPolicy};
        let e = &self.encoder;
        let ms = Duration::from_millis;
        Settings {
            listen: self.listen_addr(),
            input: self.input(),
            device: self.device.clone(),
            pcm_queue_frames: self.pcm.buffer_size as usize,
            mp3_ring_frames: self.mp3.buffer_capacity_frames as usize,
            mp3_sample_rate: self.mp3.sample_rate as u32,
            capture: crate::audio::capture::CaptureConfig {
                silence_warn: Duration::from_secs_f64(self.pcm.silence_warn_sec),
                level: self.capture_level(),
            },
            program: self.program_config(),
            pump: crate::pump::PumpConfig {
                grace: self.grace(),
                realtime_priority: self.pump.realtime_priority as u8,
                hooks: Default::default(),
            },
            fallback_wav: self.fallback_wav(),
            fallback_tone: self.fallback.tone,
            manager: crate::encoder::ManagerConfig {
                supervisor: crate::encoder::supervisor::SupervisorConfig {
                    liveness: Liveness {
                        startup_timeout: ms(e.startup_timeout_ms),
                        stall_timeout: ms(e.stall_timeout_ms),
                    },
                    policy: RestartPolicy {
                        backoff: e.backoff_ms.iter().map(|&d| ms(d)).collect(),
                        max_restarts: e.max_restarts as u32,
                        failed_retry: Duration::from_secs(e.failed_retry_sec),
                        ..RestartPolicy::default()
                    },
                },
                silence_after: ms(e.silence_after_ms),
                max_lead: ms(e.max_lead_ms),
                frame: self.mp3_frame(),
            },
            bitrate_kbps: e.bitrate_kbps as u32,
            station: self.station.clone(),
            icecast: self.icecast.clone(),
            hub: crate::http::HubConfig {
                slow_timeout: ms(self.http.slow_listener_timeout_ms),
                max_listeners: self.http.max_listeners as usize,
                per_address: self.http.max_listeners_per_address as usize,
                burst_frames: crate::http::HubConfig::frames_for(self.http.burst_ms, self.mp3_frame()),
                frame: self.mp3_frame(),
            },
            site: crate::http::SiteConfig {
                bitrate_kbps: e.bitrate_kbps,
                sample_rate: self.mp3.sample_rate as u32,
                icy_metaint: self.http.icy_metaint as usize,
                guard: crate::http::guard::Limits {
                    header_timeout: ms(self.http.header_timeout_ms),
                    per_address: self.http.max_connections_per_address as usize,
                    total: self.http.max_other_connections as usize,
                },
                pages_per_address: self.http.max_status_pages_per_address as usize,
                hosts: self.http.hosts.clone(),
                cors_origins: self.http.cors_origins.clone(),
            },
            leds: self.leds(),
            mqtt: self.mqtt_settings(),
            speakers: self.speakers.enabled,
        }
    }

    pub fn program_config(&self) -> crate::audio::program::ProgramConfig {
        let p = &self.program;
        crate::audio::program::ProgramConfig {
            margin_db: p.margin_db as f32,
            attack: Duration::from_secs_f64(p.attack_s),
            hold: Duration::from_secs_f64(p.hold_s),
            floor_window: Duration::from_secs_f64(p.floor_window_s),
        }
    }

    /// `[mqtt]`, validated in `load` (a hand-built config in a test with a
    /// bad URL has MQTT off).
    pub fn mqtt_settings(&self) -> Option<crate::mqtt::MqttSettings> {
        crate::mqtt::MqttSettings::from_section(&self.mqtt).ok().flatten()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `load`; the default is the fallback for hand-built
        // configs in tests.
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8000)))
    }

    pub fn leds(&self) -> crate::leds::LedConfig {
        crate::leds::LedConfig {
            enabled: self.gpio.enabled,
            encoder_pin: self.gpio.encoder_pin as u8,
            input_pin: self.gpio.input_pin as u8,
            active_low: self.gpio.active_low,
            chip: self.gpio.chip.clone(),
            amp: (self.gpio.amp_pin != 0).then(|| crate::leds::AmpConfig {
                pin: self.gpio.amp_pin as u8,
                active_low: self.gpio.amp_active_low,
                off_delay: Duration::from_secs_f64(self.gpio.amp_off_delay_s),
            }),
        }
    }

    /// `capture.level`, validated in `load` (hand-built configs in tests
    /// with a bad value leave the card as found).
    pub fn capture_level(&self) -> crate::audio::mixer::Level {
        crate::audio::mixer::Level::parse(&self.capture.level).unwrap_or_default()
    }

    /// `input` with the `socket` settings, validated in `load` (hand-built
    /// configs in tests with a bad value capture from `device`).
    pub fn input(&self) -> crate::audio::socket::Input {
        use crate::audio::socket::{Input, check_group, parse_mode};
        match Input::parse(&self.input) {
            Ok(Input::Socket(mut s)) => {
                s.mode = parse_mode(&self.socket.mode).unwrap_or(s.mode);
                let group = self.socket.group.trim();
                s.group = (!group.is_empty() && check_group(group).is_ok()).then(|| group.to_string());
                Input::Socket(s)
            }
            _ => Input::Alsa,
        }
    }

    /// How long one MP3 frame plays at `mp3.sample_rate`.
    pub fn mp3_frame(&self) -> Duration {
        crate::encoder::mp3::frame_duration(self.mp3.sample_rate as u32)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.pcm.grace_sec)
    }

    pub fn fallback_wav(&self) -> Option<PathBuf> {
        (!self.fallback.wav_path.is_empty()).then(|| PathBuf::from(&self.fallback.wav_path))
    }

    /// The configuration with every secret (see [`is_secret`]) that is
    /// set replaced by [`HIDDEN`].
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = HIDDEN.into();
            }
        };
        hide(&mut shown.admin.password);
        hide(&mut shown.admin.password_hash);
        hide(&mut shown.mqtt.password);
        for t in &mut shown.icecast {
            hide(&mut t.password);
        }
        shown
    }

    /// The configuration as TOML, secrets replaced by [`HIDDEN`]: what
    /// `--print-config` prints and the start-up line logs.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.redacted()).unwrap_or_default()
    }
}
