#!/usr/bin/env bash
# Tower beside Debian's icecast2 and liquidsoap on this machine (issues 7
# and 16): installs what the comparison needs (icecast2, liquidsoap,
# ffmpeg, linux-perf, and jackd2 with libasound2-plugins for Tower's real
# ALSA capture path), then runs it. Prints one Markdown table (a column per
# server, Tower ÷ the best of the others, Tower's targets); every figure
# also goes to target/bench/compare.json. Parts (benches/compare.rs says
# how each is measured):
#   first    connect → first audio byte, 100 connects one after another
#   lag      clicks through each server: source → listener socket, and a
#            new listener's lag behind live
#   held     5, 100, 1000, 2000 listeners for 30 s each: held, dropped, settle,
#            first byte under load, CPU and RSS of the server and of the
#            whole chain (server + encoder process), memory per listener,
#            and system calls per listener-second (perf stat tracepoints,
#            less the same server at 0 listeners), which carry over to ARM;
#            and each server idle: CPU, system calls, wake-ups (by thread
#            for Tower)
#   side     Tower and Icecast with N listeners each at the same time, both
#            chains' CPU over the same windows (host noise lands on both)
#   pump     Tower's pump tick error with every core busy
#   encoder  Tower's ffmpeg command: CPU per audio-second for each LAME
#            -compression_level, output bytes, crude SNR
#   locked   Tower's RSS and VmLck (what its pump locks), as root and as
#            the systemd unit runs it (nobody, CAP_SYS_NICE, unit limits)
# The held and lag parts also run Tower at http.burst_ms = 400 (writes
# gather 8 frames, not 4): the CPU-for-lag trade-off.
# Everything runs on 127.0.0.1, stops by itself (about 25 minutes; --quick,
# 5 and 100 listeners for 5 s, about 5 minutes) and ends every process it
# started, also on Ctrl-C. Needs root or sudo for apt; the SCHED_FIFO
# figure and the locked part need root.
# Arguments go to the bench: --quick, --only first,lag,held,side,pump,encoder,locked,
# --listeners 5,100, --seconds S, --json PATH. Works at any hard open-file
# limit of 4096 or more (Tower shares it: listeners first).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
apt_install icecast2 liquidsoap linux-perf ffmpeg jackd2 libasound2-plugins libasound2-dev pkg-config gcc curl ca-certificates
ensure_rust
cargo bench --bench compare -- "$@"
