//! The accept loop: one "http" thread (owned by [`super::HttpServer`])
//! accepts connections, reads each request head without blocking, and
//! answers it or hands the connection to a hub, polling every pending
//! connection at once (`poll(2)`), so no client can hold a thread.
//!
//! Each connection serves one request (`Connection: close`): read the head
//! ([`request::parse`]), then either write the answer and close, or (for
//! `/stream` and `/events`) give the socket to the [`Handler`], which hands
//! it to a hub. The [`guard`] bounds pending connections in time and
//! number.
//!
//! Out of descriptors (EMFILE), `accept` would fail over and over while the
//! kernel keeps the connection queued. The loop keeps one spare descriptor:
//! it frees it, accepts the waiting connection, closes it at once (counted
//! as shed), and takes the spare back, so the queue drains and the server
//! answers again as soon as descriptors are free.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::guard::{Cut, Limits, Pending};
use super::request::{self, MAX_REQUEST, Parse, Refusal, Request};
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, WakeFd, readable};

/// How long accepting pauses when the kernel is out of memory for sockets.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 4096;

/// What a request gets.
pub enum Answer<'a> {
    /// A whole response; written, then the connection is closed.
    Bytes(Vec<u8>),
    /// The connection itself, for a hub (the function writes the head).
    Join(Box<dyn FnOnce(TcpStream) + 'a>),
}

/// Answers requests; implemented by the routes in `super`.
pub trait Handler {
    /// `local` is the address the client connected to (one of Tower's).
    fn answer(&self, request: &Request, peer: SocketAddr, local: SocketAddr) -> Answer<'_>;
    /// The response to a request that could not be read (counted, logged).
    fn refuse(&self, refusal: &Refusal, peer: SocketAddr) -> Vec<u8>;
    /// Called once per turn of the loop (test hooks fire here).
    fn turn(&self) {}
}

/// The accept loop's counters.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub cut_timeout: AtomicU64,
    pub cut_per_address: AtomicU64,
    pub cut_total: AtomicU64,
    /// Connections closed unanswered because descriptors ran out.
    pub shed_no_descriptors: AtomicU64,
    /// Connections now pending (being read or answered).
    pub pending: AtomicU64,
}

enum State {
    Reading(Vec<u8>),
    Writing {
        out: Vec<u8>,
        at: usize,
    },
    /// Answered and shut for writing; reading what the client still sends
    /// until it closes, so the close is clean (no reset that could destroy
    /// the answer in flight).
    Draining,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    state: State,
}

/// What becomes of a connection after it was served.
enum Next<'h> {
    Keep,
    Close,
    /// To be handed over with this function.
    Join(Box<dyn FnOnce(TcpStream) + 'h>),
}

impl Conn {
    fn events(&self) -> libc::c_short {
        match self.state {
            State::Writing { .. } => libc::POLLOUT,
            State::Reading(_) | State::Draining => libc::POLLIN,
        }
    }

    /// Moves the connection on as far as its socket allows.
    fn serve<'h>(&mut self, handler: &'h dyn Handler) -> Next<'h> {
        loop {
            match &mut self.state {
                State::Reading(buf) => {
                    let open = match read_head(&mut self.stream, buf) {
                        Got::Open => true,
                        // A client may send its request and then shut its
                        // side: it still gets the answer.
                        Got::Ended => false,
                        Got::Failed => return Next::Close,
                    };
                    let out = match request::parse(buf) {
                        Parse::Partial if open => return Next::Keep,
                        Parse::Partial => return Next::Close, // left half way
                        Parse::Refused(r) => handler.refuse(&r, self.peer),
                        Parse::Complete(rq) => match handler.answer(&rq, self.peer, self.local) {
                            Answer::Bytes(b) => b,
                            Answer::Join(join) => return Next::Join(join),
                        },
                    };
                    self.state = State::Writing { out, at: 0 };
                }
                State::Writing { out, at } => {
                    while *at < out.len() {
                        match (&self.stream).write(&out[*at..]) {
                            Ok(0) => return Next::Close,
                            Ok(n) => *at += n,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                            Err(_) => return Next::Close,
                        }
                    }
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.state = State::Draining;
                }
                State::Draining => {
                    let mut chunk = [0u8; READ_CHUNK];
                    loop {
                        match self.stream.read(&mut chunk) {
                            Ok(0) => return Next::Close,
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                            Err(_) => return Next::Close,
                        }
                    }
                }
            }
        }
    }
}

/// What reading a socket found.
enum Got {
    /// Everything there was read; more may come.
    Open,
    /// The client shut its side (end of stream).
    Ended,
    /// Reset, or another socket error.
    Failed,
}

/// Reads what is there into `buf`, keeping at most [`MAX_REQUEST`] bytes (the
/// parser refuses a head that fills it).
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Got {
    let mut chunk = [0u8; READ_CHUNK];
    while buf.len() < MAX_REQUEST {
        match stream.read(&mut chunk) {
            Ok(0) => return Got::Ended,
            Ok(n) => {
                let room = (MAX_REQUEST - buf.len()).min(n);
                buf.extend_from_slice(&chunk[..room]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::Open,
            Err(_) => return Got::Failed,
        }
    }
    Got::Open
}

/// The accept loop's state.
pub struct Server<'a> {
    listener: TcpListener,
    limits: Limits,
    stats: &'a LoopStats,
    conns: HashMap<u64, Conn>,
    pending: Pending,
    next_id: u64,
    /// The spare descriptor (see module docs).
    spare: Option<File>,
    accept_paused_until: Option<Instant>,
    shed_log: LogGate,
    accept_log: LogGate,
    cut_log: LogGate,
}

impl<'a> Server<'a> {
    pub fn new(listener: TcpListener, limits: Limits, stats: &'a LoopStats) -> Server<'a> {
        Server {
            listener,
            limits,
            stats,
            conns: HashMap::new(),
            pending: Pending::default(),
            next_id: 0,
            spare: File::open("/dev/null").ok(),
            accept_paused_until: None,
            shed_log: LogGate::new(Duration::from_secs(60)),
            accept_log: LogGate::new(Duration::from_secs(60)),
            cut_log: LogGate::new(Duration::from_secs(60)),
        }
    }

    /// Serves until `stop`, which its owner raises and then wakes `wake`:
    /// the loop sleeps until a socket is ready, a deadline of its own
    /// passes (a request's header timeout, the end of an accept pause) or
    /// `wake` is woken, never on a timer.
    pub fn run(&mut self, stop: &StopSignal, wake: &WakeFd, handler: &dyn Handler) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        while !stop.is_stopped() {
            handler.turn();
            let now = Instant::now();
            let accepting = resume_when_due(&mut self.accept_paused_until, now);
            fds.clear();
            ids.clear();
            fds.push(libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: if accepting { libc::POLLIN } else { 0 },
                revents: 0,
            });
            for (id, c) in &self.conns {
                ids.push(*id);
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events: c.events(),
                    revents: 0,
                });
            }
            fds.push(readable(wake.fd()));
            let wait = [
                self.pending.next_deadline(self.limits.header_timeout),
                self.accept_paused_until,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.saturating_duration_since(now));
            // Round up, so a deadline a fraction of a millisecond away does
            // not spin; -1 waits for a socket or the wake-up alone.
            let wait_ms = wait.map_or(-1, |w| {
                w.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            });
            // SAFETY: `fds` is a live, correctly sized array of pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if n < 0 {
                continue; // EINTR; nothing else is possible with valid arguments
            }
            if fds.last().is_some_and(|w| w.revents != 0) {
                wake.clear();
            }
            for (i, id) in ids.iter().enumerate() {
                if fds[i + 1].revents != 0 {
                    self.serve(*id, handler);
                }
            }
            if fds[0].revents != 0 {
                self.accept_all(handler);
            }
            self.expire(Instant::now());
        }
        self.conns.clear();
    }

    fn serve(&mut self, id: u64, handler: &dyn Handler) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match conn.serve(handler) {
            Next::Keep => {}
            Next::Close => self.forget(id),
            Next::Join(join) => {
                if let Some(conn) = self.conns.remove(&id) {
                    self.forget(id);
                    join(conn.stream);
                }
            }
        }
    }

    fn forget(&mut self, id: u64) {
        self.conns.remove(&id);
        self.pending.remove(id);
        self.stats.pending.store(self.pending.len() as u64, Ordering::Relaxed);
    }

    fn accept_all(&mut self, handler: &dyn Handler) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, handler),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.shed_one() {
                        self.pause_accepting(&e);
                    }
                    return;
                }
                Err(e) => {
                    self.pause_accepting(&e);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: closes the oldest waiting connection with the
    /// spare one. `accept` fails with EMFILE before it looks at the queue,
    /// so there may be none: then there is nothing to do. `false` if a
    /// waiting connection could not be shed.
    fn shed_one(&mut self) -> bool {
        if self.spare.is_none() {
            self.spare = File::open("/dev/null").ok();
        }
        if self.spare.take().is_none() {
            return false;
        }
        let accepted = self.listener.accept();
        self.spare = File::open("/dev/null").ok();
        match accepted {
            Ok(_) => {
                self.stats.shed_no_descriptors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.shed_log.allow(Instant::now()) {
                    tracing::error!(
                        component = "http",
                        suppressed,
                        open = self.conns.len(),
                        "out of file descriptors: closing new connections unanswered until some are free"
                    );
                }
                true
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    fn pause_accepting(&mut self, e: &io::Error) {
        // (Ended by `resume_when_due`, or by the next connection admitted.)
        if let Some(suppressed) = self.accept_log.allow(Instant::now()) {
            tracing::error!(component = "http", error = %e, suppressed, "cannot accept connections; retrying");
        }
        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, handler: &dyn Handler) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(local) = stream.local_addr() else { return };
        self.accept_paused_until = None;
        self.next_id += 1;
        let id = self.next_id;
        let now = Instant::now();
        for (old, why) in self.pending.admit(id, peer.ip(), now, self.limits) {
            self.cut(old, why);
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                peer,
                local,
                state: State::Reading(Vec::new()),
            },
        );
        self.stats.pending.store(self.pending.len() as u64, Ordering::Relaxed);
        // The request is often there already.
        self.serve(id, handler);
    }

    fn expire(&mut self, now: Instant) {
        for id in self.pending.expire(now, self.limits.header_timeout) {
            // An answered connection whose client has not closed yet just
            // goes; one still reading or being answered is cut.
            let answered = matches!(self.conns.get(&id).map(|c| &c.state), Some(State::Draining));
            if answered {
                self.forget(id);
            } else {
                self.cut(id, Cut::Timeout);
            }
        }
    }

    fn cut(&mut self, id: u64, why: Cut) {
        let counter = match why {
            Cut::Timeout => &self.stats.cut_timeout,
            Cut::PerAddress => &self.stats.cut_per_address,
            Cut::Total => &self.stats.cut_total,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = self.conns.get(&id)
            && let Some(suppressed) = self.cut_log.allow(Instant::now())
        {
            tracing::info!(component = "http", peer = %conn.peer, reason = ?why, suppressed, "closing a connection that sent no complete request in time, or one too many");
        }
        self.forget(id);
    }
}

/// Whether to accept connections now: yes, unless a pause (out of file
/// descriptors) is still on; a pause whose time has come is cleared, so
/// the loop's wait never has a deadline in the past (it would spin).
fn resume_when_due(paused_until: &mut Option<Instant>, now: Instant) -> bool {
    if paused_until.is_some_and(|t| now >= t) {
        *paused_until = None;
    }
    paused_until.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Worker;
    use std::sync::Arc;

    /// Answers every request with its path; `/join` connections are kept.
    struct Echo {
        joined: std::sync::Mutex<Vec<TcpStream>>,
    }

    impl Handler for Echo {
        fn answer(&self, rq: &Request, _peer: SocketAddr, _local: SocketAddr) -> Answer<'_> {
            if rq.path == "/join" {
                return Answer::Join(Box::new(|mut s: TcpStream| {
                    let _ = s.write_all(b"joined\n");
                    self.joined.lock().expect("lock").push(s);
                }));
            }
            Answer::Bytes(format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}", rq.path).into_bytes())
        }

        fn refuse(&self, r: &Refusal, _peer: SocketAddr) -> Vec<u8> {
            format!("HTTP/1.1 {} X\r\nConnection: close\r\n\r\n", r.status).into_bytes()
        }
    }

    /// The loop on its thread; stopped (and woken to see it) on drop.
    struct Serving {
        worker: Option<Worker<()>>,
        wake: Arc<WakeFd>,
    }

    impl Serving {
        fn stop(mut self) {
            self.end().expect("stopped within 2 s");
        }

        fn end(&mut self) -> Option<()> {
            let worker = self.worker.take()?;
            worker.stop_signal().stop();
            self.wake.wake();
            worker.stop(Duration::from_secs(2)).ok()
        }
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            self.end();
        }
    }

    fn serve(limits: Limits) -> (Serving, SocketAddr, Arc<LoopStats>) {
        let listener = super::super::socket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(LoopStats::default());
        let s = stats.clone();
        let wake = Arc::new(WakeFd::new().expect("eventfd"));
        let w = wake.clone();
        let worker = Worker::spawn("http-test", move |stop| {
            let echo = Echo {
                joined: std::sync::Mutex::new(Vec::new()),
            };
            Server::new(listener, limits, &s).run(&stop, &w, &echo);
        })
        .expect("spawn");
        (
            Serving {
                worker: Some(worker),
                wake,
            },
            addr,
            stats,
        )
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(request).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    const WIDE: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        per_address: 100,
        total: 100,
    };

    #[test]
    fn a_pause_in_accepting_ends_at_its_time_and_leaves_no_past_deadline() {
        let t0 = Instant::now();
        let mut paused = Some(t0 + ACCEPT_PAUSE);
        assert!(!resume_when_due(&mut paused, t0));
        assert_eq!(paused, Some(t0 + ACCEPT_PAUSE), "still on: the wait ends at it");
        assert!(resume_when_due(&mut paused, t0 + ACCEPT_PAUSE));
        assert_eq!(
            paused, None,
            "a deadline left in the past would make every poll return at once"
        );
        assert!(resume_when_due(&mut paused, t0 + ACCEPT_PAUSE * 2));
    }

    #[test]
    fn requests_are_answered_refused_or_joined_and_the_connection_closes() {
        let (w, addr, _) = serve(WIDE);
        assert!(exchange(addr, b"GET /a HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n/a"));
        assert!(exchange(addr, b"GET /a HTTP/1.2\r\n\r\n").starts_with("HTTP/1.1 505"));
        // A request in pieces.
        let mut s = TcpStream::connect(addr).expect("connect");
        for piece in [&b"GET /sl"[..], b"ow HTTP/1.1\r\n", b"\r\n"] {
            s.write_all(piece).expect("write");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.ends_with("/slow"), "{out}");
        // A client that shuts its side after the request is still answered.
        let mut h = TcpStream::connect(addr).expect("connect");
        h.write_all(b"GET /half HTTP/1.0\r\n\r\n").expect("write");
        h.shutdown(Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        h.read_to_string(&mut out).expect("read");
        assert!(out.ends_with("/half"), "{out}");
        // Joined connections stay open, with what the handler wrote.
        let mut j = TcpStream::connect(addr).expect("connect");
        j.write_all(b"GET /join HTTP/1.1\r\n\r\n").expect("write");
        let mut buf = [0u8; 7];
        j.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"joined\n");
        w.stop();
    }

    #[test]
    fn a_head_too_large_is_refused_and_a_silent_client_is_cut_at_the_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..WIDE
        };
        let (w, addr, stats) = serve(limits);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST * 4));
        assert!(exchange(addr, big.as_bytes()).starts_with("HTTP/1.1 431"));
        let mut idle = TcpStream::connect(addr).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut b = [0u8; 1];
        assert!(matches!(idle.read(&mut b), Ok(0) | Err(_)));
        assert_eq!(stats.cut_timeout.load(Ordering::Relaxed), 1);
        crate::testing::wait_until(Duration::from_secs(2), || stats.pending.load(Ordering::Relaxed) == 0);
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        w.stop();
    }
}
