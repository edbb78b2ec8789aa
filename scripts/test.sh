#!/usr/bin/env bash
# Installs what the tests need on Debian/Ubuntu and runs the whole suite:
# unit tests, and integration tests that drive the real tower binary with
# real ffmpeg, real sockets and real ALSA (through a JACK dummy server, so
# no sound card is needed), real players (mpv, ffmpeg, headless Chromium,
# GStreamer), a real UPnP renderer (gmediarender, in a network namespace the
# test makes), Icecast and Prometheus's promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install ffmpeg libasound2-dev pkg-config gcc curl ca-certificates jackd2 libasound2-plugins \
    mpv prometheus chromium chromium-driver icecast2 mosquitto mosquitto-clients \
    gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-base gmediarender iproute2
ensure_rust
cargo test "$@"
