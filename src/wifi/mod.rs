//! Wi-Fi on the SD image: the saved network, or the setup hotspot [W1]–[W6].
//!
//! Two processes share it. `tower wifi-manager` ([`manager`], root, the
//! image's tower-wifi.service) owns the radio: it reads `wifi.txt`
//! ([`txt`]), decides with the pure [`plan`] whether to join the saved
//! network or offer the hotspot, drives wpa_supplicant ([`wpa`]) and
//! systemd-networkd, starts the captive portal's unit ([`captive`], run
//! unprivileged), and writes what it did to `state.json` ([`WifiState`]).
//! Tower (unprivileged) only reads that file ([`WifiWatch`]: the LEDs and
//! the settings page) and asks for a scan by leaving a file in `in/`; a new
//! network is saved through `tower config-commit`, the same root helper
//! that saves `tower.toml` ([`crate::config::store`]), which writes nothing
//! on the FAT partition but `tower.toml` and a `wifi.txt` that passed
//! [`txt::parse`].

pub mod captive;
pub mod manager;
pub mod plan;
pub mod txt;
pub mod wpa;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use plan::{Failure, Mode};

/// The manager's state file, in its directory.
pub const STATE_FILE: &str = "state.json";
/// Tower's requests to the manager (a file named `scan`), in its directory.
pub const REQUESTS: &str = "in";
/// The setup hotspot's address (and its DNS server's, and its gateway's).
pub const HOTSPOT_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);
/// The setup hotspot's WPA2 password: the same on every box, written in
/// the README, on the FAT partition's README.txt and in the LED legend
/// (see the README for why it is not secret, and what guards the box).
pub const HOTSPOT_PASSWORD: &str = "towersetup";
/// The setup hotspot's name, before the MAC's last four hex digits.
pub const HOTSPOT_PREFIX: &str = "Tower-setup-";

/// A network the radio sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub ssid: String,
    pub signal_dbm: i32,
    /// WPA/WPA2/WPA3 (else open).
    pub secured: bool,
    pub freq_mhz: u32,
}

/// The network joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub ssid: String,
    pub address: Option<Ipv4Addr>,
    pub signal_dbm: Option<i32>,
    pub freq_mhz: Option<u32>,
}

/// The setup hotspot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hotspot {
    pub ssid: String,
    pub address: Ipv4Addr,
    /// Open now.
    pub open: bool,
    /// Phones on it.
    pub clients: usize,
}

/// What `tower wifi-manager` writes to `state.json` (no secret is in it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WifiState {
    pub mode: Mode,
    /// Seconds in this mode when written.
    pub since_s: f64,
    pub interface: String,
    /// The radio is there.
    pub radio: bool,
    pub ethernet: bool,
    /// The network `wifi.txt` names (whether it works or not).
    pub saved_ssid: Option<String>,
    pub country: Option<String>,
    pub joined: Option<Joined>,
    pub hotspot: Hotspot,
    /// Why the box is not on the saved network, in words and as a code.
    pub failure: Option<Failure>,
    pub failure_text: Option<String>,
    /// The address the LEDs flash, after a join that followed the hotspot.
    pub announce: Option<Ipv4Addr>,
    /// When the hotspot next tries the saved network (if no phone comes).
    pub retry_in_s: Option<f64>,
    /// Tries of the saved network since the hotspot first opened.
    pub attempts: u32,
    /// The networks the radio saw last, strongest first.
    pub networks: Vec<Network>,
}

/// What the LEDs show instead of the stream's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedShow {
    /// The setup hotspot is open.
    Hotspot,
    /// Just joined a network from the hotspot: this address.
    Address(Ipv4Addr),
}

impl WifiState {
    pub fn led_show(&self) -> Option<LedShow> {
        match (self.mode, self.announce) {
            (Mode::Hotspot, _) => Some(LedShow::Hotspot),
            (_, Some(addr)) => Some(LedShow::Address(addr)),
            _ => None,
        }
    }
}

/// Tower's side: the manager's directory, read at most once a
/// [`WifiWatch::REFRESH`] (the LED thread asks ten times a second).
#[derive(Debug)]
pub struct WifiWatch {
    dir: PathBuf,
    cache: Mutex<Option<Cached>>,
}

/// The file as last read: when, its modification time, what it said.
#[derive(Debug)]
struct Cached {
    at: Instant,
    modified: Option<SystemTime>,
    state: Option<WifiState>,
}

impl WifiWatch {
    pub const REFRESH: Duration = Duration::from_secs(1);

    pub fn new(dir: PathBuf) -> WifiWatch {
        WifiWatch {
            dir,
            cache: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manager's state, as of at most [`Self::REFRESH`] ago; `None`
    /// while it has written none (no manager, or not started yet).
    pub fn state(&self, now: Instant) -> Option<WifiState> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref()
            && now.saturating_duration_since(c.at) < Self::REFRESH
        {
            return c.state.clone();
        }
        let path = self.dir.join(STATE_FILE);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let state = match cache.as_ref() {
            Some(c) if modified.is_some() && c.modified == modified => c.state.clone(),
            _ => std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()),
        };
        *cache = Some(Cached {
            at: now,
            modified,
            state: state.clone(),
        });
        state
    }

    /// Asks the manager for a new scan (it answers in `state.json`).
    pub fn ask_scan(&self) -> std::io::Result<()> {
        std::fs::write(self.dir.join(REQUESTS).join("scan"), b"scan\n")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> WifiState {
        WifiState {
            mode: Mode::Hotspot,
            since_s: 3.0,
            interface: "wlan0".into(),
            radio: true,
            ethernet: false,
            saved_ssid: Some("Home".into()),
            country: Some("GB".into()),
            joined: None,
            hotspot: Hotspot {
                ssid: "Tower-setup-0A1B".into(),
                address: HOTSPOT_ADDRESS,
                open: true,
                clients: 1,
            },
            failure: Some(Failure::WrongPassword),
            failure_text: Some(Failure::WrongPassword.to_string()),
            announce: None,
            retry_in_s: Some(250.0),
            attempts: 1,
            networks: vec![Network {
                ssid: "Home".into(),
                signal_dbm: -40,
                secured: true,
                freq_mhz: 2437,
            }],
        }
    }

    #[test]
    fn the_watch_reads_the_file_once_a_second_and_follows_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let watch = WifiWatch::new(dir.path().to_path_buf());
        let t0 = Instant::now();
        assert_eq!(watch.state(t0), None, "no file yet");
        let mut st = sample();
        std::fs::write(dir.path().join(STATE_FILE), serde_json::to_vec(&st).expect("json")).expect("write");
        assert_eq!(
            watch.state(t0 + Duration::from_millis(500)),
            None,
            "cached for a second"
        );
        assert_eq!(watch.state(t0 + Duration::from_secs(1)).as_ref(), Some(&st));
        assert_eq!(st.led_show(), Some(LedShow::Hotspot));
        st.mode = Mode::Joined;
        st.announce = Some(Ipv4Addr::new(192, 168, 1, 23));
        std::fs::write(dir.path().join(STATE_FILE), serde_json::to_vec(&st).expect("json")).expect("write");
        let later = watch.state(t0 + Duration::from_secs(3)).expect("state");
        assert_eq!(later.led_show(), Some(LedShow::Address(Ipv4Addr::new(192, 168, 1, 23))));
        std::fs::create_dir(dir.path().join(REQUESTS)).expect("mkdir");
        watch.ask_scan().expect("ask");
        assert!(dir.path().join(REQUESTS).join("scan").exists());
    }
}
