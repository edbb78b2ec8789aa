//! What a listener and an owner see: the burst on connect, Icecast-style
//! headers and ICY metadata, playlists, real players (mpv, ffmpeg), the
//! status page's event stream, `/metrics` (checked by Prometheus's own
//! `promtool`) and `/health`. Clauses: [H1]–[H5].

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::audio::{decode_frames, mono, tone_ratio};
use common::{Listener, Tower, http_raw, wait_for};
use tower::encoder::mp3::Packetizer;

const NO_DEVICE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_test_no_such_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];

/// Sends `request`, returns the response head and the first `body_len`
/// body bytes.
fn read_raw(addr: SocketAddr, request: &str, body_len: usize) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(request.as_bytes()).expect("request");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended");
        data.extend_from_slice(&buf[..n]);
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n")
            && data.len() >= p + 4 + body_len
        {
            let head = String::from_utf8_lossy(&data[..p + 4]).into_owned();
            let body = data[p + 4..p + 4 + body_len].to_vec();
            return (head, body);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Cuts `bytes` into MP3 frames; returns them and the bytes that were not
/// part of any frame.
fn frames_of(bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
    let mut p = Packetizer::new();
    let mut frames = Vec::new();
    p.push(bytes, |f| frames.push(f.to_vec()));
    (frames, p.stats().garbage_bytes)
}

/// The share of 440 Hz in decoded `frames` (skipping the first, which
/// starts the decoder).
fn tone_440(frames: &[Vec<u8>]) -> f64 {
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let d = decode_frames(&refs);
    assert_eq!(d.errors, 0, "decoder errors");
    let samples: Vec<f32> = d.frames.iter().skip(1).flatten().copied().collect();
    tone_ratio(&mono(&samples, d.channels), d.sample_rate, 440.0)
}

#[test]
fn icy_metadata_comes_exactly_every_metaint_bytes_and_only_to_clients_that_ask() {
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_HTTP_ICY_METAINT", "1000"),
        ("TOWER_STATION_NAME", "Kitchen Radio"),
        ("TOWER_STATION_GENRE", "Jazz"),
        ("TOWER_STATION_URL", "http://example.org/"),
        ("TOWER_STATION_TITLE", "Saturday's set"),
    ]);
    let tower = Tower::start(&[], &env);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no fallback tone");

    // Asking: a block after every 1000 audio bytes, exactly.
    let (head, body) = read_raw(
        tower.addr,
        "GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nIcy-MetaData: 1\r\n\r\n",
        40_000,
    );
    assert_eq!(header(&head, "icy-metaint"), Some("1000"), "{head}");
    assert_eq!(header(&head, "icy-name"), Some("Kitchen Radio"));
    assert_eq!(header(&head, "icy-genre"), Some("Jazz"));
    assert_eq!(header(&head, "icy-br"), Some("128"));
    assert_eq!(header(&head, "icy-url"), Some("http://example.org/"));
    assert_eq!(header(&head, "content-type"), Some("audio/mpeg"));
    assert!(header(&head, "cache-control").is_some_and(|v| v.contains("no-cache")));
    // Titles are cleaned: a `'` cannot end the block early.
    let text = "StreamTitle='Saturday’s set';".as_bytes();
    let mut audio = Vec::new();
    let mut pos = 0;
    let mut blocks = 0;
    while pos + 1000 < body.len() {
        audio.extend_from_slice(&body[pos..pos + 1000]);
        pos += 1000;
        let len = usize::from(body[pos]) * 16;
        if pos + 1 + len > body.len() {
            break;
        }
        let block = &body[pos + 1..pos + 1 + len];
        assert_eq!(&block[..text.len()], text, "block {blocks} at byte {pos}");
        assert!(block[text.len()..].iter().all(|&b| b == 0), "padding");
        pos += 1 + len;
        blocks += 1;
    }
    assert!(blocks >= 35, "{blocks} blocks");
    let (frames, garbage) = frames_of(&audio);
    assert_eq!(garbage, 0, "the audio between blocks is whole MP3");
    assert!(tone_440(&frames) > 0.9);

    // Not asking: no icy-metaint, and every byte is MP3.
    let (head, body) = read_raw(tower.addr, "GET /stream HTTP/1.0\r\n\r\n", 40_000);
    assert_eq!(header(&head, "icy-metaint"), None, "{head}");
    assert_eq!(header(&head, "icy-name"), Some("Kitchen Radio"));
    let (frames, garbage) = frames_of(&body);
    assert_eq!(garbage, 0, "metadata bytes in a plain stream");
    assert!(frames.len() >= 90);
    assert!(tone_440(&frames) > 0.9);
}

#[test]
fn stream_mp3_is_the_same_stream_with_the_same_head_burst_icy_and_head() {
    let mut env = NO_DEVICE.to_vec();
    env.extend([("TOWER_HTTP_ICY_METAINT", "1000"), ("TOWER_STATION_TITLE", "Side A")]);
    let tower = Tower::start(&[], &env);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no fallback tone");
    // The same head, the same frames (both asked at once, with a burst
    // long enough that the two bodies overlap).
    let get = |path: &str| {
        let addr = tower.addr;
        let rq = format!("GET {path}?burst_ms=2000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        std::thread::spawn(move || read_raw(addr, &rq, 30_000))
    };
    let (a, b) = (get("/stream"), get("/stream.mp3"));
    let ((head_a, body_a), (head_b, body_b)) = (a.join().expect("a"), b.join().expect("b"));
    assert_eq!(head_a, head_b, "the two names give the same head");
    let ((fa, ga), (fb, gb)) = (frames_of(&body_a), frames_of(&body_b));
    assert_eq!((ga, gb), (0, 0));
    let start = fa
        .iter()
        .position(|f| *f == fb[10])
        .expect("a frame of one is in the other");
    let common = fa[start..].iter().zip(&fb[10..]).take_while(|(x, y)| x == y).count();
    assert!(common >= 40, "only {common} frames in common");
    assert!(tone_440(&fb[fb.len() - 30..]) > 0.9);
    // HEAD: the head alone.
    let r = http_raw(tower.addr, "HEAD /stream.mp3 HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-type").as_deref(), Some("audio/mpeg"));
    // ICY, from any host name (like /stream).
    let (head, body) = read_raw(
        tower.addr,
        "GET /stream.mp3 HTTP/1.1\r\nHost: speaker.example\r\nIcy-MetaData: 1\r\n\r\n",
        3_000,
    );
    assert_eq!(header(&head, "icy-metaint"), Some("1000"), "{head}");
    assert_eq!(&body[1001..1001 + 21], b"StreamTitle='Side A';");
}

#[test]
fn a_new_listener_gets_the_burst_at_once_then_real_time() {
    let mut env = NO_DEVICE.to_vec();
    env.push(("TOWER_HTTP_BURST_MS", "480"));
    let tower = Tower::start(&[], &env);
    let warm = Listener::connect(tower.addr);
    assert!(warm.wait_frames(40, Duration::from_secs(10)));
    let t = Instant::now();
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(20, Duration::from_secs(2)));
    let first = l.frames();
    let at_once = first
        .iter()
        .filter(|a| a.at <= first[0].at + Duration::from_millis(15))
        .count();
    assert_eq!(at_once, 20, "480 ms is 20 frames, sent at once");
    // Then the live pace: ~42 frames a second, not a flood.
    std::thread::sleep(Duration::from_secs(2));
    let later = l.frames_since(t + Duration::from_millis(500));
    let per_s = later.len() as f64 / (t.elapsed().as_secs_f64() - 0.5);
    assert!((35.0..50.0).contains(&per_s), "{per_s} frames/s");

    // A listener may ask for its own burst (a browser, to start at once).
    let asked = Instant::now();
    let (_, body) = read_raw(tower.addr, "GET /stream?burst_ms=1200 HTTP/1.0\r\n\r\n", 49 * 384);
    assert!(frames_of(&body).0.len() >= 48);
    // 1.2 s of audio in far less than 1.2 s: it came as a burst.
    assert!(asked.elapsed() < Duration::from_millis(600), "{:?}", asked.elapsed());
    let r = http_raw(tower.addr, "GET /stream?burst_ms=9000 HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("burst_ms"), "{}", r.body_text());
}

#[test]
fn the_playlist_points_at_the_stream_as_the_client_reached_it_and_mpv_plays_it() {
    let mut env = NO_DEVICE.to_vec();
    env.push(("TOWER_STATION_NAME", "Hall"));
    let tower = Tower::start(&[], &env);
    for path in ["/stream.m3u", "/listen.m3u"] {
        let r = http_raw(
            tower.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: tower.local:8000\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type").as_deref(), Some("audio/x-mpegurl"));
        assert_eq!(
            r.body_text(),
            "#EXTM3U\n#EXTINF:-1,Hall\nhttp://tower.local:8000/stream\n\
             #EXTINF:-1,Hall (.mp3)\nhttp://tower.local:8000/stream.mp3\n"
        );
    }
    // A Host with characters no host has is not echoed.
    let r = http_raw(
        tower.addr,
        "GET /stream.m3u HTTP/1.1\r\nHost: evil\"<x>\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.body_text().contains(&format!("http://{}/stream", tower.addr)),
        "{}",
        r.body_text()
    );

    // mpv opens the playlist (as reached on this address) and plays.
    let url = format!("http://{}/stream.m3u", tower.addr);
    let out = common::run_player(
        "mpv",
        &["--no-video", "--ao=null", "--length=4", "--msg-level=all=warn", &url],
    );
    assert!(out.0, "mpv failed:\n{}", out.1);
    assert!(!out.1.to_lowercase().contains("error"), "mpv said:\n{}", out.1);
}

#[test]
fn mpv_and_ffmpeg_play_the_stream_for_5_s_without_decoder_errors() {
    let tower = Tower::start(&[], NO_DEVICE);
    common::mpv_and_ffmpeg_play(&format!("http://{}/stream", tower.addr));
}

#[test]
fn the_status_page_is_served_and_its_event_stream_carries_status_and_levels() {
    let tower = Tower::start(&[], NO_DEVICE);
    let page = tower.get("/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|v| v.starts_with("text/html")));
    let html = page.body_text();
    for id in ["encoder-badge", "input-badge", "meter", "player"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    assert!(wait_for(Duration::from_secs(10), || tower.status()["encoder"]["state"]
        == "RUNNING"));
    let (head, body) = read_raw(tower.addr, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 6_000);
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("retry: 2000\n\n"), "{text}");
    let status = text
        .split("\n\n")
        .find_map(|e| e.strip_prefix("event: status\ndata: "))
        .expect("a status event");
    let status: serde_json::Value = serde_json::from_str(status).expect("status JSON");
    assert_eq!(status["encoder"]["state"], "RUNNING");
    let level = text
        .split("\n\n")
        .find_map(|e| e.strip_prefix("event: level\ndata: "))
        .expect("a level event");
    let level: serde_json::Value = serde_json::from_str(level).expect("level JSON");
    assert_eq!(level["peak_dbfs"].as_array().map(Vec::len), Some(2));
    assert!(level["state"].is_string());
}

/// `promtool check metrics` on `text`: errors if it does not parse.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn metrics_parse_with_promtool_and_move_as_the_stream_runs() {
    let tower = Tower::start(&[], NO_DEVICE);
    let before = tower.get("/metrics");
    assert!(
        before
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4"))
    );
    let before = before.body_text();
    let (ok, said) = promtool(&before);
    assert!(ok, "promtool: {said}\n{before}");
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(50, Duration::from_secs(10)));
    let after = tower.get("/metrics").body_text();
    assert!(promtool(&after).0);
    assert!(metric(&after, "tower_mp3_frames_out_total") > metric(&before, "tower_mp3_frames_out_total"));
    assert!(metric(&after, "tower_pump_ticks_total") > metric(&before, "tower_pump_ticks_total"));
    assert_eq!(metric(&after, "tower_listeners"), 1.0);
    assert_eq!(metric(&after, "tower_encoder_state{state=\"RUNNING\"}"), 1.0);
    assert_eq!(metric(&after, "tower_input_state{state=\"fallback\"}"), 1.0);
    assert!(metric(&after, "tower_pump_tick_lateness_seconds_count") >= 50.0);
}

#[test]
fn health_is_ok_when_streaming_and_503_with_reasons_when_the_pump_stalls_or_the_encoder_fails() {
    let mut env = NO_DEVICE.to_vec();
    env.push(common::HOOKS);
    let tower = Tower::start(&[], &env);
    assert!(wait_for(Duration::from_secs(5), || tower.get("/health").status == 200));
    // The fallback is streaming by design: healthy.
    assert!(wait_for(Duration::from_secs(5), || tower.status()["input"]["state"]
        == "fallback"));
    assert_eq!(tower.get("/health").status, 200);

    // The hook changes state: without the token it is refused.
    let unauthorized = http_raw(
        tower.addr,
        "POST /test/stall?thread=pump&ms=2500 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n\r\n",
    );
    assert_eq!(unauthorized.status, 401);
    assert_eq!(tower.get("/health").status, 200);
    let r = common::stall(tower.addr, "pump", 2500);
    assert_eq!(r.status, 200);
    assert!(
        wait_for(Duration::from_secs(3), || tower.get("/health").status == 503),
        "a stalled pump is not reported"
    );
    let body: serde_json::Value = serde_json::from_str(&tower.get("/health").body_text()).expect("json");
    assert!(
        body["reasons"][0]
            .as_str()
            .expect("reason")
            .contains("audio pump stalled"),
        "{body}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || tower.get("/health").status == 200),
        "not healthy again"
    );
    drop(tower);

    // An encoder that can never start ends FAILED: 503 naming it.
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_FFMPEG", "/nonexistent/ffmpeg"),
        ("TOWER_ENCODER_MAX_RESTARTS", "1"),
        ("TOWER_ENCODER_BACKOFF_MS", "[100]"),
    ]);
    let tower = Tower::start(&[], &env);
    assert!(
        wait_for(Duration::from_secs(10), || tower.get("/health").status == 503),
        "{}",
        tower.status()
    );
    let body: serde_json::Value = serde_json::from_str(&tower.get("/health").body_text()).expect("json");
    assert!(
        body["reasons"][0].as_str().expect("reason").contains("encoder FAILED"),
        "{body}"
    );
}
