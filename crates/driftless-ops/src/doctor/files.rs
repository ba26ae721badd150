//! Checks of the files that hold secrets: private modes, symlinks, and temp files an interrupted
//! write left behind.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use driftless_core::atomic::{self, resolve_symlinks};

use super::check::{Check, Context, DoctorError, OpenClaw, tighten};
use crate::file_error::FileError;
use crate::findings::{Action, Row};
use crate::perms;
use crate::service::Manager;

/// `permissions`: the config and every secret file are 0600.
pub(crate) struct Permissions;

const PERMISSIONS: &str = "permissions";

impl Permissions {
    fn open_files(cx: &Context) -> Vec<perms::OpenFile> {
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let mut files = vec![inst.loaded.path.clone()];
        files.extend(cx.secret_files(inst));
        perms::open_files(&files)
    }
}

impl Check for Permissions {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let rows: Vec<Row> = Self::open_files(cx)
            .iter()
            .map(|f| {
                let what = if f.path == inst.loaded.path {
                    "config"
                } else {
                    "secret file"
                };
                Row::finding(
                    PERMISSIONS,
                    format!(
                        "{what} {} is mode {:04o}: group/others can read it",
                        f.name(),
                        f.mode
                    ),
                    f.fix_hint(),
                )
            })
            .collect();
        if rows.is_empty() {
            return vec![Row::ok(
                PERMISSIONS,
                "config and secret files are private (0600)",
            )];
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        tighten(Self::open_files(cx), actions)
    }
}

/// `symlink`: which secret sources are symlinks (a dotfiles layout), and where writes to them go.
/// Reported only: a link is a fine layout, and every write keeps it and updates its target.
pub(crate) struct Symlinks;

impl Check for Symlinks {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        const CHECK: &str = "symlink";
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let mut files = vec![inst.loaded.path.clone()];
        files.extend(cx.secret_files(inst));
        let rows: Vec<Row> = files
            .into_iter()
            .filter_map(|f| {
                let target = resolve_symlinks(&f).ok().filter(|t| *t != f)?;
                Some(Row::ok(
                    CHECK,
                    format!(
                        "{} is a symlink to {}: rotation, migration and doctor update {} and keep the link",
                        f.display(),
                        target.display(),
                        target.display()
                    ),
                ))
            })
            .collect();
        if rows.is_empty() {
            return vec![Row::ok(CHECK, "no secret source is a symlink")];
        }
        rows
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        Ok(())
    }
}

/// `temp-file`: no `.driftless-*.tmp` that an interrupted write left behind. Such a file is
/// 0600 but may hold a plaintext secret; the fix deletes it (a backup would be another copy).
pub(crate) struct TempFiles;

const TEMP: &str = "temp-file";

/// A temp file younger than this may belong to a write in progress, and is left alone.
const ORPHAN_AFTER: Duration = Duration::from_secs(60);

impl TempFiles {
    /// Every directory driftless writes into: beside each file it writes and beside that file's
    /// symlink target, and the state directories.
    fn dirs(cx: &Context) -> Vec<PathBuf> {
        let d = cx.doctor;
        let mut files = vec![d.config_path.clone()];
        let platform = Manager::for_platform(d.scope.clone());
        files.push(platform.definition_path(&d.env));
        files.push(Manager::Launchd.definition_path(&d.env));
        if let Ok(inst) = &cx.driftless {
            files.extend(cx.secret_files(inst));
        }
        if let OpenClaw::Present(oc) = &cx.openclaw {
            files.extend([oc.paths.config.clone(), oc.paths.unit.clone()]);
            files.push(crate::openclaw::secrets_store(&oc.paths));
            files.extend(oc.profiles.iter().map(|p| p.path.clone()));
        }
        let mut dirs: Vec<PathBuf> = ["", "secrets", "identity", "devices"]
            .iter()
            .map(|sub| d.state_dir.join(sub))
            .collect();
        for f in files {
            let target = resolve_symlinks(&f).unwrap_or_else(|_| f.clone());
            dirs.extend(
                [f, target]
                    .iter()
                    .filter_map(|p| p.parent().map(PathBuf::from)),
            );
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Our temp files older than [`ORPHAN_AFTER`], with their age.
    fn orphans(cx: &Context) -> Vec<(PathBuf, Duration)> {
        let uid = rustix::process::geteuid().as_raw();
        let now = SystemTime::now();
        let mut out = Vec::new();
        for dir in Self::dirs(cx) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_name().to_str().is_some_and(atomic::is_temp_name) {
                    continue;
                }
                // Never follows a link: only a regular file of ours is ours to delete.
                let Ok(meta) = e.metadata() else { continue };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if meta.is_file() && meta.uid() == uid && age >= ORPHAN_AFTER {
                    out.push((e.path(), age));
                }
            }
        }
        out
    }
}

impl Check for TempFiles {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let rows: Vec<Row> = Self::orphans(cx)
            .into_iter()
            .map(|(path, age)| {
                Row::finding(
                    TEMP,
                    format!(
                        "{} is a temp file an interrupted write left behind {} min ago; it may hold a \
                         plaintext secret",
                        path.display(),
                        age.as_secs() / 60
                    ),
                    "delete it (`driftless doctor --fix`); the file it was meant to replace is intact",
                )
            })
            .collect();
        if rows.is_empty() {
            return vec![Row::ok(TEMP, "no temp files left by interrupted writes")];
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        for (path, _) in Self::orphans(cx) {
            match std::fs::remove_file(&path) {
                Ok(()) => actions.push(Action::changed(
                    format!(
                        "deleted {}, a temp file an interrupted write left behind",
                        path.display()
                    ),
                    path,
                    None,
                )),
                // Gone since the scan: nothing left to do.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FileError::of("delete", &path)(e).into()),
            }
        }
        Ok(())
    }
}
