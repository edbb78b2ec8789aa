//! The ffmpeg command line [S1].
//!
//! Pure. Builds the default low-latency command, or takes a user's argument
//! list and enforces what Tower depends on: canonical PCM on stdin
//! (`-f s16le -ar 48000 -ac 2 -ch_layout stereo -i pipe:0`) and whole MP3
//! frames of 1152 samples on stdout (`-frame_size 1152 -f mp3 pipe:1`).
//! Whatever the user set for these is replaced, and the replacements are
//! reported so they can be logged once.

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
const INPUT_OWNED: &[&str] = &["-f", "-ar", "-ac", "-ch_layout", "-channel_layout", "-sample_fmt", "-i"];
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
const REQUIRED_INPUT: &[&str] = &[
    "-f",
    "s16le",
    "-ar",
    "48000",
    "-ac",
    "2",
    "-ch_layout",
    "stereo",
    "-i",
    "pipe:0",
];
const REQUIRED_OUTPUT: &[&str] = &["-frame_size", "1152", "-f", "mp3", "pipe:1"];
const STDOUT_TARGETS: &[&str] = &["pipe:1", "pipe:", "-", "/dev/stdout"];

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
        let required = REQUIRED_INPUT
            .chunks(2)
            .any(|kv| kv[0] == o.name && Some(kv[1]) == o.value.as_deref());
        !required
    }) {
        notes.push(format!(
            "input option {} {} replaced: Tower feeds s16le 48000 Hz stereo on pipe:0",
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
        assert_eq!(values(pre, "-f"), ["s16le"]);
        assert_eq!(values(pre, "-ar"), ["48000"]);
        assert_eq!(values(pre, "-ac"), ["2"]);
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
             -f s16le -ar 48000 -ac 2 -ch_layout stereo -i pipe:0 -c:a libmp3lame -b:a 128k \
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
                "-ac 2 -ch_layout stereo -i pipe:0 -c:a libmp3lame -b:a 128k \
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
        let (_, notes) = custom_command(
            "ffmpeg",
            &strings("-f s16le -ar 48000 -ac 2 -i pipe:0 -b:a 128k -frame_size 1152 -f mp3 pipe:1"),
        )
        .expect("accepted");
        assert!(
            notes.iter().all(|n| !n.contains("s16le") && !n.contains("mp3 ")),
            "{notes:?}"
        );
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
