//! Fake Icecast push targets on 127.0.0.1 that misbehave: what the
//! Icecast workers must survive (issue 26). Each target stops (and closes
//! what it holds) on drop.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a target does with a connection it accepted.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Streams bytes that never contain a blank line, at this many bytes a
    /// second, for as long as the connection lasts.
    Garbage(usize),
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
        }
    }

    /// Answers every source request with an endless line of garbage at
    /// `bytes_per_sec`, never a blank line (`\r\n\r\n`).
    pub fn garbage(bytes_per_sec: usize) -> FakeTarget {
        Self::serve(Behaviour::Garbage(bytes_per_sec), listener(128, None))
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
