//! `driftless daemon install`, `doctor` and `secrets migrate`, run as the real binary against
//! seeded fixtures in a private HOME. Generated units are checked by the real
//! `systemd-analyze verify`; plists by the real `plist` parser.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use support::{BIN, Home, write_file};

/// Where the service files of this home live.
trait ServiceFiles {
    fn unit(&self) -> PathBuf;
    fn plist(&self) -> PathBuf;
}

impl ServiceFiles for Home {
    fn unit(&self) -> PathBuf {
        self.home()
            .join(".config/systemd/user/driftless-gateway.service")
    }
    fn plist(&self) -> PathBuf {
        self.home()
            .join("Library/LaunchAgents/dev.driftless.gateway.plist")
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// The backup paths `doctor --fix` named in its output.
fn named_backups(out: &str) -> Vec<PathBuf> {
    out.split("(backup: ")
        .skip(1)
        .map(|s| PathBuf::from(s.split(')').next().unwrap()))
        .collect()
}

fn doctor_json(h: &Home, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["doctor", "--json"];
    a.extend_from_slice(args);
    let r = h.driftless(&a, &[]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", r.all()));
    (r.code, v)
}

fn findings(v: &serde_json::Value, check: &str) -> Vec<serde_json::Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == check && r["status"] == "finding")
        .cloned()
        .collect()
}

/// Runs the real `systemd-analyze verify` on `unit` (named as installed) and requires exit 0 and
/// an empty stderr: it exits 0 on warnings too. Then pins the hardening: `security --threshold`
/// fails when the exposure score (x10) exceeds `max_exposure`.
fn verify(h: &Home, unit_text: &str, user: bool, max_exposure: u32) {
    let dir = h.root().join(format!("verify-{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("driftless-gateway.service");
    std::fs::write(&path, unit_text).unwrap();
    let mut c = h.cmd("systemd-analyze");
    if user {
        c.arg("--user");
    }
    let out = c.args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify (user={user}) rc={:?} stderr:\n{stderr}\nunit:\n{unit_text}",
        out.status.code()
    );
    let mut c = h.cmd("systemd-analyze");
    if user {
        c.arg("--user");
    }
    let out = c
        .args(["security", "--offline=true"])
        .arg(format!("--threshold={max_exposure}"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exposure above {max_exposure}/10:\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
}

#[test]
fn generated_units_pass_systemd_analyze_verify() {
    let mut h = Home::new();
    // A config path with a space exercises ExecStart quoting.
    let cfg = h.home().join("my cfg/config.toml");
    h.set_env("DRIFTLESS_CONFIG", cfg.to_str().unwrap());
    h.ok(&["init"]);
    let token = read(&h.token_file());

    let user = h.ok(&["daemon", "install", "--dry-run"]).stdout;
    assert!(
        user.contains(&format!(
            "ExecStart={BIN} gateway run --config \"{}\"",
            cfg.display()
        )),
        "{user}"
    );
    assert!(user.contains("Restart=on-failure"));
    let envs: Vec<&str> = user
        .lines()
        .filter(|l| l.starts_with("Environment"))
        .collect();
    assert_eq!(envs, ["Environment=DRIFTLESS_SERVICE_KIND=gateway"]);
    assert!(!user.contains(token.trim()));
    // A descriptor budget above the default soft limit of 1,024 (issue 15, finding 1).
    assert!(user.contains("\nLimitNOFILE=65536\n"), "{user}");
    verify(&h, &user, true, 80);

    let cred = h
        .ok(&["daemon", "install", "--dry-run", "--load-credential"])
        .stdout;
    assert!(cred.contains(&format!(
        "LoadCredential=gateway-token:{}\n",
        h.token_file().display()
    )));
    verify(&h, &cred, true, 80);

    let system = h
        .ok(&[
            "daemon",
            "install",
            "--dry-run",
            "--system",
            "--run-as",
            "driftless",
        ])
        .stdout;
    assert!(system.contains("User=driftless\n") && system.contains("WantedBy=multi-user.target"));
    assert!(system.contains("\nLimitNOFILE=65536\n"), "{system}");
    verify(&h, &system, false, 35);

    // Refused: running the system service as root.
    let r = h.driftless(
        &[
            "daemon",
            "install",
            "--dry-run",
            "--system",
            "--run-as",
            "root",
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--run-as"), "{}", r.all());
}

#[test]
fn generated_plist_parses_and_has_exactly_the_expected_keys() {
    let h = Home::new();
    h.ok(&["init"]);
    let out = h
        .cmd(BIN)
        .args(["daemon", "install", "--dry-run", "--launchd"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: plist::Value = plist::from_bytes(&out.stdout).expect("a valid plist");
    let d = v.as_dictionary().unwrap();
    let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "EnvironmentVariables",
            "KeepAlive",
            "Label",
            "ProgramArguments",
            "RunAtLoad",
            "StandardErrorPath",
            "StandardOutPath",
            "ThrottleInterval",
            "Umask"
        ]
    );
    assert_eq!(d["Label"].as_string(), Some("dev.driftless.gateway"));
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    let cfg = h.config_path();
    assert_eq!(
        args,
        [BIN, "gateway", "run", "--config", cfg.to_str().unwrap()]
    );
    let env = d["EnvironmentVariables"].as_dictionary().unwrap();
    assert_eq!(env.len(), 1);
    assert_eq!(env["DRIFTLESS_SERVICE_KIND"].as_string(), Some("gateway"));
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    let ka = d["KeepAlive"].as_dictionary().unwrap();
    assert_eq!(ka.len(), 1);
    assert_eq!(ka["SuccessfulExit"].as_boolean(), Some(false));
    assert_eq!(d["ThrottleInterval"].as_signed_integer(), Some(2));
    assert_eq!(d["Umask"].as_signed_integer(), Some(0o077));
    let logs = h.state().join("logs");
    assert_eq!(
        d["StandardOutPath"].as_string(),
        logs.join("gateway.log").to_str()
    );
    assert_eq!(
        d["StandardErrorPath"].as_string(),
        logs.join("gateway.err.log").to_str()
    );
    let token = read(&h.token_file());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token.trim()));
    // On Linux a plist is only ever printed.
    if !cfg!(target_os = "macos") {
        let r = h.driftless(&["daemon", "install", "--launchd"], &[]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("--dry-run"), "{}", r.all());
    }
}

#[test]
fn install_refuses_a_token_flag_with_the_fix() {
    let h = Home::new();
    h.ok(&["init"]);
    let canary = "canary-flag-7f3a9c";
    for flag in ["--token", "--password"] {
        let r = h.driftless(&["daemon", "install", "--no-start", flag, canary], &[]);
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(r.stderr.contains("refusing to put a secret"), "{}", r.all());
        assert!(
            r.stderr.contains("driftless init") && r.stderr.contains(flag),
            "{}",
            r.all()
        );
        assert!(!r.all().contains(canary));
    }
    assert!(!h.unit().exists());
}

#[test]
fn install_then_doctor_is_clean_and_status_matches() {
    let h = Home::new();
    h.ok(&["init"]);
    let r = h.ok(&["daemon", "install", "--no-start"]);
    assert!(r.stdout.contains("holds no secret"), "{}", r.all());
    assert_eq!(mode(&h.unit()), 0o644);
    let dry = h.ok(&["daemon", "install", "--dry-run"]).stdout;
    assert_eq!(read(&h.unit()), dry);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["findings"], 0);
    let status = h.driftless(&["daemon", "status", "--json"], &[]);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["installed"], true);
    assert_eq!(s["matches_install"], true);
    // Installing again is a no-op.
    let again = h.ok(&["daemon", "install", "--no-start"]);
    assert!(
        again.stdout.contains("already what install writes"),
        "{}",
        again.all()
    );
}

/// D1: a unit with `Environment=DRIFTLESS_GATEWAY_TOKEN=<canary>` and no token in config.
#[test]
fn d1_embedded_token_is_persisted_referenced_and_removed_idempotently() {
    let h = Home::new();
    let canary = "canary-d1-c0ffee-0123456789";
    write_file(
        &h.config_path(),
        "# my gateway\n[gateway]\nport = 18789\n",
        0o600,
    );
    let clean_unit = h.ok(&["daemon", "install", "--dry-run"]).stdout;
    let seeded = clean_unit.replace(
        "Environment=DRIFTLESS_SERVICE_KIND=gateway\n",
        &format!("Environment=DRIFTLESS_SERVICE_KIND=gateway\nEnvironment=DRIFTLESS_GATEWAY_TOKEN={canary}\n"),
    );
    write_file(&h.unit(), &seeded, 0o644);
    let cfg_before = read(&h.config_path());
    let mut outputs = Vec::new();

    // Audit: reported, nothing changed.
    let r = h.driftless(&["doctor"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("Environment=DRIFTLESS_GATEWAY_TOKEN holds a secret"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("persist it to"), "{}", r.all());
    outputs.push(r.all());
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v, "unit-secret").len(), 1, "{v:#}");
    outputs.push(v.to_string());
    assert_eq!(read(&h.unit()), seeded);
    assert_eq!(read(&h.config_path()), cfg_before);
    assert!(!h.token_file().exists());

    // Fix: persisted to a 0600 file, referenced from config, unit rewritten without it.
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("Clean: no findings."), "{}", r.all());
    outputs.push(r.all());
    assert_eq!(read(&h.token_file()), format!("{canary}\n"));
    assert_eq!(mode(&h.token_file()), 0o600);
    let cfg_after = read(&h.config_path());
    assert!(cfg_after.contains("# my gateway"));
    assert!(cfg_after.contains(&format!(
        "token = {{ source = \"file\", path = \"{}\" }}",
        h.token_file().display()
    )));
    assert_eq!(read(&h.unit()), clean_unit);
    let backups = named_backups(&r.stdout);
    assert_eq!(backups.len(), 2, "{}", r.stdout);
    for b in &backups {
        assert_eq!(mode(b), 0o600, "{}", b.display());
        assert!(!read(b).contains(canary), "{}", b.display());
    }
    assert!(
        backups
            .iter()
            .any(|b| b.starts_with(h.unit().parent().unwrap()))
    );
    // The same token: `secrets check` resolves the reference to the canary's fingerprint.
    let check = h.ok(&["secrets", "check", "--json"]);
    let fp = {
        let (_, v) = doctor_json(&h, &[]);
        assert_eq!(v["findings"], 0);
        let rows: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
        rows[0]["fingerprint"].as_str().unwrap().to_owned()
    };
    let r0 = h.driftless(&["doctor"], &[]);
    outputs.push(r0.all());
    assert!(seeded_fingerprint_matches(canary, &fp));

    // Second fix: nothing to do, nothing touched.
    let unit_mtime = std::fs::metadata(h.unit()).unwrap().mtime_nsec();
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("No changes"), "{}", r.all());
    outputs.push(r.all());
    assert_eq!(read(&h.config_path()), cfg_after);
    assert_eq!(
        std::fs::metadata(h.unit()).unwrap().mtime_nsec(),
        unit_mtime
    );
    let (_, v) = doctor_json(&h, &["--fix"]);
    assert_eq!(v["actions"].as_array().unwrap().len(), 0);
    outputs.push(v.to_string());

    // The canary is nowhere but its one source.
    for o in &outputs {
        assert!(!o.contains(canary), "canary in output:\n{o}");
    }
    assert_eq!(h.files_containing(canary), vec![h.token_file()]);
}

fn seeded_fingerprint_matches(value: &str, fp: &str) -> bool {
    // `sha256:` + 12 hex of SHA-256, computed independently with coreutils.
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(value.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    fp == format!("sha256:{}", &hex[..12])
}

#[test]
fn unparsable_config_is_reported_with_position_and_nothing_changes() {
    let h = Home::new();
    let canary = "canary-unparsable-55aa";
    let broken = "[gateway]\nport = 18789\n[gateway.auth\ntoken = \"x\"\n";
    write_file(&h.config_path(), broken, 0o644);
    let unit =
        format!("[Service]\nExecStart=/bin/true\nEnvironment=DRIFTLESS_GATEWAY_TOKEN={canary}\n");
    write_file(&h.unit(), &unit, 0o644);
    for args in [&["doctor"][..], &["doctor", "--fix"][..]] {
        let r = h.driftless(args, &[]);
        assert_eq!(r.code, 78, "{}", r.all());
        assert!(r.stdout.contains("config.toml:3:"), "{}", r.all());
        assert!(r.stdout.contains("nothing was changed"), "{}", r.all());
        assert!(!r.all().contains(canary));
    }
    assert_eq!(read(&h.config_path()), broken);
    assert_eq!(mode(&h.config_path()), 0o644);
    assert_eq!(read(&h.unit()), unit);
    assert_eq!(
        std::fs::read_dir(h.config_path().parent().unwrap())
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn plaintext_config_secret_moves_to_a_file_via_doctor() {
    let h = Home::new();
    let canary = "canary-plaintext-9d8e7f";
    let key_canary = "canary-plaintext-key-3c";
    write_file(
        &h.config_path(),
        &format!(
            "[gateway.auth]\ntoken = \"{canary}\"\n[providers.openai]\nbase_url = \"https://api.example.com/v1\"\napi_key = \"{key_canary}\"\n"
        ),
        0o600,
    );
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "plaintext-secret");
    assert_eq!(f.len(), 2, "{v:#}");
    assert!(
        f[0]["finding"]
            .as_str()
            .unwrap()
            .contains("gateway.auth.token")
    );
    assert!(!v.to_string().contains(canary));
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("moved gateway.auth.token out of config"),
        "{}",
        r.all()
    );
    assert!(!read(&h.config_path()).contains(canary));
    assert_eq!(read(&h.token_file()), format!("{canary}\n"));
    assert!(
        h.driftless(&["doctor", "--fix"], &[])
            .stdout
            .contains("No changes")
    );
    assert!(!r.all().contains(canary) && !r.all().contains(key_canary));
    // Neither value survives anywhere but its one source (the config backups hold neither).
    assert_eq!(named_backups(&r.stdout).len(), 2);
    assert_eq!(h.files_containing(canary), vec![h.token_file()]);
    assert_eq!(
        h.files_containing(key_canary),
        vec![h.state().join("secrets/providers-openai-api-key")]
    );
}

#[test]
fn secrets_migrate_to_file_and_to_env() {
    let h = Home::new();
    let canary = "canary-migrate-cli-4242";
    let original = format!("[gateway.auth]\ntoken = \"{canary}\"\n");
    write_file(&h.config_path(), &original, 0o600);

    // --to-env refuses while the variable does not hold the value; nothing changes.
    let r = h.driftless(&["secrets", "migrate", "--to-env", "GW_TOKEN"], &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("GW_TOKEN does not hold this secret"),
        "{}",
        r.all()
    );
    assert!(!r.all().contains(canary));
    assert_eq!(read(&h.config_path()), original);

    let mut h2 = Home::new();
    write_file(&h2.config_path(), &original, 0o600);
    h2.set_env("GW_TOKEN", canary);
    let r = h2.ok(&[
        "secrets",
        "migrate",
        "gateway.auth.token",
        "--to-env",
        "GW_TOKEN",
    ]);
    assert!(r.stdout.contains("env:GW_TOKEN"), "{}", r.all());
    assert!(read(&h2.config_path()).contains("token = { source = \"env\", id = \"GW_TOKEN\" }"));
    assert!(!h2.token_file().exists());

    let r = h.ok(&["secrets", "migrate"]);
    assert!(
        r.stdout
            .contains(&format!("Wrote {}", h.token_file().display())),
        "{}",
        r.all()
    );
    assert_eq!(read(&h.token_file()), format!("{canary}\n"));
    assert!(!r.all().contains(canary));
    let r = h.ok(&["secrets", "migrate"]);
    assert!(r.stdout.contains("No changes"), "{}", r.all());
    let r = h.driftless(&["secrets", "migrate", "providers.nope.api_key"], &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("secrets check"), "{}", r.all());
}

#[test]
fn open_permissions_are_tightened() {
    let h = Home::new();
    h.ok(&["init"]);
    std::fs::set_permissions(h.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(h.token_file(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = h.state().join("identity/device-tokens.json");
    write_file(&store, "{}", 0o604);
    // The gateway's device-token key (its content does not matter to doctor).
    let key = h.state().join("devices/token-key");
    write_file(&key, "not-a-real-key", 0o640);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v, "permissions").len(), 4, "{v:#}");
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("chmod 600 {}", h.token_file().display()))
    );
    assert_eq!(mode(&h.config_path()), 0o600);
    assert_eq!(mode(&h.token_file()), 0o600);
    assert_eq!(mode(&store), 0o600);
    assert_eq!(mode(&key), 0o600);
    assert!(
        h.driftless(&["doctor", "--fix"], &[])
            .stdout
            .contains("No changes")
    );
}

#[test]
fn env_and_config_tokens_that_differ_are_reported_not_fixed() {
    let mut h = Home::new();
    h.ok(&["init"]);
    let env_canary = "canary-env-token-1234";
    h.set_env("DRIFTLESS_GATEWAY_TOKEN", env_canary);
    let cfg = read(&h.config_path());
    for args in [&["doctor"][..], &["doctor", "--fix"][..]] {
        let r = h.driftless(args, &[]);
        assert_eq!(r.code, 1, "{}", r.all());
        assert!(
            r.stdout.contains("unset DRIFTLESS_GATEWAY_TOKEN"),
            "{}",
            r.all()
        );
        assert!(
            r.stdout.contains("differs from gateway.auth.token"),
            "{}",
            r.all()
        );
        assert!(!r.all().contains(env_canary));
        assert!(!r.all().contains(read(&h.token_file()).trim()));
    }
    assert_eq!(read(&h.config_path()), cfg);
}

#[test]
fn drifted_unit_is_rewritten_with_a_backup() {
    let h = Home::new();
    h.ok(&["init"]);
    h.ok(&["daemon", "install", "--no-start"]);
    let installed = read(&h.unit());
    let drifted = installed.replace("Restart=on-failure", "Restart=always");
    write_file(&h.unit(), &drifted, 0o644);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v, "unit-drift").len(), 1, "{v:#}");
    assert!(findings(&v, "unit-secret").is_empty());
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(read(&h.unit()), installed);
    let b = named_backups(&r.stdout);
    assert_eq!(b.len(), 1);
    assert_eq!(read(&b[0]), drifted);
}

/// A unit installed before `LimitNOFILE=` was part of what install writes is drift, on purpose:
/// doctor reports it and `--fix` brings the limit in.
#[test]
fn a_unit_from_before_limit_nofile_is_drift_and_fix_adds_the_limit() {
    let h = Home::new();
    h.ok(&["init"]);
    h.ok(&["daemon", "install", "--no-start"]);
    let installed = read(&h.unit());
    let old = installed.replace("LimitNOFILE=65536\n", "");
    assert_ne!(old, installed);
    write_file(&h.unit(), &old, 0o644);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(findings(&v, "unit-drift").len(), 1, "{v:#}");
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(read(&h.unit()), installed);
    assert!(read(&h.unit()).contains("\nLimitNOFILE=65536\n"));
}

#[test]
fn unknown_embedded_secret_is_reported_and_never_dropped() {
    let h = Home::new();
    h.ok(&["init"]);
    let canary = "canary-unknown-key-77";
    let unit = h.ok(&["daemon", "install", "--dry-run"]).stdout.replace(
        "Restart=on-failure",
        &format!("Restart=on-failure\nEnvironment=\"OPENAI_API_KEY={canary}\""),
    );
    write_file(&h.unit(), &unit, 0o644);
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("Environment=OPENAI_API_KEY holds a secret"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("will not drop a value it cannot keep"),
        "{}",
        r.all()
    );
    assert_eq!(read(&h.unit()), unit);
    assert!(!r.all().contains(canary));
    // And install will not overwrite it either.
    let r = h.driftless(&["daemon", "install", "--no-start"], &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("doctor --fix"), "{}", r.all());
    assert_eq!(read(&h.unit()), unit);
}

#[test]
fn copies_in_environment_files_and_arguments_are_found_by_fingerprint() {
    let h = Home::new();
    h.ok(&["init"]);
    let token = read(&h.token_file()).trim().to_owned();
    let envfile = h.home().join("gw.env");
    write_file(&envfile, &format!("INNOCENT_NAME={token}\n"), 0o600);
    let unit = h
        .ok(&["daemon", "install", "--dry-run"])
        .stdout
        .replace(
            "Restart=on-failure",
            "Restart=on-failure\nEnvironmentFile=-%h/gw.env",
        )
        .replace(" gateway run ", &format!(" gateway run --token {token} "));
    write_file(&h.unit(), &unit, 0o644);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "unit-secret");
    assert_eq!(f.len(), 2, "{v:#}");
    assert!(f.iter().any(|r| {
        r["finding"]
            .as_str()
            .unwrap()
            .contains("gw.env: INNOCENT_NAME")
    }));
    assert!(f.iter().any(|r| {
        r["finding"]
            .as_str()
            .unwrap()
            .contains("ExecStart argument --token")
    }));
    assert!(f.iter().all(|r| {
        r["finding"]
            .as_str()
            .unwrap()
            .contains("a copy of gateway.auth.token")
            || r["finding"].as_str().unwrap().contains("--token")
    }));
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!read(&h.unit()).contains(&token));
    assert!(!r.all().contains(&token));
    for b in named_backups(&r.stdout) {
        assert!(!read(&b).contains(&token));
    }
}

#[test]
fn plist_with_embedded_token_is_repaired() {
    let h = Home::new();
    write_file(&h.config_path(), "[gateway]\nport = 18789\n", 0o600);
    let canary = "canary-plist-token-31337";
    let out = h
        .cmd(BIN)
        .args(["daemon", "install", "--dry-run", "--launchd"])
        .output()
        .unwrap();
    let clean = String::from_utf8(out.stdout).unwrap();
    let seeded = clean.replace(
        "<key>DRIFTLESS_SERVICE_KIND</key>",
        &format!("<key>DRIFTLESS_GATEWAY_TOKEN</key>\n\t\t<string>{canary}</string>\n\t\t<key>DRIFTLESS_SERVICE_KIND</key>"),
    );
    assert_ne!(seeded, clean);
    write_file(&h.plist(), &seeded, 0o644);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "unit-secret");
    assert_eq!(f.len(), 1, "{v:#}");
    assert!(
        f[0]["finding"]
            .as_str()
            .unwrap()
            .contains("EnvironmentVariables.DRIFTLESS_GATEWAY_TOKEN")
    );
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(read(&h.plist()), clean);
    assert_eq!(read(&h.token_file()), format!("{canary}\n"));
    assert!(
        h.driftless(&["doctor", "--fix"], &[])
            .stdout
            .contains("No changes")
    );
    assert_eq!(h.files_containing(canary), vec![h.token_file()]);
}

#[test]
fn openclaw_installation_is_audited_and_repaired_only_on_request() {
    let h = Home::new();
    h.ok(&["init"]);
    let oc = h.home().join(".openclaw");
    let gw_canary = "canary-openclaw-gw-abcdef";
    let key_canary = "sk-canary-openclaw-key-1";
    let env_key_canary = "sk-canary-anthropic-2";
    let config = "// OpenClaw config (JSON5)\n{\n  gateway: { mode: 'local', port: 18789, },\n}\n";
    write_file(&oc.join("openclaw.json"), config, 0o600);
    let unit = format!(
        "[Unit]\nDescription=OpenClaw Gateway\n\n[Service]\nExecStart=/usr/bin/node /x/openclaw/dist/index.js gateway --port 18789\n\
         Restart=always\nEnvironment=HOME={home}\nEnvironment=OPENCLAW_GATEWAY_TOKEN={gw_canary}\nEnvironment=OPENCLAW_SERVICE_KIND=gateway\n\n\
         [Install]\nWantedBy=default.target\n",
        home = h.home().display()
    );
    let unit_path = h
        .home()
        .join(".config/systemd/user/openclaw-gateway.service");
    write_file(&unit_path, &unit, 0o644);
    let profiles = format!(
        "{{\"version\":1,\"profiles\":{{\
         \"openai:default\":{{\"type\":\"api_key\",\"provider\":\"openai\",\"key\":\"{key_canary}\"}},\
         \"anthropic:default\":{{\"type\":\"api_key\",\"provider\":\"anthropic\",\"key\":\"{env_key_canary}\"}},\
         \"kilocode:default\":{{\"type\":\"api_key\",\"provider\":\"kilocode\",\"keyRef\":{{\"source\":\"env\",\"provider\":\"default\",\"id\":\"KILOCODE_API_KEY\"}}}}}}}}"
    );
    let profiles_path = oc.join("agents/main/agent/auth-profiles.json");
    write_file(&profiles_path, &profiles, 0o644);

    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1);
    let unit_f = findings(&v, "openclaw-unit-secret");
    assert_eq!(unit_f.len(), 1, "{v:#}");
    assert!(
        unit_f[0]["finding"]
            .as_str()
            .unwrap()
            .contains("Environment=OPENCLAW_GATEWAY_TOKEN")
    );
    assert_eq!(findings(&v, "openclaw-auth-profile").len(), 2, "{v:#}");
    assert_eq!(findings(&v, "openclaw-permissions").len(), 1, "{v:#}");

    // --fix without --openclaw leaves OpenClaw's files alone.
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(read(&unit_path), unit);
    assert_eq!(read(&profiles_path), profiles);
    assert_eq!(read(&oc.join("openclaw.json")), config);

    let mut h = h;
    h.set_env("ANTHROPIC_API_KEY", env_key_canary);
    let r = h.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let all = r.all();
    for c in [gw_canary, key_canary, env_key_canary] {
        assert!(!all.contains(c), "{c} in output:\n{all}");
    }
    // The token moved into openclaw.json (persisted first), and out of the unit.
    let cfg: serde_json::Value = serde_json::from_str(&read(&oc.join("openclaw.json"))).unwrap();
    assert_eq!(cfg["gateway"]["auth"]["token"], gw_canary);
    assert_eq!(cfg["gateway"]["port"], 18789);
    let store = oc.join("secrets/driftless-auth-profiles.json");
    assert_eq!(
        cfg["secrets"]["providers"]["driftless"],
        serde_json::json!({"source": "file", "path": store.to_str().unwrap(), "mode": "json"})
    );
    let new_unit = read(&unit_path);
    assert!(!new_unit.contains(gw_canary));
    assert!(new_unit.contains("Environment=OPENCLAW_SERVICE_KIND=gateway"));
    assert!(new_unit.contains("Restart=always"));
    // Plaintext keys became refs: env where the env var already holds it, else the 0600 file.
    let p: serde_json::Value = serde_json::from_str(&read(&profiles_path)).unwrap();
    let openai = &p["profiles"]["openai:default"];
    assert!(openai.get("key").is_none());
    assert_eq!(
        openai["keyRef"],
        serde_json::json!({"source": "file", "provider": "driftless", "id": "/main/openai:default"})
    );
    assert_eq!(
        p["profiles"]["anthropic:default"]["keyRef"],
        serde_json::json!({"source": "env", "provider": "default", "id": "ANTHROPIC_API_KEY"})
    );
    assert_eq!(
        p["profiles"]["kilocode:default"]["keyRef"]["id"],
        "KILOCODE_API_KEY"
    );
    assert_eq!(mode(&profiles_path), 0o600);
    assert_eq!(mode(&store), 0o600);
    let s: serde_json::Value = serde_json::from_str(&read(&store)).unwrap();
    assert_eq!(s["main"]["openai:default"], key_canary);
    assert!(!profiles_path.with_extension("json.lock").exists());
    for b in named_backups(&r.stdout) {
        assert_eq!(mode(&b), 0o600);
        for c in [gw_canary, key_canary, env_key_canary] {
            assert!(!read(&b).contains(c), "{c} in backup {}", b.display());
        }
    }
    let again = h.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("No changes"), "{}", again.all());
    let mut holders = h.files_containing(key_canary);
    holders.sort();
    assert_eq!(holders, vec![store.clone()]);
    assert_eq!(
        h.files_containing(gw_canary),
        vec![oc.join("openclaw.json")]
    );
}

#[test]
fn unparsable_openclaw_config_is_reported_and_left_alone() {
    let h = Home::new();
    h.ok(&["init"]);
    let path = h.home().join(".openclaw/openclaw.json");
    let broken = "{\n  gateway: { port: 18789,\n  auth: { token: 'canary-oc-broken-1' }\n";
    write_file(&path, broken, 0o644);
    let r = h.driftless(&["doctor", "--fix", "--openclaw"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    // JSON5 position of the object that never closes.
    assert!(r.stdout.contains("openclaw.json:2:12:"), "{}", r.all());
    assert!(!r.all().contains("canary-oc-broken-1"));
    assert_eq!(read(&path), broken);
    assert_eq!(mode(&path), 0o644);
}

#[test]
fn a_failing_fix_keeps_earlier_changes_listed_and_loses_nothing() {
    let h = Home::new();
    let canary = "canary-conflict-literal-1";
    let original = format!("[gateway.auth]\ntoken = \"{canary}\"\n");
    write_file(&h.config_path(), &original, 0o644);
    // The file the literal would move to already holds another secret: never overwritten.
    write_file(&h.token_file(), "another-token\n", 0o600);
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 70, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("chmod 600 {}", h.config_path().display())),
        "{}",
        r.all()
    );
    assert!(
        r.stderr.contains("already holds a different secret"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("plaintext-secret"), "{}", r.all());
    assert!(!r.all().contains(canary) && !r.all().contains("another-token"));
    assert_eq!(read(&h.config_path()), original);
    assert_eq!(mode(&h.config_path()), 0o600);
    assert_eq!(read(&h.token_file()), "another-token\n");
}

#[test]
fn openclaw_env_token_that_differs_from_its_config_is_reported() {
    let mut h = Home::new();
    h.ok(&["init"]);
    let cfg_canary = "canary-oc-config-token-9";
    let env_canary = "canary-oc-env-token-8";
    let path = h.home().join(".openclaw/openclaw.json");
    let config = format!("{{ gateway: {{ auth: {{ token: '{cfg_canary}' }} }} }}\n");
    write_file(&path, &config, 0o600);
    h.set_env("OPENCLAW_GATEWAY_TOKEN", env_canary);
    let (code, v) = doctor_json(&h, &["--fix", "--openclaw"]);
    assert_eq!(code, 1, "{v:#}");
    let f = findings(&v, "openclaw-env-vs-config");
    assert_eq!(f.len(), 1, "{v:#}");
    assert!(
        f[0]["fix"]
            .as_str()
            .unwrap()
            .contains("unset OPENCLAW_GATEWAY_TOKEN")
    );
    let text = v.to_string();
    assert!(!text.contains(cfg_canary) && !text.contains(env_canary));
    assert_eq!(read(&path), config);
    h.set_env("OPENCLAW_GATEWAY_TOKEN", cfg_canary);
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn unparsable_plist_is_reported_and_never_rewritten() {
    let h = Home::new();
    h.ok(&["init"]);
    let broken = "<?xml version=\"1.0\"?><plist><dict><key>Label</key>";
    write_file(&h.plist(), broken, 0o644);
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("does not parse"), "{}", r.all());
    assert_eq!(read(&h.plist()), broken);
}

/// Runs `doctor args…` to completion within 30 s (killed and failed otherwise: it used to hang).
fn doctor_bounded(h: &Home, args: &[&str]) -> (i32, String) {
    let mut child = h
        .cmd(BIN)
        .arg("doctor")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("doctor {args:?} did not finish within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Issue 15: a unit whose `EnvironmentFile=` is a FIFO hung `doctor` for ever; one pointing at
/// `/dev/zero` read until memory ran out. Now doctor finishes with a finding that names the file
/// and what it is, and `--fix` leaves the unit as it was.
#[test]
fn an_environment_file_that_is_a_fifo_or_dev_zero_is_a_finding_not_a_hang() {
    let h = Home::new();
    h.ok(&["init"]);
    let fifo = h.root().join("gw.env");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    for (env_file, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let unit = format!(
            "[Service]\nEnvironmentFile={}\nExecStart=/usr/bin/true\n",
            env_file.display()
        );
        write_file(&h.unit(), &unit, 0o644);
        let (code, out) = doctor_bounded(&h, &["--json"]);
        assert_eq!(code, 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{out}"));
        let f = findings(&v, "unit-secret");
        let message = f
            .iter()
            .filter_map(|r| r["finding"].as_str())
            .find(|m| m.contains("cannot be scanned"))
            .unwrap_or_else(|| panic!("no unit-secret finding for {kind}: {v:#}"));
        assert!(
            message.contains(&env_file.display().to_string()) && message.contains(kind),
            "{message}"
        );
        let (_, out) = doctor_bounded(&h, &["--fix"]);
        assert_eq!(
            read(&h.unit()),
            unit,
            "doctor --fix rewrote the unit:\n{out}"
        );
    }
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .unwrap()
        .file_type()
        .is_symlink()
}

/// Moves `path` into `~/dotfiles/<name>` and leaves a symlink to it in its place, as a dotfiles
/// layout does. Returns the target.
fn link_into_dotfiles(h: &Home, path: &Path, name: &str) -> PathBuf {
    let target = h.home().join("dotfiles").join(name);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(path, &target).unwrap();
    std::os::unix::fs::symlink(&target, path).unwrap();
    target
}

/// Issue 15, finding 6: `secrets migrate` on a symlinked config rewrites the link's target and
/// keeps the link, so the plaintext token does not stay behind in the target; it says so, and
/// doctor then reports the link and is clean.
#[test]
fn secrets_migrate_through_a_symlinked_config_updates_its_target() {
    let h = Home::new();
    let canary = "canary-symlinked-config-5150";
    write_file(
        &h.config_path(),
        &format!("# dotfiles\n[gateway.auth]\ntoken = \"{canary}\"\n"),
        0o600,
    );
    let target = link_into_dotfiles(&h, &h.config_path(), "driftless.toml");

    let r = h.ok(&["secrets", "migrate"]);
    assert!(!r.all().contains(canary), "{}", r.all());
    assert!(
        is_symlink(&h.config_path()),
        "the link was replaced by a file"
    );
    assert!(
        r.stdout.contains(&format!(
            "is a symlink; its target {} was updated",
            target.display()
        )),
        "{}",
        r.all()
    );
    let text = read(&target);
    assert!(
        text.contains("# dotfiles") && !text.contains(canary),
        "{text}"
    );
    assert!(text.contains("source = \"file\""), "{text}");
    assert_eq!(h.files_containing(canary), vec![h.token_file()]);

    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 0, "{v:#}");
    let links: Vec<&serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["check"] == "symlink")
        .collect();
    assert_eq!(links.len(), 1, "{v:#}");
    let finding = links[0]["finding"].as_str().unwrap();
    assert!(
        finding.contains(&h.config_path().display().to_string())
            && finding.contains(&target.display().to_string()),
        "{finding}"
    );
}

/// Issue 15, finding 6: `token rotate` on a symlinked token file writes the new token into the
/// shared target (the old token does not linger there), keeps the link, and names the target.
#[test]
fn token_rotate_through_a_symlinked_token_file_updates_the_shared_target() {
    let h = Home::new();
    h.ok(&["init"]);
    let old = read(&h.token_file());
    let target = link_into_dotfiles(&h, &h.token_file(), "gateway-token");
    // No gateway runs: the rotation is written and the command says nobody confirmed it.
    let r = h.driftless(&["token", "rotate"], &[]);
    assert!(
        r.stdout
            .contains(&format!("its target {} was updated", target.display())),
        "{}",
        r.all()
    );
    assert!(
        is_symlink(&h.token_file()),
        "the link was replaced by a file"
    );
    let new = read(&target);
    assert_ne!(new, old);
    assert_eq!(new.trim().len(), old.trim().len());
    assert!(h.files_containing(old.trim()).is_empty());
    assert_eq!(mode(&target), 0o600);
}

/// Issue 15, finding 6: a config that is a symlink to a file others can read is reported with its
/// target, and `--fix` names the target it chmods (it used to name only the link).
#[test]
fn doctor_names_the_symlink_target_it_reports_and_chmods() {
    let h = Home::new();
    h.ok(&["init"]);
    let target = link_into_dotfiles(&h, &h.config_path(), "driftless.toml");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1, "{v:#}");
    let f = findings(&v, "permissions");
    assert_eq!(f.len(), 1, "{v:#}");
    assert!(
        f[0]["finding"]
            .as_str()
            .unwrap()
            .contains(&format!("(a symlink to {})", target.display())),
        "{v:#}"
    );
    assert_eq!(f[0]["fix"], format!("chmod 600 {}", target.display()));
    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains(&format!(
            "chmod 600 {} (the target of the symlink {})",
            target.display(),
            h.config_path().display()
        )),
        "{}",
        r.all()
    );
    assert_eq!(mode(&target), 0o600);
    assert!(is_symlink(&h.config_path()));
}

/// Issue 15, finding 7: a temp file a killed write left behind (0600, holding a key) is reported
/// without its contents and deleted by `--fix`; one younger than a minute may belong to a write in
/// progress and is left alone.
#[test]
fn doctor_reports_and_removes_orphaned_temp_files() {
    let h = Home::new();
    h.ok(&["init"]);
    let canary = "canary-orphaned-temp-key-31337";
    let dir = h.token_file().parent().unwrap().to_owned();
    let orphan = dir.join(".driftless-Xy12Ab.tmp");
    write_file(&orphan, &format!("{canary}\n"), 0o600);
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let in_progress = h
        .config_path()
        .parent()
        .unwrap()
        .join(".driftless-Qq98Zz.tmp");
    write_file(&in_progress, "being written", 0o600);

    let (code, v) = doctor_json(&h, &[]);
    assert_eq!(code, 1, "{v:#}");
    let f = findings(&v, "temp-file");
    assert_eq!(f.len(), 1, "{v:#}");
    assert!(
        f[0]["finding"]
            .as_str()
            .unwrap()
            .contains(&orphan.display().to_string()),
        "{v:#}"
    );
    assert!(!v.to_string().contains(canary));

    let r = h.driftless(&["doctor", "--fix"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(canary));
    assert!(
        r.stdout.contains(&format!("deleted {}", orphan.display())),
        "{}",
        r.all()
    );
    assert!(!orphan.exists());
    assert!(in_progress.exists());
    assert!(h.files_containing(canary).is_empty());
    assert!(
        h.driftless(&["doctor", "--fix"], &[])
            .stdout
            .contains("No changes")
    );
}

/// The `ini` blocks of docs/service.md's front-mode section, as (path under
/// `~/.config/systemd/user/`, text), from each block's first line `# ~/.config/systemd/user/<path>`.
fn documented_units() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(support::workspace_root().join("docs/service.md")).unwrap();
    let section = doc
        .split_once("## In front of OpenClaw")
        .expect("docs/service.md has the front-mode section")
        .1;
    let mut units = Vec::new();
    let mut block: Option<(String, String)> = None;
    for line in section.lines().map(str::trim_start) {
        match (&mut block, line) {
            (None, "```ini") => block = Some((String::new(), String::new())),
            (Some(_), "```") => units.push(block.take().unwrap()),
            (Some((path, text)), l) => match l.strip_prefix("# ~/.config/systemd/user/") {
                Some(p) if text.is_empty() => *path = p.to_owned(),
                _ => {
                    text.push_str(l);
                    text.push('\n');
                }
            },
            (None, _) => {}
        }
    }
    units
}

/// docs/service.md's two user units for front mode (OpenClaw's, written by hand, and the drop-in
/// that orders driftless's after it), beside the unit `daemon install` writes, pass the real
/// `systemd-analyze --user verify` as they would be installed. The only change to the documented
/// text: OpenClaw's `ExecStart=` binary is a stand-in executable (verify checks that it exists;
/// where OpenClaw is installed differs per machine).
#[test]
fn the_documented_front_mode_units_pass_systemd_analyze_verify() {
    let h = Home::new();
    h.ok(&["init"]);
    let units = documented_units();
    let names: Vec<&str> = units.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "openclaw-gateway.service",
            "driftless-gateway.service.d/upstream.conf"
        ]
    );
    let stand_in = h.root().join("bin/openclaw");
    write_file(&stand_in, "#!/bin/sh\nexit 0\n", 0o755);
    let dir = h.config_dir().join("systemd/user");
    for (path, text) in &units {
        let text = text.replace("/usr/local/bin/openclaw", stand_in.to_str().unwrap());
        write_file(&dir.join(path), &text, 0o644);
    }
    let driftless_unit = h.ok(&["daemon", "install", "--dry-run"]).stdout;
    write_file(
        &dir.join("driftless-gateway.service"),
        &driftless_unit,
        0o644,
    );
    let verify_both = || {
        let out = h
            .cmd("systemd-analyze")
            .args(["--user", "verify", "--man=no"])
            .arg(dir.join("openclaw-gateway.service"))
            .arg(dir.join("driftless-gateway.service"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = verify_both();
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    // Control: the drop-in is read with the unit (a mistake in it is reported), so the clean
    // result above covers it too.
    let drop_in = dir.join("driftless-gateway.service.d/upstream.conf");
    let text = read(&drop_in);
    write_file(&drop_in, &text.replace("Wants=", "Wantz="), 0o644);
    let (_, stderr) = verify_both();
    assert!(
        stderr.contains("Wantz"),
        "a broken drop-in went unnoticed:\n{stderr}"
    );
}
