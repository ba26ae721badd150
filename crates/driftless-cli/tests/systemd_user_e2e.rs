//! End to end under a real `systemd --user` manager, started by this repository's
//! `tests/harness/systemd-user-manager.sh` (or `$DRIFTLESS_SD_USER_HARNESS`): a private mount
//! namespace and a dedicated cgroup, so the host is untouched. It needs root, systemd and
//! util-linux (`.ci/run` installs them); without them the test says so and passes, unless
//! `DRIFTLESS_REQUIRE_TOOLS=1` (CI), where it fails.
//!
//! 1. `driftless daemon install` starts the gateway; `driftless token rotate` writes a new token to
//!    its file; the running service accepts it with no unit rewrite and no restart (same PID).
//!    `daemon logs`, run inside the harness's mount namespace, reads the service's lines from the
//!    private journald; `daemon restart` replaces the process, which serves the rotated token.
//! 2. D1: a unit carrying `Environment=DRIFTLESS_GATEWAY_TOKEN=<canary>` and a config without a
//!    token; `doctor --fix` persists the token, rewrites the unit, reloads and restarts the service,
//!    which then serves the same token from its file.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, Home};
const UNIT: &str = "driftless-gateway.service";

/// The user manager, running in the tests' shared private home ([`support::Home`]): the
/// manager's HOME and runtime dir are the home's, so `systemctl --user` and `driftless` run with
/// `Home::cmd` reach it.
struct Harness {
    home: Home,
    child: Child,
    port: u16,
}

impl Harness {
    /// Starts the manager; `journald` also starts a private journald so service output is kept.
    fn start(script: &Path, journald: bool) -> Harness {
        // The script lays out SDU_ROOT as the home does: home/ and run/.
        let home = Home::new();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(script)
            .env("SDU_ROOT", home.root())
            .env("WITH_JOURNALD", if journald { "1" } else { "" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare and the harness script run");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let h = Harness { home, child, port };
        h.wait_for(
            "the user manager to answer",
            Duration::from_secs(10),
            || h.systemctl(&["show", "-p", "Version"]).status.success(),
        );
        h
    }

    fn cmd(&self, program: &str) -> Command {
        self.home.cmd(program)
    }

    fn systemctl(&self, args: &[&str]) -> std::process::Output {
        self.cmd("systemctl")
            .arg("--user")
            .args(args)
            .output()
            .unwrap()
    }

    fn driftless(&self, args: &[&str]) -> (i32, String) {
        let out = self.cmd(BIN).args(args).output().unwrap();
        let all = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), all)
    }

    /// Runs `driftless` inside the harness's mount namespace, where `/run/log/journal` is the
    /// private journald's (what `journalctl` on a real machine would read).
    fn driftless_in_namespace(&self, args: &[&str]) -> (i32, String) {
        let out = self
            .cmd("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "--"])
            .arg(BIN)
            .args(args)
            .output()
            .unwrap();
        let all = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), all)
    }

    fn main_pid(&self) -> u32 {
        let out = self.systemctl(&["show", "-p", "MainPID", "--value", UNIT]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn wait_for(&self, what: &str, patience: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < patience, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self, extra: &[&str]) -> bool {
        let mut args = vec!["gateway", "health", "--timeout", "2"];
        args.extend_from_slice(extra);
        self.driftless(&args).0 == 0
    }

    fn config(&self) -> PathBuf {
        self.home.config_path()
    }

    fn unit(&self) -> PathBuf {
        self.home.config_dir().join("systemd/user").join(UNIT)
    }

    fn token_file(&self) -> PathBuf {
        self.home.token_file()
    }

    /// `driftless init`, on a free port so parallel test runs do not collide.
    fn init(&self) {
        assert_eq!(self.driftless(&["init"]).0, 0);
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        let cfg = cfg.replace("port = 18789", &format!("port = {}", self.port));
        std::fs::write(self.config(), cfg).unwrap();
    }
}

impl Harness {
    /// The PID of the journald this harness started (its environment names our SDU_ROOT).
    fn journald_pid(&self) -> Option<u32> {
        let marker = format!("SDU_ROOT={}", self.home.root().display());
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let ours = environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes());
            (comm.trim() == "systemd-journal" && ours).then_some(pid)
        })
    }

    /// Everything the private journald recorded.
    fn journal(&self) -> String {
        let out = self
            .cmd("journalctl")
            .arg("-D")
            .arg(self.home.root().join("journal/journal"))
            .args(["--no-pager", "-o", "cat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let journald = self.journald_pid();
        let _ = self.systemctl(&["exit"]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pid) = journald {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The harness moved itself into sdu-<pid> cgroups; remove them once empty.
        for h in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup",
        ] {
            let cg = Path::new(h).join(format!("sdu-{}", self.child.id()));
            // Exiting processes may linger a moment; retry within a bound.
            let start = Instant::now();
            while cg.exists() && start.elapsed() < Duration::from_secs(5) {
                remove_cgroup(&cg);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Removes a cgroup folder and its (empty) children, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The harness script, when this machine can run it (root, for the private mount namespace).
/// With `DRIFTLESS_REQUIRE_TOOLS=1` (CI) a missing piece fails the test instead of skipping it.
fn harness_script() -> Option<PathBuf> {
    // The edge of this test binary: the environment is read once, here.
    let env = driftless_core::Env::from_process();
    let script = env
        .non_empty("DRIFTLESS_SD_USER_HARNESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/systemd-user-manager.sh")
        });
    let missing = if !is_root() {
        "root (a private mount namespace)"
    } else if !script.is_file() {
        "tests/harness/systemd-user-manager.sh (or $DRIFTLESS_SD_USER_HARNESS)"
    } else if !Path::new("/lib/systemd/systemd").exists()
        && !Path::new("/usr/lib/systemd/systemd").exists()
    {
        "systemd (the systemd package)"
    } else {
        return Some(script);
    };
    assert!(
        env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
        "DRIFTLESS_REQUIRE_TOOLS=1 but this test needs {missing}"
    );
    eprintln!("SKIPPED: the systemd --user end-to-end test needs {missing}");
    None
}

fn is_root() -> bool {
    // `id -u` rather than a libc call: the crate forbids unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn installed_service_accepts_a_rotated_token_without_restart_or_unit_rewrite() {
    let Some(script) = harness_script() else {
        return;
    };
    let h = Harness::start(&script, true);
    h.init();
    let (code, out) = h.driftless(&["daemon", "install"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Enabled and started"), "{out}");
    h.wait_for(
        "the installed gateway to answer",
        Duration::from_secs(15),
        || h.healthy(&[]),
    );
    // `daemon logs` shows the service's own lines from the journal.
    let listening = format!("listening on ws://127.0.0.1:{}", h.port);
    let mut logs = String::new();
    h.wait_for(
        "the journal to hold the start-up line",
        Duration::from_secs(10),
        || {
            let (code, out) = h.driftless_in_namespace(&["daemon", "logs", "-n", "50"]);
            assert_eq!(code, 0, "{out}");
            logs = out;
            logs.contains(&listening)
        },
    );
    assert!(logs.contains("driftless-gateway["), "{logs}");
    let pid = h.main_pid();
    assert_ne!(pid, 0);
    let unit_before = std::fs::read(h.unit()).unwrap();
    let old = std::fs::read_to_string(h.token_file()).unwrap();

    let (code, out) = h.driftless(&["token", "rotate", "--no-grace", "--json"]);
    assert_eq!(code, 0, "{out}");
    let new = std::fs::read_to_string(h.token_file()).unwrap();
    assert_ne!(old, new);
    assert!(out.contains("\"gatewayAccepted\": true"), "{out}");
    assert!(!out.contains(new.trim()) && !out.contains(old.trim()));
    assert!(
        !logs.contains(old.trim()),
        "the token reached the service log"
    );

    // The new token works, the old one no longer does (no grace), from the same process.
    assert!(h.healthy(&["--token", new.trim()]));
    assert!(!h.healthy(&["--token", old.trim()]));
    assert_eq!(h.main_pid(), pid, "the service was restarted");
    assert_eq!(
        std::fs::read(h.unit()).unwrap(),
        unit_before,
        "the unit was rewritten"
    );
    let (code, out) = h.driftless(&["daemon", "status", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"matches_install\": true") && out.contains("\"active_state\": \"active\""),
        "{out}"
    );
    // `daemon restart` replaces the process; the token still comes from its file.
    let (code, out) = h.driftless(&["daemon", "restart"]);
    assert_eq!(code, 0, "{out}");
    h.wait_for(
        "the restarted gateway to answer with the rotated token",
        Duration::from_secs(15),
        || h.main_pid() != pid && h.healthy(&["--token", new.trim()]),
    );
    // Uninstall stops the service and removes the unit.
    let (code, out) = h.driftless(&["daemon", "uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(!h.unit().exists());
    assert!(!h.healthy(&[]));
}

#[test]
fn d1_doctor_fix_persists_the_embedded_token_and_restarts_the_service_healthy() {
    let Some(script) = harness_script() else {
        return;
    };
    let h = Harness::start(&script, true);
    let canary = "canary-d1-e2e-5f5f5f5f5f5f";
    std::fs::create_dir_all(h.config().parent().unwrap()).unwrap();
    std::fs::write(h.config(), format!("[gateway]\nport = {}\n", h.port)).unwrap();
    let (code, clean_unit) = h.driftless(&["daemon", "install", "--dry-run"]);
    assert_eq!(code, 0);
    let clean_unit = clean_unit.trim_end().to_owned() + "\n";
    let seeded = clean_unit.replace(
        "Environment=DRIFTLESS_SERVICE_KIND=gateway\n",
        &format!("Environment=DRIFTLESS_SERVICE_KIND=gateway\nEnvironment=DRIFTLESS_GATEWAY_TOKEN={canary}\n"),
    );
    std::fs::create_dir_all(h.unit().parent().unwrap()).unwrap();
    std::fs::write(h.unit(), &seeded).unwrap();
    assert!(h.systemctl(&["daemon-reload"]).status.success());
    assert!(h.systemctl(&["enable", "--now", UNIT]).status.success());
    h.wait_for(
        "the seeded gateway to answer",
        Duration::from_secs(15),
        || h.healthy(&["--token", canary]),
    );
    let pid = h.main_pid();

    let (code, out) = h.driftless(&["doctor"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(std::fs::read_to_string(h.unit()).unwrap(), seeded);

    let (code, out) = h.driftless(&["doctor", "--fix"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reloaded the service manager and restarted the service"),
        "{out}"
    );
    assert!(!out.contains(canary));
    assert_eq!(std::fs::read_to_string(h.unit()).unwrap(), clean_unit);
    h.wait_for(
        "the restarted gateway to answer with the same token",
        Duration::from_secs(15),
        || h.main_pid() != pid && h.healthy(&["--token", canary]),
    );
    // The token now comes from its file through the config, not from the unit.
    assert!(h.healthy(&[]));
    let (code, out) = h.driftless(&["doctor", "--fix"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No changes"), "{out}");
    let environ = std::fs::read(format!("/proc/{}/environ", h.main_pid())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(canary));
    // The service's log (the private journal) has the gateway's lines (the restart stopped the
    // first gateway), and never the canary.
    let journal = h.journal();
    assert!(
        journal.contains("shutting down: closing every connection with 1012"),
        "no gateway lines in the journal:\n{journal}"
    );
    assert!(
        !journal.contains(canary),
        "canary in the service log:\n{journal}"
    );
}
