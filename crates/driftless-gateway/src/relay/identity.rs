//! driftless's own device identity toward the upstream OpenClaw gateway (front mode): one Ed25519
//! key, paired once with OpenClaw, and the device token OpenClaw issued to it. Upstream sessions
//! that authenticate with that device token survive OpenClaw's own shared-token rotation, which
//! closes every shared-token session 4001.
//!
//! Both live in `<state>/upstream/`: the key in `identity/device.json` (the format and writer of
//! `driftless_client::identity`), the device token in `device-token.json`; 0600, written
//! atomically and symlink-safe (`driftless_core::atomic`). They are read once at start and kept in
//! memory; a new device token is written off the async workers. The device token is never logged
//! and never sent to a client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use driftless_client::identity::{
    DeviceIdentity, ISSUED_TOKEN_FILE, IdentityError, IssuedTokenFile, UPSTREAM_DIR,
};
use driftless_core::atomic;
use driftless_core::secret::SecretValue;
use driftless_protocol::device_auth::{DeviceProof, SignedFields};

pub(crate) struct UpstreamIdentity {
    device: DeviceIdentity,
    token_path: PathBuf,
    /// The device token OpenClaw issued (`None`: not paired yet, or refused since).
    token: RwLock<Option<Arc<SecretValue>>>,
    /// One pairing at a time: sessions that find no usable device token wait for it.
    pub(super) pairing: tokio::sync::Mutex<()>,
    /// One file write at a time, each writing the token current when it runs.
    writing: Mutex<()>,
}

impl UpstreamIdentity {
    /// Loads (or creates) the identity under `state_dir`. Blocks: call it off the async workers.
    /// A device token file that cannot be parsed is set aside as `device-token.json.invalid`
    /// (never overwritten), and driftless pairs again.
    pub(crate) fn load(state_dir: &Path) -> Result<UpstreamIdentity, IdentityError> {
        let dir = state_dir.join(UPSTREAM_DIR);
        let device = DeviceIdentity::load_or_create(&dir)?;
        let token_path = dir.join(ISSUED_TOKEN_FILE);
        let token = match std::fs::read_to_string(&token_path) {
            Ok(mut text) => {
                let parsed = serde_json::from_str::<IssuedTokenFile>(&text);
                zeroize::Zeroize::zeroize(&mut text);
                match parsed {
                    Ok(file) if file.device_id == device.device_id() => {
                        Some(Arc::new(SecretValue::new(file.device_token)))
                    }
                    // Issued to a key that is gone: useless, and replaced at the next pairing.
                    Ok(_) => None,
                    Err(_) => {
                        tracing::warn!(
                            path = %token_path.display(),
                            "the upstream device token file is unreadable; set aside, driftless pairs with the upstream gateway again"
                        );
                        let aside = token_path.with_extension("json.invalid");
                        std::fs::rename(&token_path, &aside).map_err(|source| {
                            IdentityError::Read {
                                path: token_path.clone(),
                                source,
                            }
                        })?;
                        None
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(IdentityError::Read {
                    path: token_path,
                    source,
                });
            }
        };
        Ok(UpstreamIdentity {
            device,
            token_path,
            token: RwLock::new(token),
            pairing: tokio::sync::Mutex::new(()),
            writing: Mutex::new(()),
        })
    }

    pub(crate) fn device_id(&self) -> &str {
        self.device.device_id()
    }

    /// A device proof for `fields`.
    pub(crate) fn prove(&self, fields: &SignedFields<'_>) -> DeviceProof {
        self.device.prove(fields)
    }

    /// The current device token.
    pub(crate) fn token(&self) -> Option<Arc<SecretValue>> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops `refused` (if it is still the current token): the next session pairs again.
    pub(crate) fn forget(&self, refused: &SecretValue) {
        let mut token = self.token.write().unwrap_or_else(|e| e.into_inner());
        if token.as_ref().is_some_and(|t| t.same_as(refused)) {
            *token = None;
        }
    }

    /// Keeps `issued` as the device token (if it is new) and writes it to its file, off the
    /// async workers. A failed write is logged: the token still serves this process, and the next
    /// start pairs again.
    pub(crate) async fn remember(self: &Arc<Self>, issued: String) -> Arc<SecretValue> {
        let issued = Arc::new(SecretValue::new(issued));
        {
            let mut token = self.token.write().unwrap_or_else(|e| e.into_inner());
            if let Some(current) = token.as_ref()
                && current.same_as(&issued)
            {
                return current.clone();
            }
            *token = Some(issued.clone());
        }
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || this.write_current()).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "cannot save driftless's upstream device token; it serves until driftless restarts, then driftless pairs again"
            ),
            Err(e) => {
                tracing::error!(error = %e, "saving driftless's upstream device token failed")
            }
        }
        issued
    }

    /// Writes the token current now (so writes that race end with the last one on disk).
    fn write_current(&self) -> Result<(), atomic::WriteError> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(token) = self.token() else {
            return Ok(());
        };
        let mut file = IssuedTokenFile {
            version: 1,
            device_id: self.device.device_id().to_owned(),
            device_token: token.expose().to_owned(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("the token file serializes");
        zeroize::Zeroize::zeroize(&mut file.device_token);
        text.push('\n');
        let written = atomic::write_private(&self.token_path, text.as_bytes());
        zeroize::Zeroize::zeroize(&mut text);
        written.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn created_once_and_the_token_kept_private_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let id = Arc::new(UpstreamIdentity::load(dir.path()).unwrap());
        assert!(id.token().is_none());
        id.remember("device-canary-1".into()).await;
        let path = dir.path().join(UPSTREAM_DIR).join(ISSUED_TOKEN_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let again = UpstreamIdentity::load(dir.path()).unwrap();
        assert_eq!(again.device_id(), id.device_id());
        assert_eq!(again.token().unwrap().expose(), "device-canary-1");
        // A refused token is forgotten; a newer one is not.
        again.forget(&SecretValue::new("other".into()));
        assert!(again.token().is_some());
        again.forget(&SecretValue::new("device-canary-1".into()));
        assert!(again.token().is_none());
    }

    #[test]
    fn an_unreadable_token_file_is_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPSTREAM_DIR).join(ISSUED_TOKEN_FILE);
        atomic::write_private(&path, b"{not json").unwrap();
        let id = UpstreamIdentity::load(dir.path()).unwrap();
        assert!(id.token().is_none());
        assert_eq!(
            std::fs::read(path.with_extension("json.invalid")).unwrap(),
            b"{not json"
        );
    }

    #[test]
    fn a_token_issued_to_another_key_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPSTREAM_DIR).join(ISSUED_TOKEN_FILE);
        atomic::write_private(
            &path,
            br#"{"version":1,"deviceId":"someone-else","deviceToken":"t"}"#,
        )
        .unwrap();
        assert!(
            UpstreamIdentity::load(dir.path())
                .unwrap()
                .token()
                .is_none()
        );
    }
}
