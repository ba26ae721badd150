//! Front mode: an authenticated operator session relayed to the upstream OpenClaw gateway
//! (`[upstream]`, `docs/front-mode.md`).
//!
//! The client's handshake is driftless's own (`conn.rs`). Then, in the same task, driftless opens
//! one upstream session for it: a device-less operator `connect` carrying the client's own client
//! info, driftless's upstream credential and exactly the scopes driftless granted. The client's
//! hello-ok is the upstream's with driftless's `auth` block. Requests for the methods driftless owns
//! are answered here (`methods::dispatch`); every other request is checked against OpenClaw's
//! method → scope table and, if allowed, written upstream unchanged; upstream frames go to the
//! client unchanged. Both sockets are read in one `select!`, each write awaited, so a slow side
//! slows the other instead of growing a queue.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use driftless_core::config::{UPSTREAM_TOKEN, UpstreamConfig};
use driftless_protocol::relay::{
    parse_upstream_hello, relayed_hello_payload, upstream_connect_text,
};
use driftless_protocol::scopes::{self, Need};
use driftless_protocol::{self as proto, ErrorDetails, ErrorShape, close, codes};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::State;
use crate::accept::WebSocket;
use crate::conn::{End, Session, Signals};

/// How long opening an upstream session may take (TCP, upgrade, `connect`, hello-ok).
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for the upstream's TCP port.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// The close reason when the upstream session ended without a close frame of its own.
const UPSTREAM_LOST_REASON: &str = "upstream gateway connection lost";

/// The methods driftless answers itself in front mode: its own credentials, devices and pairing
/// (the same names as OpenClaw's, which therefore never reach it).
fn owned(method: &str) -> bool {
    method == "secrets.reload" || crate::devices::is_device_method(method)
}

type UpstreamWs = WebSocketStream<TcpStream>;

/// The configured upstream.
pub(crate) struct Upstream {
    url: String,
    /// `host:port` of the URL, for the TCP connection.
    authority: String,
}

impl Upstream {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Upstream {
        let rest = cfg.url.strip_prefix("ws://").unwrap_or(&cfg.url);
        let authority = rest
            .split(['/', '?', '#'])
            .next()
            .unwrap_or(rest)
            .to_owned();
        Upstream {
            url: cfg.url.clone(),
            authority,
        }
    }

    /// Why the upstream is not ready, if it is not (`/readyz`): its port does not accept.
    pub(crate) async fn not_ready(&self) -> Option<String> {
        match tokio::time::timeout(PROBE_DEADLINE, TcpStream::connect(&self.authority)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("upstream gateway {} unreachable: {e}", self.url)),
            Err(_) => Some(format!(
                "upstream gateway {} did not accept within {} ms",
                self.url,
                PROBE_DEADLINE.as_millis()
            )),
        }
    }
}

/// OpenClaw's `UNAVAILABLE` with `retryAfterMs`, as it answers while starting.
fn unavailable(message: String) -> ErrorShape {
    ErrorShape {
        retryable: Some(true),
        retry_after_ms: Some(crate::conn::RETRY_AFTER_MS),
        ..ErrorShape::new(codes::UNAVAILABLE, message)
            .with_details(ErrorDetails::code("UPSTREAM_UNAVAILABLE"))
    }
}

/// Opens the upstream session for `session` and builds the client's hello-ok. `Err` is the
/// error that answers the client's `connect`.
pub(crate) async fn open(
    state: &State,
    session: &Session,
    upstream: &Upstream,
) -> Result<(UpstreamWs, String), Box<ErrorShape>> {
    let token = state
        .secrets
        .snapshot()
        .get(UPSTREAM_TOKEN)
        .cloned()
        .ok_or_else(|| {
            Box::new(unavailable(
                "no upstream credential is resolved (upstream.token)".into(),
            ))
        })?;
    let connect = upstream_connect_text(
        session.connect_params.as_deref(),
        &session.scopes,
        token.expose(),
    )
    .map_err(|e| {
        ErrorShape::new(
            codes::INVALID_REQUEST,
            format!("invalid connect params: {e}"),
        )
    })?;
    drop(token);
    let opened = tokio::time::timeout(UPSTREAM_DEADLINE, async {
        let tcp = TcpStream::connect(&upstream.authority)
            .await
            .map_err(|e| format!("cannot reach the upstream gateway {}: {e}", upstream.url))?;
        let _ = tcp.set_nodelay(true);
        let config = WebSocketConfig::default()
            .max_message_size(Some(proto::MAX_PAYLOAD_BYTES))
            .max_frame_size(Some(proto::MAX_PAYLOAD_BYTES));
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(upstream.url.as_str(), tcp, Some(config))
                .await
                .map_err(|e| {
                    format!(
                        "the upstream gateway {} refused the WebSocket: {e}",
                        upstream.url
                    )
                })?;
        ws.send(Message::Text(connect.into()))
            .await
            .map_err(|e| format!("the upstream gateway {} went away: {e}", upstream.url))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(res) = parse_upstream_hello(&t) {
                        return Ok(match (res.ok, res.payload, res.error) {
                            (true, Some(payload), _) => Ok((payload.to_owned(), ws)),
                            (_, _, Some(error)) => Err(Box::new(error)),
                            _ => Err(Box::new(unavailable(format!(
                                "the upstream gateway {} answered connect without a hello",
                                upstream.url
                            )))),
                        });
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(format!(
                        "the upstream gateway {} went away: {e}",
                        upstream.url
                    ));
                }
                None => {
                    return Err(format!(
                        "the upstream gateway {} closed during its handshake",
                        upstream.url
                    ));
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the upstream gateway {} did not answer within {} s",
            upstream.url,
            UPSTREAM_DEADLINE.as_secs()
        ))
    });
    let (payload, ws): (Box<RawValue>, UpstreamWs) = match opened {
        Err(reason) => {
            tracing::warn!(
                conn_id = session.conn_id,
                reason,
                "upstream session not opened"
            );
            return Err(Box::new(unavailable(reason)));
        }
        Ok(Err(refusal)) => return Err(Box::new(upstream_refusal(*refusal, &upstream.url))),
        Ok(Ok(ok)) => ok,
    };
    let auth = crate::methods::hello_auth(state, session);
    let hello = relayed_hello_payload(&payload, &auth).map_err(|e| {
        Box::new(unavailable(format!(
            "the upstream gateway {} sent an unreadable hello: {e}",
            upstream.url
        )))
    })?;
    Ok((ws, proto::ok_text(&session.connect_id, &hello)))
}

/// What the client hears when the upstream refused driftless's `connect`: OpenClaw's own
/// "starting" and protocol answers as they are; anything else (a refused upstream credential,
/// say) is driftless's problem, not the client's, so it becomes `UNAVAILABLE` naming the reason.
fn upstream_refusal(refusal: ErrorShape, url: &str) -> ErrorShape {
    if refusal.code == codes::UNAVAILABLE || refusal.detail_code() == Some("PROTOCOL_MISMATCH") {
        return refusal;
    }
    tracing::error!(
        upstream = url,
        code = refusal.code,
        detail = refusal.detail_code().unwrap_or(""),
        message = refusal.message,
        "the upstream gateway refused driftless's session; check upstream.token"
    );
    unavailable(format!(
        "the upstream gateway refused driftless's session ({}); the operator must fix upstream.token",
        refusal.message
    ))
}

/// The close for a failed [`open`]: a protocol mismatch as OpenClaw closes it, everything else
/// "try again later".
pub(crate) fn refusal_close(error: &ErrorShape) -> u16 {
    if error.detail_code() == Some("PROTOCOL_MISMATCH") {
        close::PROTOCOL_MISMATCH
    } else {
        close::TRY_AGAIN_LATER
    }
}

/// The relayed session: hello-ok (already built by [`open`]), then frames both ways until either
/// side, a rotation or a shutdown ends it.
pub(crate) async fn serve(
    ws: &mut WebSocket,
    state: &Arc<State>,
    session: &Session,
    mut upstream: UpstreamWs,
    hello: String,
) -> End {
    let mut signals = Signals::subscribe(state, true);
    let end = 'session: {
        if let Some(end) = signals.hello(ws, session, hello).await {
            break 'session end;
        }
        let mut role_refusals = 0u32;
        loop {
            tokio::select! {
                biased;
                // driftless's own guarded events (pairing); `tick` and every other event come
                // from the upstream.
                signal = signals.next(session) => {
                    if let Some(end) = signal.act(ws, session).await {
                        break 'session end;
                    }
                }
                msg = upstream.next() => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            if ws.send(Message::Text(t)).await.is_err() {
                                break 'session End::Lost;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            // The upstream's own close (1012 on its restart, 4001, ...) is the
                            // client's: it knows what to do with OpenClaw's codes.
                            let (code, reason) = frame.map_or(
                                (close::SERVICE_RESTART, Cow::Borrowed(UPSTREAM_LOST_REASON)),
                                |f| (u16::from(f.code), Cow::Owned(f.reason.as_str().to_owned())),
                            );
                            break 'session End::Close(code, reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            break 'session End::Close(close::SERVICE_RESTART, UPSTREAM_LOST_REASON.into());
                        }
                    }
                }
                msg = ws.next() => {
                    let text = match crate::conn::client_text(msg) {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(end) => break 'session end,
                    };
                    let Ok(req) = proto::parse_request(text.as_str()) else {
                        continue;
                    };
                    let reply = if owned(&req.method) {
                        Some(crate::methods::dispatch(state, session, req).await)
                    } else {
                        check(session, &req)
                    };
                    match reply {
                        Some(reply) => {
                            if ws.send(Message::Text(reply.text.into())).await.is_err() {
                                break 'session End::Lost;
                            }
                            role_refusals = if reply.role_refusal { role_refusals + 1 } else { 0 };
                            if role_refusals > crate::conn::MAX_ROLE_REFUSALS {
                                break 'session End::Close(
                                    close::POLICY,
                                    crate::conn::REPEATED_UNAUTHORIZED_REASON.into(),
                                );
                            }
                        }
                        None => {
                            role_refusals = 0;
                            if upstream.send(Message::Text(text)).await.is_err() {
                                break 'session End::Close(close::SERVICE_RESTART, UPSTREAM_LOST_REASON.into());
                            }
                        }
                    }
                }
            }
        }
    };
    // The upstream session ends with the client's.
    let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
    end
}

/// Refuses a request the session may not have relayed (OpenClaw's answers); `None`: relay it.
fn check(session: &Session, req: &proto::IncomingRequest<'_>) -> Option<crate::methods::Reply> {
    if scopes::openclaw_method_need(&req.method) == Some(Need::Node) {
        return Some(crate::methods::Reply::role_refusal(&req.id, &session.role));
    }
    match scopes::relay_allowed(&req.method, &session.scopes) {
        Ok(()) => None,
        Err(missing) => Some(crate::methods::Reply::err(
            &req.id,
            ErrorShape::missing_scope(missing),
        )),
    }
}
