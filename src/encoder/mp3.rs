//! MPEG audio frame headers and the MP3 packetizer [P1].
//!
//! Pure: no threads, no I/O. In Tower the stdout reader (on the broadcast
//! thread) owns a [`Packetizer`] per encoder and feeds it whatever ffmpeg's
//! stdout returns; tests and benches
//! use it to cut what listeners receive. Promises: only whole, valid audio
//! frames come out, in order; ID3v2 tags and Xing/Info/VBRI frames never do;
//! after garbage it finds the stream again; memory stays bounded.
//!
//! To avoid locking onto a false sync inside garbage, a candidate frame is
//! accepted only when the header right after it belongs to the same stream.
//! Once locked, each frame is released as soon as its last byte arrives (no
//! waiting for the next header), so steady-state latency is not increased.

use std::time::Duration;

/// Largest legal frame (MPEG 2.5 Layer II, 160 kbps, 8 kHz, padded).
pub const MAX_FRAME_LEN: usize = 2881;
/// Length of the canonical silent frame.
pub const SILENT_FRAME_LEN: usize = 384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpegVersion {
    V1,
    V2,
    V25,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    L1,
    L2,
    L3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    Stereo,
    JointStereo,
    DualChannel,
    Mono,
}

/// A parsed 4-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: MpegVersion,
    pub layer: Layer,
    /// A 16-bit CRC follows the header.
    pub protected: bool,
    pub bitrate_kbps: u32,
    pub sample_rate: u32,
    pub padding: bool,
    pub channel_mode: ChannelMode,
    pub raw: [u8; 4],
}

// Bitrates in kbit/s by index 1..=14 (index 0 is free format, 15 is bad).
const BR_V1_L1: [u32; 14] = [32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448];
const BR_V1_L2: [u32; 14] = [32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384];
const BR_V1_L3: [u32; 14] = [32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
const BR_V2_L1: [u32; 14] = [32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256];
const BR_V2_L23: [u32; 14] = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

impl FrameHeader {
    /// `None` for anything that is not a valid header: no sync, reserved
    /// version or layer, free-format or bad bitrate, reserved sample rate or
    /// emphasis.
    pub fn parse(b: [u8; 4]) -> Option<FrameHeader> {
        if b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
            return None;
        }
        let version = match (b[1] >> 3) & 0x03 {
            0b00 => MpegVersion::V25,
            0b10 => MpegVersion::V2,
            0b11 => MpegVersion::V1,
            _ => return None,
        };
        let layer = match (b[1] >> 1) & 0x03 {
            0b01 => Layer::L3,
            0b10 => Layer::L2,
            0b11 => Layer::L1,
            _ => return None,
        };
        let protected = b[1] & 0x01 == 0;
        let br_index = usize::from(b[2] >> 4);
        if br_index == 0 || br_index == 15 {
            return None;
        }
        let table = match (version, layer) {
            (MpegVersion::V1, Layer::L1) => &BR_V1_L1,
            (MpegVersion::V1, Layer::L2) => &BR_V1_L2,
            (MpegVersion::V1, Layer::L3) => &BR_V1_L3,
            (_, Layer::L1) => &BR_V2_L1,
            (_, _) => &BR_V2_L23,
        };
        let bitrate_kbps = table[br_index - 1];
        let base_rate = match (b[2] >> 2) & 0x03 {
            0 => 44_100,
            1 => 48_000,
            2 => 32_000,
            _ => return None,
        };
        let sample_rate = match version {
            MpegVersion::V1 => base_rate,
            MpegVersion::V2 => base_rate / 2,
            MpegVersion::V25 => base_rate / 4,
        };
        if b[3] & 0x03 == 0x02 {
            return None; // reserved emphasis
        }
        let channel_mode = match b[3] >> 6 {
            0 => ChannelMode::Stereo,
            1 => ChannelMode::JointStereo,
            2 => ChannelMode::DualChannel,
            _ => ChannelMode::Mono,
        };
        Some(FrameHeader {
            version,
            layer,
            protected,
            bitrate_kbps,
            sample_rate,
            padding: b[2] & 0x02 != 0,
            channel_mode,
            raw: b,
        })
    }

    /// The whole frame's length in bytes, header included.
    pub fn frame_len(&self) -> usize {
        let br = self.bitrate_kbps as usize * 1000;
        let sr = self.sample_rate as usize;
        let pad = usize::from(self.padding);
        match (self.layer, self.version) {
            (Layer::L1, _) => (12 * br / sr + pad) * 4,
            (Layer::L2, _) | (Layer::L3, MpegVersion::V1) => 144 * br / sr + pad,
            (Layer::L3, _) => 72 * br / sr + pad,
        }
    }

    pub fn samples_per_frame(&self) -> usize {
        match (self.layer, self.version) {
            (Layer::L1, _) => 384,
            (Layer::L2, _) | (Layer::L3, MpegVersion::V1) => 1152,
            (Layer::L3, _) => 576,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.samples_per_frame() as u64 * 1_000_000_000 / u64::from(self.sample_rate))
    }

    fn mono(&self) -> bool {
        self.channel_mode == ChannelMode::Mono
    }

    /// True when two headers belong to the same stream: same version,
    /// layer, sample rate, and mono-or-not.
    pub fn same_stream(&self, other: &FrameHeader) -> bool {
        self.version == other.version
            && self.layer == other.layer
            && self.sample_rate == other.sample_rate
            && self.mono() == other.mono()
    }

    /// Bytes of Layer III side information after the header (and CRC).
    fn side_info_len(&self) -> usize {
        match (self.version, self.mono()) {
            (MpegVersion::V1, true) => 17,
            (MpegVersion::V1, false) => 32,
            (_, true) => 9,
            (_, false) => 17,
        }
    }

    /// Whether `frame` (starting with this header) carries a Xing, Info or
    /// VBRI tag instead of audio.
    fn is_info_frame(&self, frame: &[u8]) -> bool {
        let at = 4 + usize::from(self.protected) * 2 + self.side_info_len();
        let tag = |offset: usize| frame.get(offset..offset + 4);
        matches!(tag(at), Some(b"Xing") | Some(b"Info")) || tag(36) == Some(b"VBRI")
    }
}

/// How long an MPEG-1 Layer III frame (1152 samples) plays at
/// `sample_rate`: 24 ms at 48 kHz, 26.122… ms at 44.1 kHz (rounded to
/// the nanosecond: 0.02 ns a frame, under 0.1 ms a day).
pub fn frame_duration(sample_rate: u32) -> Duration {
    let rate = u64::from(sample_rate.max(1));
    Duration::from_nanos((1152 * 1_000_000_000 + rate / 2) / rate)
}

/// The canonical silent frame: `FF FB 94 00` (MPEG-1 Layer III, 128 kbps,
/// 48 kHz, stereo, no CRC, no padding) and 380 zero bytes. It decodes to
/// 1152 zero samples per channel.
pub fn canonical_silent_frame() -> Vec<u8> {
    let mut f = vec![0u8; SILENT_FRAME_LEN];
    f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0x00]);
    f
}

/// A frame of silence that splices into a stream with this header: same
/// version, sample rate, bitrate and channel mode; no CRC, no padding;
/// everything after the header zero (no bits, no reservoir). Layer III only.
pub fn silent_frame_like(header: &FrameHeader) -> Option<Vec<u8>> {
    if header.layer != Layer::L3 {
        return None;
    }
    let h = FrameHeader {
        protected: false,
        padding: false,
        ..*header
    };
    let mut f = vec![0u8; h.frame_len()];
    let r = header.raw;
    f[0] = r[0];
    f[1] = r[1] | 0x01; // no CRC
    f[2] = r[2] & !0x03; // no padding, private bit clear
    f[3] = r[3] & 0xC0; // channel mode; no mode extension, copyright or emphasis
    Some(f)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacketizerStats {
    /// Audio frames emitted.
    pub frames: u64,
    /// Bytes discarded while looking for a frame.
    pub garbage_bytes: u64,
    /// Bytes of ID3v2 tags skipped.
    pub id3_bytes: u64,
    /// Xing/Info/VBRI frames skipped.
    pub info_frames_skipped: u64,
    /// Times the lock on the stream was lost.
    pub resyncs: u64,
}

/// Cuts a byte stream into whole MP3 frames.
#[derive(Debug, Default)]
pub struct Packetizer {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// The stream locked onto, if any.
    locked: Option<FrameHeader>,
    /// Bytes of an ID3 tag still to skip.
    skip: usize,
    /// An ID3 tag may still appear (start of stream).
    at_start: bool,
    stats: PacketizerStats,
}

enum Step {
    /// Need more bytes.
    Wait,
    /// Consumed something; look again.
    Again,
}

impl Packetizer {
    pub fn new() -> Self {
        Packetizer {
            at_start: true,
            ..Packetizer::default()
        }
    }

    pub fn stats(&self) -> PacketizerStats {
        self.stats
    }

    /// How long each frame of the stream locked onto plays.
    pub fn frame_duration(&self) -> Option<Duration> {
        self.locked.as_ref().map(FrameHeader::duration)
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Forgets partial data and the lock (the encoder restarted); a new
    /// stream may start with an ID3 tag again.
    pub fn reset(&mut self) {
        *self = Packetizer {
            stats: self.stats,
            ..Packetizer::new()
        };
    }

    /// Feeds bytes as they come; `emit` gets each whole audio frame.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            self.stats.id3_bytes += n as u64;
            data = &data[n..];
        }
        if self.pos > 0 && (self.pos > 4096 || self.pos * 2 > self.buf.len()) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        while let Step::Again = self.step(&mut emit) {}
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn discard(&mut self, n: usize) {
        self.pos += n;
        self.stats.garbage_bytes += n as u64;
    }

    fn lose_lock(&mut self) {
        if self.locked.take().is_some() {
            self.stats.resyncs += 1;
        }
    }

    fn step(&mut self, emit: &mut impl FnMut(&[u8])) -> Step {
        let avail = self.avail();
        if self.at_start {
            if avail.len() < 3 {
                return Step::Wait;
            }
            if &avail[..3] == b"ID3" {
                if avail.len() < 10 {
                    return Step::Wait;
                }
                let size = avail[6..10]
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7F));
                let footer = if avail[5] & 0x10 != 0 { 10 } else { 0 };
                let total = 10 + size + footer;
                let here = total.min(avail.len());
                self.pos += here;
                self.stats.id3_bytes += here as u64;
                self.skip = total - here;
                self.at_start = false;
                if self.skip > 0 {
                    // The rest of the tag has not arrived: `push` skips it
                    // as it comes, without buffering it.
                    return Step::Wait;
                }
                return Step::Again;
            }
            self.at_start = false;
        }
        if self.skip > 0 {
            let n = self.skip.min(self.avail().len());
            self.pos += n;
            self.skip -= n;
            self.stats.id3_bytes += n as u64;
            return if self.skip > 0 { Step::Wait } else { Step::Again };
        }

        let avail = self.avail();
        // Find the next candidate sync.
        let Some(start) = avail.windows(2).position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0) else {
            // Keep a trailing 0xFF: it may start a header.
            let keep = usize::from(avail.last() == Some(&0xFF));
            let n = avail.len() - keep;
            if n > 0 {
                self.lose_lock();
                self.discard(n);
            }
            return Step::Wait;
        };
        if start > 0 {
            self.lose_lock();
            self.discard(start);
            return Step::Again;
        }
        if avail.len() < 4 {
            return Step::Wait;
        }
        let Some(header) = FrameHeader::parse([avail[0], avail[1], avail[2], avail[3]]) else {
            self.lose_lock();
            self.discard(1);
            return Step::Again;
        };
        let len = header.frame_len();
        if len < 4 + usize::from(header.protected) * 2 {
            self.lose_lock();
            self.discard(1);
            return Step::Again;
        }
        let locked = self.locked.is_some_and(|l| l.same_stream(&header));
        if !locked {
            if self.locked.is_some() {
                self.lose_lock();
            }
            let avail = self.avail();
            // Confirm with the next header before trusting this one.
            if avail.len() < len + 4 {
                return Step::Wait;
            }
            let next = [avail[len], avail[len + 1], avail[len + 2], avail[len + 3]];
            if !FrameHeader::parse(next).is_some_and(|n| n.same_stream(&header)) {
                self.discard(1);
                return Step::Again;
            }
            self.locked = Some(header);
        } else if avail.len() < len {
            return Step::Wait;
        }
        let frame_start = self.pos;
        self.pos += len;
        let frame = &self.buf[frame_start..frame_start + len];
        if header.layer == Layer::L3 && header.is_info_frame(frame) {
            self.stats.info_frames_skipped += 1;
        } else {
            self.stats.frames += 1;
            emit(frame);
        }
        Step::Again
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(h: [u8; 4]) -> FrameHeader {
        FrameHeader::parse(h).expect("valid header")
    }

    #[test]
    fn canonical_header_is_mpeg1_layer3_128k_48k_stereo_384_bytes() {
        let h = parse([0xFF, 0xFB, 0x94, 0x00]);
        assert_eq!(
            (h.version, h.layer, h.bitrate_kbps, h.sample_rate),
            (MpegVersion::V1, Layer::L3, 128, 48_000)
        );
        assert_eq!(
            (h.protected, h.padding, h.channel_mode),
            (false, false, ChannelMode::Stereo)
        );
        assert_eq!(h.frame_len(), 384);
        assert_eq!(h.samples_per_frame(), 1152);
        assert_eq!(h.duration(), Duration::from_millis(24));
    }

    #[test]
    fn lengths_for_other_rates_versions_and_padding() {
        // 44.1 kHz, 128 kbps: 417 bytes, 418 with padding.
        assert_eq!(parse([0xFF, 0xFB, 0x90, 0x00]).frame_len(), 417);
        assert_eq!(parse([0xFF, 0xFB, 0x92, 0x00]).frame_len(), 418);
        // MPEG-2 Layer III, 64 kbps, 24 kHz: 72 * 64000 / 24000 = 192.
        let h = parse([0xFF, 0xF3, 0x84, 0xC0]);
        assert_eq!(
            (h.version, h.sample_rate, h.bitrate_kbps, h.channel_mode),
            (MpegVersion::V2, 24_000, 64, ChannelMode::Mono)
        );
        assert_eq!(h.frame_len(), 192);
        assert_eq!(h.samples_per_frame(), 576);
        // MPEG-2.5 Layer III, 8 kbps, 8 kHz: 72 * 8000 / 8000 = 72.
        let h = parse([0xFF, 0xE3, 0x18, 0xC0]);
        assert_eq!((h.version, h.sample_rate, h.bitrate_kbps), (MpegVersion::V25, 8_000, 8));
        assert_eq!(h.frame_len(), 72);
        // Layer II, 192 kbps, 48 kHz: 576. Layer I, 448 kbps, 48 kHz: 448.
        assert_eq!(parse([0xFF, 0xFD, 0xA4, 0x00]).frame_len(), 576);
        assert_eq!(parse([0xFF, 0xFF, 0xE4, 0x00]).frame_len(), 448);
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            [0xFE, 0xFB, 0x94, 0x00], // no sync
            [0xFF, 0xDB, 0x94, 0x00], // sync bits incomplete
            [0xFF, 0xEB, 0x94, 0x00], // reserved version 01
            [0xFF, 0xF9, 0x94, 0x00], // reserved layer 00
            [0xFF, 0xFB, 0x04, 0x00], // free format
            [0xFF, 0xFB, 0xF4, 0x00], // bitrate index 15
            [0xFF, 0xFB, 0x9C, 0x00], // sample rate index 3
            [0xFF, 0xFB, 0x94, 0x02], // reserved emphasis
        ] {
            assert_eq!(FrameHeader::parse(bad), None, "{bad:02X?}");
        }
    }

    /// A stream of `n` 128 kbps 48 kHz frames (some padded headers are not
    /// legal at 48 kHz, so all are 384 bytes) with payloads full of fake
    /// syncs.
    fn frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                let mut f = vec![0u8; 384];
                f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0x00]);
                for b in f[4..].iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                // A false sync inside the payload.
                f[100 + i % 50] = 0xFF;
                f[101 + i % 50] = 0xFB;
                f
            })
            .collect()
    }

    fn run(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, PacketizerStats) {
        let mut p = Packetizer::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, |f| out.push(f.to_vec()));
        }
        (out, p.stats())
    }

    #[test]
    fn every_split_point_and_byte_by_byte_give_the_same_frames() {
        let input = frames(6, 7);
        let stream: Vec<u8> = input.concat();
        let (whole, _) = run(&[&stream]);
        assert_eq!(whole, input);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let (got, stats) = run(&[a, b]);
            assert_eq!(got, input, "split at {split}");
            assert_eq!(stats.garbage_bytes, 0);
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).0, input);
    }

    #[test]
    fn garbage_between_frames_is_skipped_and_counted() {
        let input = frames(8, 11);
        let garbage: Vec<u8> = vec![0x00, 0xFF, 0xFB, 0x94, 0x01, 0x02, 0xFF, 0xFF, 0xE0, 0x13, 0x37];
        let mut stream = Vec::new();
        stream.extend_from_slice(&garbage);
        stream.extend_from_slice(&input[..4].concat());
        stream.extend_from_slice(&garbage);
        stream.extend_from_slice(&input[4..].concat());
        for chunk in [1, 3, 100, 5000] {
            let pieces: Vec<&[u8]> = stream.chunks(chunk).collect();
            let (got, stats) = run(&pieces);
            assert_eq!(got, input, "chunk {chunk}");
            assert_eq!(stats.garbage_bytes, 2 * garbage.len() as u64, "chunk {chunk}");
            assert!(stats.resyncs >= 1);
        }
    }

    #[test]
    fn id3_tag_and_xing_info_frames_never_come_out() {
        let input = frames(3, 3);
        let mut tag = b"ID3\x04\x00\x00".to_vec();
        tag.extend_from_slice(&[0, 0, 1, 0x48]); // syncsafe 200
        tag.extend(std::iter::repeat_n(0xFFu8, 200)); // looks like syncs
        let mut xing = vec![0u8; 384];
        xing[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0x00]);
        xing[36..40].copy_from_slice(b"Xing");
        let mut info = xing.clone();
        info[36..40].copy_from_slice(b"Info");
        let stream = [tag, xing, info, input.concat()].concat();
        for chunk in [1, 7, 64, 10_000] {
            let pieces: Vec<&[u8]> = stream.chunks(chunk).collect();
            let (got, stats) = run(&pieces);
            assert_eq!(got, input, "chunk {chunk}");
            assert_eq!(stats.id3_bytes, 210, "chunk {chunk}");
            assert_eq!(stats.info_frames_skipped, 2);
            assert_eq!(stats.garbage_bytes, 0);
        }
    }

    #[test]
    fn silent_frames() {
        let c = canonical_silent_frame();
        assert_eq!(c.len(), 384);
        assert_eq!(&c[..4], &[0xFF, 0xFB, 0x94, 0x00]);
        assert!(c[4..].iter().all(|&b| b == 0));
        assert_eq!(silent_frame_like(&parse([0xFF, 0xFB, 0x94, 0x00])), Some(c));
        // From a padded, CRC-protected, 192 kbps 44.1 kHz joint-stereo header.
        let h = parse([0xFF, 0xFA, 0xB2, 0x64]);
        let s = silent_frame_like(&h).expect("layer 3");
        let back = parse([s[0], s[1], s[2], s[3]]);
        assert_eq!(
            (back.bitrate_kbps, back.sample_rate, back.channel_mode),
            (192, 44_100, ChannelMode::JointStereo)
        );
        assert!(!back.padding && !back.protected);
        assert_eq!(s.len(), back.frame_len());
        assert!(s[4..].iter().all(|&b| b == 0));
        assert_eq!(silent_frame_like(&parse([0xFF, 0xFD, 0xA4, 0x00])), None);
    }

    #[test]
    fn reset_mid_frame_then_a_fresh_stream() {
        let old = frames(2, 5);
        let fresh = frames(3, 9);
        let mut p = Packetizer::new();
        let mut out = Vec::new();
        p.push(&old.concat()[..500], |f| out.push(f.to_vec()));
        p.reset();
        p.push(&fresh.concat(), |f| out.push(f.to_vec()));
        assert_eq!(&out[out.len() - 3..], &fresh[..]);
        assert!(out.len() <= 4, "stale frames: {}", out.len());
        assert!(!out.iter().any(|f| f[4..] == old[1][4..]));
    }

    #[test]
    fn memory_stays_bounded_on_endless_garbage() {
        let mut p = Packetizer::new();
        let junk = vec![0x12u8; 100_000];
        for _ in 0..100 {
            p.push(&junk, |_| panic!("garbage emitted"));
        }
        assert!(p.buf.capacity() < 400_000, "buffer grew to {}", p.buf.capacity());
        assert_eq!(p.stats().garbage_bytes, 10_000_000);
    }

    proptest! {
        #[test]
        fn anything_emitted_is_a_whole_valid_frame(
            n in 2usize..12,
            seed in any::<u64>(),
            garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 12),
            cuts in proptest::collection::vec(1usize..500, 1..30),
        ) {
            let input = frames(n, seed);
            let mut stream = Vec::new();
            for (f, g) in input.iter().zip(&garbage) {
                stream.extend_from_slice(g);
                stream.extend_from_slice(f);
            }
            let mut pieces = Vec::new();
            let mut rest = &stream[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let (a, b) = rest.split_at((*c).min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            let (got, _) = run(&pieces);
            for f in &got {
                let h = FrameHeader::parse([f[0], f[1], f[2], f[3]]);
                prop_assert!(h.is_some_and(|h| h.frame_len() == f.len()));
            }
            let clean: Vec<u8> = input.concat();
            let (plain, _) = run(&clean.chunks(cuts[0]).collect::<Vec<_>>());
            prop_assert_eq!(plain, input);
        }
    }
}
