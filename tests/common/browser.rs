//! A minimal W3C WebDriver client for chromedriver and Debian's headless
//! Chromium: std and serde_json only, one HTTP/1.1 request per connection.
//! chromedriver says `Connection: close` but keeps the socket open, so
//! bodies are read by their `Content-Length`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C element reference key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Flags for headless Chromium on a machine with no sound card; `<audio>`
/// plays (and `currentTime` advances) with these alone.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    "--window-size=1024,900",
];

fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("end of stream before the headers ended".into());
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or("bad status line")?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or("no Content-Length")?;
    let mut body = raw[split + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("end of stream in the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((status, body))
}

/// Sends a WebDriver command; its `value`, or the error.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let (status, b) = request(port, method, path, body)?;
    let v: Value = serde_json::from_slice(&b).map_err(|e| format!("json: {e}"))?;
    if status != 200 {
        return Err(format!("{method} {path} -> {status}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}

/// A running chromedriver, killed on drop.
pub struct Driver {
    port: u16,
    child: Child,
}

impl Driver {
    pub fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let d = Driver { port, child };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if call(port, "GET", "/status", None).is_ok_and(|v| v["ready"] == json!(true)) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chromedriver not ready after 20 s");
    }

    pub fn session(&self) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": CHROMIUM_ARGS}
        }}});
        let v = call(self.port, "POST", "/session", Some(&caps)).expect("new Chromium session");
        Session {
            port: self.port,
            id: v["sessionId"].as_str().expect("sessionId").to_string(),
            browser_pid: v["capabilities"]["goog:processID"].as_u64(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session, closed on drop (Chromium outlives a killed driver,
/// so its process is killed if closing fails).
pub struct Session {
    port: u16,
    id: String,
    browser_pid: Option<u64>,
}

impl Session {
    fn cmd(&self, method: &str, sub: &str, body: Option<Value>) -> Value {
        call(self.port, method, &format!("/session/{}{sub}", self.id), body.as_ref())
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` as a function body (`return …`).
    pub fn exec(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// The viewport as PNG bytes.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("base64 screenshot"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if call(self.port, "DELETE", &format!("/session/{}", self.id), None).is_err()
            && let Some(pid) = self.browser_pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
