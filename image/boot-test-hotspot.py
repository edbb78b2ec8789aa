#!/usr/bin/env python3
"""image/boot-test's host side of a setup-hotspot boot (issue 24): the
Ethernet cable and the power.

usage: boot-test-hotspot.py SERIAL_LOG QMP_SOCKET QEMU_PID MODE TIMEOUT_S

Pulls the guest's Ethernet cable out (QMP set_link off) as soon as QEMU
answers, so the box boots without a wired link; then follows the guest's
report (image/boot-test.d's hotspot script): "host: cable in" / "host:
cable out" set the link; in MODE cut, "posted: ..." (the phone's save was
answered) makes it SIGKILL QEMU at once, a power cut during the switch.
Returns when the guest says "hotspot: done", QEMU has gone, or after
TIMEOUT_S. Prints what it did, one line each, with times since it started.
"""
import json
import os
import signal
import socket
import sys
import time

log_path, qmp_path, qemu_pid, mode, timeout_s = sys.argv[1:6]
qemu_pid, timeout_s = int(qemu_pid), float(timeout_s)
t0 = time.time()


def say(text):
    print("[%.1f s] %s" % (time.time() - t0, text), flush=True)


def alive():
    try:
        os.kill(qemu_pid, 0)
        return True
    except OSError:
        return False


def set_link(up):
    """QMP set_link on the NIC's netdev ("net"); "" when done, else why."""
    deadline = time.time() + 15
    while time.time() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.settimeout(5)
            s.connect(qmp_path)
            f = s.makefile("rw")
            f.readline()
            f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
            f.flush()
            f.readline()
            f.write(json.dumps({"execute": "set_link", "arguments": {"name": "net", "up": up}}) + "\n")
            f.flush()
            while True:
                answer = json.loads(f.readline())
                if "return" in answer:
                    return ""
                if "error" in answer:
                    return answer["error"].get("desc", "error")
        except (OSError, ValueError):
            time.sleep(0.1)
        finally:
            s.close()
    return "no QMP socket"


why = set_link(False)
say("Ethernet cable out at start (QMP set_link net off): %s" % (why or "done"))
seen = 0
while time.time() - t0 < timeout_s:
    if not alive():
        say("QEMU has gone")
        break
    try:
        with open(log_path, "rb") as f:
            f.seek(seen)
            chunk = f.read()
    except OSError:
        chunk = b""
    # Whole lines only: a line cut in half is read again next time.
    end = chunk.rfind(b"\n") + 1
    seen += end
    for line in chunk[:end].decode("utf-8", errors="replace").split("\n"):
        if "TOWER-SELFTEST: hotspot: host: cable in" in line:
            say("cable in (set_link on): %s" % (set_link(True) or "done"))
        elif "TOWER-SELFTEST: hotspot: host: cable out" in line:
            say("cable out (set_link off): %s" % (set_link(False) or "done"))
        elif mode == "cut" and "TOWER-SELFTEST: hotspot: posted: " in line:
            os.kill(qemu_pid, signal.SIGKILL)
            say("power cut: SIGKILL to QEMU as the guest reported the answer (%s)"
                % line.split("posted: ", 1)[1].strip()[:120])
        elif "TOWER-SELFTEST: hotspot: done" in line:
            say("the guest is done")
            sys.exit(0)
    time.sleep(0.1)
else:
    say("timed out after %.0f s" % timeout_s)
