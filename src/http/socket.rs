//! Sockets: the listening socket, and a listener's connection once Tower
//! has answered its request (the broadcast loop writes to it without
//! blocking and closes it when the listener goes).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use nix::sys::socket::{setsockopt, sockopt};

use super::hub::ListenerSink;

/// Kernel send buffer per listener: 32 KiB (2 s at 128 kbps) bounds kernel
/// memory per listener and lets a stuck listener be noticed.
pub const LISTENER_SNDBUF: usize = 32 * 1024;
/// Connections the kernel may hold for Tower to accept: enough for a
/// houseful of players reconnecting at once after a network blip.
const BACKLOG: libc::c_int = 1024;

/// Binds the HTTP port, non-blocking, with the options accepted sockets
/// inherit.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // std listens with its own backlog; listening again sets Tower's.
    // SAFETY: plain syscall on a descriptor the listener owns.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    setsockopt(&listener, sockopt::TcpNoDelay, &true).map_err(io::Error::from)?;
    Ok(listener)
}

/// A listener's connection, owned by Tower.
pub struct SocketSink {
    stream: TcpStream,
}

impl SocketSink {
    /// Takes `stream` over once its response head is written.
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let _ = setsockopt(&stream, sockopt::SndBuf, &LISTENER_SNDBUF);
        Ok(SocketSink { stream })
    }
}

/// Flags of every send to a listener: never block (the socket is
/// non-blocking too), and a listener that left is an `EPIPE`, not a signal.
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

impl ListenerSink for SocketSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes during the call, and
        // the descriptor is owned by `self.stream`.
        let n = unsafe { libc::send(self.stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// One `sendmsg` for the whole batch: the socket layer directly, where
    /// `writev` goes through the file layer first (a tenth of the
    /// broadcast loop's CPU at 1 000 listeners, measured with perf).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec on Unix (std guarantees it).
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: `msg` points at `bufs`, valid for the call; sendmsg only
        // reads them. The descriptor is owned by `self.stream`.
        let n = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &raw const msg, SEND_FLAGS) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn socket_sink_writes_without_blocking_and_closing_sends_eof() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
        };
        let mut sink = SocketSink::new(accepted).expect("sink");
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
