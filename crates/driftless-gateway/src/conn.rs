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
use crate::devices;
use crate::metrics::{HandshakeLabels, OutcomeLabels};
use crate::secrets::{Check, now_ms};
use driftless_protocol::device_auth;

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
    /// The paired device on this connection, if it sent a verified identity.
    pub device_id: Option<String>,
    /// Authenticated with that device's token (not the shared secret).
    pub device_token_auth: bool,
    /// A device token minted for this connection, returned once in hello-ok.
    pub issued: Option<crate::devices::IssuedToken>,
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

    let outcome = handshake(&mut ws, peer, &state, &conn_id, &preauth).await;
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
    preauth: &crate::PreauthSlot,
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
            // The socket stopped reading mid-frame: a frame far over the pre-auth cap.
            Some(Err(_)) if preauth.over_budget() => return Err(too_large()),
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
        return connect(&text, peer, state, conn_id, &nonce);
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
    nonce: &str,
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
    let unauthorized = |f: AuthFailure| {
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
    };
    // Step 5: the shared secret. A failure with nothing else to try is final here, so wrong
    // credentials are reported as such whatever the device block holds.
    let shared = authenticate(&params, peer, state);
    let auth = params.auth.clone().unwrap_or_default();
    let explicit = auth.device_token.clone().filter(|t| !t.is_empty());
    let candidate = explicit.clone().or(auth.token.filter(|t| !t.is_empty()));
    if let Err(f) = shared
        && (params.device.is_none() || candidate.is_none())
    {
        return Err(unauthorized(f));
    }
    // Step 7: the device proof, in the documented order.
    let device = match &params.device {
        None => None,
        Some(v) => Some(verify_device(v, &params, nonce, &req.id)?),
    };
    // Step 8: failing the shared secret, this device's own token.
    let (secret_generation, device_token_auth) = match shared {
        Ok(g) => (g, false),
        Err(f) => {
            let (Some(dev), Some(candidate)) = (&device, candidate) else {
                return Err(unauthorized(f));
            };
            if let Err(retry_after_ms) = state.limiter.attempt(peer.ip()) {
                state.metrics.limiter_rejections.inc();
                return Err(unauthorized(AuthFailure::RateLimited { retry_after_ms }));
            }
            let cd = connecting(dev, &params, peer);
            match devices::verify_device_token(&*state.devices, &cd, &candidate, now_ms()) {
                Ok(devices::TokenCheck::Ok) => {
                    state.limiter.success(peer.ip());
                    (None, true)
                }
                // Reported as a device-token mismatch only when the client said it was one.
                Ok(devices::TokenCheck::Rejected(_)) if explicit.is_some() => {
                    return Err(Reject::with_error(
                        "unauthorized",
                        &req.id,
                        close::POLICY,
                        device_token_mismatch(),
                    ));
                }
                Ok(devices::TokenCheck::Rejected(_)) => return Err(unauthorized(f)),
                Err(e) => return Err(store_failure(&req.id, &e)),
            }
        }
    };
    // Device-less shared-secret clients keep the scopes they ask for; probes get none.
    let scopes = if params.client.mode == "probe" && device.is_none() {
        Vec::new()
    } else {
        params.scopes.clone()
    };
    // Steps 10-11: pairing and token issuance.
    let mut issued = None;
    if let Some(dev) = &device {
        let cd = connecting(dev, &params, peer);
        let local = devices::is_local(peer.ip(), &state.local_addresses);
        match devices::on_connect(
            &*state.devices,
            &cd,
            !device_token_auth,
            device_token_auth,
            local,
            now_ms(),
        ) {
            Ok(devices::PairingOutcome::Paired { issued: i, event }) => {
                issued = i;
                if let Some(event) = event {
                    state.announce(event);
                }
            }
            Ok(devices::PairingOutcome::Required {
                request_id,
                reason,
                event,
            }) => {
                // Announced before the device hears back, so an operator sees the request first.
                if let Some(event) = event {
                    state.announce(event);
                }
                tracing::info!(%peer, device_id = %dev.device_id, request_id, reason, "pairing required");
                return Err(Reject::with_error(
                    "pairing_required",
                    &req.id,
                    close::POLICY,
                    ErrorShape::new(codes::NOT_PAIRED, "pairing required").with_details(
                        serde_json::json!({"code": "PAIRING_REQUIRED", "requestId": request_id, "reason": reason}),
                    ),
                ));
            }
            Err(e) => return Err(store_failure(&req.id, &e)),
        }
    }
    let session = Session {
        conn_id: conn_id.to_owned(),
        role: params.role.clone(),
        scopes,
        protocol,
        secret_generation,
        connect_id: req.id,
        device_id: device.map(|d| d.device_id),
        device_token_auth,
        issued,
    };
    Ok(session)
}

/// Parses and verifies the `device` block (step 7), in the documented order.
fn verify_device(
    raw: &serde_json::Value,
    params: &ConnectParams,
    nonce: &str,
    id: &str,
) -> Result<device_auth::VerifiedDevice, Reject> {
    let proof: device_auth::DeviceProof = serde_json::from_value(raw.clone()).map_err(|e| {
        invalid(
            id,
            format!(
                "invalid connect params: device: {}",
                without_quoted(&e.to_string())
            ),
        )
    })?;
    let fields = device_auth::SignedFields {
        client_id: &params.client.id,
        client_mode: &params.client.mode,
        role: &params.role,
        scopes: &params.scopes,
        signed_at_ms: proof.signed_at,
        token: params.auth.as_ref().and_then(|a| {
            device_auth::signature_token(
                a.token.as_deref(),
                a.device_token.as_deref(),
                a.bootstrap_token.as_deref(),
            )
        }),
        nonce: &proof.nonce,
        platform: Some(params.client.platform.as_str()),
        device_family: params.client.device_family.as_deref(),
    };
    device_auth::verify(&proof, &fields, nonce, now_ms()).map_err(|e| {
        Reject::with_error(
            "device_auth",
            id,
            close::POLICY,
            ErrorShape::new(codes::INVALID_REQUEST, e.message()).with_details(e.details()),
        )
    })
}

fn connecting<'a>(
    dev: &'a device_auth::VerifiedDevice,
    params: &'a ConnectParams,
    peer: SocketAddr,
) -> devices::ConnectingDevice<'a> {
    devices::ConnectingDevice {
        device_id: &dev.device_id,
        public_key: &dev.public_key,
        client_id: &params.client.id,
        client_mode: &params.client.mode,
        display_name: params.client.display_name.as_deref(),
        platform: Some(params.client.platform.as_str()),
        device_family: params.client.device_family.as_deref(),
        role: &params.role,
        scopes: &params.scopes,
        remote_ip: peer.ip(),
    }
}

/// `unauthorized: device token mismatch` (the client should re-pair or fall back to the shared secret).
fn device_token_mismatch() -> ErrorShape {
    ErrorShape::new(
        codes::INVALID_REQUEST,
        "unauthorized: device token mismatch (rotate/reissue device token)",
    )
    .with_details(serde_json::json!({
        "code": "AUTH_DEVICE_TOKEN_MISMATCH",
        "authReason": "device_token_mismatch",
        "canRetryWithDeviceToken": false,
        "recommendedNextStep": "update_auth_credentials",
    }))
}

fn store_failure(id: &str, e: &devices::StoreError) -> Reject {
    tracing::error!(error = %e, "device store failed during a handshake");
    Reject::with_error(
        "unavailable",
        id,
        close::POLICY,
        ErrorShape::new(
            codes::UNAVAILABLE,
            "device store unavailable (see the gateway log)",
        ),
    )
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
    match crate::reload::check_shared(state, &candidate) {
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

/// After the handshake: hello-ok, then requests, events and control changes until close.
/// Consecutive role refusals a session may collect; the next one closes it 1008.
const MAX_ROLE_REFUSALS: u32 = 10;
const REPEATED_UNAUTHORIZED_REASON: &str = "repeated unauthorized calls";

async fn serve(ws: &mut WebSocket, state: &Arc<State>, session: &Session) -> (u16, String) {
    // Subscribed before hello-ok: a shutdown the client may trigger as soon as it has its hello
    // must still reach it as a `shutdown` event, not only as a bare close; likewise an event
    // published once the client holds its hello reaches it.
    let mut control = state.secrets.control.subscribe();
    let mut events = state.events.subscribe();
    let mut device_events = state.device_events.subscribe();
    let hello = crate::methods::hello_ok(state, session);
    if !send(ws, &Frame::ok(&session.connect_id, hello)).await {
        return (0, "send failed".into());
    }
    // A rotation (or a shutdown) may have happened between the auth check and now.
    let c = *control.borrow_and_update();
    if let Some(r) = control_event(ws, &c, session).await {
        return r;
    }
    let mut role_refusals = 0u32;
    loop {
        tokio::select! {
            // In order: an event published before a request arrives goes out before its answer.
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return (close::SERVICE_RESTART, close::SERVICE_RESTART_REASON.into());
                }
                let c = *control.borrow_and_update();
                if let Some(r) = control_event(ws, &c, session).await {
                    return r;
                }
            }
            ev = device_events.recv(), if session.device_id.is_some() => {
                if let Ok(d) = ev
                    && session.device_id.as_deref() == Some(d.device_id.as_str())
                    && d.role.as_deref().is_none_or(|r| r == session.role)
                {
                    return (close::AUTH_CHANGED, d.reason.into());
                }
            }
            event = events.recv() => {
                match event {
                    Ok(b) if crate::methods::may_receive(session, b.scope) => {
                        if ws.send(Message::Text(b.text.as_ref().into())).await.is_err() {
                            return (0, "send failed".into());
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
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
                // OpenClaw's unauthorized-flood guard: a client that keeps calling what its role
                // may not is misbehaving, not retrying.
                role_refusals = if crate::methods::is_role_refusal(&frame) { role_refusals + 1 } else { 0 };
                if role_refusals > MAX_ROLE_REFUSALS {
                    return (close::POLICY, REPEATED_UNAUTHORIZED_REASON.into());
                }
            }
        }
    }
}

/// Acts on a control state of an authenticated session: on shutdown sends the `shutdown` event
/// and closes 1012; a session on a secret whose grace has ended closes 4001.
async fn control_event(
    ws: &mut WebSocket,
    c: &crate::secrets::Control,
    session: &Session,
) -> Option<(u16, String)> {
    if c.shutdown {
        let ev = Frame::event(
            "shutdown",
            serde_json::json!({"reason": "gateway stopping"}),
            None,
        );
        send(ws, &ev).await;
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
