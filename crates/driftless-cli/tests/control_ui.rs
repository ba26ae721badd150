//! OpenClaw's own Control UI through driftless (issue #13, item 3), in a real headless Chromium
//! driven over WebDriver by Debian's `chromedriver`: the real OpenClaw 2026.9.6 gateway on
//! loopback behind the real `driftless gateway run`, which relays its HTTP surface (the UI's page
//! and assets) and runs its own handshake for the UI's WebSocket.
//!
//! Two browser profiles (separate user-data-dirs, so separate device keys in localStorage):
//! profile 1 on 127.0.0.1 (local: paired silently), profile 2 through a TCP forwarder whose
//! connections to driftless come from 127.0.0.2, which the config does not count as this machine
//! (`gateway.devices.local_addresses`), so it plays a browser on another host; its page's origin
//! is allowed by `gateway.allowed_origins`.
//!
//! Skipped with a printed reason when OpenClaw, `chromium` or `chromedriver` is not installed,
//! failed instead under `DRIFTLESS_REQUIRE_TOOLS=1`. On failure the screenshots and page texts
//! of both profiles are kept under `target/tmp/control-ui-artifacts/` (the path is printed).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};
use support::openclaw::{OPENCLAW_START_WITHIN, OpenClawGateway, install};
use support::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// OpenClaw's own token: only driftless (by reference) and OpenClaw hold it.
const UPSTREAM: &str = "canary-upstream-openclaw-token-c7a1";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show what the test waits for (the UI is 56 MB of assets, loaded
/// through two relays on a loaded 2-core machine).
const PAGE_WITHIN: Duration = Duration::from_secs(240);

/// The system's Chromium and its driver, or `None` (skipped) when either is missing.
fn chromium() -> Option<()> {
    if Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file() {
        return Some(());
    }
    let env = driftless_core::Env::from_process();
    assert!(
        env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
        "DRIFTLESS_REQUIRE_TOOLS=1 but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    );
    eprintln!(
        "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)"
    );
    None
}

/// The system's `chromedriver` on a free loopback port, killed with the test.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(dir: &Path) -> Driver {
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let up = eventually(Duration::from_secs(30), || async move {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "chromedriver did not listen on {port} within 30 s");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium with its own profile folder (its own localStorage, so its own device).
    async fn browser(&self, profile: &Path) -> Browser {
        let args = [
            "--headless=new".to_owned(),
            // The tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--window-size=1400,1000".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder on 127.0.0.1 whose connections to `to` leave from 127.0.0.2: a browser on
/// this machine that driftless sees as another host. Returns its port.
async fn forward_from_127_0_0_2(listener: TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let Ok(mut gateway) = socket.connect(to).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut gateway).await;
        });
    }
}

/// Whether `GET /` on `port` answers OpenClaw's Control UI page.
fn serves_ui(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut page = String::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut page).is_ok()
        && page.starts_with("HTTP/1.1 200")
        && page.contains("<title>OpenClaw Control</title>")
}

/// The page's visible text.
async fn text(b: &Browser) -> String {
    b.execute(
        "return document.body ? document.body.innerText : ''",
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_str().map(str::to_owned))
    .unwrap_or_default()
}

/// Waits until the page's text contains `needle`; returns the text.
async fn wait_text(b: &Browser, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + PAGE_WITHIN;
    loop {
        let t = text(b).await;
        if t.contains(needle) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {needle:?} within {PAGE_WITHIN:?}; it shows:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Enters the gateway secret in the UI's login gate and clicks Connect.
async fn log_in(b: &Browser, secret: &str) {
    let field = b
        .wait()
        .at_most(PAGE_WITHIN)
        .for_element(Locator::Css("#login-gate-credential"))
        .await
        .expect("the UI's login gate (Gateway secret)");
    field.send_keys(secret).await.unwrap();
    connect(b).await;
}

async fn connect(b: &Browser) {
    b.find(Locator::Css("button.login-gate__connect"))
        .await
        .expect("the login gate's Connect button")
        .click()
        .await
        .unwrap();
}

/// The device id the UI keeps in this profile's localStorage (its pure-JS Ed25519 identity).
async fn device_id(b: &Browser) -> String {
    let v = b
        .execute(
            "return localStorage.getItem('openclaw-device-identity-v1')",
            vec![],
        )
        .await
        .unwrap();
    let stored: Value =
        serde_json::from_str(v.as_str().expect("a stored device identity")).unwrap();
    stored["deviceId"]
        .as_str()
        .expect("deviceId in the stored identity")
        .to_owned()
}

/// Keeps both profiles' screenshots and texts under the artifacts folder; returns its path.
async fn keep_artifacts(browsers: &[(&str, &Browser)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("control-ui-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, b) in browsers {
        if let Ok(png) = b.screenshot().await {
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
        std::fs::write(dir.join(format!("{name}.txt")), text(b).await).unwrap();
    }
    dir
}

/// driftless in front of OpenClaw; `fwd_port` is the forwarder's, whose page origin is allowed.
fn front_config(home: &Home, openclaw: &OpenClawGateway, fwd_port: u16) {
    let token = home.token_config(CANARY, "");
    let upstream_token = home.path().join("openclaw/token");
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\nallowed_origins = [\"http://127.0.0.1:{fwd_port}\"]\n\
         [gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n\
         [gateway.devices]\nlocal_addresses = [\"127.0.0.1\"]\n\
         [upstream]\nurl = \"{}\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        token.to_str().unwrap(),
        openclaw.url,
        upstream_token.to_str().unwrap(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_ui_connects_through_driftless_and_approves_a_remote_browser() {
    let (Some(cli), Some(())) = (install(), chromium()) else {
        return;
    };
    let home = Home::new();
    let oc_dir = home.path().join("openclaw");
    write_secret(&oc_dir.join("token"), UPSTREAM);
    let openclaw = OpenClawGateway::start(&cli, &oc_dir, stable_port(), &oc_dir.join("token"));
    let forwarder = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd_port = forwarder.local_addr().unwrap().port();
    front_config(&home, &openclaw, fwd_port);
    let gw = Gateway::start(&home, &[], &[]);
    let gw_addr: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    tokio::spawn(forward_from_127_0_0_2(forwarder, gw_addr));
    // OpenClaw serves its UI once it listens.
    let port = gw.port;
    let serving = eventually(OPENCLAW_START_WITHIN, || async move {
        tokio::task::spawn_blocking(move || serves_ui(port))
            .await
            .unwrap()
    })
    .await;
    assert!(
        serving,
        "OpenClaw's UI was not served through driftless within {OPENCLAW_START_WITHIN:?}"
    );

    let driver = Driver::start(home.root()).await;
    let p1 = driver.browser(&home.root().join("profile-1")).await;
    let p2 = driver.browser(&home.root().join("profile-2")).await;
    let local = format!("http://127.0.0.1:{}", gw.port);
    let remote = format!("http://127.0.0.1:{fwd_port}");

    let flow = async {
        // Profile 1, on this machine: the UI's page comes from OpenClaw through driftless; the
        // gateway secret is driftless's; the browser's new device is paired silently.
        p1.goto(&format!("{local}/")).await.unwrap();
        log_in(&p1, CANARY).await;
        wait_text(&p1, "Connected").await;
        // OpenClaw's data: its devices panel lists OpenClaw's own gateway host (its presence),
        // and the UI's requests reached OpenClaw through driftless.
        p1.goto(&format!("{local}/settings/devices")).await.unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let panel = wait_text(&p1, "Paired devices").await;
        assert!(panel.contains("2026.9.6"), "OpenClaw's version:\n{panel}");
        wait_text(&p1, &format!("{}\ngateway", host.trim())).await;
        let seen = openclaw.requests_seen();
        for method in ["config.get", "agents.list", "sessions.list"] {
            assert!(
                seen.iter().any(|m| m == method),
                "{method} never reached OpenClaw: {seen:?}"
            );
        }
        // driftless answered the panel's devices list itself: OpenClaw never saw it.
        assert!(
            !seen.iter().any(|m| m.starts_with("device.pair")),
            "{seen:?}"
        );

        // Profile 2, "another host": authenticated, but its new device needs approval.
        p2.goto(&format!("{remote}/")).await.unwrap();
        log_in(&p2, CANARY).await;
        let asked = wait_text(&p2, "Approve this browser").await;
        let remote_device = device_id(&p2).await;
        let list = home.ok(&["devices", "list", "--url", &gw.url, "--json"]);
        let list: Value = serde_json::from_str(&list.stdout).unwrap();
        let pending = list["pending"].as_array().unwrap();
        assert_eq!(pending.len(), 1, "{list}");
        assert_eq!(pending[0]["deviceId"], remote_device.as_str(), "{list}");
        assert_eq!(pending[0]["remoteIp"], "127.0.0.2", "{list}");
        let request_id = pending[0]["requestId"].as_str().unwrap();
        assert!(
            asked.contains(request_id),
            "driftless's request id on the page:\n{asked}"
        );

        // Profile 1's devices panel shows the request (driftless's `device.pair.list` and its
        // `device.pair.requested` event) and approves it with a click.
        p1.refresh().await.unwrap();
        wait_text(&p1, &remote_device).await;
        p1.find(Locator::XPath("//button[normalize-space()='Approve']"))
            .await
            .expect("an Approve button in the devices panel")
            .click()
            .await
            .unwrap();
        let approved = eventually(PAGE_WITHIN, || async {
            let list = home.ok(&["devices", "list", "--url", &gw.url, "--json"]);
            let list: Value = serde_json::from_str(&list.stdout).unwrap();
            list["pending"].as_array().is_some_and(Vec::is_empty)
                && list["paired"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|d| d["deviceId"] == remote_device.as_str()))
        })
        .await;
        assert!(
            approved,
            "the click did not approve {remote_device} in driftless"
        );

        // Profile 2 connects now.
        connect(&p2).await;
        wait_text(&p2, "Connected").await;
    };
    let outcome = std::panic::AssertUnwindSafe(flow).catch_unwind().await;
    if outcome.is_err() {
        let dir = keep_artifacts(&[("profile-1", &p1), ("profile-2", &p2)]).await;
        eprintln!("screenshots and page texts kept in {}", dir.display());
    }
    // Ending the sessions ends the browsers (killing the driver would leave them running).
    let _ = p1.close().await;
    let _ = p2.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // Neither token went anywhere it should not: driftless's never reached OpenClaw, OpenClaw's
    // never reached driftless's log.
    let gw_log = gw.finish();
    assert_no_canary(&gw_log, "the gateway log");
    assert!(
        !gw_log.contains(UPSTREAM),
        "OpenClaw's token in driftless's log"
    );
    assert!(
        !openclaw.log_text().contains(CANARY),
        "driftless's token reached OpenClaw"
    );
}

/// A WebSocket connect carrying `headers` (a browser's `Origin`, a proxy's `X-Forwarded-For`):
/// the answer to `connect` with `token`, and the close that followed a refusal.
async fn connect_with_headers(
    url: &str,
    headers: &[(&'static str, &str)],
    token: &str,
) -> (Value, Option<(u16, String)>) {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    async fn next<S: futures_util::Stream + Unpin>(
        ws: &mut S,
    ) -> Result<Option<S::Item>, tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(ws)).await
    }
    let challenge = next(&mut ws).await.unwrap().unwrap().unwrap();
    assert!(challenge.to_text().unwrap().contains("connect.challenge"));
    let connect =
        json!({"type": "req", "id": "c1", "method": "connect", "params": cli_params(Some(token))});
    futures_util::SinkExt::send(&mut ws, Message::Text(connect.to_string().into()))
        .await
        .unwrap();
    let answer = next(&mut ws).await.unwrap().unwrap().unwrap();
    let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
    if answer["ok"] == true {
        return (answer, None);
    }
    let close = match next(&mut ws).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => Some((u16::from(f.code), f.reason.to_string())),
        _ => None,
    };
    (answer, close)
}

/// Origins are checked as OpenClaw checks them, before any credential: no `Origin` (the CLI) is
/// not a browser; the gateway's own loopback page from this machine is allowed, but not through
/// a proxy; another site is refused with OpenClaw's exact error and close unless listed.
#[tokio::test]
async fn a_browser_connect_is_checked_for_its_origin_as_openclaw_checks_it() {
    let home = Home::new();
    let token = home.token_config(CANARY, "");
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\nallowed_origins = [\"https://Ops.Example/\"]\n\
         [gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        token.to_str().unwrap()
    ));
    let gw = Gateway::start(&home, &[], &[]);
    let own = format!("http://127.0.0.1:{}", gw.port);
    let allowed: [&[(&str, &str)]; 4] = [
        &[],
        &[("origin", &own)],
        &[("origin", "https://ops.example")],
        &[("origin", "http://localhost:5173")],
    ];
    for headers in allowed {
        let (answer, close) = connect_with_headers(&gw.url, headers, CANARY).await;
        assert!(
            close.is_none() && answer["ok"] == true,
            "{headers:?}: {answer}"
        );
    }
    let message = "origin not allowed (open the Control UI from the gateway host or allow it in gateway.allowed_origins)";
    let refused: [(&[(&str, &str)], &str); 4] = [
        (&[("origin", "http://evil.example")], "origin not allowed"),
        (
            &[("origin", &own), ("x-forwarded-for", "203.0.113.9")],
            "origin not allowed",
        ),
        (&[("origin", "null")], "origin missing or invalid"),
        (
            &[("origin", "http://evil.example:80/path")],
            "origin missing or invalid",
        ),
    ];
    for (headers, reason) in refused {
        // Refused before the credential is looked at: a wrong one gets the same answer.
        for token in [CANARY, WRONG_CANARY] {
            let (answer, close) = connect_with_headers(&gw.url, headers, token).await;
            assert_eq!(
                answer["error"],
                json!({"code": "INVALID_REQUEST", "message": message,
                       "details": {"code": "CONTROL_UI_ORIGIN_NOT_ALLOWED", "reason": reason}}),
                "{headers:?}"
            );
            assert_eq!(close, Some((1008, message.to_owned())), "{headers:?}");
        }
    }
    let log = gw.finish();
    assert_no_canary(&log, "the gateway log");
    assert!(!log.contains(WRONG_CANARY), "the wrong token in the log");
}

/// What a stand-in upstream received: method, path and query, headers, body length.
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<Value>>>);

/// A stand-in for OpenClaw's HTTP side (the browser test uses the real one): answers every
/// request with what it received, plus hop-by-hop headers of its own and one that must pass.
async fn echo_upstream(seen: Seen) -> SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new()
        .fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let headers: serde_json::Map<String, Value> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                        .collect();
                    let got = json!({"method": method.as_str(), "uri": uri.to_string(),
                                 "headers": headers, "bodyLength": body.len()});
                    seen.0.lock().unwrap().push(got.clone());
                    (
                        [
                            ("connection", "x-up-hop"),
                            ("x-up-hop", "1"),
                            ("keep-alive", "timeout=5"),
                            ("x-up", "kept"),
                        ],
                        axum::Json(got),
                    )
                }
            },
        )
        // Whatever size comes, so a refusal can only be driftless's.
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// In front mode every path that is not driftless's reaches the upstream with its method, path,
/// query and body, without hop-by-hop headers (RFC 9110 §7.6.1) either way, without the client's
/// credentials or proxy headers; driftless's own paths and OpenClaw's probes stay driftless's;
/// an oversized body is refused; an upstream that is gone is a 502 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openclaws_http_surface_is_relayed_and_driftless_keeps_its_paths() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Seen::default();
    let upstream = echo_upstream(seen.clone()).await;
    let home = Home::new();
    home.token_config(CANARY, "");
    let text = std::fs::read_to_string(home.config_path()).unwrap();
    write_secret(
        &home.path().join("upstream-token"),
        "canary-upstream-http-77e2",
    );
    home.write_config(&format!(
        "{text}\n[upstream]\nurl = \"ws://{upstream}\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        home.path().join("upstream-token").to_str().unwrap()
    ));
    let gw = Gateway::start(&home, &[], &[]);
    let base = format!("http://127.0.0.1:{}", gw.port);
    let http = reqwest::Client::new();

    let res = http
        .get(format!("{base}/assets/app.js?v=2&x=%2F"))
        .header("authorization", format!("Bearer {CANARY}"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("x-client", "kept")
        .header("cookie", "ui=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["x-up"], "kept");
    for hop in ["x-up-hop", "keep-alive"] {
        assert!(!h.contains_key(hop), "{hop} reached the client: {h:?}");
    }
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["method"], "GET");
    assert_eq!(got["uri"], "/assets/app.js?v=2&x=%2F");
    let sent = got["headers"].as_object().unwrap();
    assert_eq!(sent["x-client"], "kept");
    assert_eq!(sent["cookie"], "ui=1");
    assert_eq!(
        sent["host"],
        format!("127.0.0.1:{}", gw.port),
        "the browser's Host"
    );
    for gone in [
        "authorization",
        "x-forwarded-for",
        "forwarded",
        "x-client-hop",
    ] {
        assert!(
            !sent.contains_key(gone),
            "{gone} reached the upstream: {got}"
        );
    }

    // A body streams through whole; one over OpenClaw's payload cap does not.
    let body = vec![b'a'; 3 << 20];
    let res = http
        .post(format!("{base}/api/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.unwrap();
    assert_eq!(
        (got["method"].clone(), got["bodyLength"].clone()),
        (json!("POST"), json!(3 << 20))
    );
    let before = seen.0.lock().unwrap().len();
    let res = http
        .post(format!("{base}/api/upload"))
        .body(vec![b'a'; (25 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let refusal = res.text().await.unwrap();
    assert!(
        refusal.starts_with("request body over 26214400 bytes"),
        "{refusal}"
    );

    // driftless's paths and OpenClaw's probes never reach the upstream.
    let (code, healthz) = gw.http_get("/healthz");
    assert_eq!((code, healthz.as_str()), (200, r#"{"ok":true}"#));
    for own in ["/v1/nothing", "/health", "/ready", "/startupz", "/metrics"] {
        let res = http.get(format!("{base}{own}")).send().await.unwrap();
        assert_ne!(
            res.headers().get("x-up").map(|v| v.as_bytes()),
            Some(&b"kept"[..]),
            "{own}"
        );
    }
    let relayed: Vec<Value> = seen.0.lock().unwrap()[before..].to_vec();
    assert!(relayed.is_empty(), "reached the upstream: {relayed:?}");

    let log = gw.finish();
    assert_no_canary(&log, "the gateway log");
}

/// An upstream that is not there: the UI's page is a 502 naming it and saying what to check.
#[tokio::test]
async fn an_unreachable_upstream_is_a_502_naming_it() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let text = std::fs::read_to_string(home.config_path()).unwrap();
    write_secret(
        &home.path().join("upstream-token"),
        "canary-upstream-http-77e2",
    );
    let nobody = free_port();
    home.write_config(&format!(
        "{text}\n[upstream]\nurl = \"ws://127.0.0.1:{nobody}\"\ntoken = {{ source = \"file\", path = {:?} }}\n",
        home.path().join("upstream-token").to_str().unwrap()
    ));
    let gw = Gateway::start(&home, &[], &[]);
    let (code, body) = gw.http_get("/");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains(&format!("upstream gateway ws://127.0.0.1:{nobody}")),
        "{body}"
    );
    assert!(body.contains("GET /readyz"), "{body}");
    // A browser's page load gets the same as a page that loads itself again (OpenClaw restarting
    // must not leave a Control UI tab on an error).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut s, &mut page).unwrap();
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(page.starts_with("HTTP/1.1 502"), "{page}");
    assert!(head.contains("content-type: text/html"), "{page}");
    assert!(head.contains("retry-after: 2"), "{page}");
    assert!(
        page.contains(r#"<meta http-equiv="refresh" content="2">"#),
        "{page}"
    );
    assert!(
        page.contains(&format!("upstream gateway ws://127.0.0.1:{nobody}")),
        "{page}"
    );
    assert!(!page.contains("canary-upstream-http-77e2"), "{page}");
    gw.finish();
}
