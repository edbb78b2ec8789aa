//! The processes the comparison runs besides Tower: Debian's icecast2 with
//! its stock configuration, an ffmpeg source for it fed live by this
//! process (the [`Feeder`] that also feeds Liquidsoap), and a CPU hog; and
//! the clean-up that ends every one of them when the bench ends, panics or
//! is interrupted.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::icecast::{Icecast, is_root};
use crate::support::Onsets;
use tower::encoder::command::default_command;

/// Icecast's source password in the bench's configuration.
const PASSWORD: &str = "tower-bench-source";
/// The mount point the source feeds and listeners read.
pub const MOUNT: &str = "/bench";
/// Debian's configuration file, used as the template.
const STOCK: &str = "/etc/icecast2/icecast.xml";
/// Bytes of one 24 ms PCM frame (1152 stereo s16le samples).
const FRAME_BYTES: usize = 4608;
const FRAME: Duration = Duration::from_millis(24);

/// Every process the bench started, to end them on a signal.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Notes `pid` as the bench's, to be ended if the bench is interrupted.
pub fn own(pid: i32) {
    if pid > 0 {
        CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
    }
}

/// Whether `pid` is (still) a child of this process: a pid noted long
/// ago may since belong to someone else.
fn is_ours(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1));
    ppid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id())
}

fn signal_ours(sig: nix::sys::signal::Signal) -> usize {
    let pids = CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut n = 0;
    for pid in pids.into_iter().filter(|p| is_ours(*p)) {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok() {
            n += 1;
        }
    }
    n
}

/// Sends `sig` to `child`, gives it `grace` to exit, then kills it; reaps it.
pub fn end(child: &mut Child, sig: nix::sys::signal::Signal, grace: Duration) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// On SIGINT, SIGTERM or SIGHUP: SIGTERM to every child still running
/// (Tower then stops its ffmpeg and leaves JACK cleanly), SIGKILL to
/// those still there after a second, then exit. A panic unwinds and the
/// owners' `Drop`s do the same.
pub fn end_children_on_signal() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    thread::Builder::new().name("cleanup".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("signal {sig}: ending the servers, sources and hogs");
            if signal_ours(nix::sys::signal::Signal::SIGTERM) > 0 {
                thread::sleep(Duration::from_secs(1));
                signal_ours(nix::sys::signal::Signal::SIGKILL);
            }
            std::process::exit(128 + sig);
        }
    })?;
    Ok(())
}

/// Debian's stock icecast.xml with only what the bench must change: the
/// listener limit, the port (bound to 127.0.0.1), the passwords, the log
/// directory, and (under root) the user to run as.
pub struct StockConfig {
    template: String,
}

impl StockConfig {
    pub fn load() -> Result<StockConfig, String> {
        let template = std::fs::read_to_string(STOCK)
            .map_err(|e| format!("{STOCK}: {e} (apt-get install icecast2, or run scripts/bench.sh)"))?;
        for needle in [
            "<clients>",
            "<port>8000</port>",
            "hackme",
            "<logdir>",
            "<chroot>0</chroot>",
        ] {
            if !template.contains(needle) {
                return Err(format!("{STOCK} has no {needle}: not the stock configuration"));
            }
        }
        Ok(StockConfig { template })
    }

    /// The configuration for `clients` clients (listeners and the source) on `port`.
    pub fn render(&self, clients: usize, port: u16, log: &Path) -> String {
        let mut xml = self.template.replace("hackme", PASSWORD);
        xml = replace_element(&xml, "clients", &clients.to_string());
        xml = replace_element(&xml, "logdir", &log.display().to_string());
        xml = xml.replacen(
            "<port>8000</port>",
            &format!("<port>{port}</port><bind-address>127.0.0.1</bind-address>"),
            1,
        );
        if is_root() {
            // icecast2 refuses to run as root.
            xml = xml.replacen(
                "<chroot>0</chroot>",
                "<chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group></changeowner>",
                1,
            );
        }
        xml
    }

    /// Starts icecast2 with room for `listeners`.
    pub fn start(self: &Arc<Self>, listeners: usize) -> Icecast {
        let me = self.clone();
        let ice = Icecast::start(Box::new(move |port, _dir, log| me.render(listeners + 10, port, log)));
        own(ice.pid());
        ice
    }
}

/// `xml` with the text of the first `<name>` element replaced.
fn replace_element(xml: &str, name: &str, value: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    match (xml.find(&open), xml.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{open}{value}{}", &xml[..a], &xml[b..]),
        _ => xml.to_string(),
    }
}

/// PCM written at the real-time pace (a 24 ms frame every 24 ms, on an
/// absolute schedule), looped, on its own thread, the way a capture device
/// delivers it; each frame that carries a click onset is timestamped as
/// it is written. Feeds the Icecast source's stdin and Liquidsoap's FIFO.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The thread's id (0 until it runs), for its CPU time.
    tid: Arc<AtomicU32>,
    /// When each frame carrying a click onset was written.
    clicks: Arc<Mutex<Vec<Instant>>>,
}

impl Feeder {
    /// Starts a thread named `name` that opens its output with `open`
    /// (given the stop flag, for an open that waits) and writes `pcm` to it.
    pub fn start<W, F>(name: &str, open: F, pcm: Vec<u8>) -> std::io::Result<Feeder>
    where
        W: Write,
        F: FnOnce(&AtomicBool) -> std::io::Result<W> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let clicks = Arc::new(Mutex::new(Vec::new()));
        let tid = Arc::new(AtomicU32::new(0));
        let thread = {
            let (stop, clicks, id) = (stop.clone(), clicks.clone(), tid.clone());
            thread::Builder::new().name(name.into()).spawn(move || {
                // SAFETY: gettid has no preconditions.
                id.store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
                match open(&stop) {
                    Ok(out) => feed(out, &pcm, &stop, &clicks),
                    Err(e) => eprintln!("feeder: cannot open its output: {e}"),
                }
            })?
        };
        Ok(Feeder {
            stop,
            thread: Some(thread),
            tid,
            clicks,
        })
    }

    /// The thread's id, once it runs: `/proc/TID/stat` gives its CPU time.
    pub fn tid(&self) -> Option<u32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn sent(&self) -> Vec<Instant> {
        self.clicks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tells the thread to stop (it may be blocked in a write: end the reader too).
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the thread and waits for it.
    pub fn finish(&mut self) {
        self.halt();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Writes `pcm` frame by frame, looped, every 24 ms until `stop`.
/// The onsets are found before the first write, so that the thread's CPU
/// time is that of playing the input alone (`Running::input_thread`).
fn feed(mut out: impl Write, pcm: &[u8], stop: &AtomicBool, clicks: &Mutex<Vec<Instant>>) {
    let frames: Vec<&[u8]> = pcm.chunks_exact(FRAME_BYTES).collect();
    // Which frames hold an onset: on the first pass through the PCM, and
    // on every later one (the loop's end leads into its start).
    let mut onsets = Onsets::default();
    let first: Vec<bool> = frames.iter().map(|f| onsets.feed_pcm(f)).collect();
    let later: Vec<bool> = frames.iter().map(|f| onsets.feed_pcm(f)).collect();
    let mut next = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && !frames.is_empty() {
        let frame = frames[i % frames.len()];
        if out.write_all(frame).is_err() {
            return;
        }
        let onset = if i < frames.len() { &first } else { &later };
        if onset[i % frames.len()] {
            clicks.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
        }
        i += 1;
        next += FRAME;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else if now - next > FRAME * 4 {
            next = now; // fell far behind (a stalled machine): resynchronise
        }
    }
}

/// An ffmpeg source for Icecast, encoding with Tower's own encoder
/// arguments (libmp3lame 128 kbit/s, 48 kHz, no reservoir), fed by a
/// [`Feeder`] the way a capture device would feed DarkIce.
pub struct Source {
    child: Child,
    feeder: Feeder,
}

impl Source {
    /// Starts feeding `pcm` (looped) to `ice`'s mount point.
    pub fn start(ice: &Icecast, pcm: Vec<u8>) -> std::io::Result<Source> {
        let mut cmd = default_command("ffmpeg", 128);
        // Icecast output instead of stdout; every packet sent at once, as a
        // pipe to Tower is (ffmpeg would otherwise fill 32 KiB, 2 s, first).
        let url = format!("icecast://source:{PASSWORD}@127.0.0.1:{}{MOUNT}", ice.port);
        let out = cmd.args.len() - 1;
        cmd.args.splice(
            out..,
            ["-content_type", "audio/mpeg", "-flush_packets", "1", url.as_str()].map(String::from),
        );
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        own(child.id() as i32);
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("ffmpeg has no stdin"))?;
        // Tower's encoder arguments read a WAV stream: its preamble first,
        // as Tower writes it.
        stdin.write_all(&tower::encoder::command::input_preamble())?;
        let feeder = Feeder::start("icecast-source", move |_| Ok(stdin), pcm)?;
        Ok(Source { child, feeder })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sent(&self) -> Vec<Instant> {
        self.feeder.sent()
    }

    /// The thread that plays the input into ffmpeg.
    pub fn feeder_tid(&self) -> Option<u32> {
        self.feeder.tid()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.feeder.halt();
        let _ = self.child.kill();
        self.feeder.finish();
        let _ = self.child.wait();
    }
}

/// Busy processes, one per core, that end by themselves.
pub struct Hog {
    children: Vec<Child>,
}

impl Hog {
    /// Starts `n` copies of this bench in hog mode for `seconds`.
    pub fn start(n: usize, seconds: u64) -> std::io::Result<Hog> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for _ in 0..n {
            let c = Command::new(&exe)
                .args(["--hog", &seconds.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?;
            own(c.id() as i32);
            children.push(c);
        }
        Ok(Hog { children })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Hog mode: spins one core until `seconds` have passed.
pub fn spin(seconds: u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}
