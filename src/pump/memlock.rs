//! Locking the pump's memory [A4], and only the pump's.
//!
//! A page the pump needs must never be read back from the SD card in the
//! middle of a tick: under memory pressure the kernel drops clean file
//! pages (code, on a read-only root) and would fault them back in. So the
//! pump locks what its tick touches: the code and data of Tower's
//! executable and of the runtime libraries it calls (the C library, libm,
//! libgcc_s, the dynamic loader), the main heap, and its own stack. Each
//! page is locked when it is first touched (`MLOCK_ONFAULT`), so locking
//! does not fault in whole libraries or inflate RSS.
//!
//! Not locked: other threads' stacks, malloc's per-thread arenas (the
//! frames passing through are freshly written by their producer, never
//! cold), and what devices map, such as JACK's shared memory (about 100 MB)
//! or ALSA plug-in libraries. `mlockall` would lock them all: with JACK
//! capture, Tower then held 180 MB of locked address space for a pump
//! that touches a few hundred kB.
//!
//! Called by the pump thread only, once, at its start.

use std::ops::Range;
use std::path::Path;

/// Libraries the pump's tick calls into, by file-name prefix.
const RUNTIME_LIBRARIES: &[&str] = &["libc.so", "libm.so", "libgcc_s.so", "ld-linux", "libpthread.so"];

/// What was locked: address ranges and their total size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Locked {
    pub ranges: usize,
    pub bytes: usize,
}

/// The mappings of `/proc/self/maps` (text in `maps`) the pump's tick
/// touches: those of the executable at `exe`, of the runtime libraries,
/// the `[heap]`, and the one holding `stack` (an address on the calling
/// thread's stack). Inaccessible mappings (guard pages) are left out.
pub fn realtime_ranges(maps: &str, exe: &Path, stack: usize) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
            let perms = fields.next()?;
            // offset, device, inode; the path is the rest (it may hold spaces).
            let path = fields.nth(3).map(|first| {
                let at = line.find(first).unwrap_or(line.len());
                line[at..].trim_end()
            });
            if perms.starts_with("---") {
                return None;
            }
            let wanted = match path {
                Some("[heap]") => true,
                Some(p) if Path::new(p) == exe => true,
                Some(p) => Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| RUNTIME_LIBRARIES.iter().any(|lib| n.starts_with(lib))),
                None => false,
            };
            (wanted || range.contains(&stack)).then_some(range)
        })
        .collect()
}

/// Locks [`realtime_ranges`] of this process, for the calling thread's
/// stack: all of them, or (on an error, such as a memory-lock limit below
/// their size) none. Kernels before 4.4 have no `MLOCK_ONFAULT`: there the
/// same ranges are locked whole.
pub fn lock_realtime_memory() -> std::io::Result<Locked> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let exe = std::fs::read_link("/proc/self/exe")?;
    let marker = 0u8;
    let stack = std::hint::black_box(&raw const marker) as usize;
    let ranges = realtime_ranges(&maps, &exe, stack);
    for (i, range) in ranges.iter().enumerate() {
        if let Err(e) = lock(range) {
            for done in &ranges[..i] {
                // SAFETY: unlocks pages of this process's own mappings.
                unsafe { libc::munlock(done.start as *const libc::c_void, done.len()) };
            }
            return Err(e);
        }
    }
    Ok(Locked {
        ranges: ranges.len(),
        bytes: ranges.iter().map(|r| r.len()).sum(),
    })
}

fn lock(range: &Range<usize>) -> std::io::Result<()> {
    let (addr, len) = (range.start as *const libc::c_void, range.len());
    // SAFETY: mlock2/mlock only change the locking of pages of this
    // process's own mappings, taken from /proc/self/maps; a range that has
    // since gone makes the call fail (ENOMEM), nothing else.
    if unsafe { libc::mlock2(addr, len, libc::MLOCK_ONFAULT) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(err);
    }
    // SAFETY: as above.
    if unsafe { libc::mlock(addr, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 100 /usr/bin/tower
55d0a0100000-55d0a0400000 r-xp 00100000 fe:00 100 /usr/bin/tower
55d0a0400000-55d0a0410000 rw-p 00400000 fe:00 100 /usr/bin/tower
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000000000-7f1006600000 rw-s 00000000 00:1b 2369 /dev/shm/jack-0-0
7f2000000000-7f2000200000 r-xp 00028000 fe:00 200 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2000300000-7f2000310000 r-xp 00010000 fe:00 201 /usr/lib/x86_64-linux-gnu/libm.so.6
7f2000400000-7f2000480000 r-xp 00010000 fe:00 202 /usr/lib/x86_64-linux-gnu/libasound.so.2.0.0
7f2000500000-7f2000510000 r-xp 00010000 fe:00 203 /usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_jack.so
7f3000000000-7f3000001000 ---p 00000000 00:00 0
7f3000001000-7f3000041000 rw-p 00000000 00:00 0
7f4000000000-7f4000001000 ---p 00000000 00:00 0
7f4000001000-7f4000041000 rw-p 00000000 00:00 0
7f5000000000-7f5000020000 r-xp 00001000 fe:00 204 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn only_what_the_pump_touches_is_chosen() {
        let stack = 0x7f30_0002_0000; // in the first thread stack, not its guard
        let got = realtime_ranges(MAPS, Path::new("/usr/bin/tower"), stack);
        let starts: Vec<usize> = got.iter().map(|r| r.start).collect();
        assert_eq!(
            starts,
            [
                0x55d0_a000_0000, // the executable, all three segments
                0x55d0_a010_0000,
                0x55d0_a040_0000,
                0x55d0_a100_0000, // [heap]
                0x7f20_0000_0000, // libc
                0x7f20_0030_0000, // libm
                0x7f30_0000_1000, // the pump's own stack
                0x7f50_0000_0000, // the loader
            ]
        );
        // Not JACK's shared memory, not ALSA and its plug-ins, not another
        // thread's stack, not the main stack, not guard pages.
        assert!(got.iter().all(|r| r.len() < 0x100_0000), "{got:x?}");
    }

    #[test]
    fn a_path_with_spaces_is_read_whole_and_garbage_is_skipped() {
        let maps = "55d0a0000000-55d0a0100000 r-xp 00000000 fe:00 100 /opt/my tower/tower\n";
        let got = realtime_ranges(maps, Path::new("/opt/my tower/tower"), 0);
        assert_eq!(got.len(), 1);
        assert!(realtime_ranges("garbage\n\n1-2\n", Path::new("/x"), 0).is_empty());
    }

    #[test]
    fn locking_this_thread_locks_a_bounded_set() {
        // Needs the right to lock (root, or RLIMIT_MEMLOCK): say so otherwise.
        match lock_realtime_memory() {
            Ok(l) => {
                assert!(l.ranges >= 3, "{l:?}");
                // The test binary, libc and a stack: megabytes, not the
                // whole address space.
                assert!(l.bytes < 256 << 20, "{l:?}");
                let status = std::fs::read_to_string("/proc/self/status").expect("status");
                let vm_lck = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmLck:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<usize>().ok())
                    .expect("VmLck");
                assert!(vm_lck > 0, "{status}");
            }
            Err(e) => eprintln!("memory not locked here ({e}): nothing to check"),
        }
    }
}
