//! A setting that can change while Tower runs, shared between the one who
//! changes it and the threads that read it.
//!
//! The service publishes a new value with [`Live::set`] (from its own
//! thread, when the owner changes a setting); readers take the current
//! value with [`Live::get`] (a short read lock and an `Arc` clone), or,
//! on a hot path, first ask [`Live::generation`] (one atomic load) whether
//! anything changed since they last looked, so a value that never changes
//! costs them nothing more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Live<T> {
    value: RwLock<Arc<T>>,
    /// Bumped by every `set`; starts at 1 so 0 can mean "never looked".
    generation: AtomicU64,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live {
            value: RwLock::new(Arc::new(value)),
            generation: AtomicU64::new(1),
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.value.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the value; readers see it from their next `get`.
    pub fn set(&self, value: T) {
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes the value in place: `change` gets a copy of the current
    /// value under the write lock, so two updaters never lose each
    /// other's change.
    pub fn update(&self, change: impl FnOnce(&mut T))
    where
        T: Clone,
    {
        let mut guard = self.value.write().unwrap_or_else(|p| p.into_inner());
        let mut value = (**guard).clone();
        change(&mut value);
        *guard = Arc::new(value);
        drop(guard);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes every time the value is set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// A reader's view of a [`Live`] value: remembers the generation it last
/// saw, so [`Watch::changed`] is one atomic load while nothing changes.
#[derive(Debug)]
pub struct Watch<T> {
    live: Arc<Live<T>>,
    seen: u64,
}

impl<T> Watch<T> {
    /// A watch that has not seen the value yet: the first `changed` gives it.
    pub fn new(live: Arc<Live<T>>) -> Watch<T> {
        Watch { live, seen: 0 }
    }

    /// The value, if it changed since the last call.
    pub fn changed(&mut self) -> Option<Arc<T>> {
        let now = self.live.generation();
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(self.live.get())
    }

    pub fn get(&self) -> Arc<T> {
        self.live.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_sees_each_change_once_and_the_latest_value() {
        let live = Arc::new(Live::new(String::from("Tower")));
        let mut w = Watch::new(live.clone());
        assert_eq!(w.changed().as_deref().map(String::as_str), Some("Tower"));
        assert!(w.changed().is_none());
        live.set("Kitchen".into());
        live.set("Garden".into());
        assert_eq!(w.changed().as_deref().map(String::as_str), Some("Garden"));
        assert!(w.changed().is_none());
        assert_eq!(live.get().as_str(), "Garden");
        live.update(|s| s.push_str(" Radio"));
        assert_eq!(w.changed().as_deref().map(String::as_str), Some("Garden Radio"));
    }
}
