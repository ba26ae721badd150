//! End-to-end regressions for the client side (issue 15: 5, 9, 11; issue 12: 7), on the real
//! binary and real sockets.

mod support;

use std::process::Stdio;

use support::{Gateway, Home};

/// The XDG spec says a relative `XDG_*_HOME` is invalid and must be ignored. A relative state dir
/// used to end up in config as a relative token path, which the next start (from another working
/// directory, or resolved against the config's directory) could not find.
#[test]
fn a_relative_xdg_dir_is_ignored() {
    let home = Home::new();
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = home
        .command()
        .current_dir(&work)
        .env("XDG_STATE_HOME", "relstate")
        .env("XDG_CONFIG_HOME", "relcfg")
        .args(["init"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = home.path().join(".config/driftless/config.toml");
    let token = home
        .path()
        .join(".local/state/driftless/secrets/gateway-token");
    let text = std::fs::read_to_string(&config).expect("config under ~/.config");
    assert!(
        text.contains(token.to_str().unwrap()),
        "the token path in config is absolute, under ~/.local/state:\n{text}"
    );
    assert!(token.is_file());
    assert!(!work.join("relstate").exists() && !work.join("relcfg").exists());
    // The next run, from another directory, resolves it.
    let out = home
        .command()
        .current_dir(home.path())
        .env("XDG_STATE_HOME", "relstate")
        .env("XDG_CONFIG_HOME", "relcfg")
        .args(["secrets", "check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// What the stand-in gateway below does after the challenge.
#[derive(Clone, Copy)]
enum Peer {
    /// Reads `connect`, never answers it, and sends a `tick` every second.
    NeverHello,
    /// Answers `connect` with a minimal hello-ok, then never answers a request and ticks every second.
    SilentAfterHello,
    /// Answers the first `n` connects `UNAVAILABLE` with `retryAfterMs: 300` and closes 1013, as
    /// OpenClaw does while it starts; then hello-ok, and answers `health` with `{ok: true}`.
    StartingFor(usize),
}

/// A WebSocket server on a real loopback socket, standing in for a gateway whose behaviour no real
/// one shows on demand (a tick stream with no answer; a start-up window). Runs on its own thread
/// and runtime; records every `connect` params object it receives.
struct StandIn {
    url: String,
    connects: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl StandIn {
    fn start(peer: Peer) -> StandIn {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let connects = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = connects.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (seen, attempts) = (seen.clone(), attempts.clone());
                    tokio::spawn(async move {
                        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                        let challenge = serde_json::json!({"type": "event", "event": "connect.challenge",
                            "payload": {"nonce": "stand-in-nonce", "ts": 1}});
                        ws.send(Message::text(challenge.to_string())).await.unwrap();
                        let Some(Ok(Message::Text(text))) = ws.next().await else {
                            return;
                        };
                        let req: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                        seen.lock().unwrap().push(req["params"].clone());
                        let id = req["id"].clone();
                        let hello = serde_json::json!({"type": "res", "id": id, "ok": true,
                            "payload": {"type": "hello-ok", "protocol": 4,
                                "server": {"version": "2026.9.6"}, "features": {"methods": [], "events": []},
                                "snapshot": {"uptimeMs": 47599}, "policy": {}}});
                        match peer {
                            Peer::NeverHello => {}
                            Peer::SilentAfterHello => {
                                ws.send(Message::text(hello.to_string())).await.unwrap();
                            }
                            Peer::StartingFor(n) => {
                                if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                                    let e = serde_json::json!({"type": "res", "id": id, "ok": false,
                                        "error": {"code": "UNAVAILABLE", "message": "gateway starting",
                                            "retryable": true, "retryAfterMs": 300,
                                            "details": {"reason": "startup-sidecars"}}});
                                    let _ = ws.send(Message::text(e.to_string())).await;
                                    let _ = ws
                                        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                            code: 1013.into(),
                                            reason: "gateway starting".into(),
                                        }))
                                        .await;
                                    return;
                                }
                                ws.send(Message::text(hello.to_string())).await.unwrap();
                                while let Some(Ok(Message::Text(t))) = ws.next().await {
                                    let req: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                                    // OpenClaw 2026.9.6's payloads (shared design, openclaw-protocol.md 3.4).
                                    let payload = if req["method"] == "status" {
                                        serde_json::json!({"heartbeat": {"defaultAgentId": "main", "agents": []},
                                            "channelSummary": [], "queuedSystemEvents": [],
                                            "sessions": {"paths": [], "count": 0, "recent": []}})
                                    } else {
                                        serde_json::json!({"ok": true, "ts": 1795421902987u64, "durationMs": 10})
                                    };
                                    let res = serde_json::json!({"type": "res", "id": req["id"], "ok": true,
                                        "payload": payload});
                                    ws.send(Message::text(res.to_string())).await.unwrap();
                                }
                                return;
                            }
                        }
                        // Tick forever, answer nothing.
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            let tick = serde_json::json!({"type": "event", "event": "tick", "payload": {"ts": 1}});
                            if ws.send(Message::text(tick.to_string())).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        });
        StandIn { url, connects }
    }
}

/// Issue 15 #5: `--timeout` bounds the whole exchange. A server that ticks every second and never
/// answers used to reset the per-frame wait forever (`Home::run` gives up after 30 s).
#[test]
fn gateway_health_timeout_covers_the_whole_exchange() {
    for peer in [Peer::NeverHello, Peer::SilentAfterHello] {
        let server = StandIn::start(peer);
        let home = Home::new();
        let (status, _, stderr) = home.run(&[
            "gateway",
            "health",
            "--url",
            &server.url,
            "--token",
            "x-token",
            "--timeout",
            "3",
        ]);
        assert_eq!(status.code(), Some(69), "{stderr}");
        assert!(stderr.contains("timed out"), "{stderr}");
    }
}

/// Issue 15 #5: doctor's device-token probe (5 s) ends against the same server.
#[test]
fn doctors_device_token_probe_ends_against_a_ticking_server() {
    let server = StandIn::start(Peer::NeverHello);
    let home = Home::new();
    let state = home.state();
    let identity = driftless_client::identity::DeviceIdentity::load_or_create(&state).unwrap();
    let mut store =
        driftless_client::store::TokenStore::load(&state, identity.device_id()).unwrap();
    store
        .put(
            &server.url,
            "operator",
            driftless_core::SecretValue::new("stored-device-token".into()),
            vec!["operator.read".into()],
        )
        .unwrap();
    let (_, stdout, stderr) = home.run(&["doctor"]);
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("timed out"), "{all}");
}

/// Issue 15 #11: with no credential at all, `auth` is omitted (OpenClaw refuses `"auth": null`).
#[test]
fn no_credential_omits_auth() {
    let server = StandIn::start(Peer::NeverHello);
    let home = Home::new();
    let (status, _, stderr) =
        home.run(&["gateway", "health", "--url", &server.url, "--timeout", "2"]);
    assert_eq!(status.code(), Some(69), "{stderr}");
    let connects = server.connects.lock().unwrap();
    assert_eq!(connects.len(), 1);
    assert!(
        connects[0].get("auth").is_none(),
        "auth must be absent, not null: {}",
        connects[0]
    );
}

/// Issue 15 #11: `UNAVAILABLE` with `retryAfterMs` (a gateway starting) is retried within the
/// timeout, not given up at once.
#[test]
fn unavailable_with_retry_after_is_retried() {
    let server = StandIn::start(Peer::StartingFor(2));
    let home = Home::new();
    let (status, stdout, stderr) = home.run(&[
        "gateway",
        "health",
        "--url",
        &server.url,
        "--token",
        "x-token",
        "--timeout",
        "10",
    ]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(server.connects.lock().unwrap().len(), 3);
    // And a timeout too short for the wait gives up with the gateway's answer.
    let server = StandIn::start(Peer::StartingFor(100));
    let (status, _, stderr) = home.run(&[
        "gateway",
        "health",
        "--url",
        &server.url,
        "--token",
        "x-token",
        "--timeout",
        "1",
    ]);
    assert_ne!(status.code(), Some(0));
    assert!(stderr.contains("gateway starting"), "{stderr}");
}

/// Issue 15 #9: a password in `--url` never comes back in an error.
#[test]
fn a_password_in_the_url_is_never_echoed() {
    const PASS: &str = "url-pass-canary-73a1";
    let home = Home::new();
    for url in [
        format!("ws://user:{PASS}@127.0.0.1:9"),
        format!("ws://user:{PASS}@"),
        format!("ftp://user:{PASS}@127.0.0.1:9"),
    ] {
        for cmd in [
            &["gateway", "health", "--url", &url][..],
            &["credentials", "explain", "--url", &url][..],
        ] {
            let (status, stdout, stderr) = home.run(cmd);
            assert_ne!(status.code(), Some(0));
            assert!(
                !stdout.contains(PASS) && !stderr.contains(PASS),
                "{cmd:?}: {stdout}{stderr}"
            );
            assert!(
                stderr.contains("127.0.0.1") || stderr.contains("URL"),
                "{stderr}"
            );
        }
    }
}

/// Issue 12 #7: a closed stdout (`driftless … | head`) ends the command quietly with exit 0. The
/// read end of the pipe is closed before the process starts, so every write fails with EPIPE.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let home = Home::new();
    let (status, _, stderr) = home.run(&["init"]);
    assert!(status.success(), "{stderr}");
    for args in [
        &["credentials", "explain"][..],
        &["credentials", "explain", "--json"][..],
        &["config", "show"][..],
        &["secrets", "check"][..],
        &["--help"][..],
        &["--version"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = home
            .command()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// Issue 15 #11: `gateway status`/`health` print OpenClaw's payloads sensibly: no `null`, no
/// `uptime 0s`; the version and uptime come from its hello-ok.
#[test]
fn status_and_health_print_openclaw_payloads() {
    let server = StandIn::start(Peer::StartingFor(0));
    let home = Home::new();
    let (status, stdout, stderr) = home.run(&[
        "gateway",
        "status",
        "--url",
        &server.url,
        "--token",
        "x-token",
    ]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !stdout.contains("null") && !stdout.contains(" 0s"),
        "{stdout}"
    );
    assert!(stdout.contains("version      2026.9.6"), "{stdout}");
    assert!(stdout.contains("uptime       47s"), "{stdout}");
    assert!(stdout.contains("sessions     0"), "{stdout}");
    let (status, stdout, stderr) = home.run(&[
        "gateway",
        "health",
        "--url",
        &server.url,
        "--token",
        "x-token",
    ]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "ok: the gateway is healthy (version 2026.9.6, uptime 47s)"
    );
}

/// Issue 15 #9 and #11: two `token rotate` runs at once serialize on a lock (the second says it
/// waits, then rotates again) instead of one waiting 10 s and blaming "a different token source";
/// the grace end is printed for a person (RFC 3339 and relative), not in unix ms.
#[test]
fn concurrent_token_rotations_serialize_and_print_human_times() {
    let home = Home::new();
    home.token_config(support::CANARY, "");
    let cfg = std::fs::read_to_string(home.config_path()).unwrap();
    let gw = Gateway::start_pinned(&home, |port| {
        home.write_config(&cfg.replace("port = 0", &format!("port = {port}")))
    });
    let spawn = || {
        home.command()
            .args(["token", "rotate"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs: Vec<_> = (0..3).map(|_| spawn()).collect();
    let outs: Vec<_> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut waited = 0;
    for out in &outs {
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(!stderr.contains("different token source"), "{stderr}");
        assert!(!stdout.contains("unix ms"), "{stdout}");
        assert!(
            stdout.contains("the old one works until 20") && stdout.contains("(in "),
            "{stdout}"
        );
        support::assert_no_canary(&stdout, "token rotate output");
        if stderr.contains("another `driftless token rotate` is running") {
            waited += 1;
        }
    }
    assert!(waited >= 1, "no run said it waited for another");
    // The token on disk is the one the gateway accepts.
    let token = std::fs::read_to_string(home.path().join("secrets/token")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(support::accepted(&gw.url, token.trim_end())));
    gw.finish();
}
