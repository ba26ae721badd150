//! Moving a secret out of the config (or out of a service unit) into its one source: a 0600 file
//! or a named environment variable, then pointing the config at it.
//!
//! `driftless secrets migrate` and `driftless doctor --fix` both call [`move_to_source`]. The
//! order never loses the value: the source is written (or checked) first, the config is backed up
//! (with the value replaced by its fingerprint) and only then rewritten, atomically.

use std::path::{Path, PathBuf};

use driftless_core::config_edit::{ConfigDocument, EditError};
use driftless_core::{
    Config, ConfigError, Env, SecretInput, SecretRef, SecretValue, atomic, paths,
};

use crate::backup::{BackupError, backup};

/// Where a migrated secret goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A 0600 file under the state directory's `secrets/` folder.
    File,
    /// The named environment variable, which must already hold the value.
    Env(String),
}

/// One secret that now lives in its source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moved {
    /// The config field, e.g. `gateway.auth.token`.
    pub name: String,
    /// The reference the config now holds (`file:/path`, `env:NAME`).
    pub reference: String,
    /// The file the value was written to (None when it already held it, or for env).
    pub wrote_file: Option<PathBuf>,
    /// The config backup written before the change.
    pub backup: PathBuf,
    /// The file the config edit replaced when the config is a symlink (the link is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_symlink_target: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("no secret field `{0}` is set in the config; `driftless secrets check` lists them")]
    UnknownSecret(String),
    #[error(
        "--to-env moves one secret; name it, e.g. `driftless secrets migrate gateway.auth.token --to-env {0}`"
    )]
    AmbiguousEnv(String),
    #[error(
        "{var} does not hold this secret ({fingerprint}) in this environment; export it with the value first. \
         Nothing was changed"
    )]
    EnvMismatch { var: String, fingerprint: String },
    #[error(
        "{path} already holds a different secret ({existing}); move that file away or migrate to an env var. \
         Nothing was changed"
    )]
    TargetHoldsOther { path: PathBuf, existing: String },
    #[error(
        "{path} exists but cannot be read ({source}); move it away or migrate to an env var. \
         Nothing was changed"
    )]
    TargetUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file a secret named `name` is moved to: the gateway token goes where `init` puts it, other
/// secrets beside it, named after their config field.
pub fn default_file(name: &str, state_dir: &Path) -> PathBuf {
    if name == "gateway.auth.token" {
        return paths::default_gateway_token_file(state_dir);
    }
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    state_dir.join("secrets").join(file)
}

/// Writes `value` to `path` (0600, directory 0700) unless the file already holds it. Returns
/// whether it wrote. A file holding another value is never overwritten.
pub fn persist_file(path: &Path, value: &SecretValue) -> Result<bool, MigrateError> {
    let existing = match crate::input::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(MigrateError::TargetUnreadable {
                path: path.to_owned(),
                source,
            });
        }
    };
    if let Some(mut existing) = existing {
        if existing.ends_with('\n') {
            existing.pop();
        }
        if value.matches(&existing) {
            return Ok(false);
        }
        return Err(MigrateError::TargetHoldsOther {
            path: path.to_owned(),
            existing: SecretValue::new(existing).fingerprint().to_string(),
        });
    }
    if let Some(dir) = path.parent() {
        atomic::create_private_dir(dir).map_err(|source| MigrateError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    atomic::write_private(path, format!("{}\n", value.expose()).as_bytes())?;
    Ok(true)
}

/// Puts `value` into `target` and points config field `name` at it.
pub fn move_to_source(
    config_path: &Path,
    name: &str,
    value: &SecretValue,
    target: &Target,
    env: &Env,
    state_dir: &Path,
) -> Result<Moved, MigrateError> {
    // Opening first refuses a config that does not parse before anything is written.
    let mut doc = ConfigDocument::open(config_path)?;
    let (reference, wrote_file) = match target {
        Target::File => {
            let path = default_file(name, state_dir);
            let wrote = persist_file(&path, value)?;
            let r = SecretRef::File {
                path: path.to_string_lossy().into_owned(),
            };
            (r, wrote.then_some(path))
        }
        Target::Env(var) => {
            if !env.get(var).is_some_and(|v| value.matches(v)) {
                return Err(MigrateError::EnvMismatch {
                    var: var.clone(),
                    fingerprint: value.fingerprint().to_string(),
                });
            }
            (SecretRef::Env { id: var.clone() }, None)
        }
    };
    // Every literal of the old config either stays in the new one or moves to its own source, so
    // the backup holds none of them.
    let literals: Vec<SecretValue> = Config::load(config_path)?
        .config
        .secret_inputs()
        .into_iter()
        .filter_map(|(_, i)| match i {
            SecretInput::Literal(v) => Some(v.clone()),
            SecretInput::Ref(_) => None,
        })
        .collect();
    let mut redacted: Vec<&SecretValue> = literals.iter().collect();
    redacted.push(value);
    let backup = backup(config_path, &redacted)?;
    doc.set_secret_ref(name, &reference);
    let written = doc.save()?;
    Ok(Moved {
        name: name.to_owned(),
        reference: SecretInput::Ref(reference).describe(),
        wrote_file,
        backup,
        config_symlink_target: written.through_symlink().then_some(written.target),
    })
}

/// `driftless secrets migrate`: moves every literal secret in the config (or only `only`) to
/// `target`. A field that already holds a reference is left alone, so a second run changes nothing.
pub fn migrate_literals(
    config_path: &Path,
    only: Option<&str>,
    target: &Target,
    env: &Env,
    state_dir: &Path,
) -> Result<Vec<Moved>, MigrateError> {
    let loaded = Config::load(config_path)?;
    let inputs = loaded.config.secret_inputs();
    if let Some(name) = only
        && !inputs.iter().any(|(n, _)| n == name)
    {
        return Err(MigrateError::UnknownSecret(name.to_owned()));
    }
    let literals: Vec<(String, SecretValue)> = inputs
        .into_iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n))
        .filter_map(|(n, i)| match i {
            SecretInput::Literal(v) => Some((n, v.clone())),
            SecretInput::Ref(_) => None,
        })
        .collect();
    if let Target::Env(var) = target
        && literals.len() > 1
    {
        return Err(MigrateError::AmbiguousEnv(var.clone()));
    }
    literals
        .iter()
        .map(|(name, value)| move_to_source(config_path, name, value, target, env, state_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn literal_to_file_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &cfg,
            "# keep me\n[gateway.auth]\ntoken = \"canary-migrate-unit-1\"\n",
        )
        .unwrap();
        let env = Env::default();
        let moved = migrate_literals(&cfg, None, &Target::File, &env, &state).unwrap();
        assert_eq!(moved.len(), 1);
        let file = moved[0].wrote_file.clone().unwrap();
        assert_eq!(file, state.join("secrets/gateway-token"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "canary-migrate-unit-1\n"
        );
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(!text.contains("canary-migrate-unit-1") && text.contains("# keep me"));
        let bak = std::fs::read_to_string(&moved[0].backup).unwrap();
        assert!(!bak.contains("canary-migrate-unit-1"), "{bak}");
        let again = migrate_literals(&cfg, None, &Target::File, &env, &state).unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn env_target_must_hold_the_value_and_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let state = dir.path().join("state");
        let original = "[gateway.auth]\ntoken = \"canary-migrate-unit-2\"\n";
        std::fs::write(&cfg, original).unwrap();
        let wrong = Env::from_pairs([("GW_TOK", "something-else")]);
        let t = Target::Env("GW_TOK".into());
        let err = migrate_literals(&cfg, None, &t, &wrong, &state).unwrap_err();
        assert!(matches!(err, MigrateError::EnvMismatch { .. }), "{err}");
        assert!(!err.to_string().contains("canary-migrate-unit-2"));
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), original);

        persist_file(
            &state.join("secrets/gateway-token"),
            &SecretValue::new("other".into()),
        )
        .unwrap();
        let err = migrate_literals(&cfg, None, &Target::File, &Env::default(), &state).unwrap_err();
        assert!(
            matches!(err, MigrateError::TargetHoldsOther { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), original);

        let right = Env::from_pairs([("GW_TOK", "canary-migrate-unit-2")]);
        let moved = migrate_literals(&cfg, Some("gateway.auth.token"), &t, &right, &state).unwrap();
        assert_eq!(moved[0].reference, "env:GW_TOK");
        assert!(std::fs::read_to_string(&cfg).unwrap().contains("GW_TOK"));
    }
}
