//! The `tower` binary: parse flags, load the configuration, set up logging,
//! run the service until SIGTERM/SIGINT, and map errors to exit codes
//! (0 clean stop, 1 runtime failure, 2 invalid configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use tower::config::{self, Overrides};
use tower::service::{Backends, Service};

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the capture devices on this machine, with the exact name to
    /// put in `device`, and exit.
    Devices,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let file = cli.config.clone().or_else(config::default_file);
    let overrides = Overrides {
        listen: cli.listen,
        device: cli.device,
        ffmpeg: cli.ffmpeg,
    };
    let loaded = match config::load(file.as_deref(), &env, &overrides) {
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
    let mut cfg = loaded.config;

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
    let mut service = match Service::start(&cfg, backends) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(component = "service", "cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    tower::watchdog::ready(&format!("streaming on http://{}/stream", service.local_addr()));
    // The supervisor loop: a signal stops Tower; a worker that ends is
    // restarted by the service, or ends the process when it cannot be. It
    // sleeps until one of these happens.
    let outcome = loop {
        if let Some(signal) = signals.pending().next() {
            tower::watchdog::stopping();
            tracing::info!(component = "service", signal, "stopping");
            break Ok(());
        }
        if let Err(fatal) = service.supervise(Some(signals.get_read().as_raw_fd()), None) {
            break Err(fatal);
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
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("tower: {fatal}");
            ExitCode::from(1)
        }
    }
}
