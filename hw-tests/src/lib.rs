//! Shared by the hardware checks: the configuration, as Tower reads it.

use tower::config::{self, Config, Overrides};

/// The configuration from `--config PATH` (or /etc/tower/tower.toml) and the
/// environment, as the `tower` binary would load it; exits on error.
pub fn config() -> Config {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .or_else(config::default_file);
    let env: Vec<(String, String)> = std::env::vars().collect();
    match config::load(path.as_deref(), &env, &Overrides::default()) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    }
}

/// Logs to stderr, as the binary does.
pub fn logging() {
    tower::logging::init("info");
}
