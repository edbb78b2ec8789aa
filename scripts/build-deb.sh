#!/usr/bin/env bash
# Builds Tower's Debian package: target/debian/tower_<version>_<arch>.deb
#
#   scripts/build-deb.sh                                  # this machine's architecture
#   scripts/build-deb.sh aarch64-unknown-linux-gnu        # arm64, Raspberry Pi OS 64-bit / Debian
#   scripts/build-deb.sh armv7-unknown-linux-gnueabihf    # armhf, Raspberry Pi OS 32-bit
#
# Cross targets need the toolchain from .cargo/config.toml. The package
# installs the binary, the systemd unit, the example config as
# /etc/tower/tower.toml (a conffile), creates the `tower` user (groups audio
# and gpio) and enables the service.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-}"
case "$target" in
    "") arch="$(dpkg --print-architecture)"; strip=strip; bin=target/release/tower ;;
    aarch64-unknown-linux-gnu) arch=arm64; strip=aarch64-linux-gnu-strip ;;
    armv7-unknown-linux-gnueabihf) arch=armhf; strip=arm-linux-gnueabihf-strip ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
esac
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"

# The release build leaves out the test hooks and fakes (feature
# test-hooks): everything else that is on by default.
features=(--no-default-features --features alsa-backend,gpio,rppal)
if [ -n "$target" ]; then
    cargo build --release --locked "${features[@]}" --target "$target"
    bin="target/$target/release/tower"
else
    cargo build --release --locked "${features[@]}"
fi

stage="target/debian/tower_${version}_${arch}"
rm -rf "$stage"
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
    "$stage/etc/tower" "$stage/usr/share/doc/tower"
"$strip" -o "$stage/usr/bin/tower" "$bin"
chmod 755 "$stage/usr/bin/tower"
install -m 644 systemd/tower.service "$stage/lib/systemd/system/tower.service"
install -m 644 tower.example.toml "$stage/etc/tower/tower.toml"
install -m 644 README.md "$stage/usr/share/doc/tower/README.md"
install -m 644 packaging/debian/copyright "$stage/usr/share/doc/tower/copyright"
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
echo /etc/tower/tower.toml > "$stage/DEBIAN/conffiles"
size_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: tower
Version: $version
Architecture: $arch
Maintainer: Tower developers <tower@localhost>
Installed-Size: $size_kb
Depends: libasound2 (>= 1.1), ffmpeg, passwd, libc6
Recommends: alsa-utils
Section: sound
Priority: optional
Homepage: http://tower.local:8000/
Description: LAN radio station: audio input to MP3 for every listener
 Tower captures an ALSA input (a turntable, a mixer, a scanner), encodes it
 with ffmpeg and streams it as MP3 to any number of listeners at
 http://HOST:8000/stream, with a status page at http://HOST:8000/.
 Listeners are never dropped on source loss, encoder crash or USB unplug.
CONTROL
dpkg-deb --build --root-owner-group "$stage" "target/debian/tower_${version}_${arch}.deb" >/dev/null
echo "target/debian/tower_${version}_${arch}.deb"
