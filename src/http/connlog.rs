//! Per-connection log lines (a listener or status page connected, left,
//! was dropped as slow, was refused) without floods, and without making
//! the threads that serve audio wait for the log [T2].
//!
//! The hubs and the accept loop hand each event to [`ConnLog::note`]: a
//! small `Copy` record put on a bounded channel without blocking and
//! without formatting anything; when the channel is full the event is
//! counted as lost. The "conn-log" thread, owned by the service, takes
//! them off and decides with a [`Budget`]: while connections come and go
//! at a household's pace (at most [`LINES`] in [`WINDOW`]) each gets its
//! own line ("listener connected from 192.168.1.20"); beyond that they are
//! counted, and one line at the end of the window sums them up, naming
//! the busiest address. journald's rate limit then never drops Tower's
//! other lines (an encoder FAILED) because of a connect loop.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use super::hub::Refusal;
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};

/// Per-connection lines allowed in one [`WINDOW`].
pub const LINES: u32 = 20;
/// How long a budget of [`LINES`] lasts, and how often a flood is summed up.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Events waiting for the log thread; more are counted as lost.
const QUEUE: usize = 1024;
/// Addresses counted per window for the summary's busiest address.
const MAX_ADDRESSES: usize = 256;

/// Who connected: a listener of `/stream`, or a status page (`/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    Listener,
    Page,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Listener => "listener",
            Who::Page => "status page",
        }
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum What {
    /// It was added; `count` are connected now.
    Connected { count: usize },
    /// It went away after `seconds`, having taken `bytes`.
    Left { seconds: f64, bytes: u64 },
    /// It could not take data for `timeout`, with `queued` frames waiting.
    Dropped {
        seconds: f64,
        queued: usize,
        timeout: Duration,
    },
    /// It was refused (503) at a limit of `limit`.
    Refused { why: Refusal, limit: usize },
}

/// One connection event, as the hubs and the accept loop report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub who: Who,
    /// The hub's id for it (0 for a refusal).
    pub id: u64,
    pub peer: SocketAddr,
    pub what: What,
}

impl Event {
    /// Its own log line.
    fn log(&self) {
        let (who, ip) = (self.who.name(), self.peer.ip());
        let (id, peer) = (self.id, self.peer);
        match self.what {
            What::Connected { count } => {
                tracing::info!(component = "http", id, peer = %peer, count, "{who} connected from {ip}");
            }
            What::Left { seconds, bytes } => {
                tracing::info!(component = "http", id, peer = %peer, bytes, "{who} from {ip} left after {seconds:.1} s");
            }
            What::Dropped {
                seconds,
                queued,
                timeout,
            } => {
                tracing::warn!(component = "http", id, peer = %peer, queued, "{who} from {ip} dropped after {seconds:.1} s: it could not take data for {} ms", timeout.as_millis());
            }
            What::Refused { why, limit } => {
                let (reason, key) = refusal_text(self.who, why);
                tracing::warn!(component = "http", peer = %peer, "{who} from {ip} refused: {reason} ({key} = {limit})");
            }
        }
    }
}

/// Why a place was refused, and the key that sets the limit.
fn refusal_text(who: Who, why: Refusal) -> (&'static str, &'static str) {
    match (who, why) {
        (Who::Listener, Refusal::Full) => ("the listener limit is reached", "http.max_listeners"),
        (Who::Listener, Refusal::PerAddress) => (
            "its address holds its share of listeners",
            "http.max_listeners_per_address",
        ),
        (Who::Page, Refusal::Full) => ("every status page place is taken", "status pages in all"),
        (Who::Page, Refusal::PerAddress) => (
            "its address holds its share of status pages",
            "http.max_status_pages_per_address",
        ),
    }
}

#[derive(Debug)]
enum Msg {
    Event(Event),
    /// Look at the stop signal.
    Wake,
}

/// Where connection events go; shared by the hubs and the accept loop.
#[derive(Debug)]
pub struct ConnLog {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    /// Events that found the channel full.
    lost: AtomicU64,
}

impl Default for ConnLog {
    fn default() -> Self {
        let (tx, rx) = channel::bounded(QUEUE);
        ConnLog {
            tx,
            rx,
            lost: AtomicU64::new(0),
        }
    }
}

impl ConnLog {
    /// Hands `event` to the log thread without blocking or formatting;
    /// counted as lost when the queue is full.
    pub fn note(&self, event: Event) {
        if self.tx.try_send(Msg::Event(event)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The events waiting (tests look at what the hubs noted).
    #[cfg(test)]
    pub(crate) fn drain(&self) -> Vec<Event> {
        self.rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Event(e) => Some(e),
                Msg::Wake => None,
            })
            .collect()
    }

    /// Events lost so far because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Starts the "conn-log" thread writing the events out.
    pub fn start(self: &std::sync::Arc<Self>, supervisor: &Supervisor) -> std::io::Result<ConnLogger> {
        let log = self.clone();
        let worker = Worker::spawn_supervised("conn-log", supervisor, move |stop| log.run(&stop))?;
        Ok(ConnLogger {
            worker,
            log: self.clone(),
        })
    }

    /// The log thread: waits for events (no wake-ups while there are
    /// none), logs or counts each, sums up a flood when its window ends.
    fn run(&self, stop: &StopSignal) {
        let mut budget = Budget::default();
        let mut lost_seen = self.lost();
        while !stop.is_stopped() {
            let msg = match budget.summary_due() {
                Some(at) => match self.rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
            };
            let now = Instant::now();
            let lost = self.lost();
            budget.lost(lost - lost_seen);
            lost_seen = lost;
            if let Some(line) = budget.summary(now) {
                tracing::warn!(component = "http", "{line}");
            }
            if let Some(Msg::Event(e)) = msg
                && budget.take(&e, now)
            {
                e.log();
            }
        }
        while let Ok(Msg::Event(e)) = self.rx.try_recv() {
            budget.take(&e, Instant::now());
        }
        if let Some(line) = budget.flush() {
            tracing::warn!(component = "http", "{line}");
        }
    }
}

/// The running "conn-log" thread; [`ConnLogger::stop`] ends and joins it.
pub struct ConnLogger {
    worker: Worker<()>,
    log: std::sync::Arc<ConnLog>,
}

impl ConnLogger {
    /// Signals the thread, wakes it, and joins it (it logs the summary of
    /// what it held back first).
    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        self.worker.stop_signal().stop();
        // A full queue keeps the thread turning: it sees the signal anyway.
        let _ = self.log.tx.try_send(Msg::Wake);
        self.worker.stop(timeout)
    }
}

/// Counts of one kind of event held back in a window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    connected: u64,
    left: u64,
    dropped: u64,
    refused: u64,
}

/// Which events get their own line, and what a window's summary says.
/// Time is passed in.
#[derive(Debug, Default)]
pub struct Budget {
    window_start: Option<Instant>,
    used: u32,
    held: HashMap<Who, Counts>,
    by_address: HashMap<IpAddr, u64>,
    lost: u64,
}

impl Budget {
    /// Whether `event` gets its own line at `now`; if not, it is counted.
    pub fn take(&mut self, event: &Event, now: Instant) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= WINDOW && self.held.is_empty() && self.lost == 0 {
            // A quiet window ended with nothing held back: a new one.
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < LINES {
            self.used += 1;
            return true;
        }
        let c = self.held.entry(event.who).or_default();
        match event.what {
            What::Connected { .. } => c.connected += 1,
            What::Left { .. } => c.left += 1,
            What::Dropped { .. } => c.dropped += 1,
            What::Refused { .. } => c.refused += 1,
        }
        let ip = event.peer.ip();
        if self.by_address.len() < MAX_ADDRESSES || self.by_address.contains_key(&ip) {
            *self.by_address.entry(ip).or_default() += 1;
        }
        false
    }

    /// Counts `n` events lost before they reached the log thread.
    pub fn lost(&mut self, n: u64) {
        self.lost += n;
    }

    /// When the window holding back events ends (`None`: nothing held).
    pub fn summary_due(&self) -> Option<Instant> {
        let held = !self.held.is_empty() || self.lost > 0;
        held.then(|| self.window_start.map_or_else(Instant::now, |s| s + WINDOW))
    }

    /// The summary of the window that ended by `now`, if it held back
    /// anything; a new window begins.
    pub fn summary(&mut self, now: Instant) -> Option<String> {
        let due = self.summary_due()?;
        (now >= due).then(|| {
            self.window_start = Some(now);
            self.used = 0;
            self.text()
        })
    }

    /// The summary of what is held back now, whatever the time.
    pub fn flush(&mut self) -> Option<String> {
        self.summary_due().map(|_| self.text())
    }

    fn text(&mut self) -> String {
        let mut out = format!(
            "more than {LINES} connection events in {} s, not logged one by one:",
            WINDOW.as_secs()
        );
        let mut held: Vec<(Who, Counts)> = self.held.drain().collect();
        held.sort_by_key(|(who, _)| *who == Who::Page);
        for (i, (who, c)) in held.iter().enumerate() {
            let sep = if i == 0 { "" } else { ";" };
            let parts = [
                (c.connected, "connected"),
                (c.left, "left"),
                (c.dropped, "dropped as slow"),
                (c.refused, "refused"),
            ];
            let said: Vec<String> = parts
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
            let _ = write!(out, "{sep} {}s {}", who.name(), said.join(", "));
        }
        if let Some((ip, n)) = self.by_address.drain().max_by_key(|(_, n)| *n) {
            let _ = write!(out, "; most from {ip} ({n})");
        }
        let lost = std::mem::take(&mut self.lost);
        if lost > 0 {
            let _ = write!(out, "; {lost} more not even counted by kind (the log queue was full)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(who: Who, ip: [u8; 4], what: What) -> Event {
        Event {
            who,
            id: 1,
            peer: SocketAddr::from((ip, 40_000)),
            what,
        }
    }

    const CONNECTED: What = What::Connected { count: 1 };
    const LEFT: What = What::Left { seconds: 0.1, bytes: 9 };

    #[test]
    fn at_a_households_pace_every_connection_has_its_own_line() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        // One connect and one leave a minute, for an hour.
        for m in 0..60u32 {
            let at = t0 + Duration::from_secs(60) * m;
            assert!(b.take(&event(Who::Listener, [192, 168, 1, 20], CONNECTED), at));
            assert!(b.take(
                &event(Who::Listener, [192, 168, 1, 20], LEFT),
                at + Duration::from_secs(30)
            ));
            assert_eq!(b.summary(at + Duration::from_secs(59)), None);
        }
        assert_eq!(b.summary_due(), None);
    }

    #[test]
    fn a_flood_gets_its_budget_of_lines_then_one_summary_per_window() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut own = 0;
        // 200 connects (and leaves) a second for 25 s, mostly from one host.
        for i in 0..5_000u32 {
            let at = t0 + ms(5) * i;
            let ip = if i % 10 == 0 { [10, 0, 0, 2] } else { [10, 0, 0, 1] };
            own += u32::from(b.take(&event(Who::Listener, ip, CONNECTED), at));
            own += u32::from(b.take(&event(Who::Listener, ip, LEFT), at));
            if i == 1_000 {
                // Page refusals count too, apart.
                let refused = What::Refused {
                    why: Refusal::PerAddress,
                    limit: 8,
                };
                b.take(&event(Who::Page, [10, 0, 0, 1], refused), at);
            }
            if let Some(line) = b.summary(at) {
                // 2001 connects and leaves by then, 10 of each logged.
                assert_eq!(at, t0 + WINDOW, "the first window ends at 10 s");
                assert!(
                    line.contains("listeners 1991 connected, 1991 left; status pages 1 refused")
                        && line.contains("most from 10.0.0.1 (3583)"),
                    "{line}"
                );
                break;
            }
        }
        assert_eq!(own, LINES, "the budget of lines, then silence");
        b.lost(7);
        let last = b.flush().expect("held back");
        assert!(last.contains("7 more not even counted"), "{last}");
    }

    #[test]
    fn noting_never_blocks_a_full_queue_counts_what_is_lost() {
        let log = ConnLog::default();
        let e = event(Who::Listener, [10, 0, 0, 1], CONNECTED);
        for _ in 0..QUEUE + 5 {
            log.note(e);
        }
        assert_eq!(log.lost(), 5);
        assert_eq!(log.drain().len(), QUEUE);
    }

    #[test]
    fn the_log_thread_stops_when_asked_and_sums_up_what_it_held() {
        let log = std::sync::Arc::new(ConnLog::default());
        let logger = log.start(&Supervisor::none()).expect("start");
        for _ in 0..100 {
            log.note(event(Who::Listener, [10, 0, 0, 1], CONNECTED));
        }
        logger.stop(Duration::from_secs(2)).expect("stopped");
        assert!(log.drain().is_empty(), "everything was taken");
    }
}
