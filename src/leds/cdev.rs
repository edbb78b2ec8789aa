//! The GPIO character device backend (`/dev/gpiochipN`, uAPI v2, through
//! gpiocdev): Debian's kernel, Raspberry Pi OS and the Pi 5 all have it.
//!
//! [`probe`] and [`open`] run once on the main thread at start-up; the
//! [`CdevLeds`] they return is then used only by the "leds" thread. Both
//! lines are one request, held until Tower exits; a failed write is
//! logged once.

use std::path::Path;

use gpiocdev::Request;
use gpiocdev::line::Value;

use super::select::{ChipLines, ChipSpec, LineInfo, OpenError, ProbedChip, Selected};
use super::{Led, LedConfig, LedError, LedStatus, Leds};

/// The two LED lines, requested as outputs.
pub struct CdevLeds {
    request: Request,
    offsets: [u32; 2],
    status: LedStatus,
    write_failed: bool,
}

impl Leds for CdevLeds {
    fn set(&mut self, led: Led, on: bool) {
        let offset = self.offsets[led as usize];
        if let Err(e) = self.request.set_value(offset, Value::from(on))
            && !std::mem::replace(&mut self.write_failed, true)
        {
            tracing::warn!(component = "leds", "cannot set GPIO line {offset}: {e} (logged once)");
        }
    }

    fn release(&mut self) {
        self.set(Led::Encoder, false);
        self.set(Led::Input, false);
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

/// Finds the chip (see [`super::select::select`]) and requests both lines
/// as outputs, off.
pub fn open(config: &LedConfig, spec: &ChipSpec) -> Result<CdevLeds, LedError> {
    // A path may be a link (a udev alias): compare the device it names.
    let spec = match spec {
        ChipSpec::Path(p) => ChipSpec::Path(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        other => other.clone(),
    };
    let chips = probe();
    let sel = super::select::select(&spec, &chips, [config.encoder_pin, config.input_pin])?;
    let mut builder = Request::builder();
    builder
        .on_chip(&sel.path)
        .with_consumer("tower")
        .with_lines(&sel.offsets)
        .as_output(Value::Inactive);
    if config.active_low {
        // The kernel inverts: Active (lit) drives the line low.
        builder.as_active_low();
    }
    let request = builder.request().map_err(|e| request_error(&sel, e))?;
    Ok(CdevLeds {
        request,
        offsets: sel.offsets,
        status: LedStatus {
            backend: "gpiochip",
            chip: Some(format!("{} {:?}", sel.path.display(), sel.label)),
            lines: Some(sel.offsets),
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
            lines: format!("{} and {}", sel.offsets[0], sel.offsets[1]),
            reason: e.to_string(),
        },
    }
}
