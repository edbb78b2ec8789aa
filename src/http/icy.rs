//! ICY (SHOUTcast/Icecast) metadata for listeners that ask for it.
//!
//! A client that sends `Icy-MetaData: 1` is told `icy-metaint: N` and then
//! gets, after every N bytes of audio, one metadata block: a length byte L
//! and L × 16 bytes holding `StreamTitle='…';`, zero-padded. A client that
//! does not ask never gets a metadata byte. [`IcySink`] wraps a listener's
//! connection and inserts the blocks, so the hub keeps sending every
//! listener the same frames. Each block carries the station's title as it
//! is when the block is due, so a new title reaches every ICY listener at
//! its next block, without reconnecting.

use std::io::{self, ErrorKind};
use std::sync::Arc;

use super::hub::ListenerSink;
use crate::broadcast::Station;
use crate::live::{Live, Watch};

/// The most a block can hold: the length byte counts 16-byte units.
const MAX_BLOCK: usize = 255 * 16;

/// True when the request's `Icy-MetaData` header asks for metadata.
pub fn wants_metadata(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim() == "1")
}

/// The metadata block carrying `title`: length byte, then the text padded
/// with zeros to a multiple of 16 bytes. Quotes in the title are kept
/// (players read up to the closing `';`); an over-long title is cut at a
/// character boundary.
pub fn metadata_block(title: &str) -> Vec<u8> {
    let mut title = title.to_string();
    let overhead = "StreamTitle='';".len();
    while title.len() + overhead > MAX_BLOCK {
        title.pop();
    }
    let text = format!("StreamTitle='{title}';");
    let units = text.len().div_ceil(16);
    let mut block = Vec::with_capacity(1 + units * 16);
    block.push(units as u8);
    block.extend_from_slice(text.as_bytes());
    block.resize(1 + units * 16, 0);
    block
}

/// A listener connection with ICY metadata inserted every `metaint` audio
/// bytes.
pub struct IcySink {
    inner: Box<dyn ListenerSink>,
    metaint: usize,
    station: Watch<Station>,
    block: Vec<u8>,
    /// Audio bytes left before the next block is due.
    until_block: usize,
    /// Bytes of the due block already written; `None` while audio flows.
    block_written: Option<usize>,
}

impl IcySink {
    pub fn new(inner: Box<dyn ListenerSink>, metaint: usize, station: Arc<Live<Station>>) -> Self {
        let mut station = Watch::new(station);
        let block = metadata_block(&station.changed().map(|s| s.title.clone()).unwrap_or_default());
        IcySink {
            inner,
            metaint: metaint.max(1),
            station,
            block,
            until_block: metaint.max(1),
            block_written: None,
        }
    }

    /// A block is due: it carries the title as it is now.
    fn start_block(&mut self) {
        if let Some(station) = self.station.changed() {
            self.block = metadata_block(&station.title);
        }
        self.block_written = Some(0);
    }

    /// Writes the rest of a due block; `Ok(true)` once it is all out.
    fn write_block(&mut self) -> io::Result<bool> {
        while let Some(done) = self.block_written {
            if done == self.block.len() {
                self.block_written = None;
                self.until_block = self.metaint;
                return Ok(true);
            }
            match self.inner.write(&self.block[done..]) {
                Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => self.block_written = Some(done + n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl ListenerSink for IcySink {
    /// Returns how many audio bytes of `buf` were taken (blocks are not
    /// counted); `WouldBlock` while a block is still going out.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.write_block()? {
            return Err(io::Error::from(ErrorKind::WouldBlock));
        }
        let take = buf.len().min(self.until_block);
        if take == 0 {
            return Ok(0);
        }
        let n = self.inner.write(&buf[..take])?;
        self.until_block -= n;
        if self.until_block == 0 {
            self.start_block();
            // Best effort now; the next write finishes it.
            let _ = self.write_block();
        }
        Ok(n)
    }

    fn close(&mut self, abort: bool) {
        self.inner.close(abort);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Takes at most `chunk` bytes per write, and WouldBlock every other call.
    struct Choppy {
        out: Arc<Mutex<Vec<u8>>>,
        chunk: usize,
        calls: usize,
    }

    impl ListenerSink for Choppy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::Error::from(ErrorKind::WouldBlock));
            }
            let n = buf.len().min(self.chunk);
            self.out.lock().expect("lock").extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn close(&mut self, _: bool) {}
    }

    fn station(title: &str) -> Arc<Live<Station>> {
        Arc::new(Live::new(Station {
            title: title.into(),
            ..Station::default()
        }))
    }

    #[test]
    fn a_new_title_goes_out_in_the_next_block_on_the_same_connection() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let inner = Choppy {
            out: out.clone(),
            chunk: 10_000,
            calls: 0,
        };
        let live = station("Live");
        let mut sink = IcySink::new(Box::new(inner), 256, live.clone());
        let feed = |sink: &mut IcySink| {
            let mut fed = 0;
            while fed < 256 {
                if let Ok(n) = sink.write(&[1u8; 256][fed..]) {
                    fed += n;
                }
            }
        };
        feed(&mut sink);
        live.set(Station {
            title: "Side B".into(),
            ..Station::default()
        });
        feed(&mut sink);
        let _ = sink.write(&[]);
        let _ = sink.write(&[]);
        let text = String::from_utf8_lossy(&out.lock().expect("lock")).to_string();
        let first = text.find("StreamTitle='Live';").expect("first block");
        let second = text.find("StreamTitle='Side B';").expect("second block");
        assert!(first < second);
    }

    #[test]
    fn a_block_is_a_length_byte_and_padded_text() {
        let b = metadata_block("Live");
        assert_eq!(b[0], 2);
        assert_eq!(b.len(), 33);
        assert_eq!(&b[1..20], b"StreamTitle='Live';");
        assert!(b[20..].iter().all(|&z| z == 0));
        let long = metadata_block(&"x".repeat(5000));
        assert_eq!(long[0], 255);
        assert_eq!(long.len(), 1 + MAX_BLOCK);
        assert!(long.ends_with(b"';"));
        assert!(wants_metadata(Some(" 1")) && !wants_metadata(Some("0")) && !wants_metadata(None));
    }

    #[test]
    fn blocks_come_exactly_every_metaint_audio_bytes_whatever_the_write_sizes() {
        let audio: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8 | 1).collect();
        for chunk in [1, 7, 100, 417, 5000] {
            let out = Arc::new(Mutex::new(Vec::new()));
            let inner = Choppy {
                out: out.clone(),
                chunk,
                calls: 0,
            };
            let mut sink = IcySink::new(Box::new(inner), 1000, station("Live"));
            let mut fed = 0;
            while fed < audio.len() {
                match sink.write(&audio[fed..(fed + 417).min(audio.len())]) {
                    Ok(n) => fed += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            // The block due after the last audio byte goes out on the next write.
            for _ in 0..2 * MAX_BLOCK {
                let _ = sink.write(&[]);
            }
            let out = out.lock().expect("lock").clone();
            // Parse: metaint audio bytes, then a block, repeated.
            let block = metadata_block("Live");
            let (mut pos, mut got_audio) = (0, Vec::new());
            while pos < out.len() {
                let n = 1000.min(out.len() - pos);
                got_audio.extend_from_slice(&out[pos..pos + n]);
                pos += n;
                if pos < out.len() {
                    assert_eq!(&out[pos..pos + block.len()], &block[..], "chunk {chunk} at {pos}");
                    pos += block.len();
                }
            }
            assert_eq!(got_audio, audio, "chunk {chunk}");
        }
    }
}
