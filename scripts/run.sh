#!/usr/bin/env bash
# Installs what Tower needs on Debian/Ubuntu, builds it, and runs it in the
# foreground. Listen at http://THIS-HOST:8000/stream. With no sound card
# it streams silence for 5 s, then the 440 Hz fallback tone.
# Extra arguments go to tower (e.g. --device plughw:CARD=Device,DEV=0).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install ffmpeg libasound2-dev pkg-config gcc curl ca-certificates
ensure_rust
cargo build --release
exec ./target/release/tower "$@"
