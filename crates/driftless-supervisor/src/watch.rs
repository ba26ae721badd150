//! Watches the directories of file sources. Events are only hints that something *may* have
//! changed (the supervisor re-resolves and compares fingerprints); a periodic re-resolve is the
//! backstop for missed events and for exec sources, which have nothing to watch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftless_core::{Env, SecretInput};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// The parent directories of file sources, watched non-recursively. The *directory* is watched,
/// not the file: an atomic rename or a Kubernetes `..data` symlink swap replaces the file's inode.
pub struct SourceWatcher {
    watcher: Option<RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
}

impl SourceWatcher {
    /// A watcher that wakes `touched` on any change in a watched directory (not on reads). If the platform
    /// watcher cannot start, the periodic re-resolve still catches every change.
    pub fn new(touched: Arc<Notify>) -> SourceWatcher {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && driftless_core::watch::may_change_source(&ev.kind)
            {
                touched.notify_one();
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "file watching is unavailable; relying on the periodic re-check");
                None
            }
        };
        SourceWatcher {
            watcher,
            dirs: BTreeSet::new(),
        }
    }

    /// Watches exactly the directories the current inputs need.
    pub fn sync<'a>(
        &mut self,
        inputs: impl IntoIterator<Item = &'a SecretInput>,
        env: &Env,
        base: &Path,
    ) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let wanted: BTreeSet<PathBuf> = inputs
            .into_iter()
            .filter_map(|i| i.file_path(env, base)?.ok())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        let mut watching = BTreeSet::new();
        for dir in &wanted {
            if self.dirs.contains(dir) {
                watching.insert(dir.clone());
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watching.insert(dir.clone());
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch this directory; changes in it are seen by the periodic re-check only"
                ),
            }
        }
        self.dirs = watching;
    }
}
