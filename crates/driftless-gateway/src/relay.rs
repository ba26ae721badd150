//! Front mode: an authenticated operator session relayed to the upstream OpenClaw gateway
//! (`[upstream]`, `docs/front-mode.md`).
//!
//! The client's handshake is driftless's own (`conn.rs`). Then, in the same task, driftless opens
//! one upstream session for it: an operator `connect` carrying the client's own client info,
//! driftless's own device proof and device token (`identity`; a device-token session is what
//! OpenClaw keeps open when its own token rotates) and exactly the scopes driftless granted. The client's
//! hello-ok is the upstream's with driftless's `auth` block. Requests for the methods driftless owns
//! are answered here (`methods::dispatch`); every other request is checked against OpenClaw's
//! method → scope table and, if allowed, written upstream unchanged; upstream frames go to the
//! client unchanged. Both sockets are read in one `select!`, each write awaited, so a slow side
//! slows the other instead of growing a queue.

pub(crate) mod http;
mod identity;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use driftless_client::identity::IdentityError;
use driftless_core::config::{UPSTREAM_TOKEN, UpstreamConfig};
use driftless_core::secret::SecretValue;
use driftless_protocol::relay::{
    PAIRING_SCOPES, UpstreamAuth, challenge_nonce, pairing_client_params, parse_upstream_hello,
    relayed_hello_payload, upstream_connect_text, upstream_device_token,
};
use driftless_protocol::scopes::{self, Need};
use driftless_protocol::{self as proto, ErrorDetails, ErrorShape, close, codes};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::State;
use crate::accept::WebSocket;
use crate::conn::{End, Session, Signals};
use identity::UpstreamIdentity;

/// How long opening an upstream session may take (TCP, upgrade, `connect`, hello-ok).
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for the upstream's TCP port.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// Upstream handshakes in flight at once. OpenClaw answers a client address's 33rd
/// unauthenticated socket with HTTP 503, and every upstream session of driftless comes from one
/// address: more sessions opening at once wait their turn (within [`UPSTREAM_DEADLINE`]) instead
/// of being refused, and half of OpenClaw's budget stays free for other local clients (its CLI).
const HANDSHAKES_IN_FLIGHT: usize = 16;
/// The close reason when the upstream session ended without a close frame of its own.
const UPSTREAM_LOST_REASON: &str = "upstream gateway connection lost";

/// The methods driftless answers itself in front mode: its own credentials, devices and pairing
/// (the same names as OpenClaw's, which therefore never reach it).
fn owned(method: &str) -> bool {
    method == "secrets.reload" || crate::devices::is_device_method(method)
}

pub(crate) type UpstreamWs = WebSocketStream<TcpStream>;

/// The configured upstream.
pub(crate) struct Upstream {
    url: String,
    /// `host:port` of the URL, for the TCP connection.
    authority: String,
    /// driftless's device identity and device token toward it.
    identity: Arc<UpstreamIdentity>,
    /// [`HANDSHAKES_IN_FLIGHT`] permits.
    handshakes: tokio::sync::Semaphore,
    /// The HTTP relay's client (`http`).
    http: reqwest::Client,
}

impl Upstream {
    /// Reads (or creates) driftless's upstream identity under `state_dir`. Blocks: call it off
    /// the async workers.
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        state_dir: &Path,
        http: reqwest::Client,
    ) -> Result<Upstream, IdentityError> {
        let rest = cfg.url.strip_prefix("ws://").unwrap_or(&cfg.url);
        let authority = rest
            .split(['/', '?', '#'])
            .next()
            .unwrap_or(rest)
            .to_owned();
        Ok(Upstream {
            url: cfg.url.clone(),
            authority,
            identity: Arc::new(UpstreamIdentity::load(state_dir)?),
            handshakes: tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT),
            http,
        })
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

/// Why an upstream handshake gave no hello-ok.
enum Failure {
    /// The client's connect params could not be turned into the upstream's.
    Invalid(String),
    /// The upstream could not be reached, or went away: why.
    Unreachable(String),
    /// The upstream answered `connect` with this error.
    Refused(Box<ErrorShape>),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens the upstream session for `session` and builds the client's hello-ok. `Err` is the
/// error that answers the client's `connect`.
///
/// The one place that decides the upstream credential: driftless's device token with its device
/// proof. Without a device token (first use), or once when the upstream refuses it (its state
/// was reset, the device removed), driftless pairs its device first ([`pair`]).
pub(crate) async fn open(
    state: &State,
    session: &Session,
    upstream: &Upstream,
) -> Result<(UpstreamWs, String), Box<ErrorShape>> {
    let identity = &upstream.identity;
    let mut refused: Option<Arc<SecretValue>> = None;
    let (payload, ws) = loop {
        let token = match identity.token() {
            Some(t) if !refused.as_ref().is_some_and(|r| r.same_as(&t)) => t,
            _ => pair(state, upstream, refused.as_deref()).await?,
        };
        let opened = handshake(upstream, session.browser, |nonce| {
            upstream_connect_text(
                session.connect_params.as_deref(),
                &session.scopes,
                UpstreamAuth::DeviceToken(token.expose()),
                nonce,
                now_ms(),
                |f| identity.prove(f),
            )
        })
        .await;
        match opened {
            Ok(opened) => break opened,
            Err(Failure::Refused(e)) if refused.is_none() && !passes_through(&e) => {
                tracing::warn!(
                    conn_id = %session.conn_id,
                    upstream = upstream.url,
                    code = e.code,
                    detail = e.detail_code().unwrap_or(""),
                    message = e.message,
                    "the upstream gateway refused driftless's device token; pairing driftless's device again"
                );
                identity.forget(&token);
                refused = Some(token);
            }
            Err(failure) => {
                return Err(Box::new(failed(
                    failure,
                    session.conn_id.as_str(),
                    upstream,
                )));
            }
        }
    };
    let auth = crate::methods::hello_auth(state, session);
    let (hello, issued) = relayed_hello_payload(&payload, &auth).map_err(|e| {
        Box::new(unavailable(format!(
            "the upstream gateway {} sent an unreadable hello: {e}",
            upstream.url
        )))
    })?;
    // OpenClaw hands the device's current token back on each session; a new one replaces the
    // last (it invalidated it).
    if let Some(issued) = issued {
        identity.remember(issued).await;
    }
    Ok((ws, proto::ok_text(&session.connect_id, &hello)))
}

/// Pairs driftless's device with the upstream (its shared token from `upstream.token` and the
/// device proof, asking for every operator scope driftless may grant; OpenClaw pairs it silently
/// over loopback) and keeps the device token its hello-ok carries. That session is closed at once:
/// a client's session asks for the client's own scopes. `stale` is a device token the upstream
/// just refused: another session's pairing, done while this one waited, is used instead.
async fn pair(
    state: &State,
    upstream: &Upstream,
    stale: Option<&SecretValue>,
) -> Result<Arc<SecretValue>, Box<ErrorShape>> {
    let identity = &upstream.identity;
    let _one = identity.pairing.lock().await;
    if let Some(token) = identity.token()
        && !stale.is_some_and(|s| s.same_as(&token))
    {
        return Ok(token);
    }
    let shared = state
        .secrets
        .snapshot()
        .get(UPSTREAM_TOKEN)
        .cloned()
        .ok_or_else(|| {
            Box::new(unavailable(
                "no upstream credential is resolved (upstream.token)".into(),
            ))
        })?;
    let params = pairing_client_params();
    let scopes: Vec<String> = PAIRING_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let opened = handshake(upstream, false, |nonce| {
        upstream_connect_text(
            Some(&params),
            &scopes,
            UpstreamAuth::SharedToken(shared.expose()),
            nonce,
            now_ms(),
            |f| identity.prove(f),
        )
    })
    .await;
    drop(shared);
    let (payload, mut ws) = match opened {
        Ok(opened) => opened,
        Err(Failure::Refused(e)) if e.detail_code() == Some("PAIRING_REQUIRED") => {
            return Err(Box::new(approval_required(&e, upstream)));
        }
        Err(failure) => return Err(Box::new(failed(failure, "pairing", upstream))),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    let Some(issued) = upstream_device_token(&payload) else {
        tracing::error!(
            upstream = upstream.url,
            device = identity.device_id(),
            "the upstream gateway accepted driftless's device but issued no device token"
        );
        return Err(Box::new(unavailable(format!(
            "the upstream gateway {} issued no device token to driftless's device",
            upstream.url
        ))));
    };
    tracing::info!(
        upstream = upstream.url,
        device = identity.device_id(),
        "driftless's device is paired with the upstream gateway"
    );
    Ok(identity.remember(issued).await)
}

/// The upstream does not pair driftless's device silently: it does so only for a client on its
/// loopback. driftless does not fall back to shared-token sessions (they would close on the
/// upstream's next token rotation); the operator approves the device on the upstream once.
fn approval_required(refusal: &ErrorShape, upstream: &Upstream) -> ErrorShape {
    let request = refusal
        .details
        .as_ref()
        .and_then(|d| d.request_id.as_deref())
        .unwrap_or("<request>");
    tracing::error!(
        upstream = upstream.url,
        device = upstream.identity.device_id(),
        request,
        "the upstream gateway asks to approve driftless's device (it pairs silently only over loopback): run `openclaw devices approve <request>` on the OpenClaw host"
    );
    unavailable(format!(
        "the upstream gateway {} has not paired driftless's device {} (silent pairing works only \
         over loopback); the operator must approve it on the OpenClaw host (`openclaw devices approve {request}`)",
        upstream.url,
        upstream.identity.device_id()
    ))
}

/// Connects to the upstream, waits for its `connect.challenge`, sends the `connect` that
/// `connect` builds from the challenge's nonce and reads the answer; all within
/// [`UPSTREAM_DEADLINE`], waiting for a turn ([`HANDSHAKES_IN_FLIGHT`]) included.
///
/// `browser`: the client is a browser whose origin driftless allowed. OpenClaw checks the origin
/// of every Control UI / webchat connect and refuses one without `Origin`; driftless, which
/// checked the browser's own origin, presents the upstream's own origin, which OpenClaw accepts
/// from a loopback peer without proxy headers (driftless). Other sessions send none: an `Origin`
/// would make OpenClaw treat them as browsers (no silent pairing, the browser limiter).
async fn handshake(
    upstream: &Upstream,
    browser: bool,
    connect: impl FnOnce(&str) -> Result<String, String>,
) -> Result<(Box<RawValue>, UpstreamWs), Failure> {
    let url = &upstream.url;
    let gone = |e: tokio_tungstenite::tungstenite::Error| {
        Failure::Unreachable(format!("the upstream gateway {url} went away: {e}"))
    };
    let opened = tokio::time::timeout(UPSTREAM_DEADLINE, async {
        // Held until the upstream has answered `connect` (never closed: the gateway's lifetime).
        let _turn = upstream.handshakes.acquire().await;
        let tcp = TcpStream::connect(&upstream.authority).await.map_err(|e| {
            Failure::Unreachable(format!("cannot reach the upstream gateway {url}: {e}"))
        })?;
        let _ = tcp.set_nodelay(true);
        let config = WebSocketConfig::default()
            .max_message_size(Some(proto::MAX_PAYLOAD_BYTES))
            .max_frame_size(Some(proto::MAX_PAYLOAD_BYTES));
        let mut request = url.as_str().into_client_request().map_err(|e| {
            Failure::Unreachable(format!("the upstream gateway URL {url} is not usable: {e}"))
        })?;
        if browser
            && let Ok(origin) = HeaderValue::from_str(&format!("http://{}", upstream.authority))
        {
            request.headers_mut().insert(header::ORIGIN, origin);
        }
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| {
                Failure::Unreachable(format!(
                    "the upstream gateway {url} refused the WebSocket: {e}"
                ))
            })?;
        let closed = || {
            Failure::Unreachable(format!(
                "the upstream gateway {url} closed during its handshake"
            ))
        };
        let nonce = loop {
            match ws.next().await.ok_or_else(closed)?.map_err(gone)? {
                Message::Text(t) => {
                    if let Some(nonce) = challenge_nonce(&t) {
                        break nonce;
                    }
                }
                Message::Close(_) => return Err(closed()),
                _ => {}
            }
        };
        let connect = connect(&nonce).map_err(Failure::Invalid)?;
        ws.send(Message::Text(connect.into())).await.map_err(gone)?;
        loop {
            if let Message::Text(t) = ws.next().await.ok_or_else(closed)?.map_err(gone)?
                && let Some(res) = parse_upstream_hello(&t)
            {
                return match (res.ok, res.payload, res.error) {
                    (true, Some(payload), _) => Ok((payload.to_owned(), ws)),
                    (_, _, Some(error)) => Err(Failure::Refused(Box::new(error))),
                    _ => Err(Failure::Unreachable(format!(
                        "the upstream gateway {url} answered connect without a hello"
                    ))),
                };
            }
        }
    })
    .await;
    opened.unwrap_or_else(|_| {
        Err(Failure::Unreachable(format!(
            "the upstream gateway {url} did not answer within {} s",
            UPSTREAM_DEADLINE.as_secs()
        )))
    })
}

/// What the client hears when an upstream handshake failed.
fn failed(failure: Failure, conn_id: &str, upstream: &Upstream) -> ErrorShape {
    match failure {
        Failure::Invalid(e) => ErrorShape::new(
            codes::INVALID_REQUEST,
            format!("invalid connect params: {e}"),
        ),
        Failure::Unreachable(reason) => {
            tracing::warn!(conn_id, reason, "upstream session not opened");
            unavailable(reason)
        }
        Failure::Refused(refusal) => upstream_refusal(*refusal, &upstream.url),
    }
}

/// OpenClaw's own "starting" and protocol answers, which reach the client as they are.
fn passes_through(refusal: &ErrorShape) -> bool {
    refusal.code == codes::UNAVAILABLE || refusal.detail_code() == Some("PROTOCOL_MISMATCH")
}

/// What the client hears when the upstream refused driftless's `connect`: OpenClaw's own
/// "starting" and protocol answers as they are; anything else (a refused upstream credential,
/// say) is driftless's problem, not the client's, so it becomes `UNAVAILABLE` naming the reason.
fn upstream_refusal(refusal: ErrorShape, url: &str) -> ErrorShape {
    if passes_through(&refusal) {
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
    let mut signals = Signals::subscribe(state, session, true);
    let end = 'session: {
        if let Some(end) = signals.hello(ws, session, hello).await {
            break 'session end;
        }
        let mut role_refusals = 0u32;
        let next_signal = signals.next(session);
        tokio::pin!(next_signal);
        loop {
            tokio::select! {
                biased;
                // driftless's own guarded events (pairing); `tick` and every other event come
                // from the upstream.
                (signals, signal) = &mut next_signal => {
                    if let Some(end) = signal.act(ws, session).await {
                        break 'session end;
                    }
                    next_signal.set(signals.next(session));
                }
                msg = upstream.next() => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Err(end) = crate::conn::send_text(ws, t).await {
                                break 'session end;
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
                            if let Err(end) = crate::conn::send_text(ws, reply.text).await {
                                break 'session end;
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
                            // An upstream that takes nothing for the stall limit is as lost.
                            if crate::conn::send_bounded(&mut upstream, Message::Text(text)).await.is_err() {
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
