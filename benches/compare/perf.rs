//! System calls (and, where the machine's PMU allows, instructions) of
//! running processes, counted in the kernel by `perf stat` (Debian's
//! linux-perf): tracepoint counters cost the counted process a few
//! nanoseconds a call, where strace would stop it at every one.
//!
//! `perf stat -p PIDS` is attached with its counters off (`-D -1`) and
//! turned on and off through its control FIFO (`--control fifo:CTL,ACK`,
//! each command acknowledged), so the counted span is exactly the bench's
//! window; then SIGINT makes it write its counts (`-x,`) and exit.
//! Counters are inherited by threads started later.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::servers::{end, own};

/// Every system call.
pub const ALL: &str = "raw_syscalls:sys_enter";
/// The calls a streaming server spends its time in, counted one by one.
pub const SYSCALLS: &[&str] = &[
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "futex",
    "sched_yield",
    "nanosleep",
    "clock_nanosleep",
];
/// Instructions in user space and in the kernel (hardware counters).
pub const INSTRUCTIONS: [&str; 2] = ["instructions:u", "instructions:k"];

/// What one `perf stat` counted: event → count, `None` where perf said
/// `<not supported>`.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub events: BTreeMap<String, Option<f64>>,
    /// How long the counters were on.
    pub seconds: f64,
}

impl Counts {
    /// The count of `event` (0 if perf did not report it).
    pub fn get(&self, event: &str) -> f64 {
        self.events.get(event).copied().flatten().unwrap_or(0.0)
    }

    /// Whether perf reported `event` as `<not supported>`.
    pub fn unsupported(&self, event: &str) -> bool {
        matches!(self.events.get(event), Some(None))
    }

    pub fn syscalls(&self) -> f64 {
        self.get(ALL)
    }

    /// The count of one system call by name (`write`).
    pub fn syscall(&self, name: &str) -> f64 {
        self.get(&format!("syscalls:sys_enter_{name}"))
    }

    /// Instructions, user + kernel; `None` where not supported.
    pub fn instructions(&self) -> Option<f64> {
        if INSTRUCTIONS
            .iter()
            .any(|e| self.unsupported(e) || !self.events.contains_key(*e))
        {
            return None;
        }
        Some(INSTRUCTIONS.iter().map(|e| self.get(e)).sum())
    }

    /// The sum of two processes' counts over the same span.
    pub fn plus(&self, other: &Counts) -> Counts {
        let mut events = self.events.clone();
        for (k, v) in &other.events {
            let e = events.entry(k.clone()).or_insert(Some(0.0));
            *e = match (*e, *v) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        Counts {
            events,
            seconds: self.seconds.max(other.seconds),
        }
    }

    pub fn to_json(&self) -> Value {
        let events: serde_json::Map<String, Value> = self.events.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({ "seconds": self.seconds, "events": events })
    }
}

/// Whether `perf stat` can count system calls here (installed, and the
/// tracepoints readable).
pub fn available() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", ALL, "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stderr).contains(ALL))
}

/// A `perf stat` attached to some processes, its counters off until
/// [`Perf::enable`].
pub struct Perf {
    child: Child,
    dir: tempfile::TempDir,
    ctl: std::fs::File,
    ack: std::fs::File,
    enabled: Option<Instant>,
    seconds: f64,
}

impl Perf {
    /// Attaches to `pids` (their threads, and threads they start later).
    pub fn attach(pids: &[u32]) -> std::io::Result<Perf> {
        let dir = tempfile::tempdir()?;
        let (ctl, ack, out) = (dir.path().join("ctl"), dir.path().join("ack"), dir.path().join("out"));
        for f in [&ctl, &ack] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        }
        // The reading end first (it does not wait for a writer), so that
        // perf's opening of its writing end does not block.
        let ack_file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&ack)?;
        let mut events: Vec<String> = vec![ALL.into()];
        events.extend(SYSCALLS.iter().map(|s| format!("syscalls:sys_enter_{s}")));
        events.extend(INSTRUCTIONS.iter().map(|s| s.to_string()));
        let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x,", "-D", "-1"])
            .arg(format!("--control=fifo:{},{}", ctl.display(), ack.display()))
            .arg("-o")
            .arg(&out)
            .args(["-e", &events.join(",")])
            .args(["-p", &pid_list.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        own(child.id() as i32);
        // perf opens the control FIFO once its counters are set up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctl_file = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&ctl)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                Err(e) => return Err(e),
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(std::io::Error::other(format!("perf stat exited ({status}): {err}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("perf stat did not open its control FIFO"));
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(Perf {
            child,
            dir,
            ctl: ctl_file,
            ack: ack_file,
            enabled: None,
            seconds: 0.0,
        })
    }

    /// Sends `command` and waits for perf's acknowledgement.
    fn command(&mut self, command: &str) -> std::io::Result<()> {
        self.ctl.write_all(format!("{command}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // perf writes "ack\n" and a NUL.
        while !got.windows(4).any(|w| w == b"ack\n") {
            match self.ack.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Ok(_) => thread::sleep(Duration::from_millis(2)), // no writer yet
                Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(e),
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "perf stat did not acknowledge {command}"
                )));
            }
        }
        Ok(())
    }

    /// Turns the counters on.
    pub fn enable(&mut self) -> std::io::Result<()> {
        self.command("enable")?;
        self.enabled = Some(Instant::now());
        Ok(())
    }

    /// Turns the counters off.
    pub fn disable(&mut self) -> std::io::Result<()> {
        self.command("disable")?;
        if let Some(t) = self.enabled.take() {
            self.seconds += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Ends perf and reads its counts.
    pub fn finish(mut self) -> std::io::Result<Counts> {
        // SIGINT: perf writes its counts and exits.
        end(
            &mut self.child,
            nix::sys::signal::Signal::SIGINT,
            Duration::from_secs(5),
        );
        let text = std::fs::read_to_string(self.dir.path().join("out"))?;
        Ok(Counts {
            events: parse(&text),
            seconds: self.seconds,
        })
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `perf stat -x,` lines: `value,unit,event,run time,share,…`; the value
/// is a number, `<not counted>` (the counter never ran: nothing to count,
/// 0) or `<not supported>`.
fn parse(text: &str) -> BTreeMap<String, Option<f64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (f.first(), f.get(2)) else {
            continue;
        };
        let v = match *value {
            "<not supported>" => None,
            "<not counted>" => Some(0.0),
            v => match v.parse::<f64>() {
                Ok(x) => Some(x),
                Err(_) => continue,
            },
        };
        out.insert(event.to_string(), v);
    }
    out
}

/// Counting for a server and its encoder (a process of its own, if it
/// has one): the server alone, and the whole chain.
pub struct Chain {
    server: Perf,
    encoder: Option<Perf>,
}

impl Chain {
    pub fn attach(server: u32, encoder: Option<u32>) -> std::io::Result<Chain> {
        Ok(Chain {
            server: Perf::attach(&[server])?,
            encoder: encoder.map(|e| Perf::attach(&[e])).transpose()?,
        })
    }

    pub fn enable(&mut self) -> std::io::Result<()> {
        self.server.enable()?;
        self.encoder.as_mut().map_or(Ok(()), Perf::enable)
    }

    pub fn disable(&mut self) -> std::io::Result<()> {
        self.server.disable()?;
        self.encoder.as_mut().map_or(Ok(()), Perf::disable)
    }

    /// (the server's counts, the chain's).
    pub fn finish(self) -> std::io::Result<(Counts, Counts)> {
        let server = self.server.finish()?;
        let chain = match self.encoder {
            Some(e) => server.plus(&e.finish()?),
            None => server.clone(),
        };
        Ok((server, chain))
    }
}
