//! End-to-end: the wire rules of the peers the gateway speaks to, on the real `driftless gateway
//! run` over real sockets. RFC 6455's closing handshake and close codes (raw frames written by
//! hand, since a WebSocket library will not send a broken frame), OpenClaw's hello-ok for a
//! device reconnecting with its token, connect errors that never echo a value, and RFC 7235's
//! case-insensitive `Authorization` scheme.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use driftless_client::connection::{ConnectOptions, Credential, connect};
use driftless_client::identity::DeviceIdentity;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const UPGRADE_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const CLOSE: u8 = 0x8;

/// A WebSocket client that writes frames byte by byte.
struct Raw {
    s: TcpStream,
}

impl Raw {
    /// Upgrades a TCP connection and reads the challenge.
    async fn open(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(UPGRADE_REQUEST).await.unwrap();
        Raw::upgraded(s).await
    }

    /// Reads the `101` to an upgrade request already sent, then the challenge.
    async fn upgraded(mut s: TcpStream) -> Raw {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut raw = Raw { s };
        let (op, payload) = raw.read().await.expect("a challenge");
        assert_eq!(op, TEXT);
        assert!(
            String::from_utf8(payload)
                .unwrap()
                .contains("connect.challenge")
        );
        raw
    }

    async fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let key = [0x11, 0x22, 0x33, 0x44];
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f).await.unwrap();
    }

    /// The next frame from the server, or `None` when the connection ended.
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).await.ok()?;
            assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.s.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.s.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.s.read_exact(&mut payload).await.ok()?;
            Some((h[0] & 0x0f, payload))
        })
        .await
        .expect("the server neither sent a frame nor ended the connection")
    }

    /// The close frame the server sends next (text frames before it skipped), as (code, reason).
    async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.read().await? {
                (CLOSE, p) if p.len() >= 2 => {
                    let reason = String::from_utf8(p[2..].to_vec()).unwrap();
                    return Some((u16::from_be_bytes([p[0], p[1]]), reason));
                }
                (CLOSE, _) => return Some((1005, String::new())),
                _ => continue,
            }
        }
    }

    /// Completes `connect` with the shared token.
    async fn authenticate(&mut self, token: &str) {
        let req = json!({"type": "req", "id": "c1", "method": "connect", "params": cli_params(Some(token))});
        self.send(TEXT, req.to_string().as_bytes(), true).await;
        let (op, payload) = self.read().await.expect("a hello-ok");
        assert_eq!(op, TEXT);
        let res: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(res["ok"], true, "{res}");
    }
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

#[tokio::test]
async fn a_clients_close_is_answered_before_and_after_auth() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);

    // Before auth: the client closes right after the challenge.
    let mut c = Raw::open(gw.port).await;
    c.send(CLOSE, &close_payload(1000), true).await;
    assert_eq!(
        c.close_frame().await,
        Some((1000, String::new())),
        "no answering Close before auth"
    );
    assert_eq!(c.read().await, None, "the server ends the TCP connection");

    // After auth.
    let mut c = Raw::open(gw.port).await;
    c.authenticate(CANARY).await;
    c.send(CLOSE, &close_payload(1001), true).await;
    assert_eq!(
        c.close_frame().await,
        Some((1001, String::new())),
        "no answering Close after auth"
    );
    assert_eq!(c.read().await, None);
    gw.finish();
}

/// An upgrade request that arrives whole in the connection's first read is answered without the
/// HTTP server; one split across reads, or sent after a keep-alive request, goes through it. Each
/// must end in the same authenticated session.
#[tokio::test]
async fn an_upgrade_is_served_however_its_request_arrives() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);

    let mut whole = Raw::open(gw.port).await;
    whole.authenticate(CANARY).await;

    // Split in the middle of a header, with time between the parts for the first read to end.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let (a, b) = UPGRADE_REQUEST.split_at(40);
    s.write_all(a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b).await.unwrap();
    let mut split = Raw::upgraded(s).await;
    split.authenticate(CANARY).await;

    // A probe first, then the upgrade on the same keep-alive connection.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a content length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(body, br#"{"ok":true}"#);
    s.write_all(UPGRADE_REQUEST).await.unwrap();
    let mut after_probe = Raw::upgraded(s).await;
    after_probe.authenticate(CANARY).await;
    gw.finish();
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);

    // Invalid UTF-8 in a text message: 1007, before auth and after.
    let mut c = Raw::open(gw.port).await;
    c.send(TEXT, &[b'{', 0xff, 0xfe, b'}'], true).await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1007));
    let mut c = Raw::open(gw.port).await;
    c.authenticate(CANARY).await;
    c.send(TEXT, &[0xc3, 0x28], true).await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1007));

    // A client frame without a mask: 1002.
    let mut c = Raw::open(gw.port).await;
    c.send(TEXT, b"{}", false).await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1002));
    let mut c = Raw::open(gw.port).await;
    c.authenticate(CANARY).await;
    c.send(TEXT, br#"{"type":"req","id":"1","method":"health"}"#, false)
        .await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1002));

    // A reserved opcode: 1002.
    let mut c = Raw::open(gw.port).await;
    c.send(0x3, b"x", true).await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1002));
    let mut c = Raw::open(gw.port).await;
    c.authenticate(CANARY).await;
    c.send(0xb, b"x", true).await;
    assert_eq!(c.close_frame().await.map(|c| c.0), Some(1002));
    gw.finish();
}

#[tokio::test]
async fn a_numeric_credential_is_not_echoed_in_the_connect_error() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let secret = 987_654_321_987_654_u64;
    for auth in [
        json!({"password": secret}),
        json!({"token": secret}),
        json!({"token": 0.987654321987654}),
        json!({"token": [secret]}),
    ] {
        let mut p = cli_params(None);
        p["auth"] = auth.clone();
        let mut c = Client::open(&gw.url).await;
        let (res, close) = c.connect(p).await;
        let message = res["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("invalid connect params: "), "{res}");
        let (code, reason) = close.expect("closed after the error");
        assert_eq!(code, 1008);
        for text in [res.to_string(), reason] {
            assert!(
                !text.contains("987654321987654"),
                "{auth} echoed in: {text}"
            );
        }
    }
    let log = gw.finish();
    assert!(!log.contains("987654321987654"), "{log}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let get = |authorization: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_whitespace().nth(1).unwrap().to_owned()
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(get(&format!("{scheme} {CANARY}")), "200", "{scheme}");
    }
    assert_eq!(get(&format!("Basic {CANARY}")), "401");
    assert_eq!(get("bearer wrong-token"), "401");
    gw.finish();
}

#[tokio::test]
async fn a_device_token_reconnect_gets_its_token_back_and_scopes_keep_their_order() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let client_state = tempfile::tempdir().unwrap();
    let id = Arc::new(DeviceIdentity::load_or_create(client_state.path()).unwrap());
    // Not in sorted order: OpenClaw keeps the order asked for.
    let scopes = vec!["operator.write".to_owned(), "operator.read".to_owned()];
    let session = |credential| {
        let mut opts = ConnectOptions::new(&gw.url, credential);
        opts.device = Some(id.clone());
        opts.scopes = scopes.clone();
        opts
    };

    // First connect: the shared token; silent loopback pairing issues the device token.
    let first = connect(&session(Credential::Token(
        driftless_core::SecretValue::new(CANARY.into()),
    )))
    .await
    .expect("shared-token connect");
    let auth = first.hello()["auth"].clone();
    first.close().await;
    assert_eq!(auth["scopes"], json!(scopes), "{auth}");
    let token = auth["deviceToken"]
        .as_str()
        .expect("a device token")
        .to_owned();
    let issued_at = auth["issuedAtMs"].as_u64().expect("issuedAtMs");

    // Reconnect with that device token alone: it comes back, unchanged, with its issue time.
    let again = connect(&session(Credential::DeviceToken(
        driftless_core::SecretValue::new(token.clone()),
    )))
    .await
    .expect("device-token connect");
    let auth = again.hello()["auth"].clone();
    again.close().await;
    assert_eq!(auth["method"], "device-token", "{}", auth["method"]);
    assert_eq!(auth["deviceToken"].as_str(), Some(token.as_str()));
    assert_eq!(auth["issuedAtMs"].as_u64(), Some(issued_at));
    assert_eq!(auth["scopes"], json!(scopes));
    let log = gw.finish();
    assert!(
        !log.contains(&token),
        "a device token reached the gateway log"
    );
}

/// A client that keeps sending requests and never reads their answers (OpenClaw's "slow
/// consumer"): the gateway stops reading it once its answers fill the sockets, holds no queue of
/// its own (memory stays flat while the flood lasts), keeps serving everyone else, and ends the
/// session after the stall limit (30 s) with 1008 `slow consumer`, freeing its task.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer_with_memory_flat() {
    let home = Home::new();
    home.token_config(CANARY, "");
    let gw = Gateway::start(&home, &[], &[]);
    let flooder = session(&gw.url, cli_params(Some(CANARY))).await;
    let before = rss_kib(gw.child.id());
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut c = flooder;
            let mut i = 0u64;
            // Until the gateway drops the connection; never reading.
            while c
                .wire
                .send_text(
                    json!({"type": "req", "id": format!("f{i}"), "method": "status"}).to_string(),
                )
                .await
                .is_ok()
            {
                i += 1;
                sent.store(i, std::sync::atomic::Ordering::Relaxed);
            }
            c
        }
    });
    // The sockets fill: the gateway stops taking requests (the count stops growing).
    let mut last = 0;
    let stalled = eventually(Duration::from_secs(20), || {
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        let flat = now > 0 && now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            flat
        }
    })
    .await;
    assert!(stalled, "the flood never stalled ({last} requests sent)");
    // Meanwhile everyone else is served, and the gateway queues nothing of the flood's.
    for _ in 0..5 {
        assert!(accepted(&gw.url, CANARY).await, "a new session was refused");
        assert_eq!(gw.http_get("/healthz").0, 200);
        let grown = rss_kib(gw.child.id()).saturating_sub(before);
        assert!(
            grown < 16 * 1024,
            "memory grew by {grown} KiB during the flood"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // After the stall limit the session ends, and the flooder's writes fail.
    let mut c = tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the stalled session was never ended")
        .unwrap();
    drop(c.wire.send_text("{}".into()).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.log_text().contains("slow consumer")
        })
        .await,
        "no slow-consumer close in the log"
    );
    assert!(
        gw.log_text().contains("close_code=1008"),
        "{}",
        gw.log_text()
    );
    gw.finish();
}
