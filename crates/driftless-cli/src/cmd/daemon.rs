//! `driftless daemon install|uninstall|status|restart|logs`: the gateway as a systemd user (or
//! system) service, or a launchd agent, whose definition holds no secret.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use driftless_core::{Config, SecretInput, SecretRef};
use driftless_ops::service::{self, Manager, Scope, ServiceError, ServiceSpec};

use crate::exit::{CHECK_FAILED, CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the service definition (no secret in it), reload the manager, enable and start it
    #[command(
        after_help = "Examples:\n  driftless daemon install\n  driftless daemon install --dry-run\n  \
                            sudo driftless daemon install --system --run-as gw\n  driftless daemon install --launchd --dry-run"
    )]
    Install(InstallArgs),
    /// Stop the service and remove its definition
    Uninstall(ScopeArgs),
    /// Show the service state and whether the definition on disk matches what install writes
    Status {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restart the service (not needed after `driftless token rotate`: rotations apply live)
    Restart(ScopeArgs),
    /// Print the service's recent log lines (redacted)
    Logs {
        #[command(flatten)]
        scope: ScopeArgs,
        /// How many lines
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(clap::Args)]
pub struct ScopeArgs {
    /// A system service (/etc/systemd/system, needs root) instead of a user service
    #[arg(long)]
    pub system: bool,
    /// With --system: the user the gateway runs as [default: $SUDO_USER, else $USER]
    #[arg(long, value_name = "USER", requires = "system")]
    pub run_as: Option<String>,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Print the definition instead of installing it
    #[arg(long)]
    dry_run: bool,
    /// Render a launchd agent plist (only --dry-run on Linux)
    #[arg(long)]
    launchd: bool,
    /// Write the definition but do not reload, enable or start anything
    #[arg(long)]
    no_start: bool,
    /// Pass the token file as the systemd credential `gateway-token` (LoadCredential=); the config
    /// must reference a file. The service then reads a copy made at each start
    #[arg(long)]
    load_credential: bool,
    /// Refused: a token in a unit is the drift this tool exists to prevent
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Refused, like --token
    #[arg(long, hide = true, value_name = "PASSWORD")]
    password: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The scope the flags ask for.
pub fn scope(ctx: &Ctx, args: &ScopeArgs) -> Scope {
    if !args.system {
        return Scope::User;
    }
    let run_as = args
        .run_as
        .clone()
        .or_else(|| ctx.env.non_empty("SUDO_USER").map(str::to_owned))
        .or_else(|| ctx.env.non_empty("USER").map(str::to_owned))
        .unwrap_or_default();
    Scope::System { run_as }
}

/// This binary, the config and the state dir as absolute paths.
pub fn paths(ctx: &Ctx) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let binary =
        std::env::current_exe().context("cannot find the path of the running driftless binary")?;
    let config = std::path::absolute(&ctx.config_path)
        .with_context(|| format!("cannot make {} absolute", ctx.config_path.display()))?;
    let state = std::path::absolute(&ctx.state_dir)
        .with_context(|| format!("cannot make {} absolute", ctx.state_dir.display()))?;
    Ok((binary, config, state))
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    match cmd {
        Command::Install(a) => install(ctx, a),
        Command::Uninstall(s) => {
            let manager = Manager::for_platform(scope(ctx, &s));
            match service::uninstall(&manager, &ctx.env)? {
                Some(r) if r.stopped => {
                    say!("Stopped the service and removed {}.", r.removed.display())
                }
                Some(r) => say!(
                    "Removed {}; no service manager answered, so nothing was stopped.",
                    r.removed.display()
                ),
                None => say!(
                    "Nothing to do: no service definition at {}.",
                    manager.definition_path(&ctx.env).display()
                ),
            }
            Ok(OK)
        }
        Command::Status { scope: s, json } => status(ctx, &s, json),
        Command::Restart(s) => {
            Manager::for_platform(scope(ctx, &s)).restart()?;
            say!("Restarted {}.", service::UNIT_NAME);
            Ok(OK)
        }
        Command::Logs {
            scope: s,
            lines,
            follow,
        } => {
            let manager = Manager::for_platform(scope(ctx, &s));
            let mut child = manager
                .logs_command(lines, follow, &ctx.state_dir)
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot run the log reader (journalctl)")?;
            let stdout = child.stdout.take().expect("piped");
            // Every line passes the redactor, like every other output of driftless.
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.context("reading the service log")?;
                say!("{}", driftless_core::redact::redact(&line));
            }
            let status = child.wait()?;
            Ok(if status.success() { OK } else { CHECK_FAILED })
        }
    }
}

fn install(ctx: &Ctx, a: InstallArgs) -> CmdResult {
    if a.token.is_some() {
        return Err(ServiceError::SecretFlag { flag: "--token" }.into());
    }
    if a.password.is_some() {
        return Err(ServiceError::SecretFlag { flag: "--password" }.into());
    }
    let (binary, config_path, state_dir) = paths(ctx)?;
    // The unit names the config; it must exist and parse, or the service would crash-loop.
    let loaded = Config::load(&config_path)?;
    let credential = if a.load_credential {
        match &loaded.config.gateway.auth.token {
            Some(t @ SecretInput::Ref(SecretRef::File { .. })) => Some(
                t.file_path(&ctx.env, loaded.base_dir())
                    .expect("a file reference")?,
            ),
            _ => {
                return Err(anyhow::anyhow!(
                    "--load-credential needs gateway.auth.token to be a file reference; run `driftless secrets migrate gateway.auth.token` first"
                )
                .into());
            }
        }
    } else {
        None
    };
    let scope = scope(ctx, &a.scope);
    let spec = ServiceSpec::new(binary, config_path, state_dir, scope.clone(), credential)?;
    let manager = if a.launchd {
        Manager::Launchd
    } else {
        Manager::for_platform(scope)
    };
    if a.dry_run {
        output::print_text(&String::from_utf8_lossy(&manager.render(&spec)));
        return Ok(OK);
    }
    if manager == Manager::Launchd && !cfg!(target_os = "macos") {
        return Err(anyhow::anyhow!(
            "launchd exists only on macOS; add --dry-run to print the plist"
        )
        .into());
    }
    let report = service::install(&manager, &spec, &ctx.env, !a.no_start)?;
    if a.json {
        output::print_json(&serde_json::to_value(&report)?);
        return Ok(OK);
    }
    if let Some(b) = &report.backup {
        say!("Backed up the previous definition to {}", b.display());
    }
    if report.wrote {
        say!("Wrote {} (it holds no secret)", report.path.display());
    } else {
        say!("{} is already what install writes", report.path.display());
    }
    if report.started {
        say!("Enabled and started {}.", service::UNIT_NAME);
    } else {
        say!(
            "Not started (--no-start). Start it with `systemctl --user daemon-reload && systemctl --user enable --now {}`.",
            service::UNIT_NAME
        );
    }
    if spec.credential.is_some() {
        say!(
            "Note: with LoadCredential= the service reads a copy of the token file made at start; reference \
             ${{CREDENTIALS_DIRECTORY}}/{} in the service's config, and run `driftless daemon restart` after a rotation.",
            service::CREDENTIAL_ID
        );
    }
    Ok(OK)
}

#[derive(serde::Serialize)]
struct StatusOut {
    path: PathBuf,
    installed: bool,
    matches_install: bool,
    state: Option<service::ServiceState>,
    manager_error: Option<String>,
}

fn status(ctx: &Ctx, s: &ScopeArgs, json: bool) -> CmdResult {
    let scope = scope(ctx, s);
    let manager = Manager::for_platform(scope.clone());
    let path = manager.definition_path(&ctx.env);
    let current = std::fs::read(&path).ok();
    let (binary, config_path, state_dir) = paths(ctx)?;
    let credential = current
        .as_deref()
        .and_then(|b| service::credential_of(&String::from_utf8_lossy(b)));
    let spec = ServiceSpec::new(binary, config_path, state_dir, scope, credential)?;
    let matches = current.as_deref() == Some(manager.render(&spec).as_slice());
    let (state, manager_error) = match manager.state() {
        Ok(st) => (Some(st), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let out = StatusOut {
        installed: current.is_some(),
        matches_install: matches,
        path,
        state,
        manager_error,
    };
    if json {
        output::print_json(&serde_json::to_value(&out)?);
    } else {
        say!(
            "definition: {}{}",
            out.path.display(),
            if out.installed {
                ""
            } else {
                " (not installed)"
            }
        );
        if out.installed {
            say!(
                "matches what install writes: {}",
                if out.matches_install {
                    "yes"
                } else {
                    "no (run `driftless doctor`)"
                }
            );
        }
        match (&out.state, &out.manager_error) {
            (Some(st), _) => say!(
                "state: {} {} ({}){}",
                st.active_state,
                st.sub_state,
                st.load_state,
                st.main_pid
                    .map(|p| format!(", pid {p}"))
                    .unwrap_or_default()
            ),
            (None, Some(e)) => say!("state: unknown ({e})"),
            (None, None) => {}
        }
    }
    Ok(if out.installed && out.matches_install {
        OK
    } else {
        CHECK_FAILED
    })
}
