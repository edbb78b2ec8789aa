//! Sockets: the listening socket, and taking ownership of a listener's
//! connection away from tiny_http.
//!
//! tiny_http parses requests well but never hands out the `TcpStream`: a
//! response writer cannot be made non-blocking, and on a keep-alive
//! connection tiny_http keeps the socket open (and a pool thread blocked
//! reading the next request) even after the writer is dropped, so a
//! listener Tower drops would never be disconnected. For `/stream`, Tower
//! therefore finds the connection's socket by its address pair in
//! `/proc/self/fd`, duplicates it, and shuts down its read side, which
//! releases tiny_http's reader (its pool thread sees end of file and exits).
//! From then on the broadcast loop writes to the socket without blocking
//! and closes it when the listener goes.

use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{SockaddrStorage, getpeername, getsockname, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::hub::ListenerSink;

/// Write timeout for tiny_http's own (small) responses; accepted sockets
/// inherit it from the listening socket. It never applies to `/stream`,
/// whose sockets are non-blocking.
pub const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Kernel send buffer per listener: 32 KiB (2 s at 128 kbps) bounds kernel
/// memory per listener and lets a stuck listener be noticed.
pub const LISTENER_SNDBUF: usize = 32 * 1024;

/// Binds the HTTP port with the options accepted sockets inherit.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    let timeout = TimeVal::new(
        RESPONSE_WRITE_TIMEOUT.as_secs() as _,
        RESPONSE_WRITE_TIMEOUT.subsec_micros() as _,
    );
    setsockopt(&listener, sockopt::SendTimeout, &timeout).map_err(io::Error::from)?;
    // Never SO_RCVTIMEO here: tiny_http's accept loop ends on the first
    // accept error, and a receive timeout makes accept fail.
    setsockopt(&listener, sockopt::TcpNoDelay, &true).map_err(io::Error::from)?;
    Ok(listener)
}

/// Connections waiting in the listening socket's accept queue (Linux
/// reports it in `TCP_INFO` for a socket in the LISTEN state).
pub fn accept_queue(listener: &TcpListener) -> io::Result<u32> {
    // SAFETY: tcp_info is plain old data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the borrow's lifetime, and `info`
    // and `len` describe a writable buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

fn matches(fd: RawFd, peer: SocketAddr, local_port: u16) -> bool {
    let Ok(p) = getpeername::<SockaddrStorage>(fd) else {
        return false;
    };
    if to_socket_addr(&p) != Some(peer) {
        return false;
    }
    getsockname::<SockaddrStorage>(fd)
        .ok()
        .and_then(|l| to_socket_addr(&l))
        .is_some_and(|l| l.port() == local_port)
}

/// The process's open descriptors (from /proc/self/fd).
fn open_fds() -> io::Result<impl Iterator<Item = RawFd>> {
    Ok(fs::read_dir("/proc/self/fd")?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok()))
}

/// Every connected socket to our `local_port`, with its peer (a connection
/// tiny_http holds may appear under two descriptors).
pub fn connections(local_port: u16) -> io::Result<Vec<(RawFd, SocketAddr)>> {
    let mut out = Vec::new();
    for fd in open_fds()? {
        let local = getsockname::<SockaddrStorage>(fd).ok().and_then(|l| to_socket_addr(&l));
        if local.is_none_or(|l| l.port() != local_port) {
            continue;
        }
        if let Some(peer) = getpeername::<SockaddrStorage>(fd).ok().and_then(|p| to_socket_addr(&p)) {
            out.push((fd, peer));
        }
    }
    Ok(out)
}

/// Shuts a connection down both ways without closing the descriptor (its
/// owner sees the end and closes it). Checked against `peer` first, as the
/// number could have been reused.
pub fn shut(fd: RawFd, peer: SocketAddr, local_port: u16) {
    if matches(fd, peer, local_port) {
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}

/// Finds the connected socket from `peer` to our `local_port` and returns
/// a duplicate of it (close-on-exec).
pub fn find_connection(peer: SocketAddr, local_port: u16) -> io::Result<TcpStream> {
    for fd in open_fds()? {
        if !matches(fd, peer, local_port) {
            continue;
        }
        // SAFETY: `fd` is open (getpeername just succeeded on it) and is only
        // borrowed for the duration of the dup call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(owned) = borrowed.try_clone_to_owned() else {
            continue;
        };
        // The number could have been closed and reused between the check
        // and the dup: check the duplicate itself.
        if matches(owned.as_raw_fd(), peer, local_port) {
            return Ok(TcpStream::from(owned));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no socket connected from {peer} to port {local_port}"),
    ))
}

/// A listener's connection, owned by Tower.
pub struct SocketSink {
    stream: TcpStream,
    /// tiny_http's writer for this response. Dropping it shuts the socket's
    /// write side (FIN), so it is kept until the listener is closed.
    guard: Option<Box<dyn Write + Send>>,
}

impl SocketSink {
    /// Takes over `stream` (found with [`find_connection`]); `guard` is the
    /// writer tiny_http handed out for the response.
    pub fn new(stream: TcpStream, guard: Box<dyn Write + Send>) -> io::Result<Self> {
        // Ends tiny_http's wait for a next request on this connection.
        stream.shutdown(Shutdown::Read)?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let _ = setsockopt(&stream, sockopt::SndBuf, &LISTENER_SNDBUF);
        Ok(SocketSink {
            stream,
            guard: Some(guard),
        })
    }
}

impl ListenerSink for SocketSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }

    fn close(&mut self, abort: bool) {
        if abort {
            // A stuck listener: reset at once rather than leave the kernel
            // holding its unsent data.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = setsockopt(&self.stream, sockopt::Linger, &linger);
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.guard = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn finds_the_accepted_socket_by_its_address_pair() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("addr"));
        let found = find_connection(peer, port).expect("found");
        assert_eq!(found.peer_addr().expect("peer"), peer);
        // The duplicate is a handle on the same connection.
        (&found).write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        drop(accepted);
        // No socket matches an unknown peer.
        let stranger: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(find_connection(stranger, port).is_err());
    }

    #[test]
    fn the_accept_queue_counts_connections_not_yet_accepted() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(accept_queue(&listener).expect("queue"), 0);
        let _a = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _b = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        assert_eq!(accept_queue(&listener).expect("queue"), 2);
        let _accepted = listener.accept().expect("accept");
        assert_eq!(accept_queue(&listener).expect("queue"), 1);
    }

    #[test]
    fn socket_sink_writes_without_blocking_and_closing_sends_eof() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let guard: Box<dyn Write + Send> = Box::new(accepted.try_clone().expect("clone"));
        drop(accepted);
        let found = find_connection(client.local_addr().expect("addr"), port).expect("found");
        let mut sink = SocketSink::new(found, guard).expect("sink");
        // Nobody reads: the socket fills and reports WouldBlock, never blocks.
        let chunk = [0u8; 4096];
        let mut would_block = false;
        for _ in 0..100_000 {
            match sink.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    would_block = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(would_block);
        sink.close(true);
        drop(sink);
        // The client sees the connection end (reset or EOF after the data).
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("connection not closed: {e}"),
            }
        }
    }
}
