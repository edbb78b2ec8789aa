#!/usr/bin/env python3
"""image/boot-test's judge of one boot: reads the guest's serial log (the
lines of image/boot-test.d's units) and Tower's /status, and prints one line
per check as "PASS|check|figure" or "FAIL|check|figure".

usage: boot-test.py SERIAL_LOG CHECKS PORT LEVEL_DB STATUS_JSON TONE_BEFORE_KILL
  CHECKS            which checks, space-separated: device level leds amp
                    journal avahi wifi wifi-short hotplug settings
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
samples = [(float(t), a, b, c or "-") for t, a, b, c in re.findall(r"TOWER-LED ([\d.]+) (\S) (\S)(?: (\S))?", log)]
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

# --- the amplifier line ------------------------------------------------------
def amp():
    """GPIO22 (gpio.amp_pin = 22) follows the tone: off before it, on
    within ~2 s of its start, off program.hold_s (3 s) + gpio.amp_off_delay_s
    (5 s) after it stopped; /status and the journal say the same."""
    start = re.search(r"TOWER-SELFTEST: tone: 1000 Hz into \S+ from ([\d.]+) s", log)
    stop = re.search(r"TOWER-SELFTEST: tone: stopped at ([\d.]+) s", log)
    during = (guest("amp: while the tone plays: ") or ["no report"])[0].strip()
    after = (guest("amp: 12 s after the tone stopped: ") or ["no report"])[0].strip()
    journal = (guest("amp: journal: ") or ["no report"])[0].strip()
    line = changes(3)
    if not start or not stop:
        out(False, "amp line: GPIO22 off before the tone, on within 2 s of its start",
            "tone start %s, stop %s; GPIO22 changes: %s" % (start and start.group(1), stop and stop.group(1),
                                                             " ".join("%.2f:%s" % c for c in line[:12])))
        return
    ts, te = float(start.group(1)), float(stop.group(1))
    before = [c for c in line if c[0] <= ts]
    was = before[-1] if before else (0.0, "none")
    on = next((c for c in line if c[0] > ts and c[1] == "1"), None)
    off = next((c for c in line if on and c[0] > on[0] and c[1] != "1"), None)
    ok = was[1] == "0" and on is not None and on[0] - ts <= 2.0 and on[0] < te
    out(ok, "amp line: GPIO22 off before the tone, on within 2 s of its start",
        "GPIO22 %s from %.2f s; tone from %.2f s; on at %s" % (was[1], was[0], ts,
                                                             "%.2f s (+%.2f s)" % (on[0], on[0] - ts) if on else "never"))
    ok = off is not None and off[1] == "0" and abs(off[0] - te - 8.0) <= 1.0
    out(ok, "amp line: GPIO22 off 3 s hold + 5 s delay after the tone stopped",
        "on from %s, tone stopped at %.2f s, off at %s" % ("%.2f s" % on[0] if on else "never", te,
                                                          "%.2f s (+%.2f s, want 8 +/- 1)" % (off[0], off[0] - te) if off else "never"))
    ok = (re.search(r"program=program amp=\{[^}]*\"driven\":true[^}]*\"on\":true", during) is not None
          and re.search(r"program=idle amp=\{[^}]*\"driven\":true[^}]*\"on\":false", after) is not None)
    out(ok, "amp line: /status amp.driven, program.state following the tone",
        "while the tone plays: %s; 12 s after it stopped: %s" % (during, after))
    ok = journal.startswith('1 x "program: something plays", 1 x "idle: the input went quiet"')
    out(ok, "amp line: one program line and one idle line in Tower's journal", journal)


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
    status file (readable by tower) and the journal, no network in
    wpa_supplicant's config, no join (and, with Ethernet, no hotspot)."""
    link, status, journal = wifi_lines()
    reason = "the password (psk=) is 7 characters long; WPA needs 8 to 63"
    ok = (reason in status and "as user tower: error: " in status and "mode 644" in status
          and reason in journal and "0 network(s)" in link and "address none" in link)
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



# --- the setup hotspot (issue 24) ------------------------------------------
def hs(prefix):
    """The hotspot script's lines that start with prefix."""
    return [l.strip() for l in guest("hotspot: " + prefix)]


def hs1(prefix):
    return (hs(prefix) or [""])[0]


def secs(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def hotspot_visible():
    line = hs1("hotspot visible at ")
    t = secs(r"^([\d.]+) s", line)
    ok = t is not None and "Tower-setup-" in line and "WPA2-PSK" in line
    out(ok, "hotspot: visible to the phone, WPA2 (no wifi.txt, no cable)",
        "boot to hotspot visible: %s (guest uptime); %s" % ("%.1f s" % t if t is not None else "never", line or "; ".join(hs("the hotspot was never"))))
    return t


def hotspot_phone():
    joined = hs1("phone joined ")
    lease = hs1("phone DHCP: ")
    out("wpa_state=COMPLETED" in joined and "key_mgmt=WPA2-PSK" in joined
        and re.match(r"192\.168\.4\.\d+/24 router 192\.168\.4\.1 dns 192\.168\.4\.1", lease) is not None,
        "hotspot: the phone joins it and gets an address by DHCP (router and DNS: Tower)", "%s; DHCP: %s" % (joined, lease or "none"))
    dns = hs1("dns: ")
    names = re.findall(r"(\S+) -> ([\d.,]*);", dns)
    out(len(names) == 4 and all(a == "192.168.4.1" for _, a in names),
        "hotspot: every name resolves to Tower (captive DNS)", dns or "no report")
    page = hs1("page loaded at ")
    took = secs(r"\(([\d.]+) s after the phone joined\)", page)
    ok = ("HTTP/1.1 302 Found Location: http://192.168.4.1:%d/settings HTTP/1.1 200 OK" % port in page
          and "<title>Settings" in page)
    out(ok, "hotspot: a phone's captive-portal probe lands on the settings page",
        "phone joined to setup page loaded: %s; %s" % ("%.1f s" % took if took is not None else "never", page or "no report"))
    local = hs1("tower.local: ")
    ok = ("HTTP/1.1 302 Found Location: http://tower.local:%d/ HTTP/1.1 200 OK" % port in local
          and "<title>" in local)
    out(ok, "hotspot: http://tower.local/ works", local or "no report")


def hotspot_setup():
    hotspot_visible()
    hotspot_phone()
    listed = hs1("api: networks Tower lists: ")
    got = hs1("api: GET /api/wifi: ")
    out(got.startswith("HTTP/1.1 200") and '"Tower home"' in listed,
        "hotspot: the page lists the networks the radio sees (admin password, HTTP Basic)",
        "GET /api/wifi %s; %s" % (got[:14], listed or "no list"))
    wrong = hs1("posting the home network with a wrong password")
    back = hs1("hotspot back: ")
    after = hs1("api: after the wrong password: ")
    took = secs(r"\(([\d.]+) s after the answer\)", back)
    ok = ("HTTP/1.1 200" in wrong and took is not None and took <= 150
          and '"mode": "hotspot"' in after and '"code": "wrong_password"' in after)
    out(ok, "hotspot: a wrong password brings the hotspot back, and the page says why",
        "failed join to hotspot back: %s; save answered: %s; then: %s" % (
            "%.1f s" % took if took is not None else "never", wrong.split(": ", 1)[-1][:60], after or "; ".join(hs("the hotspot did not"))))
    right = hs1("posting the home network with its password")
    joined = hs1("joined the home network at ")
    took = secs(r"\(([\d.]+) s after the answer\)", joined)
    out("HTTP/1.1 200" in right and took is not None,
        "hotspot: the home network saved from the phone is joined",
        "save to joined home network: %s; %s" % ("%.1f s" % took if took is not None else "never",
                                                  joined or "; ".join(hs("Tower did not join"))))
    listener = hs1("home listener: ")
    seconds = secs(r"\(([\d.]+) s of audio\)", listener)
    out(seconds is not None and seconds >= 2.0, "hotspot: a listener on the home network hears Tower's stream",
        listener or "no report")
    card = hs1("wifi.txt on the card: ")
    out("ssid=\"Tower home\"" in card and "psk line present" in card,
        "hotspot: the network is saved in wifi.txt on the FAT partition", card or "no report")
    hotspot_leds()


def hotspot_leds():
    """The LEDs while the hotspot is open (they take turns once a second),
    and just after the join (the last number of the address, flashed)."""
    visible = secs(r"^([\d.]+) s", hs1("hotspot visible at "))
    posted = secs(r"at ([\d.]+) s:", hs1("posting the home network with a wrong password"))
    joined_line = hs1("joined the home network at ")
    joined = secs(r"^([\d.]+) s", joined_line)
    if visible is None or posted is None:
        out(False, "LEDs: the setup hotspot's pattern (the two LEDs take turns once a second)", "no hotspot window")
        return
    window = [s for s in samples if visible <= s[0] <= posted]
    # The driver writes the two lines one after the other: a sample taken
    # between the writes (the next one within 200 ms; the pattern holds
    # each state 500 ms) is not a state.
    sampled = len(window)
    window = [s for i, s in enumerate(window) if i + 1 == len(window) or window[i + 1][0] - s[0] >= 0.2]
    both = [(t, a, b) for t, a, b, _ in window]
    turns = all(a != b and a in "01" and b in "01" for _, a, b in both)
    edges = [both[i][0] for i in range(1, len(both)) if both[i][1] != both[i - 1][1]]
    halves = [round((edges[i + 1] - edges[i]) * 1000) for i in range(len(edges) - 1)]
    mid = statistics.median(halves) if halves else 0
    out(turns and len(halves) >= 4 and 400 <= mid <= 600,
        "LEDs: the setup hotspot's pattern (the two LEDs take turns once a second)",
        "%d samples from %.1f to %.1f s (%d more between two writes left out): GPIO17 and GPIO27 %s; %d changes, median %d ms between them (%s)" % (
            len(both), visible, posted, sampled - len(both), "always opposite" if turns else "not always opposite", len(edges), mid,
            " ".join(map(str, halves[:8]))))
    addr = re.search(r"address 192\.168\.77\.(\d+)", joined_line)
    if joined is None or not addr:
        out(False, "LEDs: the new address's last number flashed after the join", "no join")
        return
    digits = [int(d) or 10 for d in addr.group(1)]
    on = [(t, a) for t, a, _, _ in samples if joined - 5 <= t <= joined + 25]
    groups, count, last_off = [], 0, None
    for i in range(1, len(on)):
        if on[i][1] == "1" and on[i - 1][1] != "1":
            if last_off is not None and on[i][0] - last_off > 0.8:
                groups.append(count)
                count = 0
            count += 1
        elif on[i][1] != "1" and on[i - 1][1] == "1":
            last_off = on[i][0]
    groups.append(count)
    text = ",".join(map(str, groups))
    ok = any(groups[i:i + len(digits)] == digits for i in range(len(groups)))
    out(ok, "LEDs: the new address's last number flashed after the join",
        "address ...%s: flash groups from %.1f s: %s (want %s in a row)" % (addr.group(1), joined - 5, text,
                                                                       ",".join(map(str, digits))))


def hotspot_cut():
    hotspot_visible()
    cable_in = hs1("cable in at ")
    took_in = secs(r"closed within ([\d.]+) s", cable_in)
    out(took_in is not None, "hotspot: an Ethernet cable plugged in closes it", cable_in or "no report")
    cable_out = hs1("cable out at ")
    took_out = secs(r"open again within ([\d.]+) s", cable_out)
    out(took_out is not None and took_out <= 60, "hotspot: the cable out, the hotspot opens again", cable_out or "no report")
    hotspot_phone()
    posted = hs1("posted: ")
    try:
        host = open(log_path.replace("-serial.log", "-host.txt"), errors="replace").read()
    except OSError:
        host = ""
    cut = re.search(r"power cut: SIGKILL to QEMU.*", host)
    out(posted.startswith("HTTP/1.1 200") and cut is not None and not hs("still running"),
        "hotspot: power cut right after the save was answered (during the switch)",
        "%s; host: %s" % (posted or "not posted", cut.group(0) if cut else "no cut"))


def hotspot_after():
    outcome = hs1("after the power cut: ")
    ok = outcome.startswith("joined the home network") or outcome.startswith("the setup hotspot visible")
    out(ok, "hotspot: after the power cut the box offers the hotspot or joins the home network",
        outcome or "no report")
    card = hs1("wifi.txt on the card: ")
    out(True, "hotspot: wifi.txt after the power cut (information)", card or "none")
    moved = hs1("moved house: ")
    took = secs(r"visible ([\d.]+) s after", moved)
    if outcome.startswith("joined"):
        out(took is not None and took <= 160, "hotspot: a box that moved house opens the hotspot",
            "network gone to hotspot visible: %s; %s" % ("%.1f s" % took if took is not None else "never", moved))
        again = hs1("never gives up: ")
        took = secs(r"again ([\d.]+) s after", again)
        out(took is not None, "hotspot: it never gives up: the home network back is joined again (retry 60 s here)",
            again or "no report")


if "amp" in checks:
    amp()
if "journal" in checks:
    journal()
for kind in ("setup", "cut", "after"):
    if "hotspot-" + kind in checks:
        globals()["hotspot_" + kind]()
if "avahi" in checks:
    avahi()
if "wifi" in checks:
    wifi()
if "wifi-short" in checks:
    wifi_short()
if "hotplug" in checks:
    hotplug()
