//! The one precedence table (see shared design `credentials.md`), as code.
//!
//! The gateway, the CLI, every probe and `credentials explain` call these functions; nothing else
//! decides which source of a credential wins.

use std::path::Path;

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

/// Where the gateway's shared secret of one auth mode is set: the one mapping from an auth mode
/// to its config field, environment variable and `gateway run` flag.
#[derive(Debug, Clone, Copy)]
pub struct SecretSlot {
    /// `token` or `password`: the key under `[gateway.auth]`.
    pub field: &'static str,
    /// `gateway.auth.token`: the config path, also the secret's name in the snapshot.
    pub path: &'static str,
    /// The environment variable used when config sets none.
    pub env: &'static str,
    /// The `gateway run` flag that overrides both.
    pub flag: &'static str,
    input: fn(&Config) -> &Option<SecretInput>,
    input_mut: fn(&mut Config) -> &mut Option<SecretInput>,
}

const TOKEN_SLOT: SecretSlot = SecretSlot {
    field: "token",
    path: "gateway.auth.token",
    env: GATEWAY_TOKEN_ENV,
    flag: "--token",
    input: |c| &c.gateway.auth.token,
    input_mut: |c| &mut c.gateway.auth.token,
};

const PASSWORD_SLOT: SecretSlot = SecretSlot {
    field: "password",
    path: "gateway.auth.password",
    env: GATEWAY_PASSWORD_ENV,
    flag: "--password",
    input: |c| &c.gateway.auth.password,
    input_mut: |c| &mut c.gateway.auth.password,
};

impl SecretSlot {
    /// The input config sets for this secret, if any.
    pub fn configured<'a>(&self, config: &'a Config) -> Option<&'a SecretInput> {
        (self.input)(config).as_ref()
    }
}

/// Where the shared secret of `mode` is set (`None` for mode `none`, which has none).
pub fn secret_slot(mode: AuthMode) -> Option<&'static SecretSlot> {
    match mode {
        AuthMode::Token => Some(&TOKEN_SLOT),
        AuthMode::Password => Some(&PASSWORD_SLOT),
        AuthMode::None => None,
    }
}

/// The slot a credential named by its environment variable or its flag belongs to.
pub fn slot_named(name: &str) -> Option<&'static SecretSlot> {
    [&TOKEN_SLOT, &PASSWORD_SLOT]
        .into_iter()
        .find(|s| s.env == name || s.flag == name)
}

/// The config path under which the gateway's shared secret for `mode` is kept in the snapshot.
pub fn server_secret_name(mode: AuthMode) -> Option<&'static str> {
    secret_slot(mode).map(|s| s.path)
}

/// The gateway's shared secret input for its auth mode: explicit > config > env.
pub fn server_secret(
    config: &Config,
    env: &Env,
    explicit: Option<&SecretInput>,
) -> Option<(SecretInput, ServerSecretOrigin)> {
    let slot = secret_slot(config.gateway.auth.mode)?;
    if let Some(e) = explicit {
        return Some((e.clone(), ServerSecretOrigin::Explicit));
    }
    if let Some(c) = slot.configured(config) {
        return Some((c.clone(), ServerSecretOrigin::Config));
    }
    env.non_empty(slot.env)
        .map(|_| (env_input(slot.env), ServerSecretOrigin::Env))
}

fn env_input(name: &str) -> SecretInput {
    SecretInput::Ref(SecretRef::Env {
        id: name.to_owned(),
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
    if let (Some((input, _)), Some(slot)) = (
        server_secret(config, env, explicit),
        secret_slot(config.gateway.auth.mode),
    ) {
        *(slot.input_mut)(&mut out) = Some(input);
    }
    out
}

/// One candidate source in `credentials explain`: where it comes from and its fingerprint, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// 1 = highest precedence.
    pub rank: usize,
    pub source: String,
    /// Where the value comes from (`file:/…`, `env:NAME`, …), never the value.
    pub origin: Option<String>,
    pub set: bool,
    pub fingerprint: Option<String>,
    pub error: Option<String>,
    pub wins: bool,
    pub note: Option<String>,
}

/// One table of `credentials explain` (the gateway's, or this client's), with its winner and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Side {
    pub subject: String,
    pub candidates: Vec<Row>,
    pub winner: Option<String>,
    pub why: String,
}

/// The fingerprint of `input` resolved relative to `base`, or why it does not resolve.
pub fn fingerprint_of(
    input: &SecretInput,
    env: &Env,
    base: &Path,
) -> (Option<String>, Option<String>) {
    match input.resolve(env, base) {
        Ok(v) => (Some(v.fingerprint().to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// The server table for `config` as `credentials explain` shows it: flag, config, environment,
/// which one wins and why. Disagreements the gateway would hide go to `warnings`.
pub fn explain_server(config: &Config, env: &Env, base: &Path, warnings: &mut Vec<String>) -> Side {
    let mode = config.gateway.auth.mode;
    let subject = format!("the gateway configured here (auth mode {})", mode.as_str());
    let Some(slot) = secret_slot(mode) else {
        return Side {
            subject,
            candidates: vec![],
            winner: None,
            why: "auth mode none: no shared secret (allowed only on a loopback bind)".into(),
        };
    };
    let (name, env_name) = (slot.path, slot.env);
    let configured = slot.configured(config);
    let winner = server_secret(config, env, None).map(|(_, o)| o);
    let mut rows = vec![Row {
        rank: 1,
        source: format!("{} on gateway run", slot.flag),
        origin: None,
        set: false,
        fingerprint: None,
        error: None,
        wins: false,
        note: Some("only the running gateway's command line shows it".into()),
    }];
    let (cfg_fp, cfg_err) = configured
        .map(|i| fingerprint_of(i, env, base))
        .unwrap_or((None, None));
    rows.push(Row {
        rank: 2,
        source: name.into(),
        origin: configured.map(SecretInput::describe),
        set: configured.is_some(),
        fingerprint: cfg_fp.clone(),
        error: cfg_err,
        wins: winner == Some(ServerSecretOrigin::Config),
        note: None,
    });
    let env_input = env_input(env_name);
    let env_set = env.non_empty(env_name).is_some();
    let env_fp = env_set
        .then(|| fingerprint_of(&env_input, env, base).0)
        .flatten();
    rows.push(Row {
        rank: 3,
        source: env_name.into(),
        origin: env_set.then(|| env_input.describe()),
        set: env_set,
        fingerprint: env_fp.clone(),
        error: None,
        wins: winner == Some(ServerSecretOrigin::Env),
        note: (env_set && configured.is_some())
            .then(|| "ignored: config sets a value, and config comes first".into()),
    });
    if let (Some(c), Some(e)) = (&cfg_fp, &env_fp)
        && c != e
    {
        warnings.push(format!(
            "{env_name} ({e}) differs from {name} ({c}); the gateway uses the config value. Remove the variable (or make them equal) so nothing presents the wrong one."
        ));
    }
    let why = match winner {
        Some(ServerSecretOrigin::Config) => {
            format!("{name} is set in config; config comes before the environment")
        }
        Some(ServerSecretOrigin::Env) => format!("config sets no {name}, so {env_name} is used"),
        Some(ServerSecretOrigin::Explicit) => "an explicit flag".into(),
        None => format!(
            "nothing is set: `driftless init` (or `driftless gateway run`) creates {name} as a file reference"
        ),
    };
    Side {
        subject,
        candidates: rows,
        winner: winner.map(|o| o.as_str().to_owned()),
        why,
    }
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
        ClientSource::EnvToken => env
            .non_empty(GATEWAY_TOKEN_ENV)
            .map(|_| (env_input(GATEWAY_TOKEN_ENV), false)),
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
