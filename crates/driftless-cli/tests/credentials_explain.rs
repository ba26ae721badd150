//! `driftless credentials explain`, run as the real binary, snapshot-tested (insta) for the states a
//! user meets: nothing configured, config only, env only, env differing from config, and a stored
//! device token. Canary values must never appear in any output.

mod support;

use std::process::Output;

use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_core::SecretValue;
use support::Home;

const CONFIG_CANARY: &str = "canary-explain-config-7f3a";
const ENV_CANARY: &str = "canary-explain-env-91bd";
const DEVICE_CANARY: &str = "canary-explain-device-token-c4e2";

fn explain(h: &Home, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = h.cmd(support::BIN);
    cmd.args(["credentials", "explain"]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Runs explain (human and --json), checks it succeeded without leaking a canary, and
/// returns the human output with HOME replaced by `[HOME]`.
fn snapshot_text(h: &Home, env: &[(&str, &str)]) -> String {
    let out = explain(h, &[], env);
    let json = explain(h, &["--json"], env);
    for o in [&out, &json] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "explain failed: {all}");
        for canary in [CONFIG_CANARY, ENV_CANARY, DEVICE_CANARY] {
            assert!(!all.contains(canary), "a secret value leaked: {all}");
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["client"]["candidates"].is_array());
    let home = h.path().to_str().unwrap().to_owned();
    String::from_utf8(out.stdout)
        .unwrap()
        .replace(&home, "[HOME]")
}

fn fp(v: &str) -> String {
    SecretValue::new(v.into()).fingerprint().to_string()
}

#[test]
fn nothing_configured() {
    let h = Home::new();
    let text = snapshot_text(&h, &[]);
    assert!(text.contains("winner: none"));
    insta::assert_snapshot!(text);
}

#[test]
fn config_only() {
    let h = Home::new();
    h.write_config(&format!("[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n"));
    let text = snapshot_text(&h, &[]);
    assert!(text.contains(&fp(CONFIG_CANARY)));
    assert!(!text.contains("Warnings"));
    insta::assert_snapshot!(text);
}

#[test]
fn env_only() {
    let h = Home::new();
    let text = snapshot_text(&h, &[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
    assert!(text.contains(&fp(ENV_CANARY)));
    assert!(text.contains("winner: environment"));
    insta::assert_snapshot!(text);
}

#[test]
fn env_differs_from_config() {
    let h = Home::new();
    h.write_config(&format!("[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n"));
    let text = snapshot_text(&h, &[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
    assert!(text.contains("Warnings"));
    assert!(text.contains(&fp(CONFIG_CANARY)) && text.contains(&fp(ENV_CANARY)));
    insta::assert_snapshot!(text);
}

#[test]
fn stored_device_token_present() {
    let h = Home::new();
    h.write_config(&format!("[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n"));
    let id = DeviceIdentity::load_or_create(&h.state()).unwrap();
    let mut store = TokenStore::load(&h.state(), id.device_id()).unwrap();
    store
        .put(
            "ws://127.0.0.1:18789",
            "operator",
            SecretValue::new(DEVICE_CANARY.into()),
            vec!["operator.read".into()],
        )
        .unwrap();
    let text = snapshot_text(&h, &[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
    assert!(text.contains("winner: stored device token"));
    // The device token differs from the shared token by design: no warning about it.
    assert!(!text.contains("stored device token and"));
    insta::assert_snapshot!(text);
}

#[test]
fn remote_url_uses_remote_token() {
    let h = Home::new();
    h.write_config(&format!(
        "[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n[gateway.remote]\ntoken = {{ source = \"env\", id = \"REMOTE_TOK\" }}\n"
    ));
    let out = explain(
        &h,
        &["--url", "wss://gw.example.org", "--json"],
        &[("REMOTE_TOK", ENV_CANARY)],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"]["winner"], "gateway.remote.token");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(ENV_CANARY));
}
