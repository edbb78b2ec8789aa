//! The `tower` binary: parse flags, load the configuration, set up logging,
//! run the service until SIGTERM/SIGINT, and map errors to exit codes
//! (0 clean stop, 1 runtime failure, 2 invalid configuration). A restart
//! asked for on the settings page stops the service and starts the same
//! program again in this process (same pid, same arguments).
//!
//! `tower config-commit` is the SD image's root helper that saves what the
//! settings page changed onto the FAT partition (see `config::store`);
//! `tower wifi-manager` runs the image's Wi-Fi and its setup hotspot, and
//! `tower captive-portal` that hotspot's DNS and port 80 (see `wifi`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use tower::config::store::{self, FileStore, NoStore, SpoolStore, Store};
use tower::config::{self, Overrides};
use tower::service::{AdminSetup, Backends, Service, Turn};

/// A LAN radio station: streams the audio input as MP3 to every listener
/// at http://HOST:8000/stream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: /etc/tower/tower.toml if it exists).
    #[arg(long, value_name = "PATH", env = "TOWER_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address and port [default: 0.0.0.0:8000].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Capture device: auto (a sound card with capture, USB first), or an ALSA name [default: auto].
    #[arg(long, value_name = "PCM")]
    device: Option<String>,
    /// The ffmpeg program [default: ffmpeg].
    #[arg(long, value_name = "PATH")]
    ffmpeg: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Save settings changed on the settings page through this spool
    /// directory, for `tower config-commit` running as root (the SD image,
    /// whose FAT partition Tower may not write itself).
    #[arg(long, value_name = "DIR")]
    save_via: Option<PathBuf>,
    /// Read the Wi-Fi state from this directory (`tower wifi-manager`'s,
    /// on the SD image) for the LEDs and the settings page, and save a new
    /// network through --save-via.
    #[arg(long, value_name = "DIR")]
    wifi_via: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the capture devices on this machine, with the exact name to
    /// put in `device`, and exit.
    Devices,
    /// Save the configuration files Tower left in a spool directory (run as
    /// root by the SD image's tower-config-commit.service): each is checked
    /// like the file at start, saved atomically with its .bak, the file
    /// system remounted read-write for the write if it was read-only.
    ConfigCommit {
        /// The spool directory (with in/ and out/).
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// The configuration file to write.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Also copy the file and its .bak here, for Tower to read.
        #[arg(long, value_name = "DIR")]
        publish: Option<PathBuf>,
        /// What to publish while the file does not exist (the packaged
        /// defaults).
        #[arg(long, value_name = "FILE", requires = "publish")]
        default: Option<PathBuf>,
        /// Where a Wi-Fi request (`NAME.wifi`) is saved as `wifi.txt`;
        /// without it such requests are refused.
        #[arg(long, value_name = "FILE")]
        wifi_to: Option<PathBuf>,
        /// The image's wifi.txt reader (`wifi-setup`), whose `--check` must
        /// pass too.
        #[arg(long, value_name = "SCRIPT", requires = "wifi_to")]
        wifi_check: Option<PathBuf>,
    },
    /// Run the SD image's Wi-Fi (as root, tower-wifi.service): join the
    /// network of wifi.txt, or open the setup hotspot when there is none,
    /// it cannot be joined, and no Ethernet cable is in.
    WifiManager {
        #[arg(long, default_value = "wlan0")]
        interface: String,
        #[arg(long, value_name = "FILE", default_value = "/boot/firmware/wifi.txt")]
        wifi_txt: PathBuf,
        /// The image's wifi.txt reader, which makes wpa_supplicant's configuration.
        #[arg(long, value_name = "SCRIPT", default_value = "/usr/local/lib/tower-image/wifi-setup")]
        check: PathBuf,
        /// The state directory (state.json, status, in/).
        #[arg(long, value_name = "DIR", default_value = "/run/tower-wifi")]
        dir: PathBuf,
        /// Tower's configuration (for the port the captive portal sends phones to).
        #[arg(long, value_name = "FILE", default_value = "/run/tower-config/tower.toml")]
        tower_config: PathBuf,
        /// Seconds between two tries of the saved network while the
        /// hotspot is open and no phone is on it.
        #[arg(long, value_name = "S", default_value_t = 300)]
        retry_s: u64,
    },
    /// The setup hotspot's captive portal (tower-captive.service): DNS that
    /// answers every name with ADDRESS, and a redirect on port 80 to
    /// Tower's settings page.
    CaptivePortal {
        #[arg(long, value_name = "ADDRESS")]
        address: std::net::Ipv4Addr,
        #[arg(long, value_name = "PORT")]
        tower_port: u16,
    },
}

/// The `TOWER_*` environment (other variables are never read, so one that
/// is not UTF-8 does not matter); a `TOWER_*` variable that is not UTF-8
/// is an error naming it.
fn tower_env() -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if !name_text.starts_with("TOWER_") {
            continue;
        }
        match (name.clone().into_string(), value.into_string()) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            _ => {
                return Err(config::ConfigError::NotUtf8 {
                    name: name_text.to_string(),
                }
                .to_string());
            }
        }
    }
    Ok(out)
}

/// Where settings changed on the page are saved.
fn store_for(file: Option<&std::path::Path>, save_via: Option<PathBuf>) -> Box<dyn Store> {
    match (save_via, file) {
        (Some(spool), _) => Box::new(SpoolStore::new(
            spool,
            "tower.toml on the SD card's FAT partition (through tower-config-commit)".into(),
        )),
        (None, Some(path)) => Box::new(FileStore {
            path: path.to_path_buf(),
        }),
        (None, None) => Box::new(NoStore),
    }
}

/// Starts this program again in this process, with the same arguments.
fn exec_self(args: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&args[0]));
    std::process::Command::new(program).args(&args[1..]).exec()
}

/// Lets Tower use as many descriptors as the system allows, and shares
/// them: listeners first, the other connections scaled down to the rest
/// (`tower::fdlimit`); what cannot be honoured is said at start.
fn raise_fd_limit(config: &mut config::Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let share = tower::fdlimit::share(limit, config.http.max_listeners, config.http.max_other_connections);
    for note in share.notes() {
        tracing::warn!(component = "service", "{note}");
    }
    config.http.max_listeners = share.listeners;
    config.http.max_other_connections = share.others;
}

/// `tower wifi-manager` and `tower captive-portal`: they run until SIGTERM,
/// and log like Tower.
fn root_helpers(cli: &Cli) -> Option<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch_signals = || {
        for signal in [SIGTERM, SIGINT] {
            if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
                eprintln!("tower: cannot install signal handlers: {e}");
                return false;
            }
        }
        true
    };
    match &cli.command {
        Some(Command::WifiManager {
            interface,
            wifi_txt,
            check,
            dir,
            tower_config,
            retry_s,
        }) => {
            tower::logging::init("info");
            if !watch_signals() {
                return Some(ExitCode::from(1));
            }
            let opts = tower::wifi::manager::Options {
                interface: interface.clone(),
                wifi_txt: wifi_txt.clone(),
                check: check.clone(),
                dir: dir.clone(),
                tower_config: tower_config.clone(),
                ctrl_dir: PathBuf::from("/run/wpa_supplicant"),
                network_dir: PathBuf::from("/run/systemd/network"),
                retry: std::time::Duration::from_secs(*retry_s),
            };
            Some(match tower::wifi::manager::run_manager(opts, &stop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(component = "wifi", "{e}");
                    ExitCode::from(1)
                }
            })
        }
        Some(Command::CaptivePortal { address, tower_port }) => {
            tower::logging::init("info");
            if !watch_signals() {
                return Some(ExitCode::from(1));
            }
            let hostname = tower::http::host::hostname();
            tracing::info!(
                component = "captive",
                "captive portal on {address}: DNS answers every name with {address}; port 80 sends phones to port {tower_port}"
            );
            let dns = std::net::SocketAddrV4::new(*address, 53);
            let http = std::net::SocketAddrV4::new(*address, 80);
            Some(
                match tower::wifi::captive::serve(dns, http, *tower_port, hostname.trim(), stop) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(component = "captive", "{e}");
                        ExitCode::from(1)
                    }
                },
            )
        }
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse();
    if let Some(code) = root_helpers(&cli) {
        return code;
    }
    if let Some(Command::ConfigCommit {
        spool,
        to,
        publish,
        default,
        wifi_to,
        wifi_check,
    }) = &cli.command
    {
        let publish = publish.as_ref().map(|dir| store::Publish {
            dir: dir.clone(),
            default: default.clone(),
        });
        let wifi = wifi_to.as_ref().map(|path| store::WifiTarget {
            path: path.clone(),
            check: wifi_check.clone(),
        });
        return match store::commit(spool, to, wifi.as_ref(), publish.as_ref()) {
            Ok(n) => {
                println!("tower config-commit: {n} saved to {}", to.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tower config-commit: {e}");
                ExitCode::from(1)
            }
        };
    }
    let env = match tower_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("tower: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let file = cli.config.clone().or_else(config::default_file);
    let overrides = Overrides {
        listen: cli.listen,
        device: cli.device,
        ffmpeg: cli.ffmpeg,
    };
    let (loaded, notice) = match store::load_or_backup(file.as_deref(), &env, &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tower: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", loaded.config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Devices) = cli.command {
        let list = tower::audio::devices::list();
        print!("{}", tower::audio::devices::render(&list, &loaded.config.device));
        return ExitCode::SUCCESS;
    }
    let mut cfg = loaded.config.clone();

    // Fewer malloc arenas: threads are many and small, memory is scarce.
    // SAFETY: mallopt is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let target = tower::logging::init(&cfg.log_level);
    raise_fd_limit(&mut cfg);
    let overridden: Vec<String> = loaded.origins.iter().map(|(k, o)| format!("{k} from {o}")).collect();
    tracing::info!(
        component = "service",
        version = env!("CARGO_PKG_VERSION"),
        log = ?target,
        file = ?loaded.file,
        "configuration: {}",
        cfg.to_toml().lines().filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
    );
    if !overridden.is_empty() {
        tracing::info!(
            component = "service",
            "settings not at their default: {}",
            overridden.join(", ")
        );
    }
    for warning in &loaded.warnings {
        tracing::warn!(component = "service", "{warning}");
    }
    if let Some(notice) = &notice {
        tracing::error!(
            component = "service",
            state = "backup",
            reason = "configuration file unusable",
            "{notice}"
        );
    }

    // Handlers only (no blocked mask), so ffmpeg inherits nothing odd. A
    // signal writes a byte on a socket pair the supervisor loop waits on.
    let delivery = UnixStream::pair().and_then(|(read, write)| {
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        SignalDelivery::with_pipe(read, write, SignalOnly, [SIGTERM, SIGINT])
    });
    let mut signals = match delivery {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tower: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let (backends, notes) = match Backends::real(&cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tower: {e}");
            return ExitCode::from(2);
        }
    };
    for note in notes {
        tracing::warn!(component = "encoder", "custom ffmpeg command: {note}");
    }
    let admin = AdminSetup {
        store: store_for(loaded.file.as_deref(), cli.save_via),
        loaded,
        notice,
        wifi: cli
            .wifi_via
            .map(|dir| std::sync::Arc::new(tower::wifi::WifiWatch::new(dir))),
    };
    let mut service = match Service::start(&cfg, backends, Some(admin)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(component = "service", "cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    tower::watchdog::ready(&format!("streaming on http://{}/stream", service.local_addr()));
    // The supervisor loop: a signal stops Tower; a worker that ends is
    // restarted by the service, or ends the process when it cannot be; an
    // order from the owner's page is carried out. It sleeps until one of
    // these happens.
    let outcome = loop {
        if let Some(signal) = signals.pending().next() {
            tower::watchdog::stopping();
            tracing::info!(component = "service", signal, "stopping");
            break Ok(Turn::Continue);
        }
        match service.supervise(Some(signals.get_read().as_raw_fd()), None) {
            Ok(Turn::Continue) => {}
            Ok(Turn::Restart) => break Ok(Turn::Restart),
            Err(fatal) => break Err(fatal),
        }
    };
    let started = std::time::Instant::now();
    let problems = service.stop();
    tracing::info!(
        component = "service",
        elapsed_ms = started.elapsed().as_millis() as u64,
        problems = problems.len(),
        "stopped"
    );
    match outcome {
        Ok(Turn::Restart) => {
            tracing::info!(component = "service", "starting again");
            let e = exec_self(&args);
            eprintln!("tower: cannot start again: {e}");
            ExitCode::from(1)
        }
        Ok(Turn::Continue) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("tower: {fatal}");
            ExitCode::from(1)
        }
    }
}
