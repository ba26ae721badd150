//! Connecting with the one precedence table, and self-healing a stale stored device token.
//!
//! The winner of the table is tried first. If it was the stored device token and the gateway
//! rejected it as a device-token mismatch, and a passive shared credential exists, the stale token
//! is deleted and the connection is retried once with the shared credential. An explicit flag is
//! never replaced and never causes a deletion. Any device token the gateway issues is stored.

use driftless_core::SecretValue;
use driftless_core::precedence::ClientSource;

use crate::connection::Credential;
use crate::credentials::Candidates;
use crate::store::{StoreError, TokenStore};

/// A device token a gateway issued in `hello-ok.auth`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: SecretValue,
    pub role: String,
    pub scopes: Vec<String>,
}

/// A refused connection attempt.
#[derive(Debug)]
pub struct Refused<E> {
    /// The gateway said `AUTH_DEVICE_TOKEN_MISMATCH` (or closed 1008 "device token mismatch").
    pub device_token_mismatch: bool,
    pub error: E,
}

/// A successful connection and how it was reached.
#[derive(Debug)]
pub struct Connected<T> {
    pub value: T,
    /// The source whose credential was accepted.
    pub used: Option<ClientSource>,
    /// A stale stored token was deleted on the way.
    pub healed: bool,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Refused(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tries the table's winner, heals once if allowed, stores issued device tokens.
pub async fn connect<T, E>(
    candidates: &Candidates,
    store: &mut TokenStore,
    mut attempt: impl AsyncFnMut(&Credential) -> Result<(T, Option<Issued>), Refused<E>>,
) -> Result<Connected<T>, ConnectError<E>>
where
    E: std::error::Error + 'static,
{
    let first = candidates.winner();
    let (used, healed, outcome) = match attempt(&candidates.presented(first)).await {
        Err(refused)
            if first == Some(ClientSource::StoredDeviceToken)
                && refused.device_token_mismatch
                && candidates.passive_winner().is_some() =>
        {
            let fallback = candidates.passive_winner();
            tracing::warn!(
                url = %candidates.target.url,
                role = %candidates.role,
                "the gateway no longer accepts the stored device token; deleting it and retrying once with the {}",
                fallback.map(ClientSource::describe).unwrap_or_default()
            );
            store.remove(&candidates.target.url, &candidates.role)?;
            (
                fallback,
                true,
                attempt(&candidates.presented(fallback)).await,
            )
        }
        other => (first, false, other),
    };
    let (value, issued) = outcome.map_err(|r| ConnectError::Refused(r.error))?;
    if let Some(issued) = issued {
        store_issued(candidates, store, used, issued)?;
    }
    Ok(Connected {
        value,
        used,
        healed,
    })
}

fn store_issued(
    candidates: &Candidates,
    store: &mut TokenStore,
    used: Option<ClientSource>,
    issued: Issued,
) -> Result<(), StoreError> {
    // Never keep a copy of a shared secret, even if a gateway echoed one back.
    let echoes_shared = candidates.list.iter().any(|c| {
        c.source != ClientSource::StoredDeviceToken
            && matches!(&c.value, Some(Ok(v)) if v.same_as(&issued.token))
    });
    if echoes_shared {
        tracing::warn!(
            "the gateway returned a shared credential as a device token; not storing it"
        );
        return Ok(());
    }
    let unchanged = used == Some(ClientSource::StoredDeviceToken)
        && store
            .get(&candidates.target.url, &issued.role)
            .is_some_and(|t| t.token.same_as(&issued.token) && t.scopes == issued.scopes);
    if unchanged {
        return Ok(());
    }
    store.put(
        &candidates.target.url,
        &issued.role,
        issued.token,
        issued.scopes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Explicit, target};
    use driftless_core::{Config, Env};
    use std::path::Path;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Fail(&'static str);

    const SHARED: &str = "shared-good-canary";
    const ENV_OTHER: &str = "env-other-canary";
    const DEVICE: &str = "device-good-canary";
    const STALE: &str = "device-stale-canary";
    const WRONG: &str = "explicit-wrong-canary";
    const URL: &str = "ws://127.0.0.1:18789";

    /// A stand-in for the gateway's credential decision (the real one is exercised end to end in
    /// the CLI tests): the shared token or the current device token are accepted; a successful
    /// connect issues the current device token, as `ensureDeviceToken` does.
    async fn gateway(
        p: &Credential,
        log: &mut Vec<String>,
    ) -> Result<((), Option<Issued>), Refused<Fail>> {
        let (label, ok, mismatch) = match p {
            Credential::Token(v) => (v.expose().to_owned(), v.matches(SHARED), false),
            Credential::DeviceToken(v) => (v.expose().to_owned(), v.matches(DEVICE), true),
            Credential::Password(_) => ("password".into(), false, false),
            Credential::None => ("nothing".into(), false, false),
        };
        log.push(label);
        if ok {
            let issued = Issued {
                token: SecretValue::new(DEVICE.into()),
                role: "operator".into(),
                scopes: vec!["operator.read".into()],
            };
            Ok(((), Some(issued)))
        } else {
            Err(Refused {
                device_token_mismatch: mismatch,
                error: Fail("unauthorized"),
            })
        }
    }

    fn short(v: &str) -> &'static str {
        match v {
            SHARED => "shared",
            ENV_OTHER => "env",
            DEVICE => "device",
            STALE => "stale",
            WRONG => "wrong",
            _ => "nothing",
        }
    }

    /// explicit, stored, config token, env token => credentials tried, success, store afterwards.
    type Row = (
        &'static str,
        &'static str,
        bool,
        bool,
        &'static [&'static str],
        bool,
        &'static str,
    );

    /// All 36 combinations of: explicit flag (-/good/wrong) x stored device token (-/ok/stale) x
    /// config token (-/present) x env token (-/present, a *different* value: the D3 setting).
    /// Expected: the credentials tried in order, success, and what the store holds afterwards.
    #[tokio::test]
    async fn table_every_combination() {
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // explicit, stored, cfg, env => tried, ok, store after
            ("-", "-", false, false, &["nothing"], false, "-"),
            ("-", "-", false, true, &["env"], false, "-"),
            ("-", "-", true, false, &["shared"], true, "device"),
            ("-", "-", true, true, &["shared"], true, "device"),
            ("-", "ok", false, false, &["device"], true, "device"),
            ("-", "ok", false, true, &["device"], true, "device"),   // D3: env differs, device wins
            ("-", "ok", true, false, &["device"], true, "device"),
            ("-", "ok", true, true, &["device"], true, "device"),    // D3
            ("-", "stale", false, false, &["stale"], false, "stale"), // nothing to heal with: kept
            ("-", "stale", false, true, &["stale", "env"], false, "-"),
            ("-", "stale", true, false, &["stale", "shared"], true, "device"), // self-heal
            ("-", "stale", true, true, &["stale", "shared"], true, "device"),
            // An explicit flag is the only thing tried; a wrong one leaves the store untouched.
            ("good", "-", false, false, &["shared"], true, "device"),
            ("good", "-", false, true, &["shared"], true, "device"),
            ("good", "-", true, false, &["shared"], true, "device"),
            ("good", "-", true, true, &["shared"], true, "device"),
            ("good", "ok", false, false, &["shared"], true, "device"),
            ("good", "ok", false, true, &["shared"], true, "device"),
            ("good", "ok", true, false, &["shared"], true, "device"),
            ("good", "ok", true, true, &["shared"], true, "device"),
            ("good", "stale", false, false, &["shared"], true, "device"),
            ("good", "stale", false, true, &["shared"], true, "device"),
            ("good", "stale", true, false, &["shared"], true, "device"),
            ("good", "stale", true, true, &["shared"], true, "device"),
            ("wrong", "-", false, false, &["wrong"], false, "-"),
            ("wrong", "-", false, true, &["wrong"], false, "-"),
            ("wrong", "-", true, false, &["wrong"], false, "-"),
            ("wrong", "-", true, true, &["wrong"], false, "-"),
            ("wrong", "ok", false, false, &["wrong"], false, "device"),
            ("wrong", "ok", false, true, &["wrong"], false, "device"),
            ("wrong", "ok", true, false, &["wrong"], false, "device"),
            ("wrong", "ok", true, true, &["wrong"], false, "device"),
            ("wrong", "stale", false, false, &["wrong"], false, "stale"),
            ("wrong", "stale", false, true, &["wrong"], false, "stale"),
            ("wrong", "stale", true, false, &["wrong"], false, "stale"),
            ("wrong", "stale", true, true, &["wrong"], false, "stale"),
        ];
        for (i, (explicit, stored, cfg_tok, env_tok, tried, ok, after)) in rows.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut store = TokenStore::load(dir.path(), "dev").unwrap();
            match *stored {
                "ok" => store
                    .put(
                        URL,
                        "operator",
                        SecretValue::new(DEVICE.into()),
                        vec!["operator.read".into()],
                    )
                    .unwrap(),
                "stale" => store
                    .put(URL, "operator", SecretValue::new(STALE.into()), vec![])
                    .unwrap(),
                _ => {}
            }
            let config = if *cfg_tok {
                Config::parse(
                    &format!("[gateway.auth]\ntoken = \"{SHARED}\"\n"),
                    Path::new("/c"),
                )
                .unwrap()
            } else {
                Config::default()
            };
            let env = if *env_tok {
                Env::from_pairs([("DRIFTLESS_GATEWAY_TOKEN", ENV_OTHER)])
            } else {
                Env::default()
            };
            let x = Explicit {
                token: match *explicit {
                    "good" => Some(SecretValue::new(SHARED.into())),
                    "wrong" => Some(SecretValue::new(WRONG.into())),
                    _ => None,
                },
                password: None,
            };
            let t = target(&config, None).unwrap();
            let cands = Candidates::gather(
                &config,
                Path::new("/"),
                &env,
                t,
                "operator",
                &x,
                Some(&store),
            );
            let mut log = Vec::new();
            let result = connect(&cands, &mut store, async |p: &Credential| {
                gateway(p, &mut log).await
            })
            .await;
            let got: Vec<&str> = log.iter().map(|s| short(s)).collect();
            assert_eq!(&got, tried, "row {i}: tried");
            assert_eq!(result.is_ok(), *ok, "row {i}: outcome");
            if let Ok(c) = &result {
                assert_eq!(c.healed, tried.len() == 2, "row {i}: healed");
            }
            // What is on disk, re-read from the file.
            let reread = TokenStore::load(dir.path(), "dev").unwrap();
            let now = reread
                .get(URL, "operator")
                .map(|t| short(t.token.expose()))
                .unwrap_or("-");
            assert_eq!(now, *after, "row {i}: store after");
            assert!(
                reread.list().iter().all(|s| s.role == "operator"),
                "row {i}"
            );
            // The store never holds a shared value.
            let text =
                std::fs::read_to_string(crate::store::store_path(dir.path())).unwrap_or_default();
            assert!(
                !text.contains(SHARED) && !text.contains(ENV_OTHER) && !text.contains(WRONG),
                "row {i}"
            );
        }
    }
}
