//! End-to-end live rotation: the real gateway watching real directories while the token file is
//! replaced by atomic rename and by a Kubernetes-style `..data` symlink swap, plus `token rotate`.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use support::*;

const NEW: &str = "canary-gw-rotated-new-token-41c7";

#[tokio::test]
async fn atomic_rename_rotation_with_grace() {
    let home = Home::new();
    let tok = home.token_config(CANARY, "rotation_grace_seconds = 3\n");
    let gw = Gateway::start(&home, &[], &[]);
    let mut old_session = session(&gw.url, cli_params(Some(CANARY))).await;

    replace_by_rename(&tok, &format!("{NEW}\n"));
    assert!(
        eventually(RELOAD_WITHIN, || accepted(&gw.url, NEW)).await,
        "new token not accepted within {RELOAD_WITHIN:?}"
    );
    // During grace: the old token still works and the old session stays open.
    assert!(accepted(&gw.url, CANARY).await);
    assert_eq!(old_session.call("h", "health", None).await["ok"], true);

    // When grace ends the old session is closed 4001 and the old token is refused.
    let mut closed = None;
    for _ in 0..2 {
        match old_session.next_within(Duration::from_secs(6)).await {
            Got::Closed(code, reason) => {
                closed = Some((code, reason));
                break;
            }
            Got::Frame(_) => continue,
        }
    }
    assert_eq!(closed, Some((4001, "gateway auth changed".to_owned())));
    assert!(!accepted(&gw.url, CANARY).await);
    assert!(accepted(&gw.url, NEW).await);
    assert_eq!(
        gw.metric("driftless_gateway_secret_generation{secret=\"gateway.auth.token\"}"),
        2.0
    );
    assert!(gw.metric("driftless_gateway_secret_last_rotation_timestamp_seconds{secret=\"gateway.auth.token\"}") > 0.0);
    let log = gw.finish();
    assert!(log.contains("secret rotated"), "{log}");
}

/// Lays out a directory the way the kubelet mounts a Secret: `token -> ..data/token`,
/// `..data -> ..<timestamp>`.
fn k8s_mount(dir: &Path, version: &str, token: &str) {
    let ts = dir.join(format!("..{version}"));
    write_secret(&ts.join("token"), token);
}

fn k8s_swap(dir: &Path, version: &str) {
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn kubernetes_data_symlink_swap_without_grace() {
    let home = Home::new();
    let mount = home.path().join("mount");
    k8s_mount(&mount, "2026_11_23_v1", CANARY);
    symlink("..2026_11_23_v1", mount.join("..data")).unwrap();
    symlink("..data/token", mount.join("token")).unwrap();
    home.write_config(&format!(
        "[gateway]\nport = 0\n[gateway.auth]\ntoken = {{ source = \"file\", path = {:?} }}\nrotation_grace_seconds = 0\n",
        mount.join("token").to_str().unwrap()
    ));
    let gw = Gateway::start(&home, &[], &[]);
    let mut old_session = session(&gw.url, cli_params(Some(CANARY))).await;

    k8s_mount(&mount, "2026_11_23_v2", NEW);
    k8s_swap(&mount, "2026_11_23_v2");
    assert!(
        eventually(RELOAD_WITHIN, || accepted(&gw.url, NEW)).await,
        "new token not accepted within {RELOAD_WITHIN:?} of the ..data swap"
    );
    // Grace 0: the old token and its sessions end at once.
    assert!(!accepted(&gw.url, CANARY).await);
    let got = old_session.next_within(Duration::from_secs(2)).await;
    assert!(
        matches!(got, Got::Closed(4001, ref r) if r == "gateway auth changed"),
        "{got:?}"
    );
    gw.finish();
}

#[tokio::test]
async fn failed_reloads_and_touches_keep_the_old_token() {
    let home = Home::new();
    let tok = home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let mut s = session(&gw.url, cli_params(Some(CANARY))).await;

    // Touch: same content rewritten in place and by rename. Nothing changes.
    write_secret(&tok, CANARY);
    replace_by_rename(&tok, &format!("{CANARY}\n"));
    assert!(
        eventually(RELOAD_WITHIN, || async {
            gw.metric("driftless_gateway_secret_reloads_total{outcome=\"unchanged\"}") >= 1.0
        })
        .await
    );
    assert_eq!(
        gw.metric("driftless_gateway_secret_reloads_total{outcome=\"changed\"}"),
        0.0
    );
    assert_eq!(
        gw.metric("driftless_gateway_secret_generation{secret=\"gateway.auth.token\"}"),
        1.0
    );

    // Empty file: the reload fails, the old token keeps working.
    replace_by_rename(&tok, "");
    assert!(
        eventually(RELOAD_WITHIN, || async {
            gw.metric("driftless_gateway_secret_reloads_total{outcome=\"failed\"}") >= 1.0
        })
        .await
    );
    assert!(accepted(&gw.url, CANARY).await);
    // Missing file: same.
    std::fs::remove_file(&tok).unwrap();
    assert!(
        eventually(RELOAD_WITHIN, || async {
            gw.metric("driftless_gateway_secret_reloads_total{outcome=\"failed\"}") >= 2.0
        })
        .await
    );
    assert!(accepted(&gw.url, CANARY).await);
    // The session opened before all this is untouched.
    assert_eq!(s.call("h", "health", None).await["ok"], true);
    let st = s.call("s", "status", None).await;
    assert_eq!(st["payload"]["lastReload"]["outcome"], "failed");
    assert!(st["payload"]["auth"]["grace"].is_null());
    let log = gw.finish();
    assert!(log.contains("secret reload failed"), "{log}");
}

#[tokio::test]
async fn token_rotate_cli_file_source_and_no_grace() {
    let home = Home::new();
    home.token_config(CANARY, "");
    // `token rotate` finds the gateway through config: pin a free port there.
    let cfg = std::fs::read_to_string(home.config_path()).unwrap();
    let gw = Gateway::start_pinned(&home, |port| {
        home.write_config(&cfg.replace("port = 0", &format!("port = {port}")))
    });
    let mut old_session = session(&gw.url, cli_params(Some(CANARY))).await;

    let (st, out, err) = home.run(&["token", "rotate", "--json"]);
    assert!(st.success(), "{out}{err}");
    assert_no_canary(&out, "token rotate output");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gatewayAccepted"], true);
    assert!(v["graceEndsAtMs"].as_u64().unwrap() > 0);
    assert_ne!(v["oldFingerprint"], v["newFingerprint"]);
    // Old session survives (300 s grace); the gateway reports the new fingerprint.
    assert_eq!(old_session.call("h", "health", None).await["ok"], true);
    let (_, out, _) = home.run(&["gateway", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["auth"]["fingerprint"], v["newFingerprint"]);

    // --no-grace ends the overlap at once: a session on the token it replaces is closed 4001.
    let second = std::fs::read_to_string(home.path().join("secrets/token")).unwrap();
    let second = second.trim_end();
    let mut second_session = session(&gw.url, cli_params(Some(second))).await;
    let (st, out, err) = home.run(&["token", "rotate", "--no-grace"]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("no longer works"), "{out}");
    let mut closed = None;
    for _ in 0..3 {
        if let Got::Closed(code, _) = second_session.next_within(Duration::from_secs(3)).await {
            closed = Some(code);
            break;
        }
    }
    assert_eq!(closed, Some(4001));
    assert!(!accepted(&gw.url, second).await);
    assert!(!accepted(&gw.url, CANARY).await);
    let third = std::fs::read_to_string(home.path().join("secrets/token")).unwrap();
    assert!(accepted(&gw.url, third.trim_end()).await);
    gw.finish();
}

#[tokio::test]
async fn token_rotate_refuses_env_and_exec_sources() {
    let home = Home::new();
    home.write_config(
        "[gateway]\nport = 0\n[gateway.auth]\ntoken = { source = \"env\", id = \"GW_TOK\" }\n",
    );
    let mut cmd = home.command();
    let out = cmd
        .env("GW_TOK", CANARY)
        .args(["token", "rotate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("environment") && err.contains("restart the gateway"),
        "{err}"
    );
    assert_no_canary(&err, "stderr");

    home.write_config("[gateway]\nport = 0\n[gateway.auth]\ntoken = { source = \"exec\", command = [\"/bin/echo\", \"abcdefgh\"] }\n");
    let (st, _, err) = home.run(&["token", "rotate"]);
    assert!(!st.success());
    assert!(err.contains("comes from a command"), "{err}");
}

#[tokio::test]
async fn token_rotate_literal_in_config_edits_the_config() {
    let home = Home::new();
    let gw = Gateway::start_pinned(&home, |port| {
        home.write_config(&format!(
            "# keep this comment\n[gateway]\nport = {port}\n[gateway.auth]\ntoken = \"{CANARY}\"\n"
        ))
    });
    let (st, out, err) = home.run(&["token", "rotate", "--json"]);
    assert!(st.success(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gatewayAccepted"], true);
    let cfg = std::fs::read_to_string(home.config_path()).unwrap();
    assert!(cfg.contains("# keep this comment"), "{cfg}");
    assert!(!cfg.contains(CANARY));
    // During the default grace the old literal still works.
    assert!(accepted(&gw.url, CANARY).await);
    gw.finish();
}

/// A client that reads the rotated file at once (before the debounced watcher fires) must be
/// accepted on its first attempt: the gateway re-reads the file on a mismatch. Without that, this
/// fails on the first round. The watcher's debounce is stretched to 5 s so the re-read path, not the
/// watcher, must be what accepts the new token.
#[tokio::test]
async fn a_token_read_right_after_the_rename_is_accepted_first_time() {
    let home = Home::new();
    let tok = home.token_config(CANARY, "rotation_grace_seconds = 60\n");
    let gw = Gateway::start(&home, &[], &[("DRIFTLESS_RELOAD_DEBOUNCE_MS", "5000")]);
    for round in 0..10 {
        let fresh = format!("canary-gw-fresh-{round}-8d2e");
        replace_by_rename(&tok, &format!("{fresh}\n"));
        assert!(
            accepted(&gw.url, &fresh).await,
            "round {round}: new token refused"
        );
        assert!(!accepted(&gw.url, "canary-gw-never-valid-0000").await);
    }
    let log = gw.finish();
    assert!(
        log.contains("auth-miss"),
        "the re-read path was not taken: {log}"
    );
}

/// An edit to a setting only a restart applies is not silently ignored: the gateway warns once,
/// names the settings (never values) in `status`, keeps serving, and clears them when the edit is
/// undone. A secret reference in the same file keeps applying live.
#[tokio::test]
async fn start_only_config_edits_are_reported_not_ignored() {
    let home = Home::new();
    let tok = home.token_config(CANARY, "");
    let original = std::fs::read_to_string(home.config_path()).unwrap();
    let gw = Gateway::start(&home, &[], &[]);
    let mut s = session(&gw.url, cli_params(Some(CANARY))).await;
    let restart_for =
        |st: &serde_json::Value| st["payload"]["lastReload"]["restartRequiredFor"].clone();

    let edited = original.replace("port = 0", "port = 1").replace(
        "mode = \"token\"",
        "mode = \"token\"\nrotation_grace_seconds = 7",
    );
    assert_ne!(edited, original);
    replace_by_rename(&home.config_path(), &edited);
    let st = status_until(&mut s, |st| restart_for(st).is_array()).await;
    assert_eq!(
        restart_for(&st),
        serde_json::json!(["gateway.auth.rotation_grace_seconds", "gateway.port"]),
        "{st}"
    );
    let (st, out, err) = home.run(&["gateway", "status", "--url", &gw.url, "--token", CANARY]);
    assert!(st.success(), "{out}{err}");
    assert!(
        out.contains("needed to apply gateway.auth.rotation_grace_seconds, gateway.port"),
        "{out}"
    );
    // Still serving where it started, and a rotation in the meantime applies live.
    replace_by_rename(&tok, &format!("{NEW}\n"));
    assert!(eventually(RELOAD_WITHIN, || accepted(&gw.url, NEW)).await);
    let st = s.call("s", "status", None).await;
    assert_eq!(restart_for(&st).as_array().map(Vec::len), Some(2), "{st}");

    // Undoing the edit clears the notice.
    replace_by_rename(&home.config_path(), &original);
    status_until(&mut s, |st| {
        restart_for(st).is_null() && st["payload"]["lastReload"]["outcome"] == "unchanged"
    })
    .await;
    let log = gw.finish();
    let warnings = log.matches("apply only after a restart").count();
    assert_eq!(
        warnings, 1,
        "warned once per distinct set of settings:\n{log}"
    );
    assert!(log.contains("gateway.port"), "{log}");
}

/// Polls `status` on `s` until `done` holds (bounded by [`RELOAD_WITHIN`]).
async fn status_until(
    s: &mut Client,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + RELOAD_WITHIN;
    loop {
        let st = s.call("s", "status", None).await;
        if done(&st) {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never got there: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
