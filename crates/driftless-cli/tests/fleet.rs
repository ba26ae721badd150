//! Several gateway replicas on one PostgreSQL database (issue #14): three real `driftless gateway
//! run` processes, each with its own home, state directory and port, and one config pointing at a
//! private PostgreSQL cluster (`driftless_gateway::testing::postgres`) with the database password
//! and the device-token key as file references shared by all three. Each replica reads its own
//! copy of the shared token (`secrets/token` in its home), as pods whose Secret mounts sync apart.
//!
//! Without PostgreSQL installed the test skips and says why; with `DRIFTLESS_REQUIRE_TOOLS=1`
//! (CI, whose `.ci/run` installs `postgresql`) it fails instead.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_client::connection::{ClientError, ConnectOptions, Connection, Credential, connect};
use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_core::SecretValue;
use driftless_gateway::testing::postgres::Cluster;
use serde_json::Value;
use support::*;

/// The device-token key every replica reads (the same file).
const TOKEN_KEY: &str = "b7Kx3mQ9vR2tY8wE5nA1cF6hJ4pL0sD7gU3iO9zXk2M";

/// A replica's home: the shared token as every test's, `extra` config, the PostgreSQL store, and
/// only 127.0.0.1 counting as this machine (127.0.0.2 plays a device on another host). Its port
/// is pinned in its config, so the home's `token rotate` and `gateway status` find it.
fn replica(cluster: &Cluster, db: &str, shared: &Path, extra: &str) -> (Home, Gateway) {
    let home = Home::new();
    let gw = Gateway::start_pinned(&home, |port| {
        home.token_config(
            CANARY,
            &format!(
                "{extra}[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]\nstore = \"postgres\"\n\
                 [gateway.devices.postgres]\nurl = {url:?}\n\
                 password = {{ source = \"file\", path = {pw:?} }}\n\
                 token_key = {{ source = \"file\", path = {key:?} }}\n",
                url = cluster.url(db),
                pw = shared.join("pg-password"),
                key = shared.join("token-key"),
            ),
        );
        let config = std::fs::read_to_string(home.config_path()).unwrap();
        home.write_config(&config.replacen("port = 0\n", &format!("port = {port}\n"), 1));
    });
    (home, gw)
}

/// Three replicas on one new database of a private cluster (`None`: PostgreSQL is missing).
struct Fleet {
    cluster: Cluster,
    db: String,
    shared: tempfile::TempDir,
    replicas: Vec<(Home, Gateway)>,
}

impl Fleet {
    fn start() -> Option<Fleet> {
        Fleet::start_with("")
    }

    /// Three replicas with `extra` config each.
    fn start_with(extra: &str) -> Option<Fleet> {
        let cluster = Cluster::start()?;
        let db = cluster.create_database();
        let shared = tempfile::tempdir().unwrap();
        write_secret(&shared.path().join("pg-password"), cluster.password());
        write_secret(&shared.path().join("token-key"), TOKEN_KEY);
        let replicas = (0..3)
            .map(|_| replica(&cluster, &db, shared.path(), extra))
            .collect();
        Some(Fleet {
            cluster,
            db,
            shared,
            replicas,
        })
    }

    /// Stops every replica and returns their logs.
    fn finish(self) -> Vec<String> {
        self.replicas
            .into_iter()
            .map(|(_, gw)| gw.finish())
            .collect()
    }
}

#[test]
fn a_device_asks_on_a_is_approved_through_b_and_connects_through_c() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let (cluster, db) = (&fleet.cluster, &fleet.db);
    let [(_, a), (b_home, b), (_, c)] = &fleet.replicas[..] else {
        unreachable!()
    };

    // The device asks to pair through A.
    let device = Home::new();
    let remote = ["--token", CANARY, "--source-addr", "127.0.0.2"];
    let health = |url: &str| {
        let mut args = vec!["gateway", "health", "--url", url];
        args.extend_from_slice(&remote);
        let r = device.run(&args);
        assert_no_canary(&format!("{}{}", r.1, r.2), "CLI output");
        r
    };
    let (st, out, refused) = health(&a.url);
    assert_eq!(st.code(), Some(77), "{out}{refused}");
    assert!(refused.contains("PAIRING_REQUIRED"), "{refused}");

    // An operator on B sees the request made on A, and approves it there.
    let (st, out, err) = b_home.run(&["devices", "list", "--url", &b.url, "--json"]);
    assert!(st.success(), "{out}{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let pending = list["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["remoteIp"], "127.0.0.2");
    let identity = DeviceIdentity::load_existing(&device.state()).unwrap();
    assert_eq!(pending[0]["deviceId"], identity.device_id());
    let request_id = pending[0]["requestId"].as_str().unwrap().to_owned();
    assert!(refused.contains(&request_id), "{refused}");
    let (st, out, err) = b_home.run(&["devices", "approve", &request_id, "--url", &b.url]);
    assert!(st.success(), "{out}{err}");

    // The device connects through C: paired, and handed a device token C issued.
    let (st, out, err) = health(&c.url);
    assert!(st.success(), "{out}{err}");
    let tokens = TokenStore::load(&device.state(), identity.device_id()).unwrap();
    let token = tokens
        .get(&c.url, "operator")
        .expect("C issued a device token")
        .token
        .clone();
    // One approval, by B's operator, and one token issued for the device, in the shared trail.
    let rows = cluster.psql(
        db,
        &format!(
            "SELECT event, actor, token_fingerprint FROM audit WHERE device_id = '{}' ORDER BY seq",
            identity.device_id()
        ),
    );
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    let events: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        events,
        ["pair.requested", "pair.approved", "token.issued"],
        "{rows:?}"
    );
    assert_ne!(rows[1][1], "gateway (silent loopback pairing)");
    assert_eq!(rows[2][2], token.fingerprint().as_str());
    // The token is nowhere in the database, only its hash.
    let dump = cluster.psql(db, "SELECT t::text FROM tokens t");
    assert!(!dump.contains(token.expose()), "a usable token is stored");

    for log in fleet.finish() {
        assert!(
            !log.contains(token.expose()),
            "a device token reached a log"
        );
    }
}

/// A device session on `url` with `token`, kept open to watch it close.
async fn device_session(device: &Home, url: &str, token: &SecretValue) -> Connection {
    let id = DeviceIdentity::load_existing(&device.state()).unwrap();
    let mut opts = ConnectOptions::new(url, Credential::DeviceToken(token.clone()));
    opts.device = Some(Arc::new(id));
    opts.scopes = vec!["operator.read".into()];
    connect(&opts).await.expect("device-token session")
}

/// Waits for `conn` to close, which must be 4001 with `reason` (ticks skipped).
async fn expect_close(conn: &mut Connection, reason: &str) {
    loop {
        match conn.next_event(Duration::from_secs(5)).await {
            Ok(_) => continue,
            Err(ClientError::Closed { code, reason: r }) => {
                assert_eq!((code, r.as_str()), (4001, reason));
                return;
            }
            Err(e) => panic!("expected close 4001 {reason}, got {e}"),
        }
    }
}

/// A connect with the device's `token` on `url`, which must be refused; returns the error.
async fn device_token_refused(device: &Home, url: &str, token: &SecretValue) -> Value {
    let id = DeviceIdentity::load_existing(&device.state()).unwrap();
    let mut opts = ConnectOptions::new(url, Credential::DeviceToken(token.clone()));
    opts.device = Some(Arc::new(id));
    match connect(&opts).await {
        Err(ClientError::Rejected { error, close }) => {
            assert_eq!(close, Some(1008));
            serde_json::to_value(&error).unwrap()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A device token rotated through A is refused by B and C as soon as the rotation returns, and
/// the device's sessions open on B and C close 4001, as a local session does.
#[tokio::test]
async fn a_token_rotated_through_a_is_refused_by_b_and_c_and_their_sessions_close_4001() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let [(a_home, a), (_, b), (_, c)] = &fleet.replicas[..] else {
        unreachable!()
    };
    // A device on this machine pairs silently through A and gets its token.
    let device = Home::new();
    let (st, out, err) = device.run(&["gateway", "health", "--url", &a.url, "--token", CANARY]);
    assert!(st.success(), "{out}{err}");
    let identity = DeviceIdentity::load_existing(&device.state()).unwrap();
    let old = TokenStore::load(&device.state(), identity.device_id())
        .unwrap()
        .get(&a.url, "operator")
        .expect("A issued a device token")
        .token
        .clone();
    // The same token opens sessions on B and C: one store.
    let mut on_b = device_session(&device, &b.url, &old).await;
    let mut on_c = device_session(&device, &c.url, &old).await;

    let (st, out, err) = a_home.run(&["devices", "rotate", identity.device_id(), "--url", &a.url]);
    assert!(st.success(), "{out}{err}");
    for url in [&b.url, &c.url] {
        let e = device_token_refused(&device, url, &old).await;
        assert_eq!(e["details"]["code"], "AUTH_DEVICE_TOKEN_MISMATCH", "{e}");
    }
    expect_close(&mut on_b, "device token rotated").await;
    expect_close(&mut on_c, "device token rotated").await;
    for log in fleet.finish() {
        assert!(!log.contains(old.expose()), "a device token reached a log");
    }
}

/// The next pairing event about `device_id` on `c` (ticks, and other devices' pairings such as the
/// operators' own CLIs', skipped).
async fn next_pairing_event(c: &mut Client, device_id: &str) -> Value {
    loop {
        match c.next().await {
            Got::Frame(f)
                if f["type"] == "event"
                    && f["event"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("device.pair.")
                    && f["payload"]["deviceId"] == device_id =>
            {
                return f;
            }
            Got::Frame(_) => continue,
            Got::Closed(code, reason) => panic!("closed {code} {reason}"),
        }
    }
}

/// An operator connected to C hears of a request made on A and of its approval through B, in
/// that order, as OpenClaw's events.
#[tokio::test]
async fn an_operator_on_c_receives_the_pairing_events_of_a_request_made_on_a() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let [(_, a), (b_home, b), (_, c)] = &fleet.replicas[..] else {
        unreachable!()
    };
    let mut params = cli_params(Some(CANARY));
    params["scopes"] = serde_json::json!(["operator.pairing"]);
    let mut operator = session(&c.url, params).await;

    // A device on another host asks through A.
    let remote = Home::new();
    let identity = Arc::new(DeviceIdentity::load_or_create(&remote.state()).unwrap());
    let mut opts = ConnectOptions::new(&a.url, Credential::Token(SecretValue::new(CANARY.into())));
    opts.device = Some(identity.clone());
    opts.open.bind_addr = Some("127.0.0.2".parse().unwrap());
    opts.scopes = vec!["operator.read".into()];
    let request_id = match connect(&opts).await {
        Err(ClientError::Rejected { error, .. }) => {
            assert_eq!(error.detail_code(), Some("PAIRING_REQUIRED"), "{error:?}");
            error.details.unwrap().request_id.unwrap()
        }
        other => panic!("expected pairing required, got {other:?}"),
    };
    let requested = next_pairing_event(&mut operator, identity.device_id()).await;
    assert_eq!(requested["event"], "device.pair.requested", "{requested}");
    assert_eq!(requested["payload"]["requestId"], request_id.as_str());
    assert_eq!(requested["payload"]["remoteIp"], "127.0.0.2");
    assert_eq!(
        requested["payload"]["scopes"],
        serde_json::json!(["operator.read"])
    );

    let (st, out, err) = b_home.run(&["devices", "approve", &request_id, "--url", &b.url]);
    assert!(st.success(), "{out}{err}");
    let resolved = next_pairing_event(&mut operator, identity.device_id()).await;
    let ts = resolved["payload"]["ts"].clone();
    assert_eq!(
        resolved["payload"],
        serde_json::json!({"requestId": request_id, "deviceId": identity.device_id(),
            "decision": "approved", "ts": ts})
    );
    assert_eq!(resolved["event"], "device.pair.resolved");
    assert!(
        resolved["seq"].as_u64().unwrap() > requested["seq"].as_u64().unwrap(),
        "{requested} {resolved}"
    );
    fleet.finish();
}

/// 30 wrong guesses from one address that is not exempt, spread over the three replicas in turn,
/// get the documented budget of real comparisons (10 per window) for all replicas together, not
/// per replica; the other 20 are refused as rate-limited without a comparison, by every replica.
#[tokio::test]
async fn thirty_wrong_guesses_spread_over_three_replicas_get_one_budget() {
    let Some(fleet) = Fleet::start_with("[gateway.auth.rate_limit]\nexempt_loopback = false\n")
    else {
        return;
    };
    let mut limited = 0;
    for i in 0..30 {
        let gw = &fleet.replicas[i % 3].1;
        let mut c = Client::open(&gw.url).await;
        let (res, close) = c.connect(cli_params(Some(WRONG_CANARY))).await;
        assert_eq!(res["ok"], false, "{res}");
        assert!(close.is_some(), "{res}");
        if res["error"]["details"]["code"] == "AUTH_RATE_LIMITED" {
            limited += 1;
        }
    }
    let sum = |series: &str| -> f64 { fleet.replicas.iter().map(|(_, g)| g.metric(series)).sum() };
    let compared = sum("driftless_gateway_auth_checks_total{outcome=\"mismatch\"}");
    let refused = sum("driftless_gateway_limiter_rejections_total");
    assert_eq!(compared, 10.0, "real comparisons, all replicas together");
    assert_eq!(refused, 20.0);
    assert_eq!(limited, 20);
    // Each replica refused some: the budget is the fleet's, not the first replica's.
    for (_, g) in &fleet.replicas {
        assert!(g.metric("driftless_gateway_limiter_rejections_total") > 0.0);
    }
    fleet.finish();
}

/// Shared-token sessions opened in turn on every replica until `stop`: (accepted, refused).
fn shared_token_load(
    urls: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    counts: Arc<[std::sync::atomic::AtomicU64; 2]>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::SeqCst;
    tokio::spawn(async move {
        while !stop.load(SeqCst) {
            for url in &urls {
                let i = usize::from(!accepted(url, CANARY).await);
                counts[i].fetch_add(1, SeqCst);
            }
        }
    })
}

/// PostgreSQL stopped and started again while every replica serves shared-token sessions: those
/// need no database and never fail; the replicas reconnect on their own (device tokens verify
/// again, a rotation through B closes the device's session on C: the fleet's events flow again)
/// and the device paired before the restart is still paired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_no_shared_token_session_and_loses_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(mut fleet) = Fleet::start() else {
        return;
    };
    let urls: Vec<String> = fleet.replicas.iter().map(|(_, g)| g.url.clone()).collect();
    // Committed before the restart: a device paired (silently, on this machine) through A.
    let device = Home::new();
    let (st, out, err) = device.run(&["gateway", "health", "--url", &urls[0], "--token", CANARY]);
    assert!(st.success(), "{out}{err}");
    let identity = DeviceIdentity::load_existing(&device.state()).unwrap();
    let token = TokenStore::load(&device.state(), identity.device_id())
        .unwrap()
        .get(&urls[0], "operator")
        .expect("A issued a device token")
        .token
        .clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts: Arc<[std::sync::atomic::AtomicU64; 2]> = Arc::default();
    let load = shared_token_load(urls.clone(), stop.clone(), counts.clone());
    let served = || counts[0].load(SeqCst);
    assert!(
        eventually(Duration::from_secs(30), || async { served() >= 30 }).await,
        "the load did not start"
    );

    fleet.cluster.stop_server();
    let before = served();
    // Down: a device token cannot be verified, and the client is told to try again later (its
    // credential may well be right); shared-token sessions go on.
    let id = DeviceIdentity::load_existing(&device.state()).unwrap();
    let mut opts = ConnectOptions::new(&urls[1], Credential::DeviceToken(token.clone()));
    opts.device = Some(Arc::new(id));
    match connect(&opts).await {
        Err(ClientError::Rejected { error, close }) => {
            assert_eq!(error.code, "UNAVAILABLE", "{error:?}");
            assert_eq!(error.retryable, Some(true), "{error:?}");
            assert!(error.retry_after_ms.is_some_and(|ms| ms > 0), "{error:?}");
            assert_eq!(close, Some(1013), "try again later");
        }
        other => panic!("a device token verified with PostgreSQL down: {other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            served() >= before + 60
        })
        .await,
        "shared-token sessions stopped while PostgreSQL was down"
    );

    fleet.cluster.start_server();
    // Back, without touching a replica: the device token verifies on every replica again.
    for url in &urls {
        let url = url.clone();
        let (device, token) = (&device, &token);
        assert!(
            eventually(Duration::from_secs(60), || {
                let url = url.clone();
                async move {
                    let id = DeviceIdentity::load_existing(&device.state()).unwrap();
                    let mut opts =
                        ConnectOptions::new(&url, Credential::DeviceToken(token.clone()));
                    opts.device = Some(Arc::new(id));
                    connect(&opts).await.is_ok()
                }
            })
            .await,
            "{url} did not recover from the PostgreSQL restart"
        );
    }
    // The fleet's events flow again: a rotation through B closes the device's session on C.
    let mut on_c = device_session(&device, &urls[2], &token).await;
    let b_home = &fleet.replicas[1].0;
    let (st, out, err) =
        b_home.run(&["devices", "rotate", identity.device_id(), "--url", &urls[1]]);
    assert!(st.success(), "{out}{err}");
    expect_close(&mut on_c, "device token rotated").await;

    stop.store(true, SeqCst);
    load.await.expect("the load task");
    assert_eq!(
        counts[1].load(SeqCst),
        0,
        "shared-token sessions refused (of {} accepted)",
        served()
    );
    fleet.finish();
}

/// A replica SIGKILLed while it approves a batch of requests: every request is left either pending
/// (nothing of it applied) or approved (paired and audited, the request gone), never half; the
/// others approve the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_approvals_leaves_each_request_pending_or_approved() {
    let Some(mut fleet) = Fleet::start() else {
        return;
    };
    let a_url = fleet.replicas[0].1.url.clone();
    let (b_url, c_url) = (
        fleet.replicas[1].1.url.clone(),
        fleet.replicas[2].1.url.clone(),
    );
    // 40 devices on another host ask through A.
    let mut requests = Vec::new();
    let mut homes = Vec::new();
    for _ in 0..40 {
        let home = Home::new();
        let identity = Arc::new(DeviceIdentity::load_or_create(&home.state()).unwrap());
        let mut opts =
            ConnectOptions::new(&a_url, Credential::Token(SecretValue::new(CANARY.into())));
        opts.device = Some(identity.clone());
        opts.open.bind_addr = Some("127.0.0.2".parse().unwrap());
        opts.scopes = vec!["operator.read".into()];
        let request_id = match connect(&opts).await {
            Err(ClientError::Rejected { error, .. }) => error.details.unwrap().request_id.unwrap(),
            other => panic!("expected pairing required, got {other:?}"),
        };
        requests.push((request_id, identity.device_id().to_owned()));
        homes.push(home);
    }

    // An operator on B sends every approval at once; B is killed as the first one is answered.
    // (An approver must hold the scopes it grants: read, besides pairing.)
    let mut params = cli_params(Some(CANARY));
    params["scopes"] = serde_json::json!(["operator.pairing", "operator.read"]);
    let mut operator = session(&b_url, params).await;
    for (i, (request_id, _)) in requests.iter().enumerate() {
        operator
            .send_json(serde_json::json!({"type": "req", "id": format!("a{i}"),
                "method": "device.pair.approve", "params": {"requestId": request_id}}))
            .await;
    }
    let first = operator.response().await;
    fleet.replicas[1].1.child.kill().unwrap();
    assert!(
        matches!(&first, Got::Frame(f) if f["ok"] == true),
        "{first:?}"
    );

    // Each request: pending and nothing of it applied, or approved with everything applied.
    let (cluster, db) = (&fleet.cluster, &fleet.db);
    let count = |sql: String| -> u64 { cluster.psql(db, &sql).trim().parse().unwrap() };
    let mut pending_ids = Vec::new();
    for (request_id, device_id) in &requests {
        let pending = count(format!(
            "SELECT count(*) FROM pending WHERE request_id = '{request_id}'"
        ));
        let paired = count(format!(
            "SELECT count(*) FROM paired WHERE device_id = '{device_id}'"
        ));
        let tokens = count(format!(
            "SELECT count(*) FROM tokens WHERE device_id = '{device_id}'"
        ));
        let audited = count(format!(
            "SELECT count(*) FROM audit WHERE device_id = '{device_id}' AND event = 'pair.approved'"
        ));
        // An approval pairs; the device's token is issued when it next connects.
        match (pending, paired, tokens, audited) {
            (1, 0, 0, 0) => pending_ids.push(request_id.clone()),
            (0, 1, 0, 1) => {}
            other => panic!(
                "request {request_id} half applied: (pending, paired, tokens, audit) = {other:?}"
            ),
        }
    }
    assert!(
        pending_ids.len() < requests.len(),
        "the first approval was answered, so it applied"
    );
    eprintln!(
        "B killed with {} of {} requests approved",
        requests.len() - pending_ids.len(),
        requests.len()
    );

    // C approves what is left: nothing the killed replica held (a row lock, a transaction) blocks it.
    let c_home = &fleet.replicas[2].0;
    for request_id in &pending_ids {
        let (st, out, err) = c_home.run(&["devices", "approve", request_id, "--url", &c_url]);
        assert!(st.success(), "{out}{err}");
    }
    assert_eq!(count("SELECT count(*) FROM pending".into()), 0);
    let Fleet { replicas, .. } = fleet;
    for (i, (_, gw)) in replicas.into_iter().enumerate() {
        if i != 1 {
            gw.finish();
        }
    }
}

/// What `status` on `c` reports about the shared token: (fingerprint accepted as current, the
/// previous one in grace).
async fn accepted_fingerprints(c: &mut Client) -> (Value, Value) {
    let st = c.call("s", "status", None).await;
    let auth = &st["payload"]["auth"];
    (
        auth["fingerprint"].clone(),
        auth["grace"]["previousFingerprint"].clone(),
    )
}

/// Waits up to 10 s for `conn` to close (frames skipped) and returns how.
async fn closed(conn: &mut Client) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match conn
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Got::Closed(code, reason) => return (code, reason),
            Got::Frame(_) => continue,
        }
    }
}

/// A shared-token rotation seen by A only (B's and C's files still hold the old token) is
/// accepted by B and C within a second of A reporting it; the old token keeps working on all
/// three until the grace ends for the fleet, then every replica refuses it and an old-token
/// session on B closes 4001. A replica started later with the stale file does not bring the old
/// token back. No token value reaches any replica's log.
#[tokio::test]
async fn a_shared_token_rotation_seen_by_a_only_is_accepted_by_b_and_c_within_a_second() {
    const NEW: &str = "canary-fleet-rotated-3c7e9a1f";
    let grace = "rotation_grace_seconds = 5\n";
    let Some(mut fleet) = Fleet::start_with(grace) else {
        return;
    };
    let old_fp = Value::from(SecretValue::new(CANARY.into()).fingerprint().to_string());
    let new_fp = Value::from(SecretValue::new(NEW.into()).fingerprint().to_string());
    {
        let [(a_home, a), (_, b), (_, c)] = &fleet.replicas[..] else {
            unreachable!()
        };
        let mut on_a = session(&a.url, cli_params(Some(CANARY))).await;
        let mut on_b = session(&b.url, cli_params(Some(CANARY))).await;
        assert_eq!(
            accepted_fingerprints(&mut on_b).await,
            (old_fp.clone(), Value::Null)
        );

        replace_by_rename(&a_home.path().join("secrets/token"), NEW);
        let deadline = Instant::now() + RELOAD_WITHIN;
        while accepted_fingerprints(&mut on_a).await.0 != new_fp {
            assert!(Instant::now() < deadline, "A did not report the new token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = Instant::now();
        // A functional bound, as the issue states it: B and C within a second of A.
        for gw in [b, c] {
            let left = Duration::from_secs(1).saturating_sub(seen.elapsed());
            assert!(
                eventually(left, || accepted(&gw.url, NEW)).await,
                "{} did not accept the new token within 1 s of A reporting it",
                gw.url
            );
        }
        assert!(seen.elapsed() <= Duration::from_millis(1_100));
        // During the fleet's grace the old token works everywhere, and B says which it accepts.
        for gw in [a, b, c] {
            assert!(accepted(&gw.url, CANARY).await, "{} in grace", gw.url);
        }
        assert_eq!(
            accepted_fingerprints(&mut on_b).await,
            (new_fp.clone(), old_fp.clone())
        );

        // The fleet's grace ends: B closes its old-token session and every replica refuses it.
        // Each replica turns the time left that the database reported into its own deadline when
        // it reads the view, so the three end within milliseconds of each other, not at one
        // instant: a replica gets a moment (bounded here by 1 s) after B's close.
        assert_eq!(
            closed(&mut on_b).await,
            (4001, "gateway auth changed".to_owned())
        );
        for gw in [a, b, c] {
            assert!(
                eventually(Duration::from_secs(1), || async {
                    !accepted(&gw.url, CANARY).await
                })
                .await,
                "{} after grace",
                gw.url
            );
            assert!(accepted(&gw.url, NEW).await, "{}", gw.url);
        }
    }

    // A replica started with the stale file (the old token): superseded, not reinstated.
    let (d_home, d) = replica(&fleet.cluster, &fleet.db, fleet.shared.path(), grace);
    assert!(
        !accepted(&d.url, CANARY).await,
        "the stale replica accepts the old token"
    );
    assert!(accepted(&d.url, NEW).await);
    for (_, gw) in &fleet.replicas {
        assert!(
            !accepted(&gw.url, CANARY).await,
            "{} after D started",
            gw.url
        );
    }
    let mut on_d = session(&d.url, cli_params(Some(NEW))).await;
    assert_eq!(
        accepted_fingerprints(&mut on_d).await,
        (new_fp, Value::Null)
    );
    assert!(
        d.log_text().contains("behind the fleet"),
        "{}",
        d.log_text()
    );
    // `status` says so too, on D only; `gateway status` in words.
    async fn behind(url: &str) -> Vec<String> {
        let mut c = session(url, cli_params(Some(NEW))).await;
        let status = c.call("s", "status", None).await;
        let rows = status["payload"]["secrets"].as_array().unwrap().clone();
        rows.into_iter()
            .filter(|r| r["behindFleet"] == true)
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    }
    assert_eq!(behind(&d.url).await, ["gateway.auth.token"]);
    for (_, gw) in &fleet.replicas {
        assert!(behind(&gw.url).await.is_empty(), "{}", gw.url);
    }
    let (st, words, err) = d_home.run(&["gateway", "status", "--token", NEW]);
    assert!(st.success(), "{words}{err}");
    assert!(
        words.contains("gateway.auth.token here is")
            && words.contains("the fleet already replaced"),
        "{words}"
    );
    fleet.replicas.push((d_home, d));
    for log in fleet.finish() {
        for token in [CANARY, NEW] {
            assert!(!log.contains(token), "a shared token reached a log");
        }
    }
}

/// `gateway status --json` on this home's replica: its `replicas`, once `done` holds for them
/// (bounded by 10 s).
fn replicas_until(home: &Home, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, out, err) = home.run(&["gateway", "status", "--json"]);
        assert!(st.success(), "{out}{err}");
        let status: Value = serde_json::from_str(&out).unwrap();
        let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
        if done(&replicas) {
            return replicas;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `gateway status` lists every live replica with the fingerprints it accepts; `token rotate
/// --wait` on A returns once all three accept the new token (B's and C's files still hold the old
/// one) and reports it; a replica that stops cleanly leaves the list at once.
#[test]
fn status_lists_every_live_replica_and_token_rotate_waits_until_all_accept() {
    let Some(mut fleet) = Fleet::start_with("rotation_grace_seconds = 60\n") else {
        return;
    };
    let old_fp = SecretValue::new(CANARY.into()).fingerprint().to_string();
    let replicas = replicas_until(&fleet.replicas[0].0, |r| r.len() == 3);
    let mut ids: Vec<&str> = replicas.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{replicas:?}");
    let listen = |gw: &Gateway| Value::from(format!("127.0.0.1:{}", gw.port));
    for (_, gw) in &fleet.replicas {
        let r = replicas
            .iter()
            .find(|r| r["listen"] == listen(gw))
            .unwrap_or_else(|| panic!("{} is not listed: {replicas:?}", gw.url));
        assert_eq!(r["accepts"], serde_json::json!([old_fp]), "{replicas:?}");
    }
    let a_home = &fleet.replicas[0].0;
    let (st, out, err) = a_home.run(&["gateway", "status"]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("replicas     3 live"), "{out}");

    let (st, out, err) = a_home.run(&["token", "rotate", "--wait", "--json"]);
    assert!(st.success(), "{out}{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["replicasAccepting"], 3, "{rotated}");
    assert!(
        err.contains("3 of 3 live replicas accept the new token"),
        "{err}"
    );
    let new_fp = rotated["newFingerprint"].as_str().unwrap().to_owned();
    let new_token = std::fs::read_to_string(a_home.path().join("secrets/token")).unwrap();
    let new_token = new_token.trim().to_owned();
    for r in replicas_until(a_home, |r| r.len() == 3) {
        assert_eq!(r["accepts"], serde_json::json!([new_fp, old_fp]), "{r}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (_, gw) in &fleet.replicas {
        assert!(rt.block_on(accepted(&gw.url, &new_token)), "{}", gw.url);
    }

    // C stops cleanly: gone from the list at once, not after its heartbeat ages.
    let (_, c) = fleet.replicas.pop().unwrap();
    let c_listen = listen(&c);
    let c_log = c.finish();
    let left = replicas_until(&fleet.replicas[0].0, |r| r.len() == 2);
    assert!(left.iter().all(|r| r["listen"] != c_listen), "{left:?}");
    for log in fleet.finish().into_iter().chain([c_log]) {
        assert!(
            !log.contains(&new_token) && !log.contains(CANARY),
            "a shared token reached a log"
        );
    }
}

/// The database down: every replica keeps accepting the fleet's last token (a shared-token check
/// needs no database). A rotation A sees meanwhile is not taken alone (the fleet has not agreed
/// to it); it is published when the database is back (the listener's reconnect retries it), and
/// then every replica accepts it, with the old token in the fleet's grace.
#[tokio::test]
async fn with_the_database_down_the_fleet_keeps_its_token_and_a_rotation_is_published_when_it_returns()
 {
    const NEW: &str = "canary-fleet-outage-6b8d2e4a";
    let Some(mut fleet) = Fleet::start_with("rotation_grace_seconds = 60\n") else {
        return;
    };
    fleet.cluster.stop_server();
    for (_, gw) in &fleet.replicas {
        assert!(
            accepted(&gw.url, CANARY).await,
            "{} with the database down",
            gw.url
        );
    }
    let a_home = &fleet.replicas[0].0;
    replace_by_rename(&a_home.path().join("secrets/token"), NEW);
    let a = &fleet.replicas[0].1;
    assert!(
        eventually(RELOAD_WITHIN, || async {
            a.log_text()
                .contains("cannot publish this replica's shared secret")
        })
        .await,
        "{}",
        a.log_text()
    );
    assert!(!accepted(&a.url, NEW).await);
    assert!(accepted(&a.url, CANARY).await);

    fleet.cluster.start_server();
    for (_, gw) in &fleet.replicas {
        assert!(
            eventually(RELOAD_WITHIN, || accepted(&gw.url, NEW)).await,
            "{} did not accept the rotation once the database was back",
            gw.url
        );
        assert!(accepted(&gw.url, CANARY).await, "{} in grace", gw.url);
    }
    for log in fleet.finish() {
        for token in [CANARY, NEW] {
            assert!(!log.contains(token), "a shared token reached a log");
        }
    }
}
