//! `hello-ok` and the RPC methods of this layer. No response carries a secret value.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use driftless_protocol::{self as proto, ErrorShape, Frame, RequestFrame, codes, scopes};
use serde_json::{Value, json};

use crate::State;
use crate::conn::Session;
use crate::devices;
use crate::secrets::now_ms;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Methods served, with the scope each needs (`None`: any authenticated client).
const METHODS: &[(&str, Option<&str>)] = &[
    ("health", None),
    ("status", Some(scopes::READ)),
    ("system-presence", Some(scopes::READ)),
    ("secrets.reload", Some(scopes::ADMIN)),
    ("device.pair.list", Some(devices::PAIRING_SCOPE)),
    ("device.pair.approve", Some(devices::PAIRING_SCOPE)),
    ("device.pair.reject", Some(devices::PAIRING_SCOPE)),
    ("device.pair.remove", Some(devices::PAIRING_SCOPE)),
    ("device.token.rotate", Some(devices::PAIRING_SCOPE)),
    ("device.token.revoke", Some(devices::PAIRING_SCOPE)),
];

/// Events sent, with the scope a session needs to receive each (OpenClaw's `EVENT_SCOPE_GUARDS`;
/// `None`: every session).
const EVENTS: &[(&str, Option<&str>)] = &[
    ("connect.challenge", None),
    ("tick", None),
    ("shutdown", None),
    ("device.pair.requested", Some(devices::PAIRING_SCOPE)),
    ("device.pair.resolved", Some(devices::PAIRING_SCOPE)),
];

/// The scope a session needs to receive `event`.
pub(crate) fn event_scope(event: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(e, _)| *e == event)
        .and_then(|(_, s)| *s)
}

/// Whether `session` may receive an event that needs `scope`: guarded events go only to operators
/// holding the scope (or admin), never to another role.
pub(crate) fn may_receive(session: &Session, scope: Option<&str>) -> bool {
    scope.is_none_or(|s| session.role == "operator" && has_scope(&session.scopes, s))
}

/// Whether `granted` covers `needed` (admin covers everything, write covers read).
fn has_scope(granted: &[String], needed: &str) -> bool {
    granted.iter().any(|g| {
        g == needed || g == scopes::ADMIN || (g == scopes::WRITE && needed == scopes::READ)
    })
}

fn uptime_ms(state: &State) -> u64 {
    state.started.elapsed().as_millis() as u64
}

fn health(state: &State) -> Value {
    json!({
        "ok": true,
        "ts": now_ms(),
        "durationMs": 0,
        "uptimeMs": uptime_ms(state),
        "channels": {},
        "channelOrder": [],
        "channelLabels": {},
        "agents": [],
    })
}

fn presence(state: &State) -> Value {
    let host = "gateway";
    json!([{
        "host": host,
        "ip": state.bind,
        "version": VERSION,
        "platform": std::env::consts::OS,
        "mode": "gateway",
        "reason": "self",
        "instanceId": state.instance_id,
        "text": format!("Gateway: driftless {VERSION} · mode gateway · reason self"),
        "ts": now_ms(),
    }])
}

fn status(state: &State) -> Value {
    let snap = state.secrets.snapshot();
    let secrets: Vec<Value> = snap
        .iter()
        .map(|(name, s)| {
            json!({
                "name": name,
                "kind": s.kind,
                "fingerprint": s.value.fingerprint(),
                "canChangeLive": s.can_change_live,
            })
        })
        .collect();
    let grace = state
        .secrets
        .grace()
        .map(|(fp, until)| json!({"previousFingerprint": fp, "endsAtMs": until}));
    json!({
        "version": VERSION,
        "uptimeMs": uptime_ms(state),
        "auth": {
            "mode": state.secrets.mode.as_str(),
            "fingerprint": state.secrets.current().map(|s| s.fingerprint().clone()),
            "grace": grace,
        },
        "secrets": secrets,
        "lastReload": state.secrets.last_reload(),
        "connections": state.connections.load(Ordering::SeqCst),
    })
}

/// `hello-ok.auth`: how the client authenticated, and a newly issued device token (shown once).
fn hello_auth(state: &State, session: &Session) -> Value {
    let method = if session.device_token_auth {
        "device-token"
    } else {
        state.secrets.mode.as_str()
    };
    let mut auth = json!({"method": method, "role": session.role, "scopes": session.scopes});
    if let Some(t) = &session.issued {
        auth["deviceToken"] = json!(t.token.expose());
        auth["scopes"] = json!(t.scopes);
        auth["issuedAtMs"] = json!(t.issued_at_ms);
    }
    auth
}

pub(crate) fn hello_ok(state: &State, session: &Session) -> Value {
    json!({
        "type": "hello-ok",
        "protocol": session.protocol,
        "server": {"version": VERSION, "connId": session.conn_id},
        "features": {
            "methods": METHODS.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            "events": EVENTS.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        },
        "snapshot": {
            "presence": presence(state),
            "health": health(state),
            "stateVersion": {"presence": 1, "health": 1},
            "uptimeMs": uptime_ms(state),
        },
        "auth": hello_auth(state, session),
        "policy": {
            "maxPayload": proto::MAX_PAYLOAD_BYTES,
            "maxBufferedBytes": proto::MAX_BUFFERED_BYTES,
            "tickIntervalMs": state.tick_interval.as_millis() as u64,
        },
    })
}

const UNAUTHORIZED_ROLE: &str = "unauthorized role: ";

/// Whether `frame` refuses a request because of the session's role (what OpenClaw's flood guard
/// counts).
pub(crate) fn is_role_refusal(frame: &Frame) -> bool {
    matches!(frame, Frame::Res(r) if r.error.as_ref().is_some_and(|e| e.message.starts_with(UNAUTHORIZED_ROLE)))
}

pub(crate) async fn dispatch(state: &Arc<State>, session: &Session, req: RequestFrame) -> Frame {
    let Some((_, scope)) = METHODS.iter().find(|(m, _)| *m == req.method) else {
        let message = if req.method == "connect" {
            "connect already completed on this connection".to_owned()
        } else {
            format!("unknown method: {}", req.method)
        };
        return Frame::err(&req.id, ErrorShape::new(codes::INVALID_REQUEST, message));
    };
    // Every method but `health` is an operator method (OpenClaw's `authorizeGatewayMethod`).
    if scope.is_some() && session.role != "operator" {
        return Frame::err(
            &req.id,
            ErrorShape::new(
                codes::INVALID_REQUEST,
                format!("{UNAUTHORIZED_ROLE}{}", session.role),
            ),
        );
    }
    if let Some(scope) = scope
        && !has_scope(&session.scopes, scope)
    {
        return Frame::err(&req.id, ErrorShape::missing_scope(scope));
    }
    match req.method.as_str() {
        "health" => Frame::ok(&req.id, health(state)),
        "status" => Frame::ok(&req.id, status(state)),
        "system-presence" => Frame::ok(&req.id, presence(state)),
        "secrets.reload" => {
            let end_grace = req
                .params
                .as_ref()
                .and_then(|p| p.get("endGrace"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match crate::reload::reload_now(state.clone(), "rpc").await {
                Ok(changed) => {
                    if end_grace {
                        state.secrets.end_grace(None);
                    }
                    Frame::ok(
                        &req.id,
                        json!({"ok": true, "warningCount": 0, "changed": changed}),
                    )
                }
                Err(message) => Frame::err(
                    &req.id,
                    ErrorShape::new(
                        codes::UNAVAILABLE,
                        format!("secrets.reload failed: {message}; the previous secrets stay live"),
                    ),
                ),
            }
        }
        m if devices::is_device_method(m) => {
            let caller = devices::Caller {
                scopes: session.scopes.clone(),
                device_id: session
                    .device_id
                    .clone()
                    .filter(|_| session.device_token_auth),
                label: match &session.device_id {
                    Some(d) if session.device_token_auth => {
                        format!("device:{}", &d[..d.len().min(12)])
                    }
                    _ => format!(
                        "{} auth (conn {})",
                        state.secrets.mode.as_str(),
                        session.conn_id
                    ),
                },
            };
            let params = req.params.clone().unwrap_or(Value::Null);
            let store = state.devices.clone();
            let method = m.to_owned();
            let result = tokio::task::spawn_blocking(move || {
                devices::handle_method(&*store, &method, &params, &caller, now_ms())
            })
            .await;
            match result {
                Ok(Ok((payload, disconnects, event))) => {
                    for d in disconnects {
                        // No receivers simply means the device has no open session.
                        let _ = state.device_events.send(d);
                    }
                    if let Some(event) = event {
                        state.announce(event);
                    }
                    Frame::ok(&req.id, payload)
                }
                Ok(Err(e)) => {
                    let mut shape = ErrorShape::new(e.code, e.message);
                    if let Some(code) = e.detail_code {
                        shape = shape.with_details(json!({"code": code}));
                    }
                    Frame::err(&req.id, shape)
                }
                Err(_) => Frame::err(
                    &req.id,
                    ErrorShape::new(codes::UNAVAILABLE, "device store task failed"),
                ),
            }
        }
        _ => unreachable!("every listed method is handled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_implication() {
        let admin = vec![scopes::ADMIN.to_owned()];
        let write = vec![scopes::WRITE.to_owned()];
        assert!(has_scope(&admin, scopes::READ));
        assert!(has_scope(&write, scopes::READ));
        assert!(!has_scope(&write, scopes::ADMIN));
        assert!(!has_scope(&[], scopes::READ));
    }
}
