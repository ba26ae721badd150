//! What doctor reports and what `--fix` did: one [`Row`] per finding (or clean result) and one
//! [`Action`] per change. Every check speaks in these; the CLI prints them as a table or JSON.

use std::path::PathBuf;

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

impl Action {
    /// A change to `path`, backed up first to `backup` when that is given.
    pub fn changed(did: impl Into<String>, path: PathBuf, backup: Option<PathBuf>) -> Action {
        Action {
            did: did.into(),
            path: Some(path),
            backup,
        }
    }
    /// Something done that is not a file change (a service restart, advice).
    pub fn note(did: impl Into<String>) -> Action {
        Action {
            did: did.into(),
            path: None,
            backup: None,
        }
    }
}
