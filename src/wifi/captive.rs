//! The setup hotspot's captive portal [W3]: `tower captive-portal`, run
//! while the hotspot is open by the image's tower-captive.service (a
//! dynamic user whose only privilege is binding ports below 1024).
//!
//! Two threads, "captive-dns" and "captive-http", owned by [`serve`]:
//! - DNS on UDP port 53 of the hotspot's address answers every name with
//!   that address ([`dns_answer`]; AAAA and others get no record), so a
//!   phone that joins finds Tower whatever it asks for, and its check for
//!   a captive portal (`connectivitycheck.gstatic.com`,
//!   `captive.apple.com`, …) lands here.
//! - HTTP on port 80 answers every request with a redirect
//!   ([`redirect`]): a name of Tower's own (`tower.local`, `tower`, the
//!   address) goes to the same path on Tower's port, any other name (a
//!   phone's probe) to Tower's settings page by address. Phones then open
//!   the page by themselves, and `http://tower.local/` works. Nothing of
//!   Tower is served under a foreign name: Tower itself still answers
//!   only to its own names [H6].
//!
//! Both bind with `IP_FREEBIND`, so they may start before the address is
//! up. Every request is answered alone and at once; a client has 2 s to
//! send its request head (4 KiB at most).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, sockopt};

/// How long DNS answers may be kept: short, so that a phone back on its
/// home network does not keep Tower's address for real names.
const TTL_S: u32 = 10;
/// How long a client may take to send its request head.
const HEAD_WITHIN: Duration = Duration::from_secs(2);
const MAX_HEAD: usize = 4096;
/// How often the threads look at the stop flag.
const TURN: Duration = Duration::from_millis(200);

/// The DNS answer to `query`: every A question gets `address`; `None` for
/// what is not a query (a response, a truncated packet).
pub fn dns_answer(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let rd = query[2] & 0x01;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let header = |rcode: u8, qd: u16, an: u16| {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&query[0..2]);
        h.push(0x80 | (opcode << 3) | 0x04 | rd); // QR, opcode, AA, RD
        h.push(0x80 | rcode); // RA, rcode
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&an.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    };
    if opcode != 0 {
        return Some(header(4, 0, 0)); // NOTIMP
    }
    if qdcount != 1 {
        return Some(header(1, 0, 0)); // FORMERR
    }
    // The name: labels up to a zero byte, no compression in a question.
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 || i - 12 + len > 254 {
            return Some(header(1, 0, 0));
        }
        i += 1 + len;
    }
    let question = query.get(12..i + 4)?;
    let qtype = u16::from_be_bytes([query[i], query[i + 1]]);
    let qclass = u16::from_be_bytes([query[i + 2], query[i + 3]]);
    let answers = u16::from((qtype == 1 || qtype == 255) && qclass == 1);
    let mut out = header(0, 1, answers);
    out.extend_from_slice(question);
    if answers == 1 {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // the name above, A, IN
        out.extend_from_slice(&TTL_S.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&address.octets());
    }
    Some(out)
}

/// Where a request for `host` and `path` goes: a name of Tower's own keeps
/// its path on Tower's port; any other to the settings page by address.
pub fn location(host: Option<&str>, path: &str, address: Ipv4Addr, tower_port: u16, hostname: &str) -> String {
    let name = host
        .map(|h| crate::http::host::split_host_port(h.trim()).0)
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    let own = !hostname.is_empty() && (name == hostname || name == format!("{hostname}.local"));
    // A path goes into a header and a link: plain characters only.
    let path_ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._~?=&%+-".contains(&b));
    if (own || name == address.to_string()) && path_ok {
        format!("http://{name}:{tower_port}{path}")
    } else {
        format!("http://{address}:{tower_port}/settings")
    }
}

/// The whole response to a request head (a redirect, whatever it asks).
pub fn redirect(head: &[u8], address: Ipv4Addr, tower_port: u16, hostname: &str) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut rq = httparse::Request::new(&mut headers);
    let parsed = rq.parse(head).is_ok();
    let path = if parsed { rq.path.unwrap_or("/") } else { "/" };
    let host = rq
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let to = location(host.filter(|_| parsed), path, address, tower_port, hostname);
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Tower setup</title></head>\
         <body><p><a href=\"{to}\">Tower's setup page</a></p></body></html>\n"
    );
    let head_only = parsed && rq.method == Some("HEAD");
    let mut out = format!(
        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// A socket bound to `addr` even before the address exists (`IP_FREEBIND`).
fn bind_free(addr: SocketAddrV4, ty: SockType) -> io::Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    if ty == SockType::Stream {
        socket::listen(&fd, Backlog::new(16)?)?;
    }
    Ok(fd)
}

/// Serves DNS on `dns` and HTTP on `http` (ports 53 and 80 of the hotspot's
/// address on the image) until `stop` is set; the threads are joined
/// before it returns. Either thread ending ends the other, so that a
/// portal with half of it gone exits (and systemd starts it again).
pub fn serve(
    dns: SocketAddrV4,
    http: SocketAddrV4,
    tower_port: u16,
    hostname: &str,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let udp = UdpSocket::from(bind_free(dns, SockType::Datagram)?);
    udp.set_read_timeout(Some(TURN))?;
    let tcp = TcpListener::from(bind_free(http, SockType::Stream)?);
    tcp.set_nonblocking(true)?;
    let address = *http.ip();
    let (stop_dns, stop_http) = (stop.clone(), stop.clone());
    let dns_thread = std::thread::Builder::new().name("captive-dns".into()).spawn(move || {
        let r = serve_dns(&udp, address, &stop_dns);
        stop_dns.store(true, Ordering::Relaxed);
        r
    })?;
    let name = hostname.to_string();
    let spawned = std::thread::Builder::new().name("captive-http".into()).spawn(move || {
        let r = serve_http(&tcp, address, tower_port, &name, &stop_http);
        stop_http.store(true, Ordering::Relaxed);
        r
    });
    let http_thread = match spawned {
        Ok(t) => t,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = dns_thread.join();
            return Err(e);
        }
    };
    let dns_result = dns_thread
        .join()
        .map_err(|_| io::Error::other("the DNS thread panicked"))?;
    let http_result = http_thread
        .join()
        .map_err(|_| io::Error::other("the HTTP thread panicked"))?;
    dns_result.and(http_result)
}

fn serve_dns(socket: &UdpSocket, address: Ipv4Addr, stop: &AtomicBool) -> io::Result<()> {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(answer) = dns_answer(&buf[..n], address) {
            let _ = socket.send_to(&answer, peer);
        }
    }
    Ok(())
}

fn serve_http(
    listener: &TcpListener,
    address: Ipv4Addr,
    tower_port: u16,
    hostname: &str,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => answer_http(stream, peer, address, tower_port, hostname),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(component = "captive", "accept: {e}");
                std::thread::sleep(TURN);
            }
        }
    }
    Ok(())
}

fn answer_http(mut stream: TcpStream, peer: SocketAddr, address: Ipv4Addr, tower_port: u16, hostname: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(HEAD_WITHIN));
    // One deadline for the whole head: a client sending a byte now and
    // then must not hold the portal (one connection at a time) for long.
    let deadline = Instant::now() + HEAD_WITHIN;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = redirect(&head, address, tower_port, hostname);
    tracing::debug!(component = "captive", peer = %peer, "redirected a request");
    let _ = stream.write_all(&answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOWER: Ipv4Addr = Ipv4Addr::new(192, 168, 4, 1);

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]); // RD; 1 question, 1 additional
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]); // an EDNS OPT record
        q
    }

    #[test]
    fn every_name_is_tower_and_only_a_records_are_answered() {
        let q = query(0x1234, "connectivitycheck.gstatic.com", 1);
        let a = dns_answer(&q, TOWER).expect("answer");
        assert_eq!(&a[0..2], &[0x12, 0x34], "the query's id");
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[192, 168, 4, 1]);
        let question_end = 12 + "connectivitycheck.gstatic.com".len() + 2 + 4;
        assert_eq!(&a[12..question_end], &q[12..question_end], "the question echoed");
        // AAAA: no record, so the phone uses IPv4.
        let a = dns_answer(&query(7, "tower.local", 28), TOWER).expect("answer");
        assert_eq!((u16::from_be_bytes([a[6], a[7]]), a[3] & 0x0f), (0, 0));
        // Not a query, or garbage: nothing, or an error.
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(dns_answer(&response, TOWER), None);
        assert_eq!(dns_answer(&q[..20], TOWER), None, "cut in the name");
        assert_eq!(dns_answer(&[0; 5], TOWER), None);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(dns_answer(&two, TOWER).expect("formerr")[3] & 0x0f, 1);
        let mut notify = q;
        notify[2] = 0x20;
        assert_eq!(dns_answer(&notify, TOWER).expect("notimp")[3] & 0x0f, 4);
    }

    #[test]
    fn probes_go_to_the_settings_page_and_tower_names_keep_their_path() {
        let go = |host: Option<&str>, path| location(host, path, TOWER, 8000, "tower");
        assert_eq!(
            go(Some("connectivitycheck.gstatic.com"), "/generate_204"),
            "http://192.168.4.1:8000/settings"
        );
        assert_eq!(
            go(Some("captive.apple.com"), "/hotspot-detect.html"),
            "http://192.168.4.1:8000/settings"
        );
        assert_eq!(go(None, "/"), "http://192.168.4.1:8000/settings");
        assert_eq!(go(Some("tower.local"), "/"), "http://tower.local:8000/");
        assert_eq!(
            go(Some("TOWER.local.:80"), "/settings"),
            "http://tower.local:8000/settings"
        );
        assert_eq!(go(Some("192.168.4.1"), "/status"), "http://192.168.4.1:8000/status");
        assert_eq!(go(Some("tower.evil.example"), "/"), "http://192.168.4.1:8000/settings");
        assert_eq!(go(Some("tower.local"), "/a\"><b"), "http://192.168.4.1:8000/settings");
        assert_eq!(
            go(Some("tower.local"), "/stream.m3u?x=1"),
            "http://tower.local:8000/stream.m3u?x=1"
        );
        assert_eq!(go(Some("tower.local"), "no-slash"), "http://192.168.4.1:8000/settings");
    }

    #[test]
    fn a_redirect_for_anything_even_garbage() {
        let r = redirect(
            b"GET /generate_204 HTTP/1.1\r\nHost: connectivitycheck.gstatic.com\r\n\r\n",
            TOWER,
            8000,
            "tower",
        );
        let text = String::from_utf8(r).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 302 Found\r\nLocation: http://192.168.4.1:8000/settings\r\n"),
            "{text}"
        );
        assert!(text.ends_with("</html>\n"));
        let r = String::from_utf8(redirect(
            b"HEAD / HTTP/1.1\r\nHost: tower.local\r\n\r\n",
            TOWER,
            8000,
            "tower",
        ))
        .expect("utf8");
        assert!(
            r.contains("Location: http://tower.local:8000/\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = String::from_utf8(redirect(b"\x00\x01garbage", TOWER, 8000, "tower")).expect("utf8");
        assert!(r.contains("Location: http://192.168.4.1:8000/settings"), "{r}");
    }

    #[test]
    fn the_servers_answer_on_real_sockets_and_stop() {
        let port = |ty| {
            let fd = bind_free(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), ty).expect("bind");
            let addr: SockaddrIn = socket::getsockname(fd.as_raw_fd()).expect("name");
            addr.port()
        };
        let (dns, http) = (
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(SockType::Datagram)),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(SockType::Stream)),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let server = std::thread::spawn(move || serve(dns, http, 8123, "tower", s));
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut answer = None;
        let mut buf = [0u8; 512];
        for _ in 0..20 {
            client.send_to(&query(9, "example.com", 1), dns).expect("send");
            if let Ok((n, _)) = client.recv_from(&mut buf) {
                answer = Some(buf[..n].to_vec());
                break;
            }
        }
        let answer = answer.expect("a DNS answer");
        assert_eq!(&answer[answer.len() - 4..], &[127, 0, 0, 1]);
        let mut body = String::new();
        for _ in 0..20 {
            if let Ok(mut c) = TcpStream::connect(http) {
                c.write_all(b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
                    .expect("write");
                c.read_to_string(&mut body).expect("read");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(body.contains("Location: http://127.0.0.1:8123/settings"), "{body}");
        stop.store(true, Ordering::Relaxed);
        server.join().expect("join").expect("served");
    }

    #[test]
    fn a_client_that_sends_its_head_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let slow = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            // One byte every 0.5 s for 8 s (each read alone is well within
            // its timeout), never a whole head.
            for _ in 0..16 {
                if d.load(Ordering::Relaxed) || c.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let (stream, peer) = l.accept().expect("accept");
        let t0 = Instant::now();
        answer_http(stream, peer, TOWER, 8000, "tower");
        let took = t0.elapsed();
        done.store(true, Ordering::Relaxed);
        slow.join().expect("client");
        assert!(took < HEAD_WITHIN + Duration::from_secs(1), "held for {took:?}");
    }
}
