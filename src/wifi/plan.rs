//! Whether the box joins its saved Wi-Fi network or opens its setup
//! hotspot [W1]–[W4]. Pure, time passed in; `tower wifi-manager` (root, the
//! SD image's tower-wifi.service) calls [`Plan::step`] about twice a second
//! with what it sees, and makes the radio do what it answers.
//!
//! - An Ethernet link wins at any time: no hotspot while a cable is in (the
//!   saved network is still joined, if there is one).
//! - No `wifi.txt` (or one that cannot work): the hotspot opens once no
//!   Ethernet link came for [`NO_CONFIG_GRACE`].
//! - A saved network: joined; the hotspot opens when that has not worked
//!   within [`JOIN_LIMIT`], sooner when the failure is plain: the password
//!   refused twice ([`WRONG_KEY_TRIES`]), the network in no scan for
//!   [`NOT_FOUND_FOR`], associated but no address for [`NO_DHCP_FOR`].
//! - A joined network lost (a router restarting, or the box moved house):
//!   joined again within [`JOIN_LIMIT`], else the hotspot. The plain
//!   failures do not cut this short: a router that restarts is missing
//!   from scans, or refuses joins, for a minute or more.
//! - The hotspot closes [`HANDOVER`] after a new `wifi.txt` is saved (the
//!   phone gets the page's answer first), to join it; and it gives the
//!   saved network another try every `retry` while no phone is on it: the
//!   box never gives up. A network the box was on in this run is tried at
//!   least every [`PHONES_HOLD_AT_MOST`] even with a phone on the hotspot
//!   (a phone that joins the remembered hotspot by itself must not keep
//!   the box off its network).
//! - After a join that followed the hotspot, the address is announced (the
//!   LEDs flash it) for [`ANNOUNCE_FOR`].

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long the box waits for an Ethernet link before opening the hotspot
/// when it has no network saved.
pub const NO_CONFIG_GRACE: Duration = Duration::from_secs(10);
/// How long joining (or joining again) may take before the hotspot opens.
pub const JOIN_LIMIT: Duration = Duration::from_secs(120);
/// The network refused the password this many times: it is wrong.
pub const WRONG_KEY_TRIES: u32 = 2;
/// The network was in no scan for this long: it is not here.
pub const NOT_FOUND_FOR: Duration = Duration::from_secs(30);
/// Associated for this long without an address: no DHCP.
pub const NO_DHCP_FOR: Duration = Duration::from_secs(45);
/// How long the address is announced after a join that followed the
/// hotspot.
pub const ANNOUNCE_FOR: Duration = Duration::from_secs(120);
/// The default time between two tries of the saved network while the
/// hotspot is open and no phone is on it.
pub const RETRY_EVERY: Duration = Duration::from_secs(300);
/// How long the hotspot stays open after a network was saved on it, so
/// the phone gets the page's answer before the radio leaves.
pub const HANDOVER: Duration = Duration::from_secs(3);
/// The longest phones on the hotspot hold off a try of a network the box
/// was on in this run.
pub const PHONES_HOLD_AT_MOST: Duration = Duration::from_secs(15 * 60);

/// The network saved in `wifi.txt`, as the manager read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    None,
    /// A file that cannot work, and why.
    Invalid(String),
    /// `generation` changes whenever the file is saved again.
    Network {
        ssid: String,
        generation: u64,
    },
}

/// The station's link, as wpa_supplicant and the address say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not associated (scanning, trying, or nothing to join).
    Down,
    /// Associated, no IPv4 address yet.
    Associated,
    /// Associated with an address.
    Up(Ipv4Addr),
}

/// One look at the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// An Ethernet link (carrier) on any wired interface.
    pub ethernet: bool,
    pub saved: Saved,
    pub link: Link,
    /// Phones on the hotspot.
    pub clients: usize,
}

/// What wpa_supplicant said happened, between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The network refused the password (`reason=WRONG_KEY`).
    WrongKey,
    /// A scan did not find the network.
    NotFound,
}

/// Why the box is not on the saved network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Failure {
    NoNetworkSaved,
    /// `wifi.txt` cannot work, and why.
    Invalid(String),
    WrongPassword,
    NotFound,
    NoDhcp,
    /// Joining took too long, for no reason seen.
    TimedOut,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoNetworkSaved => f.write_str("no Wi-Fi network is saved yet"),
            Failure::Invalid(why) => write!(f, "wifi.txt cannot work: {why}"),
            Failure::WrongPassword => f.write_str("the network refused the password (wrong password)"),
            Failure::NotFound => {
                f.write_str("the network was not found (out of range, or its name is spelt differently)")
            }
            Failure::NoDhcp => f.write_str("joined the network, but no address came from it (no DHCP server answered)"),
            Failure::TimedOut => f.write_str("joining took too long"),
        }
    }
}

/// What the radio should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Nothing to join (scanning allowed).
    Idle,
    /// Join the saved network.
    Station,
    /// Offer the setup hotspot.
    Hotspot,
}

/// Where the plan is, for the state file and the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Just started: waiting a moment for an Ethernet link.
    Starting,
    /// An Ethernet link: no hotspot.
    Ethernet,
    Joining,
    Joined,
    Hotspot,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    Ethernet,
    Joining,
    Joined(Ipv4Addr),
    Hotspot,
}

/// The plan (see the module header).
#[derive(Debug, Clone)]
pub struct Plan {
    phase: Phase,
    since: Instant,
    /// The saved network's generation the plan last acted on.
    generation: Option<u64>,
    failure: Option<Failure>,
    wrong_keys: u32,
    not_found_since: Option<Instant>,
    associated_since: Option<Instant>,
    /// The hotspot was open since the last join: the next join announces
    /// its address.
    after_hotspot: bool,
    announce: Option<(Ipv4Addr, Instant)>,
    /// The last time a phone was on the hotspot.
    last_client: Option<Instant>,
    /// A network was saved on the hotspot: leave it then.
    leaving: Option<Instant>,
    retry: Duration,
    /// The saved network (this generation) was joined in this run.
    worked: bool,
    /// Joining again a network just lost: only [`JOIN_LIMIT`] counts.
    rejoining: bool,
    /// Tries of the saved network since the hotspot first opened.
    pub attempts: u32,
}

impl Plan {
    /// A plan starting at `now`; the hotspot tries the saved network again
    /// every `retry` while no phone is on it.
    pub fn new(now: Instant, retry: Duration) -> Plan {
        Plan {
            phase: Phase::Starting,
            since: now,
            generation: None,
            failure: None,
            wrong_keys: 0,
            not_found_since: None,
            associated_since: None,
            after_hotspot: false,
            announce: None,
            last_client: None,
            leaving: None,
            retry,
            worked: false,
            rejoining: false,
            attempts: 0,
        }
    }

    /// Takes an event from wpa_supplicant; it counts only while joining.
    pub fn event(&mut self, event: Event, now: Instant) {
        if self.phase != Phase::Joining {
            return;
        }
        match event {
            Event::WrongKey => self.wrong_keys += 1,
            Event::NotFound => {
                self.not_found_since.get_or_insert(now);
            }
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.rejoining = phase == Phase::Joining && matches!(self.phase, Phase::Joined(_));
        if matches!(phase, Phase::Joined(_)) {
            self.worked = true;
        }
        if phase == Phase::Joining {
            self.wrong_keys = 0;
            self.not_found_since = None;
            self.associated_since = None;
            if self.after_hotspot {
                self.attempts += 1;
            }
        }
        if phase == Phase::Hotspot {
            self.after_hotspot = true;
            self.last_client = None;
        }
        self.leaving = None;
        self.phase = phase;
        self.since = now;
    }

    /// The next step, for what is seen at `now`.
    pub fn step(&mut self, seen: &Seen, now: Instant) -> Want {
        let generation = match &seen.saved {
            Saved::Network { generation, .. } => Some(*generation),
            _ => None,
        };
        let saved_again = generation.is_some() && generation != self.generation;
        self.generation = generation;
        if saved_again {
            self.worked = false;
        }
        if seen.clients > 0 {
            self.last_client = Some(now);
        }
        if seen.ethernet {
            if self.phase != Phase::Ethernet {
                self.enter(Phase::Ethernet, now);
            }
            return if generation.is_some() {
                Want::Station
            } else {
                Want::Idle
            };
        }
        match self.phase {
            Phase::Ethernet | Phase::Starting if generation.is_some() => self.enter(Phase::Joining, now),
            Phase::Ethernet => self.enter(Phase::Starting, now),
            Phase::Starting => {
                if now.saturating_duration_since(self.since) >= NO_CONFIG_GRACE {
                    self.failure = Some(no_network(&seen.saved));
                    self.enter(Phase::Hotspot, now);
                }
            }
            Phase::Joining => self.joining(seen, saved_again, now),
            Phase::Joined(_) => match seen.link {
                _ if saved_again => self.enter(Phase::Joining, now),
                _ if generation.is_none() => {
                    self.failure = Some(no_network(&seen.saved));
                    self.enter(Phase::Hotspot, now);
                }
                Link::Up(addr) => self.phase = Phase::Joined(addr),
                Link::Down | Link::Associated => self.enter(Phase::Joining, now),
            },
            Phase::Hotspot => {
                if saved_again {
                    self.leaving = Some(now + HANDOVER);
                }
                let retry = generation.is_some() && now >= self.next_try();
                if retry || self.leaving.is_some_and(|at| now >= at) {
                    self.enter(Phase::Joining, now);
                }
            }
        }
        match self.phase {
            Phase::Starting => Want::Idle,
            Phase::Hotspot => Want::Hotspot,
            _ => Want::Station,
        }
    }

    fn joining(&mut self, seen: &Seen, saved_again: bool, now: Instant) {
        if saved_again {
            self.enter(Phase::Joining, now);
            return;
        }
        if !matches!(seen.saved, Saved::Network { .. }) {
            self.failure = Some(no_network(&seen.saved));
            self.enter(Phase::Hotspot, now);
            return;
        }
        match seen.link {
            Link::Up(addr) => {
                self.failure = None;
                if self.after_hotspot {
                    self.announce = Some((addr, now + ANNOUNCE_FOR));
                    self.after_hotspot = false;
                }
                self.enter(Phase::Joined(addr), now);
                return;
            }
            Link::Associated => {
                self.associated_since.get_or_insert(now);
            }
            Link::Down => self.associated_since = None,
        }
        let waited = |since: Option<Instant>, limit| since.is_some_and(|s| now.saturating_duration_since(s) >= limit);
        let failure = if self.rejoining && now.saturating_duration_since(self.since) < JOIN_LIMIT {
            None
        } else if self.wrong_keys >= WRONG_KEY_TRIES {
            Some(Failure::WrongPassword)
        } else if waited(self.not_found_since, NOT_FOUND_FOR) && self.associated_since.is_none() {
            Some(Failure::NotFound)
        } else if waited(self.associated_since, NO_DHCP_FOR) {
            Some(Failure::NoDhcp)
        } else if now.saturating_duration_since(self.since) >= JOIN_LIMIT {
            Some(if self.wrong_keys > 0 {
                Failure::WrongPassword
            } else if self.associated_since.is_some() {
                Failure::NoDhcp
            } else if self.not_found_since.is_some() {
                Failure::NotFound
            } else {
                Failure::TimedOut
            })
        } else {
            None
        };
        if let Some(f) = failure {
            self.failure = Some(f);
            self.enter(Phase::Hotspot, now);
        }
    }

    pub fn mode(&self) -> Mode {
        match self.phase {
            Phase::Starting => Mode::Starting,
            Phase::Ethernet => Mode::Ethernet,
            Phase::Joining => Mode::Joining,
            Phase::Joined(_) => Mode::Joined,
            Phase::Hotspot => Mode::Hotspot,
        }
    }

    /// How long the plan has been where it is.
    pub fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// Why the last try did not work, until a join works.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The address to announce (the LEDs flash it), while it is.
    pub fn announce(&self, now: Instant) -> Option<Ipv4Addr> {
        self.announce.filter(|(_, until)| now < *until).map(|(a, _)| a)
    }

    /// When the hotspot next tries the saved network, if no phone comes.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        if self.phase != Phase::Hotspot || self.generation.is_none() {
            return None;
        }
        Some(self.next_try().saturating_duration_since(now))
    }

    /// When the open hotspot tries the saved network: `retry` after the
    /// last phone left (or it opened), and for a network that worked in
    /// this run at the latest [`PHONES_HOLD_AT_MOST`] after it opened.
    fn next_try(&self) -> Instant {
        let quiet_since = self.last_client.map_or(self.since, |c| c.max(self.since));
        let quiet = quiet_since + self.retry;
        if self.worked {
            quiet.min(self.since + PHONES_HOLD_AT_MOST.max(self.retry))
        } else {
            quiet
        }
    }
}

fn no_network(saved: &Saved) -> Failure {
    match saved {
        Saved::Invalid(why) => Failure::Invalid(why.clone()),
        _ => Failure::NoNetworkSaved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const HOME: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 110);

    fn saved(generation: u64) -> Saved {
        Saved::Network {
            ssid: "Home".into(),
            generation,
        }
    }

    fn seen(ethernet: bool, saved: Saved, link: Link) -> Seen {
        Seen {
            ethernet,
            saved,
            link,
            clients: 0,
        }
    }

    /// Steps every second from `from` s to `to` s (inclusive) with `look`;
    /// returns the time (s) of the first step whose answer is `want`.
    fn first(plan: &mut Plan, t0: Instant, from: u64, to: u64, want: Want, look: impl Fn(u64) -> Seen) -> Option<u64> {
        (from..=to).find(|&t| plan.step(&look(t), t0 + S(t)) == want)
    }

    #[test]
    fn without_a_saved_network_the_hotspot_opens_once_no_cable_came() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        let at = first(&mut p, t0, 0, 60, Want::Hotspot, |_| {
            seen(false, Saved::None, Link::Down)
        });
        assert_eq!(at, Some(NO_CONFIG_GRACE.as_secs()));
        assert_eq!(p.failure(), Some(&Failure::NoNetworkSaved));
        // An unusable wifi.txt says why.
        let mut p = Plan::new(t0, RETRY_EVERY);
        let bad = Saved::Invalid("the password (psk=) is 7 characters long".into());
        first(&mut p, t0, 0, 60, Want::Hotspot, |_| {
            seen(false, bad.clone(), Link::Down)
        })
        .expect("hotspot");
        assert!(p.failure().expect("why").to_string().contains("7 characters"));
    }

    #[test]
    fn ethernet_wins_at_any_time_and_its_loss_falls_back_the_same_way() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        // A cable at boot: never the hotspot.
        for t in 0..300 {
            assert_eq!(p.step(&seen(true, Saved::None, Link::Down), t0 + S(t)), Want::Idle);
        }
        assert_eq!(p.mode(), Mode::Ethernet);
        // The cable out: the hotspot after the grace.
        let at = first(&mut p, t0, 300, 400, Want::Hotspot, |_| {
            seen(false, Saved::None, Link::Down)
        });
        assert_eq!(at, Some(300 + NO_CONFIG_GRACE.as_secs()));
        // Plugged in while the hotspot is open: it closes at once.
        assert_eq!(p.step(&seen(true, Saved::None, Link::Down), t0 + S(401)), Want::Idle);
        // With a saved network the cable does not stop Wi-Fi.
        assert_eq!(
            p.step(&seen(true, saved(1), Link::Up(HOME)), t0 + S(402)),
            Want::Station
        );
        assert_eq!(p.mode(), Mode::Ethernet);
    }

    #[test]
    fn a_wrong_password_brings_the_hotspot_back_and_says_so() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        assert_eq!(p.step(&seen(false, saved(1), Link::Down), t0), Want::Station);
        p.event(Event::WrongKey, t0 + S(5));
        assert_eq!(
            p.step(&seen(false, saved(1), Link::Down), t0 + S(6)),
            Want::Station,
            "one refusal is not enough"
        );
        p.event(Event::WrongKey, t0 + S(15));
        assert_eq!(p.step(&seen(false, saved(1), Link::Down), t0 + S(16)), Want::Hotspot);
        assert_eq!(p.failure(), Some(&Failure::WrongPassword));
        assert_eq!(p.mode(), Mode::Hotspot);
        // Events outside a try count for nothing.
        p.event(Event::WrongKey, t0 + S(17));
        assert_eq!(p.wrong_keys, WRONG_KEY_TRIES);
    }

    #[test]
    fn a_network_not_found_or_without_dhcp_or_silent_gives_way_within_the_limit() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        p.step(&seen(false, saved(1), Link::Down), t0);
        p.event(Event::NotFound, t0 + S(3));
        let at = first(&mut p, t0, 1, 200, Want::Hotspot, |_| seen(false, saved(1), Link::Down));
        assert_eq!(at, Some(3 + NOT_FOUND_FOR.as_secs()));
        assert_eq!(p.failure(), Some(&Failure::NotFound));

        let mut p = Plan::new(t0, RETRY_EVERY);
        p.step(&seen(false, saved(1), Link::Down), t0);
        let at = first(&mut p, t0, 10, 200, Want::Hotspot, |_| {
            seen(false, saved(1), Link::Associated)
        });
        assert_eq!(at, Some(10 + NO_DHCP_FOR.as_secs()));
        assert_eq!(p.failure(), Some(&Failure::NoDhcp));

        let mut p = Plan::new(t0, RETRY_EVERY);
        let at = first(&mut p, t0, 0, 300, Want::Hotspot, |_| seen(false, saved(1), Link::Down));
        assert_eq!(at, Some(JOIN_LIMIT.as_secs()));
        assert_eq!(p.failure(), Some(&Failure::TimedOut));
    }

    #[test]
    fn a_new_network_saved_on_the_hotspot_is_joined_at_once_and_its_address_announced() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        first(&mut p, t0, 0, 60, Want::Hotspot, |_| {
            seen(false, Saved::None, Link::Down)
        })
        .expect("hotspot");
        let mut phone = seen(false, Saved::None, Link::Down);
        phone.clients = 1;
        assert_eq!(p.step(&phone, t0 + S(30)), Want::Hotspot);
        // The phone saves a network: the hotspot stays for the page's
        // answer, then the network is joined.
        assert_eq!(p.step(&seen(false, saved(7), Link::Down), t0 + S(31)), Want::Hotspot);
        assert_eq!(p.step(&seen(false, saved(7), Link::Down), t0 + S(32)), Want::Hotspot);
        assert_eq!(
            p.step(&seen(false, saved(7), Link::Down), t0 + S(31) + HANDOVER),
            Want::Station
        );
        assert_eq!(p.mode(), Mode::Joining);
        assert_eq!(
            p.step(&seen(false, saved(7), Link::Up(HOME)), t0 + S(40)),
            Want::Station
        );
        assert_eq!(p.mode(), Mode::Joined);
        assert_eq!(p.failure(), None);
        assert_eq!(p.announce(t0 + S(41)), Some(HOME));
        assert_eq!(p.announce(t0 + S(40) + ANNOUNCE_FOR), None);
        assert_eq!(p.attempts, 1);
        // A join at boot announces nothing.
        let mut q = Plan::new(t0, RETRY_EVERY);
        q.step(&seen(false, saved(1), Link::Down), t0);
        q.step(&seen(false, saved(1), Link::Up(HOME)), t0 + S(5));
        assert_eq!((q.mode(), q.announce(t0 + S(6))), (Mode::Joined, None));
    }

    #[test]
    fn a_box_that_moved_house_opens_the_hotspot_and_never_stops_trying() {
        let t0 = Instant::now();
        let retry = S(60);
        let mut p = Plan::new(t0, retry);
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0);
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0 + S(1));
        assert_eq!(p.mode(), Mode::Joined);
        // The network is gone: joined again within the limit, else the hotspot.
        let gone = |_| seen(false, saved(1), Link::Down);
        let opened = first(&mut p, t0, 2, 400, Want::Hotspot, gone).expect("hotspot");
        assert_eq!(opened, 2 + JOIN_LIMIT.as_secs());
        // No phone on it: another try every minute, for ever.
        let mut tries = Vec::new();
        for t in opened + 1..opened + 1000 {
            let before = p.mode();
            p.step(&gone(t), t0 + S(t));
            if before == Mode::Hotspot && p.mode() == Mode::Joining {
                tries.push(t);
            }
        }
        assert!(tries.len() >= 5, "{tries:?}");
        assert_eq!(tries[0], opened + retry.as_secs());
        // A phone on the hotspot holds the retry off.
        let mut p = Plan::new(t0, retry);
        first(&mut p, t0, 0, 400, Want::Hotspot, |_| seen(false, saved(1), Link::Down)).expect("hotspot");
        let mut phone = seen(false, saved(1), Link::Down);
        phone.clients = 1;
        for t in 200..400 {
            assert_eq!(p.step(&phone, t0 + S(t)), Want::Hotspot, "at {t}");
        }
        // The network back: the next try joins it.
        let at = first(&mut p, t0, 400, 600, Want::Station, |_| {
            seen(false, saved(1), Link::Down)
        })
        .expect("try");
        assert_eq!(at, 399 + retry.as_secs());
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0 + S(at + 5));
        assert_eq!(p.mode(), Mode::Joined);
    }

    #[test]
    fn a_router_that_restarts_is_waited_for_and_a_phone_cannot_hold_the_box_off_it() {
        let t0 = Instant::now();
        let mut p = Plan::new(t0, RETRY_EVERY);
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0);
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0 + S(1));
        assert_eq!(p.mode(), Mode::Joined);
        // The router restarts: missing from every scan for 90 s, and a
        // refused join on the way. No hotspot meanwhile; joined again.
        for t in 2..92 {
            p.event(Event::NotFound, t0 + S(t));
            if t == 60 {
                p.event(Event::WrongKey, t0 + S(t));
                p.event(Event::WrongKey, t0 + S(t));
            }
            assert_eq!(
                p.step(&seen(false, saved(1), Link::Down), t0 + S(t)),
                Want::Station,
                "at {t} s"
            );
        }
        p.step(&seen(false, saved(1), Link::Up(HOME)), t0 + S(92));
        assert_eq!(p.mode(), Mode::Joined);
        // Gone for good this time: the hotspot after the limit, and a phone
        // that sits on it holds the next try off for 15 minutes at most.
        let gone = |_| seen(false, saved(1), Link::Down);
        let opened = first(&mut p, t0, 93, 400, Want::Hotspot, gone).expect("hotspot");
        assert_eq!(opened, 93 + JOIN_LIMIT.as_secs());
        let mut phone = seen(false, saved(1), Link::Down);
        phone.clients = 1;
        let tried = first(&mut p, t0, opened + 1, opened + 2000, Want::Station, |_| phone.clone()).expect("a try");
        assert_eq!(tried, opened + PHONES_HOLD_AT_MOST.as_secs());
        // A retry from the hotspot takes the short cuts again: not found
        // for 30 s opens the hotspot.
        for t in tried..tried + NOT_FOUND_FOR.as_secs() + 1 {
            p.event(Event::NotFound, t0 + S(t));
            p.step(&gone(t), t0 + S(t));
        }
        assert_eq!(p.mode(), Mode::Hotspot);
        // A network never joined in this run: phones hold it off for ever.
        let mut q = Plan::new(t0, RETRY_EVERY);
        first(&mut q, t0, 0, 400, Want::Hotspot, gone).expect("hotspot");
        assert_eq!(first(&mut q, t0, 400, 4000, Want::Station, |_| phone.clone()), None);
    }

    #[test]
    fn the_state_serializes_as_the_pages_read_it() {
        assert_eq!(serde_json::to_value(Mode::Hotspot).expect("json"), "hotspot");
        assert_eq!(
            serde_json::to_value(Failure::WrongPassword).expect("json"),
            serde_json::json!({"code": "wrong_password"})
        );
        assert_eq!(
            serde_json::to_value(Failure::Invalid("x".into())).expect("json"),
            serde_json::json!({"code": "invalid", "detail": "x"})
        );
    }
}
