//! `token rotate`: a fresh gateway token written to where the token lives, then proof that the
//! running gateway accepts it.
//!
//! Two rotations at once would each write a token and then wait for the gateway to accept *their*
//! token while the other's overwrote it; so a rotation holds an exclusive lock (`flock` on
//! `<state>/token-rotate.lock`) from before it reads the old token until the gateway confirmed
//! the new one. A second run waits for the first (bounded), saying so, then rotates again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftless_client::connection::{self, ClientError, ConnectOptions, Credential};
use driftless_client::credentials::local_url;
use driftless_core::config::AuthMode;
use driftless_core::config_edit::{ConfigDocument, EditError};
use driftless_core::precedence::{self, ServerSecretOrigin};
use driftless_core::{
    Config, ConfigError, Env, Fingerprint, ResolveError, SecretInput, SecretRef, SecretValue,
    atomic, redact, secret,
};
use driftless_protocol::payloads::{SecretsReloadParams, SecretsReloadResult, Status};

/// How long to wait for the running gateway to pick the new token up.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on each attempt to connect with the new token.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `--wait` waits for every live replica of a fleet to accept the new token.
const FLEET_DEADLINE: Duration = Duration::from_secs(60);
/// How often `--wait` asks for the replicas' status.
const FLEET_POLL: Duration = Duration::from_millis(250);
/// How long a second rotation waits for a running one before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why a rotation did not happen or was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "gateway.auth.mode is {0:?}, so there is no gateway token to rotate; change the {0} at its source and run `driftless gateway call secrets.reload`"
    )]
    NotTokenMode(&'static str),
    #[error("no gateway token is configured; run `driftless init` to create one")]
    NotConfigured,
    #[error(
        "the gateway token comes from the environment ({0}), which cannot change while the gateway runs; \
         set a new value where that variable is defined and restart the gateway, or move the token \
         to a file (`driftless init --force` writes a file-referenced config)"
    )]
    FromEnv(String),
    #[error(
        "the gateway token comes from a command ({0}); rotate it in the store that command reads, \
         then run `driftless gateway call secrets.reload`"
    )]
    FromExec(String),
    #[error("cannot read the current gateway token: {0}")]
    Current(#[source] ResolveError),
    #[error("cannot resolve the token file's path: {0}")]
    Path(#[source] ResolveError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("cannot take the rotation lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another `driftless token rotate` still holds {} after {LOCK_WAIT:?}; wait for it to finish and try again", .0.display()
    )]
    Busy(PathBuf),
    #[error(
        "the gateway at {url} still refuses the new token after {ACCEPT_DEADLINE:?}; is it reading a different token source? Check `driftless gateway status`"
    )]
    StillRefused {
        url: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error(
        "after {FLEET_DEADLINE:?}, {accepting} of {live} live replicas accept the new token; not yet: \
         {behind} (is their token source the same Secret? check their logs and `driftless gateway status`)"
    )]
    FleetBehind {
        accepting: usize,
        live: usize,
        behind: String,
    },
    #[error(transparent)]
    Client(Box<ClientError>),
}

impl From<ClientError> for RotateError {
    fn from(e: ClientError) -> RotateError {
        RotateError::Client(Box::new(e))
    }
}

impl RotateError {
    /// The gateway error behind this one, if any (for exit codes).
    pub fn client(&self) -> Option<&ClientError> {
        match self {
            RotateError::StillRefused { source, .. } | RotateError::Client(source) => Some(source),
            _ => None,
        }
    }

    /// The config is missing or invalid.
    pub fn is_config(&self) -> bool {
        matches!(self, RotateError::Config(_))
    }
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub old_fingerprint: Fingerprint,
    pub new_fingerprint: Fingerprint,
    /// `file <path>` or `config <path> (a literal…)`.
    pub written_to: String,
    /// The gateway this machine's config runs.
    pub url: String,
    /// The gateway answered and accepts the new token.
    pub gateway_accepted: bool,
    /// When the old token stops working (unix ms), when the gateway keeps a grace window.
    pub grace_ends_at_ms: Option<u64>,
    /// With `wait`: how many live replicas accept the new token (all of them; 0 for a gateway
    /// that is not in a fleet).
    pub replicas_accepting: Option<usize>,
}

/// Told (accepting, live) each time the count of live replicas accepting the new token changes.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Holds the rotation lock until dropped (closing the file releases the `flock`).
struct RotationLock {
    _file: File,
}

/// Takes the rotation lock, waiting (bounded) for a running rotation; `on_wait` is told once.
fn lock(state_dir: &Path, on_wait: &mut dyn FnMut(&Path)) -> Result<RotationLock, RotateError> {
    use rustix::fs::{FlockOperation, flock};
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("token-rotate.lock");
    let err = |source: std::io::Error| RotateError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(err)?;
    let deadline = Instant::now() + LOCK_WAIT;
    let mut told = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(RotationLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if !told {
                    on_wait(&path);
                    told = true;
                }
                if Instant::now() >= deadline {
                    return Err(RotateError::Busy(path));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
}

/// Rotates the gateway token of the config at `config_path`. `on_wait` is called once when another
/// rotation holds the lock and this one waits for it. With `wait`, it then waits (bounded) until
/// every live replica of the gateway's fleet accepts the new token, reporting progress to it.
pub fn rotate(
    config_path: &Path,
    state_dir: &Path,
    env: &Env,
    no_grace: bool,
    wait: Option<Progress<'_>>,
    on_wait: &mut dyn FnMut(&Path),
) -> Result<Rotated, RotateError> {
    let _lock = lock(state_dir, on_wait)?;
    let loaded = Config::load(config_path)?;
    let cfg = &loaded.config;
    if cfg.gateway.auth.mode != AuthMode::Token {
        return Err(RotateError::NotTokenMode(cfg.gateway.auth.mode.as_str()));
    }
    let (input, origin) =
        precedence::server_secret(cfg, env, None).ok_or(RotateError::NotConfigured)?;
    let old = input
        .resolve(env, loaded.base_dir())
        .map_err(RotateError::Current)?;
    let new = secret::random_token();
    redact::register(&new);
    let written_to = match (&input, origin) {
        (_, ServerSecretOrigin::Env) | (SecretInput::Ref(SecretRef::Env { .. }), _) => {
            return Err(RotateError::FromEnv(input.describe()));
        }
        (SecretInput::Ref(SecretRef::Exec { .. }), _) => {
            return Err(RotateError::FromExec(input.describe()));
        }
        (SecretInput::Ref(SecretRef::File { .. }), _) => {
            let path = input
                .file_path(env, loaded.base_dir())
                .expect("a file reference has a path")
                .map_err(RotateError::Path)?;
            let written = atomic::write_private(&path, format!("{}\n", new.expose()).as_bytes())?;
            format!("file {}", written.describe())
        }
        (SecretInput::Literal(_), _) => {
            let mut doc = ConfigDocument::open(&loaded.path)?;
            doc.set_value("gateway.auth.token", new.expose().into());
            doc.save()?;
            format!(
                "config {} (a literal; consider a file reference)",
                loaded.path.display()
            )
        }
    };
    let url = local_url(cfg);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RotateError::Runtime)?;
    let confirmed = runtime.block_on(confirm(&url, &new, no_grace, wait))?;
    Ok(Rotated {
        old_fingerprint: old.fingerprint().clone(),
        new_fingerprint: new.fingerprint().clone(),
        written_to,
        url,
        gateway_accepted: confirmed.is_some(),
        grace_ends_at_ms: confirmed.and_then(|c| c.grace_ends_at_ms),
        replicas_accepting: confirmed.and_then(|c| c.replicas_accepting),
    })
}

/// What the running gateway confirmed.
#[derive(Clone, Copy)]
struct Confirmed {
    grace_ends_at_ms: Option<u64>,
    replicas_accepting: Option<usize>,
}

/// Connects with the new token until the gateway accepts it (bounded). `None` when no gateway is
/// listening; else the end of the old token's grace window, if any, and with `wait` how many live
/// replicas accept it once all do.
async fn confirm(
    url: &str,
    new: &SecretValue,
    no_grace: bool,
    wait: Option<Progress<'_>>,
) -> Result<Option<Confirmed>, RotateError> {
    let mut opts = ConnectOptions::new(url, Credential::Token(new.clone()));
    opts.scopes = vec![driftless_protocol::scopes::ADMIN.to_owned()];
    opts.timeout = ATTEMPT_TIMEOUT;
    let deadline = Instant::now() + ACCEPT_DEADLINE;
    let mut conn = loop {
        match connection::connect(&opts).await {
            Ok(c) => break c,
            Err(ClientError::Unreachable { .. }) => return Ok(None),
            Err(source) if Instant::now() >= deadline => {
                return Err(RotateError::StillRefused {
                    url: url.to_owned(),
                    source: Box::new(source),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if no_grace {
        let params = SecretsReloadParams { end_grace: true };
        conn.call::<SecretsReloadResult>("secrets.reload", Some(&params))
            .await?;
    }
    let mut status: Status = conn.call("status", None::<&()>).await?;
    let mut replicas_accepting = None;
    if let Some(progress) = wait {
        let fingerprint = new.fingerprint().to_string();
        let deadline = Instant::now() + FLEET_DEADLINE;
        let mut told = None;
        loop {
            let behind: Vec<&str> = status
                .replicas
                .iter()
                .filter(|r| !r.accepts.contains(&fingerprint))
                .map(|r| r.id.as_str())
                .collect();
            let live = status.replicas.len();
            let accepting = live - behind.len();
            if told != Some((accepting, live)) {
                progress(accepting, live);
                told = Some((accepting, live));
            }
            if behind.is_empty() {
                replicas_accepting = Some(live);
                break;
            }
            if Instant::now() >= deadline {
                return Err(RotateError::FleetBehind {
                    accepting,
                    live,
                    behind: behind.join(", "),
                });
            }
            tokio::time::sleep(FLEET_POLL).await;
            status = conn.call("status", None::<&()>).await?;
        }
    }
    conn.close().await;
    Ok(Some(Confirmed {
        grace_ends_at_ms: status.auth.grace.map(|g| g.ends_at_ms),
        replicas_accepting,
    }))
}
