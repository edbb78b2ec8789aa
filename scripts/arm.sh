#!/usr/bin/env bash
# Builds Tower for the Raspberry Pi (aarch64) with Debian's cross toolchain,
# runs the library's unit tests for aarch64 under qemu-user, builds the
# hardware checks and the arm64 .deb, and prints the stripped binary size.
# No Docker needed (for `cross`, see Cross.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
T=aarch64-unknown-linux-gnu
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    as_root dpkg --add-architecture arm64
fi
apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64 qemu-user-static binutils-aarch64-linux-gnu
ensure_rust
rustup target add "$T" >/dev/null 2>&1 || rustup target add "$T"

cargo build --release --locked --target "$T" --workspace
cargo test --locked --lib --target "$T"
deb="$(scripts/build-deb.sh "$T" | tail -n1)"
size="$(stat -c %s "target/debian/tower_$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)_arm64/usr/bin/tower")"
echo "aarch64: stripped tower binary $((size / 1024)) KiB; package $deb ($(( $(stat -c %s "$deb") / 1024 )) KiB)"
