//! The whole box: checks that a running Tower (default
//! http://127.0.0.1:8000, or the URL given) streams MP3 a listener can
//! take, at the real-time rate, from the live input; prints the status.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tower::encoder::mp3::Packetizer;

fn get(host: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let host = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let fail = |why: String| -> ! {
        println!("FAIL: {why}");
        std::process::exit(1)
    };
    let mut s = TcpStream::connect(&host).unwrap_or_else(|e| fail(format!("cannot connect to {host}: {e}")));
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(format!("GET /stream HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let start = Instant::now();
    let mut p = Packetizer::new();
    let mut frames = 0u64;
    let mut head_done = false;
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    while start.elapsed() < Duration::from_secs(10) {
        let n = s.read(&mut buf).unwrap_or_else(|e| fail(format!("stream read: {e}")));
        if n == 0 {
            fail("the stream ended".into());
        }
        if head_done {
            p.push(&buf[..n], |_| frames += 1);
        } else {
            pending.extend_from_slice(&buf[..n]);
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                head_done = true;
                p.push(&pending[i + 4..], |_| frames += 1);
            }
        }
    }
    let rate = frames as f64 / start.elapsed().as_secs_f64();
    let status: serde_json::Value = get(&host, "/status")
        .ok()
        .and_then(|r| {
            r.split_once("\r\n\r\n")
                .and_then(|(_, body)| serde_json::from_str(body).ok())
        })
        .unwrap_or_default();
    let input = status["input"]["state"].as_str().unwrap_or("?").to_string();
    println!(
        "{frames} MP3 frames in 10 s ({rate:.1}/s, expected ~41.7); garbage bytes {}; input {input}",
        p.stats().garbage_bytes
    );
    if !(38.0..46.0).contains(&rate) || p.stats().garbage_bytes > 0 {
        fail("the stream is not real-time MP3".into());
    }
    if input != "live" {
        fail(format!(
            "the input is {input}, not live: is the sound card connected and `device` set?"
        ));
    }
    println!("PASS");
}
