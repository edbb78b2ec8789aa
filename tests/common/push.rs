//! Fake Icecast push targets on 127.0.0.1 that misbehave, and a DNS server
//! that never answers: what the Icecast workers must survive (issue 26).
//! Each target stops (and closes what it holds) on drop.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a target does with a connection it accepted.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Streams bytes that never contain a blank line, at this many bytes a
    /// second, for as long as the connection lasts.
    Garbage(usize),
    /// Never reads, never answers.
    Silent,
    /// Answers `100 Continue` at once, then never reads.
    AcceptThenStall,
}

/// A misbehaving push target; see the constructors.
pub struct FakeTarget {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    /// Bytes of garbage sent so far.
    pub sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Sockets kept open (a full backlog's listener and its one client).
    _held: Vec<Box<dyn Send>>,
}

/// A TCP listener on 127.0.0.1 with `backlog` and, if given, a receive
/// buffer that accepted connections inherit.
fn listener(backlog: i32, rcvbuf: Option<usize>) -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket, sockopt,
    };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    if let Some(n) = rcvbuf {
        setsockopt(&fd, sockopt::RcvBuf, &n).expect("rcvbuf");
    }
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
    listen(&fd, Backlog::new(backlog).expect("backlog")).expect("listen");
    TcpListener::from(fd)
}

impl FakeTarget {
    fn serve(behaviour: Behaviour, listener: TcpListener) -> FakeTarget {
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, accepted, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, a, n) = (stop.clone(), accepted.clone(), sent.clone());
        let accept = thread::spawn(move || {
            let held: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());
            let mut writers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => break,
                };
                a.fetch_add(1, Ordering::Relaxed);
                match behaviour {
                    Behaviour::Silent => held.lock().expect("held").push(conn),
                    Behaviour::AcceptThenStall => {
                        let mut conn = conn;
                        let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                        held.lock().expect("held").push(conn);
                    }
                    Behaviour::Garbage(rate) => {
                        let (s, n) = (s.clone(), n.clone());
                        writers.push(thread::spawn(move || garbage(conn, rate, &s, &n)));
                    }
                }
            }
            for w in writers {
                let _ = w.join();
            }
        });
        FakeTarget {
            addr,
            accepted,
            sent,
            stop,
            threads: vec![accept],
            _held: Vec::new(),
        }
    }

    /// Answers every source request with an endless line of garbage at
    /// `bytes_per_sec`, never a blank line (`\r\n\r\n`).
    pub fn garbage(bytes_per_sec: usize) -> FakeTarget {
        Self::serve(Behaviour::Garbage(bytes_per_sec), listener(128, None))
    }

    /// Accepts connections and never reads or answers.
    pub fn silent() -> FakeTarget {
        Self::serve(Behaviour::Silent, listener(128, None))
    }

    /// Accepts the source (`100 Continue`) and then never reads: with a
    /// small receive buffer, Tower's writes soon block.
    pub fn accept_then_stall() -> FakeTarget {
        Self::serve(Behaviour::AcceptThenStall, listener(128, Some(4096)))
    }

    /// A port whose accept queue is full (backlog 0, one connection
    /// waiting, never accepted): the kernel drops new SYNs, so a connect
    /// hangs as it does to a blackholed address.
    pub fn full_backlog() -> FakeTarget {
        let l = listener(0, None);
        let addr = l.local_addr().expect("addr");
        let first = TcpStream::connect(addr).expect("the one connection the queue holds");
        FakeTarget {
            addr,
            accepted: Arc::default(),
            sent: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
            _held: vec![Box::new(l), Box::new(first)],
        }
    }

    /// `http://ADDR/live`.
    pub fn url(&self) -> String {
        format!("http://{}/live", self.addr)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes `x` (never a line end) to `conn` at `rate` bytes a second until
/// told to stop or the peer goes.
fn garbage(mut conn: TcpStream, rate: usize, stop: &AtomicBool, sent: &AtomicU64) {
    let tick = Duration::from_millis(10);
    let chunk = vec![b'x'; (rate / 100).max(1)];
    let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match conn.write(&chunk) {
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        next += tick;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// A DNS server that receives every query and never answers, on a
/// loopback address of its own (port 53 needs root), and a
/// `resolv.conf` naming it with long timeouts: a lookup through it hangs
/// for minutes. [`HangingDns::wrapper`] runs a program with that file as
/// its `/etc/resolv.conf`, in a private mount namespace (nothing else on
/// the machine sees it).
pub struct HangingDns {
    dir: tempfile::TempDir,
    pub queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HangingDns {
    pub fn start() -> HangingDns {
        // A loopback address of its own, so two tests cannot collide.
        let octet = |shift: u32| ((std::process::id() >> shift) & 0xff) as u8;
        let ip = [127, 53, octet(8), octet(0).max(1)];
        let socket = UdpSocket::bind(SocketAddr::from((ip, 53))).expect("bind UDP port 53 (needs root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("resolv.conf"),
            format!(
                "nameserver {}.{}.{}.{}\noptions timeout:30 attempts:5\n",
                ip[0], ip[1], ip[2], ip[3]
            ),
        )
        .expect("resolv.conf");
        let (stop, queries) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, q) = (stop.clone(), queries.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if socket.recv_from(&mut buf).is_ok() {
                    q.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        HangingDns {
            dir,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    /// A command prefix for `Tower::start_wrapped`: the program after it
    /// runs with [`Self::resolv_conf`] bound over `/etc/resolv.conf` in a
    /// mount namespace of its own.
    pub fn wrapper(resolv: &Path) -> Vec<String> {
        vec![
            "unshare".into(),
            "--mount".into(),
            "sh".into(),
            "-c".into(),
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"".into(),
            resolv.display().to_string(),
        ]
    }
}

impl Drop for HangingDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
