//! Backups written beside a file before any change to it.
//!
//! A backup is 0600 and never unique-by-accident: a second backup in the same second gets a
//! counter. Values that a repair has just moved into their one source are replaced by their
//! fingerprint in the backup, so a backup never becomes a second copy of a secret (OpenClaw's
//! `.bak` files kept every rotated token; see the shared design `openclaw-credentials.md` §1.3).

use std::path::{Path, PathBuf};

use driftless_core::{SecretValue, atomic};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read {path} to back it up: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

/// Copies `path` to `path.bak-<unix seconds>[-n]` (0600), with each of `moved` replaced by
/// `[redacted sha256:…]`, and returns the backup's path.
pub fn backup(path: &Path, moved: &[&SecretValue]) -> Result<PathBuf, BackupError> {
    let bytes = crate::input::read(path).map_err(|source| BackupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bytes = match String::from_utf8(bytes) {
        Ok(mut text) => {
            for v in moved {
                if !v.expose().is_empty() {
                    text = text.replace(v.expose(), &format!("[redacted {}]", v.fingerprint()));
                }
            }
            text.into_bytes()
        }
        Err(e) => e.into_bytes(),
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = 0u32;
    let dest = loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".bak-{secs}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    atomic::write_private(&dest, &bytes)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn private_distinct_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("unit.service");
        std::fs::write(&p, "Environment=T=canary-backup-1\nX=1\n").unwrap();
        let v = SecretValue::new("canary-backup-1".into());
        let a = backup(&p, &[&v]).unwrap();
        let b = backup(&p, &[]).unwrap();
        assert_ne!(a, b);
        let text = std::fs::read_to_string(&a).unwrap();
        assert!(!text.contains("canary-backup-1"), "{text}");
        assert!(text.contains(v.fingerprint().as_str()) && text.contains("X=1"));
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(&b)
                .unwrap()
                .contains("canary-backup-1")
        );
    }
}
