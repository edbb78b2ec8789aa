//! Tower's memory once its pump has locked what its tick touches
//! (`src/pump/memlock.rs`): RSS and VmLck from /proc/PID/status after some
//! seconds (10 in a full run) of streaming to one listener. With JACK,
//! VmLck includes the shared memory JACK's client library locks itself.
//!
//! Two inputs: real ALSA capture through the JACK dummy backend (alsa's
//! jack and file plugins, as in the lag part and the soak test), standing
//! in for a `hw`/`plughw` device; and the fallback tone (no capture
//! device), for reference. Two conditions: as root, and as the shipped
//! systemd unit runs it: user nobody with no supplementary groups,
//! `AmbientCapabilities=CAP_SYS_NICE` (bounding set the same,
//! NoNewPrivileges), `LimitMEMLOCK=infinity`, `LimitRTPRIO=99`, through
//! `prlimit` and `setpriv`. Where this process may not raise those hard
//! limits (no CAP_SYS_RESOURCE, as in a container), `CAP_IPC_LOCK` stands
//! in for `LimitMEMLOCK=infinity` (the kernel then skips the same limit
//! check) and CAP_SYS_NICE alone grants SCHED_FIFO (the kernel checks
//! RLIMIT_RTPRIO only without it); the JSON and a note say so. JACK runs
//! as the same user as Tower (its server is per user).

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Jack, Listener, Tower, write_alsa_conf};
use crate::peers::TONE;
use crate::servers::own;
use crate::support::{proc_stat, wait_audio};

const USER: (&str, &str) = ("nobody", "nogroup");

/// How the unit's conditions are emulated here.
pub struct Unit {
    pub wrapper: Vec<String>,
    /// Whether the limits themselves could be set (else CAP_IPC_LOCK).
    pub limits_set: bool,
}

impl Unit {
    /// `prlimit` if this process may raise the hard limits, then setpriv.
    pub fn emulate() -> Unit {
        let limits = ["--memlock=unlimited:unlimited", "--rtprio=99:99"];
        let limits_set = std::process::Command::new("prlimit")
            .args(limits)
            .arg("true")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let caps = if limits_set { "+sys_nice" } else { "+sys_nice,+ipc_lock" };
        let mut wrapper: Vec<String> = Vec::new();
        if limits_set {
            wrapper.push("prlimit".into());
            wrapper.extend(limits.map(String::from));
        }
        wrapper.extend([
            "setpriv".into(),
            format!("--reuid={}", USER.0),
            format!("--regid={}", USER.1),
            "--clear-groups".into(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            format!("--bounding-set=-all,{caps}"),
            "--no-new-privs".into(),
        ]);
        Unit { wrapper, limits_set }
    }
}

/// One run's figures.
pub struct Locked {
    pub rss_kb: u64,
    /// Of the RSS, shared memory: with JACK standing in for the sound
    /// card, its server's buffers (/dev/shm/jack-*), which a `hw` device
    /// does not have.
    pub shmem_kb: u64,
    pub locked_kb: u64,
    pub json: Value,
}

/// The first word of a field of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.split_whitespace().next().map(String::from))
        })
        .unwrap_or_default()
}

/// A field of /proc/PID/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    status_field(pid, field).parse().unwrap_or(0)
}

/// Starts Tower (through `unit`'s wrapper, or as this process's user),
/// capturing ALSA through a JACK server of `jack_name` when `alsa` (else
/// the fallback tone), lets it stream to one listener for `stream`, and
/// reads its memory.
pub fn run(unit: Option<&Unit>, alsa: bool, jack_name: &str, stream: Duration) -> Locked {
    let dir = tempfile::tempdir().expect("tmp");
    // Readable by the unit's user.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod tmp");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut args: Vec<&str> = Vec::new();
    let jack = if alsa {
        let input = dir.path().join("input.raw");
        std::fs::write(&input, crate::encoder::music_raw(stream.as_secs_f64() + 30.0)).expect("write input");
        let conf = write_alsa_conf(dir.path(), &input);
        let jack = Jack::start_as(jack_name, unit.map(|_| USER));
        own(jack.pid());
        env.extend([
            ("ALSA_CONFIG_PATH".into(), conf.display().to_string()),
            ("JACK_DEFAULT_SERVER".into(), jack.name.clone()),
            ("JACK_NO_START_SERVER".into(), "1".into()),
            ("TOWER_PCM_GRACE_SEC".into(), "0.5".into()),
        ]);
        args.extend(["--device", "jackfile"]);
        Some(jack)
    } else {
        env.extend(TONE.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        None
    };
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let wrapper: Vec<&str> = unit
        .map(|u| u.wrapper.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let tower = Tower::start_wrapped(&wrapper, &args, &env_refs);
    own(tower.pid());
    assert!(
        wait_audio(tower.addr, "/stream", Duration::from_secs(15)),
        "Tower never streamed:\n{}",
        tower.log_text()
    );
    let listener = Listener::connect(tower.addr);
    std::thread::sleep(stream);
    let pid = tower.pid() as u32;
    let (rss_kb, locked_kb) = (status_kb(pid, "VmRSS:"), status_kb(pid, "VmLck:"));
    let shmem_kb = status_kb(pid, "RssShmem:");
    let encoder = tower.ffmpeg_pid() as u32;
    let status = tower.status();
    let pump = &status["pump"];
    let json = json!({
        "condition": if unit.is_some() { "unit" } else { "root" },
        "input": if alsa { "alsa (jack dummy)" } else { "fallback tone" },
        "uid": status_field(pid, "Uid:"), "cap_eff": status_field(pid, "CapEff:"),
        "rss_kb": rss_kb, "vm_lck_kb": locked_kb, "rss_anon_kb": status_kb(pid, "RssAnon:"),
        "rss_file_kb": status_kb(pid, "RssFile:"), "rss_shmem_kb": shmem_kb,
        "vm_hwm_kb": status_kb(pid, "VmHWM:"), "vm_size_kb": status_kb(pid, "VmSize:"),
        "encoder_rss_kb": proc_stat(encoder).1,
        "sched_fifo": pump["sched_fifo"], "memory_locked": pump["memory_locked"],
        "frames_live": pump["frames_live"], "frames_fallback": pump["frames_fallback"],
        "frames_received": listener.frame_count(),
        "wrapper": unit.map(|u| u.wrapper.clone()),
    });
    drop(listener);
    drop(tower);
    drop(jack);
    Locked {
        rss_kb,
        shmem_kb,
        locked_kb,
        json,
    }
}
