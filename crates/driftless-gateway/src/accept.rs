//! Where a connection enters: the accept loop and the one task each connection gets.
//!
//! The task runs the WebSocket session itself on the same socket: no second task per upgrade and
//! no HTTP/1-or-2 sniff (the gateway speaks HTTP/1.1 only). When the connection's first read holds
//! a whole, valid upgrade request (what every WebSocket client sends), the `101` is written
//! directly, as a minimal server would; anything else (the probes, `/metrics`, `/v1/*`, refusals,
//! an upgrade split across reads or after a keep-alive request) goes to the HTTP server, which
//! reads the first read's bytes again. Both paths decide an upgrade with the same
//! [`websocket_key`] and [`reserve_upgrade`].
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
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use driftless_protocol as proto;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower_service::Service;

use crate::budget::{BudgetedStream, PREAUTH_READ_BUDGET, ReadBudget};
use crate::throttle::{LOG_EVERY, Throttle};
use crate::{State, devices, origin};

/// Connections one address may hold before any of them authenticated a WebSocket session: far
/// below the 1,024 descriptors a process gets by default, and above an HTTP client's usual pool.
pub(crate) const MAX_UNAUTHENTICATED_PER_ADDRESS: u32 = 256;
/// WebSockets one address may have in their handshake (OpenClaw's default); more get HTTP 503.
pub(crate) const MAX_PREAUTH_UPGRADES_PER_ADDRESS: u32 = 32;

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
    /// The upgrade's browser origin, checked when its `connect` arrives.
    origin: origin::Verdict,
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

    /// The upgrade request's browser origin.
    pub(crate) fn origin(&self) -> origin::Verdict {
        self.upgrade.origin
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
    let accept_errors = Throttle::new(LOG_EVERY);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if let Some(held_back) = accept_errors.admit() {
                    tracing::warn!(
                        error = %e,
                        held_back,
                        "cannot accept a connection; raise the open-file limit (LimitNOFILE) if this repeats"
                    );
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

/// Bytes a connection's first read may take. A WebSocket client's upgrade request (a few hundred
/// bytes; a browser's, about a kilobyte) arrives whole in it.
const FIRST_READ_BYTES: usize = 2048;

/// One connection, start to end: the WebSocket session at once when the first read holds a whole
/// upgrade request (the common case, as cheap as the floor's), HTTP/1.1 requests otherwise, then
/// the WebSocket session if one of them upgraded.
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
    let mut io = BudgetedStream::new(tcp, budget.clone());
    let mut first = Vec::with_capacity(FIRST_READ_BYTES);
    match tokio::time::timeout(state.handshake_timeout, io.read_buf(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        // Silent until the timeout, closed, or reset: nothing to answer.
        _ => return,
    }
    let ip = addr.ip().to_canonical();
    let Some((upgrade, switching, head_len)) = direct_upgrade(&state, ip, &budget, &first) else {
        let peer = Peer {
            addr,
            budget,
            upgrade: Arc::default(),
        };
        // Boxed: the HTTP server's futures are several times a WebSocket session's, and every
        // connection's task would otherwise be allocated and moved at that size.
        return Box::pin(http(Replay::new(first, io), peer, app, state, slot)).await;
    };
    if io.write_all(switching.as_bytes()).await.is_err() {
        return;
    }
    // What the client sent after its request head (nothing, unless it did not wait for the 101).
    let read = match first.len() > head_len {
        true => first.split_off(head_len),
        false => Vec::new(),
    };
    drop(first);
    // Boxed: a task's future is moved whole when it is spawned, stored and finished (four copies
    // of a session's ~2.5 KiB state each); boxed, the session is moved once.
    Box::pin(websocket(io, read, addr, state, slot, upgrade)).await;
}

/// HTTP/1.1 requests (the probes, `/metrics`, `/v1/*`, and every upgrade the first read did not
/// hold whole), then the WebSocket session if one upgraded.
async fn http(io: Replay, peer: Peer, app: Router, state: Arc<State>, slot: AddressSlot) {
    let addr = peer.addr;
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
        .serve_connection(TokioIo::new(io), service);
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
    // What the HTTP server read past the upgrade request, then what it never read of the first.
    let (io, unread) = parts.io.into_inner().into_parts();
    let mut read = parts.read_buf.to_vec();
    read.extend_from_slice(&unread);
    websocket(io, read, addr, state, slot, upgrade).await;
}

/// The WebSocket session on an upgraded socket, `read` being what was read past the upgrade.
async fn websocket(
    io: BudgetedStream,
    read: Vec<u8>,
    addr: SocketAddr,
    state: Arc<State>,
    slot: AddressSlot,
    upgrade: UpgradeSlot,
) {
    let config = WebSocketConfig::default()
        // Small buffers keep an idle connection at a few KB; the message cap is the
        // post-handshake one (before it, the socket's read budget bounds what a frame can make
        // us buffer, and the 64 KiB cap is checked per frame in `conn`).
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(proto::MAX_BUFFERED_BYTES)
        .max_message_size(Some(proto::MAX_PAYLOAD_BYTES))
        .max_frame_size(Some(proto::MAX_PAYLOAD_BYTES));
    let ws = WebSocketStream::from_partially_read(io, read, Role::Server, Some(config)).await;
    let preauth = Preauth {
        _address: slot,
        upgrade,
    };
    crate::conn::run(ws, addr, state, preauth).await;
}

/// The common case, decided without the HTTP server: the first read holds a whole HTTP/1.1
/// WebSocket upgrade request, valid, without a body, and the address has room for another
/// handshake. Returns the reserved handshake slot, the `101` to send and the request head's
/// length. `None` leaves the request to the HTTP server, which answers everything else
/// (refusals included) the one way it always has.
fn direct_upgrade(
    state: &Arc<State>,
    ip: IpAddr,
    budget: &ReadBudget,
    first: &[u8],
) -> Option<(UpgradeSlot, String, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(first).ok()? else {
        return None;
    };
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    if req.version != Some(1) || body {
        return None;
    }
    let key = websocket_key(&method, req.headers).ok()?;
    let upgrade = reserve_upgrade(state, ip, budget, req.headers)?;
    // Written into one buffer of the right size: no temporary string per line.
    let mut switching = String::with_capacity(SWITCHING_CAPACITY);
    switching.push_str("HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in SWITCHING_HEADERS {
        let _ = write!(switching, "{name}: {value}\r\n");
    }
    let _ = write!(
        switching,
        "{}: {}\r\n\r\n",
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key)
    );
    Some((upgrade, switching, head_len))
}

/// The HTTP server's view of a socket: the bytes the first read took, then the socket.
struct Replay {
    first: Vec<u8>,
    at: usize,
    io: BudgetedStream,
}

impl Replay {
    fn new(first: Vec<u8>, io: BudgetedStream) -> Replay {
        Replay { first, at: 0, io }
    }

    /// The socket, and what of the first read was never read.
    fn into_parts(self) -> (BudgetedStream, Vec<u8>) {
        let mut first = self.first;
        first.drain(..self.at);
        (self.io, first)
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unread = &this.first[this.at..];
        if unread.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
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
    let Some(upgrade) = reserve_upgrade(state, ip, &peer.budget, headers) else {
        state.metrics.preauth_rejections.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many unauthenticated sockets",
        )
            .into_response();
    };
    *peer.upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(upgrade);
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    for (name, value) in SWITCHING_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// A `101`'s headers besides `Sec-WebSocket-Accept`.
const SWITCHING_HEADERS: [(header::HeaderName, &str); 2] = [
    (header::CONNECTION, "upgrade"),
    (header::UPGRADE, "websocket"),
];

/// The directly written `101`'s length (129 bytes) with room to spare.
const SWITCHING_CAPACITY: usize = 160;

/// Reserves a WebSocket handshake's place among the address's and limits the socket's reads to
/// the pre-auth budget; `None` when the address has [`MAX_PREAUTH_UPGRADES_PER_ADDRESS`] already.
/// The slot carries the request's browser origin verdict.
fn reserve_upgrade<H: Headers + ?Sized>(
    state: &Arc<State>,
    ip: IpAddr,
    budget: &ReadBudget,
    headers: &H,
) -> Option<UpgradeSlot> {
    let room = state.addresses.update(ip, |c| {
        let room = c.upgrades < MAX_PREAUTH_UPGRADES_PER_ADDRESS;
        c.upgrades += u32::from(room);
        room
    });
    room.then(|| {
        budget.limit(PREAUTH_READ_BUDGET);
        UpgradeSlot {
            state: state.clone(),
            ip,
            budget: budget.clone(),
            origin: browser_origin(state, ip, headers),
        }
    })
}

/// The upgrade's browser origin verdict (`origin`); a request without `Origin` (every
/// non-browser client) costs one header scan.
fn browser_origin<H: Headers + ?Sized>(state: &State, ip: IpAddr, headers: &H) -> origin::Verdict {
    let Some(origin) = headers.values("origin").next() else {
        return origin::Verdict::Absent;
    };
    let request = origin::Request {
        origin: Some(origin),
        host: headers.values("host").next(),
        forwarded: origin::PROXY_HEADERS
            .iter()
            .any(|h| headers.values(h).next().is_some()),
    };
    origin::check(
        &request,
        devices::is_local(ip, &state.local_addresses),
        &state.allowed_origins,
    )
}

/// A request's headers by name, as the HTTP server parsed them or as the first read did.
trait Headers {
    /// The values of header `name` (lowercase), in order.
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]>;
}

impl Headers for HeaderMap {
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'h>(&'h self, name: &'static str) -> impl Iterator<Item = &'h [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// The client's `Sec-WebSocket-Key` when the request is a valid WebSocket upgrade (RFC 6455
/// §4.2.1), or the refusal.
fn websocket_key<'h, H: Headers + ?Sized>(
    method: &Method,
    headers: &'h H,
) -> Result<&'h [u8], (StatusCode, &'static str)> {
    let has_token = |name: &'static str, token: &str| {
        headers.values(name).any(|v| {
            std::str::from_utf8(v)
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        ));
    }
    if !has_token("connection", "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if !has_token("upgrade", "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        ));
    }
    if headers
        .values("sec-websocket-version")
        .next()
        .is_none_or(|v| v != b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    headers.values("sec-websocket-key").next().ok_or((
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
        assert_eq!(derive_accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
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
