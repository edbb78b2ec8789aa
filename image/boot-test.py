#!/usr/bin/env python3
"""image/boot-test's judge of one boot: reads the guest's serial log (the
lines of image/boot-test.d's units) and Tower's /status, and prints one line
per check as "PASS|check|figure" or "FAIL|check|figure".

usage: boot-test.py SERIAL_LOG CHECKS PORT LEVEL_DB STATUS_JSON TONE_BEFORE_KILL
  CHECKS            which checks, space-separated: device level leds journal
                    avahi wifi wifi-short hotplug
  LEVEL_DB          the capture level tower.toml sets, in dB
  TONE_BEFORE_KILL  yes: the host decoded the tone before the guest killed
                    ffmpeg; no: only after; never: not at all
"""
import json
import re
import statistics
import sys

log_path, checks, port, level_db, status_path, tone_before_kill = sys.argv[1:7]
checks = checks.split()
log = open(log_path, encoding="utf-8", errors="replace").read()
port = int(port)


def out(ok, check, figure):
    print("%s|%s|%s" % ("PASS" if ok else "FAIL", check, figure.replace("|", "/")))


def guest(prefix):
    """The guest's report lines that start with prefix."""
    return re.findall(r"TOWER-SELFTEST: " + re.escape(prefix) + r"(.*)", log)


# --- /status: what Tower says it picked ------------------------------------
try:
    status = json.load(open(status_path))
except (OSError, ValueError):
    status = None
device = ((status or {}).get("input") or {}).get("device")
cards = dict(re.findall(r"(\d+):([^ ;]+) \(", (guest("cards: ") or [""])[0]))
capture_cards = sorted({c for c in re.findall(r"/proc/asound/card(\d+)/pcm\d+c", log)})
picked_id = ""
if isinstance(device, dict) and isinstance(device.get("name"), str):
    m = re.search(r"CARD=([^,]+)", device["name"])
    picked_id = m.group(1) if m else ""
if "device" not in checks:
    pass
elif picked_id:
    capture_ids = [cards.get(c, "?") for c in capture_cards]
    ok = device.get("auto") is True and picked_id in capture_ids
    out(ok, "device auto: /status input.device",
        "%s (cards %s; capture-capable: %s)" % (json.dumps(device), " ".join("%s:%s" % kv for kv in sorted(cards.items())),
                                                 " ".join(capture_ids) or "none"))
else:
    out(False, "device auto: /status input.device",
        "no input.device object in /status (%s)" % (json.dumps((status or {}).get("input"))[:200] if status else "no /status"))

# --- capture level read back with amixer -------------------------------------
if "level" in checks:
    want = float(level_db)
    lines = guest("mixer: ")
    chosen = [l for l in lines if picked_id and "(%s)" % picked_id in l] or lines
    got = None
    for l in chosen:
        m = re.search(r"\[(-?[\d.]+)dB\]", l)
        if m:
            got = (float(m.group(1)), l, "[on]" in l)
            break
    if got:
        out(abs(got[0] - want) <= 0.5 and got[2], "capture level: amixer reads [capture] level = \"%gdB\"" % want, got[1].strip())
    else:
        out(False, "capture level: amixer reads [capture] level = \"%gdB\"" % want,
            "no capture control with a dB value: %s" % ("; ".join(lines) or "no mixer lines"))

# --- LEDs ----------------------------------------------------------------------
samples = [(float(t), a, b) for t, a, b in re.findall(r"TOWER-LED ([\d.]+) (\S) (\S)", log)]
kill = re.search(r"killed Tower's ffmpeg \(pid ([^,]*), child of tower pid (\d+)\) with SIGKILL at ([\d.]+) s", log)
again = re.search(r"leds: both on and unchanged for 10 s again at ([\d.]+) s", log)
done = re.search(r"TOWER-SELFTEST: done at ([\d.]+) s", log)
end_t = float(done.group(1)) if done else (samples[-1][0] if samples else 0.0)


def changes(idx):
    """(time, value) at each change of one line's value."""
    res, prev = [], None
    for s in samples:
        if s[idx] != prev:
            res.append((s[0], s[idx]))
            prev = s[idx]
    return res


if "leds" not in checks:
    pass
elif not samples:
    out(False, "encoder LED", "no LED samples in the serial log")
elif not kill or kill.group(1) == "none":
    why = guest("leds: ")
    out(False, "encoder LED", "ffmpeg was not killed: %s" % ("; ".join(why) or "no report"))
else:
    kt = float(kill.group(3))
    enc = changes(1)
    before = [c for c in enc if c[0] <= kt]
    after = [c for c in enc if c[0] > kt]
    last = before[-1] if before else (0.0, "-")
    out(last[1] == "1" and kt - last[0] >= 15, "encoder LED: GPIO17 steady on while RUNNING",
        "on since %.2f s, unchanged for %.1f s until ffmpeg was killed at %.2f s" % (last[0], kt - last[0], kt)
        if last[1] == "1" else "GPIO17 was %s at the kill (since %.2f s)" % (last[1], last[0]))
    # The blink: from the first change after the kill to the last one (the
    # return to steady on). Each interval between changes is an on or an
    # off; the last one can be cut short by RUNNING, so it is not measured.
    on = [round((after[i + 1][0] - after[i][0]) * 1000) for i in range(len(after) - 2) if after[i][1] == "1"]
    off = [round((after[i + 1][0] - after[i][0]) * 1000) for i in range(len(after) - 2) if after[i][1] == "0"]
    if len(on) >= 2 and len(off) >= 2:
        mon, moff = statistics.median(on), statistics.median(off)
        ok = 170 <= mon <= 330 and 170 <= moff <= 330 and 400 <= mon + moff <= 600
        out(ok, "encoder LED: 2 Hz blink after ffmpeg was killed (SIGKILL)",
            "%d on / %d off intervals from %.2f s to %.2f s: median on %d ms, off %d ms, period %d ms (on %s; off %s)"
            % (len(on), len(off), after[0][0], after[-1][0], mon, moff, mon + moff,
               " ".join(map(str, on[:10])), " ".join(map(str, off[:10]))))
    else:
        out(False, "encoder LED: 2 Hz blink after ffmpeg was killed (SIGKILL)",
            "%d changes after the kill: %s" % (len(after), " ".join("%.2f:%s" % c for c in after[:20])))
    final = after[-1] if after else None
    ok = bool(final and final[1] == "1" and again and end_t - final[0] >= 8)
    out(ok, "encoder LED: steady on again after the restart",
        "on since %.2f s, unchanged until %.2f s (%.1f s)" % (final[0], end_t, end_t - final[0])
        if final and final[1] == "1" else "last change after the kill: %s; %s" % (final, "; ".join(guest("leds: "))))
    inp = changes(2)
    last_in = ([c for c in inp if c[0] <= kt] or [(0.0, "-")])[-1]
    later = [c for c in inp if c[0] > kt]
    ok = last_in[1] == "1" and not later and kt - last_in[0] >= 15 and tone_before_kill == "yes"
    out(ok, "input LED: GPIO27 steady on while the tone plays",
        "on from %.2f s to %.2f s (%.1f s), %d changes after the ffmpeg kill at %.2f s; tone decoded on the host %s"
        % (last_in[0], end_t, end_t - last_in[0], len(later), kt,
           {"yes": "before the kill", "no": "only after the kill", "never": "never"}.get(tone_before_kill, tone_before_kill))
        if last_in[1] == "1" else "GPIO27 was %s at the kill (since %.2f s)" % (last_in[1], last_in[0]))

# --- journald --------------------------------------------------------------
def journal():
    entries = [e.strip() for e in guest("journal: encoder entry: ")]
    summary = (guest("journal: ") or ["no report"])[-1].strip()
    # Fields named exactly COMPONENT, STATE and REASON (not F_STATE...).
    exact = [e for e in entries if re.search(r"(^| )COMPONENT=encoder( |$)", e)
             and re.search(r"(^| )STATE=\S", e) and re.search(r"(^| )REASON=\S", e)]
    states = [re.search(r"(^| )STATE=(\S+)", e).group(2) for e in exact]
    ok = "RUNNING" in states and any(s != "RUNNING" for s in states)
    out(ok, "journald: encoder state changes with COMPONENT, STATE, REASON",
        "%d of %d entries have exactly these names (%s); %s" % (len(exact), len(entries), summary, "; ".join(entries[:6])))


# --- Avahi -----------------------------------------------------------------
def avahi():
    answer = (guest("avahi: ResolveService Tower _http._tcp local: ") or [""])[0]
    m = re.search(r'"([^"]+\.local)" -?\d+ "([^"]*)" (\d+)', answer)
    file_line = (guest("avahi: tower-avahi-port.service ") or [""])[0]
    if m:
        out(int(m.group(3)) == port, "avahi: Tower's service on tower.toml's port",
            "Avahi resolves Tower _http._tcp to %s %s port %s (tower.toml: listen = \"0.0.0.0:%d\"; %s)"
            % (m.group(1), m.group(2), m.group(3), port, file_line.strip()))
    else:
        out(False, "avahi: Tower's service on tower.toml's port",
            "no answer: %s (%s)" % (answer.strip() or "no report", file_line.strip()))


# --- Wi-Fi -----------------------------------------------------------------
def wifi_lines():
    link = (guest("wifi: tower-wifi.service ") or ["no report"])[0].strip()
    status = (guest("wifi: status file ") or ["no report"])[0].strip()
    journal = " / ".join(l.strip() for l in guest("wifi: journal: ")) or "none"
    return link, status, journal


def wifi():
    """A good wifi.txt joins the hidden access point (scan_ssid=1)."""
    link, status, journal = wifi_lines()
    ap = (guest("wifi: access point: ") or ["no report"])[0].strip()
    hidden = (guest("wifi: hidden: ") or ["no report"])[0].strip()
    ok = bool(re.search(r"wpa_state=COMPLETED", link) and re.search(r"key_mgmt=WPA2-PSK", link)
              and re.search(r"address 192\.168\.77\.\d+/24 dynamic", link))
    out(ok, "wifi: wifi.txt joins the WPA2 access point, DHCP address",
        "tower-wifi.service %s; access point: %s" % (link, ap))
    # The network really is hidden: its beacons name no SSID (element 00,
    # length 0); it was joined all the same.
    ok = ok and "ignore_broadcast_ssid=1" in hidden and "(length 0)" in hidden
    out(ok, "wifi: a hidden network (beacons without SSID) is joined (scan_ssid=1)", hidden)
    ok = status.endswith('as user tower: ok: joining "Tower selftest" on wlan0') and "mode 644" in status
    out(ok, "wifi: status file for Tower's page says ok", "%s; journal: %s" % (status, journal))


def wifi_short():
    """A wifi.txt whose password is one character short: the reason in the
    status file (readable by tower) and the journal, no config, no join."""
    link, status, journal = wifi_lines()
    reason = "the password (psk=) is 7 characters long; WPA needs 8 to 63"
    ok = (reason in status and "as user tower: error: " in status and "mode 644" in status
          and reason in journal and link.startswith("failed;")
          and "wpa_supplicant-wlan0.conf absent" in link and "wpa_supplicant@wlan0 inactive" in link
          and "address none" in link)
    out(ok, "wifi: a 7-character password: the reason in the status file and journal, no config",
        "%s; journal: %s; %s" % (status, journal, link))


# --- a capture card plugged in while Tower runs: the guest's side ------------
def hotplug():
    """The kernel's and Tower's journal lines from the PCIe slot's event on
    (the card plugged in through QMP), on the guest's monotonic clock."""
    lines = [l.strip() for l in guest("hotplug: journal: ")]
    present = (guest("hotplug: capture card present at ") or ["never"])[0].strip()
    first = {}
    for l in lines:
        m = re.match(r"([\d.]+) (.*)", l)
        for key, pat in (("slot", r"pciehp"), ("driver", r"virtio|snd"), ("tower", r"capture device \S+ open")):
            if m and key not in first and re.search(pat, m.group(2)):
                first[key] = float(m.group(1))
    # The guest's own look at /proc/asound every 0.1 s (uptime, the same
    # clock as the journal's monotonic one in a VM that never sleeps).
    seen = re.match(r"([\d.]+) s: /proc/asound/card\d+/pcm\d+c", present)
    if seen:
        first["card"] = float(seen.group(1))
    ok = "slot" in first and "tower" in first
    times = ", ".join("%s %s" % (what, ("%.2f s" % first[k]) if k in first else "none") for k, what in
                      (("slot", "PCIe slot event"), ("driver", "driver binds"), ("card", "capture device in /proc/asound"),
                       ("tower", "Tower opens the card")))
    out(ok, "hot-plug: the guest's kernel and Tower, from the journal",
        "%s (%s after the slot event); %s" % (times, ("%.2f s" % (first["tower"] - first["slot"])) if ok else "?",
                                              " / ".join(lines)))


if "journal" in checks:
    journal()
if "avahi" in checks:
    avahi()
if "wifi" in checks:
    wifi()
if "wifi-short" in checks:
    wifi_short()
if "hotplug" in checks:
    hotplug()
