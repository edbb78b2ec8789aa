//! What a password check costs, and what a refused one costs:
//! `cargo bench --bench password`.
//!
//! Prints the time of one argon2id hash (Tower's parameters: what a
//! login, a claim or an HTTP Basic request with a new password pays, on
//! the admin thread), of a check against a password found right a moment
//! ago (a keyed digest), and of a throttle refusal (what each attempt of
//! a flood costs once the address is locked out). Instruction counts carry
//! over to ARM: run it under `valgrind --tool=callgrind` for those.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tower::admin::password::{self, Recent};
use tower::admin::throttle::Throttle;

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> Duration {
    black_box(f());
    let start = Instant::now();
    for _ in 0..runs {
        black_box(f());
    }
    start.elapsed() / runs
}

fn main() {
    let phc = password::hash("correct horse battery").expect("hash");
    let hash = time(10, || password::hash("correct horse battery").expect("hash"));
    let verify = time(10, || password::verify(&phc, "wrong horse battery"));
    let mut recent = Recent::new();
    let now = Instant::now();
    recent.remember("correct horse battery", now);
    let remembered = time(100_000, || recent.knows("correct horse battery", now));
    let mut throttle = Throttle::default();
    let ip: IpAddr = "192.168.1.66".parse().expect("ip");
    for _ in 0..=tower::admin::throttle::FREE_TRIES {
        throttle.failed(ip, now);
    }
    let refused = time(1_000_000, || throttle.check(ip, now).is_err());
    println!(
        "argon2id m={} KiB t={} p=1: hash {:.1} ms, check of a wrong password {:.1} ms",
        password::MEMORY_KIB,
        password::PASSES,
        hash.as_secs_f64() * 1e3,
        verify.as_secs_f64() * 1e3
    );
    println!(
        "a password found right lately: {:.2} µs; a throttle refusal: {:.3} µs",
        remembered.as_secs_f64() * 1e6,
        refused.as_secs_f64() * 1e6
    );
}
