//! Resolved secrets as one immutable value, swapped atomically.
//!
//! Validate, then publish: a new snapshot is fully resolved before anything sees it, and a reload
//! that fails anywhere keeps the old snapshot and reports every error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::{Config, Env, Fingerprint, ResolveError, SecretInput, SecretValue, redact};

/// A secret's dotted config path, e.g. `gateway.auth.token`.
pub type SecretName = String;

/// One resolved secret and where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedSecret {
    pub value: SecretValue,
    /// `literal`, `env`, `file` or `exec`.
    pub kind: &'static str,
    /// A human description of the source (`file:/path`), never the value.
    pub source: String,
    /// False for env references: they cannot change while this process lives.
    pub can_change_live: bool,
}

/// Every secret of a config, resolved at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    secrets: BTreeMap<SecretName, ResolvedSecret>,
    resolved_at: SystemTime,
}

/// Every secret that failed to resolve (a reload reports all of them, not just the first).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .errors.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct SnapshotError {
    pub errors: Vec<(SecretName, ResolveError)>,
}

/// How one secret changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretChange {
    pub name: SecretName,
    pub before: Option<Fingerprint>,
    pub after: Option<Fingerprint>,
}

impl Snapshot {
    /// Resolves every secret input of `config`. `base` is the config file's directory.
    pub fn resolve(config: &Config, env: &Env, base: &Path) -> Result<Snapshot, SnapshotError> {
        Snapshot::resolve_inputs(config.secret_inputs(), env, base)
    }

    /// Resolves the given named inputs (the supervisor uses this for its `--env` secrets).
    pub fn resolve_inputs<'a>(
        inputs: impl IntoIterator<Item = (SecretName, &'a SecretInput)>,
        env: &Env,
        base: &Path,
    ) -> Result<Snapshot, SnapshotError> {
        let mut secrets = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, input) in inputs {
            match input.resolve(env, base) {
                Ok(value) => {
                    secrets.insert(
                        name,
                        ResolvedSecret {
                            value,
                            kind: input.kind(),
                            source: input.describe(),
                            can_change_live: input.can_change_live(),
                        },
                    );
                }
                Err(e) => errors.push((name, e)),
            }
        }
        if errors.is_empty() {
            Ok(Snapshot {
                secrets,
                resolved_at: SystemTime::now(),
            })
        } else {
            Err(SnapshotError { errors })
        }
    }

    /// An empty snapshot (no secrets configured).
    pub fn empty() -> Snapshot {
        Snapshot {
            secrets: BTreeMap::new(),
            resolved_at: SystemTime::now(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.secrets.get(name).map(|s| &s.value)
    }

    pub fn entry(&self, name: &str) -> Option<&ResolvedSecret> {
        self.secrets.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SecretName, &ResolvedSecret)> {
        self.secrets.iter()
    }

    pub fn resolved_at(&self) -> SystemTime {
        self.resolved_at
    }

    /// What differs from `self` to `next`, by fingerprint. Same values from other config bytes
    /// are no change; a changed file behind the same reference is.
    pub fn diff(&self, next: &Snapshot) -> Vec<SecretChange> {
        let mut names: Vec<&SecretName> = self.secrets.keys().chain(next.secrets.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let before = self.get(name);
                let after = next.get(name);
                let same = match (before, after) {
                    (Some(a), Some(b)) => a.same_as(b),
                    (None, None) => true,
                    _ => false,
                };
                (!same).then(|| SecretChange {
                    name: name.clone(),
                    before: before.map(|v| v.fingerprint().clone()),
                    after: after.map(|v| v.fingerprint().clone()),
                })
            })
            .collect()
    }

    fn values(&self) -> impl Iterator<Item = &SecretValue> {
        self.secrets.values().map(|s| &s.value)
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Empty when nothing changed (then nothing was swapped).
    pub changed: Vec<SecretChange>,
    pub generation: u64,
}

/// A secret's value before its last change. The one record of a predecessor: the redactor keeps
/// scrubbing it, and the gateway accepts it as its shared secret while a grace window lasts.
#[derive(Debug, Clone)]
pub struct Previous {
    pub value: SecretValue,
    /// The secret's generation while this value was current.
    pub generation: u64,
}

/// One secret at one moment: its value, its generation (1, +1 per change) and its predecessor,
/// borrowed for as long as [`SnapshotHolder::view`]'s reader runs (nothing is copied: a handshake
/// reads it).
#[derive(Debug, Clone, Copy)]
pub struct SecretView<'a> {
    pub current: Option<&'a SecretValue>,
    pub generation: u64,
    pub previous: Option<&'a Previous>,
}

/// Generations and predecessors, changed together under one lock.
#[derive(Default)]
struct History {
    /// Installed snapshots that changed something, starting at 1.
    overall: u64,
    /// Per secret that ever changed: its generation (absent = 1).
    generations: BTreeMap<SecretName, u64>,
    /// Per secret that ever changed: its value before the last change.
    previous: BTreeMap<SecretName, Previous>,
}

/// Holds the live snapshot (and each secret's predecessor) and swaps it atomically.
pub struct SnapshotHolder {
    current: ArcSwap<Snapshot>,
    // Serializes installs so two racing reloads cannot interleave their diff and swap, and gives
    // readers of [`SnapshotHolder::view`] a consistent value, generation and predecessor.
    history: Mutex<History>,
}

impl SnapshotHolder {
    pub fn new(initial: Snapshot) -> SnapshotHolder {
        let holder = SnapshotHolder {
            current: ArcSwap::from_pointee(initial),
            history: Mutex::new(History {
                overall: 1,
                ..History::default()
            }),
        };
        holder.register_with_redactor(&holder.lock());
        holder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live snapshot. Cheap; callers keep the `Arc` only as long as one check takes.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The value `name` had before its last change, if it changed.
    pub fn previous(&self, name: &str) -> Option<Previous> {
        self.lock().previous.get(name).cloned()
    }

    /// Runs `read` on `name`'s current value, generation and predecessor, read together (an
    /// install waits until `read` returns, so keep it short).
    pub fn view<R>(&self, name: &str, read: impl FnOnce(SecretView<'_>) -> R) -> R {
        let history = self.lock();
        let current = self.current.load();
        read(SecretView {
            current: current.get(name),
            generation: history.generations.get(name).copied().unwrap_or(1),
            previous: history.previous.get(name),
        })
    }

    /// The number of installed snapshots that changed something (starts at 1).
    pub fn generation(&self) -> u64 {
        self.lock().overall
    }

    /// Publishes `next` if it differs from the live snapshot by fingerprint. Each changed secret
    /// gets a new generation and keeps its old value as its predecessor.
    pub fn install(&self, next: Snapshot) -> ReloadReport {
        let mut history = self.lock();
        let current = self.current.load_full();
        let changed = current.diff(&next);
        if !changed.is_empty() {
            history.overall += 1;
            for c in &changed {
                let generation = history.generations.get(&c.name).copied().unwrap_or(1);
                history.generations.insert(c.name.clone(), generation + 1);
                match current.get(&c.name) {
                    Some(old) => {
                        let old = Previous {
                            value: old.clone(),
                            generation,
                        };
                        history.previous.insert(c.name.clone(), old);
                    }
                    None => {
                        history.previous.remove(&c.name);
                    }
                }
            }
            self.current.store(Arc::new(next));
            self.register_with_redactor(&history);
        }
        ReloadReport {
            changed,
            generation: history.overall,
        }
    }

    /// Resolves `config` and installs the result; on any error the live snapshot stays.
    pub fn reload(
        &self,
        config: &Config,
        env: &Env,
        base: &Path,
    ) -> Result<ReloadReport, SnapshotError> {
        let next = Snapshot::resolve(config, env, base)?;
        Ok(self.install(next))
    }

    fn register_with_redactor(&self, history: &History) {
        let mut values: Vec<SecretValue> = self.current.load().values().cloned().collect();
        values.extend(history.previous.values().map(|p| p.value.clone()));
        redact::set_snapshot_values(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_config(path: &Path) -> Config {
        Config::parse(
            &format!(
                "[gateway.auth]\ntoken = {{ source = \"file\", path = {:?} }}\n",
                path.to_str().unwrap()
            ),
            Path::new("/cfg.toml"),
        )
        .unwrap()
    }

    fn write_secret(path: &Path, v: &str) {
        std::fs::write(path, v).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn failed_reload_keeps_the_old_snapshot_and_reports_all_errors() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        write_secret(&tok, "first-token\n");
        let cfg = file_config(&tok);
        let env = Env::default();
        let holder = SnapshotHolder::new(Snapshot::resolve(&cfg, &env, dir.path()).unwrap());
        let fp = holder
            .load()
            .get("gateway.auth.token")
            .unwrap()
            .fingerprint()
            .clone();

        std::fs::remove_file(&tok).unwrap();
        let mut cfg2 = cfg.clone();
        cfg2.gateway.remote.token = Some(SecretInput::Ref(crate::SecretRef::Env {
            id: "UNSET_X".into(),
        }));
        let err = holder.reload(&cfg2, &env, dir.path()).unwrap_err();
        assert_eq!(err.errors.len(), 2, "{err}");
        assert!(matches!(err.errors[0].1, ResolveError::FileMissing(_)));
        assert!(matches!(err.errors[1].1, ResolveError::EnvUnset(_)));
        assert_eq!(
            holder
                .load()
                .get("gateway.auth.token")
                .unwrap()
                .fingerprint(),
            &fp
        );
        assert!(holder.load().get("gateway.remote.token").is_none());
        assert_eq!(holder.generation(), 1);
    }

    #[test]
    fn change_detection_by_fingerprint_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        write_secret(&tok, "value-one");
        let cfg = file_config(&tok);
        let env = Env::default();
        let holder = SnapshotHolder::new(Snapshot::resolve(&cfg, &env, dir.path()).unwrap());

        // Same value behind a differently spelled config (bytes differ): not a change.
        let cfg_respelled = Config::parse(
            &format!(
                "# a comment\n[gateway]\nport = 18789\n[gateway.auth]\ntoken = {{ path = {:?}, source = \"file\" }}\n",
                tok.to_str().unwrap()
            ),
            Path::new("/cfg.toml"),
        )
        .unwrap();
        let r = holder.reload(&cfg_respelled, &env, dir.path()).unwrap();
        assert!(r.changed.is_empty());
        assert_eq!(r.generation, 1);
        // Touching the file without changing it: not a change.
        write_secret(&tok, "value-one\n");
        assert!(
            holder
                .reload(&cfg, &env, dir.path())
                .unwrap()
                .changed
                .is_empty()
        );

        // Referenced file changes while config stays the same: a change.
        write_secret(&tok, "value-two");
        let r = holder.reload(&cfg, &env, dir.path()).unwrap();
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changed[0].name, "gateway.auth.token");
        assert_eq!(
            r.changed[0].before.as_ref(),
            Some(SecretValue::new("value-one".into()).fingerprint())
        );
        assert_eq!(
            r.changed[0].after.as_ref(),
            Some(SecretValue::new("value-two".into()).fingerprint())
        );
        assert_eq!(r.generation, 2);
        assert!(
            holder
                .previous("gateway.auth.token")
                .unwrap()
                .value
                .matches("value-one")
        );
    }
}
