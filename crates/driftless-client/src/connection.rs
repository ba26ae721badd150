//! A minimal gateway client: connect, await the challenge, send `connect`, await hello-ok, then
//! request/response. Events other than responses are skipped.

use std::time::Duration;

use driftless_core::SecretValue;
use driftless_protocol::device_auth::SignedFields;

use crate::heal::Issued;
use crate::identity::DeviceIdentity;
use driftless_protocol::{self as proto, ConnectAuth, ErrorShape, Frame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
    pub min_protocol: u32,
    pub max_protocol: u32,
    /// Bound on every wait (TCP connect, challenge, hello-ok, each response).
    pub timeout: Duration,
    /// Sign the `connect` with this device identity.
    pub device: Option<std::sync::Arc<DeviceIdentity>>,
    /// Local address to connect from (tests use a second loopback address as "another host").
    pub bind_addr: Option<std::net::IpAddr>,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>, credential: Credential) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            credential,
            role: ROLE.to_owned(),
            scopes: vec![proto::scopes::READ.to_owned()],
            mode: "cli".into(),
            min_protocol: proto::MIN_PROTOCOL,
            max_protocol: proto::MAX_PROTOCOL,
            timeout: Duration::from_secs(10),
            device: None,
            bind_addr: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the gateway at {url}: {message}; is it running (`driftless gateway run`)?"
    )]
    Unreachable { url: String, message: String },
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
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An authenticated connection.
pub struct Connection {
    ws: Ws,
    hello: Value,
    next_id: u64,
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

async fn next_frame(ws: &mut Ws, timeout: Duration) -> Result<Frame, ClientError> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?;
        match msg {
            None => {
                return Err(ClientError::Closed {
                    code: 1006,
                    reason: String::new(),
                });
            }
            Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| {
                    ClientError::Protocol(format!("invalid frame from gateway: {e}"))
                });
            }
            Some(Ok(Message::Close(c))) => {
                let (code, reason) = c
                    .map(|c: CloseFrame| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(ClientError::Closed { code, reason });
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// The close code that follows a rejection, if it arrives promptly.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    match next_frame(ws, Duration::from_secs(2)).await {
        Err(ClientError::Closed { code, .. }) => Some(code),
        _ => None,
    }
}

/// The role this client connects as.
pub const ROLE: &str = "operator";

/// Opens the WebSocket, from `opts.bind_addr` when set.
async fn open(
    opts: &ConnectOptions,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    String,
> {
    let Some(local) = opts.bind_addr else {
        return tokio_tungstenite::connect_async(&opts.url)
            .await
            .map_err(|e| e.to_string());
    };
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        opts.url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let remote = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the gateway host has no address")?;
    let socket = if remote.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::new(local, 0))
        .map_err(|e| format!("cannot bind {local}: {e}"))?;
    let stream = socket.connect(remote).await.map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async(&opts.url, MaybeTlsStream::Plain(stream))
        .await
        .map_err(|e| e.to_string())
}

/// Connects and completes the handshake.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
    let unreachable = |message: String| ClientError::Unreachable {
        url: opts.url.clone(),
        message,
    };
    let (mut ws, _) = tokio::time::timeout(opts.timeout, open(opts))
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", opts.timeout)))?
        .map_err(unreachable)?;
    let challenge = next_frame(&mut ws, opts.timeout).await?;
    let nonce = match &challenge {
        Frame::Event(e) if e.event == "connect.challenge" => e
            .payload
            .as_ref()
            .and_then(|p| p.get("nonce"))
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("connect challenge missing nonce".into()))?,
        other => {
            return Err(ClientError::Protocol(format!(
                "expected connect.challenge, got {other:?}"
            )));
        }
    };
    let auth = match &opts.credential {
        Credential::Token(t) => Some(ConnectAuth {
            token: Some(t.expose().to_owned()),
            ..Default::default()
        }),
        Credential::Password(p) => Some(ConnectAuth {
            password: Some(p.expose().to_owned()),
            ..Default::default()
        }),
        Credential::DeviceToken(t) => Some(ConnectAuth {
            device_token: Some(t.expose().to_owned()),
            ..Default::default()
        }),
        Credential::None => None,
    };
    let platform = std::env::consts::OS;
    let mut params = json!({
        "minProtocol": opts.min_protocol,
        "maxProtocol": opts.max_protocol,
        "client": {"id": "cli", "version": env!("CARGO_PKG_VERSION"), "platform": platform, "mode": opts.mode},
        "caps": [],
        "auth": auth,
        "role": opts.role,
        "scopes": opts.scopes,
    });
    if let Some(identity) = &opts.device {
        let proof = identity.prove_now(&SignedFields {
            client_id: "cli",
            client_mode: &opts.mode,
            role: &opts.role,
            scopes: &opts.scopes,
            signed_at_ms: 0,
            token: opts.credential.signature_token(),
            nonce: &nonce,
            platform: Some(platform),
            device_family: None,
        });
        params["device"] = serde_json::to_value(proof).expect("a proof serializes");
    }
    let id = format!("1:{}", uuid::Uuid::new_v4());
    let req = Frame::Req(proto::RequestFrame {
        id: id.clone(),
        method: "connect".into(),
        params: Some(params),
    });
    ws.send(Message::Text(req.to_text().into()))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    loop {
        match next_frame(&mut ws, opts.timeout).await? {
            Frame::Res(r) if r.id == id => {
                if r.ok {
                    return Ok(Connection {
                        ws,
                        hello: r.payload.unwrap_or(Value::Null),
                        next_id: 2,
                        timeout: opts.timeout,
                    });
                }
                let error = r.error.unwrap_or_else(|| {
                    ErrorShape::new(proto::codes::INVALID_REQUEST, "connect failed")
                });
                let close = close_code(&mut ws).await;
                return Err(ClientError::Rejected { error, close });
            }
            _ => continue,
        }
    }
}

impl Connection {
    /// The hello-ok payload.
    pub fn hello(&self) -> &Value {
        &self.hello
    }

    /// The device token the gateway issued in `hello-ok.auth`, if any (it is shown only once).
    pub fn issued(&self) -> Option<Issued> {
        let auth = self.hello.get("auth")?;
        let token = auth.get("deviceToken")?.as_str()?.to_owned();
        let token = SecretValue::new(token);
        driftless_core::redact::register(&token);
        Some(Issued {
            token,
            role: auth
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or(ROLE)
                .to_owned(),
            scopes: auth
                .get("scopes")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default(),
        })
    }

    /// Sends one request and waits for its response, skipping events.
    pub async fn request(
        &mut self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, ClientError> {
        let id = format!("{}:{}", self.next_id, uuid::Uuid::new_v4());
        self.next_id += 1;
        let req = Frame::Req(proto::RequestFrame {
            id: id.clone(),
            method: method.to_owned(),
            params,
        });
        self.ws
            .send(Message::Text(req.to_text().into()))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        loop {
            match next_frame(&mut self.ws, self.timeout).await? {
                Frame::Res(r) if r.id == id => {
                    return if r.ok {
                        Ok(r.payload.unwrap_or(Value::Null))
                    } else {
                        Err(ClientError::Rpc {
                            method: method.to_owned(),
                            error: r.error.unwrap_or_else(|| {
                                ErrorShape::new(proto::codes::INVALID_REQUEST, "request failed")
                            }),
                        })
                    };
                }
                _ => continue,
            }
        }
    }

    /// Waits for the next event (or the close), for callers that watch the connection.
    pub async fn next_event(
        &mut self,
        timeout: Duration,
    ) -> Result<proto::EventFrame, ClientError> {
        loop {
            if let Frame::Event(e) = next_frame(&mut self.ws, timeout).await? {
                return Ok(e);
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
