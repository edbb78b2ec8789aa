//! `tower wifi-manager`: the SD image's Wi-Fi, run as root by
//! tower-wifi.service [W1]–[W5]. One thread (the process's main thread)
//! looks at the world twice a second, asks the pure [`Plan`] what to do,
//! and does it:
//!
//! - `wifi.txt` is read whenever it changes, and turned into
//!   wpa_supplicant's configuration by the image's own reader
//!   (`wifi-setup --check`); its verdict also goes to the one-line
//!   `status` file, as before the hotspot existed.
//! - wpa_supplicant runs as this process's child (it dies with it), with
//!   the saved network (joining), no network (idle: scans only) or the
//!   hotspot (`mode=2`, WPA2, [`crate::wifi::HOTSPOT_PASSWORD`]); a change
//!   of mode starts it again with the new configuration. Its control
//!   socket gives the link's state and the events the plan counts.
//! - For the hotspot, a runtime systemd-networkd file gives the interface
//!   [`crate::wifi::HOTSPOT_ADDRESS`] and a DHCP server that names it as
//!   the DNS server, and tower-captive.service (the captive portal,
//!   unprivileged) is started; both are undone when the hotspot closes.
//!   Just before it opens, the radio scans, so the page can list the
//!   networks around.
//! - `state.json` says what it does (for Tower's LEDs and pages), and
//!   `in/scan`, left by Tower, asks for a new scan.
//!
//! Every change of mode is one journal line with its reason.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::plan::{Event, Link, Mode, Plan, Saved, Seen, Want};
use super::wpa::{self, Ctrl, Said};
use super::{HOTSPOT_ADDRESS, HOTSPOT_PASSWORD, HOTSPOT_PREFIX, Hotspot, Joined, Network, WifiState, txt};

/// How often the manager looks.
const TURN: Duration = Duration::from_millis(500);
/// How long to wait for the radio at start (it comes seconds into the
/// boot, or never on a board without one).
const RADIO_WITHIN: Duration = Duration::from_secs(30);
/// How long a scan may take before the hotspot opens without it.
const SCAN_WITHIN: Duration = Duration::from_secs(8);
/// How often the scan results and the signal are read again.
const REFRESH: Duration = Duration::from_secs(10);
/// The state file is written on every change, and at least this often.
const STATE_EVERY: Duration = Duration::from_secs(5);
/// The hotspot's channel (6).
const HOTSPOT_MHZ: u32 = 2437;
/// The runtime network file that turns the interface into the hotspot.
const HOTSPOT_NETWORK: &str = "05-tower-hotspot.network";
const CAPTIVE_UNIT: &str = "tower-captive.service";

/// Where everything is (the image's paths by default; see `main.rs`).
#[derive(Debug, Clone)]
pub struct Options {
    pub interface: String,
    pub wifi_txt: PathBuf,
    /// The image's `wifi-setup`, whose `--check` makes the configuration.
    pub check: PathBuf,
    /// The state directory (`state.json`, `status`, `in/`).
    pub dir: PathBuf,
    /// Tower's configuration as published (for the port the captive portal
    /// sends phones to).
    pub tower_config: PathBuf,
    /// wpa_supplicant's control directory.
    pub ctrl_dir: PathBuf,
    /// systemd-networkd's runtime directory.
    pub network_dir: PathBuf,
    pub retry: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot use {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
}

/// `wifi.txt` as last read.
struct SavedFile {
    bytes: Option<Vec<u8>>,
    modified: Option<std::time::SystemTime>,
    generation: u64,
    saved: Saved,
    /// wpa_supplicant's configuration for it, when it works.
    config: Option<String>,
    country: Option<String>,
    warnings: String,
}

impl SavedFile {
    fn new() -> SavedFile {
        SavedFile {
            bytes: None,
            modified: None,
            generation: 0,
            saved: Saved::None,
            config: None,
            country: None,
            warnings: String::new(),
        }
    }

    /// Reads the file again if it changed; true when it did.
    fn refresh(&mut self, opts: &Options) -> bool {
        let bytes = std::fs::read(&opts.wifi_txt).ok();
        let modified = std::fs::metadata(&opts.wifi_txt).and_then(|m| m.modified()).ok();
        if bytes == self.bytes && modified == self.modified && self.generation > 0 {
            return false;
        }
        self.generation += 1;
        self.bytes = bytes;
        self.modified = modified;
        self.config = None;
        self.warnings.clear();
        self.country = None;
        let Some(bytes) = &self.bytes else {
            self.saved = Saved::None;
            return true;
        };
        let name = opts.wifi_txt.display().to_string();
        let parsed = txt::parse(bytes, &name);
        match reader(&opts.check, &opts.wifi_txt) {
            Ok((config, warnings)) => {
                let (ssid, country) = parsed.map_or((String::new(), None), |t| (t.ssid, t.country));
                self.saved = Saved::Network {
                    ssid,
                    generation: self.generation,
                };
                self.config = Some(config);
                self.country = country;
                self.warnings = warnings;
            }
            Err(why) => self.saved = Saved::Invalid(why),
        }
        true
    }

    /// The one-line status (`ok: …` or `error: …`), or none without a file.
    fn status_line(&self, interface: &str) -> Option<String> {
        match &self.saved {
            Saved::None => None,
            Saved::Invalid(why) => Some(format!("error: {why}")),
            Saved::Network { ssid, .. } => Some(format!(
                "ok: joining \"{ssid}\" on {interface}{}",
                if self.warnings.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.warnings)
                }
            )),
        }
    }
}

/// The image's reader on `file`: the configuration and its warnings, or
/// the first error.
fn reader(script: &Path, file: &Path) -> Result<(String, String), String> {
    let out = Command::new("sh")
        .arg(script)
        .arg("--check")
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(stderr
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .map_or_else(|| format!("{} could not be read", file.display()), str::to_string));
    }
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), warnings.join("; ")))
}

/// What wpa_supplicant runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Station(String),
    Hotspot(String),
}

impl Role {
    fn text(&self) -> &str {
        match self {
            Role::Station(t) | Role::Hotspot(t) => t,
        }
    }
}

/// The radio: wpa_supplicant (a child), its control sockets, and whether
/// the hotspot's network and captive portal are set up.
struct Radio {
    opts: Options,
    child: Option<Child>,
    role: Option<Role>,
    cmd: Option<Ctrl>,
    events: Option<Ctrl>,
    hotspot_up: bool,
    phones: BTreeSet<String>,
    networks: Vec<Network>,
    scanned_at: Option<Instant>,
    signal: Option<(i32, u32)>,
    signal_at: Option<Instant>,
}

impl Radio {
    fn new(opts: Options) -> Radio {
        Radio {
            opts,
            child: None,
            role: None,
            cmd: None,
            events: None,
            hotspot_up: false,
            phones: BTreeSet::new(),
            networks: Vec::new(),
            scanned_at: None,
            signal: None,
            signal_at: None,
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.opts.dir.join("wpa_supplicant.conf")
    }

    /// The first lines of every configuration.
    fn base(&self, country: Option<&str>) -> String {
        let mut text = format!("ctrl_interface={}\n", self.opts.ctrl_dir.display());
        if let Some(c) = country {
            text.push_str(&format!("country={c}\n"));
        }
        text
    }

    fn hotspot_ssid(&self) -> String {
        let mac =
            std::fs::read_to_string(format!("/sys/class/net/{}/address", self.opts.interface)).unwrap_or_default();
        hotspot_ssid(&mac)
    }

    fn hotspot_conf(&self, country: Option<&str>) -> String {
        format!(
            "{}network={{\n\tssid=\"{}\"\n\tmode=2\n\tfrequency={HOTSPOT_MHZ}\n\tkey_mgmt=WPA-PSK\n\tproto=RSN\n\tpairwise=CCMP\n\tgroup=CCMP\n\tpsk=\"{HOTSPOT_PASSWORD}\"\n}}\n",
            self.base(country),
            self.hotspot_ssid()
        )
    }

    /// Makes the radio do `want`.
    fn apply(&mut self, want: Want, saved: &SavedFile) {
        let country = saved.country.as_deref();
        let role = match (want, &saved.config) {
            (Want::Hotspot, _) => Role::Hotspot(self.hotspot_conf(country)),
            (Want::Station, Some(config)) => Role::Station(config.clone()),
            _ => Role::Station(self.base(country)),
        };
        if self.role.as_ref() == Some(&role) && self.child_running() {
            return;
        }
        let to_hotspot = matches!(role, Role::Hotspot(_));
        if to_hotspot && !matches!(self.role, Some(Role::Hotspot(_))) {
            self.scan_now();
        }
        if !to_hotspot && self.hotspot_up {
            self.hotspot_network(false);
        }
        if to_hotspot && !self.hotspot_up {
            self.hotspot_network(true);
        }
        self.start(role);
    }

    /// (Re)starts wpa_supplicant with `role`'s configuration.
    fn start(&mut self, role: Role) {
        self.stop_child();
        let conf = self.conf_path();
        if let Err(e) = write_private(&conf, role.text()) {
            tracing::error!(component = "wifi", "cannot write {}: {e}", conf.display());
            return;
        }
        let mut cmd = Command::new("wpa_supplicant");
        cmd.arg("-i")
            .arg(&self.opts.interface)
            .arg("-D")
            .arg("nl80211")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls prctl, which is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => self.child = Some(child),
            Err(e) => {
                tracing::error!(component = "wifi", "cannot start wpa_supplicant: {e}");
                return;
            }
        }
        self.role = Some(role);
        self.phones.clear();
        self.signal = None;
        self.connect();
    }

    /// Opens the two control sockets (commands, events), waiting up to 5 s
    /// for wpa_supplicant to make its own.
    fn connect(&mut self) {
        let ctrl = self.opts.ctrl_dir.join(&self.opts.interface);
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = std::process::id();
        loop {
            let opened = Ctrl::open(&ctrl, self.opts.dir.join(format!("ctrl-{pid}-cmd")))
                .and_then(|c| Ctrl::open(&ctrl, self.opts.dir.join(format!("ctrl-{pid}-events"))).map(|e| (c, e)))
                .and_then(|(c, e)| e.attach().map(|()| (c, e)));
            match opened {
                Ok((c, e)) => {
                    self.cmd = Some(c);
                    self.events = Some(e);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(component = "wifi", "no control socket {}: {e}", ctrl.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether wpa_supplicant still runs. One that died (a crash, its
    /// interface gone and back) is forgotten, with the phones it had, so
    /// that [`Radio::apply`] starts it again: else a hotspot's phone would
    /// stay counted and hold off the retry of the saved network forever.
    fn child_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::warn!(component = "wifi", "wpa_supplicant ended ({status}); starting it again");
                self.child = None;
                self.cmd = None;
                self.events = None;
                self.phones.clear();
                false
            }
            Err(_) => true,
        }
    }

    /// Undoes a hotspot left set up by a manager that ended without
    /// undoing it (a crash, a kill): its network file would otherwise give
    /// the interface a static address and a DHCP server on whichever
    /// network it joins next.
    fn clear_leftover_hotspot(&mut self) {
        if self.opts.network_dir.join(HOTSPOT_NETWORK).exists() {
            tracing::warn!(
                component = "wifi",
                "undoing the setup hotspot's network left by the last run"
            );
            self.hotspot_network(false);
        }
    }

    fn stop_child(&mut self) {
        self.cmd = None;
        self.events = None;
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.role = None;
    }

    fn request(&self, command: &str) -> Option<String> {
        self.cmd.as_ref().and_then(|c| c.request(command).ok())
    }

    /// A scan, waited for (up to [`SCAN_WITHIN`]), before the hotspot
    /// opens: the page lists what it found.
    fn scan_now(&mut self) {
        if self.request("SCAN").is_none_or(|a| !a.starts_with("OK")) {
            return;
        }
        let deadline = Instant::now() + SCAN_WITHIN;
        while Instant::now() < deadline {
            let done = self
                .events
                .as_ref()
                .and_then(|e| e.events().ok())
                .is_some_and(|list| list.iter().any(|t| wpa::event(t) == Some(Said::ScanDone)));
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.read_scan();
    }

    fn read_scan(&mut self) {
        if let Some(answer) = self.request("SCAN_RESULTS") {
            let list = wpa::scan_results(&answer);
            if !list.is_empty() || !matches!(self.role, Some(Role::Hotspot(_))) {
                self.networks = list;
            }
            self.scanned_at = Some(Instant::now());
        }
    }

    /// Asks for a scan; the results are read when it is done.
    fn ask_scan(&mut self) {
        let answer = self.request("SCAN").unwrap_or_default();
        tracing::info!(
            component = "wifi",
            "scan asked for from the settings page: {}",
            answer.trim()
        );
    }

    /// Events since the last look: for the plan, the hotspot's phones, scans.
    fn events(&mut self) -> Vec<Event> {
        let texts = self.events.as_ref().and_then(|e| e.events().ok()).unwrap_or_default();
        let mut out = Vec::new();
        for t in texts {
            match wpa::event(&t) {
                Some(Said::Plan(e)) => out.push(e),
                Some(Said::PhoneJoined(mac)) => {
                    tracing::info!(component = "wifi", "a phone joined the setup hotspot ({mac})");
                    self.phones.insert(mac);
                }
                Some(Said::PhoneLeft(mac)) => {
                    self.phones.remove(&mac);
                }
                Some(Said::ScanDone) => self.read_scan(),
                None => {}
            }
        }
        out
    }

    /// The station's link (never the hotspot's).
    fn link(&mut self) -> (Link, Option<String>) {
        if !matches!(self.role, Some(Role::Station(_))) {
            return (Link::Down, None);
        }
        let Some(status) = self.request("STATUS") else {
            return (Link::Down, None);
        };
        let f = wpa::fields(&status);
        let station = f.get("mode").is_none_or(|m| m == "station");
        if !station || f.get("wpa_state").map(String::as_str) != Some("COMPLETED") {
            return (Link::Down, None);
        }
        let ssid = f.get("ssid").map(|s| wpa::unescape(s));
        match ipv4_of(&self.opts.interface).filter(|a| *a != HOTSPOT_ADDRESS) {
            Some(addr) => (Link::Up(addr), ssid),
            None => (Link::Associated, ssid),
        }
    }

    /// The signal of the network joined (dBm, MHz), read every [`REFRESH`].
    fn signal(&mut self, now: Instant) -> Option<(i32, u32)> {
        if self
            .signal_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH)
        {
            self.signal_at = Some(now);
            self.signal = self.request("SIGNAL_POLL").and_then(|a| {
                let f = wpa::fields(&a);
                Some((f.get("RSSI")?.parse().ok()?, f.get("FREQUENCY")?.parse().ok()?))
            });
        }
        self.signal
    }

    /// Sets up (or undoes) the hotspot's address, DHCP server and captive
    /// portal.
    fn hotspot_network(&mut self, up: bool) {
        let file = self.opts.network_dir.join(HOTSPOT_NETWORK);
        if up {
            let port = tower_port(&self.opts.tower_config);
            let env = format!("CAPTIVE_ARGS=--address {HOTSPOT_ADDRESS} --tower-port {port}\n");
            // Readable by systemd-networkd (its own user); nothing secret in it.
            if let Err(e) = std::fs::create_dir_all(&self.opts.network_dir)
                .and_then(|()| write_public(&file, &hotspot_network(&self.opts.interface)))
                .and_then(|()| std::fs::write(self.opts.dir.join("captive.env"), env))
            {
                tracing::error!(component = "wifi", "cannot set up the hotspot's network: {e}");
            }
        } else {
            let _ = std::fs::remove_file(&file);
            run("systemctl", &["stop", CAPTIVE_UNIT]);
        }
        run("networkctl", &["reload"]);
        run("networkctl", &["reconfigure", &self.opts.interface]);
        if up {
            run("systemctl", &["start", "--no-block", CAPTIVE_UNIT]);
        }
        self.hotspot_up = up;
    }

    fn shutdown(&mut self) {
        if self.hotspot_up {
            self.hotspot_network(false);
        }
        self.stop_child();
    }
}

/// `Tower-setup-` and the MAC's last four hex digits.
pub fn hotspot_ssid(mac: &str) -> String {
    let hex: String = mac.trim().chars().filter(char::is_ascii_hexdigit).collect();
    let tail = hex.get(hex.len().saturating_sub(4)..).unwrap_or("");
    format!("{HOTSPOT_PREFIX}{}", tail.to_ascii_uppercase())
}

/// systemd-networkd's file for the hotspot: the address, a DHCP server
/// that gives phones Tower as their router and DNS server.
pub fn hotspot_network(interface: &str) -> String {
    format!(
        "# tower wifi-manager: the setup hotspot (removed when it closes).\n\
         [Match]\nName={interface}\n\n\
         [Network]\nAddress={HOTSPOT_ADDRESS}/24\nDHCPServer=yes\nConfigureWithoutCarrier=yes\n\
         MulticastDNS=no\nLLMNR=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n\n\
         [DHCPServer]\nPoolOffset=10\nPoolSize=40\nEmitDNS=yes\nDNS={HOTSPOT_ADDRESS}\nEmitRouter=yes\nDefaultLeaseTimeSec=600\n"
    )
}

/// The port of Tower's `listen`, from its configuration (8000 if that
/// cannot be read).
fn tower_port(config: &Path) -> u16 {
    crate::config::load(Some(config), &[], &crate::config::Overrides::default())
        .ok()
        .and_then(|l| l.config.listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .unwrap_or(8000)
}

fn run(program: &str, args: &[&str]) {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            component = "wifi",
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!(component = "wifi", "cannot run {program}: {e}"),
    }
}

/// Writes a file only root may read (a wpa_supplicant configuration holds
/// a key), through a temporary file.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// Writes a file every user may read, whole (a reader never sees half).
fn write_public(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// The interface's IPv4 address, if it has one.
fn ipv4_of(interface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        (ifa.interface_name == interface)
            .then(|| ifa.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
            .flatten()
    })
}

/// An Ethernet link: carrier on any wired interface (`eth*`, `en*`,
/// `usb*`).
fn wired_link() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        let wired = name.starts_with("eth") || name.starts_with("en") || name.starts_with("usb");
        wired && std::fs::read_to_string(e.path().join("carrier")).is_ok_and(|c| c.trim() == "1")
    })
}

/// Runs until `stop` is set (SIGTERM).
pub fn run_manager(opts: Options, stop: &AtomicBool) -> Result<(), ManagerError> {
    let dir_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManagerError::Dir { path, source }
    };
    std::fs::create_dir_all(&opts.dir).map_err(dir_error(&opts.dir))?;
    let start = Instant::now();
    let mut saved = SavedFile::new();
    let status_file = opts.dir.join("status");
    let radio_path = PathBuf::from("/sys/class/net").join(&opts.interface);
    let mut radio = Radio::new(opts.clone());
    radio.clear_leftover_hotspot();
    let mut plan = Plan::new(start, opts.retry);
    let mut last_state: Option<(WifiState, Instant)> = None;
    let mut last_mode: Option<(Mode, Option<String>)> = None;
    let mut refreshed = start;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if saved.refresh(&opts) {
            match saved.status_line(&opts.interface) {
                Some(line) => {
                    tracing::info!(component = "wifi", "tower-wifi: {line}");
                    let _ = write_public(&status_file, &format!("{line}\n"));
                }
                None => {
                    let _ = std::fs::remove_file(&status_file);
                }
            }
        }
        let have_radio = radio_path.exists();
        if !have_radio {
            if now.saturating_duration_since(start) >= RADIO_WITHIN && !matches!(saved.saved, Saved::None) {
                let line = format!(
                    "error: no Wi-Fi radio ({}) after {} s; this board may have none",
                    opts.interface,
                    RADIO_WITHIN.as_secs()
                );
                if std::fs::read_to_string(&status_file).ok().as_deref() != Some(&format!("{line}\n")) {
                    tracing::warn!(component = "wifi", "tower-wifi: {line}");
                    let _ = write_public(&status_file, &format!("{line}\n"));
                }
            }
            std::thread::sleep(TURN);
            continue;
        }
        for event in radio.events() {
            plan.event(event, now);
        }
        let (link, joined_ssid) = radio.link();
        let seen = Seen {
            ethernet: wired_link(),
            saved: saved.saved.clone(),
            link,
            clients: radio.phones.len(),
        };
        let want = plan.step(&seen, now);
        radio.apply(want, &saved);
        if now.saturating_duration_since(refreshed) >= REFRESH && matches!(radio.role, Some(Role::Station(_))) {
            refreshed = now;
            radio.read_scan();
        }
        let scan_request = opts.dir.join(super::REQUESTS).join("scan");
        if std::fs::remove_file(&scan_request).is_ok() {
            radio.ask_scan();
        }
        let mode_now = (plan.mode(), plan.failure().map(ToString::to_string));
        if last_mode.as_ref() != Some(&mode_now) {
            log_mode(&plan, &seen, &radio, now);
            last_mode = Some(mode_now);
        }
        let state = describe(&plan, &seen, &saved, &mut radio, joined_ssid, now);
        let due = last_state
            .as_ref()
            .is_none_or(|(old, at)| !same_but_times(old, &state) || now.saturating_duration_since(*at) >= STATE_EVERY);
        if due {
            match serde_json::to_string_pretty(&state) {
                Ok(json) => {
                    if let Err(e) = write_public(&opts.dir.join(super::STATE_FILE), &format!("{json}\n")) {
                        tracing::warn!(component = "wifi", "cannot write the state file: {e}");
                    }
                }
                Err(e) => tracing::warn!(component = "wifi", "cannot encode the state: {e}"),
            }
            last_state = Some((state, now));
        }
        std::thread::sleep(TURN);
    }
    radio.shutdown();
    Ok(())
}

fn same_but_times(a: &WifiState, b: &WifiState) -> bool {
    let strip = |s: &WifiState| WifiState {
        since_s: 0.0,
        retry_in_s: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

fn log_mode(plan: &Plan, seen: &Seen, radio: &Radio, now: Instant) {
    let why = plan.failure().map(|f| format!(": {f}")).unwrap_or_default();
    match plan.mode() {
        Mode::Starting => tracing::info!(component = "wifi", state = "starting", "wifi: looking for a network"),
        Mode::Ethernet => {
            tracing::info!(
                component = "wifi",
                state = "ethernet",
                "wifi: an Ethernet link: no setup hotspot"
            )
        }
        Mode::Joining => {
            let ssid = match &seen.saved {
                Saved::Network { ssid, .. } => ssid.as_str(),
                _ => "",
            };
            tracing::info!(component = "wifi", state = "joining", "wifi: joining \"{ssid}\"")
        }
        Mode::Joined => {
            let addr = match seen.link {
                Link::Up(a) => a.to_string(),
                _ => "?".into(),
            };
            let announce = plan.announce(now).map(|_| " (the LEDs flash it)").unwrap_or("");
            tracing::info!(
                component = "wifi",
                state = "joined",
                "wifi: joined, address {addr}{announce}"
            )
        }
        Mode::Hotspot => tracing::warn!(
            component = "wifi",
            state = "hotspot",
            reason = %plan.failure().map(ToString::to_string).unwrap_or_default(),
            "wifi: setup hotspot \"{}\" open{why}",
            radio.hotspot_ssid()
        ),
    }
}

fn describe(
    plan: &Plan,
    seen: &Seen,
    saved: &SavedFile,
    radio: &mut Radio,
    joined_ssid: Option<String>,
    now: Instant,
) -> WifiState {
    let joined = match seen.link {
        Link::Up(addr) => {
            let signal = radio.signal(now);
            Some(Joined {
                ssid: joined_ssid.unwrap_or_default(),
                address: Some(addr),
                signal_dbm: signal.map(|s| s.0),
                freq_mhz: signal.map(|s| s.1),
            })
        }
        Link::Associated => Some(Joined {
            ssid: joined_ssid.unwrap_or_default(),
            address: None,
            signal_dbm: None,
            freq_mhz: None,
        }),
        Link::Down => None,
    };
    WifiState {
        mode: plan.mode(),
        since_s: plan.since(now).as_secs_f64(),
        interface: radio.opts.interface.clone(),
        radio: true,
        ethernet: seen.ethernet,
        saved_ssid: match &saved.saved {
            Saved::Network { ssid, .. } => Some(ssid.clone()),
            _ => None,
        },
        country: saved.country.clone(),
        joined,
        hotspot: Hotspot {
            ssid: radio.hotspot_ssid(),
            address: HOTSPOT_ADDRESS,
            open: plan.mode() == Mode::Hotspot,
            clients: radio.phones.len(),
        },
        failure: plan.failure().cloned(),
        failure_text: plan.failure().map(ToString::to_string),
        announce: plan.announce(now),
        retry_in_s: plan.retry_in(now).map(|d| d.as_secs_f64()),
        attempts: plan.attempts,
        networks: radio.networks.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hotspot_is_named_after_the_mac() {
        assert_eq!(hotspot_ssid("b8:27:eb:12:3a:bc\n"), "Tower-setup-3ABC");
        assert_eq!(hotspot_ssid("02:00:00:00:00:00"), "Tower-setup-0000");
        assert_eq!(hotspot_ssid(""), "Tower-setup-");
    }

    #[test]
    fn the_hotspot_network_gives_phones_tower_as_router_and_dns() {
        let text = hotspot_network("wlan0");
        for line in [
            "Name=wlan0",
            "Address=192.168.4.1/24",
            "DHCPServer=yes",
            "DNS=192.168.4.1",
            "EmitDNS=yes",
            "EmitRouter=yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn the_status_line_is_the_one_the_script_wrote() {
        let mut f = SavedFile::new();
        assert_eq!(f.status_line("wlan0"), None);
        f.saved = Saved::Invalid("/boot/firmware/wifi.txt: the password (psk=) is 7 characters long".into());
        assert_eq!(
            f.status_line("wlan0").as_deref(),
            Some("error: /boot/firmware/wifi.txt: the password (psk=) is 7 characters long")
        );
        f.saved = Saved::Network {
            ssid: "Tower selftest".into(),
            generation: 1,
        };
        assert_eq!(
            f.status_line("wlan0").as_deref(),
            Some("ok: joining \"Tower selftest\" on wlan0")
        );
        f.warnings = "warning: no country= in wifi.txt".into();
        assert_eq!(
            f.status_line("wlan0").as_deref(),
            Some("ok: joining \"Tower selftest\" on wlan0 (warning: no country= in wifi.txt)")
        );
    }

    #[test]
    fn the_reader_script_is_asked_and_its_error_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let script = dir.path().join("wifi-setup");
        std::fs::write(
            &script,
            "grep -q ok \"$2\" && { echo 'network={}'; echo 'warning: no country=' >&2; exit 0; }\necho \"error: $2: broken\" >&2\nexit 1\n",
        )
        .expect("script");
        let file = dir.path().join("wifi.txt");
        std::fs::write(&file, "ssid=ok\n").expect("write");
        assert_eq!(
            reader(&script, &file),
            Ok(("network={}\n".into(), "warning: no country=".into()))
        );
        std::fs::write(&file, "ssid=bad\n").expect("write");
        assert_eq!(reader(&script, &file), Err(format!("{}: broken", file.display())));
        // A change of the file is a new generation; the same file is not.
        let opts = Options {
            check: script,
            ..options_in(dir.path(), "wlan0")
        };
        let mut f = SavedFile::new();
        assert!(f.refresh(&opts));
        assert!(matches!(f.saved, Saved::Invalid(_)));
        assert!(!f.refresh(&opts), "unchanged");
        std::fs::write(&file, "ssid=ok\n").expect("write");
        assert!(f.refresh(&opts));
        assert_eq!(
            f.saved,
            Saved::Network {
                ssid: "ok".into(),
                generation: 2
            }
        );
        std::fs::remove_file(&file).expect("rm");
        assert!(f.refresh(&opts));
        assert_eq!(f.saved, Saved::None);
    }

    /// Everything under `dir`, for `interface`.
    fn options_in(dir: &Path, interface: &str) -> Options {
        Options {
            interface: interface.into(),
            wifi_txt: dir.join("wifi.txt"),
            check: dir.join("wifi-setup"),
            dir: dir.to_path_buf(),
            tower_config: dir.join("tower.toml"),
            ctrl_dir: dir.join("ctrl"),
            network_dir: dir.join("network"),
            retry: Duration::from_secs(300),
        }
    }

    fn radio_in(dir: &Path) -> Radio {
        Radio::new(options_in(dir, "tower-test-none"))
    }

    #[test]
    fn a_wpa_supplicant_that_died_is_started_again_and_its_phones_forgotten() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut radio = radio_in(dir.path());
        assert!(!radio.child_running());
        let mut child = Command::new("true").spawn().expect("true");
        let _ = child.wait();
        radio.child = Some(child);
        radio.phones.insert("02:00:00:00:02:00".into());
        assert!(!radio.child_running(), "an ended child is not running");
        assert!(radio.child.is_none() && radio.phones.is_empty());
        radio.child = Some(Command::new("sleep").arg("30").spawn().expect("sleep"));
        assert!(radio.child_running());
        radio.stop_child();
    }

    #[test]
    fn a_hotspot_network_left_by_the_last_run_is_undone_at_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut radio = radio_in(dir.path());
        let file = dir.path().join("network").join(HOTSPOT_NETWORK);
        std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
        std::fs::write(&file, hotspot_network("tower-test-none")).expect("write");
        radio.clear_leftover_hotspot();
        assert!(!file.exists(), "the static address and DHCP server are gone");
        assert!(!radio.hotspot_up);
    }
}
