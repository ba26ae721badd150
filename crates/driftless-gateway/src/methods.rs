//! `hello-ok` and the RPC methods of this layer. No response carries a secret value.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use driftless_protocol::payloads::{
    Features, Grace, HELLO_OK, Health, HelloAuth, HelloOk, HelloSnapshot, Policy, PresenceEntry,
    Redacted, SecretStatus, SecretsReloadParams, SecretsReloadResult, ServerInfo, StateVersion,
    Status, StatusAuth,
};
use driftless_protocol::scopes::{self, EVENTS, METHODS};
use driftless_protocol::{
    self as proto, ErrorDetails, ErrorShape, IncomingRequest, codes, err_text, ok_text,
};

use crate::State;
use crate::conn::Session;
use crate::devices;
use crate::secrets::now_ms;
use crate::throttle::{LOG_EVERY, Throttle};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PRESENCE_TEXT: &str = concat!(
    "Gateway: driftless ",
    env!("CARGO_PKG_VERSION"),
    " · mode gateway · reason self"
);

/// `hello-ok.features`' two lists, built once: every session borrows them.
static FEATURES: LazyLock<[Vec<Cow<'static, str>>; 2]> = LazyLock::new(|| {
    [
        METHODS.iter().map(|(m, _)| Cow::Borrowed(*m)).collect(),
        EVENTS.iter().map(|(e, _)| Cow::Borrowed(*e)).collect(),
    ]
});

/// Whether `session` may receive an event that needs `scope`: guarded events go only to operators
/// holding the scope (or one covering it), never to another role.
pub(crate) fn may_receive(session: &Session, scope: Option<&str>) -> bool {
    scope.is_none_or(|s| session.role == "operator" && scopes::any_covers(&session.scopes, s))
}

fn uptime_ms(state: &State) -> u64 {
    state.started.elapsed().as_millis() as u64
}

fn health(state: &State) -> Health {
    Health {
        ok: true,
        ts: now_ms(),
        duration_ms: 0,
        uptime_ms: Some(uptime_ms(state)),
        ..Health::default()
    }
}

/// The gateway's own presence entry, borrowing what the state holds.
fn presence(state: &State) -> PresenceEntry<'_> {
    PresenceEntry {
        host: "gateway".into(),
        ip: state.bind.as_str().into(),
        version: VERSION.into(),
        platform: std::env::consts::OS.into(),
        mode: "gateway".into(),
        reason: "self".into(),
        instance_id: state.instance_id.as_str().into(),
        text: PRESENCE_TEXT.into(),
        ts: now_ms(),
    }
}

fn status(state: &State) -> Status {
    let snap = state.secrets.snapshot();
    let behind_fleet = state.secrets.behind_fleet();
    let secrets = snap
        .iter()
        .map(|(name, s)| SecretStatus {
            name: name.clone(),
            kind: s.kind.into(),
            fingerprint: s.value.fingerprint().to_string(),
            can_change_live: s.can_change_live,
            behind_fleet: behind_fleet == Some(name.as_str()),
        })
        .collect();
    let grace = state.secrets.grace().map(|(fp, until)| Grace {
        previous_fingerprint: fp,
        ends_at_ms: until,
    });
    Status {
        version: Some(VERSION.into()),
        uptime_ms: Some(uptime_ms(state)),
        auth: StatusAuth {
            mode: Some(state.secrets.mode.as_str().into()),
            fingerprint: state.secrets.accepted_fingerprint(),
            grace,
        },
        secrets,
        last_reload: state.secrets.last_reload(),
        connections: Some(state.connections.load(Ordering::SeqCst)),
        ..Status::default()
    }
}

/// The fleet's live replicas (none without a fleet). The database unreachable: none, logged.
async fn replicas(state: &State) -> Vec<driftless_protocol::payloads::ReplicaStatus> {
    let listed = crate::auth::on_fleet(&state.devices, |fleet| fleet.replicas()).await;
    listed.map(Option::unwrap_or_default).unwrap_or_else(|e| {
        static LOG: Throttle = Throttle::new(LOG_EVERY);
        if let Some(held_back) = LOG.admit() {
            tracing::warn!(error = %e, held_back, "cannot list the fleet's replicas for status");
        }
        Vec::new()
    })
}

/// `hello-ok.auth`: how the client authenticated, and its device token when one goes back (a
/// newly issued one, or its current one).
pub(crate) fn hello_auth<'a>(state: &State, session: &'a Session) -> HelloAuth<'a> {
    let method = if session.device_token_auth {
        "device-token"
    } else {
        state.secrets.mode.as_str()
    };
    // The scopes as granted, in the order asked for (OpenClaw 2026.9), also beside a token.
    HelloAuth {
        method: Some(method.into()),
        role: session.role.as_str().into(),
        scopes: session.scopes.as_slice().into(),
        device_token: session
            .issued
            .as_ref()
            .map(|t| Redacted(t.token.expose().to_owned())),
        issued_at_ms: session.issued.as_ref().map(|t| t.issued_at_ms),
    }
}

/// The JSON text of the response answering `connect`.
pub(crate) fn hello_ok_text(state: &State, session: &Session) -> String {
    let presence = presence(state);
    let hello = HelloOk {
        kind: HELLO_OK.into(),
        protocol: session.protocol,
        server: ServerInfo {
            version: VERSION.into(),
            conn_id: session.conn_id.as_str().into(),
        },
        features: Features {
            methods: FEATURES[0].as_slice().into(),
            events: FEATURES[1].as_slice().into(),
        },
        snapshot: HelloSnapshot {
            presence: std::slice::from_ref(&presence).into(),
            health: health(state),
            state_version: StateVersion {
                presence: 1,
                health: 1,
            },
            uptime_ms: uptime_ms(state),
            auth_mode: None,
        },
        auth: Some(hello_auth(state, session)),
        policy: Policy {
            max_payload: proto::MAX_PAYLOAD_BYTES as u64,
            max_buffered_bytes: proto::MAX_BUFFERED_BYTES as u64,
            tick_interval_ms: state.tick_interval.as_millis() as u64,
        },
    };
    ok_text(&session.connect_id, &hello)
}

const UNAUTHORIZED_ROLE: &str = "unauthorized role: ";

/// The answer to one request, as JSON text.
pub(crate) struct Reply {
    pub text: String,
    /// The request was refused because of the session's role (what OpenClaw's flood guard
    /// counts).
    pub role_refusal: bool,
}

impl Reply {
    fn ok(id: &str, payload: &impl serde::Serialize) -> Reply {
        Reply {
            text: ok_text(id, payload),
            role_refusal: false,
        }
    }

    pub(crate) fn err(id: &str, error: ErrorShape) -> Reply {
        Reply {
            text: err_text(id, &error),
            role_refusal: false,
        }
    }

    /// OpenClaw's refusal of a method the session's role may not call.
    pub(crate) fn role_refusal(id: &str, role: &str) -> Reply {
        Reply {
            role_refusal: true,
            ..Reply::err(
                id,
                ErrorShape::new(codes::INVALID_REQUEST, format!("{UNAUTHORIZED_ROLE}{role}")),
            )
        }
    }
}

pub(crate) async fn dispatch(
    state: &Arc<State>,
    session: &Session,
    req: IncomingRequest<'_>,
) -> Reply {
    let id = &*req.id;
    let Some(scope) = scopes::method_scope(&req.method) else {
        let message = if req.method == "connect" {
            "connect already completed on this connection".to_owned()
        } else {
            format!("unknown method: {}", req.method)
        };
        return Reply::err(id, ErrorShape::new(codes::INVALID_REQUEST, message));
    };
    // Every method but `health` is an operator method (OpenClaw's `authorizeGatewayMethod`).
    if scope.is_some() && session.role != "operator" {
        return Reply::role_refusal(id, &session.role);
    }
    if let Some(scope) = scope
        && !scopes::any_covers(&session.scopes, scope)
    {
        return Reply::err(id, ErrorShape::missing_scope(scope));
    }
    match &*req.method {
        "health" => Reply::ok(id, &health(state)),
        "status" => {
            let mut st = status(state);
            st.replicas = replicas(state).await;
            Reply::ok(id, &st)
        }
        "system-presence" => Reply::ok(id, &[presence(state)]),
        "secrets.reload" => {
            // Lenient as before: params that are not an object with a boolean `endGrace` mean
            // "keep the grace".
            let end_grace = proto::parse_params::<SecretsReloadParams>(req.params)
                .map(|p| p.end_grace)
                .unwrap_or(false);
            match crate::reload::reload_now(state.clone(), "rpc").await {
                Ok(changed) => {
                    if end_grace && state.secrets.in_fleet() {
                        // The grace is the fleet's: it ends for every replica.
                        let ended =
                            crate::auth::on_fleet(&state.devices, |fleet| fleet.end_grace()).await;
                        match ended.map(Option::flatten) {
                            Ok(view) => {
                                if let Some(view) = view {
                                    crate::reload::serve_fleet_view(state, view);
                                }
                            }
                            Err(e) => {
                                return Reply::err(
                                    id,
                                    ErrorShape::new(
                                        codes::UNAVAILABLE,
                                        format!(
                                            "secrets.reload: cannot end the fleet's grace: {e}; \
                                             the previous secret stays accepted until its grace ends"
                                        ),
                                    ),
                                );
                            }
                        }
                    } else if end_grace {
                        state.secrets.end_grace(None);
                    }
                    Reply::ok(
                        id,
                        &SecretsReloadResult {
                            ok: true,
                            warning_count: 0,
                            changed,
                        },
                    )
                }
                Err(message) => Reply::err(
                    id,
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
            let params = req
                .params
                .and_then(|p| serde_json::from_str(p.get()).ok())
                .unwrap_or(serde_json::Value::Null);
            let store = state.devices.clone();
            let method = m.to_owned();
            let result = tokio::task::spawn_blocking(move || {
                devices::handle_method(&*store, &method, &params, &caller, now_ms())
            })
            .await;
            match result {
                Ok(Ok((payload, disconnects, event))) => {
                    for d in disconnects {
                        state.changed(devices::StoreEvent::Disconnect(d));
                    }
                    if let Some(event) = event {
                        state.changed(devices::StoreEvent::Pairing(event));
                    }
                    Reply::ok(id, &payload)
                }
                Ok(Err(e)) => {
                    let mut shape = ErrorShape::new(e.code, e.message);
                    if let Some(code) = e.detail_code {
                        shape = shape.with_details(ErrorDetails::code(code));
                    }
                    Reply::err(id, shape)
                }
                Err(_) => Reply::err(
                    id,
                    ErrorShape::new(codes::UNAVAILABLE, "device store task failed"),
                ),
            }
        }
        _ => unreachable!("every listed method is handled"),
    }
}
