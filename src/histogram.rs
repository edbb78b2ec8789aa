//! Lock-free latency histogram (pump tick error, for `/status` and benches).
//!
//! Written by one hot thread (the pump) with relaxed atomic increments, read
//! by anyone. Resolution: 1 µs up to 1 ms, 10 µs up to 10 ms, 1 ms up to
//! 100 ms, then one overflow bucket; the exact maximum is kept separately.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

const FINE: u64 = 1_000; // 1 µs buckets below 1 ms
const MEDIUM: u64 = 900; // 10 µs buckets from 1 ms to 10 ms
const COARSE: u64 = 90; // 1 ms buckets from 10 ms to 100 ms
const BUCKETS: usize = (FINE + MEDIUM + COARSE + 1) as usize;

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn bucket_of(us: u64) -> usize {
    let b = if us < FINE {
        us
    } else if us < 10_000 {
        FINE + (us - FINE) / 10
    } else if us < 100_000 {
        FINE + MEDIUM + (us - 10_000) / 1_000
    } else {
        FINE + MEDIUM + COARSE
    };
    b as usize
}

/// Upper bound (µs) of the values a bucket holds.
fn bucket_upper(b: usize) -> u64 {
    let b = b as u64;
    if b < FINE {
        b
    } else if b < FINE + MEDIUM {
        FINE + (b - FINE) * 10 + 9
    } else if b < FINE + MEDIUM + COARSE {
        10_000 + (b - FINE - MEDIUM) * 1_000 + 999
    } else {
        u64::MAX
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The value below which `q` (0..=1) of the samples fall, as the upper
    /// bound of its bucket (capped by the true maximum).
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count.load(Ordering::Relaxed);
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let max = self.max_us.load(Ordering::Relaxed);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_upper(i).min(max);
            }
        }
        max
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count.load(Ordering::Relaxed),
            p50_us: self.quantile_us(0.50),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }

    /// Samples recorded, and their sum in microseconds.
    pub fn count_and_sum_us(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.sum_us.load(Ordering::Relaxed))
    }

    /// Samples at or below `us` microseconds, exact where `us` is the upper
    /// bound of a bucket (every whole µs below 1 ms, and every 10 µs / 1 ms
    /// step above): what a Prometheus `le` bucket counts.
    pub fn count_at_most_us(&self, us: u64) -> u64 {
        let last = bucket_of(us);
        self.buckets[..=last].iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Samples at or above `us` microseconds.
    pub fn count_at_least_us(&self, us: u64) -> u64 {
        let first = bucket_of(us);
        self.buckets[first..].iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_and_sum_for_prometheus() {
        let h = Histogram::new();
        for us in [50, 100, 999, 1_009, 5_000, 250_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count_at_most_us(100), 2);
        assert_eq!(h.count_at_most_us(1_009), 4);
        assert_eq!(h.count_at_most_us(5_009), 5);
        assert_eq!(h.count_and_sum_us(), (6, 257_158));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.max_us, 1000);
        assert_eq!(h.count_at_least_us(991), 10);
    }

    #[test]
    fn coarse_ranges_and_overflow_are_bounded_by_the_true_maximum() {
        let h = Histogram::new();
        h.record(Duration::from_micros(1_234));
        h.record(Duration::from_millis(42));
        h.record(Duration::from_secs(3));
        let p = h.percentiles();
        assert_eq!(p.max_us, 3_000_000);
        assert_eq!(h.quantile_us(0.33), 1_239); // 10 µs bucket upper bound
        assert_eq!(h.quantile_us(0.66), 42_999);
        assert_eq!(h.quantile_us(1.0), 3_000_000);
    }

    #[test]
    fn empty_histogram_reports_zeroes() {
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }
}
