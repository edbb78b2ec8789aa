//! A forking ffmpeg wrapper leaves nothing behind across restarts (issue 26
//! item 11): the encoder is a shell script that starts a sleeper holding
//! stdout and stderr open, then execs ffmpeg. Each restart must end the
//! whole old process group, and Tower's thread count must not grow.
//!
//! One test in this file: it counts the threads of this process.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tower::audio::PcmFrame;
use tower::encoder::command::default_command;
use tower::encoder::process::FfmpegLauncher;
use tower::encoder::ring::FrameRing;
use tower::encoder::state::{Liveness, RestartPolicy};
use tower::encoder::supervisor::SupervisorConfig;
use tower::encoder::{EncoderManager, EncoderState, Gather, ManagerConfig};

/// Processes (not zombies) in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, pgrp, ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid) {
            found.push(pid);
        }
    }
    found
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("task").count()
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn restarts_of_a_forking_wrapper_leave_no_process_of_the_old_group_and_no_thread_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("ffmpeg-wrapper");
    std::fs::write(&wrapper, "#!/bin/sh\nsleep 600 &\nexec ffmpeg \"$@\"\n").expect("write");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let manager = Arc::new(
        EncoderManager::start(
            ManagerConfig {
                supervisor: SupervisorConfig {
                    liveness: Liveness {
                        startup_timeout: Duration::from_secs(5),
                        stall_timeout: Duration::from_secs(5),
                    },
                    policy: RestartPolicy {
                        backoff: vec![Duration::from_millis(50)],
                        ..RestartPolicy::default()
                    },
                },
                silence_after: Duration::from_millis(60),
                max_lead: Duration::from_millis(120),
                frame: tower::audio::FRAME_DURATION,
            },
            Box::new(FfmpegLauncher::new(default_command(&wrapper.to_string_lossy(), 128))),
            Arc::new(FrameRing::new(64)),
        )
        .expect("manager"),
    );
    // The pump's and the broadcast loop's parts: PCM in, frames out.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (m, stop) = (manager.clone(), stop.clone());
        std::thread::spawn(move || {
            let frame = PcmFrame::silent();
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    m.write_pcm(&frame);
                    next += Duration::from_millis(24);
                }
                m.drain(Instant::now, |_, _| {});
                m.wait(Instant::now(), Gather::No);
            }
        })
    };
    let running = |m: &EncoderManager| m.state() == EncoderState::Running;
    assert!(wait_for(Duration::from_secs(10), || running(&manager)), "never RUNNING");
    let baseline = threads();
    for restart in 1..=3u64 {
        let pid = manager.snapshot().supervisor.pid.expect("pid") as i32;
        assert!(
            wait_for(Duration::from_secs(2), || group_members(pid).len() >= 2),
            "the wrapper's sleeper is not in ffmpeg's group: {:?}",
            group_members(pid)
        );
        // ffmpeg alone dies; its sleeper keeps stdout and stderr open.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
        assert!(
            wait_for(Duration::from_secs(10), || {
                let s = manager.snapshot().supervisor;
                s.restarts == restart && s.pid.is_some_and(|p| p as i32 != pid) && running(&manager)
            }),
            "restart {restart} did not happen: {:?}",
            manager.snapshot().supervisor.history.last()
        );
        assert!(
            wait_for(Duration::from_secs(2), || group_members(pid).is_empty()),
            "after restart {restart}, the old group {pid} still has {:?}",
            group_members(pid)
        );
    }
    let after = threads();
    stop.store(true, Ordering::SeqCst);
    feeder.join().expect("feeder");
    let last = manager.snapshot().supervisor.pid.expect("pid") as i32;
    manager.stop(Duration::from_secs(2)).expect("stop");
    assert!(
        wait_for(Duration::from_secs(2), || group_members(last).is_empty()),
        "after stop, the group {last} still has {:?}",
        group_members(last)
    );
    assert_eq!(after, baseline, "threads before the restarts {baseline}, after {after}");
}
