//! The owner's page over HTTP, with the real binary: changes reach the
//! stage that owns them while listeners stay connected, are saved with the
//! owner's comments, and survive a restart; hostile requests change
//! nothing. Figures are printed (`cargo test --test settings --
//! --nocapture --test-threads=1`). Clauses: [H3], [H6], [T4].

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::audio::{dbfs, decode_frames, mono};
use common::faults::{bitrate, bitrate_switch, is_silence};
use common::settings::{HAND_COMMENT, IcyListener, PASSWORD, Station, api, basic, request_from, station, station_in};
use common::{Listener, Tower, http_get, wait_for};

fn status(s: &Station) -> serde_json::Value {
    s.tower.status()
}

/// The RMS level (dBFS) of the audio in `frames`, decoded, without the
/// decoder's first frame.
fn level(frames: &[common::Arrival]) -> f64 {
    let refs: Vec<&[u8]> = frames.iter().map(|a| &a.frame[..]).collect();
    let d = decode_frames(&refs);
    let samples: Vec<f32> = d.frames.iter().skip(1).flatten().copied().collect();
    dbfs(&mono(&samples, d.channels))
}

#[test]
fn changes_reach_listeners_on_their_connections_and_are_saved_with_the_owners_comment() {
    let s = station("");
    // Hashed by the admin thread as it starts.
    assert!(
        wait_for(Duration::from_secs(10), || s
            .tower
            .log_text()
            .contains("replaced by its hash")),
        "{}",
        s.tower.log_text()
    );
    let file = std::fs::read_to_string(&s.config).expect("config");
    assert!(
        !file.contains(PASSWORD),
        "the plain password was hashed at start:\n{file}"
    );
    assert!(
        file.contains("password_hash = \"$argon2id$") && file.contains(HAND_COMMENT),
        "{file}"
    );
    assert!(
        s.tower.log_text().contains("replaced by its hash") && !s.tower.log_text().contains(PASSWORD),
        "{}",
        s.tower.log_text()
    );

    let listener = Listener::connect(s.tower.addr);
    let icy = IcyListener::connect(s.tower.addr);
    assert!(listener.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    assert!(
        wait_for(Duration::from_secs(5), || icy.saw("Live").is_some()),
        "{:?}",
        icy.titles()
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = level(&listener.frames_since(Instant::now() - Duration::from_millis(400)));

    // The capture level: a software gain here (JACK has no mixer).
    let t0 = Instant::now();
    let (code, answer) = api(s.tower.addr, "POST", "/api/settings", r#"{"capture.level": "-12dB"}"#);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["applied"], serde_json::json!(["capture.level"]));
    let mut heard_at = None;
    assert!(
        wait_for(Duration::from_secs(5), || {
            let recent: Vec<common::Arrival> = listener.frames_since(t0);
            for (i, w) in recent.windows(4).enumerate() {
                if (level(w) - (before - 12.0)).abs() < 1.5 {
                    heard_at = Some(recent[i].at);
                    return true;
                }
            }
            false
        }),
        "the new level never reached /stream (before {before:.1} dBFS)"
    );
    let level_ms = heard_at.map(|at| at.saturating_duration_since(t0).as_millis());
    eprintln!(
        "figure: POST capture.level -12dB -> new level at /stream after {level_ms:?} ms (before {before:.1} dBFS)"
    );

    // The station's name and title.
    let t1 = Instant::now();
    let (code, answer) = api(
        s.tower.addr,
        "POST",
        "/api/settings",
        r#"{"station.name": "Kitchen Radio", "station.title": "Side B"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    let head = http_get(s.tower.addr, "/stream.m3u").body_text();
    assert!(head.contains("Kitchen Radio"), "{head}");
    let fresh = Listener::connect(s.tower.addr);
    assert!(wait_for(Duration::from_secs(5), || fresh
        .head()
        .contains("icy-name: Kitchen Radio")));
    let name_ms = t1.elapsed().as_millis();
    assert!(
        wait_for(Duration::from_secs(5), || icy.saw("Side B").is_some()),
        "{:?}",
        icy.titles()
    );
    let title_ms = icy.saw("Side B").map(|at| at.saturating_duration_since(t1).as_millis());
    eprintln!(
        "figure: POST station.name/title -> icy-name on a new connection within {name_ms} ms; StreamTitle at the connected ICY listener after {title_ms:?} ms (metaint 16000 bytes = 1 s)"
    );
    assert_eq!(status(&s)["station"]["name"], "Kitchen Radio");

    // Nobody was dropped, and the audio never stopped.
    assert!(listener.ended().is_none() && !icy.ended(), "a listener was dropped");
    let gap = listener.max_gap_since(t0);
    assert!(gap < Duration::from_millis(400), "gap {gap:?}");

    // Saved where Tower reads it, the owner's comment kept, the old file
    // as .bak, and the history on /status.
    let file = std::fs::read_to_string(&s.config).expect("config");
    assert!(file.starts_with(HAND_COMMENT), "{file}");
    assert!(
        file.contains("level = \"-12dB\"") && file.contains("name = \"Kitchen Radio\""),
        "{file}"
    );
    let bak = std::fs::read_to_string(s.config.with_file_name("tower.toml.bak")).expect("bak");
    assert!(bak.contains("level") || bak.contains("name = \"Tower\""), "{bak}");
    let history = status(&s)["settings_history"].clone();
    let keys: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert_eq!(keys, ["capture.level", "station.name", "station.title"], "{history}");
    assert!(
        s.tower
            .log_text()
            .contains("setting station.name changed by 127.0.0.1: \"Tower\" → \"Kitchen Radio\"")
    );
}

#[test]
fn switching_the_input_keeps_every_listener() {
    let s = station("");
    let listener = Listener::connect(s.tower.addr);
    assert!(listener.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    let t0 = Instant::now();
    let (code, answer) = api(s.tower.addr, "POST", "/api/settings", r#"{"device": "jackfile2"}"#);
    assert_eq!(code, 200, "{answer}");
    assert!(
        listener.wait_tone(2000.0, Duration::from_secs(10)),
        "the new input is not heard"
    );
    eprintln!(
        "figure: POST device -> the other input heard after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(listener.ended().is_none());
    assert_eq!(status(&s)["input"]["device"]["name"], "jackfile2");
    // A device that cannot be opened is taken (it may be plugged in
    // later) and retried; an input that cannot be used at all is refused.
    let (code, answer) = api(
        s.tower.addr,
        "POST",
        "/api/settings",
        r#"{"input": "unix:relative.sock"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        answer["errors"]["input"].as_str().expect("error").contains("unix:"),
        "{answer}"
    );
}

#[test]
fn a_new_bitrate_relaunches_the_encoder_and_keeps_the_listener() {
    let s = station("");
    let listener = Listener::connect(s.tower.addr);
    assert!(listener.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    let t0 = Instant::now();
    let (code, answer) = api(
        s.tower.addr,
        "POST",
        "/api/settings",
        r#"{"encoder.bitrate_kbps": 192}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["applied"],
        serde_json::json!(["encoder.bitrate_kbps"]),
        "{answer}"
    );
    assert_eq!(answer["restart_needed"], serde_json::json!([]), "{answer}");
    let real = |a: &common::Arrival| !is_silence(&a.frame);
    assert!(
        wait_for(Duration::from_secs(10), || listener
            .frames_since(t0)
            .iter()
            .filter(|a| real(a) && bitrate(&a.frame) == 192)
            .count()
            >= 40),
        "no 192 kbit/s audio"
    );
    let frames = listener.frames_since(t0 - Duration::from_secs(1));
    let (last_old, first_new) = bitrate_switch(&frames, 128, 192);
    // What the listener hears as silence: the frames Tower put in the gap,
    // and the new ffmpeg's first frames (of its silent preload) too.
    let window = &frames[last_old.saturating_sub(4)..(first_new + 60).min(frames.len())];
    let silent = common::frame_levels(window).iter().filter(|l| **l < -50.0).count();
    let silence = Duration::from_millis(24) * silent as u32;
    assert!(silence <= Duration::from_millis(500), "{silence:?} of silence");
    let tone = common::tone_of(&frames[(first_new + 20).min(frames.len())..], 1000.0);
    assert!(tone > 0.9, "tone ratio {tone} after the change");
    assert!(listener.ended().is_none(), "the listener was dropped");
    let encoder = &status(&s)["encoder"];
    assert!(
        encoder["command"].as_str().is_some_and(|c| c.contains("192k")),
        "{encoder}"
    );
    assert_eq!(encoder["restarts"], 0, "a relaunch is not a failure: {encoder}");
    assert!(
        std::fs::read_to_string(&s.config)
            .expect("config")
            .contains("bitrate_kbps = 192"),
        "saved"
    );
    eprintln!(
        "figure: POST encoder.bitrate_kbps 192 -> {silence:?} of silence on the listener's connection, 192 kbit/s audio {} ms after the POST",
        frames[first_new].at.saturating_duration_since(t0).as_millis()
    );
}

#[test]
fn requests_without_the_password_or_from_elsewhere_change_nothing() {
    let s = station("\n[[icecast]]\nurl = \"http://127.0.0.1:9/live\"\npassword = \"s3cret-source-pw\"\n");
    let addr = s.tower.addr;
    let file_before = std::fs::read_to_string(&s.config).expect("config");
    let change = r#"{"station.name": "Pwned"}"#;
    let json = ("Content-Type", "application/json");

    // No password.
    let r = request_from(None, addr, "POST", "/api/settings", &[json], change);
    assert_eq!(r.status, 401, "{}", r.body_text());
    // The password from another site's page: refused before it is checked.
    let auth = basic(PASSWORD);
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Referer", "http://evil.example/x"),
    ] {
        let r = request_from(
            None,
            addr,
            "POST",
            "/api/settings",
            &[json, ("Authorization", &auth), (name, value)],
            change,
        );
        assert_eq!(r.status, 403, "{name}: {value}");
    }
    // A browser session from another site's page too.
    let login = request_from(
        None,
        addr,
        "POST",
        "/api/login",
        &[json],
        &format!(r#"{{"password": "{PASSWORD}"}}"#),
    );
    let cookie = login.header("set-cookie").expect("cookie");
    let cookie = cookie.split(';').next().expect("cookie");
    let r = request_from(
        None,
        addr,
        "POST",
        "/api/settings",
        &[json, ("Cookie", cookie), ("Origin", "http://evil.example")],
        change,
    );
    assert_eq!(r.status, 403);
    let own = format!("http://{addr}");
    let r = request_from(
        None,
        addr,
        "POST",
        "/api/settings",
        &[json, ("Cookie", cookie), ("Origin", &own)],
        r#"{"station.genre": "Jazz"}"#,
    );
    assert_eq!(r.status, 200, "Tower's own page may: {}", r.body_text());

    // A name Tower does not answer to (DNS rebinding): refused, except
    // the stream, which is open to the network.
    let foreign = |path: &str| {
        common::http_raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: evil.example:8000\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(foreign("/status").status, 421);
    assert_eq!(foreign("/api/settings").status, 421);
    assert_eq!(foreign("/settings").status, 421);
    assert!(foreign("/status").body_text().contains("http.hosts"));
    let stream = common::http_raw(addr, "HEAD /stream HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("access-control-allow-origin"), None, "no CORS by default");

    // Bodies: too large, not JSON, chunked.
    let big = format!(r#"{{"station.name": "{}"}}"#, "x".repeat(20_000));
    assert_eq!(
        request_from(
            None,
            addr,
            "POST",
            "/api/settings",
            &[json, ("Authorization", &auth)],
            &big
        )
        .status,
        413
    );
    let r = request_from(
        None,
        addr,
        "POST",
        "/api/settings",
        &[json, ("Authorization", &auth)],
        "{\"station.name\": ",
    );
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("not JSON"), "{}", r.body_text());
    let chunked = common::http_raw(
        addr,
        &format!("POST /api/settings HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    );
    assert_eq!(chunked.status, 411);
    // A GET never changes anything, whatever it carries.
    let r = request_from(
        None,
        addr,
        "GET",
        "/api/settings?station.name=Pwned",
        &[json, ("Authorization", &auth)],
        change,
    );
    assert_eq!(r.status, 200);

    let st = status(&s);
    assert_eq!(st["station"]["name"], "Tower");
    assert_eq!(st["station"]["genre"], "Jazz");
    let file = std::fs::read_to_string(&s.config).expect("config");
    assert!(!file.contains("Pwned") && file.contains("Jazz"), "{file}");
    assert_ne!(file, file_before);

    // No secret in what Tower shows or logs.
    let (_, view) = api(addr, "GET", "/api/settings", "");
    for shown in [
        st.to_string(),
        view.to_string(),
        http_get(addr, "/metrics").body_text(),
        http_get(addr, "/settings").body_text(),
        http_get(addr, "/").body_text(),
        s.tower.log_text(),
    ] {
        for secret in ["s3cret-source-pw", PASSWORD, "$argon2id$"] {
            assert!(
                !shown.contains(secret),
                "{secret} shown: {}",
                &shown[..shown.len().min(300)]
            );
        }
    }
}

/// Time for the shared bucket of hashes to fill up (5 at one a second).
fn throttle_refill() -> Duration {
    Duration::from_secs(6)
}

#[test]
fn a_flood_of_wrong_passwords_is_throttled_and_the_audio_does_not_notice() {
    let s = station("");
    let addr = s.tower.addr;
    let listener = Listener::connect(addr);
    assert!(listener.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    // The pump's tick lateness histogram (cumulative buckets, by bound).
    let buckets = || -> Vec<(f64, f64)> {
        http_get(addr, "/metrics")
            .body_text()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("tower_pump_tick_lateness_seconds_bucket{le=\"")?;
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse().unwrap_or(f64::INFINITY), count.trim().parse().ok()?))
            })
            .collect()
    };
    // The bucket bound holding the 99th percentile of the ticks between
    // two readings.
    let p99_between = |a: &[(f64, f64)], b: &[(f64, f64)]| -> f64 {
        let total = b.last().map_or(0.0, |x| x.1) - a.last().map_or(0.0, |x| x.1);
        a.iter()
            .zip(b)
            .find(|((_, ca), (_, cb))| cb - ca >= 0.99 * total)
            .map_or(f64::INFINITY, |((le, _), _)| *le)
    };
    let wrong = basic("not the password");
    let attempt = |from: IpAddr| {
        request_from(
            Some(from),
            addr,
            "GET",
            "/api/settings",
            &[("Authorization", &wrong)],
            "",
        )
        .status
    };

    let before = buckets();
    let t0 = Instant::now();
    let one: Vec<u16> = (0..1000).map(|_| attempt(IpAddr::from([127, 0, 0, 2]))).collect();
    let one_s = t0.elapsed().as_secs_f64();
    // Let the shared bucket fill again, so the second flood meets it full.
    std::thread::sleep(throttle_refill());
    let t1 = Instant::now();
    let many: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20u8)
            .map(|i| {
                scope.spawn(move || {
                    (0..50)
                        .map(|_| attempt(IpAddr::from([127, 0, 1, 10 + i])))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("thread")).collect()
    });
    let many_s = t1.elapsed().as_secs_f64();
    let count = |v: &[u16], code| v.iter().filter(|c| **c == code).count();
    // 503: more waiting for the admin thread than its queue holds (also
    // refused without a hash).
    let refused = |v: &[u16]| count(v, 429) + count(v, 503);
    let gap = listener.max_gap_since(t0);
    let p99 = p99_between(&before, &buckets()) * 1e6;
    eprintln!(
        "figure: 1000 wrong passwords from one address in {one_s:.1} s: {} hashed (401), {} refused unhashed (429/503); \
         1000 from 20 addresses in {many_s:.1} s: {} hashed, {} refused; listener's largest gap {} ms; \
         pump tick lateness p99 during the floods ≤ {p99} µs (histogram bucket)",
        count(&one, 401),
        refused(&one),
        count(&many, 401),
        refused(&many),
        gap.as_millis()
    );
    assert_eq!(count(&one, 401) + refused(&one), 1000, "{one:?}");
    assert_eq!(count(&many, 401) + refused(&many), 1000, "{many:?}");
    // Five free tries, then lockouts of 1, 2, 4 … s; and at most about
    // one hash a second across all addresses.
    assert!(count(&one, 401) <= 6 + one_s as usize, "{}", count(&one, 401));
    assert!(count(&many, 401) <= 6 + many_s as usize, "{}", count(&many, 401));
    assert!(listener.ended().is_none());
    assert!(gap < Duration::from_millis(400), "gap {gap:?}");
    assert!(p99 <= 5_000.0, "pump p99 {p99} µs");
    // The right password works again from an address that did not flood,
    // once the shared bucket has a hash to spare (it says when).
    let t2 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || api(addr, "GET", "/api/settings", "").0
            == 200),
        "the owner is still locked out"
    );
    eprintln!(
        "figure: the owner's password accepted {} ms after the flood",
        t2.elapsed().as_millis()
    );
}

#[test]
fn two_browsers_saving_at_once_never_mix_the_file() {
    let s = station("");
    let addr = s.tower.addr;
    std::thread::scope(|scope| {
        for who in ["A", "B"] {
            let config = s.config.clone();
            scope.spawn(move || {
                for i in 0..15 {
                    let body = format!(r#"{{"station.name": "{who}{i}", "station.genre": "{who}{i}"}}"#);
                    let (code, answer) = api(addr, "POST", "/api/settings", &body);
                    assert_eq!(code, 200, "{answer}");
                    let text = std::fs::read_to_string(&config).expect("config");
                    let t: toml::Table = toml::from_str(&text).expect("the file is whole TOML at every moment");
                    let st = &t["station"];
                    assert_eq!(st["name"], st["genre"], "name and genre from different saves:\n{text}");
                }
            });
        }
    });
    let text = std::fs::read_to_string(&s.config).expect("config");
    let t: toml::Table = toml::from_str(&text).expect("toml");
    let name = t["station"]["name"].as_str().expect("name").to_string();
    assert!(name == "A14" || name == "B14", "the last write wins: {name}");
    assert_eq!(status(&s)["station"]["name"], name.as_str());
    assert!(text.starts_with(HAND_COMMENT));
}

#[test]
fn settings_survive_a_restart_and_a_hand_written_comment_stays() {
    let mut s = station("");
    let (code, answer) = api(
        s.tower.addr,
        "POST",
        "/api/settings",
        r#"{"station.name": "Garden", "capture.level": "-3dB", "pcm.buffer_size": 50}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["restart_needed"], serde_json::json!(["pcm.buffer_size"]));
    let (_, view) = api(s.tower.addr, "GET", "/api/settings", "");
    assert_eq!(view["restart_needed"], serde_json::json!(["pcm.buffer_size"]));
    let pid = s.tower.pid();
    let before = s.tower.listening().len();
    let (code, _) = api(s.tower.addr, "POST", "/api/restart", "{}");
    assert_eq!(code, 202);
    assert!(
        s.tower.wait_restarted(before, Duration::from_secs(15)),
        "{}",
        s.tower.log_text()
    );
    assert_eq!(s.tower.pid(), pid, "the same process, started again");
    let st = status(&s);
    assert_eq!(st["station"]["name"], "Garden");
    assert_eq!(st["pcm_buffer"]["capacity"], 50);
    assert_eq!(st["input"]["gain"]["configured"], "-3.0 dB");
    let (_, view) = api(s.tower.addr, "GET", "/api/settings", "");
    assert_eq!(view["restart_needed"], serde_json::json!([]));
    let file = std::fs::read_to_string(&s.config).expect("config");
    assert!(file.starts_with(HAND_COMMENT), "{file}");
}

#[test]
fn an_unusable_file_gives_way_to_its_backup_and_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("tower.toml");
    std::fs::write(&config, "[station]\nname = \"Half writ").expect("write");
    std::fs::write(
        dir.path().join("tower.toml.bak"),
        "device = \"tower_test_no_such_device\"\n[station]\nname = \"From the backup\"\n",
    )
    .expect("write");
    let tower = Tower::start(&["--config", config.to_str().expect("utf8")], &[]);
    let st = tower.status();
    assert_eq!(st["station"]["name"], "From the backup");
    let notice = st["config_notice"].as_str().expect("notice");
    assert!(
        notice.contains("tower.toml.bak") && notice.contains("not valid TOML"),
        "{notice}"
    );
    assert!(tower.log_text().contains("Tower started from the previous version"));
    // Without a backup, the file's own error stops Tower (exit 2).
    std::fs::remove_file(dir.path().join("tower.toml.bak")).expect("rm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tower"))
        .args(["--print-config", "--config", config.to_str().expect("utf8")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not valid TOML"), "{err}");
}

/// A small tmpfs mounted for one test, unmounted at the end.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(dir: &std::path::Path, size: &str) -> Mounted {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "cannot mount a tmpfs (the test needs root, as CI has)");
        Mounted(dir.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "remount {mode}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_save_on_a_full_or_read_only_file_system_changes_nothing() {
    let fs_dir = tempfile::tempdir().expect("tmp");
    let mount = Mounted::tmpfs(fs_dir.path(), "256k");
    let s = station_in(Some(fs_dir.path()), "");
    let addr = s.tower.addr;
    let intact = std::fs::read_to_string(&s.config).expect("config");

    // Full: fill what is left.
    let filler = fs_dir.path().join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let (code, answer) = api(addr, "POST", "/api/settings", r#"{"station.name": "Full"}"#);
    assert_eq!(code, 500, "{answer}");
    let error = answer["error"].as_str().expect("error");
    assert!(
        error.contains("nothing was changed") && error.contains("No space left"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&s.config).expect("config"), intact);
    assert_eq!(status(&s)["station"]["name"], "Tower", "not applied either");
    let stray: Vec<String> = std::fs::read_dir(fs_dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    std::fs::remove_file(&filler).expect("rm");

    // Read-only.
    mount.remount("ro");
    let (code, answer) = api(addr, "POST", "/api/settings", r#"{"station.name": "ReadOnly"}"#);
    assert_eq!(code, 500, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .expect("error")
            .contains("Read-only file system"),
        "{answer}"
    );
    assert_eq!(std::fs::read_to_string(&s.config).expect("config"), intact);
    assert_eq!(status(&s)["station"]["name"], "Tower");

    // Writable again: the same change goes through.
    mount.remount("rw");
    let (code, answer) = api(addr, "POST", "/api/settings", r#"{"station.name": "Writable"}"#);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(status(&s)["station"]["name"], "Writable");
    drop(s);
}

#[test]
fn other_names_and_web_pages_are_let_in_only_when_the_owner_lists_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("tower.toml");
    std::fs::write(
        &config,
        format!("device = \"tower_test_no_such_device\"\n[admin]\npassword = \"{PASSWORD}\"\n"),
    )
    .expect("write");
    let tower = Tower::start(&["--config", config.to_str().expect("utf8")], &[]);
    let addr = tower.addr;
    let as_host = |host: &str, path: &str| {
        common::http_raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .status
    };
    let from_page = |origin: &str| {
        common::http_raw(
            addr,
            &format!("HEAD /stream HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\r\n"),
        )
        .header("access-control-allow-origin")
    };
    assert_eq!(as_host("tower.lan:8000", "/status"), 421);
    assert_eq!(from_page("https://radio.example.org"), None);
    let (code, answer) = api(
        addr,
        "POST",
        "/api/settings",
        r#"{"http.hosts": ["tower.lan"], "http.cors_origins": ["https://radio.example.org"]}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(as_host("tower.lan:8000", "/status"), 200);
    assert_eq!(as_host("evil.example", "/status"), 421);
    assert_eq!(
        from_page("https://radio.example.org").as_deref(),
        Some("https://radio.example.org")
    );
    assert_eq!(from_page("https://evil.example"), None);
    let (code, answer) = api(addr, "POST", "/api/settings", r#"{"http.hosts": ["not a name"]}"#);
    assert_eq!(code, 400);
    assert!(
        answer["errors"]["http.hosts"]
            .as_str()
            .expect("error")
            .contains("host names"),
        "{answer}"
    );
}

#[test]
fn calibrate_brings_a_quiet_input_to_minus_6_dbfs() {
    let s = station("\n[capture]\nlevel = \"-20dB\"\n");
    let listener = Listener::connect(s.tower.addr);
    assert!(listener.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    // The test tone peaks at -6 dBFS; at -20 dB it peaks at -26 dBFS.
    let t0 = Instant::now();
    let (code, report) = api(s.tower.addr, "POST", "/api/calibrate", "{}");
    assert_eq!(code, 202, "{report}");
    let mut report = report;
    assert!(
        wait_for(Duration::from_secs(15), || {
            report = api(s.tower.addr, "GET", "/api/calibrate", "").1;
            report["state"] == "done" || report["state"] == "failed"
        }),
        "{report}"
    );
    eprintln!(
        "figure: calibrate on a 1 kHz tone at -26 dBFS peak (level -20 dB): {} in {:.1} s",
        report["message"],
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(report["state"], "done", "{report}");
    let before = report["peak_before_dbfs"].as_f64().expect("before");
    let after = report["peak_after_dbfs"].as_f64().expect("after");
    assert!((before - -26.0).abs() < 1.0, "{report}");
    assert!((after - -6.0).abs() < 1.0, "{report}");
    assert_eq!(report["reachable"], true);
    // Saved as any change, and said in the history as calibrate's.
    let file = std::fs::read_to_string(&s.config).expect("config");
    assert!(
        file.contains("level = \"0.0dB\"") || file.contains("level = \"-0.0dB\""),
        "{file}"
    );
    let history = status(&s)["settings_history"].to_string();
    assert!(history.contains("\"who\":\"calibrate\""), "{history}");
}
