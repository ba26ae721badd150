//! End-to-end tests of `driftless supervise`: the real binary supervising a real child process
//! (tests/fixtures/supervise_child.py) that prints the fingerprint of its `SECRET` and serves it
//! on a TCP port, with real files, a real unix control socket and real signals.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftless_core::Fingerprint;
use serde_json::Value;

use support::{BIN, Home, free_port, stable_port};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/supervise_child.py")
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Replaces `path` atomically (temp file + rename), mode 0600, like a secret manager would.
fn write_secret(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn fp(value: &str) -> String {
    Fingerprint::of(value.as_bytes()).to_string()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

/// Collects `stream`'s lines on a thread; the handle ends at the stream's end (EOF).
fn collect(stream: impl Read + Send + 'static) -> (Lines, std::thread::JoinHandle<()>) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    (lines, reader)
}

/// A running `driftless supervise` with its output captured.
struct Sup {
    proc: Child,
    out: Lines,
    err: Lines,
    /// The collecting threads, joined once the supervisor has exited.
    readers: Vec<std::thread::JoinHandle<()>>,
    sock: PathBuf,
    port: u16,
    _home: Home,
    key: PathBuf,
}

impl Sup {
    /// Supervises the fixture child with `SECRET=file:<dir>/key` (holding `secret`) unless
    /// `extra_args` has its own `--env`; in `extra_args`, `{port}` is the child's port and `{key}`
    /// the key file.
    fn start(secret: &str, extra_args: &[&str], child_env: &[(&str, &str)]) -> Sup {
        let home = Home::new();
        let key = home.root().join("key");
        write_secret(&key, secret);
        let sock = home.root().join("ctl.sock");
        let port = stable_port();
        let mut cmd = home.cmd(BIN);
        // The runner's PATH: the fixture runs on whichever python3 it finds.
        cmd.env(
            "PATH",
            driftless_core::Env::from_process()
                .get("PATH")
                .unwrap_or(""),
        )
        .env("DRIFTLESS_STATE_DIR", home.state())
        .env("PORT", port.to_string())
        .envs(child_env.iter().copied())
        .arg("supervise")
        .args(
            (!extra_args.contains(&"--env"))
                .then(|| format!("--env=SECRET=file:{}", key.display())),
        )
        .args(
            (!extra_args.contains(&"--control"))
                .then(|| format!("--control=unix:{}", sock.display())),
        )
        .args(["--grace", "5"])
        .args(extra_args.iter().map(|a| {
            a.replace("{port}", &port.to_string())
                .replace("{key}", &key.display().to_string())
        }))
        .arg("--")
        .arg(python())
        .arg(fixture())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut proc = cmd.spawn().unwrap();
        let (out, out_reader) = collect(proc.stdout.take().unwrap());
        let (err, err_reader) = collect(proc.stderr.take().unwrap());
        Sup {
            proc,
            out,
            err,
            readers: vec![out_reader, err_reader],
            sock,
            port,
            _home: home,
            key,
        }
    }

    fn out(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    fn err(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// `(pid, fingerprint)` of every child start so far.
    fn starts(&self) -> Vec<(u32, String)> {
        self.out()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("child-start pid=")?;
                let (pid, fp) = rest.split_once(" fp=")?;
                Some((pid.parse().ok()?, fp.to_owned()))
            })
            .collect()
    }

    fn wait_starts(&self, n: usize) {
        assert!(
            eventually(Duration::from_secs(10), || self.starts().len() >= n),
            "expected {n} child starts; stdout: {:?}\nstderr: {:?}",
            self.out(),
            self.err()
        );
    }

    /// One HTTP/1.1 request over the control socket: (status code, JSON body).
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        http_on(s, method, path, &[], body)
    }

    fn status(&self) -> Value {
        let (code, v) = self.http("GET", "/status", "");
        assert_eq!(code, 200, "{v}");
        v
    }

    fn wait_ready(&self) {
        assert!(
            eventually(Duration::from_secs(10), || self.sock.exists()
                && self.status()["ready"] == true),
            "supervisor never became ready; stderr: {:?}",
            self.err()
        );
    }

    /// What the child currently serves on its port: the fingerprint of its secret.
    fn served_fp(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut fp = String::new();
        s.read_to_string(&mut fp).unwrap();
        fp
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.proc);
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then the exit code (bounded wait), once its output has been read to the end:
    /// the collecting threads may still hold its last lines when the process is gone.
    fn terminate(&mut self) -> Option<i32> {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(st) = self.proc.try_wait().unwrap() {
                while self.readers.iter().any(|r| !r.is_finished()) {
                    assert!(
                        Instant::now() < deadline,
                        "the supervisor's output stayed open after it exited"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("supervisor did not exit within 15 s of SIGTERM");
    }

    fn assert_never_printed(&self, secret: &str) {
        for line in self.out().iter().chain(self.err().iter()) {
            assert!(!line.contains(secret), "secret leaked in output: {line}");
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        // SIGTERM so the supervisor stops its child (a SIGKILL would orphan it).
        if self.proc.try_wait().ok().flatten().is_none() {
            let _ = self.terminate();
        }
    }
}

/// One HTTP/1.1 request on an open stream: (status code, JSON body).
fn http_on(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, Value) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: supervisor\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp[9..12].parse().unwrap();
    let (_, json) = resp.split_once("\r\n\r\n").unwrap();
    (code, serde_json::from_str(json).unwrap())
}

fn pid_alive(pid: u32) -> bool {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::test_kill_process(pid).is_ok()
}

#[test]
fn source_change_restarts_once_with_the_new_value() {
    let (old, new) = (
        "canary-supervise-rot-OLD-1111",
        "canary-supervise-rot-NEW-2222",
    );
    let mut sup = Sup::start(old, &["--ready", "tcp:{port}"], &[]);
    sup.wait_starts(1);
    sup.wait_ready();
    let (pid1, fp1) = sup.starts()[0].clone();
    assert_eq!(fp1, fp(old));
    assert_eq!(sup.served_fp(), fp(old));

    write_secret(&sup.key, new);
    sup.wait_starts(2);
    sup.wait_ready();
    // Nothing else is coming: the restart count stays at one.
    std::thread::sleep(Duration::from_millis(1500));
    let starts = sup.starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    let (pid2, fp2) = starts[1].clone();
    assert_ne!(pid1, pid2);
    assert_eq!(fp2, fp(new));
    assert_eq!(sup.served_fp(), fp(new));
    assert!(!pid_alive(pid1), "the old child must be gone");
    let st = sup.status();
    assert_eq!(st["restarts"], 1);
    assert_eq!(st["spawns"], 2);
    assert_eq!(st["pid"], pid2);
    assert_eq!(st["env"]["SECRET"]["fingerprint"], fp(new));
    assert_eq!(sup.terminate(), Some(0));
    sup.assert_never_printed(old);
    sup.assert_never_printed(new);
}

#[test]
fn a_burst_of_ten_changes_restarts_once() {
    let mut sup = Sup::start("canary-burst-initial-0000", &["--ready", "tcp:{port}"], &[]);
    sup.wait_starts(1);
    sup.wait_ready();
    let values: Vec<String> = (0..10)
        .map(|i| format!("canary-burst-value-{i:04}"))
        .collect();
    let began = Instant::now();
    for v in &values {
        write_secret(&sup.key, v);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        began.elapsed() < Duration::from_millis(400),
        "the burst itself was slow"
    );
    sup.wait_starts(2);
    sup.wait_ready();
    // Longer than the debounce window plus a restart: a second restart would have shown up.
    std::thread::sleep(Duration::from_millis(2000));
    let starts = sup.starts();
    assert_eq!(
        starts.len(),
        2,
        "one restart for the whole burst: {starts:?}"
    );
    assert_eq!(
        starts[1].1,
        fp(&values[9]),
        "the restart carries the last value"
    );
    assert_eq!(sup.status()["restarts"], 1);
    assert_eq!(sup.terminate(), Some(0));
    for v in &values {
        sup.assert_never_printed(v);
    }
}

#[test]
fn a_deleted_source_leaves_the_child_alone_and_reports_the_error() {
    let mut sup = Sup::start("canary-deleted-AAAA-1234", &["--ready", "tcp:{port}"], &[]);
    sup.wait_starts(1);
    sup.wait_ready();
    let pid = sup.status()["pid"].as_u64().unwrap();

    std::fs::remove_file(&sup.key).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || sup.status()["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist"))),
        "status never reported the missing file: {}",
        sup.status()
    );
    assert!(
        eventually(Duration::from_secs(5), || sup.err().iter().any(|l| l
            .contains("keeping the running child")
            && l.contains("does not exist"))),
        "stderr: {:?}",
        sup.err()
    );
    let st = sup.status();
    assert_eq!(
        st["pid"].as_u64(),
        Some(pid),
        "the healthy child was touched"
    );
    assert_eq!(st["restarts"], 0);
    assert_eq!(sup.starts().len(), 1);
    assert!(pid_alive(pid as u32));
    assert_eq!(sup.served_fp(), fp("canary-deleted-AAAA-1234"));

    // The source comes back with a new value: that is a change, and the error clears.
    write_secret(&sup.key, "canary-deleted-BBBB-5678");
    sup.wait_starts(2);
    assert!(eventually(Duration::from_secs(5), || {
        sup.status()["last_error"].is_null()
    }));
    assert_eq!(sup.starts()[1].1, fp("canary-deleted-BBBB-5678"));
    assert_eq!(sup.terminate(), Some(0));
    sup.assert_never_printed("canary-deleted-AAAA-1234");
    sup.assert_never_printed("canary-deleted-BBBB-5678");
}

#[test]
fn env_patch_returns_the_documented_shape() {
    let mut sup = Sup::start("canary-patch-base-9999", &["--ready", "tcp:{port}"], &[]);
    sup.wait_starts(1);
    sup.wait_ready();
    let pid1 = sup.status()["pid"].as_u64().unwrap();
    let other = sup.key.with_file_name("other");
    write_secret(&other, "canary-patch-other-7777");

    // Set a new variable: restart, new pid, exactly the documented keys.
    let body = format!(r#"{{"set": {{"OTHER": "file:{}"}}}}"#, other.display());
    let (code, v) = sup.http("POST", "/env/patch", &body);
    assert_eq!(code, 200, "{v}");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["ok", "pid", "restarted", "signaled"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["restarted"], true);
    assert_eq!(v["signaled"], false);
    let pid2 = v["pid"].as_u64().unwrap();
    assert_ne!(pid2, pid1);
    assert_eq!(sup.status()["pid"].as_u64(), Some(pid2));
    assert_eq!(
        sup.status()["env"]["OTHER"]["fingerprint"],
        fp("canary-patch-other-7777")
    );

    // The same again: nothing changed, nothing restarted.
    let (code, v) = sup.http("POST", "/env/patch", &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["restarted"], false);
    assert_eq!(v["pid"].as_u64(), Some(pid2));

    // A literal is refused without being echoed; a broken reference changes nothing.
    let (code, v) = sup.http(
        "POST",
        "/env/patch",
        r#"{"set": {"K": "sk-canary-literal-4242"}}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(v["ok"], false);
    assert!(!v.to_string().contains("sk-canary-literal-4242"), "{v}");
    let (code, v) = sup.http(
        "POST",
        "/env/patch",
        r#"{"set": {"K": "file:/nonexistent/k"}}"#,
    );
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    let (code, _) = sup.http("POST", "/env/patch", r#"{"sett": {}}"#);
    assert_eq!(code, 400);
    let (code, _) = sup.http("POST", "/env/patch", r#"{}"#);
    assert_eq!(code, 400);
    assert_eq!(
        sup.status()["pid"].as_u64(),
        Some(pid2),
        "a refused patch restarted the child"
    );

    // Unset: the variable leaves the child's environment (another restart).
    let (code, v) = sup.http("POST", "/env/patch", r#"{"unset": ["OTHER"]}"#);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["restarted"], true);
    assert!(sup.status()["env"].get("OTHER").is_none());
    assert_eq!(sup.starts().len(), 3);
    assert_eq!(sup.terminate(), Some(0));
    sup.assert_never_printed("canary-patch-other-7777");
}

#[test]
fn signal_mode_signals_instead_of_restarting() {
    let mut sup = Sup::start(
        "canary-signal-one-1212",
        &["--ready", "tcp:{port}", "--reload", "signal:HUP"],
        &[],
    );
    sup.wait_starts(1);
    sup.wait_ready();
    let pid = sup.status()["pid"].as_u64().unwrap();
    write_secret(&sup.key, "canary-signal-two-3434");
    assert!(
        eventually(Duration::from_secs(10), || sup
            .out()
            .contains(&format!("child-hup pid={pid}"))),
        "stdout: {:?}",
        sup.out()
    );
    let st = sup.status();
    assert_eq!(st["signals"], 1);
    assert_eq!(st["restarts"], 0);
    assert_eq!(st["pid"].as_u64(), Some(pid));
    let other = sup.key.with_file_name("other");
    write_secret(&other, "canary-signal-other-5656");
    let (code, v) = sup.http(
        "POST",
        "/env/patch",
        &format!(r#"{{"set": {{"OTHER": "file:{}"}}}}"#, other.display()),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["signaled"], true);
    assert_eq!(v["restarted"], false);
    assert_eq!(v["pid"].as_u64(), Some(pid));
    assert_eq!(sup.starts().len(), 1);
    assert_eq!(sup.terminate(), Some(0));
}

#[test]
fn a_child_printing_its_secret_is_redacted() {
    let secret = "canary-printed-secret-ABCDEF";
    let mut sup = Sup::start(secret, &["--ready", "tcp:{port}"], &[("PRINT_SECRET", "1")]);
    sup.wait_starts(1);
    let marker = format!("[redacted {}]", fp(secret));
    assert!(
        eventually(Duration::from_secs(10), || {
            sup.out()
                .iter()
                .any(|l| l == &format!("my secret is {marker} (stdout)"))
                && sup
                    .err()
                    .iter()
                    .any(|l| l == &format!("my secret is {marker} (stderr)"))
        }),
        "stdout: {:?}\nstderr: {:?}",
        sup.out(),
        sup.err()
    );
    assert_eq!(sup.terminate(), Some(0));
    sup.assert_never_printed(secret);
}

#[test]
fn a_crash_looping_child_backs_off() {
    let mut sup = Sup::start("canary-crash-loop-0101", &[], &[("CRASH", "1")]);
    sup.wait_starts(1);
    // Backoff 1 s, 2 s, 4 s...: starts at about 0, 1, 3 and 7 s. Without backoff a child that
    // exits at once would be spawned hundreds of times in this window.
    std::thread::sleep(Duration::from_millis(5500));
    let n = sup.starts().len();
    assert!((2..=4).contains(&n), "{n} spawns in 5.5 s");
    let st = sup.status();
    assert_eq!(st["spawns"].as_u64(), Some(n as u64));
    assert_eq!(st["last_exit"]["code"], 3);
    assert!(
        sup.err()
            .iter()
            .any(|l| l.contains("child exited unexpectedly") && l.contains("restart_in_ms=2000")),
        "stderr: {:?}",
        sup.err()
    );
    // Stopped while backing off: exits with the child's last code.
    assert_eq!(sup.terminate(), Some(3));
}

#[test]
fn sigterm_stops_the_child_and_forwards_its_exit_code() {
    let mut sup = Sup::start(
        "canary-exit-code-0707",
        &["--ready", "tcp:{port}"],
        &[("EXIT_ON_TERM", "7")],
    );
    sup.wait_starts(1);
    sup.wait_ready();
    let pid = sup.status()["pid"].as_u64().unwrap() as u32;
    assert_eq!(sup.terminate(), Some(7));
    assert!(sup.out().contains(&format!("child-stop pid={pid}")));
    assert!(!pid_alive(pid), "the child outlived the supervisor");
    assert!(!sup.sock.exists(), "the control socket was left behind");
}

#[test]
fn literal_secrets_on_the_command_line_are_refused_without_echo() {
    let home = Home::new();
    let out = home
        .cmd(BIN)
        .env("DRIFTLESS_STATE_DIR", home.path())
        .args([
            "supervise",
            "--env",
            "KEY=sk-canary-cli-literal-31337",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a secret reference"), "{stderr}");
    assert!(stderr.contains("file:/path/to/secret"), "{stderr}");
    assert!(!stderr.contains("sk-canary-cli-literal-31337"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn http_control_endpoint_requires_its_own_token() {
    let token_home = Home::new();
    let token_file = token_home.root().join("ctl-token");
    let token = "canary-control-token-6060";
    write_secret(&token_file, token);
    let ctl_port = free_port();
    let ctl_arg = format!("http:127.0.0.1:{ctl_port}");
    let token_arg = format!("file:{}", token_file.display());
    let mut sup = Sup::start(
        "canary-http-ctl-secret-8080",
        &[
            "--ready",
            "tcp:{port}",
            "--control",
            &ctl_arg,
            "--control-token",
            &token_arg,
        ],
        &[],
    );
    sup.wait_starts(1);
    let request = |headers: &[&str]| {
        let s = std::net::TcpStream::connect(("127.0.0.1", ctl_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok::<_, std::io::Error>(http_on(s, "GET", "/status", headers, ""))
    };
    assert!(eventually(Duration::from_secs(10), || request(&[]).is_ok()));
    let (code, v) = request(&[]).unwrap();
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["ok"], false);
    let (code, _) = request(&["Authorization: Bearer wrong-token"]).unwrap();
    assert_eq!(code, 401);
    let auth = format!("Authorization: Bearer {token}");
    let (code, v) = request(&[&auth]).unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["env"]["SECRET"]["fingerprint"],
        fp("canary-http-ctl-secret-8080")
    );
    assert_eq!(sup.terminate(), Some(0));
    sup.assert_never_printed(token);
}

#[test]
fn an_http_control_endpoint_without_a_token_is_refused() {
    let mut sup = Sup::start(
        "canary-no-token-1313",
        &["--control", "http:127.0.0.1:1"],
        &[],
    );
    assert!(eventually(Duration::from_secs(10), || sup
        .proc
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(sup.proc.try_wait().unwrap().unwrap().code(), Some(70));
    assert!(
        eventually(Duration::from_secs(2), || sup.err().iter().any(|l| l
            .contains("needs its own token")
            && l.contains("--control-token"))),
        "stderr: {:?}",
        sup.err()
    );
    assert!(sup.starts().is_empty(), "no child may start");
}

#[test]
fn an_exec_source_is_caught_by_the_periodic_recheck() {
    // Nothing to watch for an exec source: only the periodic re-resolve can see the change.
    let mut sup = Sup::start(
        "canary-exec-first-2424",
        &[
            "--env",
            "SECRET=exec:cat {key}",
            "--recheck",
            "1",
            "--ready",
            "tcp:{port}",
        ],
        &[],
    );
    sup.wait_starts(1);
    sup.wait_ready();
    assert_eq!(sup.starts()[0].1, fp("canary-exec-first-2424"));
    assert_eq!(sup.status()["env"]["SECRET"]["source"], "exec:cat");
    write_secret(&sup.key, "canary-exec-second-4242");
    sup.wait_starts(2);
    assert_eq!(sup.starts()[1].1, fp("canary-exec-second-4242"));
    // On a wrong code the output says which process chose it (the child prints its stop line).
    let code = sup.terminate();
    assert_eq!(code, Some(0), "out: {:?}\nerr: {:?}", sup.out(), sup.err());
    sup.assert_never_printed("canary-exec-first-2424");
    sup.assert_never_printed("canary-exec-second-4242");
}
