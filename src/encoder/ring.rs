//! MP3 FrameRingBuffer: whole MP3 frames between encoder and broadcast [B1].
//!
//! Producer: the stdout reader, on the broadcast thread (`encoder::reader`).
//! Consumer: the broadcast loop (through `EncoderManager::get_frame`), on
//! the same thread; tests push from others. Bounded and O(1); `push` never
//! blocks and, when full, drops the OLDEST frame (counted); `pop` never
//! blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::queue::ArrayQueue;
use serde::Serialize;

/// Default capacity (`TOWER_MP3_BUFFER_CAPACITY_FRAMES`): 400 frames, 9.6 s.
pub const DEFAULT_CAPACITY: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RingStats {
    pub fill: usize,
    pub capacity: usize,
    pub pushed: u64,
    /// Frames pushed out unread because the ring was full.
    pub dropped_oldest: u64,
}

pub struct FrameRing<T> {
    queue: ArrayQueue<T>,
    pushed: AtomicU64,
    dropped_oldest: AtomicU64,
}

impl<T> FrameRing<T> {
    pub fn new(capacity: usize) -> Self {
        FrameRing {
            queue: ArrayQueue::new(capacity.max(1)),
            pushed: AtomicU64::new(0),
            dropped_oldest: AtomicU64::new(0),
        }
    }

    /// Adds a frame; when full the oldest frame is dropped and counted.
    pub fn push(&self, frame: T) {
        if self.queue.force_push(frame).is_some() {
            self.dropped_oldest.fetch_add(1, Ordering::Relaxed);
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            fill: self.queue.len(),
            capacity: self.queue.capacity(),
            pushed: self.pushed.load(Ordering::Relaxed),
            dropped_oldest: self.dropped_oldest.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn full_ring_drops_the_oldest_and_counts_it() {
        let r = FrameRing::new(3);
        for i in 0..5 {
            r.push(i);
        }
        let s = r.stats();
        assert_eq!((s.fill, s.capacity, s.pushed, s.dropped_oldest), (3, 3, 5, 2));
        assert_eq!(r.pop(), Some(2));
        assert_eq!(r.pop(), Some(3));
        assert_eq!(r.pop(), Some(4));
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn pop_on_empty_returns_at_once() {
        let r: FrameRing<u8> = FrameRing::new(1);
        assert!(r.is_empty());
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn many_producers_and_consumers_account_for_every_frame() {
        let r = Arc::new(FrameRing::new(64));
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || {
                    for i in 0..10_000u32 {
                        r.push(i);
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || {
                    let mut n = 0u64;
                    for _ in 0..20_000 {
                        if r.pop().is_some() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        for p in producers {
            p.join().expect("join");
        }
        let mut popped: u64 = consumers.into_iter().map(|c| c.join().expect("join")).sum();
        while r.pop().is_some() {
            popped += 1;
        }
        let s = r.stats();
        assert_eq!(s.pushed, 30_000);
        assert_eq!(popped + s.dropped_oldest, 30_000);
    }
}
