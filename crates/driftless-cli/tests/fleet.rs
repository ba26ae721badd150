//! Several gateway replicas on one PostgreSQL database (issue #14): three real `driftless gateway
//! run` processes, each with its own home, state directory and port, and one config pointing at a
//! private PostgreSQL cluster (`driftless_gateway::testing::postgres`) with the database password
//! and the device-token key as file references shared by all three.
//!
//! Without PostgreSQL installed the test skips and says why; with `DRIFTLESS_REQUIRE_TOOLS=1`
//! (CI, whose `.ci/run` installs `postgresql`) it fails instead.

mod support;

use std::path::Path;

use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_gateway::testing::postgres::Cluster;
use serde_json::Value;
use support::*;

/// A replica's home: the shared token as every test's, the PostgreSQL store, and only 127.0.0.1
/// counting as this machine (127.0.0.2 plays a device on another host).
fn replica(cluster: &Cluster, db: &str, shared: &Path) -> (Home, Gateway) {
    let home = Home::new();
    home.token_config(
        CANARY,
        &format!(
            "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]\nstore = \"postgres\"\n\
             [gateway.devices.postgres]\nurl = {url:?}\n\
             password = {{ source = \"file\", path = {pw:?} }}\n\
             token_key = {{ source = \"file\", path = {key:?} }}\n",
            url = cluster.url(db),
            pw = shared.join("pg-password"),
            key = shared.join("token-key"),
        ),
    );
    let gw = Gateway::start(&home, &[], &[]);
    (home, gw)
}

#[test]
fn a_device_asks_on_a_is_approved_through_b_and_connects_through_c() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = cluster.create_database();
    let shared = tempfile::tempdir().unwrap();
    write_secret(&shared.path().join("pg-password"), cluster.password());
    write_secret(
        &shared.path().join("token-key"),
        "b7Kx3mQ9vR2tY8wE5nA1cF6hJ4pL0sD7gU3iO9zXk2M",
    );
    let (_a_home, a) = replica(&cluster, &db, shared.path());
    let (b_home, b) = replica(&cluster, &db, shared.path());
    let (_c_home, c) = replica(&cluster, &db, shared.path());

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
        &db,
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
    let dump = cluster.psql(&db, "SELECT t::text FROM tokens t");
    assert!(!dump.contains(token.expose()), "a usable token is stored");

    for gw in [a, b, c] {
        let log = gw.finish();
        assert!(
            !log.contains(token.expose()),
            "a device token reached a log"
        );
    }
}
