//! The supervisor's event loop. One task owns all state; everything that can happen arrives as
//! one [`Event`] (a closed set), so a patch, a file change and a crash can never interleave.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftless_core::{Env, SecretInput, SecretValue, Snapshot, SnapshotHolder, redact};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::child::{self, Launch, Running};
use crate::spec::{self, ReloadMode};
use crate::status::{EnvEntry, LastExit, PatchError, PatchOutcome, PatchRequest, State, Status};
use crate::watch::SourceWatcher;
use crate::{Options, SupervisorError, ready};

/// A child that stayed up this long is healthy again: the next crash starts from the minimum backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// A burst of file events never delays a re-resolve by more than this many debounce windows.
const MAX_DEBOUNCE_WINDOWS: u32 = 8;
/// How often readiness is probed after a (re)start.
const READY_POLL: Duration = Duration::from_millis(100);

/// A request from the control endpoint.
pub enum Request {
    Patch(
        PatchRequest,
        oneshot::Sender<Result<PatchOutcome, PatchError>>,
    ),
}

enum Event {
    Request(Request),
    ChildExited(std::io::Result<ExitStatus>),
    /// A watched directory changed (start or extend the debounce window).
    Touched,
    /// The debounce window closed, or SIGHUP, or the periodic backstop: re-resolve now.
    Recheck,
    RespawnDue,
    Shutdown,
}

pub struct Supervisor {
    opts: Options,
    env: Env,
    base: PathBuf,
    inputs: BTreeMap<String, SecretInput>,
    /// Every name ever set through the supervisor; never inherited from its own environment.
    managed: BTreeSet<String>,
    holder: SnapshotHolder,
    child: Option<Running>,
    status: Arc<Mutex<Status>>,
    watcher: SourceWatcher,
    touched: Arc<Notify>,
    backoff: Duration,
    respawn_at: Option<Instant>,
    debounce_started: Option<Instant>,
    debounce_due: Option<Instant>,
}

impl Supervisor {
    /// Resolves every input (a failure here is fatal: there is no healthy child to keep).
    pub async fn start(
        opts: Options,
        env: Env,
        base: PathBuf,
        status: Arc<Mutex<Status>>,
    ) -> Result<Supervisor, SupervisorError> {
        let inputs: BTreeMap<String, SecretInput> = opts.env.iter().cloned().collect();
        let snapshot = resolve(&inputs, &env, &base)
            .await
            .map_err(SupervisorError::InitialResolve)?;
        let touched = Arc::new(Notify::new());
        let mut watcher = SourceWatcher::new(touched.clone());
        watcher.sync(inputs.values(), &env, &base);
        let backoff = opts.backoff_min;
        let sup = Supervisor {
            managed: inputs.keys().cloned().collect(),
            holder: SnapshotHolder::new(snapshot),
            inputs,
            opts,
            env,
            base,
            child: None,
            status,
            watcher,
            touched,
            backoff,
            respawn_at: None,
            debounce_started: None,
            debounce_due: None,
        };
        {
            let mut st = sup.status.lock().unwrap_or_else(|e| e.into_inner());
            st.reload = sup.opts.reload.describe();
        }
        sup.publish_env();
        Ok(sup)
    }

    /// Runs until `shutdown` turns true; returns the exit code to leave with.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
        recheck_now: Arc<Notify>,
    ) -> Result<i32, SupervisorError> {
        let running = self.spawn_child().map_err(SupervisorError::Spawn)?;
        self.child = Some(running);
        self.settle(&mut shutdown).await;
        let mut backstop = tokio::time::interval(self.opts.recheck);
        // A long restart must not be followed by a burst of catch-up re-checks.
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backstop.tick().await;
        loop {
            let event = tokio::select! {
                // A stop request wins over anything that is ready at the same time (a due
                // respawn would otherwise start a child only to kill it at once).
                biased;
                _ = shutdown.wait_for(|s| *s) => Event::Shutdown,
                req = requests.recv() => match req {
                    Some(r) => Event::Request(r),
                    // The control endpoint is gone; keep supervising.
                    None => std::future::pending().await,
                },
                st = wait_child(&mut self.child) => Event::ChildExited(st),
                _ = self.touched.notified() => Event::Touched,
                _ = recheck_now.notified() => Event::Recheck,
                _ = until(self.debounce_due) => Event::Recheck,
                _ = until(self.respawn_at) => Event::RespawnDue,
                _ = backstop.tick() => Event::Recheck,
            };
            match event {
                Event::Shutdown => return Ok(self.shut_down().await),
                Event::Request(Request::Patch(req, reply)) => {
                    let outcome = self.patch(req, &mut shutdown).await;
                    let _ = reply.send(outcome);
                }
                Event::ChildExited(st) => self.child_exited(st),
                Event::Touched => self.extend_debounce(),
                Event::Recheck => {
                    self.debounce_started = None;
                    self.debounce_due = None;
                    self.recheck(&mut shutdown).await;
                }
                Event::RespawnDue => {
                    self.respawn_at = None;
                    self.respawn(&mut shutdown).await;
                }
            }
        }
    }

    /// Trailing debounce: each event pushes the re-resolve back, up to a cap for endless bursts.
    fn extend_debounce(&mut self) {
        let now = Instant::now();
        let started = *self.debounce_started.get_or_insert(now);
        let cap = started + self.opts.debounce * MAX_DEBOUNCE_WINDOWS;
        self.debounce_due = Some((now + self.opts.debounce).min(cap));
    }

    /// Re-resolves the current inputs; applies a change, or reports why it could not.
    async fn recheck(&mut self, shutdown: &mut watch::Receiver<bool>) {
        match resolve(&self.inputs, &self.env, &self.base).await {
            Err(msg) => self.report_error(msg),
            Ok(next) => {
                self.clear_error();
                let report = self.holder.install(next);
                if !report.changed.is_empty() {
                    for c in &report.changed {
                        tracing::info!(
                            name = %c.name,
                            before = ?c.before,
                            after = ?c.after,
                            "secret changed"
                        );
                    }
                    self.publish_env();
                    self.apply_change(shutdown).await;
                }
            }
        }
    }

    /// Restarts or signals the child after the snapshot changed. Returns (restarted, signaled).
    async fn apply_change(&mut self, shutdown: &mut watch::Receiver<bool>) -> (bool, bool) {
        match (self.opts.reload, self.child.as_ref()) {
            // No child (backing off after a crash): the new environment may be the fix, start now.
            (_, None) => {
                self.respawn_at = Some(Instant::now());
                (false, false)
            }
            (ReloadMode::Signal(sig), Some(running)) => match running.signal(sig) {
                Ok(()) => {
                    tracing::info!(pid = running.pid, signal = %self.opts.reload.describe(), "signaled the child to reload");
                    self.update(|st| st.signals += 1);
                    (false, true)
                }
                Err(e) => {
                    self.report_error(format!("could not signal the child: {e}"));
                    (false, false)
                }
            },
            (ReloadMode::Restart, Some(_)) => {
                let old = self.child.take().expect("checked above");
                let old_pid = old.pid;
                self.update(|st| st.state = State::Stopping);
                let status = old.stop(self.opts.grace).await;
                self.record_exit(status.as_ref());
                if stop_requested(shutdown) {
                    // SIGTERM arrived while the old child was stopping: that child's code is
                    // the one to exit with, not the code of a replacement killed as it starts.
                    return (false, false);
                }
                match self.spawn_child() {
                    Ok(running) => {
                        tracing::info!(
                            old_pid,
                            pid = running.pid,
                            "restarted the child with the new environment"
                        );
                        self.child = Some(running);
                        self.update(|st| st.restarts += 1);
                        self.settle(shutdown).await;
                        (true, false)
                    }
                    Err(e) => {
                        self.report_error(format!("could not start the child: {e}"));
                        self.schedule_respawn();
                        (false, false)
                    }
                }
            }
        }
    }

    async fn patch(
        &mut self,
        req: PatchRequest,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<PatchOutcome, PatchError> {
        if req.set.is_empty() && req.unset.is_empty() {
            return Err(PatchError::Invalid(
                "the body must set or unset at least one variable".into(),
            ));
        }
        let mut inputs = self.inputs.clone();
        for name in &req.unset {
            spec::check_env_name(name).map_err(|e| PatchError::Invalid(e.to_string()))?;
            if req.set.contains_key(name) {
                return Err(PatchError::Invalid(format!(
                    "{name} is both set and unset; pick one"
                )));
            }
            inputs.remove(name);
        }
        for (name, text) in &req.set {
            spec::check_env_name(name).map_err(|e| PatchError::Invalid(e.to_string()))?;
            let input = spec::parse_secret_input(name, text)
                .map_err(|e| PatchError::Invalid(e.to_string()))?;
            inputs.insert(name.clone(), input);
        }
        // Resolve before touching anything: a broken reference never disturbs the running child.
        let next = resolve(&inputs, &self.env, &self.base)
            .await
            .map_err(PatchError::Resolve)?;
        self.managed.extend(req.set.keys().cloned());
        self.managed.extend(req.unset.iter().cloned());
        self.inputs = inputs;
        self.watcher
            .sync(self.inputs.values(), &self.env, &self.base);
        let report = self.holder.install(next);
        self.publish_env();
        let (restarted, signaled) = if report.changed.is_empty() {
            (false, false)
        } else {
            for c in &report.changed {
                tracing::info!(name = %c.name, before = ?c.before, after = ?c.after, "secret patched");
            }
            self.apply_change(shutdown).await
        };
        Ok(PatchOutcome {
            ok: true,
            restarted,
            signaled,
            pid: self.child.as_ref().map(|c| c.pid),
        })
    }

    fn child_exited(&mut self, status: std::io::Result<ExitStatus>) {
        let Some(running) = self.child.take() else {
            return;
        };
        let status = status.ok();
        self.record_exit(status.as_ref());
        if running.started.elapsed() >= HEALTHY_AFTER {
            self.backoff = self.opts.backoff_min;
        }
        tracing::warn!(
            pid = running.pid,
            code = status.as_ref().map(child::exit_code),
            restart_in_ms = self.backoff.as_millis() as u64,
            "child exited unexpectedly"
        );
        self.schedule_respawn();
    }

    /// Crash-loop protection: the wait doubles on every unexpected exit, up to the maximum.
    fn schedule_respawn(&mut self) {
        self.respawn_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.opts.backoff_max);
        self.update(|st| {
            st.state = State::Backoff;
            st.pid = None;
            st.ready = false;
        });
    }

    /// Starts the child again after a crash, with a freshly resolved environment if possible.
    async fn respawn(&mut self, shutdown: &mut watch::Receiver<bool>) {
        if self.child.is_some() {
            return;
        }
        match resolve(&self.inputs, &self.env, &self.base).await {
            Ok(next) => {
                self.clear_error();
                self.holder.install(next);
                self.publish_env();
            }
            // The last good values are still the best the child can get.
            Err(msg) => self.report_error(msg),
        }
        if stop_requested(shutdown) {
            // Stopped while backing off: exit with the crashed child's code (see `shut_down`).
            return;
        }
        match self.spawn_child() {
            Ok(running) => {
                self.child = Some(running);
                self.settle(shutdown).await;
            }
            Err(e) => {
                self.report_error(format!("could not start the child: {e}"));
                self.schedule_respawn();
            }
        }
    }

    fn spawn_child(&mut self) -> std::io::Result<Running> {
        let snapshot = self.holder.load();
        let launch = Launch {
            command: &self.opts.command,
            base: &self.env,
            managed: &self.managed,
        };
        let running = child::spawn(&launch, &snapshot)?;
        tracing::info!(pid = running.pid, "child started");
        let pid = running.pid;
        self.update(|st| {
            st.state = State::Starting;
            st.pid = Some(pid);
            st.ready = false;
            st.spawns += 1;
        });
        Ok(running)
    }

    /// Waits until the child is ready (or the probe times out, or it exits, or we shut down).
    async fn settle(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let ready = match &self.opts.ready {
                None => true,
                Some(probe) => ready::check(probe).await,
            };
            if ready {
                self.update(|st| {
                    st.state = State::Running;
                    st.ready = true;
                });
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    timeout_ms = self.opts.ready_timeout.as_millis() as u64,
                    "the child did not become ready in time; leaving it running"
                );
                self.update(|st| st.state = State::Running);
                return;
            }
            tokio::select! {
                st = wait_child(&mut self.child) => {
                    self.child_exited(st);
                    return;
                }
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(READY_POLL) => {}
            }
        }
    }

    async fn shut_down(mut self) -> i32 {
        self.update(|st| st.state = State::Stopping);
        let code = match self.child.take() {
            Some(running) => {
                tracing::info!(pid = running.pid, "stopping the child");
                let status = running.stop(self.opts.grace).await;
                self.record_exit(status.as_ref());
                status.as_ref().map(child::exit_code).unwrap_or(1)
            }
            None => self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_exit
                .as_ref()
                .map(|e| e.exit_code)
                .unwrap_or(0),
        };
        self.update(|st| {
            st.state = State::Stopped;
            st.pid = None;
        });
        code
    }

    fn record_exit(&self, status: Option<&ExitStatus>) {
        use std::os::unix::process::ExitStatusExt;
        if let Some(s) = status {
            let exit = LastExit {
                code: s.code(),
                signal: s.signal(),
                exit_code: child::exit_code(s),
            };
            self.update(|st| st.last_exit = Some(exit));
        }
    }

    /// Logs a resolve or control error once (not on every periodic re-check) and shows it in /status.
    fn report_error(&self, msg: String) {
        let msg = redact::redact(&msg).into_owned();
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if st.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(error = %msg, pid = ?st.pid, "keeping the running child and its current environment");
            st.last_error = Some(msg);
        }
    }

    fn clear_error(&self) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if st.last_error.take().is_some() {
            tracing::info!("every secret source resolves again");
        }
    }

    fn publish_env(&self) {
        let snapshot = self.holder.load();
        let env = self
            .inputs
            .iter()
            .map(|(name, input)| {
                let fingerprint = snapshot.get(name).map(SecretValue::fingerprint).cloned();
                (
                    name.clone(),
                    EnvEntry {
                        source: input.describe(),
                        fingerprint,
                    },
                )
            })
            .collect();
        let generation = self.holder.generation();
        self.update(|st| {
            st.env = env;
            st.generation = generation;
        });
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Resolves on a blocking thread (files and exec commands block). The error is one redacted line
/// naming every variable that failed and why.
async fn resolve(
    inputs: &BTreeMap<String, SecretInput>,
    env: &Env,
    base: &std::path::Path,
) -> Result<Snapshot, String> {
    let inputs = inputs.clone();
    let env = env.clone();
    let base = base.to_owned();
    tokio::task::spawn_blocking(move || {
        Snapshot::resolve_inputs(inputs.iter().map(|(n, i)| (n.clone(), i)), &env, &base)
            .map_err(|e| redact::redact(&e.to_string()).into_owned())
    })
    .await
    .unwrap_or_else(|e| Err(format!("secret resolution failed internally: {e}")))
}

/// Whether SIGTERM/SIGINT has asked the supervisor to stop (checked before every spawn).
fn stop_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

async fn wait_child(child: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ControlAddr;

    /// A child that needs a moment to stop: on SIGTERM it sleeps, then exits 5. It creates
    /// `marker` once its trap is set. (`sh` runs a trap between commands, so the loop's short
    /// sleeps keep it responsive.)
    fn slow_to_stop(marker: &std::path::Path) -> String {
        format!(
            "trap 'sleep 0.5; exit 5' TERM; : > '{}'; while :; do sleep 0.02; done",
            marker.display()
        )
    }

    fn options(secret: &std::path::Path, marker: &std::path::Path) -> Options {
        let input = spec::parse_secret_input("SECRET", &format!("file:{}", secret.display()))
            .expect("a file reference");
        Options {
            env: vec![("SECRET".into(), input)],
            reload: ReloadMode::Restart,
            ready: None,
            control: ControlAddr::Unix(secret.with_extension("sock")),
            control_token: None,
            command: vec!["/bin/sh".into(), "-c".into(), slow_to_stop(marker)],
            grace: Duration::from_secs(5),
            debounce: Duration::from_millis(50),
            // Only the explicit re-check below may restart the child.
            recheck: Duration::from_secs(3600),
            ready_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
        }
    }

    async fn wait_for_state(status: &Mutex<Status>, want: State) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status.lock().unwrap().state != want {
            assert!(Instant::now() < deadline, "never reached {want:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Regression: a SIGTERM that arrives while a restart is stopping the old child used to
    /// spawn the replacement anyway and then kill it as it started, so the supervisor exited
    /// with whatever that half-started child died of (143 if before its handlers, or a crash
    /// code) instead of the code of the child that was running when the stop was asked for.
    #[tokio::test]
    async fn a_stop_during_a_restart_exits_with_the_stopped_childs_code_and_spawns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let write = |v: &str| {
            std::fs::write(&secret, v).unwrap();
            std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        };
        write("canary-restart-race-first");
        let status = Arc::new(Mutex::new(Status::default()));
        let env = Env::from_pairs([("PATH", "/usr/bin:/bin")]);
        let marker = dir.path().join("trap-set");
        let sup = Supervisor::start(
            options(&secret, &marker),
            env,
            dir.path().into(),
            status.clone(),
        )
        .await
        .unwrap();
        let (_requests_tx, requests) = mpsc::channel(1);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let recheck_now = Arc::new(Notify::new());
        let run = sup.run(requests, shutdown, recheck_now.clone());
        let drive = async {
            wait_for_state(&status, State::Running).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !marker.exists() {
                assert!(Instant::now() < deadline, "the child never set its trap");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // A changed secret: the re-check restarts the child, which takes 0.5 s to stop...
            write("canary-restart-race-second");
            recheck_now.notify_one();
            wait_for_state(&status, State::Stopping).await;
            // ...and the stop request lands in the middle of it.
            shutdown_tx.send(true).unwrap();
        };
        // The supervisor's future is not `Send` (it runs under `block_on`): drive both here.
        let (code, ()) =
            tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(run, drive) })
                .await
                .expect("the supervisor stops");
        let code = code.unwrap();
        let st = status.lock().unwrap().clone();
        assert_eq!(
            st.spawns, 1,
            "no replacement is started after the stop request"
        );
        assert_eq!(code, 5, "the code of the child that was running");
        assert_eq!(st.state, State::Stopped);
    }
}
