//! End-to-end tests of the OpenAI-compatible endpoints: the real `driftless gateway run` in front
//! of an upstream test server owned by each test (a real HTTP server on loopback that accepts
//! exactly one current key and records every key it saw).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use support::{CANARY, Gateway, Home, replace_by_rename, rss_kib, write_secret};

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
    /// The `model` of every accepted completion request, as the upstream received it.
    models: Mutex<Vec<String>>,
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
    fn models(&self) -> Vec<String> {
        self.models.lock().unwrap().clone()
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
    u.models.lock().unwrap().push(model.clone());
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
        models: Mutex::default(),
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
        // The provider prefix is stripped upstream, and the client sees the name it asked for.
        assert_eq!(up.models(), ["m-large"]);
        assert!(first.contains("\"model\":\"up/m-large\""), "{first}");
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
        for m in v["data"].as_array().unwrap() {
            assert_eq!(m["object"], "model", "{m}");
            assert_eq!(m["owned_by"], "up", "{m}");
            assert!(m["created"].is_u64(), "OpenAI's Model has `created`: {m}");
        }
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

/// How long the streaming clients of the rotation test may take to reach each traffic mark: a bound
/// for a loaded machine, not a performance figure.
const STREAMS_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn rotation_under_20_streaming_clients_has_zero_failures() {
    let rt = runtime();
    rt.block_on(async {
        let (old, new) = ("canary-provider-key-OLD-0004", "canary-provider-key-NEW-0005");
        let (up, base) = start_upstream(old, None).await;
        let home = Home::new();
        let (gw, key_file) = gateway_with_provider(&home, &base, old, "");
        let port = gw.port;
        let stop = Arc::new(AtomicBool::new(false));
        // Streams completed, per client.
        let done: Arc<Vec<AtomicUsize>> = Arc::new((0..20).map(|_| AtomicUsize::new(0)).collect());
        let total = || done.iter().map(|d| d.load(Ordering::Relaxed)).sum::<usize>();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut clients = Vec::new();
        for i in 0..20 {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            clients.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    match stream_once(&c, port).await {
                        Ok(_) => {
                            done[i].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        // Warm-up: every client has streamed, and the traffic check below has its "before" part
        // (a fixed 3 s saw nothing completed on a loaded machine). A bound, not a latency check.
        let warm = Instant::now() + STREAMS_WITHIN;
        while !(done.iter().all(|d| d.load(Ordering::Relaxed) >= 1) && total() > 20) {
            assert!(
                Instant::now() < warm,
                "warm-up: after {STREAMS_WITHIN:?}, {} of 20 clients had completed no stream ({} streams in all, {} failures)",
                done.iter().filter(|d| d.load(Ordering::Relaxed) == 0).count(),
                total(),
                failures.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ok_before = total();
        // Rotate: the file by atomic rename, and the upstream switches at the same moment.
        let written = Instant::now();
        replace_by_rename(&key_file, &format!("{new}\n"));
        up.set_key(new);
        // Streaming goes on through the rotation for as long as the fixed schedule gave it (7 s),
        // and then until the traffic check's "after" part has happened, within the same bound.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let enough = Instant::now() + STREAMS_WITHIN;
        while total() <= ok_before + 20 && Instant::now() < enough {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "{} client-visible failures, first: {:?}", failures.len(), failures.first());
        let total = total();
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
        assert_eq!(v["model"], "up/m-small");
        assert_eq!(up.models(), ["m-small"], "the prefix is stripped upstream");
        // The token is only valid for its own device.
        assert_eq!(send(None).await.unwrap().status(), 401);
        assert_eq!(send(Some("not-this-device")).await.unwrap().status(), 401);
        assert_eq!(up.seen().len(), 1);
        let log = gw.log_text();
        assert!(!log.contains(token.expose()) && !log.contains(key));
    });
}

// ---------------------------------------------------------------------------------------------
// Bounded reads (issue 15, items 2 and 4) and OpenAI's shapes (item 13)

/// The exact 401 OpenAI sends for a bad key, which the SDKs map to `code == "invalid_api_key"`.
fn assert_invalid_api_key(body: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{body}");
    assert_eq!(e["code"], "invalid_api_key", "{body}");
    assert!(e.get("param").is_some_and(Value::is_null), "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// An OpenAI error body with `type` and `code` that names provider `up` and no secret.
fn assert_upstream_error(body: &str, code: &str, secrets: &[&str]) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"]["type"], "server_error", "{body}");
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(
        v["error"].get("param").is_some_and(Value::is_null),
        "{body}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("provider up"), "{body}");
    for s in secrets {
        assert!(!body.contains(s), "a secret in {body}");
    }
}

/// Reads one HTTP/1.1 response head and its Content-Length body from a raw socket.
async fn read_response(sock: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = sock
            .read(&mut byte)
            .await
            .expect("reading the response head");
        assert!(
            n == 1,
            "the connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    sock.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// A hang guard (not a performance figure): what must happen happens well within it.
const MUST_ANSWER_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn unauthenticated_bodies_are_never_read() {
    use tokio::io::AsyncWriteExt;
    const CLIENTS: usize = 150;
    // Just under 2 MiB declared; every client stalls 1,000 bytes short of it.
    const DECLARED: usize = 2 * 1024 * 1024 - 1024;
    const SENT: usize = DECLARED - 1000;
    let rt = runtime();
    rt.block_on(async {
        let key = "canary-provider-key-body-0009";
        let (up, base) = start_upstream(key, None).await;
        let home = Home::new();
        let (gw, _) = gateway_with_provider(&home, &base, key, "");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
        let before = rss_kib(gw.child.id());
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            clients.push(tokio::spawn(async move {
                // Spread over 50 loopback addresses: a per-address connection cap is not what
                // this test is about.
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(format!("127.0.0.{}:0", 10 + i % 50).parse().unwrap()).unwrap();
                let stream = sock.connect(addr).await.unwrap();
                let (mut rd, mut wr) = stream.into_split();
                let bearer = if i % 2 == 0 {
                    format!("Authorization: Bearer {}\r\n", support::WRONG_CANARY)
                } else {
                    String::new()
                };
                wr.write_all(
                    format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{bearer}Content-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                // The body goes out while the answer is awaited; the gateway may refuse it
                // (a write error) once it has answered.
                let writer = tokio::spawn(async move {
                    let piece = vec![b' '; 64 * 1024];
                    let mut sent = 0;
                    while sent < SENT {
                        let n = piece.len().min(SENT - sent);
                        if wr.write_all(&piece[..n]).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                    // Stall with the body 1,000 bytes short, holding the socket.
                    std::future::pending::<()>().await;
                    drop(wr);
                });
                let answer = tokio::time::timeout(MUST_ANSWER_WITHIN, read_response(&mut rd)).await;
                (answer, writer, rd)
            }));
        }
        let mut held = Vec::new();
        for c in clients {
            let (answer, writer, rd) = c.await.unwrap();
            // The body is never complete (it stalls short of its Content-Length), so an answer
            // at all means the gateway answered without waiting for it.
            let (status, body) = answer.expect("a 401 while the body is still unsent");
            assert_eq!(status, 401, "{body}");
            assert_invalid_api_key(&body);
            held.push((writer, rd));
        }
        let after = rss_kib(gw.child.id());
        eprintln!("gateway RSS: {before} KiB before, {after} KiB with {CLIENTS} stalled bodies answered");
        assert!(
            after < before + 64 * 1024,
            "the gateway grew from {before} KiB to {after} KiB: it read unauthenticated bodies"
        );
        assert!(up.seen().is_empty(), "no request may reach the provider");
        for (writer, _) in held {
            writer.abort();
        }

        // Authenticated, the declared size is checked before anything is read.
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY}\r\nContent-Length: {}\r\n\r\n",
                3 * 1024 * 1024
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (status, body) = tokio::time::timeout(MUST_ANSWER_WITHIN, read_response(&mut rd))
            .await
            .expect("a 413 before the body is sent");
        assert_eq!(status, 413, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains("2 MiB"), "{body}");
        let log = gw.log_text();
        assert!(!log.contains(support::WRONG_CANARY) && !log.contains(CANARY));
    });
}

/// What a stand-in provider on a real TCP socket does with every request it receives.
#[derive(Clone)]
enum Raw {
    /// Sends this text (a response head and maybe part of a body), then holds the socket.
    Stall(&'static str),
    /// Sends `head`, then a chunked body of spaces until 400 MiB or the gateway lets go,
    /// counting the bytes it got out in `written`.
    Flood {
        head: &'static str,
        written: Arc<std::sync::atomic::AtomicU64>,
        done: Arc<tokio::sync::Notify>,
    },
}

/// A provider stand-in on 127.0.0.1:0 that reads each request head and answers per `raw`.
async fn raw_upstream(raw: Raw) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let raw = raw.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                match raw {
                    Raw::Stall(text) => {
                        let _ = sock.write_all(text.as_bytes()).await;
                        std::future::pending::<()>().await;
                    }
                    Raw::Flood {
                        head,
                        written,
                        done,
                    } => {
                        let piece = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                        let mut ok = sock.write_all(head.as_bytes()).await.is_ok();
                        while ok && written.load(Ordering::Relaxed) < 400 << 20 {
                            ok = sock.write_all(piece.as_bytes()).await.is_ok();
                            if ok {
                                written.fetch_add(0x10000, Ordering::Relaxed);
                            }
                        }
                        done.notify_one();
                    }
                }
            });
        }
    });
    base
}

const RAW_KEY: &str = "canary-provider-key-raw-0010";

/// A gateway whose only provider `up` is the stand-in at `base`, with a 1 s deadline.
fn gateway_for_raw(home: &Home, base: &str) -> Gateway {
    let tok = home.path().join("secrets/token");
    write_secret(&tok, CANARY);
    let key_file = home.path().join("secrets/provider-key");
    write_secret(&key_file, RAW_KEY);
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n\
         [providers.up]\nbase_url = {base:?}\napi_key = {{ source = \"file\", path = {:?} }}\ndefault_model = \"m-small\"\ntimeout_seconds = 1\n",
        tok.to_str().unwrap(),
        key_file.to_str().unwrap()
    ));
    Gateway::start(home, &[], &[])
}

async fn get_models(port: u16) -> (u16, String) {
    let r = tokio::time::timeout(
        MUST_ANSWER_WITHIN,
        client()
            .get(format!("http://127.0.0.1:{port}/v1/models"))
            .bearer_auth(CANARY)
            .send(),
    )
    .await
    .expect("the gateway must answer /v1/models")
    .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_completion(port: u16, stream: bool) -> reqwest::Response {
    tokio::time::timeout(
        MUST_ANSWER_WITHIN,
        client()
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(CANARY)
            .json(&json!({"model": "up/m-small", "stream": stream, "messages": []}))
            .send(),
    )
    .await
    .expect("the gateway must answer the completion")
    .unwrap()
}

#[test]
fn a_models_list_that_stalls_or_floods_is_cut_off_with_an_openai_error() {
    let rt = runtime();
    rt.block_on(async {
        // Headers and the start of a body, then nothing: the whole exchange has a deadline.
        let base = raw_upstream(Raw::Stall(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"object\":\"list\",\"data\":[",
        ))
        .await;
        let home = Home::new();
        let gw = gateway_for_raw(&home, &base);
        let (status, body) = get_models(gw.port).await;
        assert_eq!(status, 504, "{body}");
        assert_upstream_error(&body, "upstream_timeout", &[RAW_KEY, CANARY]);
        assert!(body.contains("timeout_seconds"), "{body}");

        // A 400 MiB list: the gateway stops reading at its cap instead of buffering it.
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let base = raw_upstream(Raw::Flood {
            head: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            written: written.clone(),
            done: done.clone(),
        })
        .await;
        let home = Home::new();
        let gw = gateway_for_raw(&home, &base);
        let (status, body) = get_models(gw.port).await;
        assert_eq!(status, 502, "{body}");
        assert_upstream_error(&body, "upstream_response_too_large", &[RAW_KEY, CANARY]);
        tokio::time::timeout(MUST_ANSWER_WITHIN, done.notified())
            .await
            .expect("the gateway must let go of the flooding provider");
        let sent = written.load(Ordering::Relaxed);
        // 16 MiB read, plus what the socket buffers held.
        assert!(sent < 64 << 20, "the provider got {sent} bytes out");
        let log = gw.log_text();
        assert!(!log.contains(RAW_KEY) && !log.contains(CANARY));
    });
}

#[test]
fn a_completion_that_floods_or_a_stream_that_stalls_ends_with_an_openai_error() {
    use futures_util::StreamExt;
    let rt = runtime();
    rt.block_on(async {
        // A non-streamed completion declared at 400 MiB is refused unread.
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let base = raw_upstream(Raw::Flood {
            head: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 419430400\r\n\r\n",
            written: written.clone(),
            done: Arc::default(),
        })
        .await;
        let home = Home::new();
        let gw = gateway_for_raw(&home, &base);
        let r = post_completion(gw.port, false).await;
        assert_eq!(r.status(), 502);
        assert_upstream_error(&r.text().await.unwrap(), "upstream_response_too_large", &[RAW_KEY]);

        // A stream that sends one event and then nothing: the event passes (renamed), then an
        // error event once the idle deadline passes, and the stream ends.
        let base = raw_upstream(Raw::Stall(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
             42\r\ndata: {\"model\":\"m-small\",\"choices\":[{\"delta\":{\"content\":\"c0\"}}]}\n\n\r\n",
        ))
        .await;
        let home = Home::new();
        let gw = gateway_for_raw(&home, &base);
        let r = post_completion(gw.port, true).await;
        assert_eq!(r.status(), 200);
        let mut events = String::new();
        let mut body = r.bytes_stream();
        tokio::time::timeout(MUST_ANSWER_WITHIN, async {
            while let Some(piece) = body.next().await {
                events.push_str(&String::from_utf8_lossy(&piece.unwrap()));
            }
        })
        .await
        .expect("a stalled stream must end");
        let lines: Vec<&str> = events.split("\n\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2, "{events}");
        let first: Value = serde_json::from_str(lines[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(first["model"], "up/m-small", "{events}");
        assert_eq!(first["choices"][0]["delta"]["content"], "c0", "{events}");
        assert_upstream_error(lines[1].strip_prefix("data: ").unwrap(), "upstream_timeout", &[RAW_KEY, CANARY]);
        let log = gw.log_text();
        assert!(!log.contains(RAW_KEY) && !log.contains(CANARY));
    });
}
