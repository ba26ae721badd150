//! End-to-end: device identity, pairing and device tokens with the real `driftless` binary (both
//! as gateway and as client), on loopback. Outcomes are asserted from the gateway's audit trail
//! (its SQLite store, read while it runs) and the client's token store on disk.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use driftless_client::identity::DeviceIdentity;
use driftless_client::store::{TokenStore, store_path};
use driftless_core::SecretValue;
use driftless_gateway::devices::{AuditEvent, DeviceStore, SqliteStore};
use driftless_protocol::device_auth::{self, SignedFields};
use serde_json::Value;
use support::*;

/// The client's view of one home: its identity and stored device tokens.
fn state(home: &Home) -> PathBuf {
    home.state()
}

fn audit(home: &Home) -> Vec<AuditEvent> {
    SqliteStore::open_in(&state(home)).unwrap().audit().unwrap()
}

fn stored(home: &Home, url: &str) -> Option<SecretValue> {
    let id = DeviceIdentity::load_existing(&state(home))?;
    let store = TokenStore::load(&state(home), id.device_id()).unwrap();
    store.get(url, "operator").map(|t| t.token.clone())
}

fn health(home: &Home, url: &str, extra: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut args = vec!["gateway", "health", "--url", url];
    args.extend_from_slice(extra);
    let r = home.run(&args);
    assert_no_canary(&format!("{}{}", r.1, r.2), "CLI output");
    r
}

fn events<'a>(a: &'a [AuditEvent], name: &str) -> Vec<&'a AuditEvent> {
    a.iter().filter(|e| e.event == name).collect()
}

#[tokio::test]
async fn silent_loopback_pairing_then_device_token_reuse() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let (st, out, err) = health(&home, &gw.url, &[]);
    assert!(st.success(), "{out}{err}");
    let token = stored(&home, &gw.url).expect("a device token was stored after pairing");
    let a = audit(&home);
    let approved = events(&a, "pair.approved");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].actor, "gateway (silent loopback pairing)");
    let issued = events(&a, "token.issued");
    assert_eq!(issued.len(), 1);
    assert_eq!(
        issued[0].token_fingerprint.as_deref(),
        Some(token.fingerprint().as_str())
    );

    // The next connection presents the device token, and no new one is minted.
    let (st, out, err) = health(&home, &gw.url, &[]);
    assert!(st.success(), "{out}{err}");
    let a = audit(&home);
    let used = events(&a, "token.used");
    assert_eq!(used.len(), 1, "{a:?}");
    assert_eq!(used[0].outcome, "ok");
    assert_eq!(
        used[0].token_fingerprint.as_deref(),
        Some(token.fingerprint().as_str())
    );
    assert_eq!(events(&a, "token.issued").len(), 1);
    assert!(stored(&home, &gw.url).unwrap().same_as(&token));
    // The store file is private and never holds the shared token.
    let path = store_path(&state(&home));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(CANARY));
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&path).unwrap());
    assert_eq!(mode & 0o777, 0o600);
    // Listing devices shows fingerprints, never the token.
    let (st, out, err) = home.run(&["devices", "list", "--url", &gw.url, "--json"]);
    assert!(st.success(), "{err}");
    assert!(out.contains(token.fingerprint().as_str()), "{out}");
    assert!(!out.contains(token.expose()) && !err.contains(token.expose()));
    let log = gw.finish();
    assert!(
        !log.contains(token.expose()),
        "a device token reached the gateway log"
    );
}

#[tokio::test]
async fn other_host_needs_approval_then_connects() {
    let gw_home = Home::new();
    // Only 127.0.0.1 counts as this machine; 127.0.0.2 plays a host on the LAN.
    gw_home.token_config(
        CANARY,
        "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]",
    );
    let gw = Gateway::start(&gw_home, &[], &[]);
    let remote = Home::new();
    let args = ["--token", CANARY, "--source-addr", "127.0.0.2"];
    let (st, out, refused) = health(&remote, &gw.url, &args);
    assert_eq!(st.code(), Some(77), "{out}{refused}");
    assert!(refused.contains("PAIRING_REQUIRED"), "{refused}");
    assert!(refused.contains("driftless devices approve"), "{refused}");
    assert!(stored(&remote, &gw.url).is_none());

    // The operator on the gateway host lists and approves it.
    let (st, out, err) = gw_home.run(&["devices", "list", "--url", &gw.url, "--json"]);
    assert!(st.success(), "{out}{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let pending = list["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["remoteIp"], "127.0.0.2");
    assert_eq!(pending[0]["reason"], "not-paired");
    let remote_id = DeviceIdentity::load_existing(&state(&remote)).unwrap();
    assert_eq!(pending[0]["deviceId"], remote_id.device_id());
    let request_id = pending[0]["requestId"].as_str().unwrap().to_owned();
    // The refused client was told which request to approve.
    assert!(refused.contains(&request_id), "{refused}");
    let (st, out, err) = gw_home.run(&["devices", "approve", &request_id, "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("approved"), "{out}");

    let (st, out, err) = health(&remote, &gw.url, &args);
    assert!(st.success(), "{out}{err}");
    assert!(stored(&remote, &gw.url).is_some());
    let a = audit(&gw_home);
    let approved = events(&a, "pair.approved");
    assert!(
        approved
            .iter()
            .any(|e| e.device_id.as_deref() == Some(remote_id.device_id())
                && e.actor != "gateway (silent loopback pairing)"),
        "{a:?}"
    );
    gw.finish();
}

/// A session on the gateway host holding the shared secret, as `role` with `scopes`.
async fn watcher(url: &str, role: &str, scopes: &[&str]) -> Client {
    let mut p = cli_params(Some(CANARY));
    p["role"] = serde_json::json!(role);
    p["scopes"] = serde_json::json!(scopes);
    if role == "node" {
        p["client"]["id"] = "node-host".into();
        p["client"]["mode"] = "node".into();
    }
    session(url, p).await
}

/// The next frame that is not a tick (a tick may come at any time).
async fn next_non_tick(c: &mut Client) -> Value {
    loop {
        match c.next().await {
            Got::Frame(f) if f["event"] == "tick" => continue,
            Got::Frame(f) => return f,
            Got::Closed(code, reason) => panic!("closed {code} {reason}"),
        }
    }
}

/// The next non-tick frame, which must be the broadcast event `name`.
async fn expect_event(c: &mut Client, name: &str) -> Value {
    let f = next_non_tick(c).await;
    assert_eq!(f["type"], "event", "expected {name}, got {f}");
    assert_eq!(f["event"], name, "{f}");
    assert!(f["seq"].is_u64(), "a broadcast event carries seq: {f}");
    f
}

/// A request whose answer must be the next non-tick frame. The gateway sends every event
/// published before a request ahead of its answer, so this proves no such event was due.
async fn answered_with_nothing_before(c: &mut Client, id: &str, method: &str) -> Value {
    c.send_json(serde_json::json!({"type": "req", "id": id, "method": method}))
        .await;
    let f = next_non_tick(c).await;
    assert_eq!(
        f["type"], "res",
        "an event came before the answer to {id}: {f}"
    );
    assert_eq!(f["id"], id);
    assert_eq!(f["ok"], true, "{f}");
    f
}

/// A device on "another host" (127.0.0.2) presents the shared secret and is told to pair;
/// returns the requestId it was given.
async fn ask_to_pair(url: &str, id: &std::sync::Arc<DeviceIdentity>, scopes: &[&str]) -> String {
    use driftless_client::connection::{ClientError, ConnectOptions, Credential, connect};
    let mut opts = ConnectOptions::new(url, Credential::Token(SecretValue::new(CANARY.into())));
    opts.device = Some(id.clone());
    opts.open.bind_addr = Some("127.0.0.2".parse().unwrap());
    opts.scopes = scopes.iter().map(|s| s.to_string()).collect();
    match connect(&opts).await {
        Err(ClientError::Rejected { error, .. }) => {
            assert_eq!(error.detail_code(), Some("PAIRING_REQUIRED"), "{error:?}");
            error.details.unwrap().request_id.unwrap()
        }
        Err(e) => panic!("expected pairing required, got {e}"),
        Ok(_) => panic!("expected pairing required, got a session"),
    }
}

/// `device.pair.requested` as OpenClaw sends it for a library client on 127.0.0.2.
fn requested_payload(request_id: &str, id: &DeviceIdentity, scopes: &[&str], ts: &Value) -> Value {
    serde_json::json!({
        "requestId": request_id,
        "deviceId": id.device_id(),
        "publicKey": id.public_key(),
        "platform": std::env::consts::OS,
        "clientId": "cli",
        "clientMode": "cli",
        "role": "operator",
        "roles": ["operator"],
        "scopes": scopes,
        "remoteIp": "127.0.0.2",
        "silent": false,
        "isRepair": false,
        "ts": ts,
    })
}

/// OpenClaw's pairing events reach operators holding `operator.pairing` (and admins), in order:
/// the silent loopback pairing of the operator's own CLI resolves; a remote request is announced
/// once (not again when the device retries), a superseding one again; `devices approve` and
/// `devices reject` resolve them. A read-only operator and a node hear none of it.
#[tokio::test]
async fn pairing_events_reach_only_pairing_operators() {
    let gw_home = Home::new();
    gw_home.token_config(
        CANARY,
        "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]",
    );
    let gw = Gateway::start(&gw_home, &[], &[]);
    let url = gw.url.clone();
    let mut pairer = watcher(&url, "operator", &["operator.pairing"]).await;
    let mut admin = watcher(&url, "operator", &["operator.admin"]).await;
    let mut reader = watcher(&url, "operator", &["operator.read"]).await;
    let mut node = watcher(&url, "node", &["operator.pairing"]).await;

    // Both advertised in hello-ok, as OpenClaw's GATEWAY_EVENTS.
    let mut c = Client::open(&url).await;
    let (hello, _) = c.connect(cli_params(Some(CANARY))).await;
    let advertised = hello["payload"]["features"]["events"].as_array().unwrap();
    for e in ["tick", "device.pair.requested", "device.pair.resolved"] {
        assert!(
            advertised.contains(&Value::from(e)),
            "{e} missing: {advertised:?}"
        );
    }

    // The operator's own CLI pairs silently from loopback: only its resolution is announced.
    let (st, out, err) = gw_home.run(&["devices", "list", "--url", &url, "--json"]);
    assert!(st.success(), "{out}{err}");
    let cli = DeviceIdentity::load_existing(&state(&gw_home)).unwrap();
    let cli_token = stored(&gw_home, &url).unwrap();
    let silent = events(&audit(&gw_home), "pair.approved")[0]
        .request_id
        .clone()
        .unwrap();
    let f = expect_event(&mut pairer, "device.pair.resolved").await;
    let ts = f["payload"]["ts"].clone();
    assert!(ts.as_u64().unwrap() > 0);
    assert_eq!(
        f["payload"],
        serde_json::json!({"requestId": silent, "deviceId": cli.device_id(), "decision": "approved", "ts": ts})
    );
    assert!(
        !f.to_string().contains(cli_token.expose()),
        "a token in an event: {f}"
    );
    assert_eq!(expect_event(&mut admin, "device.pair.resolved").await, f);

    // A device on another host asks: announced with the pending request, as `devices list` has it.
    let remote = std::sync::Arc::new(
        DeviceIdentity::load_or_create(&gw_home.path().join("remote-1")).unwrap(),
    );
    let rid = ask_to_pair(&url, &remote, &["operator.read"]).await;
    let f = expect_event(&mut pairer, "device.pair.requested").await;
    let ts = f["payload"]["ts"].clone();
    assert_eq!(
        f["payload"],
        requested_payload(&rid, &remote, &["operator.read"], &ts)
    );
    assert_eq!(expect_event(&mut admin, "device.pair.requested").await, f);
    let list = answered_with_nothing_before(&mut pairer, "list-1", "device.pair.list").await;
    assert_eq!(list["payload"]["pending"][0]["requestId"], rid.as_str());
    assert_eq!(list["payload"]["pending"][0]["ts"], ts);
    // Its retry refreshes the same request in place: not announced again.
    assert_eq!(ask_to_pair(&url, &remote, &["operator.read"]).await, rid);
    answered_with_nothing_before(&mut pairer, "list-2", "device.pair.list").await;

    let (st, out, err) = gw_home.run(&["devices", "approve", &rid, "--url", &url]);
    assert!(st.success(), "{out}{err}");
    let f = expect_event(&mut pairer, "device.pair.resolved").await;
    let ts = f["payload"]["ts"].clone();
    assert_eq!(
        f["payload"],
        serde_json::json!({"requestId": rid, "deviceId": remote.device_id(), "decision": "approved", "ts": ts})
    );
    assert_eq!(expect_event(&mut admin, "device.pair.resolved").await, f);

    // Another device asks, then asks for other scopes: a new request, announced with both.
    let other = std::sync::Arc::new(
        DeviceIdentity::load_or_create(&gw_home.path().join("remote-2")).unwrap(),
    );
    let first = ask_to_pair(&url, &other, &["operator.read"]).await;
    let f = expect_event(&mut pairer, "device.pair.requested").await;
    assert_eq!(f["payload"]["requestId"], first.as_str());
    assert_eq!(expect_event(&mut admin, "device.pair.requested").await, f);
    let second = ask_to_pair(&url, &other, &["operator.approvals"]).await;
    assert_ne!(second, first);
    let f = expect_event(&mut pairer, "device.pair.requested").await;
    let ts = f["payload"]["ts"].clone();
    assert_eq!(
        f["payload"],
        requested_payload(
            &second,
            &other,
            &["operator.approvals", "operator.read"],
            &ts
        )
    );
    assert_eq!(expect_event(&mut admin, "device.pair.requested").await, f);
    let (st, out, err) = gw_home.run(&["devices", "reject", &second, "--url", &url]);
    assert!(st.success(), "{out}{err}");
    let f = expect_event(&mut pairer, "device.pair.resolved").await;
    let ts = f["payload"]["ts"].clone();
    assert_eq!(
        f["payload"],
        serde_json::json!({"requestId": second, "deviceId": other.device_id(), "decision": "rejected", "ts": ts})
    );
    assert_eq!(expect_event(&mut admin, "device.pair.resolved").await, f);

    // Every event above was published before these requests, so none was due to these sessions.
    answered_with_nothing_before(&mut reader, "r1", "health").await;
    answered_with_nothing_before(&mut node, "n1", "health").await;
    gw.finish();
}

/// A library client holding this home's identity and stored token, kept open to watch closes.
async fn device_session(home: &Home, url: &str) -> driftless_client::connection::Connection {
    use driftless_client::connection::{ConnectOptions, Credential, connect};
    let id = DeviceIdentity::load_existing(&state(home)).unwrap();
    let token = stored(home, url).unwrap();
    let mut opts = ConnectOptions::new(url, Credential::DeviceToken(token));
    opts.device = Some(std::sync::Arc::new(id));
    opts.scopes = vec!["operator.read".into()];
    connect(&opts).await.expect("device-token session")
}

async fn expect_close(conn: &mut driftless_client::connection::Connection, reason: &str) {
    use driftless_client::connection::ClientError;
    loop {
        match conn.next_event(Duration::from_secs(5)).await {
            Ok(_) => continue, // ticks
            Err(ClientError::Closed { code, reason: r }) => {
                assert_eq!((code, r.as_str()), (4001, reason));
                return;
            }
            Err(e) => panic!("expected close 4001 {reason}, got {e}"),
        }
    }
}

async fn device_token_refused(home: &Home, url: &str, token: SecretValue) -> Value {
    use driftless_client::connection::{ClientError, ConnectOptions, Credential, connect};
    let id = DeviceIdentity::load_existing(&state(home)).unwrap();
    let mut opts = ConnectOptions::new(url, Credential::DeviceToken(token));
    opts.device = Some(std::sync::Arc::new(id));
    match connect(&opts).await {
        Err(ClientError::Rejected { error, close }) => {
            assert_eq!(close, Some(1008));
            serde_json::to_value(&error).unwrap()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn rotate_revoke_remove_close_sessions_and_retire_the_old_token() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    assert!(health(&home, &gw.url, &[]).0.success());
    let id = DeviceIdentity::load_existing(&state(&home)).unwrap();
    let old = stored(&home, &gw.url).unwrap();

    let mut session = device_session(&home, &gw.url).await;
    let (st, out, err) = home.run(&["devices", "rotate", id.device_id(), "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("stored"), "{out}");
    expect_close(&mut session, "device token rotated").await;
    let new = stored(&home, &gw.url).unwrap();
    assert!(!new.same_as(&old), "the CLI stored its own rotated token");
    let e = device_token_refused(&home, &gw.url, old).await;
    assert_eq!(e["details"]["code"], "AUTH_DEVICE_TOKEN_MISMATCH");
    assert_eq!(
        e["message"],
        "unauthorized: device token mismatch (rotate/reissue device token)"
    );

    let mut session = device_session(&home, &gw.url).await;
    let (st, out, err) = home.run(&["devices", "revoke", id.device_id(), "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    expect_close(&mut session, "device token revoked").await;
    let e = device_token_refused(&home, &gw.url, new).await;
    assert_eq!(e["details"]["code"], "AUTH_DEVICE_TOKEN_MISMATCH");

    // The revoked token heals: deleted, the shared secret re-approves this loopback device.
    let (st, out, err) = home.run(&["devices", "list", "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    assert!(err.contains("retrying once"), "{err}");
    let mut session = device_session(&home, &gw.url).await;
    let (st, out, err) = home.run(&["devices", "remove", id.device_id(), "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    expect_close(&mut session, "device removed").await;
    let a = audit(&home);
    assert_eq!(events(&a, "token.rotated").len(), 1);
    assert_eq!(events(&a, "token.revoked").len(), 1);
    assert_eq!(events(&a, "device.removed").len(), 1);
    gw.finish();
}

#[tokio::test]
async fn d3_stored_device_token_beats_a_different_passive_token() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    assert!(health(&home, &gw.url, &[]).0.success());
    let token = stored(&home, &gw.url).unwrap();
    // The client now also sees a passive token that differs (a drifted copy in its environment
    // and in a client-side config).
    let client_cfg = home.path().join("client.toml");
    std::fs::write(
        &client_cfg,
        format!("[gateway.auth]\ntoken = \"{WRONG_CANARY}\"\n"),
    )
    .unwrap();
    let mut cmd = home.command();
    let out = cmd
        .args(["gateway", "health", "--url", &gw.url])
        .env("DRIFTLESS_CONFIG", &client_cfg)
        .env("DRIFTLESS_GATEWAY_TOKEN", WRONG_CANARY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_no_canary(&text, "CLI output");
    let a = audit(&home);
    let used = events(&a, "token.used");
    assert_eq!(used.last().unwrap().outcome, "ok");
    assert_eq!(
        used.last().unwrap().token_fingerprint.as_deref(),
        Some(token.fingerprint().as_str())
    );
    assert!(stored(&home, &gw.url).unwrap().same_as(&token));
    gw.finish();
}

#[tokio::test]
async fn stale_stored_token_self_heals_in_one_retry() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    assert!(health(&home, &gw.url, &[]).0.success());
    let current = stored(&home, &gw.url).unwrap();
    // The client holds a token the gateway does not know (e.g. the client restored from a
    // backup): plant a stale one.
    let id = DeviceIdentity::load_existing(&state(&home)).unwrap();
    let mut store = TokenStore::load(&state(&home), id.device_id()).unwrap();
    let stale = SecretValue::new("stale-device-token-not-known-to-the-gateway".into());
    store
        .put(&gw.url, "operator", stale.clone(), vec![])
        .unwrap();
    let before = audit(&home).len();

    let (st, out, err) = health(&home, &gw.url, &[]);
    assert!(st.success(), "{out}{err}");
    assert!(err.contains("retrying once"), "{err}");
    let now = stored(&home, &gw.url).unwrap();
    assert!(!now.same_as(&stale), "the stale token is gone");
    // Healed with the shared secret, the client gets the gateway's current token back: nothing is
    // minted, so any other holder of that token keeps working.
    assert!(now.same_as(&current));
    let a = audit(&home);
    let new_events: Vec<&AuditEvent> = a[before..].iter().collect();
    let rejected: Vec<_> = new_events
        .iter()
        .filter(|e| e.event == "token.used" && e.outcome == "rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "exactly one failed attempt: {new_events:?}"
    );
    assert!(
        !new_events.iter().any(|e| e.event == "token.issued"),
        "{new_events:?}"
    );
    gw.finish();
}

/// A client that always passes the shared token explicitly (a script, or a second process sharing
/// this device identity) gets the same device token on every connect, as from OpenClaw's
/// `ensureDeviceToken`: the copy another process stored stays valid, and the gateway writes nothing.
#[tokio::test]
async fn explicit_shared_token_connects_keep_the_same_device_token() {
    let gw_home = Home::new();
    gw_home.token_config(CANARY, "");
    let gw = Gateway::start(&gw_home, &[], &[]);
    // This client has no shared credential of its own: only `--token`, or its device token.
    let client = Home::new();
    let shared = ["--token", CANARY];
    let (st, out, err) = health(&client, &gw.url, &shared);
    assert!(st.success(), "{out}{err}");
    let first = stored(&client, &gw.url).expect("a device token was stored after pairing");
    let (st, out, err) = health(&client, &gw.url, &shared);
    assert!(st.success(), "{out}{err}");
    let second = stored(&client, &gw.url).unwrap();
    assert!(
        second.same_as(&first),
        "the second shared-token connect replaced the device token ({} -> {})",
        first.fingerprint(),
        second.fingerprint()
    );
    let a = audit(&gw_home);
    let issued = events(&a, "token.issued");
    assert_eq!(issued.len(), 1, "{a:?}");
    assert_eq!(
        issued[0].token_fingerprint.as_deref(),
        Some(first.fingerprint().as_str())
    );

    // With its device token only, it still connects.
    let (st, out, err) = health(&client, &gw.url, &[]);
    assert!(st.success(), "{out}{err}");
    let a = audit(&gw_home);
    let used = events(&a, "token.used");
    assert_eq!(used.len(), 1, "{a:?}");
    assert_eq!(used[0].outcome, "ok");
    assert_eq!(
        used[0].token_fingerprint.as_deref(),
        Some(first.fingerprint().as_str())
    );
    assert_eq!(events(&a, "token.issued").len(), 1);
    assert!(stored(&client, &gw.url).unwrap().same_as(&first));

    // The key the tokens are derived from is private and, like the token, never logged.
    let key_path = state(&gw_home).join("devices/token-key");
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&key_path).unwrap());
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    let log = gw.finish();
    assert!(
        !log.contains(first.expose()),
        "a device token reached the log"
    );
    assert!(!log.contains(key.trim()), "the token key reached the log");
}

#[tokio::test]
async fn explicit_wrong_token_fails_and_leaves_the_store_untouched() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    assert!(health(&home, &gw.url, &[]).0.success());
    let path = store_path(&state(&home));
    let before = std::fs::read(&path).unwrap();
    let (st, out, err) = health(&home, &gw.url, &["--token", WRONG_CANARY]);
    assert_eq!(st.code(), Some(77), "{out}{err}");
    assert!(err.contains("AUTH_TOKEN_MISMATCH"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    gw.finish();
}

#[tokio::test]
async fn device_proof_failures_on_the_wire() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let key = DeviceIdentity::load_or_create(&home.path().join("probe-state")).unwrap();
    // (mutation of a good proof, expected details.code)
    let cases: [(&str, &str); 4] = [
        ("nonce", "DEVICE_AUTH_NONCE_MISMATCH"),
        ("stale", "DEVICE_AUTH_SIGNATURE_EXPIRED"),
        ("signature", "DEVICE_AUTH_SIGNATURE_INVALID"),
        ("id", "DEVICE_AUTH_DEVICE_ID_MISMATCH"),
    ];
    for (what, code) in cases {
        let mut c = Client::open(&gw.url).await;
        let nonce = c.challenge["payload"]["nonce"].as_str().unwrap().to_owned();
        let mut p = cli_params(Some(CANARY));
        let scopes = vec!["operator.read".to_string()];
        let signed_nonce = if what == "nonce" {
            "other-nonce".to_owned()
        } else {
            nonce
        };
        let mut proof = key.prove_now(&SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            signed_at_ms: 0,
            token: Some(CANARY),
            nonce: &signed_nonce,
            platform: Some("linux"),
            device_family: None,
        });
        match what {
            "stale" => proof.signed_at -= device_auth::SIGNATURE_SKEW_MS + 60_000,
            "signature" => proof.signature = proof.signature.chars().rev().collect(),
            "id" => proof.id = "0".repeat(64),
            _ => {}
        }
        p["device"] = serde_json::to_value(&proof).unwrap();
        let (res, close) = c.connect(p).await;
        assert_eq!(res["error"]["code"], "INVALID_REQUEST", "{what}: {res}");
        assert_eq!(res["error"]["details"]["code"], code, "{what}: {res}");
        let (cc, reason) = close.unwrap();
        assert_eq!(cc, 1008);
        assert_eq!(reason, res["error"]["message"].as_str().unwrap());
    }
    gw.finish();
}

/// SIGKILL the gateway while approvals are in flight: every request must end up either still
/// pending or fully paired, never both or neither, and the database must be intact. (The store
/// test `sigkill_mid_approval_leaves_pending_or_paired` kills a process inside the transaction
/// deterministically; this one kills the real gateway at an arbitrary point.)
#[tokio::test]
async fn sigkill_during_approvals_leaves_each_device_pending_or_paired() {
    use driftless_client::connection::{ClientError, ConnectOptions, Credential, connect};
    let home = Home::new();
    home.token_config(
        CANARY,
        "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]",
    );
    let mut gw = Gateway::start(&home, &[], &[]);
    assert!(health(&home, &gw.url, &[]).0.success());
    // Devices on "another host" ask to pair.
    let mut requests = Vec::new();
    for i in 0..24 {
        let id = DeviceIdentity::load_or_create(&home.path().join(format!("remote-{i}"))).unwrap();
        let device_id = id.device_id().to_owned();
        let mut opts =
            ConnectOptions::new(&gw.url, Credential::Token(SecretValue::new(CANARY.into())));
        opts.device = Some(std::sync::Arc::new(id));
        opts.open.bind_addr = Some("127.0.0.2".parse().unwrap());
        let Err(ClientError::Rejected { error, .. }) = connect(&opts).await else {
            panic!("expected pairing required")
        };
        let rid = error.details.unwrap().request_id.unwrap();
        requests.push((device_id, rid));
    }
    // The local operator approves all of them at once; the gateway is killed meanwhile.
    let admin = DeviceIdentity::load_existing(&state(&home)).unwrap();
    let admin = std::sync::Arc::new(admin);
    let token = stored(&home, &gw.url).unwrap();
    let mut conns = Vec::new();
    for _ in &requests {
        let mut opts = ConnectOptions::new(&gw.url, Credential::DeviceToken(token.clone()));
        opts.device = Some(admin.clone());
        opts.scopes = vec!["operator.admin".into()];
        conns.push(connect(&opts).await.unwrap());
    }
    let mut tasks = Vec::new();
    for ((_, rid), mut conn) in requests.iter().zip(conns) {
        let rid = rid.clone();
        tasks.push(tokio::spawn(async move {
            let _ = conn
                .request(
                    "device.pair.approve",
                    Some(serde_json::json!({"requestId": rid})),
                )
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    gw.child.kill().unwrap(); // SIGKILL, our own child
    gw.child.wait().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let store = SqliteStore::open_in(&state(&home)).unwrap();
    let (pending, paired) = store.list(0).unwrap();
    for (device_id, rid) in &requests {
        let is_pending = pending.iter().any(|p| &p.request_id == rid);
        let is_paired = paired.iter().any(|p| &p.device_id == device_id);
        assert!(
            is_pending != is_paired,
            "{device_id}: pending={is_pending} paired={is_paired}"
        );
        if is_paired {
            let approved = events(&store.audit().unwrap(), "pair.approved")
                .into_iter()
                .any(|e| e.request_id.as_deref() == Some(rid.as_str()));
            assert!(approved, "paired without its audit line");
        }
    }
    eprintln!(
        "approved before the kill: {} of {}",
        paired.len() - 1,
        requests.len()
    );
    let conn = rusqlite::Connection::open(state(&home).join("devices/devices.sqlite3")).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// `doctor --json` on `home`: (exit code, the report).
fn doctor(home: &Home, args: &[&str]) -> (i32, Value, String) {
    let mut a = vec!["doctor", "--json"];
    a.extend_from_slice(args);
    let (st, out, err) = home.run(&a);
    assert_no_canary(&format!("{out}{err}"), "doctor output");
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{out}{err}"));
    (st.code().unwrap(), v, format!("{out}{err}"))
}

fn device_token_rows(report: &Value) -> Vec<Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == "device-token")
        .cloned()
        .collect()
}

/// D3 seeded: the gateway rotates this client's device token while the client's store keeps the
/// old one. `doctor` reports it and changes nothing; `doctor --fix` deletes that entry (after a
/// 0600 backup that names the token only by fingerprint); a second `--fix` changes nothing; with
/// the gateway gone the token is not judged and is kept.
#[tokio::test]
async fn doctor_finds_and_deletes_a_stored_device_token_the_gateway_refuses() {
    let gw_home = Home::new();
    gw_home.token_config(CANARY, "");
    let gw = Gateway::start(&gw_home, &[], &[]);
    let client = Home::new();
    let (st, out, err) = client.run(&["init"]);
    assert!(st.success(), "{out}{err}");
    assert!(health(&client, &gw.url, &["--token", CANARY]).0.success());
    let old = stored(&client, &gw.url).expect("the client stored its device token");
    let path = store_path(&state(&client));

    let (code, report, text) = doctor(&client, &[]);
    assert_eq!(code, 0, "{text}");
    let rows = device_token_rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["status"], "ok", "{report}");
    assert!(
        rows[0]["finding"]
            .as_str()
            .unwrap()
            .contains("the gateway accepts it")
    );

    // The gateway's operator rotates the client's token; the client's store still holds the old.
    let device_id = DeviceIdentity::load_existing(&state(&client))
        .unwrap()
        .device_id()
        .to_owned();
    let (st, out, err) = gw_home.run(&["devices", "rotate", &device_id, "--url", &gw.url]);
    assert!(st.success(), "{out}{err}");
    assert!(stored(&client, &gw.url).unwrap().same_as(&old));
    let before = std::fs::read(&path).unwrap();

    let (code, report, text) = doctor(&client, &[]);
    assert_eq!(code, 1, "{text}");
    let rows = device_token_rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["status"], "finding", "{report}");
    let finding = rows[0]["finding"].as_str().unwrap();
    assert!(finding.contains(old.fingerprint().as_str()), "{finding}");
    assert!(finding.contains(&gw.url), "{finding}");
    assert!(finding.contains("no longer accepts"), "{finding}");
    assert!(rows[0]["fix"].as_str().unwrap().contains("delete"));
    assert_eq!(report["findings"], 1, "only this finding: {report}");
    assert!(!text.contains(old.expose()));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the audit changed the store"
    );

    let (st, out, err) = client.run(&["doctor", "--fix"]);
    assert_no_canary(&format!("{out}{err}"), "doctor --fix output");
    assert!(!out.contains(old.expose()) && !err.contains(old.expose()));
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("deleted stored device token"), "{out}");
    assert!(out.contains("Clean: no findings."), "{out}");
    assert!(
        stored(&client, &gw.url).is_none(),
        "the refused token is gone"
    );
    let backup: PathBuf = out
        .split("(backup: ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no backup named: {out}"));
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&backup).unwrap());
    assert_eq!(mode & 0o777, 0o600);
    let kept = std::fs::read_to_string(&backup).unwrap();
    assert!(!kept.contains(old.expose()), "the backup is a second copy");
    assert!(kept.contains(old.fingerprint().as_str()), "{kept}");

    let after_fix = std::fs::read(&path).unwrap();
    let (st, out, err) = client.run(&["doctor", "--fix"]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("No changes"), "{out}");
    assert_eq!(std::fs::read(&path).unwrap(), after_fix);

    // The client recovers with the shared token and stores the gateway's current device token.
    assert!(health(&client, &gw.url, &["--token", CANARY]).0.success());
    let fresh = stored(&client, &gw.url).expect("a device token was stored again");
    assert!(!fresh.same_as(&old));

    // Without a gateway to ask, nothing is judged and nothing is deleted.
    let log = gw.finish();
    assert!(!log.contains(old.expose()) && !log.contains(fresh.expose()));
    let before = std::fs::read(&path).unwrap();
    let (code, report, text) = doctor(&client, &["--fix"]);
    assert_eq!(code, 0, "{text}");
    let rows = device_token_rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["status"], "skipped", "{report}");
    assert!(
        rows[0]["finding"]
            .as_str()
            .unwrap()
            .contains("the token is kept")
    );
    assert!(report["actions"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
