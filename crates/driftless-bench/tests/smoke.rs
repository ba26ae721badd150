//! `driftless-bench --smoke` against the real `driftless` binary and the bench's own floor server,
//! so the bench cannot rot.
//!
//! The `driftless` binary belongs to another package, so Cargo gives this test no
//! `CARGO_BIN_EXE_driftless`: the test builds it with the same cargo and profile into the same
//! target directory (a no-op when it is fresh). `DRIFTLESS_BIN` overrides the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use driftless_core::Env;
use serde_json::Value;

fn driftless_bin(env: &Env) -> PathBuf {
    if let Some(bin) = env.non_empty("DRIFTLESS_BIN") {
        return PathBuf::from(bin);
    }
    // This test runs from <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "-p", "driftless", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("target directory"));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build -p driftless");
    assert!(
        status.success(),
        "cargo build -p driftless failed: {status}"
    );
    profile_dir.join("driftless")
}

#[test]
fn smoke_mode_measures_every_scenario_against_the_real_gateway() {
    let env = Env::from_process();
    let bin = driftless_bin(&env);
    assert!(bin.is_file(), "{} was not built", bin.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("results.json");

    let out = Command::new(env!("CARGO_BIN_EXE_driftless-bench"))
        .arg("--smoke")
        .arg("--driftless-bin")
        .arg(&bin)
        .arg("--json")
        .arg(&json_path)
        .current_dir(dir.path())
        .output()
        .expect("running driftless-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "driftless-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| metric") && stdout.contains("handshake c=1: sessions/s"),
        "no results table on stdout:\n{stdout}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("results JSON written"))
            .expect("results are JSON");
    assert_eq!(report["smoke"], true);
    let d = &report["driftless"];
    assert_eq!(
        d["unavailable"],
        Value::Null,
        "driftless did not start: {d}"
    );
    assert_eq!(
        d["failures"],
        serde_json::json!([]),
        "scenarios failed: {d}"
    );
    // The peer is never started in smoke mode, and the report says why.
    assert!(
        report["openclaw"]["unavailable"]
            .as_str()
            .is_some_and(|why| why.contains("not requested")),
        "{}",
        report["openclaw"]
    );

    let startup = &d["startup"];
    assert!(
        startup["first_session_ms"].as_f64().unwrap() >= startup["readyz_ms"].as_f64().unwrap()
    );
    assert!(startup["base_rss_kib"].as_u64().unwrap() > 0);

    let handshakes = d["handshake"].as_array().expect("handshake runs");
    assert_eq!(handshakes.len(), 4);
    assert_eq!(handshakes[2]["signed_device"], true);
    assert_eq!(handshakes[2]["device_token"], false);
    assert_eq!(handshakes[3]["signed_device"], true);
    assert_eq!(handshakes[3]["device_token"], true);
    for h in handshakes {
        assert!(h["sessions"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["errors"], serde_json::json!({}), "{h}");
        assert!(h["server_cpu_ms_per_session"].as_f64().unwrap() >= 0.0);
        let latency = &h["latency"];
        assert!(latency["p50_ms"].as_f64().unwrap() <= latency["max_ms"].as_f64().unwrap());
    }

    let idle = &d["idle"][0];
    assert_eq!(idle["held"], idle["target"], "{idle}");
    assert_eq!(idle["closed_by_server"], 0, "{idle}");
    assert!(idle["rss_after_kib"].as_u64().unwrap() > 0);

    // Streamed completions through the OpenAI-compatible endpoint and directly, all complete.
    let proxy = &d["proxy"][0];
    for side in ["direct", "gateway"] {
        assert!(proxy[side]["completions"].as_u64().unwrap() > 0, "{proxy}");
        assert_eq!(proxy[side]["errors"], 0, "{proxy}");
    }
    assert!(proxy["throughput_ratio"].as_f64().unwrap() > 0.0, "{proxy}");
    assert!(
        stdout.contains("proxy c=2: added latency p50 (ms)"),
        "no proxy rows in the table:\n{stdout}"
    );

    // The floor: driftless and the minimal same-stack server, alternating, token sessions only.
    let floor = &report["floor"];
    assert_eq!(
        floor["unavailable"],
        Value::Null,
        "the floor did not start: {floor}"
    );
    assert_eq!(floor["failures"], serde_json::json!([]), "{floor}");
    let rounds = floor["rounds"].as_u64().unwrap() as usize;
    assert!(rounds >= 2, "{floor}");
    let comparisons = floor["comparisons"].as_array().expect("floor comparisons");
    let concurrencies: Vec<u64> = comparisons
        .iter()
        .map(|c| c["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrencies, [1, 8], "{floor}");
    for c in comparisons {
        for side in ["driftless_runs", "floor_runs"] {
            let runs = c[side].as_array().unwrap();
            assert_eq!(runs.len(), rounds, "{side}: {c}");
            for h in runs {
                assert!(h["sessions"].as_u64().unwrap() > 0, "{side}: {h}");
                assert_eq!(h["errors"], serde_json::json!({}), "{side}: {h}");
            }
        }
        for figure in ["driftless_cpu_ms_per_session", "floor_cpu_ms_per_session"] {
            assert!(c[figure].as_f64().unwrap() >= 0.0, "{figure}: {c}");
        }
    }
    assert!(
        stdout.contains("driftless ÷ floor")
            && stdout.contains("floor c=8: server CPU per session (ms), median of"),
        "no floor column or rows in the table:\n{stdout}"
    );

    let rotation = &d["rotation"];
    assert!(rotation["rotations"].as_u64().unwrap() >= 4, "{rotation}");
    assert!(rotation["sessions_ok"].as_u64().unwrap() > 0, "{rotation}");
    // Every rotated token was accepted, no session failed (the gateway re-reads a rotated token
    // file on a mismatch) and no authenticated session was cut by a rotation: the targets.
    assert_eq!(rotation["not_propagated"], 0, "{rotation}");
    assert_eq!(rotation["failed_total"], 0, "{rotation}");
    assert_eq!(rotation["dropped_after_auth"], 0, "{rotation}");
}

#[test]
fn fleet_smoke_mode_runs_every_handshake_kind_on_one_and_three_replicas() {
    let env = Env::from_process();
    let bin = driftless_bin(&env);
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("fleet.json");

    let out = Command::new(env!("CARGO_BIN_EXE_driftless-bench"))
        .args(["fleet", "--smoke", "--replicas", "1,3", "--driftless-bin"])
        .arg(&bin)
        .arg("--json")
        .arg(&json_path)
        .current_dir(dir.path())
        .output()
        .expect("running driftless-bench fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("results JSON written"))
            .expect("results are JSON");
    if report["unavailable"]
        .as_str()
        .is_some_and(|why| why.contains("PostgreSQL is not installed"))
        && env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1")
    {
        eprintln!("skipping: {}", report["unavailable"]);
        return;
    }
    assert!(
        out.status.success(),
        "driftless-bench fleet --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(report["smoke"], true);
    assert_eq!(report["unavailable"], Value::Null, "{report}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    assert!(report["postgres_version"].is_string(), "{report}");

    let runs = report["runs"].as_array().expect("fleet runs");
    let kinds = [
        "shared token",
        "signed device + shared token (paired)",
        "signed device + device token",
        "new device pairing",
        "wrong shared token",
    ];
    let seen: Vec<(u64, &str)> = runs
        .iter()
        .map(|r| (r["replicas"].as_u64().unwrap(), r["kind"].as_str().unwrap()))
        .collect();
    let expected: Vec<(u64, &str)> = [1, 3]
        .into_iter()
        .flat_map(|n| kinds.map(|k| (n, k)))
        .collect();
    assert_eq!(seen, expected);
    for r in runs {
        let h = &r["handshake"];
        // For the wrong token, a session completes when it is refused as a mismatch.
        assert!(h["sessions"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(h["errors"], serde_json::json!({}), "{r}");
        for figure in [
            "statements",
            "commits",
            "rows_written",
            "wal_bytes",
            "cpu_ms",
        ] {
            assert!(r["db_per_session"][figure].as_f64().unwrap() >= 0.0, "{r}");
        }
        // Every pairing writes: the database's statistics reach the report.
        if r["kind"] == "new device pairing" {
            assert!(r["db"]["statements"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["db"]["wal_bytes"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    assert!(
        stdout.contains("| handshake kind") && stdout.contains("| new device pairing"),
        "no results table on stdout:\n{stdout}"
    );
}
