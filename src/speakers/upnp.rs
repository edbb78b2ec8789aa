//! Talking to one UPnP renderer: a small HTTP client with a deadline and
//! a size limit, the device description, and AVTransport's SOAP actions.
//!
//! Runs on the "speakers" thread. Every exchange is bounded: connecting
//! within [`CONNECT_TIMEOUT`], the whole answer within the caller's
//! deadline, at most [`MAX_ANSWER`] bytes, XML parsed by `roxmltree` with
//! DTDs refused and at most [`MAX_NODES`] nodes, and written by
//! `quick-xml` (everything escaped). Only IPv4 addresses are spoken to,
//! never a name (nothing is looked up beyond the LAN), and a control URL
//! must point to the host that described it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// Connecting to a renderer may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The largest answer taken (head and body): a Sonos description is about
/// 20 KiB.
pub const MAX_ANSWER: usize = 256 * 1024;
/// The most XML nodes parsed from one answer.
pub const MAX_NODES: u32 = 20_000;
/// The longest name or model shown, in characters.
const MAX_TEXT: usize = 100;

/// Why an exchange with a renderer failed, in words for the page.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpnpError {
    #[error("cannot reach it at {0}: {1}")]
    Connect(SocketAddrV4, String),
    #[error("it did not answer within {0:.1} s")]
    Slow(f64),
    #[error("its answer is larger than {} KiB", MAX_ANSWER / 1024)]
    TooLarge,
    #[error("its answer is not HTTP: {0}")]
    NotHttp(String),
    #[error("its answer is not valid XML: {0}")]
    BadXml(String),
    #[error("{0}")]
    Description(String),
    #[error("it refused ({0})")]
    Fault(String),
    #[error("the connection broke: {0}")]
    Broken(String),
}

/// `http://a.b.c.d[:port]/path`: where a renderer is. Names are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddrV4,
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Option<Url> {
        let rest = text.trim().strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()?),
            None => (authority, 80),
        };
        let ip: Ipv4Addr = host.parse().ok()?;
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return None;
        }
        Some(Url {
            addr: SocketAddrV4::new(ip, port),
            path: path.to_string(),
        })
    }

    /// `reference` (absolute, or a path, or relative) resolved against this
    /// URL; `None` when it names another host.
    pub fn join(&self, reference: &str) -> Option<Url> {
        let reference = reference.trim();
        if reference.starts_with("http://") {
            let url = Url::parse(reference)?;
            return (url.addr.ip() == self.addr.ip()).then_some(url);
        }
        if reference.contains("://") || reference.bytes().any(|b| !b.is_ascii_graphic()) {
            return None;
        }
        let path = if reference.starts_with('/') {
            reference.to_string()
        } else {
            let dir = self.path.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{reference}")
        };
        Some(Url { addr: self.addr, path })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

/// An HTTP answer: its status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Tower's address on the connection (where the renderer reaches it).
    pub local: Option<Ipv4Addr>,
}

/// Sends `head` and `body` to `addr` and reads the whole answer
/// (`Connection: close`) within `deadline`.
pub fn exchange(addr: SocketAddrV4, head: &str, body: &[u8], deadline: Duration) -> Result<Reply, UpnpError> {
    let started = Instant::now();
    let slow = || UpnpError::Slow(deadline.as_secs_f64());
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), CONNECT_TIMEOUT.min(deadline)).map_err(|e| {
        if e.kind() == ErrorKind::TimedOut {
            UpnpError::Connect(addr, "no answer".into())
        } else {
            UpnpError::Connect(addr, e.to_string())
        }
    })?;
    let local = match s.local_addr() {
        Ok(SocketAddr::V4(a)) => Some(*a.ip()),
        _ => None,
    };
    let left = || deadline.checked_sub(started.elapsed()).filter(|d| !d.is_zero());
    let _ = s.set_write_timeout(Some(left().ok_or_else(slow)?));
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => slow(),
        _ => UpnpError::Broken(e.to_string()),
    })?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let wait = left().ok_or_else(slow)?;
        let _ = s.set_read_timeout(Some(wait));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > MAX_ANSWER {
                    return Err(UpnpError::TooLarge);
                }
                if complete(&answer) {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(slow()),
            Err(e) if answer.is_empty() => return Err(UpnpError::Broken(e.to_string())),
            Err(_) => break,
        }
    }
    let mut reply = parse_reply(&answer)?;
    reply.local = local;
    Ok(reply)
}

/// Whether `answer` holds a whole response with a `Content-Length`
/// (renderers that keep the connection open despite `Connection: close`).
fn complete(answer: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(at)) = r.parse(answer) else {
        return false;
    };
    let length = header(r.headers, "Content-Length").and_then(|v| v.parse::<usize>().ok());
    length.is_some_and(|n| answer.len() >= at + n)
}

/// The value of the header `name` (trimmed), if it is there and text.
pub fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// The status and body of a whole answer (a chunked body is joined).
pub fn parse_reply(answer: &[u8]) -> Result<Reply, UpnpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let at = match r.parse(answer) {
        Ok(httparse::Status::Complete(at)) => at,
        Ok(httparse::Status::Partial) if answer.is_empty() => {
            return Err(UpnpError::NotHttp("it closed without answering".into()));
        }
        Ok(httparse::Status::Partial) => return Err(UpnpError::NotHttp("the answer was cut short".into())),
        Err(e) => return Err(UpnpError::NotHttp(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let header = |name: &str| header(r.headers, name);
    let rest = &answer[at..];
    let body = if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).ok_or_else(|| UpnpError::NotHttp("a broken chunked body".into()))?
    } else if let Some(n) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < n {
            return Err(UpnpError::NotHttp("the body was cut short".into()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        body,
        local: None,
    })
}

/// A chunked body joined; `None` if malformed.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Parses XML with Tower's limits: no DTD (no entity expansion), at most
/// [`MAX_NODES`] nodes.
pub fn xml(text: &str) -> Result<roxmltree::Document<'_>, UpnpError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(text, options).map_err(|e| UpnpError::BadXml(e.to_string()))
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> String {
    let raw = child(node, name).and_then(|c| c.text()).unwrap_or_default();
    raw.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_TEXT)
        .collect()
}

/// What Tower needs from a renderer's device description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The MediaRenderer device's `UDN` (`uuid:…`): its stable id.
    pub udn: String,
    pub name: String,
    pub model: String,
    pub manufacturer: String,
    /// A Sonos player: it wants `x-rincon-mp3radio://` for a live MP3.
    pub sonos: bool,
    /// AVTransport's control URL.
    pub control: Url,
    /// AVTransport's service type (`urn:schemas-upnp-org:service:AVTransport:1`).
    pub service: String,
}

const MEDIA_RENDERER: &str = "urn:schemas-upnp-org:device:MediaRenderer:";
const AV_TRANSPORT: &str = "urn:schemas-upnp-org:service:AVTransport:";

/// The MediaRenderer (the root device or one inside it, as on a Sonos) in
/// the description at `location`.
pub fn describe(text: &str, location: &Url) -> Result<Description, UpnpError> {
    let doc = xml(text)?;
    let root = doc.root_element();
    let bad = |why: &str| UpnpError::Description(why.to_string());
    let base = match child(root, "URLBase").and_then(|b| b.text()) {
        Some(b) if !b.trim().is_empty() => location
            .join(b)
            .ok_or_else(|| bad("its URLBase points to another host"))?,
        _ => location.clone(),
    };
    let devices: Vec<_> = root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "device")
        .collect();
    let renderer = devices
        .iter()
        .find(|d| text_of(**d, "deviceType").starts_with(MEDIA_RENDERER))
        .ok_or_else(|| bad("it is not a MediaRenderer"))?;
    let service = child(*renderer, "serviceList")
        .into_iter()
        .flat_map(|l| l.children())
        .find(|s| s.is_element() && text_of(*s, "serviceType").starts_with(AV_TRANSPORT))
        .ok_or_else(|| bad("it has no AVTransport service"))?;
    let control = base
        .join(&text_of(service, "controlURL"))
        .ok_or_else(|| bad("its AVTransport control URL points to another host"))?;
    let manufacturer = text_of(*renderer, "manufacturer");
    let udn = text_of(*renderer, "UDN");
    if udn.is_empty() {
        return Err(bad("it has no UDN"));
    }
    let sonos = manufacturer.to_ascii_lowercase().contains("sonos")
        || udn.starts_with("uuid:RINCON_")
        || devices
            .iter()
            .any(|d| text_of(*d, "deviceType").contains(":ZonePlayer:"));
    // A Sonos names its room; its friendly name is "IP - Model".
    let room = devices.iter().map(|d| text_of(*d, "roomName")).find(|r| !r.is_empty());
    let name = room.unwrap_or_else(|| text_of(*renderer, "friendlyName"));
    Ok(Description {
        name: if name.is_empty() { udn.clone() } else { name },
        model: text_of(*renderer, "modelName"),
        manufacturer,
        sonos,
        control,
        service: text_of(service, "serviceType"),
        udn,
    })
}

/// The DIDL-Lite item for Tower's stream: the station's name, an audio
/// broadcast, `http-get:*:audio/mpeg:*`.
pub fn didl(station: &str, uri: &str) -> String {
    let mut w = Writer::new(Vec::new());
    let mut root = BytesStart::new("DIDL-Lite");
    root.push_attribute(("xmlns", "urn:schemas-upnp-org:metadata-1-0/DIDL-Lite/"));
    root.push_attribute(("xmlns:dc", "http://purl.org/dc/elements/1.1/"));
    root.push_attribute(("xmlns:upnp", "urn:schemas-upnp-org:metadata-1-0/upnp/"));
    let mut item = BytesStart::new("item");
    item.push_attribute(("id", "tower"));
    item.push_attribute(("parentID", "0"));
    item.push_attribute(("restricted", "1"));
    let mut res = BytesStart::new("res");
    res.push_attribute(("protocolInfo", "http-get:*:audio/mpeg:*"));
    let events = [
        Event::Start(root),
        Event::Start(item),
        Event::Start(BytesStart::new("dc:title")),
        Event::Text(BytesText::new(station)),
        Event::End(BytesEnd::new("dc:title")),
        Event::Start(BytesStart::new("upnp:class")),
        Event::Text(BytesText::new("object.item.audioItem.audioBroadcast")),
        Event::End(BytesEnd::new("upnp:class")),
        Event::Start(res),
        Event::Text(BytesText::new(uri)),
        Event::End(BytesEnd::new("res")),
        Event::End(BytesEnd::new("item")),
        Event::End(BytesEnd::new("DIDL-Lite")),
    ];
    for e in events {
        // Writing into a Vec cannot fail.
        let _ = w.write_event(e);
    }
    String::from_utf8_lossy(&w.into_inner()).into_owned()
}

/// A SOAP envelope calling `action` of `service` with `args` (each value
/// escaped; a DIDL-Lite document travels as escaped text).
pub fn envelope(service: &str, action: &str, args: &[(&str, &str)]) -> String {
    let mut w = Writer::new(Vec::new());
    let mut env = BytesStart::new("s:Envelope");
    env.push_attribute(("xmlns:s", "http://schemas.xmlsoap.org/soap/envelope/"));
    env.push_attribute(("s:encodingStyle", "http://schemas.xmlsoap.org/soap/encoding/"));
    let call = format!("u:{action}");
    let mut call_start = BytesStart::new(call.as_str());
    call_start.push_attribute(("xmlns:u", service));
    let mut events = vec![
        Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)),
        Event::Start(env),
        Event::Start(BytesStart::new("s:Body")),
        Event::Start(call_start),
    ];
    for (name, value) in args {
        events.push(Event::Start(BytesStart::new(*name)));
        events.push(Event::Text(BytesText::new(value)));
        events.push(Event::End(BytesEnd::new(*name)));
    }
    events.extend([
        Event::End(BytesEnd::new(call.as_str())),
        Event::End(BytesEnd::new("s:Body")),
        Event::End(BytesEnd::new("s:Envelope")),
    ]);
    for e in events {
        let _ = w.write_event(e);
    }
    String::from_utf8_lossy(&w.into_inner()).into_owned()
}

/// What a UPnP error code means (AVTransport's own and the common ones).
fn meaning(code: &str) -> &'static str {
    match code {
        "401" => "invalid action",
        "402" => "invalid arguments",
        "501" => "action failed",
        "701" => "transition not available",
        "702" => "no contents",
        "714" => "illegal MIME type: the stream was refused as not encoded correctly",
        "716" => "resource not found: it could not fetch the stream",
        "718" => "invalid instance ID",
        _ => "",
    }
}

/// The reason in a SOAP fault (`UPnPError`'s code and description).
pub fn fault(body: &str, status: u16) -> String {
    let Ok(doc) = xml(body) else {
        return format!("HTTP {status}, and its fault is not valid XML");
    };
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(|t| t.trim().chars().take(MAX_TEXT).collect::<String>())
    };
    match (
        find("errorCode"),
        find("errorDescription").or_else(|| find("faultstring")),
    ) {
        (Some(code), description) => {
            let said = description.filter(|d| !d.is_empty());
            let known = meaning(&code);
            match (said, known) {
                (Some(d), "") => format!("UPnP error {code}: {d}"),
                (Some(d), k) => format!("UPnP error {code}: {d}; {k}"),
                (None, "") => format!("UPnP error {code}"),
                (None, k) => format!("UPnP error {code}: {k}"),
            }
        }
        (None, Some(d)) => format!("HTTP {status}: {d}"),
        (None, None) => format!("HTTP {status}"),
    }
}

/// Calls `action` on the renderer's AVTransport within `deadline`;
/// returns Tower's address on that connection.
pub fn call(
    d: &Description,
    action: &str,
    args: &[(&str, &str)],
    deadline: Duration,
) -> Result<Option<Ipv4Addr>, UpnpError> {
    let body = envelope(&d.service, action, args);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         SOAPACTION: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: {}\r\n\r\n",
        d.control.path,
        d.control.addr,
        d.service,
        body.len(),
        user_agent()
    );
    let reply = exchange(d.control.addr, &head, body.as_bytes(), deadline)?;
    let text = String::from_utf8_lossy(&reply.body);
    if reply.status != 200 {
        return Err(UpnpError::Fault(fault(&text, reply.status)));
    }
    let doc = xml(&text)?;
    let answered = format!("{action}Response");
    if !doc
        .descendants()
        .any(|n| n.is_element() && n.tag_name().name() == answered)
    {
        return Err(UpnpError::BadXml(format!("no {answered} in its answer")));
    }
    Ok(reply.local)
}

/// Fetches and reads the description at `location` within `deadline`.
pub fn fetch_description(location: &Url, deadline: Duration) -> Result<Description, UpnpError> {
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: {}\r\n\r\n",
        location.path,
        location.addr,
        user_agent()
    );
    let reply = exchange(location.addr, &head, &[], deadline)?;
    if reply.status != 200 {
        return Err(UpnpError::Description(format!(
            "its description answered HTTP {}",
            reply.status
        )));
    }
    let text = std::str::from_utf8(&reply.body).map_err(|_| UpnpError::BadXml("not UTF-8".into()))?;
    describe(text, location)
}

/// How Tower names itself to renderers (UPnP's `OS/version UPnP/1.0 product/version`).
pub fn user_agent() -> String {
    format!("Linux UPnP/1.0 Tower/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Url {
        Url::parse("http://192.168.1.20:1400/xml/device_description.xml").expect("url")
    }

    #[test]
    fn urls_are_ipv4_only_and_references_stay_on_the_host() {
        let l = loc();
        assert_eq!(l.addr, "192.168.1.20:1400".parse().expect("addr"));
        assert_eq!(Url::parse("http://10.0.0.2/d.xml").map(|u| u.addr.port()), Some(80));
        assert!(
            Url::parse("http://printer.local:80/").is_none(),
            "names are not looked up"
        );
        assert!(Url::parse("https://10.0.0.2/").is_none());
        assert_eq!(
            l.join("/MediaRenderer/AVTransport/Control").map(|u| u.to_string()),
            Some("http://192.168.1.20:1400/MediaRenderer/AVTransport/Control".into())
        );
        assert_eq!(l.join("ctl").map(|u| u.path), Some("/xml/ctl".into()));
        assert!(l.join("http://8.8.8.8/ctl").is_none(), "another host");
        assert!(l.join("file:///etc/passwd").is_none());
    }

    const SONOS: &str = r#"<?xml version="1.0" encoding="utf-8" ?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:ZonePlayer:1</deviceType><friendlyName>192.168.1.20 - Sonos One</friendlyName>
<manufacturer>Sonos, Inc.</manufacturer><modelName>Sonos One</modelName><UDN>uuid:RINCON_000E58A0123401400</UDN><roomName>Kitchen</roomName>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:MediaRenderer:1</deviceType>
<friendlyName>Kitchen - Sonos One Media Renderer</friendlyName><manufacturer>Sonos, Inc.</manufacturer><modelName>Sonos One</modelName>
<UDN>uuid:RINCON_000E58A0123401400_MR</UDN><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:RenderingControl:1</serviceType><controlURL>/MediaRenderer/RenderingControl/Control</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:AVTransport:1</serviceType><serviceId>urn:upnp-org:serviceId:AVTransport</serviceId>
<controlURL>/MediaRenderer/AVTransport/Control</controlURL></service></serviceList></device></deviceList></device></root>"#;

    #[test]
    fn a_sonos_is_found_inside_its_zone_player_and_recognised() {
        let d = describe(SONOS, &loc()).expect("describe");
        assert_eq!(d.udn, "uuid:RINCON_000E58A0123401400_MR");
        assert_eq!((d.name.as_str(), d.model.as_str()), ("Kitchen", "Sonos One"));
        assert!(d.sonos);
        assert_eq!(
            d.control.to_string(),
            "http://192.168.1.20:1400/MediaRenderer/AVTransport/Control"
        );
        assert_eq!(d.service, "urn:schemas-upnp-org:service:AVTransport:1");
    }

    #[test]
    fn hostile_or_broken_descriptions_are_errors_in_words() {
        let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><root>&lol2;</root>"#;
        assert!(matches!(describe(billion_laughs, &loc()), Err(UpnpError::BadXml(_))));
        assert!(matches!(describe("<root><device>", &loc()), Err(UpnpError::BadXml(_))));
        let many = format!("<root>{}</root>", "<a/>".repeat(MAX_NODES as usize + 10));
        assert!(matches!(describe(&many, &loc()), Err(UpnpError::BadXml(_))));
        let printer = "<root><device><deviceType>urn:schemas-upnp-org:device:Printer:1</deviceType><UDN>uuid:p</UDN></device></root>";
        assert_eq!(
            describe(printer, &loc()).unwrap_err().to_string(),
            "it is not a MediaRenderer"
        );
        let elsewhere = SONOS.replace("/MediaRenderer/AVTransport/Control", "http://203.0.113.9/ctl");
        assert!(
            describe(&elsewhere, &loc())
                .unwrap_err()
                .to_string()
                .contains("another host")
        );
        let long_name = SONOS.replace(
            "<roomName>Kitchen</roomName>",
            &format!("<roomName>{}\n</roomName>", "x".repeat(5000)),
        );
        assert_eq!(describe(&long_name, &loc()).expect("describe").name.len(), MAX_TEXT);
    }

    #[test]
    fn the_didl_and_the_envelope_are_escaped_xml_that_parses_back() {
        let uri = "http://10.0.0.1:8000/stream.mp3";
        let d = didl("Tom & Jerry's <Radio>", uri);
        let doc = xml(&d).expect("didl parses");
        let get = |name: &str| {
            doc.descendants()
                .find(|n| n.tag_name().name() == name)
                .and_then(|n| n.text())
                .map(str::to_string)
        };
        assert_eq!(get("title").as_deref(), Some("Tom & Jerry's <Radio>"));
        assert_eq!(get("class").as_deref(), Some("object.item.audioItem.audioBroadcast"));
        assert_eq!(get("res").as_deref(), Some(uri));
        let env = envelope(
            "urn:schemas-upnp-org:service:AVTransport:1",
            "SetAVTransportURI",
            &[("InstanceID", "0"), ("CurrentURI", uri), ("CurrentURIMetaData", &d)],
        );
        let e = xml(&env).expect("envelope parses");
        let meta = e
            .descendants()
            .find(|n| n.tag_name().name() == "CurrentURIMetaData")
            .and_then(|n| n.text())
            .expect("metadata");
        assert_eq!(meta, d, "the DIDL travels whole, as text");
    }

    #[test]
    fn faults_say_the_upnp_error_and_what_it_means() {
        let body = r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">
<errorCode>714</errorCode><errorDescription>Illegal MIME-type</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#;
        let f = fault(body, 500);
        assert!(
            f.starts_with("UPnP error 714: Illegal MIME-type; illegal MIME type"),
            "{f}"
        );
        assert_eq!(fault("<oops", 500), "HTTP 500, and its fault is not valid XML");
    }

    #[test]
    fn answers_are_read_whole_chunked_or_not_and_cut_ones_are_errors() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").expect("reply");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r =
            parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
                .expect("chunked");
        assert_eq!(r.body, b"abcde");
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse_reply(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_reply(b"").is_err());
    }
}
