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
