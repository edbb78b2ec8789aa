//! What Tower tells Home Assistant, as MQTT messages (pure: no network, no
//! threads; time is passed in). The "mqtt" thread sends what
//! [`Publisher`] returns.
//!
//! Topics, for a node named after the host (`tower/<node>/…`):
//!
//! | topic | payload | entity |
//! |---|---|---|
//! | `availability` | `online` / `offline` (the last will) | all |
//! | `program` | `ON` / `OFF` | binary sensor "Program playing" |
//! | `level` | dBFS, one decimal | sensor "Input level" |
//! | `listeners` | a count | sensor "Listeners" |
//! | `encoder` | `RUNNING`, … | sensor "Encoder" |
//! | `input` | the device, `socket …`, or `fallback (tone)` | sensor "Input" |
//! | `title` | the station title | text "Title" |
//! | `title/set` | a new title (Tower subscribes) | |
//!
//! Each entity's discovery config is retained on
//! `<prefix>/<component>/<node>/<object>/config`, with a `device` block so
//! they group under one device, and the availability topic. States are
//! retained too, so Home Assistant has them after its own restart.

use std::time::{Duration, Instant};

use serde_json::json;

/// The level is sent at most this often (it moves all the time)...
pub const LEVEL_EVERY: Duration = Duration::from_secs(10);
/// ...and only when it moved at least this much.
pub const LEVEL_STEP_DB: f32 = 0.5;

/// What the entities show, read from Tower's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    pub program: bool,
    pub level_dbfs: f32,
    pub listeners: usize,
    pub encoder: String,
    pub input: String,
    pub title: String,
    /// The station's name: the device's name in Home Assistant.
    pub station: String,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

impl Message {
    fn retained(topic: &str, payload: impl Into<String>) -> Message {
        Message {
            topic: topic.to_string(),
            payload: payload.into(),
            retain: true,
        }
    }
}

/// The topics of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    pub node: String,
    pub base: String,
    pub availability: String,
    pub program: String,
    pub level: String,
    pub listeners: String,
    pub encoder: String,
    pub input: String,
    pub title: String,
    pub title_set: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Topics {
        let base = format!("tower/{node}");
        let t = |leaf: &str| format!("{base}/{leaf}");
        Topics {
            prefix: prefix.to_string(),
            node: node.to_string(),
            availability: t("availability"),
            program: t("program"),
            level: t("level"),
            listeners: t("listeners"),
            encoder: t("encoder"),
            input: t("input"),
            title: t("title"),
            title_set: t("title/set"),
            base,
        }
    }

    /// Where the discovery config of `object` (a `component`) goes.
    pub fn config(&self, component: &str, object: &str) -> String {
        format!("{}/{component}/{}/{object}/config", self.prefix, self.node)
    }
}

/// A node id from the host name: lower-case letters, digits and `_`.
pub fn node_id(hostname: &str) -> String {
    let mut id: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    id = id.trim_matches('_').to_string();
    id.truncate(48);
    if id.is_empty() { "tower".into() } else { id }
}

/// The discovery configs for `station`'s device.
pub fn configs(t: &Topics, station: &str) -> Vec<Message> {
    let device = json!({
        "identifiers": [format!("tower_{}", t.node)],
        "name": station,
        "manufacturer": "Tower",
        "model": "LAN radio station",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let entity = |component: &str, object: &str, name: &str, state: &str, extra: serde_json::Value| {
        let mut c = json!({
            "name": name,
            "unique_id": format!("tower_{}_{object}", t.node),
            "state_topic": state,
            "availability_topic": t.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        Message::retained(&t.config(component, object), c.to_string())
    };
    vec![
        entity(
            "binary_sensor",
            "program",
            "Program playing",
            &t.program,
            json!({ "payload_on": "ON", "payload_off": "OFF", "device_class": "sound" }),
        ),
        entity(
            "sensor",
            "level",
            "Input level",
            &t.level,
            json!({ "unit_of_measurement": "dBFS", "state_class": "measurement",
                    "suggested_display_precision": 1, "icon": "mdi:waveform" }),
        ),
        entity(
            "sensor",
            "listeners",
            "Listeners",
            &t.listeners,
            json!({ "state_class": "measurement", "icon": "mdi:account-multiple" }),
        ),
        entity("sensor", "encoder", "Encoder", &t.encoder, json!({ "icon": "mdi:cog" })),
        entity(
            "sensor",
            "input",
            "Input",
            &t.input,
            json!({ "icon": "mdi:audio-input-rca" }),
        ),
        entity(
            "text",
            "title",
            "Title",
            &t.title,
            json!({ "command_topic": t.title_set, "max": 200, "icon": "mdi:music" }),
        ),
    ]
}

/// Decides what to send: everything on (re)connect, then what changed.
#[derive(Debug, Clone)]
pub struct Publisher {
    topics: Topics,
    sent: Option<Readings>,
    level_at: Option<Instant>,
}

fn on_off(program: bool) -> &'static str {
    if program { "ON" } else { "OFF" }
}

impl Publisher {
    pub fn new(topics: Topics) -> Publisher {
        Publisher {
            topics,
            sent: None,
            level_at: None,
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// A new connection: the configs, every state, then "online".
    pub fn connected(&mut self, r: &Readings, now: Instant) -> Vec<Message> {
        self.sent = None;
        let mut out = configs(&self.topics, &r.station);
        out.extend(self.changes(r, now));
        out.push(Message::retained(&self.topics.availability, "online"));
        out
    }

    /// What changed since the last call (program at once; the level at
    /// most every [`LEVEL_EVERY`]).
    pub fn changes(&mut self, r: &Readings, now: Instant) -> Vec<Message> {
        let t = &self.topics;
        let old = self.sent.as_ref();
        let mut out = Vec::new();
        if old.is_some_and(|o| o.station != r.station) {
            out.extend(configs(t, &r.station));
        }
        let mut text = |topic: &str, new: &str, old: Option<&str>| {
            if old != Some(new) {
                out.push(Message::retained(topic, new));
            }
        };
        text(&t.program, on_off(r.program), old.map(|o| on_off(o.program)));
        text(
            &t.listeners,
            &r.listeners.to_string(),
            old.map(|o| o.listeners.to_string()).as_deref(),
        );
        text(&t.encoder, &r.encoder, old.map(|o| o.encoder.as_str()));
        text(&t.input, &r.input, old.map(|o| o.input.as_str()));
        text(&t.title, &r.title, old.map(|o| o.title.as_str()));
        let level_due = match (old, self.level_at) {
            (Some(o), Some(at)) => {
                now.saturating_duration_since(at) >= LEVEL_EVERY && (o.level_dbfs - r.level_dbfs).abs() >= LEVEL_STEP_DB
            }
            _ => true,
        };
        let mut sent = r.clone();
        if level_due {
            out.push(Message::retained(&t.level, format!("{:.1}", r.level_dbfs)));
            self.level_at = Some(now);
        } else if let Some(o) = old {
            sent.level_dbfs = o.level_dbfs;
        }
        self.sent = Some(sent);
        out
    }

    /// The last will, and what a clean stop sends.
    pub fn offline(&self) -> Message {
        Message::retained(&self.topics.availability, "offline")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            program: false,
            level_dbfs: -63.04,
            listeners: 2,
            encoder: "RUNNING".into(),
            input: "plughw:CARD=Device,DEV=0".into(),
            title: "Live".into(),
            station: "Kitchen".into(),
        }
    }

    #[test]
    fn node_ids_come_from_the_host_name() {
        assert_eq!(node_id("Tower-Pi.local\n"), "tower_pi_local");
        assert_eq!(node_id("--"), "tower");
        assert_eq!(node_id(""), "tower");
    }

    #[test]
    fn discovery_configs_are_retained_and_name_their_topics_and_device() {
        let t = Topics::new("homeassistant", "kitchen");
        let all = configs(&t, "Kitchen Radio");
        let topics: Vec<&str> = all.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/kitchen/program/config",
                "homeassistant/sensor/kitchen/level/config",
                "homeassistant/sensor/kitchen/listeners/config",
                "homeassistant/sensor/kitchen/encoder/config",
                "homeassistant/sensor/kitchen/input/config",
                "homeassistant/text/kitchen/title/config",
            ]
        );
        assert!(all.iter().all(|m| m.retain));
        let program: serde_json::Value = serde_json::from_str(&all[0].payload).expect("json");
        assert_eq!(program["state_topic"], "tower/kitchen/program");
        assert_eq!(program["payload_on"], "ON");
        assert_eq!(program["availability_topic"], "tower/kitchen/availability");
        assert_eq!(program["unique_id"], "tower_kitchen_program");
        assert_eq!(program["device"]["name"], "Kitchen Radio");
        assert_eq!(program["device"]["identifiers"][0], "tower_kitchen");
        let title: serde_json::Value = serde_json::from_str(&all[5].payload).expect("json");
        assert_eq!(title["command_topic"], "tower/kitchen/title/set");
        let level: serde_json::Value = serde_json::from_str(&all[1].payload).expect("json");
        assert_eq!(level["unit_of_measurement"], "dBFS");
    }

    #[test]
    fn a_connection_gets_everything_then_only_changes() {
        let mut p = Publisher::new(Topics::new("ha", "n"));
        let t0 = Instant::now();
        let first = p.connected(&readings(), t0);
        assert_eq!(first.len(), 6 + 6 + 1);
        assert_eq!(first.last().map(|m| m.payload.as_str()), Some("online"));
        assert!(first.contains(&Message::retained("tower/n/level", "-63.0")));
        assert!(p.changes(&readings(), t0).is_empty(), "nothing changed");
        let mut r = readings();
        r.program = true;
        r.level_dbfs = -12.0;
        r.title = "Side B".into();
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            p.changes(&r, now),
            [
                Message::retained("tower/n/program", "ON"),
                Message::retained("tower/n/title", "Side B"),
            ],
            "program at once; the level waits"
        );
        let later = t0 + LEVEL_EVERY;
        assert_eq!(p.changes(&r, later), [Message::retained("tower/n/level", "-12.0")]);
        r.station = "Garden".into();
        let renamed = p.changes(&r, later);
        assert_eq!(renamed.len(), 6, "the configs again, with the new device name");
        // A reconnection sends everything again.
        assert_eq!(p.connected(&r, later).len(), 13);
        assert_eq!(p.offline(), Message::retained("tower/n/availability", "offline"));
    }
}
