//! `driftless supervise`: runs a program whose environment is built from secret references.
//!
//! A child's environment is frozen at spawn (failure D6 in credentials.md), so a changed secret
//! reaches an env-only program only through a restart. The supervisor resolves every `--env`
//! reference into a [`driftless_core::Snapshot`], watches the sources, and on a change either
//! sends the configured reload signal or restarts the child: resolve first (a failed resolve never
//! touches a healthy child), SIGTERM the process group, wait the grace period, SIGKILL, respawn,
//! wait until ready. Bursts are debounced into one restart, crash loops back off exponentially,
//! and every line the child prints passes through the redactor.

mod child;
mod control;
mod ready;
pub mod spec;
pub mod status;
mod supervisor;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftless_core::{Env, SecretInput, redact};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

pub use spec::{ControlAddr, ReadyProbe, ReloadMode};

/// Everything `driftless supervise` was asked to do.
pub struct Options {
    /// `NAME` → where its value lives.
    pub env: Vec<(String, SecretInput)>,
    pub reload: ReloadMode,
    pub ready: Option<ReadyProbe>,
    pub control: ControlAddr,
    /// Bearer token for an HTTP control endpoint (required there, unused on a unix socket).
    pub control_token: Option<SecretInput>,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long a child gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Quiet time after a file event before re-resolving (bursts become one restart).
    pub debounce: Duration,
    /// Periodic re-resolve: the backstop for missed file events and for exec sources.
    pub recheck: Duration,
    /// How long to wait for `ready` after a (re)start before carrying on anyway.
    pub ready_timeout: Duration,
    /// First wait after a crash; doubles on each crash up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Why the supervisor could not start or run. Messages name the fix and never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "give the program to run after `--`, e.g. `driftless supervise --env K=file:/k -- my-server --port 8080`"
    )]
    NoCommand,
    #[error("cannot start: a secret does not resolve ({0}); fix the source and run again")]
    InitialResolve(String),
    #[error("cannot start the child: {0}; check the program path and permissions")]
    Spawn(#[source] std::io::Error),
    #[error("cannot listen on the control endpoint {addr}: {reason}; pick another with --control")]
    ControlBind { addr: String, reason: String },
    #[error(
        "another supervisor is already listening on {0}; stop it or pass --control unix:OTHER_PATH"
    )]
    ControlInUse(PathBuf),
    #[error(
        "an HTTP control endpoint needs its own token: pass --control-token file:/path (or env:VAR, exec:cmd)"
    )]
    ControlTokenMissing,
    #[error("the control token does not resolve: {0}")]
    ControlToken(String),
    #[error("cannot start the async runtime or signal handlers: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the supervisor until SIGTERM or SIGINT; returns the child's exit code to leave with.
/// `base` is the directory relative file references are taken from.
pub fn run(opts: Options, env: Env, base: PathBuf) -> Result<i32, SupervisorError> {
    if opts.command.is_empty() {
        return Err(SupervisorError::NoCommand);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SupervisorError::Runtime)?;
    runtime.block_on(run_async(opts, env, base))
}

async fn run_async(opts: Options, env: Env, base: PathBuf) -> Result<i32, SupervisorError> {
    let token = match (&opts.control, &opts.control_token) {
        (ControlAddr::Unix(_), _) => None,
        (ControlAddr::Http(_), None) => return Err(SupervisorError::ControlTokenMissing),
        (ControlAddr::Http(_), Some(input)) => {
            let v = input
                .resolve(&env, &base)
                .map_err(|e| SupervisorError::ControlToken(e.to_string()))?;
            redact::register(&v);
            Some(v)
        }
    };
    let control = opts.control.clone();
    let listener = control::bind(&control).await?;

    let status = Arc::new(Mutex::new(status::Status::default()));
    let sup = supervisor::Supervisor::start(opts, env, base, status.clone()).await?;

    let (req_tx, req_rx) = tokio::sync::mpsc::channel(16);
    let server = tokio::spawn(control::serve(listener, req_tx, status, token));
    tracing::info!(control = %control::describe(&control), "supervisor control endpoint listening");

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let recheck_now = Arc::new(Notify::new());
    let mut term = signal(SignalKind::terminate()).map_err(SupervisorError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SupervisorError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(SupervisorError::Runtime)?;
    let recheck = recheck_now.clone();
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // SIGHUP to the supervisor: re-resolve now (the manual backstop).
                _ = hup.recv() => recheck.notify_one(),
            }
        }
        tracing::info!("shutting down: stopping the child");
        let _ = shutdown_tx.send(true);
    });

    let result = sup.run(req_rx, shutdown_rx, recheck_now).await;
    signals.abort();
    server.abort();
    if let ControlAddr::Unix(path) = &control {
        let _ = std::fs::remove_file(path);
    }
    result
}
