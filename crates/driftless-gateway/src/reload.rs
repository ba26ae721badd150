//! What triggers a secret reload: changes in watched directories (debounced), SIGHUP, a periodic
//! backstop, and the `secrets.reload` RPC. All go through `Secrets::reload`.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::task::JoinHandle;

use crate::State;
use crate::devices::{FleetSecrets, FleetView, Published, StoreError};
use crate::throttle::{LOG_EVERY, Throttle};
use driftless_core::SecretValue;

/// Bursts of file events (an editor's save, a Kubernetes swap) are folded into one reload.
pub(crate) const DEBOUNCE_MS: u64 = 100;
/// Re-read even without events (network filesystems, a watch that died with its directory).
/// Long enough that exec-sourced secrets are not run often.
const BACKSTOP: Duration = Duration::from_secs(30);

/// Reloads on a blocking thread (resolution may read files or run a command). Returns the changed
/// secret names, or the redacted error.
pub(crate) async fn reload_now(
    state: Arc<State>,
    trigger: &'static str,
) -> Result<Vec<String>, String> {
    tokio::task::spawn_blocking(move || reload_and_schedule(&state, trigger))
        .await
        .map_err(|e| format!("reload task failed: {e}"))?
}

/// Reloads on this thread and schedules the end of any grace window the reload opened. Must run
/// inside the runtime (a worker or a blocking thread).
pub(crate) fn reload_and_schedule(
    state: &Arc<State>,
    trigger: &'static str,
) -> Result<Vec<String>, String> {
    let result = match state.secrets.reload(trigger, &state.metrics) {
        Ok((r, grace)) => {
            if let Some((generation, until_ms)) = grace {
                let wait = until_ms.saturating_sub(crate::secrets::now_ms());
                let st = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    st.secrets.end_grace(Some(generation));
                });
            }
            Ok(r.changed.into_iter().map(|c| c.name).collect())
        }
        Err(e) => Err(driftless_core::redact::redact(&e.to_string()).into_owned()),
    };
    // A changed secret, or a publish that failed before (this is also the periodic retry).
    if state.secrets.publish_pending() {
        publish(state);
    }
    result
}

/// Publishes this replica's shared secret to the fleet and serves the fleet's answer (a store
/// several replicas share). Blocks on the database: call it on a blocking thread inside the
/// runtime. A failure keeps the last view serving and is retried on the next reload and when the
/// store's listener reconnects.
pub(crate) fn publish(state: &Arc<State>) {
    let (Some(fleet), Some(secret)) = (state.devices.fleet(), state.secrets.current()) else {
        return;
    };
    match publish_secret(fleet, &secret, state.secrets.grace_period()) {
        Ok((published, view)) => {
            state.secrets.published(Some(published));
            serve_fleet_view(state, view);
        }
        Err(e) => {
            state.secrets.published(None);
            static LOG: Throttle = Throttle::new(LOG_EVERY);
            if let Some(held_back) = LOG.admit() {
                tracing::warn!(error = %e, held_back, "cannot publish this replica's shared secret to the fleet; the fleet's last secrets stay accepted, retrying on the next reload");
            }
        }
    }
}

/// Publishes `secret` (its keyed verifier and fingerprint) with this replica's `grace`, at start
/// and on every change.
pub(crate) fn publish_secret(
    fleet: &dyn FleetSecrets,
    secret: &SecretValue,
    grace: Duration,
) -> Result<(Published, FleetView), StoreError> {
    fleet.publish(
        &fleet.verifier().of_value(secret),
        secret.fingerprint().as_str(),
        grace.as_millis() as u64,
    )
}

/// Serves a view of the fleet's shared secrets, and ends the predecessor's grace here when the
/// fleet's does (a timer from the time left the database reported).
pub(crate) fn serve_fleet_view(state: &Arc<State>, view: FleetView) {
    if let Some(grace) = state.secrets.install_fleet(view) {
        end_fleet_grace_after(state, grace);
    }
    // What this replica accepts may have changed: `status` on any replica shows it at once.
    state.heartbeat.notify_one();
}

/// How often a replica in a fleet records that it is alive (`REPLICA_LIVE_MS` is three of these).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Records this replica in the fleet's `replicas` table every [`HEARTBEAT`] and whenever what it
/// accepts changed, until dropped; then [`leave_fleet`] removes it. Nothing without a fleet.
pub(crate) fn heartbeats(state: Arc<State>, listen: String) -> Option<JoinHandle<()>> {
    state.devices.fleet()?;
    Some(tokio::spawn(async move {
        loop {
            let (id, addr) = (state.instance_id.clone(), listen.clone());
            let accepts = state.secrets.accepted_fingerprints();
            let beat = crate::auth::on_fleet(&state.devices, move |fleet| {
                fleet.heartbeat(&id, &addr, &accepts)
            })
            .await;
            if let Err(e) = beat {
                static LOG: Throttle = Throttle::new(LOG_EVERY);
                if let Some(held_back) = LOG.admit() {
                    tracing::warn!(error = %e, held_back, "cannot record this replica in the fleet's replicas table; `gateway status` elsewhere may not list it");
                }
            }
            let _ = tokio::time::timeout(HEARTBEAT, state.heartbeat.notified()).await;
        }
    }))
}

/// Removes this replica from the fleet's `replicas` table (a clean shutdown), waiting at most 1 s.
pub(crate) async fn leave_fleet(state: &Arc<State>) {
    let id = state.instance_id.clone();
    let leave = crate::auth::on_fleet(&state.devices, move |fleet| fleet.leave(&id));
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), leave).await {
        tracing::warn!(error = %e, "cannot remove this replica from the fleet's replicas table; it drops out once its heartbeat is old");
    }
}

/// Closes the sessions on the fleet's predecessor `previous` when its grace, `left`, ends.
pub(crate) fn end_fleet_grace_after(state: &Arc<State>, (previous, left): (u64, Duration)) {
    let st = state.clone();
    state.runtime.spawn(async move {
        tokio::time::sleep(left).await;
        st.secrets.end_fleet_grace(previous);
    });
}

/// The watcher, SIGHUP and backstop tasks; dropping this stops them.
pub(crate) struct Background(Vec<JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Starts the watcher, SIGHUP and backstop tasks. The directory watches and the SIGHUP handler
/// are in place when this returns (not when the tasks first run): a file swapped or a SIGHUP sent
/// right after the gateway reports ready must not be missed.
pub(crate) fn spawn(state: Arc<State>) -> Background {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watch_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes: the reload's own reads (and every client reading the token file) would
        // otherwise trigger the next reload, forever.
        if res.is_ok_and(|ev| driftless_core::watch::may_change_source(&ev.kind)) {
            // Full channel = a reload is already pending; dropping the signal is right.
            let _ = watch_tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for dir in state.secrets.watch_dirs() {
                match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => tracing::debug!(dir = %dir.display(), "watching for secret changes"),
                    Err(e) => tracing::warn!(
                        dir = %dir.display(), error = %e,
                        "cannot watch directory; relying on SIGHUP and the periodic re-read"
                    ),
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; relying on SIGHUP and the periodic re-read");
            None
        }
    };

    let st = state.clone();
    let debounced = tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(st.reload_debounce).await;
            while rx.try_recv().is_ok() {}
            let _ = reload_now(st.clone(), "file-change").await;
        }
    });

    let st = state.clone();
    let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let hup = tokio::spawn(async move {
        let Ok(mut sig) = sighup else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while sig.recv().await.is_some() {
            let _ = reload_now(st.clone(), "sighup").await;
        }
    });

    let st = state;
    let backstop = tokio::spawn(async move {
        let mut interval =
            tokio::time::interval_at(tokio::time::Instant::now() + BACKSTOP, BACKSTOP);
        loop {
            interval.tick().await;
            let _ = reload_now(st.clone(), "periodic").await;
        }
    });
    Background(vec![debounced, hup, backstop])
}
