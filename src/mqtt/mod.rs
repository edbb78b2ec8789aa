//! The MQTT link to Home Assistant [D5]: Tower's state as entities that
//! appear by themselves (discovery), and the title as a command.
//!
//! One thread, "mqtt", owned by the service (started when `mqtt.url` is
//! set, again with new settings when the owner changes them). It speaks to
//! the broker through rumqttc's blocking client, whose event loop runs in
//! this thread only; it reads Tower's state through a closure the service
//! gives it (atomics, the capture thread's boards and the station's texts,
//! read-locked: no lock the pump takes, nothing the broadcast loop waits
//! on), every [`POLL`], and sends what changed (see
//! `discovery`). Nothing in the audio path ever waits for it: a broker that
//! is slow, down or refusing only delays this thread.
//!
//! - A broker that cannot be reached is tried again after 0.5 s, doubling
//!   to [`BACKOFF_MAX`]; one that refuses (a wrong password) every
//!   [`REFUSED_WAIT`]. Each episode is logged once when it starts and once
//!   when it ends; `/status` (`mqtt`) and the page show the state and the
//!   last error. Every (re)connection sends the discovery configs and
//!   every state again (retained), then `online`.
//! - The last will, `offline` (retained), tells Home Assistant when Tower
//!   dies; a clean stop sends it itself.
//! - A message on `tower/<node>/title/set` sets the station title
//!   (through `NowPlaying`, like every other input); players get it at
//!   their next ICY block.
//! - The password is a secret (`config::is_secret`): never logged, shown,
//!   or put in an error.

pub mod discovery;

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Serialize;

use crate::broadcast::NowPlaying;
use crate::config::MqttSection;
use crate::ratelog::LogGate;
use crate::worker::{StopSignal, Supervisor, Worker};
use discovery::{Message, Publisher, Readings, Topics};

/// Where Home Assistant looks for discovery configs by default.
pub const DEFAULT_PREFIX: &str = "homeassistant";
/// The broker's port when the URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// How often Tower's state is read, and the longest wait for the broker
/// while connected (so a stop is seen within it).
pub const POLL: Duration = Duration::from_millis(100);
/// How long a connection attempt may take (TCP and CONNACK).
pub const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The first wait after a failed attempt; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The wait after the broker refused Tower (user name or password).
pub const REFUSED_WAIT: Duration = Duration::from_secs(30);
/// Keep-alive: a broker notices a Tower cut off the network within 1.5×.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Messages queued for the broker at most (one connection's worth is 13).
const QUEUE: usize = 64;

/// The broker and what to send it, from `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// A host name, an IPv4 address, or an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub prefix: String,
}

const URL_FORMS: &str = "mqtt://HOST or mqtt://HOST:PORT (port 1883 by default), or \"\" for no MQTT";

impl MqttSettings {
    /// `[mqtt]` checked (every key, set or not): `None` while `url` is
    /// empty; else the key that is wrong and what it accepts.
    pub fn from_section(s: &MqttSection) -> Result<Option<MqttSettings>, (&'static str, String)> {
        let line = |v: &str, max: usize| v.chars().count() <= max && !v.chars().any(char::is_control);
        if !line(&s.user, 128) {
            return Err(("mqtt.user", "one line of at most 128 characters".into()));
        }
        if !line(&s.password, 256) {
            return Err(("mqtt.password", "one line of at most 256 characters".into()));
        }
        if !s.password.is_empty() && s.user.is_empty() {
            return Err(("mqtt.password", "a password with a user name (mqtt.user)".into()));
        }
        let p = &s.discovery_prefix;
        if p.is_empty()
            || p.len() > 64
            || p.starts_with('/')
            || p.ends_with('/')
            || p.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '+' || c == '#')
        {
            return Err((
                "mqtt.discovery_prefix",
                "a topic prefix such as homeassistant (no spaces, + or #, no leading or trailing /)".into(),
            ));
        }
        if s.url.is_empty() {
            return Ok(None);
        }
        let (host, port) = parse_url(&s.url).map_err(|e| ("mqtt.url", e))?;
        Ok(Some(MqttSettings {
            host,
            port,
            user: s.user.clone(),
            password: s.password.clone(),
            prefix: p.clone(),
        }))
    }

    /// `mqtt://host:port`, for messages and `/status`.
    pub fn broker(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let Some(rest) = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")) else {
        if url.starts_with("mqtts://") || url.starts_with("ssl://") {
            return Err(format!(
                "{URL_FORMS}; TLS is not supported: use the broker's plain port on the LAN"
            ));
        }
        return Err(URL_FORMS.into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(format!(
            "{URL_FORMS}; put the user and password in mqtt.user and mqtt.password"
        ));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or(URL_FORMS)?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(URL_FORMS.into());
            }
            (format!("[{addr}]"), after.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        },
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
    if !name_ok {
        return Err(URL_FORMS.into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or(URL_FORMS)?,
    };
    Ok((host, port))
}

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// No broker configured.
    Off,
    Connecting,
    Connected,
    /// The broker cannot be reached (retried with backoff).
    Down,
    /// The broker refused Tower (retried every 30 s).
    Refused,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Off => "off",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
            LinkState::Refused => "refused",
        })
    }
}

#[derive(Debug, Clone)]
struct Info {
    state: LinkState,
    since: Instant,
    broker: String,
    topics: Option<Topics>,
    last_error: Option<String>,
    /// From the loss of the last connection to the next one.
    last_outage_s: Option<f64>,
}

/// The link's counters and state, kept across restarts of the thread.
#[derive(Debug)]
pub struct MqttStats {
    info: Mutex<Info>,
    connects: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    titles: AtomicU64,
}

impl Default for MqttStats {
    fn default() -> Self {
        MqttStats {
            info: Mutex::new(Info {
                state: LinkState::Off,
                since: Instant::now(),
                broker: String::new(),
                topics: None,
                last_error: None,
                last_outage_s: None,
            }),
            connects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            titles: AtomicU64::new(0),
        }
    }
}

/// The link as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MqttSnapshot {
    pub state: LinkState,
    /// How long it has been in this state.
    pub since_s: f64,
    /// `mqtt://host:port` ("" when off).
    pub broker: String,
    /// `tower/<node>`: where the states are.
    pub base_topic: Option<String>,
    pub discovery_prefix: Option<String>,
    pub last_error: Option<String>,
    /// How long the last outage lasted, from the lost connection to the
    /// next CONNACK.
    pub last_outage_s: Option<f64>,
    /// Successful connections (the first, and every reconnection).
    pub connects: u64,
    pub published: u64,
    /// Messages not queued because the client's queue was full.
    pub dropped: u64,
    pub titles_received: u64,
}

impl MqttStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Info> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: LinkState, error: Option<String>) {
        let mut i = self.lock();
        if i.state != state {
            i.state = state;
            i.since = Instant::now();
        }
        if error.is_some() || state == LinkState::Connected {
            i.last_error = error;
        }
    }

    /// The link is off (no broker configured).
    pub fn off(&self) {
        let mut i = self.lock();
        i.broker.clear();
        i.topics = None;
        i.last_error = None;
        drop(i);
        self.set(LinkState::Off, None);
    }

    pub fn snapshot(&self, now: Instant) -> MqttSnapshot {
        let i = self.lock().clone();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttSnapshot {
            state: i.state,
            since_s: now.saturating_duration_since(i.since).as_secs_f64(),
            broker: i.broker,
            base_topic: i.topics.as_ref().map(|t| t.base.clone()),
            discovery_prefix: i.topics.map(|t| t.prefix),
            last_error: i.last_error,
            last_outage_s: i.last_outage_s,
            connects: l(&self.connects),
            published: l(&self.published),
            dropped: l(&self.dropped),
            titles_received: l(&self.titles),
        }
    }
}

/// Waits between connection attempts; time is the caller's.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::ZERO }
    }
}

impl Backoff {
    /// The wait before the next attempt: none after a lost connection,
    /// then 0.5 s doubling to [`BACKOFF_MAX`]; [`REFUSED_WAIT`] after a
    /// refusal.
    pub fn next(&mut self, refused: bool) -> Duration {
        if refused {
            return REFUSED_WAIT;
        }
        let wait = self.next;
        self.next = (self.next * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
        wait
    }

    pub fn reset(&mut self) {
        self.next = Duration::ZERO;
    }
}

/// Why an attempt or a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The broker refused Tower: check `mqtt.user`, `mqtt.password` and the
    /// broker's ACL (retried every [`REFUSED_WAIT`]).
    #[error("the broker refused Tower: {0}")]
    Refused(&'static str),
    /// The broker cannot be reached, or the connection broke (retried with
    /// backoff).
    #[error("{0}")]
    Down(String),
}

impl From<ConnectionError> for LinkError {
    fn from(e: ConnectionError) -> LinkError {
        use rumqttc::ConnectReturnCode as C;
        match e {
            ConnectionError::ConnectionRefused(code) => LinkError::Refused(match code {
                C::BadUserNamePassword => "the user name or password is wrong (mqtt.user, mqtt.password)",
                C::NotAuthorized => "not authorised: check mqtt.user and mqtt.password (and the broker's ACL)",
                C::BadClientId => "the client id was refused",
                C::ServiceUnavailable => "the broker is unavailable",
                C::RefusedProtocolVersion => "the broker does not speak MQTT 3.1.1",
                C::Success => "no reason given",
            }),
            ConnectionError::Io(io) => LinkError::Down(format!("cannot reach the broker: {io}")),
            ConnectionError::NetworkTimeout => LinkError::Down("the broker did not answer in time".into()),
            other => LinkError::Down(format!("the connection to the broker failed: {other}")),
        }
    }
}

impl LinkError {
    /// An established connection broke.
    fn lost(e: ConnectionError) -> LinkError {
        LinkError::Down(format!("lost the connection to the broker: {e}"))
    }
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> LinkError {
        LinkError::from(ConnectionError::Io(e))
    }
}

/// Starts the "mqtt" thread for `settings`; `read` gives Tower's state.
pub fn start(
    settings: MqttSettings,
    read: Box<dyn Fn() -> Readings + Send>,
    now_playing: NowPlaying,
    stats: Arc<MqttStats>,
    supervisor: &Supervisor,
) -> std::io::Result<Worker<()>> {
    let hostname = crate::http::host::hostname();
    let topics = Topics::new(&settings.prefix, &discovery::node_id(&hostname));
    {
        let mut i = stats.lock();
        i.broker = settings.broker();
        i.topics = Some(topics.clone());
    }
    stats.set(LinkState::Connecting, None);
    Worker::spawn_supervised("mqtt", supervisor, move |stop| {
        Link {
            settings,
            publisher: Publisher::new(topics),
            read,
            now_playing,
            stats,
            drop_log: LogGate::new(Duration::from_secs(60)),
        }
        .run(&stop);
    })
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(LinkError),
}

struct Link {
    settings: MqttSettings,
    publisher: Publisher,
    read: Box<dyn Fn() -> Readings + Send>,
    /// Where a title command goes: the one setter every input uses.
    now_playing: NowPlaying,
    stats: Arc<MqttStats>,
    drop_log: LogGate,
}

impl Link {
    fn run(mut self, stop: &StopSignal) {
        let mut backoff = Backoff::default();
        // Since when the link has been down (None while connected), and
        // whether that episode was logged.
        let mut down: Option<(Instant, bool)> = Some((Instant::now(), false));
        let broker = self.settings.broker();
        while !stop.is_stopped() {
            let attempt = self.connect();
            let failure = match attempt {
                Ok((client, mut conn)) => {
                    backoff.reset();
                    self.connected(&client, down.take());
                    match self.serve(stop, &client, &mut conn) {
                        End::Stopped => {
                            self.goodbye(&client, &mut conn);
                            break;
                        }
                        End::Lost(e) => {
                            down = Some((Instant::now(), false));
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            let refused = matches!(failure, LinkError::Refused(_));
            let why = failure.to_string();
            let wait = backoff.next(refused);
            let state = if refused { LinkState::Refused } else { LinkState::Down };
            self.stats.set(state, Some(why.clone()));
            if let Some((_, logged @ false)) = &mut down {
                *logged = true;
                tracing::warn!(
                    component = "mqtt",
                    state = ?state,
                    reason = %why,
                    "MQTT broker {broker}: {why}; retrying with backoff (listeners are not affected)"
                );
            }
            if stop.sleep(wait) {
                break;
            }
        }
    }

    /// One attempt: the broker's address looked up here (so the client
    /// never resolves names on threads of its own), then TCP and CONNACK.
    fn connect(&self) -> Result<(Client, Connection), LinkError> {
        let s = &self.settings;
        let addr = (s.host.trim_start_matches('[').trim_end_matches(']'), s.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no address", s.host)))?;
        let host = match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let topics = self.publisher.topics();
        let mut options = MqttOptions::new(format!("tower-{}", topics.node), host, s.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_last_will(LastWill::new(&topics.availability, "offline", QoS::AtLeastOnce, true));
        if !s.user.is_empty() {
            options.set_credentials(&s.user, &s.password);
        }
        let (client, mut conn) = Client::new(options, QUEUE);
        match conn.recv_timeout(CONNECT_WAIT) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok((client, conn)),
            Ok(Ok(other)) => Err(LinkError::Down(format!("expected CONNACK, got {other:?}"))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectionError::NetworkTimeout.into()),
        }
    }

    /// A new connection: subscribe to the title, send everything.
    fn connected(&mut self, client: &Client, down: Option<(Instant, bool)>) {
        let n = self.stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
        let outage = down.filter(|_| n > 1).map(|(since, _)| since.elapsed().as_secs_f64());
        {
            let mut i = self.stats.lock();
            if outage.is_some() {
                i.last_outage_s = outage;
            }
        }
        self.stats.set(LinkState::Connected, None);
        let topics = self.publisher.topics().clone();
        let again = outage.map(|s| format!(" again after {s:.1} s")).unwrap_or_default();
        tracing::info!(
            component = "mqtt",
            state = "connected",
            "MQTT broker {} connected{again}: states under {}/, Home Assistant discovery under {}/…/{}/",
            self.settings.broker(),
            topics.base,
            topics.prefix,
            topics.node
        );
        let _ = client.try_subscribe(topics.title_set.as_str(), QoS::AtLeastOnce);
        let readings = (self.read)();
        let messages = self.publisher.connected(&readings, Instant::now());
        self.send(client, messages);
    }

    fn send(&self, client: &Client, messages: Vec<Message>) {
        for m in messages {
            match client.try_publish(m.topic.as_str(), QoS::AtLeastOnce, m.retain, m.payload) {
                Ok(()) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.drop_log.allow(Instant::now()) {
                        tracing::warn!(
                            component = "mqtt",
                            suppressed,
                            "MQTT message to {} dropped: {e}",
                            m.topic
                        );
                    }
                }
            }
        }
    }

    /// Drives the connection until it fails or the thread is stopped.
    fn serve(&mut self, stop: &StopSignal, client: &Client, conn: &mut Connection) -> End {
        let mut next_read = Instant::now() + POLL;
        loop {
            if stop.is_stopped() {
                return End::Stopped;
            }
            match conn.recv_timeout(POLL) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == self.publisher.topics().title_set => {
                    self.title(&p.payload);
                }
                Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => return End::Lost(LinkError::lost(e)),
                Err(rumqttc::RecvTimeoutError::Disconnected) => {
                    return End::Lost(LinkError::lost(ConnectionError::RequestsDone));
                }
            }
            let now = Instant::now();
            if now >= next_read {
                next_read = now + POLL;
                let readings = (self.read)();
                let messages = self.publisher.changes(&readings, now);
                self.send(client, messages);
            }
        }
    }

    fn title(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        self.stats.titles.fetch_add(1, Ordering::Relaxed);
        if crate::broadcast::clean_title(&text).is_empty() {
            tracing::warn!(component = "mqtt", "an empty title over MQTT was ignored");
            return;
        }
        self.now_playing.set("mqtt", &text);
    }

    /// A clean stop: `offline` (the will is only for a Tower that dies),
    /// then DISCONNECT, waiting briefly for them to go out.
    fn goodbye(&self, client: &Client, conn: &mut Connection) {
        self.send(client, vec![self.publisher.offline()]);
        let _ = client.try_disconnect();
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match conn.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
        self.stats.set(LinkState::Off, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> MqttSection {
        MqttSection {
            url: url.into(),
            ..MqttSection::default()
        }
    }

    #[test]
    fn broker_urls_parse_or_say_what_is_accepted() {
        let ok = |u: &str| {
            MqttSettings::from_section(&section(u))
                .expect(u)
                .map(|s| (s.host, s.port))
        };
        assert_eq!(ok(""), None);
        assert_eq!(ok("mqtt://ha.lan"), Some(("ha.lan".into(), 1883)));
        assert_eq!(ok("mqtt://192.168.1.5:1884/"), Some(("192.168.1.5".into(), 1884)));
        assert_eq!(ok("tcp://[fd00::5]:1883"), Some(("[fd00::5]".into(), 1883)));
        for bad in [
            "ha.lan",
            "mqtt://",
            "mqtt://ha.lan:0",
            "mqtt://ha lan",
            "http://ha.lan",
            "mqtt://[nope]",
        ] {
            let e = MqttSettings::from_section(&section(bad)).expect_err(bad);
            assert_eq!(e.0, "mqtt.url", "{bad}");
            assert!(e.1.contains("mqtt://HOST"), "{bad}: {}", e.1);
        }
        let e = MqttSettings::from_section(&section("mqtts://ha.lan:8883")).expect_err("tls");
        assert!(e.1.contains("TLS is not supported"), "{}", e.1);
        let e = MqttSettings::from_section(&section("mqtt://u:secret@ha.lan")).expect_err("userinfo");
        assert!(e.1.contains("mqtt.user") && !e.1.contains("secret"), "{}", e.1);
    }

    #[test]
    fn user_password_and_prefix_are_checked() {
        let with = |user: &str, password: &str, prefix: &str| {
            MqttSettings::from_section(&MqttSection {
                url: "mqtt://ha".into(),
                user: user.into(),
                password: password.into(),
                discovery_prefix: prefix.into(),
            })
            .map(|_| ())
            .map_err(|e| e.0)
        };
        assert_eq!(with("tower", "pw", "homeassistant"), Ok(()));
        assert_eq!(with("", "pw", "homeassistant"), Err("mqtt.password"));
        assert_eq!(with("a\nb", "", "homeassistant"), Err("mqtt.user"));
        for bad in ["", "home/", "/ha", "h#", "a b"] {
            assert_eq!(with("", "", bad), Err("mqtt.discovery_prefix"), "{bad:?}");
        }
        assert_eq!(with("", "", "my/ha"), Ok(()));
    }

    #[test]
    fn attempts_back_off_and_a_refusal_waits_longer() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.next(false).as_millis() as u64).collect();
        assert_eq!(waits, [0, 500, 1000, 2000, 4000, 8000, 10_000]);
        assert_eq!(b.next(true), REFUSED_WAIT);
        b.reset();
        assert_eq!(b.next(false), Duration::ZERO);
    }

    #[test]
    fn refusals_and_outages_are_told_apart_in_words() {
        let e = LinkError::from(ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::BadUserNamePassword,
        ));
        assert!(
            matches!(e, LinkError::Refused(_)) && e.to_string().contains("mqtt.password"),
            "{e}"
        );
        let e = LinkError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(
            matches!(e, LinkError::Down(_)) && e.to_string().starts_with("cannot reach the broker"),
            "{e}"
        );
    }
}
