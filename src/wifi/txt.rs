//! `wifi.txt`, the SD image's Wi-Fi file, read by the same rules as the
//! image's `wifi-setup --check` (image/overlay/usr/local/lib/tower-image/
//! wifi-setup; `image/test-wifi-setup` and this module's tests hold the
//! same cases). Pure; called on the admin thread (a network typed on the
//! settings page is checked as the file it would make) and by `tower
//! config-commit` (root), which writes the file on the FAT partition only
//! once it passes.
//!
//! The rules: `country=`, `ssid=` and `psk=` lines, keys in any case, `#`
//! comment lines; blanks (CR included) around keys and values are dropped,
//! one pair of double quotes around a value keeps its blanks; a UTF-8
//! byte-order mark is skipped, UTF-16 and NUL bytes are refused. `ssid` is
//! 1 to 32 bytes, `psk` 8 to 63 bytes or 64 hex digits (none: an open
//! network); neither holds a control character. A `country` that is not
//! two letters is a warning and left out. Lengths count bytes, as WPA does.
//! A message never holds the password.

use std::fmt;

/// A `wifi.txt` that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WifiTxt {
    /// Two capital letters, if given and valid.
    pub country: Option<String>,
    pub ssid: String,
    /// `None`: an open network.
    pub psk: Option<String>,
    /// What was left out, in words (a missing or bad country).
    pub warnings: Vec<String>,
}

/// Which field of the settings page an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    File,
    Ssid,
    Psk,
}

impl Field {
    pub fn key(self) -> &'static str {
        match self {
            Field::File => "wifi",
            Field::Ssid => "ssid",
            Field::Psk => "psk",
        }
    }
}

/// Why a `wifi.txt` cannot work: the script's message (without its
/// `error: ` prefix), and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtError {
    pub field: Field,
    pub message: String,
}

impl fmt::Display for TxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TxtError {}

fn refuse<T>(field: Field, message: String) -> Result<T, TxtError> {
    Err(TxtError { field, message })
}

/// The shell's `[:space:]` in the C locale.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The script's `trim`: blanks off both ends, then one pair of
/// surrounding double quotes.
fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_blank(b)).map_or(start, |e| e + 1);
    let s = &s[start..end];
    if s.len() >= 2 && s[0] == b'"' && s[s.len() - 1] == b'"' {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

fn has_control(s: &[u8]) -> bool {
    s.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// Reads a `wifi.txt` (its bytes); `name` is how messages call it.
pub fn parse(bytes: &[u8], name: &str) -> Result<WifiTxt, TxtError> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return refuse(
            Field::File,
            format!("{name} is saved as UTF-16 (\"Unicode\"); save it as UTF-8 or plain text"),
        );
    }
    if bytes.contains(&0) {
        return refuse(
            Field::File,
            format!("{name} holds NUL bytes (not a text file?); save it as UTF-8 or plain text"),
        );
    }
    let mut values: [Option<Vec<u8>>; 3] = [None, None, None];
    const KEYS: [&str; 3] = ["country", "ssid", "psk"];
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for (i, raw) in lines.into_iter().enumerate() {
        let n = i + 1;
        let raw = if n == 1 {
            raw.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(raw)
        } else {
            raw
        };
        let line = trim(raw);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return refuse(
                Field::File,
                format!("{name} line {n} has no \"=\" (each line is key=value, such as ssid=My network)"),
            );
        };
        let key = String::from_utf8_lossy(trim(&line[..eq])).to_ascii_lowercase();
        // The value is cut from the line as written (the script's
        // "${line#*=}"), then trimmed.
        let after = raw
            .iter()
            .position(|&b| b == b'=')
            .map_or(&raw[raw.len()..], |p| &raw[p + 1..]);
        let value = trim(after);
        let Some(k) = KEYS.iter().position(|&w| w == key) else {
            return refuse(
                Field::File,
                format!(
                    "{name} line {n}: unknown key \"{key}\" (wifi.txt has country=, ssid= and psk=; the password is psk=)"
                ),
            );
        };
        if values[k].is_some() {
            let field = if k == 2 { Field::Psk } else { Field::File };
            return refuse(field, format!("{name} line {n}: a second {key}= line; keep one"));
        }
        values[k] = Some(value.to_vec());
    }
    let [country, ssid, psk] = values.map(Option::unwrap_or_default);
    check(name, &country, &ssid, &psk)
}

fn check(name: &str, country: &[u8], ssid: &[u8], psk: &[u8]) -> Result<WifiTxt, TxtError> {
    if ssid.is_empty() {
        return refuse(
            Field::Ssid,
            format!("{name} has no ssid= line (the network's name); Wi-Fi stays off"),
        );
    }
    if ssid.len() > 32 {
        return refuse(
            Field::Ssid,
            format!(
                "{name}: ssid is {} bytes long; a network name has at most 32",
                ssid.len()
            ),
        );
    }
    if has_control(ssid) {
        return refuse(Field::Ssid, format!("{name}: ssid holds a control character (a tab?)"));
    }
    let psk_out = if psk.is_empty() {
        None
    } else if psk.len() == 64 {
        if !psk.iter().all(u8::is_ascii_hexdigit) {
            return refuse(
                Field::Psk,
                format!(
                    "{name}: the password (psk=) is 64 characters but not 64 hex digits; a password has 8 to 63 characters"
                ),
            );
        }
        Some(String::from_utf8_lossy(psk).to_ascii_lowercase())
    } else if psk.len() < 8 || psk.len() > 63 {
        // WPA counts bytes: say so when some characters take more than one.
        let unit = if psk.iter().all(|&b| (0x20..0x7f).contains(&b)) {
            "characters"
        } else {
            "bytes (UTF-8)"
        };
        return refuse(
            Field::Psk,
            format!(
                "{name}: the password (psk=) is {} {unit} long; WPA needs 8 to 63 (or a key of 64 hex digits)",
                psk.len()
            ),
        );
    } else if has_control(psk) {
        return refuse(
            Field::Psk,
            format!("{name}: the password (psk=) holds a control character (a tab?)"),
        );
    } else {
        Some(String::from_utf8_lossy(psk).into_owned())
    };
    let mut warnings = Vec::new();
    let country = match country {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some(String::from_utf8_lossy(country).to_ascii_uppercase())
        }
        [] => {
            warnings.push(format!("no country= in {name}; some channels may stay unused"));
            None
        }
        _ => {
            warnings.push(format!(
                "country={} in {name} is not a two-letter code (such as GB); left out",
                String::from_utf8_lossy(country)
            ));
            None
        }
    };
    Ok(WifiTxt {
        country,
        ssid: String::from_utf8_lossy(ssid).into_owned(),
        psk: psk_out,
        warnings,
    })
}

impl WifiTxt {
    /// A network typed on the settings page, checked as the file it makes
    /// would be (an empty `psk` is an open network; `country` may be
    /// empty). Control characters are refused before the file is made: a
    /// line break would make it another file.
    pub fn from_fields(ssid: &str, psk: &str, country: &str) -> Result<WifiTxt, TxtError> {
        let name = "wifi.txt";
        if has_control(ssid.as_bytes()) {
            return refuse(Field::Ssid, format!("{name}: ssid holds a control character (a tab?)"));
        }
        if has_control(psk.as_bytes()) {
            return refuse(
                Field::Psk,
                format!("{name}: the password (psk=) holds a control character (a tab?)"),
            );
        }
        if has_control(country.as_bytes()) {
            return refuse(Field::File, format!("{name}: country holds a control character"));
        }
        let text = render(country.trim(), ssid, (!psk.is_empty()).then_some(psk));
        parse(text.as_bytes(), name)
    }

    /// The file, written so that it reads back as itself: every value in
    /// double quotes (which keep its blanks; a quote inside stays).
    pub fn render(&self) -> String {
        render(self.country.as_deref().unwrap_or(""), &self.ssid, self.psk.as_deref())
    }
}

fn render(country: &str, ssid: &str, psk: Option<&str>) -> String {
    let mut out = String::from("# Wi-Fi for Tower (saved from its settings page). See wifi-example.txt.\n");
    if !country.is_empty() {
        out.push_str(&format!("country=\"{country}\"\n"));
    }
    out.push_str(&format!("ssid=\"{ssid}\"\n"));
    if let Some(psk) = psk {
        out.push_str(&format!("psk=\"{psk}\"\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of image/test-wifi-setup, with the same names: the file,
    /// then Ok((ssid, psk, country)) or Err(a part of the message).
    #[allow(clippy::type_complexity)]
    fn cases() -> Vec<(
        &'static str,
        Vec<u8>,
        Result<(String, Option<String>, Option<String>), &'static str>,
    )> {
        let ok = |s: &str, p: Option<&str>, c: Option<&str>| {
            Ok((s.to_string(), p.map(str::to_string), c.map(str::to_string)))
        };
        let x63 = "x".repeat(63);
        vec![
            (
                "plain file",
                b"country=GB\nssid=IEEE\npsk=password\n".to_vec(),
                ok("IEEE", Some("password"), Some("GB")),
            ),
            (
                "UTF-8 byte-order mark before the first key",
                b"\xef\xbb\xbfssid=IEEE\npsk=password\ncountry=GB\n".to_vec(),
                ok("IEEE", Some("password"), Some("GB")),
            ),
            (
                "Windows line ends (CRLF), no newline at the end",
                b"country=GB\r\nssid=IEEE\r\npsk=password".to_vec(),
                ok("IEEE", Some("password"), Some("GB")),
            ),
            (
                "spaces and tabs around keys and values dropped; keys in any case",
                b"  SSID = IEEE  \t\r\nPsk=\tpassword   \r\ncountry = gb \r\n".to_vec(),
                ok("IEEE", Some("password"), Some("GB")),
            ),
            (
                "double quotes keep a value's spaces",
                b"ssid=\"Tower selftest\"\npsk=\"  spaced pass  \"\ncountry=GB\n".to_vec(),
                ok("Tower selftest", Some("  spaced pass  "), Some("GB")),
            ),
            (
                "UTF-8 and quotes in the SSID, UTF-8 in the password",
                b"ssid=Caf\xc3\xa9 \"quoted\"\npsk=p\xc3\xa4ssw\xc3\xb6rd\ncountry=GB\n".to_vec(),
                ok("Café \"quoted\"", Some("pässwörd"), Some("GB")),
            ),
            (
                "a 63-character passphrase (the longest)",
                format!("ssid=IEEE\npsk={x63}\ncountry=GB\n").into_bytes(),
                ok("IEEE", Some(&x63), Some("GB")),
            ),
            (
                "a key of 64 hex digits is used as it is (lower case)",
                b"ssid=IEEE\npsk=F42C6FC52DF0EBEF9EBB4B90B38A5F902E83FE1B135A70E23AED762E9710A12E\ncountry=GB\n"
                    .to_vec(),
                ok(
                    "IEEE",
                    Some("f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"),
                    Some("GB"),
                ),
            ),
            (
                "no psk: an open network",
                b"ssid=Cafe\ncountry=GB\n".to_vec(),
                ok("Cafe", None, Some("GB")),
            ),
            (
                "comments and blank lines",
                b"# my Wi-Fi\n\ncountry=GB\n  # the network\nssid=IEEE\npsk=password\n".to_vec(),
                ok("IEEE", Some("password"), Some("GB")),
            ),
            (
                "no country: a warning, no country line",
                b"ssid=IEEE\npsk=password\n".to_vec(),
                ok("IEEE", Some("password"), None),
            ),
            (
                "country not a two-letter code: a warning, left out",
                b"country=Britain\nssid=IEEE\npsk=password\n".to_vec(),
                ok("IEEE", Some("password"), None),
            ),
            (
                "a 7-character password: refused with the reason, no config",
                b"country=GB\r\nssid=IEEE\r\npsk=1234567\r\n".to_vec(),
                Err("the password (psk=) is 7 characters long; WPA needs 8 to 63"),
            ),
            (
                "64 characters that are not all hex digits",
                b"ssid=IEEE\npsk=ab3456789012345678901234567890123456789012345678901234567890123x\n".to_vec(),
                Err("is 64 characters but not 64 hex digits"),
            ),
            (
                "a 65-character password",
                format!("ssid=IEEE\npsk={}\n", "y".repeat(65)).into_bytes(),
                Err("is 65 characters long; WPA needs 8 to 63"),
            ),
            (
                "a tab inside the password",
                b"ssid=IEEE\npsk=pass\tword\n".to_vec(),
                Err("holds a control character"),
            ),
            (
                "an unknown key (password= for psk=) is refused, its value not shown",
                b"ssid=IEEE\npassword=hunter2hunter2\n".to_vec(),
                Err("unknown key \"password\""),
            ),
            (
                "a line with no \"=\" is refused, its text not shown",
                b"ssid=IEEE\npsk: hunter2hunter2\n".to_vec(),
                Err("line 2 has no \"=\""),
            ),
            (
                "a second psk= line",
                b"ssid=IEEE\npsk=hunter2hunter2\npsk=hunter2hunter2\n".to_vec(),
                Err("a second psk= line"),
            ),
            (
                "no ssid",
                b"country=GB\npsk=password\n".to_vec(),
                Err("has no ssid= line"),
            ),
            (
                "an SSID of 33 bytes",
                format!("ssid={}\n", "n".repeat(33)).into_bytes(),
                Err("ssid is 33 bytes long"),
            ),
            (
                "a file saved as UTF-16 (Notepad's \"Unicode\")",
                b"\xff\xfes\x00s\x00i\x00d\x00=\x00x\x00\n\x00".to_vec(),
                Err("saved as UTF-16"),
            ),
        ]
    }

    #[test]
    fn the_cases_of_the_script_give_what_the_script_gives() {
        let all = cases();
        assert_eq!(all.len(), 22, "the 22 cases of image/test-wifi-setup");
        for (name, file, want) in all {
            let got = parse(&file, "/boot/firmware/wifi.txt");
            match (got, want) {
                (Ok(t), Ok((ssid, psk, country))) => {
                    assert_eq!((t.ssid, t.psk, t.country), (ssid, psk, country), "{name}")
                }
                (Err(e), Err(part)) => {
                    assert!(e.message.contains(part), "{name}: {e}");
                    for secret in ["hunter2", "1234567", "pass\tword", "ab34567890"] {
                        assert!(!e.message.contains(secret), "{name}: the password is in {e}");
                    }
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn warnings_say_what_was_left_out() {
        let t = parse(b"ssid=IEEE\npsk=password\n", "wifi.txt").expect("ok");
        assert_eq!(t.warnings, ["no country= in wifi.txt; some channels may stay unused"]);
        let t = parse(b"country=Britain\nssid=IEEE\n", "wifi.txt").expect("ok");
        assert!(
            t.warnings[0].starts_with("country=Britain in wifi.txt is not"),
            "{:?}",
            t.warnings
        );
    }

    #[test]
    fn a_network_from_the_page_reads_back_as_itself_from_the_file_it_makes() {
        for (ssid, psk, country) in [
            ("Tower home", "correct horse battery", "gb"),
            ("  spaced  ", "  spaced pass  ", ""),
            ("quote \" inside", "a\"b\"c\"d\"e", "DE"),
            ("\"quoted\"", "\"12345678\"", "FR"),
            ("Café", "pässwörd", "IE"),
            ("Open café", "", "GB"),
        ] {
            let t = WifiTxt::from_fields(ssid, psk, country).expect(ssid);
            assert_eq!(t.ssid, ssid);
            assert_eq!(t.psk.as_deref(), (!psk.is_empty()).then_some(psk));
            let again = parse(t.render().as_bytes(), "wifi.txt").expect("reads back");
            assert_eq!(again, t, "{}", t.render());
        }
    }

    #[test]
    fn the_page_gets_each_error_beside_its_field_and_never_a_second_file() {
        let e = WifiTxt::from_fields("Home", "short", "GB").expect_err("short");
        assert_eq!(e.field, Field::Psk);
        assert!(e.message.contains("5 characters long"), "{e}");
        let e = WifiTxt::from_fields("", "long enough", "GB").expect_err("no ssid");
        assert_eq!(e.field, Field::Ssid);
        let e = WifiTxt::from_fields(&"n".repeat(33), "long enough", "").expect_err("33");
        assert_eq!(e.field, Field::Ssid);
        // A line break would smuggle a second key (or a second file) in.
        let e = WifiTxt::from_fields("Home\npsk=x", "long enough", "").expect_err("newline");
        assert_eq!(e.field, Field::Ssid);
        let e = WifiTxt::from_fields("Home", "long enough\nssid=Evil", "").expect_err("newline");
        assert_eq!(e.field, Field::Psk);
        assert!(!e.message.contains("long enough"), "{e}");
        assert!(WifiTxt::from_fields("Home", "long enough", "G\nB").is_err());
    }
}
