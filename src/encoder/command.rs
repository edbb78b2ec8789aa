//! The ffmpeg command line [S1].
//!
//! Pure. Builds the default low-latency command, or takes a user's argument
//! list and enforces what Tower depends on: canonical PCM on stdin, as a
//! WAV stream ([`wav_header`], then the frames: `-f wav -ignore_length 1
//! -max_size 4608 -i pipe:0`) and whole MP3 frames of 1152 samples on
//! stdout (`-frame_size 1152 -f mp3 pipe:1`). Whatever the user set for
//! these is replaced, and the replacements are reported so they can be
//! logged once.
//!
//! Why WAV and not raw `s16le`: ffmpeg's raw PCM demuxer hands the encoder
//! 1024-sample packets, so a 1152-sample frame often waits in it for the
//! next write, and most MP3 frames come out two periods after their PCM.
//! The WAV demuxer's packet size is settable (`-max_size`): one 24 ms
//! frame per packet, and every MP3 frame comes out one period after its
//! PCM, 24 ms sooner, byte for byte the same stream.

use std::fmt;

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl fmt::Display for EncoderCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            if a.is_empty() || a.contains(char::is_whitespace) {
                write!(f, " '{a}'")?;
            } else {
                write!(f, " {a}")?;
            }
        }
        Ok(())
    }
}

/// A custom argument list Tower cannot run safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("encoder.args: option {0} has no value")]
    MissingValue(String),
    #[error("encoder.args: only one input is allowed (Tower feeds PCM on pipe:0); found another -i {0}")]
    ExtraInput(String),
    #[error("encoder.args: unexpected argument {0:?} (outputs other than stdout are not allowed; Tower adds pipe:1)")]
    Stray(String),
}

/// Input options Tower sets itself: removed from a custom command.
const INPUT_OWNED: &[&str] = &[
    "-f",
    "-ar",
    "-ac",
    "-ch_layout",
    "-channel_layout",
    "-sample_fmt",
    "-ignore_length",
    "-max_size",
    "-i",
];
/// Input options that describe the PCM Tower feeds as raw `s16le` (what
/// the README showed before the WAV stream): replaced without a note.
const INPUT_EQUIVALENT: &[&str] = &[
    "-f",
    "s16le",
    "-ar",
    "48000",
    "-ac",
    "2",
    "-ch_layout",
    "stereo",
    "-channel_layout",
    "stereo",
];
/// Output options Tower sets itself: removed from a custom command (the
/// output rate is `mp3.sample_rate`: see [`at_sample_rate`]).
const OUTPUT_OWNED: &[&str] = &["-f", "-frame_size", "-ar"];
/// Option names that take no value.
const FLAGS: &[&str] = &[
    "-hide_banner",
    "-nostats",
    "-stats",
    "-nostdin",
    "-y",
    "-n",
    "-vn",
    "-sn",
    "-dn",
    "-re",
    "-shortest",
    "-copyts",
    "-xerror",
];
/// `-max_size` is one frame's bytes ([`crate::audio::PCM_FRAME_BYTES`]).
const REQUIRED_INPUT: &[&str] = &["-f", "wav", "-ignore_length", "1", "-max_size", "4608", "-i", "pipe:0"];
const REQUIRED_OUTPUT: &[&str] = &["-frame_size", "1152", "-f", "mp3", "pipe:1"];
const STDOUT_TARGETS: &[&str] = &["pipe:1", "pipe:", "-", "/dev/stdout"];

/// Frames of silence written after the header when ffmpeg starts: its WAV
/// demuxer reads 64 KiB before its first packet (to look for S/PDIF data
/// in PCM), which the pump's frames alone would take 340 ms to fill. 15
/// frames (69 120 bytes) cover it, so ffmpeg starts at once; their silence
/// comes out as one burst, which the pacer trims [M5].
pub const PRELOAD_FRAMES: usize = 15;

/// What Tower writes on the encoder's stdin before the first PCM frame:
/// [`wav_header`] and [`PRELOAD_FRAMES`] frames of silence.
pub fn input_preamble() -> Vec<u8> {
    let mut p = wav_header();
    p.resize(p.len() + PRELOAD_FRAMES * crate::audio::PCM_FRAME_BYTES, 0);
    p
}

/// Bytes of [`wav_header`].
pub const WAV_HEADER_BYTES: usize = 68;

/// The WAV header of the encoder's input (WAVE_FORMAT_EXTENSIBLE, so ffmpeg
/// knows the channels are front left and right; 48 000 Hz, two 16-bit
/// channels; sizes 0, read to the end with `-ignore_length 1`).
pub fn wav_header() -> Vec<u8> {
    const CHANNELS: u16 = 2;
    const BITS: u16 = 16;
    const RATE: u32 = 48_000;
    let block = CHANNELS * BITS / 8;
    let mut fmt = Vec::with_capacity(40);
    fmt.extend_from_slice(&0xFFFEu16.to_le_bytes()); // WAVE_FORMAT_EXTENSIBLE
    fmt.extend_from_slice(&CHANNELS.to_le_bytes());
    fmt.extend_from_slice(&RATE.to_le_bytes());
    fmt.extend_from_slice(&(RATE * u32::from(block)).to_le_bytes());
    fmt.extend_from_slice(&block.to_le_bytes());
    fmt.extend_from_slice(&BITS.to_le_bytes());
    fmt.extend_from_slice(&22u16.to_le_bytes()); // extension size
    fmt.extend_from_slice(&BITS.to_le_bytes()); // valid bits
    fmt.extend_from_slice(&3u32.to_le_bytes()); // front left | front right
    // KSDATAFORMAT_SUBTYPE_PCM
    fmt.extend_from_slice(&[
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
    ]);
    let mut h = Vec::with_capacity(WAV_HEADER_BYTES);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    h.extend_from_slice(&fmt);
    h.extend_from_slice(b"data");
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// The default command: low latency (`-probesize 32 -analyzeduration 0`),
/// no bit reservoir (`-reservoir 0`, so every frame decodes on its own and
/// silence frames splice cleanly), no ID3 tag.
pub fn default_command(program: &str, bitrate_kbps: u32) -> EncoderCommand {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "warning",
        "-probesize",
        "32",
        "-analyzeduration",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(REQUIRED_INPUT.iter().map(|s| s.to_string()));
    args.extend(
        [
            "-c:a",
            "libmp3lame",
            "-b:a",
            &format!("{bitrate_kbps}k"),
            "-reservoir",
            "0",
            "-id3v2_version",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(REQUIRED_OUTPUT.iter().map(|s| s.to_string()));
    EncoderCommand {
        program: program.to_string(),
        args,
    }
}

/// `command` (default or custom) with its MP3 at `sample_rate`: ffmpeg
/// takes Tower's 48 kHz PCM as always and resamples it at the encoder's
/// input (`-ar` among the output options), so nothing before the encoder
/// changes. At 48 kHz the command is left as it is.
pub fn at_sample_rate(mut command: EncoderCommand, sample_rate: u32) -> EncoderCommand {
    if sample_rate != crate::audio::SAMPLE_RATE {
        let at = command.args.len().saturating_sub(REQUIRED_OUTPUT.len());
        command
            .args
            .splice(at..at, ["-ar".to_string(), sample_rate.to_string()]);
    }
    command
}

/// An option with its value (if it takes one), as it appeared.
#[derive(Debug, Clone)]
struct Opt {
    name: String,
    value: Option<String>,
}

fn takes_value(name: &str) -> bool {
    !FLAGS.contains(&name)
}

/// A custom argument list, split around the input.
struct Parsed {
    /// Options before `-i` (input and global options), `-i` included.
    before: Vec<Opt>,
    /// Options after the input (encoder and output options).
    after: Vec<Opt>,
    /// The output target, if one was given.
    target: Option<String>,
}

/// Splits `args` into options before the input, the input itself, options
/// after it, and the output target (if any).
fn parse(args: &[String]) -> Result<Parsed, CommandError> {
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut seen_input = false;
    let mut target = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with('-') && a.len() > 1 {
            let value = if takes_value(a) {
                let v = args.get(i + 1).ok_or_else(|| CommandError::MissingValue(a.clone()))?;
                i += 1;
                Some(v.clone())
            } else {
                None
            };
            if a == "-i" {
                if seen_input {
                    return Err(CommandError::ExtraInput(value.unwrap_or_default()));
                }
                seen_input = true;
            }
            let opt = Opt { name: a.clone(), value };
            if seen_input && a != "-i" {
                after.push(opt);
            } else {
                before.push(opt);
            }
        } else if i + 1 == args.len() && (seen_input || STDOUT_TARGETS.contains(&a.as_str())) {
            target = Some(a.clone());
        } else {
            return Err(CommandError::Stray(a.clone()));
        }
        i += 1;
    }
    if !seen_input {
        // No input given: the whole list is output (encoder) options.
        return Ok(Parsed {
            before: Vec::new(),
            after: before,
            target,
        });
    }
    Ok(Parsed { before, after, target })
}

fn has(opts: &[Opt], names: &[&str]) -> bool {
    opts.iter().any(|o| names.contains(&o.name.as_str()))
}

fn push_opts(out: &mut Vec<String>, opts: &[Opt]) {
    for o in opts {
        out.push(o.name.clone());
        if let Some(v) = &o.value {
            out.push(v.clone());
        }
    }
}

/// Builds the command from a user's argument list, enforcing Tower's input
/// and output. Returns the command and a note for each replaced setting.
pub fn custom_command(program: &str, args: &[String]) -> Result<(EncoderCommand, Vec<String>), CommandError> {
    let Parsed { before, after, target } = parse(args)?;
    let mut notes = Vec::new();

    let mut out: Vec<String> = Vec::new();
    for (flag, value) in [
        ("-loglevel", Some("warning")),
        ("-hide_banner", None),
        ("-nostats", None),
    ] {
        let all: Vec<Opt> = before.iter().chain(after.iter()).cloned().collect();
        if !has(&all, &[flag, if flag == "-loglevel" { "-v" } else { flag }]) {
            out.push(flag.to_string());
            out.extend(value.map(str::to_string));
        }
    }
    let (owned_in, kept_in): (Vec<Opt>, Vec<Opt>) =
        before.into_iter().partition(|o| INPUT_OWNED.contains(&o.name.as_str()));
    for o in owned_in.iter().filter(|o| {
        let same = REQUIRED_INPUT
            .chunks(2)
            .chain(INPUT_EQUIVALENT.chunks(2))
            .any(|kv| kv[0] == o.name && Some(kv[1]) == o.value.as_deref());
        !same
    }) {
        notes.push(format!(
            "input option {} {} replaced: Tower feeds 16-bit 48000 Hz stereo PCM as a WAV stream on pipe:0",
            o.name,
            o.value.as_deref().unwrap_or("")
        ));
    }
    push_opts(&mut out, &kept_in);
    if !has(&kept_in, &["-probesize"]) {
        out.extend(["-probesize", "32"].map(String::from));
    }
    if !has(&kept_in, &["-analyzeduration"]) {
        out.extend(["-analyzeduration", "0"].map(String::from));
    }
    out.extend(REQUIRED_INPUT.iter().map(|s| s.to_string()));

    let (owned_out, kept_out): (Vec<Opt>, Vec<Opt>) =
        after.into_iter().partition(|o| OUTPUT_OWNED.contains(&o.name.as_str()));
    for o in owned_out.iter().filter(|o| {
        let required = REQUIRED_OUTPUT
            .chunks(2)
            .any(|kv| kv[0] == o.name && kv.get(1).copied() == o.value.as_deref());
        !required
    }) {
        let needs = if o.name == "-ar" {
            "the output's sample rate is mp3.sample_rate"
        } else {
            "Tower needs -frame_size 1152 -f mp3"
        };
        notes.push(format!(
            "output option {} {} replaced: {needs}",
            o.name,
            o.value.as_deref().unwrap_or("")
        ));
    }
    if let Some(t) = &target
        && t != "pipe:1"
    {
        notes.push(format!("output {t} replaced by pipe:1"));
    }
    let codec_names = ["-c:a", "-codec:a", "-acodec", "-c", "-codec"];
    let uses_lame = match kept_out.iter().rev().find(|o| codec_names.contains(&o.name.as_str())) {
        None => {
            out.extend(["-c:a", "libmp3lame"].map(String::from));
            true
        }
        Some(o) => o.value.as_deref() == Some("libmp3lame"),
    };
    push_opts(&mut out, &kept_out);
    if uses_lame && !has(&kept_out, &["-reservoir"]) {
        out.extend(["-reservoir", "0"].map(String::from));
    }
    if !has(&kept_out, &["-id3v2_version"]) {
        out.extend(["-id3v2_version", "0"].map(String::from));
    }
    out.extend(REQUIRED_OUTPUT.iter().map(|s| s.to_string()));
    Ok((
        EncoderCommand {
            program: program.to_string(),
            args: out,
        },
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// The value following `name` in `args`, for every occurrence.
    fn values<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn assert_required(cmd: &EncoderCommand) {
        let a = &cmd.args;
        let input = a.iter().position(|x| x == "-i").expect("-i");
        assert_eq!(a[input + 1], "pipe:0");
        let pre = &a[..input];
        assert_eq!(values(pre, "-f"), ["wav"]);
        assert_eq!(values(pre, "-ignore_length"), ["1"]);
        assert_eq!(values(pre, "-max_size"), [crate::audio::PCM_FRAME_BYTES.to_string()]);
        assert!(values(pre, "-ar").is_empty() && values(pre, "-ac").is_empty());
        let post = &a[input + 2..];
        assert_eq!(values(post, "-frame_size"), ["1152"]);
        assert_eq!(values(post, "-f"), ["mp3"]);
        assert_eq!(a.last().map(String::as_str), Some("pipe:1"));
        assert_eq!(a.iter().filter(|x| *x == "-i").count(), 1);
    }

    #[test]
    fn default_command_is_the_low_latency_one() {
        let c = default_command("ffmpeg", 128);
        assert_required(&c);
        assert_eq!(
            c.to_string(),
            "ffmpeg -hide_banner -nostats -loglevel warning -probesize 32 -analyzeduration 0 \
             -f wav -ignore_length 1 -max_size 4608 -i pipe:0 -c:a libmp3lame -b:a 128k \
             -reservoir 0 -id3v2_version 0 -frame_size 1152 -f mp3 pipe:1"
        );
        assert_eq!(values(&default_command("ffmpeg", 192).args, "-b:a"), ["192k"]);
    }

    #[test]
    fn at_44_1_khz_ffmpeg_resamples_at_its_output_and_a_custom_rate_is_replaced() {
        let c = at_sample_rate(default_command("ffmpeg", 128), 44_100);
        assert_required(&c);
        assert!(
            c.to_string().ends_with(
                "-f wav -ignore_length 1 -max_size 4608 -i pipe:0 -c:a libmp3lame -b:a 128k \
                 -reservoir 0 -id3v2_version 0 -ar 44100 -frame_size 1152 -f mp3 pipe:1"
            ),
            "{c}"
        );
        assert_eq!(
            at_sample_rate(default_command("ffmpeg", 128), 48_000),
            default_command("ffmpeg", 128)
        );
        let (custom, notes) = custom_command("ffmpeg", &strings("-b:a 96k -ar 22050")).expect("accepted");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("-ar 22050 replaced") && n.contains("mp3.sample_rate")),
            "{notes:?}"
        );
        let custom = at_sample_rate(custom, 44_100);
        let after_input = &custom.args[custom.args.iter().position(|a| a == "-i").expect("-i")..];
        assert_eq!(values(after_input, "-ar"), ["44100"]);
    }

    #[test]
    fn custom_codec_options_are_kept_and_required_flags_enforced() {
        let (c, notes) = custom_command(
            "/opt/ffmpeg",
            &strings("-f s16le -ar 44100 -ac 1 -i - -af highpass=f=40 -c:a libmp3lame -q:a 2 -f adts out.aac"),
        )
        .expect("accepted");
        assert_required(&c);
        assert_eq!(c.program, "/opt/ffmpeg");
        assert_eq!(values(&c.args, "-af"), ["highpass=f=40"]);
        assert_eq!(values(&c.args, "-q:a"), ["2"]);
        assert_eq!(values(&c.args, "-reservoir"), ["0"]);
        let joined = notes.join("\n");
        for replaced in ["-ar 44100", "-ac 1", "-i -", "-f adts", "out.aac"] {
            assert!(joined.contains(replaced), "no note for {replaced}: {joined}");
        }
    }

    #[test]
    fn the_readme_s_faster_lame_level_is_kept_as_given() {
        // README, "Custom ffmpeg arguments": the bench's level 7.
        let (c, notes) =
            custom_command("ffmpeg", &strings("-c:a libmp3lame -b:a 128k -compression_level 7")).expect("accepted");
        assert_required(&c);
        assert_eq!(values(&c.args, "-compression_level"), ["7"]);
        assert_eq!(values(&c.args, "-b:a"), ["128k"]);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_bare_option_list_gets_input_codec_and_output_added() {
        let (c, notes) = custom_command("ffmpeg", &strings("-b:a 192k")).expect("accepted");
        assert_required(&c);
        assert_eq!(values(&c.args, "-c:a"), ["libmp3lame"]);
        assert_eq!(values(&c.args, "-b:a"), ["192k"]);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn user_choices_for_optional_settings_are_respected() {
        let (c, _) = custom_command(
            "ffmpeg",
            &strings("-loglevel info -probesize 4096 -i pipe:0 -c:a libshine -id3v2_version 3 pipe:1"),
        )
        .expect("accepted");
        assert_required(&c);
        assert_eq!(values(&c.args, "-loglevel"), ["info"]);
        assert_eq!(values(&c.args, "-probesize"), ["4096"]);
        assert_eq!(values(&c.args, "-id3v2_version"), ["3"]);
        // -reservoir is a libmp3lame option: not added for another encoder.
        assert!(values(&c.args, "-reservoir").is_empty());
    }

    #[test]
    fn the_required_flags_themselves_produce_no_notes() {
        for given in [
            "-f wav -ignore_length 1 -max_size 4608 -i pipe:0 -b:a 128k -frame_size 1152 -f mp3 pipe:1",
            // The raw description the README used to show: the same PCM.
            "-f s16le -ar 48000 -ac 2 -ch_layout stereo -i pipe:0 -b:a 128k -frame_size 1152 -f mp3 pipe:1",
        ] {
            let (c, notes) = custom_command("ffmpeg", &strings(given)).expect("accepted");
            assert_required(&c);
            assert!(notes.is_empty(), "{given}: {notes:?}");
        }
    }

    #[test]
    fn the_wav_header_says_48_khz_16_bit_stereo_front_left_and_right() {
        let h = wav_header();
        assert_eq!(h.len(), WAV_HEADER_BYTES);
        assert_eq!(
            (&h[0..4], &h[8..16], &h[60..64]),
            (&b"RIFF"[..], &b"WAVEfmt "[..], &b"data"[..])
        );
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        assert_eq!(u32_at(16), 40, "fmt chunk size");
        assert_eq!((u16_at(20), u16_at(22), u32_at(24)), (0xFFFE, 2, 48_000));
        assert_eq!((u32_at(28), u16_at(32), u16_at(34)), (192_000, 4, 16));
        assert_eq!(u32_at(40), 3, "channel mask");
        assert_eq!(u32_at(64), 0, "data size: read to the end");
    }

    #[test]
    fn unsafe_commands_are_refused_with_the_reason() {
        assert_eq!(
            custom_command("ffmpeg", &strings("-i pipe:0 -i jingle.wav -b:a 128k")),
            Err(CommandError::ExtraInput("jingle.wav".into()))
        );
        assert_eq!(
            custom_command("ffmpeg", &strings("-b:a")),
            Err(CommandError::MissingValue("-b:a".into()))
        );
        assert_eq!(
            custom_command("ffmpeg", &strings("stray -b:a 128k")),
            Err(CommandError::Stray("stray".into()))
        );
    }
}
