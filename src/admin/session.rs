//! Browser sessions after a login: a random token in an `HttpOnly`,
//! `SameSite=Strict` cookie, valid for [`LIFETIME`]. Owned by the admin
//! thread; time is passed in.
//!
//! Tokens are 32 random bytes from the kernel. At most [`MAX_SESSIONS`]
//! are kept (a new login beyond that ends the oldest), and a password
//! change ends them all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "tower_session";
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 32;

#[derive(Debug, Default)]
pub struct Sessions {
    /// Token → when it expires.
    live: HashMap<String, Instant>,
}

impl Sessions {
    /// A new session; its token for the cookie.
    pub fn open(&mut self, now: Instant) -> std::io::Result<String> {
        self.expire(now);
        if self.live.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(t, _)| t.clone())
        {
            self.live.remove(&oldest);
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.live.insert(token.clone(), now + LIFETIME);
        Ok(token)
    }

    /// Whether `token` is a live session.
    pub fn valid(&self, token: &str, now: Instant) -> bool {
        self.live.get(token).is_some_and(|until| now < *until)
    }

    pub fn close(&mut self, token: &str) {
        self.live.remove(token);
    }

    /// Ends every session (the password changed).
    pub fn close_all(&mut self) {
        self.live.clear();
    }

    fn expire(&mut self, now: Instant) {
        self.live.retain(|_, until| now < *until);
    }

    /// The `Set-Cookie` value for `token`.
    pub fn cookie(token: &str) -> String {
        format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            LIFETIME.as_secs()
        )
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn removal() -> String {
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_in(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_close_and_stay_bounded() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let a = s.open(t0).expect("token");
        assert_eq!(a.len(), 64);
        assert!(s.valid(&a, t0));
        assert!(!s.valid(&a, t0 + LIFETIME));
        assert!(!s.valid("forged", t0));
        let b = s.open(t0).expect("token");
        assert_ne!(a, b);
        s.close(&a);
        assert!(!s.valid(&a, t0) && s.valid(&b, t0));
        for _ in 0..MAX_SESSIONS * 2 {
            s.open(t0 + Duration::from_secs(1)).expect("token");
        }
        assert!(s.live.len() <= MAX_SESSIONS);
        s.close_all();
        assert!(!s.valid(&b, t0));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_found_among_others() {
        let c = Sessions::cookie("abc");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age=43200"));
        assert_eq!(token_in(Some("a=1; tower_session=abc; b=2")), Some("abc"));
        assert_eq!(token_in(Some("tower_session=")), None);
        assert_eq!(token_in(None), None);
    }
}
