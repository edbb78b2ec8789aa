#!/usr/bin/env bash
# Fuzzes what Tower reads from outside — MP3 from ffmpeg, HTTP request heads,
# the configuration file — with cargo-fuzz (libFuzzer), each target for
# SECONDS (default 60), and prints executions and coverage per target.
#
#   scripts/fuzz.sh          # 60 s per target
#   scripts/fuzz.sh 600      # 10 min per target
#
# A crash fails the run and its input is copied to fuzz/regressions/<target>/:
# commit it with the fix, and `cargo test --test fuzz_regressions` replays it
# on every test run from then on. Needs the nightly toolchain (installed here
# if missing); the corpus grows in fuzz/corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install gcc g++ make pkg-config libasound2-dev
ensure_rust
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

secs="${1:-60}"
failed=0
summary=""
for t in mp3 request config; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    [ "$t" = config ] && cp tower.example.toml fuzz/corpus/config/tower.example.toml
    log="fuzz/artifacts/$t.log"
    echo "== fuzzing $t for ${secs}s"
    if ! (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" "../fuzz/seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024) >"$log" 2>&1; then
        failed=1
        mkdir -p "fuzz/regressions/$t"
        for crash in fuzz/artifacts/"$t"/crash-* fuzz/artifacts/"$t"/timeout-* fuzz/artifacts/"$t"/oom-*; do
            [ -e "$crash" ] && cp "$crash" "fuzz/regressions/$t/" && echo "   kept $crash in fuzz/regressions/$t/"
        done
        tail -n 40 "$log"
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)"
    ft="$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)"
    corpus="$(find "fuzz/corpus/$t" -type f | wc -l)"
    line="$t: ${runs:-?} executions in ${secs}s, coverage ${cov:-?} edges (${ft:-?} features), corpus $corpus inputs"
    echo "   $line"
    summary="$summary$line"$'\n'
done
echo
echo "Fuzzing summary:"
printf '%s' "$summary"
exit "$failed"
