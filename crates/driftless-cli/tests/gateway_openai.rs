//! End-to-end tests of the OpenAI-compatible endpoints: the real `driftless gateway run` in front
//! of an upstream test server owned by each test (a real HTTP server on loopback that accepts
//! exactly one current key and records every key it saw).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use support::{CANARY, Gateway, Home, replace_by_rename, write_secret};

/// What the upstream saw: when, which key, and whether it accepted it.
#[derive(Clone)]
struct Seen {
    at: Instant,
    key: String,
    accepted: bool,
}

struct Upstream {
    key: Mutex<String>,
    seen: Mutex<Vec<Seen>>,
    /// When set, a stream pauses after its first chunk until this is notified.
    hold: Option<Arc<tokio::sync::Notify>>,
}

impl Upstream {
    fn set_key(&self, key: &str) {
        *self.key.lock().unwrap() = key.to_owned();
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Accepts the request's bearer key iff it is the current one; records it either way.
    /// `Some` is the 401 to answer with.
    fn reject(&self, headers: &HeaderMap) -> Option<Response> {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let accepted = presented == *self.key.lock().unwrap();
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            key: presented,
            accepted,
        });
        if accepted {
            None
        } else {
            Some((
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})),
            )
                .into_response())
        }
    }
}

const CHUNKS: usize = 5;

async fn upstream_chat(
    State(u): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = u.reject(&headers) {
        return r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap();
    let model = req["model"].as_str().unwrap_or("").to_owned();
    if req["stream"] != true {
        return axum::Json(json!({"object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]}))
        .into_response();
    }
    let hold = u.hold.clone();
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let hold = hold.clone();
        let model = model.clone();
        async move {
            if i > CHUNKS {
                return None;
            }
            if i == 1
                && let Some(h) = &hold
            {
                h.notified().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let text = if i == CHUNKS {
                "data: [DONE]\n\n".to_owned()
            } else {
                format!(
                    "data: {{\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"c{i}\"}}}}]}}\n\n"
                )
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn upstream_models(State(u): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    if let Some(r) = u.reject(&headers) {
        return r;
    }
    axum::Json(json!({"object": "list", "data": [{"id": "m-small", "object": "model"}, {"id": "m-large", "object": "model"}]}))
        .into_response()
}

/// Starts the upstream on 127.0.0.1:0 (on the test's runtime); returns it and its base URL.
async fn start_upstream(
    key: &str,
    hold: Option<Arc<tokio::sync::Notify>>,
) -> (Arc<Upstream>, String) {
    let u = Arc::new(Upstream {
        key: Mutex::new(key.to_owned()),
        seen: Mutex::default(),
        hold,
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(upstream_chat))
        .route("/v1/models", axum::routing::get(upstream_models))
        .with_state(u.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (u, base)
}

/// A gateway whose token is CANARY and whose provider `up` points at `base` with its key in the
/// file `secrets/provider-key`. `extra` is TOML placed before `[providers.up]`.
fn gateway_with_provider(
    home: &Home,
    base: &str,
    key: &str,
    extra: &str,
) -> (Gateway, std::path::PathBuf) {
    let tok = home.path().join("secrets/token");
    write_secret(&tok, CANARY);
    let key_file = home.path().join("secrets/provider-key");
    write_secret(&key_file, key);
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n{extra}\n\
         [providers.up]\nbase_url = {base:?}\napi_key = {{ source = \"file\", path = {:?} }}\ndefault_model = \"m-small\"\ntimeout_seconds = 10\n",
        tok.to_str().unwrap(),
        key_file.to_str().unwrap()
    ));
    (Gateway::start(home, &[], &[]), key_file)
}

fn client() -> reqwest::Client {
    // The workspace builds rustls with ring only (no aws-lc): install it before any client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One streamed completion through the gateway: Ok(content) or Err(why).
async fn stream_once(client: &reqwest::Client, port: u16) -> Result<String, String> {
    use futures_util::StreamExt;
    let resp = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(CANARY)
        .json(&json!({"model": "up/m-small", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    let mut body = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(c) = chunks.next().await {
        body.push_str(&String::from_utf8_lossy(&c.map_err(|e| e.to_string())?));
    }
    let expected: String = (0..CHUNKS)
        .map(|i| format!("\"content\":\"c{i}\""))
        .collect::<Vec<_>>()
        .join("");
    let got: String = (0..CHUNKS)
        .filter(|i| body.contains(&format!("\"content\":\"c{i}\"")))
        .map(|i| format!("\"content\":\"c{i}\""))
        .collect::<Vec<_>>()
        .join("");
    if got != expected || !body.ends_with("data: [DONE]\n\n") {
        return Err(format!("incomplete stream: {body:?}"));
    }
    Ok(body)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn streams_chunk_by_chunk_with_the_current_key() {
    let rt = runtime();
    rt.block_on(async {
        let hold = Arc::new(tokio::sync::Notify::new());
        let key = "canary-provider-key-stream-0001";
        let (up, base) = start_upstream(key, Some(hold.clone())).await;
        let home = Home::new();
        let (gw, _) = gateway_with_provider(&home, &base, key, "");
        let resp = client()
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", gw.port))
            .bearer_auth(CANARY)
            .json(&json!({"model": "up/m-large", "stream": true, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        // The upstream holds everything after its first chunk: seeing that chunk proves the
        // gateway passes the stream through as it arrives, not after buffering it whole.
        use futures_util::StreamExt;
        let mut chunks = resp.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(5), chunks.next())
            .await
            .expect("the first chunk must arrive while the upstream is still streaming")
            .unwrap()
            .unwrap();
        let first = String::from_utf8_lossy(&first).into_owned();
        assert!(first.contains("\"content\":\"c0\""), "{first}");
        assert!(
            first.contains("\"model\":\"m-large\""),
            "the provider prefix is stripped upstream: {first}"
        );
        hold.notify_one();
        let mut rest = String::new();
        while let Some(c) = chunks.next().await {
            rest.push_str(&String::from_utf8_lossy(&c.unwrap()));
        }
        assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
        let seen = up.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].key, key);
        assert!(seen[0].accepted);

        // No bearer, wrong bearer: 401 and the upstream is not called.
        let c = client();
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
        let r = c
            .post(&url)
            .json(&json!({"messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .post(&url)
            .bearer_auth(support::WRONG_CANARY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(up.seen().len(), 1);

        // /v1/models lists the upstream's models under the provider prefix.
        let r = c
            .get(format!("http://127.0.0.1:{}/v1/models", gw.port))
            .bearer_auth(CANARY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["up/m-small", "up/m-large"]);
        let log = gw.log_text();
        assert!(
            !log.contains(key) && !log.contains(CANARY),
            "a secret reached the log"
        );
    });
}

#[test]
fn a_rejected_key_that_did_not_change_is_a_502_naming_provider_and_fingerprint() {
    let rt = runtime();
    rt.block_on(async {
        let key = "canary-provider-key-stale-0002";
        let (up, base) = start_upstream("canary-upstream-only-key-0003", None).await;
        let home = Home::new();
        let (gw, _) = gateway_with_provider(&home, &base, key, "");
        let r = client()
            .post(format!("http://127.0.0.1:{}/v1/chat/completions", gw.port))
            .bearer_auth(CANARY)
            .json(&json!({"stream": false, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let text = r.text().await.unwrap();
        let fp = driftless_core::Fingerprint::of(key.as_bytes()).to_string();
        assert!(text.contains("provider up") && text.contains(&fp), "{text}");
        assert!(!text.contains(key), "{text}");
        // Re-resolved once, same fingerprint: no second attempt.
        assert_eq!(up.seen().len(), 1);
        let log = gw.log_text();
        assert!(
            log.contains(&fp),
            "the log names the key's fingerprint: {log}"
        );
        assert!(!log.contains(key));
    });
}

#[test]
fn rotation_under_20_streaming_clients_has_zero_failures() {
    let rt = runtime();
    rt.block_on(async {
        let (old, new) = ("canary-provider-key-OLD-0004", "canary-provider-key-NEW-0005");
        let (up, base) = start_upstream(old, None).await;
        let home = Home::new();
        let (gw, key_file) = gateway_with_provider(&home, &base, old, "");
        let port = gw.port;
        let stop_at = Instant::now() + Duration::from_secs(10);
        let ok = Arc::new(AtomicUsize::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut clients = Vec::new();
        for _ in 0..20 {
            let (ok, failures) = (ok.clone(), failures.clone());
            clients.push(tokio::spawn(async move {
                let c = client();
                while Instant::now() < stop_at {
                    match stream_once(&c, port).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ok_before = ok.load(Ordering::Relaxed);
        // Rotate: the file by atomic rename, and the upstream switches at the same moment.
        let written = Instant::now();
        replace_by_rename(&key_file, &format!("{new}\n"));
        up.set_key(new);
        for c in clients {
            c.await.unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "{} client-visible failures, first: {:?}", failures.len(), failures.first());
        let total = ok.load(Ordering::Relaxed);
        assert!(ok_before > 20 && total > ok_before + 20, "too little traffic: {ok_before} then {total}");
        let seen = up.seen();
        let first_new = seen
            .iter()
            .find(|s| s.key == new && s.accepted)
            .expect("the upstream never saw the new key");
        assert!(
            first_new.at.duration_since(written) <= Duration::from_secs(1),
            "the new key reached the upstream {:?} after the write",
            first_new.at.duration_since(written)
        );
        assert!(
            seen.iter().all(|s| s.key == old || s.key == new),
            "the upstream saw a key that was never current"
        );
        let after: Vec<&Seen> = seen.iter().filter(|s| s.at > first_new.at + Duration::from_secs(1)).collect();
        assert!(!after.is_empty() && after.iter().all(|s| s.key == new), "requests well after rotation still used the old key");
        let log = gw.log_text();
        assert!(!log.contains(old) && !log.contains(new) && !log.contains(CANARY), "a secret reached the log");
        eprintln!(
            "rotation: {total} streams ({ok_before} before the write), {} upstream requests, {} rejected, new key first seen {:?} after the write",
            seen.len(),
            seen.iter().filter(|s| !s.accepted).count(),
            first_new.at.duration_since(written)
        );
    });
}

#[test]
fn wrong_bearers_go_through_the_handshake_limiter() {
    let rt = runtime();
    rt.block_on(async {
        let key = "canary-provider-key-limit-0006";
        let (up, base) = start_upstream(key, None).await;
        let home = Home::new();
        let (gw, _) = gateway_with_provider(
            &home,
            &base,
            key,
            "[gateway.auth.rate_limit]\nexempt_loopback = false\nmax_attempts = 3\nwindow_seconds = 60\nlockout_seconds = 60",
        );
        let c = client();
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
        for _ in 0..3 {
            let r = c.post(&url).bearer_auth(support::WRONG_CANARY).json(&json!({})).send().await.unwrap();
            assert_eq!(r.status(), 401);
        }
        // Locked out: even the right token is not compared now.
        let r = c.post(&url).bearer_auth(CANARY).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
        assert!(up.seen().is_empty(), "no request may reach the provider");
        let log = gw.log_text();
        assert!(!log.contains(support::WRONG_CANARY) && !log.contains(CANARY));
    });
}

#[test]
fn a_paired_devices_token_is_accepted_as_bearer() {
    use driftless_client::identity::DeviceIdentity;
    use driftless_client::store::TokenStore;
    let rt = runtime();
    rt.block_on(async {
        let key = "canary-provider-key-device-0007";
        let (up, base) = start_upstream(key, None).await;
        let home = Home::new();
        let (gw, _) = gateway_with_provider(&home, &base, key, "");
        // Silent loopback pairing: `gateway health` leaves a device token in this home's store.
        let (st, out, err) = home.run(&["gateway", "health", "--url", &gw.url]);
        assert!(st.success(), "{out}{err}");
        let state = home.state();
        let id = DeviceIdentity::load_existing(&state).expect("a device identity");
        let token = TokenStore::load(&state, id.device_id())
            .unwrap()
            .get(&gw.url, "operator")
            .expect("a stored device token")
            .token
            .clone();
        let c = client();
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", gw.port);
        let send = |device: Option<&str>| {
            let mut r = c
                .post(&url)
                .bearer_auth(token.expose())
                .json(&json!({"model": "up/m-small", "messages": []}));
            if let Some(d) = device {
                r = r.header("X-Driftless-Device-Id", d);
            }
            r.send()
        };
        let r = send(Some(id.device_id())).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], "m-small");
        // The token is only valid for its own device.
        assert_eq!(send(None).await.unwrap().status(), 401);
        assert_eq!(send(Some("not-this-device")).await.unwrap().status(), 401);
        assert_eq!(up.seen().len(), 1);
        let log = gw.log_text();
        assert!(!log.contains(token.expose()) && !log.contains(key));
    });
}
