//! Speaking to the settings API as a script or a browser would, and an
//! ICY listener that notes every title it is sent.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{HttpResponse, Jack, Tower, write_alsa_conf, write_tone_raw};

/// The admin password the test stations start with (plain in the file).
pub const PASSWORD: &str = "correct horse battery";

/// `Authorization: Basic …` for user admin and `password`.
pub fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        tower::broadcast::icecast::base64(format!("admin:{password}").as_bytes())
    )
}

/// A request from `from` (a loopback address of the caller's choice: the
/// throttle counts addresses) with `headers` and `body`.
pub fn request_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let stream = match from {
        Some(ip) => connect_from(ip, addr),
        None => TcpStream::connect(addr),
    };
    let Ok(mut s) = stream else {
        return HttpResponse {
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
    };
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    if s.write_all(text.as_bytes()).is_err() {
        return HttpResponse {
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
    }
    super::read_response(&mut s)
}

/// A TCP connection to `addr` from the local address `ip`.
pub fn connect_from(ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let (IpAddr::V4(local), SocketAddr::V4(remote)) = (ip, addr) else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        fd.as_raw_fd_ref(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(local, 0)),
    )?;
    connect(fd.as_raw_fd_ref(), &SockaddrIn::from(remote))?;
    // SAFETY: `fd` is a connected stream socket we own.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

trait RawRef {
    fn as_raw_fd_ref(&self) -> std::os::fd::RawFd;
}

impl RawRef for std::os::fd::OwnedFd {
    fn as_raw_fd_ref(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

/// A JSON call with the admin password by HTTP Basic.
pub fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let auth = basic(PASSWORD);
    let r = request_from(
        None,
        addr,
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body,
    );
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
    )
}

/// A station for the settings tests: JACK-paced capture of `jackfile` (a
/// 1 kHz tone) with `jackfile2` (2 kHz) beside it, a configuration file
/// the owner wrote (with a comment, and the admin password in plain text)
/// plus `extra` TOML, and a short grace period.
pub struct Station {
    _serial: std::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub jack: Jack,
    pub tower: Tower,
    pub config: PathBuf,
}

/// The comment the owner wrote by hand, which every save must keep.
pub const HAND_COMMENT: &str = "# Written by hand: the kitchen turntable.";

pub fn station(extra: &str) -> Station {
    station_in(None, extra)
}

/// Like [`station`], with the configuration file in `config_dir` (a file
/// system the test mounted) instead of the temporary directory.
pub fn station_in(config_dir: Option<&Path>, extra: &str) -> Station {
    let serial = super::one_at_a_time();
    let dir = tempfile::tempdir().expect("tmp");
    let (one, two) = (dir.path().join("input.raw"), dir.path().join("input2.raw"));
    write_tone_raw(&one, 1000.0, 120.0);
    write_tone_raw(&two, 2000.0, 120.0);
    let conf = write_alsa_conf(dir.path(), &one);
    let mut alsa = std::fs::read_to_string(&conf).expect("conf");
    // Both named in ALSA's hints, so `tower devices` and the page list them.
    alsa.push_str(&format!(
        "pcm.jackfile2 {{ type file slave.pcm \"jackcap16\" file \"/dev/null\" infile \"{}\" format \"raw\" \
         hint {{ show on description \"Test input, 2 kHz\" }} }}\n\
         pcm.jackfile.hint {{ show on description \"Test input, 1 kHz\" }}\n",
        two.display()
    ));
    std::fs::write(&conf, alsa).expect("conf");
    let config = config_dir.unwrap_or(dir.path()).join("tower.toml");
    std::fs::write(
        &config,
        format!(
            "{HAND_COMMENT}\ndevice = \"jackfile\"\n\n[pcm]\ngrace_sec = 0.5\n\n[station]\nname = \"Tower\"\n\n\
             [admin]\npassword = \"{PASSWORD}\"\n{extra}"
        ),
    )
    .expect("config");
    let jack = Jack::start();
    let tower = Tower::start(
        &["--config", config.to_str().expect("utf8")],
        &[
            ("ALSA_CONFIG_PATH", conf.to_str().expect("utf8")),
            ("JACK_DEFAULT_SERVER", jack.name.as_str()),
            ("JACK_NO_START_SERVER", "1"),
        ],
    );
    Station {
        _serial: serial,
        dir,
        jack,
        tower,
        config,
    }
}

/// What an ICY listener heard: each title with when it arrived.
#[derive(Default)]
struct Heard {
    titles: Vec<(Instant, String)>,
    audio_bytes: u64,
    ended: bool,
}

/// A listener that asks for ICY metadata and notes every title.
pub struct IcyListener {
    heard: Arc<Mutex<Heard>>,
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl IcyListener {
    pub fn connect(addr: SocketAddr) -> IcyListener {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(format!("GET /stream HTTP/1.1\r\nHost: {addr}\r\nIcy-MetaData: 1\r\n\r\n").as_bytes())
            .expect("request");
        let heard = Arc::new(Mutex::new(Heard::default()));
        let h = heard.clone();
        let mut reader = stream.try_clone().expect("clone");
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let mut data = Vec::new();
            let mut metaint = None;
            let mut until_block = 0usize;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                data.extend_from_slice(&buf[..n]);
                if metaint.is_none() {
                    let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..p]).to_lowercase();
                    let m: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("icy-metaint:"))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("icy-metaint");
                    metaint = Some(m);
                    until_block = m;
                    data.drain(..p + 4);
                }
                loop {
                    if until_block > 0 {
                        let take = until_block.min(data.len());
                        data.drain(..take);
                        until_block -= take;
                        h.lock().expect("heard").audio_bytes += take as u64;
                        if until_block > 0 {
                            break;
                        }
                    }
                    let Some(&len) = data.first() else { break };
                    let block = 1 + usize::from(len) * 16;
                    if data.len() < block {
                        break;
                    }
                    let text = String::from_utf8_lossy(&data[1..block])
                        .trim_end_matches('\0')
                        .to_string();
                    if let Some(title) = text.strip_prefix("StreamTitle='").and_then(|t| t.strip_suffix("';")) {
                        h.lock()
                            .expect("heard")
                            .titles
                            .push((Instant::now(), title.to_string()));
                    }
                    data.drain(..block);
                    until_block = metaint.unwrap_or(16_000);
                }
            }
            h.lock().expect("heard").ended = true;
        });
        IcyListener {
            heard,
            stream,
            thread: Some(thread),
        }
    }

    /// When `title` first arrived.
    pub fn saw(&self, title: &str) -> Option<Instant> {
        let h = self.heard.lock().expect("heard");
        h.titles.iter().find(|(_, t)| t == title).map(|(at, _)| *at)
    }

    pub fn titles(&self) -> Vec<String> {
        self.heard
            .lock()
            .expect("heard")
            .titles
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }

    pub fn ended(&self) -> bool {
        self.heard.lock().expect("heard").ended
    }
}

impl Drop for IcyListener {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
