//! Test support: the real `tower` binary, real sockets, real decoders.
//!
//! Each test starts its own Tower on 127.0.0.1 port 0 (the port is read from
//! its log) and, where needed, its own JACK dummy server under a unique
//! name, so tests can run in parallel.

#![allow(dead_code)] // each test binary uses a different part of this

pub mod audio;
pub mod browser;
pub mod faults;
pub mod icecast;
pub mod mqtt;
pub mod netns;
pub mod program;
pub mod push;
pub mod settings;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tower::encoder::mp3::Packetizer;

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Resource limits for a tower process under test.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    nofile: Option<u64>,
    unprivileged: bool,
    /// `--listen`, if not 127.0.0.1:0.
    listen: Option<&'static str>,
}

/// A running `tower` process with its log captured.
pub struct Tower {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    log_thread: Option<JoinHandle<()>>,
}

impl Tower {
    /// Starts tower with `args` and `env` (plus --listen 127.0.0.1:0), and
    /// waits until it is listening.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Tower {
        Self::try_start(args, env).unwrap_or_else(|log| panic!("tower did not start:\n{log}"))
    }

    /// Like `start`; on failure returns the log.
    pub fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<Tower, String> {
        Self::try_start_limited(args, env, Limits::default())
    }

    /// Starts tower with its open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(args: &[&str], env: &[(&str, &str)], nofile: u64) -> Tower {
        Self::try_start_limited(
            args,
            env,
            Limits {
                nofile: Some(nofile),
                ..Limits::default()
            },
        )
        .unwrap_or_else(|log| panic!("tower did not start:\n{log}"))
    }

    /// Starts tower without the right to real-time priority: as `nobody`
    /// when the tests run as root, and with RLIMIT_RTPRIO 0 in any case.
    pub fn start_unprivileged(args: &[&str], env: &[(&str, &str)]) -> Tower {
        Self::try_start_limited(
            args,
            env,
            Limits {
                unprivileged: true,
                ..Limits::default()
            },
        )
        .unwrap_or_else(|log| panic!("tower did not start:\n{log}"))
    }

    /// Starts tower listening on `listen` (an address of a network the
    /// test made) instead of 127.0.0.1.
    pub fn start_on(listen: &'static str, args: &[&str], env: &[(&str, &str)]) -> Tower {
        Self::try_start_limited(
            args,
            env,
            Limits {
                listen: Some(listen),
                ..Limits::default()
            },
        )
        .unwrap_or_else(|log| panic!("tower did not start:\n{log}"))
    }

    /// Starts tower through `wrapper`, a command that ends by running the
    /// one given after it (`setpriv …`, `prlimit …`), so that the process
    /// is still Tower's (each wrapper execs).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Tower {
        Self::try_start_wrapped(wrapper, args, env, Limits::default())
            .unwrap_or_else(|log| panic!("tower did not start:\n{log}"))
    }

    fn try_start_limited(args: &[&str], env: &[(&str, &str)], limits: Limits) -> Result<Tower, String> {
        Self::try_start_wrapped(&[], args, env, limits)
    }

    fn try_start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        limits: Limits,
    ) -> Result<Tower, String> {
        let tower = env!("CARGO_BIN_EXE_tower");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(tower);
                c
            }
            None => Command::new(tower),
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if limits.nofile.is_some() || limits.unprivileged {
            use nix::sys::resource::{Resource, setrlimit};
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (setrlimit, setgroups,
            // setgid, setuid) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(n) = limits.nofile {
                        setrlimit(Resource::RLIMIT_NOFILE, n, n)?;
                    }
                    if limits.unprivileged {
                        setrlimit(Resource::RLIMIT_RTPRIO, 0, 0)?;
                        // nobody:nogroup
                        if root
                            && (libc::setgroups(0, std::ptr::null()) != 0
                                || libc::setgid(65534) != 0
                                || libc::setuid(65534) != 0)
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["--listen", limits.listen.unwrap_or("127.0.0.1:0")])
            .args(args);
        for (k, _) in std::env::vars() {
            let systemd = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"];
            if k.starts_with("TOWER_")
                || k == "ALSA_CONFIG_PATH"
                || k == "JACK_DEFAULT_SERVER"
                || systemd.contains(&k.as_str())
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let log_thread = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TOWER_TEST_LOG").is_some() {
                    eprintln!("[tower] {line}");
                }
                l.lock().expect("log").push(line);
            }
        });
        let mut tower = Tower {
            child: Some(child),
            addr: "127.0.0.1:0".parse().map_err(|_| "addr")?,
            log,
            log_thread: Some(log_thread),
        };
        let mut found = None;
        let up = wait_for(Duration::from_secs(20), || {
            found = tower.log_lines().iter().find_map(|l| {
                let rest = l.split("listening on http://").nth(1)?;
                rest.split("/stream").next()?.parse::<SocketAddr>().ok()
            });
            found.is_some() || tower.exited()
        });
        match found {
            Some(addr) if up => {
                tower.addr = addr;
                Ok(tower)
            }
            _ => Err(tower.log_text()),
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// The addresses Tower said it listens on, in order (one per start).
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.log_lines()
            .iter()
            .filter_map(|l| {
                let rest = l.split("listening on http://").nth(1)?;
                rest.split("/stream").next()?.parse::<SocketAddr>().ok()
            })
            .collect()
    }

    /// After a restart asked for on the settings page (the process starts
    /// itself again, same pid): waits until it listens again (a listening
    /// line beyond the first `before`) and takes its new address.
    pub fn wait_restarted(&mut self, before: usize, timeout: Duration) -> bool {
        let mut found = None;
        let ok = wait_for(timeout, || {
            found = self.listening().get(before).copied();
            found.is_some()
        });
        if let Some(addr) = found {
            self.addr = addr;
        }
        ok
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long
    /// the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let took = t0.elapsed();
                if let Some(t) = self.log_thread.take() {
                    let _ = t.join();
                }
                return (status, took);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tower did not exit within 10 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its
    /// status, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                if let Some(t) = self.log_thread.take() {
                    let _ = t.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path)
    }

    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/status");
        assert_eq!(r.status, 200, "{}", r.body_text());
        serde_json::from_slice(&r.body).expect("status is JSON")
    }

    /// The ffmpeg child's pid, once the encoder runs.
    pub fn ffmpeg_pid(&self) -> i32 {
        let mut pid = 0;
        assert!(
            wait_for(Duration::from_secs(10), || {
                pid = self.status()["encoder"]["pid"].as_i64().unwrap_or(0) as i32;
                pid > 0
            }),
            "no ffmpeg pid in /status"
        );
        pid
    }
}

impl Drop for Tower {
    fn drop(&mut self) {
        // SIGTERM first: Tower then closes its JACK client and ffmpeg
        // cleanly, leaving nothing behind in /dev/shm.
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends a raw request and reads the whole response (Connection: close).
/// A refused connection gives status 0.
pub fn http_raw(addr: SocketAddr, request: &str) -> HttpResponse {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return HttpResponse {
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    read_response(&mut s)
}

/// Reads a whole response (the server closes the connection).
pub fn read_response(s: &mut TcpStream) -> HttpResponse {
    let mut data = Vec::new();
    let _ = s.read_to_end(&mut data);
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]).into_owned();
    let body = data.get(split + 4..).unwrap_or(&[]).to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    HttpResponse { status, head, body }
}

/// The variable and token that enable Tower's test hooks.
pub const HOOKS: (&str, &str) = ("TOWER_TEST_HOOKS", "tower-integration-tests");

/// Asks Tower's test hooks (enabled with [`HOOKS`]) to stall `thread`
/// ("capture" or "pump") for `ms` milliseconds.
pub fn stall(addr: SocketAddr, thread: &str, ms: u64) -> HttpResponse {
    http_raw(
        addr,
        &format!(
            "POST /test/stall?thread={thread}&ms={ms} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            HOOKS.1
        ),
    )
}

/// A Tower that streams the fallback (no capture device) and pushes to an
/// Icecast server that is not there (a port nobody listens on), with hooks.
pub fn tower_with_unreachable_icecast(dir: &Path) -> Tower {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let conf = dir.join("tower.toml");
    std::fs::write(
        &conf,
        format!(
            "device = \"tower_test_no_such_device\"\n\
             [[icecast]]\nurl = \"http://127.0.0.1:{port}/live\"\npassword = \"p\"\n"
        ),
    )
    .expect("write");
    Tower::start(&["--config", conf.to_str().expect("utf8")], &[HOOKS])
}

/// Asks Tower's test hooks (enabled with [`HOOKS`]) to make `worker` panic.
pub fn panic_worker(addr: SocketAddr, worker: &str) -> HttpResponse {
    http_raw(
        addr,
        &format!(
            "POST /test/panic?worker={worker} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            HOOKS.1
        ),
    )
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// One MP3 frame as a listener received it.
#[derive(Clone)]
pub struct Arrival {
    pub at: Instant,
    pub frame: Arc<[u8]>,
}

#[derive(Default)]
struct Received {
    head: String,
    frames: Vec<Arrival>,
    ended: Option<(Instant, String)>,
}

/// A listener on `/stream` that timestamps every whole frame it receives.
pub struct Listener {
    pub local: SocketAddr,
    rx: Arc<Mutex<Received>>,
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn connect(addr: SocketAddr) -> Listener {
        Self::connect_to(addr, "/stream")
    }

    /// A listener of `path` on `addr` (Tower's, or another server's).
    pub fn connect_to(addr: SocketAddr, path: &str) -> Listener {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: tower-test\r\n\r\n").as_bytes())
            .expect("request");
        let local = stream.local_addr().expect("local");
        let rx = Arc::new(Mutex::new(Received::default()));
        let r = rx.clone();
        let mut reader = stream.try_clone().expect("clone");
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            let mut head = Vec::new();
            let mut in_body = false;
            let mut packetizer = Packetizer::new();
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => {
                        r.lock().expect("rx").ended = Some((Instant::now(), "eof".into()));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        r.lock().expect("rx").ended = Some((Instant::now(), e.to_string()));
                        break;
                    }
                };
                let now = Instant::now();
                let mut data = &buf[..n];
                if !in_body {
                    head.extend_from_slice(data);
                    let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let body = head.split_off(p + 4);
                    r.lock().expect("rx").head = String::from_utf8_lossy(&head).into_owned();
                    in_body = true;
                    let mut frames = Vec::new();
                    packetizer.push(&body, |f| frames.push(Arc::<[u8]>::from(f)));
                    let mut g = r.lock().expect("rx");
                    g.frames
                        .extend(frames.into_iter().map(|frame| Arrival { at: now, frame }));
                    data = &[];
                }
                let mut frames = Vec::new();
                packetizer.push(data, |f| frames.push(Arc::<[u8]>::from(f)));
                let mut g = r.lock().expect("rx");
                g.frames
                    .extend(frames.into_iter().map(|frame| Arrival { at: now, frame }));
            }
        });
        Listener {
            local,
            rx,
            stream,
            thread: Some(thread),
        }
    }

    pub fn head(&self) -> String {
        self.rx.lock().expect("rx").head.clone()
    }

    pub fn frames(&self) -> Vec<Arrival> {
        self.rx.lock().expect("rx").frames.clone()
    }

    pub fn frame_count(&self) -> usize {
        self.rx.lock().expect("rx").frames.len()
    }

    /// When and why the connection ended, if it did.
    pub fn ended(&self) -> Option<(Instant, String)> {
        self.rx.lock().expect("rx").ended.clone()
    }

    /// Frames that arrived at or after `since`.
    pub fn frames_since(&self, since: Instant) -> Vec<Arrival> {
        self.frames().into_iter().filter(|a| a.at >= since).collect()
    }

    /// Waits until `n` more frames than now have arrived.
    pub fn wait_frames(&self, n: usize, timeout: Duration) -> bool {
        let target = self.frame_count() + n;
        wait_for(timeout, || self.frame_count() >= target)
    }

    /// The tone ratio at `freq` of the last `frames` frames received.
    pub fn recent_tone(&self, frames: usize, freq: f64) -> f64 {
        let all = self.frames();
        if all.len() < frames {
            return 0.0;
        }
        tone_of(&all[all.len() - frames..], freq)
    }

    /// Waits until the most recent ~300 ms carry `freq`.
    pub fn wait_tone(&self, freq: f64, timeout: Duration) -> bool {
        wait_for(timeout, || self.recent_tone(12, freq) > 0.9)
    }

    /// Closes the connection from our side.
    pub fn close(mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits for the server to end the connection.
    pub fn wait_end(&self, timeout: Duration) -> Option<(Instant, String)> {
        let mut ended = None;
        wait_for(timeout, || {
            ended = self.ended();
            ended.is_some()
        });
        ended
    }

    /// The largest gap between consecutive frame arrivals after `since`.
    pub fn max_gap_since(&self, since: Instant) -> Duration {
        let f = self.frames_since(since);
        f.windows(2)
            .map(|w| w[1].at.saturating_duration_since(w[0].at))
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decodes frames (skipping the decoder's first frame of warm-up) and
/// returns the tone ratio at `freq` over all of their left channel.
pub fn tone_of(frames: &[Arrival], freq: f64) -> f64 {
    let refs: Vec<&[u8]> = frames.iter().map(|a| &a.frame[..]).collect();
    let d = audio::decode_frames(&refs);
    let samples: Vec<f32> = d.frames.iter().skip(1).flatten().copied().collect();
    if samples.is_empty() || d.channels == 0 {
        return 0.0;
    }
    audio::tone_ratio(&audio::mono(&samples, d.channels), d.sample_rate, freq)
}

/// The RMS level (dBFS) of each frame, decoded in sequence.
pub fn frame_levels(frames: &[Arrival]) -> Vec<f64> {
    let refs: Vec<&[u8]> = frames.iter().map(|a| &a.frame[..]).collect();
    let d = audio::decode_frames(&refs);
    d.frames.iter().map(|s| audio::dbfs(s)).collect()
}

/// A JACK dummy-backend server, stopped on drop.
///
/// JACK2 keeps at most 8 servers per user in a shared-memory registry and
/// reclaims the slot of a dead server only when a server of the same name
/// registers again. So names come from a small fixed set (one per server
/// a test binary runs at a time), never from the pid: a SIGKILLed server's
/// slot is then reused by the next run instead of leaking until the
/// registry is full ("Too many servers already active").
pub struct Jack {
    pub name: String,
    /// Another user and group to run the server as (through setpriv),
    /// whose clients then must run as that user too.
    user: Option<(String, String)>,
    child: Option<Child>,
}

static JACK_SEQ: AtomicU32 = AtomicU32::new(0);

impl Jack {
    pub fn start() -> Jack {
        Self::start_named(&format!("tower-test-{}", JACK_SEQ.fetch_add(1, Ordering::SeqCst)))
    }

    /// A server under `name`, for runs that must not share a name with
    /// test servers that may be running at the same time (the benches).
    pub fn start_named(name: &str) -> Jack {
        Self::start_as(name, None)
    }

    /// A server under `name`, run as `user` and `group` (as root:
    /// nobody and nogroup, say), or as this process's user when `None`.
    pub fn start_as(name: &str, user: Option<(&str, &str)>) -> Jack {
        let mut j = Jack {
            name: name.to_string(),
            user: user.map(|(u, g)| (u.to_string(), g.to_string())),
            child: None,
        };
        j.spawn();
        j
    }

    /// `program` with JACK's environment, as the server's user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.user {
            Some((user, group)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={user}"),
                    &format!("--regid={group}"),
                    "--clear-groups",
                    program,
                ]);
                c
            }
            None => Command::new(program),
        };
        cmd.env("JACK_NO_AUDIO_RESERVATION", "1")
            .env("JACK_NO_START_SERVER", "1");
        cmd
    }

    /// (Re)starts the server and waits until it answers.
    pub fn spawn(&mut self) {
        let mut cmd = self.command("jackd");
        cmd.args([
            "-n",
            &self.name,
            "--no-realtime",
            "-d",
            "dummy",
            "-r",
            "48000",
            "-p",
            "1152",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("jackd (apt-get install jackd2)");
        let name = self.name.clone();
        let up = wait_for(Duration::from_secs(10), || {
            let mut lsp = self.command("jack_lsp");
            lsp.args(["-s", &name])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("system:capture_1"))
        });
        if !up {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            panic!("jackd {} did not come up:\n{err}", self.name);
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal jackd");
    }

    /// Kills the server abruptly (a device vanishing).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server cleanly, so it leaves the registry.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        // A stopped process must be continued to act on SIGTERM.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Jack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `seconds` of a stereo s16le sine at `freq` (level 0.5) to `path`.
pub fn write_tone_raw(path: &Path, freq: f64, seconds: f64) {
    let n = (48_000.0 * seconds) as usize;
    let mut bytes = Vec::with_capacity(n * 4);
    for i in 0..n {
        let v = ((std::f64::consts::TAU * freq * i as f64 / 48_000.0).sin() * 0.5 * 32767.0) as i16;
        bytes.extend_from_slice(&v.to_le_bytes());
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write raw");
}

/// An alsa-lib configuration with `jackfile`: JACK-paced capture that
/// delivers `input` byte for byte.
pub fn write_alsa_conf(dir: &Path, input: &Path) -> PathBuf {
    let conf = dir.join("alsa-test.conf");
    let text = format!(
        "</usr/share/alsa/alsa.conf>\n\
         pcm.jackcap {{ type jack capture_ports {{ 0 \"system:capture_1\" 1 \"system:capture_2\" }} }}\n\
         pcm.jackcap16 {{ type plug slave.pcm \"jackcap\" }}\n\
         pcm.jackfile {{ type file slave.pcm \"jackcap16\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n",
        input.display()
    );
    std::fs::write(&conf, text).expect("write alsa conf");
    conf
}

/// JACK-based tests run one at a time: each has a JACK server, Tower and
/// ffmpeg, and two cores shared by several of them starve the listener
/// threads that measure gaps.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the other JACK-based tests of this binary back.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Rig {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    pub jack: Jack,
    pub tower: Tower,
}

/// Tower capturing `jackfile` (a 1 kHz tone, JACK-paced), with a short
/// grace period, plus `extra` environment.
pub fn rig(extra: &[(&str, &str)]) -> Rig {
    rig_with_input(1000.0, extra)
}

pub fn rig_with_input(freq: f64, extra: &[(&str, &str)]) -> Rig {
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("input.raw");
    if freq > 0.0 {
        write_tone_raw(&input, freq, 120.0);
    } else {
        std::fs::write(&input, vec![0u8; 48_000 * 4 * 120]).expect("silence");
    }
    let conf = write_alsa_conf(dir.path(), &input);
    let jack = Jack::start();
    let conf = conf.to_str().expect("utf8").to_string();
    let mut env = vec![
        ("ALSA_CONFIG_PATH", conf.as_str()),
        ("JACK_DEFAULT_SERVER", jack.name.as_str()),
        ("JACK_NO_START_SERVER", "1"),
        ("TOWER_PCM_GRACE_SEC", "0.5"),
    ];
    env.extend_from_slice(extra);
    let tower = Tower::start(&["--device", "jackfile"], &env);
    Rig {
        _serial: serial,
        _dir: dir,
        jack,
        tower,
    }
}

/// Runs a player to completion (at most 30 s); returns success and what
/// it printed.
pub fn run_player(program: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install {program})"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// mpv and ffmpeg each play `url` for 5 s, without a warning.
pub fn mpv_and_ffmpeg_play(url: &str) {
    let (ok, text) = run_player(
        "mpv",
        &["--no-video", "--ao=null", "--length=5", "--msg-level=all=warn", url],
    );
    assert!(ok, "mpv failed:\n{text}");
    assert!(!text.to_lowercase().contains("error"), "mpv said:\n{text}");
    let started = Instant::now();
    let (ok, text) = run_player(
        "ffmpeg",
        &[
            "-hide_banner",
            "-nostats",
            "-loglevel",
            "warning",
            "-xerror",
            "-i",
            url,
            "-t",
            "5",
            "-f",
            "null",
            "-",
        ],
    );
    assert!(ok, "ffmpeg failed:\n{text}");
    assert!(text.trim().is_empty(), "ffmpeg said:\n{text}");
    assert!(started.elapsed() >= Duration::from_secs(4), "ffmpeg did not play 5 s");
}
