//! Playing on the speakers on the LAN, against a real renderer nobody here
//! wrote (Debian's gmediarender: gmrender-resurrect, GStreamer inside) and
//! against fake renderers that misbehave. Each test makes its own network:
//! a namespace joined by a veth pair (see `common::netns`), Tower on this
//! end, the renderers on the other, so SSDP's multicast stays between the
//! two. Needs root. Prints the figures with `--nocapture`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::settings::{PASSWORD, api};
use common::{Tower, wait_for};

/// Tower on the fallback tone, listening on `host_ip` (so it searches only
/// the test's network), with an admin password.
fn tower_on(dir: &Path, host_ip: &str) -> Tower {
    let conf = dir.join("tower.toml");
    std::fs::write(
        &conf,
        format!("[station]\nname = \"Tower test\"\n[admin]\npassword = \"{PASSWORD}\"\n"),
    )
    .expect("config");
    let listen: &'static str = Box::leak(format!("{host_ip}:0").into_boxed_str());
    Tower::start_on(
        listen,
        &["--config", conf.to_str().expect("utf8")],
        &[
            ("TOWER_DEVICE", "tower_test_no_such_device"),
            ("TOWER_PCM_GRACE_SEC", "0.2"),
        ],
    )
}

fn speakers(tower: &Tower) -> Vec<serde_json::Value> {
    let (status, body) = api(tower.addr, "GET", "/api/speakers", "");
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

fn speaker(tower: &Tower, name: &str) -> Option<serde_json::Value> {
    speakers(tower).into_iter().find(|s| s["name"] == name)
}

fn listeners(tower: &Tower) -> Vec<serde_json::Value> {
    let (status, body) = api(tower.addr, "GET", "/api/listeners", "");
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Share of 440 Hz in interleaved s16le stereo `raw`.
fn tone_440(raw: &[u8]) -> f64 {
    let samples: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect();
    common::audio::tone_ratio(&samples, 48_000, 440.0)
}

/// `POST /api/speakers/{what}` for the test's gmediarender; must succeed.
fn tell(tower: &Tower, what: &str) {
    let path = format!("/api/speakers/{what}");
    let (status, body) = api(tower.addr, "POST", &path, r#"{"id": "uuid:tower-test-0001"}"#);
    assert_eq!(status, 200, "{what}: {body}");
}

#[test]
fn gmediarender_is_found_plays_the_stream_at_its_rate_and_stops() {
    let net = Netns::new();
    let dir = tempfile::tempdir().expect("tmp");
    let decoded = dir.path().join("decoded.raw");
    // gmediarender decodes into a file: what it plays, as s16le 48 kHz.
    let pipe = format!(
        "audioconvert ! audioresample ! audio/x-raw,format=S16LE,channels=2,rate=48000 ! filesink location={}",
        decoded.display()
    );
    let renderer = Killed(
        net.command("gmediarender")
            .args(["-I", &net.peer_if, "-f", "Tower test speaker", "-u", "tower-test-0001"])
            .args(["--gstout-audiopipe", &pipe, "--gstout-buffer-duration", "0"])
            .arg(format!("--logfile={}", dir.path().join("gmr.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gmediarender (apt-get install gmediarender)"),
    );
    let peer_ip = net.peer_ip.clone();
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect((
            peer_ip.as_str(),
            49494
        ))
        .is_ok()),
        "gmediarender did not come up"
    );
    let tower = tower_on(dir.path(), &net.host_ip);

    // Found by Tower's first search (2 s after start), listed with its model.
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || speaker(&tower, "Tower test speaker")
            .is_some()),
        "not found: {:?} {}",
        speakers(&tower),
        api(tower.addr, "GET", "/api/speakers/search", "").1
    );
    let listed = started.elapsed();
    let s = speaker(&tower, "Tower test speaker").expect("listed");
    assert_eq!(s["model"], "gmediarender");
    assert_eq!(s["id"], "uuid:tower-test-0001");
    assert_eq!(
        (s["playing"].as_bool(), s["sonos"].as_bool()),
        (Some(false), Some(false))
    );
    let search = api(tower.addr, "GET", "/api/speakers/search", "").1;
    println!(
        "figure: discovery: gmediarender answered the M-SEARCH after {} ms; listed when the search ended, {} ms after it began (search window 2.5 s; listed {} ms after Tower's start)",
        search["first_answer_ms"],
        search["last_took_ms"],
        listed.as_millis()
    );
    assert_eq!(
        search["interfaces"],
        serde_json::json!([format!("{} {}", net.host_if, net.host_ip)])
    );

    // Play: gmediarender fetches /stream.mp3 as GStreamer and decodes it.
    let played = Instant::now();
    tell(&tower, "play");
    let answered = played.elapsed();
    let mut first_request = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            let found = listeners(&tower).into_iter().find(|l| {
                l["agent"].as_str().is_some_and(|a| a.contains("GStreamer"))
                    && l["peer"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(&format!("{}:", net.peer_ip)))
            });
            if let Some(l) = &found {
                let connected = Duration::from_secs_f64(l["connected_s"].as_f64().unwrap_or(0.0));
                first_request = Some(played.elapsed().saturating_sub(connected));
            }
            found.is_some()
        }),
        "gmediarender never fetched the stream: {:?}",
        listeners(&tower)
    );
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::metadata(&decoded)
            .is_ok_and(|m| m.len() > 0)),
        "nothing decoded"
    );
    let first_audio = played.elapsed();
    println!(
        "figure: Play answered after {} ms; gmediarender's first request to /stream.mp3 {} ms after Play; its first decoded audio (in its sink's file) {} ms after Play",
        answered.as_millis(),
        first_request.map_or(0, |d| d.as_millis()),
        first_audio.as_millis()
    );
    assert_eq!(speaker(&tower, "Tower test speaker").expect("listed")["playing"], true);

    // At the stream's rate for 10 s: 128 kbit/s is 16 000 bytes a second.
    let bytes = |tower: &Tower| {
        listeners(tower)
            .iter()
            .find(|l| l["agent"].as_str().is_some_and(|a| a.contains("GStreamer")))
            .and_then(|l| l["bytes"].as_u64())
    };
    std::thread::sleep(Duration::from_secs(2));
    let (b0, d0, t0) = (
        bytes(&tower).expect("listening"),
        std::fs::metadata(&decoded).expect("decoded").len(),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (b1, d1, secs) = (
        bytes(&tower).expect("still listening"),
        std::fs::metadata(&decoded).expect("decoded").len(),
        t0.elapsed().as_secs_f64(),
    );
    let rate = (b1 - b0) as f64 / secs;
    let decoded_rate = (d1 - d0) as f64 / secs / 4.0;
    println!(
        "figure: over {secs:.1} s gmediarender took {rate:.0} bytes/s of MP3 and decoded {decoded_rate:.0} samples/s"
    );
    assert!((15_000.0..17_000.0).contains(&rate), "{rate} bytes/s");
    assert!((44_000.0..52_000.0).contains(&decoded_rate), "{decoded_rate} samples/s");
    let raw = std::fs::read(&decoded).expect("decoded");
    // Whole samples only: the sink may be part-way through writing one.
    let end = raw.len() - raw.len() % 4;
    let last = &raw[end.saturating_sub(48_000 * 4)..end];
    assert!(tone_440(last) > 0.8, "it does not play the 440 Hz fallback tone");

    // Stop: the listener goes, and nothing more is decoded.
    tell(&tower, "stop");
    assert!(
        wait_for(Duration::from_secs(5), || !listeners(&tower)
            .iter()
            .any(|l| l["agent"].as_str().is_some_and(|a| a.contains("GStreamer")))),
        "still listening after Stop: {:?}",
        listeners(&tower)
    );
    assert_eq!(speaker(&tower, "Tower test speaker").expect("listed")["playing"], false);
    let after = std::fs::metadata(&decoded).expect("decoded").len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::metadata(&decoded).expect("decoded").len(),
        after,
        "still decoding"
    );
    // The buttons need the password.
    let r = common::settings::request_from(
        None,
        tower.addr,
        "POST",
        "/api/speakers/play",
        &[],
        r#"{"id":"uuid:tower-test-0001"}"#,
    );
    assert_eq!(r.status, 401);
    drop(renderer);
}

/// How a fake renderer misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fake {
    /// Answers a SOAP fault 714 ("Illegal MIME-type").
    Fault,
    /// Answers 1 MiB.
    Huge,
    /// Answers 200 with broken XML.
    Malformed,
    /// Takes the call and never answers.
    Slow,
    /// Is described, then goes away.
    Vanishing,
    /// Its description is a billion-laughs DTD (never listed).
    Entities,
    /// Its description trickles in a byte a second (never listed).
    Trickle,
}

const FAKES: [Fake; 7] = [
    Fake::Fault,
    Fake::Huge,
    Fake::Malformed,
    Fake::Slow,
    Fake::Vanishing,
    Fake::Entities,
    Fake::Trickle,
];

fn description(fake: Fake) -> String {
    if fake == Fake::Entities {
        return r#"<?xml version="1.0"?><!DOCTYPE root [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><root><device><friendlyName>&c;</friendlyName></device></root>"#.into();
    }
    format!(
        "<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\"><device>\
         <deviceType>urn:schemas-upnp-org:device:MediaRenderer:1</deviceType>\
         <friendlyName>Fake {fake:?}</friendlyName><manufacturer>Test</manufacturer><modelName>Fake</modelName>\
         <UDN>uuid:fake-{fake:?}</UDN><serviceList><service>\
         <serviceType>urn:schemas-upnp-org:service:AVTransport:1</serviceType>\
         <controlURL>/ctl</controlURL></service></serviceList></device></root>"
    )
}

fn read_request(s: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

fn respond(s: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn serve(fake: Fake, mut s: TcpStream) {
    let rq = read_request(&mut s);
    if rq.starts_with("GET ") {
        if fake == Fake::Trickle {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n<root>");
            for _ in 0..30 {
                std::thread::sleep(Duration::from_secs(1));
                if s.write_all(b"<a/>").is_err() {
                    return;
                }
            }
            return;
        }
        respond(&mut s, "200 OK", description(fake).as_bytes());
        return;
    }
    match fake {
        Fake::Fault => respond(
            &mut s,
            "500 Internal Server Error",
            b"<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault>\
              <faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
              <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>714</errorCode>\
              <errorDescription>Illegal MIME-type</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>",
        ),
        Fake::Huge => respond(&mut s, "200 OK", &vec![b'x'; 1 << 20]),
        Fake::Malformed => respond(&mut s, "200 OK", b"<s:Envelope><s:Body><u:SetAVTransportURIResponse"),
        Fake::Slow => std::thread::sleep(Duration::from_secs(30)),
        _ => {}
    }
}

/// Starts the fakes inside the namespace: an HTTP server each and one SSDP
/// responder that answers an M-SEARCH for all of them (and once for a
/// renderer off the network, which must be ignored).
fn start_fakes(net: &Netns) {
    let (peer_ip, name, ready) = (net.peer_ip.clone(), net.name.clone(), Arc::new(AtomicBool::new(false)));
    let r = ready.clone();
    std::thread::spawn(move || {
        common::netns::enter(&name);
        let mut locations = Vec::new();
        for fake in FAKES {
            let listener = TcpListener::bind((peer_ip.as_str(), 0)).expect("bind");
            locations.push(format!("http://{}/desc.xml", listener.local_addr().expect("addr")));
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(s) = s else { break };
                    if fake == Fake::Vanishing {
                        // Described once, then its listener closes: gone.
                        serve(fake, s);
                        break;
                    }
                    std::thread::spawn(move || serve(fake, s));
                }
            });
        }
        locations.push("http://203.0.113.9:80/desc.xml".into());
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("udp");
        sock.set_reuse_address(true).expect("reuse");
        sock.bind(&SocketAddr::from(([0, 0, 0, 0], 1900)).into())
            .expect("bind 1900");
        let ip: std::net::Ipv4Addr = peer_ip.parse().expect("ip");
        sock.join_multicast_v4(&"239.255.255.250".parse().expect("group"), &ip)
            .expect("join");
        let udp: UdpSocket = sock.into();
        r.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if !String::from_utf8_lossy(&buf[..n]).starts_with("M-SEARCH") {
                continue;
            }
            for (i, loc) in locations.iter().enumerate() {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: {loc}\r\nSERVER: Fake/1.0 UPnP/1.0 Fake/1.0\r\n\
                     ST: urn:schemas-upnp-org:device:MediaRenderer:1\r\nUSN: uuid:fake-{i}::urn:schemas-upnp-org:device:MediaRenderer:1\r\n\r\n"
                );
                let _ = udp.send_to(answer.as_bytes(), from);
            }
        }
    });
    assert!(
        wait_for(Duration::from_secs(5), || ready.load(Ordering::SeqCst)),
        "fakes did not start"
    );
}

#[test]
fn misbehaving_renderers_are_errors_on_the_page_and_never_hang_a_thread() {
    let net = Netns::new();
    start_fakes(&net);
    let dir = tempfile::tempdir().expect("tmp");
    let tower = tower_on(dir.path(), &net.host_ip);
    let local = common::Listener::connect(tower.addr);
    // The first search: the well-described fakes are listed; the DTD,
    // the trickle and the one off the network are not.
    assert!(
        wait_for(Duration::from_secs(20), || api(
            tower.addr,
            "GET",
            "/api/speakers/search",
            ""
        )
        .1["searches"]
            .as_u64()
            >= Some(1)),
        "no search"
    );
    let names: Vec<String> = speakers(&tower)
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "Fake Fault",
            "Fake Huge",
            "Fake Malformed",
            "Fake Slow",
            "Fake Vanishing"
        ],
        "{}",
        api(tower.addr, "GET", "/api/speakers/search", "").1
    );
    let search = api(tower.addr, "GET", "/api/speakers/search", "").1;
    let problem = search["problem"].as_str().unwrap_or_default().to_string();
    assert!(problem.contains("not valid XML"), "the DTD: {problem}");
    assert!(
        problem.contains("did not answer within 2.0 s"),
        "the trickle: {problem}"
    );
    assert!(
        !problem.contains("203.0.113.9"),
        "an answer off the network was followed: {problem}"
    );
    assert!(
        search["last_took_ms"].as_u64() < Some(7_000),
        "the search was held up: {search}"
    );

    let play = |fake: Fake| {
        let t = Instant::now();
        let r = api(
            tower.addr,
            "POST",
            "/api/speakers/play",
            &format!(r#"{{"id": "uuid:fake-{fake:?}"}}"#),
        );
        (r.0, r.1, t.elapsed())
    };
    for (fake, said) in [
        (Fake::Fault, "UPnP error 714: Illegal MIME-type"),
        (Fake::Huge, "larger than 256 KiB"),
        (Fake::Malformed, "not valid XML"),
        (Fake::Vanishing, "cannot reach it"),
    ] {
        let (status, body, took) = play(fake);
        assert_eq!(status, 502, "{fake:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(said), "{fake:?}: {error}");
        assert!(took < Duration::from_secs(3), "{fake:?} took {took:?}");
        let listed = speaker(&tower, &format!("Fake {fake:?}")).expect("still listed");
        assert!(listed["error"].as_str().unwrap_or_default().contains(said), "{listed}");
        assert_eq!(listed["playing"], false);
    }
    // Slow: the answer says it is under way; the page reads the outcome;
    // meanwhile everything else answers at once.
    let (status, body, took) = play(Fake::Slow);
    assert_eq!(status, 202, "{body}");
    assert!(took < Duration::from_millis(2_600), "{took:?}");
    let t = Instant::now();
    assert_eq!(common::http_get(tower.addr, "/status").status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "/status waited {:?}",
        t.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(5), || speaker(&tower, "Fake Slow").is_some_and(
            |s| s["error"]
                .as_str()
                .unwrap_or_default()
                .contains("did not answer within 3.0 s")
        )),
        "{:?}",
        speaker(&tower, "Fake Slow")
    );
    // An unknown id; and the listener never noticed any of it.
    let (status, _) = api(tower.addr, "POST", "/api/speakers/play", r#"{"id": "uuid:nobody"}"#);
    assert_eq!(status, 404);
    assert!(local.ended().is_none(), "the local listener was dropped");
    assert!(local.max_gap_since(Instant::now() - Duration::from_secs(8)) < Duration::from_millis(500));
    assert!(tower.log_text().contains("did not play"));
}
