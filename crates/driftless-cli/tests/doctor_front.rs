//! `doctor`'s front-mode and provider checks (issue #13 items 8 and 9), run as the real binary
//! against real files in a private HOME: OpenClaw reachable other than through driftless, an
//! upstream credential that is a copy, driftless's upstream device-token file, and OpenClaw's
//! provider keys that are copies of driftless's. The real OpenClaw runs with such a repaired
//! config in `openclaw_providers.rs`.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{CANARY, Home, write_file, write_secret};

fn doctor_json(h: &Home, args: &[&str]) -> (i32, Value, String) {
    let mut a = vec!["doctor", "--json"];
    a.extend_from_slice(args);
    let r = h.driftless(&a, &[]);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", r.all()));
    (r.code, v, r.all())
}

/// The rows of `check` with `status`.
fn rows(v: &Value, check: &str, status: &str) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == check && r["status"] == status)
        .map(|r| r["finding"].as_str().unwrap().to_owned())
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

/// The backups `--fix` wrote (named in its `--json` actions).
fn backups(v: &Value) -> Vec<PathBuf> {
    v["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["backup"].as_str().map(PathBuf::from))
        .collect()
}

/// A driftless config (token `CANARY` in a file) with `[upstream]` at `url`, its token the file
/// `openclaw/token` holding `upstream_token`.
fn front_home(url: &str, upstream_token: &str) -> (Home, PathBuf) {
    let h = Home::new();
    h.token_config(CANARY, "");
    let token = h.path().join("openclaw/token");
    write_secret(&token, upstream_token);
    let text = std::fs::read_to_string(h.config_path()).unwrap();
    h.write_config(&format!(
        "{text}\n[upstream]\nurl = {url:?}\ntoken = {{ source = \"file\", path = {token:?} }}\n"
    ));
    (h, token)
}

fn openclaw_json(h: &Home) -> PathBuf {
    h.home().join(".openclaw/openclaw.json")
}

#[test]
fn an_upstream_reachable_beyond_loopback_is_reported_and_openclaws_bind_repaired() {
    let (h, _) = front_home("ws://10.1.2.3:18790", "canary-upstream-reach-1");
    let config =
        "// OpenClaw (JSON5)\n{ gateway: { mode: 'local', port: 18790, bind: 'lan', }, }\n";
    write_file(&openclaw_json(&h), config, 0o600);

    let (code, v, _) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    let found = rows(&v, "front-upstream", "finding");
    assert_eq!(found.len(), 2, "{v:#}");
    assert!(found[0].contains("ws://10.1.2.3:18790 is not a loopback address"));
    assert!(found[1].contains("gateway.bind is \"lan\""));

    // Without --openclaw, OpenClaw's file is left alone.
    h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(std::fs::read_to_string(openclaw_json(&h)).unwrap(), config);

    let (_, fixed, _) = doctor_json(&h, &["--fix", "--openclaw"]);
    let oc = read_json(&openclaw_json(&h));
    assert_eq!(oc["gateway"]["bind"], "loopback");
    assert_eq!(oc["gateway"]["port"], 18790);
    let baks = backups(&fixed);
    assert_eq!(baks.len(), 1, "{fixed:#}");
    assert_eq!(std::fs::read_to_string(&baks[0]).unwrap(), config);
    assert_eq!(mode(&baks[0]), 0o600);
    // The URL is the user's to change; the bind finding is gone, and a second --fix changes nothing.
    assert_eq!(rows(&fixed, "front-upstream", "finding").len(), 1);
    let (_, again, _) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(backups(&again).is_empty(), "{again:#}");

    let (h, _) = front_home("ws://127.0.0.1:18790", "canary-upstream-reach-2");
    write_file(
        &openclaw_json(&h),
        "{ gateway: { bind: 'custom', customBindHost: '127.0.0.1' } }",
        0o600,
    );
    let (_, v, _) = doctor_json(&h, &[]);
    assert!(rows(&v, "front-upstream", "finding").is_empty(), "{v:#}");
    assert_eq!(rows(&v, "front-upstream", "ok").len(), 1, "{v:#}");
}

#[test]
fn an_upstream_token_copied_into_openclaws_files_is_found_by_fingerprint_and_referenced() {
    let value = "canary-upstream-copy-3b8e";
    let (h, token) = front_home("ws://127.0.0.1:18790", value);
    let oc = openclaw_json(&h);
    write_file(
        &oc,
        &json!({"gateway": {"mode": "local", "auth": {"mode": "token", "token": value}}})
            .to_string(),
        0o600,
    );
    let dotenv = h.home().join(".openclaw/.env");
    write_file(
        &dotenv,
        &format!("# OpenClaw\nexport OPENCLAW_GATEWAY_TOKEN=\"{value}\"\nOTHER=1\n"),
        0o600,
    );

    let (code, v, all) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    assert!(!all.contains(value), "the token in doctor's output");
    let found = rows(&v, "front-upstream-copy", "finding");
    assert_eq!(found.len(), 2, "{v:#}");
    assert!(found[0].contains("gateway.auth.token in") && found[0].contains("sha256:"));
    assert!(found[1].contains("OPENCLAW_GATEWAY_TOKEN in") && found[1].contains(".env"));

    let (_, fixed, all) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(!all.contains(value), "the token in doctor's output");
    let c = read_json(&oc);
    assert_eq!(
        c["gateway"]["auth"]["token"],
        json!({"source": "file", "provider": "driftless-upstream", "id": "value"})
    );
    assert_eq!(
        c["secrets"]["providers"]["driftless-upstream"],
        json!({"source": "file", "path": token, "mode": "singleValue"})
    );
    // openclaw.json now references the one source; the .env copy is the user's to remove.
    let left = rows(&fixed, "front-upstream-copy", "finding");
    assert_eq!(left.len(), 1, "{fixed:#}");
    assert!(left[0].contains(".env"));
    let mut holders = h.files_containing(value);
    holders.sort();
    assert_eq!(holders, vec![dotenv, token], "the backup must hold no copy");
}

#[test]
fn the_upstream_device_token_file_is_checked_and_never_rewritten() {
    let (h, _) = front_home("ws://127.0.0.1:18790", "canary-upstream-devtok-1");
    // Not in front mode yet: nothing to check.
    let (_, v, _) = doctor_json(&h, &[]);
    assert_eq!(rows(&v, "front-device-token", "skipped").len(), 1, "{v:#}");

    let path = h.state().join("upstream/device-token.json");
    let broken = "{\"version\":1,\"deviceId\":\"d\",\"deviceToken\":\"canary-devtok-broken-1\"";
    write_file(&path, broken, 0o644);
    let (code, v, all) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    assert!(
        !all.contains("canary-devtok-broken-1"),
        "the token in doctor's output"
    );
    let found = rows(&v, "front-device-token", "finding");
    assert_eq!(found.len(), 1, "{v:#}");
    assert!(found[0].contains("does not parse"), "{found:?}");
    assert!(
        rows(&v, "permissions", "finding")
            .iter()
            .any(|f| f.contains("device-token.json is mode 0644")),
        "{v:#}"
    );
    // --fix makes it private and leaves its bytes: driftless sets it aside at its next start.
    h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);

    write_file(
        &path,
        "{\"version\":1,\"deviceId\":\"d\",\"deviceToken\":\"canary-devtok-ok-2\"}\n",
        0o600,
    );
    let (_, v, all) = doctor_json(&h, &[]);
    assert!(!all.contains("canary-devtok-ok-2"));
    assert_eq!(rows(&v, "front-device-token", "ok").len(), 1, "{v:#}");
}

#[test]
fn a_provider_key_copied_into_an_auth_profile_goes_and_its_models_route_through_driftless() {
    let key = "sk-canary-dl-provider-openai-1";
    let other = "sk-canary-oc-anthropic-2";
    let h = Home::new();
    h.token_config(CANARY, "");
    let key_file = h.path().join("secrets/openai-key");
    write_secret(&key_file, key);
    let text = std::fs::read_to_string(h.config_path()).unwrap();
    // A fixed port: OpenClaw needs one to reach driftless.
    h.write_config(
        &(text.replace("port = 0", "port = 28789")
            + &format!(
                "[providers.openai]\nbase_url = \"https://api.example.invalid/v1\"\n\
                 api_key = {{ source = \"file\", path = {key_file:?} }}\ndefault_model = \"gpt-small\"\n"
            )),
    );
    let oc = openclaw_json(&h);
    write_file(
        &oc,
        "{ agents: { defaults: { model: { primary: 'openai/gpt-big', fallbacks: ['anthropic/c'] } } } }",
        0o600,
    );
    let profiles = h
        .home()
        .join(".openclaw/agents/main/agent/auth-profiles.json");
    write_file(
        &profiles,
        &json!({"version": 1, "profiles": {
            "openai:default": {"type": "api_key", "provider": "openai", "key": key},
            "anthropic:default": {"type": "api_key", "provider": "anthropic", "key": other},
        }})
        .to_string(),
        0o600,
    );

    let (_, v, all) = doctor_json(&h, &[]);
    assert!(!all.contains(key) && !all.contains(other));
    let found = rows(&v, "openclaw-provider", "finding");
    assert!(
        found.iter().any(|f| f.contains("profile openai:default")
            && f.contains("copy of driftless's providers.openai.api_key")),
        "{found:#?}"
    );

    let (_, fixed, all) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(!all.contains(key) && !all.contains(other));
    assert!(
        rows(&fixed, "openclaw-provider", "finding").is_empty(),
        "{fixed:#}"
    );
    let c = read_json(&oc);
    let p = &c["models"]["providers"]["driftless"];
    assert_eq!(p["baseUrl"], "http://127.0.0.1:28789/v1");
    assert_eq!(p["api"], "openai-completions");
    let ids: Vec<&str> = p["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["openai/gpt-big", "openai/gpt-small"]);
    assert_eq!(
        c["agents"]["defaults"]["model"],
        json!({"primary": "driftless/openai/gpt-big", "fallbacks": ["anthropic/c"]})
    );
    // The copy went with its profile; the other key moved to OpenClaw's secrets file as before.
    let pf = read_json(&profiles);
    assert!(pf["profiles"].get("openai:default").is_none(), "{pf:#}");
    assert!(
        pf["profiles"]["anthropic:default"].get("keyRef").is_some(),
        "{pf:#}"
    );
    assert_eq!(h.files_containing(key), vec![key_file]);
    for b in backups(&fixed) {
        assert_eq!(mode(&b), 0o600);
        assert!(!std::fs::read_to_string(&b).unwrap().contains(key));
    }
    let (code, again, _) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(backups(&again).is_empty(), "{again:#}");
    assert_eq!(
        rows(&again, "openclaw-provider", "ok").len(),
        1,
        "{again:#}"
    );
    let _ = code;
}

#[test]
fn a_provider_key_an_earlier_fix_moved_into_openclaws_secrets_file_goes_too() {
    let key = "sk-canary-dl-provider-stored-3";
    let h = Home::new();
    h.token_config(CANARY, "");
    let before = std::fs::read_to_string(h.config_path()).unwrap();
    let oc = openclaw_json(&h);
    write_file(
        &oc,
        "{ agents: { defaults: { model: 'openai/gpt-big' } } }",
        0o600,
    );
    let profiles = h
        .home()
        .join(".openclaw/agents/main/agent/auth-profiles.json");
    write_file(
        &profiles,
        &json!({"version": 1, "profiles": {
            "openai:default": {"type": "api_key", "provider": "openai", "key": key}}})
        .to_string(),
        0o600,
    );
    // Before driftless serves the provider, doctor moves the key into OpenClaw's secrets file.
    h.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    let store = h
        .home()
        .join(".openclaw/secrets/driftless-auth-profiles.json");
    assert_eq!(h.files_containing(key), vec![store.clone()]);

    // Now driftless holds the key: that stored value is a copy, and goes with its profile.
    let key_file = h.path().join("secrets/openai-key");
    write_secret(&key_file, key);
    h.write_config(&format!(
        "{}[providers.openai]\nbase_url = \"https://api.example.invalid/v1\"\n\
         api_key = {{ source = \"file\", path = {key_file:?} }}\n",
        before.replace("port = 0", "port = 28790")
    ));
    let (_, v, all) = doctor_json(&h, &[]);
    assert!(!all.contains(key));
    let found = rows(&v, "openclaw-provider", "finding");
    assert!(
        found
            .iter()
            .any(|f| f.contains("profile openai:default") && f.contains("secrets file")),
        "{found:#?}"
    );
    let (_, fixed, all) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(!all.contains(key));
    assert!(
        rows(&fixed, "openclaw-provider", "finding").is_empty(),
        "{fixed:#}"
    );
    assert!(
        read_json(&profiles)["profiles"]
            .get("openai:default")
            .is_none()
    );
    assert_eq!(read_json(&store)["main"], json!({}));
    assert_eq!(
        read_json(&oc)["agents"]["defaults"]["model"],
        "driftless/openai/gpt-big"
    );
    assert_eq!(h.files_containing(key), vec![key_file]);
    let (_, again, _) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(backups(&again).is_empty(), "{again:#}");
}

/// OpenClaw 2026.9 imports `auth-profiles.json` into SQLite (`openclaw doctor --fix`; the schemas
/// below are the real 2026.9.6's, read from databases it wrote) and keeps the old file as an
/// archive. Copies there are reported with the command that removes them; doctor never writes
/// OpenClaw's databases or deletes its archives, but still routes OpenClaw's models through driftless.
#[test]
fn copies_in_openclaws_sqlite_stores_and_import_archives_are_reported_not_written() {
    let key = "sk-canary-dl-provider-sqlite-4";
    let h = Home::new();
    h.token_config(CANARY, "");
    let key_file = h.path().join("secrets/openai-key");
    write_secret(&key_file, key);
    let text = std::fs::read_to_string(h.config_path()).unwrap();
    h.write_config(&format!(
        "{}[providers.openai]\nbase_url = \"https://api.example.invalid/v1\"\n\
         api_key = {{ source = \"file\", path = {key_file:?} }}\n",
        text.replace("port = 0", "port = 28791")
    ));
    let oc_dir = h.home().join(".openclaw");
    write_file(
        &oc_dir.join("openclaw.json"),
        "{ agents: { defaults: { model: 'openai/gpt-big' } } }",
        0o600,
    );
    let store = json!({"version": 1, "profiles": {
        "openai:default": {"type": "api_key", "provider": "openai", "key": key}}})
    .to_string();
    let machine = oc_dir.join("state/openclaw.sqlite");
    let agent_db = oc_dir.join("agents/main/agent/openclaw-agent.sqlite");
    std::fs::create_dir_all(machine.parent().unwrap()).unwrap();
    std::fs::create_dir_all(agent_db.parent().unwrap()).unwrap();
    let db = rusqlite::Connection::open(&machine).unwrap();
    db.execute_batch(
        "CREATE TABLE config_machine_state (state_key TEXT NOT NULL PRIMARY KEY, value_json TEXT NOT NULL, \
         updated_at_ms INTEGER NOT NULL) STRICT",
    )
    .unwrap();
    db.execute(
        "INSERT INTO config_machine_state VALUES ('authProfiles.store', ?1, 1)",
        [&store],
    )
    .unwrap();
    drop(db);
    let db = rusqlite::Connection::open(&agent_db).unwrap();
    db.execute_batch(
        "CREATE TABLE auth_profile_store (store_key TEXT NOT NULL PRIMARY KEY, store_json TEXT NOT NULL, \
         updated_at INTEGER NOT NULL) STRICT",
    )
    .unwrap();
    db.execute(
        "INSERT INTO auth_profile_store VALUES ('main', ?1, 1)",
        [&store],
    )
    .unwrap();
    drop(db);
    let archive =
        oc_dir.join("agents/main/agent/auth-profiles.json.migrated-2026-12-02T08-53-33.449Z-b5");
    write_file(&archive, &store, 0o600);
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    let (machine_before, agent_before) = (bytes(&machine), bytes(&agent_db));

    let (_, v, all) = doctor_json(&h, &[]);
    assert!(!all.contains(key));
    let copies: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["check"] == "openclaw-provider"
                && r["finding"].as_str().unwrap().contains("is a copy")
        })
        .collect();
    assert_eq!(copies.len(), 3, "{v:#}");
    assert!(
        copies[0]["finding"]
            .as_str()
            .unwrap()
            .contains("config_machine_state authProfiles.store")
    );
    assert!(
        copies[1]["finding"]
            .as_str()
            .unwrap()
            .contains("auth_profile_store main")
    );
    // The real 2026.9.6's command (checked by hand: without --yes it refuses to remove).
    for (c, cmd) in copies[..2].iter().zip([
        "`openclaw models auth logout openai:default --yes`",
        "`openclaw models auth --agent main logout openai:default --yes`",
    ]) {
        assert!(c["fix"].as_str().unwrap().contains(cmd), "{c}");
    }
    assert!(
        copies[2]["fix"].as_str().unwrap().starts_with("delete "),
        "{}",
        copies[2]
    );

    let (code, fixed, all) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert!(!all.contains(key));
    assert_eq!(code, 1, "the copies OpenClaw holds remain findings");
    assert_eq!(
        rows(&fixed, "openclaw-provider", "finding").len(),
        3,
        "{fixed:#}"
    );
    assert_eq!(
        read_json(&oc_dir.join("openclaw.json"))["agents"]["defaults"]["model"],
        "driftless/openai/gpt-big"
    );
    assert_eq!(bytes(&machine), machine_before);
    assert_eq!(bytes(&agent_db), agent_before);
    assert_eq!(std::fs::read_to_string(&archive).unwrap(), store);
}
