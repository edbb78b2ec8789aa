//! The encoder process boundary: a small trait with the real ffmpeg backend.
//!
//! The supervisor thread launches and ends encoder processes only through
//! [`EncoderLauncher`] and [`EncoderProcess`], so its logic runs against the
//! in-tree fake (`encoder::fake`) as well as against real ffmpeg.
//!
//! ffmpeg is started in its own process group (ended with `killpg`), with
//! `PR_SET_PDEATHSIG` so it dies with Tower, and with an empty signal mask
//! (a blocked SIGTERM would otherwise be inherited and ignored). Its stdin is
//! non-blocking and small, so a slow encoder costs dropped frames, not
//! latency, and starts with the WAV header the command expects.

use std::fmt;
use std::io::{self, PipeReader, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::command::{EncoderCommand, WAV_HEADER_BYTES, input_preamble};

/// Size asked for ffmpeg's stdin pipe once it runs: about 3.5 frames. The
/// kernel rounds up to whole pages; the default (64 KiB, 14 frames) would
/// let latency grow by a third of a second whenever ffmpeg falls behind.
pub const STDIN_PIPE_BYTES: i32 = 16 * 1024;
/// Size asked for it at start, so that the input's preamble goes in at
/// once ([`input_preamble`], 69 KB).
const PREAMBLE_PIPE_BYTES: i32 = 128 * 1024;

/// How an encoder process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn from_status(status: ExitStatus) -> Self {
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }

    pub fn code(code: i32) -> Self {
        ExitInfo {
            code: Some(code),
            signal: None,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {s} ({name})")
            }
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// Why an encoder could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "cannot run {program}: not found (install ffmpeg with `apt install ffmpeg`, or set `ffmpeg` in the configuration to its path)"
    )]
    NotFound { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
}

/// A started encoder: its pipes and the process handle.
pub struct EncoderChild {
    /// Non-blocking: writes return `WouldBlock` when the pipe is full.
    pub stdin: Box<dyn Write + Send>,
    /// One end of a socket pair whose other end is the encoder's stdout
    /// (a socket, not a pipe, so that the broadcast thread can wait for a
    /// frame and read it in one `recv` with a receive timeout).
    pub stdout: UnixStream,
    /// Read by the supervisor where `poll(2)` says so.
    pub stderr: PipeReader,
    pub process: Box<dyn EncoderProcess>,
}

/// A running encoder process.
pub trait EncoderProcess: Send {
    fn pid(&self) -> Option<u32>;
    /// A descriptor that becomes readable when the process ends (a
    /// pidfd), so the supervisor waits for the exit instead of polling
    /// `try_wait`; `None` where there is none.
    fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Ok(Some) once the process has ended (it is then reaped).
    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>>;
    /// Ends the process at once and reaps it.
    fn kill(&mut self) -> ExitInfo;
    /// Its first MP3 frame came out: undoes what it needed at start. False
    /// while that cannot be done yet: call again a moment later.
    fn running(&mut self) -> bool {
        true
    }
}

/// Starts encoder processes.
pub trait EncoderLauncher: Send + Sync {
    /// The command line, for logs and `/status`.
    fn describe(&self) -> String;
    fn launch(&self) -> Result<EncoderChild, LaunchError>;
}

/// The real backend: runs an ffmpeg command line.
pub struct FfmpegLauncher {
    command: EncoderCommand,
}

impl FfmpegLauncher {
    pub fn new(command: EncoderCommand) -> Self {
        FfmpegLauncher { command }
    }
}

impl EncoderLauncher for FfmpegLauncher {
    fn describe(&self) -> String {
        self.command.to_string()
    }

    fn launch(&self) -> Result<EncoderChild, LaunchError> {
        let program = self.command.program.clone();
        let (stdout, theirs) = UnixStream::pair().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes async-signal-safe calls (prctl, sigprocmask, getppid).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                // Tower died between fork and prctl: do not outlive it.
                if libc::getppid() == 1 {
                    return Err(io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // Our copy of the child's end: closed now, so that its exit is an
        // end of file here.
        drop(cmd);
        let mut child = spawned.map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                LaunchError::NotFound {
                    program: program.clone(),
                }
            } else {
                LaunchError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::Spawn {
                program,
                source: io::Error::other("child pipes missing"),
            });
        };
        let prepared = prepare_stdin(&mut stdin);
        if let Err(source) = prepared {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::Spawn { program, source });
        }
        let pidfd = pidfd_open(child.id());
        let stdin_pipe = stdin.as_fd().try_clone_to_owned().ok();
        Ok(EncoderChild {
            stdin: Box::new(stdin),
            stdout,
            stderr: PipeReader::from(OwnedFd::from(stderr)),
            process: Box::new(FfmpegProcess {
                child,
                pidfd,
                stdin_pipe,
                done: None,
            }),
        })
    }
}

/// Makes writes to (or reads from) `fd` return `WouldBlock` instead of
/// waiting.
pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Makes stdin non-blocking and writes the input's preamble (the WAV
/// header, then silence: [`input_preamble`]) into a pipe made large enough
/// for it; [`EncoderProcess::running`] makes it small again.
///
/// A process that has already closed its input (one that exits at once
/// with an error) breaks the pipe: that is not a failure to start. It did
/// start, and the supervisor reports how it ended (`process_exit`, with
/// its exit code and its stderr), as it would a moment later.
fn prepare_stdin(stdin: &mut (impl Write + AsFd)) -> io::Result<()> {
    set_nonblocking(stdin)?;
    // Best effort: a pipe that stays small only delays ffmpeg's start.
    let _ = nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PREAMBLE_PIPE_BYTES));
    let preamble = input_preamble();
    let mut at = 0;
    while at < preamble.len() {
        match stdin.write(&preamble[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The header always fits; what silence does not, ffmpeg waits for.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && at >= WAV_HEADER_BYTES => break,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `pipe` [`STDIN_PIPE_BYTES`] again; `EBUSY` while it holds more.
fn shrink_pipe(pipe: BorrowedFd<'_>) -> nix::Result<()> {
    nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(STDIN_PIPE_BYTES)).map(drop)
}

/// A pidfd for `pid` (Linux 5.3 and later; `None` before).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success the descriptor is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::pid_t::try_from(pid).ok()?, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct FfmpegProcess {
    child: Child,
    pidfd: Option<OwnedFd>,
    /// Stdin's pipe, until it is made small again ([`EncoderProcess::running`]).
    stdin_pipe: Option<OwnedFd>,
    done: Option<ExitInfo>,
}

impl FfmpegProcess {
    /// SIGKILL to ffmpeg's whole process group: ffmpeg and anything it (or
    /// a wrapper script) started, which would otherwise keep its pipes
    /// open. Only called while the group leader is not yet reaped: its pid,
    /// the group's id, cannot have been given to another process.
    fn kill_group(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Whether ffmpeg has ended, without reaping it (`WNOWAIT`).
    fn ended(&self) -> io::Result<bool> {
        let pid = libc::id_t::from(self.child.id());
        // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child, writing into `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &raw mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled `info` (si_pid is 0 when nothing ended).
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Ends the group and reaps ffmpeg.
    fn reap(&mut self) -> ExitInfo {
        self.kill_group();
        // In case it left its group.
        let _ = self.child.kill();
        let info = match self.child.wait() {
            Ok(status) => ExitInfo::from_status(status),
            Err(_) => ExitInfo {
                code: None,
                signal: None,
            },
        };
        self.done = Some(info);
        info
    }
}

impl EncoderProcess for FfmpegProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Once ffmpeg has ended, the rest of its group is killed before ffmpeg
    /// is reaped: a forking wrapper's children would otherwise survive,
    /// holding stdout open.
    fn try_wait(&mut self) -> io::Result<Option<ExitInfo>> {
        if self.done.is_some() {
            return Ok(self.done);
        }
        if !self.ended()? {
            return Ok(None);
        }
        Ok(Some(self.reap()))
    }

    fn kill(&mut self) -> ExitInfo {
        if let Some(done) = self.done {
            // Reaped by try_wait, which ended the group first.
            return done;
        }
        self.reap()
    }

    /// The preamble is read: stdin's pipe goes back to [`STDIN_PIPE_BYTES`],
    /// and the copy of its descriptor is closed, so that closing stdin
    /// still ends ffmpeg's input. False while the pipe holds more than
    /// that (the PCM written while ffmpeg started, not read yet): it
    /// cannot shrink then, and would let 0.7 s queue up for good.
    fn running(&mut self) -> bool {
        let Some(pipe) = &self.stdin_pipe else { return true };
        if shrink_pipe(pipe.as_fd()) == Err(nix::errno::Errno::EBUSY) {
            return false;
        }
        self.stdin_pipe = None;
        true
    }
}

/// Waits up to `timeout` for `process` to end on its own (polling).
pub fn wait_for_exit(process: &mut dyn EncoderProcess, timeout: Duration) -> Option<ExitInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(info)) = process.try_wait() {
            return Some(info);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn exit_info_reads_well_in_logs() {
        assert_eq!(ExitInfo::code(1).to_string(), "exit code 1");
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn a_missing_program_is_reported_with_the_fix() {
        let l = FfmpegLauncher::new(EncoderCommand {
            program: "/nonexistent/ffmpeg".into(),
            args: vec![],
        });
        let err = l.launch().err().expect("must fail");
        assert!(matches!(err, LaunchError::NotFound { .. }));
        assert!(err.to_string().contains("apt install ffmpeg"));
    }

    #[test]
    fn a_real_process_is_started_in_its_own_group_and_killed_with_it() {
        let l = FfmpegLauncher::new(EncoderCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "sleep 30 & sleep 30".into()],
        });
        let mut child = l.launch().expect("sh runs");
        let pid = child.process.pid().expect("pid") as i32;
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).expect("pgid");
        assert_eq!(pgid.as_raw(), pid, "not in its own process group");
        assert!(child.process.try_wait().expect("try_wait").is_none());
        let info = child.process.kill();
        assert_eq!(info.signal, Some(9));
        // The background sleep (same group) is gone too: stdout reaches EOF.
        let mut rest = Vec::new();
        child.stdout.read_to_end(&mut rest).expect("eof");
    }

    #[test]
    fn real_ffmpeg_starts_on_the_preamble_and_gives_each_frame_one_period_after_its_pcm() {
        let l = FfmpegLauncher::new(super::super::command::default_command("ffmpeg", 128));
        let mut child = l.launch().expect("ffmpeg runs");
        let mut buf = [0u8; 8192];
        // Before any PCM: the preamble's silence alone gets ffmpeg going
        // (without it, the WAV demuxer waits for 64 KiB, 15 frames).
        child
            .stdout
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let n = child.stdout.read(&mut buf).expect("the preamble's silence comes out");
        assert!(n > 0);
        std::thread::sleep(Duration::from_millis(200));
        child
            .stdout
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        while child.stdout.read(&mut buf).is_ok_and(|n| n > 0) {}
        // Then each frame written brings out the one before it: raw s16le
        // input held 7 frames in 8 back a second period (ffmpeg's
        // 1024-sample packets); the WAV stream with -max_size does not.
        let frame = crate::audio::PcmFrame::silent();
        let (mut out, mut behind) = (0usize, Vec::new());
        for k in 1..=40usize {
            let mut left: &[u8] = frame.as_bytes();
            while !left.is_empty() {
                match child.stdin.write(left) {
                    Ok(n) => left = &left[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => panic!("{e}"),
                }
            }
            // What comes out within 20 ms of the write (ffmpeg answers in
            // well under a millisecond on an idle machine).
            let until = Instant::now() + Duration::from_millis(20);
            while let Some(wait) = until.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) {
                child.stdout.set_read_timeout(Some(wait)).expect("timeout");
                match child.stdout.read(&mut buf) {
                    Ok(n) => out += n,
                    Err(_) => break,
                }
            }
            behind.push(k.saturating_sub(out / 384));
            std::thread::sleep(Duration::from_millis(4));
        }
        child.process.kill();
        let late = behind[10..].iter().filter(|b| **b > 1).count();
        assert!(late <= 7, "frames still held back after their write: {behind:?}");
    }

    #[test]
    fn stdin_is_made_small_again_once_what_queued_at_start_is_read() {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let size = |fd: &OwnedFd| nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("size");
        nix::fcntl::fcntl(
            write_end.as_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PREAMBLE_PIPE_BYTES),
        )
        .expect("grow");
        // ffmpeg's first frame came while 7 PCM frames still wait in it.
        let mut writer = std::fs::File::from(write_end.try_clone().expect("dup"));
        writer.write_all(&[0u8; 7 * 4608]).expect("fill");
        let mut process = FfmpegProcess {
            child: Command::new("sleep").arg("5").spawn().expect("sleep"),
            pidfd: None,
            stdin_pipe: Some(write_end),
            done: None,
        };
        assert!(!process.running(), "cannot shrink below what it holds");
        assert!(process.stdin_pipe.is_some(), "kept for the next try");
        let mut reader = std::fs::File::from(read_end);
        let mut buf = vec![0u8; 6 * 4608];
        reader.read_exact(&mut buf).expect("ffmpeg reads");
        assert!(process.running());
        assert!(process.stdin_pipe.is_none(), "the copy of stdin is closed");
        assert_eq!(size(&writer.into()), STDIN_PIPE_BYTES);
        process.kill();
    }

    #[test]
    fn a_process_that_closed_its_input_before_the_preamble_has_started_all_the_same() {
        // An encoder that exits at once with an error may be gone before
        // its WAV header is written: that is its exit to report, not a
        // failure to spawn (it was, and the CI saw `spawn_failed: Broken
        // pipe` instead of `process_exit: exit code 1`).
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        let mut write = std::fs::File::from(write);
        prepare_stdin(&mut write).expect("a broken pipe is not an error here");
    }

    #[test]
    fn stdin_is_non_blocking() {
        let l = FfmpegLauncher::new(EncoderCommand {
            program: "sleep".into(),
            args: vec!["30".into()],
        });
        let mut child = l.launch().expect("sleep runs");
        let chunk = vec![0u8; 4096];
        let t0 = Instant::now();
        let mut blocked = false;
        for _ in 0..1000 {
            match child.stdin.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(blocked, "pipe never reported full");
        assert!(t0.elapsed() < Duration::from_secs(5));
        child.process.kill();
    }
}
