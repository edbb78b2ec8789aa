#!/usr/bin/env bash
# Installs what Tower needs on Debian/Ubuntu, builds it, and runs it in the
# foreground. Listen at http://THIS-HOST:8000/stream. With no sound card
# it streams silence for 5 s, then the 440 Hz fallback tone.
# Extra arguments go to tower (e.g. --device plughw:CARD=Device,DEV=0).
# The configuration is $TOWER_CONFIG, else ~/.config/tower/tower.toml
# (made from tower.example.toml the first time), so that changes made on
# http://THIS-HOST:8000/settings are saved and kept.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install ffmpeg libasound2-dev pkg-config gcc curl ca-certificates
ensure_rust
cargo build --release
export TOWER_CONFIG="${TOWER_CONFIG:-$HOME/.config/tower/tower.toml}"
if [ ! -e "$TOWER_CONFIG" ]; then
    mkdir -p "$(dirname "$TOWER_CONFIG")"
    install -m 600 tower.example.toml "$TOWER_CONFIG"
    echo "run.sh: made $TOWER_CONFIG from tower.example.toml (the settings page saves there)"
fi
exec ./target/release/tower "$@"
