//! One client session on the gateway wire protocol (OpenClaw protocol 4), as the real CLI speaks it:
//! `connect.challenge` event → `connect` request → `hello-ok` → `health` → close.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use driftless_protocol::device_auth::{self, SignedFields};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// Longest a single step (TCP connect, upgrade, one reply) may take before the session counts as
/// failed: bounds every scenario even when a server stops answering.
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
}

/// A small WebSocket buffer configuration: idle connections in the client should not each hold the
/// default 128 KiB read buffer (10,000 of them would swamp the bench's own memory).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
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
    let (ws, _) = connect(server, source, Credential::Shared(token), scopes, device).await?;
    Ok(ws)
}

/// [`open_authenticated`] with any credential; also returns the `hello-ok` payload.
async fn connect(
    server: SocketAddr,
    source: IpAddr,
    credential: Credential<'_>,
    scopes: &[&str],
    device: Option<&SigningKey>,
) -> Result<(Ws, Value), SessionError> {
    let mut ws = step(open(server, source)).await??;
    // The challenge comes first, unsolicited; the nonce only matters to signed devices.
    let first = step(next_json(&mut ws)).await??;
    if first.get("event").and_then(Value::as_str) != Some("connect.challenge") {
        return Err(SessionError::Io(format!(
            "expected connect.challenge, got {}",
            summary(&first)
        )));
    }
    let (auth, token) = match credential {
        Credential::Shared(t) => (json!({"token": t}), t),
        Credential::DeviceToken(t) => (json!({"deviceToken": t}), t),
    };
    let mut connect = json!({
        "type": "req", "id": "1", "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "cli", "version": "driftless-bench", "platform": "linux",
                       "deviceFamily": "Linux", "mode": "cli"},
            "caps": [], "role": "operator", "scopes": scopes,
            "auth": auth,
        }
    });
    if let Some(key) = device {
        let nonce = first
            .pointer("/payload/nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| SessionError::Io("connect.challenge without a nonce".into()))?;
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        // The same builder and signature the real client uses (driftless-protocol).
        let proof = device_auth::prove(
            key,
            &SignedFields {
                client_id: "cli",
                client_mode: "cli",
                role: "operator",
                scopes: &scopes,
                signed_at_ms: now_ms(),
                token: Some(token),
                nonce,
                platform: Some("linux"),
                device_family: Some("Linux"),
            },
        );
        connect["params"]["device"] = serde_json::to_value(proof).expect("a proof serializes");
    }
    step(ws.send(Message::text(connect.to_string())))
        .await?
        .map_err(ws_err)?;
    let res = step(response(&mut ws, "1")).await??;
    if res.get("ok").and_then(Value::as_bool) == Some(true) {
        let payload = res.get("payload").cloned().unwrap_or(Value::Null);
        Ok((ws, payload))
    } else {
        Err(rejection(&res))
    }
}

/// Connects once with the shared token and the signed `device` and returns the device token the
/// gateway hands out in `hello-ok` (pairing the device first if needed, silently on loopback).
pub async fn device_token(
    server: SocketAddr,
    source: IpAddr,
    token: &str,
    device: &SigningKey,
) -> Result<String, SessionError> {
    let (ws, hello) = connect(
        server,
        source,
        Credential::Shared(token),
        &["operator.read"],
        Some(device),
    )
    .await?;
    close(ws).await;
    hello
        .pointer("/auth/deviceToken")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SessionError::Io("hello-ok without auth.deviceToken".into()))
}

/// Sends one request and waits for its response, skipping events. `Ok(payload)` on `ok: true`.
pub async fn call(ws: &mut Ws, id: &str, method: &str) -> Result<Value, SessionError> {
    let req = json!({"type": "req", "id": id, "method": method, "params": {}});
    step(ws.send(Message::text(req.to_string())))
        .await?
        .map_err(ws_err)?;
    let res = step(response(ws, id)).await?.map_err(|e| match e {
        // A close in the middle of an authenticated session is a drop, whatever its code.
        SessionError::Unavailable => SessionError::Dropped(1013),
        other => other,
    })?;
    if res.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(res.get("payload").cloned().unwrap_or(Value::Null))
    } else {
        Err(rejection(&res))
    }
}

/// Closes cleanly: sends a close frame and waits (bounded) for the server's echo.
pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Keeps an authenticated connection idle: reads (and discards) server events until the server
/// closes it. Reading matters: a server that finds its socket unread could count it as stuck.
pub async fn hold(mut ws: Ws) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
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
    let (mut ws, _) = connect(server, source, credential, &["operator.read"], device).await?;
    let result = call(&mut ws, "2", "health").await.map(drop);
    close(ws).await;
    result
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn step<T>(fut: impl Future<Output = T>) -> Result<T, SessionError> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::Io(format!("no answer within {STEP_TIMEOUT:?}")))
}

async fn open(server: SocketAddr, source: IpAddr) -> Result<Ws, SessionError> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| SessionError::Io(format!("socket: {e}")))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| SessionError::Io(format!("bind {source}: {e}")))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| SessionError::Io(format!("connect {}: {e}", server)))?;
    stream
        .set_nodelay(true)
        .map_err(|e| SessionError::Io(format!("nodelay: {e}")))?;
    let url = format!("ws://{}/", server);
    let (ws, _) = client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(ws_err)?;
    Ok(ws)
}

/// The next text frame as JSON. A close frame becomes the matching error.
async fn next_json(ws: &mut Ws) -> Result<Value, SessionError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|e| SessionError::Io(format!("server sent invalid JSON: {e}")));
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| f.code).unwrap_or(CloseCode::Status);
                return Err(if code == CloseCode::Again {
                    SessionError::Unavailable
                } else {
                    SessionError::Dropped(code.into())
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_err(e)),
            None => return Err(SessionError::Io("connection closed".into())),
        }
    }
}

/// Reads frames until the response with `id`, skipping events (`health`, `tick`, ...).
async fn response(ws: &mut Ws, id: &str) -> Result<Value, SessionError> {
    loop {
        let frame = next_json(ws).await?;
        if frame.get("type").and_then(Value::as_str) == Some("res")
            && frame.get("id").and_then(Value::as_str) == Some(id)
        {
            return Ok(frame);
        }
    }
}

fn rejection(res: &Value) -> SessionError {
    let code = res
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if code == "UNAVAILABLE" {
        SessionError::Unavailable
    } else {
        SessionError::Rejected(code.to_string())
    }
}

fn ws_err(e: WsError) -> SessionError {
    match e {
        WsError::Http(resp) if resp.status().as_u16() == 503 => SessionError::Unavailable,
        other => SessionError::Io(other.to_string()),
    }
}

/// A frame reduced to its type and name, for error messages (never the payload: it may carry data
/// the bench should not print).
fn summary(frame: &Value) -> String {
    let kind = frame.get("type").and_then(Value::as_str).unwrap_or("?");
    let name = frame
        .get("event")
        .or_else(|| frame.get("method"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind} {name}")
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
