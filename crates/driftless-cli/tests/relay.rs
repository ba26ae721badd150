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
use support::openclaw::{OpenClawGateway, call, install, wait_ready};
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
/// a reference to OpenClaw's own token file (the one source). Only 127.0.0.1 is this machine, so
/// 127.0.0.2 plays another host.
fn front_config(home: &Home, upstream: &OpenClawGateway) {
    home.token_config(
        CANARY,
        "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]",
    );
    let text = std::fs::read_to_string(home.config_path()).unwrap();
    let token = home.path().join("openclaw/token");
    home.write_config(&format!(
        "{text}\n[upstream]\nurl = \"{}\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        upstream.url,
        token.to_str().unwrap()
    ));
}

fn assert_no_token(text: &str, what: &str) {
    assert_no_canary(text, what);
    for token in [UPSTREAM, UPSTREAM_ROTATED] {
        assert!(!text.contains(token), "OpenClaw's token leaked into {what}");
    }
}

/// Rotates OpenClaw's own token as its operator would without driftless (its token file, then
/// `secrets.reload` on OpenClaw directly, with the old token) and checks that OpenClaw closes
/// `direct`, its own shared-token client, 4001 at once: it has no grace window.
async fn rotate_openclaw_alone(
    cli: &(PathBuf, PathBuf),
    cli_home: &std::path::Path,
    home: &Home,
    openclaw: &OpenClawGateway,
    mut direct: Client,
) {
    replace_by_rename(
        &home.path().join("openclaw/token"),
        &format!("{UPSTREAM_ROTATED}\n"),
    );
    let reload = call(cli, cli_home, &openclaw.url, UPSTREAM, "secrets.reload");
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

    // More sessions opening at once than OpenClaw lets one address hold unauthenticated (32; all
    // of driftless's upstream sessions come from one address), from two client addresses (each
    // within driftless's own per-address budget, also 32): every one opens.
    let open = |i: u8| {
        let url = gw.url.clone();
        async move {
            let opts = OpenOptions {
                bind_addr: Some(std::net::IpAddr::from([127, 0, 0, 1 + i % 2])),
                ..OpenOptions::default()
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let wire = Wire::open(&url, &opts, deadline)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let mut c = Client {
                wire,
                challenge: Value::Null,
            };
            c.next().await;
            let (res, close) = c.connect(cli_params(Some(CANARY))).await;
            match close {
                None => Ok(()),
                Some(close) => Err(format!("{res} {close:?}")),
            }
        }
    };
    let opened = futures_util::future::join_all((0..40).map(open)).await;
    let refused: Vec<&String> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refused.is_empty(),
        "{} of 40 concurrent sessions refused: {refused:?}",
        refused.len()
    );

    // A device on another host gets PAIRING_REQUIRED from driftless, and OpenClaw sees nothing of
    // it; once an operator on this host approves it (driftless's pairing), it reaches OpenClaw's
    // methods through driftless, with the same result as a local client.
    let remote = Home::new();
    let remote_call = |method: &str| {
        remote.run(&[
            "gateway",
            "call",
            method,
            "--url",
            &gw.url,
            "--token",
            CANARY,
            "--source-addr",
            "127.0.0.2",
            "--json",
        ])
    };
    let agents_seen = || {
        openclaw
            .requests_seen()
            .iter()
            .filter(|m| *m == "agents.list")
            .count()
    };
    let seen = agents_seen();
    let (st, out, refused) = remote_call("agents.list");
    assert_eq!(st.code(), Some(77), "{out}{refused}");
    assert!(refused.contains("PAIRING_REQUIRED"), "{refused}");
    let (st, out, err) = home.run(&["devices", "list", "--url", &gw.url, "--json"]);
    assert!(st.success(), "{out}{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let pending = list["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["remoteIp"], "127.0.0.2");
    let request_id = pending[0]["requestId"].as_str().unwrap();
    let (st, out, err) = home.run(&["devices", "approve", request_id, "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    assert_eq!(
        agents_seen(),
        seen,
        "the unpaired device's call reached OpenClaw"
    );
    let (st, out, err) = remote_call("agents.list");
    assert!(st.success(), "{out}{err}");
    assert_no_token(&format!("{out}{err}"), "the remote CLI's output");
    let remote_agents: Value = serde_json::from_str(&out).unwrap();
    let direct = call(&cli, &direct_home, &openclaw.url, UPSTREAM, "agents.list").unwrap();
    assert_eq!(without_times(&remote_agents), without_times(&direct));
    assert_eq!(
        agents_seen(),
        seen + 2,
        "the paired device's call reached OpenClaw"
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
    let direct = session(&openclaw.url, cli_params(Some(UPSTREAM))).await;
    rotate_openclaw_alone(&cli, &direct_home, &home, &openclaw, direct).await;

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

    // Nodes are not relayed (docs/front-mode.md): two node sessions at once are driftless's own,
    // so they cannot collide in OpenClaw, which never hears of them.
    let seen = openclaw.requests_seen().len();
    let mut nodes = Vec::new();
    for instance in ["node-a", "node-b"] {
        let mut p = cli_params(Some(CANARY));
        p["role"] = json!("node");
        p["scopes"] = json!([]);
        p["client"]["id"] = json!("node-host");
        p["client"]["mode"] = json!("node");
        p["client"]["instanceId"] = json!(instance);
        let mut c = Client::open(&gw.url).await;
        let (hello, close) = c.connect(p).await;
        assert!(close.is_none(), "{hello}");
        let methods = hello["payload"]["features"]["methods"].as_array().unwrap();
        assert!(
            methods.len() < 100,
            "a node got OpenClaw's features: {}",
            methods.len()
        );
        nodes.push(c);
    }
    for c in &mut nodes {
        let health = c.call("h", "health", None).await;
        assert_eq!(health["ok"], true, "{health}");
    }
    assert_eq!(
        openclaw.requests_seen().len(),
        seen,
        "a node session reached OpenClaw"
    );
    let mut operator = session(&gw.url, cli_params(Some(CANARY))).await;
    let listed = operator.call("n", "node.list", None).await;
    assert_eq!(listed["ok"], true, "{listed}");
    assert!(!listed.to_string().contains("node-a"), "{listed}");
    drop((nodes, operator));

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

/// Every frame a client receives from here on, kept to be checked for tokens.
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, frame: &Value) -> Value {
        self.0.push(frame.to_string());
        frame.clone()
    }

    /// `c`'s next frame (events included), kept.
    async fn next(&mut self, c: &mut Client, within: Duration) -> Got {
        match c.next_within(within).await {
            Got::Frame(f) => Got::Frame(self.keep(&f)),
            closed => closed,
        }
    }

    /// A read call on `c`: its response (events before it kept too); panics when closed.
    async fn call(&mut self, c: &mut Client, id: &str, method: &str) -> Value {
        c.send_json(json!({"type": "req", "id": id, "method": method}))
            .await;
        loop {
            match self.next(c, Duration::from_secs(30)).await {
                Got::Frame(f) if f["type"] == "res" && f["id"] == id => return f,
                Got::Frame(_) => continue,
                Got::Closed(code, reason) => {
                    panic!("closed {code} {reason} instead of answering {method}")
                }
            }
        }
    }

    /// The next `name` event on `c` within [`TICK_WITHIN`]; panics when closed first.
    async fn event(&mut self, c: &mut Client, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + TICK_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(c, left).await {
                Got::Frame(f) if f["type"] == "event" && f["event"] == name => return f,
                Got::Frame(_) => continue,
                Got::Closed(code, reason) => panic!("closed {code} {reason} before a {name} event"),
            }
        }
    }
}

#[tokio::test]
async fn a_relayed_session_outlives_openclaws_own_token_rotation() {
    use std::os::unix::fs::MetadataExt;
    let Some(cli) = install() else {
        return;
    };
    let home = Home::new();
    let mut openclaw = start_openclaw(&cli, &home);
    front_config(&home, &openclaw);
    let gw = Gateway::start(&home, &[], &[]);
    // The first session through driftless pairs driftless's own device with OpenClaw.
    wait_ready(&gw.url, CANARY).await;

    // driftless's upstream identity and the device token OpenClaw issued to it are in driftless's
    // state, private; OpenClaw lists the device as paired.
    let upstream_state = home.state().join("upstream");
    let token_path = upstream_state.join("device-token.json");
    let identity_path = upstream_state.join("identity/device.json");
    for path in [&token_path, &identity_path] {
        assert_eq!(
            std::fs::metadata(path).unwrap().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&token_path).unwrap()).unwrap();
    let device_token = stored["deviceToken"].as_str().unwrap().to_owned();
    let device_id = stored["deviceId"].as_str().unwrap().to_owned();
    assert!(
        device_token.len() >= 32,
        "a device token: {}",
        device_token.len()
    );
    let direct_home = home.path().join("cli-direct");
    std::fs::create_dir_all(&direct_home).unwrap();
    let devices = call(
        &cli,
        &direct_home,
        &openclaw.url,
        UPSTREAM,
        "device.pair.list",
    )
    .unwrap();
    assert!(
        devices.to_string().contains(&device_id),
        "OpenClaw does not list driftless's device {device_id}"
    );
    assert!(
        !devices.to_string().contains(&device_token),
        "device.pair.list showed the device token"
    );

    // A relayed client, and (for contrast) a shared-token client of OpenClaw itself.
    let mut seen = Seen(Vec::new());
    let mut c = Client::open(&gw.url).await;
    let (hello, close) = c.connect(cli_params(Some(CANARY))).await;
    assert!(close.is_none(), "{hello}");
    seen.keep(&hello);
    assert_eq!(
        hello["payload"]["auth"]["method"], "token",
        "driftless's own auth block"
    );
    assert!(
        hello["payload"]["auth"].get("deviceToken").is_none(),
        "{}",
        hello["payload"]["auth"]
    );
    let listed = seen.call(&mut c, "r1", "node.list").await;
    assert_eq!(listed["ok"], true, "{listed}");
    let direct = session(&openclaw.url, cli_params(Some(UPSTREAM))).await;

    // OpenClaw's own token rotates: its file (which driftless's upstream.token references too)
    // and secrets.reload on OpenClaw directly. OpenClaw closes its shared-token client 4001 ...
    rotate_openclaw_alone(&cli, &direct_home, &home, &openclaw, direct).await;
    assert!(
        call(
            &cli,
            &direct_home,
            &openclaw.url,
            UPSTREAM_ROTATED,
            "health"
        )
        .is_ok(),
        "OpenClaw does not take its rotated token"
    );

    // ... and the relayed client, whose upstream session is driftless's device-token session, is
    // still connected: its read calls still reach OpenClaw and OpenClaw's events still come.
    let listed = seen.call(&mut c, "r2", "node.list").await;
    assert_eq!(listed["ok"], true, "after the rotation: {listed}");
    let tick = seen.event(&mut c, "tick").await;
    assert!(tick["payload"]["ts"].as_u64().is_some(), "{tick}");
    let listed = seen.call(&mut c, "r3", "sessions.list").await;
    assert_eq!(listed["ok"], true, "after a tick: {listed}");

    // A new client through driftless works too (driftless's device token needs no shared token).
    let mut fresh = Client::open(&gw.url).await;
    let (hello, close) = fresh.connect(cli_params(Some(CANARY))).await;
    assert!(close.is_none(), "a new session after the rotation: {hello}");
    seen.keep(&hello);
    let listed = seen.call(&mut fresh, "f1", "sessions.list").await;
    assert_eq!(listed["ok"], true, "{listed}");
    drop((c, fresh));

    // OpenClaw forgets driftless's device (as after a reset of its state): the next session through
    // driftless finds its device token refused, pairs again with the upstream token (the rotated
    // one: driftless reloaded its reference), keeps the new device token and works.
    let (code, out, err) = support::openclaw::oc(
        &cli,
        &direct_home,
        &[
            "gateway",
            "call",
            "device.pair.remove",
            "--json",
            "--url",
            &openclaw.url,
            "--token",
            UPSTREAM_ROTATED,
            "--params",
            &json!({"deviceId": device_id}).to_string(),
        ],
    );
    assert_eq!(code, 0, "device.pair.remove: {out}{err}");
    let mut again = Client::open(&gw.url).await;
    let (hello, close) = again.connect(cli_params(Some(CANARY))).await;
    assert!(
        close.is_none(),
        "a session after OpenClaw forgot driftless's device: {hello}"
    );
    seen.keep(&hello);
    let listed = seen.call(&mut again, "a1", "sessions.list").await;
    assert_eq!(listed["ok"], true, "{listed}");
    drop(again);
    let restored: Value =
        serde_json::from_str(&std::fs::read_to_string(&token_path).unwrap()).unwrap();
    let new_token = restored["deviceToken"].as_str().unwrap().to_owned();
    assert_eq!(
        restored["deviceId"],
        device_id.as_str(),
        "the same device, paired again"
    );
    assert_ne!(new_token, device_token, "a new device token");

    // No token of either side in a frame a client received, in either log, or in a file other
    // than its own source: driftless's token file, OpenClaw's token file, driftless's device token
    // file (and OpenClaw's own state, which issued the device token).
    let secrets = [
        CANARY,
        UPSTREAM,
        UPSTREAM_ROTATED,
        device_token.as_str(),
        new_token.as_str(),
    ];
    for frame in &seen.0 {
        for secret in secrets {
            assert!(!frame.contains(secret), "a token reached a client: {frame}");
        }
    }
    let oc_log = openclaw.log_text();
    openclaw.stop();
    let log = gw.finish();
    assert!(
        log.contains("refused driftless's device token; pairing driftless's device again"),
        "driftless did not say it paired again:\n{log}"
    );
    for (text, what) in [(&oc_log, "OpenClaw's log"), (&log, "driftless's log")] {
        assert_no_token(text, what);
        for token in [&device_token, &new_token] {
            assert!(
                !text.contains(token.as_str()),
                "a device token leaked into {what}"
            );
        }
    }
    let openclaw_state = home.path().join("openclaw/state");
    for (secret, sources) in [
        (UPSTREAM_ROTATED, vec![home.path().join("openclaw/token")]),
        (CANARY, vec![home.path().join("secrets/token")]),
        // OpenClaw issued the device tokens and keeps them in its own state.
        (
            new_token.as_str(),
            vec![token_path.clone(), openclaw_state.clone()],
        ),
        (device_token.as_str(), vec![openclaw_state.clone()]),
    ] {
        let copies: Vec<_> = files_containing(home.path(), secret)
            .into_iter()
            .filter(|p| !sources.iter().any(|s| p.starts_with(s)))
            .collect();
        assert!(copies.is_empty(), "a token outside its source: {copies:?}");
    }
    assert!(
        files_containing(home.path(), UPSTREAM).is_empty(),
        "OpenClaw's old token is left in a file"
    );
}
