//! A producer for Tower's socket input that keeps Tower's input queue at a
//! steady fill (see `pacer.rs` for the rule, the README for the why).
//!
//! ```text
//! cargo run --release --example pace_producer -- \
//!     --socket /run/tower/pcm.sock --http 127.0.0.1:8000 \
//!     [--target 8] [--poll-ms 48] [--rate 2] [--seconds 60] [--tone 1000]
//! ```
//!
//! It writes a sine tone (s16le, 48 kHz, stereo) and, at the end, prints
//! the band of fills it saw at its polls.

mod pacer;

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use pacer::{Pace, Tone};

struct Args {
    socket: String,
    http: SocketAddr,
    pace: Pace,
    seconds: f64,
    tone: f64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        socket: "/run/tower/pcm.sock".into(),
        http: SocketAddr::from(([127, 0, 0, 1], 8000)),
        pace: Pace::default(),
        seconds: 60.0,
        tone: 1000.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--socket" => args.socket = value.clone(),
            "--http" => {
                args.http = value
                    .parse()
                    .map_err(|_| format!("--http: {value:?} is not ADDR:PORT"))?
            }
            "--target" => args.pace.target = number()? as usize,
            "--poll-ms" => args.pace.poll = Duration::from_secs_f64(number()? / 1000.0),
            "--rate" => args.pace.max_rate = number()?,
            "--seconds" => args.seconds = number()?,
            "--tone" => args.tone = number()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pace_producer: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = match UnixStream::connect(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pace_producer: cannot connect to {}: {e}", args.socket);
            return ExitCode::FAILURE;
        }
    };
    let mut tone = Tone::new(args.tone);
    let length = Duration::from_secs_f64(args.seconds);
    let run = match pacer::run(&mut out, args.http, args.pace, length, |f| tone.fill(f)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pace_producer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first second is the climb to the target.
    let skip = (1.0 / args.pace.poll.as_secs_f64()) as usize;
    let (lo, hi) = run.band(skip).unwrap_or((0, 0));
    println!(
        "target {} frames, poll {} ms, at most {}x real time: fill {lo}..{hi} frames over {:.0} s \
         ({} polls, {} late), {} frames written",
        args.pace.target,
        args.pace.poll.as_millis(),
        args.pace.max_rate,
        args.seconds,
        run.fills.len(),
        run.late_polls,
        run.frames_written
    );
    ExitCode::SUCCESS
}
