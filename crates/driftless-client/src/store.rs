//! Device tokens this client holds, per gateway (normalised URL) and role.
//!
//! `<state>/identity/device-tokens.json`, 0600, written atomically. Only tokens a gateway issued to
//! this device are stored here, never a shared gateway token. Entries written for another device
//! identity are dropped: a token is bound to the key that paired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use driftless_core::{Fingerprint, SecretValue, atomic};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error("could not read the device token store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the device token store {path} is not valid ({detail}); fix it or delete it (this device then pairs again)"
    )]
    Invalid { path: PathBuf, detail: String },
    #[error(
        "{0:?} is not a gateway URL (expected ws://HOST:PORT or wss://HOST:PORT, e.g. ws://127.0.0.1:18789)"
    )]
    BadUrl(String),
    #[error(
        "the gateway URL {0} carries a user name or password, which driftless never sends; remove it from the URL and pass --token or --password"
    )]
    UrlCredentials(String),
}

/// Normalises a gateway URL so one gateway has one key: lower-case scheme and host, explicit
/// port, no trailing slash; `http(s)` means `ws(s)`, and `localhost` means `127.0.0.1`.
pub fn normalize_url(url: &str) -> Result<String, StoreError> {
    // Never quote a `user:password@` back: the shown URL drops it.
    let bad = || StoreError::BadUrl(crate::wire::display_url(url));
    let (scheme, rest) = url.trim().split_once("://").ok_or_else(bad)?;
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => ("ws", 80),
        "wss" | "https" => ("wss", 443),
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(StoreError::UrlCredentials(crate::wire::display_url(url)));
    }
    if authority.is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?,
        };
        (format!("[{inner}]"), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| bad())?),
            None => (authority.to_owned(), default_port),
        }
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad());
    }
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

/// One stored token. `Debug` shows the fingerprint only.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: SecretValue,
    pub scopes: Vec<String>,
    pub updated_at_ms: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    token: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    updated_at_ms: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    version: u32,
    device_id: String,
    /// URL -> role -> token.
    gateways: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// A summary safe to print.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenSummary {
    pub url: String,
    pub role: String,
    pub fingerprint: Fingerprint,
    pub scopes: Vec<String>,
}

/// The device token store of one device identity.
pub struct TokenStore {
    path: PathBuf,
    device_id: String,
    tokens: BTreeMap<String, BTreeMap<String, StoredToken>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("entries", &self.list())
            .finish()
    }
}

/// Where the store lives under a state directory.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity").join("device-tokens.json")
}

impl TokenStore {
    /// Loads the store for `device_id`. A missing file is an empty store; an invalid one is an
    /// error and is left as it is.
    pub fn load(state_dir: &Path, device_id: &str) -> Result<TokenStore, StoreError> {
        let path = store_path(state_dir);
        let mut store = TokenStore {
            path: path.clone(),
            device_id: device_id.to_owned(),
            tokens: BTreeMap::new(),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let file: File = serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
            path: path.clone(),
            // serde_json's message names the position, never the value.
            detail: e.to_string(),
        })?;
        if file.device_id != device_id {
            tracing::info!("stored device tokens belong to another device identity; ignoring them");
            return Ok(store);
        }
        for (url, roles) in file.gateways {
            let roles = roles
                .into_iter()
                .map(|(role, e)| {
                    let token = SecretValue::new(e.token);
                    driftless_core::redact::register(&token);
                    (
                        role,
                        StoredToken {
                            token,
                            scopes: e.scopes,
                            updated_at_ms: e.updated_at_ms,
                        },
                    )
                })
                .collect();
            store.tokens.insert(url, roles);
        }
        Ok(store)
    }

    /// The token stored for `url` (any spelling) and `role`.
    pub fn get(&self, url: &str, role: &str) -> Option<&StoredToken> {
        let url = normalize_url(url).ok()?;
        self.tokens.get(&url)?.get(role)
    }

    /// Stores a token the gateway at `url` issued to this device for `role`.
    pub fn put(
        &mut self,
        url: &str,
        role: &str,
        token: SecretValue,
        scopes: Vec<String>,
    ) -> Result<(), StoreError> {
        let url = normalize_url(url)?;
        driftless_core::redact::register(&token);
        let updated_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.tokens.entry(url).or_default().insert(
            role.to_owned(),
            StoredToken {
                token,
                scopes,
                updated_at_ms,
            },
        );
        self.save()
    }

    /// Deletes the token for `url` and `role`; true if there was one.
    pub fn remove(&mut self, url: &str, role: &str) -> Result<bool, StoreError> {
        let url = normalize_url(url)?;
        let Some(roles) = self.tokens.get_mut(&url) else {
            return Ok(false);
        };
        if roles.remove(role).is_none() {
            return Ok(false);
        }
        if roles.is_empty() {
            self.tokens.remove(&url);
        }
        self.save()?;
        Ok(true)
    }

    /// Every stored token, as fingerprints.
    pub fn list(&self) -> Vec<TokenSummary> {
        self.tokens
            .iter()
            .flat_map(|(url, roles)| {
                roles.iter().map(move |(role, t)| TokenSummary {
                    url: url.clone(),
                    role: role.clone(),
                    fingerprint: t.token.fingerprint().clone(),
                    scopes: t.scopes.clone(),
                })
            })
            .collect()
    }

    fn save(&self) -> Result<(), StoreError> {
        let file = File {
            version: 1,
            device_id: self.device_id.clone(),
            gateways: self
                .tokens
                .iter()
                .map(|(url, roles)| {
                    let roles = roles
                        .iter()
                        .map(|(role, t)| {
                            (
                                role.clone(),
                                Entry {
                                    token: t.token.expose().to_owned(),
                                    scopes: t.scopes.clone(),
                                    updated_at_ms: t.updated_at_ms,
                                },
                            )
                        })
                        .collect();
                    (url.clone(), roles)
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("store serializes");
        text.push('\n');
        let result = atomic::write_private(&self.path, text.as_bytes());
        zeroize::Zeroize::zeroize(&mut text);
        result?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn url_normalisation() {
        let ok = [
            ("ws://127.0.0.1:18789", "ws://127.0.0.1:18789"),
            ("WS://LOCALHOST:18789/", "ws://127.0.0.1:18789"),
            ("http://Example.org", "ws://example.org:80"),
            (
                "wss://gw.example.org/path/",
                "wss://gw.example.org:443/path",
            ),
            ("ws://[::1]:9", "ws://[::1]:9"),
        ];
        for (i, o) in ok {
            assert_eq!(normalize_url(i).unwrap(), o, "{i}");
        }
        for bad in [
            "127.0.0.1:18789",
            "ftp://x",
            "ws://",
            "ws://u:p@h:1",
            "ws://h:port",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn per_url_and_role_0600_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TokenStore::load(dir.path(), "dev-a").unwrap();
        s.put(
            "ws://localhost:1",
            "operator",
            SecretValue::new("canary-device-token-1".into()),
            vec!["operator.read".into()],
        )
        .unwrap();
        s.put(
            "ws://127.0.0.1:2",
            "operator",
            SecretValue::new("t2".into()),
            vec![],
        )
        .unwrap();
        let path = store_path(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let s = TokenStore::load(dir.path(), "dev-a").unwrap();
        assert!(
            s.get("ws://127.0.0.1:1", "operator")
                .unwrap()
                .token
                .matches("canary-device-token-1")
        );
        assert!(s.get("ws://127.0.0.1:1", "node").is_none());
        assert!(
            s.get("ws://127.0.0.1:2", "operator")
                .unwrap()
                .token
                .matches("t2")
        );
        assert!(!format!("{s:?}").contains("canary"));
        // Another identity sees nothing.
        assert!(
            TokenStore::load(dir.path(), "dev-b")
                .unwrap()
                .list()
                .is_empty()
        );
        let mut s = TokenStore::load(dir.path(), "dev-a").unwrap();
        assert!(s.remove("ws://127.0.0.1:1/", "operator").unwrap());
        assert!(!s.remove("ws://127.0.0.1:1", "operator").unwrap());
        let s = TokenStore::load(dir.path(), "dev-a").unwrap();
        assert_eq!(s.list().len(), 1);
    }

    #[test]
    fn invalid_file_is_an_error_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        atomic::write_private(&path, b"{\"version\":1,").unwrap();
        let err = TokenStore::load(dir.path(), "d").unwrap_err().to_string();
        assert!(
            err.contains("not valid") && err.contains("delete it"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"version\":1,");
    }
}
