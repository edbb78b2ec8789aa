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
//!
//! [`choose`] is `device = "auto"`'s decision, a pure function of the
//! enumerated cards: on a Pi, card 0 (and so ALSA's `default`) is usually
//! HDMI or the headphone jack, both playback-only, and a USB interface comes
//! wherever probing put it. Cards without a capture device are never in
//! [`DeviceList::cards`], so they are never chosen.

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
    /// A USB interface (driver `USB-Audio`): what a user plugs in to
    /// capture, so `auto` prefers it.
    pub usb: bool,
}

impl CardDevice {
    /// The stable, converting name: `plughw:CARD=<id>,DEV=<n>`.
    pub fn plughw(&self) -> String {
        format!("plughw:CARD={},DEV={}", self.card_id, self.device)
    }
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
    /// Capture devices of sound cards, in card order.
    pub cards: Vec<CardDevice>,
    pub others: Vec<NamedPcm>,
    /// Cards that have no capture device (HDMI, headphone jacks, USB
    /// speakers), by name: said when nothing can be chosen.
    pub playback_only: Vec<String>,
    pub problems: Vec<String>,
}

/// Why `device = "auto"` found nothing to capture from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCaptureCard {
    /// The cards there are, all playback-only.
    pub playback_only: Vec<String>,
}

impl std::fmt::Display for NoCaptureCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no sound card with a capture device")?;
        if !self.playback_only.is_empty() {
            write!(f, " (playback only: {})", self.playback_only.join(", "))?;
        }
        f.write_str("; plug in a USB sound card")
    }
}

impl std::error::Error for NoCaptureCard {}

/// What `device = "auto"` captures from, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// `plughw:CARD=<id>,DEV=<n>`.
    pub device: String,
    /// The card's id, for its mixer.
    pub card_id: String,
    /// Why this one, in words for the log and the status page.
    pub reason: String,
}

/// Chooses the capture device for `device = "auto"`: a USB interface
/// first, else any other card, each in card order, the card's first
/// capture device. `None` (with the reason) when no card can capture.
pub fn choose(list: &DeviceList) -> Result<Choice, NoCaptureCard> {
    // One entry per card: its first capture device.
    let mut cards: Vec<&CardDevice> = Vec::new();
    for c in &list.cards {
        if !cards.iter().any(|k| k.card_id == c.card_id) {
            cards.push(c);
        }
    }
    let usb: Vec<&&CardDevice> = cards.iter().filter(|c| c.usb).collect();
    let (pick, reason) = match (usb.first(), cards.first()) {
        (Some(first), _) => {
            let reason = match (usb.len(), cards.len()) {
                (1, 1) => "USB, the only card with capture".to_string(),
                (1, n) => format!("USB, the only USB card of {n} cards with capture"),
                (n, _) => format!("USB, the first of {n} USB cards with capture"),
            };
            (**first, reason)
        }
        (None, Some(first)) => {
            let reason = match cards.len() {
                1 => "the only card with capture (not USB)".to_string(),
                n => format!("the first of {n} cards with capture (none is USB)"),
            };
            (*first, reason)
        }
        (None, None) => {
            return Err(NoCaptureCard {
                playback_only: list.playback_only.clone(),
            });
        }
    };
    Ok(Choice {
        device: pick.plughw(),
        card_id: pick.card_id.clone(),
        reason: format!("{} ({})", reason, pick.card_name),
    })
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
        if !list.playback_only.is_empty() {
            let _ = writeln!(out, "Cards with playback only: {}.\n", list.playback_only.join(", "));
        }
    } else {
        let _ = writeln!(out, "Sound cards (names that survive USB re-plugging and re-ordering):");
        let auto = choose(list).ok();
        for c in &list.cards {
            let plug = c.plughw();
            match &auto {
                Some(a) if a.device == plug => {
                    let _ = writeln!(out, "  \"{plug}\"   <- device = \"auto\" uses this: {}", a.reason);
                }
                _ => {
                    let _ = writeln!(out, "  \"{plug}\"");
                }
            }
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

/// A USB audio card: snd-usb-audio names its driver `USB-Audio` and puts
/// the USB path in the long name ("… at usb-3f980000.usb-1.3, full speed").
pub fn is_usb(driver: &str, longname: &str) -> bool {
    driver == "USB-Audio" || longname.contains(" at usb-")
}

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
        let usb = is_usb(
            info.get_driver().unwrap_or_default(),
            info.get_longname().unwrap_or_default(),
        );
        let before = list.cards.len();
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
                    usb,
                });
            }
        }
        if list.cards.len() == before {
            list.playback_only.push(format!("{card_name} ({card_id})"));
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
                usb: true,
            }],
            others: vec![NamedPcm {
                name: "default".into(),
                description: one_line("Default Audio Device\n  with extras"),
            }],
            playback_only: vec!["vc4-hdmi-0 (vc4hdmi0)".into()],
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
        assert!(
            text.contains(
                "\"plughw:CARD=Device,DEV=0\"   <- device = \"auto\" uses this: USB, the only card with capture"
            ),
            "{text}"
        );
    }

    fn card(index: i32, id: &str, device: u32, usb: bool) -> CardDevice {
        CardDevice {
            card_id: id.into(),
            card_index: index,
            card_name: format!("{id} card"),
            device,
            device_name: "PCM".into(),
            usb,
        }
    }

    /// The cards a Pi shows: HDMI and the headphone jack never capture,
    /// so they are never in `cards`, only in `playback_only`.
    fn pi(cards: Vec<CardDevice>) -> DeviceList {
        DeviceList {
            cards,
            playback_only: vec!["vc4-hdmi-0 (vc4hdmi0)".into(), "bcm2835 Headphones (Headphones)".into()],
            ..DeviceList::default()
        }
    }

    #[test]
    fn auto_chooses_from_the_enumerated_cards() {
        struct Case {
            what: &'static str,
            list: DeviceList,
            device: Option<&'static str>,
            reason: &'static str,
        }
        let cases = [
            Case {
                what: "HDMI and headphones only",
                list: pi(vec![]),
                device: None,
                reason: "no sound card with a capture device (playback only: vc4-hdmi-0 (vc4hdmi0), bcm2835 Headphones (Headphones)); plug in a USB sound card",
            },
            Case {
                what: "no cards at all",
                list: DeviceList::default(),
                device: None,
                reason: "no sound card with a capture device; plug in a USB sound card",
            },
            Case {
                what: "HDMI first, then USB",
                list: pi(vec![card(3, "Device", 0, true)]),
                device: Some("plughw:CARD=Device,DEV=0"),
                reason: "USB, the only card with capture (Device card)",
            },
            Case {
                what: "USB first (card 0), then HDMI and headphones",
                list: pi(vec![card(0, "Device", 0, true)]),
                device: Some("plughw:CARD=Device,DEV=0"),
                reason: "USB, the only card with capture (Device card)",
            },
            Case {
                what: "a USB speaker (no capture) is the only USB card",
                list: DeviceList {
                    playback_only: vec!["vc4-hdmi-0 (vc4hdmi0)".into(), "USB Speaker (Speaker)".into()],
                    ..DeviceList::default()
                },
                device: None,
                reason: "no sound card with a capture device (playback only: vc4-hdmi-0 (vc4hdmi0), USB Speaker (Speaker)); plug in a USB sound card",
            },
            Case {
                what: "USB first, then a HAT",
                list: pi(vec![card(0, "Device", 0, true), card(1, "sndrpihifiberry", 0, false)]),
                device: Some("plughw:CARD=Device,DEV=0"),
                reason: "USB, the only USB card of 2 cards with capture (Device card)",
            },
            Case {
                what: "a HAT first, then USB",
                list: pi(vec![card(0, "sndrpihifiberry", 0, false), card(2, "Device", 0, true)]),
                device: Some("plughw:CARD=Device,DEV=0"),
                reason: "USB, the only USB card of 2 cards with capture (Device card)",
            },
            Case {
                what: "two USB cards: the first in card order",
                list: pi(vec![card(1, "CODEC", 0, true), card(2, "Device", 0, true)]),
                device: Some("plughw:CARD=CODEC,DEV=0"),
                reason: "USB, the first of 2 USB cards with capture (CODEC card)",
            },
            Case {
                what: "a card with two capture devices counts once, its first device",
                list: pi(vec![card(1, "Loopback", 0, false), card(1, "Loopback", 1, false)]),
                device: Some("plughw:CARD=Loopback,DEV=0"),
                reason: "the only card with capture (not USB) (Loopback card)",
            },
            Case {
                what: "a USB speaker (no capture) beside a capture card",
                list: DeviceList {
                    cards: vec![card(1, "Intel", 0, false)],
                    playback_only: vec!["USB Speaker (Speaker)".into()],
                    ..DeviceList::default()
                },
                device: Some("plughw:CARD=Intel,DEV=0"),
                reason: "the only card with capture (not USB) (Intel card)",
            },
            Case {
                what: "two non-USB cards",
                list: pi(vec![card(1, "Intel", 0, false), card(2, "Loopback", 0, false)]),
                device: Some("plughw:CARD=Intel,DEV=0"),
                reason: "the first of 2 cards with capture (none is USB) (Intel card)",
            },
        ];
        for c in cases {
            match (choose(&c.list), c.device) {
                (Ok(choice), Some(device)) => {
                    assert_eq!(choice.device, device, "{}", c.what);
                    assert_eq!(choice.reason, c.reason, "{}", c.what);
                }
                (Err(why), None) => assert_eq!(why.to_string(), c.reason, "{}", c.what),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.what),
            }
        }
    }

    #[test]
    fn a_card_that_returns_with_a_new_index_is_chosen_by_the_same_name() {
        let before = choose(&pi(vec![card(2, "Device", 0, true)])).expect("chosen");
        assert!(choose(&pi(vec![])).is_err(), "unplugged: nothing to choose");
        let after = choose(&pi(vec![card(4, "Device", 0, true)])).expect("chosen again");
        assert_eq!(before, after);
    }

    #[test]
    fn usb_cards_are_known_by_driver_or_bus_path() {
        assert!(is_usb("USB-Audio", "Generic USB Audio"));
        assert!(is_usb(
            "",
            "C-Media USB Headphone Set at usb-0000:01:00.0-1.4, full speed"
        ));
        assert!(!is_usb("vc4-hdmi", "vc4-hdmi-0"));
        assert!(!is_usb("Loopback", "Loopback 1"));
    }

    #[test]
    fn no_card_says_what_to_do() {
        let text = render(&DeviceList::default(), "plughw:CARD=Device,DEV=0");
        assert!(text.contains("none with a capture device"), "{text}");
        assert!(text.contains("streams the fallback"), "{text}");
    }
}
