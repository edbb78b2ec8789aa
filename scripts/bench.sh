#!/usr/bin/env bash
# Tower and Debian's icecast2 side by side on this machine (issue 7):
# installs what the comparison needs (icecast2, ffmpeg, and jackd2 with
# libasound2-plugins for Tower's real ALSA capture path), then runs it.
# Prints a Markdown table; the same figures go to target/bench/compare.json.
# Everything runs on 127.0.0.1, stops by itself (about 8 minutes; --quick,
# 100 listeners for 5 s, about 2 minutes) and ends every process it
# started, also on Ctrl-C. Needs root or sudo for apt; the SCHED_FIFO
# figure needs root (otherwise both pump rows are without real time).
# Arguments go to the bench: --quick, --only first,lag,held,pump,
# --listeners 100,500, --seconds S, --json PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install icecast2 ffmpeg jackd2 libasound2-plugins libasound2-dev pkg-config gcc curl ca-certificates
ensure_rust
cargo bench --bench compare -- "$@"
