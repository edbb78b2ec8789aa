//! A network made for one test: a namespace for "the speakers" joined to
//! this one by a veth pair on its own /24 (10.231.N.0), so multicast
//! between Tower and a renderer stays between the two ends and never
//! touches the machine's own networks. Needs root; removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    /// The namespace's name (`ip netns exec NAME …`).
    pub name: String,
    /// Tower's end (in this namespace) and its address.
    pub host_if: String,
    pub host_ip: String,
    /// The speakers' end (in the namespace) and its address.
    pub peer_if: String,
    pub peer_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        assert!(
            super::icecast::is_root(),
            "network namespaces need root (CI runs as root)"
        );
        let n = (std::process::id() % 200 + NEXT.fetch_add(1, Ordering::SeqCst) * 7) % 250 + 1;
        let name = format!("tower-spk-{}-{n}", std::process::id());
        let (host_if, peer_if) = (format!("twa{n}"), format!("twb{n}"));
        let (host_ip, peer_ip) = (format!("10.231.{n}.1"), format!("10.231.{n}.2"));
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_if,
            host_ip,
            peer_if,
            peer_ip,
        };
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.peer_if]);
        ip(&["link", "set", &ns.peer_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{}/24", ns.peer_ip), "dev", &ns.peer_if]);
        ns.exec(&["ip", "link", "set", &ns.peer_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "route", "add", "224.0.0.0/4", "dev", &ns.peer_if]);
        ns
    }

    /// Runs `args` in the namespace, to completion.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command run in the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

/// Moves the calling thread into the namespace `name`: the sockets it
/// makes from then on (and the threads it starts) are the speakers'.
pub fn enter(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on an open namespace file, for this thread only.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}
