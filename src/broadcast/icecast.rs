//! Pushing the stream to Icecast servers as a source.
//!
//! Each `[[icecast]]` target gets its own worker thread ("icecast-N") and
//! its own bounded queue of MP3 frames, owned by [`Outputs`]. The broadcast
//! loop offers every frame to every queue without blocking
//! ([`Outputs::offer`]); a full queue drops the frame, counted. So a slow,
//! unreachable or refusing server never touches local listeners or the
//! other targets.
//!
//! The worker connects, sends the Icecast 2.4 source request (HTTP `PUT`
//! with `Expect: 100-continue`, `Content-Type: audio/mpeg`, `ice-*`
//! headers and Basic auth; the legacy `SOURCE` method if configured), waits
//! for the server's answer, then streams frames. On any failure it closes,
//! logs the server's reason once per episode (wrong password, mount in
//! use, server full…), and reconnects with a backoff: 1 s doubling to 30 s,
//! and 30 s at once after a refusal, which a retry will not cure soon.
//! Passwords appear nowhere but in the `Authorization` header.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};

use serde::{Deserialize, Serialize};

use super::Station;
use crate::encoder::Mp3Frame;
use crate::hooks::{PanicTarget, TestHooks};
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};

/// Frames a target may fall behind before frames are dropped: 2.4 s.
pub const QUEUE_FRAMES: usize = 100;
/// Connecting, the server's answer, and each write may take this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, and the wait after a refusal.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One Icecast server Tower feeds as a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcecastTarget {
    /// `http://host:port/mount`.
    pub url: String,
    #[serde(default = "IcecastTarget::default_user")]
    pub user: String,
    pub password: String,
    /// Defaults to the station's.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub genre: Option<String>,
    /// Listed in public directories (`ice-public`).
    #[serde(default)]
    pub public: bool,
    /// `put` (Icecast 2.4) or `source` (older servers).
    #[serde(default = "IcecastTarget::default_method")]
    pub method: String,
}

impl IcecastTarget {
    fn default_user() -> String {
        "source".into()
    }
    fn default_method() -> String {
        "put".into()
    }
}

/// Where a target is, parsed from its `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub mount: String,
}

/// Why an Icecast URL was refused (read after "a URL that").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("must start with http:// (Icecast source connections are plain HTTP)")]
    NotHttp,
    #[error("has no mount point (http://host:8000/live)")]
    NoMount,
    #[error("must not carry a user or password; use the user and password keys")]
    Credentials,
    #[error("has a bad port {0:?}")]
    BadPort(String),
    #[error("needs a host and a mount point (http://host:8000/live)")]
    Incomplete,
}

impl Endpoint {
    /// Parses `http://host[:port]/mount` (port 8000 by default). Credentials
    /// in the URL are refused: they belong in `user` and `password`.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let rest = url.strip_prefix("http://").ok_or(EndpointError::NotHttp)?;
        let (authority, path) = rest.split_once('/').ok_or(EndpointError::NoMount)?;
        if authority.contains('@') {
            return Err(EndpointError::Credentials);
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = match authority.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((h, rest)) => (h, rest.strip_prefix(':')),
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| EndpointError::BadPort(p.to_string()))?,
            None => 8000,
        };
        if host.is_empty() || path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EndpointError::Incomplete);
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            mount: format!("/{path}"),
        })
    }
}

impl Endpoint {
    /// The host as it goes before `:port` (an IPv6 address in brackets).
    pub fn authority_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl std::fmt::Display for Endpoint {
    /// `host:port/mount`: how logs and `/status` name a target.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}{}", self.authority_host(), self.port, self.mount)
    }
}

/// Standard base64 (for the Basic `Authorization` header).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The source request for `target` (headers only; the body is the stream).
pub fn source_request(
    target: &IcecastTarget,
    endpoint: &Endpoint,
    station: &Station,
    bitrate_kbps: u64,
    sample_rate: u32,
) -> String {
    let auth = base64(format!("{}:{}", target.user, target.password).as_bytes());
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let name = clean(target.name.as_deref().unwrap_or(&station.name));
    let description = clean(target.description.as_deref().unwrap_or(&station.description));
    let genre = clean(target.genre.as_deref().unwrap_or(&station.genre));
    let (first, expect) = if target.method == "source" {
        (format!("SOURCE {} HTTP/1.0", endpoint.mount), "")
    } else {
        (format!("PUT {} HTTP/1.1", endpoint.mount), "Expect: 100-continue\r\n")
    };
    let mut req = format!(
        "{first}\r\n\
         Host: {}:{}\r\n\
         Authorization: Basic {auth}\r\n\
         User-Agent: Tower/{}\r\n\
         Content-Type: audio/mpeg\r\n\
         Ice-Public: {}\r\n\
         Ice-Name: {name}\r\n\
         Ice-Description: {description}\r\n\
         Ice-Genre: {genre}\r\n\
         Ice-Bitrate: {bitrate_kbps}\r\n\
         Ice-Audio-Info: ice-samplerate={sample_rate};ice-bitrate={bitrate_kbps};ice-channels=2\r\n",
        endpoint.authority_host(),
        endpoint.port,
        env!("CARGO_PKG_VERSION"),
        u8::from(target.public),
    );
    if !station.url.is_empty() {
        req.push_str(&format!("Ice-Url: {}\r\n", clean(&station.url)));
    }
    req.push_str(expect);
    req.push_str("\r\n");
    req
}

/// The words of an HTML (or plain) body: tags dropped, spaces collapsed,
/// at most 200 characters.
fn text_of(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

/// What the server said to the source request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Go ahead (`100 Continue`, or `200 OK`).
    Accepted,
    /// Refused, with the reason in words; retrying soon will not help.
    Refused(String),
    /// Not an HTTP answer, or a server error: retry with the backoff.
    Failed(String),
}

/// Reads the status line (and a little of the body, where servers put
/// their reason) and classifies it.
pub fn classify(response: &str) -> Answer {
    let line = response.lines().next().unwrap_or("").trim();
    let mut parts = line.splitn(3, ' ');
    let (proto, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reason = parts.next().unwrap_or("").trim();
    if !proto.starts_with("HTTP/") && !proto.starts_with("ICE/") {
        return Answer::Failed(format!("not an Icecast server (it answered {line:?})"));
    }
    let body = response.split("\r\n\r\n").nth(1).map(text_of).unwrap_or_default();
    let said = if body.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {body}")
    };
    match code {
        "100" | "200" => Answer::Accepted,
        "401" => Answer::Refused(format!("wrong user or password (401 {said})")),
        "403" => Answer::Refused(format!(
            "refused (403 {said}): the mount may be in use, or the server full"
        )),
        "404" => Answer::Refused(format!("no such mount point (404 {said})")),
        c if c.starts_with('4') => Answer::Refused(format!("refused ({c} {said})")),
        c => Answer::Failed(format!("server error ({c} {said})")),
    }
}

/// A target's state, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputState {
    Connecting,
    Streaming,
    /// Waiting before the next attempt.
    Waiting,
}

#[derive(Debug)]
struct Shared {
    endpoint: Endpoint,
    state: Mutex<(OutputState, String)>,
    bytes_sent: AtomicU64,
    frames_sent: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    refusals: AtomicU64,
    dropped_full: AtomicU64,
}

/// One target as `/status` shows it (never its password).
#[derive(Debug, Clone, Serialize)]
pub struct OutputSnapshot {
    pub target: String,
    pub state: OutputState,
    /// The last error or refusal, in words (empty while all is well).
    pub last_error: String,
    pub bytes_sent: u64,
    pub frames_sent: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub refusals: u64,
    /// Frames dropped because the target fell behind.
    pub dropped_full: u64,
}

struct Output {
    tx: Sender<Mp3Frame>,
    /// The worker's end of the queue, kept to start a new worker on it.
    rx: Receiver<Mp3Frame>,
    request: String,
    name: String,
    shared: Arc<Shared>,
    /// Taken by [`Outputs::stop`].
    worker: Mutex<Option<Worker<()>>>,
}

impl Output {
    fn spawn(&self, supervisor: &Supervisor, hooks: &Arc<TestHooks>) -> io::Result<Worker<()>> {
        let (s, request, rx, hooks) = (
            self.shared.clone(),
            self.request.clone(),
            self.rx.clone(),
            hooks.clone(),
        );
        Worker::spawn_supervised(&self.name, supervisor, move |stop| {
            run(&stop, &s, &request, &rx, &hooks)
        })
    }
}

/// Every Icecast target's worker and queue. The list is replaced whole
/// when the owner changes the targets ([`Outputs::replace`]); the
/// broadcast loop only takes a read lock to queue a frame.
pub struct Outputs {
    outputs: std::sync::RwLock<Vec<Output>>,
}

impl Outputs {
    /// Starts a worker per target (targets were validated with the
    /// configuration).
    pub fn start(
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
    ) -> io::Result<Outputs> {
        Ok(Outputs {
            outputs: std::sync::RwLock::new(Self::build(
                targets,
                station,
                bitrate_kbps,
                sample_rate,
                supervisor,
                hooks,
            )?),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Output>> {
        self.outputs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every worker and starts the new `targets` in their place (the
    /// owner changed them).
    #[allow(clippy::too_many_arguments)]
    pub fn replace(
        &self,
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
        timeout: Duration,
    ) -> (io::Result<()>, Vec<WorkerError>) {
        let stopped = self.stop(timeout);
        let built = Self::build(targets, station, bitrate_kbps, sample_rate, supervisor, hooks);
        let result = built.map(|new| *self.outputs.write().unwrap_or_else(|p| p.into_inner()) = new);
        (result, stopped)
    }

    fn build(
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
    ) -> io::Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let endpoint =
                Endpoint::parse(&target.url).map_err(|e| io::Error::other(format!("icecast[{i}].url {e}")))?;
            let (tx, rx) = channel::bounded(QUEUE_FRAMES);
            let shared = Arc::new(Shared {
                endpoint: endpoint.clone(),
                state: Mutex::new((OutputState::Connecting, String::new())),
                bytes_sent: AtomicU64::new(0),
                frames_sent: AtomicU64::new(0),
                connects: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
                dropped_full: AtomicU64::new(0),
            });
            let output = Output {
                tx,
                rx,
                request: source_request(target, &endpoint, station, bitrate_kbps, sample_rate),
                name: format!("icecast-{i}"),
                shared,
                worker: Mutex::new(None),
            };
            let worker = output.spawn(supervisor, hooks)?;
            *output.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
            tracing::info!(component = "icecast", target = %endpoint, method = %target.method, "pushing the stream to Icecast at {endpoint}");
            outputs.push(output);
        }
        Ok(outputs)
    }

    /// Starts a new worker for the output whose thread `name` ended (its
    /// queue and counters carry on). False when no output has that name.
    pub fn restart(&self, name: &str, supervisor: &Supervisor, hooks: &Arc<TestHooks>) -> io::Result<bool> {
        let outputs = self.read();
        let Some(output) = outputs.iter().find(|o| o.name == name) else {
            return Ok(false);
        };
        let mut slot = output.worker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dead) = slot.take() {
            // It has ended; this only collects it.
            let _ = dead.stop(Duration::from_millis(100));
        }
        *slot = Some(output.spawn(supervisor, hooks)?);
        Ok(true)
    }

    /// Queues `frame` for every target without blocking; a full queue drops
    /// it (counted).
    pub fn offer(&self, frame: &Mp3Frame) {
        for o in self.read().iter() {
            if let Err(TrySendError::Full(_)) = o.tx.try_send(frame.clone()) {
                o.shared.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<OutputSnapshot> {
        self.read()
            .iter()
            .map(|o| {
                let s = &o.shared;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let (state, last_error) = s.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                OutputSnapshot {
                    target: s.endpoint.to_string(),
                    state,
                    last_error,
                    bytes_sent: l(&s.bytes_sent),
                    frames_sent: l(&s.frames_sent),
                    connects: l(&s.connects),
                    reconnects: l(&s.reconnects),
                    refusals: l(&s.refusals),
                    dropped_full: l(&s.dropped_full),
                }
            })
            .collect()
    }

    /// Stops every worker (their connections close); later calls do nothing.
    pub fn stop(&self, timeout: Duration) -> Vec<WorkerError> {
        let workers: Vec<Worker<()>> = self
            .read()
            .iter()
            .filter_map(|o| o.worker.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        for w in &workers {
            w.stop_signal().stop();
        }
        workers.into_iter().filter_map(|w| w.stop(timeout).err()).collect()
    }
}

fn set_state(shared: &Shared, state: OutputState, error: &str) {
    *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, error.to_string());
}

/// How an attempt ended.
enum Ended {
    Refused(String),
    Failed(String),
    Stopped,
}

fn run(stop: &StopSignal, shared: &Shared, request: &str, rx: &Receiver<Mp3Frame>, hooks: &TestHooks) {
    let mut backoff = BACKOFF_FIRST;
    let log = LogGate::new(Duration::from_secs(600));
    let mut failing_since: Option<Instant> = None;
    while !stop.is_stopped() {
        hooks.panic_point(PanicTarget::Icecast);
        set_state(shared, OutputState::Connecting, "");
        let ended = attempt(stop, shared, request, rx, hooks, &mut || {
            // Connected and accepted: the episode, if any, is over.
            if let Some(since) = failing_since.take() {
                tracing::info!(component = "icecast", target = %shared.endpoint, "streaming to {} again after {:.1} s", shared.endpoint, since.elapsed().as_secs_f64());
            } else {
                tracing::info!(component = "icecast", target = %shared.endpoint, "streaming to {}", shared.endpoint);
            }
            backoff = BACKOFF_FIRST;
        });
        let (why, wait) = match ended {
            Ended::Stopped => break,
            Ended::Refused(why) => {
                shared.refusals.fetch_add(1, Ordering::Relaxed);
                (why, BACKOFF_MAX)
            }
            Ended::Failed(why) => {
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                (why, wait)
            }
        };
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        set_state(shared, OutputState::Waiting, &why);
        failing_since.get_or_insert_with(Instant::now);
        if let Some(suppressed) = log.allow(Instant::now()) {
            tracing::warn!(
                component = "icecast",
                target = %shared.endpoint,
                suppressed,
                "Icecast {}: {why}; retrying in {} s (local listeners are not affected)",
                shared.endpoint,
                wait.as_secs()
            );
        }
        stop.sleep(wait);
        // What queued meanwhile is stale: start the next connection live.
        while rx.try_recv().is_ok() {}
    }
}

fn attempt(
    stop: &StopSignal,
    shared: &Shared,
    request: &str,
    rx: &Receiver<Mp3Frame>,
    hooks: &TestHooks,
    on_accepted: &mut dyn FnMut(),
) -> Ended {
    let ep = &shared.endpoint;
    let addrs: Vec<SocketAddr> = match (ep.host.as_str(), ep.port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Ended::Failed(format!("cannot resolve {}: {e}", ep.host)),
    };
    let mut stream = None;
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let Some(mut s) = stream else {
        return Ended::Failed(last);
    };
    shared.connects.fetch_add(1, Ordering::Relaxed);
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    if let Err(e) = s.write_all(request.as_bytes()) {
        return Ended::Failed(format!("sending the source request: {e}"));
    }
    // The answer: its head, and what came with it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    // A refusal's reason follows its head; give it a moment.
                    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                    if answer.starts_with(b"HTTP/1.1 100") || answer.starts_with(b"HTTP/1.0 200") || answer.len() > 4096
                    {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => break,
            Err(e) => return Ended::Failed(format!("reading the answer: {e}")),
        }
    }
    if answer.is_empty() {
        return Ended::Failed("the server closed without answering".into());
    }
    match classify(&String::from_utf8_lossy(&answer)) {
        Answer::Accepted => {}
        Answer::Refused(why) => return Ended::Refused(why),
        Answer::Failed(why) => return Ended::Failed(why),
    }
    let _ = s.set_read_timeout(None);
    set_state(shared, OutputState::Streaming, "");
    on_accepted();
    while rx.try_recv().is_ok() {} // start live
    loop {
        if stop.is_stopped() {
            return Ended::Stopped;
        }
        hooks.panic_point(PanicTarget::Icecast);
        let frame = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ended::Stopped,
        };
        if let Err(e) = s.write_all(&frame) {
            return Ended::Failed(format!("the connection broke: {e}"));
        }
        shared.bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        shared.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_mount_and_credentials_are_refused() {
        assert_eq!(
            Endpoint::parse("http://radio.example:8010/live.mp3"),
            Ok(Endpoint {
                host: "radio.example".into(),
                port: 8010,
                mount: "/live.mp3".into()
            })
        );
        assert_eq!(Endpoint::parse("http://10.0.0.2/tower").map(|e| e.port), Ok(8000));
        assert_eq!(Endpoint::parse("http://[::1]:9000/m").map(|e| e.host), Ok("::1".into()));
        let v6 = Endpoint::parse("http://[::1]/live").expect("an IPv6 URL without a port");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.to_string()),
            ("::1", 8000, "[::1]:8000/live".to_string())
        );
        assert!(Endpoint::parse("http://[::1]:x/m").is_err());
        assert!(Endpoint::parse("https://x/m").is_err());
        assert!(Endpoint::parse("http://x").is_err());
        assert!(Endpoint::parse("http://x:99999/m").is_err());
        assert!(
            Endpoint::parse("http://source:hackme@x/m")
                .unwrap_err()
                .to_string()
                .contains("password")
        );
        assert_eq!(
            Endpoint::parse("http://h:1/a").map(|e| e.to_string()),
            Ok("h:1/a".into())
        );
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
        assert_eq!(base64(b"source:hackme"), "c291cmNlOmhhY2ttZQ==");
    }

    #[test]
    fn the_put_request_carries_auth_type_and_ice_headers() {
        let target = IcecastTarget {
            url: "http://h:8000/live".into(),
            user: "source".into(),
            password: "hackme".into(),
            name: Some("Hall".into()),
            description: None,
            genre: None,
            public: true,
            method: "put".into(),
        };
        let ep = Endpoint::parse(&target.url).expect("url");
        let req = source_request(&target, &ep, &Station::default(), 128, 48_000);
        assert!(req.starts_with("PUT /live HTTP/1.1\r\n"), "{req}");
        for h in [
            "Authorization: Basic c291cmNlOmhhY2ttZQ==",
            "Content-Type: audio/mpeg",
            "Ice-Public: 1",
            "Ice-Name: Hall",
            "Ice-Genre: Various",
            "Expect: 100-continue",
        ] {
            assert!(req.contains(&format!("{h}\r\n")), "{h} missing: {req}");
        }
        assert!(req.ends_with("\r\n\r\n"));
        let legacy = IcecastTarget {
            method: "source".into(),
            ..target
        };
        let req = source_request(&legacy, &ep, &Station::default(), 128, 48_000);
        assert!(
            req.starts_with("SOURCE /live HTTP/1.0\r\n") && !req.contains("Expect"),
            "{req}"
        );
    }

    #[test]
    fn answers_are_told_apart_with_the_servers_reason() {
        assert_eq!(classify("HTTP/1.1 100 Continue\r\n\r\n"), Answer::Accepted);
        assert_eq!(classify("HTTP/1.0 200 OK\r\n\r\n"), Answer::Accepted);
        let Answer::Refused(why) = classify("HTTP/1.0 401 Authentication Required\r\n\r\n") else {
            panic!("401 is a refusal")
        };
        assert!(why.contains("wrong user or password"), "{why}");
        let Answer::Refused(why) = classify(
            "HTTP/1.0 403 Forbidden\r\nContent-Type: text/html\r\n\r\n<html><body><b>Mountpoint in use</b></body></html>",
        ) else {
            panic!("403 is a refusal")
        };
        assert!(why.contains("Mountpoint in use"), "{why}");
        assert!(matches!(classify("SSH-2.0-OpenSSH"), Answer::Failed(_)));
        assert!(matches!(classify("HTTP/1.1 500 Internal\r\n\r\n"), Answer::Failed(_)));
    }
}
