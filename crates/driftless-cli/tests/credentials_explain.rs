//! `driftless credentials explain`, run as the real binary, snapshot-tested (insta) for the states a
//! user meets: nothing configured, config only, env only, env differing from config, and a stored
//! device token. Canary values must never appear in any output.

use std::path::PathBuf;
use std::process::{Command, Output};

use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_core::SecretValue;

const CONFIG_CANARY: &str = "canary-explain-config-7f3a";
const ENV_CANARY: &str = "canary-explain-env-91bd";
const DEVICE_CANARY: &str = "canary-explain-device-token-c4e2";

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state/driftless")
    }

    fn write_config(&self, text: &str) {
        let p = self.dir.path().join("config/driftless/config.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn explain(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.args(["credentials", "explain"])
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Runs explain (human and --json), checks it succeeded without leaking a canary, and
    /// returns the human output with the temp dir replaced by `[HOME]`.
    fn snapshot_text(&self, env: &[(&str, &str)]) -> String {
        let out = self.explain(&[], env);
        let json = self.explain(&["--json"], env);
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
        let home = self.dir.path().to_str().unwrap().to_owned();
        String::from_utf8(out.stdout)
            .unwrap()
            .replace(&home, "[HOME]")
    }
}

fn fp(v: &str) -> String {
    SecretValue::new(v.into()).fingerprint().to_string()
}

#[test]
fn nothing_configured() {
    let h = Home::new();
    let text = h.snapshot_text(&[]);
    assert!(text.contains("winner: none"));
    insta::assert_snapshot!(text);
}

#[test]
fn config_only() {
    let h = Home::new();
    h.write_config(&format!("[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n"));
    let text = h.snapshot_text(&[]);
    assert!(text.contains(&fp(CONFIG_CANARY)));
    assert!(!text.contains("Warnings"));
    insta::assert_snapshot!(text);
}

#[test]
fn env_only() {
    let h = Home::new();
    let text = h.snapshot_text(&[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
    assert!(text.contains(&fp(ENV_CANARY)));
    assert!(text.contains("winner: environment"));
    insta::assert_snapshot!(text);
}

#[test]
fn env_differs_from_config() {
    let h = Home::new();
    h.write_config(&format!("[gateway.auth]\ntoken = \"{CONFIG_CANARY}\"\n"));
    let text = h.snapshot_text(&[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
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
    let text = h.snapshot_text(&[("DRIFTLESS_GATEWAY_TOKEN", ENV_CANARY)]);
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
    let out = h.explain(
        &["--url", "wss://gw.example.org", "--json"],
        &[("REMOTE_TOK", ENV_CANARY)],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"]["winner"], "gateway.remote.token");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(ENV_CANARY));
}
