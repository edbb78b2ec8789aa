//! The load generator: many listeners on few threads.
//!
//! Each thread owns its share of the connections, all non-blocking, and
//! waits on one epoll set: connect, send `GET <path> HTTP/1.0`, read the
//! response head, then read and discard the body as fast as it comes,
//! counting bytes. At most [`IN_FLIGHT`] connections per thread are being
//! set up at once (a burst of thousands of SYNs would overflow the
//! servers' accept queues and measure TCP's 1 s SYN retry instead).
//! A connection that fails, or has no audio [`SETUP_TIMEOUT`] after its
//! connect, is tried again until the retry deadline (a refusal is final). Once all are set up, each thread reads every [`READ_EVERY`].
//! Every thread stops when told, or at its deadline.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};

/// Connections being set up at once, per thread.
pub const IN_FLIGHT: usize = 64;
/// A connection with no audio this long after its connect is given up
/// (and tried again while retries are allowed).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one epoll wait may block (the stop flag is seen this often).
const WAIT_MS: i32 = 50;
/// Once every connection is set up, a thread reads at most this often:
/// a few frames pile up per socket (far below what its buffers hold, 2 s
/// at 128 kbit/s), so it reads them with one call instead of one call
/// per 384-byte frame, and costs the machine less. Players read in
/// chunks too.
const READ_EVERY: Duration = Duration::from_millis(20);

/// What became of one connection.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// HTTP status of the response (0: none).
    pub status: u16,
    /// First connect to the first body byte, if one came.
    pub first_byte: Option<Duration>,
    /// Body bytes received inside the measurement window.
    pub window_bytes: u64,
    /// Why it ended before the load was stopped, if it did.
    pub ended: Option<String>,
    /// Connection attempts (a listener whose connection fails or hangs
    /// before audio comes tries again, as players do).
    pub attempts: u32,
}

impl Outcome {
    /// Got a 200 and audio: a listener the server took on.
    pub fn admitted(&self) -> bool {
        self.status == 200 && self.first_byte.is_some()
    }

    /// Taken on, then ended before the load was stopped.
    pub fn dropped(&self) -> bool {
        self.admitted() && self.ended.is_some()
    }
}

/// Phases of the run, as the threads see them.
const RAMP: u8 = 0;
const WINDOW: u8 = 1;
const AFTER: u8 = 2;

struct Shared {
    stop: AtomicBool,
    phase: AtomicU8,
    /// Connections receiving audio now.
    receiving: AtomicUsize,
    /// Connections that will never receive (refused, failed, given up).
    failed: AtomicUsize,
}

/// A running load: `n` listeners of `path` on `addr`.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
    n: usize,
}

impl Load {
    /// Starts `threads` threads sharing `n` listeners; failed connections
    /// are tried again until `retry_until`; the threads stop by themselves
    /// at `deadline` at the latest.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        n: usize,
        threads: usize,
        (retry_until, deadline): (Instant, Instant),
    ) -> std::io::Result<Load> {
        let SocketAddr::V4(v4) = addr else {
            return Err(std::io::Error::other("the load generator speaks IPv4 only"));
        };
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            phase: AtomicU8::new(RAMP),
            receiving: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        });
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: tower-compare\r\n\r\n");
        let threads = threads.max(1);
        let mut handles = Vec::new();
        for t in 0..threads {
            let share = n / threads + usize::from(t < n % threads);
            let (shared, request) = (shared.clone(), request.clone());
            handles.push(thread::Builder::new().name(format!("load-{t}")).spawn(move || {
                let limits = Limits {
                    share,
                    retry_until,
                    deadline,
                };
                run(SockaddrIn::from(v4), &limits, &request, &shared)
            })?);
        }
        Ok(Load {
            shared,
            threads: handles,
            n,
        })
    }

    pub fn receiving(&self) -> usize {
        self.shared.receiving.load(Ordering::Relaxed)
    }

    /// Waits until every connection receives audio or has failed, or
    /// `timeout` passes; returns how long it took.
    pub fn wait_settled(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let done = self.receiving() + self.shared.failed.load(Ordering::Relaxed);
            if done >= self.n {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        t0.elapsed()
    }

    /// Bytes read from now on count as the window's.
    pub fn begin_window(&self) {
        self.shared.phase.store(WINDOW, Ordering::Relaxed);
    }

    pub fn end_window(&self) {
        self.shared.phase.store(AFTER, Ordering::Relaxed);
    }

    /// Stops and closes every connection; returns what became of each.
    pub fn finish(self) -> Vec<Outcome> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::with_capacity(self.n);
        for t in self.threads {
            match t.join() {
                Ok(v) => all.extend(v),
                Err(_) => eprintln!("a load generator thread panicked; its connections are not counted"),
            }
        }
        all
    }
}

enum State {
    Connecting,
    Head(Vec<u8>),
    Body,
    Closed,
}

/// One thread's share of connections and its time limits.
struct Limits {
    share: usize,
    retry_until: Instant,
    deadline: Instant,
}

struct Conn {
    /// `None` once closed, or if it never opened.
    stream: Option<TcpStream>,
    state: State,
    /// This attempt's connect.
    started: Instant,
    /// The first attempt's connect, which first-byte times count from.
    first_attempt: Instant,
    outcome: Outcome,
    /// Failed before audio, to be tried again.
    retry: bool,
}

/// A small epoll set (level-triggered).
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: no pointers; a new descriptor is returned or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Epoll(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &raw mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `events` is a writable buffer of the length passed.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

/// Opens a non-blocking connection to `addr` (the connect is under way).
fn open(addr: &SockaddrIn) -> std::io::Result<TcpStream> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(fd.as_raw_fd(), addr) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

/// One load thread: its share of connections until stopped or the deadline.
fn run(addr: SockaddrIn, limits: &Limits, request: &str, shared: &Shared) -> Vec<Outcome> {
    let share = limits.share;
    let Ok(epoll) = Epoll::new() else {
        shared.failed.fetch_add(share, Ordering::Relaxed);
        return vec![Outcome::default(); share];
    };
    let mut conns: Vec<Conn> = Vec::with_capacity(share);
    let mut setting_up: HashSet<usize> = HashSet::new();
    let mut retry: Vec<usize> = Vec::new();
    let mut later: Vec<usize> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_sweep = Instant::now();
    let mut last_turn = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < limits.deadline {
        while setting_up.len() < IN_FLIGHT && (conns.len() < share || !retry.is_empty()) {
            let id = retry.pop().unwrap_or(conns.len());
            let now = Instant::now();
            let mut c = Conn {
                stream: None,
                state: State::Connecting,
                started: now,
                first_attempt: conns.get(id).map_or(now, |c| c.first_attempt),
                outcome: Outcome {
                    attempts: conns.get(id).map_or(0, |c| c.outcome.attempts) + 1,
                    ..Outcome::default()
                },
                retry: false,
            };
            match open(&addr) {
                Ok(stream) => {
                    let interest = (libc::EPOLLOUT | libc::EPOLLIN) as u32;
                    let registered = epoll.ctl(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), interest, id as u64);
                    c.stream = Some(stream);
                    match registered {
                        Ok(()) => {
                            setting_up.insert(id);
                        }
                        Err(e) => close(&mut c, shared, &format!("epoll: {e}"), None),
                    }
                }
                Err(e) => close(&mut c, shared, &format!("connect: {e}"), Some(limits.retry_until)),
            }
            if c.retry {
                // Not again in this turn: a connect that fails at once
                // would spin here.
                c.retry = false;
                later.push(id);
            }
            if id < conns.len() {
                conns[id] = c;
            } else {
                conns.push(c);
            }
        }
        retry.append(&mut later);
        if setting_up.is_empty() && retry.is_empty() && conns.len() == share {
            let idle = READ_EVERY.saturating_sub(last_turn.elapsed());
            if !idle.is_zero() {
                thread::sleep(idle);
            }
        }
        last_turn = Instant::now();
        let n = epoll.wait(&mut events, WAIT_MS);
        let phase = shared.phase.load(Ordering::Relaxed);
        for ev in &events[..n] {
            let id = ev.u64 as usize;
            let Some(c) = conns.get_mut(id) else { continue };
            handle(
                c,
                ev.events,
                request,
                &epoll,
                id,
                &mut buf,
                phase,
                shared,
                limits.retry_until,
            );
            if !matches!(c.state, State::Connecting | State::Head(_)) {
                setting_up.remove(&id);
            }
            if c.retry {
                c.retry = false;
                retry.push(id);
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(100) {
            last_sweep = Instant::now();
            setting_up.retain(|&id| {
                let c = &mut conns[id];
                if c.started.elapsed() < SETUP_TIMEOUT {
                    return true;
                }
                let why = match c.state {
                    State::Connecting => "not connected within the setup timeout",
                    State::Head(ref h) if h.is_empty() => "no response within the setup timeout",
                    _ => "no audio within the setup timeout",
                };
                close(c, shared, why, Some(limits.retry_until));
                if c.retry {
                    c.retry = false;
                    retry.push(id);
                }
                false
            });
        }
    }
    conns.into_iter().map(|c| c.outcome).collect()
}

/// Marks `c` ended for `why` and closes it. A connection still being set
/// up is marked for another try if `retry_until` is given and not past.
fn close(c: &mut Conn, shared: &Shared, why: &str, retry_until: Option<Instant>) {
    match c.state {
        State::Closed => return,
        State::Body => {
            shared.receiving.fetch_sub(1, Ordering::Relaxed);
        }
        State::Connecting | State::Head(_) => {
            if retry_until.is_some_and(|t| Instant::now() < t) {
                c.retry = true;
            } else {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    c.outcome.ended = Some(why.to_string());
    c.state = State::Closed;
    c.stream = None;
}

#[allow(clippy::too_many_arguments)]
fn handle(
    c: &mut Conn,
    events: u32,
    request: &str,
    epoll: &Epoll,
    id: usize,
    buf: &mut [u8],
    phase: u8,
    shared: &Shared,
    retry_until: Instant,
) {
    let retry = Some(retry_until);
    let Some(stream) = c.stream.as_ref() else { return };
    if let State::Connecting = c.state {
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            return close(c, shared, &format!("connect: {e}"), retry);
        }
        if events & (libc::EPOLLOUT as u32) == 0 {
            return;
        }
        // A small request into an empty send buffer: written whole.
        if let Err(e) = (&*stream).write_all(request.as_bytes()) {
            return close(c, shared, &format!("request: {e}"), retry);
        }
        if let Err(e) = epoll.ctl(libc::EPOLL_CTL_MOD, stream.as_raw_fd(), libc::EPOLLIN as u32, id as u64) {
            return close(c, shared, &format!("epoll: {e}"), None);
        }
        c.state = State::Head(Vec::new());
        return;
    }
    loop {
        let Some(mut stream) = c.stream.as_ref() else { return };
        let n = match stream.read(buf) {
            Ok(0) => return close(c, shared, "closed by the server", retry),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return close(c, shared, &e.to_string(), retry),
        };
        let body = match &mut c.state {
            State::Head(head) => {
                head.extend_from_slice(&buf[..n]);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if head.len() > 16 * 1024 {
                        return close(c, shared, "response head too long", None);
                    }
                    continue;
                };
                let text = String::from_utf8_lossy(&head[..end]);
                c.outcome.status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                if c.outcome.status != 200 {
                    let why = format!("refused: {}", text.lines().next().unwrap_or(""));
                    return close(c, shared, &why, None);
                }
                let body = (head.len() - end - 4) as u64;
                c.state = State::Body;
                shared.receiving.fetch_add(1, Ordering::Relaxed);
                if body > 0 {
                    c.outcome.first_byte = Some(c.first_attempt.elapsed());
                }
                body
            }
            State::Body => {
                if c.outcome.first_byte.is_none() {
                    c.outcome.first_byte = Some(c.first_attempt.elapsed());
                }
                n as u64
            }
            State::Connecting | State::Closed => return,
        };
        if phase == WINDOW {
            c.outcome.window_bytes += body;
        }
    }
}
