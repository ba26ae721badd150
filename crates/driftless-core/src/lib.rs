//! The foundation every other part of driftless stands on.
//!
//! A secret lives in exactly one *source* (env var, file, command output, or, discouraged, a config
//! literal). Config fields hold a [`SecretInput`] that *references* the source. [`Snapshot`]
//! resolves every reference at once; [`SnapshotHolder`] swaps snapshots atomically and keeps the old
//! one when a reload fails. [`SecretValue`] never prints its value, and [`redact`] scrubs every live
//! value from any text that leaves the process.

pub mod atomic;
pub mod config;
pub mod config_edit;
pub mod env;
pub mod paths;
pub mod precedence;
pub mod redact;
pub mod secret;
pub mod snapshot;
pub mod source;
pub mod watch;

pub use config::{Config, ConfigError};
pub use env::Env;
pub use secret::{Fingerprint, SecretValue};
pub use snapshot::{SecretName, Snapshot, SnapshotHolder};
pub use source::{ResolveError, SecretInput, SecretRef};
