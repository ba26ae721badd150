//! Front mode (issue #13): the real `driftless gateway run` in front of the real OpenClaw 2026.9.6
//! gateway, started by each test on a loopback port with its own HOME and state. Clients speak to
//! driftless with driftless's token; driftless relays them to OpenClaw with OpenClaw's token.
//!
//! Skipped with a printed reason when OpenClaw is not installed (`scripts/install-test-tools.sh`),
//! failed instead under `DRIFTLESS_REQUIRE_TOOLS=1`, as `openclaw_interop.rs`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use driftless_client::wire::{OpenOptions, Wire};
use serde_json::{Value, json};
use support::openclaw::{OPENCLAW_START_WITHIN, OpenClawGateway, call, install};
use support::*;

/// OpenClaw's own token: only driftless (and the test, calling OpenClaw directly) holds it.
const UPSTREAM: &str = "canary-upstream-openclaw-token-5e21";
/// driftless's token after its rotation.
const ROTATED: &str = "canary-driftless-rotated-9b07";
/// OpenClaw's token after the rotation done on OpenClaw alone.
const UPSTREAM_ROTATED: &str = "canary-upstream-rotated-40d3";
/// OpenClaw's tick comes every 30 s (`tickIntervalMs`); a little slack for a loaded machine.
const TICK_WITHIN: Duration = Duration::from_secs(45);

/// OpenClaw on a fixed port (it is restarted on it), its token in a file.
fn start_openclaw(cli: &(PathBuf, PathBuf), home: &Home) -> OpenClawGateway {
    let dir = home.path().join("openclaw");
    let token = dir.join("token");
    write_secret(&token, UPSTREAM);
    OpenClawGateway::start(cli, &dir, stable_port(), &token)
}

/// driftless's config: its own token (`CANARY`) and `[upstream]` naming OpenClaw, whose token is
/// a reference to OpenClaw's own token file (the one source).
fn front_config(home: &Home, upstream: &OpenClawGateway) {
    home.token_config(CANARY, "");
    let text = std::fs::read_to_string(home.config_path()).unwrap();
    let token = home.path().join("openclaw/token");
    home.write_config(&format!(
        "{text}\n[upstream]\nurl = \"{}\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        upstream.url,
        token.to_str().unwrap()
    ));
}

/// Waits until a session through `url` with `token` gets hello-ok (OpenClaw refuses connections
/// before it listens, is slow to upgrade while it loads, and answers `UNAVAILABLE` while it starts).
async fn wait_ready(url: &str, token: &str) {
    let ok = eventually(OPENCLAW_START_WITHIN, || {
        let (url, token) = (url.to_owned(), token.to_owned());
        async move {
            // One attempt in its own task: the raw client's patience ends in a panic, which here
            // only means "not yet".
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let Ok(wire) = Wire::open(&url, &OpenOptions::default(), deadline).await else {
                    return false;
                };
                let mut c = Client {
                    wire,
                    challenge: Value::Null,
                };
                if !matches!(c.next_within(Duration::from_secs(30)).await, Got::Frame(_)) {
                    return false;
                }
                c.connect(cli_params(Some(&token))).await.0["ok"] == true
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;
    assert!(
        ok,
        "no session through {url} within {OPENCLAW_START_WITHIN:?}"
    );
}

fn assert_no_token(text: &str, what: &str) {
    assert_no_canary(text, what);
    for token in [UPSTREAM, UPSTREAM_ROTATED] {
        assert!(!text.contains(token), "OpenClaw's token leaked into {what}");
    }
}

/// The next event named `name` on `c` (other frames skipped), within [`TICK_WITHIN`].
async fn next_event(c: &mut Client, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + TICK_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Got::Frame(f) if f["type"] == "event" && f["event"] == name => return f,
            Got::Frame(_) => continue,
            Got::Closed(code, reason) => panic!("closed {code} {reason} before a {name} event"),
        }
    }
}

/// Drops what differs between two calls of the same method a moment apart (timestamps).
fn without_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.ends_with("At") && !k.ends_with("Ms") && *k != "ts")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn openclaw_clients_reach_openclaw_through_driftless_within_their_scopes() {
    let Some(cli) = install() else {
        return;
    };
    let home = Home::new();
    let mut openclaw = start_openclaw(&cli, &home);
    front_config(&home, &openclaw);
    let gw = Gateway::start(&home, &[], &[]);
    wait_ready(&openclaw.url, UPSTREAM).await;

    // The real CLI, pointed at driftless with driftless's token, gets what it gets from OpenClaw
    // directly with OpenClaw's.
    let (direct_home, front_home) = (
        home.path().join("cli-direct"),
        home.path().join("cli-front"),
    );
    for h in [&direct_home, &front_home] {
        std::fs::create_dir_all(h).unwrap();
    }
    for method in ["config.get", "sessions.list", "agents.list", "models.list"] {
        let direct = call(&cli, &direct_home, &openclaw.url, UPSTREAM, method);
        let front = call(&cli, &front_home, &gw.url, CANARY, method);
        let (direct, front) = match (direct, front) {
            (Ok(d), Ok(f)) => (d, f),
            other => panic!("{method}: {other:?}"),
        };
        assert_eq!(without_times(&front), without_times(&direct), "{method}");
    }

    // A read-only client: hello-ok carries OpenClaw's features with driftless's auth block; a read
    // method is relayed, an admin one is refused with OpenClaw's MISSING_SCOPE by driftless.
    let mut c = Client::open(&gw.url).await;
    let (hello, close) = c.connect(cli_params(Some(CANARY))).await;
    assert!(close.is_none(), "{hello}");
    let payload = &hello["payload"];
    let methods = payload["features"]["methods"].as_array().unwrap();
    assert!(methods.len() > 400, "OpenClaw's methods: {}", methods.len());
    assert!(methods.iter().any(|m| m == "agents.create"));
    assert_eq!(payload["auth"]["scopes"], json!(["operator.read"]));
    assert_eq!(payload["auth"]["method"], "token");
    assert!(
        payload["auth"].get("recoveryScope").is_none(),
        "{}",
        payload["auth"]
    );
    assert!(
        payload["snapshot"]["sessionDefaults"].is_object(),
        "OpenClaw's snapshot"
    );
    let listed = c.call("r1", "node.list", None).await;
    assert_eq!(listed["ok"], true, "{listed}");
    let refused = c
        .call(
            "r2",
            "agents.create",
            Some(json!({"name": "intruder", "workspace": "/nonexistent"})),
        )
        .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(
        refused["error"],
        json!({"code": "FORBIDDEN", "message": "missing scope: operator.admin",
               "details": {"code": "MISSING_SCOPE", "missingScope": "operator.admin",
                           "requiredScopes": ["operator.admin"]}})
    );
    // The session stays usable; OpenClaw saw the relayed read and never the admin call.
    let listed = c.call("r3", "node.list", None).await;
    assert_eq!(listed["ok"], true, "{listed}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            openclaw
                .requests_seen()
                .iter()
                .filter(|m| *m == "node.list")
                .count()
                == 2
        })
        .await,
        "OpenClaw did not log the relayed node.list calls: {:?}",
        openclaw.requests_seen()
    );
    assert!(
        !openclaw
            .requests_seen()
            .iter()
            .any(|m| m == "agents.create"),
        "the refused call reached OpenClaw"
    );

    // driftless's own token rotates under the running session: once the new token opens relayed
    // sessions, the old session is still open (the grace window), still reaches OpenClaw, and
    // still receives OpenClaw's events (its tick).
    replace_by_rename(&home.path().join("secrets/token"), &format!("{ROTATED}\n"));
    wait_ready(&gw.url, ROTATED).await;
    let listed = c.call("r4", "node.list", None).await;
    assert_eq!(listed["ok"], true, "{listed}");
    let tick = next_event(&mut c, "tick").await;
    assert!(tick["payload"]["ts"].as_u64().is_some(), "{tick}");
    drop(c);

    // The same rotation done on OpenClaw alone: its own shared-token client is closed 4001 at
    // once (OpenClaw has no grace window), which is what driftless in front spares its clients.
    let mut direct = session(&openclaw.url, cli_params(Some(UPSTREAM))).await;
    replace_by_rename(
        &home.path().join("openclaw/token"),
        &format!("{UPSTREAM_ROTATED}\n"),
    );
    let reload = call(
        &cli,
        &direct_home,
        &openclaw.url,
        UPSTREAM,
        "secrets.reload",
    );
    let closed = loop {
        match direct.next_within(Duration::from_secs(30)).await {
            Got::Frame(_) => continue,
            Got::Closed(code, reason) => break (code, reason),
        }
    };
    assert_eq!(
        closed,
        (4001, "gateway auth changed".to_owned()),
        "secrets.reload: {reload:?}"
    );

    // Neither side's token in either log.
    let oc_log = openclaw.log_text();
    openclaw.stop();
    assert_no_token(&oc_log, "OpenClaw's log");
    let log = gw.finish();
    assert_no_token(&log, "driftless's log");
}

#[tokio::test]
async fn upstream_down_is_unavailable_and_back_without_restarting_driftless() {
    let Some(cli) = install() else {
        return;
    };
    let home = Home::new();
    let mut openclaw = start_openclaw(&cli, &home);
    front_config(&home, &openclaw);
    let gw = Gateway::start(&home, &[], &[]);
    let pid = gw.child.id();
    wait_ready(&gw.url, CANARY).await;
    assert_eq!(gw.http_get("/readyz").0, 200);

    // An open relayed session ends with OpenClaw's own close when it stops (1012, restart).
    let mut open = session(&gw.url, cli_params(Some(CANARY))).await;
    openclaw.stop();
    let ended = loop {
        match open.next_within(Duration::from_secs(30)).await {
            Got::Frame(_) => continue,
            Got::Closed(code, reason) => break (code, reason),
        }
    };
    assert_eq!(ended.0, 1012, "{ended:?}");

    // Down: a new session gets OpenClaw's UNAVAILABLE shape with retryAfterMs and 1013; /readyz
    // says why.
    let mut c = Client::open(&gw.url).await;
    let (res, close) = c.connect(cli_params(Some(CANARY))).await;
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert_eq!(res["error"]["retryable"], true, "{res}");
    assert!(res["error"]["retryAfterMs"].as_u64().unwrap() > 0, "{res}");
    assert_eq!(close.unwrap().0, 1013);
    let (code, body) = gw.http_get("/readyz");
    assert_eq!(code, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"].as_str().unwrap().contains(&openclaw.url),
        "{body}"
    );

    // Back: new sessions work and /readyz is ready, with the same driftless process.
    openclaw.restart();
    wait_ready(&gw.url, CANARY).await;
    let mut c = session(&gw.url, cli_params(Some(CANARY))).await;
    let listed = c.call("r1", "sessions.list", None).await;
    assert_eq!(listed["ok"], true, "{listed}");
    assert_eq!(gw.http_get("/readyz").0, 200);
    assert_eq!(gw.child.id(), pid);
    drop(c);

    let oc_log = openclaw.log_text();
    openclaw.stop();
    assert_no_token(&oc_log, "OpenClaw's log");
    let log = gw.finish();
    assert_no_token(&log, "driftless's log");
}
