//! Test hooks: faults a test can inject into a running Tower.
//!
//! Off unless the process was started with `TOWER_TEST_HOOKS=<token>` (a
//! token of at least [`MIN_TOKEN`] characters); then
//! `POST /test/stall?thread=capture|pump&ms=N` with `Authorization: Bearer
//! <token>` makes that thread stop working for N ms at its next turn, the
//! way a slow SD card or a starved CPU would. Integration tests use it to
//! cause real overruns (the sound card's buffer fills while capture sleeps)
//! and a hung pump (the watchdog must notice). `POST
//! /test/panic?worker=capture|pump|broadcast|http|leds|icecast` makes that
//! worker panic at its next turn, to prove the service notices a dead
//! thread. These are the only routes that change state, hence the token. A
//! production unit never sets the variable; without it the routes answer
//! 404 like any unknown path.
//!
//! The hooks exist only in builds with the Cargo feature `test-hooks` (on
//! by default, so `cargo test` drives them; the `.deb` and the SD image
//! are built without it): there, a token is refused with one warning and
//! the points where the threads would stall or panic compile to nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::worker::StopSignal;

/// The environment variable that enables the hooks.
pub const ENV: &str = "TOWER_TEST_HOOKS";
/// The shortest token that enables the hooks.
pub const MIN_TOKEN: usize = 16;
/// The longest stall a hook may ask for.
pub const MAX_STALL: Duration = Duration::from_secs(60);

/// A hook request that cannot be carried out (the HTTP answer's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("test hooks are disabled")]
    Disabled,
    #[error("ms must be 1..={0}")]
    StallLength(u64),
    #[error("unknown thread {0:?}; use capture or pump")]
    UnknownThread(String),
    #[error("unknown worker {0:?}; use one of capture, pump, broadcast, http, leds, icecast")]
    UnknownWorker(String),
}

#[derive(Debug, Default)]
pub struct TestHooks {
    /// The token requests must carry; `None`: hooks off.
    token: Option<String>,
    capture_stall_ms: AtomicU64,
    pump_stall_ms: AtomicU64,
    /// One flag per worker in [`PANIC_TARGETS`] order.
    panic: [AtomicBool; 6],
}

/// A worker `POST /test/panic?worker=` can make panic (index into
/// [`PANIC_TARGETS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicTarget {
    Capture,
    Pump,
    Broadcast,
    Http,
    Leds,
    Icecast,
}

/// The workers `POST /test/panic?worker=` can make panic.
pub const PANIC_TARGETS: [&str; 6] = ["capture", "pump", "broadcast", "http", "leds", "icecast"];

impl TestHooks {
    /// Hooks that can never fire.
    pub fn disabled() -> Self {
        TestHooks::default()
    }

    /// Enabled with `token`, if it is long enough (else off, and said so).
    pub fn with_token(token: &str) -> Self {
        if !cfg!(feature = "test-hooks") {
            tracing::warn!(
                component = "hooks",
                "{ENV} is set but this build has no test hooks (Cargo feature test-hooks): ignored"
            );
            return TestHooks::disabled();
        }
        if token.chars().count() < MIN_TOKEN {
            tracing::warn!(
                component = "hooks",
                "{ENV} is set but shorter than {MIN_TOKEN} characters: test hooks stay off"
            );
            return TestHooks::disabled();
        }
        tracing::warn!(component = "hooks", "test hooks are on ({ENV}): never in production");
        TestHooks {
            token: Some(token.to_string()),
            ..TestHooks::default()
        }
    }

    /// Enabled when `TOWER_TEST_HOOKS` holds a token.
    pub fn from_env() -> Self {
        match std::env::var(ENV) {
            Ok(t) => TestHooks::with_token(&t),
            Err(_) => TestHooks::disabled(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Whether an `Authorization` header value carries the token.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else { return false };
        let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        // Compare every byte, so timing does not tell how much matched.
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Asks `thread` ("capture" or "pump") to stall for `ms` at its next turn.
    pub fn request_stall(&self, thread: &str, ms: u64) -> Result<(), HookError> {
        if !self.enabled() {
            return Err(HookError::Disabled);
        }
        if ms == 0 || ms > MAX_STALL.as_millis() as u64 {
            return Err(HookError::StallLength(MAX_STALL.as_millis() as u64));
        }
        let slot = match thread {
            "capture" => &self.capture_stall_ms,
            "pump" => &self.pump_stall_ms,
            other => return Err(HookError::UnknownThread(other.to_string())),
        };
        slot.store(ms, Ordering::Relaxed);
        tracing::warn!(component = "hooks", thread, ms, "test hook: stalling a thread");
        Ok(())
    }

    /// Asks `worker` (one of [`PANIC_TARGETS`]) to panic at its next turn.
    pub fn request_panic(&self, worker: &str) -> Result<(), HookError> {
        if !self.enabled() {
            return Err(HookError::Disabled);
        }
        let Some(i) = PANIC_TARGETS.iter().position(|w| *w == worker) else {
            return Err(HookError::UnknownWorker(worker.to_string()));
        };
        self.panic[i].store(true, Ordering::Relaxed);
        tracing::warn!(component = "hooks", worker, "test hook: a worker will panic");
        Ok(())
    }

    /// Called by each worker every turn: panics if asked to (once).
    #[inline]
    pub fn panic_point(&self, worker: PanicTarget) {
        #[cfg(feature = "test-hooks")]
        {
            let flag = &self.panic[worker as usize];
            // A plain read on the usual path; the swap only when asked.
            if flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed) {
                panic!("test hook: {} made to panic", PANIC_TARGETS[worker as usize]);
            }
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = worker;
    }

    /// Called by the capture thread each turn: sleeps if a stall was asked
    /// for (waking early on stop).
    #[inline]
    pub fn capture_stall(&self, stop: &StopSignal) {
        #[cfg(feature = "test-hooks")]
        {
            // A plain read on the usual path: no write to a shared line.
            if self.capture_stall_ms.load(Ordering::Relaxed) == 0 {
                return;
            }
            let ms = self.capture_stall_ms.swap(0, Ordering::Relaxed);
            if ms > 0 {
                stop.sleep(Duration::from_millis(ms));
            }
        }
        #[cfg(not(feature = "test-hooks"))]
        let _ = stop;
    }

    /// Called by the pump each tick: blocks it if a stall was asked for,
    /// deaf to everything, as a hung pump would be.
    #[inline]
    pub fn pump_stall(&self) {
        #[cfg(feature = "test-hooks")]
        {
            // A plain read on the pump's every tick; the swap only when asked.
            if self.pump_stall_ms.load(Ordering::Relaxed) == 0 {
                return;
            }
            let ms = self.pump_stall_ms.swap(0, Ordering::Relaxed);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
}

#[cfg(all(test, feature = "test-hooks"))]
mod tests {
    use super::*;

    #[test]
    fn disabled_hooks_refuse_and_never_stall() {
        let h = TestHooks::disabled();
        assert!(h.request_stall("capture", 100).is_err());
        assert_eq!(h.capture_stall_ms.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_a_long_enough_token_enables_and_only_that_token_authorizes() {
        assert!(!TestHooks::with_token("1").enabled());
        let h = TestHooks::with_token("0123456789abcdef");
        assert!(h.enabled());
        assert!(h.authorized(Some("Bearer 0123456789abcdef")));
        assert!(!h.authorized(Some("Bearer 0123456789abcdeF")));
        assert!(!h.authorized(Some("Bearer 0123456789abcde")));
        assert!(!h.authorized(Some("0123456789abcdef")));
        assert!(!h.authorized(None));
        assert!(!TestHooks::disabled().authorized(Some("Bearer ")));
    }

    #[test]
    fn a_stall_fires_once_and_bad_requests_are_named() {
        let h = TestHooks::with_token("0123456789abcdef");
        assert!(
            h.request_stall("encoder", 10)
                .unwrap_err()
                .to_string()
                .contains("encoder")
        );
        assert!(h.request_stall("pump", 0).is_err());
        assert!(h.request_stall("pump", 61_000).is_err());
        assert_eq!(h.pump_stall_ms.load(Ordering::Relaxed), 0);
        h.request_stall("capture", 30).expect("stall");
        let stop = StopSignal::new();
        let t = std::time::Instant::now();
        h.capture_stall(&stop);
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(h.capture_stall_ms.load(Ordering::Relaxed), 0, "only once");
    }

    #[test]
    fn a_panic_fires_once_in_the_named_worker_only() {
        let h = TestHooks::with_token("0123456789abcdef");
        assert!(TestHooks::disabled().request_panic("pump").is_err());
        assert!(
            h.request_panic("encoder")
                .unwrap_err()
                .to_string()
                .contains("capture, pump")
        );
        h.request_panic("leds").expect("asked");
        h.panic_point(PanicTarget::Capture);
        let r = std::panic::catch_unwind(|| h.panic_point(PanicTarget::Leds));
        assert!(r.is_err(), "leds must panic");
        h.panic_point(PanicTarget::Leds);
    }
}
