//! The proxy scenario: chat completions through driftless's OpenAI-compatible endpoint vs directly
//! against the same local upstream. The upstream is a test double by necessity (no model provider
//! may be reached from here): a minimal OpenAI-compatible server in this process that answers every
//! streamed completion at once with a small SSE stream, so what is measured is the gateway's cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::scenarios::{Percentiles, read_token};
use crate::server::Server;

/// Chunks in each streamed answer (then `data: [DONE]`).
const CHUNKS: usize = 5;
/// The provider id the gateway is configured with; models are `<id>/<model>` through it.
pub const PROVIDER: &str = "bench";

/// The local upstream: its base URL (`http://127.0.0.1:P/v1`) and the key it expects.
pub struct Upstream {
    pub base_url: String,
    pub key: String,
}

/// Starts the upstream on 127.0.0.1:0 on the current runtime.
pub async fn start_upstream() -> Result<Upstream> {
    let key = driftless_core::secret::random_token().expose().to_string();
    let expected = Arc::new(format!("Bearer {key}"));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let expected = expected.clone();
            async move { sse_answer(&headers, &expected) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the upstream test server")?;
    let addr: SocketAddr = listener.local_addr()?;
    // No Nagle delay on the upstream's side: a slow path through the gateway must be the gateway's.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream test server stopped: {e}");
        }
    });
    Ok(Upstream {
        base_url: format!("http://{addr}/v1"),
        key,
    })
}

/// A small SSE stream, sent as separate body chunks as a real provider would; 401 on a wrong key
/// so a misconfigured gateway cannot look fast.
fn sse_answer(headers: &axum::http::HeaderMap, expected: &str) -> Response {
    let authorized = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return Response::builder()
            .status(401)
            .body(Body::from(
                r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
            ))
            .expect("a static response");
    }
    let chunks = (0..=CHUNKS).map(|i| {
        Ok::<_, std::convert::Infallible>(Bytes::from(if i == CHUNKS {
            "data: [DONE]\n\n".to_string()
        } else {
            format!(
                "data: {{\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"c{i}\"}}}}]}}\n\n"
            )
        }))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("a static response")
}

/// One side of the comparison (direct or through the gateway).
#[derive(Debug, Clone, Serialize)]
pub struct ProxySide {
    pub completions: u64,
    pub errors: u64,
    pub per_sec: f64,
    /// Request sent → `data: [DONE]` received.
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Proxy {
    pub concurrency: usize,
    pub direct: ProxySide,
    pub gateway: ProxySide,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Completions/s through the gateway ÷ completions/s directly.
    pub throughput_ratio: f64,
    pub server_cpu_ms_per_completion: f64,
}

/// `concurrency` clients loop streamed completions for `duration`, first directly against the
/// upstream, then through the gateway (authenticated with its shared token as a Bearer).
pub async fn proxy(
    server: &Server,
    upstream: &Upstream,
    concurrency: usize,
    duration: Duration,
) -> Result<Proxy> {
    // The workspace builds rustls with ring only: install it before any client (a second call
    // finds it installed, which is fine).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let direct = run_side(
        &client,
        format!("{}/chat/completions", upstream.base_url),
        upstream.key.clone(),
        "m".into(),
        concurrency,
        duration,
    )
    .await?;
    let token = read_token(&server.token_file)?;
    let cpu_before = server.cpu_ms();
    let gateway = run_side(
        &client,
        format!("http://{}/v1/chat/completions", server.addr),
        token,
        format!("{PROVIDER}/m"),
        concurrency,
        duration,
    )
    .await?;
    let cpu = server.cpu_ms() - cpu_before;
    if gateway.completions == 0 || direct.completions == 0 {
        bail!(
            "no completion succeeded (direct: {} errors, through the gateway: {} errors)",
            direct.errors,
            gateway.errors
        );
    }
    Ok(Proxy {
        concurrency,
        added_p50_ms: gateway.latency.p50_ms - direct.latency.p50_ms,
        added_p99_ms: gateway.latency.p99_ms - direct.latency.p99_ms,
        throughput_ratio: gateway.per_sec / direct.per_sec,
        server_cpu_ms_per_completion: cpu / gateway.completions as f64,
        direct,
        gateway,
    })
}

async fn run_side(
    client: &reqwest::Client,
    url: String,
    bearer: String,
    model: String,
    concurrency: usize,
    duration: Duration,
) -> Result<ProxySide> {
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let body = Arc::new(
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, bearer, body, errors) = (
            client.clone(),
            url.clone(),
            bearer.clone(),
            body.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let begin = Instant::now();
                let done = tokio::time::timeout(
                    Duration::from_secs(30),
                    complete(&client, &url, &bearer, &body),
                )
                .await;
                if matches!(done, Ok(Ok(()))) {
                    latencies.push(begin.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    // Do not spin on a failing server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("a proxy client panicked")?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(ProxySide {
        completions: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        per_sec: latencies.len() as f64 / seconds,
        latency: Percentiles::of(latencies),
    })
}

/// One streamed completion, read to `data: [DONE]`.
async fn complete(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let resp = client
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(resp.status().to_string());
    }
    let mut received = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        received.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    if received.ends_with(b"data: [DONE]\n\n") {
        Ok(())
    } else {
        Err("incomplete stream".into())
    }
}
