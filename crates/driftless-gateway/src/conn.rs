//! One WebSocket connection: challenge, `connect` handshake, then requests and events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use driftless_core::config::AuthMode;
use driftless_protocol::{
    self as proto, AuthFailure, ConnectParams, ErrorShape, Frame, close, codes,
};

use crate::State;
use crate::metrics::{HandshakeLabels, OutcomeLabels};
use crate::secrets::{Check, now_ms};

/// An authenticated session.
pub(crate) struct Session {
    pub conn_id: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub protocol: u32,
    /// Generation of the shared secret it authenticated with (`None` in mode `none`).
    pub secret_generation: Option<u64>,
    /// The `connect` request's id, which hello-ok answers.
    pub connect_id: String,
}

/// A handshake that ends the connection: an optional error response, then a close frame.
struct Reject {
    outcome: &'static str,
    response: Option<Box<Frame>>,
    code: u16,
    reason: String,
}

impl Reject {
    fn with_error(outcome: &'static str, id: &str, code: u16, err: ErrorShape) -> Reject {
        Reject {
            outcome,
            reason: err.message.clone(),
            response: Some(Box::new(Frame::err(id, err))),
            code,
        }
    }
}

/// Decrements the open-connection count however the task ends.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.connections_open.dec();
    }
}

fn auth_method(mode: AuthMode) -> &'static str {
    mode.as_str()
}

pub(crate) async fn run(
    mut ws: WebSocket,
    peer: SocketAddr,
    state: Arc<State>,
    preauth: crate::PreauthSlot,
) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    state.metrics.connections_open.inc();
    let _open = OpenGuard(state.clone());
    let conn_id = uuid::Uuid::new_v4().to_string();
    let method = auth_method(state.secrets.mode);
    tracing::debug!(%peer, conn_id, "connection opened");

    let outcome = handshake(&mut ws, peer, &state, &conn_id).await;
    drop(preauth);
    let (code, reason) = match outcome {
        Err(r) => {
            state
                .metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    outcome: r.outcome,
                    method,
                })
                .inc();
            if let Some(frame) = r.response {
                let _ = ws.send(Message::Text(frame.to_text().into())).await;
            }
            if r.code != 0 {
                send_close(&mut ws, r.code, &r.reason).await;
            }
            tracing::info!(
                %peer, conn_id, auth_method = method, outcome = r.outcome,
                close_code = r.code, reason = %r.reason, "connection closed during handshake"
            );
            return;
        }
        Ok(session) => {
            state
                .metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    outcome: "ok",
                    method,
                })
                .inc();
            tracing::info!(
                %peer, conn_id, auth_method = method, role = %session.role,
                protocol = session.protocol, "connection accepted"
            );
            serve(&mut ws, &state, &session).await
        }
    };
    if code != 0 {
        send_close(&mut ws, code, &reason).await;
    }
    tracing::info!(%peer, conn_id, auth_method = method, close_code = code, reason, "connection closed");
}

async fn send_close(ws: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is at most 123 bytes on the wire; OpenClaw truncates to 120.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason[..end].into(),
        })))
        .await;
}

async fn send(ws: &mut WebSocket, frame: &Frame) -> bool {
    ws.send(Message::Text(frame.to_text().into())).await.is_ok()
}

async fn handshake(
    ws: &mut WebSocket,
    peer: SocketAddr,
    state: &Arc<State>,
    conn_id: &str,
) -> Result<Session, Reject> {
    let closed = |outcome| Reject {
        outcome,
        response: None,
        code: 0,
        reason: String::new(),
    };
    let nonce = uuid::Uuid::new_v4().to_string();
    if !send(ws, &proto::challenge(&nonce, now_ms())).await {
        return Err(closed("closed"));
    }
    let mut control = state.secrets.control.subscribe();
    let timeout = tokio::time::sleep(state.handshake_timeout);
    tokio::pin!(timeout);
    loop {
        let msg = tokio::select! {
            _ = &mut timeout => return Err(Reject {
                outcome: "timeout", response: None, code: close::NORMAL, reason: String::new(),
            }),
            changed = control.changed() => {
                if changed.is_err() || control.borrow().shutdown {
                    return Err(Reject {
                        outcome: "shutdown", response: None,
                        code: close::SERVICE_RESTART, reason: close::SERVICE_RESTART_REASON.into(),
                    });
                }
                continue;
            }
            msg = ws.recv() => msg,
        };
        let text = match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(closed("closed")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => {
                if b.len() > proto::MAX_PREAUTH_PAYLOAD_BYTES {
                    return Err(too_large());
                }
                return Err(Reject {
                    outcome: "invalid",
                    response: None,
                    code: close::POLICY,
                    reason: "invalid request frame".into(),
                });
            }
        };
        if text.len() > proto::MAX_PREAUTH_PAYLOAD_BYTES {
            return Err(too_large());
        }
        return connect(&text, peer, state, conn_id);
    }
}

fn too_large() -> Reject {
    Reject {
        outcome: "too_large",
        response: None,
        code: close::TOO_LARGE,
        reason: close::PREAUTH_TOO_LARGE_REASON.into(),
    }
}

fn invalid(id: &str, message: String) -> Reject {
    Reject::with_error(
        "invalid",
        id,
        close::POLICY,
        ErrorShape::new(codes::INVALID_REQUEST, message),
    )
}

/// Validates the first frame and authenticates it.
fn connect(
    text: &str,
    peer: SocketAddr,
    state: &Arc<State>,
    conn_id: &str,
) -> Result<Session, Reject> {
    // Not JSON at all: OpenClaw closes 1000 without a frame.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| Reject {
        outcome: "invalid",
        response: None,
        code: close::NORMAL,
        reason: String::new(),
    })?;
    let req = match serde_json::from_value::<Frame>(value) {
        Ok(Frame::Req(r)) => r,
        _ => {
            return Err(Reject {
                outcome: "invalid",
                response: None,
                code: close::POLICY,
                reason: "invalid request frame".into(),
            });
        }
    };
    if req.method != "connect" {
        return Err(invalid(
            &req.id,
            "invalid handshake: first request must be connect".into(),
        ));
    }
    let params: ConnectParams = serde_json::from_value(
        req.params.clone().unwrap_or(serde_json::Value::Null),
    )
    .map_err(|e| {
        invalid(
            &req.id,
            format!("invalid connect params: {}", without_quoted(&e.to_string())),
        )
    })?;
    if params.role != "operator" && params.role != "node" {
        return Err(invalid(&req.id, "invalid role".into()));
    }
    let Some(protocol) = proto::negotiate(params.min_protocol, params.max_protocol) else {
        return Err(Reject::with_error(
            "protocol_mismatch",
            &req.id,
            close::PROTOCOL_MISMATCH,
            ErrorShape::protocol_mismatch(params.min_protocol, params.max_protocol),
        ));
    };
    let secret_generation = authenticate(&params, peer, state).map_err(|f| {
        let outcome = match f {
            AuthFailure::RateLimited { .. } => "rate_limited",
            _ => "unauthorized",
        };
        match f {
            // No credential and no device: OpenClaw asks for a device identity.
            AuthFailure::TokenMissing | AuthFailure::PasswordMissing if params.device.is_none() => {
                Reject::with_error(
                    outcome,
                    &req.id,
                    close::POLICY,
                    ErrorShape::new(codes::NOT_PAIRED, "device identity required")
                        .with_details(serde_json::json!({"code": "DEVICE_IDENTITY_REQUIRED"})),
                )
            }
            _ => Reject::with_error(
                outcome,
                &req.id,
                close::POLICY,
                f.error(params.device.is_some()),
            ),
        }
    })?;
    // Device-less shared-secret clients keep the scopes they ask for; probes get none.
    let scopes = if params.client.mode == "probe" {
        Vec::new()
    } else {
        params.scopes.clone()
    };
    let session = Session {
        conn_id: conn_id.to_owned(),
        role: params.role.clone(),
        scopes,
        protocol,
        secret_generation,
        connect_id: req.id,
    };
    Ok(session)
}

/// serde quotes offending *values* in double quotes (`invalid type: string "…"`); a value may be a
/// credential sent in the wrong place, so it never goes back out or into a log.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for ch in message.chars() {
        if ch == '"' {
            if !inside {
                out.push_str("\"…\"");
            }
            inside = !inside;
        } else if !inside {
            out.push(ch);
        }
    }
    out
}

/// Checks the shared secret. Returns the secret generation the client matched.
fn authenticate(
    params: &ConnectParams,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Result<Option<u64>, AuthFailure> {
    let mode = state.secrets.mode;
    let auth = params.auth.clone().unwrap_or_default();
    // OpenClaw accepts the token sent as `password` and vice versa.
    let (candidate, missing, mismatch) = match mode {
        AuthMode::None => return Ok(None),
        AuthMode::Token => (
            auth.token.or(auth.password),
            AuthFailure::TokenMissing,
            AuthFailure::TokenMismatch,
        ),
        AuthMode::Password => (
            auth.password.or(auth.token),
            AuthFailure::PasswordMissing,
            AuthFailure::PasswordMismatch,
        ),
    };
    let Some(candidate) = candidate.filter(|c| !c.is_empty()) else {
        return Err(missing);
    };
    let ip = peer.ip();
    if let Err(retry_after_ms) = state.limiter.attempt(ip) {
        state.metrics.limiter_rejections.inc();
        return Err(AuthFailure::RateLimited { retry_after_ms });
    }
    match state.secrets.check(&candidate) {
        Check::Ok(generation) => {
            state.limiter.success(ip);
            state
                .metrics
                .auth_checks
                .get_or_create(&OutcomeLabels { outcome: "ok" })
                .inc();
            Ok(Some(generation))
        }
        Check::Mismatch => {
            state
                .metrics
                .auth_checks
                .get_or_create(&OutcomeLabels {
                    outcome: "mismatch",
                })
                .inc();
            Err(mismatch)
        }
    }
}

/// After the handshake: hello-ok, then requests, ticks and control changes until close.
async fn serve(ws: &mut WebSocket, state: &Arc<State>, session: &Session) -> (u16, String) {
    let hello = crate::methods::hello_ok(state, session);
    if !send(ws, &Frame::ok(&session.connect_id, hello)).await {
        return (0, "send failed".into());
    }
    let mut control = state.secrets.control.subscribe();
    let mut ticks = state.ticks.subscribe();
    // A rotation may have ended this secret's grace between the check and now.
    if let Some(r) = control_close(&control.borrow_and_update(), session) {
        return r;
    }
    loop {
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return (close::SERVICE_RESTART, close::SERVICE_RESTART_REASON.into());
                }
                let c = *control.borrow_and_update();
                if c.shutdown {
                    let ev = Frame::event("shutdown", serde_json::json!({"reason": "gateway stopping"}), None);
                    send(ws, &ev).await;
                }
                if let Some(r) = control_close(&c, session) {
                    return r;
                }
            }
            tick = ticks.recv() => {
                match tick {
                    Ok(text) => {
                        if ws.send(Message::Text(text.as_ref().into())).await.is_err() {
                            return (0, "send failed".into());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return (close::SERVICE_RESTART, close::SERVICE_RESTART_REASON.into());
                    }
                }
            }
            msg = ws.recv() => {
                let text = match msg {
                    None | Some(Err(_)) => return (0, "connection lost".into()),
                    Some(Ok(Message::Close(_))) => return (0, "client closed".into()),
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                };
                let req = match serde_json::from_str::<Frame>(&text) {
                    Ok(Frame::Req(r)) => r,
                    // Responses/events from a client and malformed frames are ignored.
                    _ => {
                        tracing::debug!(conn_id = session.conn_id, "ignored a non-request frame");
                        continue;
                    }
                };
                let frame = crate::methods::dispatch(state, session, req).await;
                if !send(ws, &frame).await {
                    return (0, "send failed".into());
                }
            }
        }
    }
}

fn control_close(c: &crate::secrets::Control, session: &Session) -> Option<(u16, String)> {
    if c.shutdown {
        return Some((close::SERVICE_RESTART, close::SERVICE_RESTART_REASON.into()));
    }
    match session.secret_generation {
        Some(g) if g < c.min_secret_generation => {
            Some((close::AUTH_CHANGED, close::AUTH_CHANGED_REASON.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_values_are_dropped_from_param_errors() {
        let e = serde_json::from_str::<driftless_protocol::ConnectParams>(
            r#"{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli"},"auth":"secret-in-wrong-place"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("secret-in-wrong-place"),
            "premise: serde echoes values: {e}"
        );
        let clean = super::without_quoted(&e);
        assert!(!clean.contains("secret-in-wrong-place"), "{clean}");
        assert!(clean.starts_with("invalid type: string \"…\""), "{clean}");
    }
}
