//! `driftless doctor`: finds every copy of a secret that can drift and repairs it idempotently.
//!
//! The audit never changes anything. [`Doctor::fix`] repairs in the order that cannot lose a value
//! (shared design `credentials.md`, "Drift findings"): a token embedded in a unit is first
//! persisted to its source and referenced from config, only then is the unit rewritten, and only
//! then is the manager reloaded and the service restarted. Every change is preceded by a 0600
//! backup beside the file, and each repair checks the current state first, so a second `--fix`
//! changes nothing. A config that does not parse stops everything: nothing is changed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use driftless_core::config::LoadedConfig;
use driftless_core::{Config, ConfigError, Env, SecretInput, atomic, precedence};

use crate::migrate::{self, MigrateError, Target};
use crate::scan::{self, Embedded, Live};
use crate::service::{Manager, Scope, ServiceError, ServiceSpec};
use crate::{backup, openclaw, stored_tokens};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Finding,
    Skipped,
}

/// One line of the doctor table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub check: &'static str,
    pub status: Status,
    pub finding: String,
    pub fix: String,
}

impl Row {
    pub fn ok(check: &'static str, finding: impl Into<String>) -> Row {
        Row {
            check,
            status: Status::Ok,
            finding: finding.into(),
            fix: String::new(),
        }
    }
    pub fn finding(check: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Row {
        Row {
            check,
            status: Status::Finding,
            finding: finding.into(),
            fix: fix.into(),
        }
    }
    pub fn skipped(check: &'static str, why: impl Into<String>) -> Row {
        Row {
            check,
            status: Status::Skipped,
            finding: why.into(),
            fix: String::new(),
        }
    }
}

/// One change `--fix` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    pub did: String,
    pub path: Option<PathBuf>,
    /// The backup written before the change.
    pub backup: Option<PathBuf>,
}

/// What `--fix` did. Changes made before a failure are kept and listed.
#[derive(Debug)]
pub struct FixOutcome {
    pub actions: Vec<Action>,
    pub error: Option<DoctorError>,
}

/// The result of an audit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    pub rows: Vec<Row>,
    /// True when the config does not parse: nothing else was checked.
    pub stopped: bool,
}

impl Audit {
    pub fn findings(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == Status::Finding)
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    OpenClaw(#[from] openclaw::OpenClawError),
    #[error(transparent)]
    TokenStore(#[from] driftless_client::store::StoreError),
    #[error("cannot chmod {path}: {source}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What doctor looks at.
pub struct Doctor {
    pub env: Env,
    /// The driftless config (absolute).
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    /// The `driftless` binary a unit should run (normally the running one).
    pub binary: PathBuf,
    pub scope: Scope,
    /// Repair the OpenClaw installation too (it is always audited when present).
    pub openclaw: bool,
}

/// A service definition on disk and what doctor makes of it.
struct Definition {
    manager: Manager,
    path: PathBuf,
    current: Vec<u8>,
    wanted: Vec<u8>,
    /// Only the platform's own manager is checked for drift (a plist on Linux is only scanned).
    platform: bool,
    embedded: Vec<Embedded>,
    /// Why the definition could not be parsed; such a file is reported and never rewritten.
    unreadable: Option<String>,
}

impl Definition {
    fn drifted(&self) -> bool {
        self.platform && self.current != self.wanted
    }
    /// Secrets doctor cannot drop because it cannot keep them anywhere.
    fn blockers(&self) -> Vec<&Embedded> {
        self.embedded
            .iter()
            .filter(|e| e.copy_of.is_none() && gateway_field(&e.name).is_none())
            .collect()
    }
}

/// The config field an embedded gateway credential belongs to.
fn gateway_field(name: &str) -> Option<&'static str> {
    match name {
        precedence::GATEWAY_TOKEN_ENV | "--token" => Some("gateway.auth.token"),
        precedence::GATEWAY_PASSWORD_ENV | "--password" => Some("gateway.auth.password"),
        _ => None,
    }
}

fn config_field_set(config: &Config, field: &str) -> bool {
    config.secret_inputs().iter().any(|(n, _)| n == field)
}

/// The mode of `path` when it is ours and group or others can access it (shared with the
/// OpenClaw audit).
pub(crate) fn too_open(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    (ours && mode & 0o077 != 0).then_some(mode)
}

pub(crate) fn chmod_600(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

struct State {
    loaded: LoadedConfig,
    definitions: Vec<Definition>,
}

impl Doctor {
    fn platform_manager(&self) -> Manager {
        Manager::for_platform(self.scope.clone())
    }

    /// Every live secret of the driftless config (and the env token), by name.
    fn live(&self, config: &Config, base: &Path) -> Live {
        let effective = precedence::with_effective_server_secret(config, &self.env, None);
        let mut live: Live = effective
            .secret_inputs()
            .into_iter()
            .filter_map(|(n, i)| i.resolve(&self.env, base).ok().map(|v| (n, v)))
            .collect();
        for var in [
            precedence::GATEWAY_TOKEN_ENV,
            precedence::GATEWAY_PASSWORD_ENV,
        ] {
            if let Some(v) = self.env.non_empty(var) {
                live.push((
                    var.to_owned(),
                    driftless_core::SecretValue::new(v.to_owned()),
                ));
            }
        }
        live
    }

    fn spec(&self, current_unit: Option<&str>) -> Result<ServiceSpec, ServiceError> {
        // Keep a credential the user installed with `--load-credential`.
        let credential = current_unit.and_then(crate::service::credential_of);
        ServiceSpec::new(
            self.binary.clone(),
            self.config_path.clone(),
            self.state_dir.clone(),
            self.scope.clone(),
            credential,
        )
    }

    /// Loads the config; `Err` carries the row that stops (or limits) the audit.
    fn gather(&self) -> Result<State, (Row, bool)> {
        let loaded = match Config::load(&self.config_path) {
            Ok(l) => l,
            Err(e @ ConfigError::NotFound(_)) => {
                return Err((
                    Row::finding("config", e.to_string(), "run `driftless init`"),
                    false,
                ));
            }
            Err(e) => {
                return Err((
                    Row::finding(
                        "config",
                        e.to_string(),
                        "fix the file by hand at that line and column; doctor changes nothing until it parses",
                    ),
                    true,
                ));
            }
        };
        let live = self.live(&loaded.config, loaded.base_dir());
        // Defence in depth: every value doctor handles is scrubbed from any output.
        for (_, v) in &live {
            driftless_core::redact::register(v);
        }
        let platform = self.platform_manager();
        let mut managers = vec![platform.clone()];
        if !matches!(platform, Manager::Launchd) {
            managers.push(Manager::Launchd);
        }
        let mut definitions = Vec::new();
        for manager in managers {
            let path = manager.definition_path(&self.env);
            let Ok(current) = std::fs::read(&path) else {
                continue;
            };
            let text = String::from_utf8_lossy(&current).into_owned();
            let (embedded, unreadable) = match manager {
                Manager::Systemd(_) => (scan::scan_systemd(&text, &self.env, &live), None),
                Manager::Launchd => match scan::scan_plist(&current, &live) {
                    Ok(found) => (found, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                },
            };
            for e in &embedded {
                driftless_core::redact::register(&e.value);
            }
            let spec = self.spec(Some(&text)).map_err(|e| {
                let fix = "check the binary, config and state paths doctor was given";
                (Row::finding("unit", e.to_string(), fix), false)
            })?;
            definitions.push(Definition {
                wanted: manager.render(&spec),
                platform: manager == platform,
                manager,
                path,
                current,
                embedded,
                unreadable,
            });
        }
        Ok(State {
            loaded,
            definitions,
        })
    }

    /// Runs every check; changes nothing.
    pub fn audit(&self) -> Audit {
        let mut rows = Vec::new();
        match self.gather() {
            Ok(state) => self.audit_state(&state, &mut rows),
            Err((row, stop)) => {
                rows.push(row);
                if stop {
                    return Audit {
                        rows,
                        stopped: true,
                    };
                }
            }
        }
        rows.extend(stored_tokens::audit(&self.state_dir));
        rows.extend(openclaw::audit(&self.env, self.openclaw));
        Audit {
            rows,
            stopped: false,
        }
    }

    fn audit_state(&self, state: &State, rows: &mut Vec<Row>) {
        let config = &state.loaded.config;
        let cfg_path = &state.loaded.path;
        rows.push(Row::ok("config", format!("{} parses", cfg_path.display())));

        let mut perm_rows = Vec::new();
        if let Some(mode) = too_open(cfg_path) {
            perm_rows.push(Row::finding(
                "permissions",
                format!(
                    "config {} is mode {mode:04o}: group/others can read it",
                    cfg_path.display()
                ),
                format!("chmod 600 {}", cfg_path.display()),
            ));
        }
        for path in self.secret_files(config, state.loaded.base_dir()) {
            if let Some(mode) = too_open(&path) {
                perm_rows.push(Row::finding(
                    "permissions",
                    format!(
                        "secret file {} is mode {mode:04o}: group/others can read it",
                        path.display()
                    ),
                    format!("chmod 600 {}", path.display()),
                ));
            }
        }
        if perm_rows.is_empty() {
            perm_rows.push(Row::ok(
                "permissions",
                "config and secret files are private (0600)",
            ));
        }
        rows.extend(perm_rows);

        let literals: Vec<String> = config
            .secret_inputs()
            .into_iter()
            .filter(|(_, i)| matches!(i, SecretInput::Literal(_)))
            .map(|(n, _)| n)
            .collect();
        if literals.is_empty() {
            rows.push(Row::ok(
                "plaintext-secret",
                "every secret in config is a reference",
            ));
        }
        for name in literals {
            rows.push(Row::finding(
                "plaintext-secret",
                format!("{name} is a literal value in {}", cfg_path.display()),
                format!(
                    "move it to {} (0600) and reference it (`driftless secrets migrate`)",
                    migrate::default_file(&name, &self.state_dir).display()
                ),
            ));
        }

        rows.push(self.env_mismatch_row(config, state.loaded.base_dir()));

        if state.definitions.is_empty() {
            rows.push(Row::skipped(
                "unit-secret",
                "no service installed (`driftless daemon install`)",
            ));
        }
        for def in &state.definitions {
            if let Some(why) = &def.unreadable {
                rows.push(Row::finding(
                    "unit-secret",
                    format!("{} does not parse: {why}", def.path.display()),
                    "fix or remove it by hand; doctor never rewrites a file it cannot read",
                ));
                continue;
            }
            if def.embedded.is_empty() {
                rows.push(Row::ok(
                    "unit-secret",
                    format!("{} holds no secret", def.path.display()),
                ));
            }
            for e in &def.embedded {
                rows.push(Row::finding(
                    "unit-secret",
                    e.describe(&def.path),
                    self.embedded_fix(e, config),
                ));
            }
            if def.platform {
                rows.push(if def.drifted() {
                    Row::finding(
                        "unit-drift",
                        format!(
                            "{} differs from what `driftless daemon install` writes now",
                            def.path.display()
                        ),
                        "rewrite it (backup first), then reload the manager and restart the service",
                    )
                } else {
                    Row::ok(
                        "unit-drift",
                        format!("{} matches what install writes", def.path.display()),
                    )
                });
            }
        }
    }

    fn embedded_fix(&self, e: &Embedded, config: &Config) -> String {
        let envfile = e
            .env_file
            .as_ref()
            .map(|f| {
                format!(
                    " (the unit stops loading {}; delete that file if nothing else uses it)",
                    f.display()
                )
            })
            .unwrap_or_default();
        let base = match (gateway_field(&e.name), &e.copy_of) {
            (Some(field), _) if !config_field_set(config, field) => format!(
                "persist it to {} (0600) and reference it as {field} in config, then rewrite the unit without it and restart",
                migrate::default_file(field, &self.state_dir).display()
            ),
            (Some(field), _) => {
                format!("config's {field} wins: rewrite the unit without this copy and restart")
            }
            (None, Some(live)) => {
                format!("it copies {live}: rewrite the unit without it and restart")
            }
            (None, None) => {
                "move it to its own source (a 0600 file referenced from config), then re-run \
                 `driftless doctor --fix`; doctor will not drop a value it cannot keep"
                    .to_owned()
            }
        };
        base + &envfile
    }

    /// Files that hold secrets: every file reference, the client's device identity and
    /// device-token store, and the gateway's device-token key and device database, when present.
    fn secret_files(&self, config: &Config, base: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = config
            .secret_inputs()
            .into_iter()
            .filter_map(|(_, i)| i.file_path(&self.env, base).and_then(Result::ok))
            .collect();
        let state_files = [
            "identity/device.json",
            "identity/device-tokens.json",
            "devices/token-key",
            "devices/devices.sqlite3",
        ];
        files.extend(
            state_files
                .iter()
                .map(|name| self.state_dir.join(name))
                .filter(|p| p.exists()),
        );
        files
    }

    fn env_mismatch_row(&self, config: &Config, base: &Path) -> Row {
        const CHECK: &str = "env-vs-config";
        let (Some(env_tok), Some(cfg_tok)) = (
            self.env.non_empty(precedence::GATEWAY_TOKEN_ENV),
            config.gateway.auth.token.as_ref(),
        ) else {
            return Row::ok(CHECK, "DRIFTLESS_GATEWAY_TOKEN and config do not compete");
        };
        match cfg_tok.resolve(&self.env, base) {
            Ok(v) if v.matches(env_tok) => {
                Row::ok(CHECK, "DRIFTLESS_GATEWAY_TOKEN equals config's token")
            }
            Ok(v) => Row::finding(
                CHECK,
                format!(
                    "DRIFTLESS_GATEWAY_TOKEN ({}) differs from gateway.auth.token ({}); the gateway uses config, \
                     clients started from this environment may present the stale value",
                    driftless_core::SecretValue::new(env_tok.to_owned()).fingerprint(),
                    v.fingerprint()
                ),
                "config wins: unset DRIFTLESS_GATEWAY_TOKEN (and remove it from your shell profile)",
            ),
            Err(e) => Row::skipped(CHECK, format!("gateway.auth.token does not resolve: {e}")),
        }
    }

    /// Applies every fix whose precondition holds now, in the order that never loses a value.
    /// A config that does not parse means no change at all.
    pub fn fix(&self) -> FixOutcome {
        let mut actions = Vec::new();
        let error = self.fix_into(&mut actions).err();
        FixOutcome { actions, error }
    }

    fn fix_into(&self, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        match self.gather() {
            Ok(state) => self.fix_driftless(state, actions)?,
            Err((_, true)) => return Ok(()),
            Err((_, false)) => {}
        }
        stored_tokens::fix(&self.state_dir, actions)?;
        if self.openclaw {
            openclaw::fix(&self.env, actions)?;
        }
        Ok(())
    }

    fn fix_driftless(&self, state: State, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let cfg_path = state.loaded.path.clone();
        // 1. Permissions (no content changes, so no backup).
        let mut private = vec![cfg_path.clone()];
        private.extend(self.secret_files(&state.loaded.config, state.loaded.base_dir()));
        for p in private {
            if too_open(&p).is_some() {
                chmod_600(&p).map_err(|source| DoctorError::Chmod {
                    path: p.clone(),
                    source,
                })?;
                actions.push(Action {
                    did: format!("chmod 600 {}", p.display()),
                    path: Some(p),
                    backup: None,
                });
            }
        }

        // 2. Persist an embedded gateway credential the config lacks, BEFORE touching the unit.
        for def in &state.definitions {
            for e in &def.embedded {
                let config = Config::load(&cfg_path).map_err(MigrateError::from)?.config;
                let Some(field) = gateway_field(&e.name) else {
                    continue;
                };
                if config_field_set(&config, field) {
                    continue;
                }
                let moved = migrate::move_to_source(
                    &cfg_path,
                    field,
                    &e.value,
                    &Target::File,
                    &self.env,
                    &self.state_dir,
                )?;
                actions.push(Action {
                    did: format!(
                        "persisted {} from {} to its source and referenced it as {field} ({})",
                        e.location,
                        def.path.display(),
                        moved.reference
                    ),
                    path: Some(cfg_path.clone()),
                    backup: Some(moved.backup),
                });
            }
        }

        // 3. Plaintext secrets in config.
        for moved in
            migrate::migrate_literals(&cfg_path, None, &Target::File, &self.env, &self.state_dir)?
        {
            actions.push(Action {
                did: format!(
                    "moved {} out of config; it now references {}",
                    moved.name, moved.reference
                ),
                path: Some(cfg_path.clone()),
                backup: Some(moved.backup),
            });
        }

        // 4. Rewrite definitions (state re-read: config and live secrets may have changed).
        let Ok(state) = self.gather() else {
            return Ok(());
        };
        for def in &state.definitions {
            if def.unreadable.is_some() || !def.blockers().is_empty() {
                continue;
            }
            if def.embedded.is_empty() && !def.drifted() {
                continue;
            }
            let moved: Vec<&driftless_core::SecretValue> =
                def.embedded.iter().map(|e| &e.value).collect();
            let bak = backup::backup(&def.path, &moved)?;
            atomic::write_with_mode(&def.path, &def.wanted, 0o644)?;
            actions.push(Action {
                did: format!(
                    "rewrote {} as `driftless daemon install` writes it{}",
                    def.path.display(),
                    if def.embedded.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} secret(s) removed)", def.embedded.len())
                    }
                ),
                path: Some(def.path.clone()),
                backup: Some(bak),
            });
            if def.platform {
                actions.push(self.reload_and_restart(&def.manager));
            }
        }
        Ok(())
    }

    fn reload_and_restart(&self, manager: &Manager) -> Action {
        let did = if !manager.reachable() {
            let ctl = match manager {
                Manager::Systemd(Scope::User) => "systemctl --user",
                _ => "systemctl",
            };
            format!(
                "the service manager is not reachable; run `{ctl} daemon-reload && {ctl} try-restart {}` \
                 where it runs",
                crate::service::UNIT_NAME
            )
        } else {
            match manager.reload().and_then(|()| manager.try_restart()) {
                Ok(()) => {
                    "reloaded the service manager and restarted the service (if it was running)"
                        .to_owned()
                }
                Err(e) => format!("reloading/restarting failed: {e}"),
            }
        };
        Action {
            did,
            path: None,
            backup: None,
        }
    }
}
