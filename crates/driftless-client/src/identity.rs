//! This client's Ed25519 device identity, created on first use.
//!
//! Kept in `<state>/identity/device.json` (0600, written atomically) in OpenClaw's format
//! (SPKI/PKCS#8 PEM), so the same file works for either client on one host.

use std::path::{Path, PathBuf};

use driftless_core::atomic;
use driftless_protocol::device_auth::{self, DeviceProof, SignedFields};
use ed25519_dalek::SigningKey;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityFile {
    version: u32,
    device_id: String,
    public_key_pem: String,
    private_key_pem: String,
    created_at_ms: u64,
}

/// The folder under a state directory that holds the gateway's own identity toward an upstream
/// OpenClaw (front mode): a [`DeviceIdentity`] and the [`IssuedTokenFile`] beside it.
pub const UPSTREAM_DIR: &str = "upstream";
/// The [`IssuedTokenFile`]'s name in [`UPSTREAM_DIR`].
pub const ISSUED_TOKEN_FILE: &str = "device-token.json";

/// The device token an upstream OpenClaw issued to the identity beside it; written by the gateway
/// (`relay::identity`), checked by `doctor`. No `Debug`: it holds the token.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenFile {
    pub version: u32,
    /// The device the token was issued to: a token for another key (the identity was recreated)
    /// is not used.
    pub device_id: String,
    pub device_token: String,
}

/// A device key pair. `Debug` shows only the device id.
pub struct DeviceIdentity {
    key: SigningKey,
    device_id: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceIdentity({})", self.device_id)
    }
}

/// Where the identity lives under a state directory.
pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity").join("device.json")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DeviceIdentity {
    /// Loads the identity in `state_dir`, creating it if missing. A file that cannot be parsed is
    /// set aside as `device.json.invalid` (never silently lost) and a new identity is created,
    /// which means this device must pair again.
    pub fn load_or_create(state_dir: &Path) -> Result<DeviceIdentity, IdentityError> {
        let path = identity_path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Some(id) = Self::parse(&text) {
                    return Ok(id);
                }
                tracing::warn!(path = %path.display(), "device identity unreadable; creating a new one (this device must pair again)");
                let aside = path.with_extension("json.invalid");
                std::fs::rename(&path, &aside).map_err(|source| IdentityError::Read {
                    path: path.clone(),
                    source,
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Read { path, source }),
        }
        let id = Self::generate();
        id.save(&path)?;
        Ok(id)
    }

    /// The identity in `state_dir` if one exists and is valid; never creates one (for read-only
    /// commands such as `credentials explain`).
    pub fn load_existing(state_dir: &Path) -> Option<DeviceIdentity> {
        std::fs::read_to_string(identity_path(state_dir))
            .ok()
            .and_then(|t| Self::parse(&t))
    }

    fn generate() -> DeviceIdentity {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the OS random number generator is unavailable");
        let key = SigningKey::from_bytes(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Self::from_key(key)
    }

    /// An identity for a key held elsewhere (the bench's generated devices); never saved.
    pub fn from_key(key: SigningKey) -> DeviceIdentity {
        let device_id = device_auth::device_id_of(key.verifying_key().as_bytes());
        DeviceIdentity { key, device_id }
    }

    /// The device id is always derived from the key, whatever the file claims.
    fn parse(text: &str) -> Option<DeviceIdentity> {
        let file: IdentityFile = serde_json::from_str(text).ok()?;
        let key = device_auth::parse_private_key_pem(&file.private_key_pem)?;
        Some(Self::from_key(key))
    }

    fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let file = IdentityFile {
            version: 1,
            device_id: self.device_id.clone(),
            public_key_pem: device_auth::public_key_pem(&self.key.verifying_key()),
            private_key_pem: device_auth::private_key_pem(&self.key),
            created_at_ms: now_ms(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("identity serializes");
        text.push('\n');
        atomic::write_private(path, text.as_bytes())?;
        zeroize::Zeroize::zeroize(&mut text);
        Ok(())
    }

    /// Lowercase hex SHA-256 of the raw public key.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The public key as sent on the wire (base64url raw).
    pub fn public_key(&self) -> String {
        device_auth::encode_public_key(&self.key.verifying_key())
    }

    /// A signed v3 `device` block for `connect`; `fields.nonce` is the challenge nonce.
    pub fn prove(&self, fields: &SignedFields<'_>) -> DeviceProof {
        device_auth::prove(&self.key, fields)
    }

    /// A proof signed now.
    pub fn prove_now(&self, fields: &SignedFields<'_>) -> DeviceProof {
        self.prove(&SignedFields {
            signed_at_ms: now_ms(),
            ..*fields
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn created_once_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = identity_path(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let b = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.device_id(), b.device_id());
        let c = DeviceIdentity::load_existing(dir.path()).unwrap();
        assert_eq!(a.device_id(), c.device_id());
        assert!(DeviceIdentity::load_existing(&dir.path().join("none")).is_none());
        assert_eq!(a.device_id().len(), 64);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("BEGIN PUBLIC KEY") && text.contains("BEGIN PRIVATE KEY"));
        assert!(format!("{a:?}").contains(a.device_id()));
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn proof_verifies_with_gateway_check() {
        let dir = tempfile::tempdir().unwrap();
        let id = DeviceIdentity::load_or_create(dir.path()).unwrap();
        let scopes = vec!["operator.read".to_string()];
        let f = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            signed_at_ms: 0,
            token: Some("t"),
            nonce: "n-1",
            platform: Some("linux"),
            device_family: None,
        };
        let p = id.prove_now(&f);
        let v = device_auth::verify(&p, &f, "n-1", p.signed_at).unwrap();
        assert_eq!(v.device_id, id.device_id());
        assert_eq!(v.public_key, id.public_key());
    }

    #[test]
    fn corrupt_file_is_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        atomic::write_private(&path, b"{not json").unwrap();
        let id = DeviceIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(id.device_id().len(), 64);
        assert_eq!(
            std::fs::read(path.with_extension("json.invalid")).unwrap(),
            b"{not json"
        );
    }
}
