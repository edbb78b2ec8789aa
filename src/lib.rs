//! Tower: a Raspberry Pi LAN radio station.
//!
//! ALSA capture → PCM input queue → 24 ms pump → supervised ffmpeg → MP3
//! packetizer → frame ring → broadcast loop → every listener on
//! `GET /stream`. The stages are folders in data-flow order (`audio`,
//! `pump`, `encoder`, `broadcast`, `http`); flat modules are plumbing.
//! Beside them, `admin` is the owner's desk: the password, and the path a
//! setting changed from the settings page takes to the stage that owns it;
//! `wifi` is the SD image's Wi-Fi and setup hotspot (its own root process,
//! whose state Tower reads).
//! See `service` for how the pieces are wired and who owns which thread,
//! and `docs/DESIGN.md` for the design and the promises (`[A2]`, `[S4]`, …)
//! cited in the module docs.

pub mod admin;
pub mod audio;
pub mod broadcast;
pub mod config;
pub mod encoder;
pub mod fdlimit;
pub mod fuzzing;
pub mod histogram;
pub mod hooks;
pub mod http;
pub mod leds;
pub mod live;
pub mod logging;
pub mod mqtt;
pub mod pump;
pub mod ratelog;
pub mod service;
pub mod speakers;
pub mod status;
#[cfg(test)]
mod testing;
pub mod watchdog;
pub mod wifi;
pub mod worker;
