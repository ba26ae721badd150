//! End-to-end: the real `driftless` binary on first run, config inspection and secret checks.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use support::Home;

const CANARY: &str = "canary-foundation-5c1e0-do-not-print";

/// Runs the binary in `home` (only HOME and the XDG dirs point into it), echoing what happened.
fn run(home: &Home, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = home.cmd(support::BIN);
    cmd.args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "$ driftless {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

#[test]
fn init_then_secrets_check_resolves_one_token() {
    let home = Home::new();
    let out = run(&home, &["init"], &[]);
    assert!(out.status.success());
    let token_file = home.state().join("secrets/gateway-token");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&home.config_path()), 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim_end();

    let again = run(&home, &["init"], &[]);
    assert!(again.status.success());
    assert!(text(&again).contains("Nothing to do"));

    let check = run(&home, &["secrets", "check", "--json"], &[]);
    assert_eq!(check.status.code(), Some(0));
    let rows: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "gateway.auth.token");
    assert_eq!(rows[0]["status"], "ok");
    let fp = rows[0]["fingerprint"].as_str().unwrap();
    assert!(fp.starts_with("sha256:") && fp.len() == 19, "{fp}");

    let human = run(&home, &["secrets", "check"], &[]);
    assert!(text(&human).contains(fp));

    let show = run(&home, &["config", "show"], &[]);
    assert!(show.status.success());
    let shown = text(&show);
    assert!(shown.contains("source = \"file\""), "{shown}");
    assert!(shown.contains("gateway-token"));
    for o in [&out, &again, &check, &human, &show] {
        assert!(!text(o).contains(token), "the token leaked into output");
    }
}

#[test]
fn broken_reference_fails_check_with_exit_1_and_no_leak() {
    let home = Home::new();
    assert!(run(&home, &["init"], &[]).status.success());
    let token_file = home.state().join("secrets/gateway-token");
    std::fs::write(&token_file, CANARY).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&home, &["secrets", "check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("chmod 600"), "{t}");
    assert!(!t.contains(CANARY));
}

#[test]
fn literal_and_env_sources_show_fingerprints_never_values() {
    let home = Home::new();
    std::fs::create_dir_all(home.config_path().parent().unwrap()).unwrap();
    std::fs::write(
        home.config_path(),
        format!("[gateway.auth]\npassword = \"{CANARY}\"\n[gateway.remote]\ntoken = {{ source = \"env\", id = \"REMOTE_TOK\" }}\n"),
    )
    .unwrap();
    let env = [
        ("REMOTE_TOK", "remote-canary-value-123"),
        ("DRIFTLESS_GATEWAY_TOKEN", "env-gateway-token-456"),
    ];
    let out = run(&home, &["secrets", "check", "--json"], &env);
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out);
    for secret in [CANARY, "remote-canary-value-123", "env-gateway-token-456"] {
        assert!(!t.contains(secret), "{secret} leaked");
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // No token in config: the gateway token comes from the environment (server precedence).
    assert_eq!(
        names,
        [
            "gateway.auth.token",
            "gateway.auth.password",
            "gateway.remote.token"
        ]
    );
    assert_eq!(rows[0]["source"], "env:DRIFTLESS_GATEWAY_TOKEN");
    assert!(rows[0]["note"].as_str().unwrap().contains("restart"));

    let show = run(&home, &["config", "show", "--json"], &env);
    assert!(!text(&show).contains(CANARY));
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["gateway"]["auth"]["password"]["source"], "literal");
}

#[test]
fn invalid_config_reports_position_and_exit_78() {
    let home = Home::new();
    std::fs::create_dir_all(home.config_path().parent().unwrap()).unwrap();
    let broken = "[gateway]\nport = 1\nbogus_key = true\n";
    std::fs::write(home.config_path(), broken).unwrap();
    let out = run(&home, &["config", "validate"], &[]);
    assert_eq!(out.status.code(), Some(78));
    let t = text(&out);
    assert!(
        t.contains("config.toml:3:1") && t.contains("bogus_key"),
        "{t}"
    );
    // init --force must not clobber it.
    let out = run(&home, &["init", "--force"], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(home.config_path()).unwrap(), broken);
}

#[test]
fn schema_and_path_commands() {
    let home = Home::new();
    let out = run(&home, &["config", "path"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        home.config_path().to_str().unwrap()
    );
    let out = run(&home, &["config", "schema"], &[]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        schema["$defs"]["SecretInput"].is_object() || schema.to_string().contains("SecretInput")
    );
}

#[test]
fn gateway_run_with_an_explicit_missing_config_fails_instead_of_creating_one() {
    let home = Home::new();
    let missing = home.path().join("hidden/config.toml");
    let out = run(
        &home,
        &[
            "gateway",
            "run",
            "--config",
            missing.to_str().unwrap(),
            "--port",
            "0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    assert!(!missing.exists());
    assert!(!home.state().join("secrets/gateway-token").exists());
}
