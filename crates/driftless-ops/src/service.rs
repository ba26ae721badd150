//! The gateway as a service: a systemd unit (Linux) or a launchd agent (macOS) that holds no
//! secret, and the few service-manager calls `daemon install|uninstall|status|restart|logs` need.
//!
//! The unit names the binary and the config, nothing else: the gateway resolves its token through
//! the config's reference and re-reads file references live, so a rotation never touches the unit
//! (drift D1 in the shared design `credentials.md`). `doctor` compares the unit on disk with
//! [`ServiceSpec::systemd_unit`], so "install, then audit" is clean by construction.

use std::path::{Path, PathBuf};
use std::process::Command;

use driftless_core::{Env, atomic, redact};

use crate::file_error::FileError;
use crate::scan::{self, Format, systemd_quote};

/// The systemd unit name.
pub const UNIT_NAME: &str = "driftless-gateway.service";
/// The launchd label (and plist file stem).
pub const LAUNCHD_LABEL: &str = "dev.driftless.gateway";
/// The one environment variable a unit sets: tells the gateway and in-process clients that they run
/// as the installed service.
pub const SERVICE_KIND_ENV: &str = "DRIFTLESS_SERVICE_KIND";
/// The systemd credential id used with `LoadCredential=`.
pub const CREDENTIAL_ID: &str = "gateway-token";
/// The journal's `SYSLOG_IDENTIFIER` of the service's output. `daemon logs` selects by it: a user
/// unit run by root or a system user gets no `_SYSTEMD_USER_UNIT` in a per-user journal file, so
/// `journalctl --user -u` finds nothing there.
pub const SYSLOG_IDENTIFIER: &str = "driftless-gateway";

/// The descriptor limit (soft and hard) the unit gives the gateway.
pub const LIMIT_NOFILE: u32 = 65536;

/// Which service manager instance owns the unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Scope {
    /// `systemctl --user`, unit under `$XDG_CONFIG_HOME/systemd/user`.
    User,
    /// The system manager, unit under `/etc/systemd/system`, run as `run_as`.
    System { run_as: String },
}

/// Why a service operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} {path} must be an absolute path without line breaks")]
    BadPath { what: &'static str, path: PathBuf },
    #[error(
        "--system needs a user to run the gateway as; pass --run-as NAME (running a gateway as root is refused)"
    )]
    NoRunAs,
    #[error(
        "refusing to put a secret into the service definition (drift D1: the unit keeps the old copy after a rotation). \
         Fix: keep the token in its one source (`driftless init` writes a 0600 file and references it), then run \
         `driftless daemon install` without {flag}"
    )]
    SecretFlag { flag: &'static str },
    #[error("`{command}` failed: {detail}")]
    Manager { command: String, detail: String },
    #[error(
        "`{0}` was not found; this machine has no such service manager (use --dry-run to print the definition)"
    )]
    ManagerMissing(String),
    #[error(
        "{path} holds a secret ({locations}); install will not overwrite it and lose the value. \
         Fix: run `driftless doctor --fix`, which moves it to its one source first and then rewrites the unit"
    )]
    ExistingEmbedsSecret { path: PathBuf, locations: String },
    #[error(
        "{path} is in place, but the service could not be started (is a service manager running for this \
         user? log in, or `loginctl enable-linger $USER`; `--no-start` only writes the unit)"
    )]
    NotStarted {
        path: PathBuf,
        #[source]
        source: Box<ServiceError>,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Everything a service definition is made from. Two specs that are equal render the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The `driftless` binary (absolute).
    pub binary: PathBuf,
    /// The config file (absolute).
    pub config_path: PathBuf,
    /// The state directory; the only place besides the config's directory the service may write.
    pub state_dir: PathBuf,
    pub scope: Scope,
    /// Pass this file as the systemd credential `gateway-token` (`LoadCredential=`).
    pub credential: Option<PathBuf>,
}

fn check_path(what: &'static str, p: &Path) -> Result<(), ServiceError> {
    let s = p.to_string_lossy();
    if !p.is_absolute() || s.contains('\n') || s.contains('\r') {
        return Err(ServiceError::BadPath {
            what,
            path: p.to_owned(),
        });
    }
    Ok(())
}

impl ServiceSpec {
    /// A spec, after checking that every path can be written into a unit safely.
    pub fn new(
        binary: PathBuf,
        config_path: PathBuf,
        state_dir: PathBuf,
        scope: Scope,
        credential: Option<PathBuf>,
    ) -> Result<ServiceSpec, ServiceError> {
        check_path("the driftless binary", &binary)?;
        check_path("the config file", &config_path)?;
        check_path("the state directory", &state_dir)?;
        if let Some(c) = &credential {
            check_path("the credential file", c)?;
            // `LoadCredential=ID:PATH` takes the rest of the line verbatim: no quoting possible.
            if c.to_string_lossy().contains(char::is_whitespace) {
                return Err(ServiceError::BadPath {
                    what: "the credential file (no spaces allowed)",
                    path: c.clone(),
                });
            }
        }
        if let Scope::System { run_as } = &scope
            && (run_as.is_empty() || run_as == "root" || run_as.contains(char::is_whitespace))
        {
            return Err(ServiceError::NoRunAs);
        }
        Ok(ServiceSpec {
            binary,
            config_path,
            state_dir,
            scope,
            credential,
        })
    }

    /// The gateway's command line.
    pub fn program_arguments(&self) -> Vec<String> {
        vec![
            self.binary.to_string_lossy().into_owned(),
            "gateway".into(),
            "run".into(),
            "--config".into(),
            self.config_path.to_string_lossy().into_owned(),
        ]
    }

    fn config_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// The systemd unit. Verified by the real `systemd-analyze verify` in the tests.
    pub fn systemd_unit(&self) -> String {
        let exec: Vec<String> = self
            .program_arguments()
            .iter()
            .map(|a| systemd_quote(a))
            .collect();
        let mut u = String::new();
        u.push_str(
            "# Written by `driftless daemon install`. It holds no secret: the gateway reads its\n",
        );
        u.push_str(
            "# token through the config's reference and picks up rotations without a restart.\n",
        );
        u.push_str("# `driftless doctor` reports any difference from what install would write.\n");
        u.push_str("[Unit]\nDescription=driftless gateway\n");
        u.push_str("After=network.target\n\n[Service]\nType=simple\n");
        if let Scope::System { run_as } = &self.scope {
            u.push_str(&format!("User={run_as}\n"));
        }
        u.push_str(&format!("ExecStart={}\n", exec.join(" ")));
        u.push_str(&format!("Environment={SERVICE_KIND_ENV}=gateway\n"));
        u.push_str(&format!("SyslogIdentifier={SYSLOG_IDENTIFIER}\n"));
        if let Some(c) = &self.credential {
            u.push_str(&format!(
                "LoadCredential={CREDENTIAL_ID}:{}\n",
                c.to_string_lossy()
            ));
        }
        u.push_str("Restart=on-failure\nRestartSec=2\nUMask=0077\n");
        // The default soft limit (1,024 descriptors) is what a few hundred idle sockets from one
        // address exhaust; systemd clamps this to what the manager may grant (setrlimit_closest).
        u.push_str(&format!("LimitNOFILE={LIMIT_NOFILE}\n"));
        // Hardening. Everything here also works in a user manager (which enables PrivateUsers=
        // implicitly for the namespacing options); system-only knobs come below.
        u.push_str("NoNewPrivileges=yes\nProtectSystem=strict\n");
        // A private /tmp would hide a config or state kept under /tmp from the service.
        let in_tmp = [self.config_dir(), self.state_dir.clone()]
            .iter()
            .any(|p| p.starts_with("/tmp") || p.starts_with("/var/tmp"));
        if !in_tmp {
            u.push_str("PrivateTmp=yes\n");
        }
        u.push_str(&format!(
            "ReadWritePaths=-{} -{}\n",
            systemd_quote_path(&self.state_dir),
            systemd_quote_path(&self.config_dir())
        ));
        u.push_str("ProtectKernelModules=yes\nProtectControlGroups=yes\n");
        u.push_str("RestrictSUIDSGID=yes\nRestrictRealtime=yes\nLockPersonality=yes\n");
        u.push_str(
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\nSystemCallArchitectures=native\n",
        );
        if matches!(self.scope, Scope::System { .. }) {
            // ProtectKernelTunables= remounts /proc/sys, which a user manager (and a manager in
            // a container) may not do: a user unit with it fails with 226/NAMESPACE.
            u.push_str("ProtectKernelTunables=yes\nProtectHome=read-only\nPrivateDevices=yes\n");
            u.push_str("ProtectKernelLogs=yes\n");
            u.push_str("ProtectClock=yes\nProtectHostname=yes\nRestrictNamespaces=yes\n");
            u.push_str("CapabilityBoundingSet=\nMemoryDenyWriteExecute=yes\n");
        }
        let wanted = match self.scope {
            Scope::User => "default.target",
            Scope::System { .. } => "multi-user.target",
        };
        u.push_str(&format!("\n[Install]\nWantedBy={wanted}\n"));
        u
    }

    /// The launchd agent plist (XML). Checked key by key with the `plist` parser in the tests.
    pub fn launchd_plist(&self) -> Vec<u8> {
        use plist::{Dictionary, Value};
        let logs = self.state_dir.join("logs");
        let mut env = Dictionary::new();
        env.insert(SERVICE_KIND_ENV.into(), Value::String("gateway".into()));
        // Restart only after a failure, like systemd's Restart=on-failure.
        let mut keep_alive = Dictionary::new();
        keep_alive.insert("SuccessfulExit".into(), Value::Boolean(false));
        let mut d = Dictionary::new();
        d.insert("Label".into(), Value::String(LAUNCHD_LABEL.into()));
        d.insert(
            "ProgramArguments".into(),
            Value::Array(
                self.program_arguments()
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            ),
        );
        d.insert("EnvironmentVariables".into(), Value::Dictionary(env));
        d.insert("RunAtLoad".into(), Value::Boolean(true));
        d.insert("KeepAlive".into(), Value::Dictionary(keep_alive));
        d.insert("ThrottleInterval".into(), Value::Integer(2.into()));
        d.insert("Umask".into(), Value::Integer(0o077.into()));
        d.insert(
            "StandardOutPath".into(),
            Value::String(logs.join("gateway.log").to_string_lossy().into_owned()),
        );
        d.insert(
            "StandardErrorPath".into(),
            Value::String(logs.join("gateway.err.log").to_string_lossy().into_owned()),
        );
        let mut out = Vec::new();
        plist::to_writer_xml(&mut out, &Value::Dictionary(d)).expect("writing to a Vec");
        out
    }
}

fn systemd_quote_path(p: &Path) -> String {
    systemd_quote(&p.to_string_lossy())
}

/// The credential file an installed unit passes with `LoadCredential=gateway-token:PATH`, so a
/// re-render keeps the user's choice.
pub fn credential_of(unit: &str) -> Option<PathBuf> {
    scan::service_settings(unit).into_iter().find_map(|(k, v)| {
        if k != "LoadCredential" {
            return None;
        }
        v.strip_prefix(CREDENTIAL_ID)?
            .strip_prefix(':')
            .map(PathBuf::from)
    })
}

use driftless_core::paths::home;

/// Where the unit for `scope` lives.
pub fn unit_path(env: &Env, scope: &Scope) -> PathBuf {
    match scope {
        Scope::User => driftless_core::paths::config_home(env)
            .join("systemd/user")
            .join(UNIT_NAME),
        Scope::System { .. } => Path::new("/etc/systemd/system").join(UNIT_NAME),
    }
}

/// Where the launchd agent plist lives.
pub fn plist_path(env: &Env) -> PathBuf {
    home(env)
        .join("Library/LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist"))
}

/// The service manager this platform uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    Systemd(Scope),
    Launchd,
}

/// The state of the installed service, as the manager reports it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServiceState {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: Option<u32>,
}

impl Manager {
    /// The manager of this platform (launchd on macOS, systemd elsewhere).
    pub fn for_platform(scope: Scope) -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd(scope)
        }
    }

    /// Where this manager's definition of the gateway lives.
    pub fn definition_path(&self, env: &Env) -> PathBuf {
        match self {
            Manager::Systemd(scope) => unit_path(env, scope),
            Manager::Launchd => plist_path(env),
        }
    }

    /// The file format of this manager's definitions.
    pub fn format(&self) -> Format {
        match self {
            Manager::Systemd(_) => Format::Systemd,
            Manager::Launchd => Format::Plist,
        }
    }

    /// What `install` writes for `spec`.
    pub fn render(&self, spec: &ServiceSpec) -> Vec<u8> {
        match self {
            Manager::Systemd(_) => spec.systemd_unit().into_bytes(),
            Manager::Launchd => spec.launchd_plist(),
        }
    }

    fn systemctl(&self, args: &[&str]) -> Result<String, ServiceError> {
        let mut full: Vec<&str> = Vec::new();
        if matches!(self, Manager::Systemd(Scope::User)) {
            full.push("--user");
        }
        full.extend_from_slice(args);
        run("systemctl", &full)
    }

    fn launchd_target(&self) -> String {
        format!("gui/{}/{LAUNCHD_LABEL}", rustix::process::getuid().as_raw())
    }

    /// Whether the manager answers at all (a user manager may not be running).
    pub fn reachable(&self) -> bool {
        match self {
            Manager::Systemd(_) => self.systemctl(&["show", "-p", "Version"]).is_ok(),
            Manager::Launchd => run("launchctl", &["version"]).is_ok(),
        }
    }

    /// Makes the manager re-read definitions (systemd only; launchd reads at bootstrap).
    pub fn reload(&self) -> Result<(), ServiceError> {
        match self {
            Manager::Systemd(_) => self.systemctl(&["daemon-reload"]).map(drop),
            Manager::Launchd => Ok(()),
        }
    }

    /// Enables and starts the service.
    pub fn enable_now(&self, definition: &Path) -> Result<(), ServiceError> {
        match self {
            Manager::Systemd(_) => self.systemctl(&["enable", "--now", UNIT_NAME]).map(drop),
            Manager::Launchd => {
                let domain = format!("gui/{}", rustix::process::getuid().as_raw());
                run(
                    "launchctl",
                    &["bootstrap", &domain, &definition.to_string_lossy()],
                )
                .map(drop)
            }
        }
    }

    /// Stops and disables the service.
    pub fn disable_now(&self) -> Result<(), ServiceError> {
        match self {
            Manager::Systemd(_) => self.systemctl(&["disable", "--now", UNIT_NAME]).map(drop),
            Manager::Launchd => run("launchctl", &["bootout", &self.launchd_target()]).map(drop),
        }
    }

    /// Restarts the service.
    pub fn restart(&self) -> Result<(), ServiceError> {
        match self {
            Manager::Systemd(_) => self.systemctl(&["restart", UNIT_NAME]).map(drop),
            Manager::Launchd => {
                run("launchctl", &["kickstart", "-k", &self.launchd_target()]).map(drop)
            }
        }
    }

    /// Restarts the service only if it is running (after a repair).
    pub fn try_restart(&self) -> Result<(), ServiceError> {
        self.try_restart_unit(UNIT_NAME)
    }

    /// Restarts the systemd unit `unit` (another program's service, e.g. OpenClaw's) only if it is
    /// running; under launchd, the gateway's agent.
    pub fn try_restart_unit(&self, unit: &str) -> Result<(), ServiceError> {
        match self {
            Manager::Systemd(_) => self.systemctl(&["try-restart", unit]).map(drop),
            Manager::Launchd => self.restart(),
        }
    }

    /// The command a person runs to talk to this manager, for advice in messages.
    pub fn control_command(&self) -> &'static str {
        match self {
            Manager::Systemd(Scope::User) => "systemctl --user",
            Manager::Systemd(Scope::System { .. }) => "systemctl",
            Manager::Launchd => "launchctl",
        }
    }

    /// The service's state.
    pub fn state(&self) -> Result<ServiceState, ServiceError> {
        match self {
            Manager::Systemd(_) => {
                let out = self.systemctl(&[
                    "show",
                    "-p",
                    "LoadState,ActiveState,SubState,MainPID",
                    UNIT_NAME,
                ])?;
                let mut s = ServiceState::default();
                for line in out.lines() {
                    match line.split_once('=') {
                        Some(("LoadState", v)) => s.load_state = v.into(),
                        Some(("ActiveState", v)) => s.active_state = v.into(),
                        Some(("SubState", v)) => s.sub_state = v.into(),
                        Some(("MainPID", v)) => s.main_pid = v.parse().ok().filter(|p| *p != 0),
                        _ => {}
                    }
                }
                Ok(s)
            }
            Manager::Launchd => {
                let out = run("launchctl", &["print", &self.launchd_target()]);
                let mut s = ServiceState {
                    load_state: if out.is_ok() { "loaded" } else { "not-found" }.into(),
                    ..Default::default()
                };
                for line in out.unwrap_or_default().lines().map(str::trim) {
                    if let Some(v) = line.strip_prefix("state = ") {
                        s.active_state = v.into();
                    } else if let Some(v) = line.strip_prefix("pid = ") {
                        s.main_pid = v.parse().ok();
                    }
                }
                Ok(s)
            }
        }
    }

    /// The command that prints the service's recent log lines.
    pub fn logs_command(&self, lines: u32, follow: bool, state_dir: &Path) -> Command {
        match self {
            Manager::Systemd(scope) => {
                let mut c = Command::new("journalctl");
                match scope {
                    // This user's lines of the service, whichever journal file holds them.
                    Scope::User => c.args([
                        "-t".to_owned(),
                        SYSLOG_IDENTIFIER.to_owned(),
                        format!("_UID={}", rustix::process::geteuid().as_raw()),
                    ]),
                    Scope::System { .. } => c.args(["-u", UNIT_NAME]),
                };
                c.args(["-n", &lines.to_string(), "--no-pager"]);
                if follow {
                    c.arg("-f");
                }
                c
            }
            Manager::Launchd => {
                let mut c = Command::new("tail");
                c.args(["-n", &lines.to_string()]);
                if follow {
                    c.arg("-F");
                }
                let logs = state_dir.join("logs");
                c.arg(logs.join("gateway.log"))
                    .arg(logs.join("gateway.err.log"));
                c
            }
        }
    }
}

/// Runs a manager command; its output is redacted before it can reach an error message.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, ServiceError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ServiceError::ManagerMissing(program.into())
        } else {
            ServiceError::Manager {
                command: command.clone(),
                detail: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(ServiceError::Manager {
            command,
            detail: format!("{} ({})", redact::redact(first), out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `install` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub path: PathBuf,
    /// False when the definition on disk already matched.
    pub wrote: bool,
    pub backup: Option<PathBuf>,
    pub started: bool,
}

/// Writes the definition (0644: it holds no secret) if it differs, then reloads and starts the
/// service unless `start` is false.
pub fn install(
    manager: &Manager,
    spec: &ServiceSpec,
    env: &Env,
    start: bool,
) -> Result<InstallReport, ServiceError> {
    let path = manager.definition_path(env);
    let wanted = manager.render(spec);
    let current = match crate::input::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(FileError::of("read", &path)(e).into()),
    };
    let mut report = InstallReport {
        path: path.clone(),
        wrote: false,
        backup: None,
        started: false,
    };
    if let Some(bytes) = &current {
        let found =
            scan::scan_definition(manager.format(), bytes, env, &Vec::new()).unwrap_or_default();
        if !found.is_empty() {
            return Err(ServiceError::ExistingEmbedsSecret {
                path,
                locations: found
                    .iter()
                    .map(|e| e.location.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if current.as_deref() != Some(wanted.as_slice()) {
        if current.is_some() {
            report.backup = Some(crate::backup::backup(&path, &[])?);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(FileError::of("create", dir))?;
        }
        atomic::write_with_mode(&path, &wanted, 0o644)?;
        report.wrote = true;
    }
    if start {
        let started = manager
            .reload()
            .and_then(|()| manager.enable_now(&path))
            .and_then(|()| {
                // A unit that changed under a running service only takes effect after a restart.
                if report.wrote {
                    manager.try_restart()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = started {
            return Err(ServiceError::NotStarted {
                path,
                source: Box::new(e),
            });
        }
        report.started = true;
    }
    Ok(report)
}

/// What `uninstall` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UninstallReport {
    pub removed: PathBuf,
    /// False when no service manager answered (nothing could be stopped).
    pub stopped: bool,
}

/// Stops the service and removes its definition. `None` when there was none.
pub fn uninstall(manager: &Manager, env: &Env) -> Result<Option<UninstallReport>, ServiceError> {
    let path = manager.definition_path(env);
    if !path.exists() {
        return Ok(None);
    }
    let reachable = manager.reachable();
    // Disabling a unit that is not loaded fails; the file is removed either way.
    let stopped = reachable && manager.disable_now().is_ok();
    std::fs::remove_file(&path).map_err(FileError::of("remove", &path))?;
    if reachable {
        manager.reload()?;
    }
    Ok(Some(UninstallReport {
        removed: path,
        stopped,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: Scope) -> ServiceSpec {
        ServiceSpec::new(
            "/usr/bin/driftless".into(),
            "/home/u/my cfg/config.toml".into(),
            "/home/u/.local/state/driftless".into(),
            scope,
            None,
        )
        .unwrap()
    }

    #[test]
    fn unit_has_no_secret_and_names_config() {
        let u = spec(Scope::User).systemd_unit();
        assert!(u.contains(
            "ExecStart=/usr/bin/driftless gateway run --config \"/home/u/my cfg/config.toml\"\n"
        ));
        let envs: Vec<&str> = u.lines().filter(|l| l.starts_with("Environment")).collect();
        assert_eq!(envs, vec!["Environment=DRIFTLESS_SERVICE_KIND=gateway"]);
        assert!(u.contains("Restart=on-failure\n"));
        assert!(u.contains("\nLimitNOFILE=65536\n"), "{u}");
        assert!(u.contains("PrivateTmp=yes\n"));
        // A config kept under /tmp must stay visible to the service.
        let mut in_tmp = spec(Scope::User);
        in_tmp.config_path = "/tmp/x/config.toml".into();
        assert!(!in_tmp.systemd_unit().contains("PrivateTmp"));
        assert!(!u.contains("User="));
        assert!(u.contains("WantedBy=default.target"));
        let s = spec(Scope::System {
            run_as: "gw".into(),
        })
        .systemd_unit();
        assert!(s.contains("User=gw\n") && s.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn refuses_bad_paths_and_root() {
        let bad = ServiceSpec::new(
            "driftless".into(),
            "/c".into(),
            "/s".into(),
            Scope::User,
            None,
        );
        assert!(matches!(bad, Err(ServiceError::BadPath { .. })));
        let root = ServiceSpec::new(
            "/b".into(),
            "/c".into(),
            "/s".into(),
            Scope::System {
                run_as: "root".into(),
            },
            None,
        );
        assert!(matches!(root, Err(ServiceError::NoRunAs)));
    }
}
