//! Saving the configuration where Tower reads it, so that a power cut at
//! any instant leaves either the old file or the new one, never a mix.
//!
//! Called on the admin thread (a save from the owner's page) and at start
//! (the plain-text admin password replaced by its hash).
//!
//! [`save_with_backup`] writes the new text to a temporary file beside
//! the old one, `fsync`s it, renames it over the old file and `fsync`s the
//! directory; before that, the file on disk becomes `tower.toml.bak` the
//! same way (only a file that loads becomes the backup, so a broken file
//! never replaces a good backup). A write that fails (disk full,
//! read-only medium) removes its temporary file and leaves the file on
//! disk as it was. [`load_or_backup`] is the other half: a file that
//! cannot be used at start (half written by a file system without atomic
//! rename, such as FAT, or broken by hand) gives way to its backup, and
//! Tower says so on the page and in the log instead of refusing to start.
//!
//! Where Tower may not write the file itself (the SD image: the FAT
//! partition is mounted read-only and only root may remount it), a
//! [`SpoolStore`] hands the text to `tower config-commit`, run as root by a
//! systemd path unit, and waits for its answer; [`commit`] is that
//! helper's work: the same checks as at start, a remount for the write and
//! back, and the same atomic save.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::edit::{self, Edit};
use super::{ConfigError, Loaded, Overrides, load, load_text};

/// Why a save failed; the file on disk is as it was.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "Tower was started without a configuration file, so changes last until it stops; start it with --config PATH to keep them"
    )]
    NoFile,
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} was changed on disk since Tower read it (by hand?); restart Tower to load it, then change settings here"
    )]
    ChangedOnDisk { path: PathBuf },
    #[error(
        "the configuration helper (tower-config-commit) did not answer within {0:?}, so the change was withdrawn and nothing was saved; is tower-config-commit.path running?"
    )]
    NoAnswer(Duration),
    #[error(
        "the configuration helper (tower-config-commit) took the change but did not answer within {0:?}: it may have been saved; reload the page to see what the file says now"
    )]
    NoOutcome(Duration),
    #[error("the configuration helper could not save: {0}")]
    Helper(String),
    #[error("refused: {0}")]
    Invalid(String),
    #[error("Wi-Fi is not managed by Tower here (only on the SD image)")]
    NoWifi,
    #[error("cannot remount {mount} {mode}: {reason}")]
    Remount {
        mount: PathBuf,
        mode: &'static str,
        reason: String,
    },
}

/// Where saved changes go.
pub trait Store: Send {
    /// The file, in words for the page.
    fn describe(&self) -> String;
    /// Saves `text` as the whole file. `loaded_text` is what Tower last
    /// read or saved: a file that differs on disk (edited by hand while
    /// Tower ran) is not overwritten.
    fn save(&mut self, loaded_text: &str, text: &str) -> Result<(), SaveError>;
    /// Saves `text` as the SD image's `wifi.txt` (checked again there).
    fn save_wifi(&mut self, _text: &str) -> Result<(), SaveError> {
        Err(SaveError::NoWifi)
    }
}

/// `tower.toml.bak` beside `tower.toml`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".bak");
    path.with_file_name(name)
}

/// Writes `text` to `path` through a temporary file in the same
/// directory: written, `fsync`ed, renamed over `path`, and the directory
/// `fsync`ed. On error the temporary file is removed and `path` is as it
/// was.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Saves `text` as `path`, keeping the file that was there as
/// `path.bak` if it loads (see the module header), but never a plain
/// admin password: see [`backup_text`].
pub fn save_with_backup(path: &Path, text: &str) -> Result<(), SaveError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SaveError::Write { path, source }
    };
    if let Ok(old) = fs::read_to_string(path)
        && old != text
        && loads(path, &old)
    {
        write_atomically(&backup_path(path), &backup_text(&old, text)).map_err(failed(&backup_path(path)))?;
    }
    write_atomically(path, text).map_err(failed(path))
}

/// What `old` is kept as when `new` replaces it: as it is, except that a
/// plain `[admin] password` (the owner's, before Tower hashed it) becomes
/// the hash `new` holds, so the backup works as the file did and the
/// password's text does not stay on the card.
pub fn backup_text(old: &str, new: &str) -> String {
    let admin = |text: &str, key: &str| -> Option<String> {
        let doc: toml::Table = text.parse().ok()?;
        let value = doc.get("admin")?.get(key)?.as_str()?;
        (!value.is_empty()).then(|| value.to_string())
    };
    if admin(old, "password").is_none() {
        return old.to_string();
    }
    let hash = admin(new, "password_hash").unwrap_or_default();
    let edits = [
        Edit::Remove("admin.password".into()),
        Edit::Set("admin.password_hash".into(), toml::Value::String(hash)),
    ];
    // A file that loads is TOML, so the edit works; if it ever did not,
    // the password's text is still not kept.
    edit::apply(old, &edits).unwrap_or_default()
}

fn loads(path: &Path, text: &str) -> bool {
    load_text(Some((path, text)), &[], &Overrides::default()).is_ok()
}

/// The file as it is on disk now, if it can be read.
fn on_disk(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// The configuration at `path`, or, when that file cannot be used and
/// its backup can, the backup; then also the notice to show (the page,
/// the log). Without a usable backup, the file's own error.
pub fn load_or_backup(
    path: Option<&Path>,
    env: &[(String, String)],
    flags: &Overrides,
) -> Result<(Loaded, Option<String>), ConfigError> {
    let error = match load(path, env, flags) {
        Ok(l) => return Ok((l, None)),
        Err(e) => e,
    };
    let Some(path) = path else { return Err(error) };
    let bak = backup_path(path);
    match load(Some(&bak), env, flags) {
        Ok(mut loaded) if bak.exists() => {
            loaded.file = Some(path.to_path_buf());
            let notice = format!(
                "{} could not be used ({error}); Tower started from the previous version, {}. \
                 Saving a setting on the settings page writes a good {} again",
                path.display(),
                bak.display(),
                path.display()
            );
            Ok((loaded, Some(notice)))
        }
        _ => Err(error),
    }
}

/// Saves straight into the file (the Debian package's
/// `/etc/tower/tower.toml`, or `--config PATH` by hand).
pub struct FileStore {
    pub path: PathBuf,
}

impl Store for FileStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn save(&mut self, loaded_text: &str, text: &str) -> Result<(), SaveError> {
        // A file edited by hand while Tower ran is the owner's newer word;
        // a file that does not load (Tower started from its backup) is not.
        if let Some(disk) = on_disk(&self.path)
            && disk != loaded_text
            && loads(&self.path, &disk)
        {
            return Err(SaveError::ChangedOnDisk {
                path: self.path.clone(),
            });
        }
        save_with_backup(&self.path, text)
    }
}

/// No file to save to: changes apply until Tower stops.
pub struct NoStore;

impl Store for NoStore {
    fn describe(&self) -> String {
        "nowhere: Tower was started without a configuration file".into()
    }

    fn save(&mut self, _: &str, _: &str) -> Result<(), SaveError> {
        Err(SaveError::NoFile)
    }
}

/// Requests go in here, named `<n>.toml` (the configuration) or
/// `<n>.wifi` (a `wifi.txt`; see [`SpoolStore`]).
const SPOOL_IN: &str = "in";
/// Answers come back here, named `<n>.result`: `ok`, or `error: …`.
const SPOOL_OUT: &str = "out";
/// The largest file the helper accepts.
pub const MAX_FILE: usize = 256 * 1024;
/// The largest `wifi.txt` the helper accepts.
pub const MAX_WIFI_FILE: usize = 4096;
/// A request still being written after this was left by a writer that died.
const STALE_PART: Duration = Duration::from_secs(10);

/// Hands the text to the root helper (`tower config-commit`) through a
/// spool directory, and waits for its answer.
pub struct SpoolStore {
    pub spool: PathBuf,
    /// The file the helper writes, for the page.
    pub target: String,
    pub timeout: Duration,
    next: u64,
}

impl SpoolStore {
    pub fn new(spool: PathBuf, target: String) -> SpoolStore {
        SpoolStore {
            spool,
            target,
            timeout: Duration::from_secs(15),
            next: 0,
        }
    }

    /// Leaves `text` as a request of `kind` (`toml`, `wifi`) and waits for
    /// the helper's answer.
    fn request(&mut self, kind: &str, text: &str) -> Result<(), SaveError> {
        self.next += 1;
        let id = format!("{}-{}", std::process::id(), self.next);
        let answer = self.spool.join(SPOOL_OUT).join(format!("{id}.result"));
        let _ = fs::remove_file(&answer);
        let request = self.spool.join(SPOOL_IN).join(format!("{id}.{kind}"));
        hand_over(&request, text).map_err(|source| SaveError::Write {
            path: request.clone(),
            source,
        })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(result) = fs::read_to_string(&answer) {
                let _ = fs::remove_file(&answer);
                let result = result.trim();
                return match result.strip_prefix("error: ") {
                    None if result == "ok" => Ok(()),
                    Some(reason) => Err(SaveError::Helper(reason.to_string())),
                    None => Err(SaveError::Helper(format!("unexpected answer {result:?}"))),
                };
            }
            if Instant::now() >= deadline {
                // Withdrawn while still waiting, it can never be saved
                // later behind the page's back; gone, the helper has it.
                return Err(match fs::remove_file(&request) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => SaveError::NoOutcome(self.timeout),
                    _ => SaveError::NoAnswer(self.timeout),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Store for SpoolStore {
    fn describe(&self) -> String {
        self.target.clone()
    }

    fn save(&mut self, _: &str, text: &str) -> Result<(), SaveError> {
        self.request("toml", text)
    }

    fn save_wifi(&mut self, text: &str) -> Result<(), SaveError> {
        self.request("wifi", text)
    }
}

/// Leaves `text` at `path` for the helper: written beside it, then renamed
/// in, so the helper never reads half a request. Nothing is `fsync`ed: the
/// spool is in RAM (`/run`), the helper's own write to the card is the one
/// that must last, and Tower may not even open the spool's `in/` to sync
/// it (mode 0730: it may only drop requests there).
pub fn hand_over(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".part");
    let tmp = path.with_file_name(tmp_name);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Where the helper puts a `wifi.txt` that passed, and the image's own
/// reader to ask as well (`wifi-setup --check`), if any.
#[derive(Debug, Clone)]
pub struct WifiTarget {
    pub path: PathBuf,
    pub check: Option<PathBuf>,
}

/// Where the helper publishes the file for Tower, and what it publishes
/// while `target` does not exist yet (the packaged defaults).
#[derive(Debug, Clone)]
pub struct Publish {
    pub dir: PathBuf,
    pub default: Option<PathBuf>,
}

/// The helper's work (`tower config-commit`, as root): every request in
/// `spool/in` is answered in `spool/out`, oldest first. A `.toml` is
/// checked like the file at start and saved as `target` (with its
/// backup); a `.wifi` is checked by the `wifi.txt` rules ([`WifiTarget`])
/// and saved, rewritten in its plain form, as `wifi.path`; anything else
/// is refused and removed. The file system is remounted read-write for a
/// write if it was read-only, and back. Then `publish`, if given, gets a
/// copy of the configuration and its backup for Tower to read. Returns how
/// many requests were saved.
pub fn commit(spool: &Path, target: &Path, wifi: Option<&WifiTarget>, publish: Option<&Publish>) -> io::Result<usize> {
    let mut saved = 0;
    let mut requests = Vec::new();
    for entry in fs::read_dir(spool.join(SPOOL_IN))?.filter_map(Result::ok) {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with('.') {
            requests.push(path);
            continue;
        }
        // A request being written (`.NAME.part`) is renamed in at once;
        // one left behind (its writer died) would start this again and
        // again (the path unit starts it while the directory holds a file).
        let age = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_none_or(|a| a > STALE_PART) {
            let _ = fs::remove_file(&path);
        }
    }
    // Oldest first: the last request wins, as it would in Tower.
    requests.sort_by_key(|p| fs::symlink_metadata(p).and_then(|m| m.modified()).ok());
    for request in requests {
        let id = request
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let kind = request.extension().map(|x| x.to_string_lossy().to_string());
        let outcome = match (kind.as_deref(), wifi) {
            (Some("toml"), _) => commit_one(&request, target),
            (Some("wifi"), Some(w)) => commit_wifi(&request, w),
            (Some("wifi"), None) => Err(SaveError::Invalid("Wi-Fi is not managed on this system".into())),
            _ => Err(SaveError::Invalid("not a request (NAME.toml or NAME.wifi)".into())),
        };
        match fs::symlink_metadata(&request) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&request)?,
            _ => {
                let _ = fs::remove_file(&request);
            }
        }
        let answer = match &outcome {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        };
        write_atomically(&spool.join(SPOOL_OUT).join(format!("{id}.result")), &answer)?;
        if outcome.is_ok() {
            saved += 1;
        }
    }
    if let Some(p) = publish {
        publish_copy(target, p)?;
    }
    Ok(saved)
}

/// The request's text, if it is a regular file of at most `max` bytes.
/// Opened without following a symbolic link and without waiting (a FIFO),
/// then checked through the descriptor itself: the helper runs as root,
/// and a name swapped between a check and an open must not make it read
/// another file or hang.
fn read_request(request: &Path, max: usize) -> Result<Vec<u8>, SaveError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |source| SaveError::Write {
        path: request.to_path_buf(),
        source,
    };
    let not_a_request = || SaveError::Invalid(format!("not a regular file of at most {max} bytes"));
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(request)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_a_request(),
            _ => failed(e),
        })?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() || meta.len() as usize > max {
        return Err(not_a_request());
    }
    let mut text = Vec::with_capacity(meta.len() as usize);
    // At most one byte more than allowed: a file still growing is refused.
    file.take(max as u64 + 1).read_to_end(&mut text).map_err(failed)?;
    if text.len() > max {
        return Err(not_a_request());
    }
    Ok(text)
}

fn commit_one(request: &Path, target: &Path) -> Result<(), SaveError> {
    let text = String::from_utf8(read_request(request, MAX_FILE)?)
        .map_err(|_| SaveError::Invalid("the configuration is not UTF-8 text".into()))?;
    // The helper runs as root: only a configuration Tower would start
    // with reaches the card.
    load_text(Some((target, &text)), &[], &Overrides::default()).map_err(|e| SaveError::Invalid(e.to_string()))?;
    let mount = remount::writable(target)?;
    let saved = save_with_backup(target, &text);
    let restored = mount.restore();
    saved?;
    restored
}

/// A `wifi.txt` request: read by the rules of `wifi.txt` (and by the
/// image's own reader, when there is one), then written in its plain form
/// (only `country`, `ssid`, `psk`), so nothing else Tower sent reaches the
/// card.
fn commit_wifi(request: &Path, wifi: &WifiTarget) -> Result<(), SaveError> {
    let bytes = read_request(request, MAX_WIFI_FILE)?;
    let parsed = crate::wifi::txt::parse(&bytes, "wifi.txt").map_err(|e| SaveError::Invalid(e.to_string()))?;
    let text = parsed.render();
    if let Some(script) = &wifi.check {
        check_with_script(script, &text)?;
    }
    let mount = remount::writable(&wifi.path)?;
    let saved = write_atomically(&wifi.path, &text).map_err(|source| SaveError::Write {
        path: wifi.path.clone(),
        source,
    });
    let restored = mount.restore();
    saved?;
    restored
}

/// `SCRIPT --check FILE` on `text` (in a file of the helper's own, which
/// Tower cannot reach), which must pass. Its message on stderr never holds
/// the password.
fn check_with_script(script: &Path, text: &str) -> Result<(), SaveError> {
    let dir = std::env::temp_dir().join(format!("tower-wifi-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let file = dir.join("wifi.txt");
    let run = (|| -> io::Result<std::process::Output> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        fs::write(&file, text)?;
        std::process::Command::new("sh")
            .arg(script)
            .arg("--check")
            .arg(&file)
            .output()
    })();
    let _ = fs::remove_dir_all(&dir);
    let out = run.map_err(|e| SaveError::Invalid(format!("cannot run {}: {e}", script.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or("refused")
        .replace(&file.display().to_string(), "wifi.txt");
    Err(SaveError::Invalid(why))
}

/// Copies `target` and its backup into the publishing directory (for
/// Tower, which may not read the FAT partition itself): mode 0640, the
/// directory's group. Without `target`, the packaged defaults stand in.
pub fn publish_copy(target: &Path, publish: &Publish) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let group = fs::metadata(&publish.dir)?.gid();
    let source = match (target.exists(), &publish.default) {
        (false, Some(default)) => default.clone(),
        _ => target.to_path_buf(),
    };
    let Some(name) = target.file_name() else { return Ok(()) };
    let to = publish.dir.join(name);
    for (from, to) in [(source.clone(), to.clone()), (backup_path(target), backup_path(&to))] {
        match fs::read_to_string(&from) {
            Ok(text) => {
                write_atomically(&to, &text)?;
                fs::set_permissions(&to, fs::Permissions::from_mode(0o640))?;
                std::os::unix::fs::chown(&to, None, Some(group))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_file(&to);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Remounting the file system that holds a file read-write for a save,
/// and back.
mod remount {
    use super::SaveError;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The mount point holding `path`, and whether it is read-only, from
    /// `/proc/self/mountinfo` (the longest mount point that contains it).
    pub fn mount_of(path: &Path, mountinfo: &str) -> Option<(PathBuf, bool)> {
        let mut best: Option<(PathBuf, bool)> = None;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            let longer = best
                .as_ref()
                .is_none_or(|(b, _)| point.as_os_str().len() >= b.as_os_str().len());
            if path.starts_with(&point) && longer {
                best = Some((point, options.split(',').any(|o| o == "ro")));
            }
        }
        best
    }

    /// A file system remounted read-write for one save.
    pub struct Writable(Option<PathBuf>);

    pub fn writable(path: &Path) -> Result<Writable, SaveError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        match mount_of(path, &info) {
            Some((point, true)) => {
                run(&point, "rw")?;
                Ok(Writable(Some(point)))
            }
            _ => Ok(Writable(None)),
        }
    }

    impl Writable {
        /// Back to read-only, if it was.
        pub fn restore(mut self) -> Result<(), SaveError> {
            match self.0.take() {
                Some(point) => run(&point, "ro"),
                None => Ok(()),
            }
        }
    }

    impl Drop for Writable {
        fn drop(&mut self) {
            if let Some(point) = self.0.take() {
                let _ = run(&point, "ro");
            }
        }
    }

    fn run(point: &Path, mode: &'static str) -> Result<(), SaveError> {
        let failed = |reason: String| SaveError::Remount {
            mount: point.to_path_buf(),
            mode,
            reason,
        };
        let out = Command::new("mount")
            .arg("-o")
            .arg(format!("remount,{mode}"))
            .arg(point)
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_longest_mount_point_holding_the_file_decides() {
            let info = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
                        30 22 8:1 / /boot/firmware ro,relatime shared:2 - vfat /dev/sda1 ro\n\
                        31 22 0:5 / /boot rw,relatime shared:3 - tmpfs x rw\n";
            assert_eq!(
                mount_of(Path::new("/boot/firmware/tower.toml"), info),
                Some((PathBuf::from("/boot/firmware"), true))
            );
            assert_eq!(
                mount_of(Path::new("/etc/tower/tower.toml"), info),
                Some((PathBuf::from("/"), false))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[station]\nname = \"Old\"\n";
    const NEW: &str = "# kept\n[station]\nname = \"New\"\n";

    #[test]
    fn a_save_keeps_the_previous_file_as_bak_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tower.toml");
        fs::write(&path, GOOD).expect("write");
        let mut store = FileStore { path: path.clone() };
        store.save(GOOD, NEW).expect("save");
        assert_eq!(fs::read_to_string(&path).expect("read"), NEW);
        assert_eq!(fs::read_to_string(backup_path(&path)).expect("bak"), GOOD);
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_file_changed_by_hand_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tower.toml");
        fs::write(&path, "[station]\nname = \"Hand\"\n").expect("write");
        let e = FileStore { path: path.clone() }.save(GOOD, NEW).expect_err("conflict");
        assert!(matches!(e, SaveError::ChangedOnDisk { .. }), "{e}");
        assert!(fs::read_to_string(&path).expect("read").contains("Hand"));
    }

    #[test]
    fn a_broken_file_starts_from_its_backup_and_never_becomes_the_backup() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tower.toml");
        fs::write(&path, GOOD).expect("write");
        FileStore { path: path.clone() }.save(GOOD, NEW).expect("save");
        // A power cut on FAT half way through the next write.
        fs::write(&path, "[station]\nname = \"Ne").expect("write");
        let (loaded, notice) = load_or_backup(Some(&path), &[], &Overrides::default()).expect("backup");
        assert_eq!(loaded.config.station.name, "Old");
        assert_eq!(loaded.file.as_deref(), Some(path.as_path()));
        let notice = notice.expect("a notice");
        assert!(
            notice.contains("tower.toml.bak") && notice.contains("not valid TOML"),
            "{notice}"
        );
        // The next save repairs the file and keeps the good backup.
        FileStore { path: path.clone() }.save(&loaded.text, NEW).expect("save");
        assert_eq!(fs::read_to_string(&path).expect("read"), NEW);
        assert_eq!(fs::read_to_string(backup_path(&path)).expect("bak"), GOOD);
        // Without a backup, the error is the file's own.
        fs::remove_file(backup_path(&path)).expect("rm");
        fs::write(&path, "nonsense =").expect("write");
        assert!(load_or_backup(Some(&path), &[], &Overrides::default()).is_err());
    }

    #[test]
    fn without_a_file_the_packaged_defaults_are_published() {
        let dir = tempfile::tempdir().expect("tmp");
        let default = dir.path().join("defaults.toml");
        fs::write(&default, GOOD).expect("write");
        let publish = Publish {
            dir: dir.path().join("run"),
            default: Some(default),
        };
        fs::create_dir(&publish.dir).expect("mkdir");
        publish_copy(&dir.path().join("missing").join("tower.toml"), &publish).expect("publish");
        assert_eq!(fs::read_to_string(publish.dir.join("tower.toml")).expect("copy"), GOOD);
        assert!(!publish.dir.join("tower.toml.bak").exists());
    }

    #[test]
    fn the_helper_saves_what_loads_refuses_the_rest_and_answers_each_request() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = dir.path().join("spool");
        let publish = dir.path().join("run");
        for d in [spool.join(SPOOL_IN), spool.join(SPOOL_OUT), publish.clone()] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let target = dir.path().join("tower.toml");
        fs::write(&target, GOOD).expect("write");
        fs::write(spool.join(SPOOL_IN).join("1-1.toml"), "[pcm]\nbuffer_size = 1\n").expect("write");
        assert_eq!(commit(&spool, &target, None, None).expect("commit"), 0);
        let answer = fs::read_to_string(spool.join(SPOOL_OUT).join("1-1.result")).expect("answer");
        assert!(
            answer.starts_with("error: refused") && answer.contains("pcm.buffer_size"),
            "{answer}"
        );
        assert_eq!(fs::read_to_string(&target).expect("read"), GOOD);

        // Tower's side, answered by a helper running at the same time.
        let mut store = SpoolStore::new(spool.clone(), target.display().to_string());
        let publish = Publish {
            dir: publish,
            default: None,
        };
        let (s, t, p) = (spool.clone(), target.clone(), publish.clone());
        let helper = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if commit(&s, &t, None, Some(&p)).expect("commit") > 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        store.save(GOOD, NEW).expect("saved through the helper");
        helper.join().expect("helper");
        assert_eq!(fs::read_to_string(&target).expect("read"), NEW);
        assert_eq!(fs::read_to_string(publish.dir.join("tower.toml")).expect("copy"), NEW);
        assert_eq!(
            fs::read_to_string(publish.dir.join("tower.toml.bak")).expect("copy"),
            GOOD
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(publish.dir.join("tower.toml"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(fs::read_dir(spool.join(SPOOL_IN)).expect("dir").count(), 0);
    }

    #[test]
    fn a_request_the_helper_never_answers_is_withdrawn_or_said_to_be_in_doubt() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool = dir.path().join("spool");
        for d in [spool.join(SPOOL_IN), spool.join(SPOOL_OUT)] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let mut store = SpoolStore::new(spool.clone(), "tower.toml".into());
        store.timeout = Duration::from_millis(100);
        // No helper: withdrawn, so a helper started later cannot save it.
        let e = store.save(GOOD, NEW).expect_err("no answer");
        assert!(matches!(e, SaveError::NoAnswer(_)), "{e}");
        assert!(e.to_string().contains("nothing was saved"), "{e}");
        assert_eq!(fs::read_dir(spool.join(SPOOL_IN)).expect("dir").count(), 0);
        // A helper that takes the request and hangs: in doubt, and said so.
        let inbox = spool.join(SPOOL_IN);
        let taker = std::thread::spawn(move || {
            crate::testing::wait_until(Duration::from_secs(5), || {
                fs::read_dir(&inbox)
                    .expect("dir")
                    .filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .any(|e| fs::remove_file(e.path()).is_ok())
            })
        });
        let e = store.save(GOOD, NEW).expect_err("no answer");
        assert!(taker.join().expect("join"), "the request was never taken");
        assert!(matches!(e, SaveError::NoOutcome(_)), "{e}");
        assert!(e.to_string().contains("may have been saved"), "{e}");
    }

    #[test]
    fn the_backup_never_keeps_the_plain_admin_password() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tower.toml");
        let plain = "# mine\n[station]\nname = \"Old\"\n[admin]\npassword = \"my secret words\"\n";
        fs::write(&path, plain).expect("write");
        let hashed = "# mine\n[station]\nname = \"Old\"\n[admin]\npassword_hash = \"$argon2id$v=19$m=12288,t=3,p=1$c2FsdA$aGFzaA\"\n";
        FileStore { path: path.clone() }.save(plain, hashed).expect("save");
        let bak = fs::read_to_string(backup_path(&path)).expect("bak");
        assert!(!bak.contains("my secret words"), "{bak}");
        assert!(
            bak.contains("password_hash = \"$argon2id$"),
            "the backup still has the password: {bak}"
        );
        assert!(bak.contains("# mine") && bak.contains("name = \"Old\""), "{bak}");
        // A file without a plain password is kept as it is.
        assert_eq!(backup_text(GOOD, NEW), GOOD);
    }

    /// A spool (in/, out/) and a wifi.txt target in a temporary directory.
    fn wifi_spool(dir: &Path) -> (PathBuf, WifiTarget) {
        let spool = dir.join("spool");
        for d in [spool.join(SPOOL_IN), spool.join(SPOOL_OUT)] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let target = WifiTarget {
            path: dir.join("wifi.txt"),
            check: None,
        };
        (spool, target)
    }

    fn answer(spool: &Path, id: &str) -> String {
        fs::read_to_string(spool.join(SPOOL_OUT).join(format!("{id}.result"))).expect("answer")
    }

    #[test]
    fn a_wifi_request_is_checked_and_written_in_its_plain_form_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let (spool, wifi) = wifi_spool(dir.path());
        let config = dir.path().join("tower.toml");
        fs::write(&config, GOOD).expect("write");
        // Extra lines, comments and blanks: only country, ssid, psk reach the card.
        fs::write(
            spool.join(SPOOL_IN).join("1-1.wifi"),
            "# sneaky\ncountry=gb\nssid = Home net \npsk=\"correct horse\"\n",
        )
        .expect("write");
        assert_eq!(commit(&spool, &config, Some(&wifi), None).expect("commit"), 1);
        assert_eq!(answer(&spool, "1-1"), "ok\n");
        let written = fs::read_to_string(&wifi.path).expect("wifi.txt");
        assert!(!written.contains("sneaky"), "{written}");
        let back = crate::wifi::txt::parse(written.as_bytes(), "wifi.txt").expect("reads back");
        assert_eq!(
            (back.country.as_deref(), back.ssid.as_str(), back.psk.as_deref()),
            (Some("GB"), "Home net", Some("correct horse"))
        );
        assert_eq!(fs::read_to_string(&config).expect("read"), GOOD, "tower.toml untouched");
        // A bad one: refused with the reason (no password in it), nothing written.
        fs::write(spool.join(SPOOL_IN).join("1-2.wifi"), "ssid=Home\npsk=short\n").expect("write");
        fs::write(spool.join(SPOOL_IN).join("1-3.wifi"), "ssid=Home\nkey_mgmt=NONE\n").expect("write");
        assert_eq!(commit(&spool, &config, Some(&wifi), None).expect("commit"), 0);
        let refused = answer(&spool, "1-2");
        assert!(
            refused.contains("5 characters long") && !refused.contains("short"),
            "{refused}"
        );
        assert!(answer(&spool, "1-3").contains("unknown key \"key_mgmt\""));
        assert_eq!(fs::read_to_string(&wifi.path).expect("wifi.txt"), written);
        // Without a Wi-Fi target (the .deb), a request is refused.
        fs::write(spool.join(SPOOL_IN).join("1-4.wifi"), "ssid=Home\n").expect("write");
        commit(&spool, &config, None, None).expect("commit");
        assert!(answer(&spool, "1-4").contains("not managed"));
    }

    #[test]
    fn anything_else_in_the_spool_is_refused_and_removed_so_the_helper_is_not_started_again_and_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let (spool, wifi) = wifi_spool(dir.path());
        let config = dir.path().join("tower.toml");
        fs::write(&config, GOOD).expect("write");
        let inbox = spool.join(SPOOL_IN);
        fs::write(inbox.join("1-1.txt"), "ssid=Home\n").expect("write");
        fs::create_dir(inbox.join("1-2.toml")).expect("mkdir");
        std::os::unix::fs::symlink(&config, inbox.join("1-3.wifi")).expect("symlink");
        fs::write(inbox.join(".1-4.toml.part"), "half").expect("write");
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(inbox.join(".1-4.toml.part"))
            .and_then(|f| f.set_modified(old))
            .expect("age");
        fs::write(inbox.join(".1-5.toml.part"), "being written").expect("write");
        // A FIFO would hang a helper that opened it to read (no writer).
        nix::unistd::mkfifo(&inbox.join("1-6.toml"), nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        assert_eq!(commit(&spool, &config, Some(&wifi), None).expect("commit"), 0);
        assert!(answer(&spool, "1-1").starts_with("error: refused: not a request"));
        assert!(answer(&spool, "1-2").starts_with("error: refused: not a regular file"));
        assert!(answer(&spool, "1-3").starts_with("error: refused: not a regular file"));
        assert!(answer(&spool, "1-6").starts_with("error: refused: not a regular file"));
        let left: Vec<String> = fs::read_dir(&inbox)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, [".1-5.toml.part"], "only a request still being written stays");
        assert_eq!(
            fs::read_to_string(&config).expect("read"),
            GOOD,
            "the symlink's target is untouched"
        );
        assert!(!wifi.path.exists());
    }

    #[test]
    fn the_image_reader_is_asked_too_and_its_refusal_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let (spool, mut wifi) = wifi_spool(dir.path());
        let script = dir.path().join("wifi-setup");
        fs::write(
            &script,
            "[ \"$1\" = --check ] || exit 2\ngrep -q 'ssid=\"Home\"' \"$2\" && exit 0\necho \"error: $2: no, not that one\" >&2\nexit 1\n",
        )
        .expect("script");
        wifi.check = Some(script);
        let config = dir.path().join("tower.toml");
        fs::write(&config, GOOD).expect("write");
        fs::write(spool.join(SPOOL_IN).join("1-1.wifi"), "ssid=Home\n").expect("write");
        fs::write(spool.join(SPOOL_IN).join("1-2.wifi"), "ssid=Elsewhere\n").expect("write");
        assert_eq!(commit(&spool, &config, Some(&wifi), None).expect("commit"), 1);
        assert_eq!(answer(&spool, "1-1"), "ok\n");
        assert_eq!(answer(&spool, "1-2"), "error: refused: wifi.txt: no, not that one\n");
        assert!(fs::read_to_string(&wifi.path).expect("wifi").contains("ssid=\"Home\""));
    }

    #[test]
    fn a_request_is_handed_over_whole_without_opening_the_spool() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("7-1.toml");
        hand_over(&path, NEW).expect("hand over");
        assert_eq!(fs::read_to_string(&path).expect("read"), NEW);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1, "no part file left");
        // A name taken by a part file (another writer) is refused, and
        // that file left alone.
        fs::write(dir.path().join(".7-2.toml.part"), "other").expect("write");
        assert!(hand_over(&dir.path().join("7-2.toml"), NEW).is_err());
        assert_eq!(
            fs::read_to_string(dir.path().join(".7-2.toml.part")).expect("read"),
            "other"
        );
    }
}
