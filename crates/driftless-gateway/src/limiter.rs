//! Per-address brute-force limiter for shared-secret checks.
//!
//! An attempt is counted *before* the secret is compared (and forgiven on success), so parallel
//! guesses from one address can never get more real checks than `max_attempts` per window. With a
//! store several replicas share, `auth.rs` also counts attempts in the fleet's budget ([`Budget`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driftless_core::config::RateLimitConfig;

/// Addresses tracked before stale entries are pruned (bounds memory under a spray of sources).
const PRUNE_AT: usize = 4096;

/// The budget per address: `max_attempts` per window, then locked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_attempts: u32,
    pub window_ms: u64,
    pub lockout_ms: u64,
}

pub struct Limiter {
    enabled: bool,
    max_attempts: u32,
    window: Duration,
    lockout: Duration,
    exempt_loopback: bool,
    exempt: Vec<IpAddr>,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

struct Entry {
    window_start: Instant,
    attempts: u32,
    locked_until: Option<Instant>,
}

impl Limiter {
    pub fn new(cfg: &RateLimitConfig) -> Limiter {
        Limiter {
            enabled: cfg.enabled,
            max_attempts: cfg.max_attempts.max(1),
            window: Duration::from_secs(cfg.window_seconds),
            lockout: Duration::from_secs(cfg.lockout_seconds),
            exempt_loopback: cfg.exempt_loopback,
            // Config validation already rejected anything that is not an address.
            exempt: cfg.exempt.iter().filter_map(|s| s.parse().ok()).collect(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn budget(&self) -> Budget {
        Budget {
            max_attempts: self.max_attempts,
            window_ms: self.window.as_millis() as u64,
            lockout_ms: self.lockout.as_millis() as u64,
        }
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.enabled || (self.exempt_loopback && ip.is_loopback()) || self.exempt.contains(&ip)
    }

    /// Counts one attempt from `ip`: `Ok(Some(n))` for the address's n-th in its window,
    /// `Ok(None)` when it is exempt. `Err(retry_after_ms)` when `ip` is locked out: then the
    /// caller must not compare the secret at all.
    pub fn attempt(&self, ip: IpAddr) -> Result<Option<u32>, u64> {
        if self.is_exempt(ip) {
            return Ok(None);
        }
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PRUNE_AT {
            let window = self.window;
            map.retain(|_, e| {
                e.locked_until.is_some_and(|t| t > now)
                    || now.duration_since(e.window_start) < window
            });
        }
        let e = map.entry(ip.to_canonical()).or_insert(Entry {
            window_start: now,
            attempts: 0,
            locked_until: None,
        });
        if let Some(until) = e.locked_until {
            if until > now {
                return Err(until.duration_since(now).as_millis() as u64);
            }
            *e = Entry {
                window_start: now,
                attempts: 0,
                locked_until: None,
            };
        }
        if now.duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.attempts = 0;
        }
        e.attempts += 1;
        if e.attempts >= self.max_attempts {
            // This is the last real check the window allows; whatever it yields, lock afterwards
            // unless it succeeds (success clears the entry).
            e.locked_until = Some(now + self.lockout);
        }
        Ok(Some(e.attempts))
    }

    /// Locks `ip` out for `retry_after_ms` (the fleet's budget for it is spent).
    pub fn lock(&self, ip: IpAddr, retry_after_ms: u64) {
        if self.is_exempt(ip) {
            return;
        }
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(ip.to_canonical()).or_insert(Entry {
            window_start: now,
            attempts: 0,
            locked_until: None,
        });
        e.attempts = e.attempts.max(self.max_attempts);
        e.locked_until = Some(now + Duration::from_millis(retry_after_ms));
    }

    /// A successful check forgives the address's attempts.
    pub fn success(&self, ip: IpAddr) {
        if self.is_exempt(ip) {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ip.to_canonical());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(exempt_loopback: bool) -> RateLimitConfig {
        RateLimitConfig {
            exempt_loopback,
            ..RateLimitConfig::default()
        }
    }

    #[test]
    fn ten_attempts_then_lockout_with_retry_after() {
        let l = Limiter::new(&cfg(true));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let allowed = (0..1000).filter(|_| l.attempt(ip).is_ok()).count();
        assert_eq!(allowed, 10);
        let retry = l.attempt(ip).unwrap_err();
        assert!(retry > 290_000 && retry <= 300_000, "{retry}");
        // Another address is unaffected.
        assert!(l.attempt("203.0.113.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn loopback_exemption_is_configurable_and_success_forgives() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let exempt = Limiter::new(&cfg(true));
        assert!((0..100).all(|_| exempt.attempt(lo).is_ok()));
        let strict = Limiter::new(&cfg(false));
        for _ in 0..9 {
            strict.attempt(lo).unwrap();
        }
        strict.success(lo);
        assert!((0..10).all(|_| strict.attempt(lo).is_ok()));
        assert!(strict.attempt(lo).is_err());
        let listed = Limiter::new(&RateLimitConfig {
            exempt_loopback: false,
            exempt: vec!["127.0.0.1".into()],
            ..RateLimitConfig::default()
        });
        assert!((0..100).all(|_| listed.attempt(lo).is_ok()));
    }
}
