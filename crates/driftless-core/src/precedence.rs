//! The one precedence table (see shared design `credentials.md`), as code.
//!
//! The gateway, the CLI, every probe and `credentials explain` call these functions; nothing else
//! decides which source of a credential wins.

use crate::config::AuthMode;
use crate::{Config, Env, SecretInput, SecretRef};

/// The environment variable that supplies the gateway token when config sets none.
pub const GATEWAY_TOKEN_ENV: &str = "DRIFTLESS_GATEWAY_TOKEN";
/// The environment variable that supplies the gateway password when config sets none.
pub const GATEWAY_PASSWORD_ENV: &str = "DRIFTLESS_GATEWAY_PASSWORD";

/// Where the gateway's shared secret came from (server table, highest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSecretOrigin {
    /// `--token`/`--password` on `gateway run`.
    Explicit,
    /// `gateway.auth.token`/`password` in config, through its reference.
    Config,
    /// `DRIFTLESS_GATEWAY_TOKEN`/`PASSWORD`, used only when config sets none.
    Env,
}

impl ServerSecretOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSecretOrigin::Explicit => "explicit flag",
            ServerSecretOrigin::Config => "config",
            ServerSecretOrigin::Env => "environment",
        }
    }
}

/// The config path under which the gateway's shared secret for `mode` is kept in the snapshot.
pub fn server_secret_name(mode: AuthMode) -> Option<&'static str> {
    match mode {
        AuthMode::Token => Some("gateway.auth.token"),
        AuthMode::Password => Some("gateway.auth.password"),
        AuthMode::None => None,
    }
}

/// The gateway's shared secret input for its auth mode: explicit > config > env.
pub fn server_secret(
    config: &Config,
    env: &Env,
    explicit: Option<&SecretInput>,
) -> Option<(SecretInput, ServerSecretOrigin)> {
    let (configured, env_name) = match config.gateway.auth.mode {
        AuthMode::Token => (&config.gateway.auth.token, GATEWAY_TOKEN_ENV),
        AuthMode::Password => (&config.gateway.auth.password, GATEWAY_PASSWORD_ENV),
        AuthMode::None => return None,
    };
    if let Some(e) = explicit {
        return Some((e.clone(), ServerSecretOrigin::Explicit));
    }
    if let Some(c) = configured {
        return Some((c.clone(), ServerSecretOrigin::Config));
    }
    env.non_empty(env_name).map(|_| {
        (
            SecretInput::Ref(SecretRef::Env {
                id: env_name.to_owned(),
            }),
            ServerSecretOrigin::Env,
        )
    })
}

/// `config` with the gateway's effective shared secret filled in, so one snapshot resolves it
/// like every other secret.
pub fn with_effective_server_secret(
    config: &Config,
    env: &Env,
    explicit: Option<&SecretInput>,
) -> Config {
    let mut out = config.clone();
    if let Some((input, _)) = server_secret(config, env, explicit) {
        match config.gateway.auth.mode {
            AuthMode::Token => out.gateway.auth.token = Some(input),
            AuthMode::Password => out.gateway.auth.password = Some(input),
            AuthMode::None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("/c.toml")).unwrap()
    }

    #[test]
    fn server_table() {
        let env_set = Env::from_pairs([(GATEWAY_TOKEN_ENV, "from-env")]);
        let none = Env::default();
        let with_cfg = cfg("[gateway.auth]\ntoken = { source = \"file\", path = \"/t\" }\n");
        let without = cfg("");
        let flag = SecretInput::Literal(crate::SecretValue::new("flag".into()));
        // (config, env, explicit) -> origin
        let cases = [
            (
                &with_cfg,
                &env_set,
                Some(&flag),
                Some(ServerSecretOrigin::Explicit),
            ),
            (&with_cfg, &env_set, None, Some(ServerSecretOrigin::Config)),
            (&with_cfg, &none, None, Some(ServerSecretOrigin::Config)),
            (&without, &env_set, None, Some(ServerSecretOrigin::Env)),
            (&without, &none, None, None),
            (
                &without,
                &none,
                Some(&flag),
                Some(ServerSecretOrigin::Explicit),
            ),
        ];
        for (i, (c, e, x, want)) in cases.into_iter().enumerate() {
            assert_eq!(server_secret(c, e, x).map(|(_, o)| o), want, "case {i}");
        }
        let none_mode = cfg("[gateway.auth]\nmode = \"none\"\n");
        assert!(server_secret(&none_mode, &env_set, None).is_none());
        let eff = with_effective_server_secret(&without, &env_set, None);
        assert_eq!(
            eff.gateway.auth.token.unwrap().describe(),
            "env:DRIFTLESS_GATEWAY_TOKEN"
        );
    }
}
