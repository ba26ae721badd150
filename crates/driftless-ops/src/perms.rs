//! Which secret-holding files group or others can read, and tightening them. A file named through a
//! symlink is judged and changed at its target, and the target is named in every row and action,
//! so doctor never changes a file it did not name.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use driftless_core::atomic::resolve_symlinks;

use crate::findings::Action;

/// A file of ours that group or others can access.
pub(crate) struct OpenFile {
    /// The path as doctor knows it (config, reference, state file).
    pub path: PathBuf,
    /// The file that holds the bytes: `path`, or its symlink's final target.
    pub target: PathBuf,
    pub mode: u32,
}

impl OpenFile {
    /// `path`, and the target it links to if it is a symlink.
    pub fn name(&self) -> String {
        if self.path == self.target {
            self.path.display().to_string()
        } else {
            format!(
                "{} (a symlink to {})",
                self.path.display(),
                self.target.display()
            )
        }
    }

    /// The command that repairs it: always on the target, which is what a chmod changes.
    pub fn fix_hint(&self) -> String {
        format!("chmod 600 {}", self.target.display())
    }

    /// Makes the target 0600 and says which file changed.
    pub fn tighten(&self) -> std::io::Result<Action> {
        std::fs::set_permissions(&self.target, std::fs::Permissions::from_mode(0o600))?;
        let through = if self.path == self.target {
            String::new()
        } else {
            format!(" (the target of the symlink {})", self.path.display())
        };
        Ok(Action::changed(
            format!("{}{through}", self.fix_hint()),
            self.target.clone(),
            None,
        ))
    }
}

/// The mode of `path`'s target when it is ours and group or others can access it.
fn too_open(path: &Path) -> Option<OpenFile> {
    let target = resolve_symlinks(path).ok()?;
    let meta = std::fs::symlink_metadata(&target).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    (meta.is_file() && ours && mode & 0o077 != 0).then(|| OpenFile {
        path: path.to_owned(),
        target,
        mode,
    })
}

/// Every one of `paths` that group or others can access.
pub(crate) fn open_files(paths: &[PathBuf]) -> Vec<OpenFile> {
    paths.iter().filter_map(|p| too_open(p)).collect()
}
