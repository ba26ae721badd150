//! Opening a session the way every CLI command does: the one precedence table (explicit flag >
//! stored device token > passive shared credential), this device's signed identity, one self-heal
//! of a stale stored device token, and storage of any device token the gateway issues.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driftless_core::precedence::ClientSource;
use driftless_core::{Config, ConfigError, Env, SecretValue};

use crate::connection::{self, ClientError, ConnectOptions, Connection, Credential};
use crate::credentials::{self, Candidates, Explicit, Target};
use crate::heal;
use crate::identity::{DeviceIdentity, IdentityError};
use crate::store::{StoreError, TokenStore};

/// What a command asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// `--url`; else `gateway.remote.url`, else the local gateway.
    pub url: Option<String>,
    /// `--token` / `--password`.
    pub explicit: Explicit,
    /// Bound on the handshake, and on each request's whole exchange.
    pub timeout: Duration,
    /// Connect from this local address.
    pub source_addr: Option<IpAddr>,
    pub scopes: Vec<String>,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway wants this device approved first (`PAIRING_REQUIRED`).
    #[error(
        "this device is not approved on the gateway yet; on the gateway's host run `driftless devices approve {request_id}`, then try again"
    )]
    NeedsApproval {
        request_id: String,
        #[source]
        error: Box<ClientError>,
    },
    #[error(transparent)]
    Client(Box<ClientError>),
}

impl From<ClientError> for SessionError {
    fn from(e: ClientError) -> SessionError {
        SessionError::Client(Box::new(e))
    }
}

impl SessionError {
    /// The gateway's refusal behind this error, if any (for exit codes).
    pub fn client(&self) -> Option<&ClientError> {
        match self {
            SessionError::NeedsApproval { error, .. } | SessionError::Client(error) => Some(error),
            _ => None,
        }
    }
}

/// Everything a session needs from this machine, read before any socket is opened (files are
/// read here, not on the async runtime).
pub struct Prepared {
    target: Target,
    url: String,
    candidates: Candidates,
    store: TokenStore,
    identity: Arc<DeviceIdentity>,
    request: Request,
}

impl Prepared {
    /// Loads the config (optional when `--url` names the gateway), the device identity (created
    /// on first use), the token store and the credential candidates.
    pub fn load(
        config_path: &Path,
        state_dir: &Path,
        env: &Env,
        request: Request,
    ) -> Result<Prepared, SessionError> {
        let (config, base) = match Config::load(config_path) {
            Ok(l) => {
                let base = l.base_dir().to_owned();
                (l.config, base)
            }
            Err(ConfigError::NotFound(_)) if request.url.is_some() => {
                (Config::default(), PathBuf::from("."))
            }
            Err(e) => return Err(e.into()),
        };
        let target = credentials::target(&config, request.url.as_deref())?;
        let identity = Arc::new(DeviceIdentity::load_or_create(state_dir)?);
        let store = TokenStore::load(state_dir, identity.device_id())?;
        let candidates = Candidates::gather(
            &config,
            &base,
            env,
            target.clone(),
            connection::ROLE,
            &request.explicit,
            Some(&store),
        );
        for c in &candidates.list {
            if let Some(Err(e)) = &c.value {
                tracing::warn!(
                    source = c.source.describe(),
                    "credential source unresolved: {e}"
                );
            }
        }
        let url = request.url.clone().unwrap_or(target.url.clone());
        Ok(Prepared {
            target,
            url,
            candidates,
            store,
            identity,
            request,
        })
    }

    /// Connects: the table's winner first, one self-heal, issued tokens stored.
    pub async fn connect(mut self) -> Result<Session, SessionError> {
        let (url, identity, request) = (&self.url, &self.identity, &self.request);
        let connected = heal::connect(
            &self.candidates,
            &mut self.store,
            async |cred: &Credential| {
                let mut opts = ConnectOptions::new(url.clone(), cred.clone());
                opts.scopes = request.scopes.clone();
                opts.timeout = request.timeout;
                opts.device = Some(identity.clone());
                opts.open.bind_addr = request.source_addr;
                match connection::connect(&opts).await {
                    Ok(conn) => {
                        let issued = conn.issued();
                        Ok((conn, issued))
                    }
                    Err(error) => Err(heal::Refused {
                        device_token_mismatch: error.is_device_token_mismatch(),
                        error,
                    }),
                }
            },
        )
        .await;
        let c = match connected {
            Ok(c) => c,
            Err(heal::ConnectError::Refused(error)) => return Err(refusal(error)),
            Err(heal::ConnectError::Store(e)) => return Err(e.into()),
        };
        tracing::debug!(used = ?c.used, healed = c.healed, "connected");
        Ok(Session {
            conn: c.value,
            used: c.used,
            target: self.target,
            store: self.store,
            device_id: self.identity.device_id().to_owned(),
        })
    }
}

fn refusal(error: ClientError) -> SessionError {
    if let ClientError::Rejected { error: shape, .. } = &error
        && shape.detail_code() == Some("PAIRING_REQUIRED")
    {
        let request_id = shape
            .details
            .as_ref()
            .and_then(|d| d.request_id.as_deref())
            .unwrap_or("<requestId from `driftless devices list`>")
            .to_owned();
        return SessionError::NeedsApproval {
            request_id,
            error: Box::new(error),
        };
    }
    error.into()
}

/// An open, authenticated session.
pub struct Session {
    pub conn: Connection,
    /// The source whose credential the gateway accepted.
    pub used: Option<ClientSource>,
    target: Target,
    store: TokenStore,
    device_id: String,
}

impl Session {
    /// Keeps a device token the gateway returned for `device_id` (from `device.token.rotate`),
    /// when that device is this one. Returns whether it was stored.
    pub fn store_own_token(
        &mut self,
        device_id: &str,
        role: &str,
        token: SecretValue,
        scopes: Vec<String>,
    ) -> Result<bool, StoreError> {
        if device_id != self.device_id {
            return Ok(false);
        }
        self.store.put(&self.target.url, role, token, scopes)?;
        Ok(true)
    }

    /// Closes politely.
    pub async fn close(self) {
        self.conn.close().await;
    }
}
