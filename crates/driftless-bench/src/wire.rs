//! One client session on the gateway wire protocol (OpenClaw protocol 4), as the real CLI speaks it:
//! `connect.challenge` event → `connect` request → `hello-ok` → `health` → close. The socket, the
//! frames and the `connect` params are driftless-client's: one WebSocket client codec for the CLI,
//! the bench and the tests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use driftless_client::connection::{self as client, ClientError, ConnectOptions, Connection};
use driftless_client::identity::DeviceIdentity;
use driftless_client::wire::{Incoming, OpenOptions, Wire, WireError};
use driftless_core::SecretValue;
use driftless_protocol::codes;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// An authenticated socket (the `hello-ok` payload already dropped: 10,000 idle sessions should
/// not each keep one).
pub type Ws = Wire;

/// Longest a session (TCP connect, upgrade, challenge, hello-ok) or one later exchange may take
/// before it counts as failed: bounds every scenario even when a server stops answering.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a session did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The server is starting or over its pre-auth cap (`UNAVAILABLE`, close 1013, HTTP 503).
    Unavailable,
    /// The server answered `connect` with an error (`code`, e.g. `INVALID_REQUEST` for a token
    /// mismatch).
    Rejected(String),
    /// The server closed an authenticated session before it finished (e.g. 4001 on rotation).
    Dropped(u16),
    /// Socket, upgrade or framing failure, or a step that timed out.
    Io(String),
}

impl SessionError {
    /// A short label for counting errors by kind in reports.
    pub fn kind(&self) -> String {
        match self {
            SessionError::Unavailable => "unavailable".into(),
            SessionError::Rejected(code) => format!("rejected:{code}"),
            SessionError::Dropped(code) => format!("dropped:{code}"),
            SessionError::Io(_) => "io".into(),
        }
    }

    fn from_client(e: ClientError) -> SessionError {
        match e {
            ClientError::Unreachable {
                http_status: Some(503),
                ..
            } => SessionError::Unavailable,
            ClientError::Rejected { error, .. } | ClientError::Rpc { error, .. }
                if error.code == codes::UNAVAILABLE =>
            {
                SessionError::Unavailable
            }
            ClientError::Rejected { error, .. } | ClientError::Rpc { error, .. } => {
                SessionError::Rejected(error.code)
            }
            ClientError::Closed { code: 1013, .. } => SessionError::Unavailable,
            ClientError::Closed { code, .. } => SessionError::Dropped(code),
            other => SessionError::Io(other.to_string()),
        }
    }
}

/// What a session presents in `connect.auth`.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// The gateway's shared token (`auth.token`).
    Shared(&'a str),
    /// The device token the gateway issued to the signing device (`auth.deviceToken`), as a
    /// paired client reconnects.
    DeviceToken(&'a str),
}

/// Opens a WebSocket from `source` (a 127.0.0.x address, to spread over the per-IP pre-auth cap)
/// and authenticates as an operator with `token`, and with a signed v3 `device` block over the
/// challenge nonce when `device` is given. Returns the open socket after `hello-ok`.
pub async fn open_authenticated(
    server: SocketAddr,
    source: IpAddr,
    token: &str,
    scopes: &[&str],
    device: Option<&SigningKey>,
) -> Result<Ws, SessionError> {
    let conn = connect(server, source, Credential::Shared(token), scopes, device).await?;
    Ok(conn.into_wire())
}

/// Connects as the real CLI does, through driftless-client (the same codec, params and
/// signature), naming itself `driftless-bench`.
async fn connect(
    server: SocketAddr,
    source: IpAddr,
    credential: Credential<'_>,
    scopes: &[&str],
    device: Option<&SigningKey>,
) -> Result<Connection, SessionError> {
    let credential = match credential {
        Credential::Shared(t) => client::Credential::Token(SecretValue::new(t.to_owned())),
        Credential::DeviceToken(t) => {
            client::Credential::DeviceToken(SecretValue::new(t.to_owned()))
        }
    };
    let mut opts = ConnectOptions::new(format!("ws://{server}/"), credential);
    opts.scopes = scopes.iter().map(|s| s.to_string()).collect();
    opts.client_version = "driftless-bench".into();
    opts.device_family = Some("Linux".into());
    opts.min_protocol = 4;
    opts.max_protocol = 4;
    opts.timeout = STEP_TIMEOUT;
    opts.device = device.map(|k| Arc::new(DeviceIdentity::from_key(k.clone())));
    opts.open = OpenOptions {
        bind_addr: Some(source),
        // Idle connections in the client should not each hold the default 128 KiB read buffer
        // (10,000 of them would swamp the bench's own memory).
        small_buffers: true,
        nodelay: true,
    };
    // The bench counts `UNAVAILABLE` answers; it does not wait them out.
    opts.retry_unavailable = false;
    client::connect(&opts)
        .await
        .map_err(SessionError::from_client)
}

/// Connects once with the shared token and the signed `device` and returns the device token the
/// gateway hands out in `hello-ok` (pairing the device first if needed, silently on loopback).
pub async fn device_token(
    server: SocketAddr,
    source: IpAddr,
    token: &str,
    device: &SigningKey,
) -> Result<String, SessionError> {
    let conn = connect(
        server,
        source,
        Credential::Shared(token),
        &["operator.read"],
        Some(device),
    )
    .await?;
    let issued = conn.issued();
    close(conn.into_wire()).await;
    issued
        .map(|i| i.token.expose().to_owned())
        .ok_or_else(|| SessionError::Io("hello-ok without auth.deviceToken".into()))
}

/// Sends one request and waits for its response, skipping events. `Ok(payload)` on `ok: true`.
pub async fn call(ws: &mut Ws, id: &str, method: &str) -> Result<Value, SessionError> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let res = ws
        .call(id, method, Some(json!({})), deadline)
        .await
        .map_err(|e| match e {
            // A close in the middle of an authenticated session is a drop, whatever its code.
            WireError::Closed { code, .. } => SessionError::Dropped(code),
            other => SessionError::Io(other.to_string()),
        })?;
    match (res.ok, res.error) {
        (true, _) => Ok(res.payload.unwrap_or(Value::Null)),
        (false, Some(e)) if e.code == codes::UNAVAILABLE => Err(SessionError::Unavailable),
        (false, e) => Err(SessionError::Rejected(
            e.map(|e| e.code).unwrap_or_else(|| "unknown".into()),
        )),
    }
}

/// Closes cleanly: sends a close frame and waits (bounded) for the server's echo.
pub async fn close(ws: Ws) {
    ws.close(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
}

/// Keeps an authenticated connection idle: reads (and discards) server events until the server
/// closes it. Reading matters: a server that finds its socket unread could count it as stuck.
pub async fn hold(mut ws: Ws) -> Option<u16> {
    // Held for the whole scenario; the scenario ends it by stopping the server.
    let forever = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        match ws.recv(forever).await {
            Ok(Incoming::Closed(code, _)) if code != 1006 => return Some(code),
            Ok(Incoming::Text(_)) => continue,
            Ok(Incoming::Closed(..)) | Err(_) => return None,
        }
    }
}

/// One full session: open → challenge → connect → health → close. Returns when `health` answered.
pub async fn session(
    server: SocketAddr,
    source: IpAddr,
    credential: Credential<'_>,
    device: Option<&SigningKey>,
) -> Result<(), SessionError> {
    let conn = connect(server, source, credential, &["operator.read"], device).await?;
    let mut ws = conn.into_wire();
    let result = call(&mut ws, "2", "health").await.map(drop);
    close(ws).await;
    result
}

/// GET `path` over plain HTTP/1.1 and return the status code (for `/readyz`).
pub async fn http_status(server: SocketAddr, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next()))
}
