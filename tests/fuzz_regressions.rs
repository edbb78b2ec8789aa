//! Replays every input the fuzzers ever found (`fuzz/regressions/<target>/`)
//! and the seed corpus through the same checks the fuzz targets run, on
//! every test run, without a nightly toolchain.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            eprintln!("{}", path.display());
            check(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_inputs_found_before_still_pass() {
    assert!(
        replay("request", tower::fuzzing::request) > 0,
        "request seeds are missing"
    );
    assert!(replay("config", tower::fuzzing::config) > 0, "config seeds are missing");
    replay("mp3", tower::fuzzing::mp3);
}
