//! The connection guard [H5]: connections that have not yet become a
//! listener or a status page ("pending": the request is being read, or
//! the answer written) are bounded in time and in number, so idle or
//! trickling clients (slowloris) cannot pile up and one host cannot take
//! the box.
//!
//! - Each pending connection has until `header_timeout` after it was
//!   accepted to send its request and take the answer; a real one needs
//!   milliseconds.
//! - Beyond `per_address` pending connections from one address, or
//!   `total` in all, the **oldest** is closed, not the newest: a real
//!   client's request completes in milliseconds and never becomes the
//!   oldest, so listeners keep getting in while an attack holds the caps.
//!
//! [`Pending`] is the pure bookkeeping, with time passed in; the accept
//! loop in `server` acts on its answers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The guard's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub per_address: usize,
    pub total: usize,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Timeout,
    PerAddress,
    Total,
}

/// The pending connections, by id (ids grow with accept order, so the
/// first entry is the oldest).
#[derive(Debug, Default)]
pub struct Pending {
    by_id: BTreeMap<u64, (IpAddr, Instant)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Records connection `id` from `ip`, accepted at `now` (ids must
    /// grow); returns the connections to close to stay within the caps.
    pub fn admit(&mut self, id: u64, ip: IpAddr, now: Instant, limits: Limits) -> Vec<(u64, Cut)> {
        self.by_id.insert(id, (ip, now));
        *self.per_ip.entry(ip).or_default() += 1;
        let mut cut = Vec::new();
        if self.per_ip.get(&ip).copied().unwrap_or(0) > limits.per_address.max(1) {
            let oldest = self.by_id.iter().find(|(_, (a, _))| *a == ip).map(|(i, _)| *i);
            if let Some(old) = oldest {
                self.remove(old);
                cut.push((old, Cut::PerAddress));
            }
        }
        if self.by_id.len() > limits.total.max(1)
            && let Some(old) = self.by_id.keys().next().copied()
        {
            self.remove(old);
            cut.push((old, Cut::Total));
        }
        cut
    }

    /// Forgets connection `id` (answered, handed over or closed).
    pub fn remove(&mut self, id: u64) {
        if let Some((ip, _)) = self.by_id.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Removes and returns the connections whose time is up at `now`.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<u64> {
        let expired: Vec<u64> = self
            .by_id
            .iter()
            .take_while(|(_, (_, at))| now.saturating_duration_since(*at) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.remove(*id);
        }
        expired
    }

    /// When the oldest connection's time is up.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.by_id.values().next().map(|(_, at)| *at + timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        per_address: 2,
        total: 3,
    };

    #[test]
    fn beyond_a_cap_the_oldest_connection_goes_and_the_new_one_stays() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut p = Pending::default();
        assert!(p.admit(1, ip(1), at(0), LIMITS).is_empty());
        assert!(p.admit(2, ip(1), at(1), LIMITS).is_empty());
        // A third from one address: its oldest goes.
        assert_eq!(p.admit(3, ip(1), at(2), LIMITS), [(1, Cut::PerAddress)]);
        assert!(p.admit(4, ip(2), at(3), LIMITS).is_empty());
        // A fourth in all: the oldest of all goes, whoever sent it.
        assert_eq!(p.admit(5, ip(3), at(4), LIMITS), [(2, Cut::Total)]);
        assert_eq!(p.len(), 3);
        // Answered connections free their place.
        p.remove(3);
        p.remove(4);
        assert!(p.admit(6, ip(1), at(5), LIMITS).is_empty());
        assert!(p.admit(7, ip(1), at(5), LIMITS).is_empty());
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn connections_expire_in_accept_order_at_the_header_timeout() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let timeout = Duration::from_secs(1);
        let mut p = Pending::default();
        let wide = Limits {
            per_address: 100,
            total: 100,
            ..LIMITS
        };
        p.admit(1, ip(1), at(0), wide);
        p.admit(2, ip(2), at(400), wide);
        p.admit(3, ip(1), at(800), wide);
        assert_eq!(p.next_deadline(timeout), Some(at(1_000)));
        assert!(p.expire(at(999), timeout).is_empty());
        assert_eq!(p.expire(at(1_400), timeout), [1, 2]);
        assert_eq!(p.next_deadline(timeout), Some(at(1_800)));
        p.remove(3);
        assert!(p.is_empty());
        assert_eq!(p.next_deadline(timeout), None);
        // The per-address count followed the removals.
        for id in 10..12 {
            assert!(p.admit(id, ip(1), at(2_000), LIMITS).is_empty());
        }
    }
}
