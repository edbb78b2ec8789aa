//! The socket input: PCM pushed by a program on the same machine (issue 17).
//!
//! `input = "unix:PATH"` makes Tower listen on a Unix stream socket instead
//! of capturing from a sound card. A playout program, `ffmpeg -f s16le
//! unix:PATH`, Liquidsoap or a script writes raw s16le, 48 kHz, stereo into
//! it; [`SocketCapture`] is a [`CaptureSource`], so the capture thread cuts,
//! meters and queues that audio exactly as it does a sound card's, and the
//! pump stays the only clock. A producer writing faster than real time fills
//! the queue (`GET /tower/buffer` shows it) and past capacity the queue drops
//! the newest frames, counted; a producer paces itself by keeping the fill
//! near a target (see the README and `examples/pace_producer.rs`).
//!
//! Runs on the capture thread. The socket is bound when the source is made
//! (at start-up, so a path that cannot be used stops Tower with an error
//! naming the key) and stays bound until the source is dropped, which
//! removes the file. One producer at a time: a second one is logged and
//! closed, and the first keeps playing, unless the first has sent no whole
//! frame for [`GIVE_WAY_AFTER`] (hung, or connected and silent): then it
//! is closed and the new one takes its place. Reads hand the capture loop whole
//! 4608-byte frames only, so a producer that leaves mid-frame loses just
//! that partial frame (counted) and the next producer starts aligned. A
//! source without a producer, or with one that sends nothing, returns
//! nothing; the capture loop then reports the outage and the pump sends
//! silence, then the fallback, without re-opening anything: the next
//! producer is accepted and heard at once.

use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::PCM_FRAME_BYTES;
use super::router::HIGH_WATER;
use super::source::{
    CaptureError, CaptureSource, ErrorClass, Peer, Selection, SocketSnapshot, SocketState, SocketStatus,
};
use crate::ratelog::LogGate;

/// How `input` names a socket: `unix:` and an absolute path.
pub const SCHEME: &str = "unix:";
/// `input` for the sound card named by `device`.
pub const ALSA: &str = "alsa";
/// The directory the systemd unit makes for Tower (`RuntimeDirectory=tower`).
pub const RUNTIME_DIR: &str = "/run/tower";
/// A connected producer that has sent nothing for this long is idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// A producer that has sent no whole frame for this long gives its place
/// to a new one that connects. Long enough for any producer that is
/// working (they send 42 frames a second; a pause of a few seconds is a
/// hiccup), and as long as listeners hear silence before the fallback
/// by default (`pcm.grace_sec`): by the time the fallback plays, a
/// waiting producer can take over.
pub const GIVE_WAY_AFTER: Duration = Duration::from_secs(5);
/// The first pause after a failed accept, and the longest.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// The longest socket path the kernel accepts (`sun_path` less its NUL).
const MAX_PATH_BYTES: usize = 107;

/// Where the audio comes from (`input`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The sound card named by `device`.
    Alsa,
    /// PCM pushed into a Unix stream socket.
    Socket(SocketSettings),
}

/// The socket input's settings (`input`, `socket.mode`, `socket.group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    pub path: PathBuf,
    /// Permission bits of the socket file: who may connect.
    pub mode: u32,
    /// The group the socket file is given; `None` keeps Tower's own.
    pub group: Option<String>,
}

impl Input {
    /// Parses `input`: `alsa`, or `unix:` and an absolute path.
    pub fn parse(text: &str) -> Result<Input, String> {
        if text == ALSA {
            return Ok(Input::Alsa);
        }
        let Some(path) = text.strip_prefix(SCHEME) else {
            return Err(
                "alsa (the sound card named by `device`) or unix:PATH (a socket a program writes PCM into)".into(),
            );
        };
        if !path.starts_with('/') {
            return Err("unix: followed by an absolute path, such as unix:/run/tower/pcm.sock".into());
        }
        if path.len() > MAX_PATH_BYTES || path.ends_with('/') || path.contains('\0') {
            return Err(format!(
                "unix: followed by the path of a file (at most {MAX_PATH_BYTES} bytes), such as unix:/run/tower/pcm.sock"
            ));
        }
        Ok(Input::Socket(SocketSettings {
            path: PathBuf::from(path),
            mode: 0o660,
            group: None,
        }))
    }
}

/// Parses `socket.mode`: octal permission bits such as "0660".
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let accepted = "octal permission bits such as \"0660\" (owner and group may connect) or \"0600\" (owner only)";
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if !(3..=4).contains(&digits.len()) || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(accepted.into());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| accepted.to_string())?;
    if mode > 0o777 {
        return Err(format!("{accepted}; no setuid, setgid or sticky bits"));
    }
    if mode & 0o222 == 0 {
        return Err(format!("{accepted}; a producer needs write permission to connect"));
    }
    Ok(mode)
}

/// Checks `socket.group`: a group name or number; "" keeps Tower's group.
pub fn check_group(text: &str) -> Result<(), String> {
    let ok = text.is_empty()
        || (text.len() <= 32
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            && !text.starts_with('-'));
    if ok {
        Ok(())
    } else {
        Err("a group name such as audio, a group number, or \"\" to keep Tower's own group".into())
    }
}

/// Why the socket cannot be set up; each says which key to change.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "`input` = \"unix:{}\": the directory {} does not exist; create it, or use a path in {RUNTIME_DIR} (the systemd unit creates it)",
        path.display(), dir.display()
    )]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("`input` = \"unix:{}\": cannot create {RUNTIME_DIR}: {source} (run Tower from its systemd unit, which creates it, or create it)", path.display())]
    RuntimeDir { path: PathBuf, source: std::io::Error },
    #[error("`input` = \"unix:{}\": the file exists and is not a socket; remove it or choose another path", path.display())]
    NotASocket { path: PathBuf },
    #[error("`input` = \"unix:{}\": another program is listening on it (another Tower?); stop it or choose another path", path.display())]
    InUse { path: PathBuf },
    #[error("`input` = \"unix:{}\": cannot create the socket: {source} (check the directory's permissions)", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("`socket.mode` = \"{mode:04o}\": cannot set it on {}: {source}", path.display())]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("`socket.group` = {group:?}: no such group on this system; name an existing group or set \"\"")]
    NoGroup { group: String },
    #[error(
        "`socket.group` = {group:?}: cannot give {} to the group: {source} (Tower must run as root or as a member of the group)",
        path.display()
    )]
    Group {
        path: PathBuf,
        group: String,
        source: nix::Error,
    },
}

fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

fn describe(peer: Option<Peer>) -> String {
    match peer {
        Some(p) => format!("pid {}, uid {}", p.pid, p.uid),
        None => "unknown process".into(),
    }
}

/// The producer currently connected, for `/status`.
#[derive(Debug, Clone, Copy)]
struct Connected {
    peer: Option<Peer>,
    since: Instant,
}

/// The socket input's state, shared with `/status`: written by the capture
/// thread on connect and disconnect, read on request.
#[derive(Debug)]
pub struct SocketBoard {
    path: PathBuf,
    epoch: Instant,
    producer: Mutex<Option<Connected>>,
    /// Milliseconds after `epoch` of the last frame received, plus one
    /// (0: none yet from this producer).
    last_frame_ms: AtomicU64,
    connected: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    displaced: AtomicU64,
    accept_errors: AtomicU64,
    partial_frames_dropped: AtomicU64,
    frames: AtomicU64,
}

impl SocketBoard {
    fn new(path: &Path) -> Self {
        SocketBoard {
            path: path.to_path_buf(),
            epoch: Instant::now(),
            producer: Mutex::new(None),
            last_frame_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            displaced: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            partial_frames_dropped: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    fn set_producer(&self, producer: Option<Connected>) {
        self.last_frame_ms.store(0, Ordering::Relaxed);
        self.connected.store(producer.is_some(), Ordering::Relaxed);
        if let Ok(mut p) = self.producer.lock() {
            *p = producer;
        }
    }

    fn frame(&self, now: Instant) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.last_frame_ms.store(self.ms(now), Ordering::Relaxed);
    }

    /// The state at `now`: waiting, receiving or idle.
    pub fn state(&self, now: Instant) -> SocketState {
        if !self.connected.load(Ordering::Relaxed) {
            return SocketState::Waiting;
        }
        let last = self.last_frame_ms.load(Ordering::Relaxed);
        let now_ms = self.ms(now);
        if last > 0 && now_ms.saturating_sub(last) < IDLE_AFTER.as_millis() as u64 {
            SocketState::Receiving
        } else {
            SocketState::Idle
        }
    }

    fn snapshot_at(&self, now: Instant) -> SocketSnapshot {
        let producer = self.producer.lock().ok().and_then(|p| *p);
        let last = self.last_frame_ms.load(Ordering::Relaxed);
        let since_audio_s = (producer.is_some() && last > 0)
            .then(|| Duration::from_millis(self.ms(now).saturating_sub(last)).as_secs_f64());
        SocketSnapshot {
            path: self.path.display().to_string(),
            state: self.state(now),
            producer: producer.and_then(|p| p.peer),
            connected_s: producer.map(|p| now.saturating_duration_since(p.since).as_secs_f64()),
            since_audio_s,
            producers_accepted: self.accepted.load(Ordering::Relaxed),
            producers_refused: self.refused.load(Ordering::Relaxed),
            producers_displaced: self.displaced.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            partial_frames_dropped: self.partial_frames_dropped.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
        }
    }
}

impl SocketStatus for SocketBoard {
    fn snapshot(&self, now: Instant) -> SocketSnapshot {
        self.snapshot_at(now)
    }
}

/// The bound socket; dropping it removes the file (if it is still ours).
/// A bound socket file, removed again when dropped (also used for the
/// producer's title socket beside the PCM socket: `broadcast::title`).
#[derive(Debug)]
pub(crate) struct Bound {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl Bound {
    pub(crate) fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `settings.path` with its mode and group. A stale
/// socket file (nobody listening) is replaced; anything else in the way
/// is an error naming the key to change.
pub(crate) fn bind(settings: &SocketSettings) -> Result<Bound, SocketError> {
    let path = settings.path.clone();
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !dir.is_dir() {
        if dir != Path::new(RUNTIME_DIR) {
            return Err(SocketError::NoDirectory { path, dir });
        }
        // The unit makes it; run by hand (as root), make it here.
        std::fs::create_dir(&dir).map_err(|source| SocketError::RuntimeDir {
            path: path.clone(),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket { path });
        }
        if UnixStream::connect(&path).is_ok() {
            return Err(SocketError::InUse { path });
        }
        // Left by a Tower that did not stop cleanly: nobody listens.
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|source| SocketError::Bind {
        path: path.clone(),
        source,
    })?;
    let ino = std::fs::symlink_metadata(&path).map(|m| m.ino()).unwrap_or(0);
    // Removes the file again if anything below fails.
    let bound = Bound {
        listener,
        path: path.clone(),
        ino,
    };
    bound
        .listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Bind {
            path: path.clone(),
            source,
        })?;
    if let Some(group) = &settings.group {
        let gid = match group.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => match nix::unistd::Group::from_name(group) {
                Ok(Some(g)) => g.gid,
                _ => return Err(SocketError::NoGroup { group: group.clone() }),
            },
        };
        nix::unistd::chown(&path, None, Some(gid)).map_err(|source| SocketError::Group {
            path: path.clone(),
            group: group.clone(),
            source,
        })?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(settings.mode)).map_err(|source| {
        SocketError::Mode {
            path: path.clone(),
            mode: settings.mode,
            source,
        }
    })?;
    Ok(bound)
}

/// A connected producer and the frame it is part-way through.
struct Producer {
    stream: UnixStream,
    peer: Option<Peer>,
    since: Instant,
    /// Its last whole frame (at first, when it connected).
    last_frame: Instant,
    frames: u64,
}

/// What one read from the producer gave.
enum Got {
    /// A whole frame is in `frame`.
    Frame,
    /// Bytes, but not yet a whole frame; or nothing to read now.
    More,
    /// The producer left (end of stream or an error).
    Gone(String),
}

/// The socket input; see the module header.
pub struct SocketCapture {
    name: String,
    bound: Bound,
    producer: Option<Producer>,
    frame: Box<[u8; PCM_FRAME_BYTES]>,
    filled: usize,
    board: Arc<SocketBoard>,
    refused_log: LogGate,
    /// No accepting until then (an accept failed; see `accept_failed`).
    accept_paused_until: Option<Instant>,
    /// The next pause, should accepting fail again.
    accept_pause: Duration,
    accept_log: LogGate,
}

impl SocketCapture {
    /// Binds the socket now; see [`SocketError`] for what can be in the way.
    pub fn bind(settings: &SocketSettings) -> Result<SocketCapture, SocketError> {
        let bound = bind(settings)?;
        let name = format!("{SCHEME}{}", settings.path.display());
        tracing::info!(
            component = "capture",
            device = %name,
            state = "waiting",
            "socket input listening on {} (mode {:04o}, group {}): waiting for a producer of s16le 48000 Hz stereo",
            settings.path.display(),
            settings.mode,
            settings.group.as_deref().unwrap_or("Tower's own")
        );
        Ok(SocketCapture {
            name,
            board: Arc::new(SocketBoard::new(&settings.path)),
            bound,
            producer: None,
            frame: Box::new([0; PCM_FRAME_BYTES]),
            filled: 0,
            refused_log: LogGate::new(Duration::from_secs(10)),
            accept_paused_until: None,
            accept_pause: ACCEPT_PAUSE_FIRST,
            accept_log: LogGate::new(Duration::from_secs(60)),
        })
    }

    /// The state `/status` reads.
    pub fn board(&self) -> Arc<SocketBoard> {
        self.board.clone()
    }

    /// Takes every pending connection: the first becomes the producer if
    /// none is connected, or if the one connected has been silent for
    /// [`GIVE_WAY_AFTER`]; the others are refused and closed.
    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now < until) {
            return;
        }
        loop {
            let stream = match self.bound.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.accept_failed(&e, now),
            };
            self.accept_pause = ACCEPT_PAUSE_FIRST;
            self.accept_paused_until = None;
            let peer = peer_of(&stream);
            match &self.producer {
                Some(current) if now.saturating_duration_since(current.last_frame) >= GIVE_WAY_AFTER => {
                    let silent = now.saturating_duration_since(current.last_frame).as_secs_f64();
                    self.board.displaced.fetch_add(1, Ordering::Relaxed);
                    let why = format!(
                        "it sent nothing for {silent:.1} s and gave way to a new producer ({})",
                        describe(peer)
                    );
                    self.disconnect(&why, now);
                    self.adopt(stream, peer, now);
                }
                Some(current) => self.refuse(stream, peer, current.peer, now),
                None => self.adopt(stream, peer, now),
            }
        }
    }

    /// `accept` failed with the connection still queued (out of
    /// descriptors, EMFILE or ENFILE; or of kernel memory, ENOBUFS or
    /// ENOMEM): trying again at once would fail the same way, over and
    /// over. Accepting pauses (100 ms, doubling to 1 s while it keeps
    /// failing); the failure is counted and logged at most once a minute.
    fn accept_failed(&mut self, e: &std::io::Error, now: Instant) {
        let total = self.board.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let pause = self.accept_pause;
        self.accept_paused_until = Some(now + pause);
        self.accept_pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
        if let Some(suppressed) = self.accept_log.allow(now) {
            tracing::warn!(
                component = "capture",
                device = %self.name,
                errors_total = total,
                suppressed,
                "socket input: cannot accept a producer's connection: {e}; trying again in {} ms",
                pause.as_millis()
            );
        }
    }

    fn adopt(&mut self, stream: UnixStream, peer: Option<Peer>, now: Instant) {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(component = "capture", device = %self.name, "socket input: cannot use a producer's connection ({}): {e}", describe(peer));
            return;
        }
        self.filled = 0;
        self.board.accepted.fetch_add(1, Ordering::Relaxed);
        self.board.set_producer(Some(Connected { peer, since: now }));
        tracing::info!(
            component = "capture",
            device = %self.name,
            state = "connected",
            reason = "a producer connected",
            "socket input: producer connected ({})",
            describe(peer)
        );
        self.producer = Some(Producer {
            stream,
            peer,
            since: now,
            last_frame: now,
            frames: 0,
        });
    }

    fn refuse(&mut self, stream: UnixStream, peer: Option<Peer>, current: Option<Peer>, now: Instant) {
        let n = self.board.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        drop(stream);
        if let Some(suppressed) = self.refused_log.allow(now) {
            tracing::warn!(
                component = "capture",
                device = %self.name,
                reason = "one producer at a time",
                refused_total = n,
                suppressed,
                "socket input: refused a second producer ({}) and closed its connection: one producer at a time, \
                 and the one connected ({}) keeps playing (one silent for {} s gives way)",
                describe(peer),
                describe(current),
                GIVE_WAY_AFTER.as_secs()
            );
        }
    }

    /// The producer left: forget it and any partial frame (counted).
    fn disconnect(&mut self, why: &str, now: Instant) {
        let Some(p) = self.producer.take() else {
            return;
        };
        let partial = std::mem::take(&mut self.filled);
        if partial > 0 {
            self.board.partial_frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.board.set_producer(None);
        tracing::info!(
            component = "capture",
            device = %self.name,
            state = "waiting",
            reason = why,
            "socket input: producer ({}) disconnected after {:.1} s and {} frames ({why}){}; waiting for a producer",
            describe(p.peer),
            now.saturating_duration_since(p.since).as_secs_f64(),
            p.frames,
            if partial > 0 {
                format!("; the last {partial} bytes, less than a frame, were dropped")
            } else {
                String::new()
            }
        );
    }

    /// Reads what the producer has towards the current frame.
    fn read_producer(&mut self) -> Got {
        let Some(p) = self.producer.as_mut() else {
            return Got::More;
        };
        loop {
            match p.stream.read(&mut self.frame[self.filled..]) {
                Ok(0) => return Got::Gone("end of stream".into()),
                Ok(n) => {
                    self.filled += n;
                    if self.filled == PCM_FRAME_BYTES {
                        self.filled = 0;
                        p.frames += 1;
                        return Got::Frame;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::More,
                Err(e) => return Got::Gone(e.to_string()),
            }
        }
    }

    /// Waits at most `wait` for a connection or the producer's data;
    /// returns (a connection is pending, the producer has data or left).
    /// While accepting is paused the listener is left out (its queued
    /// connection would end every wait at once) and the wait ends when
    /// the pause does.
    fn wait(&self, wait: Duration, now: Instant) -> (bool, bool) {
        let (listen, wait) = match self.accept_paused_until {
            Some(until) if now < until => (PollFlags::empty(), wait.min(until - now)),
            _ => (PollFlags::POLLIN, wait),
        };
        // Round up: a sub-millisecond wait must not become a busy loop.
        let ms = wait.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        match &self.producer {
            Some(p) => {
                let mut fds = [
                    PollFd::new(self.bound.listener.as_fd(), listen),
                    PollFd::new(p.stream.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) => (ready(&fds[0]), ready(&fds[1])),
                    Err(_) => (false, false),
                }
            }
            None => {
                let mut fds = [PollFd::new(self.bound.listener.as_fd(), listen)];
                match poll(&mut fds, timeout) {
                    Ok(_) => (ready(&fds[0]), false),
                    Err(_) => (false, false),
                }
            }
        }
    }
}

impl CaptureSource for SocketCapture {
    fn device(&self) -> &str {
        &self.name
    }

    fn selection(&self) -> Selection {
        Selection {
            name: self.name.clone(),
            auto: false,
            reason: self.board.state(Instant::now()).reason().into(),
            card: None,
        }
    }

    /// The socket is bound from start-up to drop: nothing to open.
    fn open(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }

    /// Hands over one whole frame, or `Ok(0)` when none completed within
    /// `timeout`; meanwhile accepts (or refuses) producers.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        if buf.len() < PCM_FRAME_BYTES {
            return Err(CaptureError::Failed {
                device: self.name.clone(),
                class: ErrorClass::Other,
                reason: format!("read buffer of {} bytes holds less than a frame", buf.len()),
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let (connecting, readable) = self.wait(deadline.saturating_duration_since(now), now);
            let now = Instant::now();
            if connecting {
                self.accept_all(now);
            }
            if readable {
                match self.read_producer() {
                    Got::Frame => {
                        buf[..PCM_FRAME_BYTES].copy_from_slice(&self.frame[..]);
                        self.board.frame(now);
                        if let Some(p) = self.producer.as_mut() {
                            p.last_frame = now;
                        }
                        return Ok(PCM_FRAME_BYTES);
                    }
                    Got::More => {}
                    Got::Gone(why) => self.disconnect(&why, now),
                }
            }
            if now >= deadline {
                return Ok(0);
            }
        }
    }

    /// Lets the producer go (the loop closes only on stop); the socket
    /// stays bound for the next one.
    fn close(&mut self) {
        self.disconnect("Tower closed the input", Instant::now());
    }

    fn reopen_when_stalled(&self) -> bool {
        false
    }

    fn queue_high_water(&self, capacity: usize) -> usize {
        (capacity / 2).max(HIGH_WATER)
    }

    fn socket(&self) -> Option<Arc<dyn SocketStatus>> {
        Some(self.board())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(dir: &Path) -> SocketSettings {
        SocketSettings {
            path: dir.join("pcm.sock"),
            mode: 0o660,
            group: None,
        }
    }

    /// Reads until a frame comes or `tries` reads return nothing.
    fn next_frame(s: &mut SocketCapture, tries: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; PCM_FRAME_BYTES];
        for _ in 0..tries {
            if s.read(&mut buf, Duration::from_millis(50)).expect("read") == PCM_FRAME_BYTES {
                return Some(buf);
            }
        }
        None
    }

    fn pattern(frames: usize, seed: u8) -> Vec<u8> {
        (0..frames * PCM_FRAME_BYTES).map(|i| (i % 241) as u8 ^ seed).collect()
    }

    #[test]
    fn input_parses_alsa_or_an_absolute_socket_path() {
        assert_eq!(Input::parse("alsa"), Ok(Input::Alsa));
        let Ok(Input::Socket(s)) = Input::parse("unix:/run/tower/pcm.sock") else {
            panic!("a socket");
        };
        assert_eq!(s.path, PathBuf::from("/run/tower/pcm.sock"));
        for bad in [
            "",
            "ALSA",
            "unix:",
            "unix:pcm.sock",
            "unix:/run/tower/",
            "fifo:/x",
            "/run/x.sock",
        ] {
            assert!(Input::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("unix:/{}", "x".repeat(MAX_PATH_BYTES));
        assert!(Input::parse(&long).unwrap_err().contains("107 bytes"));
    }

    #[test]
    fn mode_and_group_are_checked() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        for bad in ["", "66", "0990", "rw-rw----", "4660", "0444", "07777"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "audio", "29", "tower-feeds"] {
            assert!(check_group(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-x", "a b", "wheel;rm"] {
            assert!(check_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_of_any_size_become_whole_frames_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let mut producer = UnixStream::connect(dir.path().join("pcm.sock")).expect("connect");
        let data = pattern(4, 0);
        // Odd sizes straddle frame and sample boundaries.
        let writer = std::thread::spawn(move || {
            for chunk in data.chunks(1001) {
                producer.write_all(chunk).expect("write");
                std::thread::sleep(Duration::from_millis(1));
            }
            producer
        });
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(next_frame(&mut s, 100).expect("a frame"));
        }
        let _producer = writer.join().expect("writer");
        assert_eq!(got, pattern(4, 0));
        let snap = s.board().snapshot(Instant::now());
        assert_eq!(
            (snap.state, snap.frames, snap.producers_accepted),
            (SocketState::Receiving, 4, 1)
        );
        assert!(snap.producer.is_some_and(|p| p.pid == std::process::id() as i32));
    }

    #[test]
    fn a_producer_leaving_mid_frame_loses_only_that_frame_and_the_next_starts_aligned() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let path = dir.path().join("pcm.sock");
        let mut first = UnixStream::connect(&path).expect("connect");
        let data = pattern(2, 0);
        first.write_all(&data[..PCM_FRAME_BYTES + 1000]).expect("write");
        assert_eq!(next_frame(&mut s, 20).as_deref(), Some(&data[..PCM_FRAME_BYTES]));
        drop(first);
        assert!(next_frame(&mut s, 3).is_none(), "the partial frame is not delivered");
        let snap = s.board().snapshot(Instant::now());
        assert_eq!((snap.state, snap.partial_frames_dropped), (SocketState::Waiting, 1));
        let mut second = UnixStream::connect(&path).expect("connect again");
        let fresh = pattern(1, 0x5a);
        second.write_all(&fresh).expect("write");
        assert_eq!(next_frame(&mut s, 20), Some(fresh));
        assert_eq!(s.board().snapshot(Instant::now()).producers_accepted, 2);
    }

    #[test]
    fn a_second_producer_is_refused_and_the_first_keeps_playing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let path = dir.path().join("pcm.sock");
        let mut first = UnixStream::connect(&path).expect("connect");
        let one = pattern(1, 1);
        first.write_all(&one).expect("write");
        assert_eq!(next_frame(&mut s, 20), Some(one));
        let mut second = UnixStream::connect(&path).expect("the kernel accepts the connection");
        second.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert!(next_frame(&mut s, 2).is_none());
        // Refused: Tower closed it, so it reads end of stream.
        let mut b = [0u8; 1];
        assert_eq!(second.read(&mut b).expect("eof"), 0);
        let two = pattern(1, 2);
        first.write_all(&two).expect("the first still writes");
        assert_eq!(next_frame(&mut s, 20), Some(two));
        let snap = s.board().snapshot(Instant::now());
        assert_eq!((snap.producers_accepted, snap.producers_refused), (1, 1));
    }

    /// A socket input in a fresh directory, and its path.
    fn bound() -> (tempfile::TempDir, SocketCapture, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let path = dir.path().join("pcm.sock");
        (dir, s, path)
    }

    /// A producer's connection whose reads give up after 5 s.
    fn producer(path: &Path) -> UnixStream {
        let p = UnixStream::connect(path).expect("connect");
        p.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        p
    }

    #[test]
    fn a_producer_silent_for_the_bound_gives_way_to_a_new_one() {
        let (_dir, mut s, path) = bound();
        // Connects and sends nothing (hung, or anyone in the group).
        let mut silent = producer(&path);
        assert!(next_frame(&mut s, 2).is_none());
        let connected = Instant::now();
        // Within the bound, a second producer is refused.
        let mut early = producer(&path);
        assert!(next_frame(&mut s, 2).is_none());
        let mut b = [0u8; 1];
        assert_eq!(early.read(&mut b).expect("refused: end of stream"), 0);
        // Past it, the next one takes the place.
        let mut next = producer(&path);
        s.accept_all(connected + GIVE_WAY_AFTER);
        assert_eq!(silent.read(&mut b).expect("closed: end of stream"), 0);
        let fresh = pattern(1, 3);
        next.write_all(&fresh).expect("write");
        assert_eq!(next_frame(&mut s, 20), Some(fresh));
        let snap = s.board().snapshot(Instant::now());
        assert_eq!(
            (
                snap.producers_accepted,
                snap.producers_refused,
                snap.producers_displaced
            ),
            (2, 1, 1)
        );
        assert_eq!(snap.state, SocketState::Receiving);
    }

    /// Set in the child process of the test below.
    const EMFILE_CHILD: &str = "SOCKET_INPUT_EMFILE_CHILD";

    #[test]
    fn out_of_descriptors_accepting_backs_off_instead_of_spinning_and_recovers() {
        if std::env::var_os(EMFILE_CHILD).is_none() {
            // The descriptor limit is the whole process's: lower it in a
            // child running only this test.
            let exe = std::env::current_exe().expect("test binary");
            let run = |program: &std::ffi::OsStr, args: &[&std::ffi::OsStr]| {
                let out = std::process::Command::new(program)
                    .args(args)
                    .args([
                        "--exact",
                        "audio::socket::tests::out_of_descriptors_accepting_backs_off_instead_of_spinning_and_recovers",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(EMFILE_CHILD, "1")
                    .output();
                out.map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    (o.status, text)
                })
            };
            let mut child = run(exe.as_os_str(), &[]);
            // Cross-tested for the Pi under qemu-user with no binfmt_misc
            // entry (scripts/arm.sh), the kernel cannot run the test binary
            // itself: the child goes through the same emulator.
            if !child.as_ref().is_ok_and(|(_, text)| text.contains("running 1 test")) {
                let qemu = format!("qemu-{}-static", std::env::consts::ARCH);
                if let Ok(emulated) = run(std::ffi::OsStr::new(&qemu), &[exe.as_os_str()]) {
                    child = Ok(emulated);
                }
            }
            let (status, text) = child.expect("run the child");
            assert!(status.success() && text.contains("1 passed"), "{status}: {text}");
            eprintln!("{}", text.lines().find(|l| l.contains("accept attempts")).unwrap_or(""));
            return;
        }
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_dir, mut s, path) = bound();
        let mut p = producer(&path);
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, 64, hard).expect("setrlimit");
        let mut hog = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(f);
        }
        // For a second every accept fails (EMFILE) with the producer queued.
        let mut buf = vec![0u8; PCM_FRAME_BYTES];
        assert_eq!(s.read(&mut buf, Duration::from_secs(1)).expect("read"), 0);
        let errors = s.board().snapshot(Instant::now()).accept_errors;
        eprintln!("accept attempts while out of descriptors for 1 s: {errors}");
        assert!((1..=6).contains(&errors), "{errors} failed accepts in 1 s");
        // Descriptors free again: the producer is accepted and heard.
        drop(hog);
        let frame = pattern(1, 7);
        p.write_all(&frame).expect("write");
        assert_eq!(next_frame(&mut s, 60), Some(frame));
        assert_eq!(s.board().snapshot(Instant::now()).producers_accepted, 1);
    }

    #[test]
    fn a_connected_producer_that_sends_nothing_is_idle() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let board = s.board();
        assert_eq!(board.state(Instant::now()), SocketState::Waiting);
        let mut p = UnixStream::connect(dir.path().join("pcm.sock")).expect("connect");
        assert!(next_frame(&mut s, 2).is_none());
        assert_eq!(
            board.state(Instant::now()),
            SocketState::Idle,
            "connected, nothing sent"
        );
        p.write_all(&pattern(1, 0)).expect("write");
        assert!(next_frame(&mut s, 20).is_some());
        let now = Instant::now();
        assert_eq!(board.state(now), SocketState::Receiving);
        assert_eq!(board.state(now + IDLE_AFTER), SocketState::Idle);
        assert_eq!(
            s.selection().reason,
            SocketState::Receiving.reason(),
            "/status shows the state"
        );
    }

    #[test]
    fn through_the_capture_loop_a_producer_gone_is_an_outage_and_the_next_is_heard_at_once() {
        use crate::audio::capture::{Capture, CaptureConfig, DeviceState};
        use crate::audio::router::AudioInputRouter;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("pcm.sock");
        let source = SocketCapture::bind(&settings(dir.path())).expect("bind");
        let router = Arc::new(AudioInputRouter::new(100));
        let capture = Capture::start(
            Box::new(source),
            Box::new(crate::audio::mixer::FakeMixer::default()),
            router.clone(),
            CaptureConfig {
                silence_warn: Duration::from_secs(30),
                level: crate::audio::mixer::Level::Keep,
            },
            Arc::new(crate::hooks::TestHooks::disabled()),
        )
        .expect("start");
        assert_eq!(router.high_water(), 50, "room for a producer's target");
        let mut p = UnixStream::connect(&path).expect("connect");
        p.write_all(&pattern(3, 7)).expect("write");
        for i in 0..3 {
            let f = router.pop(Some(Duration::from_secs(5))).expect("a frame");
            assert_eq!(
                &f.as_bytes()[..],
                &pattern(3, 7)[i * PCM_FRAME_BYTES..(i + 1) * PCM_FRAME_BYTES]
            );
        }
        drop(p);
        let gone = Instant::now();
        let wait = |cond: &dyn Fn() -> bool| crate::testing::wait_until(Duration::from_secs(10), cond);
        assert!(wait(&|| capture.snapshot().state == DeviceState::Unavailable));
        assert!(gone.elapsed() >= Duration::from_millis(900), "an outage after a second");
        let snap = capture.snapshot();
        assert_eq!(snap.selection.name, format!("unix:{}", path.display()));
        assert_eq!(snap.selection.reason, SocketState::Waiting.reason());
        assert_eq!(snap.socket.as_ref().map(|s| s.state), Some(SocketState::Waiting));
        // Through another second of nothing: one outage, never re-opened.
        std::thread::sleep(Duration::from_millis(1200));
        let snap = capture.snapshot();
        assert_eq!((snap.opens, snap.errors.stalled), (1, 1), "{snap:?}");
        let mut p = UnixStream::connect(&path).expect("connect again");
        let back = Instant::now();
        p.write_all(&pattern(1, 9)).expect("write");
        let f = router.pop(Some(Duration::from_secs(5))).expect("a frame");
        assert!(back.elapsed() < Duration::from_millis(200), "{:?}", back.elapsed());
        assert_eq!(&f.as_bytes()[..], &pattern(1, 9)[..]);
        assert!(wait(&|| capture.snapshot().state == DeviceState::Open));
        capture.stop(Duration::from_secs(2)).expect("stop");
        assert!(!path.exists(), "stopping removes the socket");
    }

    #[test]
    fn a_stale_socket_is_replaced_but_other_files_and_live_sockets_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let set = settings(dir.path());
        // Stale: bound by a process that is gone (the listener dropped
        // without removing its file).
        drop(UnixListener::bind(&set.path).expect("stale"));
        let s = SocketCapture::bind(&set).expect("a stale socket is replaced");
        let live = SocketCapture::bind(&set).err().expect("in use");
        assert!(matches!(live, SocketError::InUse { .. }), "{live}");
        drop(s);
        assert!(!set.path.exists(), "the file goes with the source");
        std::fs::write(&set.path, b"not a socket").expect("file");
        let e = SocketCapture::bind(&set).err().expect("not a socket");
        assert!(
            e.to_string().contains("`input`") && e.to_string().contains("not a socket"),
            "{e}"
        );
        assert!(set.path.is_file(), "a file that is not a socket is left alone");
        let missing = SocketSettings {
            path: dir.path().join("no/such/dir/pcm.sock"),
            ..set.clone()
        };
        let e = SocketCapture::bind(&missing).err().expect("no directory");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn the_socket_gets_its_mode_and_group() {
        let dir = tempfile::tempdir().expect("tmp");
        let own = nix::unistd::getegid();
        let set = SocketSettings {
            mode: 0o620,
            group: Some(own.as_raw().to_string()),
            ..settings(dir.path())
        };
        let _s = SocketCapture::bind(&set).expect("bind");
        let meta = std::fs::symlink_metadata(&set.path).expect("meta");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o620);
        assert_eq!(meta.gid(), own.as_raw());
        let unknown = SocketSettings {
            path: dir.path().join("other.sock"),
            group: Some("no-such-group-tower".into()),
            ..set.clone()
        };
        let e = SocketCapture::bind(&unknown).err().expect("no group");
        assert!(e.to_string().contains("`socket.group`"), "{e}");
        assert!(!unknown.path.exists(), "a socket that failed its set-up is removed");
    }
}
