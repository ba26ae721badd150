//! Derived device tokens: the gateway can hand a device its *current* token again without storing
//! it.
//!
//! A token is `base64url(HMAC-SHA256(key, device_id, role, nonce))` (43 characters, as OpenClaw's
//! random ones), where `key` is 32 random bytes in `<state>/devices/token-key` (0600, created once)
//! and `nonce` is 32 random bytes stored in the token's row beside the token's SHA-256 hash. The
//! database alone therefore yields no token (hash and nonce, but not the key), the key alone
//! neither (no nonces), and both together yield the active tokens, which is what OpenClaw's
//! `paired.json` holds in plain text. Verification still compares the stored hash in constant
//! time; the key is used only to recompute a token for a device that proved the shared secret.

use std::path::{Path, PathBuf};

use base64::Engine;
use driftless_core::SecretValue;
use ring::hmac;
use zeroize::Zeroize;

/// The name of the key file, beside the database.
pub const TOKEN_KEY_FILE: &str = "token-key";

/// Bytes of key and of each token's nonce.
pub const KEY_LEN: usize = 32;

/// Why the key could not be loaded or created. Never carries the key's content.
#[derive(Debug, thiserror::Error)]
#[error("device token key {path}: {source}")]
pub struct KeyError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The per-gateway key tokens are derived with.
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl TokenKey {
    /// Reads `path`, creating it with a fresh random key (0600, atomically) when it does not exist.
    /// Any other failure (unreadable, not a key) is an error: silently replacing the key would
    /// turn every stored nonce into one that derives a token the device does not hold.
    ///
    /// Callers serialise creation across processes (the store creates it under its write lock),
    /// so two gateways opening a new state directory at once agree on one key.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, KeyError> {
        let err = |source| KeyError {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(mut text) => {
                let key = TokenKey::parse(&text);
                text.zeroize();
                key.ok_or_else(|| err(invalid()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = random_bytes();
                let mut text = b64().encode(bytes);
                text.push('\n');
                let written = driftless_core::atomic::write_private(path, text.as_bytes());
                text.zeroize();
                let key = TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
                bytes.zeroize();
                written.map_err(|e| err(e.source))?;
                Ok(key)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// A key written as [`TokenKey::load_or_create`] writes it: 32 bytes, base64url, surrounding
    /// whitespace ignored. `None` for anything else.
    pub fn parse(text: &str) -> Option<TokenKey> {
        let mut bytes = b64().decode(text.trim()).ok()?;
        let key =
            (bytes.len() == KEY_LEN).then(|| TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)));
        bytes.zeroize();
        key
    }

    /// A key held by a secret reference (`gateway.devices.postgres.token_key`).
    pub fn from_secret(value: &SecretValue) -> Option<TokenKey> {
        TokenKey::parse(value.expose())
    }

    /// The token for `device_id`'s `role` with `nonce`. Each field is length-prefixed, so no two
    /// different triples hash the same input.
    pub fn derive(&self, device_id: &str, role: &str, nonce: &[u8]) -> SecretValue {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"driftless device token v1\0");
        for field in [device_id.as_bytes(), role.as_bytes(), nonce] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        SecretValue::new(b64().encode(ctx.sign().as_ref()))
    }

    /// The keyed verifier of gateway shared secrets, with this key (the fleet's).
    pub fn shared_verifier(&self) -> SharedVerifier {
        SharedVerifier(self.0.clone())
    }
}

/// Computes what a fleet stores of a gateway shared secret: HMAC-SHA256 with the fleet's token key
/// under its own label (so it never equals a device token's input), never the secret or a plain
/// hash of it; without the key a stolen row cannot even test guesses.
#[derive(Clone)]
pub struct SharedVerifier(hmac::Key);

impl std::fmt::Debug for SharedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedVerifier(..)")
    }
}

/// A shared secret's verifier.
pub type Verifier = [u8; 32];

impl SharedVerifier {
    pub fn of(&self, secret: &str) -> Verifier {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"driftless gateway shared secret v1\0");
        ctx.update(secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The verifier of this gateway's own shared secret (what a replica publishes).
    pub fn of_value(&self, secret: &SecretValue) -> Verifier {
        self.of(secret.expose())
    }
}

fn invalid() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "not a device token key (expected 32 bytes, base64url); restore it from a backup, or remove \
         it: a new key is created, device tokens keep working, and a device that next connects with \
         the shared secret gets a new token once",
    )
}

/// A fresh nonce (or key): 32 bytes from the OS.
pub fn random_bytes() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes
}
