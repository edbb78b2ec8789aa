//! Fault injection against the real binary with real ffmpeg: the encoder
//! killed over and over, frozen, missing or broken; the pump blocked while
//! the input is live. Through every fault, listeners stay connected and
//! what they receive decodes [H3]: Tower's silence frames fill the gaps
//! [M4] until the encoder's audio is back [S4], [S5]. The timings are
//! printed (run with `--nocapture`). The device vanishing is in
//! `tests/capture.rs`, the watchdog in `tests/systemd.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::faults::{
    Stopped, assert_intact, audio_back_index, gaps, is_silence, median_lag_ms, new_ffmpeg_pid, recovery, signal,
    stall_pump,
};
use common::{Listener, Tower, rig, tone_of, wait_for};
use nix::sys::signal::Signal;

/// No device, short grace: the fallback tone is what ffmpeg encodes.
const NO_DEVICE: &[(&str, &str)] = &[
    ("TOWER_DEVICE", "tower_test_no_such_device"),
    ("TOWER_PCM_GRACE_SEC", "0.2"),
];

/// Most a listener may wait for a frame through a fault. By design the
/// pacer sends silence `encoder.silence_after_ms` (60) after a frame is
/// overdue on the listener's media clock; a listener can already hold up
/// to two periods of audio ahead of that clock (ffmpeg's 25–50 ms output
/// jitter), so its gap in arrivals is at most 24 + 48 + 60 ms, plus
/// scheduling delay on a loaded machine.
const MAX_GAP: Duration = Duration::from_millis(150);
/// What the hub's gathered writes add for a listener at the default burst
/// (200 ms): a frame may wait for up to 3 more (72 ms) before its write, so
/// the player, which holds the burst, keeps at least 120 ms in hand.
const GATHER_HOLD: Duration = Duration::from_millis(72);

/// Listener `i`: even ones at the default burst (writes gather 4 frames),
/// odd ones asking for a one-frame burst (each frame as it comes, so their
/// gaps are the pacer's alone).
fn listener(addr: std::net::SocketAddr, i: usize) -> Listener {
    if i.is_multiple_of(2) {
        Listener::connect(addr)
    } else {
        Listener::connect_to(addr, "/stream?burst_ms=24")
    }
}

/// The most listener `i` (see [`listener`]) may wait for a frame.
fn max_gap(i: usize) -> Duration {
    if i.is_multiple_of(2) {
        MAX_GAP + GATHER_HOLD
    } else {
        MAX_GAP
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn sleep_until(t: Instant) {
    thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// `n` listeners that already hear the 440 Hz fallback tone.
fn listeners(tower: &Tower, n: usize) -> Vec<Listener> {
    let ls: Vec<Listener> = (0..n).map(|i| listener(tower.addr, i)).collect();
    for l in &ls {
        assert!(l.wait_tone(440.0, Duration::from_secs(10)), "no tone at first");
    }
    ls
}

#[test]
fn ffmpeg_sigkilled_every_5_s_for_60_s_audio_is_back_within_500_ms_each_time_and_no_listener_is_lost() {
    // [S4], [S5]: each kill is a process_exit, restarted after 100 ms; the
    // consecutive count resets after 2 s of running, so every restart gets
    // the first backoff step. [M4], [H3]: silence covers each gap.
    let tower = Tower::start(&[], NO_DEVICE);
    let ls = listeners(&tower, 3);
    let refs: Vec<&Listener> = ls.iter().collect();
    let start = Instant::now();
    let mut pid = tower.ffmpeg_pid();
    let mut kills = Vec::new();
    for k in 0..12u32 {
        sleep_until(start + Duration::from_secs(5) * k);
        let at = Instant::now();
        signal(pid, Signal::SIGKILL);
        kills.push(at);
        pid = new_ffmpeg_pid(&tower, pid, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("kill {k}: ffmpeg not restarted: {}", tower.status()));
    }
    sleep_until(start + Duration::from_secs(60));

    let frames: Vec<_> = ls.iter().map(Listener::frames).collect();
    let mut worst = Duration::ZERO;
    for (k, &at) in kills.iter().enumerate() {
        let mut line = format!("kill {:2}:", k + 1);
        for (i, f) in frames.iter().enumerate() {
            let r = recovery(f, at);
            let back = r
                .audio_back
                .unwrap_or_else(|| panic!("kill {}: listener {i} never got audio back: {r:?}", k + 1));
            let first = audio_back_index(f, at).expect("index");
            // Real audio, the tone, not just a non-zero frame.
            let (tone, pattern) = tone_from(f, first);
            assert!(
                tone > 0.9,
                "kill {}: listener {i}: tone {tone:.2} after the restart ({pattern})",
                k + 1
            );
            worst = worst.max(back);
            line += &format!(
                "  L{i}: silence +{} ms, audio back +{} ms ({} silence frames)",
                ms(r.silence_after.unwrap_or_default()),
                ms(back),
                r.silence_frames
            );
        }
        eprintln!("{line}");
    }
    let listener_gaps: Vec<(Duration, Duration)> = frames.iter().map(|f| gaps(&start_from(f, start))).collect();
    let (largest, p99) = listener_gaps.iter().copied().max().unwrap_or_default();
    eprintln!(
        "12 SIGKILLs in 60 s: worst audio back {} ms; largest gap between frames {} ms (p99 {} ms)",
        ms(worst),
        ms(largest),
        ms(p99)
    );
    for (i, f) in frames.iter().enumerate() {
        let at: Vec<Instant> = f.iter().map(|a| a.at).collect();
        let early = median_lag_ms(&at, start - Duration::from_secs(4), start).expect("frames");
        let late =
            median_lag_ms(&at, start + Duration::from_secs(56), start + Duration::from_secs(60)).expect("frames");
        eprintln!(
            "listener {i}: lag behind its schedule {early:.0} ms before the kills, {late:.0} ms after: drift {:.0} ms",
            late - early
        );
    }
    // ffmpeg's own share of each recovery: spawn to first MP3 frame.
    let starts: Vec<String> = tower.status()["encoder"]["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| {
            t["reason"]
                .as_str()?
                .strip_prefix("first MP3 frame ")?
                .split(' ')
                .next()
                .map(String::from)
        })
        .collect();
    eprintln!(
        "ffmpeg start to first MP3 frame (ms), first start then each restart: {}",
        starts.join(" ")
    );
    assert!(worst <= Duration::from_millis(500), "audio back after {worst:?}");
    for (i, (gap, _)) in listener_gaps.iter().enumerate() {
        assert!(*gap <= max_gap(i), "listener {i} waited {gap:?} for a frame");
    }
    let counts = assert_intact(&tower, &refs);
    eprintln!("frames received and decoded without error: {counts:?}");
    eprintln!("counters: {}", tower.status()["counters"]["drops"]);
    let s = tower.status();
    assert_eq!(s["encoder"]["failures"]["process_exit"], 12, "{}", s["encoder"]);
    assert_eq!(s["encoder"]["restarts"], 12, "{}", s["encoder"]);
}

/// Whether the encoder's audio is back from frame `i` on: the best 440 Hz
/// tone ratio among three 4-frame windows after `i`'s first two frames (a
/// new encoder's first frame is its priming delay), and which of those 14
/// frames are silence frames (`s`) or real ones (`R`). Short windows,
/// because a restart's first frames are not one continuous tone: the PCM
/// that queued while ffmpeg started is partly dropped (the stdin pipe is
/// 16 KiB, `pcm_encoder_pipe_full`) and the stale part of its first burst
/// is trimmed by the pacer.
fn tone_from(f: &[common::Arrival], i: usize) -> (f64, String) {
    let w = &f[i.min(f.len())..(i + 14).min(f.len())];
    let pattern = w.iter().map(|a| if is_silence(&a.frame) { 's' } else { 'R' }).collect();
    let best = (0..3)
        .filter_map(|k| w.get(2 + 4 * k..6 + 4 * k))
        .map(|win| tone_of(win, 440.0))
        .fold(0.0, f64::max);
    (best, pattern)
}

/// The frames of `frames` that arrived at or after `t`.
fn start_from(frames: &[common::Arrival], t: Instant) -> Vec<common::Arrival> {
    frames.iter().filter(|a| a.at >= t).cloned().collect()
}

#[test]
fn ffmpeg_sigstopped_for_3_s_gets_silence_at_once_is_detected_as_a_stall_and_replaced() {
    // [S4]: a frozen ffmpeg is alive but sends nothing: the stall rule
    // (encoder.stall_timeout_ms, 2000 by default) replaces it. [M4]: the
    // listeners get silence 60 ms after a frame is overdue, not 2 s later.
    let tower = Tower::start(&[], NO_DEVICE);
    let ls = listeners(&tower, 2);
    let refs: Vec<&Listener> = ls.iter().collect();
    let old = tower.ffmpeg_pid();
    thread::sleep(Duration::from_secs(1));
    let stopped_at = Instant::now();
    let stopped = Stopped::new(old);
    let new = new_ffmpeg_pid(&tower, old, Duration::from_secs(6));
    let replaced_after = stopped_at.elapsed();
    sleep_until(stopped_at + Duration::from_secs(3));
    // SIGCONT, even though Tower has killed it already.
    drop(stopped);
    let new = new.unwrap_or_else(|| panic!("the frozen ffmpeg was not replaced: {}", tower.status()));
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), None).is_err(),
        "the frozen ffmpeg {old} is still there"
    );
    thread::sleep(Duration::from_secs(1));

    for (i, l) in ls.iter().enumerate() {
        let f = l.frames();
        let r = recovery(&f, stopped_at);
        let first = f
            .iter()
            .position(|a| a.at >= stopped_at && is_silence(&a.frame))
            .expect("silence");
        let last_real = &f[first - 1];
        assert!(!is_silence(&last_real.frame));
        let overdue = f[first].at.saturating_duration_since(last_real.at);
        let window = start_from(&f, stopped_at - Duration::from_secs(1));
        let (largest, _) = gaps(&window);
        let back = r.audio_back.expect("audio back");
        let b = audio_back_index(&f, stopped_at).expect("index");
        let (tone, pattern) = tone_from(&f, b);
        eprintln!(
            "listener {i}: first silence {} ms after SIGSTOP, {} ms after the last real frame; \
             largest gap {} ms; {} silence frames; audio back {} ms after SIGSTOP (tone {tone:.2})",
            ms(r.silence_after.unwrap_or_default()),
            ms(overdue),
            ms(largest),
            r.silence_frames,
            ms(back)
        );
        // The first silence frame closes the gap: the same bound.
        assert!(overdue <= max_gap(i), "silence came {overdue:?} after the last frame");
        assert!(largest <= max_gap(i), "listener {i} waited {largest:?} for a frame");
        assert!(tone > 0.9, "listener {i}: tone {tone:.2} after the restart ({pattern})");
        assert!(
            back <= replaced_after + Duration::from_secs(1),
            "audio back after {back:?}"
        );
    }
    eprintln!(
        "stall detected and ffmpeg replaced (pid {old} -> {new}) {} ms after SIGSTOP",
        ms(replaced_after)
    );
    let s = tower.status();
    let enc = &s["encoder"];
    assert_eq!(enc["failures"]["stall"], 1, "{enc}");
    assert_eq!(enc["restarts"], 1, "{enc}");
    let history = enc["history"].as_array().expect("history");
    let why = history
        .iter()
        .find(|t| t["to"] == "RESTARTING")
        .and_then(|t| t["reason"].as_str())
        .expect("a RESTARTING transition");
    eprintln!("/status history: RESTARTING because {why:?}");
    assert!(why.starts_with("stall: no MP3 frame for"), "{why}");
    assert!(
        replaced_after < Duration::from_millis(2000 + 1000),
        "stall detected after {replaced_after:?}"
    );
    assert_intact(&tower, &refs);
}

/// The ffmpeg Tower would find on PATH.
fn real_ffmpeg() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("ffmpeg"))
        .find(|p| p.is_file())
        .expect("ffmpeg on PATH (apt-get install ffmpeg)")
}

/// Puts an executable script at `path` in one step (rename), so Tower
/// never runs a half-written file or finds it busy.
fn install_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The stand-in for ffmpeg that works: the real one, same pid (exec).
fn install_working(path: &Path) {
    install_script(path, &format!("exec {} \"$@\"", real_ffmpeg().display()));
}

/// Tower with `ffmpeg` set to `wrapper`, failing fast: FAILED after two
/// failures in a row, retried every second [S5].
fn start_with_wrapper(wrapper: &Path) -> Tower {
    let mut env = NO_DEVICE.to_vec();
    env.extend([
        ("TOWER_ENCODER_MAX_RESTARTS", "2"),
        ("TOWER_ENCODER_BACKOFF_MS", "[100]"),
        ("TOWER_ENCODER_FAILED_RETRY_SEC", "1"),
    ]);
    Tower::start(&["--ffmpeg", wrapper.to_str().expect("utf8")], &env)
}

/// Waits for /health to answer `code`; returns its body.
fn wait_health(tower: &Tower, code: u16, timeout: Duration) -> serde_json::Value {
    let mut body = String::new();
    let ok = wait_for(timeout, || {
        let r = tower.get("/health");
        body = r.body_text();
        r.status == code
    });
    assert!(ok, "/health never answered {code}: {body}\n{}", tower.status());
    serde_json::from_str(&body).expect("health JSON")
}

fn failures(tower: &Tower, kind: &str) -> u64 {
    tower.status()["encoder"]["failures"][kind].as_u64().expect("count")
}

#[test]
fn ffmpeg_missing_then_failing_is_failed_in_status_and_health_with_silence_flowing_and_heals_when_it_is_back() {
    // [S5]: after max_restarts failures in a row the encoder is FAILED and
    // still retried slowly (encoder.failed_retry_sec); [M4], [H3]: a
    // stream that has started keeps going as silence all the while.
    let dir = tempfile::tempdir().expect("tmp");
    let wrapper = dir.path().join("ffmpeg");
    install_working(&wrapper);
    let tower = start_with_wrapper(&wrapper);
    let ls = listeners(&tower, 2);
    let refs: Vec<&Listener> = ls.iter().collect();
    wait_health(&tower, 200, Duration::from_secs(5));

    // 1. ffmpeg vanishes (a package upgrade gone wrong) and the running one dies.
    std::fs::remove_file(&wrapper).expect("rm");
    let fault_at = Instant::now();
    signal(tower.ffmpeg_pid(), Signal::SIGKILL);
    let health = wait_health(&tower, 503, Duration::from_secs(5));
    let failed_after = fault_at.elapsed();
    let reason = health["reasons"][0].as_str().expect("reason").to_string();
    eprintln!(
        "missing: FAILED {} ms after the kill; /health 503: {reason}",
        ms(failed_after)
    );
    assert!(
        reason.contains("encoder FAILED") && reason.contains("spawn_failed"),
        "{reason}"
    );
    assert!(
        reason.contains(&wrapper.display().to_string()),
        "the reason names the program: {reason}"
    );
    let s = tower.status();
    assert_eq!(s["encoder"]["state"], "FAILED", "{}", s["encoder"]);
    // Retried every second, failing each time.
    let before = failures(&tower, "spawn_failed");
    assert!(
        wait_for(Duration::from_secs(4), || failures(&tower, "spawn_failed")
            >= before + 2),
        "a FAILED encoder was not retried: {}",
        tower.status()["encoder"]
    );

    // 2. It is back but exits at once with an error.
    install_script(&wrapper, "echo 'tower-test: encoder broken' >&2; exit 1");
    let before = failures(&tower, "process_exit");
    assert!(
        wait_for(Duration::from_secs(4), || failures(&tower, "process_exit")
            >= before + 2),
        "{}",
        tower.status()["encoder"]
    );
    let health = wait_health(&tower, 503, Duration::from_secs(2));
    let reason = health["reasons"][0].as_str().expect("reason").to_string();
    eprintln!("exits 1: /health 503: {reason}");
    assert!(
        reason.contains("process_exit") && reason.contains("exit code 1"),
        "{reason}"
    );
    assert!(
        tower.log_text().contains("tower-test: encoder broken"),
        "its stderr is logged [S6]"
    );

    // 3. A working ffmpeg again: the next slow retry heals it.
    let fixed_at = Instant::now();
    install_working(&wrapper);
    wait_health(&tower, 200, Duration::from_secs(5));
    let healthy_after = fixed_at.elapsed();
    thread::sleep(Duration::from_millis(800));
    for (i, l) in ls.iter().enumerate() {
        let f = l.frames();
        // Only silence while it was down (after the frames in flight).
        let down: Vec<_> = f
            .iter()
            .filter(|a| a.at > fault_at + Duration::from_millis(200) && a.at < fixed_at)
            .collect();
        assert!(
            down.len() as u128 >= ms(fixed_at - fault_at) / 24 - 15,
            "listener {i}: {} frames",
            down.len()
        );
        assert!(
            down.iter().all(|a| is_silence(&a.frame)),
            "listener {i}: audio while FAILED?"
        );
        let (largest, _) = gaps(&start_from(&f, fault_at));
        let b = audio_back_index(&f, fault_at).expect("audio back");
        let back = f[b].at.saturating_duration_since(fixed_at);
        let (tone, pattern) = tone_from(&f, b);
        eprintln!(
            "listener {i}: down {} ms, {} silence frames, largest gap {} ms; audio back {} ms after ffmpeg was restored (tone {tone:.2})",
            ms(fixed_at - fault_at),
            down.len(),
            ms(largest),
            ms(back)
        );
        assert!(largest <= max_gap(i), "listener {i} waited {largest:?}");
        assert!(tone > 0.9, "listener {i}: tone {tone:.2} after the restart ({pattern})");
        // The retry comes within a second, then ffmpeg starts.
        assert!(back <= Duration::from_millis(1800), "audio back after {back:?}");
    }
    eprintln!("healed: /health 200 {} ms after ffmpeg was restored", ms(healthy_after));
    let enc = tower.status()["encoder"].clone();
    assert_eq!(enc["state"], "RUNNING", "{enc}");
    let history = enc["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|t| t["to"] == "STARTING" && t["reason"].as_str().is_some_and(|r| r.contains("slow retry"))),
        "{enc}"
    );
    assert_intact(&tower, &refs);
}

#[test]
fn ffmpeg_missing_from_the_start_is_failed_listeners_wait_connected_and_it_heals_when_installed() {
    // [M4]: before the first frame ever there is nothing to send, not even
    // silence; listeners are admitted and wait [H1].
    let dir = tempfile::tempdir().expect("tmp");
    let wrapper = dir.path().join("ffmpeg");
    let tower = start_with_wrapper(&wrapper);
    let health = wait_health(&tower, 503, Duration::from_secs(5));
    eprintln!("/health 503: {}", health["reasons"][0]);
    assert_eq!(tower.status()["encoder"]["state"], "FAILED");
    let l = Listener::connect(tower.addr);
    assert!(wait_for(Duration::from_secs(2), || l.head().contains("200 OK")));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(l.frame_count(), 0);

    let installed_at = Instant::now();
    install_working(&wrapper);
    assert!(
        l.wait_tone(440.0, Duration::from_secs(5)),
        "{}",
        tower.status()["encoder"]
    );
    let first = l.frames()[0].at.saturating_duration_since(installed_at);
    eprintln!("first audio {} ms after ffmpeg was installed", ms(first));
    assert!(first <= Duration::from_millis(1800), "{first:?}");
    wait_health(&tower, 200, Duration::from_secs(2));
    assert_intact(&tower, &[&l]);
}

#[test]
fn a_blocked_pump_with_live_input_keeps_listeners_fed_and_the_input_latency_comes_back_down() {
    // [A1]: the pump resynchronises after a hang instead of bursting; the
    // capture thread kept filling the PCM queue meanwhile, and [R6] says
    // the queue must not stay long: that backlog is latency from live.
    let r = rig(&[common::HOOKS]);
    let tower = &r.tower;
    let (a, b) = (listener(tower.addr, 0), listener(tower.addr, 1));
    for l in [&a, &b] {
        assert!(l.wait_tone(1000.0, Duration::from_secs(15)), "no live input");
    }
    let fill = || tower.status()["pcm_buffer"]["fill"].as_u64().expect("fill");
    let fill_before = fill();
    let stalled_at = Instant::now();
    stall_pump(tower, 1500);
    thread::sleep(Duration::from_millis(1500));
    let mut peak = 0;
    let mut drained_after = None;
    wait_for(Duration::from_secs(10), || {
        let f = fill();
        peak = peak.max(f);
        if f <= 3 && drained_after.is_none() && stalled_at.elapsed() > Duration::from_millis(1600) {
            drained_after = Some(stalled_at.elapsed());
        }
        drained_after.is_some()
    });
    eprintln!(
        "PCM queue: {fill_before} frames before, {peak} after a 1.5 s pump stall; back to <= 3 {:?} after the stall began",
        drained_after
    );
    for (i, l) in [&a, &b].iter().enumerate() {
        let (largest, _) = gaps(&start_from(&l.frames(), stalled_at - Duration::from_secs(1)));
        eprintln!("listener {i}: largest gap {} ms", ms(largest));
        assert!(largest <= max_gap(i), "listener {i} waited {largest:?}");
        assert!(l.wait_tone(1000.0, Duration::from_secs(5)), "live audio not back");
    }
    let drained_after = drained_after.expect("the PCM backlog from the stall was never trimmed: live latency stays up");
    assert!(drained_after <= Duration::from_secs(5), "{drained_after:?}");
    assert_intact(tower, &[&a, &b]);
}
