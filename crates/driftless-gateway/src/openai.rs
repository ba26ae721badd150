//! OpenAI-compatible endpoints: `POST /v1/chat/completions` (streaming passed through chunk by
//! chunk) and `GET /v1/models`, calling the configured `[providers.<id>]` with the provider key
//! of the *current* snapshot, so a rotated key is used by the next request without a restart.
//! Clients authenticate with the gateway's shared secret or a paired device's token as a Bearer.
//!
//! An upstream 401/403 may mean the key was rotated before the watcher fired: the gateway then
//! re-resolves once and retries once if the key's fingerprint changed; otherwise the client gets a
//! 502 naming the provider and the key's fingerprint, never the key. Bodies are never logged.

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

/// Time to the upstream's response headers when the provider sets no `timeout_seconds`.
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
            // rustls with ring (no aws-lc): install the process-wide provider once; a second call
            // (another gateway in the same process, tests) finds it installed, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let built = reqwest::Client::builder().build().map_err(|e| {
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text = format!("{text}: {c}");
                    cause = c.source();
                }
                text
            })?;
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

/// An OpenAI-style error body.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let message = driftless_core::redact::redact(message).into_owned();
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind}})),
    )
        .into_response()
}

/// Why a request to `/v1/*` was refused before reaching a provider.
enum Refusal {
    Unauthorized,
    RateLimited { retry_after_ms: u64 },
    StoreUnavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "missing or wrong bearer token; send `Authorization: Bearer <gateway token>`, or a \
                 device token with `X-Driftless-Device-Id: <device id>`",
            ),
            Refusal::StoreUnavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the device store cannot be read; see the gateway log",
            ),
            Refusal::RateLimited { retry_after_ms } => {
                let secs = retry_after_ms.div_ceil(1000).max(1);
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
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
async fn authorize(state: &Arc<State>, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let presented = header_str(header::AUTHORIZATION.as_str()).and_then(crate::auth::bearer);
    let device = header_str(DEVICE_ID_HEADER)
        .map(|id| (id, header_str(DEVICE_ROLE_HEADER).unwrap_or("operator")));
    crate::auth::http(state, peer, presented, device)
        .await
        .map_err(|r| match r {
            HttpRefusal::Unauthorized => Refusal::Unauthorized,
            HttpRefusal::RateLimited(retry_after_ms) => Refusal::RateLimited { retry_after_ms },
            HttpRefusal::StoreUnavailable => Refusal::StoreUnavailable,
        })
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

async fn chat_completions(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(crate::budget::Peer { addr: peer, .. }): ConnectInfo<crate::budget::Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, peer.ip(), &headers).await {
        return r.into_response();
    }
    let mut request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        // Position only: serde's message could quote the body.
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the body must be a JSON object",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
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
        Err(msg) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", &msg),
    };
    request["model"] = Value::String(model.clone());
    let upstream_body = Bytes::from(serde_json::to_vec(&request).expect("JSON values serialize"));
    let url = endpoint(provider, "chat/completions");
    let timeout = provider
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);

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
            Ok(Err(e)) => {
                tracing::warn!(provider = id, error = %without_url(&e), "provider request failed");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    &format!("provider {id} could not be reached: {}", without_url(&e)),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!(
                        "provider {id} did not answer within {} s (providers.{id}.timeout_seconds)",
                        timeout.as_secs()
                    ),
                );
            }
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
                "upstream_auth_error",
                &format!(
                    "provider {id} rejected its API key {fp} with HTTP {}; rotate providers.{id}.api_key at its source",
                    status.as_u16()
                ),
            );
        }
        tracing::debug!(provider = id, model = %model, status = status.as_u16(), "provider answered");
        return pass_through(response);
    }
}

/// Streams the upstream response to the client as it arrives (SSE chunk by chunk).
fn pass_through(response: reqwest::Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let mut out = Response::new(Body::from_stream(response.bytes_stream()));
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

/// `GET /v1/models`: every provider's models as `<provider>/<model>`. A provider that cannot
/// list them contributes its default model.
async fn models(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(crate::budget::Peer { addr: peer, .. }): ConnectInfo<crate::budget::Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, peer.ip(), &headers).await {
        return r.into_response();
    }
    let mut data = Vec::new();
    for (id, p) in &state.openai.providers {
        let mut req = state.openai.client().get(endpoint(p, "models"));
        if let Some(k) = current_key(&state, id) {
            req = req.bearer_auth(k.expose());
        }
        let listed: Option<Vec<String>> = match tokio::time::timeout(DEFAULT_TIMEOUT, req.send())
            .await
        {
            Ok(Ok(r)) if r.status().is_success() => r.json::<Value>().await.ok().and_then(|v| {
                v["data"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_owned))
                        .collect()
                })
            }),
            _ => None,
        };
        let ids = listed.unwrap_or_else(|| p.default_model.iter().cloned().collect());
        for m in ids {
            data.push(json!({"id": format!("{id}/{m}"), "object": "model", "owned_by": id}));
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
