//! `credentials explain`: the gateway's table ([`precedence::explain_server`]) and this client's,
//! each candidate with its origin and fingerprint (never a value), the winner and why.

use std::path::Path;

use driftless_core::precedence::{self, ClientSource, Locality, Row, Side};
use driftless_core::{Config, Env};

use crate::credentials::{Candidates, Explicit, target};
use crate::identity::DeviceIdentity;
use crate::store::{StoreError, TokenStore};

/// Both tables, as `credentials explain` prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub config: String,
    pub config_found: bool,
    pub gateway: Side,
    pub client: Side,
    pub warnings: Vec<String>,
}

/// Explains both tables for `config` (read from `config_path`; `config_found: false` when that
/// file does not exist and defaults apply), for the gateway at `url` (default: the configured one).
pub fn explain(
    config: &Config,
    config_path: &Path,
    config_found: bool,
    state_dir: &Path,
    env: &Env,
    url: Option<&str>,
) -> Result<Explanation, StoreError> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut warnings = Vec::new();
    let gateway = precedence::explain_server(config, env, base, &mut warnings);
    let client = client_side(config, base, state_dir, env, url, &mut warnings)?;
    Ok(Explanation {
        config: config_path.display().to_string(),
        config_found,
        gateway,
        client,
        warnings,
    })
}

fn client_side(
    config: &Config,
    base: &Path,
    state_dir: &Path,
    env: &Env,
    url: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Side, StoreError> {
    let t = target(config, url)?;
    let role = "operator";
    let identity = DeviceIdentity::load_existing(state_dir);
    let store = match &identity {
        Some(id) => Some(TokenStore::load(state_dir, id.device_id())?),
        None => None,
    };
    let subject = format!(
        "this client, talking to {} ({}), role {role}",
        t.url,
        match t.locality {
            Locality::Local => "the local gateway",
            Locality::Remote => "a remote gateway",
        }
    );
    let cands = Candidates::gather(
        config,
        base,
        env,
        t,
        role,
        &Explicit::default(),
        store.as_ref(),
    );
    let winner = cands.winner();
    let rows = cands
        .list
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (fingerprint, error) = match &c.value {
                Some(Ok(v)) => (Some(v.fingerprint().to_string()), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, None),
            };
            let note = match c.source {
                ClientSource::ExplicitToken | ClientSource::ExplicitPassword => {
                    Some("given per command; always wins, never replaced".to_owned())
                }
                ClientSource::StoredDeviceToken if identity.is_none() => {
                    Some("no device identity yet (created on first connect)".to_owned())
                }
                s if c.present() && winner.is_some() && Some(s) != winner => Some(format!(
                    "not used: {} comes first",
                    winner.map(ClientSource::describe).unwrap_or_default()
                )),
                _ => None,
            };
            Row {
                rank: i + 1,
                source: c.source.describe().to_owned(),
                origin: c.origin.clone(),
                set: c.value.is_some(),
                fingerprint,
                error,
                wins: Some(c.source) == winner,
                note,
            }
        })
        .collect();
    for (a, b) in cands.disagreements() {
        warnings.push(format!(
            "{} and {} are both set and differ; {} comes first in the table.",
            a.describe(),
            b.describe(),
            a.describe()
        ));
    }
    let why = match winner {
        None => "nothing to present: no flag, no stored device token, no shared credential".into(),
        Some(ClientSource::StoredDeviceToken) => {
            let fallback = cands.passive_winner();
            format!(
                "a device token issued to this device for this gateway beats passive shared credentials{}",
                fallback
                    .map(|f| format!(
                        "; if the gateway rejects it, it is deleted and {} is tried once",
                        f.describe()
                    ))
                    .unwrap_or_default()
            )
        }
        Some(s) => format!("{} is the first set source in the table", s.describe()),
    };
    Ok(Side {
        subject,
        candidates: rows,
        winner: winner.map(|w| w.describe().to_owned()),
        why,
    })
}
