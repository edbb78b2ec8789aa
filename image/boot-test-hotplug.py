#!/usr/bin/env python3
"""image/boot-test's hot-plug of a capture card into the running -M virt
guest, with one listener connected throughout. Prints one line per check as
"PASS|check|figure" or "FAIL|check|figure".

usage: boot-test-hotplug.py PORT MONITOR_SOCKET WORKDIR TONE_HZ BUDGET_S

  1. A listener connects to /stream (the guest has no sound card yet:
     Tower plays its 440 Hz fallback) and reads for 6 s.
  2. QMP's device_add plugs a virtio-sound-pci card (one output stream, one
     input) into the spare PCIe root port "spare", timed on this host's
     clock. Its input is the host's TONE_HZ tone (QEMU's ALSA audiodev
     "tone", paced by a JACK dummy server). Not an Intel HDA: QEMU's HDA
     codec bus refuses device_add ("Bus 'hotplug-hda.0' does not support
     hotplugging"), and a controller plugged in alone probes no codec
     ("no codecs found!"), both seen here.
  3. /status is read every 0.1 s until input.device names another card and
     input.state is "live": "Tower uses the card".
  4. The listener reads on to 12 s after the plug, then its MP3 is decoded
     (ffmpeg) and cut into 100 ms windows. The first window where the tone
     carries most of the energy (neither the 440 Hz fallback nor silence
     can) is "the card's audio"; its time is when the MP3 frame that
     carries it reached the listener (Tower's frames are 384 bytes, 1152
     samples: 128 kbit/s at 48 kHz). How many of the next 20 windows (2 s)
     hold the tone is printed too: gaps there are capture dropouts.
Both times must be within BUDGET_S of device_add (issue: 2 s), the listener's
connection open throughout.
"""
import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

port, monitor_path, work, tone_hz, budget = sys.argv[1:6]
port, tone_hz, budget = int(port), float(tone_hz), float(budget)
RATE, WINDOW, FRAME_BYTES, FRAME_SAMPLES = 48000, 4800, 384, 1152


def out(ok, check, figure):
    print("%s|%s|%s" % ("PASS" if ok else "FAIL", check, figure.replace("|", "/")), flush=True)


class Listener(threading.Thread):
    """One connection to /stream: the body's bytes and when each read ended."""

    def __init__(self):
        super().__init__(name="listener", daemon=True)
        self.body, self.arrivals, self.closed, self.stop = bytearray(), [], None, threading.Event()

    def run(self):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: tower\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, rest = head.split(b"\r\n\r\n", 1)
        self.status = head.split(b"\r\n")[0].decode(errors="replace")
        self.body += rest
        self.arrivals.append((time.time(), len(self.body)))
        while not self.stop.is_set():
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                self.closed = "no byte for 10 s"
                break
            if not chunk:
                self.closed = "closed by Tower"
                break
            self.body += chunk
            self.arrivals.append((time.time(), len(self.body)))
        s.close()

    def arrival_of(self, offset):
        """When the byte at offset had arrived."""
        return next((t for t, n in self.arrivals if n > offset), None)


def status():
    try:
        # As "localhost": Tower answers /status only to names it knows.
        rq = urllib.request.Request("http://127.0.0.1:%d/status" % port, headers={"Host": "localhost:%d" % port})
        with urllib.request.urlopen(rq, timeout=2) as r:
            inp = json.load(r).get("input") or {}
            return (inp.get("device") or {}).get("name", ""), inp.get("state", "")
    except (OSError, ValueError):
        return "", ""


def qmp(command, **arguments):
    """One QMP command on QEMU's monitor socket: "" when QEMU returned, else
    its error."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(monitor_path)
    f = s.makefile("rw")
    f.readline()  # the greeting
    answer = ""
    for c, a in (("qmp_capabilities", {}), (command, arguments)):
        f.write(json.dumps({"execute": c, "arguments": a}) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                break
        if "error" in reply:
            answer = reply["error"].get("desc", str(reply["error"]))
            break
    s.close()
    return answer


def share(x, f):
    """Goertzel: the share of x's energy at f (1.0 for a pure tone)."""
    energy = sum(v * v for v in x) or 1
    w = 2 * math.cos(2 * math.pi * f / RATE)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + w * s1 - s2, s1
    return 2 * (s1 * s1 + s2 * s2 - w * s1 * s2) / (len(x) * energy), math.sqrt(energy / len(x))


listener = Listener()
listener.start()
time.sleep(6)
before_device, before_state = status()
t_plug = time.time()
said = qmp("device_add", driver="virtio-sound-pci", id="hotplug-card", bus="spare", audiodev="tone")
t_used, device, state = None, before_device, before_state
while time.time() - t_plug < 30:
    device, state = status()
    if device and device != before_device and state == "live":
        t_used = time.time()
        break
    time.sleep(0.1)
while time.time() - t_plug < 12 and listener.closed is None:
    time.sleep(0.2)
listener.stop.set()
listener.join(15)
t_end = time.time()

# The listener's MP3, decoded from its first frame.
body = bytes(listener.body)
start = next((i for i in range(min(len(body), 4 * FRAME_BYTES)) if body[i] == 0xFF and body[i + 1] & 0xE0 == 0xE0), 0)
mp3 = os.path.join(work, "hotplug-listener.mp3")
with open(mp3, "wb") as f:
    f.write(body[start:])
pcm = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "mp3", "-i", mp3,
                      "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"], capture_output=True).stdout
x = struct.unpack("<%dh" % (len(pcm) // 2), pcm[: len(pcm) // 2 * 2])
windows = [share(x[i:i + WINDOW], tone_hz) + share(x[i:i + WINDOW], 440.0)[:1] for i in range(0, len(x) - WINDOW, WINDOW)]
def tone(w):
    return w[0] > 0.5 and w[1] > 300


onset = next((i for i, w in enumerate(windows) if tone(w)), None)
t_plug_offset = next((n for t, n in listener.arrivals if t >= t_plug), len(body)) - start
plug_window = t_plug_offset // FRAME_BYTES * FRAME_SAMPLES // WINDOW
fallback = [w[2] for w in windows[max(0, plug_window - 20):plug_window]]
fallback_share = sum(fallback) / len(fallback) if fallback else 0.0
t_audio = None
if onset is not None:
    t_audio = listener.arrival_of(start + onset * WINDOW // FRAME_SAMPLES * FRAME_BYTES + FRAME_BYTES - 1)

gaps = [b[0] - a[0] for a, b in zip(listener.arrivals, listener.arrivals[1:])]
connected = listener.arrivals[0][0] if listener.arrivals else t_plug
span = t_end - connected
conn = "%s; %d bytes in %.1f s (%.0f B/s), longest wait between reads %.2f s" % (
    listener.status if hasattr(listener, "status") else "no answer", len(body), span, len(body) / span if span else 0,
    max(gaps) if gaps else 0)
ok = listener.closed is None and gaps and max(gaps) < 1.0 and connected < t_plug - 3
out(ok, "hot-plug: one listener connected throughout",
    "connected %.1f s before device_add, to %.1f s after: %s%s; before the plug: %s (%s), 440 Hz share %.2f"
    % (t_plug - connected, t_end - t_plug, conn, "; " + listener.closed if listener.closed else "",
       before_device or "no device", before_state, fallback_share))
out(t_used is not None and t_used - t_plug <= budget and not said,
    "hot-plug: Tower captures from the plugged card",
    "device_add -> /status input.device %s, input.state live: %s (monitor: %s)"
    % (device, "%.2f s" % (t_used - t_plug) if t_used else "not within 30 s (last: %s)" % state,
       said or "device_add returned"))
figure = "device_add -> the first MP3 frame of the %g Hz tone at the listener: %s" % (
    tone_hz, "%.2f s" % (t_audio - t_plug) if t_audio else "never")
if onset is not None:
    after = windows[onset:onset + 20]
    figure += "; the tone in %d of the 20 windows of 100 ms from there (share at %g Hz %.2f, rms %.0f at the first)" % (
        sum(map(tone, after)), tone_hz, windows[onset][0], windows[onset][1])
out(t_audio is not None and t_audio - t_plug <= budget and ok, "hot-plug: the card's tone on /stream within %g s" % budget, figure)
