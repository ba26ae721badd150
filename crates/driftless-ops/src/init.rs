//! `driftless init`: a commented config whose gateway token is a *reference* to a 0600 file, and
//! that file, filled with a fresh random token.

use std::path::{Path, PathBuf};

use driftless_core::{Config, ConfigError, Env, atomic, paths, secret};

/// What `init` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InitReport {
    pub config_path: PathBuf,
    /// The config file was written (created, or rewritten with `--force`).
    pub wrote_config: bool,
    /// A backup of the previous config, when `--force` replaced one.
    pub backup: Option<PathBuf>,
    /// The token file `init` manages, if the config references it.
    pub token_file: Option<PathBuf>,
    /// A new token was generated into `token_file`.
    pub wrote_token: bool,
}

impl InitReport {
    pub fn changed(&self) -> bool {
        self.wrote_config || self.wrote_token
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}; `init --force` will not replace a config it cannot parse — fix or move it first")]
    Unparsable(ConfigError),
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The config `init` writes. Comments explain each setting; the token is a file reference.
pub fn config_template(token_file: &Path) -> String {
    format!(
        r#"# driftless configuration.
# Secret fields hold *references* to the one place each secret lives, never a copy:
#   {{ source = "file", path = "..." }}      whole file, one trailing newline trimmed, mode 0600
#   {{ source = "env", id = "VAR" }}         an environment variable (cannot change while running)
#   {{ source = "exec", command = [...] }}   a command's standard output
# `driftless secrets check` resolves them; `driftless credentials explain` shows who wins.

[gateway]
# Where the gateway listens. Loopback by default; clients use ws://127.0.0.1:18789.
bind = "127.0.0.1"
port = 18789

[gateway.auth]
# token | password | none (none is only allowed on loopback)
mode = "token"
# Rotate with `driftless token rotate`: the running gateway picks the new value up live.
token = {{ source = "file", path = {path} }}
# After a rotation the previous token keeps working this many seconds (0 = not at all).
rotation_grace_seconds = 300
"#,
        path = toml_string(&token_file.to_string_lossy())
    )
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// Creates the config and the token file when missing. Idempotent; `force` rewrites a config that
/// parses (after backing it up) but never one that does not.
pub fn init(
    config_path: &Path,
    state_dir: &Path,
    env: &Env,
    force: bool,
) -> Result<InitReport, InitError> {
    let default_token = paths::default_gateway_token_file(state_dir);
    let mut report = InitReport {
        config_path: config_path.to_owned(),
        ..Default::default()
    };

    let existing = match Config::load(config_path) {
        Ok(c) => Some(c),
        Err(ConfigError::NotFound(_)) => None,
        Err(e) => return Err(InitError::Unparsable(e)),
    };

    let token_file = match &existing {
        Some(loaded) if !force => {
            // Keep the user's config; only fill in the token file it references if that is ours.
            let path = loaded
                .config
                .gateway
                .auth
                .token
                .as_ref()
                .and_then(|t| t.file_path(env, loaded.base_dir()))
                .and_then(Result::ok);
            path.filter(|p| *p == default_token)
        }
        _ => {
            if existing.is_some() {
                report.backup = Some(crate::backup::backup(config_path, &[])?);
            }
            atomic::write_private(config_path, config_template(&default_token).as_bytes())?;
            report.wrote_config = true;
            Some(default_token)
        }
    };

    if let Some(path) = token_file.as_ref().filter(|p| !p.exists()) {
        let dir = path.parent().expect("token file has a directory");
        atomic::create_private_dir(dir).map_err(|source| InitError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let token = secret::random_token();
        atomic::write_private(path, format!("{}\n", token.expose()).as_bytes())?;
        report.wrote_token = true;
    }
    report.token_file = token_file;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg/config.toml");
        let state = dir.path().join("state");
        let env = Env::default();
        let r = init(&cfg, &state, &env, false).unwrap();
        assert!(r.wrote_config && r.wrote_token);
        let tok = r.token_file.unwrap();
        assert_eq!(std::fs::metadata(&tok).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&cfg).unwrap().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&tok).unwrap();
        assert_eq!(token.trim_end().len(), 43);
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(!text.contains(token.trim_end()));

        let again = init(&cfg, &state, &env, false).unwrap();
        assert!(!again.changed());
        assert_eq!(std::fs::read_to_string(&tok).unwrap(), token);

        // A missing token file is regenerated; the config is left alone.
        std::fs::remove_file(&tok).unwrap();
        let r = init(&cfg, &state, &env, false).unwrap();
        assert!(r.wrote_token && !r.wrote_config);
    }

    #[test]
    fn force_refuses_unparsable_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, "[gateway\n").unwrap();
        let err = init(&cfg, &dir.path().join("s"), &Env::default(), true).unwrap_err();
        assert!(err.to_string().contains("will not replace"), "{err}");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "[gateway\n");
    }

    #[test]
    fn force_backs_up_a_parsable_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, "[gateway]\nport = 1234\n").unwrap();
        let r = init(&cfg, &dir.path().join("s"), &Env::default(), true).unwrap();
        assert!(r.wrote_config);
        let bak = r.backup.unwrap();
        assert_eq!(
            std::fs::read_to_string(&bak).unwrap(),
            "[gateway]\nport = 1234\n"
        );
        assert_eq!(std::fs::metadata(&bak).unwrap().mode() & 0o777, 0o600);
    }
}
