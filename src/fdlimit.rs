//! Sharing the open-file limit between listeners and other connections.
//!
//! Pure; run once by `main` at start, before the service. Every listener
//! holds a descriptor, every connection that is not (yet) a listener or a
//! status page holds one (up to `http.max_other_connections`), and
//! [`RESERVED`] cover the rest: ffmpeg's pipes, the sound card, the
//! journal, the status pages. When the limit cannot hold both caps,
//! listeners come first and the other connections are scaled down to what
//! is left, keeping [`MIN_OTHERS`] so requests still get in; only a limit
//! too small for that lowers the listener cap too. Either is said plainly
//! at start-up ([`Share::notes`]).

/// Descriptors kept for everything that is not a connection.
pub const RESERVED: u64 = 64;
/// Other connections kept however short descriptors are: requests and
/// status pages still get in.
pub const MIN_OTHERS: u64 = 64;

/// What the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The open-file limit shared.
    pub limit: u64,
    /// The configured caps.
    pub asked: (u64, u64),
    /// Listeners allowed (`http.max_listeners` in force).
    pub listeners: u64,
    /// Other connections allowed (`http.max_other_connections` in force).
    pub others: u64,
}

/// Shares `limit` descriptors between `listeners` and `others` (the
/// configured caps): listeners first, the rest scaled down.
pub fn share(limit: u64, listeners: u64, others: u64) -> Share {
    let budget = limit.saturating_sub(RESERVED);
    let asked = (listeners, others);
    if listeners.saturating_add(others) <= budget {
        return Share {
            limit,
            asked,
            listeners,
            others,
        };
    }
    let keep = others.min(MIN_OTHERS);
    let l = listeners.min(budget.saturating_sub(keep)).max(1);
    let o = others.min(budget.saturating_sub(l)).max(keep);
    Share {
        limit,
        asked,
        listeners: l,
        others: o,
    }
}

impl Share {
    /// What start-up should say: nothing when both caps fit.
    pub fn notes(&self) -> Vec<String> {
        let (listeners, others) = self.asked;
        let mut notes = Vec::new();
        let raise = "raise it (LimitNOFILE= in the systemd unit, `ulimit -n` in a shell)";
        if self.listeners < listeners {
            notes.push(format!(
                "the open-file limit ({}) cannot hold http.max_listeners = {listeners}: the listener limit is {} \
                 ({} descriptors go to other connections and {RESERVED} to the rest); {raise} \
                 or lower http.max_listeners",
                self.limit, self.listeners, self.others
            ));
        }
        if self.others < others {
            notes.push(format!(
                "the open-file limit ({}) cannot hold http.max_other_connections = {others} beside {} \
                 listeners: using {}; {raise} or lower http.max_other_connections",
                self.limit, self.listeners, self.others
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        let s = share(1024, 500, 256);
        assert_eq!((s.listeners, s.others), (500, 256));
        assert!(s.notes().is_empty());
        assert_eq!(share(u64::MAX, 10_000, 10_000).listeners, 10_000);
    }

    #[test]
    fn listeners_come_first_and_the_other_connections_are_scaled_down() {
        // What the bench asks for at 2 000 listeners, at 8 192 and 4 096.
        for (limit, others) in [(8192, 8192 - 64 - 2100), (4096, 4096 - 64 - 2100)] {
            let s = share(limit, 2100, 10_000);
            assert_eq!((s.listeners, s.others), (2100, others), "limit {limit}");
            let notes = s.notes();
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(
                notes[0].contains(&format!(
                    "http.max_other_connections = 10000 beside 2100 listeners: using {others}"
                )),
                "{notes:?}"
            );
            assert!(notes[0].contains("LimitNOFILE"), "{notes:?}");
        }
    }

    #[test]
    fn a_limit_too_small_for_the_listeners_says_so_and_keeps_room_for_requests() {
        let s = share(1024, 2000, 10_000);
        assert_eq!((s.listeners, s.others), (1024 - 64 - 64, 64));
        let notes = s.notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("cannot hold http.max_listeners = 2000: the listener limit is 896"));
        // Below even the reserve: one listener, and the requests' share.
        let s = share(40, 500, 256);
        assert_eq!((s.listeners, s.others), (1, 64));
        assert!(s.notes()[0].contains("the listener limit is 1 "), "{:?}", s.notes());
        // A small cap of other connections is never raised.
        assert_eq!(share(100, 500, 10).others, 10);
    }
}
