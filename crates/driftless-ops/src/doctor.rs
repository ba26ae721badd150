//! `driftless doctor`: finds every copy of a secret that can drift and repairs it idempotently.
//!
//! Doctor is a list of checks ([`DRIFTLESS_CHECKS`], then [`OPENCLAW_CHECKS`]); each is one type with its audit and its fix side by
//! side (`check.rs`). The audit never changes anything. `--fix` runs each check's fix in list
//! order, which is the order that cannot lose a value: permissions, literals out of config, then
//! service definitions (credentials persisted before a unit is rewritten), then the rest. Every
//! change is preceded by a 0600 backup beside the file, and the state is gathered again after any
//! change, so each repair acts on what is there now and a second `--fix` changes nothing. A config
//! that does not parse stops everything: nothing is changed.

mod check;
mod config;
mod files;
mod front;
mod openclaw_checks;
mod providers;
mod stored_tokens;
mod units;

pub use crate::findings::{Action, Row, Status};
pub use check::{Doctor, DoctorError};

use std::path::PathBuf;

use driftless_core::Env;

use crate::service::Scope;
use check::{Check, Context};
use openclaw_checks::{OcAuthProfiles, OcConfig, OcEnvVsConfig, OcPermissions, OcUnitSecret};

/// Every check of the driftless installation, in the order of the table and of the repairs.
const DRIFTLESS_CHECKS: &[&dyn Check] = &[
    &config::Parses,
    &files::Permissions,
    &files::Symlinks,
    &config::PlaintextSecrets,
    &config::EnvVsConfig,
    &units::Units,
    &files::TempFiles,
    &stored_tokens::DeviceTokens,
    &front::FrontDeviceToken,
];

/// The checks of an OpenClaw installation, after driftless's own.
const OPENCLAW_CHECKS: &[&dyn Check] = &[
    &OcConfig,
    &OcPermissions,
    &OcEnvVsConfig,
    &OcUnitSecret,
    // After `OcUnitSecret`, which may persist a token into openclaw.json that is a copy.
    &front::FrontUpstreamCopy,
    &front::FrontUpstreamReach,
    // Before `OcAuthProfiles`: a profile key that is a copy of a driftless provider key goes, rather
    // than moving to OpenClaw's secrets file.
    &providers::OcProviderViaDriftless,
    &OcAuthProfiles,
];

fn checks() -> impl Iterator<Item = &'static dyn Check> {
    DRIFTLESS_CHECKS.iter().chain(OPENCLAW_CHECKS).copied()
}

/// The OpenClaw checks alone, as `doctor` audits the installation `env` points at (the entry point
/// of the `openclaw_json5` fuzz target). Changes nothing.
pub fn audit_openclaw(env: Env) -> Vec<Row> {
    let doctor = Doctor {
        env,
        config_path: PathBuf::new(),
        state_dir: PathBuf::new(),
        binary: PathBuf::new(),
        scope: Scope::User,
        openclaw: true,
    };
    let cx = Context::openclaw_only(&doctor);
    OPENCLAW_CHECKS.iter().flat_map(|c| c.audit(&cx)).collect()
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

impl Doctor {
    /// Runs every check; changes nothing.
    pub fn audit(&self) -> Audit {
        let cx = Context::gather(self);
        if let Some(row) = cx.stopped() {
            return Audit {
                rows: vec![row.clone()],
                stopped: true,
            };
        }
        Audit {
            rows: checks().flat_map(|c| c.audit(&cx)).collect(),
            stopped: false,
        }
    }

    /// Applies every fix whose precondition holds now, in the order that never loses a value.
    /// A config that does not parse means no change at all.
    pub fn fix(&self) -> FixOutcome {
        let mut actions = Vec::new();
        let mut cx = Context::gather(self);
        for check in checks() {
            if cx.stopped().is_some() {
                break;
            }
            let before = actions.len();
            if let Err(e) = check.fix(&cx, &mut actions) {
                return FixOutcome {
                    actions,
                    error: Some(e),
                };
            }
            if actions.len() != before {
                cx = Context::gather(self);
            }
        }
        FixOutcome {
            actions,
            error: None,
        }
    }
}
