//! LEDs without hardware: [`NullLeds`] (none) and [`RecordingLeds`] (a fake
//! that records every write, for tests). Used from whichever thread owns
//! the [`Leds`](super::Leds); nothing here blocks.

#[cfg(any(test, feature = "test-hooks"))]
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Led, Leds};

/// No LEDs.
pub struct NullLeds;

impl Leds for NullLeds {
    fn set(&mut self, _: Led, _: bool) {}

    fn drives_pins(&self) -> bool {
        false
    }
}

/// Records what was set, for tests: every write in order, and whether the
/// LEDs were released. Clones share the record.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Clone, Default)]
pub struct RecordingLeds(pub Arc<Mutex<Vec<(Led, bool)>>>);

#[cfg(any(test, feature = "test-hooks"))]
impl RecordingLeds {
    fn lock(&self) -> MutexGuard<'_, Vec<(Led, bool)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<(Led, bool)> {
        self.lock().clone()
    }

    /// The level `led` was last set to (`None` if never written).
    pub fn level(&self, led: Led) -> Option<bool> {
        self.lock().iter().rev().find(|(l, _)| *l == led).map(|&(_, on)| on)
    }
}

#[cfg(any(test, feature = "test-hooks"))]
impl Leds for RecordingLeds {
    fn set(&mut self, led: Led, on: bool) {
        self.lock().push((led, on));
    }

    fn release(&mut self) {
        for led in Led::ALL {
            self.set(led, false);
        }
    }
}
