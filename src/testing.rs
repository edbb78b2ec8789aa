//! What the unit tests share (not built outside `cargo test`).

use std::time::{Duration, Instant};

/// Checks `cond` every few milliseconds until it holds (true) or `within`
/// passes (false): for a state another thread reaches a little later.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
