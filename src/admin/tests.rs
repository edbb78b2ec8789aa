//! The desk without sockets: requests built by hand, a control that
//! records what the stages were handed, a store in memory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::config::store::SaveError;
use crate::config::{Overrides, load_text};

#[derive(Clone, Default)]
struct Fake {
    /// The changed keys of every change applied.
    applied: Arc<Mutex<Vec<Vec<String>>>>,
    peak: Arc<Mutex<f64>>,
    restarts: Arc<Mutex<u32>>,
}

impl Control for Fake {
    type Prepared = Vec<String>;

    fn prepare(&self, proposal: &Proposal) -> Result<Vec<String>, FieldErrors> {
        Ok(proposal.changed.clone())
    }

    fn apply(&self, prepared: Vec<String>) -> BTreeMap<String, String> {
        self.applied.lock().expect("lock").push(prepared);
        BTreeMap::new()
    }

    fn restart(&self) {
        *self.restarts.lock().expect("lock") += 1;
    }

    fn set_title(&self, _who: &str, title: &str) -> String {
        crate::broadcast::clean_title(title)
    }

    fn speakers(&self) -> Option<&crate::speakers::SpeakersDesk> {
        None
    }

    fn listeners(&self) -> Json {
        json!([])
    }

    fn peak_dbfs(&self) -> f64 {
        *self.peak.lock().expect("lock")
    }

    fn gain(&self) -> Result<Gain, String> {
        Ok(Gain {
            db: 0.0,
            min_db: -60.0,
            max_db: 40.0,
            hardware: false,
        })
    }

    fn inputs(&self) -> Json {
        json!({ "cards": [] })
    }
}

#[derive(Clone, Default)]
struct Memory {
    saved: Arc<Mutex<Vec<String>>>,
    /// `wifi.txt` files saved (see `wifi_tests`).
    wifi: Arc<Mutex<Vec<String>>>,
    full: Arc<AtomicBool>,
}

impl Store for Memory {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn save(&mut self, _: &str, text: &str) -> Result<(), SaveError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(SaveError::Write {
                path: "tower.toml".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.saved.lock().expect("lock").push(text.to_string());
        Ok(())
    }

    fn save_wifi(&mut self, text: &str) -> Result<(), SaveError> {
        self.wifi.lock().expect("lock").push(text.to_string());
        Ok(())
    }
}

struct Rig {
    admin: Admin<Fake>,
    fake: Fake,
    store: Memory,
}

fn rig(file: &str) -> Rig {
    let loaded = load_text(
        Some((Path::new("/etc/tower/tower.toml"), file)),
        &[],
        &Overrides::default(),
    )
    .expect("valid");
    let fake = Fake::default();
    let store = Memory::default();
    let mut admin = Admin::new(
        fake.clone(),
        loaded,
        Box::new(store.clone()),
        None,
        Arc::new(ChangeLog::default()),
        Arc::new(AdminCounters::default()),
    );
    admin.settle();
    Rig { admin, fake, store }
}

fn peer(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 1, last], 50000))
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        minor_version: 1,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// Status, headers and JSON body of a response.
fn parts(r: Response) -> (u16, String, Json) {
    let bytes = r.into_bytes(false);
    let text = String::from_utf8(bytes).expect("utf8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let status = head[9..12].parse().expect("status");
    (
        status,
        head.to_string(),
        serde_json::from_str(body).unwrap_or(Json::Null),
    )
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        crate::broadcast::icecast::base64(format!("{user}:{pass}").as_bytes())
    )
}

const HASHED: &str = "# my notes\n[station]\nname = \"Kitchen\"\n";

/// A rig whose password is "correct horse".
fn with_password() -> Rig {
    let mut r = rig(HASHED);
    let (status, _, _) = parts(r.admin.answer(
        &request("POST", "/api/claim", &[], r#"{"password": "correct horse"}"#),
        peer(2),
        Instant::now(),
    ));
    assert_eq!(status, 200);
    r
}

#[test]
fn the_first_visitor_claims_the_password_and_only_once() {
    let mut r = rig(HASHED);
    let now = Instant::now();
    let (_, _, s) = parts(r.admin.answer(&request("GET", "/api/session", &[], ""), peer(2), now));
    assert_eq!(s, json!({ "password_set": false, "logged_in": false }));
    let (status, _, body) = parts(r.admin.answer(&request("GET", "/api/settings", &[], ""), peer(2), now));
    assert_eq!(status, 401);
    assert!(body["error"].as_str().expect("error").contains("/settings"), "{body}");
    let short = request("POST", "/api/claim", &[], r#"{"password": "short"}"#);
    assert_eq!(parts(r.admin.answer(&short, peer(2), now)).0, 400);
    let claim = request("POST", "/api/claim", &[], r#"{"password": "correct horse"}"#);
    let (status, head, _) = parts(r.admin.answer(&claim, peer(2), now));
    assert_eq!(status, 200);
    assert!(
        head.contains("Set-Cookie: tower_session=") && head.contains("HttpOnly"),
        "{head}"
    );
    let saved = r.store.saved.lock().expect("lock").last().cloned().expect("saved");
    assert!(
        saved.starts_with("# my notes\n") && saved.contains("password_hash = \"$argon2id$"),
        "{saved}"
    );
    assert!(!saved.contains("correct horse"));
    let again = request("POST", "/api/claim", &[], r#"{"password": "someone else"}"#);
    assert_eq!(parts(r.admin.answer(&again, peer(3), now)).0, 409);
}

#[test]
fn a_plain_password_in_the_file_is_replaced_by_its_hash_at_start() {
    let r = rig("[admin]\n# the owner wrote this\npassword = \"hunter2hunter2\"\n");
    let saved = r.store.saved.lock().expect("lock").last().cloned().expect("saved");
    assert!(!saved.contains("hunter2hunter2"), "{saved}");
    assert!(saved.contains("# the owner wrote this"), "{saved}");
    assert!(saved.contains("password_hash = \"$argon2id$"), "{saved}");
    let mut r = r;
    let ok = request(
        "GET",
        "/api/settings",
        &[("Authorization", &basic("admin", "hunter2hunter2"))],
        "",
    );
    assert_eq!(parts(r.admin.answer(&ok, peer(4), Instant::now())).0, 200);
}

#[test]
fn scripts_use_basic_auth_and_browsers_a_session_cookie() {
    let mut r = with_password();
    let now = Instant::now();
    let none = request("GET", "/api/settings", &[], "");
    let (status, head, _) = parts(r.admin.answer(&none, peer(5), now));
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    let page = request("GET", "/api/settings", &[("X-Tower-Page", "1")], "");
    let (status, head, _) = parts(r.admin.answer(&page, peer(5), now));
    assert_eq!(status, 401);
    assert!(
        !head.contains("WWW-Authenticate"),
        "the page asks in its own form: {head}"
    );
    let wrong_user = request(
        "GET",
        "/api/settings",
        &[("Authorization", &basic("root", "correct horse"))],
        "",
    );
    assert_eq!(parts(r.admin.answer(&wrong_user, peer(5), now)).0, 401);
    let script = request(
        "GET",
        "/api/settings",
        &[("Authorization", &basic("admin", "correct horse"))],
        "",
    );
    assert_eq!(parts(r.admin.answer(&script, peer(5), now)).0, 200);

    let login = request("POST", "/api/login", &[], r#"{"password": "correct horse"}"#);
    let (status, head, _) = parts(r.admin.answer(&login, peer(6), now));
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_string();
    let browser = request("GET", "/api/settings", &[("Cookie", &cookie)], "");
    assert_eq!(parts(r.admin.answer(&browser, peer(6), now)).0, 200);
    let forged = request("GET", "/api/settings", &[("Cookie", "tower_session=00")], "");
    assert_eq!(parts(r.admin.answer(&forged, peer(6), now)).0, 401);
    let logout = request("POST", "/api/logout", &[("Cookie", &cookie)], "{}");
    let (_, head, _) = parts(r.admin.answer(&logout, peer(6), now));
    assert!(head.contains("Max-Age=0"), "{head}");
    assert_eq!(parts(r.admin.answer(&browser, peer(6), now)).0, 401);

    // A plain form (no script) is sent back to the page.
    let form = request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "password=correct+horse",
    );
    let (status, head, _) = parts(r.admin.answer(&form, peer(6), now));
    assert_eq!(status, 303);
    assert!(head.contains("Location: /settings"), "{head}");
}

#[test]
fn wrong_passwords_are_throttled_before_any_hash() {
    let mut r = with_password();
    let t0 = Instant::now();
    let wrong = request("POST", "/api/login", &[], r#"{"password": "wrong password"}"#);
    // A second apart, so the shared bucket of hashes is not what stops them.
    for i in 0..=throttle::FREE_TRIES {
        let at = t0 + Duration::from_secs(u64::from(i));
        assert_eq!(parts(r.admin.answer(&wrong, peer(7), at)).0, 401);
    }
    let now = t0 + Duration::from_secs(u64::from(throttle::FREE_TRIES));
    let refused_before = r.admin.throttle.lock().expect("lock").refused;
    for _ in 0..100 {
        let (status, head, _) = parts(r.admin.answer(&wrong, peer(7), now));
        assert_eq!(status, 429);
        assert!(head.contains("Retry-After: 1"), "{head}");
    }
    // Each refused by the throttle, before any hash.
    assert_eq!(r.admin.throttle.lock().expect("lock").refused, refused_before + 100);
    let counted = r.admin.counters.snapshot();
    assert_eq!((counted.wrong_passwords, counted.attempts_throttled >= 100), (6, true));
    // Even the right password waits out the lockout from that address …
    let right = request("POST", "/api/login", &[], r#"{"password": "correct horse"}"#);
    assert_eq!(parts(r.admin.answer(&right, peer(7), now)).0, 429);
    // … but not from another, and not after the lockout.
    assert_eq!(
        parts(r.admin.answer(&right, peer(8), now + Duration::from_secs(2))).0,
        200
    );
    assert_eq!(
        parts(r.admin.answer(&right, peer(7), now + Duration::from_secs(2))).0,
        200
    );
}

#[test]
fn a_change_is_checked_saved_applied_and_recorded_and_a_bad_one_changes_nothing() {
    let mut r = with_password();
    let now = Instant::now();
    let auth = basic("admin", "correct horse");
    let saves = r.store.saved.lock().expect("lock").len();
    let bad = request(
        "POST",
        "/api/settings",
        &[("Authorization", &auth)],
        r#"{"capture.level": "loud", "station.name": "Garden", "http.burst_ms": 99999}"#,
    );
    let (status, _, body) = parts(r.admin.answer(&bad, peer(9), now));
    assert_eq!(status, 400);
    let errors = body["errors"].as_object().expect("errors");
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["capture.level", "http.burst_ms"]);
    assert_eq!(r.store.saved.lock().expect("lock").len(), saves, "nothing saved");
    assert!(r.fake.applied.lock().expect("lock").is_empty(), "nothing applied");

    let good = request(
        "POST",
        "/api/settings",
        &[("Authorization", &auth)],
        r#"{"capture.level": "-6dB", "station.name": "Garden", "listen": "0.0.0.0:8001"}"#,
    );
    let (status, _, body) = parts(r.admin.answer(&good, peer(9), now));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], json!(["capture.level", "station.name"]));
    assert_eq!(body["restart_needed"], json!(["listen"]));
    let saved = r.store.saved.lock().expect("lock").last().cloned().expect("saved");
    assert!(saved.contains("# my notes\n[station]\nname = \"Garden\""), "{saved}");
    assert_eq!(
        r.fake.applied.lock().expect("lock").last().cloned(),
        Some(vec![
            "capture.level".to_string(),
            "listen".to_string(),
            "station.name".to_string()
        ])
    );
    let history = r.admin.history.list();
    let keys: Vec<&str> = history.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.ends_with(&["capture.level", "listen", "station.name"]), "{keys:?}");
    assert_eq!(
        history.last().map(|c| (c.old.as_str(), c.new.as_str())),
        Some(("\"Kitchen\"", "\"Garden\""))
    );

    // A form does the same.
    let form = request(
        "POST",
        "/api/settings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "http.burst_ms=400",
    );
    let (status, _, body) = parts(r.admin.answer(&form, peer(9), now));
    assert_eq!((status, body["applied"].clone()), (200, json!(["http.burst_ms"])));

    // Malformed bodies are refused by name.
    for (body, why) in [("[1]", "JSON object"), ("{", "not JSON"), ("{}", "nothing to change")] {
        let rq = request("POST", "/api/settings", &[("Authorization", &auth)], body);
        let (status, _, answer) = parts(r.admin.answer(&rq, peer(9), now));
        assert_eq!(status, 400);
        assert!(answer["error"].as_str().expect("error").contains(why), "{answer}");
    }
}

#[test]
fn a_save_that_fails_changes_nothing_and_says_why() {
    let mut r = with_password();
    r.store.full.store(true, Ordering::SeqCst);
    let rq = request(
        "POST",
        "/api/settings",
        &[("Authorization", &basic("admin", "correct horse"))],
        r#"{"station.name": "Garden"}"#,
    );
    let (status, _, body) = parts(r.admin.answer(&rq, peer(9), Instant::now()));
    assert_eq!(status, 500);
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("nothing was changed") && error.contains("No space left"),
        "{error}"
    );
    assert!(r.fake.applied.lock().expect("lock").is_empty());
    assert_eq!(r.admin.loaded.config.station.name, "Kitchen");
}

#[test]
fn the_settings_view_never_shows_a_secret() {
    let mut r = rig(
        "[admin]\npassword = \"hunter2hunter2\"\n[[icecast]]\nurl = \"http://a:8000/live\"\npassword = \"s3cret-source\"\n",
    );
    let rq = request(
        "GET",
        "/api/settings",
        &[("Authorization", &basic("admin", "hunter2hunter2"))],
        "",
    );
    let (status, _, view) = parts(r.admin.answer(&rq, peer(4), Instant::now()));
    assert_eq!(status, 200);
    let text = view.to_string();
    assert!(
        !text.contains("s3cret-source") && !text.contains("hunter2") && !text.contains("argon2"),
        "{text}"
    );
    assert_eq!(view["values"]["icecast"][0]["url"], "http://a:8000/live");
    assert_eq!(view["values"]["icecast"][0]["password"], "");
}

#[test]
fn calibration_sets_the_level_through_the_change_path() {
    let mut r = with_password();
    let auth = basic("admin", "correct horse");
    let t0 = Instant::now();
    let start = request("POST", "/api/calibrate", &[("Authorization", &auth)], "{}");
    let (status, _, report) = parts(r.admin.answer(&start, peer(9), t0));
    assert_eq!((status, report["state"].as_str()), (202, Some("listening")));
    *r.fake.peak.lock().expect("lock") = -26.0;
    let mut t = t0;
    while t < t0 + calibrate::LISTEN + Duration::from_millis(200) {
        r.admin.calibrate_step(t);
        t += Duration::from_millis(100);
    }
    assert_eq!(r.admin.loaded.config.capture.level, "20.0dB");
    assert_eq!(
        r.admin.history.list().last().map(|c| c.who.clone()),
        Some("calibrate".into())
    );
    *r.fake.peak.lock().expect("lock") = -6.2;
    while t < t0 + calibrate::LISTEN + calibrate::VERIFY + Duration::from_millis(400) {
        r.admin.calibrate_step(t);
        t += Duration::from_millis(100);
    }
    let report = r.admin.calibration.report();
    assert_eq!(report.state, "done");
    assert_eq!(
        (report.peak_before_dbfs, report.peak_after_dbfs),
        (Some(-26.0), Some(-6.2))
    );
}

#[test]
fn a_restart_is_asked_of_the_service() {
    let mut r = with_password();
    let rq = request(
        "POST",
        "/api/restart",
        &[("Authorization", &basic("admin", "correct horse"))],
        "{}",
    );
    assert_eq!(parts(r.admin.answer(&rq, peer(9), Instant::now())).0, 202);
    assert_eq!(*r.fake.restarts.lock().expect("lock"), 1);
    let get = request(
        "GET",
        "/api/restart",
        &[("Authorization", &basic("admin", "correct horse"))],
        "",
    );
    assert_eq!(parts(r.admin.answer(&get, peer(9), Instant::now())).0, 405);
}

#[test]
fn basic_credentials_are_decoded() {
    assert_eq!(
        basic_credentials("Basic YWRtaW46cGE6c3M="),
        Some(("admin".into(), "pa:ss".into()))
    );
    assert_eq!(basic_credentials("Bearer x"), None);
    assert_eq!(basic_credentials("Basic !!!"), None);
    assert_eq!(basic_credentials("Basic YWRtaW4="), None, "no colon");
}

#[path = "wifi_tests.rs"]
mod wifi;
