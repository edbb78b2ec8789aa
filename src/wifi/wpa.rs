//! wpa_supplicant's control interface (a Unix datagram socket per
//! interface, as `wpa_cli` speaks it): commands and their answers, and the
//! events an attached socket receives. Used by `tower wifi-manager`'s
//! thread only. The parsers are pure.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Network;
use super::plan::Event;

/// How long a command may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One socket to wpa_supplicant's control interface of one interface.
pub struct Ctrl {
    socket: UnixDatagram,
    local: PathBuf,
}

impl Ctrl {
    /// Connects to `ctrl` (e.g. `/run/wpa_supplicant/wlan0`) from a socket
    /// of our own at `local` (removed when dropped).
    pub fn open(ctrl: &Path, local: PathBuf) -> io::Result<Ctrl> {
        let _ = std::fs::remove_file(&local);
        let socket = UnixDatagram::bind(&local)?;
        let ctrl_socket = Ctrl { socket, local };
        ctrl_socket.socket.connect(ctrl)?;
        ctrl_socket.socket.set_read_timeout(Some(ANSWER_WITHIN))?;
        Ok(ctrl_socket)
    }

    /// Sends `command`, returns the answer (events that arrive meanwhile,
    /// `<N>…`, are skipped: use another socket for them).
    pub fn request(&self, command: &str) -> io::Result<String> {
        let mut buf = vec![0u8; 16 * 1024];
        // An answer that came after its command timed out is still queued:
        // left there, it would be taken for this command's answer, and
        // every later one would be shifted by one.
        while self.stale_answer(&mut buf) {}
        self.socket.send(command.as_bytes())?;
        loop {
            let n = self.socket.recv(&mut buf)?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !text.starts_with('<') {
                return Ok(text);
            }
        }
    }

    /// Takes one datagram that is already waiting, if any.
    fn stale_answer(&self, buf: &mut [u8]) -> bool {
        use std::os::fd::AsRawFd;
        let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        nix::sys::socket::recv(self.socket.as_raw_fd(), buf, flags).is_ok_and(|n| n > 0)
    }

    /// Makes this socket receive events; then read them with [`Ctrl::events`].
    pub fn attach(&self) -> io::Result<()> {
        match self.request("ATTACH")?.trim() {
            "OK" => self.socket.set_nonblocking(true),
            other => Err(io::Error::other(format!("ATTACH answered {other:?}"))),
        }
    }

    /// The events waiting, without blocking.
    pub fn events(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

/// `key=value` lines (STATUS, SIGNAL_POLL) as a map.
pub fn fields(answer: &str) -> BTreeMap<String, String> {
    answer
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What an event means for the plan, or for the hotspot's phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    Plan(Event),
    PhoneJoined(String),
    PhoneLeft(String),
    ScanDone,
}

/// Reads one event (`<3>CTRL-EVENT-…`).
pub fn event(text: &str) -> Option<Said> {
    let body = text
        .strip_prefix('<')
        .and_then(|t| t.split_once('>'))
        .map_or(text, |(_, b)| b);
    let mut words = body.split_whitespace();
    let what = words.next()?;
    match what {
        "CTRL-EVENT-SSID-TEMP-DISABLED" if body.contains("reason=WRONG_KEY") => Some(Said::Plan(Event::WrongKey)),
        "CTRL-EVENT-NETWORK-NOT-FOUND" => Some(Said::Plan(Event::NotFound)),
        "AP-STA-CONNECTED" => words.next().map(|m| Said::PhoneJoined(m.to_string())),
        "AP-STA-DISCONNECTED" => words.next().map(|m| Said::PhoneLeft(m.to_string())),
        "CTRL-EVENT-SCAN-RESULTS" => Some(Said::ScanDone),
        _ => None,
    }
}

/// SCAN_RESULTS (`bssid / frequency / signal level / flags / ssid`, tab
/// separated): each SSID once, at its strongest, strongest first; hidden
/// networks (no SSID) left out.
pub fn scan_results(answer: &str) -> Vec<Network> {
    let mut best: BTreeMap<String, Network> = BTreeMap::new();
    for line in answer.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [_, freq, signal, flags, ssid] = cols[..] else {
            continue;
        };
        let ssid = unescape(ssid);
        if ssid.is_empty() || ssid.bytes().all(|b| b == 0) {
            continue;
        }
        let (Ok(freq_mhz), Ok(signal_dbm)) = (freq.parse::<u32>(), signal.parse::<i32>()) else {
            continue;
        };
        let n = Network {
            secured: flags.contains("WPA") || flags.contains("RSN") || flags.contains("SAE"),
            ssid: ssid.clone(),
            signal_dbm,
            freq_mhz,
        };
        if best.get(&ssid).is_none_or(|b| b.signal_dbm < signal_dbm) {
            best.insert(ssid, n);
        }
    }
    let mut list: Vec<Network> = best.into_values().collect();
    list.sort_by(|a, b| b.signal_dbm.cmp(&a.signal_dbm).then(a.ssid.cmp(&b.ssid)));
    list
}

/// wpa_supplicant's printf-escaped SSID (`\xNN`, `\\`, `\"`) back to text.
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'x' if i + 3 < bytes.len() => {
                    if let Ok(b) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'e' => {
                    out.push(0x1b);
                    i += 2;
                    continue;
                }
                c @ (b'\\' | b'"') => {
                    out.push(c);
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_came_too_late_is_not_taken_for_the_next_one() {
        let dir = tempfile::tempdir().expect("dir");
        let (server, local) = (dir.path().join("wlan0"), dir.path().join("tower"));
        let fake = UnixDatagram::bind(&server).expect("bind");
        let ctrl = Ctrl::open(&server, local.clone()).expect("open");
        // The answer to a command that timed out arrives late.
        fake.send_to(b"OK\n", &local).expect("late answer");
        let answering = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = fake.recv_from(&mut buf).expect("a command");
            assert_eq!(&buf[..n], b"STATUS");
            let to = from.as_pathname().expect("a named socket").to_path_buf();
            fake.send_to(b"wpa_state=COMPLETED\n", to).expect("answer");
        });
        assert_eq!(ctrl.request("STATUS").expect("answer"), "wpa_state=COMPLETED\n");
        answering.join().expect("fake");
    }

    #[test]
    fn events_that_matter_are_read_the_rest_ignored() {
        assert_eq!(
            event("<3>CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid=\"Home\" auth_failures=1 duration=10 reason=WRONG_KEY"),
            Some(Said::Plan(Event::WrongKey))
        );
        assert_eq!(
            event("<3>CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid=\"Home\" auth_failures=1 duration=10 reason=CONN_FAILED"),
            None
        );
        assert_eq!(
            event("<3>CTRL-EVENT-NETWORK-NOT-FOUND"),
            Some(Said::Plan(Event::NotFound))
        );
        assert_eq!(
            event("<3>AP-STA-CONNECTED 02:00:00:00:02:00"),
            Some(Said::PhoneJoined("02:00:00:00:02:00".into()))
        );
        assert_eq!(
            event("<3>AP-STA-DISCONNECTED 02:00:00:00:02:00"),
            Some(Said::PhoneLeft("02:00:00:00:02:00".into()))
        );
        assert_eq!(event("<2>CTRL-EVENT-SCAN-RESULTS "), Some(Said::ScanDone));
        assert_eq!(event("<3>CTRL-EVENT-CONNECTED - Connection to 02:00 completed"), None);
        assert_eq!(event(""), None);
    }

    #[test]
    fn scan_results_give_each_network_once_strongest_first() {
        let answer = "bssid / frequency / signal level / flags / ssid\n\
            02:00:00:00:01:00\t2437\t-30\t[WPA2-PSK-CCMP][ESS]\tTower home\n\
            02:00:00:00:03:00\t2412\t-70\t[WPA2-PSK-CCMP][ESS]\tTower home\n\
            02:00:00:00:04:00\t2462\t-50\t[ESS]\tCaf\\xc3\\xa9 \\\"free\\\"\n\
            02:00:00:00:05:00\t2462\t-20\t[WPA2-PSK-CCMP][ESS]\t\n\
            02:00:00:00:06:00\t2462\t-55\t[WPA2-PSK-CCMP][ESS]\t\\x00\\x00\n\
            garbage\n";
        let list = scan_results(answer);
        assert_eq!(
            list,
            vec![
                Network {
                    ssid: "Tower home".into(),
                    signal_dbm: -30,
                    secured: true,
                    freq_mhz: 2437
                },
                Network {
                    ssid: "Café \"free\"".into(),
                    signal_dbm: -50,
                    secured: false,
                    freq_mhz: 2462
                },
            ]
        );
    }

    #[test]
    fn status_lines_become_fields() {
        let f = fields("bssid=02:00:00:00:01:00\nfreq=2437\nssid=Tower home\nmode=station\nwpa_state=COMPLETED\n");
        assert_eq!(f.get("wpa_state").map(String::as_str), Some("COMPLETED"));
        assert_eq!(f.get("ssid").map(String::as_str), Some("Tower home"));
    }

    #[test]
    fn a_real_datagram_peer_answers_and_events_are_skipped_then_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let server_path = dir.path().join("wlan0");
        let server = UnixDatagram::bind(&server_path).expect("bind");
        let ctrl = Ctrl::open(&server_path, dir.path().join("client")).expect("open");
        let peer = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let (n, from) = server.recv_from(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"PING");
            let to = from.as_pathname().expect("path").to_path_buf();
            server.send_to(b"<3>CTRL-EVENT-NETWORK-NOT-FOUND", &to).expect("event");
            server.send_to(b"PONG\n", &to).expect("answer");
            let (n, _) = server.recv_from(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"ATTACH");
            server.send_to(b"OK\n", &to).expect("ok");
            server
                .send_to(b"<3>AP-STA-CONNECTED 02:00:00:00:02:00", &to)
                .expect("event");
        });
        assert_eq!(ctrl.request("PING").expect("ping"), "PONG\n");
        ctrl.attach().expect("attach");
        peer.join().expect("peer");
        let events = ctrl.events().expect("events");
        assert_eq!(events, ["<3>AP-STA-CONNECTED 02:00:00:00:02:00"]);
        drop(ctrl);
        assert!(!dir.path().join("client").exists(), "our socket is removed");
    }
}
