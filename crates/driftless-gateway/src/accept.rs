//! Where a connection enters: the accept loop and the one task each connection gets.
//!
//! The task serves HTTP/1.1 (the probes, `/metrics`, `/v1/*`) and, once a request is answered
//! `101 Switching Protocols`, runs the WebSocket session itself on the same socket: no second task
//! per upgrade and no HTTP/1-or-2 sniff (the gateway speaks HTTP/1.1 only).
//!
//! Everything below authentication is bounded, so a client that holds no credential cannot take
//! the descriptors or the memory the clients that hold one need:
//! - an address may hold [`MAX_UNAUTHENTICATED_PER_ADDRESS`] connections that have not
//!   authenticated a WebSocket session (idle, half-open, HTTP keep-alive, pre-auth WebSocket);
//!   more are closed as soon as they are accepted, before they cost a task or a buffer;
//! - of those, [`MAX_PREAUTH_UPGRADES_PER_ADDRESS`] may be WebSockets in their handshake
//!   (OpenClaw's default; more get 503);
//! - a request's headers, and the idle time before the next one, are bounded by the handshake
//!   timeout; the WebSocket handshake that follows has its own (`conn`);
//! - when the process runs out of descriptors anyway (many addresses), the loop keeps one in
//!   reserve to accept and close the waiting connection instead of spinning on `EMFILE`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use driftless_protocol as proto;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower_service::Service;

use crate::State;
use crate::budget::{BudgetedStream, PREAUTH_READ_BUDGET, ReadBudget};

/// Connections one address may hold before any of them authenticated a WebSocket session: far
/// below the 1,024 descriptors a process gets by default, and above an HTTP client's usual pool.
pub(crate) const MAX_UNAUTHENTICATED_PER_ADDRESS: u32 = 256;
/// WebSockets one address may have in their handshake (OpenClaw's default); more get HTTP 503.
pub(crate) const MAX_PREAUTH_UPGRADES_PER_ADDRESS: u32 = 32;
/// How often an `accept` failure (out of descriptors) is logged at most.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The WebSocket session this gateway runs on an upgraded socket.
pub(crate) type WebSocket = WebSocketStream<BudgetedStream>;

/// Per address: connections not yet authenticated, and how many of them are WebSockets.
#[derive(Default)]
pub(crate) struct AddressBook(Mutex<HashMap<IpAddr, Counts>>);

#[derive(Default)]
struct Counts {
    unauthenticated: u32,
    upgrades: u32,
}

impl AddressBook {
    fn update<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Counts) -> R) -> R {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = map.entry(ip).or_default();
        let r = f(counts);
        if counts.unauthenticated == 0 && counts.upgrades == 0 {
            map.remove(&ip);
        }
        r
    }
}

/// A connection that has not authenticated yet; released when it does or when it closes.
pub(crate) struct AddressSlot {
    state: Arc<State>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(state: &Arc<State>, ip: IpAddr) -> Option<AddressSlot> {
        state
            .addresses
            .update(ip, |c| {
                let room = c.unauthenticated < MAX_UNAUTHENTICATED_PER_ADDRESS;
                c.unauthenticated += u32::from(room);
                room
            })
            .then(|| AddressSlot {
                state: state.clone(),
                ip,
            })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.state
            .addresses
            .update(self.ip, |c| c.unauthenticated -= 1);
    }
}

/// A WebSocket in its handshake: its place among the address's upgrades and the socket's read
/// budget. Both are released when the handshake ends either way.
pub(crate) struct UpgradeSlot {
    state: Arc<State>,
    ip: IpAddr,
    budget: ReadBudget,
}

impl Drop for UpgradeSlot {
    fn drop(&mut self) {
        self.budget.lift();
        self.state.addresses.update(self.ip, |c| c.upgrades -= 1);
    }
}

/// What a WebSocket holds until `hello-ok`: released by `conn` as soon as it authenticated.
pub(crate) struct Preauth {
    _address: AddressSlot,
    upgrade: UpgradeSlot,
}

impl Preauth {
    /// The socket read more than a handshake may: the client sent an oversized pre-auth frame.
    pub(crate) fn over_budget(&self) -> bool {
        self.upgrade.budget.exhausted()
    }
}

/// What a request handler knows about its connection (axum `ConnectInfo`).
#[derive(Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    budget: ReadBudget,
    /// Set by the upgrade handler; the connection's task takes it after the `101`.
    upgrade: Arc<Mutex<Option<UpgradeSlot>>>,
}

/// Accepts until `stop` resolves, spawning one task per connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<State>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut last_warned: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if last_warned.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                    tracing::warn!(
                        error = %e,
                        "cannot accept a connection; raise the open-file limit (LimitNOFILE) if this repeats"
                    );
                    last_warned = Some(Instant::now());
                }
                // Out of descriptors: free the reserve to accept and close the waiting
                // connection, so the loop neither spins nor leaves it hanging. Any other error
                // (a connection aborted before accept) concerns that connection only: the next
                // one is served.
                if out_of_descriptors(&e) && reserve.take().is_some() {
                    drop(listener.accept().await);
                    reserve = std::fs::File::open("/dev/null").ok();
                } else if out_of_descriptors(&e) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Some(slot) = AddressSlot::take(&state, addr.ip().to_canonical()) else {
            state.metrics.address_cap_rejections.inc();
            continue;
        };
        tokio::spawn(connection(tcp, addr, app.clone(), state.clone(), slot));
    }
}

/// `EMFILE` (the process's descriptor limit) or `ENFILE` (the system's), Linux's numbers: std
/// has no stable `ErrorKind` for them.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// One connection, start to end: HTTP/1.1 requests, then the WebSocket session if one upgraded.
async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    state: Arc<State>,
    slot: AddressSlot,
) {
    // Small frames (handshake replies, SSE chunks) must not wait for Nagle + delayed ACK.
    let _ = tcp.set_nodelay(true);
    let budget = ReadBudget::unlimited();
    let peer = Peer {
        addr,
        budget: budget.clone(),
        upgrade: Arc::default(),
    };
    let upgrade = peer.upgrade.clone();
    let upgrade_state = state.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Any request asking to upgrade is a WebSocket upgrade, whatever its path (OpenClaw's
        // server takes every `upgrade` request the same way); it needs no router.
        if req.headers().contains_key(header::UPGRADE) {
            let res = upgrade_or_refusal(&upgrade_state, &peer, req.method(), req.headers());
            return Either::Left(std::future::ready(Ok(res)));
        }
        req.extensions_mut().insert(ConnectInfo(peer.clone()));
        // A `Router` is always ready (axum's documented contract), so no `poll_ready` first.
        Either::Right(app.clone().call(req))
    });
    let mut http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.handshake_timeout)
        .serve_connection(TokioIo::new(BudgetedStream::new(tcp, budget)), service);
    let mut control = state.secrets.control.subscribe();
    let served = loop {
        tokio::select! {
            served = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => break served,
            changed = control.changed() => {
                if changed.is_err() || control.borrow().shutdown {
                    // Finish the request in flight, then close; an upgrade still completes.
                    std::pin::Pin::new(&mut http).graceful_shutdown();
                    break std::future::poll_fn(|cx| http.poll_without_shutdown(cx)).await;
                }
            }
        }
    };
    let taken = upgrade
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let (Ok(()), Some(upgrade)) = (served, taken) else {
        return;
    };
    let parts = http.into_parts();
    let config = WebSocketConfig::default()
        // Small buffers keep an idle connection at a few KB; the message cap is the
        // post-handshake one (before it, the socket's read budget bounds what a frame can make
        // us buffer, and the 64 KiB cap is checked per frame in `conn`).
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(proto::MAX_BUFFERED_BYTES)
        .max_message_size(Some(proto::MAX_PAYLOAD_BYTES))
        .max_frame_size(Some(proto::MAX_PAYLOAD_BYTES));
    let ws = WebSocketStream::from_partially_read(
        parts.io.into_inner(),
        parts.read_buf.to_vec(),
        Role::Server,
        Some(config),
    )
    .await;
    let preauth = Preauth {
        _address: slot,
        upgrade,
    };
    crate::conn::run(ws, addr, state, preauth).await;
}

/// Every request no route claims and that does not ask to upgrade: the refusal a WebSocket
/// upgrade without its headers gets (the statuses and texts clients saw from axum's extractor).
pub(crate) async fn not_an_upgrade(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: axum::extract::Request,
) -> Response {
    upgrade_or_refusal(&state, &peer, req.method(), req.headers())
}

/// A `101 Switching Protocols` that reserves the socket's pre-auth slot and read budget for the
/// connection's task, or the refusal: not a valid upgrade, or too many handshakes from the
/// address (503).
fn upgrade_or_refusal(
    state: &Arc<State>,
    peer: &Peer,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let key = match websocket_key(method, headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let ip = peer.addr.ip().to_canonical();
    let room = state.addresses.update(ip, |c| {
        let room = c.upgrades < MAX_PREAUTH_UPGRADES_PER_ADDRESS;
        c.upgrades += u32::from(room);
        room
    });
    if !room {
        state.metrics.preauth_rejections.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many unauthenticated sockets",
        )
            .into_response();
    }
    peer.budget.limit(PREAUTH_READ_BUDGET);
    *peer.upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(UpgradeSlot {
        state: state.clone(),
        ip,
        budget: peer.budget.clone(),
    });
    let accept = derive_accept_key(key.as_bytes());
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// The client's `Sec-WebSocket-Key` when the request is a valid WebSocket upgrade (RFC 6455
/// §4.2.1), or the refusal.
fn websocket_key<'h>(
    method: &Method,
    headers: &'h HeaderMap,
) -> Result<&'h HeaderValue, (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        ));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    headers.get(header::SEC_WEBSOCKET_KEY).ok_or((
        StatusCode::BAD_REQUEST,
        "`Sec-WebSocket-Key` header missing",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn a_valid_upgrade_yields_its_key_and_rfc_6455_accept() {
        let h = upgrade_headers();
        let key = websocket_key(&Method::GET, &h).unwrap();
        // RFC 6455 §1.3's worked example.
        assert_eq!(
            derive_accept_key(key.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_missing_piece_is_refused_with_its_reason() {
        assert_eq!(
            websocket_key(&Method::POST, &upgrade_headers())
                .unwrap_err()
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        for (name, text) in [
            (header::CONNECTION, "Connection header"),
            (header::UPGRADE, "`Upgrade` header"),
            (header::SEC_WEBSOCKET_VERSION, "`Sec-WebSocket-Version`"),
            (header::SEC_WEBSOCKET_KEY, "`Sec-WebSocket-Key`"),
        ] {
            let mut h = upgrade_headers();
            h.remove(&name);
            let (status, reason) = websocket_key(&Method::GET, &h).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(reason.starts_with(text), "{name}: {reason}");
        }
    }
}
