//! The admin password: what a new one must be, its argon2id hash, and
//! checking a password against the hash.
//!
//! Hashing is slow on purpose (tens of milliseconds here, a few hundred on
//! a Pi 3) and takes [`MEMORY_KIB`] of memory while it runs, so it happens
//! only on the admin thread, at low priority, and only after the throttle
//! (see `throttle`) let the attempt through. The hash is stored as a PHC
//! string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), which carries its own
//! parameters: a stronger setting later still verifies old hashes.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

/// Memory per hash, in KiB (OWASP's argon2id option of 12 MiB, 3 passes).
pub const MEMORY_KIB: u32 = 12 * 1024;
pub const PASSES: u32 = 3;
/// The most memory a stored hash may ask for when it is checked: a hash
/// edited by hand cannot make each login allocate a gigabyte.
const MAX_MEMORY_KIB: u32 = 64 * 1024;
const MAX_PASSES: u32 = 10;
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

fn argon2() -> Argon2<'static> {
    // The parameters are constants within argon2's limits.
    let params = Params::new(MEMORY_KIB, PASSES, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Whether `password` may become the admin password; the error says what
/// is accepted.
pub fn check_new(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) || password.chars().any(char::is_control) {
        return Err(format!(
            "a password of {MIN_LEN} to {MAX_LEN} characters (no control characters)"
        ));
    }
    Ok(())
}

/// Whether `phc` is a usable argon2id hash with sane parameters.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let accepted = "an argon2id hash as Tower writes it ($argon2id$v=19$m=…); to set a new password, \
                    delete password_hash and write password = \"…\"";
    let hash = PasswordHash::new(phc).map_err(|_| accepted.to_string())?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(accepted.into());
    }
    let params = Params::try_from(&hash).map_err(|_| accepted.to_string())?;
    if params.m_cost() > MAX_MEMORY_KIB || params.t_cost() > MAX_PASSES || params.p_cost() > 4 {
        return Err(format!(
            "{accepted} (at most {MAX_MEMORY_KIB} KiB, {MAX_PASSES} passes, 4 lanes)"
        ));
    }
    Ok(())
}

/// A new salted hash of `password`, as a PHC string.
pub fn hash(password: &str) -> Result<String, HashError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches `phc`. A malformed hash matches nothing.
pub fn verify(phc: &str, password: &str) -> bool {
    if check_hash(phc).is_err() {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Passwords found right recently, kept as keyed digests (never as
/// text): a script calling the API several times in a row pays one slow
/// hash, not one per call. Owned by the admin thread; cleared when the
/// password changes.
pub struct Recent {
    key: [u8; 32],
    seen: Vec<([u8; 64], std::time::Instant)>,
}

impl Recent {
    /// How long a right password is remembered.
    pub const FOR: std::time::Duration = std::time::Duration::from_secs(600);
    const KEEP: usize = 8;

    pub fn new() -> Recent {
        let mut key = [0u8; 32];
        // Without randomness the cache stays empty (every call hashes).
        let _ = getrandom::fill(&mut key);
        Recent { key, seen: Vec::new() }
    }

    fn digest(&self, password: &str) -> [u8; 64] {
        use blake2::Digest;
        let mut h = blake2::Blake2b512::new();
        h.update(self.key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `password` was found right within [`Recent::FOR`] of `now`.
    pub fn knows(&self, password: &str, now: std::time::Instant) -> bool {
        if self.key == [0; 32] {
            return false;
        }
        let d = self.digest(password);
        self.seen
            .iter()
            .any(|(k, at)| *k == d && now.saturating_duration_since(*at) < Self::FOR)
    }

    pub fn remember(&mut self, password: &str, now: std::time::Instant) {
        let d = self.digest(password);
        self.seen
            .retain(|(k, at)| *k != d && now.saturating_duration_since(*at) < Self::FOR);
        if self.seen.len() >= Self::KEEP {
            self.seen.remove(0);
        }
        self.seen.push((d, now));
    }

    pub fn forget(&mut self) {
        self.seen.clear();
    }
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_right_password_is_remembered_for_a_while_as_a_digest() {
        let mut r = Recent::new();
        let t0 = std::time::Instant::now();
        assert!(!r.knows("correct horse", t0));
        r.remember("correct horse", t0);
        assert!(r.knows("correct horse", t0 + std::time::Duration::from_secs(1)));
        assert!(!r.knows("correct horsf", t0));
        assert!(!r.knows("correct horse", t0 + Recent::FOR));
        r.forget();
        assert!(!r.knows("correct horse", t0));
    }

    #[test]
    fn a_hash_verifies_its_password_only_and_is_salted() {
        let a = hash("correct horse").expect("hash");
        let b = hash("correct horse").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=12288,t=3,p=1$"), "{a}");
        assert_ne!(a, b, "a new salt each time");
        assert!(check_hash(&a).is_ok());
        assert!(verify(&a, "correct horse"));
        assert!(!verify(&a, "correct horsf"));
        assert!(!verify("not a hash", "correct horse"));
    }

    #[test]
    fn new_passwords_and_stored_hashes_are_checked() {
        assert!(check_new("12345678").is_ok());
        assert!(check_new("1234567").is_err());
        assert!(check_new(&"x".repeat(129)).is_err());
        assert!(check_new("tab\there!").is_err());
        assert!(check_hash("$argon2i$v=19$m=12288,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").is_err());
        // A hash that would make every login take a gigabyte.
        assert!(check_hash("$argon2id$v=19$m=1048576,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").is_err());
        assert!(check_hash("hunter2").is_err());
    }
}
