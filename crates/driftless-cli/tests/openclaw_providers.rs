//! OpenClaw holds no provider key (issue #13 item 9): the real OpenClaw 2026.9.6 gateway, its
//! provider pointed at driftless by `driftless doctor --fix --openclaw`, runs agent turns whose
//! model calls go through the real `driftless gateway run` to a provider; the provider key is
//! rotated in driftless between two turns; then driftless's own gateway token, which OpenClaw
//! references (never copies), is rotated too.
//!
//! The provider is a **stand-in**: a small OpenAI-compatible server in this test on a real
//! loopback socket, because no real model provider can be reached from the test machines. It
//! accepts only the current key and records the `Authorization` of every request.
//!
//! Skipped with a printed reason when OpenClaw is not installed (`scripts/install-test-tools.sh`),
//! failed instead under `DRIFTLESS_REQUIRE_TOOLS=1`, as `relay.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use support::openclaw::{OPENCLAW_START_WITHIN, OpenClawGateway, install};
use support::*;

const KEY_1: &str = "canary-oc-provider-key-1-7f3a";
const KEY_2: &str = "canary-oc-provider-key-2-c91e";
/// OpenClaw's own gateway token (its file; the test's CLI calls present it).
const OC_TOKEN: &str = "canary-oc-gateway-token-44d2";
/// driftless's gateway token after its rotation (before: `CANARY`).
const ROTATED: &str = "canary-dl-gateway-rotated-5c0d";

/// The stand-in provider: the key it accepts now, and every bearer it was sent (with whether it
/// was accepted).
#[derive(Default)]
struct Provider {
    key: Mutex<String>,
    seen: Mutex<Vec<(String, bool)>>,
}

impl Provider {
    fn seen(&self) -> Vec<(String, bool)> {
        self.seen.lock().unwrap().clone()
    }
    fn admit(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        let ok = bearer == *self.key.lock().unwrap();
        self.seen.lock().unwrap().push((bearer, ok));
        ok
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})),
    )
        .into_response()
}

/// A chat completion answering "pong", streamed (OpenClaw's `openai-completions` streams) or not.
async fn chat(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    if !p.admit(&headers) {
        return unauthorized();
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6});
    if req["stream"] != true {
        return axum::Json(json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
            "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value, usage: Option<&Value>| {
        let mut c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let text = chunk(
        json!({"role": "assistant", "content": "pong"}),
        Value::Null,
        None,
    ) + &chunk(json!({}), json!("stop"), Some(&usage))
        + "data: [DONE]\n\n";
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .unwrap()
}

async fn models(State(p): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    if !p.admit(&headers) {
        return unauthorized();
    }
    axum::Json(
        json!({"object": "list", "data": [{"id": "m-small", "object": "model", "created": 0}]}),
    )
    .into_response()
}

/// Starts the stand-in on 127.0.0.1:0; returns it and its base URL (`…/v1`).
async fn start_provider(key: &str) -> (Arc<Provider>, String) {
    let p = Arc::new(Provider {
        key: Mutex::new(key.to_owned()),
        seen: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/models", axum::routing::get(models))
        .with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (p, base)
}

/// The OpenClaw CLI with `args`, as an operator on this machine runs it against the gateway on
/// `port` (OpenClaw's token from the environment); the exit code and stdout + stderr.
fn openclaw(
    cli: &(PathBuf, PathBuf),
    dir: &Path,
    port: u16,
    args: &[&str],
) -> (i32, String, String) {
    let state = dir.join("state");
    let out = Command::new(&cli.0)
        .arg(&cli.1)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("OPENCLAW_STATE_DIR", &state)
        .env("OPENCLAW_CONFIG_PATH", state.join("openclaw.json"))
        .env("OPENCLAW_GATEWAY_PORT", port.to_string())
        .env("OPENCLAW_GATEWAY_TOKEN", OC_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), all, stdout)
}

/// `openclaw agent --agent main --message …` through OpenClaw's gateway (its `agent` method);
/// the exit code, the parsed `--json` answer, and everything printed.
fn agent_turn(
    cli: &(PathBuf, PathBuf),
    dir: &Path,
    port: u16,
    message: &str,
) -> (i32, Value, String) {
    let (code, all, stdout) = openclaw(
        cli,
        dir,
        port,
        &[
            "agent",
            "--agent",
            "main",
            "--message",
            message,
            "--json",
            "--timeout",
            "240",
        ],
    );
    (
        code,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        all,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaw_agent_turns_reach_the_provider_through_driftless_across_key_and_token_rotations()
{
    let Some(cli) = install() else {
        return;
    };
    let (provider, base) = start_provider(KEY_1).await;
    let mut home = Home::new();

    // driftless: its gateway token (CANARY) in a file, on a fixed port OpenClaw is pointed at, and
    // the provider `up` whose key is in driftless's own source file.
    let key_file = home.path().join("secrets/provider-key");
    write_secret(&key_file, KEY_1);
    let token_file = home.path().join("secrets/token");
    write_secret(&token_file, CANARY);
    let gw = Gateway::start_pinned(&home, |port| {
        home.write_config(&format!(
            "[gateway]\nbind = \"127.0.0.1\"\nport = {port}\n[gateway.auth]\nmode = \"token\"\n\
             token = {{ source = \"file\", path = {token_file:?} }}\n\
             [providers.up]\nbase_url = {base:?}\napi_key = {{ source = \"file\", path = {key_file:?} }}\n\
             default_model = \"m-small\"\ntimeout_seconds = 60\n"
        ))
    });

    // OpenClaw as it was before driftless: the provider `up` with its own plaintext copy of the
    // key, straight at the provider, and the default model on it.
    let dir = home.path().join("openclaw");
    let state = dir.join("state");
    let oc_config = state.join("openclaw.json");
    let oc_token = dir.join("token");
    write_secret(&oc_token, OC_TOKEN);
    let oc_port = stable_port();
    write_file(
        &oc_config,
        &json!({
            "gateway": {"mode": "local", "port": oc_port, "bind": "loopback",
                        "auth": {"mode": "token",
                                 "token": {"source": "file", "provider": "test", "id": "value"}}},
            "secrets": {"providers": {"test": {"source": "file", "path": oc_token, "mode": "singleValue"}}},
            "models": {"providers": {"up": {"baseUrl": base, "apiKey": KEY_1, "api": "openai-completions",
                                            "models": [{"id": "m-small", "name": "m-small"}]}}},
            "agents": {"defaults": {"model": {"primary": "up/m-small"}}},
        })
        .to_string(),
        0o600,
    );

    // doctor finds the copy and the missing route, then repairs both.
    let oc_env = [
        ("OPENCLAW_STATE_DIR", state.to_str().unwrap()),
        ("OPENCLAW_CONFIG_PATH", oc_config.to_str().unwrap()),
    ];
    for (k, v) in oc_env {
        home.set_env(k, v);
    }
    let audit = home.driftless(&["doctor", "--json"], &[]);
    let v: Value = serde_json::from_str(&audit.stdout).unwrap();
    let rows: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == "openclaw-provider")
        .collect();
    assert!(
        rows.iter().all(|r| r["status"] == "finding")
            && rows.iter().any(|r| r["finding"]
                .as_str()
                .unwrap()
                .contains("models.providers.up.apiKey"))
            && rows.iter().any(|r| r["finding"]
                .as_str()
                .unwrap()
                .contains("no model provider `driftless`")),
        "{rows:#?}"
    );
    let fix = home.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    assert!(
        fix.stdout
            .contains("pointed OpenClaw's models at driftless"),
        "{}",
        fix.all()
    );
    for secret in [KEY_1, CANARY, OC_TOKEN] {
        assert!(!fix.all().contains(secret), "a secret in doctor's output");
    }
    let fixed: Value = serde_json::from_str(&std::fs::read_to_string(&oc_config).unwrap()).unwrap();
    let url = gw.url.replace("ws://", "http://") + "/v1";
    assert_eq!(fixed["models"]["providers"]["driftless"]["baseUrl"], url);
    assert_eq!(
        fixed["models"]["providers"]["driftless"]["apiKey"],
        json!({"source": "file", "provider": "driftless-gateway", "id": "value"})
    );
    assert_eq!(
        fixed["secrets"]["providers"]["driftless-gateway"],
        json!({"source": "file", "path": token_file, "mode": "singleValue"})
    );
    assert!(
        fixed["models"]["providers"].get("up").is_none(),
        "{fixed:#}"
    );
    assert_eq!(
        fixed["agents"]["defaults"]["model"]["primary"],
        "driftless/up/m-small"
    );
    let again = home.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    assert!(
        !again.stdout.contains("pointed OpenClaw's models"),
        "{}",
        again.all()
    );
    // The backup of openclaw.json holds no copy either.
    assert_eq!(files_containing(&dir, KEY_1), Vec::<PathBuf>::new());

    // OpenClaw runs with the repaired config; one agent turn goes through driftless with key 1.
    let oc = OpenClawGateway::start_configured(&cli, &dir, oc_port);
    let deadline = Instant::now() + OPENCLAW_START_WITHIN;
    while !oc.log_text().contains("[gateway] ready") {
        assert!(
            Instant::now() < deadline,
            "OpenClaw not ready within {OPENCLAW_START_WITHIN:?}:\n{}",
            oc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let turn = |message: &'static str| {
        let (cli, dir) = (cli.clone(), dir.clone());
        tokio::task::spawn_blocking(move || agent_turn(&cli, &dir, oc_port, message))
    };
    let (code, v, all) = turn("say pong").await.unwrap();
    assert_eq!(code, 0, "{all}");
    assert_eq!(v["status"], "ok", "{all}");
    assert_eq!(
        v["result"]["meta"]["agentMeta"]["provider"], "driftless",
        "{all}"
    );
    assert_eq!(v["result"]["payloads"][0]["text"], "pong", "{all}");
    let seen = provider.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|(k, ok)| k == KEY_1 && *ok),
        "{seen:?}"
    );

    // The key rotates at its source in driftless (the provider now accepts only key 2); the
    // second turn succeeds with key 2, OpenClaw untouched.
    let before = seen.len();
    *provider.key.lock().unwrap() = KEY_2.to_owned();
    replace_by_rename(&key_file, &format!("{KEY_2}\n"));
    let (code, v, all) = turn("say pong again").await.unwrap();
    assert_eq!(code, 0, "{all}");
    assert_eq!(v["status"], "ok", "{all}");
    assert_eq!(v["result"]["payloads"][0]["text"], "pong", "{all}");
    let after = provider.seen()[before..].to_vec();
    assert!(
        after.iter().any(|(k, ok)| k == KEY_2 && *ok),
        "the provider never accepted key 2: {:?}",
        after
            .iter()
            .map(|(k, ok)| (k == KEY_2, *ok))
            .collect::<Vec<_>>()
    );

    // driftless's gateway token rotates at its source. OpenClaw resolved its reference at start
    // and still presents the old token: accepted within driftless's grace window. After
    // `openclaw secrets reload` it reads the new one from the same file, so a turn still works
    // once driftless has ended the grace.
    replace_by_rename(&token_file, &format!("{ROTATED}\n"));
    assert!(
        eventually(RELOAD_WITHIN, || accepted(&gw.url, ROTATED)).await,
        "driftless did not take its new token"
    );
    let (code, v, all) = turn("say pong in grace").await.unwrap();
    assert_eq!((code, &v["status"]), (0, &json!("ok")), "{all}");
    let reload = {
        let (cli, dir) = (cli.clone(), dir.clone());
        tokio::task::spawn_blocking(move || openclaw(&cli, &dir, oc_port, &["secrets", "reload"]))
            .await
            .unwrap()
    };
    assert_eq!(reload.0, 0, "{}", reload.1);
    let mut admin = cli_params(Some(ROTATED));
    admin["scopes"] = json!(["operator.admin"]);
    let mut c = session(&gw.url, admin).await;
    let ended = c
        .call("end", "secrets.reload", Some(json!({"endGrace": true})))
        .await;
    assert_eq!(ended["ok"], true, "{ended}");
    assert!(
        !accepted(&gw.url, CANARY).await,
        "the old token outlived the grace"
    );
    let (code, v, all) = turn("say pong after the grace").await.unwrap();
    assert_eq!((code, &v["status"]), (0, &json!("ok")), "{all}");

    // No provider key, nor either driftless gateway token, is anywhere in OpenClaw's state,
    // config, backups or log: OpenClaw reads driftless's token through its file, never a copy.
    drop(oc);
    for secret in [KEY_1, KEY_2, CANARY, ROTATED] {
        assert_eq!(
            files_containing(&dir, secret),
            Vec::<PathBuf>::new(),
            "a secret in OpenClaw's files"
        );
    }
    let log = gw.finish();
    for secret in [KEY_1, KEY_2, ROTATED] {
        assert!(!log.contains(secret), "a secret in driftless's log");
    }
}
