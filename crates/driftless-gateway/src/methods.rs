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
use driftless_protocol::template::{self, Template, json_text, write_json};
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

fn health(ts: u64, uptime_ms: u64) -> Health {
    Health {
        ok: true,
        ts,
        duration_ms: 0,
        uptime_ms: Some(uptime_ms),
        ..Health::default()
    }
}

/// The gateway's own presence entry at `ts`, borrowing what the state holds.
fn presence(state: &State, ts: u64) -> PresenceEntry<'_> {
    PresenceEntry {
        host: "gateway".into(),
        ip: state.bind.as_str().into(),
        version: VERSION.into(),
        platform: std::env::consts::OS.into(),
        mode: "gateway".into(),
        reason: "self".into(),
        instance_id: state.instance_id.as_str().into(),
        text: PRESENCE_TEXT.into(),
        ts,
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
    hello_ok_at(state, session, now_ms(), uptime_ms(state))
}

fn hello_ok_at(state: &State, session: &Session, now: u64, uptime: u64) -> String {
    let Some(template) = &state.prerendered().hello else {
        return hello_ok_whole(state, &HelloValues::of(state, session, now, uptime));
    };
    template.render(HOLES_ROOM, |hole, out| match hole {
        HelloHole::Id => write_json(out, &session.connect_id),
        HelloHole::Protocol => write_json(out, &session.protocol),
        HelloHole::ConnId => write_json(out, session.conn_id.as_str()),
        HelloHole::PresenceTs | HelloHole::HealthTs => write_json(out, &now),
        HelloHole::HealthUptime | HelloHole::Uptime => write_json(out, &uptime),
        HelloHole::Auth => write_json(out, &hello_auth(state, session)),
    })
}

/// What changes in hello-ok from one session to the next; the rest is the same for all.
struct HelloValues<'a> {
    id: &'a str,
    protocol: u32,
    conn_id: &'a str,
    presence_ts: u64,
    health_ts: u64,
    health_uptime_ms: u64,
    uptime_ms: u64,
    auth: HelloAuth<'a>,
}

impl<'a> HelloValues<'a> {
    fn of(state: &State, session: &'a Session, now: u64, uptime: u64) -> HelloValues<'a> {
        HelloValues {
            id: &session.connect_id,
            protocol: session.protocol,
            conn_id: session.conn_id.as_str(),
            presence_ts: now,
            health_ts: now,
            health_uptime_ms: uptime,
            uptime_ms: uptime,
            auth: hello_auth(state, session),
        }
    }
}

/// hello-ok's text for `v`, serialized whole from its types.
fn hello_ok_whole(state: &State, v: &HelloValues<'_>) -> String {
    let presence = presence(state, v.presence_ts);
    let hello = HelloOk {
        kind: HELLO_OK.into(),
        protocol: v.protocol,
        server: ServerInfo {
            version: VERSION.into(),
            conn_id: v.conn_id.into(),
        },
        features: Features {
            methods: FEATURES[0].as_slice().into(),
            events: FEATURES[1].as_slice().into(),
        },
        snapshot: HelloSnapshot {
            presence: std::slice::from_ref(&presence).into(),
            health: health(v.health_ts, v.health_uptime_ms),
            state_version: StateVersion {
                presence: 1,
                health: 1,
            },
            uptime_ms: v.uptime_ms,
            auth_mode: None,
        },
        auth: Some(v.auth.clone()),
        policy: Policy {
            max_payload: proto::MAX_PAYLOAD_BYTES as u64,
            max_buffered_bytes: proto::MAX_BUFFERED_BYTES as u64,
            tick_interval_ms: state.tick_interval.as_millis() as u64,
        },
    };
    ok_text(v.id, &hello)
}

/// The health reply's text, as [`hello_ok_text`].
fn health_text(state: &State, id: &str) -> String {
    let (now, uptime) = (now_ms(), uptime_ms(state));
    let Some(template) = &state.prerendered().health else {
        return ok_text(id, &health(now, uptime));
    };
    template.render(HOLES_ROOM, |hole, out| match hole {
        HealthHole::Id => write_json(out, &id),
        HealthHole::Ts => write_json(out, &now),
        HealthHole::Uptime => write_json(out, &uptime),
    })
}

/// Room for a frame's holes: a request id, a connection id, timestamps and `hello-ok.auth`.
const HOLES_ROOM: usize = 256;

#[derive(Debug, Clone, Copy)]
enum HelloHole {
    Id,
    Protocol,
    ConnId,
    PresenceTs,
    HealthTs,
    HealthUptime,
    Uptime,
    Auth,
}

#[derive(Debug, Clone, Copy)]
enum HealthHole {
    Id,
    Ts,
    Uptime,
}

/// hello-ok and the health reply, serialized once with placeholders where a session's values go
/// ([`proto::template`]): a session then serializes only its values. `None` if a placeholder
/// cannot be told from the fixed text (it always can: they are NUL-prefixed strings and
/// numbers no timestamp reaches), and then each frame is serialized whole.
pub(crate) struct Prerendered {
    hello: Option<Template<HelloHole>>,
    health: Option<Template<HealthHole>>,
}

impl Prerendered {
    pub(crate) fn new(state: &State) -> Prerendered {
        let [id, conn_id, role] = [0, 1, 2].map(template::placeholder_str);
        let [presence_ts, health_ts, health_uptime, uptime] =
            [3, 4, 5, 6].map(template::placeholder_u64);
        let protocol = u32::MAX;
        let auth = HelloAuth {
            method: None,
            role: role.as_str().into(),
            scopes: Cow::Borrowed(&[]),
            device_token: None,
            issued_at_ms: None,
        };
        let hello_text = hello_ok_whole(
            state,
            &HelloValues {
                id: &id,
                protocol,
                conn_id: &conn_id,
                presence_ts,
                health_ts,
                health_uptime_ms: health_uptime,
                uptime_ms: uptime,
                auth: auth.clone(),
            },
        );
        let hello = Template::new(
            &hello_text,
            &[
                (HelloHole::Id, json_text(&id)),
                (HelloHole::Protocol, json_text(&protocol)),
                (HelloHole::ConnId, json_text(&conn_id)),
                (HelloHole::PresenceTs, json_text(&presence_ts)),
                (HelloHole::HealthTs, json_text(&health_ts)),
                (HelloHole::HealthUptime, json_text(&health_uptime)),
                (HelloHole::Uptime, json_text(&uptime)),
                (HelloHole::Auth, json_text(&auth)),
            ],
        );
        let health_text = ok_text(&id, &health(health_ts, health_uptime));
        let health = Template::new(
            &health_text,
            &[
                (HealthHole::Id, json_text(&id)),
                (HealthHole::Ts, json_text(&health_ts)),
                (HealthHole::Uptime, json_text(&health_uptime)),
            ],
        );
        Prerendered {
            hello: hello.ok(),
            health: health.ok(),
        }
    }
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
        "health" => Reply {
            text: health_text(state, id),
            role_refusal: false,
        },
        "status" => {
            let mut st = status(state);
            st.replicas = replicas(state).await;
            Reply::ok(id, &st)
        }
        "system-presence" => Reply::ok(id, &[presence(state, now_ms())]),
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

#[cfg(test)]
mod tests {
    use driftless_core::SecretInput;
    use driftless_core::config::{Config, LoadedConfig};
    use driftless_core::env::Env;
    use driftless_core::secret::SecretValue;

    use super::*;

    async fn gateway(dir: &std::path::Path) -> crate::Gateway {
        let mut config = Config::default();
        config.gateway.port = 0;
        let loaded = LoadedConfig {
            config,
            path: dir.join("config.toml"),
        };
        let env = Env::from_pairs([
            ("HOME", dir.to_str().unwrap()),
            ("DRIFTLESS_STATE_DIR", dir.to_str().unwrap()),
        ]);
        let token = SecretInput::Literal(SecretValue::new("canary-gateway-token".into()));
        crate::Gateway::bind(&loaded, &env, Some(token))
            .await
            .unwrap()
    }

    fn session(connect_id: &str, scopes: &[&str], issued: bool) -> Session {
        Session {
            conn_id: crate::conn::fresh_ids().0,
            role: "operator".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            protocol: proto::MAX_PROTOCOL,
            secret_generation: Some(1),
            connect_id: connect_id.into(),
            device_id: issued.then(|| "device-1".into()),
            device_token_auth: issued,
            issued: issued.then(|| devices::IssuedToken {
                device_id: "device-1".into(),
                role: "operator".into(),
                token: SecretValue::new("issued-device-token".into()),
                scopes: vec!["operator.read".into()],
                issued_at_ms: 1_700_000_000_123,
            }),
            connect_params: None,
            browser: false,
        }
    }

    #[tokio::test]
    async fn prerendered_frames_are_the_frames_serialized_whole() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path()).await;
        let state = &gw.state;
        assert!(
            state.prerendered().hello.is_some(),
            "hello-ok has a template"
        );
        assert!(
            state.prerendered().health.is_some(),
            "health has a template"
        );
        for session in [
            session("1", &["operator.read"], false),
            session("id \"with\" quotes\n", &[], false),
            session("7", &["operator.admin", "operator.pairing"], true),
        ] {
            let (now, uptime) = (1_764_000_000_000 + session.connect_id.len() as u64, 42);
            let rendered = hello_ok_at(state, &session, now, uptime);
            let whole = hello_ok_whole(state, &HelloValues::of(state, &session, now, uptime));
            assert_eq!(rendered, whole);
            let proto::Frame::Res(res) = serde_json::from_str(&rendered).unwrap() else {
                panic!("hello-ok is a response: {rendered}");
            };
            assert_eq!(
                (res.id.as_str(), res.ok),
                (session.connect_id.as_str(), true)
            );
            let hello: HelloOk<'static> = serde_json::from_value(res.payload.unwrap()).unwrap();
            assert_eq!(hello.server.conn_id, session.conn_id.as_str());
            assert_eq!(hello.snapshot.health.ts, now);
            let auth = hello.auth.unwrap();
            assert_eq!(*auth.scopes, session.scopes);
            assert_eq!(auth.issued_at_ms.is_some(), session.issued.is_some());
        }
        let id = "h\"1";
        let rendered = health_text(state, id);
        let (ts, uptime) = {
            let v: serde_json::Value = serde_json::from_str(&rendered).unwrap();
            let p = &v["payload"];
            (p["ts"].as_u64().unwrap(), p["uptimeMs"].as_u64().unwrap())
        };
        assert_eq!(rendered, ok_text(id, &health(ts, uptime)));
    }
}
