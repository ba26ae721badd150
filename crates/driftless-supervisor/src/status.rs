//! The control endpoint's wire types: `GET /status` and `POST /env/patch`.

use std::collections::BTreeMap;

use driftless_core::Fingerprint;
use serde::{Deserialize, Serialize};

/// Where the supervisor is in the child's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Spawned, not yet ready.
    #[default]
    Starting,
    Running,
    /// Being stopped (restart or shutdown).
    Stopping,
    /// Exited unexpectedly; waiting out the crash-loop backoff.
    Backoff,
    Stopped,
}

/// One supervised variable: where it comes from and the fingerprint of its current value.
#[derive(Debug, Clone, Serialize)]
pub struct EnvEntry {
    pub source: String,
    pub fingerprint: Option<Fingerprint>,
}

/// How the child last ended.
#[derive(Debug, Clone, Serialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The shell convention: `code`, or 128 + `signal`.
    pub exit_code: i32,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub state: State,
    pub pid: Option<u32>,
    pub ready: bool,
    /// Children started so far (the first one included).
    pub spawns: u64,
    /// Restarts caused by a changed secret.
    pub restarts: u64,
    /// Reload signals sent because a secret changed.
    pub signals: u64,
    pub reload: String,
    /// Snapshot generation (bumps on every change of any value).
    pub generation: u64,
    pub last_exit: Option<LastExit>,
    /// The latest resolve or spawn error, redacted; cleared once every source resolves again.
    pub last_error: Option<String>,
    pub env: BTreeMap<String, EnvEntry>,
}

/// `POST /env/patch` body: `{"set": {NAME: "<secret input>"}, "unset": [NAME]}`.
// No Debug: a client may (wrongly) send a literal secret, which must not reach a log.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `POST /env/patch` answer.
#[derive(Debug, Serialize)]
pub struct PatchOutcome {
    pub ok: bool,
    pub restarted: bool,
    pub signaled: bool,
    pub pid: Option<u32>,
}

/// Why a patch was refused. Nothing was changed in either case.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("the new environment does not resolve, nothing was changed: {0}")]
    Resolve(String),
}
