//! The typed config (`config.toml`).
//!
//! Unknown keys are rejected with their path; every error names the file, line and column. Secret
//! fields are [`SecretInput`]s: references, or literals that `doctor` flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SecretInput;

/// The secret name (dotted config path) of the upstream's credential in a resolved snapshot.
pub const UPSTREAM_TOKEN: &str = "upstream.token";

/// The default gateway port (the same as OpenClaw's, so existing clients find it).
pub const DEFAULT_PORT: u16 = 18789;

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    /// Model providers, keyed by id (`[providers.openai]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Front mode: an OpenClaw gateway that authenticated sessions are relayed to
    /// (`docs/front-mode.md`). Unset: the gateway answers its own methods only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
}

/// The OpenClaw gateway behind driftless (front mode).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its WebSocket URL, `ws://host:port` (loopback: only driftless should reach it).
    pub url: String,
    /// The upstream's gateway token (its `gateway.auth.token`), a reference like every secret.
    pub token: SecretInput,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to listen on. Loopback by default.
    pub bind: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    pub auth: AuthConfig,
    pub remote: RemoteConfig,
    pub devices: DevicesConfig,
    /// Browser origins (`https://ops.example.com`, or `"*"`) allowed to open a WebSocket besides
    /// the gateway's own host (OpenClaw's `gateway.controlUi.allowedOrigins`;
    /// `docs/front-mode.md`, "Origins").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

/// Device pairing.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Client addresses treated as this machine, whose devices pair silently when they present the
    /// shared secret. Empty (the default) means every loopback address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub local_addresses: Vec<std::net::IpAddr>,
    /// Where paired devices, pending requests, token hashes and the audit trail live: `sqlite`
    /// (the default, a file in the state directory, for one gateway) or `postgres` (one database
    /// shared by several gateway replicas; needs `[gateway.devices.postgres]`).
    pub store: DeviceStoreKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStoreKind {
    #[default]
    Sqlite,
    Postgres,
}

/// The PostgreSQL device store (`[gateway.devices.postgres]`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq connection string without the password, as a URL
    /// (`postgres://driftless@db.internal/driftless`) or `key=value` pairs
    /// (`host=/run/postgresql user=driftless dbname=driftless`).
    pub url: String,
    /// The role's password. Read again for each new connection, so rotating it at its source
    /// needs no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretInput>,
    /// The key device tokens are derived with (32 random bytes, base64url), the same for every
    /// replica; it is never stored in the database, so the database alone yields no token.
    pub token_key: SecretInput,
    /// Connections each gateway keeps open at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_pool_size() -> u32 {
    8
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            bind: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            auth: AuthConfig::default(),
            remote: RemoteConfig::default(),
            devices: DevicesConfig::default(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Token,
    Password,
    /// No shared secret; only allowed when bound to loopback.
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Password => "password",
            AuthMode::None => "none",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretInput>,
    /// How long the previous token keeps working after a rotation (0 = not at all).
    pub rotation_grace_seconds: u64,
    pub rate_limit: RateLimitConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Token,
            token: None,
            password: None,
            rotation_grace_seconds: 300,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// Brute-force protection for shared-secret and device-token checks.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Failures allowed per client address within `window_seconds`.
    pub max_attempts: u32,
    pub window_seconds: u64,
    /// How long an address is locked out once it reaches `max_attempts`.
    pub lockout_seconds: u64,
    /// Loopback clients are not limited (they already hold the machine).
    pub exempt_loopback: bool,
    /// Further addresses that are never limited.
    pub exempt: Vec<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            max_attempts: 10,
            window_seconds: 60,
            lockout_seconds: 300,
            exempt_loopback: true,
            exempt: Vec::new(),
        }
    }
}

/// How this machine's clients reach a remote gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretInput>,
}

/// An OpenAI-compatible model provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// A config that could not be loaded. Never carries file contents, only positions.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist; run `driftless init` to create one")]
    NotFound(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config file {path} is {kind}, not a regular file; point DRIFTLESS_CONFIG (or the config path) at a regular file"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("config file {path} is over the {MAX_CONFIG_BYTES}-byte limit; is it the right file?")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}:{column}: {message}{}", key.as_deref().map(|k| format!(" (at `{k}`)")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The largest config file read. Real configs are a few KiB; the cap keeps a config that points at
/// `/dev/zero` or a huge file from reading until memory runs out.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Reads a config file's text: a regular file only (a FIFO would block forever, a device never
/// ends), at most [`MAX_CONFIG_BYTES`], valid UTF-8.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    use crate::source::{OpenError, open_regular, read_capped_file};
    let io = |source: std::io::Error| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let (file, meta) = open_regular(path).map_err(|e| match e {
        OpenError::Missing => ConfigError::NotFound(path.to_owned()),
        OpenError::Directory => ConfigError::NotRegular {
            path: path.to_owned(),
            kind: "a directory",
        },
        OpenError::NotRegular(kind) => ConfigError::NotRegular {
            path: path.to_owned(),
            kind,
        },
        OpenError::Io(e) => io(e),
    })?;
    let too_large = || ConfigError::TooLarge {
        path: path.to_owned(),
    };
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(too_large());
    }
    let bytes = read_capped_file(file, meta.len(), MAX_CONFIG_BYTES)
        .map_err(io)?
        .ok_or_else(too_large)?;
    String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// A parsed config and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
}

impl LoadedConfig {
    /// The directory relative secret file paths are taken from.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

impl Config {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = read_text(path)?;
        let config = Config::parse(&text, path)?;
        Ok(LoadedConfig {
            config,
            path: path.to_owned(),
        })
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(text, path, None, &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != "." && !key.is_empty()).then_some(key);
            parse_error(text, path, key, e.inner())
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })
        };
        if self.gateway.bind.parse::<std::net::IpAddr>().is_err()
            && self.gateway.bind != "localhost"
        {
            return invalid(format!(
                "gateway.bind = {:?} is not an IP address; use e.g. \"127.0.0.1\" or \"0.0.0.0\"",
                self.gateway.bind
            ));
        }
        for ip in &self.gateway.auth.rate_limit.exempt {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return invalid(format!(
                    "gateway.auth.rate_limit.exempt: {ip:?} is not an IP address"
                ));
            }
        }
        let devices = &self.gateway.devices;
        if devices.store == DeviceStoreKind::Postgres && devices.postgres.is_none() {
            return invalid(
                "gateway.devices.store = \"postgres\" needs a [gateway.devices.postgres] table \
                 with url and token_key"
                    .into(),
            );
        }
        if devices.postgres.as_ref().is_some_and(|p| p.pool_size == 0) {
            return invalid("gateway.devices.postgres.pool_size must be at least 1".into());
        }
        if let Some(u) = &self.upstream
            && !u.url.starts_with("ws://")
        {
            return invalid(format!(
                "upstream.url = {:?} must start with ws:// (e.g. \"ws://127.0.0.1:18790\"); \
                 wss:// is not supported yet",
                u.url
            ));
        }
        for (id, p) in &self.providers {
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return invalid(format!(
                    "providers.{id}.base_url must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }

    /// Every secret field that is set, by its dotted config path.
    pub fn secret_inputs(&self) -> Vec<(String, &SecretInput)> {
        let mut out = Vec::new();
        let g = &self.gateway;
        let fields = [
            ("gateway.auth.token", &g.auth.token),
            ("gateway.auth.password", &g.auth.password),
            ("gateway.remote.token", &g.remote.token),
            ("gateway.remote.password", &g.remote.password),
        ];
        for (name, input) in fields {
            if let Some(i) = input {
                out.push((name.to_owned(), i));
            }
        }
        if let Some(p) = &g.devices.postgres {
            if let Some(pw) = &p.password {
                out.push(("gateway.devices.postgres.password".to_owned(), pw));
            }
            out.push((
                "gateway.devices.postgres.token_key".to_owned(),
                &p.token_key,
            ));
        }
        for (id, p) in &self.providers {
            if let Some(k) = &p.api_key {
                out.push((format!("providers.{id}.api_key"), k));
            }
        }
        if let Some(u) = &self.upstream {
            out.push((UPSTREAM_TOKEN.to_owned(), &u.token));
        }
        out
    }

    /// The settings a running gateway reads only at start, by dotted path. Secrets and their
    /// references are left out (a reload applies them live), and so is `gateway.remote`, which
    /// only clients read. Values are for comparison only: never print them.
    pub fn start_only_settings(&self) -> BTreeMap<String, serde_json::Value> {
        fn flatten(
            prefix: &str,
            v: serde_json::Value,
            out: &mut BTreeMap<String, serde_json::Value>,
        ) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let path = if prefix.is_empty() {
                            k
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flatten(&path, v, out);
                    }
                }
                leaf => {
                    out.insert(prefix.to_owned(), leaf);
                }
            }
        }
        let mut out = BTreeMap::new();
        flatten(
            "",
            serde_json::to_value(self).expect("a config serializes"),
            &mut out,
        );
        out.retain(|path, _| {
            let secret = matches!(
                path.as_str(),
                "gateway.auth.token" | "gateway.auth.password"
            ) || (path.starts_with("gateway.auth.token.")
                || path.starts_with("gateway.auth.password."))
                || path.starts_with("gateway.remote.")
                // Read again for each new database connection.
                || path == "gateway.devices.postgres.password"
                || path.starts_with("gateway.devices.postgres.password.")
                || (path.starts_with("providers.")
                    && (path.ends_with(".api_key") || path.contains(".api_key.")))
                || path == UPSTREAM_TOKEN
                || path.starts_with("upstream.token.");
            !secret
        });
        out
    }

    /// The start-only settings (see [`Config::start_only_settings`]) that differ in `other`.
    pub fn start_only_changes(&self, other: &Config) -> Vec<String> {
        let (a, b) = (self.start_only_settings(), other.start_only_settings());
        let mut changed: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
            .collect();
        changed.sort();
        changed
    }

    /// The JSON Schema of the config, for editors (`driftless config schema`).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
    }
}

fn parse_error(text: &str, path: &Path, key: Option<String>, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    // The toml message can quote the offending line; keep only its first line, which never does.
    let message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_owned();
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/cfg.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.gateway.bind, "127.0.0.1");
        assert_eq!(c.gateway.port, 18789);
        assert_eq!(c.gateway.auth.mode, AuthMode::Token);
        assert_eq!(c.gateway.auth.rotation_grace_seconds, 300);
        assert!(c.secret_inputs().is_empty());
    }

    #[test]
    fn start_only_changes_name_settings_and_never_secrets() {
        let before = parse(
            r#"
[gateway]
port = 1000
[gateway.auth]
token = "literal-one"
[gateway.remote]
url = "ws://10.0.0.1:18789"
[providers.openai]
base_url = "https://api.example.test/v1"
api_key = { source = "env", id = "A" }
"#,
        )
        .unwrap();
        let after = parse(
            r#"
[gateway]
port = 2000
[gateway.auth]
token = { source = "file", path = "/run/token" }
rotation_grace_seconds = 10
[gateway.remote]
url = "ws://10.0.0.2:18789"
[providers.openai]
base_url = "https://other.example.test/v1"
api_key = { source = "env", id = "B" }
"#,
        )
        .unwrap();
        assert_eq!(
            before.start_only_changes(&after),
            [
                "gateway.auth.rotation_grace_seconds",
                "gateway.port",
                "providers.openai.base_url"
            ]
        );
        assert!(before.start_only_changes(&before).is_empty());
        let settings = format!("{:?}", before.start_only_settings());
        assert!(!settings.contains("literal-one"), "{settings}");
    }

    #[test]
    fn secret_inputs_literal_and_refs() {
        let c = parse(
            r#"
[gateway.auth]
token = { source = "file", path = "/run/tok" }
password = "plain-literal"
[gateway.remote]
token = { source = "env", id = "REMOTE_TOK" }
[providers.openai]
base_url = "https://api.example.com/v1"
api_key = { source = "exec", command = ["pass", "show", "k"], timeout_ms = 500 }
"#,
        )
        .unwrap();
        let names: Vec<_> = c
            .secret_inputs()
            .into_iter()
            .map(|(n, i)| (n, i.kind()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("gateway.auth.token".to_string(), "file"),
                ("gateway.auth.password".to_string(), "literal"),
                ("gateway.remote.token".to_string(), "env"),
                ("providers.openai.api_key".to_string(), "exec"),
            ]
        );
        // Debug never shows the literal.
        assert!(!format!("{c:?}").contains("plain-literal"));
    }

    #[test]
    fn unknown_key_names_path_line_and_column() {
        let err = parse("[gateway]\nport = 1\n[gateway.auth]\nmode = \"token\"\ntokne = \"x\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/cfg.toml:5:"), "{msg}");
        assert!(msg.contains("tokne"), "{msg}");
        assert!(msg.contains("gateway.auth"), "{msg}");
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("[gateway]\nport = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn bad_reference_is_a_clear_error() {
        let err =
            parse("[gateway.auth]\ntoken = { source = \"vault\", id = \"x\" }\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("vault") && msg.contains("gateway.auth.token"),
            "{msg}"
        );
        let err = parse("[gateway.auth]\ntoken = { source = \"file\" }\n").unwrap_err();
        assert!(err.to_string().contains("path"), "{err}");
    }

    #[test]
    fn wrong_type_port() {
        let err = parse("[gateway]\nport = 99999\n").unwrap_err();
        assert!(err.to_string().contains("gateway.port"), "{err}");
    }

    #[test]
    fn schema_mentions_sections() {
        let s = Config::json_schema().to_string();
        assert!(s.contains("rotation_grace_seconds"));
        assert!(s.contains("SecretInput"));
    }
}
