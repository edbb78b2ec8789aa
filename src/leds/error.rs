//! Why the status LEDs are off. Built on the main thread at start-up; each
//! variant's message says what to do, and is logged once.

/// Why no backend could drive the LEDs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedError {
    /// No `/dev/gpiochip*`: not a Raspberry Pi, or a container without the
    /// devices (give it `/dev/gpiochip*`).
    #[error("no GPIO character devices (/dev/gpiochip*) here (not a Raspberry Pi?)")]
    NoChips,
    /// Chips exist, but none has the Pi header's line names or a known
    /// label: set `gpio.chip`.
    #[error("no GPIO chip has lines named {names} (not a Raspberry Pi?); set gpio.chip (chips here: {chips})")]
    NoHeaderChip { names: String, chips: String },
    /// `gpio.chip` matches no chip here: correct it, or set it to "".
    #[error("no GPIO chip matches gpio.chip = {spec:?} (chips here: {chips})")]
    ChipNotFound { spec: String, chips: String },
    /// The user may not open the chip: add it to group `gpio` (the udev
    /// rule gives `/dev/gpiochip*` to that group).
    #[error("permission denied opening {path}: add the user to group gpio")]
    PermissionDenied { path: String },
    /// The chip could not be opened for another reason.
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    /// The configured pin is not a line of the chip: check `gpio.*_pin`
    /// and `gpio.chip`.
    #[error("{chip} has {num_lines} lines; line {line} (gpio.{key}) is not one of them")]
    NoSuchLine {
        chip: String,
        line: u32,
        num_lines: usize,
        key: &'static str,
    },
    /// Another program or a kernel driver (a device-tree overlay) holds the
    /// line: free it, or choose another pin.
    #[error("line {line} of {chip} is busy (used by {by})")]
    Busy { chip: String, line: u32, by: String },
    /// The kernel refused the request for another reason.
    #[error("cannot request lines {lines} of {chip}: {reason}")]
    Request {
        chip: String,
        lines: String,
        reason: String,
    },
    /// rppal could not map the GPIO block either.
    #[error("{cdev}; rppal through /dev/gpiomem failed too: {rppal}")]
    RppalToo { cdev: Box<LedError>, rppal: String },
    /// `gpio.chip` is not valid (the configuration refuses this at start-up).
    #[error("gpio.chip = {spec:?} is not valid; expected {accepted}")]
    InvalidChip { spec: String, accepted: &'static str },
    /// Built without the `gpio` feature: rebuild with it.
    #[error("this build has no GPIO character device backend (built without the gpio feature)")]
    NotBuilt,
}
