//! Program detection [D1]–[D3]: is something playing on the input?
//!
//! The capture thread feeds every live frame's level (the meter's RMS over
//! ~100 ms, the louder channel) to a [`ProgramDetector`], and tells it when
//! no frame comes (a producer gone, a card re-opening). The detector is
//! pure: time is passed in.
//!
//! - **[D1]** It learns the input's noise floor: the quietest second
//!   ([`FLOOR_BLOCK_FRAMES`] frames, mean power) among those of the last
//!   `program.floor_window_s`, so that hum, hiss and a turntable's rumble
//!   count as silence. The floor is held within [`FLOOR_MIN_DBFS`] and
//!   [`FLOOR_MAX_DBFS`]: a muted input's last bits of noise are not music,
//!   and a "quietest second" louder than −40 dBFS is music that has not
//!   paused yet. Nothing is program before the first second is learned.
//! - **[D2]** It reports **program** once the level has stayed
//!   `program.margin_db` above the floor for `program.attack_s`, and
//!   **idle** `program.hold_s` after the last such stretch. A click (a
//!   run-out groove) is shorter than the attack, so it neither starts
//!   program nor keeps it going.
//! - **[D3]** Only the input's own audio is measured: the pump's grace
//!   silence and fallback never pass through here, so the fallback tone is
//!   never program; an input that delivers nothing counts as quiet.
//!
//! [`ProgramBoard`] shares the detector between the capture thread (one
//! short uncontended lock per frame) and its readers (`/status`, the LED
//! thread's amplifier line, MQTT), who never touch the pump.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::level::FLOOR_DBFS;

/// Frames in one floor block: 42 × 24 ms ≈ 1 s of audio.
pub const FLOOR_BLOCK_FRAMES: u32 = 42;
/// The floor is never taken below this...
pub const FLOOR_MIN_DBFS: f32 = -80.0;
/// ...nor above this.
pub const FLOOR_MAX_DBFS: f32 = -40.0;
/// The longest floor window, in blocks (an hour).
pub const MAX_FLOOR_BLOCKS: usize = 3600;

/// The detector's settings (`[program]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgramConfig {
    /// How far above the floor the level must be.
    pub margin_db: f32,
    /// How long it must stay there before program is reported.
    pub attack: Duration,
    /// How long after the last such stretch idle is reported.
    pub hold: Duration,
    /// How far back the quietest second is looked for.
    pub floor_window: Duration,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        ProgramConfig {
            margin_db: 10.0,
            attack: Duration::from_millis(500),
            hold: Duration::from_secs(20),
            floor_window: Duration::from_secs(300),
        }
    }
}

impl ProgramConfig {
    fn window_blocks(&self) -> usize {
        let block = super::FRAME_DURATION.as_secs_f64() * f64::from(FLOOR_BLOCK_FRAMES);
        ((self.floor_window.as_secs_f64() / block).ceil() as usize).clamp(1, MAX_FLOOR_BLOCKS)
    }
}

/// Whether something plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgramState {
    Idle,
    Program,
}

impl fmt::Display for ProgramState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgramState::Idle => "idle",
            ProgramState::Program => "program",
        })
    }
}

/// Why the state is what it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why {
    /// Nothing has played since Tower started (or the input changed).
    Start,
    /// The level stayed above the threshold for the attack time.
    Sound {
        level_dbfs: f32,
        above_db: f32,
        attack_s: f32,
    },
    /// Nothing above the threshold for the hold time.
    Quiet { threshold_dbfs: f32, for_s: f32 },
    /// No audio came from the input for the hold time.
    NoInput { for_s: f32 },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Why::Start => f.write_str("nothing has played yet"),
            Why::Sound {
                level_dbfs,
                above_db,
                attack_s,
            } => write!(
                f,
                "the level stayed {above_db:.1} dB above the noise floor for {attack_s:.1} s (now {level_dbfs:.1} dBFS)"
            ),
            Why::Quiet { threshold_dbfs, for_s } => {
                write!(f, "nothing above {threshold_dbfs:.1} dBFS for {for_s:.1} s")
            }
            Why::NoInput { for_s } => write!(f, "no audio from the input for {for_s:.1} s"),
        }
    }
}

/// A change of state, to log (one line, with its reason) and publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub state: ProgramState,
    pub why: Why,
}

/// The detector; see the module header. Allocates only when it is built
/// or its floor window changes.
#[derive(Debug, Clone)]
pub struct ProgramDetector {
    config: ProgramConfig,
    state: ProgramState,
    why: Why,
    since: Instant,
    changes: u64,
    /// The last level seen (FLOOR_DBFS while no input).
    level: f32,
    /// Since when the level has been above the threshold.
    above_since: Option<Instant>,
    /// The last time the level had been above it for the attack time.
    last_sound: Option<Instant>,
    /// The floor block being summed: power and frames.
    block_power: f64,
    block_frames: u32,
    /// The last blocks' levels (dBFS), oldest first.
    blocks: VecDeque<f32>,
    /// Their minimum, once there is one.
    quietest: Option<f32>,
}

impl ProgramDetector {
    pub fn new(config: ProgramConfig, now: Instant) -> ProgramDetector {
        ProgramDetector {
            config,
            state: ProgramState::Idle,
            why: Why::Start,
            since: now,
            changes: 0,
            level: FLOOR_DBFS,
            above_since: None,
            last_sound: None,
            block_power: 0.0,
            block_frames: 0,
            blocks: VecDeque::with_capacity(config.window_blocks()),
            quietest: None,
        }
    }

    /// New settings; the floor learned so far is kept (as far back as the
    /// new window reaches).
    pub fn set_config(&mut self, config: ProgramConfig) {
        self.config = config;
        let keep = config.window_blocks();
        while self.blocks.len() > keep {
            self.blocks.pop_front();
        }
        self.blocks.reserve(keep.saturating_sub(self.blocks.len()));
        self.quietest = self.blocks.iter().copied().reduce(f32::min);
    }

    pub fn config(&self) -> ProgramConfig {
        self.config
    }

    /// Another input: its floor is learned afresh.
    pub fn forget_floor(&mut self) {
        self.blocks.clear();
        self.quietest = None;
        self.block_power = 0.0;
        self.block_frames = 0;
        self.above_since = None;
    }

    pub fn state(&self) -> ProgramState {
        self.state
    }

    /// The floor in force, once a second of audio was measured.
    pub fn floor(&self) -> Option<f32> {
        self.quietest.map(|q| q.clamp(FLOOR_MIN_DBFS, FLOOR_MAX_DBFS))
    }

    /// The level program needs: the floor plus the margin.
    pub fn threshold(&self) -> Option<f32> {
        self.floor().map(|f| f + self.config.margin_db)
    }

    /// One live frame, its level in dBFS, measured at `now`.
    pub fn observe(&mut self, level_dbfs: f32, now: Instant) -> Option<Change> {
        self.level = level_dbfs;
        self.learn(level_dbfs);
        let above = self.threshold().is_some_and(|t| level_dbfs >= t);
        if !above {
            self.above_since = None;
            return self.check_hold(now, false);
        }
        let since = *self.above_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.config.attack {
            return self.check_hold(now, false);
        }
        self.last_sound = Some(now);
        if self.state == ProgramState::Program {
            return None;
        }
        let floor = self.floor().unwrap_or(FLOOR_MIN_DBFS);
        Some(self.enter(
            ProgramState::Program,
            Why::Sound {
                level_dbfs,
                above_db: level_dbfs - floor,
                attack_s: now.saturating_duration_since(since).as_secs_f32(),
            },
            now,
        ))
    }

    /// No frame came from the input (it is gone, or re-opening) at `now`.
    pub fn no_input(&mut self, now: Instant) -> Option<Change> {
        self.level = FLOOR_DBFS;
        self.above_since = None;
        // A block spans audio, never a gap.
        self.block_power = 0.0;
        self.block_frames = 0;
        self.check_hold(now, true)
    }

    fn learn(&mut self, level_dbfs: f32) {
        self.block_power += 10f64.powf(f64::from(level_dbfs) / 10.0);
        self.block_frames += 1;
        if self.block_frames < FLOOR_BLOCK_FRAMES {
            return;
        }
        let block = (10.0 * (self.block_power / f64::from(self.block_frames)).log10()) as f32;
        self.block_power = 0.0;
        self.block_frames = 0;
        if self.blocks.len() >= self.config.window_blocks() {
            let gone = self.blocks.pop_front();
            if gone.is_some() && gone == self.quietest {
                self.quietest = self.blocks.iter().copied().reduce(f32::min);
            }
        }
        self.blocks.push_back(block);
        self.quietest = Some(self.quietest.map_or(block, |q| q.min(block)));
    }

    fn check_hold(&mut self, now: Instant, no_input: bool) -> Option<Change> {
        if self.state != ProgramState::Program {
            return None;
        }
        let quiet_for = self
            .last_sound
            .map_or(self.config.hold, |t| now.saturating_duration_since(t));
        if quiet_for < self.config.hold {
            return None;
        }
        let for_s = quiet_for.as_secs_f32();
        let why = match self.threshold() {
            Some(threshold_dbfs) if !no_input => Why::Quiet { threshold_dbfs, for_s },
            _ => Why::NoInput { for_s },
        };
        Some(self.enter(ProgramState::Idle, why, now))
    }

    fn enter(&mut self, state: ProgramState, why: Why, now: Instant) -> Change {
        self.state = state;
        self.why = why;
        self.since = now;
        self.changes += 1;
        Change { state, why }
    }

    /// What `/status` shows.
    pub fn snapshot(&self, now: Instant) -> ProgramSnapshot {
        ProgramSnapshot {
            state: self.state,
            since_s: now.saturating_duration_since(self.since).as_secs_f64(),
            reason: self.why.to_string(),
            level_dbfs: self.level,
            floor_dbfs: self.floor(),
            margin_db: self.config.margin_db,
            threshold_dbfs: self.threshold(),
            changes: self.changes,
        }
    }
}

/// The detector as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramSnapshot {
    pub state: ProgramState,
    /// How long the state has lasted.
    pub since_s: f64,
    /// Why it is what it is, in words.
    pub reason: String,
    /// The level the detector last saw (RMS over ~100 ms, louder channel).
    pub level_dbfs: f32,
    /// The noise floor learned, once a second of audio was measured.
    pub floor_dbfs: Option<f32>,
    pub margin_db: f32,
    /// The floor plus the margin: what program needs.
    pub threshold_dbfs: Option<f32>,
    /// Changes of state since Tower started.
    pub changes: u64,
}

/// The detector, shared: fed by the capture thread, read by the rest.
#[derive(Debug)]
pub struct ProgramBoard {
    detector: Mutex<ProgramDetector>,
    program: AtomicBool,
}

impl Default for ProgramBoard {
    fn default() -> Self {
        ProgramBoard::new(ProgramConfig::default())
    }
}

impl ProgramBoard {
    pub fn new(config: ProgramConfig) -> ProgramBoard {
        ProgramBoard {
            detector: Mutex::new(ProgramDetector::new(config, Instant::now())),
            program: AtomicBool::new(false),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProgramDetector) -> T) -> T {
        let mut d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut d);
        self.program
            .store(d.state() == ProgramState::Program, Ordering::Relaxed);
        out
    }

    pub fn observe(&self, level_dbfs: f32, now: Instant) -> Option<Change> {
        self.with(|d| d.observe(level_dbfs, now))
    }

    pub fn no_input(&self, now: Instant) -> Option<Change> {
        self.with(|d| d.no_input(now))
    }

    /// New settings, if they differ.
    pub fn tune(&self, config: ProgramConfig) {
        self.with(|d| {
            if d.config() != config {
                d.set_config(config);
            }
        });
    }

    pub fn forget_floor(&self) {
        self.with(ProgramDetector::forget_floor);
    }

    /// Whether program plays: one atomic load.
    pub fn is_program(&self) -> bool {
        self.program.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, now: Instant) -> ProgramSnapshot {
        self.with(|d| d.snapshot(now))
    }
}

/// Logs a change: one journal line with its reason [D2].
pub fn log_change(change: &Change, device: &str) {
    tracing::info!(
        component = "program",
        state = %change.state,
        reason = %change.why,
        device,
        "{}: {}",
        match change.state {
            ProgramState::Program => "program: something plays on the input",
            ProgramState::Idle => "idle: the input went quiet",
        },
        change.why
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = super::super::FRAME_DURATION;

    /// Feeds `seconds` of frames at `level`, from `*at`; returns the changes.
    fn feed(d: &mut ProgramDetector, at: &mut Instant, level: f32, seconds: f64) -> Vec<(f64, Change)> {
        let t0 = *at;
        let mut out = Vec::new();
        let frames = (seconds / FRAME.as_secs_f64()).round() as usize;
        for _ in 0..frames {
            if let Some(c) = d.observe(level, *at) {
                out.push((at.saturating_duration_since(t0).as_secs_f64(), c));
            }
            *at += FRAME;
        }
        out
    }

    fn config(hold_s: u64) -> ProgramConfig {
        ProgramConfig {
            hold: Duration::from_secs(hold_s),
            ..ProgramConfig::default()
        }
    }

    #[test]
    fn hum_alone_is_idle_and_its_floor_is_learned() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(ProgramConfig::default(), at);
        assert_eq!(d.floor(), None, "nothing learned yet");
        let changes = feed(&mut d, &mut at, -63.0, 60.0);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(d.state(), ProgramState::Idle);
        let floor = d.floor().expect("learned");
        assert!((floor - -63.0).abs() < 0.01, "{floor}");
        assert!((d.threshold().expect("threshold") - -53.0).abs() < 0.01);
    }

    #[test]
    fn a_tone_over_the_hum_is_program_after_the_attack_and_idle_after_the_hold() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(config(20), at);
        feed(&mut d, &mut at, -63.0, 5.0);
        let on = feed(&mut d, &mut at, -15.0, 10.0);
        assert_eq!(on.len(), 1, "{on:?}");
        let (t, c) = on[0];
        assert_eq!(c.state, ProgramState::Program);
        assert!((0.5..0.55).contains(&t), "after the 0.5 s attack: {t}");
        assert!(c.why.to_string().contains("48.0 dB above the noise floor"), "{}", c.why);
        let off = feed(&mut d, &mut at, -63.0, 30.0);
        assert_eq!(off.len(), 1, "{off:?}");
        let (t, c) = off[0];
        assert_eq!(c.state, ProgramState::Idle);
        assert!((19.9..20.1).contains(&t), "after the 20 s hold: {t}");
        assert_eq!(c.why.to_string(), "nothing above -53.0 dBFS for 20.0 s");
        assert_eq!(d.snapshot(at).changes, 2);
    }

    #[test]
    fn clicks_shorter_than_the_attack_neither_start_nor_keep_program() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(config(5), at);
        feed(&mut d, &mut at, -60.0, 3.0);
        // A run-out groove: a 100 ms click every 1.8 s.
        let mut changes = Vec::new();
        for _ in 0..10 {
            changes.extend(feed(&mut d, &mut at, -20.0, 0.1));
            changes.extend(feed(&mut d, &mut at, -60.0, 1.7));
        }
        assert!(changes.is_empty(), "clicks are not program: {changes:?}");
        // Program, then only clicks: idle after the hold all the same.
        feed(&mut d, &mut at, -20.0, 2.0);
        assert_eq!(d.state(), ProgramState::Program);
        let mut off = Vec::new();
        for _ in 0..4 {
            off.extend(feed(&mut d, &mut at, -20.0, 0.1));
            off.extend(feed(&mut d, &mut at, -60.0, 1.7));
        }
        assert_eq!(off.len(), 1, "{off:?}");
        assert_eq!(off[0].1.state, ProgramState::Idle);
    }

    #[test]
    fn short_pauses_within_the_hold_keep_program() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(config(20), at);
        feed(&mut d, &mut at, -70.0, 2.0);
        let mut changes = feed(&mut d, &mut at, -20.0, 5.0);
        for _ in 0..5 {
            changes.extend(feed(&mut d, &mut at, -70.0, 4.0));
            changes.extend(feed(&mut d, &mut at, -20.0, 60.0));
        }
        assert_eq!(changes.len(), 1, "one change, to program: {changes:?}");
    }

    #[test]
    fn nothing_is_program_before_a_second_of_audio_gives_the_floor() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(ProgramConfig::default(), at);
        // Loud from the first frame: the floor is held at −40 dBFS, so a
        // −15 dBFS tone is program once it is learned.
        let on = feed(&mut d, &mut at, -15.0, 3.0);
        assert_eq!(on.len(), 1, "{on:?}");
        assert!(on[0].0 >= 1.0, "not before the floor: {}", on[0].0);
        assert_eq!(d.floor(), Some(FLOOR_MAX_DBFS));
    }

    #[test]
    fn digital_silence_holds_the_floor_at_minus_80() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(ProgramConfig::default(), at);
        feed(&mut d, &mut at, FLOOR_DBFS, 2.0);
        assert_eq!(d.floor(), Some(FLOOR_MIN_DBFS));
        // The last bits of a muted converter are not music...
        assert!(feed(&mut d, &mut at, -90.0, 3.0).is_empty());
        // ...a quiet record is.
        assert_eq!(feed(&mut d, &mut at, -65.0, 3.0).len(), 1);
    }

    #[test]
    fn a_floor_that_rises_is_learned_within_the_window() {
        let mut at = Instant::now();
        let cfg = ProgramConfig {
            floor_window: Duration::from_secs(30),
            hold: Duration::from_secs(5),
            ..ProgramConfig::default()
        };
        let mut d = ProgramDetector::new(cfg, at);
        feed(&mut d, &mut at, -70.0, 5.0);
        // Someone turned the gain up: the hum is now 15 dB louder. It is
        // program for a while (it is a margin above the old floor)...
        let changes = feed(&mut d, &mut at, -55.0, 60.0);
        let states: Vec<ProgramState> = changes.iter().map(|(_, c)| c.state).collect();
        assert_eq!(states, [ProgramState::Program, ProgramState::Idle], "{changes:?}");
        // ...until the old floor leaves the window (30 s) and the hold passes.
        assert!((30.0..37.0).contains(&changes[1].0), "{changes:?}");
        assert!((d.floor().expect("floor") - -55.0).abs() < 0.01);
    }

    #[test]
    fn no_input_is_quiet_and_says_so() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(config(3), at);
        feed(&mut d, &mut at, -60.0, 2.0);
        feed(&mut d, &mut at, -10.0, 2.0);
        assert_eq!(d.state(), ProgramState::Program);
        let mut changes = Vec::new();
        for _ in 0..40 {
            at += Duration::from_millis(100);
            changes.extend(d.no_input(at));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].state, ProgramState::Idle);
        assert!(
            changes[0].why.to_string().starts_with("no audio from the input for 3."),
            "{:?}",
            changes[0]
        );
        let s = d.snapshot(at);
        assert_eq!((s.state, s.level_dbfs), (ProgramState::Idle, FLOOR_DBFS));
        assert!(s.floor_dbfs.is_some(), "the floor is kept");
    }

    #[test]
    fn new_settings_keep_the_floor_and_another_input_forgets_it() {
        let mut at = Instant::now();
        let mut d = ProgramDetector::new(ProgramConfig::default(), at);
        feed(&mut d, &mut at, -62.0, 3.0);
        d.set_config(ProgramConfig {
            margin_db: 20.0,
            floor_window: Duration::from_secs(10),
            ..ProgramConfig::default()
        });
        assert!((d.threshold().expect("kept") - -42.0).abs() < 0.01);
        // −45 dBFS is 17 dB above: not enough now.
        assert!(feed(&mut d, &mut at, -45.0, 3.0).is_empty());
        d.forget_floor();
        assert_eq!(d.floor(), None);
    }

    #[test]
    fn the_board_mirrors_the_state_in_an_atomic() {
        let board = ProgramBoard::new(config(1));
        let t0 = Instant::now();
        let mut at = t0;
        for _ in 0..100 {
            board.observe(-60.0, at);
            at += FRAME;
        }
        assert!(!board.is_program());
        for _ in 0..50 {
            board.observe(-6.0, at);
            at += FRAME;
        }
        assert!(board.is_program());
        assert_eq!(board.snapshot(at).state, ProgramState::Program);
        board.no_input(at + Duration::from_secs(2));
        assert!(!board.is_program());
    }
}
