//! Logging [T2]: journald with structured fields when running under systemd,
//! readable lines on stderr otherwise.
//!
//! Set up once by the binary before anything else starts. Events carry
//! `component`, and state changes `state` and `reason`; journald receives
//! them as the fields COMPONENT, STATE and REASON (`journalctl -o verbose`).
//! tiny_http's `log` records are bridged in.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
}

/// True when stderr is connected to the journal: systemd sets
/// `JOURNAL_STREAM=<dev>:<inode>` of the stream it gave us.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

/// Installs the global subscriber. `level` is the configured level;
/// `RUST_LOG`, when set, takes precedence (for debugging).
pub fn init(level: &str) -> LogTarget {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},tiny_http=warn")));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let layer = journald.with_syslog_identifier("tower".into());
        if tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
            .is_ok()
        {
            return LogTarget::Journald;
        }
        return LogTarget::Stderr;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    LogTarget::Stderr
}
