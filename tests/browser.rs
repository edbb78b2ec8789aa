//! The status page in a real browser: headless Chromium (Debian's, driven
//! through chromedriver) loads `/` with a live 1 kHz input behind Tower,
//! plays the embedded player, shows the encoder state and moves the level
//! meter. A screenshot is saved as a test artifact. Clauses: [H1].

mod common;

use std::time::{Duration, Instant};

use common::browser::Driver;
use common::{Listener, rig};

#[test]
fn the_status_page_plays_the_stream_shows_the_state_and_meters_the_input_in_chromium() {
    let r = rig(&[]);
    let warm = Listener::connect(r.tower.addr);
    assert!(warm.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    drop(warm);

    let driver = Driver::start();
    let page = driver.session();
    let loaded = Instant::now();
    page.goto(&format!("http://{}/?autoplay=1", r.tower.addr));

    // The player plays: currentTime passes 2 s within 5 s of the load.
    let current = || {
        page.exec("return document.getElementById('player').currentTime")
            .as_f64()
            .unwrap_or(0.0)
    };
    let mut started = None;
    let mut position = 0.0;
    while loaded.elapsed() < Duration::from_secs(5) && position <= 2.0 {
        position = current();
        if position > 0.0 && started.is_none() {
            started = Some(loaded.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "Chromium: currentTime advancing {:?} after load; {position:.2} s played {:?} after load",
        started,
        loaded.elapsed()
    );
    assert!(position > 2.0, "currentTime only {position} s 5 s after load");
    let error = page.exec("const e = document.getElementById('player').error; return e && e.message");
    assert!(error.is_null(), "media error: {error}");

    // The encoder badge shows the state.
    let badge =
        page.exec("const b = document.getElementById('encoder-badge'); return [b.textContent, b.dataset.state]");
    assert_eq!(badge, serde_json::json!(["RUNNING", "RUNNING"]));
    let input = page.exec("return document.getElementById('input-badge').textContent");
    assert_eq!(input, "live");

    // The meter shows the tone: half scale is -9 dBFS RMS, -6 dBFS peak.
    let meter = page.exec(
        "return [...document.querySelectorAll('#meter .ch')].map(c => \
         [parseFloat(c.querySelector('.rms').dataset.db), parseFloat(c.querySelector('.peak').dataset.db)])",
    );
    let channels = meter.as_array().expect("channels");
    assert_eq!(channels.len(), 2, "{meter}");
    for ch in channels {
        let rms = ch[0].as_f64().expect("rms");
        let peak = ch[1].as_f64().expect("peak");
        assert!((rms - -9.0).abs() < 1.0, "{meter}");
        assert!((peak - -6.0).abs() < 1.0, "{meter}");
    }
    // Live: the page keeps receiving level events (the reading is redrawn).
    let ticks = || page.exec("return window.towerLevelEvents || 0").as_f64().unwrap_or(0.0);
    let before = ticks();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        ticks() >= before + 3.0,
        "the meter is not updated several times a second"
    );

    let png = page.screenshot_png();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).expect("screenshot");
    eprintln!("screenshot: {}", out.display());
}
