//! Which GPIO chip carries the LEDs, and which backend drives them (pure).
//!
//! Called once on the main thread at start-up, over what was probed: the
//! chips (`/dev/gpiochipN`, their labels and line names, see `cdev`) and
//! whether `/dev/gpiomem` exists. Everything here is a function of its
//! arguments, so it is tested with made-up chip lists.

use std::fmt;
use std::path::{Path, PathBuf};

use super::LedError;

/// Labels of the chips that carry the 40-pin header's GPIO 0–27, at
/// offsets equal to the BCM numbers: the Pi 5's RP1, the Pi 4's and the
/// Pi 3's SoC (Raspberry Pi OS and mainline kernels label them alike).
pub const HEADER_LABELS: &[&str] = &["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"];

/// The kernel keeps a chip's label in 32 bytes, the last one a NUL.
const MAX_LABEL: usize = 31;

/// The `gpio.chip` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChipSpec {
    /// `""`: the chip whose lines are named `GPIO<pin>`, else one of
    /// [`HEADER_LABELS`].
    Auto,
    /// `/dev/gpiochip0`, or a link to one.
    Path(PathBuf),
    /// `gpiochip0`.
    Name(String),
    /// `pinctrl-bcm2711`.
    Label(String),
}

impl ChipSpec {
    /// What `gpio.chip` accepts, for the configuration's error message.
    pub const ACCEPTED: &'static str = "\"\" (find the chip by its line names GPIO<n>), a path such as /dev/gpiochip0, \
         a chip name such as gpiochip0, or a chip label such as pinctrl-bcm2711 (at most 31 characters)";

    /// Parses `gpio.chip`; the error is [`ChipSpec::ACCEPTED`].
    pub fn parse(s: &str) -> Result<ChipSpec, &'static str> {
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(Self::ACCEPTED);
        }
        if s.is_empty() {
            return Ok(ChipSpec::Auto);
        }
        if s.starts_with('/') {
            return Ok(ChipSpec::Path(PathBuf::from(s)));
        }
        if s.contains('/') || s.len() > MAX_LABEL {
            return Err(Self::ACCEPTED);
        }
        match s.strip_prefix("gpiochip") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Ok(ChipSpec::Name(s.into())),
            _ => Ok(ChipSpec::Label(s.into())),
        }
    }
}

/// One line as its chip reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineInfo {
    pub name: String,
    /// `Some` (possibly empty) when something holds the line.
    pub consumer: Option<String>,
}

/// Why a chip could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    PermissionDenied,
    Other(String),
}

/// A chip's label and lines, once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipLines {
    pub label: String,
    pub lines: Vec<LineInfo>,
}

/// One `/dev/gpiochipN` as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedChip {
    /// The resolved path.
    pub path: PathBuf,
    /// `gpiochipN`.
    pub name: String,
    pub probe: Result<ChipLines, OpenError>,
}

/// How the chip was found, for the start-up line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    LineNames,
    Label,
    Config,
}

impl fmt::Display for FoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoundBy::LineNames => "found by its line names",
            FoundBy::Label => "found by its label",
            FoundBy::Config => "set by gpio.chip",
        })
    }
}

/// The chip and the line offsets to request (in the order of the pins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub path: PathBuf,
    pub name: String,
    pub label: String,
    pub offsets: Vec<u32>,
    pub found_by: FoundBy,
}

/// The chip among `chips` for `spec`, with the offsets of `pins` (BCM
/// numbers, each with the key that set it: `encoder_pin`, `input_pin`,
/// `amp_pin`). Lines named `GPIO<pin>` give their own offsets; on a chip
/// without such names the offset is the pin number.
pub fn select(spec: &ChipSpec, chips: &[ProbedChip], pins: &[(u8, &'static str)]) -> Result<Selected, LedError> {
    let names: Vec<String> = pins.iter().map(|(p, _)| format!("GPIO{p}")).collect();
    let opened = || chips.iter().filter_map(|c| c.probe.as_ref().ok().map(|l| (c, l)));
    let (chip, lines, found_by) = match spec {
        ChipSpec::Auto => {
            let named = opened().find(|(_, l)| named_offsets(l, &names).is_some());
            match named {
                Some((c, l)) => (c, l, FoundBy::LineNames),
                None => match opened().find(|(_, l)| HEADER_LABELS.contains(&l.label.as_str())) {
                    Some((c, l)) => (c, l, FoundBy::Label),
                    None => {
                        return Err(unreadable(chips).unwrap_or_else(|| match chips.is_empty() {
                            true => LedError::NoChips,
                            false => LedError::NoHeaderChip {
                                names: names.join("/"),
                                chips: listing(chips),
                            },
                        }));
                    }
                },
            }
        }
        ChipSpec::Label(label) => match opened().find(|(_, l)| &l.label == label) {
            Some((c, l)) => (c, l, FoundBy::Config),
            None => return Err(unreadable(chips).unwrap_or_else(|| not_found(label, chips))),
        },
        ChipSpec::Path(path) => by(chips, |c| c.path == *path, &path.display().to_string())?,
        ChipSpec::Name(name) => by(chips, |c| c.name == *name, name)?,
    };
    let offsets = named_offsets(lines, &names).unwrap_or_else(|| pins.iter().map(|(p, _)| u32::from(*p)).collect());
    for (&offset, &(_, key)) in offsets.iter().zip(pins) {
        match lines.lines.get(offset as usize) {
            None => {
                return Err(LedError::NoSuchLine {
                    chip: chip.name.clone(),
                    line: offset,
                    num_lines: lines.lines.len(),
                    key,
                });
            }
            Some(LineInfo {
                consumer: Some(consumer),
                ..
            }) => {
                return Err(LedError::Busy {
                    chip: chip.name.clone(),
                    line: offset,
                    by: user(consumer),
                });
            }
            Some(_) => {}
        }
    }
    Ok(Selected {
        path: chip.path.clone(),
        name: chip.name.clone(),
        label: lines.label.clone(),
        offsets,
        found_by,
    })
}

/// Who holds a line: its consumer label, or the kernel when it has none
/// (pin muxing claims lines without a label).
pub fn user(consumer: &str) -> String {
    match consumer {
        "" => "the kernel".into(),
        c => format!("{c:?}"),
    }
}

/// The offsets of the lines called `names` on this chip, if it has them all.
fn named_offsets(chip: &ChipLines, names: &[String]) -> Option<Vec<u32>> {
    names
        .iter()
        .map(|n| chip.lines.iter().position(|l| &l.name == n).map(|i| i as u32))
        .collect()
}

/// The chip `matches` picks, opened.
fn by<'a>(
    chips: &'a [ProbedChip],
    matches: impl Fn(&ProbedChip) -> bool,
    spec: &str,
) -> Result<(&'a ProbedChip, &'a ChipLines, FoundBy), LedError> {
    let chip = chips
        .iter()
        .find(|c| matches(c))
        .ok_or_else(|| not_found(spec, chips))?;
    match &chip.probe {
        Ok(lines) => Ok((chip, lines, FoundBy::Config)),
        Err(e) => Err(open_error(&chip.path, e)),
    }
}

/// The first chip that could not be opened, as the reason nothing was found.
fn unreadable(chips: &[ProbedChip]) -> Option<LedError> {
    chips
        .iter()
        .find_map(|c| c.probe.as_ref().err().map(|e| open_error(&c.path, e)))
}

fn open_error(path: &Path, e: &OpenError) -> LedError {
    let path = path.display().to_string();
    match e {
        OpenError::PermissionDenied => LedError::PermissionDenied { path },
        OpenError::Other(reason) => LedError::Open {
            path,
            reason: reason.clone(),
        },
    }
}

fn not_found(spec: &str, chips: &[ProbedChip]) -> LedError {
    LedError::ChipNotFound {
        spec: spec.into(),
        chips: listing(chips),
    }
}

/// `gpiochip0 "pinctrl-bcm2711", gpiochip1 "raspberrypi-exp-gpio"`.
fn listing(chips: &[ProbedChip]) -> String {
    if chips.is_empty() {
        return "none".into();
    }
    let each: Vec<String> = chips
        .iter()
        .map(|c| match &c.probe {
            Ok(l) => format!("{} {:?}", c.name, l.label),
            Err(_) => format!("{} (unreadable)", c.name),
        })
        .collect();
    each.join(", ")
}

/// The backend the LEDs get.
#[derive(Debug)]
pub enum Backend<C> {
    /// The GPIO character device, ready.
    Cdev(C),
    /// rppal through `/dev/gpiomem`, tried because the character device
    /// failed as said.
    Rppal { cdev: LedError },
    /// No LEDs, and why.
    None(LedError),
}

/// The character device when it serves; else rppal when this build has it
/// and `/dev/gpiomem` exists; else none, with the character device's error.
pub fn choose_backend<C>(cdev: Result<C, LedError>, gpiomem_exists: bool, rppal_built: bool) -> Backend<C> {
    match cdev {
        Ok(c) => Backend::Cdev(c),
        Err(cdev) if gpiomem_exists && rppal_built => Backend::Rppal { cdev },
        Err(e) => Backend::None(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str) -> LineInfo {
        LineInfo {
            name: name.into(),
            consumer: None,
        }
    }

    /// A chip with `n` lines; `named` lines get the Pi's names GPIO<i>.
    fn chip(n: u32, label: &str, lines: u32, named: bool) -> ProbedChip {
        ProbedChip {
            path: PathBuf::from(format!("/dev/gpiochip{n}")),
            name: format!("gpiochip{n}"),
            probe: Ok(ChipLines {
                label: label.into(),
                lines: (0..lines)
                    .map(|i| line(&if named { format!("GPIO{i}") } else { String::new() }))
                    .collect(),
            }),
        }
    }

    fn locked(n: u32) -> ProbedChip {
        ProbedChip {
            path: PathBuf::from(format!("/dev/gpiochip{n}")),
            name: format!("gpiochip{n}"),
            probe: Err(OpenError::PermissionDenied),
        }
    }

    const PINS: &[(u8, &str)] = &[(17, "encoder_pin"), (27, "input_pin")];

    fn spec(s: &str) -> ChipSpec {
        ChipSpec::parse(s).expect("valid gpio.chip")
    }

    #[test]
    fn the_chip_with_lines_named_gpio17_and_gpio27_is_chosen() {
        let exp = chip(0, "raspberrypi-exp-gpio", 8, false);
        let soc = chip(1, "pinctrl-bcm2711", 58, true);
        let s = select(&ChipSpec::Auto, &[exp, soc], PINS).expect("found");
        assert_eq!(
            (s.name.as_str(), s.offsets, s.found_by),
            ("gpiochip1", vec![17, 27], FoundBy::LineNames)
        );
    }

    #[test]
    fn named_lines_give_their_own_offsets() {
        // A chip whose header lines do not start at offset 0.
        let mut c = chip(4, "some-gpio", 64, false);
        let lines = &mut c.probe.as_mut().expect("open").lines;
        lines[40].name = "GPIO17".into();
        lines[50].name = "GPIO27".into();
        let s = select(&ChipSpec::Auto, &[c], PINS).expect("found");
        assert_eq!(s.offsets, [40, 50]);
    }

    #[test]
    fn unnamed_lines_fall_back_to_the_known_labels() {
        // A Pi 5 whose RP1 lines are not named: the chip labelled pinctrl-rp1.
        let chips = [
            chip(0, "gpio-brcmstb@107d508500", 32, false),
            chip(4, "pinctrl-rp1", 54, false),
        ];
        let s = select(&ChipSpec::Auto, &chips, PINS).expect("found");
        assert_eq!(
            (s.name.as_str(), s.offsets, s.found_by),
            ("gpiochip4", vec![17, 27], FoundBy::Label)
        );
    }

    #[test]
    fn two_named_chips_take_the_first_and_half_named_chips_do_not_count() {
        let mut half = chip(0, "half", 32, false);
        half.probe.as_mut().expect("open").lines[17].name = "GPIO17".into();
        let chips = [half, chip(1, "a", 32, true), chip(2, "b", 32, true)];
        assert_eq!(select(&ChipSpec::Auto, &chips, PINS).expect("found").name, "gpiochip1");
    }

    #[test]
    fn no_pi_chip_says_so_and_names_the_key() {
        let chips = [chip(0, "gpio-sim.0-node0", 8, false)];
        let e = select(&ChipSpec::Auto, &chips, PINS).expect_err("not a Pi");
        assert_eq!(
            e.to_string(),
            "no GPIO chip has lines named GPIO17/GPIO27 (not a Raspberry Pi?); set gpio.chip \
             (chips here: gpiochip0 \"gpio-sim.0-node0\")"
        );
        let e = select(&ChipSpec::Auto, &[], PINS).expect_err("no chips");
        assert_eq!(e, LedError::NoChips);
        assert!(e.to_string().contains("/dev/gpiochip"), "{e}");
    }

    #[test]
    fn a_chip_that_cannot_be_opened_says_which_group_to_join() {
        let e = select(&ChipSpec::Auto, &[locked(0)], PINS).expect_err("locked");
        assert_eq!(
            e.to_string(),
            "permission denied opening /dev/gpiochip0: add the user to group gpio"
        );
        let e = select(&spec("gpiochip0"), &[locked(0)], PINS).expect_err("locked");
        assert!(matches!(e, LedError::PermissionDenied { .. }), "{e}");
        // A readable Pi chip is used even if another chip is locked.
        let s = select(&ChipSpec::Auto, &[locked(0), chip(1, "x", 32, true)], PINS).expect("found");
        assert_eq!(s.name, "gpiochip1");
    }

    #[test]
    fn gpio_chip_as_path_name_or_label() {
        let chips = [
            chip(0, "pinctrl-bcm2711", 58, false),
            chip(1, "gpio-sim.0-node0", 32, false),
        ];
        for s in ["/dev/gpiochip1", "gpiochip1", "gpio-sim.0-node0"] {
            let got = select(&spec(s), &chips, PINS).expect(s);
            assert_eq!(
                (got.name.as_str(), got.offsets, got.found_by),
                ("gpiochip1", vec![17, 27], FoundBy::Config),
                "{s}"
            );
        }
    }

    #[test]
    fn a_named_chip_that_is_missing_lists_the_chips_there_are() {
        let chips = [chip(0, "pinctrl-bcm2711", 58, true)];
        for s in ["gpiochip3", "/dev/gpiochip3", "pinctrl-rp1"] {
            let e = select(&spec(s), &chips, PINS).expect_err(s).to_string();
            assert_eq!(
                e,
                format!("no GPIO chip matches gpio.chip = {s:?} (chips here: gpiochip0 \"pinctrl-bcm2711\")")
            );
        }
    }

    #[test]
    fn a_busy_line_names_its_user_and_a_short_chip_names_the_key() {
        let mut c = chip(0, "pinctrl-bcm2835", 54, true);
        c.probe.as_mut().expect("open").lines[27].consumer = Some("led0".into());
        let e = select(&ChipSpec::Auto, &[c], PINS).expect_err("busy");
        assert_eq!(e.to_string(), "line 27 of gpiochip0 is busy (used by \"led0\")");
        let e = select(&spec("gpiochip0"), &[chip(0, "small", 8, false)], PINS).expect_err("short");
        assert_eq!(
            e.to_string(),
            "gpiochip0 has 8 lines; line 17 (gpio.encoder_pin) is not one of them"
        );
    }

    #[test]
    fn the_amplifier_line_is_found_with_the_leds_and_its_key_named() {
        let pins: &[(u8, &str)] = &[(17, "encoder_pin"), (27, "input_pin"), (22, "amp_pin")];
        let s = select(&ChipSpec::Auto, &[chip(0, "pinctrl-bcm2711", 58, true)], pins).expect("found");
        assert_eq!(s.offsets, [17, 27, 22]);
        // The amplifier alone (LEDs off).
        let s = select(
            &ChipSpec::Auto,
            &[chip(0, "pinctrl-bcm2711", 58, true)],
            &[(22, "amp_pin")],
        )
        .expect("found");
        assert_eq!(s.offsets, [22]);
        let mut c = chip(0, "pinctrl-bcm2835", 54, true);
        c.probe.as_mut().expect("open").lines[22].consumer = Some("spi".into());
        let e = select(&ChipSpec::Auto, &[c], pins).expect_err("busy");
        assert_eq!(e.to_string(), "line 22 of gpiochip0 is busy (used by \"spi\")");
        let e = select(&spec("gpiochip0"), &[chip(0, "small", 20, false)], &[(22, "amp_pin")]).expect_err("short");
        assert_eq!(
            e.to_string(),
            "gpiochip0 has 20 lines; line 22 (gpio.amp_pin) is not one of them"
        );
    }

    #[test]
    fn gpio_chip_values_parse_or_are_refused() {
        assert_eq!(spec(""), ChipSpec::Auto);
        assert_eq!(spec("/dev/gpiochip0"), ChipSpec::Path("/dev/gpiochip0".into()));
        assert_eq!(spec("gpiochip12"), ChipSpec::Name("gpiochip12".into()));
        assert_eq!(spec("pinctrl-rp1"), ChipSpec::Label("pinctrl-rp1".into()));
        assert_eq!(spec("gpiochip"), ChipSpec::Label("gpiochip".into()));
        for bad in [" gpiochip0", "dev/gpiochip0", "a\nb", &"x".repeat(32)] {
            assert_eq!(ChipSpec::parse(bad), Err(ChipSpec::ACCEPTED), "{bad:?}");
        }
    }

    #[test]
    fn the_character_device_first_then_rppal_where_gpiomem_exists() {
        let busy = || LedError::NoChips;
        assert!(matches!(choose_backend(Ok(1), true, true), Backend::Cdev(1)));
        assert!(matches!(
            choose_backend::<()>(Err(busy()), true, true),
            Backend::Rppal { .. }
        ));
        assert!(matches!(
            choose_backend::<()>(Err(busy()), false, true),
            Backend::None(LedError::NoChips)
        ));
        assert!(matches!(
            choose_backend::<()>(Err(busy()), true, false),
            Backend::None(LedError::NoChips)
        ));
    }
}
