//! The one type a secret value lives in.
//!
//! `SecretValue` has no `Display`, a `Debug` that prints only the fingerprint, is not `Serialize`,
//! and zeroizes its buffer on drop (through `secrecy`). `expose()` is the grep-able door to the bytes.

use std::fmt;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `sha256:` + the first 12 hex digits of the SHA-256 of a value: safe to display and compare.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `value`.
    pub fn of(value: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(value);
        let mut s = String::with_capacity(7 + 12);
        s.push_str("sha256:");
        for b in &digest[..6] {
            s.push_str(&format!("{b:02x}"));
        }
        Fingerprint(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resolved secret.
#[derive(Clone)]
pub struct SecretValue {
    value: SecretString,
    fingerprint: Fingerprint,
    digest: [u8; 32],
}

impl SecretValue {
    /// Wraps `value`. The caller's `String` moves in; nothing else keeps a copy.
    pub fn new(value: String) -> SecretValue {
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let fingerprint = Fingerprint::of(value.as_bytes());
        SecretValue {
            value: SecretString::from(value),
            fingerprint,
            digest,
        }
    }

    /// The value itself. Only verifiers, the redactor, and writers of the value's own source call this.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Constant-time comparison of `candidate` with this value: both are hashed to 32 bytes first,
    /// so neither content nor length leaks through timing.
    pub fn matches(&self, candidate: &str) -> bool {
        let cand: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.digest.ct_eq(&cand).into()
    }

    /// Same value (by digest, in constant time).
    pub fn same_as(&self, other: &SecretValue) -> bool {
        self.digest.ct_eq(&other.digest).into()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({})", self.fingerprint)
    }
}

/// A fresh random token: 32 bytes from the OS, base64url without padding (43 characters).
pub fn random_token() -> SecretValue {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    SecretValue::new(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_shape_and_debug_hide_value() {
        let s = SecretValue::new("hunter2-canary".into());
        let fp = s.fingerprint().to_string();
        assert!(fp.starts_with("sha256:"));
        assert_eq!(fp.len(), 7 + 12);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"));
        assert!(dbg.contains(&fp));
        // Known vector: sha256("abc") = ba7816bf8f01...
        assert_eq!(Fingerprint::of(b"abc").as_str(), "sha256:ba7816bf8f01");
    }

    #[test]
    fn matches_is_exact() {
        let s = SecretValue::new("token-a".into());
        assert!(s.matches("token-a"));
        assert!(!s.matches("token-b"));
        assert!(!s.matches("token-a "));
        assert!(!s.matches(""));
    }

    #[test]
    fn random_tokens_are_43_chars_and_distinct() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.expose().len(), 43);
        assert!(!a.same_as(&b));
    }
}
