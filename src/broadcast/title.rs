//! What is playing, from beyond the owner's page: the producer's title
//! socket, and the title pushed to each Icecast server.
//!
//! [`TitleSocket`] (thread "titles", owned by the service, there only
//! while the input is a socket): beside the PCM socket `PATH`, a second
//! Unix socket `PATH.title` with the same mode and group, so whoever may
//! feed the audio may say what it is. Each line written into it (UTF-8,
//! `\n`-terminated; a last line without one counts when the writer
//! closes) sets the title through [`NowPlaying::set`]. A producer may keep
//! the connection open and write a line per track, or connect once per
//! title (`echo "Side B" | socat - UNIX-CONNECT:PATH.title`). At most
//! [`MAX_WRITERS`] connections at once (more are closed, logged); a line
//! is cut at [`MAX_LINE`] bytes.
//!
//! [`IcecastTitles`] (thread "icecast-titles"): each Icecast target that
//! is streaming gets the title by Icecast's metadata update
//! (`GET /admin/metadata?mode=updinfo&mount=…&song=…&charset=UTF-8`, the
//! target's source credentials), once per title and again after each
//! reconnection (a new source starts without one). A server that does
//! not answer within [`IO_TIMEOUT`] is retried after [`RETRY_AFTER`];
//! the stream to it is not touched. Updates and failures are counted
//! ([`TitleStats`], `/status` `icecast_titles`).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;

use super::icecast::{Answer, Endpoint, IcecastTarget, OutputState, Outputs, base64, classify};
use super::{NowPlaying, Station};
use crate::audio::socket::SocketSettings;
use crate::live::Live;
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Supervisor, Worker};

/// Connections to the title socket at once.
pub const MAX_WRITERS: usize = 4;
/// The longest line taken, in bytes (a title is cut to 200 characters).
pub const MAX_LINE: usize = 1024;
/// How often the threads look for work (and at their stop signal).
const TURN: Duration = Duration::from_millis(200);
/// Connecting to an Icecast server, and its answer, may take this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// A failed update is tried again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The title socket's path for the PCM socket at `pcm`: `PCM.title`.
pub fn title_path(pcm: &std::path::Path) -> PathBuf {
    let mut p = pcm.as_os_str().to_owned();
    p.push(".title");
    PathBuf::from(p)
}

/// The producer's title socket; see the module header.
pub struct TitleSocket {
    pub worker: Worker<()>,
    pub path: PathBuf,
}

impl TitleSocket {
    /// Binds `PCM.title` beside the PCM socket of `pcm`, with its mode and
    /// group, and starts reading titles from it.
    pub fn start(pcm: &SocketSettings, now: NowPlaying, supervisor: &Supervisor) -> io::Result<TitleSocket> {
        let settings = SocketSettings {
            path: title_path(&pcm.path),
            ..pcm.clone()
        };
        let bound = crate::audio::socket::bind(&settings).map_err(io::Error::other)?;
        tracing::info!(
            component = "titles",
            "titles: one line per title into {} (mode {:04o})",
            settings.path.display(),
            settings.mode
        );
        let worker = Worker::spawn_supervised("titles", supervisor, move |stop| {
            read_titles(&stop, bound.listener(), &now)
        })?;
        Ok(TitleSocket {
            worker,
            path: settings.path,
        })
    }
}

/// One writer of titles and the line it is part-way through.
struct Writer {
    stream: UnixStream,
    who: String,
    line: Vec<u8>,
    /// The line passed [`MAX_LINE`]: the rest of it is dropped.
    cut: bool,
}

impl Writer {
    /// Takes `bytes`; each whole line sets the title.
    fn take(&mut self, bytes: &[u8], now: &NowPlaying) {
        for &b in bytes {
            if b == b'\n' {
                self.finish(now);
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.cut = true;
            }
        }
    }

    fn finish(&mut self, now: &NowPlaying) {
        if self.cut {
            tracing::info!(component = "titles", who = %self.who, "a title line longer than {MAX_LINE} bytes was cut");
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        now.set(&self.who, line.trim_end_matches('\r'));
        self.line.clear();
        self.cut = false;
    }
}

/// The "titles" thread: accepts writers and reads their lines.
fn read_titles(stop: &StopSignal, listener: &std::os::unix::net::UnixListener, now: &NowPlaying) {
    let mut writers: Vec<Writer> = Vec::new();
    let refused = LogGate::new(Duration::from_secs(10));
    let mut buf = [0u8; 4096];
    while !stop.is_stopped() {
        let (listener_ready, ready) = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fds.extend(writers.iter().map(|w| PollFd::new(w.stream.as_fd(), PollFlags::POLLIN)));
            let timeout = PollTimeout::try_from(TURN.as_millis() as i32).unwrap_or(PollTimeout::NONE);
            if poll(&mut fds, timeout).is_err() {
                continue;
            }
            let is_ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds[1..].iter().map(is_ready).collect();
            (is_ready(&fds[0]), ready)
        };
        // Read the writers first: a line may be all a writer sends
        // before it leaves.
        let mut gone = Vec::new();
        for (i, w) in writers.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match w.stream.read(&mut buf) {
                Ok(0) => {
                    if !w.line.is_empty() {
                        w.finish(now);
                    }
                    gone.push(i);
                }
                Ok(n) => w.take(&buf[..n], now),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            writers.swap_remove(i);
        }
        if listener_ready {
            while let Ok((stream, _)) = listener.accept() {
                let pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| c.pid())
                    .unwrap_or(0);
                if writers.len() >= MAX_WRITERS || stream.set_nonblocking(true).is_err() {
                    if let Some(suppressed) = refused.allow(Instant::now()) {
                        tracing::warn!(
                            component = "titles",
                            pid,
                            suppressed,
                            "title socket: refused a writer (pid {pid}): {MAX_WRITERS} are connected"
                        );
                    }
                    continue;
                }
                writers.push(Writer {
                    stream,
                    who: format!("title socket (pid {pid})"),
                    line: Vec::new(),
                    cut: false,
                });
            }
        }
    }
}

/// Title updates sent to the Icecast servers, for `/status`.
#[derive(Debug, Default)]
pub struct TitleStats {
    updates: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TitleSnapshot {
    /// Metadata updates the servers accepted.
    pub updates: u64,
    /// Updates that failed (each is tried again).
    pub failures: u64,
    /// The last failure in words ("" when the last update went through).
    pub last_error: String,
}

impl TitleStats {
    pub fn snapshot(&self) -> TitleSnapshot {
        TitleSnapshot {
            updates: self.updates.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The thread that tells each Icecast server what is playing; see the
/// module header.
pub struct IcecastTitles {
    pub worker: Worker<()>,
}

/// What the "icecast-titles" thread reads.
#[derive(Clone)]
pub struct TitleFeed {
    pub station: Arc<Live<Station>>,
    pub outputs: Arc<Outputs>,
    /// The targets in force (the service replaces them with the outputs).
    pub targets: Arc<Live<Vec<IcecastTarget>>>,
    pub stats: Arc<TitleStats>,
}

impl IcecastTitles {
    pub fn start(feed: TitleFeed, supervisor: &Supervisor) -> io::Result<IcecastTitles> {
        let worker = Worker::spawn_supervised("icecast-titles", supervisor, move |stop| push_titles(&stop, &feed))?;
        Ok(IcecastTitles { worker })
    }
}

/// Per target (by `host:port/mount`): the title and connection it last
/// got, and when a failed update may be tried again.
#[derive(Default)]
struct Sent {
    title: String,
    connects: u64,
    retry_at: Option<Instant>,
}

fn push_titles(stop: &StopSignal, feed: &TitleFeed) {
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let log = LogGate::new(Duration::from_secs(60));
    while !stop.is_stopped() {
        stop.sleep(TURN);
        let targets = feed.targets.get();
        if targets.is_empty() {
            continue;
        }
        let title = feed.station.get().title.clone();
        let outputs = feed.outputs.snapshot();
        for target in targets.iter() {
            let Ok(endpoint) = Endpoint::parse(&target.url) else {
                continue;
            };
            let key = endpoint.to_string();
            let Some(out) = outputs.iter().find(|o| o.target == key) else {
                continue;
            };
            let s = sent.entry(key).or_default();
            let now = Instant::now();
            if out.state != OutputState::Streaming
                || (s.title == title && s.connects == out.connects)
                || s.retry_at.is_some_and(|at| now < at)
                || stop.is_stopped()
            {
                continue;
            }
            match update_metadata(target, &endpoint, &title) {
                Ok(()) => {
                    feed.stats.updates.fetch_add(1, Ordering::Relaxed);
                    feed.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    *s = Sent {
                        title: title.clone(),
                        connects: out.connects,
                        retry_at: None,
                    };
                }
                Err(why) => {
                    feed.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let said = format!("{endpoint}: {why}");
                    if let Some(suppressed) = log.allow(now) {
                        tracing::warn!(component = "icecast", target = %endpoint, suppressed, "title update to Icecast {said}; trying again in {} s", RETRY_AFTER.as_secs());
                    }
                    *feed.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = said;
                    s.retry_at = Some(now + RETRY_AFTER);
                }
            }
        }
    }
}

/// `s` with everything but unreserved characters percent-encoded (for a
/// query string).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The metadata update request for `title` on `target`'s mount.
pub fn metadata_request(target: &IcecastTarget, endpoint: &Endpoint, title: &str) -> String {
    format!(
        "GET /admin/metadata?mode=updinfo&mount={}&song={}&charset=UTF-8 HTTP/1.0\r\n\
         Host: {}:{}\r\n\
         Authorization: Basic {}\r\n\
         User-Agent: Tower/{}\r\n\r\n",
        percent_encode(&endpoint.mount),
        percent_encode(title),
        endpoint.authority_host(),
        endpoint.port,
        base64(format!("{}:{}", target.user, target.password).as_bytes()),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Sends one metadata update and reads the answer (at most 4 KiB), each
/// step within [`IO_TIMEOUT`].
fn update_metadata(target: &IcecastTarget, endpoint: &Endpoint, title: &str) -> Result<(), String> {
    let addr: SocketAddr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", endpoint.host))?;
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    s.write_all(metadata_request(target, endpoint, title).as_bytes())
        .map_err(|e| format!("sending the update: {e}"))?;
    let mut answer = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 1024];
    while answer.len() < 4096 && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if answer.is_empty() => return Err(format!("no answer: {e}")),
            Err(_) => break,
        }
    }
    match classify(&String::from_utf8_lossy(&answer)) {
        Answer::Accepted => Ok(()),
        Answer::Refused(why) | Answer::Failed(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_set_titles_in_order_long_ones_are_cut_and_a_last_line_counts_at_close() {
        let (now, log) = super::super::tests::recording(Station::default());
        let dir = tempfile::tempdir().expect("tmp");
        let pcm = SocketSettings {
            path: dir.path().join("pcm.sock"),
            mode: 0o660,
            group: None,
        };
        let sup = Supervisor::reporting(|_| {});
        let t = TitleSocket::start(&pcm, now.clone(), &sup).expect("title socket");
        assert_eq!(t.path, dir.path().join("pcm.sock.title"));
        let mut w = UnixStream::connect(&t.path).expect("connect");
        w.write_all(b"Side A\r\nSide").expect("write");
        w.write_all(format!(" B\n{}\nlast", "x".repeat(5000)).as_bytes())
            .expect("write");
        drop(w);
        crate::testing::wait_until(Duration::from_secs(5), || log.lock().expect("log").len() >= 4);
        let titles: Vec<String> = log
            .lock()
            .expect("log")
            .iter()
            .filter_map(|l| l.rsplit(" → ").next().map(str::to_string))
            .collect();
        assert_eq!(titles[..2], ["Side A", "Side B"]);
        assert_eq!(titles[2], "x".repeat(super::super::MAX_TITLE_CHARS));
        assert_eq!(titles[3], "last");
        assert!(log.lock().expect("log")[0].starts_with("title socket (pid "));
        assert_eq!(now.get(), "last");
        t.worker.stop_signal().stop();
        t.worker.stop(Duration::from_secs(2)).expect("stop");
        assert!(
            !dir.path().join("pcm.sock.title").exists(),
            "the socket file is removed"
        );
    }

    #[test]
    fn the_update_request_names_the_mount_and_encodes_the_title_as_utf8() {
        let target = IcecastTarget::at("http://h:8000/live", "hackme");
        let ep = Endpoint::parse(&target.url).expect("url");
        let rq = metadata_request(&target, &ep, "Brötchen & Co");
        assert!(
            rq.starts_with(
                "GET /admin/metadata?mode=updinfo&mount=%2Flive&song=Br%C3%B6tchen%20%26%20Co&charset=UTF-8 HTTP/1.0\r\n"
            ),
            "{rq}"
        );
        assert!(rq.contains("Authorization: Basic c291cmNlOmhhY2ttZQ==\r\n"));
    }
}
