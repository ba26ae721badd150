//! One WebSocket connection: challenge, the `connect` handshake, then requests and events.
//!
//! The handshake is a pipeline of small steps (read → parse → negotiate → authenticate → prove
//! the device → device-token fallback → pair → session); each refuses with a [`Rejection`], and
//! [`Rejection`] alone maps a refusal to OpenClaw's error frame, close code and metric outcome.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use driftless_core::config::AuthMode;
use driftless_protocol::device_auth::{self, DeviceAuthError, VerifiedDevice};
use driftless_protocol::{
    self as proto, AuthFailure, ConnectParams, ErrorDetails, ErrorShape, IncomingRequest,
    NotARequest, close, codes,
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::State;
use crate::accept::{Preauth, WebSocket};
use crate::auth::{self, SharedRefusal};
use crate::devices::{self, TokenCheck};
use crate::metrics::HandshakeLabels;
use crate::secrets::now_ms;
use crate::throttle::{LOG_EVERY, Throttle};

/// How long a peer that sent Close gets to take our answering Close frame.
const CLOSE_REPLY_DEADLINE: Duration = Duration::from_secs(1);
/// A write to a peer that cannot complete in this time ends the session: the peer has read
/// nothing for that long while its socket was full. Memory is bounded without it (nothing queues
/// beyond the socket and one frame); this frees the session and its task.
pub(crate) const SEND_STALL_LIMIT: Duration = Duration::from_secs(30);
/// What a client is told to wait before trying again when something its handshake needs (the
/// device store, the upstream gateway) is unavailable.
pub(crate) const RETRY_AFTER_MS: u64 = 1000;

/// An authenticated session.
pub(crate) struct Session {
    pub conn_id: UuidText,
    pub role: String,
    /// The scopes granted, in the order the client asked for them.
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
    /// The device's token, returned in hello-ok (newly minted, or its current one).
    pub issued: Option<devices::IssuedToken>,
    /// The `connect` params as sent, kept only for an operator session to relay (front mode).
    pub connect_params: Option<Box<serde_json::value::RawValue>>,
    /// A browser's (its upgrade carried an allowed `Origin`).
    pub browser: bool,
}

/// Why a handshake ended without a session.
#[derive(Debug)]
enum Rejection {
    /// The peer closed or went away.
    Closed {
        peer_sent_close: bool,
    },
    /// A WebSocket protocol violation (RFC 6455 §7.4.1: 1002, 1007, 1009).
    Violation {
        code: u16,
        reason: &'static str,
    },
    Timeout,
    Shutdown,
    TooLarge,
    NotJson,
    NotARequest,
    FirstNotConnect,
    InvalidParams(String),
    InvalidRole,
    ProtocolMismatch {
        min: u32,
        max: u32,
    },
    /// A browser's connect from an origin that is not allowed (`origin`).
    OriginNotAllowed(crate::origin::Refusal),
    Unauthorized {
        failure: AuthFailure,
        has_device: bool,
    },
    DeviceProof(DeviceAuthError),
    DeviceTokenMismatch,
    PairingRequired {
        request_id: String,
        reason: &'static str,
    },
    StoreUnavailable,
    /// Front mode: the upstream session could not be opened.
    Upstream(Box<ErrorShape>),
}

impl Rejection {
    /// The `outcome` label of `driftless_handshakes_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Rejection::Closed { .. } => "closed",
            Rejection::Violation { .. } => "protocol_violation",
            Rejection::Timeout => "timeout",
            Rejection::Shutdown => "shutdown",
            Rejection::TooLarge => "too_large",
            Rejection::NotJson
            | Rejection::NotARequest
            | Rejection::FirstNotConnect
            | Rejection::InvalidParams(_)
            | Rejection::InvalidRole => "invalid",
            Rejection::ProtocolMismatch { .. } => "protocol_mismatch",
            Rejection::OriginNotAllowed(_) => "origin_not_allowed",
            Rejection::Unauthorized {
                failure: AuthFailure::RateLimited { .. },
                ..
            } => "rate_limited",
            Rejection::Unauthorized { .. } | Rejection::DeviceTokenMismatch => "unauthorized",
            Rejection::DeviceProof(_) => "device_auth",
            Rejection::PairingRequired { .. } => "pairing_required",
            Rejection::StoreUnavailable => "unavailable",
            Rejection::Upstream(_) => "upstream_unavailable",
        }
    }

    /// The error answering `connect`, if the refusal has one (OpenClaw's shapes, shared design
    /// §2.7 and appendix 3.5).
    fn error(&self) -> Option<ErrorShape> {
        let invalid = |m: &str| ErrorShape::new(codes::INVALID_REQUEST, m);
        Some(match self {
            Rejection::Closed { .. }
            | Rejection::Violation { .. }
            | Rejection::Timeout
            | Rejection::Shutdown
            | Rejection::TooLarge
            | Rejection::NotJson
            | Rejection::NotARequest => return None,
            Rejection::FirstNotConnect => {
                invalid("invalid handshake: first request must be connect")
            }
            Rejection::InvalidParams(m) => invalid(&format!("invalid connect params: {m}")),
            Rejection::InvalidRole => invalid("invalid role"),
            Rejection::ProtocolMismatch { min, max } => ErrorShape::protocol_mismatch(*min, *max),
            Rejection::OriginNotAllowed(reason) => invalid(
                "origin not allowed (open the Control UI from the gateway host or allow it in \
                 gateway.allowed_origins)",
            )
            .with_details(ErrorDetails {
                reason: Some(Cow::Borrowed(reason)),
                ..ErrorDetails::code("CONTROL_UI_ORIGIN_NOT_ALLOWED")
            }),
            // No credential and no device: OpenClaw asks for a device identity.
            Rejection::Unauthorized {
                failure: AuthFailure::TokenMissing | AuthFailure::PasswordMissing,
                has_device: false,
            } => ErrorShape::new(codes::NOT_PAIRED, "device identity required")
                .with_details(ErrorDetails::code("DEVICE_IDENTITY_REQUIRED")),
            Rejection::Unauthorized {
                failure,
                has_device,
            } => failure.error(*has_device),
            Rejection::DeviceProof(e) => invalid(e.message()).with_details(e.details()),
            // The client should re-pair or fall back to the shared secret.
            Rejection::DeviceTokenMismatch => {
                invalid("unauthorized: device token mismatch (rotate/reissue device token)")
                    .with_details(ErrorDetails {
                        auth_reason: Some("device_token_mismatch".into()),
                        can_retry_with_device_token: Some(false),
                        recommended_next_step: Some("update_auth_credentials".into()),
                        ..ErrorDetails::code("AUTH_DEVICE_TOKEN_MISMATCH")
                    })
            }
            Rejection::PairingRequired { request_id, reason } => {
                ErrorShape::new(codes::NOT_PAIRED, "pairing required").with_details(ErrorDetails {
                    request_id: Some(request_id.clone()),
                    reason: Some((*reason).into()),
                    ..ErrorDetails::code("PAIRING_REQUIRED")
                })
            }
            // Retryable, as OpenClaw answers while it starts: the client's credential may be fine.
            Rejection::StoreUnavailable => ErrorShape {
                retryable: Some(true),
                retry_after_ms: Some(RETRY_AFTER_MS),
                ..ErrorShape::new(
                    codes::UNAVAILABLE,
                    "device store unavailable (see the gateway log)",
                )
            },
            Rejection::Upstream(e) => (**e).clone(),
        })
    }

    /// The close frame that ends the connection (`None`: the peer is gone, or already closed and
    /// gets our answering Close). An error's close reason is its message.
    fn close(&self, error: Option<&ErrorShape>) -> Option<(u16, Cow<'static, str>)> {
        let code = match self {
            Rejection::Closed { .. } => return None,
            Rejection::Violation { code, reason } => return Some((*code, (*reason).into())),
            Rejection::Timeout | Rejection::NotJson => return Some((close::NORMAL, "".into())),
            Rejection::Shutdown => {
                return Some((close::SERVICE_RESTART, close::SERVICE_RESTART_REASON.into()));
            }
            Rejection::TooLarge => {
                return Some((close::TOO_LARGE, close::PREAUTH_TOO_LARGE_REASON.into()));
            }
            Rejection::NotARequest => return Some((close::POLICY, "invalid request frame".into())),
            Rejection::ProtocolMismatch { .. } => close::PROTOCOL_MISMATCH,
            Rejection::StoreUnavailable => close::TRY_AGAIN_LATER,
            Rejection::Upstream(e) => crate::relay::refusal_close(e),
            _ => close::POLICY,
        };
        Some((code, error.map_or("".into(), |e| e.message.clone().into())))
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

/// One WebSocket connection, from the challenge to the close. An async block rather than an async
/// fn: an async fn keeps its arguments twice in its future (rust-lang/rust#62958), and this future
/// is every connection's task, copied whole when it is spawned.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in its future"
)]
pub(crate) fn run(
    mut ws: WebSocket,
    peer: SocketAddr,
    state: Arc<State>,
    preauth: Preauth,
) -> impl Future<Output = ()> + Send {
    async move {
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.metrics.connections_open.inc();
        let _open = OpenGuard(state.clone());
        let (conn_id, nonce) = fresh_ids();
        let outcome = handshake(&mut ws, peer, &state, conn_id, nonce.as_str(), &preauth).await;
        drop(preauth);
        // Front mode: an operator session is relayed; its upstream session opens before
        // hello-ok, which carries the upstream's features.
        let outcome = match (outcome, &state.upstream) {
            (Ok(session), Some(upstream)) if session.connect_params.is_some() => {
                // Boxed, as `relay::serve` below: the relay's futures would otherwise make every
                // connection's task larger, relayed or not.
                match Box::pin(crate::relay::open(&state, &session, upstream)).await {
                    Ok((up, hello)) => Ok((session, Some(Box::new((up, hello))))),
                    Err(e) => Err((Some(session.connect_id.clone()), Rejection::Upstream(e))),
                }
            }
            (outcome, _) => outcome.map(|s| (s, None)),
        };
        match outcome {
            Ok((session, relayed)) => {
                state.metrics.handshakes_ok.inc();
                tracing::debug!(
                    %peer, %conn_id, auth_method = state.secrets.mode.as_str(),
                    role = %session.role, protocol = session.protocol, "connection accepted"
                );
                authenticated(&mut ws, peer, &state, &session, relayed).await;
            }
            Err((id, why)) => refused(&mut ws, peer, &state, conn_id, id, why).await,
        }
    }
}

fn count_handshake(state: &State, outcome: &'static str) {
    let method = state.secrets.mode.as_str();
    state
        .metrics
        .handshakes
        .get_or_create(&HandshakeLabels { outcome, method })
        .inc();
}

/// Ends a refused handshake: the error answering `connect` (when there was one), the close, and
/// the refusal's log line.
async fn refused(
    ws: &mut WebSocket,
    peer: SocketAddr,
    state: &State,
    conn_id: UuidText,
    id: Option<String>,
    why: Rejection,
) {
    count_handshake(state, why.outcome());
    let error = why.error();
    if let (Some(id), Some(e)) = (&id, &error) {
        let _ = send_text(ws, proto::err_text(id, e)).await;
    }
    let close = why.close(error.as_ref());
    finish(ws, close.as_ref(), &why).await;
    // A refusal is worth a line at info: it is rare and it is what an operator looks for.
    tracing::info!(
        %peer, %conn_id, auth_method = state.secrets.mode.as_str(), outcome = why.outcome(),
        close_code = close.as_ref().map_or(0, |c| c.0),
        reason = close.as_ref().map_or("", |c| &*c.1),
        "connection closed during handshake"
    );
}

/// An authenticated session, served here or relayed, until it ends; then its close.
async fn authenticated(
    ws: &mut WebSocket,
    peer: SocketAddr,
    state: &Arc<State>,
    session: &Session,
    relayed: Option<Box<(crate::relay::UpstreamWs, String)>>,
) {
    let end = match relayed {
        Some(relayed) => {
            let (upstream, hello) = *relayed;
            Box::pin(crate::relay::serve(ws, state, session, upstream, hello)).await
        }
        None => serve(ws, state, session).await,
    };
    let close = match &end {
        End::Close(code, reason) => Some((*code, reason.clone())),
        End::Violation { code, reason } => Some((*code, Cow::Borrowed(*reason))),
        End::PeerClosed | End::Lost => None,
    };
    if let Some((code, reason)) = &close {
        send_close(ws, *code, reason).await;
    } else if matches!(end, End::PeerClosed) {
        answer_close(ws).await;
    }
    // Per session, so debug: at info it would cost every session a formatted line.
    tracing::debug!(
        %peer, conn_id = %session.conn_id, auth_method = state.secrets.mode.as_str(),
        role = %session.role, close_code = close.as_ref().map_or(0, |c| c.0),
        reason = close.as_ref().map_or(end.describe(), |c| &*c.1),
        "connection closed"
    );
}

/// A UUID in its 36-character text form, held inline: a connection's id and its challenge nonce
/// cost no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct UuidText([u8; uuid::fmt::Hyphenated::LENGTH]);

impl UuidText {
    fn new(bytes: [u8; 16]) -> UuidText {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut text);
        UuidText(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a hyphenated UUID is ASCII")
    }
}

impl std::fmt::Display for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The connection's id and its challenge nonce, both UUIDs as OpenClaw's, from one read of the
/// OS's random generator rather than one each.
pub(crate) fn fresh_ids() -> (UuidText, UuidText) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random generator is available");
    let (a, b) = bytes.split_at(16);
    (
        UuidText::new(a.try_into().expect("16 bytes")),
        UuidText::new(b.try_into().expect("16 bytes")),
    )
}

/// Ends a refused handshake: our close frame, or the answer to the peer's.
async fn finish(ws: &mut WebSocket, close: Option<&(u16, Cow<'static, str>)>, why: &Rejection) {
    match close {
        Some((code, reason)) => send_close(ws, *code, reason).await,
        None if matches!(
            why,
            Rejection::Closed {
                peer_sent_close: true
            }
        ) =>
        {
            answer_close(ws).await
        }
        None => {}
    }
}

/// The peer sent Close: tungstenite queued the answering Close frame (RFC 6455 §5.5.1, echoing
/// the peer's code); one more read writes it and then sees the end of the connection.
async fn answer_close(ws: &mut WebSocket) {
    let _ = bounded(CLOSE_REPLY_DEADLINE, ws.next()).await;
}

async fn send_close(ws: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is at most 123 bytes on the wire; OpenClaw truncates to 120.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let close = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason[..end].into(),
    }));
    // A peer that reads nothing (a slow consumer) would hold this forever.
    let _ = bounded(CLOSE_REPLY_DEADLINE, ws.send(close)).await;
}

/// `fut`'s output, or `None` after `limit`. The timer is armed only when `fut` is not ready at
/// once (most are: a socket with room, a close already answered), since arming and clearing one
/// takes a lock of the timer wheel that every connection shares.
async fn bounded<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    if let Some(out) = futures_util::FutureExt::now_or_never(fut.as_mut()) {
        return Some(out);
    }
    tokio::time::timeout(limit, fut).await.ok()
}

/// Why a bounded send failed.
pub(crate) enum SendFailed {
    /// The connection is gone.
    Gone,
    /// The peer took nothing for [`SEND_STALL_LIMIT`].
    Stalled,
}

/// Sends `msg` to a WebSocket peer, for at most [`SEND_STALL_LIMIT`] ([`bounded`]).
pub(crate) async fn send_bounded<S>(ws: &mut S, msg: Message) -> Result<(), SendFailed>
where
    S: futures_util::Sink<Message> + Unpin,
{
    match bounded(SEND_STALL_LIMIT, ws.send(msg)).await {
        Some(sent) => sent.map_err(|_| SendFailed::Gone),
        None => Err(SendFailed::Stalled),
    }
}

/// Sends a text frame to the client; a client that stopped reading is closed as a slow consumer
/// (1008, as OpenClaw closes one).
pub(crate) async fn send_text(
    ws: &mut WebSocket,
    text: impl Into<tokio_tungstenite::tungstenite::Utf8Bytes>,
) -> Result<(), End> {
    send_bounded(ws, Message::Text(text.into()))
        .await
        .map_err(|failed| match failed {
            SendFailed::Gone => End::Lost,
            SendFailed::Stalled => End::Close(close::POLICY, close::SLOW_CONSUMER_REASON.into()),
        })
}

/// A read error as RFC 6455 sees it: a violation to close with a code (invalid UTF-8 in a text
/// message → 1007; bad opcode, unmasked client frame, reserved bits, bad fragmentation → 1002;
/// over the size cap → 1009), or a connection that is simply gone.
fn violation(e: WsError) -> Option<(u16, &'static str)> {
    match e {
        WsError::Utf8(_) => Some((1007, "invalid UTF-8 in a text message")),
        WsError::Capacity(_) => Some((close::TOO_LARGE, "message too large")),
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        WsError::Protocol(_) => Some((close::PROTOCOL_MISMATCH, "protocol error")),
        _ => None,
    }
}

/// A refused handshake: the `connect` request's id when there was one, and why.
type Refused = (Option<String>, Rejection);

async fn handshake(
    ws: &mut WebSocket,
    peer: SocketAddr,
    state: &Arc<State>,
    conn_id: UuidText,
    nonce: &str,
    preauth: &Preauth,
) -> Result<Session, Refused> {
    if send_text(ws, proto::challenge_text(nonce, now_ms()))
        .await
        .is_err()
    {
        return Err((
            None,
            Rejection::Closed {
                peer_sent_close: false,
            },
        ));
    }
    let text = read_first_frame(ws, state, preauth)
        .await
        .map_err(|why| (None, why))?;
    // A well-formed `connect` is read in one pass. Front mode relays the params as sent, so it
    // keeps them raw; any other text takes the two steps that say what is wrong with it.
    let one_pass = match state.upstream {
        None => proto::parse_connect_request(text.as_str()),
        Some(_) => None,
    };
    let (id, params, raw_params) = match one_pass {
        Some((id, params)) => (id, params, None),
        None => {
            let req = proto::parse_request(text.as_str()).map_err(|e| {
                let why = match e {
                    // Not JSON at all: OpenClaw closes 1000 without a frame.
                    NotARequest::NotJson => Rejection::NotJson,
                    NotARequest::NotRequest => Rejection::NotARequest,
                };
                (None, why)
            })?;
            match parse_connect(&req) {
                Ok(params) => (req.id, params, req.params),
                Err(why) => return Err((Some(req.id.into_owned()), why)),
            }
        }
    };
    let connect = Connect {
        id: &id,
        params,
        raw_params,
    };
    admit(connect, peer, state, conn_id, nonce, preauth.origin())
        .await
        .map_err(|why| (Some(id.into_owned()), why))
}

/// The session's first request, a `connect`: its id, its params, and (in front mode, which
/// relays them) the params as sent.
struct Connect<'a> {
    id: &'a str,
    params: ConnectParams<'a>,
    raw_params: Option<&'a serde_json::value::RawValue>,
}

/// Waits for the first data frame (pre-auth: bounded in time by the handshake timeout and in size
/// by the socket's read budget and the 64 KiB cap).
async fn read_first_frame(
    ws: &mut WebSocket,
    state: &State,
    preauth: &Preauth,
) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, Rejection> {
    let mut control = state.secrets.control.subscribe();
    let timeout = tokio::time::sleep(state.handshake_timeout);
    tokio::pin!(timeout);
    loop {
        let msg = tokio::select! {
            _ = &mut timeout => return Err(Rejection::Timeout),
            changed = control.changed() => {
                if changed.is_err() || control.borrow().shutdown {
                    return Err(Rejection::Shutdown);
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        return match msg {
            // The socket stopped reading mid-frame: a frame far over the pre-auth cap.
            Some(Err(_)) if preauth.over_budget() => Err(Rejection::TooLarge),
            Some(Err(e)) => Err(match violation(e) {
                Some((code, reason)) => Rejection::Violation { code, reason },
                None => Rejection::Closed {
                    peer_sent_close: false,
                },
            }),
            None => Err(Rejection::Closed {
                peer_sent_close: false,
            }),
            Some(Ok(Message::Close(_))) => Err(Rejection::Closed {
                peer_sent_close: true,
            }),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(t))) if t.len() > proto::MAX_PREAUTH_PAYLOAD_BYTES => {
                Err(Rejection::TooLarge)
            }
            Some(Ok(Message::Text(t))) => Ok(t),
            Some(Ok(Message::Binary(b))) if b.len() > proto::MAX_PREAUTH_PAYLOAD_BYTES => {
                Err(Rejection::TooLarge)
            }
            Some(Ok(Message::Binary(_))) => Err(Rejection::NotARequest),
        };
    }
}

/// Everything after the frame is known to be a request: the steps of OpenClaw's handshake in
/// its order (shared design §2.5).
async fn admit(
    connect: Connect<'_>,
    peer: SocketAddr,
    state: &Arc<State>,
    conn_id: UuidText,
    nonce: &str,
    origin: crate::origin::Verdict,
) -> Result<Session, Rejection> {
    let Connect {
        id,
        params,
        raw_params,
    } = connect;
    if params.role != "operator" && params.role != "node" {
        return Err(Rejection::InvalidRole);
    }
    let protocol = negotiate(&params)?;
    // Step 4: a browser's origin, before any credential is looked at.
    if let crate::origin::Verdict::Refused(reason) = origin {
        return Err(Rejection::OriginNotAllowed(reason));
    }
    let has_device = params.device.is_some();
    let auth = params.auth.as_ref();
    let explicit = auth
        .and_then(|a| a.device_token.as_deref())
        .filter(|t| !t.is_empty());
    let candidate = explicit.or(auth
        .and_then(|a| a.token.as_deref())
        .filter(|t| !t.is_empty()));
    // Step 5: the shared secret. A failure with nothing else to try is final here, so wrong
    // credentials are reported as such whatever the device block holds.
    let shared = shared_secret(&params, peer.ip(), state).await;
    if let Err(failure) = shared
        && (!has_device || candidate.is_none())
    {
        return Err(Rejection::Unauthorized {
            failure,
            has_device,
        });
    }
    // Step 7: the device proof, in the documented order.
    let device = match &params.device {
        None => None,
        Some(v) => Some(prove_device(v, &params, nonce)?),
    };
    // Step 8: failing the shared secret, this device's own token.
    let (secret_generation, device_token_auth) = match shared {
        Ok(generation) => (generation, false),
        Err(failure) => {
            let (Some(dev), Some(candidate)) = (&device, candidate) else {
                return Err(Rejection::Unauthorized {
                    failure,
                    has_device,
                });
            };
            // Boxed, as `pair` below: only a device's session takes these steps, and their
            // futures would otherwise make every connection's task larger.
            Box::pin(device_token(
                dev,
                &params,
                candidate.to_owned(),
                explicit.is_some(),
                failure,
                peer,
                state,
            ))
            .await?;
            (None, true)
        }
    };
    // Steps 10-11: pairing and the device's token.
    let issued = match &device {
        Some(dev) => Box::pin(pair(dev, &params, device_token_auth, peer, state)).await?,
        None => None,
    };
    // Front mode relays operators (nodes are served by driftless alone: see docs/front-mode.md).
    let connect_params = match (&state.upstream, raw_params) {
        (Some(_), Some(raw)) if params.role == "operator" => Some(raw.to_owned()),
        _ => None,
    };
    // Device-less shared-secret clients keep the scopes they ask for; probes get none.
    let scopes = if params.client.mode == "probe" && device.is_none() {
        Vec::new()
    } else {
        params.scopes
    };
    Ok(Session {
        connect_params,
        conn_id,
        role: params.role,
        scopes,
        protocol,
        secret_generation,
        connect_id: id.to_owned(),
        device_id: device.map(|d| d.device_id),
        device_token_auth,
        issued,
        browser: origin == crate::origin::Verdict::Allowed,
    })
}

/// Step 1: the first request must be a well-formed `connect` (its role is checked by `admit`).
fn parse_connect<'a>(req: &IncomingRequest<'a>) -> Result<ConnectParams<'a>, Rejection> {
    if req.method != "connect" {
        return Err(Rejection::FirstNotConnect);
    }
    proto::parse_params(req.params).map_err(Rejection::InvalidParams)
}

/// Step 2: the highest served protocol in the client's range.
fn negotiate(params: &ConnectParams<'_>) -> Result<u32, Rejection> {
    proto::negotiate(params.min_protocol, params.max_protocol).ok_or(Rejection::ProtocolMismatch {
        min: params.min_protocol,
        max: params.max_protocol,
    })
}

/// Step 5: the shared secret for the configured mode. OpenClaw accepts the token sent as
/// `password` and vice versa. Returns the secret generation the client matched.
async fn shared_secret(
    params: &ConnectParams<'_>,
    ip: IpAddr,
    state: &Arc<State>,
) -> Result<Option<u64>, AuthFailure> {
    let auth = params.auth.as_ref();
    let token = auth.and_then(|a| a.token.as_deref());
    let password = auth.and_then(|a| a.password.as_deref());
    let (candidate, missing, mismatch) = match state.secrets.mode {
        AuthMode::None => return Ok(None),
        AuthMode::Token => (
            token.or(password),
            AuthFailure::TokenMissing,
            AuthFailure::TokenMismatch,
        ),
        AuthMode::Password => (
            password.or(token),
            AuthFailure::PasswordMissing,
            AuthFailure::PasswordMismatch,
        ),
    };
    auth::shared_secret(state, ip, candidate)
        .await
        .map_err(|r| match r {
            SharedRefusal::Missing => missing,
            SharedRefusal::Mismatch => mismatch,
            SharedRefusal::RateLimited(retry_after_ms) => {
                AuthFailure::RateLimited { retry_after_ms }
            }
        })
}

/// Step 7: parses and verifies the `device` block, in the documented order.
fn prove_device(
    raw: &serde_json::Value,
    params: &ConnectParams<'_>,
    nonce: &str,
) -> Result<VerifiedDevice, Rejection> {
    let proof = device_auth::DeviceProof::deserialize(raw).map_err(|e| {
        Rejection::InvalidParams(format!("device: {}", proto::without_values(&e.to_string())))
    })?;
    let fields = device_auth::SignedFields::of_connect(params, &proof);
    device_auth::verify(&proof, &fields, nonce, now_ms()).map_err(Rejection::DeviceProof)
}

/// Step 8: the device's own token, when the shared secret failed. Its own limiter attempt.
async fn device_token(
    dev: &VerifiedDevice,
    params: &ConnectParams<'_>,
    candidate: String,
    explicit: bool,
    shared_failure: AuthFailure,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Result<(), Rejection> {
    let attempt = auth::begin(state, peer.ip())
        .await
        .map_err(|auth::RateLimited(ms)| Rejection::Unauthorized {
            failure: AuthFailure::RateLimited { retry_after_ms: ms },
            has_device: true,
        })?;
    let claim = auth::DeviceTokenClaim {
        device_id: dev.device_id.clone(),
        role: params.role.clone(),
        scopes: params.scopes.clone(),
        token: candidate,
    };
    match auth::verify_device_token(state, claim).await {
        Ok(TokenCheck::Ok) => {
            attempt.succeeded().await;
            Ok(())
        }
        Ok(TokenCheck::Rejected(_)) => {
            attempt.failed().await;
            // Reported as a device-token mismatch only when the client said it was one.
            Err(if explicit {
                Rejection::DeviceTokenMismatch
            } else {
                Rejection::Unauthorized {
                    failure: shared_failure,
                    has_device: true,
                }
            })
        }
        Err(e) => Err(store_failure(&e)),
    }
}

/// A device on this connection, owned so the store call can run on a blocking thread.
struct Connecting {
    device_id: String,
    public_key: String,
    client_id: String,
    client_mode: String,
    display_name: Option<String>,
    platform: String,
    device_family: Option<String>,
    role: String,
    scopes: Vec<String>,
    remote_ip: IpAddr,
}

impl Connecting {
    fn new(dev: &VerifiedDevice, params: &ConnectParams<'_>, peer: SocketAddr) -> Connecting {
        Connecting {
            device_id: dev.device_id.clone(),
            public_key: dev.public_key.clone(),
            client_id: params.client.id.clone().into_owned(),
            client_mode: params.client.mode.clone().into_owned(),
            display_name: params.client.display_name.as_deref().map(str::to_owned),
            platform: params.client.platform.clone().into_owned(),
            device_family: params.client.device_family.as_deref().map(str::to_owned),
            role: params.role.clone(),
            scopes: params.scopes.clone(),
            remote_ip: peer.ip(),
        }
    }

    fn borrowed(&self) -> devices::ConnectingDevice<'_> {
        devices::ConnectingDevice {
            device_id: &self.device_id,
            public_key: &self.public_key,
            client_id: &self.client_id,
            client_mode: &self.client_mode,
            display_name: self.display_name.as_deref(),
            platform: Some(self.platform.as_str()),
            device_family: self.device_family.as_deref(),
            role: &self.role,
            scopes: &self.scopes,
            remote_ip: self.remote_ip,
        }
    }
}

/// Steps 10-11: pairing (silent for a local address that proved the shared secret, otherwise
/// `PAIRING_REQUIRED`) and the device's token for hello-ok.
async fn pair(
    dev: &VerifiedDevice,
    params: &ConnectParams<'_>,
    device_token_auth: bool,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Result<Option<devices::IssuedToken>, Rejection> {
    let connecting = Connecting::new(dev, params, peer);
    let local = devices::is_local(peer.ip(), &state.local_addresses);
    let store = state.devices.clone();
    let outcome = auth::blocking(move || {
        let device = connecting.borrowed();
        let now = now_ms();
        let outcome = devices::on_connect(
            &*store,
            &device,
            !device_token_auth,
            device_token_auth,
            local,
            now,
        )?;
        // A reconnect with the device's valid token gets that token back too, unchanged and with
        // nothing written (OpenClaw resends it: `ensureDeviceToken` on every device connect).
        Ok(match outcome {
            devices::PairingOutcome::Paired {
                issued: None,
                event,
            } if device_token_auth => devices::PairingOutcome::Paired {
                issued: Some(store.ensure_token(
                    device.device_id,
                    device.role,
                    device.scopes,
                    "gateway (connect)",
                    now,
                )?),
                event,
            },
            other => other,
        })
    })
    .await
    .map_err(|e| store_failure(&e))?;
    match outcome {
        devices::PairingOutcome::Paired { issued, event } => {
            if let Some(event) = event {
                state.changed(devices::StoreEvent::Pairing(event));
            }
            Ok(issued)
        }
        devices::PairingOutcome::Required {
            request_id,
            reason,
            event,
        } => {
            // Announced before the device hears back, so an operator sees the request first.
            if let Some(event) = event {
                state.changed(devices::StoreEvent::Pairing(event));
            }
            tracing::info!(%peer, device_id = %dev.device_id, request_id, reason, "pairing required");
            Err(Rejection::PairingRequired { request_id, reason })
        }
    }
}

fn store_failure(e: &devices::StoreError) -> Rejection {
    static LOG: Throttle = Throttle::new(LOG_EVERY);
    if let Some(held_back) = LOG.admit() {
        tracing::error!(error = %e, held_back, "device store failed during a handshake");
    }
    Rejection::StoreUnavailable
}

/// How an authenticated session ended.
pub(crate) enum End {
    /// We close with this code and reason.
    Close(u16, Cow<'static, str>),
    /// The peer broke the WebSocket protocol; we close with this code.
    Violation { code: u16, reason: &'static str },
    /// The peer sent Close; it gets our answering Close.
    PeerClosed,
    /// The connection is gone (or a send failed).
    Lost,
}

impl End {
    fn describe(&self) -> &'static str {
        match self {
            End::PeerClosed => "client closed",
            _ => "connection lost",
        }
    }
}

/// Consecutive role refusals a session may collect; the next one closes it 1008.
pub(crate) const MAX_ROLE_REFUSALS: u32 = 10;
pub(crate) const REPEATED_UNAUTHORIZED_REASON: &str = "repeated unauthorized calls";

/// After the handshake: hello-ok, then requests, events and control changes until close.
async fn serve(ws: &mut WebSocket, state: &Arc<State>, session: &Session) -> End {
    let mut signals = Signals::subscribe(state, session, false);
    let hello = crate::methods::hello_ok_text(state, session);
    if let Some(end) = signals.hello(ws, session, hello).await {
        return end;
    }
    let mut role_refusals = 0u32;
    let next_signal = signals.next(session);
    tokio::pin!(next_signal);
    loop {
        tokio::select! {
            // In order: an event published before a request arrives goes out before its answer.
            biased;
            (signals, signal) = &mut next_signal => {
                if let Some(end) = signal.act(ws, session).await {
                    return end;
                }
                next_signal.set(signals.next(session));
            }
            msg = ws.next() => {
                let text = match client_text(msg) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(end) => return end,
                };
                let Ok(req) = proto::parse_request(text.as_str()) else {
                    // Responses/events from a client and malformed frames are ignored.
                    tracing::debug!(conn_id = %session.conn_id, "ignored a non-request frame");
                    continue;
                };
                let reply = crate::methods::dispatch(state, session, req).await;
                if let Err(end) = send_text(ws, reply.text).await {
                    return end;
                }
                // OpenClaw's unauthorized-flood guard: a client that keeps calling what its role
                // may not is misbehaving, not retrying.
                role_refusals = if reply.role_refusal { role_refusals + 1 } else { 0 };
                if role_refusals > MAX_ROLE_REFUSALS {
                    return End::Close(close::POLICY, REPEATED_UNAUTHORIZED_REASON.into());
                }
            }
        }
    }
}

/// What reaches an authenticated session besides its client's frames, for the session loop here
/// and the relay's alike: control changes (a rotation's end of grace, shutdown), its device's
/// revocation or rotation, and the gateway's events.
pub(crate) struct Signals {
    control: tokio::sync::watch::Receiver<crate::secrets::Control>,
    events: tokio::sync::broadcast::Receiver<crate::Broadcast>,
    /// Only a device's session listens for its device's revocation (a broadcast receiver costs
    /// every send a little, and its subscription a lock).
    device_events: Option<tokio::sync::broadcast::Receiver<devices::Disconnect>>,
    /// Only events that need a scope (the relay's: every other event comes from the upstream).
    scoped_only: bool,
}

/// One signal for a session, acted on by [`Signal::act`].
pub(crate) enum Signal {
    Control(crate::secrets::Control),
    Event(crate::Broadcast),
    End(End),
}

impl Signals {
    /// Subscribes before hello-ok: a shutdown the client may trigger as soon as it has its hello
    /// must still reach it as a `shutdown` event, not only as a bare close; likewise an event
    /// published once the client holds its hello reaches it.
    pub(crate) fn subscribe(state: &State, session: &Session, scoped_only: bool) -> Signals {
        Signals {
            control: state.secrets.control.subscribe(),
            events: state.events.subscribe(),
            device_events: session
                .device_id
                .is_some()
                .then(|| state.device_events.subscribe()),
            scoped_only,
        }
    }

    /// Sends hello-ok, then acts on a rotation or shutdown that happened between the auth check
    /// and now. `Some(end)` when the session ends there.
    pub(crate) async fn hello(
        &mut self,
        ws: &mut WebSocket,
        session: &Session,
        hello: String,
    ) -> Option<End> {
        if let Err(end) = send_text(ws, hello).await {
            return Some(end);
        }
        let c = *self.control.borrow_and_update();
        control_event(ws, &c, session).await
    }

    /// The next signal for `session` (control first, then its device's, then events), handing the
    /// receivers back with it. A session keeps one such future across its loop's `select!`, so
    /// the shared channels see one waiter per session and signal, not one per client message.
    pub(crate) async fn next(mut self, session: &Session) -> (Signals, Signal) {
        let signal = self.wait(session).await;
        (self, signal)
    }

    async fn wait(&mut self, session: &Session) -> Signal {
        let restart = || {
            Signal::End(End::Close(
                close::SERVICE_RESTART,
                close::SERVICE_RESTART_REASON.into(),
            ))
        };
        loop {
            tokio::select! {
                biased;
                changed = self.control.changed() => {
                    return match changed {
                        Ok(()) => Signal::Control(*self.control.borrow_and_update()),
                        Err(_) => restart(),
                    };
                }
                ev = next_disconnect(&mut self.device_events) => {
                    if let Ok(d) = ev
                        && session.device_id.as_deref() == Some(d.device_id.as_str())
                        && d.role.as_deref().is_none_or(|r| r == session.role)
                    {
                        return Signal::End(End::Close(close::AUTH_CHANGED, d.reason.into()));
                    }
                }
                event = self.events.recv() => match event {
                    Ok(b) if (!self.scoped_only || b.scope.is_some())
                        && crate::methods::may_receive(session, b.scope) => {
                        return Signal::Event(b);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return restart(),
                },
            }
        }
    }
}

/// The next revocation or rotation of any device; never, for a session without one.
async fn next_disconnect(
    device_events: &mut Option<tokio::sync::broadcast::Receiver<devices::Disconnect>>,
) -> Result<devices::Disconnect, tokio::sync::broadcast::error::RecvError> {
    match device_events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

impl Signal {
    /// Acts on the signal on the client's socket; `Some(end)` when the session ends.
    pub(crate) async fn act(self, ws: &mut WebSocket, session: &Session) -> Option<End> {
        match self {
            Signal::Control(c) => control_event(ws, &c, session).await,
            Signal::Event(b) => send_text(ws, b.text.as_ref()).await.err(),
            Signal::End(end) => Some(end),
        }
    }
}

/// What a message read from an authenticated client means: a text frame (`Some`), nothing to act
/// on (`None`: binary, ping, pong), or the end of the session.
pub(crate) fn client_text(
    msg: Option<Result<Message, WsError>>,
) -> Result<Option<tokio_tungstenite::tungstenite::Utf8Bytes>, End> {
    match msg {
        None => Err(End::Lost),
        Some(Err(e)) => Err(match violation(e) {
            Some((code, reason)) => End::Violation { code, reason },
            None => End::Lost,
        }),
        Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        Some(Ok(Message::Text(t))) => Ok(Some(t)),
        Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            Ok(None)
        }
    }
}

/// Acts on a control state of an authenticated session: on shutdown sends the `shutdown` event
/// and closes 1012; a session on a secret whose grace has ended closes 4001.
async fn control_event(
    ws: &mut WebSocket,
    c: &crate::secrets::Control,
    session: &Session,
) -> Option<End> {
    if c.shutdown {
        let ev = proto::event_text(
            "shutdown",
            &proto::Shutdown {
                reason: "gateway stopping".into(),
            },
            None,
        );
        let _ = send_text(ws, ev).await;
        return Some(End::Close(
            close::SERVICE_RESTART,
            close::SERVICE_RESTART_REASON.into(),
        ));
    }
    match session.secret_generation {
        Some(g) if g < c.min_secret_generation => Some(End::Close(
            close::AUTH_CHANGED,
            close::AUTH_CHANGED_REASON.into(),
        )),
        _ => None,
    }
}
