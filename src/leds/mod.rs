//! Status LEDs on GPIO [T3]: one for the encoder, one for the input; and
//! the amplifier line [D4], on while program plays (see `amp`).
//!
//! | LED     | steady on | 2 Hz blink            | 8 Hz blink | 0.5 Hz blink | off      |
//! |---------|-----------|-----------------------|------------|--------------|----------|
//! | encoder | RUNNING   | STARTING / RESTARTING | FAILED     |              | STOPPED  |
//! | input   | live      |                       |            | grace        | fallback |
//!
//! On the SD image the Wi-Fi setup takes both over while it has something
//! to say [W6]: the setup hotspot open (the two take turns once a second),
//! or the address just joined from it (flashed digit by digit); see
//! `pattern::wifi_patterns`.
//!
//! [`open`] runs once on the main thread at start-up and picks the backend
//! ([`select::choose_backend`] over what was probed): the kernel's GPIO
//! character device (`cdev`, Cargo feature `gpio`, any Linux), else rppal
//! through `/dev/gpiomem` where that exists (`rppal`, feature `rppal`, ARM
//! only; rppal is no longer maintained), else none. It logs one info line
//! naming the backend and chip, or one warning naming the cause; the
//! stream never depends on the LEDs.
//!
//! The "leds" thread ([`start`], owned by the service) wakes at the next
//! blink edge, the amplifier's switch-off, or [`STATE_POLL`] after its
//! last look (or the stop signal), reads the states, and applies the pure
//! patterns ([`pattern`], [`amp::AmpSwitch`]) through [`LedDriver`], which
//! writes a line only when its level changes. With neither LED hardware
//! nor an amplifier line it sleeps until stopped (with test hooks on, it
//! looks every [`HOOK_POLL`], so a panic asked for is seen). [`stop`]
//! joins it and turns every line off. The amplifier line works with the
//! LEDs turned off (`gpio.enabled = false`); it shares their chip and
//! their request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audio::InputState;
use crate::encoder::state::EncoderState;
use crate::hooks::{PanicTarget, TestHooks};
use crate::worker::{StopSignal, Supervisor, Worker, WorkerError};

pub mod amp;
#[cfg(all(feature = "gpio", target_os = "linux"))]
mod cdev;
mod error;
mod fake;
pub mod pattern;
#[cfg(all(feature = "rppal", any(target_arch = "aarch64", target_arch = "arm")))]
mod rppal;
pub mod select;

pub use amp::{AmpBoard, AmpConfig, AmpStatus, AmpSwitch};
pub use error::LedError;
pub use fake::NullLeds;
#[cfg(any(test, feature = "test-hooks"))]
pub use fake::RecordingLeds;
pub use pattern::{Pattern, encoder_pattern, input_pattern, wifi_patterns};
use select::{Backend, ChipSpec};

/// How often the LED thread looks at the states when no blink is due to
/// change a pin sooner: a new state shows within this.
pub const STATE_POLL: Duration = Duration::from_millis(100);
/// How often it looks, with no LEDs to drive, when test hooks are on (a
/// panic asked for fires at its next turn).
pub const HOOK_POLL: Duration = Duration::from_millis(250);

/// Which line: an LED, or the amplifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    Encoder,
    Input,
    Amp,
}

impl Led {
    pub const ALL: [Led; 3] = [Led::Encoder, Led::Input, Led::Amp];
}

/// The LED hardware.
pub trait Leds: Send {
    fn set(&mut self, led: Led, on: bool);
    /// Turns both off and gives the pins back.
    fn release(&mut self) {}
    /// Which backend drives the LEDs, for `/status`.
    fn status(&self) -> LedStatus {
        LedStatus::off("no LED hardware")
    }
    /// Whether there are pins to drive (blinks then need their edges on
    /// time); `false` for the no-op stand-ins.
    fn drives_pins(&self) -> bool {
        true
    }
}

/// The LEDs' settings, from `[gpio]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedConfig {
    pub enabled: bool,
    /// BCM numbers.
    pub encoder_pin: u8,
    pub input_pin: u8,
    /// The LED lights when the pin is low.
    pub active_low: bool,
    /// `gpio.chip`: "" (find it), a path, a chip name or a label; see
    /// [`ChipSpec`].
    pub chip: String,
    /// The amplifier line, if any (it works with `enabled` false too).
    pub amp: Option<AmpConfig>,
}

impl LedConfig {
    /// The lines to drive, with their BCM pins and the keys that set them.
    pub fn lines(&self) -> Vec<(Led, u8, &'static str)> {
        let mut out = Vec::new();
        if self.enabled {
            out.push((Led::Encoder, self.encoder_pin, "encoder_pin"));
            out.push((Led::Input, self.input_pin, "input_pin"));
        }
        if let Some(amp) = &self.amp {
            out.push((Led::Amp, amp.pin, "amp_pin"));
        }
        out
    }
}

/// Which backend drives the LEDs, and on what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedStatus {
    /// `gpiochip`, `rppal` or `none`.
    pub backend: &'static str,
    /// `/dev/gpiochip0 "pinctrl-bcm2711"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip: Option<String>,
    /// The encoder's and the input's line offsets (BCM numbers for rppal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<[u32; 2]>,
    /// The amplifier's line offset, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amp_line: Option<u32>,
    /// Why there are no LEDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_because: Option<String>,
}

impl LedStatus {
    pub fn off(why: impl Into<String>) -> Self {
        LedStatus {
            backend: "none",
            chip: None,
            lines: None,
            amp_line: None,
            off_because: Some(why.into()),
        }
    }
}

/// No LEDs, saying why.
struct Dark(LedStatus);

impl Leds for Dark {
    fn set(&mut self, _: Led, _: bool) {}

    fn drives_pins(&self) -> bool {
        false
    }

    fn status(&self) -> LedStatus {
        self.0.clone()
    }
}

/// The configured LEDs and amplifier line; without them a no-op with one
/// warning saying why.
pub fn open(config: &LedConfig) -> Box<dyn Leds> {
    if config.lines().is_empty() {
        return Box::new(Dark(LedStatus::off("gpio.enabled = false")));
    }
    match open_backend(config) {
        Ok(leds) => leds,
        Err(why) => {
            let what = match (config.enabled, config.amp.is_some()) {
                (true, true) => "status LEDs and the amplifier line",
                (false, true) => "the amplifier line",
                _ => "status LEDs",
            };
            tracing::warn!(
                component = "leds",
                "{what} off: {why}. Streaming is not affected; set gpio.enabled = false (and gpio.amp_pin = 0) to silence this"
            );
            Box::new(Dark(LedStatus::off(why.to_string())))
        }
    }
}

/// Whether this build has the rppal backend.
const RPPAL_BUILT: bool = cfg!(all(
    feature = "rppal",
    any(target_arch = "aarch64", target_arch = "arm")
));

fn open_backend(config: &LedConfig) -> Result<Box<dyn Leds>, LedError> {
    let spec = ChipSpec::parse(&config.chip).map_err(|accepted| LedError::InvalidChip {
        spec: config.chip.clone(),
        accepted,
    })?;
    // rppal maps /dev/gpiomem, or /dev/gpiomem0 on a Pi 5.
    let gpiomem = ["/dev/gpiomem", "/dev/gpiomem0"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    match select::choose_backend(open_cdev(config, &spec), gpiomem, RPPAL_BUILT) {
        Backend::Cdev(leds) => {
            let st = leds.status();
            tracing::info!(
                component = "leds",
                backend = st.backend,
                "GPIO through the character device {}: {}",
                st.chip.as_deref().unwrap_or("?"),
                describe_lines(&st)
            );
            Ok(leds)
        }
        Backend::Rppal { cdev } => {
            let leds = open_rppal(config).map_err(|rppal| LedError::RppalToo {
                cdev: Box::new(cdev.clone()),
                rppal,
            })?;
            tracing::info!(
                component = "leds",
                backend = "rppal",
                "GPIO through rppal (/dev/gpiomem): {}; the GPIO character device did not serve: {cdev}",
                describe_lines(&leds.status())
            );
            Ok(leds)
        }
        Backend::None(e) => Err(e),
    }
}

/// "encoder LED on line 17, input LED on line 27, amplifier on line 22".
fn describe_lines(st: &LedStatus) -> String {
    let mut parts = Vec::new();
    if let Some([e, i]) = st.lines {
        parts.push(format!("encoder LED on line {e}, input LED on line {i}"));
    }
    if let Some(a) = st.amp_line {
        parts.push(format!("amplifier on line {a}"));
    }
    parts.join(", ")
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
fn open_cdev(config: &LedConfig, spec: &ChipSpec) -> Result<Box<dyn Leds>, LedError> {
    cdev::open(config, spec).map(|l| Box::new(l) as Box<dyn Leds>)
}

#[cfg(not(all(feature = "gpio", target_os = "linux")))]
fn open_cdev(_: &LedConfig, _: &ChipSpec) -> Result<Box<dyn Leds>, LedError> {
    Err(LedError::NotBuilt)
}

#[cfg(all(feature = "rppal", any(target_arch = "aarch64", target_arch = "arm")))]
fn open_rppal(config: &LedConfig) -> Result<Box<dyn Leds>, String> {
    rppal::open(config)
}

#[cfg(not(all(feature = "rppal", any(target_arch = "aarch64", target_arch = "arm"))))]
fn open_rppal(_: &LedConfig) -> Result<Box<dyn Leds>, String> {
    Err("this build has no rppal backend".into())
}

/// What the LED thread looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Looks {
    pub encoder: EncoderState,
    pub input: InputState,
    /// Program plays (the amplifier line).
    pub program: bool,
    /// What the Wi-Fi setup shows instead of the states, if anything.
    pub wifi: Option<crate::wifi::LedShow>,
}

/// Applies the patterns; pure but for the [`Leds`] it drives.
pub struct LedDriver {
    leds: Box<dyn Leds>,
    start: Instant,
    shown: [Option<bool>; 3],
    /// No LED hardware: nothing to blink on time.
    dark: bool,
    /// The amplifier's switch, and where its state is published.
    amp: Option<(AmpSwitch, Arc<AmpBoard>)>,
}

impl LedDriver {
    pub fn new(leds: Box<dyn Leds>, start: Instant) -> Self {
        let dark = !leds.drives_pins();
        LedDriver {
            leds,
            start,
            shown: [None; 3],
            dark,
            amp: None,
        }
    }

    /// Also drives the amplifier line, off `off_delay` after program.
    pub fn with_amp(mut self, off_delay: Duration, board: Arc<AmpBoard>) -> Self {
        self.amp = Some((AmpSwitch::new(off_delay), board));
        self
    }

    /// Sets the amplifier line for `program` at `now` (written only when it
    /// changes); returns when it is due to go off, if it is.
    pub fn amp(&mut self, program: bool, now: Instant) -> Option<Instant> {
        let (switch, board) = self.amp.as_mut()?;
        let on = switch.update(program, now);
        let off_at = switch.off_at();
        let i = Led::Amp as usize;
        if self.shown[i] != Some(on) {
            self.leds.set(Led::Amp, on);
            self.shown[i] = Some(on);
            board.set(on, off_at);
        } else if on {
            board.set(on, off_at);
        }
        off_at
    }

    /// Whether it drives an amplifier line (which follows program, so the
    /// states must be looked at every [`STATE_POLL`]).
    pub fn has_amp(&self) -> bool {
        self.amp.is_some()
    }

    /// Sets each LED for the states at `now`; pins are written only when a
    /// level changes. Returns when to look again: the next blink edge, or
    /// [`STATE_POLL`] from now if that is sooner (or no LED blinks); never
    /// (`None`) without LED hardware.
    pub fn update(&mut self, encoder: EncoderState, input: InputState, now: Instant) -> Option<Instant> {
        self.show(encoder_pattern(encoder), input_pattern(input), now)
    }

    /// [`LedDriver::update`], with the Wi-Fi setup's patterns in place of
    /// the states' while it has something to show.
    pub fn update_with(&mut self, looks: &Looks, now: Instant) -> Option<Instant> {
        match looks.wifi.map(wifi_patterns) {
            Some([encoder, input]) => self.show(encoder, input, now),
            None => self.update(looks.encoder, looks.input, now),
        }
    }

    fn show(&mut self, encoder: Pattern, input: Pattern, now: Instant) -> Option<Instant> {
        let t = now.saturating_duration_since(self.start);
        let patterns = [(Led::Encoder, encoder), (Led::Input, input)];
        for (i, (led, pattern)) in patterns.into_iter().enumerate() {
            let on = pattern.level(t);
            if self.shown[i] != Some(on) {
                self.leds.set(led, on);
                self.shown[i] = Some(on);
            }
        }
        if self.dark {
            return None;
        }
        let poll = now + STATE_POLL;
        Some(
            patterns
                .iter()
                .filter_map(|(_, p)| p.next_change(t))
                .map(|d| self.start + d)
                .fold(poll, Instant::min),
        )
    }

    pub fn release(&mut self) {
        self.leds.release();
        if let Some((_, board)) = &self.amp {
            board.set(false, None);
        }
    }
}

/// The "leds" thread, reading the encoder's and the input's states,
/// whether program plays and what the Wi-Fi setup shows through `read`;
/// with `amp`, it drives the amplifier line too (its off delay, and where
/// its state is shown).
pub fn start(
    leds: Box<dyn Leds>,
    amp: Option<(Duration, Arc<AmpBoard>)>,
    read: impl Fn() -> Looks + Send + 'static,
    supervisor: &Supervisor,
    hooks: Arc<TestHooks>,
) -> std::io::Result<Worker<()>> {
    Worker::spawn_supervised("leds", supervisor, move |stop: StopSignal| {
        let start = Instant::now();
        let mut driver = LedDriver::new(leds, start);
        if let Some((off_delay, board)) = amp {
            driver = driver.with_amp(off_delay, board);
        }
        loop {
            hooks.panic_point(PanicTarget::Leds);
            let looks = read();
            let now = Instant::now();
            let next = [
                driver.update_with(&looks, now),
                driver.amp(looks.program, now),
                driver.has_amp().then_some(now + STATE_POLL),
                hooks.enabled().then_some(now + HOOK_POLL),
            ]
            .into_iter()
            .flatten()
            .min();
            let stopped = match next {
                Some(at) => stop.sleep_until(at),
                None => stop.wait(),
            };
            if stopped {
                break;
            }
        }
        driver.release();
    })
}

/// Stops the thread (the LEDs go off).
pub fn stop(worker: Worker<()>, timeout: Duration) -> Result<(), WorkerError> {
    worker.stop(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_driver_writes_pins_only_on_changes() {
        let rec = RecordingLeds::default();
        let t0 = Instant::now();
        let mut d = LedDriver::new(Box::new(rec.clone()), t0);
        d.update(EncoderState::Running, InputState::Live, t0);
        d.update(EncoderState::Running, InputState::Live, t0 + MS(25));
        d.update(EncoderState::Failed, InputState::Fallback, t0 + MS(100));
        d.update(EncoderState::Failed, InputState::Fallback, t0 + MS(125));
        assert_eq!(
            rec.writes(),
            [
                (Led::Encoder, true),
                (Led::Input, true),
                // FAILED at 100 ms: off (second half of a 125 ms period)...
                (Led::Encoder, false),
                (Led::Input, false),
                // ...on again at 125 ms.
                (Led::Encoder, true),
            ]
        );
    }

    /// Drives the fake every 25 ms of simulated time from `t0` for
    /// `ticks` ticks, the states given by `at(t)`; returns each LED's level at
    /// each tick.
    fn simulate(
        rec: &RecordingLeds,
        t0: Instant,
        ticks: u64,
        at: impl Fn(Duration) -> (EncoderState, InputState),
    ) -> Vec<(Duration, bool, bool)> {
        let mut d = LedDriver::new(Box::new(rec.clone()), t0);
        let mut due = t0;
        let mut out = Vec::new();
        for _ in 0..ticks {
            let t = due - t0;
            let (e, i) = at(t);
            d.update(e, i, due);
            let level = |led| rec.level(led).expect("written");
            out.push((t, level(Led::Encoder), level(Led::Input)));
            due += MS(25);
        }
        out
    }

    /// Rising edges of one LED within [from, to).
    fn rises(trace: &[(Duration, bool, bool)], encoder: bool, from: u64, to: u64) -> usize {
        let level = |s: &(Duration, bool, bool)| if encoder { s.1 } else { s.2 };
        trace
            .windows(2)
            .filter(|w| (MS(from)..MS(to)).contains(&w[1].0) && !level(&w[0]) && level(&w[1]))
            .count()
    }

    #[test]
    fn the_patterns_over_simulated_time() {
        use EncoderState::*;
        let rec = RecordingLeds::default();
        // Encoder: RUNNING 0–1 s, FAILED 1–2 s, STARTING 2–3 s, STOPPED 3–4 s.
        // Input: live 0–1 s, grace 1–3 s, fallback 3–4 s.
        let trace = simulate(&rec, Instant::now(), 160, |t| match t.as_millis() {
            0..1000 => (Running, InputState::Live),
            1000..2000 => (Failed, InputState::Grace),
            2000..3000 => (Starting, InputState::Grace),
            _ => (Stopped, InputState::Fallback),
        });
        assert!(
            trace[..40].iter().all(|s| s.1 && s.2),
            "steady on while running and live"
        );
        // 8 Hz: eight flashes in the FAILED second (the first is the
        // pattern's own phase, not an edge); 2 Hz: two in the STARTING one.
        assert_eq!(rises(&trace, true, 1000, 2000), 7);
        assert_eq!(rises(&trace, true, 2000, 3000), 2);
        assert!(
            trace[120..].iter().all(|s| !s.1 && !s.2),
            "off when stopped and in fallback"
        );
        // Grace at 0.5 Hz: on for the first half of each 2 s period.
        for &(t, _, input) in &trace[40..120] {
            assert_eq!(input, (t.as_millis() % 2000) < 1000, "input at {t:?}");
        }
        // Only changes were written: as many writes as level changes, plus
        // the first write of each LED.
        let changes: usize = trace
            .windows(2)
            .map(|w| usize::from(w[0].1 != w[1].1) + usize::from(w[0].2 != w[1].2))
            .sum();
        assert_eq!(rec.writes().len(), changes + 2);
    }

    #[test]
    fn the_thread_wakes_at_blink_edges_and_otherwise_polls_the_states() {
        let t0 = Instant::now();
        let mut d = LedDriver::new(Box::new(RecordingLeds::default()), t0);
        // Steady: only to see a new state.
        assert_eq!(
            d.update(EncoderState::Running, InputState::Live, t0 + MS(3)),
            Some(t0 + MS(103))
        );
        // 8 Hz blink: at its next edge (62.5 ms), sooner than the poll.
        let at = d.update(EncoderState::Failed, InputState::Live, t0 + MS(10));
        assert_eq!(at, Some(t0 + Duration::from_micros(62_500)));
        // 0.5 Hz blink: the poll comes first.
        assert_eq!(
            d.update(EncoderState::Running, InputState::Grace, t0 + MS(10)),
            Some(t0 + MS(110))
        );
        // A late wake-up looks at the edge after now, never one passed.
        let at = d.update(EncoderState::Failed, InputState::Live, t0 + MS(300));
        assert_eq!(at, Some(t0 + Duration::from_micros(312_500)));
        // Without LED hardware there is nothing to look at again for.
        let mut dark = LedDriver::new(Box::new(Dark(LedStatus::off("test"))), t0);
        assert_eq!(dark.update(EncoderState::Failed, InputState::Grace, t0), None);
    }

    #[test]
    fn the_amp_line_follows_program_and_goes_off_after_the_delay() {
        let rec = RecordingLeds::default();
        let board = Arc::new(AmpBoard::default());
        let t0 = Instant::now();
        let mut d = LedDriver::new(Box::new(rec.clone()), t0).with_amp(MS(1000), board.clone());
        let amp_writes = |rec: &RecordingLeds| -> Vec<bool> {
            rec.writes()
                .into_iter()
                .filter(|(l, _)| *l == Led::Amp)
                .map(|(_, on)| on)
                .collect()
        };
        // Idle: off (written once). Program: on at the next look.
        assert_eq!(d.amp(false, t0), None);
        assert_eq!(d.amp(true, t0 + MS(100)), None);
        assert_eq!(rec.level(Led::Amp), Some(true));
        assert!(board.snapshot(t0).on);
        // Program ends: still on, and the thread is told when to look again.
        assert_eq!(d.amp(false, t0 + MS(500)), Some(t0 + MS(1500)));
        assert_eq!(d.amp(false, t0 + MS(1400)), Some(t0 + MS(1500)));
        assert_eq!(rec.level(Led::Amp), Some(true));
        let st = board.snapshot(t0 + MS(1000));
        assert!((st.off_in_s.expect("due") - 0.5).abs() < 1e-6, "{st:?}");
        assert_eq!(d.amp(false, t0 + MS(1500)), None);
        assert_eq!(rec.level(Led::Amp), Some(false));
        assert_eq!(amp_writes(&rec), [false, true, false], "written only on changes");
        // Without an amplifier configured the line is never written.
        let plain = RecordingLeds::default();
        let mut d2 = LedDriver::new(Box::new(plain.clone()), t0);
        assert_eq!(d2.amp(true, t0), None);
        assert_eq!(plain.level(Led::Amp), None);
        d.amp(true, t0 + MS(2000));
        d.release();
        assert_eq!(rec.level(Led::Amp), Some(false), "off when the thread stops");
        assert!(!board.snapshot(t0).on);
    }

    #[test]
    fn the_led_thread_switches_the_amp_on_within_a_second_of_program_and_off_after_the_delay() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let rec = RecordingLeds::default();
        let board = Arc::new(AmpBoard::default());
        let program = Arc::new(AtomicBool::new(false));
        let p = program.clone();
        let worker = start(
            Box::new(rec.clone()),
            Some((MS(300), board.clone())),
            move || Looks {
                encoder: EncoderState::Running,
                input: InputState::Live,
                program: p.load(Ordering::Relaxed),
                wifi: None,
            },
            &Supervisor::none(),
            Arc::new(TestHooks::disabled()),
        )
        .expect("thread");
        let wait =
            |want: bool, within: Duration| crate::testing::wait_until(within, || rec.level(Led::Amp) == Some(want));
        assert!(wait(false, Duration::from_secs(1)), "off while idle");
        program.store(true, Ordering::Relaxed);
        let on = Instant::now();
        assert!(wait(true, Duration::from_secs(1)), "on within 1 s of program");
        program.store(false, Ordering::Relaxed);
        let ended = Instant::now();
        assert!(wait(false, Duration::from_secs(2)), "off after the delay");
        assert!(ended.elapsed() >= MS(300), "not before the delay");
        assert!(on.elapsed() >= MS(300));
        stop(worker, Duration::from_secs(1)).expect("stops");
        assert_eq!(rec.level(Led::Amp), Some(false));
        assert_eq!(board.snapshot(Instant::now()).switched_on, 1);
    }

    #[test]
    fn the_wifi_setup_takes_both_leds_over_and_gives_them_back() {
        use crate::wifi::LedShow;
        let rec = RecordingLeds::default();
        let t0 = Instant::now();
        let mut d = LedDriver::new(Box::new(rec.clone()), t0);
        let mut looks = Looks {
            encoder: EncoderState::Running,
            input: InputState::Live,
            program: false,
            wifi: Some(LedShow::Hotspot),
        };
        // The hotspot: one LED on, the other off, swapping every 0.5 s.
        let next = d.update_with(&looks, t0);
        assert_eq!(
            (rec.level(Led::Encoder), rec.level(Led::Input)),
            (Some(true), Some(false))
        );
        assert_eq!(next, Some(t0 + MS(100)), "polls for a new state before its edge");
        d.update_with(&looks, t0 + MS(500));
        assert_eq!(
            (rec.level(Led::Encoder), rec.level(Led::Input)),
            (Some(false), Some(true))
        );
        // Gone: the states again.
        looks.wifi = None;
        d.update_with(&looks, t0 + MS(600));
        assert_eq!(
            (rec.level(Led::Encoder), rec.level(Led::Input)),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn the_amp_line_alone_is_opened_with_the_leds_disabled() {
        let amp = AmpConfig {
            pin: 22,
            active_low: true,
            off_delay: Duration::from_secs(60),
        };
        let mut cfg = LedConfig {
            enabled: false,
            encoder_pin: 17,
            input_pin: 27,
            active_low: false,
            chip: String::new(),
            amp: Some(amp),
        };
        assert_eq!(cfg.lines(), [(Led::Amp, 22, "amp_pin")]);
        cfg.enabled = true;
        assert_eq!(cfg.lines().len(), 3);
        cfg.amp = None;
        cfg.enabled = false;
        assert!(cfg.lines().is_empty());
    }

    #[test]
    fn the_status_says_why_the_leds_are_off() {
        let cfg = LedConfig {
            enabled: false,
            encoder_pin: 17,
            input_pin: 27,
            active_low: false,
            chip: String::new(),
            amp: None,
        };
        let st = open(&cfg).status();
        assert_eq!(
            (st.backend, st.off_because.as_deref()),
            ("none", Some("gpio.enabled = false"))
        );
        let json = serde_json::to_value(&st).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"backend": "none", "off_because": "gpio.enabled = false"})
        );
    }
}
