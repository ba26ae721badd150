//! The one private home of the integration tests: a temp folder laid out as a user's machine,
//! and commands that see only it.
//!
//! ```text
//! <root>/                 a temp dir under CARGO_TARGET_TMPDIR (not /tmp: a unit's PrivateTmp=
//!   home/                 would hide it from a service, and real configs do not live there)
//!     .config/            XDG_CONFIG_HOME (driftless/config.toml, systemd/user/…)
//!     .local/state/       XDG_STATE_HOME (driftless/secrets/gateway-token, devices/…)
//!   run/                  XDG_RUNTIME_DIR (0700)
//! ```
//! A spawned program gets `env_clear()` plus exactly: PATH, HOME, the three XDG variables,
//! `USER=driftless-test`, `NO_COLOR=1`, and whatever a test added with [`Home::set_env`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `driftless` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftless");

/// The PATH of every spawned program: the system's folders, nothing of the test runner's.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// A private home (see the module doc).
pub struct Home {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    extra_env: Vec<(String, String)>,
}

/// A finished command: exit code (-1 if killed by a signal) and its output as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout and stderr, for assertion messages and canary checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Default for Home {
    fn default() -> Home {
        Home::new()
    }
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("home/.config")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::set_permissions(root.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        Home {
            _dir: dir,
            home: root.join("home"),
            root,
            extra_env: Vec::new(),
        }
    }

    /// The temp folder holding HOME and the runtime dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// HOME.
    pub fn path(&self) -> &Path {
        &self.home
    }

    /// HOME, owned (the name service tests use).
    pub fn home(&self) -> PathBuf {
        self.home.clone()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.path().join(".config")
    }

    pub fn state_home(&self) -> PathBuf {
        self.path().join(".local/state")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// driftless's config file at its default place.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir().join("driftless/config.toml")
    }

    /// driftless's state folder at its default place.
    pub fn state(&self) -> PathBuf {
        self.state_home().join("driftless")
    }

    /// The token file `driftless init` creates.
    pub fn token_file(&self) -> PathBuf {
        self.state().join("secrets/gateway-token")
    }

    /// Adds `k=v` to the environment of every later command.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.extra_env.push((k.into(), v.into()));
    }

    /// Writes the config file (mode 0600).
    pub fn write_config(&self, text: &str) {
        write_file(&self.config_path(), text, 0o600);
    }

    /// A config on port 0 whose token is the file `secrets/token` holding `token`, plus `extra`
    /// TOML appended to `[gateway.auth]`.
    pub fn token_config(&self, token: &str, extra_auth: &str) -> PathBuf {
        let tok = self.path().join("secrets/token");
        write_secret(&tok, token);
        self.write_config(&format!(
            "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\ntoken = {{ source = \"file\", path = {:?} }}\n{extra_auth}\n",
            tok.to_str().unwrap()
        ));
        tok
    }

    /// `program` with this home's environment and nothing else.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", PATH)
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("XDG_STATE_HOME", self.state_home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("USER", "driftless-test")
            .env("NO_COLOR", "1");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// `driftless` with this home's environment and debug logs (gateway tests read the log).
    pub fn command(&self) -> Command {
        let mut c = self.cmd(BIN);
        c.env("DRIFTLESS_LOG", "debug");
        c
    }

    /// Runs `driftless args…` (debug logs) to completion, bounded, and returns (status, stdout,
    /// stderr).
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "driftless {args:?} did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Home::driftless`] without extra environment, asserting exit code 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.driftless(args, &[]);
        assert_eq!(r.code, 0, "driftless {args:?} failed:\n{}", r.all());
        r
    }

    /// Runs `driftless args…` (default log level) with `env` added for this run only.
    pub fn driftless(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(BIN);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }

    /// Every file under HOME whose contents include `needle`.
    pub fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, needle: &str, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, needle, out);
                } else if std::fs::read(&p)
                    .map(|b| String::from_utf8_lossy(&b).contains(needle))
                    .unwrap_or(false)
                {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), needle, &mut out);
        out
    }
}

/// Writes `text` to `path` (creating its folder) with `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes a 0600 secret file in place (the value plus a newline).
pub fn write_secret(path: &Path, value: &str) {
    write_file(path, &format!("{value}\n"), 0o600);
}
