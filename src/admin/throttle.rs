//! Throttling password attempts, before any hashing. Pure: time is passed
//! in.
//!
//! A password check costs a hash (see `password`), so a flood of wrong
//! passwords could take the CPU that the pump and the listeners need.
//! Two limits stand before every hash:
//! - per address: [`FREE_TRIES`] failures, then each further failure
//!   locks the address out for twice as long as the last (1 s, 2 s, 4 s …
//!   up to [`MAX_LOCKOUT`]). An address that stays quiet for
//!   [`FORGET_AFTER`] starts afresh, and a success clears it. IPv6
//!   addresses count by their /64, the block one home gets.
//! - in all: a bucket of [`BURST`] hashes, refilled at one per
//!   [`REFILL`], so even many addresses together get about one hash a
//!   second.
//!
//! Both answer "try again in N s" without hashing anything. The book of
//! addresses is bounded ([`MAX_ADDRESSES`]; the one quiet longest goes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const FREE_TRIES: u32 = 5;
pub const MAX_LOCKOUT: Duration = Duration::from_secs(300);
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
pub const BURST: u32 = 5;
pub const REFILL: Duration = Duration::from_secs(1);
pub const MAX_ADDRESSES: usize = 4096;

/// An address as the throttle counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Who(u128);

impl From<IpAddr> for Who {
    fn from(ip: IpAddr) -> Who {
        match ip {
            IpAddr::V4(v4) => Who(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Who(u128::from(u32::from(v4))),
                None => Who(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
pub struct Throttle {
    book: HashMap<Who, Record>,
    tokens: u32,
    refilled: Option<Instant>,
    /// Attempts refused without hashing, for `/status`.
    pub refused: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            book: HashMap::new(),
            tokens: BURST,
            refilled: None,
            refused: 0,
        }
    }
}

impl Throttle {
    /// Whether `ip` may try a password now; else how long it must wait.
    /// Refusals are counted.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let wait = self
            .book
            .get(&Who::from(ip))
            .filter(|r| now.saturating_duration_since(r.last) < FORGET_AFTER)
            .and_then(|r| r.locked_until)
            .map(|until| until.saturating_duration_since(now))
            .filter(|w| !w.is_zero());
        match wait {
            Some(w) => {
                self.refused += 1;
                Err(w)
            }
            None => Ok(()),
        }
    }

    /// Takes one hash from the shared bucket: `ip` passed [`check`] and a
    /// hash is about to run. Else how long until one is free.
    ///
    /// [`check`]: Throttle::check
    pub fn take_hash(&mut self, now: Instant) -> Result<(), Duration> {
        let last = *self.refilled.get_or_insert(now);
        let earned = (now.saturating_duration_since(last).as_millis() / REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST);
            self.refilled = Some(last + REFILL * earned);
        }
        if self.tokens == 0 {
            self.refused += 1;
            let next = self.refilled.unwrap_or(now) + REFILL;
            return Err(next.saturating_duration_since(now).max(Duration::from_millis(1)));
        }
        if self.tokens == BURST {
            self.refilled = Some(now);
        }
        self.tokens -= 1;
        Ok(())
    }

    /// A wrong password from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let who = Who::from(ip);
        if !self.book.contains_key(&who) && self.book.len() >= MAX_ADDRESSES {
            self.forget_one(now);
        }
        let r = self.book.entry(who).or_insert(Record {
            failures: 0,
            locked_until: None,
            last: now,
        });
        if now.saturating_duration_since(r.last) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures += 1;
        r.last = now;
        if r.failures > FREE_TRIES {
            let doublings = (r.failures - FREE_TRIES - 1).min(16);
            let lockout = (Duration::from_secs(1) * (1u32 << doublings)).min(MAX_LOCKOUT);
            r.locked_until = Some(now + lockout);
        }
    }

    /// The right password from `ip`.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.book.remove(&Who::from(ip));
    }

    fn forget_one(&mut self, now: Instant) {
        let stale: Vec<Who> = self
            .book
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last) >= FORGET_AFTER)
            .map(|(w, _)| *w)
            .collect();
        if stale.is_empty() {
            if let Some(oldest) = self.book.iter().min_by_key(|(_, r)| r.last).map(|(w, _)| *w) {
                self.book.remove(&oldest);
            }
        } else {
            for w in stale {
                self.book.remove(&w);
            }
        }
    }

    /// Addresses in the book now.
    pub fn tracked(&self) -> usize {
        self.book.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_address_gets_five_tries_then_ever_longer_lockouts_and_is_forgotten_later() {
        let mut t = Throttle::default();
        let a = ip("192.168.1.50");
        let t0 = Instant::now();
        for _ in 0..FREE_TRIES {
            assert!(t.check(a, t0).is_ok());
            t.failed(a, t0);
        }
        assert!(t.check(a, t0).is_ok(), "five failures are free");
        t.failed(a, t0);
        assert_eq!(t.check(a, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.check(a, t1).is_ok());
        t.failed(a, t1);
        assert_eq!(t.check(a, t1), Err(Duration::from_secs(2)));
        assert!(t.check(ip("192.168.1.51"), t1).is_ok(), "others are not held back");
        let mut at = t1;
        for _ in 0..20 {
            at += MAX_LOCKOUT;
            t.failed(a, at);
        }
        assert_eq!(t.check(a, at), Err(MAX_LOCKOUT));
        assert!(t.check(a, at + FORGET_AFTER).is_ok(), "forgotten after a quiet spell");
        t.failed(a, at);
        t.succeeded(a);
        assert!(t.check(a, at).is_ok(), "the right password clears it");
        assert!(t.refused >= 3);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..=FREE_TRIES {
            t.failed(ip(&format!("2001:db8:1:2::{i}")), now);
        }
        assert!(t.check(ip("2001:db8:1:2::ffff"), now).is_err());
        assert!(t.check(ip("2001:db8:1:3::1"), now).is_ok());
        for _ in 0..=FREE_TRIES {
            t.failed(ip("::ffff:10.0.0.1"), now);
        }
        assert!(t.check(ip("10.0.0.1"), now).is_err());
    }

    #[test]
    fn the_shared_bucket_allows_a_burst_then_one_hash_a_second() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(t.take_hash(t0).is_ok());
        }
        let wait = t.take_hash(t0).expect_err("empty");
        assert!(wait <= REFILL, "{wait:?}");
        assert!(t.take_hash(t0 + REFILL).is_ok());
        assert!(t.take_hash(t0 + REFILL).is_err());
        // A minute of flood: about 60 hashes, never more.
        let mut granted = 0;
        for ms in (0..60_000).step_by(10) {
            if t.take_hash(t0 + REFILL + Duration::from_millis(ms)).is_ok() {
                granted += 1;
            }
        }
        assert!((58..=61).contains(&granted), "{granted}");
    }

    #[test]
    fn the_book_of_addresses_stays_bounded() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        assert!(t.tracked() <= MAX_ADDRESSES);
    }
}
