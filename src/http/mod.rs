//! The HTTP server [H1]–[H5]: `/stream` for listeners (with ICY headers
//! and, on request, ICY metadata), `/stream.m3u` and `/listen.m3u`
//! playlists, the owner's status page `/` with its live updates
//! (`/events`, Server-Sent Events), `/status`, `/metrics`, `/health` and
//! `/tower/buffer`.
//!
//! tiny_http accepts connections and parses requests (its own accept thread
//! and connection pool). Tower's "http-N" worker threads, owned by
//! [`HttpServer`], take requests from it and answer. For `/stream` and
//! `/events` the worker writes the response head through tiny_http (which
//! keeps responses on one connection in order), then takes the socket over
//! (see `socket`) and hands it to a [`Hub`]: the listeners' hub, fed by the
//! broadcast thread, or the status pages' hub, fed by the "events" thread
//! also owned here (a level event every 100 ms, the status every second,
//! built once for all pages, so pages cost listeners nothing).
//!
//! tiny_http's accept thread can die two ways: it returns an accept error
//! (EMFILE, for one) and ends, or it panics (tiny_http unwraps the clone of
//! an accepted socket, which fails with EMFILE too) and nobody is told.
//! Workers notice the first from `recv`, and the second from the listening
//! socket's accept queue staying non-empty (see [`AcceptWatch`]). Either
//! way the listening socket is closed (which also sheds the connections
//! waiting in its queue) and bound again with a new tiny_http server, so
//! the box keeps answering. Rebuilds are at most one a second: while
//! descriptors stay exhausted the new server fails again at once.

pub mod guard;
pub mod hub;
pub mod icy;
pub mod metrics;
pub mod socket;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

pub use hub::{Hub, HubConfig, HubSnapshot, ListenerSink};

use crate::hooks::TestHooks;
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Worker, WorkerError};

/// Request-handling threads (small responses; `/stream` hands off at once).
const WORKERS: usize = 2;
/// How often a waiting worker checks for stop.
const POLL: Duration = Duration::from_millis(100);
/// Seconds a refused listener is asked to wait before retrying.
const RETRY_AFTER_S: u32 = 10;
/// A live accept thread empties the accept queue within microseconds;
/// connections waiting this long mean it has died.
const ACCEPT_STALL: Duration = Duration::from_secs(2);
/// The shortest time between two starts of a tiny_http server.
const REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// Tells a dead accept thread from the accept queue: connections waiting,
/// at every look, for [`ACCEPT_STALL`].
#[derive(Debug, Default)]
pub struct AcceptWatch {
    waiting_since: Option<Instant>,
}

impl AcceptWatch {
    /// Records that `queued` connections wait at `now`; returns how long
    /// the queue has been stuck once that reaches `limit`.
    pub fn observe(&mut self, now: Instant, queued: u32, limit: Duration) -> Option<Duration> {
        if queued == 0 {
            self.waiting_since = None;
            return None;
        }
        let since = *self.waiting_since.get_or_insert(now);
        let stuck = now.saturating_duration_since(since);
        (stuck >= limit).then_some(stuck)
    }
}

/// What `/status`, `/metrics`, `/health`, `/events` and `/tower/buffer`
/// report; the service implements it.
pub trait StatusSource: Send + Sync {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// The PCM input queue's fill and capacity.
    fn buffer(&self) -> (usize, usize);
    /// The `/metrics` page.
    fn metrics(&self) -> String;
    /// The input level and state, for the status page's meter.
    fn level(&self) -> serde_json::Value;
    /// Why the station is not healthy; empty when it is (streaming live, or
    /// the fallback by design).
    fn health(&self) -> Vec<String>;
}

/// What the server says about the station.
#[derive(Debug, Clone)]
pub struct Site {
    pub station: crate::config::Station,
    pub bitrate_kbps: u64,
    /// Audio bytes between ICY metadata blocks.
    pub icy_metaint: usize,
    /// The connection guard's limits.
    pub guard: guard::Limits,
}

/// The owner's status page, served as is.
const STATUS_PAGE: &str = include_str!("status.html");
/// Status pages (`/events`) open at once: each costs a socket and a little
/// CPU every 100 ms, and a handful is all an owner needs.
pub const MAX_EVENT_CLIENTS: usize = 32;
/// How often the status pages get a level event.
const LEVEL_EVERY: Duration = Duration::from_millis(100);
/// Level events between two status events.
const STATUS_EVERY: u32 = 10;

/// Request counters, shared with whoever reports them.
#[derive(Default)]
pub struct HttpStats {
    requests: AtomicU64,
    bad_requests: AtomicU64,
    server_restarts: AtomicU64,
    cut_timeout: AtomicU64,
    cut_per_address: AtomicU64,
    cut_total: AtomicU64,
}

impl HttpStats {
    pub fn snapshot(&self) -> HttpSnapshot {
        HttpSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            server_restarts: self.server_restarts.load(Ordering::Relaxed),
            cut_header_timeout: self.cut_timeout.load(Ordering::Relaxed),
            cut_per_address: self.cut_per_address.load(Ordering::Relaxed),
            cut_total: self.cut_total.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpSnapshot {
    pub requests: u64,
    pub bad_requests: u64,
    /// Times the listening socket had to be rebuilt.
    pub server_restarts: u64,
    /// Non-listener connections shut by the guard: open past the header
    /// timeout, beyond the per-address cap, beyond the total cap.
    pub cut_header_timeout: u64,
    pub cut_per_address: u64,
    pub cut_total: u64,
}

/// The tiny_http server in use, with what is needed to watch and replace it.
struct Live {
    server: Arc<Server>,
    /// Tower's handle on the listening socket, to read its accept queue.
    /// It keeps the socket listening if tiny_http's thread dies, so waiting
    /// connections show the death instead of being refused.
    probe: Option<std::net::TcpListener>,
    watch: AcceptWatch,
    started: Instant,
}

struct Shared {
    addr: SocketAddr,
    live: Mutex<Live>,
    hub: Arc<Hub>,
    events: Arc<Hub>,
    site: Site,
    status: Arc<dyn StatusSource>,
    counters: Arc<HttpStats>,
    hooks: Arc<TestHooks>,
    bad_log: LogGate,
    /// While descriptors stay exhausted the accept loop fails at every new
    /// connection: one line a minute.
    accept_log: LogGate,
    rebuilt_log: LogGate,
}

pub struct HttpServer {
    shared: Arc<Shared>,
    workers: Vec<Worker<()>>,
}

/// The "events" thread: feeds the status pages.
fn feed_events(stop: &StopSignal, shared: &Shared) {
    let mut turn = 0u32;
    let mut seen = 0u64;
    while !stop.is_stopped() {
        stop.sleep(LEVEL_EVERY);
        if shared.events.is_empty() {
            continue;
        }
        let now = Instant::now();
        // A page that just connected gets the status at once.
        let connected = shared.events.snapshot().connected_total;
        if turn.is_multiple_of(STATUS_EVERY) || connected != seen {
            seen = connected;
            let status = serde_json::to_string(&shared.status.status()).unwrap_or_default();
            shared.events.broadcast(&sse("status", &status), now);
        }
        let level = serde_json::to_string(&shared.status.level()).unwrap_or_default();
        shared.events.broadcast(&sse("level", &level), now);
        turn = turn.wrapping_add(1);
    }
    shared.events.close_all();
}

/// The "http-guard" thread (see `guard`).
fn watch_connections(stop: &StopSignal, shared: &Shared) {
    let mut g = guard::Guard::default();
    let log = LogGate::new(Duration::from_secs(60));
    let port = shared.addr.port();
    while !stop.is_stopped() {
        stop.sleep(Duration::from_secs(1));
        let Ok(conns) = socket::connections(port) else { continue };
        let held: std::collections::HashSet<String> =
            shared.hub.peers().into_iter().chain(shared.events.peers()).collect();
        let mut others: Vec<SocketAddr> = conns
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| !held.contains(&p.to_string()))
            .collect();
        others.sort();
        others.dedup();
        for (peer, why) in g.check(&others, Instant::now(), shared.site.guard) {
            let counter = match why {
                guard::Cut::Timeout => &shared.counters.cut_timeout,
                guard::Cut::PerAddress => &shared.counters.cut_per_address,
                guard::Cut::Total => &shared.counters.cut_total,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = log.allow(Instant::now()) {
                tracing::info!(component = "http", peer = %peer, reason = ?why, suppressed, "closing a connection that sent no complete request in time, or one too many");
            }
            for (fd, p) in &conns {
                if *p == peer {
                    socket::shut(*fd, peer, port);
                }
            }
        }
    }
}

/// One Server-Sent Event (`data` is one line of JSON).
fn sse(event: &str, data: &str) -> crate::encoder::Mp3Frame {
    crate::encoder::Mp3Frame::from(format!("event: {event}\ndata: {data}\n\n").into_bytes())
}

/// Binds `addr` and starts a tiny_http server on it.
fn start_server(addr: SocketAddr) -> std::io::Result<Live> {
    let listener = socket::bind(addr)?;
    let probe = listener.try_clone()?;
    let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
    Ok(Live {
        server: Arc::new(server),
        probe: Some(probe),
        watch: AcceptWatch::default(),
        started: Instant::now(),
    })
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and starts the workers.
    pub fn start(
        addr: SocketAddr,
        site: Site,
        hub: Arc<Hub>,
        status: Arc<dyn StatusSource>,
        counters: Arc<HttpStats>,
        hooks: Arc<TestHooks>,
    ) -> std::io::Result<HttpServer> {
        let live = start_server(addr)?;
        let bound = live
            .server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("server has no IP address"))?;
        let shared = Arc::new(Shared {
            addr: bound,
            live: Mutex::new(live),
            hub,
            events: Arc::new(Hub::new(HubConfig {
                slow_timeout: Duration::from_secs(5),
                max_listeners: MAX_EVENT_CLIENTS,
                burst_frames: 1,
            })),
            site,
            status,
            counters,
            hooks,
            bad_log: LogGate::new(Duration::from_secs(1)),
            accept_log: LogGate::new(Duration::from_secs(60)),
            rebuilt_log: LogGate::new(Duration::from_secs(60)),
        });
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let s = shared.clone();
            workers.push(Worker::spawn(&format!("http-{i}"), move |stop| serve(&stop, &s))?);
        }
        let s = shared.clone();
        workers.push(Worker::spawn("events", move |stop| feed_events(&stop, &s))?);
        let s = shared.clone();
        workers.push(Worker::spawn("http-guard", move |stop| watch_connections(&stop, &s))?);
        Ok(HttpServer { shared, workers })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Stops accepting and answering. Listeners already handed to the hub
    /// are closed by the hub's owner.
    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        for w in &self.workers {
            w.stop_signal().stop();
        }
        let mut result = Ok(());
        for w in self.workers {
            if let Err(e) = w.stop(timeout) {
                result = Err(e);
            }
        }
        // Dropping the last handle closes the listening socket.
        drop(self.shared);
        result
    }
}

fn lock_live(shared: &Shared) -> std::sync::MutexGuard<'_, Live> {
    shared.live.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(stop: &StopSignal, shared: &Shared) {
    while !stop.is_stopped() {
        let server = lock_live(shared).server.clone();
        match server.recv_timeout(POLL) {
            Ok(Some(rq)) => handle(shared, rq),
            Ok(None) => check_accept(stop, shared, &server),
            Err(e) => rebuild(stop, shared, &server, &format!("failed: {e}")),
        }
    }
}

/// Rebuilds the server if its accept queue is stuck (see module docs).
fn check_accept(stop: &StopSignal, shared: &Shared, server: &Arc<Server>) {
    let stuck = {
        let mut live = lock_live(shared);
        let Some(queued) = live.probe.as_ref().and_then(|p| socket::accept_queue(p).ok()) else {
            return;
        };
        live.watch
            .observe(Instant::now(), queued, ACCEPT_STALL)
            .map(|d| (queued, d))
    };
    if let Some((queued, stuck)) = stuck {
        let why = format!("stopped: {queued} connection(s) waiting for {} ms", stuck.as_millis());
        rebuild(stop, shared, server, &why);
    }
}

/// tiny_http's accept thread has died (`why`): bind again.
fn rebuild(stop: &StopSignal, shared: &Shared, failed: &Arc<Server>, why: &str) {
    let mut live = lock_live(shared);
    if !Arc::ptr_eq(&live.server, failed) {
        return; // another worker already did it
    }
    if let Some(suppressed) = shared.accept_log.allow(Instant::now()) {
        tracing::error!(
            component = "http",
            suppressed,
            "HTTP accept loop {why}; re-opening {}",
            shared.addr
        );
    }
    // The port is free once every handle on the old socket is closed:
    // Tower's here, tiny_http's when its accept thread ends (at once when
    // it failed or panicked; on the old server's drop when it merely
    // stalled, hence the retries).
    live.probe = None;
    // At most one rebuild a second; the cause (often descriptors exhausted)
    // can last: say so once a minute, retry every second.
    stop.sleep(REBUILD_INTERVAL.saturating_sub(live.started.elapsed()));
    let gate = LogGate::new(Duration::from_secs(60));
    while !stop.is_stopped() {
        match start_server(shared.addr) {
            Ok(next) => {
                *live = next;
                let n = shared.counters.server_restarts.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = shared.rebuilt_log.allow(Instant::now()) {
                    tracing::info!(
                        component = "http",
                        restarts = n,
                        suppressed,
                        "HTTP server accepting again on {}",
                        shared.addr
                    );
                }
                return;
            }
            Err(e) => {
                if let Some(suppressed) = gate.allow(Instant::now()) {
                    tracing::error!(component = "http", error = %e, suppressed, "cannot restart the HTTP server on {}; retrying every second", shared.addr);
                }
                stop.sleep(REBUILD_INTERVAL);
            }
        }
    }
}

type Body = Response<std::io::Cursor<Vec<u8>>>;

/// Adds a header; names and values here are fixed ASCII, which tiny_http
/// always accepts.
fn with(resp: Body, name: &str, value: &str) -> Body {
    match Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(h) => resp.with_header(h),
        Err(()) => resp,
    }
}

fn json_response(value: &impl Serialize) -> Body {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let resp = with(Response::from_data(body), "Content-Type", "application/json");
    with(resp, "Cache-Control", "no-store")
}

fn reply_error(shared: &Shared, rq: Request, code: u16, message: &str, extra: &[(&str, &str)]) {
    shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = shared.bad_log.allow(Instant::now()) {
        tracing::info!(
            component = "http",
            status = code,
            method = %rq.method(),
            url = %rq.url(),
            peer = ?rq.remote_addr(),
            suppressed,
            "bad request: {message}"
        );
    }
    let mut resp = with(
        Response::from_string(format!("{message}\n")).with_status_code(StatusCode(code)),
        "Content-Type",
        "text/plain; charset=utf-8",
    );
    for (name, value) in extra {
        resp = with(resp, name, value);
    }
    let _ = rq.respond(resp);
}

fn handle(shared: &Shared, rq: Request) {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let path = rq.url().split(['?', '#']).next().unwrap_or("").to_string();
    let method = rq.method().clone();
    let readable = matches!(method, Method::Get | Method::Head);
    let allow = [("Allow", "GET, HEAD")];
    let known = [
        "/",
        "/stream",
        "/stream.m3u",
        "/listen.m3u",
        "/events",
        "/status",
        "/metrics",
        "/health",
        "/tower/buffer",
    ];
    if known.contains(&path.as_str()) && !readable {
        return reply_error(
            shared,
            rq,
            405,
            &format!("method {method} not allowed; use GET"),
            &allow,
        );
    }
    match path.as_str() {
        "/" | "/index.html" => {
            let resp = with(
                Response::from_string(STATUS_PAGE),
                "Content-Type",
                "text/html; charset=utf-8",
            );
            let _ = rq.respond(with(resp, "Cache-Control", "no-cache"));
        }
        "/stream" => stream(shared, rq),
        "/stream.m3u" | "/listen.m3u" => playlist(shared, rq),
        "/events" => events(shared, rq),
        "/status" => {
            let _ = rq.respond(json_response(&shared.status.status()));
        }
        "/metrics" => {
            let resp = with(
                Response::from_string(shared.status.metrics()),
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            );
            let _ = rq.respond(with(resp, "Cache-Control", "no-store"));
        }
        "/health" => {
            let reasons = shared.status.health();
            let (code, body) = if reasons.is_empty() {
                (200, serde_json::json!({ "status": "ok" }))
            } else {
                (503, serde_json::json!({ "status": "unhealthy", "reasons": reasons }))
            };
            let _ = rq.respond(json_response(&body).with_status_code(StatusCode(code)));
        }
        "/tower/buffer" => {
            let (fill, capacity) = shared.status.buffer();
            let _ = rq.respond(json_response(
                &serde_json::json!({ "fill": fill, "capacity": capacity }),
            ));
        }
        "/test/stall" if shared.hooks.enabled() => test_stall(shared, rq),
        _ => reply_error(shared, rq, 404, &format!("no such resource: {path}"), &[]),
    }
}

/// The value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A request header's value (names compare without case).
fn header<'a>(rq: &'a Request, name: &str) -> Option<&'a str> {
    rq.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The `Host` the client used, if it is a plain host[:port]; anything else
/// (absent, or characters that have no place in a host) is not echoed.
fn client_host(rq: &Request) -> Option<&str> {
    let host = header(rq, "Host")?.trim();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    ok.then_some(host)
}

/// `/stream.m3u`: a playlist pointing at the stream as the client reached
/// the server, so opening it starts the user's player.
fn playlist(shared: &Shared, rq: Request) {
    let host = client_host(&rq).map_or_else(|| shared.addr.to_string(), str::to_string);
    let body = format!(
        "#EXTM3U\n#EXTINF:-1,{}\nhttp://{host}/stream\n",
        shared.site.station.name
    );
    let resp = with(Response::from_string(body), "Content-Type", "audio/x-mpegurl");
    let resp = with(resp, "Content-Disposition", "inline; filename=\"tower.m3u\"");
    let _ = rq.respond(with(resp, "Cache-Control", "no-cache"));
}

/// `/events`: Server-Sent Events for the status page.
fn events(shared: &Shared, rq: Request) {
    let Some(admission) = shared.events.admit() else {
        let resp =
            Response::from_string("too many status pages open; try again later\n").with_status_code(StatusCode(503));
        let _ = rq.respond(with(resp, "Retry-After", &RETRY_AFTER_S.to_string()));
        return;
    };
    let head = "HTTP/1.1 200 OK\r\n\
                Content-Type: text/event-stream\r\n\
                Cache-Control: no-cache\r\n\
                X-Accel-Buffering: no\r\n\
                Connection: close\r\n\r\n\
                retry: 2000\n\n";
    if let Some((peer, sink)) = take_over(shared, rq, head) {
        shared.events.add(admission, peer, sink, None, Instant::now());
    }
}

/// `POST /test/stall?thread=capture&ms=600` (test hooks only).
fn test_stall(shared: &Shared, rq: Request) {
    if *rq.method() != Method::Post {
        return reply_error(shared, rq, 405, "use POST", &[("Allow", "POST")]);
    }
    let param = |name: &str| query_param(rq.url(), name);
    let thread = param("thread").unwrap_or_default();
    let result = param("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| "ms must be a whole number of milliseconds".to_string())
        .and_then(|ms| shared.hooks.request_stall(&thread, ms));
    match result {
        Ok(()) => {
            let _ = rq.respond(Response::from_string("stalling\n"));
        }
        Err(e) => reply_error(shared, rq, 400, &e, &[]),
    }
}

/// The response head for `/stream`, written by hand (see module docs),
/// with the headers players and smart speakers read as a radio station.
fn stream_head(rq: &Request, site: &Site, metaint: Option<usize>) -> String {
    let version = if rq.http_version().1 == 0 { "1.0" } else { "1.1" };
    let st = &site.station;
    let mut head = format!(
        "HTTP/{version} 200 OK\r\n\
         Content-Type: audio/mpeg\r\n\
         Cache-Control: no-cache, no-store\r\n\
         Pragma: no-cache\r\n\
         Access-Control-Allow-Origin: *\r\n\
         Connection: close\r\n\
         Server: Tower/{}\r\n\
         icy-name: {}\r\n\
         icy-description: {}\r\n\
         icy-genre: {}\r\n\
         icy-br: {}\r\n\
         icy-sr: 48000\r\n\
         icy-pub: 0\r\n\
         ice-audio-info: ice-samplerate=48000;ice-bitrate={};ice-channels=2\r\n",
        env!("CARGO_PKG_VERSION"),
        st.name,
        st.description,
        st.genre,
        site.bitrate_kbps,
        site.bitrate_kbps,
    );
    if !st.url.is_empty() {
        head.push_str(&format!("icy-url: {}\r\n", st.url));
    }
    if let Some(n) = metaint {
        head.push_str(&format!("icy-metaint: {n}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Writes `head` through tiny_http, then takes the connection over for a
/// hub (see module docs). `None` if the client went away (or for `HEAD`).
fn take_over(shared: &Shared, rq: Request, head: &str) -> Option<(String, Box<dyn ListenerSink>)> {
    let is_head = *rq.method() == Method::Head;
    let peer = rq.remote_addr().copied()?;
    let mut writer = rq.into_writer();
    if writer.write_all(head.as_bytes()).and_then(|()| writer.flush()).is_err() || is_head {
        return None;
    }
    match socket::find_connection(peer, shared.addr.port()).and_then(|s| socket::SocketSink::new(s, writer)) {
        Ok(sink) => Some((peer.to_string(), Box::new(sink))),
        Err(e) => {
            tracing::warn!(component = "http", peer = %peer, error = %e, "could not take over the connection");
            None
        }
    }
}

fn stream(shared: &Shared, rq: Request) {
    let Some(admission) = shared.hub.admit() else {
        let max = shared.hub.snapshot().max;
        tracing::warn!(component = "http", peer = ?rq.remote_addr(), max, "listener refused: limit reached");
        let resp = Response::from_string(format!("listener limit ({max}) reached; try again later\n"))
            .with_status_code(StatusCode(503));
        let resp = with(resp, "Retry-After", &RETRY_AFTER_S.to_string());
        let _ = rq.respond(with(resp, "Content-Type", "text/plain; charset=utf-8"));
        return;
    };
    let burst = match query_param(rq.url(), "burst_ms").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) if ms <= 5_000 => Some(HubConfig::frames_for(ms)),
        Some(_) => {
            drop(admission);
            return reply_error(shared, rq, 400, "burst_ms must be 0 to 5000 (milliseconds)", &[]);
        }
    };
    let metaint = icy::wants_metadata(header(&rq, "Icy-MetaData")).then_some(shared.site.icy_metaint);
    let head = stream_head(&rq, &shared.site, metaint);
    if let Some((peer, sink)) = take_over(shared, rq, &head) {
        let sink: Box<dyn ListenerSink> = match metaint {
            Some(n) => Box::new(icy::IcySink::new(sink, n, &shared.site.station.title)),
            None => sink,
        };
        shared.hub.add(admission, peer, sink, burst, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_watch_fires_only_on_a_queue_that_never_empties() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = AcceptWatch::default();
        assert_eq!(w.observe(at(0), 0, limit), None);
        assert_eq!(w.observe(at(100), 3, limit), None);
        assert_eq!(w.observe(at(1_000), 3, limit), None);
        // Emptied once: a live accept loop. The clock starts again.
        assert_eq!(w.observe(at(1_100), 0, limit), None);
        assert_eq!(w.observe(at(1_200), 1, limit), None);
        assert_eq!(w.observe(at(3_100), 5, limit), None);
        assert_eq!(w.observe(at(3_200), 5, limit), Some(Duration::from_secs(2)));
    }
}
