//! A minimal gateway client: connect, await the challenge, send `connect`, await hello-ok, then
//! request/response. Events other than responses are skipped.

use std::time::Duration;

use driftless_core::SecretValue;
use driftless_protocol::device_auth::SignedFields;

use crate::heal::Issued;
use crate::identity::DeviceIdentity;
use crate::wire::{Incoming, OpenOptions, Wire, WireError, display_url};
use driftless_protocol::{self as proto, ConnectAuth, ErrorShape, Frame};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// The credential to present (chosen by [`crate::credentials::Candidates`]).
#[derive(Debug, Clone)]
pub enum Credential {
    /// A shared gateway token: `auth.token`.
    Token(SecretValue),
    /// A shared gateway password: `auth.password`.
    Password(SecretValue),
    /// A device token issued to this device: `auth.deviceToken`.
    DeviceToken(SecretValue),
    None,
}

impl Credential {
    /// The token the device signature covers (`auth.token ?? auth.deviceToken`).
    pub fn signature_token(&self) -> Option<&str> {
        match self {
            Credential::Token(v) | Credential::DeviceToken(v) => Some(v.expose()),
            Credential::Password(_) | Credential::None => None,
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub credential: Credential,
    /// The role to connect as ([`ROLE`] unless probing a token stored for another role).
    pub role: String,
    pub scopes: Vec<String>,
    /// `client.mode` (`cli`, `probe`, ...).
    pub mode: String,
    /// `client.version` (this crate's version unless a tool names itself, like the bench).
    pub client_version: String,
    /// `client.deviceFamily` (signed with the device when set).
    pub device_family: Option<String>,
    pub min_protocol: u32,
    pub max_protocol: u32,
    /// Bound on the whole handshake (TCP connect, upgrade, challenge, hello-ok, retries while the
    /// gateway says it is starting), and on each later request's whole exchange. Events the
    /// gateway sends meanwhile do not extend it.
    pub timeout: Duration,
    /// Sign the `connect` with this device identity.
    pub device: Option<std::sync::Arc<DeviceIdentity>>,
    /// Local address to connect from, buffer sizes, Nagle (see [`OpenOptions`]).
    pub open: OpenOptions,
    /// Wait and retry while the gateway answers `UNAVAILABLE` with `retryAfterMs` (OpenClaw while
    /// it starts), within `timeout`. The bench turns this off to count such answers.
    pub retry_unavailable: bool,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>, credential: Credential) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            credential,
            role: ROLE.to_owned(),
            scopes: vec![proto::scopes::READ.to_owned()],
            mode: "cli".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            device_family: None,
            min_protocol: proto::MIN_PROTOCOL,
            max_protocol: proto::MAX_PROTOCOL,
            timeout: Duration::from_secs(10),
            device: None,
            open: OpenOptions::default(),
            retry_unavailable: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `url` is shown without any `user:password@`.
    #[error(
        "cannot reach the gateway at {url}: {message}; is it running (`driftless gateway run`)?"
    )]
    Unreachable {
        url: String,
        message: String,
        /// The HTTP status of a refused upgrade (503: over the pre-auth budget).
        http_status: Option<u16>,
    },
    #[error("the gateway refused the connection: {} ({})", .error.message, .error.detail_code().unwrap_or(&.error.code))]
    Rejected {
        error: ErrorShape,
        close: Option<u16>,
    },
    #[error("{method} failed: {} ({})", .error.message, .error.detail_code().unwrap_or(&.error.code))]
    Rpc { method: String, error: ErrorShape },
    #[error("the gateway closed the connection ({code} {reason})")]
    Closed { code: u16, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out after {0:?} waiting for the gateway")]
    Timeout(Duration),
}

impl ClientError {
    /// The gateway refused a device token (`AUTH_DEVICE_TOKEN_MISMATCH`), the trigger for
    /// self-healing.
    pub fn is_device_token_mismatch(&self) -> bool {
        match self {
            ClientError::Rejected { error, .. } => {
                error.detail_code() == Some("AUTH_DEVICE_TOKEN_MISMATCH")
            }
            ClientError::Closed { code, reason } => {
                *code == 1008 && reason.contains("device token mismatch")
            }
            _ => false,
        }
    }

    /// An authentication refusal (wrong/missing credential, rate limited, device required).
    pub fn is_auth(&self) -> bool {
        match self {
            ClientError::Rejected { error, .. } => {
                error.message.starts_with("unauthorized") || error.code == proto::codes::NOT_PAIRED
            }
            _ => false,
        }
    }

    fn from_wire(e: WireError, timeout: Duration) -> ClientError {
        match e {
            WireError::Timeout => ClientError::Timeout(timeout),
            WireError::Closed { code, reason } => ClientError::Closed { code, reason },
            WireError::Invalid(m) => {
                ClientError::Protocol(format!("invalid frame from gateway: {m}"))
            }
            WireError::Io(m) => ClientError::Protocol(m),
            // Only `Wire::open` returns this, and `connect` maps it with the URL.
            WireError::Open { message, .. } => ClientError::Protocol(message),
        }
    }
}

/// An authenticated connection.
pub struct Connection {
    wire: Wire,
    hello: Value,
    next_id: u64,
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// The role this client connects as.
pub const ROLE: &str = "operator";

/// How long to wait for the close that follows a refused `connect` (for its code).
const CLOSE_AFTER_REFUSAL: Duration = Duration::from_secs(2);

/// Connects and completes the handshake, all within `opts.timeout`. While the gateway answers
/// `UNAVAILABLE` with `retryAfterMs` (starting up), waits that long and tries again, if the wait
/// still ends before the deadline.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
    let deadline = Instant::now() + opts.timeout;
    loop {
        match connect_once(opts, deadline).await {
            Err(ClientError::Rejected { error, close })
                if opts.retry_unavailable && error.code == proto::codes::UNAVAILABLE =>
            {
                let wait = error.retry_after_ms.map(Duration::from_millis);
                match wait {
                    Some(wait) if Instant::now() + wait < deadline => {
                        tracing::info!(
                            url = %display_url(&opts.url),
                            "the gateway is not ready ({}); retrying in {wait:?}",
                            error.message
                        );
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(ClientError::Rejected { error, close }),
                }
            }
            other => return other,
        }
    }
}

/// The `connect` params for `opts`, signed over `nonce` when a device is set. `auth` is omitted
/// when there is no credential (OpenClaw refuses `"auth": null` as invalid params).
pub fn connect_params(opts: &ConnectOptions, nonce: &str) -> proto::ConnectParams<'static> {
    let auth = match &opts.credential {
        Credential::Token(t) => Some(ConnectAuth {
            token: Some(t.expose().to_owned().into()),
            ..Default::default()
        }),
        Credential::Password(p) => Some(ConnectAuth {
            password: Some(p.expose().to_owned().into()),
            ..Default::default()
        }),
        Credential::DeviceToken(t) => Some(ConnectAuth {
            device_token: Some(t.expose().to_owned().into()),
            ..Default::default()
        }),
        Credential::None => None,
    };
    let platform = std::env::consts::OS;
    let device = opts.device.as_ref().map(|identity| {
        let proof = identity.prove_now(&SignedFields {
            client_id: CLIENT_ID,
            client_mode: &opts.mode,
            role: &opts.role,
            scopes: &opts.scopes,
            signed_at_ms: 0,
            token: opts.credential.signature_token(),
            nonce,
            platform: Some(platform),
            device_family: opts.device_family.as_deref(),
        });
        serde_json::to_value(proof).expect("a proof serializes")
    });
    proto::ConnectParams {
        min_protocol: opts.min_protocol,
        max_protocol: opts.max_protocol,
        client: proto::ClientInfo {
            id: CLIENT_ID.into(),
            version: opts.client_version.clone().into(),
            platform: platform.into(),
            mode: opts.mode.clone().into(),
            instance_id: None,
            display_name: None,
            device_family: opts.device_family.clone().map(Into::into),
        },
        caps: vec![],
        auth,
        role: opts.role.clone(),
        scopes: opts.scopes.clone(),
        device,
    }
}

/// A result that does not have its method's payload shape.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {method} result: {message}")]
pub struct UnexpectedResult {
    method: String,
    message: String,
}

impl From<UnexpectedResult> for ClientError {
    fn from(e: UnexpectedResult) -> ClientError {
        ClientError::Protocol(e.to_string())
    }
}

/// A `method`'s result `payload` read as `R`.
pub fn result_as<R: DeserializeOwned>(
    method: &str,
    payload: &Value,
) -> Result<R, UnexpectedResult> {
    R::deserialize(payload).map_err(|e| UnexpectedResult {
        method: method.to_owned(),
        message: e.to_string(),
    })
}

/// `client.id`: OpenClaw accepts only its own list of ids; `cli` is the one for a command line.
const CLIENT_ID: &str = "cli";

async fn connect_once(opts: &ConnectOptions, deadline: Instant) -> Result<Connection, ClientError> {
    let wire_err = |e| ClientError::from_wire(e, opts.timeout);
    let mut wire = Wire::open(&opts.url, &opts.open, deadline)
        .await
        .map_err(|e| {
            let (message, http_status) = match e {
                WireError::Open { message, status } => (message, status),
                WireError::Timeout => (format!("no answer within {:?}", opts.timeout), None),
                other => (other.to_string(), None),
            };
            ClientError::Unreachable {
                url: display_url(&opts.url),
                message,
                http_status,
            }
        })?;
    let challenge = wire.recv_frame(deadline).await.map_err(wire_err)?;
    let nonce = match &challenge {
        Frame::Event(e) if e.event == "connect.challenge" => e
            .payload
            .as_ref()
            .and_then(|p| proto::Challenge::deserialize(p).ok())
            .map(|c| c.nonce)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ClientError::Protocol("connect challenge missing nonce".into()))?,
        Frame::Event(e) => {
            return Err(ClientError::Protocol(format!(
                "expected connect.challenge, got the event {}",
                e.event
            )));
        }
        _ => {
            return Err(ClientError::Protocol(
                "expected connect.challenge, got a response".into(),
            ));
        }
    };
    let params = serde_json::to_value(connect_params(opts, &nonce)).expect("params serialize");
    let id = format!("1:{}", uuid::Uuid::new_v4());
    let r = wire
        .call(&id, "connect", Some(params), deadline)
        .await
        .map_err(wire_err)?;
    if r.ok {
        return Ok(Connection {
            wire,
            hello: r.payload.unwrap_or(Value::Null),
            next_id: 2,
            timeout: opts.timeout,
        });
    }
    let error = r
        .error
        .unwrap_or_else(|| ErrorShape::new(proto::codes::INVALID_REQUEST, "connect failed"));
    let close = match wire
        .recv(deadline.min(Instant::now() + CLOSE_AFTER_REFUSAL))
        .await
    {
        Ok(Incoming::Closed(code, _)) => Some(code),
        _ => None,
    };
    Err(ClientError::Rejected { error, close })
}

impl Connection {
    /// The hello-ok payload.
    pub fn hello(&self) -> &Value {
        &self.hello
    }

    /// The hello-ok payload, typed; `None` when it does not have hello-ok's shape.
    pub fn hello_ok(&self) -> Option<proto::HelloOk<'static>> {
        proto::HelloOk::deserialize(&self.hello).ok()
    }

    /// The device token the gateway issued in `hello-ok.auth`, if any (it is shown only once).
    pub fn issued(&self) -> Option<Issued> {
        let auth = self.hello_ok()?.auth?;
        let token = SecretValue::new(auth.device_token?.0);
        driftless_core::redact::register(&token);
        Some(Issued {
            token,
            role: Some(auth.role.into_owned())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| ROLE.to_owned()),
            scopes: auth.scopes.into_owned(),
        })
    }

    /// Sends one request and waits for its response, skipping events; the whole exchange within
    /// the connection's timeout.
    pub async fn request(
        &mut self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, ClientError> {
        let id = format!("{}:{}", self.next_id, uuid::Uuid::new_v4());
        self.next_id += 1;
        let deadline = Instant::now() + self.timeout;
        let r = self
            .wire
            .call(&id, method, params, deadline)
            .await
            .map_err(|e| ClientError::from_wire(e, self.timeout))?;
        if r.ok {
            Ok(r.payload.unwrap_or(Value::Null))
        } else {
            Err(ClientError::Rpc {
                method: method.to_owned(),
                error: r.error.unwrap_or_else(|| {
                    ErrorShape::new(proto::codes::INVALID_REQUEST, "request failed")
                }),
            })
        }
    }

    /// Sends one request with typed `params` and reads its result as `R` (what a peer adds
    /// beyond `R`'s fields is ignored).
    pub async fn call<R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: Option<&impl Serialize>,
    ) -> Result<R, ClientError> {
        let params = params
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ClientError::Protocol(format!("{method} params: {e}")))?;
        let payload = self.request(method, params).await?;
        Ok(result_as(method, &payload)?)
    }

    /// Waits for the next event (or the close), for callers that watch the connection.
    pub async fn next_event(
        &mut self,
        timeout: Duration,
    ) -> Result<proto::EventFrame, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Frame::Event(e) = self
                .wire
                .recv_frame(deadline)
                .await
                .map_err(|e| ClientError::from_wire(e, timeout))?
            {
                return Ok(e);
            }
        }
    }

    /// The open socket, for a caller that holds the session idle (the bench).
    pub fn into_wire(self) -> Wire {
        self.wire
    }

    /// Closes politely: sends the close frame without waiting for the gateway's answer.
    pub async fn close(self) {
        self.wire.close(Instant::now()).await;
    }
}
