//! Program detection's test rig: a real ffmpeg producer writing hum (and,
//! for a while, a tone over it) into Tower's socket input, and a reader of
//! the status page's `/events` stream that timestamps every level event.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The hum's amplitude: a 50 Hz sine peaking at −60 dBFS (−63 dBFS RMS).
pub const HUM: f64 = 0.001;
/// The tone's amplitude: 440 Hz peaking at −12 dBFS.
pub const TONE: f64 = 0.25;

/// A Tower whose input is a socket in a fresh directory (grace 0.5 s,
/// hold 2 s, no LEDs), with `extra` settings; the socket's path, and the
/// directory to keep.
pub fn socket_tower(extra: &[(&str, &str)]) -> (super::Tower, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("pcm.sock");
    let input = format!("unix:{}", socket.display());
    let mut env = vec![
        ("TOWER_INPUT", input.as_str()),
        ("TOWER_PCM_GRACE_SEC", "0.5"),
        ("TOWER_GPIO_ENABLED", "false"),
        ("TOWER_PROGRAM_HOLD_S", "2"),
    ];
    env.extend_from_slice(extra);
    (super::Tower::start(&[], &env), socket, dir)
}

/// `ffmpeg -re` writing `seconds` of hum into `socket`, with the tone
/// over it from `tone.0` to `tone.1` seconds of its stream.
pub struct Producer(Child);

impl Producer {
    pub fn start(socket: &Path, seconds: f64, tone: (f64, f64)) -> Producer {
        let channel = format!(
            "{HUM}*sin(2*PI*50*t)+{TONE}*sin(2*PI*440*t)*between(t\\,{}\\,{})",
            tone.0, tone.1
        );
        let child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-nostats",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("aevalsrc=exprs={channel}|{channel}:s=48000"))
            .args(["-t", &seconds.to_string(), "-f", "s16le", "-ar", "48000", "-ac", "2"])
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg runs");
        Producer(child)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `level` event of `/events`, and when it arrived.
#[derive(Debug, Clone)]
pub struct LevelEvent {
    pub at: Instant,
    /// The louder channel's RMS over ~100 ms, dBFS.
    pub rms_dbfs: f64,
    /// `program` or `idle`.
    pub program: String,
    /// `live`, `grace` or `fallback`.
    pub input: String,
}

/// Reads `/events` as a status page does, keeping every level event.
pub struct Events {
    stream: TcpStream,
    got: Arc<Mutex<Vec<LevelEvent>>>,
    reader: Option<JoinHandle<()>>,
}

impl Events {
    pub fn connect(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).expect("connect");
        write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let read = stream.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut event = String::new();
            for line in BufReader::new(read).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_string();
                } else if let Some(data) = line.strip_prefix("data: ")
                    && event == "level"
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                {
                    let rms = v["rms_dbfs"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_f64()).fold(f64::MIN, f64::max))
                        .unwrap_or(f64::MIN);
                    g.lock().expect("events").push(LevelEvent {
                        at: Instant::now(),
                        rms_dbfs: rms,
                        program: v["program"].as_str().unwrap_or_default().to_string(),
                        input: v["state"].as_str().unwrap_or_default().to_string(),
                    });
                }
            }
        });
        Events {
            stream,
            got,
            reader: Some(reader),
        }
    }

    pub fn all(&self) -> Vec<LevelEvent> {
        self.got.lock().expect("events").clone()
    }

    /// The first event at or after `since` that passes `want`, waiting up
    /// to `timeout` for it.
    pub fn wait(&self, since: Instant, timeout: Duration, want: impl Fn(&LevelEvent) -> bool) -> Option<LevelEvent> {
        let mut found = None;
        super::wait_for(timeout, || {
            found = self.all().into_iter().find(|e| e.at >= since && want(e));
            found.is_some()
        });
        found
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
