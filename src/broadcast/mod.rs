//! The broadcast stage: one thread ("broadcast") moves every whole MP3
//! frame from the encoder manager to the listeners and to each Icecast
//! server.
//!
//! The loop drains what the encoder has ready (reading the clock per
//! frame, so a slow turn drops nothing), hands each frame to the
//! [`Listeners`] (the HTTP listener hub) and to the Icecast [`Outputs`],
//! ends the turn (`Listeners::end_turn`), then waits in the encoder for
//! more: it reads ffmpeg's output itself, until the pacer's next deadline
//! (`EncoderManager::wait`). Neither side can block it: the hub drops slow
//! listeners and each Icecast output has its own queue. Its turn counter
//! feeds the systemd watchdog, so a hung loop gets the service restarted.
//!
//! The loop wakes once per frame only when it must. With no listener and
//! no Icecast target it gathers frames until the pacer's deadline (a box
//! nobody listens to: about 10 wake-ups a second, not 42). With
//! listeners it takes frames in turns of as many as each listener's write
//! gathers anyway (4 at the default burst), each turn ending just after
//! the frame that closes it comes, and the hub writes every listener once
//! per turn: 10 wake-ups a second, not 42, and every listener's writes
//! in one burst, at 5 listeners as at 2 000 ([`Listeners::gather`]). A
//! listener that asks for every frame as it comes makes the loop take
//! each frame as it comes, and the hub then staggers the others' writes
//! over the frames. An Icecast target takes turns of at most
//! [`OUTPUT_TURN`] (its server buffers seconds anyway).

pub mod icecast;
pub mod title;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::encoder::{EncoderManager, Gather, Mp3Frame};
use crate::hooks::{PanicTarget, TestHooks};
use crate::live::Live;
use crate::worker::{Supervisor, Worker, WorkerError};
use icecast::Outputs;

/// The longest turn for an Icecast target: four frames, the oldest of
/// which waits 72 ms in ffmpeg's output (its server buffers seconds).
pub const OUTPUT_TURN: Duration = Duration::from_millis(96);

/// Whoever listens on this box. The HTTP listener hub implements it;
/// broadcasting to it must never block.
pub trait Listeners: Send + Sync + 'static {
    /// A frame for every listener.
    fn broadcast(&self, frame: &Mp3Frame, now: Instant);
    /// The turn's frames have all been broadcast: a turn that gathered
    /// them writes them now.
    fn end_turn(&self, now: Instant) {
        let _ = now;
    }
    /// How the loop may wait for the next turn's frames: [`Gather::Idle`]
    /// when no one listens and no one is about to; [`Gather::Every`] when
    /// the listeners take the next turn's frames together, at
    /// [`Listeners::end_turn`]; [`Gather::No`] when they take them one by
    /// one. Called once per turn, before the wait.
    fn gather(&self) -> Gather {
        Gather::No
    }
    /// `wake` ends a gathering wait: to be called when a first listener
    /// comes after [`Listeners::gather`] said [`Gather::Idle`].
    fn on_first(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }
}

/// How the loop waits, given the listeners' wish and whether an Icecast
/// target is configured.
fn gather(listeners: Gather, icecast: bool) -> Gather {
    match listeners {
        Gather::Idle if icecast => Gather::Every(OUTPUT_TURN),
        Gather::Every(span) if icecast => Gather::Every(span.min(OUTPUT_TURN)),
        wish => wish,
    }
}

/// The running broadcast loop; [`Broadcast::stop`] ends and joins it.
pub struct Broadcast {
    worker: Worker<()>,
    encoder: Arc<EncoderManager>,
    turns: Arc<AtomicU64>,
}

impl Broadcast {
    pub fn start(
        encoder: Arc<EncoderManager>,
        listeners: Arc<dyn Listeners>,
        outputs: Arc<Outputs>,
        supervisor: &Supervisor,
        hooks: Arc<TestHooks>,
    ) -> std::io::Result<Broadcast> {
        let turns = Arc::new(AtomicU64::new(0));
        let enc = encoder.clone();
        listeners.on_first(Box::new(move || enc.wake()));
        let (enc, counter) = (encoder.clone(), turns.clone());
        let worker = Worker::spawn_supervised("broadcast", supervisor, move |stop| {
            while !stop.is_stopped() {
                hooks.panic_point(PanicTarget::Broadcast);
                counter.fetch_add(1, Ordering::Relaxed);
                enc.drain(Instant::now, |frame, now| {
                    listeners.broadcast(frame, now);
                    outputs.offer(frame);
                });
                listeners.end_turn(Instant::now());
                enc.wait(Instant::now(), gather(listeners.gather(), !outputs.is_empty()));
            }
        })?;
        Ok(Broadcast { worker, encoder, turns })
    }

    /// Turns of the loop so far: the watchdog's sign of life.
    pub fn turns(&self) -> Arc<AtomicU64> {
        self.turns.clone()
    }

    /// Signals the loop, wakes it from its wait and joins it.
    pub fn stop(self, timeout: Duration) -> Result<(), WorkerError> {
        self.worker.stop_signal().stop();
        self.encoder.wake();
        self.worker.stop(timeout)
    }
}

/// How players and smart speakers name the station (ICY headers, the
/// playlist, the status page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Station {
    pub name: String,
    pub description: String,
    pub genre: String,
    pub url: String,
    /// What players show as the current title (ICY `StreamTitle`).
    pub title: String,
}

impl Default for Station {
    fn default() -> Self {
        Station {
            name: "Tower".into(),
            description: "Live from the Tower".into(),
            genre: "Various".into(),
            url: String::new(),
            title: "Live".into(),
        }
    }
}

/// The longest title players are sent, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// A title as players get it: one line (control characters and runs of
/// white space become one space, ends trimmed), at most
/// [`MAX_TITLE_CHARS`] characters, with nothing that could end the ICY
/// block early (`StreamTitle='…';`): `'` becomes `’` and `;` becomes `,`.
/// Any other UTF-8 is kept as it is. For every input that sets a title:
/// the page, the API, the producer's title socket, MQTT.
pub fn clean_title(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_TITLE_CHARS * 4));
    let mut count = 0;
    for word in raw.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        let space = (count > 0).then_some(' ');
        for c in space.into_iter().chain(word.chars()) {
            if count == MAX_TITLE_CHARS {
                return out;
            }
            out.push(match c {
                '\'' => '’',
                ';' => ',',
                c => c,
            });
            count += 1;
        }
    }
    out
}

/// Records a change of title: who made it, the old and the new title
/// (the service writes the journal line and the history on the pages).
pub type TitleAudit = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// What is playing now [N1]: the station's title, which every input may set
/// ([`NowPlaying::set`]). It is not configuration: it is never saved, and
/// `station.title` is only the title at start. A new title reaches ICY
/// listeners at their next metadata block (they read the shared
/// [`Station`]), `/status`, `/events` and the pages at their next turn,
/// and each Icecast server through `title::IcecastTitles`.
#[derive(Clone)]
pub struct NowPlaying {
    station: Arc<Live<Station>>,
    audit: TitleAudit,
}

impl NowPlaying {
    pub fn new(station: Arc<Live<Station>>, audit: TitleAudit) -> NowPlaying {
        NowPlaying { station, audit }
    }

    /// Sets the title to `raw`, cleaned ([`clean_title`]), on behalf of
    /// `who` (an address, "socket (pid N)", "mqtt"…), and audits it when
    /// it changed. Returns the title in force. Any thread may call it.
    pub fn set(&self, who: &str, raw: &str) -> String {
        let title = clean_title(raw);
        let mut old = None;
        if self.station.get().title != title {
            self.station
                .update(|s| old = Some(std::mem::replace(&mut s.title, title.clone())));
        }
        if let Some(old) = old.filter(|o| *o != title) {
            (self.audit)(who, &old, &title);
        }
        title
    }

    /// The title in force.
    pub fn get(&self) -> String {
        self.station.get().title.clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn an_icecast_target_takes_turns_of_at_most_four_frames_and_never_makes_the_loop_gather_more() {
        let ms = Duration::from_millis;
        assert_eq!(gather(Gather::Idle, false), Gather::Idle);
        assert_eq!(gather(Gather::Idle, true), Gather::Every(OUTPUT_TURN));
        assert_eq!(gather(Gather::Every(ms(48)), true), Gather::Every(ms(48)));
        assert_eq!(gather(Gather::Every(ms(192)), true), Gather::Every(OUTPUT_TURN));
        assert_eq!(gather(Gather::Every(ms(192)), false), Gather::Every(ms(192)));
        assert_eq!(gather(Gather::No, true), Gather::No);
        assert_eq!(gather(Gather::No, false), Gather::No);
    }

    #[test]
    fn titles_are_one_clean_line_of_at_most_200_characters_with_utf8_kept() {
        assert_eq!(clean_title("  Side B  "), "Side B");
        assert_eq!(clean_title("Don't stop; go on"), "Don’t stop, go on");
        assert_eq!(clean_title("a\r\nb\t\tc\u{0}d"), "a b c d");
        assert_eq!(clean_title("Björk – Jóga 🎵"), "Björk – Jóga 🎵");
        let long = "é".repeat(300);
        assert_eq!(clean_title(&long), "é".repeat(MAX_TITLE_CHARS));
        assert_eq!(clean_title(""), "");
        // Nothing cleaned can end the ICY block early.
        let block = crate::http::icy::metadata_block(&clean_title("x';StreamTitle='evil"));
        let text = String::from_utf8_lossy(&block[1..]);
        assert_eq!(text.trim_end_matches('\0'), "StreamTitle='x’,StreamTitle=’evil';");
    }

    /// A `NowPlaying` over `station` whose audit lines ("who: old → new")
    /// are kept.
    pub(crate) fn recording(station: Station) -> (NowPlaying, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let now = NowPlaying::new(
            Arc::new(Live::new(station)),
            Arc::new(move |who: &str, old: &str, new: &str| {
                l.lock().expect("log").push(format!("{who}: {old} → {new}"))
            }),
        );
        (now, log)
    }

    #[test]
    fn a_new_title_is_set_in_place_and_audited_once_and_the_rest_of_the_station_is_kept() {
        let (now, log) = recording(Station {
            name: "Hall".into(),
            ..Station::default()
        });
        let station = now.station.clone();
        assert_eq!(now.set("10.0.0.2", " Side B\n"), "Side B");
        assert_eq!(now.set("10.0.0.2", "Side B"), "Side B");
        assert_eq!(station.get().name, "Hall");
        assert_eq!(now.get(), "Side B");
        assert_eq!(*log.lock().expect("log"), ["10.0.0.2: Live → Side B"]);
    }
}
