//! Which file-system events in a watched directory can change a secret or config source.
//!
//! Reading a source must not look like changing it: the gateway and the supervisor re-read their
//! sources on an event, and reporting that re-read's own open/close as a change would reload in a
//! loop (and run `exec` sources at that rate). Any client reading the token file would start it.

use notify_types::event::{AccessKind, AccessMode, EventKind};

/// Whether an event of this kind can mean a source's content or its readability changed: a file
/// created, written, renamed or removed (an atomic replace, the kubelet's `..data` swap), its mode or
/// owner changed, or the watcher lost events (`Other`, a rescan). Opens, reads and closes without
/// writing cannot.
pub fn may_change_source(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_types::event::{
        CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode,
    };

    #[test]
    fn reads_are_not_changes() {
        for kind in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!may_change_source(&EventKind::Access(kind)), "{kind:?}");
        }
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Other,
        ] {
            assert!(may_change_source(&kind), "{kind:?}");
        }
    }
}
