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

/// Whether the gateway a client talks to is this machine's own (its config is the gateway's) or
/// another one (reached through `gateway.remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Locality {
    Local,
    Remote,
}

/// A source of the credential a client presents to a gateway (client table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientSource {
    /// `--token` on the command line.
    ExplicitToken,
    /// `--password` on the command line.
    ExplicitPassword,
    /// The device token stored for this gateway URL and role by an earlier pairing.
    StoredDeviceToken,
    /// The local gateway's own shared secret, resolved by the server table above.
    LocalGateway,
    /// `gateway.remote.token`.
    RemoteToken,
    /// `gateway.remote.password`.
    RemotePassword,
    /// `DRIFTLESS_GATEWAY_TOKEN`.
    EnvToken,
}

impl ClientSource {
    /// Explicit sources always win and are never replaced or deleted.
    pub fn is_explicit(self) -> bool {
        matches!(
            self,
            ClientSource::ExplicitToken | ClientSource::ExplicitPassword
        )
    }

    /// Passive shared credentials: picked up from config or environment, never typed by the user.
    pub fn is_passive_shared(self) -> bool {
        !self.is_explicit() && self != ClientSource::StoredDeviceToken
    }

    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            ClientSource::ExplicitToken => "--token flag",
            ClientSource::ExplicitPassword => "--password flag",
            ClientSource::StoredDeviceToken => "stored device token",
            ClientSource::LocalGateway => "local gateway's own secret",
            ClientSource::RemoteToken => "gateway.remote.token",
            ClientSource::RemotePassword => "gateway.remote.password",
            ClientSource::EnvToken => GATEWAY_TOKEN_ENV,
        }
    }
}

/// The client table for `locality`, highest precedence first: explicit flag, then the stored
/// device token, then the passive shared credential (local: the gateway's own secret; remote: `gateway.remote.*`; then
/// `DRIFTLESS_GATEWAY_TOKEN`).
pub fn client_sources(locality: Locality) -> &'static [ClientSource] {
    use ClientSource::*;
    match locality {
        Locality::Local => &[
            ExplicitToken,
            ExplicitPassword,
            StoredDeviceToken,
            LocalGateway,
            EnvToken,
        ],
        Locality::Remote => &[
            ExplicitToken,
            ExplicitPassword,
            StoredDeviceToken,
            RemoteToken,
            RemotePassword,
            EnvToken,
        ],
    }
}

/// The first present source in the client table.
pub fn client_winner(
    locality: Locality,
    present: impl Fn(ClientSource) -> bool,
) -> Option<ClientSource> {
    client_sources(locality)
        .iter()
        .copied()
        .find(|s| present(*s))
}

/// The passive shared credential a client falls back to when no explicit or stored one exists, or
/// when a stored device token turned out stale.
pub fn client_passive_winner(
    locality: Locality,
    present: impl Fn(ClientSource) -> bool,
) -> Option<ClientSource> {
    client_sources(locality)
        .iter()
        .copied()
        .filter(|s| s.is_passive_shared())
        .find(|s| present(*s))
}

/// The config input behind a passive source, and whether it is a password (else a token).
/// `LocalGateway` follows the server table, so client and gateway agree by construction.
pub fn client_passive_input(
    source: ClientSource,
    config: &Config,
    env: &Env,
) -> Option<(SecretInput, bool)> {
    match source {
        ClientSource::LocalGateway => server_secret(config, env, None)
            .map(|(input, _)| (input, config.gateway.auth.mode == AuthMode::Password)),
        ClientSource::RemoteToken => config.gateway.remote.token.clone().map(|i| (i, false)),
        ClientSource::RemotePassword => config.gateway.remote.password.clone().map(|i| (i, true)),
        ClientSource::EnvToken => env.non_empty(GATEWAY_TOKEN_ENV).map(|_| {
            (
                SecretInput::Ref(SecretRef::Env {
                    id: GATEWAY_TOKEN_ENV.to_owned(),
                }),
                false,
            )
        }),
        _ => None,
    }
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

    #[test]
    fn client_table_orders_explicit_stored_passive() {
        use ClientSource::*;
        // (locality, present sources) -> winner
        let cases: &[(Locality, &[ClientSource], Option<ClientSource>)] = &[
            (Locality::Local, &[], None),
            (Locality::Local, &[EnvToken], Some(EnvToken)),
            (
                Locality::Local,
                &[LocalGateway, EnvToken],
                Some(LocalGateway),
            ),
            (
                Locality::Local,
                &[StoredDeviceToken, LocalGateway, EnvToken],
                Some(StoredDeviceToken),
            ),
            (
                Locality::Local,
                &[ExplicitToken, StoredDeviceToken, LocalGateway],
                Some(ExplicitToken),
            ),
            (
                Locality::Local,
                &[ExplicitPassword, StoredDeviceToken],
                Some(ExplicitPassword),
            ),
            (
                Locality::Local,
                &[ExplicitToken, ExplicitPassword],
                Some(ExplicitToken),
            ),
            // Remote sources mean nothing for the local gateway, and the reverse.
            (Locality::Local, &[RemoteToken], None),
            (Locality::Remote, &[LocalGateway], None),
            (
                Locality::Remote,
                &[RemoteToken, EnvToken],
                Some(RemoteToken),
            ),
            (
                Locality::Remote,
                &[RemotePassword, EnvToken],
                Some(RemotePassword),
            ),
            (Locality::Remote, &[EnvToken], Some(EnvToken)),
            (
                Locality::Remote,
                &[StoredDeviceToken, RemoteToken],
                Some(StoredDeviceToken),
            ),
            (
                Locality::Remote,
                &[ExplicitToken, StoredDeviceToken],
                Some(ExplicitToken),
            ),
        ];
        for (i, (loc, present, want)) in cases.iter().enumerate() {
            assert_eq!(
                client_winner(*loc, |s| present.contains(&s)),
                *want,
                "case {i}"
            );
        }
        let all = |_| true;
        assert_eq!(
            client_passive_winner(Locality::Local, all),
            Some(LocalGateway)
        );
        assert_eq!(
            client_passive_winner(Locality::Remote, all),
            Some(RemoteToken)
        );
    }

    #[test]
    fn passive_inputs_follow_server_table() {
        let env = Env::from_pairs([(GATEWAY_TOKEN_ENV, "e")]);
        let c = cfg(
            "[gateway.auth]\ntoken = { source = \"file\", path = \"/t\" }\n[gateway.remote]\npassword = \"p\"\n",
        );
        let (i, pw) = client_passive_input(ClientSource::LocalGateway, &c, &env).unwrap();
        assert_eq!((i.describe().as_str(), pw), ("file:/t", false));
        let (_, pw) = client_passive_input(ClientSource::RemotePassword, &c, &env).unwrap();
        assert!(pw);
        assert!(client_passive_input(ClientSource::RemoteToken, &c, &env).is_none());
        let (i, _) = client_passive_input(ClientSource::LocalGateway, &cfg(""), &env).unwrap();
        assert_eq!(i.describe(), "env:DRIFTLESS_GATEWAY_TOKEN");
        assert!(client_passive_input(ClientSource::EnvToken, &c, &Env::default()).is_none());
    }
}
