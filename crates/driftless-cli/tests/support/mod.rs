//! Shared helpers for end-to-end tests: the private home every test runs in ([`home`]), the real
//! `driftless` binary spawned as a gateway on an ephemeral loopback port, and a raw WS client.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use driftless_client::wire::{Incoming, OpenOptions, Wire, WireError};
use serde_json::{Value, json};

pub mod home;
pub mod openclaw;
#[allow(unused_imports)] // each test file uses a different subset
pub use home::{BIN, Home, Run, write_file, write_secret};

/// The checkout's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The Helm chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("deploy/helm/driftless")
}

/// The gateway token of most tests. It must never appear in a log or a response.
pub const CANARY: &str = "canary-gw-token-5b1f0c9e7d3a";
/// A wrong token tests present. It must never appear in a log or a response either.
pub const WRONG_CANARY: &str = "canary-wrong-guess-8e2d4a6c";

/// Replaces `path` atomically: write a sibling temp file, then rename it over.
pub fn replace_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// How long a gateway may take to exit after SIGTERM (a functional timeout, not a benchmark).
pub const GATEWAY_EXIT_WITHIN: Duration = Duration::from_secs(15);

/// A loopback port that is free right now (nothing stops another process taking it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a FIFO (mode 0600) at `path`, creating its folder: a secret or config "file" whose
/// open blocks until a writer comes.
pub fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "mkfifo failed");
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub first_line: String,
    pub log: PathBuf,
}

impl Gateway {
    /// Spawns `driftless gateway run` (plus `args`) and waits for its `listening on` line.
    pub fn start(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::try_start(home, args, env).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Like `start`, but returns the log text when the process exits instead of listening.
    pub fn try_start(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Result<Gateway, String> {
        let mut cmd = home.command();
        cmd.args(["gateway", "run"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Gateway::launch(home, cmd)
    }

    /// Like `start`, under an open-file limit of `limit` (soft and hard, as `ulimit -n` in a
    /// shell that then execs the gateway), plus `env`.
    pub fn start_with_fd_limit(home: &Home, limit: u32, env: &[(&str, &str)]) -> Gateway {
        let mut cmd = home.cmd("sh");
        cmd.env("DRIFTLESS_LOG", "debug").args([
            "-c",
            &format!("ulimit -n {limit} && exec \"$0\" gateway run"),
            BIN,
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Gateway::launch(home, cmd).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Spawns `cmd` (a gateway) and waits for its `listening on` line.
    fn launch(home: &Home, mut cmd: Command) -> Result<Gateway, String> {
        let log = home.path().join(format!(
            "gateway-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let done = line.starts_with("listening on ");
                let _ = tx.send(line);
                if done {
                    // Keep draining so the gateway never blocks on a full pipe.
                    for _ in lines.by_ref() {}
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.starts_with("listening on ") => {
                    let url = line.split_whitespace().nth(2).unwrap().to_owned();
                    let port = url.rsplit(':').next().unwrap().parse().unwrap();
                    return Ok(Gateway {
                        child,
                        url,
                        port,
                        first_line: line,
                        log,
                    });
                }
                Ok(line) => seen.push(line),
                Err(_) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        return Err(format!("exited {status}; stdout {seen:?}; log:\n{text}"));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err("no `listening on` line within 20 s".into());
                    }
                }
            }
        }
    }

    /// Starts a gateway whose config pins its port (commands such as `token rotate` find the
    /// gateway through config). `write_config(port)` writes that config. A port free when probed
    /// can be taken by a parallel test before the gateway binds it; then another one is tried.
    pub fn start_pinned(home: &Home, write_config: impl Fn(u16)) -> Gateway {
        let mut last = String::new();
        for _ in 0..5 {
            write_config(free_port());
            match Gateway::try_start(home, &[], &[]) {
                Ok(gw) => return gw,
                Err(e) if e.contains("cannot listen on") => last = e,
                Err(e) => panic!("gateway did not start: {e}"),
            }
        }
        panic!("gateway found no free pinned port in 5 tries: {last}")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM to this gateway (by pid) and waits (bounded) for it to exit. The gateway
    /// itself gives connections at most 4 s; the rest is slack for a loaded machine.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + GATEWAY_EXIT_WITHIN;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the gateway and asserts that no canary ever reached its log.
    pub fn finish(mut self) -> String {
        let status = self.terminate();
        assert!(
            status.is_some(),
            "gateway did not exit within {GATEWAY_EXIT_WITHIN:?} of SIGTERM"
        );
        let log = self.log_text();
        assert_no_canary(&log, "gateway log");
        log
    }

    /// `GET path` over plain HTTP/1.1; returns (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_owned();
        assert_no_canary(&body, "HTTP response");
        (code, body)
    }

    /// The value of one metric line (exact name + labels), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Only our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn assert_no_canary(text: &str, what: &str) {
    for c in [CANARY, WRONG_CANARY] {
        assert!(!text.contains(c), "canary {c} leaked into {what}:\n{text}");
    }
}

/// A raw WS client (driftless-client's wire codec) that checks every received frame for canaries.
pub struct Client {
    pub wire: Wire,
    pub challenge: Value,
}

/// How a frame wait ended.
#[derive(Debug)]
pub enum Got {
    Frame(Value),
    Closed(u16, String),
}

impl Client {
    /// Opens a WS connection and reads the `connect.challenge`.
    pub async fn open(url: &str) -> Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let wire = Wire::open(url, &OpenOptions::default(), deadline)
            .await
            .expect("WS connect failed or timed out");
        let mut c = Client {
            wire,
            challenge: Value::Null,
        };
        match c.next().await {
            Got::Frame(f) => c.challenge = f,
            other => panic!("expected connect.challenge, got {other:?}"),
        }
        c
    }

    pub async fn send_text(&mut self, text: String) {
        self.wire.send_text(text).await.unwrap();
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// The next frame or the close, within 10 s.
    pub async fn next(&mut self) -> Got {
        self.next_within(Duration::from_secs(10)).await
    }

    /// The next frame or the close within `d` (events count: the whole wait, not per frame).
    pub async fn next_within(&mut self, d: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + d;
        match self.wire.recv(deadline).await {
            Ok(Incoming::Text(t)) => {
                assert_no_canary(&t, "a WS frame");
                Got::Frame(serde_json::from_str(&t).unwrap())
            }
            Ok(Incoming::Closed(code, reason)) => {
                assert_no_canary(&reason, "a close reason");
                Got::Closed(code, reason)
            }
            Err(WireError::Timeout) => panic!("no frame or close in time"),
            Err(_) => Got::Closed(1006, String::new()),
        }
    }

    /// The next response frame (events skipped), or the close, within 10 s.
    pub async fn response(&mut self) -> Got {
        self.response_within(Duration::from_secs(10)).await
    }

    /// The next response frame (events skipped), or the close, within `d`.
    pub async fn response_within(&mut self, d: Duration) -> Got {
        // One deadline for the whole wait: events do not extend it.
        let deadline = Instant::now() + d;
        loop {
            match self
                .next_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Got::Frame(f) if f["type"] == "event" => continue,
                other => return other,
            }
        }
    }

    /// Sends `connect` with `params` and returns (response, close when the response failed).
    pub async fn connect(&mut self, params: Value) -> (Value, Option<(u16, String)>) {
        self.send_json(json!({"type": "req", "id": "c1", "method": "connect", "params": params}))
            .await;
        let res = match self.response().await {
            Got::Frame(f) => f,
            Got::Closed(code, reason) => panic!("closed {code} {reason} before a response"),
        };
        if res["ok"] == true {
            return (res, None);
        }
        match self.next().await {
            Got::Closed(code, reason) => (res, Some((code, reason))),
            Got::Frame(f) => panic!("expected close after error, got {f}"),
        }
    }

    /// A request on an authenticated connection; returns the response frame (within 10 s).
    pub async fn call(&mut self, id: &str, method: &str, params: Option<Value>) -> Value {
        self.call_within(id, method, params, Duration::from_secs(10))
            .await
    }

    /// A request whose answer may legitimately wait (e.g. a reload queued behind another).
    pub async fn call_within(
        &mut self,
        id: &str,
        method: &str,
        params: Option<Value>,
        d: Duration,
    ) -> Value {
        let mut req = json!({"type": "req", "id": id, "method": method});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_json(req).await;
        match self.response_within(d).await {
            Got::Frame(f) => f,
            Got::Closed(code, reason) => {
                panic!("closed {code} {reason} instead of answering {method}")
            }
        }
    }
}

/// `connect` params as the real OpenClaw CLI sends them (protocol 4..4, token auth).
pub fn cli_params(token: Option<&str>) -> Value {
    let mut p = json!({
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "cli", "version": "2026.9.6", "platform": "linux", "mode": "cli", "instanceId": "t"},
        "caps": [], "role": "operator", "scopes": ["operator.read"],
    });
    if let Some(t) = token {
        p["auth"] = json!({"token": t});
    }
    p
}

/// Opens a connection and completes `connect`; panics when refused.
pub async fn session(url: &str, params: Value) -> Client {
    let mut c = Client::open(url).await;
    let (res, close) = c.connect(params).await;
    assert!(
        close.is_none() && res["ok"] == true,
        "connect refused: {res} {close:?}"
    );
    c
}

/// Whether `token` is accepted right now (a fresh connection).
pub async fn accepted(url: &str, token: &str) -> bool {
    let mut c = Client::open(url).await;
    let (res, _) = c.connect(cli_params(Some(token))).await;
    res["ok"] == true
}

/// How long a running gateway may take to pick up a secret change (watch event, debounce, reload,
/// then a fresh handshake). Generous on purpose: a functional timeout on a loaded CI machine, not a
/// latency check; a missed change would wait for the 30 s backstop and still fail it.
pub const RELOAD_WITHIN: Duration = Duration::from_secs(10);

/// Polls `f` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port that is free now and outside the kernel's ephemeral range, for a server
/// that is restarted on the same port: between its exit and its successor's bind, an outgoing
/// connection anywhere on the machine may take any ephemeral port as its source (seen once under
/// a loaded suite run as the restarted child failing to bind, exit 1), but never one below the
/// range. Another test could still pick the same port; the random start makes that unlikely.
pub fn stable_port() -> u16 {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(32768);
    // Below the ephemeral range and above the well-known and common service ports.
    let first = 20000u16;
    if low <= first + 1000 {
        // A machine whose ephemeral range starts low: no such ports to pick from.
        return free_port();
    }
    let last = low - 1;
    let span = u32::from(last - first) + 1;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    (0..span)
        .map(|i| first + ((seed.wrapping_add(i) % span) as u16))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// Every file under `dir` (recursively, symlinks not followed) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file()
            && std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(path);
        }
    }
    found
}

/// The gateway's resident memory (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
