//! The GPIO character device backend (`/dev/gpiochipN`, uAPI v2, through
//! gpiocdev): Debian's kernel, Raspberry Pi OS and the Pi 5 all have it.
//!
//! [`probe`] and [`open`] run once on the main thread at start-up; the
//! [`CdevLeds`] they return is then used only by the "leds" thread. The
//! LED lines and the amplifier's are one request, held until Tower exits
//! (each line with its own active-low setting); a failed write is logged
//! once.

use std::path::Path;

use gpiocdev::Request;
use gpiocdev::line::Value;

use super::select::{ChipLines, ChipSpec, LineInfo, OpenError, ProbedChip, Selected};
use super::{Led, LedConfig, LedError, LedStatus, Leds};

/// The LED lines and the amplifier's, requested as outputs.
pub struct CdevLeds {
    request: Request,
    /// Each [`Led`]'s line, when requested.
    offsets: [Option<u32>; 3],
    status: LedStatus,
    write_failed: bool,
}

impl Leds for CdevLeds {
    fn set(&mut self, led: Led, on: bool) {
        let Some(offset) = self.offsets[led as usize] else {
            return;
        };
        if let Err(e) = self.request.set_value(offset, Value::from(on))
            && !std::mem::replace(&mut self.write_failed, true)
        {
            tracing::warn!(component = "leds", "cannot set GPIO line {offset}: {e} (logged once)");
        }
    }

    fn release(&mut self) {
        for led in Led::ALL {
            self.set(led, false);
        }
    }

    fn status(&self) -> LedStatus {
        self.status.clone()
    }
}

/// Every GPIO chip with its label and lines (empty when there are none).
pub fn probe() -> Vec<ProbedChip> {
    gpiocdev::chip::chips()
        .unwrap_or_default()
        .into_iter()
        .map(|path| probe_chip(&path))
        .collect()
}

fn probe_chip(path: &Path) -> ProbedChip {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let probe = gpiocdev::Chip::from_path(path)
        .map_err(|e| match errno(&e) {
            Some(libc::EACCES | libc::EPERM) => OpenError::PermissionDenied,
            _ => OpenError::Other(e.to_string()),
        })
        .and_then(|chip| {
            let info = chip.info().map_err(|e| OpenError::Other(e.to_string()))?;
            let lines = (0..info.num_lines)
                .map(|offset| {
                    let l = chip.line_info(offset).map_err(|e| OpenError::Other(e.to_string()))?;
                    Ok(LineInfo {
                        name: l.name,
                        consumer: l.used.then_some(l.consumer),
                    })
                })
                .collect::<Result<Vec<_>, OpenError>>()?;
            Ok(ChipLines {
                label: info.label,
                lines,
            })
        });
    ProbedChip {
        path: path.to_path_buf(),
        name,
        probe,
    }
}

/// The errno behind a gpiocdev error, if it carries one.
fn errno(e: &gpiocdev::Error) -> Option<i32> {
    match e {
        gpiocdev::Error::Os(n) => Some(n.0),
        _ => None,
    }
}

/// Finds the chip (see [`super::select::select`]) and requests the LED
/// lines (when enabled) and the amplifier's (when set) as outputs, off.
pub fn open(config: &LedConfig, spec: &ChipSpec) -> Result<CdevLeds, LedError> {
    // A path may be a link (a udev alias): compare the device it names.
    let spec = match spec {
        ChipSpec::Path(p) => ChipSpec::Path(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        other => other.clone(),
    };
    let chips = probe();
    let wanted = config.lines();
    let pins: Vec<(u8, &'static str)> = wanted.iter().map(|&(_, pin, key)| (pin, key)).collect();
    let sel = super::select::select(&spec, &chips, &pins)?;
    let mut offsets = [None; 3];
    let mut builder = Request::builder();
    builder.on_chip(&sel.path).with_consumer("tower");
    for (&(led, _, _), &offset) in wanted.iter().zip(&sel.offsets) {
        offsets[led as usize] = Some(offset);
        builder.with_line(offset).as_output(Value::Inactive);
        let active_low = match led {
            Led::Amp => config.amp.as_ref().is_some_and(|a| a.active_low),
            Led::Encoder | Led::Input => config.active_low,
        };
        if active_low {
            // The kernel inverts: Active (lit, on) drives the line low.
            builder.as_active_low();
        }
    }
    let request = builder.request().map_err(|e| request_error(&sel, e))?;
    Ok(CdevLeds {
        request,
        offsets,
        status: LedStatus {
            backend: "gpiochip",
            chip: Some(format!("{} {:?}", sel.path.display(), sel.label)),
            lines: offsets[0].zip(offsets[1]).map(|(a, b)| [a, b]),
            amp_line: offsets[Led::Amp as usize],
            off_because: None,
        },
        write_failed: false,
    })
}

fn request_error(sel: &Selected, e: gpiocdev::Error) -> LedError {
    match errno(&e) {
        Some(libc::EACCES | libc::EPERM) => LedError::PermissionDenied {
            path: sel.path.display().to_string(),
        },
        // EBUSY lands here too if a line was taken since the probe.
        _ => LedError::Request {
            chip: sel.name.clone(),
            lines: sel.offsets.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            reason: e.to_string(),
        },
    }
}
