//! What a check is and what every check reads.
//!
//! A check is one type with its audit and its fix side by side ([`Check`]); both start from the
//! same [`Context`], gathered once for an audit and again after a fix changed something, so a
//! repair always acts on the current state and a second `--fix` finds nothing to do.

use std::path::{Path, PathBuf};

use driftless_core::config::LoadedConfig;
use driftless_core::{Config, ConfigError, Env, SecretValue, atomic, precedence};

use crate::backup;
use crate::file_error::FileError;
use crate::findings::{Action, Row};
use crate::migrate::MigrateError;
use crate::openclaw::{self, Install, OpenClawError};
use crate::perms::OpenFile;
use crate::scan::{self, Embedded, Live};
use crate::service::{Manager, Scope, ServiceError, ServiceSpec};

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
    OpenClaw(#[from] OpenClawError),
    #[error(transparent)]
    TokenStore(#[from] driftless_client::store::StoreError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// One check: what it reports and how it repairs that, from the same facts.
pub(crate) trait Check {
    /// The rows for the current state; changes nothing.
    fn audit(&self, cx: &Context) -> Vec<Row>;
    /// Repairs what [`Check::audit`] reports as fixable, appending one [`Action`] per change.
    /// Acting only on the current state, so a second run changes nothing.
    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError>;
}

/// Why the driftless installation could not be looked at; `stop` when nothing may be checked or
/// changed at all (the config does not parse).
pub(crate) struct Problem {
    pub row: Row,
    pub stop: bool,
}

/// The driftless installation as found on disk.
pub(crate) struct Installation {
    pub loaded: LoadedConfig,
    pub definitions: Vec<Definition>,
}

/// A service definition on disk and what doctor makes of it.
pub(crate) struct Definition {
    pub manager: Manager,
    pub path: PathBuf,
    pub current: Vec<u8>,
    pub wanted: Vec<u8>,
    /// Only the platform's own manager is checked for drift (a plist on Linux is only scanned).
    pub platform: bool,
    pub embedded: Vec<Embedded>,
    /// Why the definition could not be read or scanned; such a file is reported and never
    /// rewritten.
    pub unreadable: Option<String>,
}

impl Definition {
    pub fn drifted(&self) -> bool {
        self.platform && self.current != self.wanted
    }
    /// Secrets doctor cannot drop because it cannot keep them anywhere.
    pub fn blockers(&self) -> Vec<&Embedded> {
        self.embedded
            .iter()
            .filter(|e| e.copy_of.is_none() && gateway_field(&e.name).is_none())
            .collect()
    }
}

/// The OpenClaw installation, as far as it could be read.
pub(crate) enum OpenClaw {
    /// Nothing at this state directory.
    Absent(PathBuf),
    /// A file does not parse (the message names it, with line and column).
    Unparsable(String),
    Present(Install),
}

/// Everything the checks read.
pub(crate) struct Context<'a> {
    pub doctor: &'a Doctor,
    pub driftless: Result<Installation, Problem>,
    pub openclaw: OpenClaw,
}

/// The config field an embedded gateway credential belongs to.
pub(crate) fn gateway_field(name: &str) -> Option<&'static str> {
    precedence::slot_named(name).map(|s| s.path)
}

pub(crate) fn config_field_set(config: &Config, field: &str) -> bool {
    config.secret_inputs().iter().any(|(n, _)| n == field)
}

/// The state files that hold secrets: the client's device identity and device-token store, the
/// gateway's device-token key and device database, and in front mode the gateway's identity toward
/// OpenClaw and the device token OpenClaw issued to it.
const SECRET_STATE_FILES: [&str; 6] = [
    "identity/device.json",
    "identity/device-tokens.json",
    "devices/token-key",
    "devices/devices.sqlite3",
    "upstream/identity/device.json",
    "upstream/device-token.json",
];

impl<'a> Context<'a> {
    pub fn gather(doctor: &'a Doctor) -> Context<'a> {
        Context {
            doctor,
            driftless: doctor.installation(),
            openclaw: doctor.openclaw_install(),
        }
    }

    /// The OpenClaw installation only; the driftless one is not looked at.
    pub fn openclaw_only(doctor: &'a Doctor) -> Context<'a> {
        Context {
            doctor,
            driftless: Err(Problem {
                row: Row::skipped("config", "not checked"),
                stop: false,
            }),
            openclaw: doctor.openclaw_install(),
        }
    }

    /// True when the config does not parse: nothing may be checked further or changed.
    pub fn stopped(&self) -> Option<&Row> {
        match &self.driftless {
            Err(p) if p.stop => Some(&p.row),
            _ => None,
        }
    }

    /// The OpenClaw installation when `--fix --openclaw` may change it.
    pub fn openclaw_to_fix(&self) -> Option<&Install> {
        match &self.openclaw {
            OpenClaw::Present(inst) if self.doctor.openclaw => Some(inst),
            _ => None,
        }
    }

    /// Files that hold secrets: every file reference of the config, and the secret state files
    /// that exist.
    pub fn secret_files(&self, inst: &Installation) -> Vec<PathBuf> {
        let env = &self.doctor.env;
        let mut files: Vec<PathBuf> = inst
            .loaded
            .config
            .secret_inputs()
            .into_iter()
            .filter_map(|(_, i)| {
                i.file_path(env, inst.loaded.base_dir())
                    .and_then(Result::ok)
            })
            .collect();
        files.extend(
            SECRET_STATE_FILES
                .iter()
                .map(|name| self.doctor.state_dir.join(name))
                .filter(|p| p.exists()),
        );
        files
    }
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
                live.push((var.to_owned(), SecretValue::new(v.to_owned())));
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

    /// Loads the config and the service definitions.
    fn installation(&self) -> Result<Installation, Problem> {
        let loaded = match Config::load(&self.config_path) {
            Ok(l) => l,
            Err(e @ ConfigError::NotFound(_)) => {
                return Err(Problem {
                    row: Row::finding("config", e.to_string(), "run `driftless init`"),
                    stop: false,
                });
            }
            Err(e) => {
                return Err(Problem {
                    row: Row::finding(
                        "config",
                        e.to_string(),
                        "fix the file by hand at that line and column; doctor changes nothing until it parses",
                    ),
                    stop: true,
                });
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
            let (current, read_error) = match crate::input::read(&path) {
                Ok(bytes) => (bytes, None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let (embedded, unreadable) = match read_error {
                Some(why) => (Vec::new(), Some(why)),
                None => match scan::scan_definition(manager.format(), &current, &self.env, &live) {
                    Ok(found) => (found, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                },
            };
            for e in &embedded {
                driftless_core::redact::register(&e.value);
            }
            let spec = self
                .spec(Some(&String::from_utf8_lossy(&current)))
                .map_err(|e| Problem {
                    row: Row::finding(
                        "unit",
                        e.to_string(),
                        "check the binary, config and state paths doctor was given",
                    ),
                    stop: false,
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
        Ok(Installation {
            loaded,
            definitions,
        })
    }

    fn openclaw_install(&self) -> OpenClaw {
        let paths = openclaw::locate(&self.env);
        if !paths.state_dir.exists() && !paths.config.exists() {
            return OpenClaw::Absent(paths.state_dir);
        }
        match openclaw::load(paths, &self.env) {
            Ok(inst) => OpenClaw::Present(inst),
            Err(e) => OpenClaw::Unparsable(e),
        }
    }
}

/// Makes `manager` re-read a rewritten definition and restarts `unit` if it runs; when the
/// manager does not answer, says what to run where it does.
pub(crate) fn reload_and_restart(manager: &Manager, unit: &str) -> Action {
    let ctl = manager.control_command();
    Action::note(if !manager.reachable() {
        format!(
            "the service manager is not reachable; run `{ctl} daemon-reload && {ctl} try-restart {unit}` \
             where it runs"
        )
    } else {
        match manager
            .reload()
            .and_then(|()| manager.try_restart_unit(unit))
        {
            Ok(()) => format!(
                "reloaded the service manager and restarted the service {unit} (if it was running)"
            ),
            Err(e) => format!("reloading/restarting failed: {e}"),
        }
    })
}

/// Makes each of `files` 0600 (no content changes, so no backup).
pub(crate) fn tighten(files: Vec<OpenFile>, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
    for f in files {
        actions.push(f.tighten().map_err(FileError::of("chmod", &f.target))?);
    }
    Ok(())
}

/// Writes a service definition (0644: it holds no secret) after a backup in which `removed` are
/// replaced by their fingerprints, and says what changed.
pub(crate) fn rewrite_definition(
    path: &Path,
    bytes: &[u8],
    removed: &[&SecretValue],
    did: String,
) -> Result<Action, DoctorError> {
    let bak = backup::backup(path, removed)?;
    atomic::write_with_mode(path, bytes, 0o644)?;
    Ok(Action::changed(did, path.to_owned(), Some(bak)))
}
