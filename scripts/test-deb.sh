#!/usr/bin/env bash
# Checks the Debian package and the systemd unit on this machine:
# - builds the .deb for this architecture and installs it with dpkg into a
#   throwaway root (no container: dpkg --root, maintainer scripts run
#   chrootless with DPKG_ROOT), then checks that every file lands where the
#   unit expects it, the user and groups exist, the service is enabled, and
#   the installed binary accepts the installed configuration;
# - rates the unit with `systemd-analyze security` (must be <= 2.0).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install systemd passwd dpkg-dev binutils curl
ensure_rust

deb="$(scripts/build-deb.sh | tail -n1)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A minimal root: dpkg's database, and the accounts useradd edits.
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\naudio:x:29:\n' > "$root/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
printf 'root:*::\naudio:*::\n' > "$root/etc/gshadow"
cp /etc/login.defs "$root/etc/"
dpkg --root="$root" --force-script-chrootless --force-depends --force-not-root -i "$deb" >/dev/null

unit="$root/lib/systemd/system/tower.service"
[ -f "$unit" ] || fail "no unit at /lib/systemd/system/tower.service"
exec_start="$(sed -n 's/^ExecStart=//p' "$unit")"
bin="$(echo "$exec_start" | awk '{print $1}')"
conf="$(echo "$exec_start" | sed -n 's/.*--config \([^ ]*\).*/\1/p')"
[ -x "$root$bin" ] || fail "ExecStart binary $bin is not installed"
[ -f "$root$conf" ] || fail "ExecStart config $conf is not installed"
grep -qx "$conf" "$root/var/lib/dpkg/info/tower.conffiles" || fail "$conf is not a conffile"
[ "$(stat -c %a "$root$conf")" = 660 ] || fail "$conf is not mode 660"
conf_dir="$(dirname "$conf")"
[ "$(stat -c %a "$root$conf_dir")" = 2770 ] || fail "$conf_dir is not mode 2770 (the settings page saves there)"
tower_gid="$(awk -F: '$1 == "tower" { print $3 }' "$root/etc/group")"
[ "$(stat -c %g "$root$conf_dir")" = "$tower_gid" ] || fail "$conf_dir is not group tower"
grep -qx "ReadWritePaths=-$conf_dir" "$unit" || fail "the unit does not let Tower write $conf_dir"
grep -q '^tower:' "$root/etc/passwd" || fail "no tower user"
user_line="$(grep '^tower:' "$root/etc/passwd")"
case "$user_line" in *:/usr/sbin/nologin) ;; *) fail "tower user can log in: $user_line" ;; esac
grep -q '^gpio:' "$root/etc/group" || fail "no gpio group"
for g in audio gpio; do
    grep "^$g:" "$root/etc/group" | grep -q 'tower' || fail "tower is not in group $g"
done
grep -q "^User=tower$" "$unit" || fail "the unit does not run as tower"
[ -L "$root/etc/systemd/system/multi-user.target.wants/tower.service" ] || fail "the service is not enabled"
[ -f "$root/usr/share/doc/tower/copyright" ] || fail "no copyright file"
"$root$bin" --config "$root$conf" --print-config >/dev/null || fail "the installed binary rejects the installed config"
echo "package: $deb installs its files where the unit expects them"

# The packaged binary has no test hooks: a token is refused, /test/* is 404.
log="$root/hooks.log"
TOWER_TEST_HOOKS=0123456789abcdef0123 "$root$bin" --listen 127.0.0.1:0 \
    --device tower_test_no_such_device > "$log" 2>&1 &
pid=$!
port=""
for _ in $(seq 100); do
    port="$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/stream.*|\1|p' "$log" | head -n1)"
    [ -n "$port" ] && break
    sleep 0.1
done
code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer 0123456789abcdef0123' \
    "http://127.0.0.1:${port:-1}/test/panic?worker=pump" || true)"
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
grep -q "this build has no test hooks" "$log" || fail "the packaged binary did not refuse the test hooks: $(cat "$log")"
[ "$code" = 404 ] || fail "POST /test/panic answered $code in the packaged binary (want 404)"
echo "package: the binary has no test hooks (token refused, /test/panic 404)"

score="$(systemd-analyze security --offline=true systemd/tower.service 2>/dev/null | sed -n 's/.*Overall exposure level for tower.service: \([0-9.]*\).*/\1/p')"
[ -n "$score" ] || fail "systemd-analyze gave no rating"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "unit exposure $score > 2.0"
echo "unit: systemd-analyze security exposure $score (target <= 2.0)"
