#!/usr/bin/env bash
# Soak test: Tower capturing through real ALSA (a JACK dummy server, no
# sound card needed), 50 listeners, and a fault every 2 minutes in turn:
# ffmpeg SIGKILL, ffmpeg SIGSTOP for 3 s, the capture device (JACK) killed
# and restarted, the pump stalled through the test hook. At the end it
# prints disconnects, lag drift, RSS growth, descriptors and restarts by
# cause, and exits non-zero when a bound is passed (tests/soak.rs).
#
#   scripts/soak.sh [DURATION]          e.g. scripts/soak.sh 30m (default 3m)
#   SOAK_FAULT_EVERY=75s scripts/soak.sh 6m   faults more often
#
# Needs ffmpeg, jackd2 and libasound2-plugins (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in ffmpeg jackd jack_lsp; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing (apt-get install ffmpeg jackd2 libasound2-plugins)" >&2; exit 2; }
done
export TOWER_SOAK_DURATION="${1:-3m}"
export TOWER_SOAK_FAULT_EVERY="${SOAK_FAULT_EVERY:-2m}"
exec cargo test --release --test soak -- --ignored --nocapture
