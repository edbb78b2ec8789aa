//! Finding renderers: SSDP `M-SEARCH` for
//! `urn:schemas-upnp-org:device:MediaRenderer:1` on the interfaces Tower
//! serves, and only there.
//!
//! Runs on the "speakers" thread. A search sends two M-SEARCH datagrams
//! per interface (UDP may lose one; never more), with a multicast TTL of 1
//! so no router passes them on, and listens [`WINDOW`] for the unicast
//! answers. An answer counts only when it comes from that interface's
//! subnet and its `LOCATION` is an IPv4 address in the same subnet: Tower
//! never fetches anything from beyond the local networks it serves, even
//! when an answer names another host. At most [`MAX_ANSWERS`] answers per
//! search are kept (a flood is counted, not followed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::upnp::Url;

/// SSDP's multicast group and port.
pub const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// What Tower searches for.
pub const TARGET: &str = "urn:schemas-upnp-org:device:MediaRenderer:1";
/// How long renderers are given to answer (`MX` is 2 s: they answer at a
/// random time within it).
pub const WINDOW: Duration = Duration::from_millis(2500);
const MX: u32 = 2;
/// The most answers kept from one search.
pub const MAX_ANSWERS: usize = 64;

/// An interface Tower serves, with its IPv4 address and netmask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub mask: Ipv4Addr,
}

impl Interface {
    /// Whether `ip` is on this interface's network.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.mask);
        u32::from(ip) & m == u32::from(self.addr) & m
    }
}

/// The interfaces to search on for a server listening on `listen`: the one
/// with that address, or (for `0.0.0.0`) every interface that is up and
/// can multicast, loopback only when nothing else can. Why none could be
/// used, in words, when the list is empty.
pub fn interfaces(listen: IpAddr) -> Result<Vec<Interface>, String> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list the network interfaces: {e}"))?;
    use nix::net::if_::InterfaceFlags as F;
    let mut found = Vec::new();
    for ifa in all {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (Some(addr), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) else {
            continue;
        };
        let up = ifa.flags.contains(F::IFF_UP) && ifa.flags.contains(F::IFF_MULTICAST);
        found.push((
            Interface {
                name: ifa.interface_name.clone(),
                addr: addr.ip(),
                mask: mask.ip(),
            },
            up,
            ifa.flags.contains(F::IFF_LOOPBACK),
        ));
    }
    let chosen: Vec<Interface> = match listen {
        IpAddr::V4(ip) if !ip.is_unspecified() => {
            let Some((i, up, _)) = found.iter().find(|(i, _, _)| i.addr == ip) else {
                return Err(format!("no interface has the address Tower listens on ({ip})"));
            };
            if !up {
                return Err(format!("{} ({ip}) is down or cannot multicast", i.name));
            }
            vec![i.clone()]
        }
        IpAddr::V4(_) => {
            let outside: Vec<Interface> = found
                .iter()
                .filter(|(_, up, lo)| *up && !lo)
                .map(|(i, _, _)| i.clone())
                .collect();
            if outside.is_empty() {
                found
                    .iter()
                    .filter(|(_, up, _)| *up)
                    .map(|(i, _, _)| i.clone())
                    .collect()
            } else {
                outside
            }
        }
        IpAddr::V6(_) => return Err("Tower listens on IPv6 only; speakers are searched for over IPv4".into()),
    };
    if chosen.is_empty() {
        return Err("no network interface that is up can multicast".into());
    }
    Ok(chosen)
}

/// The M-SEARCH request.
pub fn m_search() -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {GROUP}\r\nMAN: \"ssdp:discover\"\r\nMX: {MX}\r\nST: {TARGET}\r\nUSER-AGENT: {}\r\n\r\n",
        super::upnp::user_agent()
    )
}

/// A renderer that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub location: Url,
    pub usn: String,
    /// The interface it answered on (Tower's address there).
    pub via: Ipv4Addr,
}

/// Reads an answer from `from` on `iface`: `None` unless it is a
/// `200 OK` for a MediaRenderer whose location is on `iface`'s network.
pub fn parse_answer(data: &[u8], from: Ipv4Addr, iface: &Interface) -> Option<Answer> {
    if !iface.holds(from) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    r.parse(data).ok()?;
    if r.code != Some(200) {
        return None;
    }
    let header = |name: &str| super::upnp::header(r.headers, name);
    if !header("ST").is_some_and(|st| st.starts_with("urn:schemas-upnp-org:device:MediaRenderer:")) {
        return None;
    }
    let location = Url::parse(header("LOCATION")?)?;
    if !iface.holds(*location.addr.ip()) {
        return None;
    }
    Some(Answer {
        location,
        usn: header("USN").unwrap_or_default().chars().take(200).collect(),
        via: iface.addr,
    })
}

/// One search socket per interface, the M-SEARCH sent twice on each.
fn send(ifaces: &[Interface]) -> (Vec<(UdpSocket, Interface)>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut problems = Vec::new();
    let request = m_search();
    for iface in ifaces {
        let made = (|| -> std::io::Result<UdpSocket> {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from((iface.addr, 0)).into())?;
            s.set_multicast_if_v4(&iface.addr)?;
            s.set_multicast_ttl_v4(1)?;
            let s: UdpSocket = s.into();
            s.set_nonblocking(true)?;
            for _ in 0..2 {
                s.send_to(request.as_bytes(), GROUP)?;
            }
            Ok(s)
        })();
        match made {
            Ok(s) => sockets.push((s, iface.clone())),
            Err(e) => problems.push(format!("{} ({}): {e}", iface.name, iface.addr)),
        }
    }
    (sockets, problems)
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Found {
    /// The answers, one per location.
    pub answers: Vec<Answer>,
    /// The interfaces it could not search on, in words.
    pub problems: Vec<String>,
    /// How long after the M-SEARCH the first answer came.
    pub first_answer: Option<Duration>,
}

/// Searches on `ifaces` for [`WINDOW`], calling `idle` every 50 ms (the
/// thread's other work waits no longer).
pub fn search(ifaces: &[Interface], idle: &mut dyn FnMut()) -> Found {
    let started = Instant::now();
    let (sockets, problems) = send(ifaces);
    let mut answers: Vec<Answer> = Vec::new();
    let mut first_answer = None;
    let mut buf = [0u8; 2048];
    let deadline = started + WINDOW;
    while Instant::now() < deadline && !sockets.is_empty() {
        let mut any = false;
        for (s, iface) in &sockets {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                any = true;
                let SocketAddr::V4(from) = from else { continue };
                let Some(a) = parse_answer(&buf[..n], *from.ip(), iface) else {
                    continue;
                };
                if answers.len() < MAX_ANSWERS && !answers.iter().any(|b| b.location == a.location) {
                    first_answer.get_or_insert_with(|| started.elapsed());
                    answers.push(a);
                }
            }
        }
        if !any {
            idle();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Found {
        answers,
        problems,
        first_answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> Interface {
        Interface {
            name: "eth0".into(),
            addr: Ipv4Addr::new(192, 168, 1, 10),
            mask: Ipv4Addr::new(255, 255, 255, 0),
        }
    }

    fn answer(location: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: {location}\r\n\
             SERVER: Linux UPnP/1.0 Sonos/70.3\r\nST: urn:schemas-upnp-org:device:MediaRenderer:1\r\n\
             USN: uuid:RINCON_1::urn:schemas-upnp-org:device:MediaRenderer:1\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn only_answers_from_and_pointing_into_the_interfaces_network_count() {
        let near = Ipv4Addr::new(192, 168, 1, 20);
        let a = parse_answer(
            &answer("http://192.168.1.20:1400/xml/device_description.xml"),
            near,
            &lan(),
        )
        .expect("answer");
        assert_eq!(a.location.addr.port(), 1400);
        assert_eq!(a.via, lan().addr);
        assert!(a.usn.starts_with("uuid:RINCON_1"));
        // From elsewhere, or pointing elsewhere (Tower would fetch it).
        let far = Ipv4Addr::new(10, 9, 9, 9);
        assert!(parse_answer(&answer("http://192.168.1.20:1400/d.xml"), far, &lan()).is_none());
        assert!(parse_answer(&answer("http://203.0.113.5/d.xml"), near, &lan()).is_none());
        assert!(parse_answer(&answer("http://router.example/d.xml"), near, &lan()).is_none());
        // Not a renderer, not an answer, garbage.
        let printer = String::from_utf8(answer("http://192.168.1.20/d.xml"))
            .expect("utf8")
            .replace("device:MediaRenderer", "device:Printer");
        assert!(parse_answer(printer.as_bytes(), near, &lan()).is_none());
        assert!(parse_answer(b"NOTIFY * HTTP/1.1\r\n\r\n", near, &lan()).is_none());
        assert!(parse_answer(&[0xFF; 300], near, &lan()).is_none());
    }

    #[test]
    fn the_search_asks_for_media_renderers_with_mx_2() {
        let m = m_search();
        assert!(m.starts_with("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"));
        assert!(m.contains("MAN: \"ssdp:discover\"\r\n") && m.contains("MX: 2\r\n"));
        assert!(m.contains("ST: urn:schemas-upnp-org:device:MediaRenderer:1\r\n"));
    }

    #[test]
    fn listening_on_one_address_searches_only_its_interface() {
        let lo = interfaces(IpAddr::V4(Ipv4Addr::LOCALHOST));
        // Loopback may or may not multicast here; either way it is the only
        // one, or the reason is said.
        match lo {
            Ok(list) => assert!(list.iter().all(|i| i.addr == Ipv4Addr::LOCALHOST)),
            Err(e) => assert!(e.contains("lo") || e.contains("127.0.0.1"), "{e}"),
        }
        let none = interfaces(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 77))).unwrap_err();
        assert!(none.contains("203.0.113.77"), "{none}");
    }
}
