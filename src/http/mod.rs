//! The HTTP server: `/stream`, `/status`, `/tower/buffer` [H1]–[H5].
//!
//! tiny_http accepts connections and parses requests (its own accept thread
//! and connection pool). Tower's "http-N" worker threads, owned by
//! [`HttpServer`], take requests from it and answer. For `/stream` the
//! worker writes the response head through tiny_http (which keeps responses
//! on one connection in order), then takes the socket over (see `socket`)
//! and hands it to the [`Hub`], where the broadcast thread feeds it.
//!
//! tiny_http's accept loop ends for good on any accept error (EMFILE, for
//! one). When a worker sees that, the server is rebuilt on the same address,
//! so the box keeps answering.

pub mod hub;
pub mod socket;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

pub use hub::{Hub, HubConfig, HubSnapshot, ListenerSink};

use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Worker, WorkerError};

/// Request-handling threads (small responses; `/stream` hands off at once).
const WORKERS: usize = 2;
/// How often a waiting worker checks for stop.
const POLL: Duration = Duration::from_millis(100);
/// Seconds a refused listener is asked to wait before retrying.
const RETRY_AFTER_S: u32 = 10;

/// What `/status` and `/tower/buffer` report; the service implements it.
pub trait StatusSource: Send + Sync {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// The PCM input queue's fill and capacity.
    fn buffer(&self) -> (usize, usize);
}

/// Request counters, shared with whoever reports them.
#[derive(Default)]
pub struct HttpStats {
    requests: AtomicU64,
    bad_requests: AtomicU64,
    server_restarts: AtomicU64,
}

impl HttpStats {
    pub fn snapshot(&self) -> HttpSnapshot {
        HttpSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            server_restarts: self.server_restarts.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpSnapshot {
    pub requests: u64,
    pub bad_requests: u64,
    /// Times the listening socket had to be rebuilt.
    pub server_restarts: u64,
}

struct Shared {
    addr: SocketAddr,
    server: Mutex<Arc<Server>>,
    hub: Arc<Hub>,
    status: Arc<dyn StatusSource>,
    counters: Arc<HttpStats>,
    bad_log: LogGate,
    /// While descriptors stay exhausted the accept loop fails at every new
    /// connection: one line a minute.
    accept_log: LogGate,
}

pub struct HttpServer {
    shared: Arc<Shared>,
    workers: Vec<Worker<()>>,
}

fn start_server(addr: SocketAddr) -> std::io::Result<Server> {
    let listener = socket::bind(addr)?;
    Server::from_listener(listener, None).map_err(std::io::Error::other)
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and starts the workers.
    pub fn start(
        addr: SocketAddr,
        hub: Arc<Hub>,
        status: Arc<dyn StatusSource>,
        counters: Arc<HttpStats>,
    ) -> std::io::Result<HttpServer> {
        let server = start_server(addr)?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("server has no IP address"))?;
        let shared = Arc::new(Shared {
            addr: bound,
            server: Mutex::new(Arc::new(server)),
            hub,
            status,
            counters,
            bad_log: LogGate::new(Duration::from_secs(1)),
            accept_log: LogGate::new(Duration::from_secs(60)),
        });
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let s = shared.clone();
            workers.push(Worker::spawn(&format!("http-{i}"), move |stop| serve(&stop, &s))?);
        }
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

fn lock_server(shared: &Shared) -> Arc<Server> {
    shared.server.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn serve(stop: &StopSignal, shared: &Shared) {
    while !stop.is_stopped() {
        let server = lock_server(shared);
        match server.recv_timeout(POLL) {
            Ok(Some(rq)) => handle(shared, rq),
            Ok(None) => {}
            Err(e) => rebuild(stop, shared, &server, &e),
        }
    }
}

/// tiny_http's accept thread has died with `error`: bind again.
fn rebuild(stop: &StopSignal, shared: &Shared, failed: &Arc<Server>, error: &std::io::Error) {
    let mut current = shared.server.lock().unwrap_or_else(|p| p.into_inner());
    if !Arc::ptr_eq(&current, failed) {
        return; // another worker already did it
    }
    if let Some(suppressed) = shared.accept_log.allow(Instant::now()) {
        tracing::error!(component = "http", error = %error, suppressed, "HTTP accept loop failed; re-opening {}", shared.addr);
    }
    // The cause (often file descriptors exhausted) can last: say so once a
    // minute, retry every second.
    let gate = LogGate::new(Duration::from_secs(60));
    while !stop.is_stopped() {
        match start_server(shared.addr) {
            Ok(server) => {
                *current = Arc::new(server);
                let n = shared.counters.server_restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    component = "http",
                    restarts = n,
                    "HTTP server listening again on {}",
                    shared.addr
                );
                return;
            }
            Err(e) => {
                if let Some(suppressed) = gate.allow(Instant::now()) {
                    tracing::error!(component = "http", error = %e, suppressed, "cannot re-open {}; retrying every second", shared.addr);
                }
                stop.sleep(Duration::from_secs(1));
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
    match path.as_str() {
        "/stream" | "/status" | "/tower/buffer" if !readable => {
            reply_error(
                shared,
                rq,
                405,
                &format!("method {method} not allowed; use GET"),
                &allow,
            );
        }
        "/stream" => stream(shared, rq),
        "/status" => {
            let _ = rq.respond(json_response(&shared.status.status()));
        }
        "/tower/buffer" => {
            let (fill, capacity) = shared.status.buffer();
            let _ = rq.respond(json_response(
                &serde_json::json!({ "fill": fill, "capacity": capacity }),
            ));
        }
        _ => reply_error(shared, rq, 404, &format!("no such resource: {path}"), &[]),
    }
}

/// The response head for `/stream`, written by hand (see module docs).
fn stream_head(rq: &Request) -> String {
    let version = if rq.http_version().1 == 0 { "1.0" } else { "1.1" };
    format!(
        "HTTP/{version} 200 OK\r\n\
         Content-Type: audio/mpeg\r\n\
         Cache-Control: no-cache, no-store\r\n\
         Pragma: no-cache\r\n\
         Access-Control-Allow-Origin: *\r\n\
         Connection: close\r\n\
         Server: Tower/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
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
    let head = stream_head(&rq);
    let is_head = *rq.method() == Method::Head;
    let Some(peer) = rq.remote_addr().copied() else {
        return;
    };
    let mut writer = rq.into_writer();
    if writer.write_all(head.as_bytes()).and_then(|()| writer.flush()).is_err() || is_head {
        return;
    }
    let sink = socket::find_connection(peer, shared.addr.port()).and_then(|s| socket::SocketSink::new(s, writer));
    match sink {
        Ok(sink) => {
            shared
                .hub
                .add(admission, peer.to_string(), Box::new(sink), Instant::now());
        }
        Err(e) => {
            tracing::warn!(component = "http", peer = %peer, error = %e, "could not take over the listener's connection");
        }
    }
}
