//! What is playing: a title set with `POST /api/title` (or by a producer
//! through the title socket) reaches a real ICY client (GStreamer's
//! `souphttpsrc iradio-mode=true ! icydemux`) within one metadata
//! interval, `/status`, the history, and a real Icecast server (Debian's
//! icecast2, in its `status-json.xsl`), again after Icecast restarts. It is
//! never saved. Prints the figure "title POST → ICY client".

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::icecast::{Icecast, test_config};
use common::settings::{IcyListener, PASSWORD, api};
use common::{Tower, wait_for};

/// Tower on the fallback tone with an admin password and `extra` TOML.
fn tower_with(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Tower {
    let conf = dir.join("tower.toml");
    std::fs::write(&conf, format!("{extra}\n[admin]\npassword = \"{PASSWORD}\"\n")).expect("config");
    let mut all = vec![
        ("TOWER_DEVICE", "tower_test_no_such_device"),
        ("TOWER_PCM_GRACE_SEC", "0.2"),
    ];
    all.extend_from_slice(env);
    Tower::start(&["--config", conf.to_str().expect("utf8")], &all)
}

/// `gst-launch-1.0 -m souphttpsrc iradio-mode=true ! icydemux ! fakesink`:
/// a real ICY client; every title tag it reports, with when it came.
struct GstIcy {
    child: Child,
    titles: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl GstIcy {
    fn start(url: &str) -> GstIcy {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "gst-launch-1.0", "-m", "souphttpsrc"])
            .arg(format!("location={url}"))
            .args(["iradio-mode=true", "!", "icydemux", "!", "fakesink", "sync=false"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-good)");
        let out = child.stdout.take().expect("stdout");
        let titles = Arc::new(Mutex::new(Vec::new()));
        let t = titles.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // …taglist=(taglist)"taglist\,\ title\=\(string\)\"Side\\\ B\"\;";
                if let Some(title) = line.split("(taglist)\"").nth(1).and_then(|t| title_in(&unescape(t))) {
                    t.lock().expect("titles").push((Instant::now(), title));
                }
            }
        });
        GstIcy { child, titles }
    }

    fn saw(&self, title: &str) -> Option<Instant> {
        let t = self.titles.lock().expect("titles");
        t.iter().find(|(_, s)| s.contains(title)).map(|(at, _)| *at)
    }

    fn all(&self) -> Vec<String> {
        self.titles
            .lock()
            .expect("titles")
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }
}

/// GStreamer's serialized string with one level of escapes undone
/// (`\x` is `x`, `\303` a byte in octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match octal {
                Some(d) => {
                    out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                    i += 4;
                }
                None => {
                    out.push(b[i + 1]);
                    i += 2;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The title in a tag list (`taglist, title=(string)"Side\ B";`).
fn title_in(taglist: &str) -> Option<String> {
    let rest = taglist.split("title=(string)").nth(1)?;
    match rest.strip_prefix('"') {
        Some(quoted) => {
            let mut end = 0;
            let b = quoted.as_bytes();
            while end < b.len() && b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            Some(unescape(&quoted[..end.min(b.len())]))
        }
        None => Some(rest.split([',', ';']).next()?.to_string()),
    }
}

impl Drop for GstIcy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_posted_title_reaches_a_real_icy_client_within_one_metadata_interval_and_is_not_saved() {
    let dir = tempfile::tempdir().expect("tmp");
    let tower = tower_with(dir.path(), "[station]\ntitle = \"Warming up\"\n", &[]);
    // The admin thread replaces the plain password by its hash as it
    // starts: that save is not the title's.
    assert!(
        wait_for(Duration::from_secs(10), || tower
            .log_text()
            .contains("replaced by its hash")),
        "{}",
        tower.log_text()
    );
    let before = std::fs::read_to_string(dir.path().join("tower.toml")).expect("config");
    let gst = GstIcy::start(&format!("http://{}/stream.mp3", tower.addr));
    assert!(
        wait_for(Duration::from_secs(15), || gst.saw("Warming up").is_some()),
        "GStreamer saw no title: {:?}",
        gst.all()
    );
    // One metadata interval: 16000 bytes at 128 kbit/s is 1 s.
    let interval = Duration::from_secs(1);
    let mut worst = Duration::ZERO;
    for (i, title) in ["Side B", "Björk – Jóga", "Don't stop; go on"].iter().enumerate() {
        // Not in step with the blocks (each title is seen at a block).
        std::thread::sleep(Duration::from_millis(150 + 300 * i as u64));
        let posted = Instant::now();
        let (status, body) = api(
            tower.addr,
            "POST",
            "/api/title",
            &serde_json::json!({ "title": title }).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let shown = body["title"].as_str().expect("title").to_string();
        assert!(
            wait_for(Duration::from_secs(5), || gst.saw(&shown).is_some()),
            "GStreamer did not see {shown:?}: {:?}",
            gst.all()
        );
        let took = gst.saw(&shown).expect("seen").saturating_duration_since(posted);
        println!(
            "figure: title POST → GStreamer icydemux tag, title {i}: {} ms",
            took.as_millis()
        );
        worst = worst.max(took);
    }
    assert!(
        worst <= interval + Duration::from_millis(250),
        "a title took {worst:?}, more than one metadata interval"
    );
    assert!(gst.saw("Don’t stop, go on").is_some(), "{:?}", gst.all());
    let status = tower.status();
    assert_eq!(status["station"]["title"], "Don’t stop, go on");
    let history = status["settings_history"].to_string();
    assert!(
        history.contains("\"key\":\"title\"") && history.contains("Side B"),
        "{history}"
    );
    assert!(tower.log_text().contains("now playing, set by 127.0.0.1"));
    // Not configuration: the file is as it was.
    let after = std::fs::read_to_string(dir.path().join("tower.toml")).expect("config");
    assert_eq!(before, after);
    // Changing the station's other texts keeps what is playing; changing
    // the title at start sets it.
    let (status, body) = api(tower.addr, "POST", "/api/settings", r#"{"station.genre": "Jazz"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(tower.status()["station"]["title"], "Don’t stop, go on");
    assert_eq!(tower.status()["station"]["genre"], "Jazz");
    let (status, body) = api(
        tower.addr,
        "POST",
        "/api/settings",
        r#"{"station.title": "Warm up again"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(tower.status()["station"]["title"], "Warm up again");
    let (status, _) = api(tower.addr, "POST", "/api/title", r#"{"title": "Don't stop; go on"}"#);
    assert_eq!(status, 200);
    // Without the password: refused, and nothing changes.
    let r = common::settings::request_from(None, tower.addr, "POST", "/api/title", &[], r#"{"title":"x"}"#);
    assert_eq!(r.status, 401);
    assert_eq!(tower.status()["station"]["title"], "Don’t stop, go on");
}

#[test]
fn a_producer_sets_the_title_through_the_title_socket_beside_its_pcm_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let pcm = dir.path().join("pcm.sock");
    let tower = tower_with(
        dir.path(),
        &format!("input = \"unix:{}\"\n[socket]\ngroup = \"\"\n", pcm.display()),
        &[],
    );
    let title_socket = dir.path().join("pcm.sock.title");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&title_socket).expect("title socket").permissions());
    assert_eq!(mode & 0o777, 0o660, "the title socket has the PCM socket's mode");
    let icy = IcyListener::connect(tower.addr);
    let mut w = UnixStream::connect(&title_socket).expect("connect");
    w.write_all("Track 1\n".as_bytes()).expect("write");
    assert!(
        wait_for(Duration::from_secs(5), || icy.saw("Track 1").is_some()),
        "{:?}",
        icy.titles()
    );
    // A second line on the same connection, then one from a writer that
    // connects just for it.
    w.write_all(b"Track 2\n").expect("write");
    assert!(
        wait_for(Duration::from_secs(5), || icy.saw("Track 2").is_some()),
        "{:?}",
        icy.titles()
    );
    let mut once = UnixStream::connect(&title_socket).expect("connect");
    once.write_all(b"Track 3").expect("write");
    drop(once);
    assert!(
        wait_for(Duration::from_secs(5), || icy.saw("Track 3").is_some()),
        "{:?}",
        icy.titles()
    );
    let history = tower.status()["settings_history"].to_string();
    assert!(history.contains("title socket (pid"), "{history}");
    drop(tower);
    assert!(!title_socket.exists(), "the title socket is removed at stop");
}

#[test]
fn each_icecast_server_gets_the_title_and_again_after_it_restarts() {
    let mut ice = Icecast::start(Box::new(test_config));
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("http://127.0.0.1:{}/tower", ice.port);
    let tower = tower_with(
        dir.path(),
        &format!(
            "[[icecast]]\nurl = \"{url}\"\npassword = \"{}\"\n",
            common::icecast::PASSWORD
        ),
        &[],
    );
    let ice_title = |ice: &Icecast| -> Option<String> {
        let r = common::http_get(ice.addr(), "/status-json.xsl");
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        let source = &v["icestats"]["source"];
        let source = if source.is_array() { &source[0] } else { source };
        source["title"].as_str().map(str::to_string)
    };
    assert!(
        wait_for(Duration::from_secs(15), || ice_title(&ice).as_deref() == Some("Live")),
        "Icecast has no title: {:?}\n{}",
        ice_title(&ice),
        tower.log_text()
    );
    let posted = Instant::now();
    let (status, _) = api(tower.addr, "POST", "/api/title", r#"{"title": "Gäste; live"}"#);
    assert_eq!(status, 200);
    assert!(
        wait_for(Duration::from_secs(5), || ice_title(&ice).as_deref()
            == Some("Gäste, live")),
        "Icecast shows {:?}",
        ice_title(&ice)
    );
    println!(
        "figure: title POST → icecast2 status-json.xsl: {} ms",
        posted.elapsed().as_millis()
    );
    // A new source connection starts without a title: Tower sends it again.
    ice.kill();
    ice.spawn();
    assert!(
        wait_for(Duration::from_secs(20), || ice_title(&ice).as_deref()
            == Some("Gäste, live")),
        "after a restart Icecast shows {:?}; Tower: {} {}",
        ice_title(&ice),
        tower.status()["outputs"],
        tower.status()["icecast_titles"]
    );
    let titles = &tower.status()["icecast_titles"];
    assert!(titles["updates"].as_u64() >= Some(3), "{titles}");
}
