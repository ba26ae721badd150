//! Which credential this client presents to a gateway: the client table of
//! [`driftless_core::precedence`] applied to this machine's config, environment, flags and store.

use std::path::Path;

use driftless_core::precedence::{self, ClientSource, Locality};
use driftless_core::{Config, Env, SecretValue};

use crate::connection::Credential;
use crate::store::{StoreError, TokenStore, normalize_url};

/// The gateway a client talks to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Normalised URL (the store key).
    pub url: String,
    pub locality: Locality,
}

/// The URL of the gateway this machine's config runs. A wildcard bind is reached over loopback.
pub fn local_url(config: &Config) -> String {
    let host = match config.gateway.bind.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        h if h.contains(':') && !h.starts_with('[') => {
            return format!("ws://[{h}]:{}", config.gateway.port);
        }
        h => h,
    };
    format!("ws://{host}:{}", config.gateway.port)
}

/// `--url` if given, else `gateway.remote.url`, else the local gateway. A URL on this machine's
/// loopback (or equal to the configured local gateway's) is local: its own secret applies.
/// Anything else is remote.
pub fn target(config: &Config, explicit_url: Option<&str>) -> Result<Target, StoreError> {
    let local = normalize_url(&local_url(config))?;
    let url = match explicit_url.or(config.gateway.remote.url.as_deref()) {
        Some(u) => normalize_url(u)?,
        None => local.clone(),
    };
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest))
        .unwrap_or("")
        .trim_matches(['[', ']']);
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    let locality = if url == local || loopback {
        Locality::Local
    } else {
        Locality::Remote
    };
    Ok(Target { url, locality })
}

/// `--token` / `--password` as given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Explicit {
    pub token: Option<SecretValue>,
    pub password: Option<SecretValue>,
}

/// One row of the client table on this machine.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub source: ClientSource,
    /// Where the value comes from (`file:/…`, `env:NAME`, `flag`, the store path), never the value.
    pub origin: Option<String>,
    /// The resolved value, or why it could not be resolved; `None` when the source is not set.
    pub value: Option<Result<SecretValue, String>>,
    pub is_password: bool,
}

impl Candidate {
    pub fn present(&self) -> bool {
        matches!(self.value, Some(Ok(_)))
    }

    fn presented(&self) -> Credential {
        let Some(Ok(v)) = &self.value else {
            return Credential::None;
        };
        match (self.source, self.is_password) {
            (ClientSource::StoredDeviceToken, _) => Credential::DeviceToken(v.clone()),
            (_, true) => Credential::Password(v.clone()),
            (_, false) => Credential::Token(v.clone()),
        }
    }
}

/// Every candidate for `target` and `role`, in table order, set or not.
#[derive(Debug, Clone)]
pub struct Candidates {
    pub target: Target,
    pub role: String,
    pub list: Vec<Candidate>,
}

impl Candidates {
    /// Gathers the candidates. `config_base` is the directory relative secret paths start from.
    pub fn gather(
        config: &Config,
        config_base: &Path,
        env: &Env,
        target: Target,
        role: &str,
        explicit: &Explicit,
        store: Option<&TokenStore>,
    ) -> Candidates {
        let list = precedence::client_sources(target.locality)
            .iter()
            .map(|&source| {
                let flag = |v: &Option<SecretValue>, pw| Candidate {
                    source,
                    origin: v.as_ref().map(|_| "command line".to_owned()),
                    value: v.clone().map(Ok),
                    is_password: pw,
                };
                match source {
                    ClientSource::ExplicitToken => flag(&explicit.token, false),
                    ClientSource::ExplicitPassword => flag(&explicit.password, true),
                    ClientSource::StoredDeviceToken => {
                        let stored = store.and_then(|s| s.get(&target.url, role));
                        Candidate {
                            source,
                            origin: stored.map(|_| format!("{} for {role}", target.url)),
                            value: stored.map(|t| Ok(t.token.clone())),
                            is_password: false,
                        }
                    }
                    _ => match precedence::client_passive_input(source, config, env) {
                        Some((input, is_password)) => Candidate {
                            source,
                            origin: Some(input.describe()),
                            value: Some(input.resolve(env, config_base).map_err(|e| e.to_string())),
                            is_password,
                        },
                        None => Candidate {
                            source,
                            origin: None,
                            value: None,
                            is_password: false,
                        },
                    },
                }
            })
            .collect();
        Candidates {
            target,
            role: role.to_owned(),
            list,
        }
    }

    fn find(&self, source: ClientSource) -> Option<&Candidate> {
        self.list.iter().find(|c| c.source == source)
    }

    fn is_present(&self, source: ClientSource) -> bool {
        self.find(source).is_some_and(Candidate::present)
    }

    /// The winning source, by the one table.
    pub fn winner(&self) -> Option<ClientSource> {
        precedence::client_winner(self.target.locality, |s| self.is_present(s))
    }

    /// The passive shared fallback (used by self-healing).
    pub fn passive_winner(&self) -> Option<ClientSource> {
        precedence::client_passive_winner(self.target.locality, |s| self.is_present(s))
    }

    /// What to send for `source` (or nothing).
    pub fn presented(&self, source: Option<ClientSource>) -> Credential {
        source
            .and_then(|s| self.find(s))
            .map(Candidate::presented)
            .unwrap_or(Credential::None)
    }

    /// Pairs of present sources whose values differ (for warnings). Only shared-secret sources
    /// are compared: a device token differs from the shared token by design.
    pub fn disagreements(&self) -> Vec<(ClientSource, ClientSource)> {
        let shared: Vec<(ClientSource, bool, &SecretValue)> = self
            .list
            .iter()
            .filter(|c| c.source != ClientSource::StoredDeviceToken)
            .filter_map(|c| match &c.value {
                Some(Ok(v)) => Some((c.source, c.is_password, v)),
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for (i, (a, pa, va)) in shared.iter().enumerate() {
            for (b, pb, vb) in &shared[i + 1..] {
                // A token and a password are different secrets by design.
                if pa == pb && !va.same_as(vb) {
                    out.push((*a, *b));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("/c.toml")).unwrap()
    }

    #[test]
    fn target_locality() {
        let c = cfg("");
        assert_eq!(
            target(&c, None).unwrap(),
            Target {
                url: "ws://127.0.0.1:18789".into(),
                locality: Locality::Local
            }
        );
        assert_eq!(
            target(&c, Some("ws://localhost:18789/")).unwrap().locality,
            Locality::Local
        );
        assert_eq!(
            target(&c, Some("ws://127.0.0.1:40001")).unwrap().locality,
            Locality::Local
        );
        assert_eq!(
            target(&c, Some("ws://192.0.2.7:18789")).unwrap().locality,
            Locality::Remote
        );
        let r = cfg("[gateway.remote]\nurl = \"wss://gw.example.org\"\n");
        assert_eq!(target(&r, None).unwrap().url, "wss://gw.example.org:443");
        let wild = cfg("[gateway]\nbind = \"0.0.0.0\"\nport = 9\n");
        assert_eq!(local_url(&wild), "ws://127.0.0.1:9");
    }

    #[test]
    fn explicit_password_and_disagreements() {
        let env = Env::from_pairs([("DRIFTLESS_GATEWAY_TOKEN", "env-value")]);
        let c = cfg("[gateway.auth]\ntoken = \"config-value\"\n");
        let t = target(&c, None).unwrap();
        let x = Explicit {
            token: None,
            password: Some(SecretValue::new("pw".into())),
        };
        let cands = Candidates::gather(&c, Path::new("/"), &env, t, "operator", &x, None);
        assert_eq!(cands.winner(), Some(ClientSource::ExplicitPassword));
        assert!(matches!(
            cands.presented(cands.winner()),
            Credential::Password(_)
        ));
        assert_eq!(cands.passive_winner(), Some(ClientSource::LocalGateway));
        assert!(
            cands
                .disagreements()
                .contains(&(ClientSource::LocalGateway, ClientSource::EnvToken))
        );
    }
}
