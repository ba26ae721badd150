//! A minimal gateway client: connect, await the challenge, send `connect`, await hello-ok, then
//! request/response. Events other than responses are skipped.

use std::time::Duration;

use driftless_core::SecretValue;
use driftless_protocol::{self as proto, ConnectAuth, ErrorShape, Frame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The shared secret to present.
#[derive(Debug, Clone)]
pub enum Credential {
    Token(SecretValue),
    Password(SecretValue),
    None,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub credential: Credential,
    pub scopes: Vec<String>,
    /// `client.mode` (`cli`, `probe`, ...).
    pub mode: String,
    pub min_protocol: u32,
    pub max_protocol: u32,
    /// Bound on every wait (TCP connect, challenge, hello-ok, each response).
    pub timeout: Duration,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>, credential: Credential) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            credential,
            scopes: vec![proto::scopes::READ.to_owned()],
            mode: "cli".into(),
            min_protocol: proto::MIN_PROTOCOL,
            max_protocol: proto::MAX_PROTOCOL,
            timeout: Duration::from_secs(10),
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

/// Connects and completes the handshake.
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
    let unreachable = |message: String| ClientError::Unreachable {
        url: opts.url.clone(),
        message,
    };
    let (mut ws, _) =
        tokio::time::timeout(opts.timeout, tokio_tungstenite::connect_async(&opts.url))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", opts.timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
    let challenge = next_frame(&mut ws, opts.timeout).await?;
    match &challenge {
        Frame::Event(e) if e.event == "connect.challenge" => {}
        other => {
            return Err(ClientError::Protocol(format!(
                "expected connect.challenge, got {other:?}"
            )));
        }
    }
    let auth = match &opts.credential {
        Credential::Token(t) => Some(ConnectAuth {
            token: Some(t.expose().to_owned()),
            ..Default::default()
        }),
        Credential::Password(p) => Some(ConnectAuth {
            password: Some(p.expose().to_owned()),
            ..Default::default()
        }),
        Credential::None => None,
    };
    let params = json!({
        "minProtocol": opts.min_protocol,
        "maxProtocol": opts.max_protocol,
        "client": {"id": "cli", "version": env!("CARGO_PKG_VERSION"), "platform": std::env::consts::OS, "mode": opts.mode},
        "caps": [],
        "auth": auth,
        "role": "operator",
        "scopes": opts.scopes,
    });
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
