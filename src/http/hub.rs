//! Listener fan-out: every listener gets the same MP3 frames, and none can
//! slow the others [H1]–[H3].
//!
//! Called by the broadcast thread ([`Hub::broadcast`], every frame) and by
//! HTTP worker threads ([`Hub::admit`], [`Hub::add`]). Admission is bounded
//! in all and per client address, so one host cannot take every place. Writes are
//! non-blocking; a listener keeps a short queue of whole frames it has not
//! taken yet. A listener that cannot take everything queued for
//! `slow_timeout` (250 ms by default), or whose queue overflows, is dropped
//! and counted; a write error means the client left. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::connlog::{ConnLog, Event, What, Who};
use crate::encoder::{Gather, Mp3Frame};

/// A listener's connection as the hub sees it.
pub trait ListenerSink: Send {
    /// Non-blocking write: may be partial; `WouldBlock` when full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Like `write`, for several buffers in order, in one system call
    /// where the sink can (by default, the first non-empty buffer).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.write(b),
            None => Ok(0),
        }
    }
    /// Ends the connection; `abort` resets it (slow listener).
    fn close(&mut self, abort: bool);
}

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub slow_timeout: Duration,
    pub max_listeners: usize,
    /// The most connections from one client address.
    pub per_address: usize,
    /// Recent frames a new listener gets at once (at least 1).
    pub burst_frames: usize,
    /// How long one MP3 frame plays: 24 ms at 48 kHz, 26.1 ms at 44.1 kHz.
    pub frame: Duration,
}

/// The most frames gathered into one write to a listener (192 ms).
const MAX_WRITE_BATCH: u64 = 8;

/// How many frames a listener's writes gather, for a listener whose burst
/// is `burst` frames: half its burst, 1 to [`MAX_WRITE_BATCH`]. One write
/// per frame (42 a second) costs the broadcast loop a system call and a TCP
/// segment per frame per listener; gathering four cuts that to a quarter
/// at every listener count. The listener's player holds the burst, so a
/// frame held back for less than half of it never starves the player: at
/// the default 200 ms burst (8 frames) a write carries up to 4 frames, a
/// frame waits at most 72 ms, and the player keeps at least 120 ms in hand.
/// A larger burst (`http.burst_ms = 400`) gathers 8, halving the writes
/// again for 0.2 s more lag. A listener that asks for a burst of one or two
/// frames (lowest latency) gets every frame as it comes.
fn write_batch(burst: usize) -> u64 {
    (burst as u64 / 2).clamp(1, MAX_WRITE_BATCH)
}

/// The largest burst a listener can ask for: 5 s.
pub const MAX_BURST_FRAMES: usize = 209;

impl HubConfig {
    /// Frames a listener with a burst of `burst` frames may have queued:
    /// the burst, what the timeout spans, plus room for the frame that
    /// catches it.
    fn max_queue(&self, burst: usize) -> usize {
        burst + (self.slow_timeout.as_micros() / self.frame.as_micros().max(1)) as usize + 3
    }

    /// Whole frames of `frame` each for a burst of `ms` milliseconds, at
    /// least one.
    pub fn frames_for(ms: u64, frame: Duration) -> usize {
        ((ms as f64 / frame.as_secs_f64() / 1000.0).round() as usize).max(1)
    }
}

/// Who a listener is: its address and the player it says it is.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Its `User-Agent` (at most 200 characters), or "".
    pub agent: String,
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            agent: String::new(),
        }
    }
}

/// One listener, as the owner's page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerView {
    pub peer: String,
    pub agent: String,
    pub connected_s: f64,
    pub bytes: u64,
}

struct Listener {
    id: u64,
    peer: SocketAddr,
    /// The address its admission counted against.
    ip: IpAddr,
    /// Its `User-Agent`, as it said.
    agent: String,
    sink: Box<dyn ListenerSink>,
    queue: VecDeque<Mp3Frame>,
    /// Frames it may have queued before it counts as slow.
    max_queue: usize,
    /// Frames each write gathers ([`write_batch`]).
    batch: u64,
    /// Bytes of the front frame already written.
    offset: usize,
    stuck_since: Option<Instant>,
    connected_at: Instant,
    bytes: u64,
}

enum Flush {
    Drained,
    Pending,
    Gone(io::Error),
}

/// Frames handed to the kernel in one write.
const WRITE_FRAMES: usize = 8;

impl Listener {
    fn flush(&mut self) -> Flush {
        while !self.queue.is_empty() {
            let mut bufs = [io::IoSlice::new(&[]); WRITE_FRAMES];
            for (i, frame) in self.queue.iter().take(WRITE_FRAMES).enumerate() {
                let skip = if i == 0 { self.offset } else { 0 };
                bufs[i] = io::IoSlice::new(&frame[skip..]);
            }
            match self.sink.write_vectored(&bufs) {
                Ok(0) => return Flush::Gone(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.bytes += n as u64;
                    self.consume(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Flush::Pending,
                Err(e) => return Flush::Gone(e),
            }
        }
        Flush::Drained
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        while let Some(front) = self.queue.front() {
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.queue.pop_front();
            self.offset = 0;
        }
    }
}

/// Why a listener left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Slow,
    Gone,
}

/// Applies `f` to every listener; those it gives a reason to leave are
/// taken out, for the caller to remove outside the lock.
fn sweep(inner: &mut Inner, mut f: impl FnMut(&mut Listener) -> Option<Leave>) -> Vec<(Listener, Leave)> {
    let mut leaving = Vec::new();
    let mut i = 0;
    while i < inner.listeners.len() {
        match f(&mut inner.listeners[i]) {
            None => i += 1,
            Some(why) => {
                let l = inner.listeners.swap_remove(i);
                inner.by_batch[l.batch as usize] -= 1;
                leaving.push((l, why));
            }
        }
    }
    leaving
}

#[derive(Default)]
struct Counters {
    connected_total: AtomicU64,
    slow_dropped: AtomicU64,
    disconnected: AtomicU64,
    closed_on_shutdown: AtomicU64,
    rejected_full: AtomicU64,
    rejected_per_address: AtomicU64,
    frames: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubSnapshot {
    pub current: usize,
    pub max: usize,
    pub connected_total: u64,
    /// Dropped because they could not keep up [H2].
    pub slow_dropped: u64,
    /// Left on their own (closed, reset).
    pub disconnected: u64,
    pub closed_on_shutdown: u64,
    /// Refused with 503 at the listener limit.
    pub rejected_full: u64,
    /// Refused with 503 at the limit per client address.
    pub rejected_per_address: u64,
    pub frames_broadcast: u64,
    /// Connection events the log never saw (its queue was full).
    pub log_events_lost: u64,
}

struct Inner {
    listeners: Vec<Listener>,
    /// The last [`MAX_BURST_FRAMES`] frames, oldest first.
    recent: VecDeque<Mp3Frame>,
    /// When the newest of them was broadcast.
    recent_at: Option<Instant>,
    next_id: u64,
    /// This turn's frames are gathered: written at [`Hub::end_turn`], not
    /// as each comes (decided by [`Hub::gather`]).
    gathering: bool,
    /// Listeners by the frames each write gathers ([`write_batch`]), so
    /// that [`Hub::gather`] need not look at every listener every turn.
    by_batch: [usize; MAX_WRITE_BATCH as usize + 1],
}

pub struct Hub {
    config: HubConfig,
    /// The burst a new listener gets unless it asks for its own: the
    /// owner may change it while Tower runs (`http.burst_ms`).
    pub(crate) burst_frames: AtomicUsize,
    /// Whom it serves, for the log.
    who: Who,
    /// Where connections, departures and refusals are logged.
    log: Arc<ConnLog>,
    inner: Mutex<Inner>,
    /// Listeners plus connections being set up: what the limit counts.
    admitted: AtomicUsize,
    /// The same, per client address (addresses with none are removed).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Called when a first client is admitted: frames were gathered until
    /// the pacer's deadline while no one listened, and the loop must wait
    /// as listeners need again ([`crate::broadcast::Listeners::gather`]).
    on_first: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    counters: Counters,
}

/// A reserved place under the limits; released if not used.
pub struct Admission<'a> {
    hub: &'a Hub,
    ip: IpAddr,
    used: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.hub.release(self.ip);
        }
    }
}

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken.
    Full,
    /// The client's address holds its share already.
    PerAddress,
}

impl Hub {
    /// A hub serving `who`, logging through `log`.
    pub fn new(config: HubConfig, who: Who, log: Arc<ConnLog>) -> Self {
        Hub {
            config,
            burst_frames: AtomicUsize::new(config.burst_frames),
            who,
            log,
            inner: Mutex::new(Inner {
                listeners: Vec::new(),
                recent: VecDeque::new(),
                recent_at: None,
                next_id: 1,
                gathering: false,
                by_batch: [0; MAX_WRITE_BATCH as usize + 1],
            }),
            admitted: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            on_first: std::sync::OnceLock::new(),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The burst new listeners get from now on; listeners already
    /// connected keep theirs.
    pub fn set_burst_frames(&self, frames: usize) {
        self.burst_frames
            .store(frames.clamp(1, MAX_BURST_FRAMES), Ordering::Relaxed);
    }

    /// Whole frames for a burst of `ms` milliseconds of this hub's stream.
    pub fn frames_for(&self, ms: u64) -> usize {
        HubConfig::frames_for(ms, self.config.frame)
    }

    /// Reserves a place for a new client at `peer`, or says why not
    /// (counted and logged): the limit in all, or the limit per address.
    pub fn admit(&self, peer: SocketAddr) -> Result<Admission<'_>, Refusal> {
        let ip = peer.ip();
        let refuse = |why: Refusal, counter: &AtomicU64, limit: usize| {
            counter.fetch_add(1, Ordering::Relaxed);
            self.note(0, peer, What::Refused { why, limit });
            Err(why)
        };
        let max = self.config.max_listeners;
        let before = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
        match before {
            Err(_) => return refuse(Refusal::Full, &self.counters.rejected_full, max),
            Ok(0) => {
                if let Some(wake) = self.on_first.get() {
                    wake();
                }
            }
            Ok(_) => {}
        }
        let mut per_address = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_address.entry(ip).or_insert(0);
        if *mine >= self.config.per_address {
            drop(per_address);
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                Refusal::PerAddress,
                &self.counters.rejected_per_address,
                self.config.per_address,
            );
        }
        *mine += 1;
        Ok(Admission {
            hub: self,
            ip,
            used: false,
        })
    }

    fn note(&self, id: u64, peer: SocketAddr, what: What) {
        self.log.note(Event {
            who: self.who,
            id,
            peer,
            what,
        });
    }

    /// Where this hub logs (the status pages' hub shares the listeners').
    pub fn log(&self) -> Arc<ConnLog> {
        self.log.clone()
    }

    /// Gives back a place taken by `ip`.
    fn release(&self, ip: IpAddr) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
        let mut per_address = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&ip);
            }
        }
    }

    /// Adds a listener. It first gets the most recent frames at once (the
    /// burst: `burst` frames, else the configured number), so a player
    /// fills its buffer and starts without waiting; then live frames. The
    /// burst is also how far behind live it plays.
    pub fn add(
        &self,
        mut admission: Admission<'_>,
        peer: impl Into<Peer>,
        sink: Box<dyn ListenerSink>,
        burst: Option<usize>,
        now: Instant,
    ) -> u64 {
        let burst = burst
            .unwrap_or_else(|| self.burst_frames.load(Ordering::Relaxed))
            .clamp(1, MAX_BURST_FRAMES);
        admission.used = true;
        let peer = peer.into();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let mut listener = Listener {
            id,
            peer: peer.addr,
            ip: admission.ip,
            agent: peer.agent.chars().take(200).collect(),
            sink,
            queue: VecDeque::new(),
            max_queue: self.config.max_queue(burst),
            batch: write_batch(burst),
            offset: 0,
            stuck_since: None,
            connected_at: now,
            bytes: 0,
        };
        // Frames gathered while no one listened may not all have come yet
        // (see `Listeners::gather`): what is missing of the newest, beyond
        // the one due about now, comes in a moment, so as many of the
        // oldest are left out, and the listener is no further behind live
        // than its burst. Frames flowing one by one are never missing.
        let periods = inner.recent_at.map_or(0, |at| {
            now.saturating_duration_since(at).as_nanos() / self.config.frame.as_nanos().max(1)
        });
        let stale = usize::try_from(periods).unwrap_or(usize::MAX).saturating_sub(1);
        let skip = inner.recent.len().saturating_sub(burst.saturating_sub(stale).max(1));
        listener.queue.extend(inner.recent.iter().skip(skip).cloned());
        let verdict = self.step(&mut listener, now);
        self.counters.connected_total.fetch_add(1, Ordering::Relaxed);
        let peer = listener.peer;
        inner.by_batch[listener.batch as usize] += 1;
        inner.listeners.push(listener);
        let count = inner.listeners.len();
        let left = verdict.and_then(|leave| {
            let l = inner.listeners.pop()?;
            inner.by_batch[l.batch as usize] -= 1;
            Some((l, leave))
        });
        // Close outside the lock: the broadcast thread waits on it.
        drop(inner);
        self.note(id, peer, What::Connected { count });
        if let Some((l, leave)) = left {
            self.remove(l, leave, now);
        }
        id
    }

    /// Decides a listener's fate after a flush: `None` keeps it.
    fn step(&self, l: &mut Listener, now: Instant) -> Option<Leave> {
        if l.queue.len() > l.max_queue {
            return Some(Leave::Slow);
        }
        match l.flush() {
            Flush::Drained => {
                l.stuck_since = None;
                None
            }
            Flush::Pending => {
                let since = *l.stuck_since.get_or_insert(now);
                (now.saturating_duration_since(since) >= self.config.slow_timeout).then_some(Leave::Slow)
            }
            Flush::Gone(e) => {
                tracing::debug!(component = "http", listener = l.id, error = %e, "write failed");
                Some(Leave::Gone)
            }
        }
    }

    fn remove(&self, mut l: Listener, why: Leave, now: Instant) {
        self.release(l.ip);
        let seconds = now.saturating_duration_since(l.connected_at).as_secs_f64();
        let what = match why {
            Leave::Slow => {
                self.counters.slow_dropped.fetch_add(1, Ordering::Relaxed);
                What::Dropped {
                    seconds,
                    queued: l.queue.len(),
                    timeout: self.config.slow_timeout,
                }
            }
            Leave::Gone => {
                self.counters.disconnected.fetch_add(1, Ordering::Relaxed);
                What::Left {
                    seconds,
                    bytes: l.bytes,
                }
            }
        };
        self.note(l.id, l.peer, what);
        l.sink.close(why == Leave::Slow);
    }

    /// Sends `frame` to every listener without blocking on any of them:
    /// queues it, and writes those whose turn it is, unless this turn's
    /// frames are gathered ([`Hub::end_turn`] writes them).
    pub fn broadcast(&self, frame: &Mp3Frame, now: Instant) {
        let leaving = {
            let mut inner = self.lock();
            if inner.recent.len() >= MAX_BURST_FRAMES {
                inner.recent.pop_front();
            }
            inner.recent.push_back(frame.clone());
            inner.recent_at = Some(now);
            let turn = self.counters.frames.load(Ordering::Relaxed);
            let gathering = inner.gathering;
            sweep(&mut inner, |l| {
                l.queue.push_back(frame.clone());
                // Each listener's turn comes every `batch` frames, staggered
                // by its id so every broadcast writes to a share of them.
                let due = !gathering && ((turn + l.id).is_multiple_of(l.batch) || l.queue.len() > l.batch as usize);
                if due {
                    self.step(l, now)
                } else {
                    (l.queue.len() > l.max_queue).then_some(Leave::Slow)
                }
            })
        };
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        for (l, why) in leaving {
            self.remove(l, why, now);
        }
    }

    /// The end of the broadcast loop's turn: when its frames were
    /// gathered, each listener gets them in one write.
    pub fn end_turn(&self, now: Instant) {
        let leaving = {
            let mut inner = self.lock();
            if !inner.gathering {
                return;
            }
            sweep(
                &mut inner,
                |l| {
                    if l.queue.is_empty() { None } else { self.step(l, now) }
                },
            )
        };
        for (l, why) in leaving {
            self.remove(l, why, now);
        }
    }

    /// How the broadcast loop may wait for its next turn's frames, which
    /// decides how this hub writes them. No one admitted: until the
    /// pacer's deadline. Listeners whose writes each gather two frames or
    /// more: the loop takes frames in turns of the smallest such batch (4
    /// frames, 96 ms, at the default burst), each ending as its last frame
    /// comes, and every listener gets the turn's frames in one write, so
    /// no frame waits longer than it would for its listener's own batch
    /// (72 ms). That is a wake-up of the loop per turn instead of one per
    /// frame, the same writes, and all of them in one burst. A listener
    /// that asked for every frame as it comes (a burst of one or two
    /// frames) gets just that: the loop takes frames one by one and the
    /// others' writes are staggered over them.
    pub fn gather(&self) -> Gather {
        if self.admitted() == 0 {
            return Gather::Idle;
        }
        let mut inner = self.lock();
        let smallest = inner.by_batch.iter().position(|n| *n > 0).unwrap_or(1);
        inner.gathering = smallest > 1;
        if inner.gathering {
            Gather::Every(self.config.frame * u32::try_from(smallest).unwrap_or(1))
        } else {
            Gather::No
        }
    }

    pub fn len(&self) -> usize {
        self.lock().listeners.len()
    }

    /// The most listeners from one address.
    pub fn per_address(&self) -> usize {
        self.config.per_address
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Listeners admitted (connected, or being set up): one atomic load,
    /// for readers that must not take the hub's lock.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Closes every listener (service stop); they see the stream end.
    pub fn close_all(&self) {
        let listeners = {
            let mut inner = self.lock();
            inner.by_batch = [0; MAX_WRITE_BATCH as usize + 1];
            std::mem::take(&mut inner.listeners)
        };
        for mut l in listeners {
            let _ = l.flush();
            l.sink.close(false);
            self.release(l.ip);
            self.counters.closed_on_shutdown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every listener now: who, for how long, how much it took.
    pub fn listeners(&self, now: Instant) -> Vec<ListenerView> {
        self.lock()
            .listeners
            .iter()
            .map(|l| ListenerView {
                peer: l.peer.to_string(),
                agent: l.agent.clone(),
                connected_s: now.saturating_duration_since(l.connected_at).as_secs_f64(),
                bytes: l.bytes,
            })
            .collect()
    }

    pub fn snapshot(&self) -> HubSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        HubSnapshot {
            current: self.len(),
            max: self.config.max_listeners,
            connected_total: l(&c.connected_total),
            slow_dropped: l(&c.slow_dropped),
            disconnected: l(&c.disconnected),
            closed_on_shutdown: l(&c.closed_on_shutdown),
            rejected_full: l(&c.rejected_full),
            rejected_per_address: l(&c.rejected_per_address),
            frames_broadcast: l(&c.frames),
            log_events_lost: self.log.lost(),
        }
    }
}

impl crate::broadcast::Listeners for Hub {
    fn broadcast(&self, frame: &Mp3Frame, now: Instant) {
        Hub::broadcast(self, frame, now);
    }

    fn end_turn(&self, now: Instant) {
        Hub::end_turn(self, now);
    }

    fn gather(&self) -> Gather {
        Hub::gather(self)
    }

    /// Called when a first client is admitted (set once; later calls are
    /// ignored).
    fn on_first(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_first.set(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::FRAME_DURATION;
    use std::sync::Arc;

    /// A fake connection: takes up to `room` bytes, then WouldBlock.
    #[derive(Default)]
    struct Conn {
        data: Vec<u8>,
        room: usize,
        gone: bool,
        closed: Option<bool>,
    }

    #[derive(Clone, Default)]
    struct FakeSink(Arc<Mutex<Conn>>);

    impl FakeSink {
        fn open(room: usize) -> Self {
            FakeSink(Arc::new(Mutex::new(Conn {
                room,
                ..Conn::default()
            })))
        }
        fn get(&self) -> MutexGuard<'_, Conn> {
            self.0.lock().expect("lock")
        }
    }

    impl ListenerSink for FakeSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut c = self.get();
            if c.gone {
                return Err(io::Error::from(ErrorKind::BrokenPipe));
            }
            if c.room == 0 {
                return Err(io::Error::from(ErrorKind::WouldBlock));
            }
            let n = buf.len().min(c.room);
            c.data.extend_from_slice(&buf[..n]);
            c.room -= n;
            Ok(n)
        }
        fn close(&mut self, abort: bool) {
            self.get().closed = Some(abort);
        }
    }

    /// Where the test listeners connect from.
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 50_000);

    fn hub() -> Hub {
        hub_with_burst(1)
    }

    fn hub_with_burst(burst_frames: usize) -> Hub {
        listener_hub(config(3, 3, burst_frames))
    }

    fn listener_hub(config: HubConfig) -> Hub {
        Hub::new(config, Who::Listener, Arc::new(ConnLog::default()))
    }

    /// A 250 ms slow timeout and these limits and burst.
    fn config(max_listeners: usize, per_address: usize, burst_frames: usize) -> HubConfig {
        HubConfig {
            slow_timeout: Duration::from_millis(250),
            max_listeners,
            per_address,
            burst_frames,
            frame: FRAME_DURATION,
        }
    }

    /// Admits and adds a listener backed by `sink`.
    fn join(h: &Hub, sink: &FakeSink, now: Instant) {
        join_from(h, PEER, sink, now);
    }

    /// Admits and adds a listener from `peer` backed by `sink`.
    fn join_from(h: &Hub, peer: SocketAddr, sink: &FakeSink, now: Instant) {
        let admission = h.admit(peer).expect("room");
        h.add(admission, peer, Box::new(sink.clone()), None, now);
    }

    fn frame(tag: u8) -> Mp3Frame {
        Mp3Frame::from(vec![tag; 384])
    }

    const P: Duration = FRAME_DURATION;

    /// Counts the writes a sink gets.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<(usize, Vec<u8>)>>);

    impl ListenerSink for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[io::IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let mut c = self.0.lock().expect("lock");
            c.0 += 1;
            let mut n = 0;
            for b in bufs {
                c.1.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }
        fn close(&mut self, _: bool) {}
    }

    #[test]
    fn when_the_listener_asking_for_every_frame_leaves_the_turns_come_back() {
        let h = listener_hub(config(100, 100, 8));
        let t0 = Instant::now();
        h.broadcast(&frame(0), t0);
        h.add(
            h.admit(PEER).expect("room"),
            PEER,
            Box::new(Counting::default()),
            None,
            t0,
        );
        let eager = FakeSink::open(1 << 20);
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(eager.clone()), Some(1), t0);
        assert_eq!(h.gather(), Gather::No);
        eager.get().gone = true;
        h.broadcast(&frame(1), t0 + P);
        assert_eq!(h.len(), 1, "its write failed: it left");
        assert_eq!(h.gather(), Gather::Every(P * 4));
        h.close_all();
        assert_eq!(h.gather(), Gather::Idle);
        h.add(
            h.admit(PEER).expect("room"),
            PEER,
            Box::new(Counting::default()),
            Some(1),
            t0,
        );
        assert_eq!(h.gather(), Gather::No, "counted afresh after close_all");
    }

    #[test]
    fn writes_gather_up_to_half_the_burst_and_nothing_is_lost_or_late() {
        assert_eq!((write_batch(1), write_batch(2), write_batch(3)), (1, 1, 1));
        assert_eq!((write_batch(4), write_batch(8), write_batch(9)), (2, 4, 4));
        assert_eq!((write_batch(17), write_batch(209)), (8, 8));
        for listeners in [1, 3, 1_600] {
            let h = listener_hub(config(2_000, 2_000, 8));
            let t0 = Instant::now();
            h.broadcast(&frame(0), t0);
            let sinks: Vec<Counting> = (0..listeners).map(|_| Counting::default()).collect();
            for s in &sinks {
                h.add(h.admit(PEER).expect("room"), PEER, Box::new(s.clone()), None, t0);
            }
            let before: Vec<usize> = sinks.iter().map(|s| s.0.lock().expect("lock").0).collect();
            for t in 1..=40u8 {
                h.broadcast(&frame(t), t0 + P * u32::from(t));
                // No frame waits more than 3 frames (72 ms) behind the
                // newest: half the default burst, which the player holds.
                for s in &sinks {
                    let got = s.0.lock().expect("lock").1.len() / 384;
                    assert!(got + 3 > usize::from(t), "{got} frames after frame {t}");
                }
            }
            for (s, b) in sinks.iter().zip(before) {
                let c = s.0.lock().expect("lock");
                // One write per 4 frames, not per frame.
                assert!(c.0 - b <= 11, "{} writes for 40 frames", c.0 - b);
                // Every frame arrives, in order, up to the last batch.
                let frames: Vec<u8> = c.1.chunks(384).map(|f| f[0]).collect();
                assert!(frames.len() >= 38, "{} frames", frames.len());
                assert!(frames.windows(2).all(|w| w[1] == w[0] + 1), "{frames:?}");
            }
            assert_eq!(h.snapshot().slow_dropped, 0);
        }
    }

    /// The frames a counting sink got, by their tag, and its writes.
    fn got(s: &Counting) -> (Vec<u8>, usize) {
        let c = s.0.lock().expect("lock");
        (c.1.chunks(384).map(|f| f[0]).collect(), c.0)
    }

    #[test]
    fn listeners_get_each_turns_gathered_frames_in_one_write() {
        let h = listener_hub(config(100, 100, 8));
        let t0 = Instant::now();
        h.broadcast(&frame(0), t0);
        let sinks: Vec<Counting> = (0..3).map(|_| Counting::default()).collect();
        for s in &sinks {
            h.add(h.admit(PEER).expect("room"), PEER, Box::new(s.clone()), None, t0);
        }
        // Writes gather 4 frames: the loop takes them in turns of 4.
        assert_eq!(h.gather(), Gather::Every(P * 4));
        for turn in 0..5u8 {
            let (_, writes) = got(&sinks[0]);
            for t in 1..=4 {
                let tag = turn * 4 + t;
                h.broadcast(&frame(tag), t0 + P * u32::from(tag));
                assert_eq!(got(&sinks[0]).1, writes, "nothing is written before the turn ends");
            }
            h.end_turn(t0 + P * u32::from(turn * 4 + 4));
            assert_eq!(h.gather(), Gather::Every(P * 4));
            for s in &sinks {
                let (frames, w) = got(s);
                assert_eq!(frames, (0..=turn * 4 + 4).collect::<Vec<u8>>());
                assert_eq!(w, usize::from(turn) + 2, "the burst, then one write per turn");
            }
        }
        // A listener at a 400 ms burst (8 frames a write) does not make
        // the turns longer: the smallest batch decides.
        let big = Counting::default();
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(big.clone()), Some(16), t0);
        assert_eq!(h.gather(), Gather::Every(P * 4));
        assert_eq!(h.snapshot().slow_dropped, 0);
    }

    #[test]
    fn many_listeners_gather_too_and_one_asking_for_every_frame_turns_gathering_off() {
        let h = listener_hub(config(3000, 3000, 8));
        assert_eq!(h.gather(), Gather::Idle, "no one listens");
        let t0 = Instant::now();
        h.broadcast(&frame(0), t0);
        let sinks: Vec<Counting> = (0..2000).map(|_| Counting::default()).collect();
        for s in &sinks {
            h.add(h.admit(PEER).expect("room"), PEER, Box::new(s.clone()), None, t0);
        }
        assert_eq!(h.gather(), Gather::Every(P * 4), "2 000 listeners: turns, as for 3");
        let writes = |sinks: &[Counting]| sinks.iter().map(|s| got(s).1).sum::<usize>();
        let before = writes(&sinks);
        for t in 1..=4 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
        }
        assert_eq!(writes(&sinks), before, "nothing before the turn ends");
        h.end_turn(t0 + P * 4);
        assert_eq!(writes(&sinks), before + 2000, "one write each per turn");
        // One listener asking for every frame: frames one by one, and the
        // others' writes staggered over them.
        let last = Counting::default();
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(last.clone()), Some(1), t0);
        assert_eq!(h.gather(), Gather::No);
        let before = writes(&sinks);
        h.broadcast(&frame(5), t0 + P * 5);
        let now = writes(&sinks);
        assert!(now > before && now - before < 1000, "a share written per frame");
        // A few listeners, one asking for a one-frame burst: every frame
        // as it comes, to each.
        let h = listener_hub(config(100, 100, 8));
        let (a, b) = (Counting::default(), Counting::default());
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(a.clone()), None, t0);
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(b.clone()), Some(1), t0);
        assert_eq!(h.gather(), Gather::No);
        for t in 0..8u8 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
            assert_eq!(got(&b).0.len(), usize::from(t) + 1);
        }
        h.end_turn(t0 + P * 8);
        assert!(got(&a).1 <= 3, "{} writes: staggered batches of 4", got(&a).1);
    }

    #[test]
    fn a_listener_asking_for_a_one_frame_burst_gets_every_frame_as_it_comes() {
        let h = hub_with_burst(8);
        let t0 = Instant::now();
        let s = Counting::default();
        h.add(h.admit(PEER).expect("room"), PEER, Box::new(s.clone()), Some(1), t0);
        for t in 0..10u8 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
            let c = s.0.lock().expect("lock");
            assert_eq!((c.0, c.1.len()), (usize::from(t) + 1, (usize::from(t) + 1) * 384));
        }
    }

    #[test]
    fn every_listener_gets_the_same_whole_frames() {
        let h = hub();
        let t0 = Instant::now();
        let a = FakeSink::open(usize::MAX);
        let b = FakeSink::open(usize::MAX);
        join(&h, &a, t0);
        join(&h, &b, t0);
        for t in 0..10u8 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
        }
        let expected: Vec<u8> = (0..10u8).flat_map(|t| vec![t; 384]).collect();
        assert_eq!(a.get().data, expected);
        assert_eq!(b.get().data, expected);
        assert_eq!(h.snapshot().frames_broadcast, 10);
    }

    #[test]
    fn a_new_listener_gets_the_latest_frame_at_once() {
        let h = hub();
        let t0 = Instant::now();
        h.broadcast(&frame(7), t0);
        let a = FakeSink::open(usize::MAX);
        join(&h, &a, t0);
        assert_eq!(a.get().data, vec![7; 384]);
    }

    #[test]
    fn a_first_listener_wakes_a_gathering_loop_and_is_no_further_behind_live_than_its_burst() {
        use crate::broadcast::Listeners;
        let h = hub_with_burst(5);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        h.on_first(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(Listeners::gather(&h), Gather::Idle);
        let t0 = Instant::now();
        for t in 0..30u8 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
        }
        // Frames were gathered: the newest came 3.5 periods ago, so frames
        // 30 and 31 are still in the encoder's socket (32 is due now).
        let a = FakeSink::open(usize::MAX);
        join(&h, &a, t0 + P * 29 + P * 7 / 2);
        assert_eq!(woken.load(Ordering::SeqCst), 1, "the first admission wakes the loop");
        assert_eq!(h.admitted(), 1, "the loop no longer waits for the pacer");
        assert_eq!(a.get().data, (27..30u8).flat_map(|t| vec![t; 384]).collect::<Vec<u8>>());
        // The woken loop brings them: the listener holds its burst of 5.
        h.broadcast(&frame(30), t0 + P * 33);
        h.broadcast(&frame(31), t0 + P * 33);
        assert_eq!(a.get().data.len(), 5 * 384);
        // A second listener wakes nothing; frames flowing one by one (the
        // next one due now) leave nothing out.
        let b = FakeSink::open(usize::MAX);
        join(&h, &b, t0 + P * 34);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(b.get().data, (27..32u8).flat_map(|t| vec![t; 384]).collect::<Vec<u8>>());
    }

    #[test]
    fn a_new_listener_gets_the_burst_then_live_frames_in_order() {
        let h = hub_with_burst(5);
        let t0 = Instant::now();
        for t in 0..30u8 {
            h.broadcast(&frame(t), t0 + P * u32::from(t));
        }
        // A client whose socket takes 2 frames now: the rest of the burst
        // waits in its queue, and it is not taken for slow.
        let a = FakeSink::open(384 * 2);
        join(&h, &a, t0 + P * 30);
        assert_eq!(a.get().data, [vec![25; 384], vec![26; 384]].concat());
        a.get().room = usize::MAX;
        h.broadcast(&frame(30), t0 + P * 31);
        let expected: Vec<u8> = (25..=30u8).flat_map(|t| vec![t; 384]).collect();
        assert_eq!(a.get().data, expected);
        assert_eq!(h.snapshot().slow_dropped, 0);
        // A listener may ask for its own burst.
        let b = FakeSink::open(usize::MAX);
        h.add(
            h.admit(PEER).expect("room"),
            PEER,
            Box::new(b.clone()),
            Some(2),
            t0 + P * 31,
        );
        assert_eq!(b.get().data, [vec![29; 384], vec![30; 384]].concat());
        assert_eq!(HubConfig::frames_for(500, P), 21);
        assert_eq!(HubConfig::frames_for(0, P), 1);
        assert_eq!(HubConfig::frames_for(250, P), 10);
        // At 44.1 kHz a frame plays 26.1 ms: 200 ms is 8 frames, 5 s 191.
        let cd = crate::encoder::mp3::frame_duration(44_100);
        assert_eq!(HubConfig::frames_for(200, cd), 8);
        assert_eq!(HubConfig::frames_for(5_000, cd), 191);
    }

    #[test]
    fn before_the_first_frame_a_listener_waits_without_data() {
        let h = hub();
        let a = FakeSink::open(usize::MAX);
        join(&h, &a, Instant::now());
        assert!(a.get().data.is_empty());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_stuck_listener_is_dropped_after_the_timeout_and_the_healthy_one_loses_nothing() {
        let h = hub();
        let t0 = Instant::now();
        let healthy = FakeSink::open(usize::MAX);
        let stuck = FakeSink::open(384 * 3 + 100); // takes 3.26 frames, then nothing
        join(&h, &healthy, t0);
        join(&h, &stuck, t0);
        let mut dropped_at = None;
        for k in 0..40u32 {
            let now = t0 + P * k;
            h.broadcast(&frame(k as u8), now);
            if dropped_at.is_none() && stuck.get().closed.is_some() {
                dropped_at = Some(now);
            }
        }
        // Stuck from the 4th frame (72 ms); dropped on the first frame at or
        // after 72 + 250 ms.
        assert_eq!(dropped_at, Some(t0 + P * 14));
        assert_eq!(stuck.get().closed, Some(true), "slow listeners are reset");
        assert_eq!(healthy.get().data.len(), 40 * 384);
        let s = h.snapshot();
        assert_eq!((s.current, s.slow_dropped, s.disconnected), (1, 1, 0));
    }

    #[test]
    fn a_brief_hiccup_shorter_than_the_timeout_is_forgiven() {
        let h = hub();
        let t0 = Instant::now();
        let l = FakeSink::open(384);
        join(&h, &l, t0);
        for k in 0..8u32 {
            h.broadcast(&frame(k as u8), t0 + P * k);
        }
        // 7 frames queued for 168 ms; then the client reads everything.
        l.get().room = usize::MAX;
        h.broadcast(&frame(8), t0 + P * 8);
        assert_eq!(l.get().data.len(), 9 * 384);
        assert!(l.get().closed.is_none());
        assert_eq!(h.snapshot().slow_dropped, 0);
    }

    #[test]
    fn a_client_that_left_is_removed_and_counted() {
        let h = hub();
        let t0 = Instant::now();
        let l = FakeSink::open(usize::MAX);
        join(&h, &l, t0);
        l.get().gone = true;
        h.broadcast(&frame(1), t0);
        assert_eq!(l.get().closed, Some(false));
        let s = h.snapshot();
        assert_eq!((s.current, s.disconnected, s.slow_dropped), (0, 1, 0));
    }

    #[test]
    fn the_listener_limit_is_enforced_and_places_are_given_back() {
        let h = hub();
        let t0 = Instant::now();
        let sinks: Vec<FakeSink> = (0..3).map(|_| FakeSink::open(usize::MAX)).collect();
        for s in &sinks {
            join(&h, s, t0);
        }
        assert!(h.admit(PEER).is_err());
        assert_eq!(h.snapshot().rejected_full, 1);
        // An admission given up (setup failed) does not leak a place.
        sinks[0].get().gone = true;
        h.broadcast(&frame(1), t0);
        {
            let a = h.admit(PEER).expect("a place came free");
            drop(a);
        }
        assert!(h.admit(PEER).is_ok());
    }

    #[test]
    fn one_address_takes_no_more_than_its_share_and_others_still_get_in() {
        let h = listener_hub(config(10, 3, 1));
        let t0 = Instant::now();
        let other = SocketAddr::from(([10, 0, 0, 2], 50_000));
        let sinks: Vec<FakeSink> = (0..3).map(|_| FakeSink::open(usize::MAX)).collect();
        for s in &sinks {
            join(&h, s, t0);
        }
        for _ in 0..500 {
            assert_eq!(h.admit(PEER).err(), Some(Refusal::PerAddress));
        }
        join_from(&h, other, &FakeSink::open(usize::MAX), t0);
        let s = h.snapshot();
        assert_eq!((s.current, s.rejected_per_address, s.rejected_full), (4, 500, 0));
        // A listener that leaves, or an admission not used, gives its
        // address's place back.
        sinks[0].get().gone = true;
        h.broadcast(&frame(1), t0);
        drop(h.admit(PEER).expect("a place came free"));
        join(&h, &FakeSink::open(usize::MAX), t0);
        assert_eq!(h.admit(PEER).err(), Some(Refusal::PerAddress));
        h.close_all();
        assert!(h.per_address.lock().expect("lock").is_empty(), "nothing left counted");
    }

    #[test]
    fn arrivals_departures_drops_and_refusals_go_to_the_log_without_blocking() {
        let h = listener_hub(config(1, 1, 1));
        let t0 = Instant::now();
        let a = FakeSink::open(usize::MAX);
        join(&h, &a, t0);
        assert_eq!(h.admit(PEER).err(), Some(Refusal::Full));
        a.get().gone = true;
        h.broadcast(&frame(1), t0 + P);
        let stuck = FakeSink::open(0);
        join(&h, &stuck, t0 + P);
        h.broadcast(&frame(2), t0 + P * 20);
        h.broadcast(&frame(3), t0 + P * 40);
        let what: Vec<&str> = h
            .log()
            .drain()
            .iter()
            .map(|e| match e.what {
                What::Connected { .. } => "connected",
                What::Left { .. } => "left",
                What::Dropped { .. } => "dropped",
                What::Refused { .. } => "refused",
            })
            .collect();
        assert_eq!(what, ["connected", "refused", "left", "connected", "dropped"]);
        // Nobody takes the events: the hub goes on, and counts the loss.
        for _ in 0..2_000 {
            join(&h, &FakeSink::open(usize::MAX), t0);
            h.close_all();
        }
        assert!(h.log().lost() > 0);
    }

    #[test]
    fn close_all_ends_every_connection() {
        let h = hub();
        let a = FakeSink::open(usize::MAX);
        join(&h, &a, Instant::now());
        h.close_all();
        assert_eq!(a.get().closed, Some(false));
        assert_eq!(h.snapshot().closed_on_shutdown, 1);
        assert!(h.is_empty());
        assert!(h.admit(PEER).is_ok());
    }
}
