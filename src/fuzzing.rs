//! What no input may do to the parsers that read bytes from outside:
//! panic, or yield something that breaks their contract. Each function
//! panics when an invariant breaks; the `cargo fuzz` targets in `fuzz/` call
//! them, and `tests/fuzz_regressions.rs` replays every input ever found
//! (`fuzz/regressions/<target>/`) on every test run.

use std::path::Path;

use crate::encoder::mp3::{FrameHeader, Packetizer};
use crate::http::request::{self, MAX_HEAD, Parse};

/// The MP3 packetizer [P1]: fed `data` in pieces whose sizes come from the
/// data itself, it emits only whole frames whose header gives their length.
pub fn mp3(data: &[u8]) {
    let mut p = Packetizer::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (usize::from(rest[0]) * 7 + 1).min(rest.len());
        p.push(&rest[..n], |frame| {
            let head: [u8; 4] = frame
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .expect("a frame of at least 4 bytes");
            let header = FrameHeader::parse(head).expect("an emitted frame starts with a valid header");
            assert_eq!(header.frame_len(), frame.len(), "frame length matches its header");
        });
        rest = &rest[n..];
    }
}

/// The request-head parser [H5]: a complete request has a path starting
/// with `/` and no control characters; only a head reaching [`MAX_HEAD`]
/// can be refused for its size.
pub fn request(data: &[u8]) {
    match request::parse(data) {
        Parse::Complete(r) => {
            assert!(r.path.starts_with('/'), "path {:?}", r.path);
            assert!(!r.path.chars().any(char::is_control), "path {:?}", r.path);
            assert!(r.minor_version <= 1);
        }
        Parse::Refused(r) => {
            assert!((400..=505).contains(&r.status), "status {}", r.status);
            assert!(r.status != 431 || data.len() >= MAX_HEAD || r.message.contains("header fields"));
        }
        Parse::Partial => assert!(data.len() < MAX_HEAD),
    }
}

/// The configuration loader [T4]: any file text loads or is refused with
/// an error that names something; nothing panics.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let flags = crate::config::Overrides::default();
    if let Err(e) = crate::config::load_text(Some((Path::new("fuzz.toml"), text)), &[], &flags) {
        assert!(!e.to_string().is_empty());
    }
}
