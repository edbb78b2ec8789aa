//! The speakers on the LAN [U1]–[U4]: UPnP/DLNA media renderers (Sonos players,
//! receivers, TVs, software renderers) found by SSDP, listed on the
//! settings page, and told to play Tower's stream or to stop.
//!
//! One thread, "speakers", owned by the service, does all the network
//! work: a search soon after start, every [`SEARCH_EVERY`] and on demand
//! (at most once per [`SEARCH_GAP`]); each new renderer's description
//! fetched and read; Play and Stop sent. Every step is bounded (see
//! `ssdp` and `upnp`), and a search gives way to a Play or Stop every
//! 50 ms, so nothing a renderer does (vanish, answer slowly or with a
//! fault, send huge or broken XML) can hold the thread for long, let alone
//! another one. The admin thread talks to it through a [`SpeakersDesk`]:
//! the list is read from the shared book under a short lock, and a Play or
//! Stop waits for the answer at most [`ANSWER_WAIT`] (then the page is
//! told it is still under way and reads the outcome from the list).
//!
//! Play sends AVTransport `SetAVTransportURI` with the stream's URL
//! (`http://<Tower's address on that network>:<port>/stream.mp3`, or
//! `x-rincon-mp3radio://…` for a Sonos) and DIDL-Lite metadata (the
//! station's name, `object.item.audioItem.audioBroadcast`,
//! `http-get:*:audio/mpeg:*`), then `Play`. A renderer counts as playing
//! while it listens: from its Play until it stops fetching the stream.

pub mod ssdp;
pub mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::broadcast::Station;
use crate::live::Live;
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};
use upnp::{Description, UpnpError, Url};

/// How often the network is searched on its own.
pub const SEARCH_EVERY: Duration = Duration::from_secs(300);
/// The first search, this long after start.
const FIRST_SEARCH: Duration = Duration::from_secs(2);
/// Searches on demand closer together than this are not repeated.
pub const SEARCH_GAP: Duration = Duration::from_secs(5);
/// A description fetch may take this long.
pub const DESCRIBE_WITHIN: Duration = Duration::from_secs(2);
/// A SOAP call may take this long.
pub const CALL_WITHIN: Duration = Duration::from_secs(3);
/// How long the admin thread waits for a Play or Stop to finish.
pub const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// A renderer told to play counts as playing this long before it must be
/// fetching the stream.
const START_GRACE: Duration = Duration::from_secs(15);
/// Searches a renderer may miss before it leaves the list.
const MISSES: u32 = 2;
/// The most renderers listed.
pub const MAX_RENDERERS: usize = 32;
/// Descriptions fetched per search.
const MAX_FETCHES: usize = 16;

/// What the speakers thread needs from the rest of Tower.
pub struct SpeakersConfig {
    /// Where Tower's HTTP server listens (the port the stream is on, and
    /// the interfaces to search).
    pub listen: SocketAddr,
    /// The station, for the name the renderers show.
    pub station: Arc<Live<Station>>,
}

/// A renderer in the list.
#[derive(Debug, Clone)]
struct Renderer {
    description: Description,
    location: Url,
    /// Tower's address on the network it answered on.
    via: Ipv4Addr,
    misses: u32,
    /// When it was last told to play (and not told to stop since).
    playing_since: Option<Instant>,
    error: Option<String>,
}

/// A renderer as `GET /api/speakers` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpeakerView {
    pub id: String,
    pub name: String,
    pub model: String,
    pub playing: bool,
    pub sonos: bool,
    pub address: String,
    /// What went wrong last (a refusal, no answer…), or null.
    pub error: Option<String>,
}

/// The state of searching, for the page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchView {
    pub searching: bool,
    pub searches: u64,
    /// When the last search ended (RFC 3339).
    pub last_at: Option<String>,
    pub last_took_ms: Option<u64>,
    /// How long the first answer of the last search took.
    pub first_answer_ms: Option<u64>,
    /// Renderers that answered the last search.
    pub last_found: usize,
    /// The interfaces searched on (`name address`).
    pub interfaces: Vec<String>,
    /// Why a search could not be made (or only in part), or null.
    pub problem: Option<String>,
}

#[derive(Default)]
struct Book {
    renderers: Vec<Renderer>,
    search: SearchView,
}

enum Command {
    /// Look at the stop signal (the thread has no timer of its own).
    Wake,
    Search,
    Play(String, Sender<Result<(), String>>),
    Stop(String, Sender<Result<(), String>>),
}

/// The admin thread's side: reads the list, asks for searches, Play and
/// Stop. Cloned freely.
#[derive(Clone)]
pub struct SpeakersDesk {
    tx: Sender<Command>,
    book: Arc<Mutex<Book>>,
    listening: Listening,
}

/// The addresses listeners are connected from now.
pub type Listening = Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

/// What a Play or Stop came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Not finished within [`ANSWER_WAIT`]; the list will say.
    Pending,
    UnknownId,
    Failed(String),
}

impl SpeakersDesk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every renderer found, by name.
    pub fn list(&self) -> Vec<SpeakerView> {
        let now = Instant::now();
        let listening = (self.listening)();
        let mut views: Vec<SpeakerView> = self
            .lock()
            .renderers
            .iter()
            .map(|r| {
                let ip = *r.location.addr.ip();
                let playing = r.playing_since.is_some_and(|since| {
                    now.saturating_duration_since(since) < START_GRACE || listening.contains(&IpAddr::V4(ip))
                });
                SpeakerView {
                    id: r.description.udn.clone(),
                    name: r.description.name.clone(),
                    model: r.description.model.clone(),
                    playing,
                    sonos: r.description.sonos,
                    address: ip.to_string(),
                    error: r.error.clone(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        views
    }

    pub fn search_view(&self) -> SearchView {
        self.lock().search.clone()
    }

    /// Asks for a search now (dropped when one was just made or is asked).
    pub fn search(&self) {
        let _ = self.tx.try_send(Command::Search);
    }

    pub fn play(&self, id: &str) -> Outcome {
        self.order(id, Command::Play)
    }

    pub fn stop(&self, id: &str) -> Outcome {
        self.order(id, Command::Stop)
    }

    fn order(&self, id: &str, make: fn(String, Sender<Result<(), String>>) -> Command) -> Outcome {
        if !self.lock().renderers.iter().any(|r| r.description.udn == id) {
            return Outcome::UnknownId;
        }
        let (reply, answer) = channel::bounded(1);
        if self.tx.try_send(make(id.to_string(), reply)).is_err() {
            return Outcome::Failed("the speakers thread is busy; try again".into());
        }
        match answer.recv_timeout(ANSWER_WAIT) {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Pending,
        }
    }
}

/// The speakers thread's end of the desk (kept to start it again).
#[derive(Clone)]
pub struct SpeakersInbox {
    rx: Receiver<Command>,
    book: Arc<Mutex<Book>>,
    /// For [`SpeakersWorker::stop`].
    wake: Sender<Command>,
}

/// A desk and the inbox it writes to.
pub fn desk(listening: Listening) -> (SpeakersDesk, SpeakersInbox) {
    let (tx, rx) = channel::bounded(8);
    let book = Arc::new(Mutex::new(Book::default()));
    (
        SpeakersDesk {
            tx: tx.clone(),
            book: book.clone(),
            listening,
        },
        SpeakersInbox { rx, book, wake: tx },
    )
}

/// Starts the "speakers" thread on `inbox`.
pub fn start(
    inbox: SpeakersInbox,
    config: Arc<SpeakersConfig>,
    supervisor: &Supervisor,
) -> std::io::Result<SpeakersWorker> {
    let wake = inbox.wake.clone();
    let worker = Worker::spawn_supervised("speakers", supervisor, move |stop| {
        Speakers {
            inbox: inbox.clone(),
            config: config.clone(),
            last_search: None,
        }
        .run(&stop)
    })?;
    Ok(SpeakersWorker {
        worker: Some(worker),
        wake,
    })
}

/// The running "speakers" thread.
pub struct SpeakersWorker {
    /// Taken by [`SpeakersWorker::stop`]; otherwise joined when dropped.
    worker: Option<Worker<()>>,
    wake: Sender<Command>,
}

impl SpeakersWorker {
    /// Stops the thread: it sleeps until its next search or a command, so
    /// it is woken to see the stop (a full inbox means it is at work and
    /// looks at the stop signal between steps anyway).
    pub fn stop(mut self, timeout: Duration) -> Result<(), WorkerError> {
        self.signal_stop();
        match self.worker.take() {
            Some(worker) => worker.stop(timeout),
            None => Ok(()),
        }
    }

    fn signal_stop(&self) {
        if let Some(worker) = &self.worker {
            worker.stop_signal().stop();
            let _ = self.wake.try_send(Command::Wake);
        }
    }
}

impl Drop for SpeakersWorker {
    /// Dropped without [`SpeakersWorker::stop`] (a later stage failed to
    /// start): the thread is woken to see the stop, then joined as the
    /// worker drops.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The URL a renderer is given: Tower's address on its network (`via`,
/// unless Tower listens on one address), the port, `/stream.mp3`; with
/// the scheme Sonos wants for a live MP3.
pub fn stream_uri(listen: SocketAddr, via: Ipv4Addr, sonos: bool) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => ip,
        _ => via,
    };
    let scheme = if sonos { "x-rincon-mp3radio" } else { "http" };
    format!("{scheme}://{ip}:{}/stream.mp3", listen.port())
}

struct Speakers {
    inbox: SpeakersInbox,
    config: Arc<SpeakersConfig>,
    last_search: Option<Instant>,
}

impl Speakers {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inbox.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, stop: &StopSignal) {
        let mut next = Instant::now() + FIRST_SEARCH;
        while !stop.is_stopped() {
            let wait = next.saturating_duration_since(Instant::now());
            match self.inbox.rx.recv_timeout(wait) {
                Ok(Command::Search) => {
                    if self.last_search.is_none_or(|at| at.elapsed() >= SEARCH_GAP) {
                        self.search(stop);
                        next = Instant::now() + SEARCH_EVERY;
                    }
                }
                Ok(other) => self.serve(other),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next {
                self.search(stop);
                next = Instant::now() + SEARCH_EVERY;
            }
        }
    }

    /// Plays, stops, and drops searches asked meanwhile (one is under way).
    fn serve_pending(&mut self) {
        while let Ok(c) = self.inbox.rx.try_recv() {
            self.serve(c);
        }
    }

    fn serve(&mut self, command: Command) {
        match command {
            Command::Wake | Command::Search => {}
            Command::Play(id, reply) => {
                let _ = reply.send(self.play(&id));
            }
            Command::Stop(id, reply) => {
                let _ = reply.send(self.stop(&id));
            }
        }
    }

    fn search(&mut self, stop: &StopSignal) {
        let started = Instant::now();
        self.last_search = Some(started);
        let ifaces = ssdp::interfaces(self.config.listen.ip());
        {
            let mut book = self.book();
            book.search.searching = true;
            book.search.interfaces = ifaces
                .as_ref()
                .map(|l| l.iter().map(|i| format!("{} {}", i.name, i.addr)).collect())
                .unwrap_or_default();
        }
        let ssdp::Found {
            answers,
            mut problems,
            first_answer,
        } = match &ifaces {
            Ok(list) => ssdp::search(list, &mut || self.serve_pending()),
            Err(e) => ssdp::Found {
                problems: vec![e.clone()],
                ..ssdp::Found::default()
            },
        };
        let found = answers.len();
        let mut seen = Vec::new();
        let mut fetches = 0;
        for a in answers {
            if stop.is_stopped() {
                return;
            }
            self.serve_pending();
            let known = self.book().renderers.iter().position(|r| r.location == a.location);
            if let Some(i) = known {
                let mut book = self.book();
                book.renderers[i].misses = 0;
                book.renderers[i].via = a.via;
                seen.push(book.renderers[i].description.udn.clone());
                continue;
            }
            if fetches >= MAX_FETCHES {
                continue;
            }
            fetches += 1;
            match upnp::fetch_description(&a.location, DESCRIBE_WITHIN) {
                Ok(d) => {
                    seen.push(d.udn.clone());
                    self.found(d, a.location, a.via);
                }
                Err(e) => problems.push(format!("{}: {e}", a.location)),
            }
        }
        let took = started.elapsed();
        let mut book = self.book();
        for r in &mut book.renderers {
            if !seen.contains(&r.description.udn) {
                r.misses += 1;
            }
        }
        book.renderers
            .retain(|r| r.misses < MISSES || r.playing_since.is_some_and(|s| s.elapsed() < START_GRACE));
        let count = book.renderers.len();
        book.search = SearchView {
            searching: false,
            searches: book.search.searches + 1,
            last_at: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
            last_took_ms: Some(took.as_millis() as u64),
            first_answer_ms: first_answer.map(|d| d.as_millis() as u64),
            last_found: found,
            interfaces: std::mem::take(&mut book.search.interfaces),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        };
        drop(book);
        tracing::info!(
            component = "speakers",
            found,
            listed = count,
            took_ms = took.as_millis() as u64,
            "searched the network for speakers: {found} answered, {count} listed"
        );
        if !problems.is_empty() {
            tracing::info!(component = "speakers", "speaker search: {}", problems.join("; "));
        }
    }

    /// Adds (or refreshes) a renderer that was described.
    fn found(&mut self, d: Description, location: Url, via: Ipv4Addr) {
        let mut book = self.book();
        if let Some(r) = book.renderers.iter_mut().find(|r| r.description.udn == d.udn) {
            r.description = d;
            r.location = location;
            r.via = via;
            r.misses = 0;
            return;
        }
        if book.renderers.len() >= MAX_RENDERERS {
            return;
        }
        tracing::info!(component = "speakers", speaker = %d.name, model = %d.model, at = %location, "found speaker {} ({})", d.name, d.model);
        book.renderers.push(Renderer {
            description: d,
            location,
            via,
            misses: 0,
            playing_since: None,
            error: None,
        });
    }

    fn renderer(&self, id: &str) -> Result<Renderer, String> {
        self.book()
            .renderers
            .iter()
            .find(|r| r.description.udn == id)
            .cloned()
            .ok_or_else(|| "no such speaker (search again)".to_string())
    }

    /// Notes how a Play or Stop went, for the list.
    fn note(&self, id: &str, result: &Result<(), UpnpError>, playing: Option<Instant>) {
        let mut book = self.book();
        if let Some(r) = book.renderers.iter_mut().find(|r| r.description.udn == id) {
            match result {
                Ok(()) => {
                    r.error = None;
                    r.playing_since = playing;
                }
                Err(e) => r.error = Some(e.to_string()),
            }
        }
    }

    fn play(&mut self, id: &str) -> Result<(), String> {
        let r = self.renderer(id)?;
        let result = (|| {
            let uri = stream_uri(self.config.listen, r.via, r.description.sonos);
            let name = self.config.station.get().name.clone();
            let meta = upnp::didl(&name, &uri);
            let args = [
                ("InstanceID", "0"),
                ("CurrentURI", uri.as_str()),
                ("CurrentURIMetaData", &meta),
            ];
            upnp::call(&r.description, "SetAVTransportURI", &args, CALL_WITHIN)?;
            upnp::call(
                &r.description,
                "Play",
                &[("InstanceID", "0"), ("Speed", "1")],
                CALL_WITHIN,
            )?;
            tracing::info!(component = "speakers", speaker = %r.description.name, uri = %uri, "told {} to play {uri}", r.description.name);
            Ok(())
        })();
        self.note(id, &result, Some(Instant::now()));
        result.map_err(|e| self.failed(&r, "play", e))
    }

    fn stop(&mut self, id: &str) -> Result<(), String> {
        let r = self.renderer(id)?;
        let result = upnp::call(&r.description, "Stop", &[("InstanceID", "0")], CALL_WITHIN).map(|_| ());
        if result.is_ok() {
            tracing::info!(component = "speakers", speaker = %r.description.name, "told {} to stop", r.description.name);
        }
        self.note(id, &result, None);
        result.map_err(|e| self.failed(&r, "stop", e))
    }

    fn failed(&self, r: &Renderer, what: &str, e: UpnpError) -> String {
        let said = format!("{} ({}) did not {what}: {e}", r.description.name, r.location.addr.ip());
        tracing::warn!(component = "speakers", speaker = %r.description.name, "{said}");
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderers_get_towers_address_on_their_network_and_sonos_its_own_scheme() {
        let via = Ipv4Addr::new(192, 168, 1, 10);
        let any: SocketAddr = "0.0.0.0:8000".parse().expect("addr");
        assert_eq!(stream_uri(any, via, false), "http://192.168.1.10:8000/stream.mp3");
        assert_eq!(
            stream_uri(any, via, true),
            "x-rincon-mp3radio://192.168.1.10:8000/stream.mp3"
        );
        let one: SocketAddr = "10.0.0.5:8123".parse().expect("addr");
        assert_eq!(stream_uri(one, via, false), "http://10.0.0.5:8123/stream.mp3");
    }

    #[test]
    fn a_worker_dropped_without_being_stopped_ends_its_thread() {
        let (desk, inbox) = desk(Arc::new(Vec::new));
        let config = Arc::new(SpeakersConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            station: Arc::new(Live::new(Station::default())),
        });
        let worker = start(inbox, config.clone(), &Supervisor::none()).expect("start");
        // Once it answers an order the thread sleeps until its first
        // search, unless woken.
        let (reply, answer) = channel::bounded(1);
        desk.tx.send(Command::Stop("uuid:none".into(), reply)).expect("send");
        let _ = answer.recv_timeout(Duration::from_secs(5)).expect("answered");
        // Dropped as when a later stage fails to start.
        drop(worker);
        assert_eq!(Arc::strong_count(&config), 1, "the thread ended");
    }
}
