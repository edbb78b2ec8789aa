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
//! for the server's answer (at most 4 KiB of it, within one 5 s deadline,
//! so a server streaming garbage costs nothing), then streams frames. On any failure it closes,
//! logs the server's reason once per episode (wrong password, mount in
//! use, server full…), and reconnects with a backoff: 1 s doubling to 30 s,
//! and 30 s at once after a refusal, which a retry will not cure soon.
//! Passwords appear nowhere but in the `Authorization` header.
//!
//! A target with `only_while_program` is connected only while program
//! plays [D6]: it disconnects once the input has gone idle (after the
//! hold), and connects again within [`GATE_POLL`] of program.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
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
/// Connecting, the server's whole answer, and each write may take this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's send buffer for a target (it doubles the figure for its
/// bookkeeping): about 4 s of audio at 128 kbit/s. Left to autotuning it
/// grows to 4 MiB, minutes of audio, which a server that stopped reading
/// would hold as lag before Tower noticed.
const SEND_BUFFER: usize = 32 * 1024;
/// The longest any step of an attempt blocks before the stop signal is
/// looked at again.
const SLICE: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, and the wait after a refusal.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a target waiting for program looks again.
pub const GATE_POLL: Duration = Duration::from_millis(100);

/// Whether program plays (see `audio::program`), for targets that stream
/// only then.
pub type ProgramGate = Arc<dyn Fn() -> bool + Send + Sync>;

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
    /// Connected only while program plays.
    #[serde(default)]
    pub only_while_program: bool,
}

impl IcecastTarget {
    fn default_user() -> String {
        "source".into()
    }
    fn default_method() -> String {
        "put".into()
    }

    /// A target at `url` with `password`, everything else its default.
    #[cfg(test)]
    pub(crate) fn at(url: &str, password: &str) -> IcecastTarget {
        IcecastTarget {
            url: url.into(),
            user: Self::default_user(),
            password: password.into(),
            name: None,
            description: None,
            genre: None,
            public: false,
            method: Self::default_method(),
            only_while_program: false,
        }
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
        let start: String = line.chars().take(60).collect();
        return Answer::Failed(format!("not an Icecast server (it answered {start:?})"));
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
    /// Disconnected until program plays (`only_while_program`).
    Idle,
}

struct Shared {
    endpoint: Endpoint,
    state: Mutex<(OutputState, String)>,
    bytes_sent: AtomicU64,
    frames_sent: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    refusals: AtomicU64,
    dropped_full: AtomicU64,
    /// For an `only_while_program` target: whether program plays.
    gate: Option<ProgramGate>,
}

impl Shared {
    /// Whether the target must stay disconnected now.
    fn waits_for_program(&self) -> bool {
        self.gate.as_ref().is_some_and(|program| !program())
    }
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
    target: IcecastTarget,
    endpoint: Endpoint,
    /// The source request, sent at each connect: rebuilt by
    /// [`Outputs::retune`] when the station or the bitrate changes.
    request: Arc<Mutex<String>>,
    name: String,
    shared: Arc<Shared>,
    resolver: Arc<dyn Resolve>,
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
        let mut lookups = Lookups::new(self.resolver.clone(), &self.name);
        Worker::spawn_supervised(&self.name, supervisor, move |stop| {
            let task = Task {
                stop: &stop,
                shared: &s,
                request: &request,
                rx: &rx,
                hooks: &hooks,
            };
            run(&task, &mut lookups)
        })
    }
}

/// Every Icecast target's worker and queue. The list is replaced whole
/// when the owner changes the targets ([`Outputs::replace`]); the
/// broadcast loop only takes a read lock to queue a frame.
pub struct Outputs {
    outputs: std::sync::RwLock<Vec<Output>>,
    program: ProgramGate,
    /// How host names are looked up (the system's, or a fake in tests).
    resolver: Arc<dyn Resolve>,
}

impl Outputs {
    /// Starts a worker per target (targets were validated with the
    /// configuration), looking host names up with the system's resolver.
    pub fn start(
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
        program: ProgramGate,
    ) -> io::Result<Outputs> {
        Self::start_with(
            targets,
            station,
            bitrate_kbps,
            sample_rate,
            supervisor,
            hooks,
            program,
            Arc::new(SystemResolver),
        )
    }

    /// Like [`Outputs::start`], looking host names up with `resolver`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
        program: ProgramGate,
        resolver: Arc<dyn Resolve>,
    ) -> io::Result<Outputs> {
        let built = Self::build(
            targets,
            station,
            bitrate_kbps,
            sample_rate,
            supervisor,
            hooks,
            &program,
            &resolver,
        )?;
        Ok(Outputs {
            outputs: std::sync::RwLock::new(built),
            program,
            resolver,
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
        let built = Self::build(
            targets,
            station,
            bitrate_kbps,
            sample_rate,
            supervisor,
            hooks,
            &self.program,
            &self.resolver,
        );
        let result = built.map(|new| *self.outputs.write().unwrap_or_else(|p| p.into_inner()) = new);
        (result, stopped)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        targets: &[IcecastTarget],
        station: &Station,
        bitrate_kbps: u64,
        sample_rate: u32,
        supervisor: &Supervisor,
        hooks: &Arc<TestHooks>,
        program: &ProgramGate,
        resolver: &Arc<dyn Resolve>,
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
                gate: target.only_while_program.then(|| program.clone()),
            });
            let output = Output {
                tx,
                rx,
                request: Arc::new(Mutex::new(source_request(
                    target,
                    &endpoint,
                    station,
                    bitrate_kbps,
                    sample_rate,
                ))),
                target: target.clone(),
                endpoint: endpoint.clone(),
                name: format!("icecast-{i}"),
                shared,
                resolver: resolver.clone(),
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

    /// No Icecast target is configured.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
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

    /// The station or the bitrate changed: each target's next connect
    /// names the new ones (`Ice-Name`, `Ice-Bitrate`…). A source that is
    /// streaming keeps its connection, and so its old headers: Icecast ends
    /// a mount's listeners when its source goes away (unless the mount has
    /// a fallback), and the frames themselves carry their bitrate.
    pub fn retune(&self, station: &Station, bitrate_kbps: u64, sample_rate: u32) {
        for o in self.read().iter() {
            let request = source_request(&o.target, &o.endpoint, station, bitrate_kbps, sample_rate);
            *o.request.lock().unwrap_or_else(|p| p.into_inner()) = request;
        }
    }

    /// Stops every worker (their connections close) within `timeout` in
    /// all; later calls do nothing.
    pub fn stop(&self, timeout: Duration) -> Vec<WorkerError> {
        let deadline = Instant::now() + timeout;
        let workers: Vec<Worker<()>> = self
            .read()
            .iter()
            .filter_map(|o| o.worker.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        for w in &workers {
            w.stop_signal().stop();
        }
        workers
            .into_iter()
            .filter_map(|w| w.stop(deadline.saturating_duration_since(Instant::now())).err())
            .collect()
    }
}

fn set_state(shared: &Shared, state: OutputState, error: &str) {
    *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, error.to_string());
}

/// How an attempt ended.
enum Ended {
    Refused(String),
    Failed(String),
    /// Program ended (`only_while_program`).
    Idle,
    Stopped,
}

/// What a worker streams, and where.
struct Task<'a> {
    stop: &'a StopSignal,
    shared: &'a Shared,
    request: &'a Mutex<String>,
    rx: &'a Receiver<Mp3Frame>,
    hooks: &'a TestHooks,
}

fn run(task: &Task<'_>, lookups: &mut Lookups) {
    let &Task {
        stop,
        shared,
        rx,
        hooks,
        ..
    } = task;
    let mut backoff = BACKOFF_FIRST;
    let log = LogGate::new(Duration::from_secs(600));
    let mut failing_since: Option<Instant> = None;
    while !stop.is_stopped() {
        hooks.panic_point(PanicTarget::Icecast);
        if shared.waits_for_program() {
            set_state(shared, OutputState::Idle, "");
            if stop.sleep(GATE_POLL) {
                break;
            }
            while rx.try_recv().is_ok() {}
            continue;
        }
        set_state(shared, OutputState::Connecting, "");
        let ended = attempt(task, lookups, &mut || {
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
            Ended::Idle => {
                tracing::info!(component = "icecast", target = %shared.endpoint, "disconnected from {}: the input is idle (only_while_program); connecting again when program plays", shared.endpoint);
                continue;
            }
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

/// The most of an answer Tower keeps: its head and the start of a
/// refusal's reason. Whatever arrives, no more is read.
pub const MAX_ANSWER: usize = 4096;
/// How long a refusal's reason may take to follow its head.
const REASON_WAIT: Duration = Duration::from_millis(100);

/// Reads the server's answer to the source request from `s` (whose reads
/// time out after [`SLICE`]) until its head is complete (and, for a
/// refusal, a moment more for the reason in its body), the server closes,
/// or `deadline`. At most [`MAX_ANSWER`] bytes are kept; each read is
/// searched for the blank line only where it could end; the stop signal
/// is looked at between reads. `Err` is how the attempt ends.
fn read_answer(s: &mut impl Read, stop: &StopSignal, deadline: Instant) -> Result<Vec<u8>, Ended> {
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    let mut buf = [0u8; 2048];
    // When the head ended: only a refusal's reason is still awaited.
    let mut head_done: Option<Instant> = None;
    loop {
        if stop.is_stopped() {
            return Err(Ended::Stopped);
        }
        let now = Instant::now();
        let until = head_done.map_or(deadline, |at| deadline.min(at + REASON_WAIT));
        if now >= until {
            break;
        }
        let room = MAX_ANSWER - answer.len();
        if room == 0 {
            if head_done.is_some() {
                break;
            }
            let start = String::from_utf8_lossy(&answer[..60]).into_owned();
            return Err(Ended::Failed(format!(
                "not an Icecast server: {MAX_ANSWER} bytes came without the end of an HTTP head (it answered {start:?}...)"
            )));
        }
        let want = room.min(buf.len());
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(Ended::Failed(format!("reading the answer: {e}"))),
        };
        // The blank line may straddle two reads: look from 3 bytes back.
        let from = answer.len().saturating_sub(3);
        answer.extend_from_slice(&buf[..n]);
        if head_done.is_none() && answer[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            if answer.starts_with(b"HTTP/1.1 100") || answer.starts_with(b"HTTP/1.0 200") {
                break;
            }
            head_done = Some(now);
        }
    }
    if answer.is_empty() {
        let why = if Instant::now() >= deadline {
            format!("no answer within {} s", IO_TIMEOUT.as_secs())
        } else {
            "the server closed without answering".into()
        };
        return Err(Ended::Failed(why));
    }
    Ok(answer)
}

fn attempt(task: &Task<'_>, lookups: &mut Lookups, on_accepted: &mut dyn FnMut()) -> Ended {
    let &Task {
        stop,
        shared,
        request,
        rx,
        hooks,
    } = task;
    let ep = &shared.endpoint;
    let addrs = match lookups.resolve(&ep.host, ep.port, stop, Instant::now() + IO_TIMEOUT) {
        Ok(a) => a,
        Err(ended) => return ended,
    };
    let mut stream = None;
    let mut last = String::from("no address");
    for a in addrs {
        match connect(a, stop, Instant::now() + IO_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(Ended::Failed(why)) => last = why,
            Err(ended) => return ended,
        }
    }
    let Some(mut s) = stream else {
        return Ended::Failed(last);
    };
    shared.connects.fetch_add(1, Ordering::Relaxed);
    let _ = s.set_nodelay(true);
    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
    let _ = s.set_write_timeout(Some(SLICE));
    let _ = s.set_read_timeout(Some(SLICE));
    let request = request.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Err(ended) = write_all(&mut s, request.as_bytes(), stop) {
        return ended.context("sending the source request");
    }
    let answer = match read_answer(&mut s, stop, Instant::now() + IO_TIMEOUT) {
        Ok(a) => a,
        Err(ended) => return ended,
    };
    match classify(&String::from_utf8_lossy(&answer)) {
        Answer::Accepted => {}
        Answer::Refused(why) => return Ended::Refused(why),
        Answer::Failed(why) => return Ended::Failed(why),
    }
    set_state(shared, OutputState::Streaming, "");
    on_accepted();
    while rx.try_recv().is_ok() {} // start live
    loop {
        if stop.is_stopped() {
            return Ended::Stopped;
        }
        hooks.panic_point(PanicTarget::Icecast);
        if shared.waits_for_program() {
            return Ended::Idle;
        }
        let frame = match rx.recv_timeout(SLICE) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ended::Stopped,
        };
        if let Err(ended) = write_all(&mut s, &frame, stop) {
            return ended.context("the connection broke");
        }
        shared.bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        shared.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

impl Ended {
    /// A failure's reason, with what was being done in front.
    fn context(self, doing: &str) -> Ended {
        match self {
            Ended::Failed(why) => Ended::Failed(format!("{doing}: {why}")),
            other => other,
        }
    }
}

/// Writes all of `bytes` to `s` (whose writes time out after [`SLICE`]),
/// looking at the stop signal whenever the server takes nothing for a
/// slice. A server that takes nothing for [`IO_TIMEOUT`] has stalled.
fn write_all(s: &mut impl Write, mut bytes: &[u8], stop: &StopSignal) -> Result<(), Ended> {
    let mut progress = Instant::now();
    while !bytes.is_empty() {
        match s.write(bytes) {
            Ok(0) => return Err(Ended::Failed("the server closed the connection".into())),
            Ok(n) => {
                bytes = &bytes[n..];
                progress = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if stop.is_stopped() {
                    return Err(Ended::Stopped);
                }
                if progress.elapsed() >= IO_TIMEOUT {
                    return Err(Ended::Failed(format!(
                        "the server took no data for {} s",
                        IO_TIMEOUT.as_secs()
                    )));
                }
            }
            Err(e) => return Err(Ended::Failed(e.to_string())),
        }
    }
    Ok(())
}

/// Connects to `addr` by `deadline`, looking at the stop signal every
/// [`SLICE`] (a blocking connect to an address that drops packets would
/// hold the thread for the whole timeout). The stream returned blocks.
fn connect(addr: SocketAddr, stop: &StopSignal, deadline: Instant) -> Result<TcpStream, Ended> {
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
    let failed = |e: io::Error| Ended::Failed(format!("cannot connect to {addr}: {e}"));
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = sock::socket(family, SockType::Stream, flags, None).map_err(|e| failed(e.into()))?;
    match sock::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(failed(e.into())),
    }
    loop {
        if stop.is_stopped() {
            return Err(Ended::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(io::ErrorKind::TimedOut.into()));
        }
        let wait = PollTimeout::from(left.min(SLICE).as_millis() as u16);
        match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)], wait) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => break,
            Err(e) => return Err(failed(e.into())),
        }
    }
    match sock::getsockopt(&fd, sockopt::SocketError) {
        Ok(0) => {}
        Ok(errno) => return Err(failed(io::Error::from_raw_os_error(errno))),
        Err(e) => return Err(failed(e.into())),
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false).map_err(failed)?;
    Ok(s)
}

/// Looks a target's host up: the system's resolver (`/etc/hosts`, DNS,
/// mDNS for `.local` names), or a fake in tests.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// `getaddrinfo`, which may block for as long as the resolver's
/// configuration allows (timeouts × attempts × servers: minutes).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

type LookupResult = io::Result<Vec<SocketAddr>>;

/// A worker's host lookups. A name (not an address) is looked up on a
/// thread of its own ("icecast-N-dns"), so the worker waits for it in
/// slices, looking at the stop signal, and gives up at its deadline. A
/// lookup that outlives its deadline is waited for again by the next
/// attempt, never started twice: each target has at most one in flight.
/// When the worker stops, a lookup still hanging in the resolver is left
/// to end on its own (nothing can interrupt `getaddrinfo`); it holds no
/// lock and writes only into a channel nobody reads.
struct Lookups {
    resolver: Arc<dyn Resolve>,
    thread_name: String,
    pending: Option<Receiver<LookupResult>>,
}

impl Lookups {
    fn new(resolver: Arc<dyn Resolve>, worker: &str) -> Lookups {
        Lookups {
            resolver,
            thread_name: format!("{worker}-dns"),
            pending: None,
        }
    }

    /// The addresses of `host`, by `deadline`.
    fn resolve(
        &mut self,
        host: &str,
        port: u16,
        stop: &StopSignal,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, Ended> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let failed = |why: String| Ended::Failed(format!("cannot resolve {host}: {why}"));
        let rx = match self.pending.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = channel::bounded(1);
                let (resolver, name) = (self.resolver.clone(), host.to_string());
                std::thread::Builder::new()
                    .name(self.thread_name.clone())
                    .stack_size(crate::worker::DEFAULT_STACK)
                    .spawn(move || {
                        let _ = tx.send(resolver.resolve(&name, port));
                    })
                    .map_err(|e| failed(format!("cannot start a lookup thread: {e}")))?;
                rx
            }
        };
        loop {
            if stop.is_stopped() {
                return Err(Ended::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.pending = Some(rx);
                return Err(failed(format!(
                    "no answer from the resolver within {} s",
                    IO_TIMEOUT.as_secs()
                )));
            }
            match rx.recv_timeout(left.min(SLICE)) {
                Ok(Ok(addrs)) => return Ok(addrs),
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(failed("the lookup thread ended".into())),
            }
        }
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
            only_while_program: false,
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

    /// Counts the bytes read through it.
    struct Counted<R>(R, usize);

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    /// A connection with nothing to read yet (its read timeout passed).
    struct Quiet;

    impl Read for Quiet {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn an_endless_answer_without_a_blank_line_is_cut_at_the_cap() {
        let mut garbage = Counted(io::repeat(b'x'), 0);
        let later = Instant::now() + Duration::from_secs(3600);
        let Err(Ended::Failed(why)) = read_answer(&mut garbage, &StopSignal::new(), later) else {
            panic!("garbage is not an answer")
        };
        assert!(garbage.1 <= MAX_ANSWER, "{} bytes read", garbage.1);
        assert!(
            why.contains("not an Icecast server") && why.contains("4096 bytes"),
            "{why}"
        );
        assert!(why.len() < 200, "the garbage is not quoted whole: {why}");
    }

    #[test]
    fn an_answer_in_pieces_is_read_to_its_reason_and_no_further() {
        let refusal = b"HTTP/1.0 403 Forbidden\r\nContent-Type: text/html\r\n\r\n<b>Mountpoint in use</b>";
        // Byte by byte, so the blank line straddles reads.
        let mut bytes = &refusal[..];
        struct OneByOne<'a, R>(&'a mut R);
        impl<R: Read> Read for OneByOne<'_, R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(&mut buf[..1])
            }
        }
        let later = Instant::now() + Duration::from_secs(3600);
        let answer = read_answer(&mut OneByOne(&mut bytes), &StopSignal::new(), later)
            .ok()
            .expect("an answer");
        let Answer::Refused(why) = classify(&String::from_utf8_lossy(&answer)) else {
            panic!("a refusal")
        };
        assert!(why.contains("Mountpoint in use"), "{why}");
        // Accepted: read no further than the head.
        let mut go = io::Read::chain(&b"HTTP/1.1 100 Continue\r\n\r\n"[..], io::repeat(b'z'));
        let answer = read_answer(&mut OneByOne(&mut go), &StopSignal::new(), later)
            .ok()
            .expect("an answer");
        assert_eq!(answer, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn waiting_for_an_answer_ends_at_the_deadline_or_the_stop_signal() {
        let stop = StopSignal::new();
        let Err(Ended::Failed(why)) = read_answer(&mut Quiet, &stop, Instant::now()) else {
            panic!("no answer by the deadline")
        };
        assert!(why.contains("no answer within"), "{why}");
        stop.stop();
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(read_answer(&mut Quiet, &stop, later), Err(Ended::Stopped)));
    }

    /// A resolver that hangs until the test process ends, counting the
    /// lookups.
    #[derive(Default)]
    struct Hanging {
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Resolve for Hanging {
        fn resolve(&self, _: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(3600));
            Err(io::ErrorKind::TimedOut.into())
        }
    }

    #[test]
    fn a_hanging_lookup_ends_at_its_deadline_is_never_started_twice_and_gives_way_to_stop() {
        let resolver = Arc::new(Hanging::default());
        let mut lookups = Lookups::new(resolver.clone(), "icecast-t");
        let stop = StopSignal::new();
        for _ in 0..3 {
            let Err(Ended::Failed(why)) = lookups.resolve("hangs.example", 8000, &stop, Instant::now()) else {
                panic!("no answer by the deadline")
            };
            assert!(why.contains("no answer from the resolver"), "{why}");
        }
        assert!(
            resolver.asked.load(Ordering::SeqCst) <= 1,
            "one lookup in flight at most"
        );
        // An address is not looked up at all.
        let addrs = lookups
            .resolve("::1", 8000, &stop, Instant::now())
            .ok()
            .expect("an address");
        assert_eq!(addrs, vec![SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 8000))]);
        stop.stop();
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(
            lookups.resolve("hangs.example", 8000, &stop, later),
            Err(Ended::Stopped)
        ));
        // A worker stuck in a lookup stops when asked.
        let target = IcecastTarget::at("http://hangs.example:8000/live", "p");
        let outputs = start_one(target);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(outputs.snapshot()[0].state, OutputState::Connecting);
        let errors = outputs.stop(Duration::from_millis(400));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// A listening socket on 127.0.0.1 whose accept queue is full: a
    /// connect to it hangs, as to an address that drops packets.
    fn full_backlog() -> (std::net::TcpListener, TcpStream) {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
        listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
        let l = std::net::TcpListener::from(fd);
        let first = TcpStream::connect(l.local_addr().expect("addr")).expect("the one queued");
        (l, first)
    }

    #[test]
    fn a_connect_that_hangs_ends_at_its_deadline_or_the_stop_signal() {
        let (l, _first) = full_backlog();
        let addr = l.local_addr().expect("addr");
        let soon = Instant::now() + Duration::from_millis(200);
        let Err(Ended::Failed(why)) = connect(addr, &StopSignal::new(), soon) else {
            panic!("the connect cannot complete")
        };
        assert!(why.contains("cannot connect") && why.contains("timed out"), "{why}");
        let stop = StopSignal::new();
        let s = stop.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.stop();
        });
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(matches!(connect(addr, &stop, later), Err(Ended::Stopped)));
        stopper.join().expect("stopper");
        // A server that is there: connected, and the stream blocks.
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = connect(open.local_addr().expect("addr"), &StopSignal::new(), later)
            .ok()
            .expect("connected");
        assert!(s.peer_addr().is_ok());
    }

    /// A connection that takes nothing (its write timeout passes).
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_the_server_does_not_take_gives_way_to_stop() {
        let stop = StopSignal::new();
        stop.stop();
        assert!(matches!(write_all(&mut Full, b"frame", &stop), Err(Ended::Stopped)));
        let mut out = Vec::new();
        assert!(
            write_all(&mut out, b"frame", &stop).is_ok(),
            "a write that goes through is done"
        );
        assert_eq!(out, b"frame");
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

    /// Outputs feeding `target` alone, at 128 kbit/s, always on, with a
    /// resolver whose lookups hang (the tests use literal addresses).
    fn start_one(target: IcecastTarget) -> Outputs {
        let hooks = Arc::new(TestHooks::disabled());
        Outputs::start_with(
            &[target],
            &Station::default(),
            128,
            48_000,
            &Supervisor::none(),
            &hooks,
            Arc::new(|| true),
            Arc::new(Hanging::default()),
        )
        .expect("start")
    }

    /// Accepts one connection on `l` and reads its request's headers.
    fn request_on(l: &std::net::TcpListener) -> String {
        let (mut c, _) = l.accept().expect("the worker connects");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"\r\n\r\n") {
            let n = c.read(&mut buf).expect("the request");
            assert!(n > 0, "closed before the end of the request");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).expect("text")
    }

    #[test]
    fn a_new_bitrate_or_station_is_named_at_the_next_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = IcecastTarget::at(
            &format!("http://127.0.0.1:{}/live", l.local_addr().expect("addr").port()),
            "p",
        );
        let outputs = start_one(target);
        let first = request_on(&l);
        assert!(
            first.contains("Ice-Bitrate: 128\r\n") && first.contains("Ice-Name: Tower\r\n"),
            "{first}"
        );
        let hall = Station {
            name: "Hall".into(),
            ..Station::default()
        };
        outputs.retune(&hall, 192, 48_000);
        // The first connection ends unanswered: the worker connects again.
        let second = request_on(&l);
        assert!(second.contains("Ice-Bitrate: 192\r\n"), "{second}");
        assert!(
            second.contains("ice-bitrate=192;") && second.contains("Ice-Name: Hall\r\n"),
            "{second}"
        );
        let errors = outputs.stop(Duration::from_millis(400));
        assert!(errors.is_empty(), "{errors:?}");
    }
}
