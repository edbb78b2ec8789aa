//! An in-process stand-in for ffmpeg, for testing supervision without it.
//!
//! Each launch starts a thread ("fake-encoder", owned by the returned
//! process handle) connected through real OS pipes (stdout, as for ffmpeg,
//! a socket pair): it reads 4608-byte PCM frames from stdin and writes one
//! 384-byte MP3 frame per PCM frame to stdout. Bytes 4 and 5 of each MP3 frame carry the first PCM sample, so
//! tests can trace audio end to end. Scripted [`FakeMode`]s make it fail the
//! ways ffmpeg does: exit at once, never produce output, crash (also in
//! the middle of a frame), stall, close its input.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::process::{EncoderChild, EncoderLauncher, EncoderProcess, ExitInfo, LaunchError, set_nonblocking};
use crate::audio::PCM_FRAME_BYTES;
use crate::encoder::mp3::canonical_silent_frame;
use crate::worker::{StopSignal, Worker};

/// How one fake encoder instance behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeMode {
    /// One MP3 frame per PCM frame, for ever.
    Healthy,
    /// Exits at once with this code, after one line on stderr.
    ExitAtOnce(i32),
    /// Reads PCM, never writes MP3 (start-up timeout).
    Mute,
    /// Healthy for this many frames, then exits with code 1.
    CrashAfter(u32),
    /// Healthy for this many frames, then reads without writing (stall).
    StallAfter(u32),
    /// Healthy for this many frames, then writes half a frame and exits
    /// with code 1 (a crash in the middle of a write).
    TornAfter(u32),
    /// Healthy for this many frames, then closes its stdin and lives on
    /// without output (writing PCM fails with EPIPE).
    ClosesStdinAfter(u32),
    /// Cannot be started at all.
    Missing,
}

/// Launches fake encoders; modes queued with [`FakeLauncher::push_mode`] are
/// used first, then the default.
pub struct FakeLauncher {
    default: FakeMode,
    queued: Mutex<VecDeque<FakeMode>>,
    launches: AtomicU32,
}

impl FakeLauncher {
    pub fn new(default: FakeMode) -> Self {
        FakeLauncher {
            default,
            queued: Mutex::new(VecDeque::new()),
            launches: AtomicU32::new(0),
        }
    }

    pub fn push_mode(&self, mode: FakeMode) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).push_back(mode);
    }

    pub fn launches(&self) -> u32 {
        self.launches.load(Ordering::SeqCst)
    }
}

impl EncoderLauncher for FakeLauncher {
    fn describe(&self) -> String {
        format!("fake encoder ({:?})", self.default)
    }

    fn launch(&self) -> Result<EncoderChild, LaunchError> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        let mode = self
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(self.default);
        if mode == FakeMode::Missing {
            return Err(LaunchError::NotFound {
                program: "fake-ffmpeg".into(),
            });
        }
        let spawn_err = |source: io::Error| LaunchError::Spawn {
            program: "fake-ffmpeg".into(),
            source,
        };
        let (stdin_r, stdin_w) = io::pipe().map_err(spawn_err)?;
        let (stdout_r, stdout_w) = UnixStream::pair().map_err(spawn_err)?;
        let (stderr_r, stderr_w) = io::pipe().map_err(spawn_err)?;
        set_nonblocking(&stdin_w).map_err(spawn_err)?;
        set_nonblocking(&stdin_r).map_err(spawn_err)?;
        let exit = Arc::new(Mutex::new(None));
        let thread_exit = exit.clone();
        let worker = Worker::spawn("fake-encoder", move |stop| {
            let info = run(mode, &stop, stdin_r, stdout_w, stderr_w);
            *thread_exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
        })
        .map_err(spawn_err)?;
        Ok(EncoderChild {
            stdin: Box::new(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
            process: Box::new(FakeProcess {
                worker: Some(worker),
                exit,
            }),
        })
    }
}

fn run(
    mode: FakeMode,
    stop: &StopSignal,
    mut stdin: io::PipeReader,
    mut stdout: UnixStream,
    mut stderr: io::PipeWriter,
) -> ExitInfo {
    let _ = writeln!(stderr, "fake encoder starting in mode {mode:?}");
    if let FakeMode::ExitAtOnce(code) = mode {
        let _ = writeln!(stderr, "fake encoder: fatal error, exiting");
        return ExitInfo::code(code);
    }
    let mut frame = vec![0u8; PCM_FRAME_BYTES];
    let mut filled = 0;
    let mut frames = 0u32;
    loop {
        if stop.is_stopped() {
            return ExitInfo {
                code: None,
                signal: Some(9),
            };
        }
        match stdin.read(&mut frame[filled..]) {
            Ok(0) => return ExitInfo::code(0), // stdin closed: flush and exit
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stop.sleep(Duration::from_millis(1));
                continue;
            }
            Err(_) => return ExitInfo::code(1),
        }
        if filled < PCM_FRAME_BYTES {
            continue;
        }
        filled = 0;
        frames += 1;
        if let FakeMode::ClosesStdinAfter(n) = mode
            && frames > n
        {
            let _ = writeln!(stderr, "fake encoder: closing its input after {n} frames");
            drop(stdin);
            stop.wait();
            return ExitInfo {
                code: None,
                signal: Some(9),
            };
        }
        let writes = match mode {
            FakeMode::Healthy => true,
            FakeMode::CrashAfter(n) if frames > n => {
                let _ = writeln!(stderr, "fake encoder: crashing after {n} frames");
                return ExitInfo::code(1);
            }
            FakeMode::CrashAfter(_) => true,
            FakeMode::TornAfter(n) if frames > n => {
                let half = canonical_silent_frame().len() / 2;
                let _ = stdout.write_all(&canonical_silent_frame()[..half]);
                let _ = writeln!(stderr, "fake encoder: crashing in a write after {n} frames");
                return ExitInfo::code(1);
            }
            FakeMode::TornAfter(_) => true,
            FakeMode::StallAfter(n) => frames <= n,
            FakeMode::ClosesStdinAfter(_) => true,
            FakeMode::Mute | FakeMode::ExitAtOnce(_) | FakeMode::Missing => false,
        };
        if writes {
            let mut mp3 = canonical_silent_frame();
            mp3[4] = frame[0];
            mp3[5] = frame[1];
            if stdout.write_all(&mp3).is_err() {
                return ExitInfo::code(1);
            }
        }
    }
}

struct FakeProcess {
    worker: Option<Worker<()>>,
    exit: Arc<Mutex<Option<ExitInfo>>>,
}

impl FakeProcess {
    fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EncoderProcess for FakeProcess {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>> {
        let info = self.exit_info();
        if info.is_some()
            && let Some(w) = self.worker.take()
        {
            let _ = w.stop(Duration::from_secs(1));
        }
        Ok(info)
    }

    fn kill(&mut self) -> ExitInfo {
        if let Some(w) = self.worker.take() {
            let _ = w.stop(Duration::from_secs(1));
        }
        self.exit_info().unwrap_or(ExitInfo {
            code: None,
            signal: Some(9),
        })
    }
}
