//! A Debian `mosquitto` broker on 127.0.0.1 and `mosquitto_sub` /
//! `mosquitto_pub` as Home Assistant's side, for the MQTT tests. The
//! broker keeps nothing on disk: a restart forgets every retained message.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::icecast::free_port;
use super::wait_for;

/// A mosquitto process on 127.0.0.1, killed on drop.
pub struct Broker {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// `user:password` pairs the broker requires (anonymous when empty).
    users: Vec<(String, String)>,
}

impl Broker {
    /// Starts an anonymous broker and waits until it accepts connections.
    pub fn start() -> Broker {
        Self::start_with_users(&[])
    }

    /// Starts a broker that lets in only `users`.
    pub fn start_with_users(users: &[(&str, &str)]) -> Broker {
        let mut b = Broker {
            dir: tempfile::tempdir().expect("tmp"),
            port: free_port(),
            child: None,
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
        };
        b.spawn();
        b
    }

    fn config(&self) -> PathBuf {
        let d = self.dir.path();
        let mut text = format!("listener {} 127.0.0.1\n", self.port);
        if self.users.is_empty() {
            text.push_str("allow_anonymous true\n");
        } else {
            let file = d.join("passwd");
            let _ = std::fs::remove_file(&file);
            for (user, password) in &self.users {
                let ok = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .status()
                    .expect("mosquitto_passwd (apt-get install mosquitto)");
                assert!(ok.success());
            }
            text.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
        }
        // As root, mosquitto would become user "mosquitto", who cannot
        // read this directory.
        if super::icecast::is_root() {
            text.push_str("user root\n");
        }
        let path = d.join("mosquitto.conf");
        std::fs::write(&path, text).expect("mosquitto.conf");
        path
    }

    /// Starts mosquitto (again, on the same port) and waits for it.
    pub fn spawn(&mut self) {
        let config = self.config();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (apt-get install mosquitto)");
        self.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok()),
            "mosquitto did not listen on {addr}"
        );
    }

    /// SIGKILL: the broker vanishes, its retained messages with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mosquitto_pub` one message.
    pub fn publish(&self, topic: &str, payload: &str) {
        let ok = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ])
            .status()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(ok.success(), "mosquitto_pub failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message a subscriber received, and when.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub topic: String,
    pub payload: String,
}

/// `mosquitto_sub -v -t '#'`: every message on the broker, timestamped as
/// it arrives.
pub struct Subscriber {
    child: Child,
    got: Arc<Mutex<Vec<Received>>>,
    reader: Option<JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(broker: &Broker) -> Subscriber {
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
            ])
            .args(["-q", "1", "-v", "-t", "#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let out = child.stdout.take().expect("stdout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (topic, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                g.lock().expect("got").push(Received {
                    at: Instant::now(),
                    topic: topic.to_string(),
                    payload: payload.to_string(),
                });
            }
        });
        // Subscribed once the broker has it: a retained probe comes back.
        let probe = format!("test/probe/{}", std::process::id());
        let s = Subscriber {
            child,
            got,
            reader: Some(reader),
        };
        assert!(
            wait_for(Duration::from_secs(10), || {
                broker.publish(&probe, "ready");
                wait_for(Duration::from_millis(200), || s.first(&probe, |_| true).is_some())
            }),
            "mosquitto_sub did not subscribe"
        );
        s
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().expect("got").clone()
    }

    /// The first message on `topic` whose payload passes `want`.
    pub fn first(&self, topic: &str, want: impl Fn(&str) -> bool) -> Option<Received> {
        self.all().into_iter().find(|r| r.topic == topic && want(&r.payload))
    }

    /// The first such message at or after `since`, waiting up to `timeout`.
    pub fn wait(
        &self,
        topic: &str,
        since: Instant,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<Received> {
        let mut found = None;
        wait_for(timeout, || {
            found = self
                .all()
                .into_iter()
                .find(|r| r.at >= since && r.topic == topic && want(&r.payload));
            found.is_some()
        });
        found
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
