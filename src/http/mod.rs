//! The HTTP server [H1]–[H6]: `/stream` for listeners (with ICY headers
//! and, on request, ICY metadata), `/stream.m3u` and `/listen.m3u`
//! playlists, the owner's status page `/` with its live updates
//! (`/events`, Server-Sent Events), `/status`, `/metrics`, `/health`,
//! `/tower/buffer`, and the settings page `/settings` whose `/api/…`
//! requests go to the owner's [`Desk`] (the admin thread).
//!
//! Only the stream and its playlists answer to any host name; everything
//! else answers only to the names Tower knows, and a POST only from
//! Tower's own pages or from scripts (see `host`) [H6].
//!
//! [`HttpServer`] owns two threads. "http" runs the accept loop (see
//! `server`): it reads each request without blocking, answers small ones
//! itself and hands `/stream` and `/events` connections to a [`Hub`]: the
//! listeners' hub, fed by the broadcast thread, or the status pages' hub,
//! fed by the "events" thread (a level event every 100 ms, the status every
//! second, built once for all pages, so pages cost listeners nothing; it
//! sleeps while no page is open).
//! Every connection serves one request and closes (`Connection: close`).

pub mod connlog;
pub mod guard;
pub mod host;
pub mod hub;
pub mod icy;
pub mod request;
pub mod server;
pub mod socket;

use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use connlog::{ConnLog, ConnLogger, Who};
pub use hub::{Hub, HubConfig, HubSnapshot, ListenerSink, ListenerView, Peer, Refusal};
pub use request::Request;

use crate::broadcast::Station;
use crate::hooks::TestHooks;
use crate::live::Live;
use crate::ratelog::LogGate;
use crate::worker::{Notify, StopSignal, Supervisor, WakeFd, Worker, WorkerError};
use server::{Answer, Handler, LoopStats};

/// Seconds a refused listener is asked to wait before retrying.
const RETRY_AFTER_S: u32 = 10;

/// What `/status`, `/metrics`, `/health`, `/events` and `/tower/buffer`
/// report; the service implements it.
pub trait StatusSource: Send + Sync {
    /// The `/status` document.
    fn status_json(&self) -> String;
    /// The PCM input queue's fill and capacity.
    fn buffer(&self) -> (usize, usize);
    /// The `/metrics` page.
    fn metrics(&self) -> String;
    /// The input level and state, for the status page's meter.
    fn level_json(&self) -> String;
    /// Why the station is not healthy; empty when it is (streaming live, or
    /// the fallback by design).
    fn health(&self) -> Vec<String>;
}

/// What the server says about the station, and whom it answers; the
/// service replaces it when the owner changes a setting.
#[derive(Debug, Clone)]
pub struct Site {
    /// The station's texts, shared with the ICY sinks, the status page and
    /// the Icecast outputs.
    pub station: Arc<Live<Station>>,
    pub bitrate_kbps: u64,
    /// The MP3's sample rate (`icy-sr`).
    pub sample_rate: u32,
    /// Audio bytes between ICY metadata blocks.
    pub icy_metaint: usize,
    /// The connection guard's limits (read when the front end starts).
    pub guard: guard::Limits,
    /// The names Tower answers to.
    pub hosts: host::Hosts,
    /// Web origins whose scripts may read `/stream`.
    pub cors_origins: Vec<String>,
    /// The most status pages (`/events`) open from one address.
    pub pages_per_address: usize,
}

/// The front end's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub bitrate_kbps: u64,
    pub sample_rate: u32,
    pub icy_metaint: usize,
    pub guard: guard::Limits,
    /// The most status pages (`/events`) open from one address.
    pub pages_per_address: usize,
    /// `http.hosts`: names to answer to besides the machine's own.
    pub hosts: Vec<String>,
    pub cors_origins: Vec<String>,
}

impl Site {
    /// The site for `config`, naming the station in `station`.
    pub fn new(config: &SiteConfig, station: Arc<Live<Station>>) -> Site {
        Site {
            station,
            bitrate_kbps: config.bitrate_kbps,
            sample_rate: config.sample_rate,
            icy_metaint: config.icy_metaint,
            guard: config.guard,
            pages_per_address: config.pages_per_address,
            hosts: host::Hosts::system(&config.hosts),
            cors_origins: config.cors_origins.clone(),
        }
    }
}

/// The owner's desk: requests under `/api/` read or change the settings.
/// They need the admin password, which is slow to check on purpose, and a
/// change may take a while (a save), so the accept loop hands them over
/// with their connection and goes on; the admin thread answers them.
pub trait Desk: Send + Sync {
    /// Whether `peer` may try a password now, else how long it must wait:
    /// asked before a request that carries a password is handed over, so
    /// a flood is refused here without queueing or hashing anything.
    fn may_try(&self, peer: IpAddr, now: Instant) -> Result<(), Duration>;
    /// Takes a request and its connection; gives them back when full.
    fn hand(&self, job: Box<DeskJob>) -> Result<(), Box<DeskJob>>;
}

/// A request for the [`Desk`], with the connection to answer on (still
/// non-blocking; nothing has been written to it).
pub struct DeskJob {
    pub request: Request,
    pub peer: SocketAddr,
    pub stream: TcpStream,
}

/// Paths under this prefix go to the desk.
pub const API: &str = "/api/";
/// Desk requests that carry a password (besides `Authorization: Basic`).
const PASSWORD_PATHS: [&str; 3] = ["/api/login", "/api/claim", "/api/password"];

/// The owner's status page, served as is.
const STATUS_PAGE: &str = include_str!("status.html");
/// The settings page, served as is (it reads and writes `/api/settings`).
const SETTINGS_PAGE: &str = include_str!("settings.html");
/// Status pages (`/events`) open at once: each costs a socket and a little
/// CPU every 100 ms, and a handful is all an owner needs.
pub const MAX_EVENT_CLIENTS: usize = 32;
/// How often the status pages get a level event.
const LEVEL_EVERY: Duration = Duration::from_millis(100);
/// Level events between two status events.
const STATUS_EVERY: u32 = 10;
/// The paths served (other than the test hooks and the desk's).
const ROUTES: [&str; 12] = [
    "/",
    "/index.html",
    "/settings",
    "/stream",
    "/stream.mp3",
    "/stream.m3u",
    "/listen.m3u",
    "/events",
    "/status",
    "/metrics",
    "/health",
    "/tower/buffer",
];

/// Request counters, shared with whoever reports them.
#[derive(Default)]
pub struct HttpStats {
    requests: AtomicU64,
    bad_requests: AtomicU64,
    conns: LoopStats,
}

impl HttpStats {
    pub fn snapshot(&self) -> HttpSnapshot {
        let c = &self.conns;
        HttpSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            cut_header_timeout: c.cut_timeout.load(Ordering::Relaxed),
            cut_per_address: c.cut_per_address.load(Ordering::Relaxed),
            cut_total: c.cut_total.load(Ordering::Relaxed),
            shed_no_descriptors: c.shed_no_descriptors.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpSnapshot {
    pub requests: u64,
    /// Answered 4xx/5xx (not counting listener-limit refusals).
    pub bad_requests: u64,
    /// Connections being read or answered now.
    pub pending: u64,
    /// Connections closed by the guard: no complete request within the
    /// header timeout; the oldest beyond the per-address cap; the oldest
    /// beyond the cap in all.
    pub cut_header_timeout: u64,
    pub cut_per_address: u64,
    pub cut_total: u64,
    /// Connections closed unanswered because file descriptors ran out.
    pub shed_no_descriptors: u64,
}

/// Paths any host name may ask for: listening is open to the network, and
/// a producer on this machine paces itself from the input queue's fill.
const PUBLIC: [&str; 5] = ["/stream", "/stream.mp3", "/stream.m3u", "/listen.m3u", "/tower/buffer"];

struct Shared {
    addr: SocketAddr,
    hub: Arc<Hub>,
    events: Arc<Hub>,
    site: Arc<Live<Site>>,
    desk: Option<Arc<dyn Desk>>,
    status: Arc<dyn StatusSource>,
    counters: Arc<HttpStats>,
    hooks: Arc<TestHooks>,
    bad_log: LogGate,
    /// Wakes the events thread: a page opened, or the server stops.
    page_opened: Notify,
    /// Wakes the accept loop to see its stop signal (it has no timer).
    wake: WakeFd,
}

pub struct HttpServer {
    addr: SocketAddr,
    workers: Vec<Worker<()>>,
    shared: Arc<Shared>,
}

/// The "events" thread: feeds the status pages, and sleeps while none is
/// open.
fn feed_events(stop: &StopSignal, shared: &Shared) {
    let mut turn = 0u32;
    let mut seen = 0u64;
    while !stop.is_stopped() {
        if shared.events.is_empty() {
            shared.page_opened.wait();
            continue;
        }
        let now = Instant::now();
        // A page that just connected gets the status at once.
        let connected = shared.events.snapshot().connected_total;
        if turn.is_multiple_of(STATUS_EVERY) || connected != seen {
            seen = connected;
            let status = shared.status.status_json();
            shared.events.broadcast(&sse("status", &status), now);
        }
        let level = shared.status.level_json();
        shared.events.broadcast(&sse("level", &level), now);
        turn = turn.wrapping_add(1);
        stop.sleep(LEVEL_EVERY);
    }
    shared.events.close_all();
}

/// One Server-Sent Event (`data` is one line of JSON).
fn sse(event: &str, data: &str) -> crate::encoder::Mp3Frame {
    crate::encoder::Mp3Frame::from(format!("event: {event}\ndata: {data}\n\n").into_bytes())
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        addr: SocketAddr,
        site: Arc<Live<Site>>,
        desk: Option<Arc<dyn Desk>>,
        hub: Arc<Hub>,
        status: Arc<dyn StatusSource>,
        counters: Arc<HttpStats>,
        hooks: Arc<TestHooks>,
        supervisor: &Supervisor,
    ) -> std::io::Result<HttpServer> {
        let listener = socket::bind(addr)?;
        let bound = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr: bound,
            hub: hub.clone(),
            events: Arc::new(Hub::new(
                HubConfig {
                    slow_timeout: Duration::from_secs(5),
                    max_listeners: MAX_EVENT_CLIENTS,
                    per_address: site.get().pages_per_address,
                    burst_frames: 1,
                    frame: crate::audio::FRAME_DURATION,
                },
                Who::Page,
                hub.log(),
            )),
            site,
            desk,
            status,
            counters,
            hooks,
            bad_log: LogGate::new(Duration::from_secs(1)),
            page_opened: Notify::new(),
            wake: WakeFd::new()?,
        });
        let s = shared.clone();
        let mut workers = vec![Worker::spawn_supervised("http", supervisor, move |stop| {
            let guard = s.site.get().guard;
            server::Server::new(listener, guard, &s.counters.conns).run(&stop, &s.wake, &*s);
        })?];
        let s = shared.clone();
        workers.push(Worker::spawn_supervised("events", supervisor, move |stop| {
            feed_events(&stop, &s)
        })?);
        Ok(HttpServer {
            addr: bound,
            workers,
            shared,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and answering (which closes the listening socket).
    /// Listeners already handed to the hub are closed by the hub's owner.
    pub fn stop(mut self, timeout: Duration) -> Result<(), WorkerError> {
        self.signal_stop();
        let mut result = Ok(());
        for w in std::mem::take(&mut self.workers) {
            if let Err(e) = w.stop(timeout) {
                result = Err(e);
            }
        }
        result
    }

    /// Tells both threads to stop and wakes them: neither has a timer.
    fn signal_stop(&self) {
        for w in &self.workers {
            w.stop_signal().stop();
        }
        self.shared.wake.wake();
        self.shared.page_opened.notify();
    }
}

impl Drop for HttpServer {
    /// A server dropped without [`HttpServer::stop`] (a later stage failed
    /// to start) still ends its threads: woken here, they are joined as
    /// the workers drop, and the listening socket closes with them.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// A whole response, written by the accept loop (or the desk).
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, message: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{message}\n"))
    }

    pub fn json(value: &impl Serialize) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Response::new(200, "application/json", body).with("Cache-Control", "no-store")
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The bytes on the wire; the head alone for `HEAD`.
    pub fn into_bytes(self, head_only: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\nServer: Tower/{}\r\n\r\n",
            self.body.len(),
            env!("CARGO_PKG_VERSION")
        );
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

impl Handler for Shared {
    fn turn(&self) {
        self.hooks.panic_point(crate::hooks::PanicTarget::Http);
    }

    fn answer(&self, rq: &Request, peer: SocketAddr, local: SocketAddr) -> Answer<'_> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let reply = |r: Response| Answer::Bytes(r.into_bytes(rq.is_head()));
        let path = rq.path.as_str();
        if let Some(refused) = self.foreign(rq, peer, local) {
            return reply(refused);
        }
        if path.starts_with(API) {
            return self.to_desk(rq, peer);
        }
        let readable = matches!(rq.method.as_str(), "GET" | "HEAD");
        if ROUTES.contains(&path) && !readable {
            let message = format!("method {} not allowed; use GET", rq.method);
            return reply(self.bad(rq, peer, 405, &message).with("Allow", "GET, HEAD"));
        }
        match path {
            "/" | "/index.html" => {
                reply(Response::new(200, "text/html; charset=utf-8", STATUS_PAGE).with("Cache-Control", "no-cache"))
            }
            "/settings" => reply(
                Response::new(200, "text/html; charset=utf-8", SETTINGS_PAGE)
                    .with("Cache-Control", "no-cache")
                    .with("X-Frame-Options", "DENY")
                    .with("Content-Security-Policy", "frame-ancestors 'none'"),
            ),
            // The same stream under a name ending in `.mp3`: UPnP renderers
            // and Sonos refuse a URL that does not (error 714).
            "/stream" | "/stream.mp3" => self.stream(rq, peer),
            "/stream.m3u" | "/listen.m3u" => reply(self.playlist(rq)),
            "/events" => self.events(rq, peer),
            "/status" => reply(Response::new(200, "application/json", self.status.status_json())),
            "/metrics" => reply(
                Response::new(200, "text/plain; version=0.0.4; charset=utf-8", self.status.metrics())
                    .with("Cache-Control", "no-store"),
            ),
            "/health" => {
                let reasons = self.status.health();
                let (code, body) = if reasons.is_empty() {
                    (200, serde_json::json!({ "status": "ok" }))
                } else {
                    (503, serde_json::json!({ "status": "unhealthy", "reasons": reasons }))
                };
                reply(Response::json(&body).with_status(code))
            }
            "/tower/buffer" => {
                let (fill, capacity) = self.status.buffer();
                reply(Response::json(
                    &serde_json::json!({ "fill": fill, "capacity": capacity }),
                ))
            }
            "/test/stall" if self.hooks.enabled() => reply(self.test_stall(rq, peer)),
            "/test/panic" if self.hooks.enabled() => reply(self.test_panic(rq, peer)),
            _ => reply(self.bad(rq, peer, 404, &format!("no such resource: {path:.200}"))),
        }
    }

    fn refuse(&self, refusal: &request::Refusal, peer: SocketAddr) -> Vec<u8> {
        self.note_bad(None, peer, refusal.status, &refusal.message);
        Response::text(refusal.status, &refusal.message).into_bytes(false)
    }
}

impl Shared {
    /// A refusal for a request from elsewhere [H6]: a host name Tower does
    /// not answer to (421), or a POST from another site's page (403).
    fn foreign(&self, rq: &Request, peer: SocketAddr, local: SocketAddr) -> Option<Response> {
        let site = self.site.get();
        let host = rq.header("Host");
        if !PUBLIC.contains(&rq.path.as_str()) && !site.hosts.allows(host, local) {
            let message = format!(
                "this Tower does not answer to the name {:?}; open it as one of: {} (or add the name to http.hosts on the settings page)",
                host.unwrap_or_default().chars().take(100).collect::<String>(),
                site.hosts.describe(local)
            );
            return Some(self.bad(rq, peer, 421, &message));
        }
        if rq.method == "POST" && !host::same_origin(rq.header("Origin"), rq.header("Referer"), host) {
            return Some(self.bad(
                rq,
                peer,
                403,
                "refused: this request comes from another site's page; use Tower's own pages (or a script without Origin)",
            ));
        }
        None
    }

    /// Hands an `/api/` request to the desk, unless its sender must wait
    /// before trying a password again (429, nothing hashed).
    fn to_desk(&self, rq: &Request, peer: SocketAddr) -> Answer<'_> {
        let head_only = rq.is_head();
        let Some(desk) = self.desk.clone() else {
            return Answer::Bytes(self.bad(rq, peer, 404, "no settings here").into_bytes(head_only));
        };
        let carries_password =
            rq.header("Authorization").is_some() || (rq.method == "POST" && PASSWORD_PATHS.contains(&rq.path.as_str()));
        if carries_password && let Err(wait) = desk.may_try(peer.ip(), Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let resp = self
                .bad(
                    rq,
                    peer,
                    429,
                    &format!("too many wrong passwords; try again in {secs} s"),
                )
                .with("Retry-After", secs.to_string());
            return Answer::Bytes(resp.into_bytes(head_only));
        }
        let request = rq.clone();
        Answer::Join(Box::new(move |stream: TcpStream| {
            let job = Box::new(DeskJob { request, peer, stream });
            if let Err(job) = desk.hand(job) {
                let resp =
                    Response::text(503, "the settings desk is busy; try again in a moment").with("Retry-After", "1");
                let mut stream = job.stream;
                let _ = stream.write_all(&resp.into_bytes(false));
            }
        }))
    }

    /// A 4xx answer to `rq`, counted and logged.
    fn bad(&self, rq: &Request, peer: SocketAddr, code: u16, message: &str) -> Response {
        self.note_bad(Some(rq), peer, code, message);
        Response::text(code, message)
    }

    /// Counts a refused request and logs it (at most once a second), with
    /// its method and path when it could be read.
    fn note_bad(&self, rq: Option<&Request>, peer: SocketAddr, code: u16, message: &str) {
        self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_log.allow(Instant::now()) {
            let (method, path) = rq.map_or(("", ""), |r| (r.method.as_str(), r.path.as_str()));
            tracing::info!(
                component = "http",
                status = code,
                method,
                path = %format_args!("{path:.200}"),
                peer = %peer,
                suppressed,
                "bad request: {message}"
            );
        }
    }

    /// `/stream.m3u`: a playlist pointing at the stream as the client
    /// reached the server, so opening it starts the user's player. Both
    /// names of the stream are in it: a player that cannot play the first
    /// goes on to the second (`.mp3`, for players that go by the name).
    fn playlist(&self, rq: &Request) -> Response {
        let host = client_host(rq).map_or_else(|| self.addr.to_string(), str::to_string);
        let name = self.site.get().station.get().name.clone();
        let body = format!(
            "#EXTM3U\n#EXTINF:-1,{name}\nhttp://{host}/stream\n#EXTINF:-1,{name} (.mp3)\nhttp://{host}/stream.mp3\n"
        );
        Response::new(200, "audio/x-mpegurl", body)
            .with("Content-Disposition", "inline; filename=\"tower.m3u\"")
            .with("Cache-Control", "no-cache")
    }

    /// `/events`: Server-Sent Events for the status page.
    fn events(&self, rq: &Request, peer: SocketAddr) -> Answer<'_> {
        let admission = match self.events.admit(peer) {
            Ok(a) => a,
            Err(why) => {
                let message = match why {
                    Refusal::Full => format!("too many status pages open ({MAX_EVENT_CLIENTS}); try again later"),
                    Refusal::PerAddress => format!(
                        "too many status pages open from {} (http.max_status_pages_per_address = {}); try again later",
                        peer.ip(),
                        self.site.get().pages_per_address
                    ),
                };
                return Answer::Bytes(busy(&message).into_bytes(rq.is_head()));
            }
        };
        let head = "HTTP/1.1 200 OK\r\n\
                    Content-Type: text/event-stream\r\n\
                    Cache-Control: no-cache\r\n\
                    X-Accel-Buffering: no\r\n\
                    Connection: close\r\n\r\n\
                    retry: 2000\n\n";
        let head_only = rq.is_head();
        Answer::Join(Box::new(move |stream: TcpStream| {
            if let Some((peer, sink)) = take_over(stream, head, head_only) {
                self.events.add(admission, peer, sink, None, Instant::now());
                self.page_opened.notify();
            }
        }))
    }

    /// Refuses a test-hook request that is not an authorized POST.
    fn hook_refusal(&self, rq: &Request, peer: SocketAddr) -> Option<Response> {
        if rq.method != "POST" {
            return Some(self.bad(rq, peer, 405, "use POST").with("Allow", "POST"));
        }
        if !self.hooks.authorized(rq.header("Authorization")) {
            return Some(
                self.bad(
                    rq,
                    peer,
                    401,
                    "test hooks need Authorization: Bearer <TOWER_TEST_HOOKS token>",
                )
                .with("WWW-Authenticate", "Bearer"),
            );
        }
        None
    }

    /// `POST /test/panic?worker=capture` (test hooks only).
    fn test_panic(&self, rq: &Request, peer: SocketAddr) -> Response {
        if let Some(refused) = self.hook_refusal(rq, peer) {
            return refused;
        }
        match self.hooks.request_panic(rq.query_param("worker").unwrap_or_default()) {
            Ok(()) => Response::text(200, "panicking"),
            Err(e) => self.bad(rq, peer, 400, &e.to_string()),
        }
    }

    /// `POST /test/stall?thread=capture&ms=600` (test hooks only).
    fn test_stall(&self, rq: &Request, peer: SocketAddr) -> Response {
        if let Some(refused) = self.hook_refusal(rq, peer) {
            return refused;
        }
        let thread = rq.query_param("thread").unwrap_or_default();
        let result = rq
            .query_param("ms")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| "ms must be a whole number of milliseconds".to_string())
            .and_then(|ms| self.hooks.request_stall(thread, ms).map_err(|e| e.to_string()));
        match result {
            Ok(()) => Response::text(200, "stalling"),
            Err(e) => self.bad(rq, peer, 400, &e),
        }
    }

    fn stream(&self, rq: &Request, peer: SocketAddr) -> Answer<'_> {
        let head_only = rq.is_head();
        let admission = match self.hub.admit(peer) {
            Ok(a) => a,
            Err(why) => {
                let message = match why {
                    Refusal::Full => format!(
                        "listener limit (http.max_listeners = {}) reached; try again later",
                        self.hub.snapshot().max
                    ),
                    Refusal::PerAddress => format!(
                        "too many listeners from {} (http.max_listeners_per_address = {}); try again later",
                        peer.ip(),
                        self.hub.per_address()
                    ),
                };
                return Answer::Bytes(busy(&message).into_bytes(head_only));
            }
        };
        let burst = match rq.query_param("burst_ms").map(str::parse::<u64>) {
            None => None,
            Some(Ok(ms)) if ms <= 5_000 => Some(self.hub.frames_for(ms)),
            Some(_) => {
                drop(admission);
                let resp = self.bad(rq, peer, 400, "burst_ms must be 0 to 5000 (milliseconds)");
                return Answer::Bytes(resp.into_bytes(head_only));
            }
        };
        let site = self.site.get();
        let metaint = icy::wants_metadata(rq.header("Icy-MetaData")).then_some(site.icy_metaint);
        let head = stream_head(rq, &site, metaint);
        let agent = rq.header("User-Agent").unwrap_or_default().to_string();
        Answer::Join(Box::new(move |stream: TcpStream| {
            if let Some((addr, sink)) = take_over(stream, &head, head_only) {
                let sink: Box<dyn ListenerSink> = match metaint {
                    Some(n) => Box::new(icy::IcySink::new(sink, n, site.station.clone())),
                    None => sink,
                };
                self.hub
                    .add(admission, Peer { addr, agent }, sink, burst, Instant::now());
            }
        }))
    }
}

/// The `Access-Control-Allow-Origin` for a page at `origin` that wants to
/// read the stream: only origins the owner listed (`http.cors_origins`),
/// so a page someone on the network opens cannot record the room. Tower's
/// own pages need none (same origin).
fn cors_origin<'a>(origin: Option<&'a str>, allowed: &'a [String]) -> Option<&'a str> {
    if allowed.iter().any(|a| a == "*") {
        return Some("*");
    }
    let origin = origin?;
    allowed.iter().find(|a| a.eq_ignore_ascii_case(origin)).map(|_| origin)
}

/// `503` with `Retry-After`: a limit was reached; `message` says which.
fn busy(message: &str) -> Response {
    Response::text(503, message).with("Retry-After", RETRY_AFTER_S.to_string())
}

/// The `Host` the client used, if it is a plain host[:port]; anything else
/// (absent, or characters that have no place in a host) is not echoed.
fn client_host(rq: &Request) -> Option<&str> {
    let host = rq.header("Host")?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    ok.then_some(host)
}

/// The response head for `/stream`, with the headers players and smart
/// speakers read as a radio station.
fn stream_head(rq: &Request, site: &Site, metaint: Option<usize>) -> String {
    let version = if rq.minor_version == 0 { "1.0" } else { "1.1" };
    let st = site.station.get();
    let mut head = format!(
        "HTTP/{version} 200 OK\r\n\
         Content-Type: audio/mpeg\r\n\
         Cache-Control: no-cache, no-store\r\n\
         Pragma: no-cache\r\n\
         Connection: close\r\n\
         Server: Tower/{}\r\n\
         icy-name: {}\r\n\
         icy-description: {}\r\n\
         icy-genre: {}\r\n\
         icy-br: {}\r\n\
         icy-sr: {}\r\n\
         icy-pub: 0\r\n\
         ice-audio-info: ice-samplerate={};ice-bitrate={};ice-channels=2\r\n",
        env!("CARGO_PKG_VERSION"),
        st.name,
        st.description,
        st.genre,
        site.bitrate_kbps,
        site.sample_rate,
        site.sample_rate,
        site.bitrate_kbps,
    );
    if !st.url.is_empty() {
        let _ = write!(head, "icy-url: {}\r\n", st.url);
    }
    if let Some(origin) = cors_origin(rq.header("Origin"), &site.cors_origins) {
        let _ = write!(head, "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n");
    }
    if let Some(n) = metaint {
        let _ = write!(head, "icy-metaint: {n}\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Writes `head` on a freshly accepted connection (its send buffer is
/// empty, so a head of a few hundred bytes goes at once) and makes it a
/// hub's sink. `None` if the client went away (or for `HEAD`).
fn take_over(mut stream: TcpStream, head: &str, head_only: bool) -> Option<(SocketAddr, Box<dyn ListenerSink>)> {
    let peer = stream.peer_addr().ok()?;
    if stream.write_all(head.as_bytes()).is_err() || head_only {
        return None;
    }
    match socket::SocketSink::new(stream) {
        Ok(sink) => Some((peer, Box::new(sink))),
        Err(e) => {
            tracing::warn!(component = "http", peer = %peer, error = %e, "could not take over the connection");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load_text};

    /// A station with nothing to say: the test only starts and drops.
    struct Quiet;

    impl StatusSource for Quiet {
        fn status_json(&self) -> String {
            "{}".into()
        }
        fn buffer(&self) -> (usize, usize) {
            (0, 1)
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn level_json(&self) -> String {
            "{}".into()
        }
        fn health(&self) -> Vec<String> {
            Vec::new()
        }
    }

    #[test]
    fn a_server_dropped_without_being_stopped_ends_its_threads_and_closes_its_port() {
        let loaded = load_text(None, &[], &Overrides::default()).expect("defaults");
        let station = Arc::new(Live::new(Station::default()));
        let site = Arc::new(Live::new(Site::new(&loaded.config.settings().site, station)));
        let config = HubConfig {
            slow_timeout: Duration::from_secs(5),
            max_listeners: 4,
            per_address: 4,
            burst_frames: 1,
            frame: crate::audio::FRAME_DURATION,
        };
        let hub = Arc::new(Hub::new(config, Who::Listener, Arc::new(ConnLog::default())));
        let status: Arc<dyn StatusSource> = Arc::new(Quiet);
        let server = HttpServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            site,
            None,
            hub,
            status.clone(),
            Arc::new(HttpStats::default()),
            Arc::new(TestHooks::disabled()),
            &Supervisor::none(),
        )
        .expect("start");
        let addr = server.local_addr();
        drop(TcpStream::connect(addr).expect("serving"));
        // A later stage failing to start drops the server this way. Both
        // threads sleep without a timer: unless woken they would outlive
        // their owner, and keep the port.
        drop(server);
        assert_eq!(Arc::strong_count(&status), 1, "both threads ended");
        assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    }
}
