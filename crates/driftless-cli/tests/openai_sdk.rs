//! The OpenAI-compatible surface as the official `openai` Python SDK sees it: the real
//! `driftless gateway run` in front of an upstream test server (a real HTTP server on loopback
//! that answers like an OpenAI-compatible provider, with bare model names), driven by
//! `tests/fixtures/openai_sdk_check.py`: models list, a completion, a stream, and a 401.
//!
//! The SDK comes from `scripts/install-test-tools.sh` (`.tools/venv`). Without it the test is
//! skipped with a printed reason; with `DRIFTLESS_REQUIRE_TOOLS=1` (CI) it fails instead.

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use driftless_core::Env;
use serde_json::{Value, json};
use support::{CANARY, Gateway, Home, WRONG_CANARY, write_secret};

const KEY: &str = "canary-provider-key-sdk-0011";
const CREATED: u64 = 1_700_000_000;

async fn upstream_models() -> Response {
    axum::Json(json!({"object": "list", "data": [
        {"id": "m-small", "object": "model", "created": CREATED, "owned_by": "upstream-org"},
    ]}))
    .into_response()
}

async fn upstream_chat(body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap();
    let model = req["model"].as_str().unwrap().to_owned();
    assert_eq!(model, "m-small", "the provider gets the bare name");
    if req["stream"] != true {
        return axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }))
        .into_response();
    }
    let events: Vec<Result<Bytes, Infallible>> = ["hel", "lo"]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": CREATED,
                "model": model, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": if i == 1 { json!("stop") } else { Value::Null }}]});
            Ok(Bytes::from(format!("data: {chunk}\n\n")))
        })
        .chain([Ok(Bytes::from_static(b"data: [DONE]\n\n"))])
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(events)))
        .unwrap()
}

/// The venv's Python if it has the SDK; `None` after printing why the test is skipped.
fn sdk_python(env: &Env) -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".tools/venv/bin/python");
    let has_sdk = python.is_file()
        && Command::new(&python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_sdk {
        let why = "the openai Python SDK is not in .tools/venv; run scripts/install-test-tools.sh";
        assert!(
            env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
            "DRIFTLESS_REQUIRE_TOOLS=1 but {why}"
        );
        eprintln!("skipping: {why}");
        return None;
    }
    Some(python)
}

#[test]
fn the_official_openai_sdk_sees_openais_shapes() {
    // The edge of this test binary: the environment is read once, here.
    let Some(python) = sdk_python(&Env::from_process()) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = rt.block_on(async {
        let app = axum::Router::new()
            .route("/v1/models", axum::routing::get(upstream_models))
            .route("/v1/chat/completions", axum::routing::post(upstream_chat));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    });
    let home = Home::new();
    let tok = home.path().join("secrets/token");
    write_secret(&tok, CANARY);
    let key_file = home.path().join("secrets/provider-key");
    write_secret(&key_file, KEY);
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n\
         [providers.up]\nbase_url = {base:?}\napi_key = {{ source = \"file\", path = {:?} }}\ndefault_model = \"m-small\"\n",
        tok.to_str().unwrap(),
        key_file.to_str().unwrap()
    ));
    let gw = Gateway::start(&home, &[], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openai_sdk_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            &format!("http://127.0.0.1:{}/v1", gw.port),
            CANARY,
            WRONG_CANARY,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!("openai SDK {}", r["sdk_version"]);

    assert_eq!(
        r["models"],
        json!([{"id": "up/m-small", "object": "model", "created": CREATED, "owned_by": "up"}])
    );
    assert_eq!(
        r["completion"],
        json!({"model": "up/m-small", "content": "hello"})
    );
    assert_eq!(
        r["stream"],
        json!({"models": ["up/m-small", "up/m-small"], "content": "hello"})
    );
    let u = &r["unauthorized"];
    assert_eq!(u["status"], 401, "{u}");
    assert_eq!(u["code"], "invalid_api_key", "{u}");
    assert_eq!(u["type"], "invalid_request_error", "{u}");
    assert!(u["param"].is_null(), "{u}");
    for text in [&*stdout, &*stderr, &gw.log_text()] {
        assert!(
            !text.contains(KEY) && !text.contains(CANARY) && !text.contains(WRONG_CANARY),
            "a secret in {text}"
        );
    }
}
