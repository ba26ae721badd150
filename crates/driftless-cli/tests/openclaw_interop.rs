//! Existing OpenClaw clients connect unchanged: the real OpenClaw CLI (npm `openclaw@2026.9.6`,
//! protocol 4 only, on Node 24) against the real `driftless gateway run`.
//!
//! The CLI is installed by `scripts/install-test-tools.sh` into `.tools/openclaw` (or found at
//! `$DRIFTLESS_OPENCLAW_HOME`, laid out as `scripts/install-openclaw-peer.sh` leaves it). Without
//! it the tests say so and pass, unless `DRIFTLESS_REQUIRE_TOOLS=1` (CI), where they fail.

mod support;

use std::path::{Path, PathBuf};

use driftless_client::identity::DeviceIdentity;
use serde_json::Value;
use support::openclaw::{call, install as openclaw, oc};
use support::*;

const NEW: &str = "canary-gw-rotated-for-openclaw-77d1";

/// `openclaw devices list --json`, authenticated with the shared token.
fn device_list(cli: &(PathBuf, PathBuf), home: &Path, url: &str) -> Value {
    let (code, out, err) = oc(
        cli,
        home,
        &["devices", "list", "--json", "--url", url, "--token", CANARY],
    );
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"))
}

#[tokio::test]
async fn openclaw_cli_calls_rotates_and_is_refused_like_against_openclaw() {
    let Some(cli) = openclaw() else {
        return;
    };
    let home = Home::new();
    let tok = home.token_config(CANARY, "rotation_grace_seconds = 0\n");
    let gw = Gateway::start(&home, &[], &[]);
    let oc_home = home.path().join("openclaw-home");
    std::fs::create_dir_all(&oc_home).unwrap();

    let health = call(&cli, &oc_home, &gw.url, CANARY, "health").unwrap();
    assert_eq!(health["ok"], true, "{health}");
    let status = call(&cli, &oc_home, &gw.url, CANARY, "status").unwrap();
    let fingerprint = driftless_core::SecretValue::new(CANARY.into())
        .fingerprint()
        .to_string();
    assert_eq!(
        status["auth"]["fingerprint"],
        fingerprint.as_str(),
        "{status}"
    );
    let (code, out, err) = oc(
        &cli,
        &oc_home,
        &["secrets", "reload", "--url", &gw.url, "--token", CANARY],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Secrets reloaded."), "{out}{err}");

    // A wrong token: OpenClaw's own refusal text, exit 1.
    let refused = call(&cli, &oc_home, &gw.url, WRONG_CANARY, "health").unwrap_err();
    assert!(
        refused.contains("unauthorized: gateway token mismatch"),
        "{refused}"
    );

    // Rotate the file under the running gateway: the CLI's next call with the new token works,
    // the old one is refused, and the gateway was never restarted.
    let pid = gw.child.id();
    replace_by_rename(&tok, &format!("{NEW}\n"));
    assert!(eventually(RELOAD_WITHIN, || accepted(&gw.url, NEW)).await);
    assert_eq!(
        call(&cli, &oc_home, &gw.url, NEW, "health").unwrap()["ok"],
        true
    );
    let refused = call(&cli, &oc_home, &gw.url, CANARY, "health").unwrap_err();
    assert!(refused.contains("gateway token mismatch"), "{refused}");
    assert_eq!(gw.child.id(), pid);

    let log = gw.finish();
    assert!(log.contains("protocol=4"), "the CLI negotiated 4:\n{log}");
    assert_no_canary(&log, "gateway log");
    assert!(!log.contains(NEW), "the rotated token reached the log");
}

/// OpenClaw's operator tooling drives driftless's pairing: a device on another host asks to
/// pair, `openclaw devices list` shows the request, `openclaw devices approve` approves it, and
/// the device then connects.
#[tokio::test]
async fn openclaw_cli_lists_and_approves_a_pairing_request() {
    let Some(cli) = openclaw() else {
        return;
    };
    let gw_home = Home::new();
    // Only 127.0.0.1 counts as this machine; 127.0.0.2 plays a host on the LAN.
    gw_home.token_config(
        CANARY,
        "[gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]",
    );
    let gw = Gateway::start(&gw_home, &[], &[]);
    let oc_home = gw_home.path().join("openclaw-home");
    std::fs::create_dir_all(&oc_home).unwrap();

    let remote = Home::new();
    let health = ["gateway", "health", "--url", &gw.url, "--token", CANARY];
    let from_lan = [&health[..], &["--source-addr", "127.0.0.2"]].concat();
    let (st, out, err) = remote.run(&from_lan);
    assert_eq!(st.code(), Some(77), "{out}{err}");
    let device = DeviceIdentity::load_existing(&remote.state()).unwrap();

    let list = device_list(&cli, &oc_home, &gw.url);
    let pending = list["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["deviceId"], device.device_id());
    let request_id = pending[0]["requestId"].as_str().unwrap();

    let (code, out, err) = oc(
        &cli,
        &oc_home,
        &[
            "devices", "approve", request_id, "--url", &gw.url, "--token", CANARY,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(CANARY) && !err.contains(CANARY));

    let (st, out, err) = remote.run(&from_lan);
    assert!(st.success(), "approved device still refused: {out}{err}");
    let list = device_list(&cli, &oc_home, &gw.url);
    assert!(list["pending"].as_array().unwrap().is_empty(), "{list}");
    assert!(
        list["paired"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["deviceId"] == device.device_id()),
        "{list}"
    );
    assert_no_canary(&gw.finish(), "gateway log");
}
