//! Front mode's HTTP: every request that is not driftless's own (`/v1/*`, `/healthz`, `/readyz`,
//! `/metrics`) and not a WebSocket upgrade is relayed to the upstream OpenClaw gateway, which serves
//! its Control UI (`GET /` and its assets) and its other HTTP endpoints on the same port.
//!
//! - Bodies stream both ways; nothing is read whole. A client's body is bounded by
//!   [`MAX_REQUEST_BODY`] and must keep arriving (each chunk within the handshake timeout);
//!   the upstream's answer must start within [`RESPONSE_HEAD_DEADLINE`], each read within
//!   [`READ_IDLE_DEADLINE`], and the whole answer within [`RESPONSE_DEADLINE`].
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the fields it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are dropped both ways.
//! - driftless's credentials stay driftless's: `Authorization` and `Proxy-Authorization` are not
//!   relayed (OpenClaw's token-protected endpoints need OpenClaw's token, which driftless never
//!   hands out).
//! - Every relayed request reaches OpenClaw as driftless's own: a local direct request (a
//!   loopback peer without proxy headers; a client's `Forwarded`/`X-Forwarded-*`/`X-Real-IP` are
//!   dropped). OpenClaw refuses proxy-shaped requests from a proxy it does not trust, and even from
//!   a trusted one when the client address is loopback, so forwarding the client's address would
//!   lock remote browsers out. What OpenClaw gives a local direct HTTP request beyond its
//!   public Control UI is not reachable through driftless: its token-protected endpoints need an
//!   `Authorization` driftless does not relay, and its probes (which add details for local
//!   requests) are not relayed ([`is_driftless_path`]). Who may use the UI is decided on its
//!   WebSocket, by driftless (origin, credentials, pairing).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::State;
use crate::accept::Peer;

/// A relayed request body's cap: OpenClaw's own payload cap (`maxPayload`).
const MAX_REQUEST_BODY: usize = driftless_protocol::MAX_PAYLOAD_BYTES;
/// How long the upstream may take to answer a request's head.
const RESPONSE_HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// How long one read from the upstream may wait (a stalled upstream).
const READ_IDLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a whole relayed answer may take (a client that reads too slowly, a stream that
/// never ends); the Control UI's largest asset takes well under a second on loopback.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(300);
/// How long connecting to the upstream may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long an idle connection to the upstream is kept for the next request: less than Node's
/// HTTP keep-alive timeout (5 s, which OpenClaw's server keeps), so driftless does not send a
/// request on a connection OpenClaw is closing at that moment (the request would fail).
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The client the HTTP relay uses: plain HTTP/1.1 to the upstream's address, no redirects
/// followed (the browser follows them), no proxy from the environment.
pub(crate) fn client() -> Result<reqwest::Client, String> {
    crate::http_client(
        crate::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .connect_timeout(CONNECT_DEADLINE)
            .pool_idle_timeout(POOL_IDLE)
            .read_timeout(READ_IDLE_DEADLINE),
    )
}

/// The paths driftless answers itself in front mode, whatever OpenClaw serves there: its own
/// (`/v1/*`, `/healthz`, `/readyz`, `/metrics`) and OpenClaw's other probes (`/health`, `/ready`,
/// `/startup`, `/startupz` and below), whose details OpenClaw gives any local request: relayed,
/// every client would be one.
pub(crate) fn is_driftless_path(path: &str) -> bool {
    const ROOTS: [&str; 8] = [
        "/v1",
        "/healthz",
        "/readyz",
        "/metrics",
        "/health",
        "/ready",
        "/startup",
        "/startupz",
    ];
    ROOTS.iter().any(|root| {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The router's fallback in front mode: driftless's own paths keep driftless's answer (the
/// refusal any non-upgrade request gets); everything else is relayed.
pub(crate) async fn fallback(
    state: AxState<Arc<State>>,
    peer: ConnectInfo<Peer>,
    req: axum::extract::Request,
) -> Response {
    match &state.upstream {
        Some(upstream) if !is_driftless_path(req.uri().path()) => {
            relay(&state, upstream, req).await
        }
        _ => crate::accept::not_an_upgrade(state, peer, req).await,
    }
}

async fn relay(state: &State, upstream: &super::Upstream, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let url = format!("http://{}{path}", upstream.authority);
    let page = is_page_load(&parts.method, &parts.headers);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    for name in [header::AUTHORIZATION, header::PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    for name in crate::origin::PROXY_HEADERS {
        headers.remove(name);
    }
    let body = reqwest::Body::wrap_stream(bounded(body, state.handshake_timeout));
    let sent = upstream
        .http
        .request(parts.method, &url)
        .headers(headers)
        .body(body)
        .send();
    let answer = match tokio::time::timeout(RESPONSE_HEAD_DEADLINE, sent).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(ref e)) if let Some(refused) = body_error(e) => {
            let status = match refused {
                BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Stalled => StatusCode::REQUEST_TIMEOUT,
                BodyError::Read(_) => StatusCode::BAD_REQUEST,
            };
            return (
                status,
                format!("{refused}; send at most {MAX_REQUEST_BODY} bytes, without pauses\n"),
            )
                .into_response();
        }
        Ok(Err(e)) => {
            let why = format!("{e}");
            return unreachable(&upstream.url, &why, StatusCode::BAD_GATEWAY, page);
        }
        Err(_) => {
            return unreachable(
                &upstream.url,
                &format!("no answer within {} s", RESPONSE_HEAD_DEADLINE.as_secs()),
                StatusCode::GATEWAY_TIMEOUT,
                page,
            );
        }
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    strip_hop_by_hop(&mut headers);
    // The whole answer within its deadline: a stream cut there ends the response early, which
    // the client sees as an incomplete body.
    let stream = answer
        .bytes_stream()
        .take_until(tokio::time::sleep(RESPONSE_DEADLINE));
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// How soon a browser's page load that found the upstream unreachable tries again.
const PAGE_RETRY_SECS: u32 = 2;

/// A browser loading a page (the Control UI), rather than a script or a tool: a `GET` that
/// accepts HTML.
fn is_page_load(method: &axum::http::Method, headers: &HeaderMap) -> bool {
    method == axum::http::Method::GET
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/html"))
}

/// A 502/504 naming the upstream and what to do (no request detail, which could carry a secret).
/// A browser's page load gets it as a page that loads itself again every [`PAGE_RETRY_SECS`]:
/// OpenClaw restarting (it restarts itself to apply some config changes) or still starting must
/// not leave a Control UI tab on an error until someone reloads it by hand.
fn unreachable(url: &str, why: &str, status: StatusCode, page: bool) -> Response {
    tracing::warn!(
        upstream = url,
        reason = why,
        "cannot relay an HTTP request to the upstream gateway"
    );
    let message = format!(
        "driftless cannot reach the upstream gateway {url} ({why}); check that OpenClaw is \
         running (GET /readyz says why it is not ready)"
    );
    if !page {
        return (status, format!("{message}\n")).into_response();
    }
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{PAGE_RETRY_SECS}\">\n\
         <title>OpenClaw is not reachable</title>\n\
         <p>{escaped}</p>\n<p>This page tries again every {PAGE_RETRY_SECS} seconds.</p>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::RETRY_AFTER, PAGE_RETRY_SECS.to_string()),
        ],
        html,
    )
        .into_response()
}

/// Drops RFC 9110 §7.6.1's hop-by-hop fields and every field `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Why a client's body stopped being relayed.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body over {MAX_REQUEST_BODY} bytes")]
    TooLarge,
    #[error("request body stalled")]
    Stalled,
    #[error("request body: {0}")]
    Read(#[from] axum::Error),
}

/// The client's body's own failure behind a failed upstream request, if that is what failed.
fn body_error(e: &reqwest::Error) -> Option<&BodyError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

/// The client's body as a stream: each chunk within `idle`, at most [`MAX_REQUEST_BODY`] in all;
/// the first violation ends it with an error (the upstream request then fails).
fn bounded(
    body: Body,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    futures_util::stream::unfold(
        Some((body.into_data_stream(), 0usize)),
        move |state| async move {
            let (mut stream, seen) = state?;
            let item = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => Err(BodyError::Stalled),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(BodyError::from(e)),
                Ok(Some(Ok(chunk))) if seen + chunk.len() > MAX_REQUEST_BODY => {
                    Err(BodyError::TooLarge)
                }
                Ok(Some(Ok(chunk))) => {
                    let seen = seen + chunk.len();
                    return Some((Ok(chunk), Some((stream, seen))));
                }
            };
            Some((item, None))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn driftless_keeps_its_own_paths() {
        for own in [
            "/v1",
            "/v1/models",
            "/v1/anything",
            "/healthz",
            "/readyz",
            "/metrics",
            "/health",
            "/ready",
            "/startupz",
            "/healthz/x",
        ] {
            assert!(is_driftless_path(own), "{own}");
        }
        for theirs in ["/", "/assets/index.js", "/v10", "/healthy", "/api/health"] {
            assert!(!is_driftless_path(theirs), "{theirs}");
        }
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("accept", "text/html"),
            ("content-type", "text/plain"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "content-type"]);
    }
}
