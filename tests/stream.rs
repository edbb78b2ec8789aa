//! The real `tower` binary, real ffmpeg, real sockets; no sound card, so the
//! input is the fallback tone. Clauses: [FB], [A2], [S4]–[S7], [M4]–[M5],
//! [H1]–[H5], [T1], [T4].

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Listener, Tower, http_get, http_raw, tone_of, wait_for};
use nix::sys::signal::Signal;

/// No device, short grace: the fallback tone plays.
const NO_DEVICE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_test_no_such_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];

#[test]
fn without_a_capture_device_listeners_hear_the_440_hz_fallback() {
    let tower = Tower::start(&[], NO_DEVICE);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(1, Duration::from_secs(10)), "no audio");
    let head = l.head();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: audio/mpeg"), "{head}");
    // 2 s of audio after the grace period.
    assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no 440 Hz tone");
    let since = Instant::now();
    assert!(l.wait_frames(84, Duration::from_secs(10)));
    let ratio = tone_of(&l.frames_since(since), 440.0);
    assert!(ratio > 0.9, "Goertzel ratio at 440 Hz {ratio:.3}");

    // A real client decodes it too: ffmpeg reading the stream over HTTP.
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-probesize",
            "8192",
            "-analyzeduration",
            "0",
            "-f",
            "mp3",
            "-i",
        ])
        .arg(format!("http://{}/stream", tower.addr))
        .args(["-t", "2", "-ac", "1", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<f32> = out
        .stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    assert!(samples.len() >= 48_000, "ffmpeg got {} samples", samples.len());
    let ratio = common::audio::tone_ratio(&samples[4800..], 48_000, 440.0);
    assert!(ratio > 0.9, "ffmpeg client: ratio {ratio:.3}");
    // The device problem was reported once, naming the device.
    let log = tower.log_text();
    assert!(
        log.contains("cannot open capture device \"tower_test_no_such_device\""),
        "{log}"
    );
    let lines = log.lines().filter(|l| l.contains("cannot open capture device")).count();
    assert_eq!(lines, 1, "{log}");
}

#[test]
fn killing_ffmpeg_keeps_both_listeners_connected_and_audio_returns_within_1_s() {
    let tower = Tower::start(&[], NO_DEVICE);
    let a = Listener::connect(tower.addr);
    let b = Listener::connect(tower.addr);
    for l in [&a, &b] {
        assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no tone before the kill");
    }
    let pid = tower.ffmpeg_pid();
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill ffmpeg");
    assert!(
        wait_for(Duration::from_secs(5), || tower.status()["encoder"]["restarts"] == 1
            && tower.status()["encoder"]["state"] == "RUNNING"),
        "ffmpeg was not restarted: {}",
        tower.status()
    );
    // Two more seconds of listening.
    assert!(a.wait_frames(84, Duration::from_secs(10)));
    for (name, l) in [("a", &a), ("b", &b)] {
        assert!(l.ended().is_none(), "listener {name} was disconnected");
        let after = l.frames_since(killed_at);
        // Silence covers the gap: frames kept coming at the 24 ms cadence.
        let gap = l.max_gap_since(killed_at);
        assert!(
            gap < Duration::from_millis(200),
            "listener {name}: {gap:?} without data"
        );
        // Audio back: the first 4-frame window after the first silent frame
        // that carries the tone.
        let levels = common::frame_levels(&after);
        let first_silent = levels
            .iter()
            .position(|&db| db < -80.0)
            .expect("silence frames after the kill");
        let back = (first_silent..after.len().saturating_sub(4))
            .find(|&i| tone_of(&after[i..i + 5], 440.0) > 0.9)
            .map(|i| after[i].at.saturating_duration_since(killed_at))
            .expect("tone never came back");
        eprintln!("listener {name}: audio back {back:?} after SIGKILL");
        assert!(
            back < Duration::from_secs(1),
            "listener {name}: audio back after {back:?}"
        );
    }
    let status = tower.status();
    assert_eq!(status["encoder"]["failures"]["process_exit"], 1, "{status}");
    assert_eq!(status["listeners"]["current"], 2);
    let history = status["encoder"]["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|t| t["to"] == "RESTARTING" && t["reason"].as_str().unwrap_or("").contains("signal 9"))
    );
}

#[test]
fn a_listener_that_stops_reading_is_dropped_and_the_healthy_one_loses_nothing() {
    let tower = Tower::start(&[], NO_DEVICE);
    let healthy = Listener::connect(tower.addr);
    assert!(healthy.wait_tone(440.0, Duration::from_secs(10)));

    // A client with a tiny receive window that reads the head, then nothing.
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .expect("socket");
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &4096).expect("rcvbuf");
    let addr = nix::sys::socket::SockaddrIn::from(match tower.addr {
        std::net::SocketAddr::V4(v4) => v4,
        std::net::SocketAddr::V6(_) => unreachable!("tests listen on IPv4"),
    });
    nix::sys::socket::connect(socket.as_raw_fd(), &addr).expect("connect");
    let mut slow = TcpStream::from(socket);
    slow.write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request");
    let mut first = [0u8; 512];
    let _ = slow.read(&mut first).expect("head");
    let stopped_reading = Instant::now();
    let start_count = healthy.frame_count();

    assert!(
        wait_for(Duration::from_secs(20), || tower.status()["listeners"]["slow_dropped"]
            == 1),
        "slow listener not dropped: {}",
        tower.status()
    );
    let dropped_after = stopped_reading.elapsed();
    eprintln!("slow listener dropped {dropped_after:?} after it stopped reading (kernel buffers fill first)");
    // The server closed it: reading what is left ends in EOF or a reset.
    slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match slow.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("slow listener's connection still open: {e}"),
        }
    }
    // The healthy listener kept getting every frame on time.
    assert!(healthy.ended().is_none());
    let gap = healthy.max_gap_since(stopped_reading);
    assert!(gap < Duration::from_millis(150), "healthy listener stalled for {gap:?}");
    let got = healthy.frame_count() - start_count;
    let expected = (stopped_reading.elapsed().as_millis() / 24) as usize;
    assert!(
        got + 3 >= expected,
        "healthy listener got {got} frames, expected about {expected}"
    );
    assert!(tone_of(&healthy.frames_since(stopped_reading), 440.0) > 0.9);
    let status = tower.status();
    assert_eq!(status["listeners"]["current"], 1, "{status}");
    assert_eq!(status["counters"]["slow_listeners_dropped"], 1, "{status}");
}

#[test]
fn buffer_and_status_return_the_documented_json_and_bad_requests_get_4xx() {
    let tower = Tower::start(&[], NO_DEVICE);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(440.0, Duration::from_secs(10)));

    let r = tower.get("/tower/buffer");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["capacity", "fill"]);
    assert_eq!(v["capacity"], 100);
    assert!(v["fill"].as_u64().expect("fill") <= 100);

    let s = tower.status();
    assert_eq!(s["encoder"]["state"], "RUNNING");
    assert_eq!(s["input"]["state"], "fallback");
    assert_eq!(s["input"]["device"]["name"], "tower_test_no_such_device");
    assert_eq!(s["input"]["device"]["auto"], false);
    assert_eq!(s["input"]["device_state"], "unavailable");
    assert_eq!(s["listeners"]["current"], 1);
    assert!(s["uptime_s"].as_f64().expect("uptime") > 0.0);
    for key in [
        "pcm_frames_in",
        "mp3_frames_out",
        "encoder_restarts",
        "slow_listeners_dropped",
    ] {
        assert!(s["counters"][key].is_u64(), "counters.{key} missing: {s}");
    }
    for cause in [
        "pcm_queue_full",
        "pcm_malformed",
        "pcm_encoder_down",
        "mp3_ring_full",
        "slow_listeners",
    ] {
        assert!(s["counters"]["drops"][cause].is_u64(), "drops.{cause} missing: {s}");
    }
    assert!(s["counters"]["mp3_frames_out"].as_u64().expect("n") > 10);
    let history = s["encoder"]["history"].as_array().expect("history");
    assert_eq!(history[0]["from"], "STOPPED");
    assert_eq!(history[0]["to"], "STARTING");
    assert!(history[0]["reason"].is_string() && history[0]["at"].is_string());
    assert!(s["pump"]["ticks"].as_u64().expect("ticks") > 0);

    // Query strings are ignored for routing.
    assert_eq!(tower.get("/status?x=1").status, 200);
    // Unknown paths: 404; other methods: 405 with Allow.
    assert_eq!(tower.get("/nope").status, 404);
    // Test hooks are off unless enabled: the route does not exist.
    let r = http_raw(tower.addr, "POST /test/stall?thread=pump&ms=10 HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(tower.get("/stream/../status").status, 404);
    let r = http_raw(
        tower.addr,
        "POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    let r = http_raw(
        tower.addr,
        "DELETE /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    // Garbage is answered with 400 and does not hurt the service.
    let r = http_raw(tower.addr, "THIS IS NOT HTTP\r\n\r\n");
    assert_eq!(r.status, 400);
    // HEAD /stream: the head only.
    let r = http_raw(tower.addr, "HEAD /stream HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("audio/mpeg"));
    assert!(r.body.is_empty());
    // An HTTP/1.0 listener gets the stream too.
    let mut s10 = TcpStream::connect(tower.addr).expect("connect");
    s10.write_all(b"GET /stream HTTP/1.0\r\n\r\n").expect("send");
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    s10.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while got < 2000 {
        got += s10.read(&mut buf).expect("read");
    }
    assert!(l.ended().is_none());
    // Every refusal is counted, the unparseable request too.
    assert_eq!(tower.status()["http"]["bad_requests"], 6);
}

#[test]
fn sigterm_with_listeners_connected_exits_0_within_2_s_and_closes_them() {
    let mut tower = Tower::start(&[], NO_DEVICE);
    let a = Listener::connect(tower.addr);
    let b = Listener::connect(tower.addr);
    assert!(a.wait_frames(5, Duration::from_secs(10)) && b.wait_frames(5, Duration::from_secs(10)));
    let (status, took) = tower.terminate();
    eprintln!("SIGTERM to exit: {took:?}");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    for l in [&a, &b] {
        let (_, why) = l.wait_end(Duration::from_secs(2)).expect("listener connection closed");
        assert_eq!(why, "eof");
    }
    let log = tower.log_text();
    assert!(log.contains("STOPPED"), "{log}");
}

#[test]
fn the_listener_limit_answers_503_with_retry_after() {
    let mut env = NO_DEVICE.to_vec();
    env.push(("TOWER_HTTP_MAX_LISTENERS", "1"));
    let tower = Tower::start(&[], &env);
    let a = Listener::connect(tower.addr);
    assert!(a.wait_frames(3, Duration::from_secs(10)));
    let r = http_get(tower.addr, "/stream");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(tower.status()["listeners"]["rejected_full"], 1);
    // The place comes free when the listener leaves.
    a.close();
    assert!(wait_for(
        Duration::from_secs(5),
        || tower.status()["listeners"]["current"] == 0
    ));
    let b = Listener::connect(tower.addr);
    assert!(b.wait_frames(3, Duration::from_secs(10)));
}

fn run_expecting_config_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tower"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("TOWER_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run tower");
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_configuration_stops_start_up_with_a_message_naming_the_key() {
    let err = run_expecting_config_error(&[], &[("TOWER_PCM_GRACE_SEC", "0")]);
    assert!(
        err.contains("pcm.grace_sec") && err.contains("TOWER_PCM_GRACE_SEC") && err.contains("0.05 to 3600"),
        "{err}"
    );
    let err = run_expecting_config_error(&[], &[("TOWER_MP3_BUFFER_CAPACITY_FRAMES", "many")]);
    assert!(err.contains("mp3.buffer_capacity_frames"), "{err}");
    let err = run_expecting_config_error(&["--listen", "localhost"], &[]);
    assert!(err.contains("listen") && err.contains("--listen"), "{err}");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tower.toml");
    std::fs::write(&file, "[pcm]\nbuffer_sise = 10\n").expect("write");
    let err = run_expecting_config_error(&["--config", file.to_str().expect("utf8")], &[]);
    assert!(
        err.contains("pcm.buffer_sise") && err.contains("pcm.buffer_size"),
        "{err}"
    );
    let err = run_expecting_config_error(&["--config", "/nonexistent/tower.toml"], &[]);
    assert!(err.contains("/nonexistent/tower.toml"), "{err}");
}

#[test]
fn no_configuration_mistake_shows_a_secret_on_stderr() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tower.toml");
    let path = file.to_str().expect("utf8");
    for (text, names) in [
        ("[admin]\npassword = hunter2hunter2\n", "line 2"),
        ("[admin]\npassword = 98765432101\n", "admin.password"),
        (
            "[[icecast]]\nurl = \"http://a/m\"\npassword = 98765432101\n",
            "icecast[0].password",
        ),
        (
            "[[icecast]]\nurl = \"http://source:hunter2hunter2@a/m\"\npassword = \"x\"\n",
            "icecast[0].url",
        ),
        (
            "[[icecast]]\nurl = \"http://a/m\"\npassword = \"hunter2hunter2\"\nmethod = \"post\"\n",
            "icecast[0].method",
        ),
    ] {
        std::fs::write(&file, text).expect("write");
        let err = run_expecting_config_error(&["--config", path], &[]);
        assert!(err.contains(names), "{text:?}: {err}");
        for secret in ["hunter2", "98765432101"] {
            assert!(!err.contains(secret), "{text:?} shows its secret: {err}");
        }
    }
    let err = run_expecting_config_error(&[], &[("TOWER_ADMIN_PASSWORD", "short")]);
    assert!(err.contains("admin.password") && !err.contains("short"), "{err}");
}

#[test]
fn other_programs_tower_variables_are_ignored_and_a_non_utf8_one_of_ours_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_tower"))
        .arg("--print-config")
        .env("TOWER_HOST", "awx.example.org")
        .env("TOWER_PASSWORD", "hunter2hunter2")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_tower"))
        .arg("--print-config")
        .env("TOWER_DEVICE", std::ffi::OsStr::from_bytes(b"hw:\xff"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("TOWER_DEVICE") && err.contains("UTF-8"), "{err}");
    // Another program's variable that is not UTF-8 does not matter.
    let out = Command::new(env!("CARGO_BIN_EXE_tower"))
        .arg("--print-config")
        .env("LANG_TEST_BYTES", std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_tower"))
        .args(["--print-config", "--device", "hw:CARD=Test,DEV=0"])
        .env("TOWER_PCM_GRACE_SEC", "1.5")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("device = \"hw:CARD=Test,DEV=0\""), "{text}");
    assert!(text.contains("grace_sec = 1.5"), "{text}");
}

#[test]
fn a_failing_encoder_is_logged_with_its_stderr_then_failed_and_still_retried() {
    // A custom command whose filter does not exist: ffmpeg starts, prints
    // its error and exits 1, every time.
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_ENCODER_ARGS", "-af nosuchfilter -f adts"),
        ("TOWER_ENCODER_MAX_RESTARTS", "3"),
        ("TOWER_ENCODER_BACKOFF_MS", "[50]"),
        ("TOWER_ENCODER_FAILED_RETRY_SEC", "1"),
    ]);
    let tower = Tower::start(&[], &env);
    assert!(
        wait_for(Duration::from_secs(10), || tower.status()["encoder"]["state"]
            == "FAILED"),
        "never FAILED: {}",
        tower.status()
    );
    let s = tower.status();
    assert!(
        s["encoder"]["failures"]["process_exit"].as_u64().expect("n") >= 3,
        "{s}"
    );
    // Still retried slowly [S5].
    let restarts = s["encoder"]["restarts"].as_u64().expect("n");
    assert!(
        wait_for(Duration::from_secs(5), || tower.status()["encoder"]["restarts"]
            .as_u64()
            .expect("n")
            > restarts),
        "a FAILED encoder was not retried"
    );
    let log = tower.log_text();
    // ffmpeg's own words, prefixed [S3], and each failure with its type,
    // exit code and the tail of stderr [S6].
    assert!(
        log.lines()
            .any(|l| l.contains("[FFMPEG]") && l.contains("nosuchfilter")),
        "{log}"
    );
    assert!(
        log.contains("encoder failed (process_exit)") && log.contains("exit code"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("encoder failed") && l.contains("stderr_tail") && l.contains("nosuchfilter")),
        "{log}"
    );
    // The replaced output format was reported once at start.
    assert!(
        log.contains("custom ffmpeg command: output option -f adts replaced"),
        "{log}"
    );
    // Listeners still connect (they wait for the first frame ever).
    let l = Listener::connect(tower.addr);
    assert!(wait_for(Duration::from_secs(2), || l.head().contains("200 OK")));
}

#[test]
fn a_fallback_wav_is_what_listeners_hear_when_the_input_is_gone() {
    let dir = tempfile::tempdir().expect("tmp");
    let wav = dir.path().join("fallback.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).expect("wav");
    for i in 0..48_000u32 {
        let v = ((std::f64::consts::TAU * 1000.0 * f64::from(i) / 48_000.0).sin() * 12_000.0) as i16;
        w.write_sample(v).expect("sample");
        w.write_sample(v).expect("sample");
    }
    w.finalize().expect("finalize");
    let mut env = NO_DEVICE.to_vec();
    // The historic variable name still works.
    env.push(("TOWER_SILENCE_MP3_PATH", wav.to_str().expect("utf8")));
    let tower = Tower::start(&[], &env);
    let l = Listener::connect(tower.addr);
    assert!(l.wait_tone(1000.0, Duration::from_secs(10)), "the WAV is not playing");
    assert_eq!(tower.status()["input"]["fallback_source"], "wav");
}

#[test]
fn out_of_file_descriptors_new_connections_are_shed_and_tower_answers_again_once_they_are_free() {
    let limit = 40;
    let tower = Tower::start_with_fd_limit(&[], NO_DEVICE, limit);
    assert_eq!(tower.get("/status").status, 200);
    let early = Listener::connect(tower.addr);
    assert!(early.wait_frames(5, Duration::from_secs(10)));
    // Idle connections (no request) until descriptors run out.
    let mut idle = Vec::new();
    let exhausted = wait_for(Duration::from_secs(10), || {
        if let Ok(c) = TcpStream::connect(tower.addr) {
            idle.push(c);
        }
        tower.log_text().contains("out of file descriptors")
    });
    assert!(
        exhausted,
        "descriptors never ran out; is the limit too high?\n{}",
        tower.log_text()
    );
    drop(idle);
    let answered = wait_for(Duration::from_secs(5), || http_get(tower.addr, "/status").status == 200);
    assert!(answered, "not reachable again\n{}", tower.log_text());
    let s = tower.status();
    assert!(s["http"]["shed_no_descriptors"].as_u64().expect("n") >= 1, "{s}");
    // The listener connected before kept streaming throughout.
    assert!(early.ended().is_none(), "the listener was cut");
    assert!(early.wait_frames(5, Duration::from_secs(5)));
    // The listener limit was fitted to the descriptor limit, and said so.
    assert!(tower.log_text().contains(&format!(
        "the open-file limit ({limit}) cannot hold http.max_listeners = 500: the listener limit is 1 "
    )));
}

#[test]
fn under_a_hard_open_file_limit_of_4096_the_benchs_settings_keep_their_listeners() {
    // What scripts/bench.sh asks of Tower for 2 000 listeners. With the
    // old sharing (limit - others - 64, at least 1) this served 1.
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_HTTP_MAX_LISTENERS", "2100"),
        ("TOWER_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "10000"),
        ("TOWER_HTTP_MAX_LISTENERS_PER_ADDRESS", "10000"),
        ("TOWER_HTTP_MAX_OTHER_CONNECTIONS", "10000"),
    ]);
    let tower = Tower::start_wrapped(&["prlimit", "--nofile=4096:4096", "--"], &[], &env);
    let log = tower.log_text();
    assert!(
        log.contains("cannot hold http.max_other_connections = 10000 beside 2100 listeners: using 1932"),
        "{log}"
    );
    assert_eq!(tower.status()["listeners"]["max"], 2100);
    let mut listeners = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(tower.addr).expect("connect");
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("request");
        listeners.push(s);
    }
    for s in &mut listeners {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200", "a listener was refused");
    }
    let held = wait_for(Duration::from_secs(10), || {
        tower.status()["listeners"]["current"].as_u64() == Some(300)
    });
    assert!(held, "{}", tower.status()["listeners"]);
}

#[test]
fn without_the_right_to_real_time_priority_the_pump_warns_once_and_streams() {
    let tower = Tower::start_unprivileged(&[], NO_DEVICE);
    let l = Listener::connect(tower.addr);
    assert!(
        l.wait_tone(440.0, Duration::from_secs(10)),
        "no audio when unprivileged"
    );
    let s = tower.status();
    assert_eq!(s["pump"]["sched_fifo"], false, "{s}");
    let log = tower.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("pump runs without full real-time guarantees"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert!(
        log.contains("SCHED_FIFO priority 50"),
        "the warning names what was refused: {log}"
    );
}

#[test]
fn idle_and_trickling_connections_are_closed_and_listeners_keep_coming_in() {
    // What sends no complete request within the header timeout is closed.
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_HTTP_HEADER_TIMEOUT_MS", "1500"),
        ("TOWER_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "1000"),
        ("TOWER_HTTP_MAX_OTHER_CONNECTIONS", "1000"),
    ]);
    let tower = Tower::start(&[], &env);
    let mut idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(tower.addr).expect("connect"))
        .collect();
    // Some send a request one byte at a time, never finishing it.
    for s in idle.iter_mut().take(50) {
        s.write_all(b"GET /sta").expect("trickle");
    }
    // A real listener gets in and hears audio meanwhile.
    let l = Listener::connect(tower.addr);
    assert!(l.wait_frames(20, Duration::from_secs(5)), "a listener could not get in");
    // All of them are closed within the timeout plus the guard's second.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("an idle connection got data"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "not closed: {e}"),
        }
    }
    let s = tower.status();
    assert!(
        s["http"]["cut_header_timeout"].as_u64().expect("n") >= 150,
        "{}",
        s["http"]
    );
    assert!(l.ended().is_none(), "the listener was cut");
    assert!(l.wait_frames(20, Duration::from_secs(5)));
}

/// `GET path` from the local address `src` (another loopback address is
/// another host to Tower); the body, or `None` if the request failed.
fn get_from(src: [u8; 4], addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok()?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(src[0], src[1], src[2], src[3], 0)).ok()?;
    let std::net::SocketAddr::V4(v4) = addr else {
        return None;
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).ok()?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[test]
fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "5"),
        ("TOWER_HTTP_HEADER_TIMEOUT_MS", "2000"),
    ]);
    let tower = Tower::start(&[], &env);
    let status = || -> serde_json::Value {
        get_from([127, 0, 0, 2], tower.addr, "/status")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    };
    // 20 idle connections from 127.0.0.1: all but the newest five are cut
    // at once.
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(tower.addr).expect("connect"))
        .collect();
    // Another address is answered at once.
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || status()["http"]["cut_per_address"].as_u64()
            >= Some(15)),
        "{}",
        status()["http"]
    );
    eprintln!(
        "another address answered {:?} after 20 idle connections",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Listeners from the busy address are not counted against its share.
    let listeners: Vec<Listener> = (0..8).map(|_| Listener::connect(tower.addr)).collect();
    for l in &listeners {
        assert!(l.wait_frames(10, Duration::from_secs(8)), "a listener was cut");
    }
    drop(idle);
}
