//! The three servers side by side, started the same way: Tower (its
//! fallback tone, or its ALSA capture in the lag part), Debian's icecast2
//! with an ffmpeg source, and liquidsoap serving its own input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Tower;
use crate::common::icecast::Icecast;
use crate::liquidsoap::Liquidsoap;
use crate::servers::{MOUNT, Source, StockConfig, own};
use crate::support::wait_audio;

/// Tower with no capture device: its 440 Hz fallback tone after 0.2 s.
pub const TONE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_bench_no_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tower,
    Icecast,
    Liquidsoap,
}

impl Peer {
    /// In the table's order.
    pub const ALL: [Peer; 3] = [Peer::Tower, Peer::Icecast, Peer::Liquidsoap];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Tower => "Tower",
            Peer::Icecast => "Icecast",
            Peer::Liquidsoap => "Liquidsoap",
        }
    }

    /// Its key in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            Peer::Tower => "tower",
            Peer::Icecast => "icecast",
            Peer::Liquidsoap => "liquidsoap",
        }
    }
}

/// A running server and what feeds it.
pub enum Running {
    Tower(Tower),
    /// The source first: fields drop in order.
    Icecast(Source, Icecast),
    Liquidsoap(Liquidsoap),
}

/// Tower streaming its fallback tone with room for `listeners`, with
/// `extra` settings (environment overrides) on top.
fn start_tower(listeners: usize, extra: &[(&str, &str)]) -> Running {
    let limit = (listeners + 100).to_string();
    // Every listener comes from 127.0.0.1: the per-address caps (for
    // listeners, and for connections that are not yet listeners) are raised.
    let mut env = vec![
        TONE[0],
        TONE[1],
        ("TOWER_HTTP_MAX_LISTENERS", limit.as_str()),
        ("TOWER_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "10000"),
        ("TOWER_HTTP_MAX_OTHER_CONNECTIONS", "10000"),
        ("TOWER_HTTP_MAX_LISTENERS_PER_ADDRESS", "10000"),
    ];
    env.extend_from_slice(extra);
    let tower = Tower::start(&[], &env);
    own(tower.pid());
    Running::Tower(tower)
}

/// Tower as [`start`] starts it, with `extra` settings on top; waits until
/// it streams.
pub fn start_tower_with(listeners: usize, extra: &[(&str, &str)]) -> Running {
    let running = start_tower(listeners, extra);
    assert!(
        wait_audio(running.addr(), running.path(), Duration::from_secs(20)),
        "Tower never streamed:\n{}",
        running.log()
    );
    running
}

/// Starts `peer` with room for `listeners` and waits until it streams.
/// Icecast and Liquidsoap get `pcm` (looped) from this process at the
/// real-time pace; Tower streams its fallback tone (`pcm` is then the
/// same 440 Hz tone, [`crate::support::tone_raw`], or unused).
pub fn start(peer: Peer, stock: &Arc<StockConfig>, listeners: usize, pcm: Vec<u8>) -> Running {
    let running = match peer {
        Peer::Tower => start_tower(listeners, &[]),
        Peer::Icecast => {
            let ice = stock.start(listeners);
            // Now and then (once in a full run here, once in 30 starts
            // from a shell loop) the source's connect is refused just after
            // icecast2 first accepted a connection, and the mount never
            // streams. Another source is tried then (twice at most).
            let mut attempt = 1;
            let source = loop {
                let source = Source::start(&ice, pcm.clone()).expect("ffmpeg source (apt-get install ffmpeg)");
                if attempt == 3 || wait_audio(ice.addr(), MOUNT, Duration::from_secs(8)) {
                    break source;
                }
                eprintln!("Icecast: the source does not stream (attempt {attempt}); starting another");
                attempt += 1;
            };
            Running::Icecast(source, ice)
        }
        Peer::Liquidsoap => {
            Running::Liquidsoap(Liquidsoap::start(listeners, pcm).expect("liquidsoap (apt-get install liquidsoap)"))
        }
    };
    assert!(
        wait_audio(running.addr(), running.path(), Duration::from_secs(20)),
        "{} never streamed:\n{}",
        peer.name(),
        running.log()
    );
    running
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Running::Tower(t) => t.addr,
            Running::Icecast(_, i) => i.addr(),
            Running::Liquidsoap(l) => l.addr(),
        }
    }

    pub fn path(&self) -> &'static str {
        match self {
            Running::Tower(_) => "/stream",
            Running::Icecast(..) | Running::Liquidsoap(_) => MOUNT,
        }
    }

    /// The server's own process.
    pub fn pid(&self) -> u32 {
        match self {
            Running::Tower(t) => t.pid() as u32,
            Running::Icecast(_, i) => i.pid() as u32,
            Running::Liquidsoap(l) => l.pid(),
        }
    }

    /// The encoder, where it is a process of its own: Tower's ffmpeg
    /// child, Icecast's ffmpeg source. Liquidsoap encodes in-process.
    pub fn encoder(&self) -> Option<u32> {
        match self {
            Running::Tower(t) => Some(t.ffmpeg_pid() as u32),
            Running::Icecast(s, _) => Some(s.pid()),
            Running::Liquidsoap(_) => None,
        }
    }

    /// The processes of the whole chain: the server and its encoder.
    pub fn chain(&self) -> Vec<u32> {
        std::iter::once(self.pid()).chain(self.encoder()).collect()
    }

    /// A process the bench runs only to feed the server (Liquidsoap's
    /// `cat`), not counted as the server's.
    pub fn feeder(&self) -> Option<u32> {
        match self {
            Running::Liquidsoap(l) => Some(l.reader_pid()).filter(|p| *p > 0),
            _ => None,
        }
    }

    /// The bench's thread that plays the input into the chain in real
    /// time, the work Tower's pump does inside Tower (and DarkIce's capture
    /// inside DarkIce): Icecast's source's and Liquidsoap's feeder. Tower
    /// has none.
    pub fn input_thread(&self) -> Option<u32> {
        match self {
            Running::Tower(_) => None,
            Running::Icecast(s, _) => s.feeder_tid(),
            Running::Liquidsoap(l) => l.feeder_tid(),
        }
    }

    /// The server's own account (Tower's /status).
    pub fn status(&self) -> Value {
        match self {
            Running::Tower(t) => t.status(),
            _ => Value::Null,
        }
    }

    /// When the bench wrote each click to the server's input.
    pub fn sent(&self) -> Vec<Instant> {
        match self {
            Running::Tower(_) => Vec::new(),
            Running::Icecast(s, _) => s.sent(),
            Running::Liquidsoap(l) => l.sent(),
        }
    }

    /// How often its input ran dry (Liquidsoap's; 0 for the others,
    /// whose sources are not watched for that).
    pub fn underruns(&self) -> usize {
        match self {
            Running::Liquidsoap(l) => l.underruns(),
            _ => 0,
        }
    }

    /// The listen backlog of its socket, as `ss` shows it (Send-Q).
    pub fn listen_backlog(&self) -> Option<u32> {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", self.addr().port())])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
    }

    fn log(&self) -> String {
        match self {
            Running::Tower(t) => t.log_text(),
            Running::Icecast(_, i) => i.error_log(),
            Running::Liquidsoap(l) => l.log_text(),
        }
    }
}
