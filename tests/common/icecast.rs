//! A Debian `icecast2` process on 127.0.0.1, for the Icecast tests and the
//! comparison bench. Icecast refuses to run as root: under root the
//! configuration must change the owner to nobody, who then needs to write
//! the logs, so the temporary directory is opened to all.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// Writes an `icecast.xml` for `port`, with `dir` as its base and `dir/log`
/// as its log directory, and returns its text.
pub type ConfigFn = Box<dyn Fn(u16, &Path, &Path) -> String>;

/// An icecast2 process on 127.0.0.1, killed on drop.
pub struct Icecast {
    dir: tempfile::TempDir,
    pub port: u16,
    config: ConfigFn,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (free now; nothing holds it).
/// A free port for a server the test starts (and may restart on the same
/// port). Taken below Linux's ephemeral range (32768–60999), never from
/// it: while the server is down, a connect to a port in that range can be
/// given that very port as its source and connect to itself (a TCP
/// self-connect), which then holds the port, so the server cannot bind it
/// again when it comes back. CI once saw Icecast "not back within 35 s".
pub fn free_port() -> u16 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let mut x = seed | 1;
    for _ in 0..1000 {
        // xorshift: a different port each try, and per test process.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = 20_000 + (x % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Whether this process runs as root (and icecast2 must change owner).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The source password of [`test_config`] (its admin password adds
/// `-admin`).
pub const PASSWORD: &str = "tower-test-secret";

/// Icecast as the tests want it: no burst, room for 100 listeners.
pub fn test_config(port: u16, d: &Path, log: &Path) -> String {
    let owner = if is_root() {
        "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
    } else {
        ""
    };
    format!(
        "<icecast>\n\
         <limits><clients>100</clients><sources>4</sources><burst-size>0</burst-size>\
         <source-timeout>10</source-timeout></limits>\n\
         <authentication><source-password>{PASSWORD}</source-password>\
         <admin-user>admin</admin-user><admin-password>{PASSWORD}-admin</admin-password></authentication>\n\
         <hostname>127.0.0.1</hostname>\n\
         <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>\n\
         <fileserve>0</fileserve>\n\
         <paths><basedir>{d}</basedir><logdir>{log}</logdir>\
         <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot></paths>\n\
         <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>\n\
         <security><chroot>0</chroot>{owner}</security>\n\
         </icecast>\n",
        d = d.display(),
        log = log.display(),
    )
}

impl Icecast {
    /// Starts icecast2 with the configuration `config(port, dir, logdir)`
    /// and waits until it accepts connections.
    pub fn start(config: ConfigFn) -> Icecast {
        let dir = tempfile::tempdir().expect("tmp");
        let mut ice = Icecast {
            port: free_port(),
            dir,
            config,
            child: None,
        };
        for _ in 0..4 {
            if ice.try_spawn() {
                return ice;
            }
            // Something else (another test's server) took the port between
            // `free_port` and icecast's bind, and icecast gave up: another port.
            ice.kill();
            ice.port = free_port();
        }
        ice.spawn();
        ice
    }

    fn write_config(&self) -> PathBuf {
        let d = self.dir.path();
        let log = d.join("log");
        std::fs::create_dir_all(&log).expect("log dir");
        // Under root icecast2 runs as nobody, who must write its logs.
        Command::new("chmod")
            .args(["-R", "777"])
            .arg(d)
            .status()
            .expect("chmod");
        let path = d.join("icecast.xml");
        std::fs::write(&path, (self.config)(self.port, d, &log)).expect("icecast.xml");
        path
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The error log, for messages when something goes wrong.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join("error.log")).unwrap_or_default()
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "icecast2 did not come up on port {}:\n{}",
            self.port,
            self.error_log()
        );
    }

    /// Starts the process; whether it accepts connections within 10 s and
    /// is still running a moment later (one that could not bind its port
    /// exits, while whatever holds the port answers the connection).
    fn try_spawn(&mut self) -> bool {
        let conf = self.write_config();
        let child = Command::new("icecast2")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("icecast2 (apt-get install icecast2)");
        self.child = Some(child);
        let addr = self.addr();
        // (A connection to itself is no Icecast.)
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok_and(|s| s.local_addr().ok() != Some(addr))
        });
        if !up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Icecast {
    fn drop(&mut self) {
        self.kill();
    }
}
