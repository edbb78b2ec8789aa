//! Reading a request head [H5]: bytes in, a [`Request`] or the 4xx/5xx that
//! names what was wrong. Pure: no sockets, no time; fuzzed
//! (`fuzz/fuzz_targets/request.rs`).
//!
//! A body is read only when `Content-Length` announces one of at most
//! [`MAX_BODY`] bytes (the settings forms); `Transfer-Encoding` is
//! refused (411), a larger body too (413).
//!
//! The head is parsed with `httparse`. Tower serves no files, so a path is
//! only ever compared with its routes; it is still percent-decoded, and
//! refused when the encoding is broken or decodes to control characters,
//! so a bad request is named as one rather than answered with a 404.

/// The largest request head Tower reads (request line plus headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields a request may carry.
pub const MAX_HEADERS: usize = 48;
/// The largest request body Tower reads (a settings change is a few
/// hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// The most a request may take in all.
pub const MAX_REQUEST: usize = MAX_HEAD + MAX_BODY;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The percent-decoded path, always starting with `/`.
    pub path: String,
    /// The raw query string (after `?`, before any `#`), possibly empty.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, values as (lossy) UTF-8, trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; empty without one).
    pub body: Vec<u8>,
}

/// A request Tower will not serve: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// What the bytes read so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet (and still within [`MAX_HEAD`]).
    Partial,
    /// A whole head and its body; anything after them (a pipelined
    /// request) is ignored, as Tower answers one request per connection.
    Complete(Request),
    Refused(Refusal),
}

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Parse::Refused(Refusal::new(431, format!("more than {MAX_HEADERS} header fields")));
        }
        Err(httparse::Error::Version) if names_a_version(buf) => {
            return Parse::Refused(Refusal::new(505, "only HTTP/1.0 and HTTP/1.1 are served"));
        }
        Err(e) => return Parse::Refused(Refusal::new(400, format!("malformed request: {e}"))),
    };
    let head_len = match status {
        httparse::Status::Partial if buf.len() >= MAX_HEAD => {
            return Parse::Refused(Refusal::new(431, format!("request head larger than {MAX_HEAD} bytes")));
        }
        httparse::Status::Partial => return Parse::Partial,
        httparse::Status::Complete(n) => n,
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Parse::Refused(Refusal::new(400, "malformed request line"));
    };
    let (path, query) = match split_target(target) {
        Ok(pq) => pq,
        Err(r) => return Parse::Refused(r),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let body_len = match body_length(&headers) {
        Ok(n) => n,
        Err(r) => return Parse::Refused(r),
    };
    let Some(body) = buf.get(head_len..head_len + body_len) else {
        return Parse::Partial;
    };
    Parse::Complete(Request {
        method: method.to_string(),
        path,
        query,
        minor_version,
        body: body.to_vec(),
        headers,
    })
}

/// The body's length from the head: `Content-Length` (one value, at most
/// [`MAX_BODY`]); none without it.
fn body_length(headers: &[(String, String)]) -> Result<usize, Refusal> {
    let named = |name: &'static str| headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name));
    if named("Transfer-Encoding").next().is_some() {
        return Err(Refusal::new(
            411,
            "send the body with Content-Length, not Transfer-Encoding",
        ));
    }
    let mut lengths = named("Content-Length").map(|(_, v)| v.parse::<usize>());
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => return Ok(0),
        (Some(Ok(n)), None) => n,
        _ => return Err(Refusal::new(400, "one Content-Length, a whole number")),
    };
    if length > MAX_BODY {
        return Err(Refusal::new(413, format!("request body larger than {MAX_BODY} bytes")));
    }
    Ok(length)
}

/// The pairs of an `application/x-www-form-urlencoded` body (or query),
/// decoded; pairs that do not decode are left out.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |s: &str| form_decode(&s.replace('+', " "));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `%XX` decoding for form fields (control characters allowed: a
/// field's own checks decide).
fn form_decode(s: &str) -> Option<String> {
    String::from_utf8(unescape(s)?).ok()
}

/// The bytes `%XX` escapes stand for; `None` if an escape is broken.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether the request line ends in an HTTP version (one Tower does not
/// serve), rather than in garbage.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let last = line.rsplit(|b| *b == b' ').next().unwrap_or_default();
    last.starts_with(b"HTTP/")
}

/// Splits a request target into its decoded path and raw query. Accepts
/// origin form (`/stream?x`) and absolute form (`http://host/stream`, which
/// proxies send and servers must accept).
fn split_target(target: &str) -> Result<(String, String), Refusal> {
    let origin = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => target,
    };
    if !origin.starts_with('/') {
        return Err(Refusal::new(
            400,
            format!("request target must be a path: {target:.64}"),
        ));
    }
    let origin = origin.split('#').next().unwrap_or_default();
    let (raw_path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = percent_decode(raw_path)
        .ok_or_else(|| Refusal::new(400, format!("bad percent-encoding in path: {raw_path:.64}")))?;
    Ok((path, query.to_string()))
}

/// Decodes `%XX` escapes; `None` if an escape is broken or the result is
/// not UTF-8 or holds control characters.
fn percent_decode(s: &str) -> Option<String> {
    let decoded = String::from_utf8(unescape(s)?).ok()?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

impl Request {
    /// A header's value (names compare without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, as sent.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Request {
        match parse(raw.as_bytes()) {
            Parse::Complete(r) => r,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn refused(raw: &[u8]) -> u16 {
        match parse(raw) {
            Parse::Refused(r) => r.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn a_listener_request_is_read_with_its_query_and_headers() {
        let r = complete("GET /stream?burst_ms=0 HTTP/1.1\r\nHost: tower.local:8000\r\nIcy-MetaData: 1\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/stream");
        assert_eq!(r.query_param("burst_ms"), Some("0"));
        assert_eq!(r.header("icy-metadata"), Some("1"));
        assert_eq!(r.header("HOST"), Some("tower.local:8000"));
        assert_eq!(r.minor_version, 1);
        assert_eq!(complete("HEAD / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn a_head_arriving_in_pieces_is_partial_until_its_blank_line() {
        let raw = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Parse::Partial, "cut at {cut}");
        }
        assert!(matches!(parse(raw), Parse::Complete(_)));
    }

    #[test]
    fn absolute_form_targets_are_served_by_their_path() {
        let r = complete("GET http://tower.local:8000/stream?burst_ms=5 HTTP/1.1\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/stream", "burst_ms=5"));
        assert_eq!(complete("GET HTTP://tower.local HTTP/1.1\r\n\r\n").path, "/");
    }

    #[test]
    fn paths_are_percent_decoded_and_broken_encodings_refused() {
        assert_eq!(complete("GET /%73tream HTTP/1.1\r\n\r\n").path, "/stream");
        assert_eq!(
            complete("GET /../../etc/passwd HTTP/1.1\r\n\r\n").path,
            "/../../etc/passwd"
        );
        assert_eq!(refused(b"GET /%zz HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /a% HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /%00 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused(b"GET /%ff%fe HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn malformed_heads_are_refused_with_the_status_that_fits() {
        assert_eq!(refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400); // TLS hello
        assert_eq!(refused(b"GET /stream\r\n\r\n"), 400); // HTTP/0.9
        assert_eq!(refused(b"GET /stream HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(refused(b"GET stream HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused(b"GET * HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused(b"THIS IS NOT HTTP\r\n\r\n"), 400);
        assert_eq!(refused(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
        let huge = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX_HEAD));
        assert_eq!(refused(huge.as_bytes()), 431);
    }

    #[test]
    fn what_follows_the_head_is_left_alone() {
        let r = complete("GET /status HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/status");
        assert!(r.body.is_empty());
    }

    #[test]
    fn a_body_is_read_to_its_length_and_limited() {
        let raw = b"POST /api/settings HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\": \"b\"}";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Parse::Partial, "cut at {cut}");
        }
        assert_eq!(
            complete(std::str::from_utf8(raw).expect("utf8")).body,
            b"{\"a\": \"b\"}"
        );
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(refused(big.as_bytes()), 413);
        assert_eq!(refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    }

    #[test]
    fn form_bodies_are_decoded() {
        assert_eq!(
            form_pairs(b"station.name=Caf%C3%A9+Radio&capture.level=-6dB&bad=%zz&x"),
            vec![
                ("station.name".to_string(), "Café Radio".to_string()),
                ("capture.level".to_string(), "-6dB".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics_and_a_complete_path_starts_with_a_slash(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Parse::Complete(r) = parse(&bytes) {
                proptest::prop_assert!(r.path.starts_with('/'));
            }
        }
    }
}
