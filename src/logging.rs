//! Logging [T2]: journald with structured fields when running under systemd,
//! readable lines on stderr otherwise.
//!
//! Set up once by the binary before anything else starts. Events carry
//! `component`, and state changes `state` and `reason`; journald receives
//! them as the fields COMPONENT, STATE and REASON (`journalctl -o verbose`).
//! The `log` records of dependencies are bridged in.

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

/// True when `journal_stream` (the value of `JOURNAL_STREAM`, which
/// systemd sets to `<dev>:<inode>` of the stream it connected) names the
/// file stderr is (`dev`, `ino`): output really goes to the journal, not to
/// a terminal or file the variable was inherited past.
fn is_journal(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

fn stderr_is_journal() -> bool {
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    let value = std::env::var("JOURNAL_STREAM").ok();
    is_journal(value.as_deref(), stat.st_dev, stat.st_ino)
}

/// Sends panics to the log, so that a panic in any thread (Tower's, which
/// its owner then reports, or a dependency's) is one line in the journal
/// with its thread and place, instead of unstructured text on stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(
            component = "panic",
            thread,
            place,
            "thread {thread} panicked at {place}: {message}"
        );
    }));
}

/// Installs the global subscriber. `level` is the configured level;
/// `RUST_LOG`, when set, takes precedence (for debugging).
pub fn init(level: &str) -> LogTarget {
    install_panic_hook();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        // tracing-journald prefixes field names with "F_" unless told not to;
        // the journal fields are COMPONENT, STATE and REASON.
        let layer = journald.with_syslog_identifier("tower".into()).with_field_prefix(None);
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

#[cfg(test)]
mod tests {
    use super::is_journal;

    #[test]
    fn journald_only_when_journal_stream_names_our_stderr() {
        assert!(is_journal(Some("8:1234"), 8, 1234));
        assert!(!is_journal(Some("8:1234"), 8, 999), "inherited past a redirect");
        assert!(!is_journal(Some("garbage"), 8, 1234));
        assert!(!is_journal(None, 8, 1234));
    }
}
