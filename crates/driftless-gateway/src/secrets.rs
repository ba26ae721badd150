//! The gateway's live secrets: the snapshot, the shared-secret check against the current and (during
//! the grace window) the immediate predecessor, and reloads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use driftless_core::config::AuthMode;
use driftless_core::snapshot::SecretChange;
use driftless_core::{
    Config, Env, Fingerprint, SecretInput, SecretValue, Snapshot, SnapshotHolder, precedence,
};
use tokio::sync::watch;

use driftless_protocol::payloads::ReloadStatus;

use crate::devices::{FleetSecret, FleetView, Published, SharedVerifier};
use crate::metrics::{Metrics, OutcomeLabels, SecretLabels};

/// What every connection watches: when `min_secret_generation` rises above the generation a
/// session authenticated with, that session is closed 4001; `shutdown` closes everyone 1012.
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    pub min_secret_generation: u64,
    pub shutdown: bool,
}

/// The grace window of the shared secret's predecessor (the value itself is the snapshot
/// holder's [`driftless_core::Previous`]): accepted while it has this generation and until then.
#[derive(Debug, Clone, Copy)]
struct Grace {
    generation: u64,
    until_ms: u64,
}

/// What one reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadResult {
    pub changed: Vec<SecretChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Resolve(#[from] driftless_core::snapshot::SnapshotError),
}

pub struct Secrets {
    pub mode: AuthMode,
    config_path: PathBuf,
    env: Env,
    /// `--token`/`--password` given to `gateway run` (highest in the server precedence table).
    explicit: Option<SecretInput>,
    grace_period: Duration,
    holder: SnapshotHolder,
    /// Held across an install and across a check, so a check never sees a new secret without
    /// the grace of the old one.
    grace: Mutex<Option<Grace>>,
    // Serializes whole reloads (resolution can run a command) without blocking auth checks.
    reload_lock: Mutex<()>,
    /// The file the shared secret is read from, if it is a file reference.
    shared_file: Mutex<Option<PathBuf>>,
    last_reload: Mutex<Option<ReloadStatus>>,
    /// The config as the gateway started with it: what start-only settings are compared against.
    started: Config,
    /// Start-only settings changed since start, as of the last reload that parsed the config.
    restart_required_for: Mutex<Vec<String>>,
    pub control: watch::Sender<Control>,
    /// With a store several replicas share: the fleet's shared secrets, which replace the local
    /// current/previous pair for every check (set once at start, with the first view).
    fleet: OnceLock<Fleet>,
}

/// The fleet's shared secrets as this replica serves them: an in-memory view swapped on every
/// refresh, so a check costs one HMAC and no database call or lock.
struct Fleet {
    verifier: SharedVerifier,
    view: ArcSwap<Served>,
    /// This replica's secret changed (or a publish failed) and the fleet has not heard of it yet.
    publish_pending: AtomicBool,
    /// The local secret last reported as superseded (warned once per value).
    superseded: Mutex<Option<Fingerprint>>,
    /// Serializes installs (the listener and a publish can both bring a view): the compare with
    /// the served view and the swap must be one step, or an older view could replace a newer.
    install: Mutex<()>,
}

/// A [`FleetView`] with the predecessor's grace as a deadline on this replica's monotonic clock.
struct Served {
    newest: FleetSecret,
    previous: Option<(FleetSecret, Instant)>,
}

/// The expanded path of the gateway's shared secret when it is a file reference.
fn shared_file(
    config: &Config,
    env: &Env,
    explicit: Option<&SecretInput>,
    base: &std::path::Path,
) -> Option<PathBuf> {
    let (input, _) = precedence::server_secret(config, env, explicit)?;
    input.file_path(env, base)?.ok()
}

/// The predecessor while its grace lasts: the one the window was opened for, before its end.
fn in_grace(
    previous: Option<&driftless_core::Previous>,
    grace: Option<Grace>,
) -> Option<&driftless_core::Previous> {
    previous
        .filter(|p| grace.is_some_and(|g| g.generation == p.generation && g.until_ms > now_ms()))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a shared-secret check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Matched the secret of this generation.
    Ok(u64),
    Mismatch,
}

impl From<FleetView> for Served {
    fn from(view: FleetView) -> Served {
        let now = Instant::now();
        Served {
            newest: view.newest,
            previous: view
                .previous
                .map(|(p, left_ms)| (p, now + Duration::from_millis(left_ms))),
        }
    }
}

impl Served {
    /// The lowest generation still accepted, and the predecessor's grace (id, time left).
    fn generations(&self) -> (u64, Option<(u64, Duration)>) {
        match &self.previous {
            Some((p, until)) => (
                p.id,
                Some((p.id, until.saturating_duration_since(Instant::now()))),
            ),
            None => (self.newest.id, None),
        }
    }
}

impl Secrets {
    /// Resolves every secret of `config` (with the server precedence applied) or fails.
    pub fn load(
        config: &Config,
        config_path: PathBuf,
        env: Env,
        explicit: Option<SecretInput>,
    ) -> Result<Secrets, driftless_core::snapshot::SnapshotError> {
        let base = config_path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_owned();
        let effective = precedence::with_effective_server_secret(config, &env, explicit.as_ref());
        let snapshot = Snapshot::resolve(&effective, &env, &base)?;
        let shared_file = shared_file(config, &env, explicit.as_ref(), &base);
        // The file as it was at start, not `config`, which may carry `--port`: a flag is not a
        // change a restart would apply.
        let started = Config::load(&config_path)
            .map(|l| l.config)
            .unwrap_or_else(|_| config.clone());
        Ok(Secrets {
            mode: config.gateway.auth.mode,
            config_path,
            grace_period: Duration::from_secs(config.gateway.auth.rotation_grace_seconds),
            holder: SnapshotHolder::new(snapshot),
            grace: Mutex::new(None),
            reload_lock: Mutex::new(()),
            shared_file: Mutex::new(shared_file),
            last_reload: Mutex::new(None),
            started,
            restart_required_for: Mutex::new(Vec::new()),
            control: watch::Sender::new(Control {
                min_secret_generation: 1,
                shutdown: false,
            }),
            env,
            explicit,
            fleet: OnceLock::new(),
        })
    }

    fn secret_name(&self) -> Option<&'static str> {
        precedence::server_secret_name(self.mode)
    }

    /// The current shared secret, if the mode has one.
    pub fn current(&self) -> Option<SecretValue> {
        self.holder.load().get(self.secret_name()?).cloned()
    }

    /// The name of the shared secret whose source is behind the fleet (this replica published a
    /// secret the fleet had already replaced, and its source still holds it), if any.
    pub fn behind_fleet(&self) -> Option<&'static str> {
        let fleet = self.fleet.get()?;
        let name = self.secret_name()?;
        let local = self.holder.load().get(name)?.fingerprint().clone();
        let superseded = fleet.superseded.lock().unwrap_or_else(|e| e.into_inner());
        (superseded.as_ref() == Some(&local)).then_some(name)
    }

    pub fn snapshot(&self) -> std::sync::Arc<Snapshot> {
        self.holder.load()
    }

    /// Compares `candidate` with the current and, in grace, the previous secret. Both comparisons
    /// always run (constant time, no early exit). In a fleet, these are the fleet's (its newest
    /// and the one before while the fleet's grace lasts) and the generation is the fleet's id.
    pub fn check(&self, candidate: &str) -> Check {
        let Some(name) = self.secret_name() else {
            return Check::Mismatch;
        };
        if let Some(fleet) = self.fleet.get() {
            let view = fleet.view.load();
            let presented = fleet.verifier.of(candidate);
            let cur_ok: bool = view.newest.verifier.ct_eq(&presented).into();
            let prev_ok = view.previous.as_ref().is_some_and(|(p, until)| {
                bool::from(p.verifier.ct_eq(&presented)) & (Instant::now() < *until)
            });
            return match (cur_ok, &view.previous) {
                (true, _) => Check::Ok(view.newest.id),
                (false, Some((p, _))) if prev_ok => Check::Ok(p.id),
                _ => Check::Mismatch,
            };
        }
        // Held while the view is read, so a rotation's new value and its grace are seen together.
        let grace = self.grace.lock().unwrap_or_else(|e| e.into_inner());
        self.holder.view(name, |view| {
            let previous = in_grace(view.previous, *grace);
            let cur_ok = view.current.is_some_and(|c| c.matches(candidate));
            let prev_ok = previous.is_some_and(|p| p.value.matches(candidate));
            match (cur_ok, prev_ok, previous) {
                (true, _, _) => Check::Ok(view.generation),
                (false, true, Some(p)) => Check::Ok(p.generation),
                _ => Check::Mismatch,
            }
        })
    }

    /// The fingerprint of the shared secret accepted as current: the fleet's newest in a fleet
    /// (this replica's source may be behind it), else the local one.
    pub fn accepted_fingerprint(&self) -> Option<String> {
        match self.fleet.get() {
            Some(fleet) => Some(fleet.view.load().newest.fingerprint.clone()),
            None => self.current().map(|s| s.fingerprint().to_string()),
        }
    }

    /// The fingerprints of the shared secrets accepted now, the current one first.
    pub fn accepted_fingerprints(&self) -> Vec<String> {
        self.accepted_fingerprint()
            .into_iter()
            .chain(self.grace().map(|(fp, _)| fp))
            .collect()
    }

    /// Fingerprint of the previous secret and the end of its grace, while it lasts.
    pub fn grace(&self) -> Option<(String, u64)> {
        if let Some(fleet) = self.fleet.get() {
            let view = fleet.view.load();
            let (p, until) = view.previous.as_ref()?;
            let left = until.checked_duration_since(Instant::now())?;
            return Some((p.fingerprint.clone(), now_ms() + left.as_millis() as u64));
        }
        let name = self.secret_name()?;
        let grace = *self.grace.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.holder.previous(name);
        in_grace(previous.as_ref(), grace).map(|p| {
            (
                p.value.fingerprint().to_string(),
                grace.map_or(0, |g| g.until_ms),
            )
        })
    }

    /// Serves the fleet's shared secrets from now on, starting with `view` (the answer to this
    /// replica's publish at start). Returns the grace to end, as [`Secrets::install_fleet`].
    pub fn use_fleet(&self, verifier: SharedVerifier, view: FleetView) -> Option<(u64, Duration)> {
        let served = Served::from(view);
        let (min, grace) = served.generations();
        let _ = self.fleet.set(Fleet {
            verifier,
            view: ArcSwap::from_pointee(served),
            publish_pending: AtomicBool::new(false),
            superseded: Mutex::new(None),
            install: Mutex::new(()),
        });
        self.raise_min_generation(min);
        grace
    }

    /// `gateway.auth.rotation_grace_seconds` as it was at start.
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }

    /// Whether the fleet's shared secrets are served (a store several replicas share).
    pub fn in_fleet(&self) -> bool {
        self.fleet.get().is_some()
    }

    /// Swaps in a newer view of the fleet's shared secrets and closes sessions on any secret it
    /// no longer accepts. A view older than the one served (a publish's answer and the listener's
    /// read can arrive in either order) is ignored. Returns the predecessor's id and the time
    /// left of its grace, for a timer that ends it here, when this view opened that grace.
    pub fn install_fleet(&self, view: FleetView) -> Option<(u64, Duration)> {
        let fleet = self.fleet.get()?;
        let _one_at_a_time = fleet.install.lock().unwrap_or_else(|e| e.into_inner());
        let next = Served::from(view);
        let current = fleet.view.load();
        let same = current.newest.id == next.newest.id;
        // For one newest, a grace only ever ends: a stale read must not reopen it.
        if current.newest.id > next.newest.id
            || (same && current.previous.is_none() && next.previous.is_some())
        {
            return None;
        }
        let new_grace = next.previous.as_ref().map(|(p, _)| p.id)
            != current.previous.as_ref().map(|(p, _)| p.id);
        let (min, grace) = next.generations();
        if !same {
            tracing::info!(
                fingerprint = %next.newest.fingerprint,
                previous = next.previous.as_ref().map_or("-", |(p, _)| p.fingerprint.as_str()),
                "the fleet's shared secret changed"
            );
        }
        fleet.view.store(std::sync::Arc::new(next));
        self.raise_min_generation(min);
        grace.filter(|_| new_grace || !same)
    }

    /// The fleet's grace of the secret with id `previous` ended: its sessions are closed 4001.
    pub fn end_fleet_grace(&self, previous: u64) {
        self.raise_min_generation(previous + 1);
    }

    /// Whether this replica's shared secret still has to be published to the fleet.
    pub fn publish_pending(&self) -> bool {
        self.fleet
            .get()
            .is_some_and(|f| f.publish_pending.load(Ordering::Acquire))
    }

    /// Records the outcome of a publish of this replica's secret (`None`: it failed, and is
    /// retried on the next reload and listener reconnect). A superseded source is warned about
    /// once per value.
    pub fn published(&self, outcome: Option<Published>) {
        let Some(fleet) = self.fleet.get() else {
            return;
        };
        fleet
            .publish_pending
            .store(outcome.is_none(), Ordering::Release);
        if outcome != Some(Published::Superseded) {
            return;
        }
        let Some(local) = self.current() else {
            return;
        };
        let mut warned = fleet.superseded.lock().unwrap_or_else(|e| e.into_inner());
        if warned.as_ref() != Some(local.fingerprint()) {
            tracing::warn!(
                source = %local.fingerprint(),
                fleet = %fleet.view.load().newest.fingerprint,
                "this replica's shared-secret source is behind the fleet (the fleet already \
                 replaced it); the fleet's secrets are the ones accepted, and it is not reinstated"
            );
            *warned = Some(local.fingerprint().clone());
        }
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets initial per-secret metrics.
    pub fn init_metrics(&self, metrics: &Metrics) {
        for (name, _) in self.holder.load().iter() {
            metrics
                .secret_generation
                .get_or_create(&SecretLabels {
                    secret: name.clone(),
                })
                .set(1);
            metrics
                .secret_last_rotation
                .get_or_create(&SecretLabels {
                    secret: name.clone(),
                })
                .set(0);
        }
    }

    /// Whether the shared secret is read from a file (a mismatch may mean the file just changed).
    pub fn has_shared_file(&self) -> bool {
        self.shared_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Whether the shared secret's file now holds a value other than the live one: a client can
    /// read a rotated file before the debounced watcher has reloaded it. One small file read.
    pub fn source_changed(&self) -> bool {
        let path = self
            .shared_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(path) = path else {
            return false;
        };
        match (driftless_core::source::resolve_file(&path), self.current()) {
            (Ok(on_disk), Some(live)) => !on_disk.same_as(&live),
            _ => false,
        }
    }

    /// Re-reads the config and every secret. Same fingerprints: nothing happens. A failure keeps
    /// the live snapshot. Returns the grace end (ms) to schedule when the shared secret changed.
    pub fn reload(
        &self,
        trigger: &'static str,
        metrics: &Metrics,
    ) -> Result<(ReloadResult, Option<(u64, u64)>), ReloadError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.reload_inner();
        let (outcome, error) = match &result {
            Ok((r, _)) if r.changed.is_empty() => ("unchanged", None),
            Ok(_) => ("changed", None),
            Err(e) => (
                "failed",
                Some(driftless_core::redact::redact(&e.to_string()).into_owned()),
            ),
        };
        metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        match &result {
            Ok((r, _)) => {
                for c in &r.changed {
                    let l = SecretLabels {
                        secret: c.name.clone(),
                    };
                    metrics.secret_generation.get_or_create(&l).inc();
                    metrics
                        .secret_last_rotation
                        .get_or_create(&l)
                        .set((now_ms() / 1000) as i64);
                    tracing::info!(
                        secret = %c.name,
                        before = c.before.as_ref().map(|f| f.as_str()).unwrap_or("-"),
                        after = c.after.as_ref().map(|f| f.as_str()).unwrap_or("-"),
                        trigger,
                        "secret rotated"
                    );
                }
            }
            Err(_) => tracing::warn!(
                trigger,
                error = error.as_deref().unwrap_or(""),
                "secret reload failed; keeping the previous secrets"
            ),
        }
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadStatus {
            at_ms: now_ms(),
            trigger: trigger.into(),
            outcome: outcome.into(),
            error,
            restart_required_for: self
                .restart_required_for
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        });
        result
    }

    fn reload_inner(&self) -> Result<(ReloadResult, Option<(u64, u64)>), ReloadError> {
        let loaded = Config::load(&self.config_path).map_err(|e| ReloadError::Config {
            path: self.config_path.clone(),
            message: e.to_string(),
        })?;
        self.note_start_only_changes(&loaded.config);
        let effective = precedence::with_effective_server_secret(
            &loaded.config,
            &self.env,
            self.explicit.as_ref(),
        );
        let next = Snapshot::resolve(&effective, &self.env, loaded.base_dir())?;
        *self.shared_file.lock().unwrap_or_else(|e| e.into_inner()) = shared_file(
            &loaded.config,
            &self.env,
            self.explicit.as_ref(),
            loaded.base_dir(),
        );
        let mut st = self.grace.lock().unwrap_or_else(|e| e.into_inner());
        let report = self.holder.install(next);
        let mut grace = None;
        let shared_changed = self
            .secret_name()
            .is_some_and(|name| report.changed.iter().any(|c| c.name == name));
        if let Some(fleet) = self.fleet.get() {
            // The fleet opens the grace, for every replica, when this secret is published.
            if shared_changed {
                fleet.publish_pending.store(true, Ordering::Release);
            }
        } else if let Some(name) = self.secret_name()
            && shared_changed
        {
            let (generation, previous) = self.holder.view(name, |view| {
                (view.generation, view.previous.map(|p| p.generation))
            });
            match previous {
                Some(previous) if !self.grace_period.is_zero() => {
                    let until_ms = now_ms() + self.grace_period.as_millis() as u64;
                    *st = Some(Grace {
                        generation: previous,
                        until_ms,
                    });
                    // Only the immediate predecessor survives: anything older goes now.
                    self.raise_min_generation(previous);
                    grace = Some((previous, until_ms));
                }
                _ => {
                    *st = None;
                    self.raise_min_generation(generation);
                }
            }
        }
        Ok((
            ReloadResult {
                changed: report.changed,
            },
            grace,
        ))
    }

    /// Warns (once per distinct set) when the config now differs from the one the gateway started
    /// with in settings only a restart applies: without it such an edit would be silently ignored.
    fn note_start_only_changes(&self, config: &Config) {
        let changed = self.started.start_only_changes(config);
        let mut pending = self
            .restart_required_for
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *pending != changed {
            if !changed.is_empty() {
                tracing::warn!(
                    settings = %changed.join(", "),
                    "the config changed in settings that apply only after a restart \
                     (`driftless daemon restart`); secrets and their references apply live"
                );
            }
            *pending = changed;
        }
    }

    /// Ends the grace of `generation` (if it is still the predecessor), or of any predecessor
    /// when `None`. Sessions on the ended secret are then closed 4001.
    pub fn end_grace(&self, generation: Option<u64>) {
        let Some(name) = self.secret_name() else {
            return;
        };
        let mut st = self.grace.lock().unwrap_or_else(|e| e.into_inner());
        let matches = st.is_some_and(|g| generation.is_none_or(|x| x == g.generation));
        if matches {
            *st = None;
            if let Some(p) = self.holder.previous(name) {
                tracing::info!(
                    previous = %p.value.fingerprint(),
                    "rotation grace ended; closing sessions on the previous secret"
                );
            }
        }
        if matches || generation.is_none() {
            self.raise_min_generation(self.holder.view(name, |view| view.generation));
        }
    }

    fn raise_min_generation(&self, generation: u64) {
        self.control.send_modify(|c| {
            c.min_secret_generation = c.min_secret_generation.max(generation);
        });
    }

    /// Directories to watch: the config's and every file-referenced secret's (watching the
    /// directory sees atomic renames and the Kubernetes `..data` symlink swap).
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = self.config_path.parent() {
            dirs.push(d.to_owned());
        }
        if let Ok(loaded) = Config::load(&self.config_path) {
            let effective = precedence::with_effective_server_secret(
                &loaded.config,
                &self.env,
                self.explicit.as_ref(),
            );
            for (_, input) in effective.secret_inputs() {
                if let Some(Ok(path)) = input.file_path(&self.env, loaded.base_dir())
                    && let Some(d) = path.parent()
                {
                    dirs.push(d.to_owned());
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &std::path::Path, v: &str) {
        std::fs::write(path, v).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Secrets of a config in `dir` whose token is the file `dir/tok`, holding `token`.
    fn from_token_file(dir: &std::path::Path, token: &str) -> (Secrets, std::path::PathBuf) {
        let tok = dir.join("tok");
        let cfg_path = dir.join("config.toml");
        write(&tok, token);
        write(
            &cfg_path,
            &format!(
                "[gateway.auth]\ntoken = {{ source = \"file\", path = {:?} }}\n",
                tok.to_str().unwrap()
            ),
        );
        let cfg = Config::load(&cfg_path).unwrap().config;
        let s = Secrets::load(&cfg, cfg_path, Env::default(), None).unwrap();
        (s, tok)
    }

    #[test]
    fn generations_grace_and_only_the_immediate_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        let (s, tok) = from_token_file(dir.path(), "token-one");
        let m = Metrics::new(AuthMode::Token);
        assert_eq!(s.check("token-one"), Check::Ok(1));
        assert_eq!(s.check("token-x"), Check::Mismatch);

        write(&tok, "token-one\n");
        let (r, grace) = s.reload("test", &m).unwrap();
        assert!(r.changed.is_empty() && grace.is_none());

        write(&tok, "token-two");
        let (r, grace) = s.reload("test", &m).unwrap();
        assert_eq!(r.changed.len(), 1);
        assert_eq!(grace.map(|g| g.0), Some(1));
        assert_eq!(s.check("token-two"), Check::Ok(2));
        assert_eq!(s.check("token-one"), Check::Ok(1));
        assert_eq!(s.control.borrow().min_secret_generation, 1);

        write(&tok, "token-three");
        s.reload("test", &m).unwrap();
        assert_eq!(s.check("token-one"), Check::Mismatch);
        assert_eq!(s.check("token-two"), Check::Ok(2));
        assert_eq!(s.control.borrow().min_secret_generation, 2);

        // A stale grace timer for generation 1 changes nothing; ending grace now does.
        s.end_grace(Some(1));
        assert_eq!(s.check("token-two"), Check::Ok(2));
        s.end_grace(None);
        assert_eq!(s.check("token-two"), Check::Mismatch);
        assert_eq!(s.control.borrow().min_secret_generation, 3);

        // A failed reload keeps the current secret.
        std::fs::remove_file(&tok).unwrap();
        assert!(s.reload("test", &m).is_err());
        assert_eq!(s.check("token-three"), Check::Ok(3));
        assert_eq!(s.last_reload().unwrap().outcome, "failed");
    }

    /// In a fleet: the fleet's newest and in-grace previous are accepted with their ids as
    /// generations, whatever the local source holds; a stale view (older newest, or a grace
    /// reopened for the same newest) is ignored; a view that ends a grace raises the minimum
    /// generation; a local change only marks a publish as pending.
    #[test]
    fn a_fleet_view_replaces_the_local_secrets() {
        use crate::devices::{FleetSecret, FleetView, TokenKey};
        let dir = tempfile::tempdir().unwrap();
        let (s, tok) = from_token_file(dir.path(), "local-one");
        let verifier = TokenKey::parse("b7Kx3mQ9vR2tY8wE5nA1cF6hJ4pL0sD7gU3iO9zXk2M")
            .unwrap()
            .shared_verifier();
        let secret = |id: u64, value: &str| FleetSecret {
            id,
            verifier: verifier.of(value),
            fingerprint: format!("fp-{value}"),
        };
        let view = |newest: FleetSecret, previous: Option<(FleetSecret, u64)>| FleetView {
            newest,
            previous,
        };
        let grace = s.use_fleet(
            verifier.clone(),
            view(secret(7, "fleet-b"), Some((secret(5, "fleet-a"), 60_000))),
        );
        assert_eq!(grace.map(|g| g.0), Some(5));
        assert_eq!(s.check("fleet-b"), Check::Ok(7));
        assert_eq!(s.check("fleet-a"), Check::Ok(5));
        assert_eq!(s.check("local-one"), Check::Mismatch);
        assert_eq!(s.control.borrow().min_secret_generation, 5);
        assert_eq!(s.accepted_fingerprints(), ["fp-fleet-b", "fp-fleet-a"]);

        // The grace ends for the fleet (same newest, no previous): the old sessions close.
        assert_eq!(s.install_fleet(view(secret(7, "fleet-b"), None)), None);
        assert_eq!(s.check("fleet-a"), Check::Mismatch);
        assert_eq!(s.control.borrow().min_secret_generation, 7);
        // A stale read that still had the grace, or an older newest, changes nothing.
        let stale = view(secret(7, "fleet-b"), Some((secret(5, "fleet-a"), 60_000)));
        assert_eq!(s.install_fleet(stale), None);
        assert_eq!(s.install_fleet(view(secret(5, "fleet-a"), None)), None);
        assert_eq!(s.check("fleet-a"), Check::Mismatch);
        assert_eq!(s.check("fleet-b"), Check::Ok(7));
        // A newer secret opens the grace of the one before.
        let next = view(secret(9, "fleet-c"), Some((secret(7, "fleet-b"), 4_000)));
        assert_eq!(s.install_fleet(next).map(|g| g.0), Some(7));
        assert_eq!(s.check("fleet-c"), Check::Ok(9));
        assert_eq!(s.check("fleet-b"), Check::Ok(7));
        s.end_fleet_grace(7);
        assert_eq!(s.control.borrow().min_secret_generation, 8);

        // A local change is not accepted on its own: it waits to be published.
        assert!(!s.publish_pending());
        write(&tok, "local-two");
        let (r, local_grace) = s.reload("test", &Metrics::new(AuthMode::Token)).unwrap();
        assert_eq!((r.changed.len(), local_grace), (1, None));
        assert!(s.publish_pending());
        assert_eq!(s.check("local-two"), Check::Mismatch);
        s.published(Some(crate::devices::Published::Newest));
        assert!(!s.publish_pending());
    }
}
