//! The doctor check for device tokens this machine's client stored: does each gateway still
//! accept its token?
//!
//! A stored device token the gateway no longer knows (rotated or revoked elsewhere, gateway
//! state restored from a backup) is the "device token mismatch" drift (D3 in the shared design
//! `credentials.md`). The only way to know is to ask the gateway, so each entry is probed with a
//! real connection signed by this device's identity. Only a gateway's explicit
//! `AUTH_DEVICE_TOKEN_MISMATCH` makes a finding; an unreachable gateway proves nothing and is
//! reported as skipped, and its token is kept. The repair deletes the refused entry (the next
//! connection falls back to the shared credential and is issued a fresh token), after a backup in
//! which every token value is replaced by its fingerprint, so the backup is a record and never a
//! second copy of a live token.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use driftless_client::connection::{ClientError, ConnectOptions, Credential, connect};
use driftless_client::identity::DeviceIdentity;
use driftless_client::store::{self, StoreError, TokenStore};
use driftless_core::SecretValue;

use super::check::{Check, Context, DoctorError};
use crate::backup;
use crate::findings::{Action, Row};

const CHECK: &str = "device-token";

/// Bound on each probe (TCP connect, challenge, hello-ok).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a gateway said about one stored token.
enum Verdict {
    Accepted,
    /// `AUTH_DEVICE_TOKEN_MISMATCH`: the token is dead and only gets in the way.
    Refused,
    /// No answer, or an answer that says nothing about the token (rate limited, protocol error).
    Inconclusive(String),
}

struct Probe {
    url: String,
    role: String,
    token: SecretValue,
    verdict: Verdict,
}

impl Probe {
    fn describe(&self) -> String {
        format!(
            "stored device token {} for {} (role {})",
            self.token.fingerprint(),
            self.url,
            self.role
        )
    }
}

/// The store and what each gateway said, or `None` when this machine stores no device tokens.
struct Probed {
    store: TokenStore,
    probes: Vec<Probe>,
}

fn probe_all(state_dir: &Path) -> Result<Option<Probed>, StoreError> {
    if !store::store_path(state_dir).exists() {
        return Ok(None);
    }
    let Some(identity) = DeviceIdentity::load_existing(state_dir) else {
        return Ok(None);
    };
    let store = TokenStore::load(state_dir, identity.device_id())?;
    let entries: Vec<(String, String, SecretValue, Vec<String>)> = store
        .list()
        .into_iter()
        .filter_map(|s| {
            let t = store.get(&s.url, &s.role)?;
            Some((s.url, s.role, t.token.clone(), t.scopes.clone()))
        })
        .collect();
    if entries.is_empty() {
        return Ok(Some(Probed {
            store,
            probes: Vec::new(),
        }));
    }
    let identity = Arc::new(identity);
    // Doctor is synchronous; a private single-threaded runtime serves its few probes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let why = format!("cannot start the async runtime: {e}");
            let probes = entries
                .into_iter()
                .map(|(url, role, token, _)| Probe {
                    url,
                    role,
                    token,
                    verdict: Verdict::Inconclusive(why.clone()),
                })
                .collect();
            return Ok(Some(Probed { store, probes }));
        }
    };
    let probes = runtime.block_on(async {
        let mut probes = Vec::new();
        for (url, role, token, scopes) in entries {
            let mut opts = ConnectOptions::new(url.clone(), Credential::DeviceToken(token.clone()));
            opts.role = role.clone();
            opts.mode = "probe".into();
            opts.device = Some(identity.clone());
            opts.timeout = PROBE_TIMEOUT;
            // Ask for no more than the token was issued for, so a refusal is about the token.
            if !scopes.is_empty() {
                opts.scopes = scopes;
            }
            let verdict = match connect(&opts).await {
                Ok(conn) => {
                    conn.close().await;
                    Verdict::Accepted
                }
                Err(e) if e.is_device_token_mismatch() => Verdict::Refused,
                Err(ClientError::Unreachable { message, .. }) => {
                    Verdict::Inconclusive(format!("cannot reach it ({message})"))
                }
                Err(e) => Verdict::Inconclusive(e.to_string()),
            };
            probes.push(Probe {
                url,
                role,
                token,
                verdict,
            });
        }
        probes
    });
    Ok(Some(Probed { store, probes }))
}

fn store_error_row(state_dir: &Path, e: &StoreError) -> Row {
    Row::finding(
        CHECK,
        e.to_string(),
        format!(
            "fix or delete {} by hand; doctor never rewrites a file it cannot read",
            store::store_path(state_dir).display()
        ),
    )
}

/// `device-token`: each gateway still accepts the device token this machine stored for it.
pub(crate) struct DeviceTokens;

impl Check for DeviceTokens {
    /// One row per stored token, or one row saying there is nothing to check.
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let state_dir = &cx.doctor.state_dir;
        let probed = match probe_all(state_dir) {
            Ok(Some(p)) => p,
            Ok(None) => return vec![Row::ok(CHECK, "no stored device tokens")],
            Err(e) => return vec![store_error_row(state_dir, &e)],
        };
        if probed.probes.is_empty() {
            return vec![Row::ok(CHECK, "no stored device tokens")];
        }
        probed
            .probes
            .into_iter()
            .map(|p| {
                let what = p.describe();
                match p.verdict {
                    Verdict::Accepted => Row::ok(CHECK, format!("{what}: the gateway accepts it")),
                    Verdict::Refused => Row::finding(
                        CHECK,
                        format!("{what}: the gateway no longer accepts it (device token mismatch)"),
                        "delete it from the store (backup first); the next connection uses the shared \
                         credential and is issued a fresh device token",
                    ),
                    Verdict::Inconclusive(why) => Row::skipped(
                        CHECK,
                        format!("{what}: not checked, {why}; the token is kept"),
                    ),
                }
            })
            .collect()
    }

    /// Deletes every stored token its gateway refused. Re-probes first, so a second run finds
    /// nothing to do and changes nothing.
    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let state_dir = &cx.doctor.state_dir;
        let Some(Probed { mut store, probes }) = probe_all(state_dir)? else {
            return Ok(());
        };
        let refused: Vec<&Probe> = probes
            .iter()
            .filter(|p| matches!(p.verdict, Verdict::Refused))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let path = store::store_path(state_dir);
        // There is a probe for every stored token: the backup names each by fingerprint only.
        let values: Vec<&SecretValue> = probes.iter().map(|p| &p.token).collect();
        let bak = backup::backup(&path, &values)?;
        for p in refused {
            store.remove(&p.url, &p.role)?;
            actions.push(Action::changed(
                format!("deleted {}: the gateway refused it", p.describe()),
                path.clone(),
                Some(bak.clone()),
            ));
        }
        Ok(())
    }
}
