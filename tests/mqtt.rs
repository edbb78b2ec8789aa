//! MQTT for Home Assistant (issue 25) against a real broker: Debian's
//! `mosquitto` on loopback, `mosquitto_sub` playing Home Assistant, and a
//! real ffmpeg producer into the real `tower` binary's socket input.
//! Clauses: [D5], and [H3] for the listeners while the broker dies.
//!
//! Figures: `cargo test --test mqtt -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::{Broker, Subscriber};
use common::program::{Events, Producer};
use common::{Listener, Tower, wait_for};

fn tower(broker_url: &str, extra: &[(&str, &str)]) -> (Tower, std::path::PathBuf, tempfile::TempDir) {
    let mut env = vec![("TOWER_MQTT_URL", broker_url)];
    env.extend_from_slice(extra);
    common::program::socket_tower(&env)
}

/// `tower/<node>`, once Tower says it is connected.
fn base_topic(tower: &Tower) -> String {
    let mut base = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let m = &tower.status()["mqtt"];
            base = m["base_topic"].as_str().unwrap_or_default().to_string();
            m["state"] == "connected"
        }),
        "MQTT never connected: {}",
        tower.status()["mqtt"]
    );
    base
}

const CONFIGS: [(&str, &str); 6] = [
    ("binary_sensor", "program"),
    ("sensor", "level"),
    ("sensor", "listeners"),
    ("sensor", "encoder"),
    ("sensor", "input"),
    ("text", "title"),
];

/// Waits for every discovery config of `node` after `since`; checks that
/// each names its state topic and the availability topic.
fn discovery_configs(sub: &Subscriber, node: &str, base: &str, since: Instant) {
    for (component, object) in CONFIGS {
        let topic = format!("homeassistant/{component}/{node}/{object}/config");
        let got = sub
            .wait(&topic, since, Duration::from_secs(10), |_| true)
            .unwrap_or_else(|| panic!("no {topic}"));
        let config: serde_json::Value = serde_json::from_str(&got.payload).expect("JSON config");
        assert_eq!(config["state_topic"], format!("{base}/{object}"), "{topic}");
        assert_eq!(config["availability_topic"], format!("{base}/availability"), "{topic}");
        assert_eq!(config["device"]["name"], "Tower", "{topic}");
    }
}

#[test]
fn home_assistant_sees_tower_follows_program_sets_the_title_and_survives_a_broker_restart() {
    let mut broker = Broker::start();
    let sub = Subscriber::start(&broker);
    let (mut tower, socket, _dir) = tower(&broker.url(), &[]);
    let base = base_topic(&tower);
    let node = base.trim_start_matches("tower/").to_string();
    let t0 = Instant::now() - Duration::from_secs(30);

    // The discovery configs, retained, then the states and "online".
    discovery_configs(&sub, &node, &base, t0);
    let avail = format!("{base}/availability");
    assert!(
        sub.wait(&avail, t0, Duration::from_secs(5), |p| p == "online")
            .is_some()
    );
    assert!(
        sub.wait(&format!("{base}/program"), t0, Duration::from_secs(5), |p| p == "OFF")
            .is_some()
    );

    // Program and idle follow the producer: hum, the tone from 4 s to 8 s.
    let events = Events::connect(tower.addr);
    let listener = Listener::connect(tower.addr);
    let _producer = Producer::start(&socket, 40.0, (4.0, 8.0));
    let tone = events
        .wait(Instant::now(), Duration::from_secs(15), |e| e.rms_dbfs > -30.0)
        .expect("the tone arrives");
    let on = sub
        .wait(&format!("{base}/program"), tone.at, Duration::from_secs(3), |p| {
            p == "ON"
        })
        .expect("program ON over MQTT");
    let to_on = on.at.saturating_duration_since(tone.at);
    assert!(to_on <= Duration::from_millis(1200), "ON {to_on:?} after the tone");
    let stop = events
        .wait(on.at, Duration::from_secs(10), |e| e.rms_dbfs < -50.0)
        .expect("the tone stops");
    let off = sub
        .wait(&format!("{base}/program"), stop.at, Duration::from_secs(5), |p| {
            p == "OFF"
        })
        .expect("program OFF over MQTT");
    let to_off = off.at.saturating_duration_since(stop.at);
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(3500)).contains(&to_off),
        "OFF {to_off:?} after the tone stopped (hold 2 s)"
    );

    // The title command is applied, and its state published back.
    let asked = Instant::now();
    broker.publish(&format!("{base}/title/set"), "Side B; it's live");
    let title = sub
        .wait(&format!("{base}/title"), asked, Duration::from_secs(3), |p| {
            p == "Side B, it’s live"
        })
        .expect("the title state");
    // Cleaned as every title is (clean_title): nothing can end the ICY block.
    assert_eq!(tower.status()["station"]["title"], "Side B, it’s live");
    assert_eq!(tower.status()["mqtt"]["titles_received"], 1);

    // The broker dies for 2 s: listeners hear no gap; Tower reconnects and
    // publishes everything again (the new broker has nothing retained).
    let before = Instant::now();
    let usual_gap = listener.max_gap_since(before - Duration::from_secs(3));
    broker.kill();
    drop(sub);
    assert!(wait_for(Duration::from_secs(5), || tower.status()["mqtt"]["state"] == "down"));
    let down = tower.status()["mqtt"].clone();
    assert!(
        down["last_error"].as_str().unwrap_or_default().contains("broker"),
        "{down}"
    );
    std::thread::sleep(Duration::from_secs(2));
    broker.spawn();
    let restarted = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || tower.status()["mqtt"]["state"]
            == "connected"),
        "no reconnection: {}",
        tower.status()["mqtt"]
    );
    let reconnect = restarted.elapsed();
    // Everything is there again, retained, for a subscriber that comes now.
    let sub = Subscriber::start(&broker);
    discovery_configs(&sub, &node, &base, restarted);
    assert!(
        sub.wait(&avail, restarted, Duration::from_secs(5), |p| p == "online")
            .is_some()
    );
    assert!(
        sub.wait(&format!("{base}/title"), restarted, Duration::from_secs(5), |p| p
            == "Side B, it’s live")
            .is_some()
    );
    let mqtt = tower.status()["mqtt"].clone();
    assert_eq!(mqtt["connects"], 2, "{mqtt}");
    let outage = mqtt["last_outage_s"].as_f64().expect("outage measured");
    let gap = listener.max_gap_since(before);
    assert!(
        gap < Duration::from_millis(400),
        "listeners heard a gap of {gap:?} (usually {usual_gap:?})"
    );
    assert!(listener.ended().is_none(), "the listener was cut off");

    // Tower killed: the broker publishes its last will.
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tower.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let will = sub
        .wait(&avail, killed, Duration::from_secs(5), |p| p == "offline")
        .expect("the will: offline");
    let _ = tower.wait_exit(Duration::from_secs(2));

    println!(
        "mqtt: tone start to program ON {} ms; tone stop to OFF {} ms (hold 2000 ms); title command to its state {} ms; \
         broker back to Tower connected {} ms (Tower's outage, lost to CONNACK: {outage:.2} s, broker down 2 s); \
         listeners' largest gap between frames meanwhile {} ms (in the 3 s before: {} ms); SIGKILL to the will {} ms",
        to_on.as_millis(),
        to_off.as_millis(),
        title.at.saturating_duration_since(asked).as_millis(),
        reconnect.as_millis(),
        gap.as_millis(),
        usual_gap.as_millis(),
        will.at.saturating_duration_since(killed).as_millis(),
    );
}

#[test]
fn a_refusing_broker_is_shown_and_retried_and_the_password_never_appears() {
    let broker = Broker::start_with_users(&[("tower", "right-password")]);
    let (tower, _socket, _dir) = tower(
        &broker.url(),
        &[("TOWER_MQTT_USER", "tower"), ("TOWER_MQTT_PASSWORD", "wrong-hunter2")],
    );
    assert!(
        wait_for(Duration::from_secs(10), || tower.status()["mqtt"]["state"] == "refused"),
        "{}",
        tower.status()["mqtt"]
    );
    let status = tower.get("/status").body_text();
    assert!(
        status.contains("mqtt.password"),
        "the page says what to check: {status}"
    );
    let metrics = tower.get("/metrics").body_text();
    assert!(metrics.contains("tower_mqtt_state{state=\"refused\"} 1"), "{metrics}");
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_tower"))
        .arg("--print-config")
        .env("TOWER_MQTT_URL", broker.url())
        .env("TOWER_MQTT_USER", "tower")
        .env("TOWER_MQTT_PASSWORD", "wrong-hunter2")
        .output()
        .expect("print-config");
    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(printed.contains("[mqtt]"), "{printed}");
    for text in [status, metrics, tower.log_text(), printed] {
        assert!(!text.contains("hunter2"), "the broker password shows: {text}");
    }
    // One warning for the episode, not one per attempt.
    let warnings = tower.log_lines().iter().filter(|l| l.contains("refused Tower")).count();
    assert_eq!(warnings, 1);
}

#[test]
fn a_broker_that_is_down_at_start_is_found_when_it_comes_up() {
    let mut broker = Broker::start();
    broker.kill();
    let (tower, _socket, _dir) = tower(&broker.url(), &[]);
    assert!(wait_for(Duration::from_secs(5), || tower.status()["mqtt"]["state"] == "down"));
    std::thread::sleep(Duration::from_secs(1));
    broker.spawn();
    let up = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || tower.status()["mqtt"]["state"]
            == "connected"),
        "{}",
        tower.status()["mqtt"]
    );
    println!(
        "mqtt: broker up at last, connected {} ms later",
        up.elapsed().as_millis()
    );
    let logged = tower
        .log_lines()
        .iter()
        .filter(|l| l.contains("cannot reach the broker"))
        .count();
    assert_eq!(logged, 1, "one warning for the outage");
}
