# Shared by image/build and image/boot-test: host programs, checked by the
# commands themselves rather than by dpkg's status (a machine can list a
# package as installed while its program is missing).
# shellcheck shell=bash

# need_commands "command:package ...": installs the packages of missing
# commands (reinstalls those dpkg calls installed), then fails if any
# command is still missing.
need_commands() {
    local pair pkg missing=() reinstall=()
    for pair in $1; do
        command -v "${pair%%:*}" >/dev/null 2>&1 && continue
        pkg="${pair#*:}"
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            reinstall+=("$pkg")
        else
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        echo "      installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    if [ ${#reinstall[@]} -gt 0 ]; then
        mapfile -t reinstall < <(printf '%s\n' "${reinstall[@]}" | sort -u)
        echo "      reinstalling ${reinstall[*]} (installed, but a program is missing)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --reinstall "${reinstall[@]}" >/dev/null
    fi
    for pair in $1; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || { echo "${pair%%:*} is still missing (package ${pair#*:})" >&2; return 1; }
    done
}

# need_qemu MIN: qemu-system-aarch64 and qemu-img from one QEMU version, at
# least MIN (e.g. 8.2), in one apt transaction. qemu-system-arm and
# qemu-utils must match: bookworm's qemu-system-arm 7.2 conflicts with
# backports' qemu-utils 10, so installing one alone removes the other (and
# its program). The version is the one of whichever is installed already,
# if it is new enough; else apt's candidate, if new enough; else the
# distribution's backports (added as a source when apt does not list it).
need_qemu() {
    local min="$1" pkgs=(qemu-system-arm qemu-utils) p v="" suite=""
    if command -v qemu-system-aarch64 >/dev/null 2>&1 && command -v qemu-img >/dev/null 2>&1; then
        qemu_same_version "$min" && return 0
        echo "      installing QEMU again"
    fi
    for p in "${pkgs[@]}"; do
        v="$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null | sed -n 's/^install ok installed //p')"
        [ -n "$v" ] || continue
        if dpkg --compare-versions "$v" ge "1:$min~"; then
            echo "      $p $v is installed: installing ${pkgs[*]} at $v"
            break
        fi
        echo "      $p $v is installed, older than $min"
        v=""
    done
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    if [ -n "$v" ]; then
        suite="$(qemu_suite "$v")"
        if [ -z "$suite" ] && [[ "$v" == *~bpo* ]]; then
            qemu_backports
            suite="$(qemu_suite "$v")"
        fi
        [ -n "$suite" ] || echo "      no configured source has both ${pkgs[*]} at $v"
    fi
    if [ -z "$suite" ]; then
        v="$(apt-cache policy qemu-system-arm | sed -n 's/^ *Candidate: //p')"
        if [ "$v" = "(none)" ] || ! dpkg --compare-versions "$v" ge "1:$min~"; then
            echo "      apt's qemu-system-arm is ${v:-none}, older than $min: taking backports'"
            qemu_backports
            v="$(apt-cache madison qemu-system-arm | awk -F' [|] ' '$3 ~ /-backports\// { print $2; exit }')"
        fi
        suite="$(qemu_suite "$v")"
    fi
    if [ -z "$suite" ] || ! dpkg --compare-versions "$v" ge "1:$min~"; then
        echo "no source has qemu-system-arm and qemu-utils $min or later at one version (apt-cache policy qemu-system-arm)" >&2
        return 1
    fi
    echo "      apt-get install -t $suite ${pkgs[*]/%/=$v}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --reinstall --allow-downgrades \
        -t "$suite" "${pkgs[@]/%/=$v}" >/dev/null
    for p in qemu-system-aarch64:qemu-system-arm qemu-img:qemu-utils; do
        command -v "${p%%:*}" >/dev/null 2>&1 || { echo "${p%%:*} is still missing (package ${p#*:} $v)" >&2; return 1; }
    done
    qemu_same_version "$min"
}

# Adds this distribution's backports as an apt source, unless apt lists it.
qemu_backports() {
    local codename src=/etc/apt/sources.list.d/tower-image-backports.sources
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || return 0
    apt-cache policy | grep -q " $codename-backports/" && return 0
    echo "      adding $codename-backports as an apt source ($src)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$codename" | as_root tee "$src" >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
}

# qemu_suite VERSION: the suite (e.g. bookworm-backports) that has both
# qemu-system-arm and qemu-utils at VERSION; empty when none does.
qemu_suite() {
    local p s="" found
    for p in qemu-system-arm qemu-utils; do
        found="$(apt-cache madison "$p" | awk -F' [|] ' -v v="$1" '$2 == v { split($3, a, " "); split(a[2], b, "/"); print b[1]; exit }')"
        [ -n "$found" ] || return 0
        s="$found"
    done
    echo "$s"
}

# Both programs report one QEMU version, at least $1.
qemu_same_version() {
    local sys img
    sys="$(qemu-system-aarch64 --version | sed -n '1s/^QEMU emulator version \([^ ]*\).*/\1/p')"
    img="$(qemu-img --version | sed -n '1s/^qemu-img version \([^ ]*\).*/\1/p')"
    echo "      qemu-system-aarch64 $sys, qemu-img $img"
    if [ -z "$sys" ] || [ "$sys" != "$img" ]; then
        echo "      qemu-system-aarch64 ($sys) and qemu-img ($img) differ" >&2
        return 1
    fi
    if ! dpkg --compare-versions "$sys" ge "$1"; then
        echo "      QEMU $sys is older than $1" >&2
        return 1
    fi
}
