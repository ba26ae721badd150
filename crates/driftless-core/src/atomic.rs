//! The one way driftless writes config and state: atomically, durably, privately.
//!
//! Temp file in the same directory (created 0600, so never world-readable for a moment), write,
//! fsync, rename over the target, fsync the directory. A reader sees the old file or the new one.
//!
//! A path that is a symlink (a dotfiles layout) keeps being one: the write resolves the link and
//! replaces its final target, with the temp file in the target's directory so the rename stays on
//! one filesystem. Replacing the link instead would leave the old value in the target, where other
//! links may still point. [`Written`] says which file was replaced so callers can say so.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why an atomic write failed.
#[derive(Debug, thiserror::Error)]
#[error("could not write {path}: {source}")]
pub struct WriteError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The prefix and suffix of every temp file a write creates; a write killed between creating and
/// renaming it leaves `.driftless-XXXXXX.tmp` (0600) behind, which `doctor` finds.
pub const TEMP_PREFIX: &str = ".driftless-";
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether `name` is one of our temp files.
pub fn is_temp_name(name: &str) -> bool {
    name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
        && name.starts_with(TEMP_PREFIX)
        && name.ends_with(TEMP_SUFFIX)
}

/// Symlinks followed at most, as the kernel's own limit (ELOOP).
const MAX_LINKS: usize = 40;

/// Where a write landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The path the caller named.
    pub path: PathBuf,
    /// The file that was replaced: `path` itself, or the final target of the symlink `path` is.
    pub target: PathBuf,
}

impl Written {
    /// Whether `path` is a symlink whose target was written.
    pub fn through_symlink(&self) -> bool {
        self.path != self.target
    }

    /// `path`, plus the target when the write went through a symlink (for messages).
    pub fn describe(&self) -> String {
        if self.through_symlink() {
            format!(
                "{} (a symlink; its target {} was updated)",
                self.path.display(),
                self.target.display()
            )
        } else {
            self.path.display().to_string()
        }
    }
}

/// The file `path` finally names: `path` itself unless it is a symlink, else its target (followed
/// through chains; a relative link is taken from the link's directory). The target need not exist.
pub fn resolve_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                let next = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from_raw_os_error(
        rustix::io::Errno::LOOP.raw_os_error(),
    ))
}

/// Creates `dir` and missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<Written, WriteError> {
    write_with_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with the given mode (0600 for anything secret or state;
/// service units, which hold no secret, are 0644).
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<Written, WriteError> {
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let target = resolve_symlinks(path).map_err(err)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        create_private_dir(dir).map_err(err)?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    if mode != 0o600 {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&target).map_err(|e| err(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(Written {
        path: path.to_owned(),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_private(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    /// A dotfiles layout: the config dir holds a (relative) link into another directory, through a
    /// second link. The write replaces the final target; both links stay links.
    #[test]
    fn a_symlink_stays_a_link_and_its_target_is_updated() {
        let dir = tempfile::tempdir().unwrap();
        let dots = dir.path().join("dotfiles");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&dots).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let target = dots.join("token");
        std::fs::write(&target, "old-value").unwrap();
        std::os::unix::fs::symlink("../dotfiles/token", dots.join("middle")).unwrap();
        std::os::unix::fs::symlink(dots.join("middle"), conf.join("token")).unwrap();
        let link = conf.join("token");

        let w = write_private(&link, b"new-value").unwrap();
        assert!(w.through_symlink());
        assert_eq!(
            std::fs::canonicalize(&w.target).unwrap(),
            std::fs::canonicalize(&target).unwrap()
        );
        assert!(w.describe().contains("its target"), "{}", w.describe());
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new-value");
        assert_eq!(std::fs::read(&link).unwrap(), b"new-value");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        // The temp file went to the target's directory and is gone; nothing new beside the link.
        assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&dots).unwrap().count(), 2);

        let plain = write_private(&target, b"x").unwrap();
        assert!(!plain.through_symlink());
        assert_eq!(plain.describe(), target.display().to_string());
    }

    #[test]
    fn a_dangling_link_gets_its_target_created_and_a_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        write_private(&link, b"v").unwrap();
        assert_eq!(std::fs::read(dir.path().join("real")).unwrap(), b"v");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let a = dir.path().join("a");
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        let e = write_private(&a, b"v").unwrap_err();
        assert_eq!(
            e.source.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".driftless-a1B2c3.tmp"));
        assert!(!is_temp_name(".driftless-.tmp"));
        assert!(!is_temp_name("driftless-a.tmp"));
        assert!(!is_temp_name(".driftless-a.tmp.bak"));
    }
}
