//! The desk's Wi-Fi routes (`admin::wifi`), with the rig of `admin::tests`
//! and a manager's state file in a temporary directory.

use super::*;
use crate::wifi::{STATE_FILE, WifiWatch};

const PASS: &str = "correct horse";

fn call(r: &mut Rig, method: &str, path: &str, auth: bool, body: &str) -> (u16, Json) {
    let header = basic("admin", PASS);
    let headers: Vec<(&str, &str)> = if auth { vec![("Authorization", &header)] } else { vec![] };
    let (status, _, json) = parts(
        r.admin
            .answer(&request(method, path, &headers, body), peer(7), Instant::now()),
    );
    (status, json)
}

/// A rig with the password set, reading the manager's state from `dir`.
fn managed(dir: &Path) -> Rig {
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    let mut state = crate::wifi::tests::sample();
    state.country = Some("DE".into());
    std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&state).expect("json")).expect("write");
    let r = with_password();
    Rig {
        admin: r.admin.with_wifi(Some(Arc::new(WifiWatch::new(dir.to_path_buf())))),
        ..r
    }
}

#[test]
fn the_wifi_routes_need_the_password_and_exist_only_with_a_manager() {
    let mut r = with_password();
    assert_eq!(call(&mut r, "POST", "/api/wifi", false, r#"{"ssid": "Home"}"#).0, 401);
    let (status, body) = call(&mut r, "POST", "/api/wifi", true, r#"{"ssid": "Home"}"#);
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().expect("error").contains("only on the SD image"));
    let dir = tempfile::tempdir().expect("tmp");
    let mut r = managed(dir.path());
    assert_eq!(call(&mut r, "GET", "/api/wifi", false, "").0, 401);
    assert_eq!(call(&mut r, "GET", "/api/wifi/scan", true, "").0, 405);
}

#[test]
fn a_network_is_checked_by_the_wifi_txt_rules_and_saved_through_the_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut r = managed(dir.path());
    // A short password: the reason beside the field, nothing saved.
    let (status, body) = call(&mut r, "POST", "/api/wifi", true, r#"{"ssid": "Home", "psk": "short"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"]["psk"]
            .as_str()
            .expect("psk")
            .contains("5 characters long"),
        "{body}"
    );
    assert!(
        !body.to_string().contains("short\""),
        "the password is not echoed: {body}"
    );
    let (status, body) = call(&mut r, "POST", "/api/wifi", true, r#"{"psk": "long enough"}"#);
    assert_eq!((status, body["errors"]["ssid"].is_string()), (400, true), "{body}");
    // A line break would make another file: refused.
    let (status, _) = call(
        &mut r,
        "POST",
        "/api/wifi",
        true,
        "{\"ssid\": \"Home\\npsk=x\", \"psk\": \"\"}",
    );
    assert_eq!(status, 400);
    assert!(r.store.wifi.lock().expect("lock").is_empty());
    // A good one: saved as a plain wifi.txt, the country in force kept.
    let (status, body) = call(
        &mut r,
        "POST",
        "/api/wifi",
        true,
        r#"{"ssid": "Tower home", "psk": "correct horse battery"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hotspot_open"], json!(true));
    let saved = r.store.wifi.lock().expect("lock").clone();
    assert_eq!(saved.len(), 1);
    let back = crate::wifi::txt::parse(saved[0].as_bytes(), "wifi.txt").expect("reads back");
    assert_eq!(
        (back.ssid.as_str(), back.psk.as_deref(), back.country.as_deref()),
        ("Tower home", Some("correct horse battery"), Some("DE"))
    );
    // An open network: no psk line.
    let (status, _) = call(
        &mut r,
        "POST",
        "/api/wifi",
        true,
        r#"{"ssid": "Cafe", "psk": "", "country": "fr"}"#,
    );
    assert_eq!(status, 200);
    let last = r.store.wifi.lock().expect("lock").last().cloned().expect("saved");
    assert!(!last.contains("psk") && last.contains("country=\"FR\""), "{last}");
    // GET shows the manager's state; scan asks it for one.
    let (status, body) = call(&mut r, "GET", "/api/wifi", true, "");
    assert_eq!(status, 200);
    assert_eq!(body["state"]["hotspot"]["ssid"], json!("Tower-setup-0A1B"));
    assert_eq!(body["state"]["failure"]["code"], json!("wrong_password"));
    assert_eq!(call(&mut r, "POST", "/api/wifi/scan", true, "{}").0, 202);
    assert!(dir.path().join("in").join("scan").exists());
}
