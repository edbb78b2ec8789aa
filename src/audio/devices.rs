//! `tower devices`: the capture devices on this machine, each with the
//! exact string to put in `device`.
//!
//! Enumerated with alsa-lib directly rather than cpal. cpal's ALSA host
//! lists the same name hints but opens every device to probe its formats,
//! which grabs `hw:` devices (a running Tower's among them, so listing
//! would break the stream, or fail on the busy card) and takes seconds; and
//! it does not give the card-named `CARD=` form, which is the one that
//! survives USB re-enumeration. alsa-lib's control interface answers from
//! the driver without opening any PCM.
//!
//! Two groups: sound cards with capture, named `plughw:CARD=<id>,DEV=<n>`
//! (recommended) and `hw:CARD=<id>,DEV=<n>`; then the other capture PCMs
//! the ALSA configuration declares (`default`, `dsnoop`, `jack`, …).

use std::fmt::Write;

/// A capture device of a sound card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardDevice {
    /// The card's id (`CARD=` value), stable across re-enumeration.
    pub card_id: String,
    /// The card's index now (may change after a replug).
    pub card_index: i32,
    pub card_name: String,
    pub device: u32,
    pub device_name: String,
}

/// A capture PCM from the ALSA configuration's name hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPcm {
    pub name: String,
    pub description: String,
}

/// What was found, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    pub cards: Vec<CardDevice>,
    pub others: Vec<NamedPcm>,
    pub problems: Vec<String>,
}

/// The listing as printed by `tower devices`.
pub fn render(list: &DeviceList, configured: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Capture devices on this machine. Put the quoted name in `device` (tower.toml)"
    );
    let _ = writeln!(out, "or pass it with --device. Configured now: \"{configured}\".\n");
    if list.cards.is_empty() {
        let _ = writeln!(
            out,
            "Sound cards: none with a capture device. Plug in a USB sound card (or enable an I2S HAT),\n\
             then run `tower devices` again. Until then Tower streams the fallback.\n"
        );
    } else {
        let _ = writeln!(out, "Sound cards (names that survive USB re-plugging and re-ordering):");
        for c in &list.cards {
            let plug = format!("plughw:CARD={},DEV={}", c.card_id, c.device);
            let _ = writeln!(out, "  \"{plug}\"");
            let _ = writeln!(
                out,
                "      {} — {} (card {}, device {}). Recommended: converts to 48 kHz stereo 16-bit.",
                c.card_name, c.device_name, c.card_index, c.device
            );
            let _ = writeln!(
                out,
                "  \"hw:CARD={},DEV={}\"\n      The same without conversion: only if the card does S16_LE 48 kHz stereo itself.",
                c.card_id, c.device
            );
        }
        let _ = writeln!(out);
    }
    if !list.others.is_empty() {
        let _ = writeln!(out, "Other capture PCMs from the ALSA configuration:");
        for p in &list.others {
            let _ = writeln!(out, "  \"{}\"", p.name);
            if !p.description.is_empty() {
                let _ = writeln!(out, "      {}", p.description);
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Avoid \"hw:1,0\"-style numbers: after a replug or reboot the number can point at another card."
    );
    for p in &list.problems {
        let _ = writeln!(out, "note: {p}");
    }
    out
}

/// The hint description on one line (alsa-lib's use newlines).
fn one_line(desc: &str) -> String {
    desc.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" — ")
}

/// Hinted PCMs that only convert another PCM's audio (resamplers, up- and
/// downmixers from alsa-plugins) and `null`: nothing to capture from.
const CONVERTERS: [&str; 7] = [
    "null",
    "lavrate",
    "samplerate",
    "speexrate",
    "speex",
    "upmix",
    "vdownmix",
];

/// Lists the machine's capture devices with alsa-lib.
#[cfg(feature = "alsa-backend")]
pub fn list() -> DeviceList {
    use alsa::Direction;
    use alsa::ctl::{Ctl, DeviceIter};
    use alsa::device_name::HintIter;

    let mut list = DeviceList::default();
    for card in alsa::card::Iter::new() {
        let card = match card {
            Ok(c) => c,
            Err(e) => {
                list.problems.push(format!("cannot list sound cards: {e}"));
                break;
            }
        };
        let index = card.get_index();
        let ctl = match Ctl::from_card(&card, false) {
            Ok(c) => c,
            Err(e) => {
                list.problems
                    .push(format!("cannot open the controls of card {index}: {e}"));
                continue;
            }
        };
        let Ok(info) = ctl.card_info() else {
            list.problems.push(format!("cannot read card {index}'s name"));
            continue;
        };
        let card_id = info.get_id().unwrap_or_default().to_string();
        let card_name = info.get_name().unwrap_or_default().to_string();
        for device in DeviceIter::new(&ctl) {
            let Ok(device) = u32::try_from(device) else {
                continue;
            };
            // Only devices with a capture side answer for Capture.
            if let Ok(pcm) = ctl.pcm_info(device, 0, Direction::Capture) {
                list.cards.push(CardDevice {
                    card_id: card_id.clone(),
                    card_index: index,
                    card_name: card_name.clone(),
                    device,
                    device_name: pcm.get_name().unwrap_or_default().to_string(),
                });
            }
        }
    }
    match HintIter::new_str(None, "pcm") {
        Ok(hints) => {
            for h in hints {
                let Some(name) = h.name else { continue };
                // Cards are listed above by their stable names; plain "null"
                // captures nothing.
                let is_card = ["hw:", "plughw:", "sysdefault:", "front:", "dsnoop:"]
                    .iter()
                    .any(|p| name.starts_with(p) && name.contains("CARD="));
                if h.direction == Some(Direction::Playback) || is_card || CONVERTERS.contains(&name.as_str()) {
                    continue;
                }
                list.others.push(NamedPcm {
                    name,
                    description: one_line(h.desc.as_deref().unwrap_or("")),
                });
            }
        }
        Err(e) => list.problems.push(format!("cannot read the ALSA name hints: {e}")),
    }
    if !list.others.iter().any(|p| p.name == "default") {
        list.others.insert(
            0,
            NamedPcm {
                name: "default".into(),
                description: "whatever the ALSA configuration makes the default (the first card, or a sound server)"
                    .into(),
            },
        );
    }
    list
}

/// Without ALSA support there is nothing to list.
#[cfg(not(feature = "alsa-backend"))]
pub fn list() -> DeviceList {
    DeviceList {
        problems: vec!["this build has no ALSA support (feature alsa-backend)".into()],
        ..DeviceList::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_offered_by_their_stable_names_with_plughw_first() {
        let list = DeviceList {
            cards: vec![CardDevice {
                card_id: "Device".into(),
                card_index: 1,
                card_name: "USB Audio Device".into(),
                device: 0,
                device_name: "USB Audio".into(),
            }],
            others: vec![NamedPcm {
                name: "default".into(),
                description: one_line("Default Audio Device\n  with extras"),
            }],
            problems: vec![],
        };
        let text = render(&list, "default");
        let plug = text.find("\"plughw:CARD=Device,DEV=0\"").expect("plughw");
        let hw = text.find("\"hw:CARD=Device,DEV=0\"").expect("hw");
        assert!(plug < hw, "{text}");
        assert!(
            text.contains("USB Audio Device — USB Audio (card 1, device 0)"),
            "{text}"
        );
        assert!(
            text.contains("\"default\"\n      Default Audio Device — with extras"),
            "{text}"
        );
        assert!(text.contains("Configured now: \"default\""), "{text}");
    }

    #[test]
    fn no_card_says_what_to_do() {
        let text = render(&DeviceList::default(), "plughw:CARD=Device,DEV=0");
        assert!(text.contains("none with a capture device"), "{text}");
        assert!(text.contains("streams the fallback"), "{text}");
    }
}
