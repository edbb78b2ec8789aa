//! Debian's liquidsoap (2.1) serving the live input itself: it reads the
//! bench's PCM, encodes it in-process (MP3 128 kbit/s, 48 kHz) and serves
//! it with `output.harbor` on 127.0.0.1.
//!
//! The input: `input.external.rawaudio` running `cat` on a named FIFO
//! that a [`Feeder`] writes at the real-time pace, so Liquidsoap gets the
//! same PCM, paced the same way and timestamped the same way, as the
//! Icecast source. Chosen because it is the plain raw-PCM input of 2.1
//! (no probing, unlike `input.ffmpeg` on the FIFO, which waits to guess a
//! format), and its pre-buffer is a parameter: [`INPUT_BUFFER_S`] instead
//! of the default 2 s, as one would set it for a live input. `cat` adds
//! no delay of its own (it passes on whatever the FIFO holds) and is not
//! counted as Liquidsoap's (a real station would use `input.alsa`).
//! Everything else is Liquidsoap's default, the harbor's burst (64 KiB)
//! and chunk (4 KiB) included; only the harbor's listen backlog
//! (`settings.harbor.max_connections`, 2 by default) is raised with the
//! listener count, as the bench raises Icecast's `<clients>`.

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::icecast::{free_port, is_root};
use crate::servers::{Feeder, MOUNT, end, own};

/// Liquidsoap's input pre-buffer (s): small, for a live input, yet more
/// than one of its 40 ms frames, so the 24 ms writes do not leave it
/// empty (the bench notes it if they do: [`Liquidsoap::underruns`]).
pub const INPUT_BUFFER_S: f64 = 0.05;

/// A liquidsoap process on 127.0.0.1 with its live input; ended on drop.
pub struct Liquidsoap {
    child: Child,
    feeder: Feeder,
    port: u16,
    fifo: PathBuf,
    dir: tempfile::TempDir,
}

impl Liquidsoap {
    /// Starts liquidsoap with room for `listeners`, fed `pcm` (looped).
    pub fn start(listeners: usize, pcm: Vec<u8>) -> std::io::Result<Liquidsoap> {
        let dir = tempfile::tempdir()?;
        let fifo = dir.path().join("pcm.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        let port = free_port();
        let script = dir.path().join("bench.liq");
        std::fs::write(
            &script,
            script_text(port, listeners, &fifo, &dir.path().join("liquidsoap.log")),
        )?;
        let child = Command::new("liquidsoap")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        own(child.id() as i32);
        let writer_fifo = fifo.clone();
        let feeder = Feeder::start("liquidsoap-source", move |stop| open_writer(&writer_fifo, stop), pcm)?;
        Ok(Liquidsoap {
            child,
            feeder,
            port,
            fifo,
            dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When each click was written to its input.
    pub fn sent(&self) -> Vec<Instant> {
        self.feeder.sent()
    }

    /// The thread that plays the input into its FIFO.
    pub fn feeder_tid(&self) -> Option<u32> {
        self.feeder.tid()
    }

    /// Its log, for messages when something goes wrong.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("liquidsoap.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How often its input ran dry since it started: `mksafe` switched to
    /// silence after the first audio came.
    pub fn underruns(&self) -> usize {
        let log = self.log_text();
        let Some(first) = log.find("Switch to input.external") else {
            return 0;
        };
        log[first..].matches("Switch to safe_blank").count()
    }

    /// Its `cat`, which reads the FIFO (0 if not found): a child of
    /// whichever of its threads started it.
    pub fn reader_pid(&self) -> u32 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()));
        tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .find_map(|c| c.split_whitespace().find_map(|p| p.parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Liquidsoap {
    fn drop(&mut self) {
        // SIGTERM: liquidsoap then ends its `cat` itself (which does not
        // come back: restart=false). The feeder stops after, so that `cat`
        // does not see the end of its input first.
        let reader = self.reader_pid();
        end(
            &mut self.child,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(3),
        );
        // Had liquidsoap not ended it: `cat` inherits liquidsoap's signal
        // mask (SIGTERM blocked), so SIGKILL, if it is still ours.
        let cmdline = std::fs::read(format!("/proc/{reader}/cmdline")).unwrap_or_default();
        if reader > 0 && String::from_utf8_lossy(&cmdline).contains(&self.fifo.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(reader as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.feeder.finish();
    }
}

/// The script: settings first, then the live input and the harbor output.
fn script_text(port: u16, listeners: usize, fifo: &Path, log: &Path) -> String {
    let allow_root = if is_root() {
        "settings.init.allow_root.set(true)\n"
    } else {
        ""
    };
    format!(
        "{allow_root}\
         settings.log.stdout.set(false)\n\
         settings.log.file.set(true)\n\
         settings.log.file.path.set({log:?})\n\
         settings.harbor.bind_addrs.set([\"127.0.0.1\"])\n\
         settings.harbor.max_connections.set({backlog})\n\
         settings.frame.audio.samplerate.set(48000)\n\
         live = input.external.rawaudio(buffer={INPUT_BUFFER_S}, samplerate=48000, channels=2, restart=false, \"exec cat {fifo}\")\n\
         output.harbor(%mp3(bitrate=128, samplerate=48000), port={port}, mount={mount:?}, mksafe(live))\n",
        log = log.display().to_string(),
        backlog = listeners + 10,
        fifo = fifo.display(),
        mount = MOUNT.trim_start_matches('/'),
    )
}

/// Opens the FIFO for writing once its reader (liquidsoap's `cat`) has
/// opened it, waiting up to 20 s or until `stop`; blocking from then on.
fn open_writer(fifo: &PathBuf, stop: &AtomicBool) -> std::io::Result<std::fs::File> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Non-blocking: ENXIO while nobody reads, instead of blocking.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => {
                // SAFETY: F_SETFL on a descriptor this function owns.
                if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(std::io::Error::other("nobody opened the FIFO"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}
