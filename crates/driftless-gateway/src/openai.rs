//! OpenAI-compatible endpoints: `POST /v1/chat/completions` (streaming passed through chunk by
//! chunk) and `GET /v1/models`, calling the configured `[providers.<id>]` with the provider key
//! of the *current* snapshot, so a rotated key is used by the next request without a restart.
//! Clients authenticate with the gateway's shared secret or a paired device's token as a Bearer.
//!
//! An upstream 401/403 may mean the key was rotated before the watcher fired: the gateway then
//! re-resolves once and retries once if the key's fingerprint changed; otherwise the client gets a
//! 502 naming the provider and the key's fingerprint, never the key. Bodies are never logged.
//!
//! Nothing is read unbounded: a client's body only after it authenticated (from the headers),
//! within [`MAX_REQUEST_BYTES`] and [`REQUEST_BODY_TIMEOUT`]; an upstream's within its deadline
//! (`timeout_seconds`) and, when read whole, [`MAX_UPSTREAM_BYTES`]. Responses keep OpenAI's
//! shapes: errors `{"error": {message, type, param, code}}`, `model` = the `<provider>/<model>`
//! the client routed to, also in every streamed chunk (`openai/sse.rs`).

mod sse;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use driftless_core::config::ProviderConfig;
use driftless_core::{Config, SecretValue};
use serde_json::{Value, json};

use crate::State;
use crate::auth::HttpRefusal;

/// A provider's deadline (see [`deadline_of`]) when it sets no `timeout_seconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The providers (as configured at start) and one shared HTTP client.
pub(crate) struct Providers {
    /// Built only when a provider is configured: building it loads the system's CA certificates,
    /// which a gateway without providers (e.g. a minimal container image) need not have.
    client: Option<reqwest::Client>,
    providers: BTreeMap<String, ProviderConfig>,
}

impl Providers {
    /// Fails with the whole cause chain: reqwest's own text is only "builder error".
    pub(crate) fn new(config: &Config) -> Result<Providers, String> {
        let client = if config.providers.is_empty() {
            None
        } else {
            let built = crate::http_client(crate::http_client_builder())?;
            Some(built)
        };
        Ok(Providers {
            client,
            providers: config.providers.clone(),
        })
    }

    /// The HTTP client; only called on behalf of a configured provider, so it exists.
    fn client(&self) -> &reqwest::Client {
        self.client
            .as_ref()
            .expect("the HTTP client is built whenever a provider is configured")
    }
}

/// The routes, merged into the gateway's router.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// An OpenAI error body: `{"error": {"message", "type", "param", "code"}}`, the shape the SDKs
/// parse (`type` is one of OpenAI's; `code` is OpenAI's where it has one, else ours or `null`).
fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    (status, axum::Json(error_body(kind, code, param, message))).into_response()
}

fn error_body(kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Value {
    let message = driftless_core::redact::redact(message);
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// A client's request that cannot be served as sent.
fn bad_request(status: StatusCode, param: Option<&str>, message: &str) -> Response {
    error(status, "invalid_request_error", None, param, message)
}

/// Why a request to `/v1/*` was refused before reaching a provider, in OpenAI's error shape.
impl IntoResponse for HttpRefusal {
    fn into_response(self) -> Response {
        match self {
            HttpRefusal::Unauthorized => error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
                "missing or wrong bearer token; send `Authorization: Bearer <gateway token>`, or a \
                 device token with `X-Driftless-Device-Id: <device id>`",
            ),
            HttpRefusal::StoreUnavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                None,
                "the device store cannot be read; see the gateway log",
            ),
            HttpRefusal::RateLimited(retry_after_ms) => {
                let secs = retry_after_ms.div_ceil(1000).max(1);
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    Some("rate_limit_exceeded"),
                    None,
                    &format!("too many failed authentication attempts; retry in {secs} s"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
        }
    }
}

/// Names the paired device whose token the bearer is (a token is only valid for its device).
const DEVICE_ID_HEADER: &str = "x-driftless-device-id";
/// The role the device token was issued for; `operator` when absent.
const DEVICE_ROLE_HEADER: &str = "x-driftless-device-role";

/// `Authorization: Bearer <gateway token>`, or `Bearer <device token>` with the device named in
/// `X-Driftless-Device-Id`; one limiter attempt per request, as in the WebSocket handshake (in
/// mode `none`, loopback only, nothing is needed). The checks themselves are `crate::auth`'s.
async fn authorize(
    state: &Arc<State>,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<(), HttpRefusal> {
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let presented = header_str(header::AUTHORIZATION.as_str()).and_then(crate::auth::bearer);
    let device = header_str(DEVICE_ID_HEADER)
        .map(|id| (id, header_str(DEVICE_ROLE_HEADER).unwrap_or("operator")));
    crate::auth::http(state, peer, presented, device).await
}

/// The provider key as of now, from the live snapshot.
fn current_key(state: &State, provider: &str) -> Option<SecretValue> {
    state
        .secrets
        .snapshot()
        .get(&format!("providers.{provider}.api_key"))
        .cloned()
}

/// `model` = `<provider>/<model>`, or `<provider>` (its default model), or a bare model / nothing
/// when exactly one provider is configured.
fn route_model<'a>(
    providers: &'a BTreeMap<String, ProviderConfig>,
    model: Option<&str>,
) -> Result<(&'a str, &'a ProviderConfig, String), String> {
    let known = || providers.keys().cloned().collect::<Vec<_>>().join(", ");
    let only = (providers.len() == 1)
        .then(|| providers.iter().next())
        .flatten();
    let default_of = |id: &'a str, p: &'a ProviderConfig| match &p.default_model {
        Some(m) => Ok((id, p, m.clone())),
        None => Err(format!(
            "provider {id} has no default_model; send model = \"{id}/<model>\""
        )),
    };
    match model.filter(|m| !m.is_empty()) {
        None => match only {
            Some((id, p)) => default_of(id, p),
            None => Err(format!(
                "send model = \"<provider>/<model>\"; providers: {}",
                known()
            )),
        },
        Some(m) => {
            if let Some((id, rest)) = m.split_once('/')
                && let Some((id, p)) = providers.get_key_value(id)
            {
                return if rest.is_empty() {
                    default_of(id, p)
                } else {
                    Ok((id, p, rest.to_owned()))
                };
            }
            if let Some((id, p)) = providers.get_key_value(m) {
                return default_of(id, p);
            }
            match only {
                Some((id, p)) => Ok((id, p, m.to_owned())),
                None => Err(format!(
                    "unknown provider in model {m:?}; send \"<provider>/<model>\" with one of: {}",
                    known()
                )),
            }
        }
    }
}

fn endpoint(p: &ProviderConfig, path: &str) -> String {
    format!("{}/{path}", p.base_url.trim_end_matches('/'))
}

/// Request bodies larger than this are refused with 413 (axum's default body limit).
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// How long an authenticated client may take to send its request body.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an upstream body the gateway reads whole (a models list, a non-streamed
/// completion, an error); streamed bodies pass through and are not capped.
const MAX_UPSTREAM_BYTES: usize = 16 * 1024 * 1024;

/// The provider's deadline: to its response headers, between two pieces of a body, and for a
/// whole models exchange.
fn deadline_of(p: &ProviderConfig) -> Duration {
    p.timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Why an exchange with a provider failed; the client gets OpenAI's shape naming the provider
/// (never its key or URL).
#[derive(Debug)]
enum UpstreamFailure {
    Unreachable(String),
    /// No response headers (or, for a models list, no whole answer) within the deadline.
    NoAnswer(Duration),
    /// Nothing more of a body arrived within the deadline.
    Stalled(Duration),
    TooLarge,
    BrokenOff(String),
}

impl UpstreamFailure {
    fn status_code_message(&self, id: &str) -> (StatusCode, &'static str, String) {
        match self {
            UpstreamFailure::Unreachable(e) => (
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                format!("provider {id} could not be reached: {e}"),
            ),
            UpstreamFailure::NoAnswer(t) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "provider {id} did not answer within {} s (providers.{id}.timeout_seconds)",
                    t.as_secs()
                ),
            ),
            UpstreamFailure::Stalled(t) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "provider {id} stopped sending its response for {} s (providers.{id}.timeout_seconds)",
                    t.as_secs()
                ),
            ),
            UpstreamFailure::TooLarge => (
                StatusCode::BAD_GATEWAY,
                "upstream_response_too_large",
                format!(
                    "provider {id} sent a response larger than {} MiB, which the gateway does not read",
                    MAX_UPSTREAM_BYTES / (1024 * 1024)
                ),
            ),
            UpstreamFailure::BrokenOff(e) => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("provider {id} broke off its response: {e}"),
            ),
        }
    }

    /// The error body (also sent as the last event of a stream that fails after its headers).
    fn body(&self, id: &str) -> Value {
        let (_, code, message) = self.status_code_message(id);
        error_body("server_error", Some(code), None, &message)
    }

    fn response(&self, id: &str) -> Response {
        let (status, code, message) = self.status_code_message(id);
        tracing::warn!(provider = id, code, "provider exchange failed");
        error(status, "server_error", Some(code), None, &message)
    }
}

/// Reads an upstream body whole: at most [`MAX_UPSTREAM_BYTES`], each piece within `idle`.
async fn read_capped(
    response: &mut reqwest::Response,
    idle: Duration,
) -> Result<Vec<u8>, UpstreamFailure> {
    let declared = response.content_length().unwrap_or(0);
    if declared > MAX_UPSTREAM_BYTES as u64 {
        return Err(UpstreamFailure::TooLarge);
    }
    let mut body = Vec::with_capacity(declared as usize);
    loop {
        match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => return Err(UpstreamFailure::Stalled(idle)),
            Ok(Err(e)) => return Err(UpstreamFailure::BrokenOff(without_url(&e))),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(piece))) => {
                if body.len() + piece.len() > MAX_UPSTREAM_BYTES {
                    return Err(UpstreamFailure::TooLarge);
                }
                body.extend_from_slice(&piece);
            }
        }
    }
}

/// Why an authenticated client's body was not taken.
enum BodyRefusal {
    TooLarge,
    Unreadable,
    TimedOut,
}

impl IntoResponse for BodyRefusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            BodyRefusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} MiB",
                    MAX_REQUEST_BYTES / (1024 * 1024)
                ),
            ),
            BodyRefusal::Unreadable => (
                StatusCode::BAD_REQUEST,
                "the request body could not be read".to_owned(),
            ),
            BodyRefusal::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    REQUEST_BODY_TIMEOUT.as_secs()
                ),
            ),
        };
        bad_request(status, None, &message)
    }
}

/// Reads an authenticated client's body: at most [`MAX_REQUEST_BYTES`] (a larger declared length
/// is refused unread), all within [`REQUEST_BODY_TIMEOUT`].
async fn read_request_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, BodyRefusal> {
    use futures_util::StreamExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if declared > MAX_REQUEST_BYTES as u64 {
        return Err(BodyRefusal::TooLarge);
    }
    let read = async {
        let mut data = body.into_data_stream();
        let mut buf = Vec::with_capacity(declared as usize);
        while let Some(piece) = data.next().await {
            let piece = piece.map_err(|_| BodyRefusal::Unreadable)?;
            if buf.len() + piece.len() > MAX_REQUEST_BYTES {
                return Err(BodyRefusal::TooLarge);
            }
            buf.extend_from_slice(&piece);
        }
        Ok(buf)
    };
    tokio::time::timeout(REQUEST_BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyRefusal::TimedOut))
}

/// Sets a JSON object's `model` (when it has one) to the name the client routed to; anything
/// else is returned as it was.
fn with_model(json: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(json).ok()?;
    let slot = v.get_mut("model").filter(|m| m.is_string())?;
    *slot = Value::String(model.to_owned());
    serde_json::to_vec(&v).ok()
}

async fn chat_completions(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(crate::accept::Peer { addr: peer, .. }): ConnectInfo<crate::accept::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // From the headers alone: an unauthenticated client's body is never read.
    if let Err(r) = authorize(&state, peer.ip(), &headers).await {
        return r.into_response();
    }
    let body = match read_request_body(&headers, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        // Position only: serde's message could quote the body.
        Ok(_) => {
            return bad_request(
                StatusCode::BAD_REQUEST,
                None,
                "the body must be a JSON object",
            );
        }
        Err(e) => {
            return bad_request(
                StatusCode::BAD_REQUEST,
                None,
                &format!(
                    "the body is not valid JSON (line {} column {})",
                    e.line(),
                    e.column()
                ),
            );
        }
    };
    let providers = &state.openai.providers;
    let (id, provider, model) = match route_model(providers, request["model"].as_str()) {
        Ok(r) => r,
        Err(msg) => return bad_request(StatusCode::BAD_REQUEST, Some("model"), &msg),
    };
    let routed: Arc<str> = Arc::from(format!("{id}/{model}"));
    request["model"] = Value::String(model.clone());
    let upstream_body = Bytes::from(serde_json::to_vec(&request).expect("JSON values serialize"));
    let url = endpoint(provider, "chat/completions");
    let timeout = deadline_of(provider);

    let mut key = current_key(&state, id);
    let mut retried = false;
    loop {
        let mut req = state
            .openai
            .client()
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(upstream_body.clone());
        if let Some(k) = &key {
            req = req.bearer_auth(k.expose());
        }
        let response = match tokio::time::timeout(timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return UpstreamFailure::Unreachable(without_url(&e)).response(id),
            Err(_) => return UpstreamFailure::NoAnswer(timeout).response(id),
        };
        let status = response.status();
        let rejected = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        if rejected && !retried {
            // The source may have changed before the watcher fired: re-resolve once, and retry
            // once if that produced a different key.
            retried = true;
            let _ = crate::reload::reload_now(state.clone(), "provider-auth-rejected").await;
            let fresh = current_key(&state, id);
            let changed = match (&key, &fresh) {
                (Some(a), Some(b)) => !a.same_as(b),
                (a, b) => a.is_some() != b.is_some(),
            };
            if changed {
                tracing::info!(
                    provider = id,
                    before = ?key.as_ref().map(|k| k.fingerprint()),
                    after = ?fresh.as_ref().map(|k| k.fingerprint()),
                    "provider rejected the key; retrying with the re-resolved key"
                );
                key = fresh;
                continue;
            }
        }
        if rejected {
            let fp = key
                .as_ref()
                .map(|k| k.fingerprint().to_string())
                .unwrap_or_else(|| "none (no api_key configured)".into());
            tracing::warn!(provider = id, status = status.as_u16(), key = %fp, "provider rejected its API key");
            return error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("upstream_auth_error"),
                None,
                &format!(
                    "provider {id} rejected its API key {fp} with HTTP {}; rotate providers.{id}.api_key at its source",
                    status.as_u16()
                ),
            );
        }
        tracing::debug!(provider = id, model = %model, status = status.as_u16(), "provider answered");
        return relay(response, id, routed, timeout).await;
    }
}

/// The upstream's answer for the client: an event stream passes through as it arrives (each
/// piece within `idle`, `model` renamed per event); anything else is read whole (capped) and
/// a successful completion's `model` renamed to `routed`.
async fn relay(
    mut response: reqwest::Response,
    id: &str,
    routed: Arc<str>,
    idle: Duration,
) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let body = if status.is_success() && content_type.as_bytes().starts_with(b"text/event-stream") {
        Body::from_stream(sse::relay(
            Box::pin(response.bytes_stream()),
            sse::Rename::new(routed),
            idle,
            id.to_owned(),
        ))
    } else {
        let whole = match read_capped(&mut response, idle).await {
            Ok(b) => b,
            Err(f) => return f.response(id),
        };
        let renamed = status
            .is_success()
            .then(|| with_model(&whole, &routed))
            .flatten();
        Body::from(renamed.unwrap_or(whole))
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out
}

/// A reqwest error without its URL (a base URL may carry credentials in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<provider url>");
    }
    text
}

/// A model as `/v1/models` lists it: its id at the provider and its `created` (0 when the
/// provider does not say).
type Listed = Vec<(String, u64)>;

/// One provider's models in one exchange bounded by its deadline and [`MAX_UPSTREAM_BYTES`];
/// `None` when it answered but cannot list them (an error status, not a list).
async fn list_models(
    state: &State,
    id: &str,
    p: &ProviderConfig,
) -> Result<Option<Listed>, UpstreamFailure> {
    let timeout = deadline_of(p);
    let exchange = async {
        let mut req = state.openai.client().get(endpoint(p, "models"));
        if let Some(k) = current_key(state, id) {
            req = req.bearer_auth(k.expose());
        }
        let mut r = req
            .send()
            .await
            .map_err(|e| UpstreamFailure::Unreachable(without_url(&e)))?;
        if !r.status().is_success() {
            return Ok(None);
        }
        let body = read_capped(&mut r, timeout).await?;
        let listed = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v["data"].as_array().map(|a| {
                a.iter()
                    .filter_map(|m| {
                        let created = m["created"].as_u64().unwrap_or(0);
                        m["id"].as_str().map(|id| (id.to_owned(), created))
                    })
                    .collect()
            })
        });
        Ok(listed)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(UpstreamFailure::NoAnswer(timeout)))
}

/// `GET /v1/models`: every provider's models as `<provider>/<model>`, asked concurrently. A
/// provider that answers but cannot list them contributes its default model; one that cannot be
/// reached, stalls or sends too much fails the request (502/504 naming it).
async fn models(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(crate::accept::Peer { addr: peer, .. }): ConnectInfo<crate::accept::Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, peer.ip(), &headers).await {
        return r.into_response();
    }
    let providers = &state.openai.providers;
    let lists =
        futures_util::future::join_all(providers.iter().map(|(id, p)| list_models(&state, id, p)))
            .await;
    let mut data = Vec::new();
    for ((id, p), listed) in providers.iter().zip(lists) {
        let listed = match listed {
            Ok(l) => l,
            Err(f) => return f.response(id),
        };
        let models =
            listed.unwrap_or_else(|| p.default_model.iter().map(|m| (m.clone(), 0)).collect());
        for (m, created) in models {
            data.push(json!({"id": format!("{id}/{m}"), "object": "model", "created": created, "owned_by": id}));
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(default_model: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: None,
            default_model: default_model.map(str::to_owned),
            timeout_seconds: None,
        }
    }

    #[test]
    fn model_routing() {
        let mut ps = BTreeMap::new();
        ps.insert("a".to_string(), provider(Some("a-default")));
        let one = |m| route_model(&ps, m).map(|(id, _, model)| (id.to_owned(), model));
        assert_eq!(one(None), Ok(("a".into(), "a-default".into())));
        assert_eq!(one(Some("a/x-1")), Ok(("a".into(), "x-1".into())));
        assert_eq!(one(Some("a")), Ok(("a".into(), "a-default".into())));
        assert_eq!(
            one(Some("bare-model")),
            Ok(("a".into(), "bare-model".into()))
        );
        ps.insert("b".to_string(), provider(None));
        let two = |m| route_model(&ps, m).map(|(id, _, model)| (id.to_owned(), model));
        assert_eq!(two(Some("b/y")), Ok(("b".into(), "y".into())));
        assert!(two(None).unwrap_err().contains("a, b"));
        assert!(two(Some("b")).unwrap_err().contains("no default_model"));
        assert!(two(Some("c/z")).unwrap_err().contains("unknown provider"));
    }
}
