//! Which names Tower answers to, and which pages may post to it.
//!
//! Pure; called by the accept loop for every request.
//!
//! DNS rebinding: a web page on another site can make its own name point
//! at Tower's address, and then read Tower's answers as if they were its
//! own. The browser still sends that other site's name in `Host`, so
//! Tower answers only to names it knows: its hostname, that name under
//! `.local` (with the `-2` Avahi adds after a clash), `localhost`, the
//! address the client connected to, and the names in `http.hosts`. The
//! stream and its playlists stay open to any name: any device on the
//! network may listen, and players are given all sorts of names for the
//! box.
//!
//! Cross-site requests: a page elsewhere can make the owner's browser post
//! a form to Tower. A request that changes anything must carry no
//! `Origin` (and no `Referer`), as a script does, or one naming the very
//! host and port it was sent to.

use std::net::{IpAddr, SocketAddr};

/// This machine's name, from the kernel (gethostname). Not from
/// /proc/sys/kernel/hostname: the units run with `ProcSubset=pid`, which
/// hides it, and an empty name refused `tower.local` with 421.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// Whether `name` is a host name or an IP address.
pub fn valid_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

/// Whether `origin` is `*` or `scheme://host[:port]` with no path.
pub fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    let (host, port) = split_host_port(rest);
    valid_name(host) && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

/// `host[:port]` or `[v6]:port` into the host (without brackets) and port.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// The names Tower answers to (see the module header).
#[derive(Debug, Clone)]
pub struct Hosts {
    hostname: String,
    extra: Vec<String>,
}

impl Hosts {
    /// `hostname` is the machine's; `extra` comes from `http.hosts`.
    pub fn new(hostname: &str, extra: &[String]) -> Hosts {
        Hosts {
            hostname: hostname.to_ascii_lowercase(),
            extra: extra.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// This machine's names.
    pub fn system(extra: &[String]) -> Hosts {
        Hosts::new(&hostname(), extra)
    }

    /// Whether a request whose `Host` is `header`, which arrived on the
    /// local address `local`, is for Tower. A request without `Host`
    /// (HTTP/1.0) is: no browser sends one.
    pub fn allows(&self, header: Option<&str>, local: SocketAddr) -> bool {
        let Some(header) = header else { return true };
        let (host, _) = split_host_port(header.trim());
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return ip == local.ip() || Some(ip) == mapped(local.ip()) || self.extra.contains(&host);
        }
        if host == "localhost" || self.extra.contains(&host) {
            return true;
        }
        if self.hostname.is_empty() {
            return false;
        }
        if host == self.hostname {
            return true;
        }
        // tower.local, or tower-2.local when Avahi had to rename the box.
        host.strip_suffix(".local")
            .and_then(|h| h.strip_prefix(self.hostname.as_str()))
            .is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('-')
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// How to reach the page, for a refusal's text.
    pub fn describe(&self, local: SocketAddr) -> String {
        let mut names = vec![local.ip().to_string()];
        if !self.hostname.is_empty() {
            names.push(format!("{}.local", self.hostname));
            names.push(self.hostname.clone());
        }
        names.extend(self.extra.iter().cloned());
        names.join(", ")
    }
}

/// An IPv4 address as IPv6 clients see it, and back.
fn mapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
    }
}

/// Whether a request that would change something comes from a page of
/// Tower's own: its `Origin` (else `Referer`) is absent or names the host
/// and port in `Host`. `Origin: null` (a sandboxed page, a redirect) is
/// foreign.
pub fn same_origin(origin: Option<&str>, referer: Option<&str>, host: Option<&str>) -> bool {
    let claimed = match (origin, referer) {
        (Some(o), _) => o.trim(),
        (None, Some(r)) => r.trim(),
        (None, None) => return true,
    };
    let Some(host) = host else { return false };
    let Some((scheme, rest)) = claimed.split_once("://") else {
        return false;
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.eq_ignore_ascii_case(host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "192.168.1.20:8000".parse().expect("addr")
    }

    #[test]
    fn the_hostname_is_the_kernels_and_the_system_hosts_answer_to_it() {
        let proc = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("readable here");
        assert!(!hostname().is_empty());
        assert_eq!(hostname(), proc.trim());
        let local: SocketAddr = "192.168.4.1:8000".parse().expect("address");
        let name = format!("{}.local:8000", hostname());
        assert!(Hosts::system(&[]).allows(Some(&name), local));
    }

    #[test]
    fn known_names_and_the_connected_address_are_served_others_are_not() {
        let h = Hosts::new("tower", &["radio.lan".into()]);
        for ok in [
            None,
            Some("192.168.1.20:8000"),
            Some("192.168.1.20"),
            Some("tower"),
            Some("TOWER.local:8000"),
            Some("tower.local."),
            Some("tower-2.local"),
            Some("localhost:8000"),
            Some("radio.lan:8000"),
        ] {
            assert!(h.allows(ok, local()), "{ok:?}");
        }
        for bad in [
            Some("evil.example:8000"),
            Some("tower.evil.example"),
            Some("tower-x.local"),
            Some("192.168.1.21:8000"),
            Some("10.0.0.1"),
            Some(""),
        ] {
            assert!(!h.allows(bad, local()), "{bad:?}");
        }
        let v6: SocketAddr = "[::1]:8000".parse().expect("addr");
        assert!(h.allows(Some("[::1]:8000"), v6));
        let mapped: SocketAddr = "[::ffff:192.168.1.20]:8000".parse().expect("addr");
        assert!(h.allows(Some("192.168.1.20:8000"), mapped));
        assert!(h.describe(local()).contains("tower.local"));
    }

    #[test]
    fn only_tower_own_pages_or_scripts_may_post() {
        let host = Some("192.168.1.20:8000");
        assert!(same_origin(None, None, host), "curl sends neither");
        assert!(same_origin(Some("http://192.168.1.20:8000"), None, host));
        assert!(same_origin(None, Some("http://192.168.1.20:8000/settings"), host));
        assert!(!same_origin(Some("http://evil.example"), None, host));
        assert!(!same_origin(Some("http://192.168.1.20:8001"), None, host));
        assert!(!same_origin(Some("null"), None, host));
        assert!(!same_origin(None, Some("http://evil.example/192.168.1.20:8000"), host));
        assert!(!same_origin(Some("http://192.168.1.20:8000"), None, None));
    }

    #[test]
    fn names_and_origins_are_checked() {
        assert!(valid_name("tower.lan") && valid_name("10.0.0.2") && valid_name("::1"));
        assert!(!valid_name("bad name") && !valid_name("-x") && !valid_name("a..b") && !valid_name(""));
        assert!(valid_origin("*") && valid_origin("https://radio.example.org") && valid_origin("http://[::1]:8000"));
        assert!(!valid_origin("radio.example.org") && !valid_origin("https://x/path") && !valid_origin("ftp://x"));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some("80")));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("a:80"), ("a", Some("80")));
    }
}
