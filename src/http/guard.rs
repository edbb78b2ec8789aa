//! The connection guard: what tiny_http lacks (no header timeout, no cap
//! on connections), so that idle or trickling clients cannot pile up.
//!
//! Every second the "http-guard" thread (owned by [`super::HttpServer`])
//! lists the connections to the HTTP port that are not listeners or status
//! pages (those belong to the hubs), and shuts down — without closing the
//! descriptor, which tiny_http owns and then drops — any that has been open
//! longer than the header timeout (a request is read and answered in
//! milliseconds; an idle keep-alive connection waits for nothing), and the
//! newest ones beyond the caps per client address and in all. [`Guard`] is
//! the pure decision, with time passed in.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The guard's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub per_address: usize,
    pub total: usize,
}

/// Why a connection is shut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Timeout,
    PerAddress,
    Total,
}

/// Remembers when each non-listener connection was first seen.
#[derive(Debug, Default)]
pub struct Guard {
    first_seen: HashMap<SocketAddr, Instant>,
}

impl Guard {
    /// `open` are the peers of the non-listener connections now; returns
    /// those to shut, and why.
    pub fn check(&mut self, open: &[SocketAddr], now: Instant, limits: Limits) -> Vec<(SocketAddr, Cut)> {
        let current: HashSet<SocketAddr> = open.iter().copied().collect();
        self.first_seen.retain(|p, _| current.contains(p));
        for p in open {
            self.first_seen.entry(*p).or_insert(now);
        }
        let mut by_age: Vec<(SocketAddr, Instant)> = self.first_seen.iter().map(|(p, t)| (*p, *t)).collect();
        by_age.sort_by_key(|(p, t)| (*t, *p));
        let mut cut = Vec::new();
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        let mut kept = 0;
        for (peer, since) in by_age {
            let n = per_ip.entry(peer.ip()).or_default();
            let why = if now.saturating_duration_since(since) >= limits.header_timeout {
                Some(Cut::Timeout)
            } else if *n >= limits.per_address {
                Some(Cut::PerAddress)
            } else if kept >= limits.total {
                Some(Cut::Total)
            } else {
                None
            };
            match why {
                Some(w) => cut.push((peer, w)),
                None => {
                    *n += 1;
                    kept += 1;
                }
            }
        }
        for (p, _) in &cut {
            self.first_seen.remove(p);
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, ip], port))
    }

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        per_address: 2,
        total: 3,
    };

    #[test]
    fn old_connections_time_out_and_the_newest_beyond_the_caps_are_cut() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut g = Guard::default();
        assert!(g.check(&[peer(1, 1)], at(0), LIMITS).is_empty());
        // A third connection from one address: the newest is cut.
        let cut = g.check(&[peer(1, 1), peer(1, 2), peer(1, 3)], at(1), LIMITS);
        assert_eq!(cut, [(peer(1, 3), Cut::PerAddress)]);
        // A fourth connection in all: the newest is cut.
        let cut = g.check(&[peer(1, 1), peer(1, 2), peer(2, 1), peer(3, 1)], at(2), LIMITS);
        assert_eq!(cut, [(peer(3, 1), Cut::Total)]);
        // Ten seconds on, the first one has timed out.
        let cut = g.check(&[peer(1, 1), peer(1, 2), peer(2, 1)], at(10), LIMITS);
        assert_eq!(cut, [(peer(1, 1), Cut::Timeout)]);
        // Closed connections are forgotten; a new one from the same port starts afresh.
        assert!(g.check(&[peer(1, 1)], at(11), LIMITS).is_empty());
        assert!(g.check(&[peer(1, 1)], at(20), LIMITS).is_empty());
        assert_eq!(g.check(&[peer(1, 1)], at(21), LIMITS), [(peer(1, 1), Cut::Timeout)]);
    }
}
