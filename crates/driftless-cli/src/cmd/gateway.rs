//! `driftless gateway run|health|status|call`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use driftless_client::connection::result_as;
use driftless_client::credentials::Explicit;
use driftless_client::session::{self, Prepared, Session};
use driftless_core::precedence;
use driftless_core::{Config, SecretInput, SecretValue, redact};
use driftless_gateway::Gateway;
use driftless_protocol::payloads::{Health, HelloOk, Status};
use serde_json::Value;

use crate::exit::{CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (creates config and token on first run)
    #[command(
        after_help = "Examples:\n  driftless gateway run\n  driftless gateway run --port 0   # any free port; the URL is printed"
    )]
    Run {
        /// Listen on this port instead of gateway.port (0 = any free port)
        #[arg(long)]
        port: Option<u16>,
        /// Use this token instead of the configured one (mode token; it cannot rotate live)
        #[arg(long, conflicts_with = "password")]
        token: Option<String>,
        /// Use this password instead of the configured one (mode password; it cannot rotate live)
        #[arg(long)]
        password: Option<String>,
    },
    /// Check that a gateway answers `health`
    #[command(
        after_help = "Examples:\n  driftless gateway health\n  driftless gateway health --url ws://127.0.0.1:18789 --token \"$TOKEN\" --json"
    )]
    Health(ClientArgs),
    /// Show a gateway's version, uptime, auth mode, secret fingerprints and last reload
    #[command(
        after_help = "Examples:\n  driftless gateway status\n  driftless gateway status --json"
    )]
    Status(ClientArgs),
    /// Call any gateway method and print its JSON result
    #[command(
        after_help = "Examples:\n  driftless gateway call system-presence\n  driftless gateway call secrets.reload --params '{\"endGrace\":true}'"
    )]
    Call {
        /// Method name, e.g. `health`, `status`, `secrets.reload`
        method: String,
        /// Parameters as a JSON object
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Gateway URL [default: from config gateway.bind/port]
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Shared token [default: the local gateway's token, resolved from config]
    #[arg(long, conflicts_with = "password")]
    pub(crate) token: Option<String>,
    /// Shared password [default: the local gateway's password, resolved from config]
    #[arg(long)]
    pub(crate) password: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// Seconds to wait for the gateway
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout: u64,
    /// Connect from this local address (e.g. a second loopback address, to act as another host)
    #[arg(long, value_name = "IP")]
    pub(crate) source_addr: Option<std::net::IpAddr>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    match cmd {
        Command::Run {
            port,
            token,
            password,
        } => serve(ctx, port, token, password),
        Command::Health(a) => {
            let (hello, payload) = call_with_hello(ctx, &a, "health")?;
            if a.json {
                output::print_json(&payload);
            } else {
                let health: Health = result_as("health", &payload)?;
                let hello = hello.as_ref();
                // OpenClaw's health has no uptime; its hello-ok snapshot does.
                let uptime = health
                    .uptime_ms
                    .or(hello.map(|h| h.snapshot.uptime_ms))
                    .map(|ms| format!(", uptime {}", output::span(ms / 1000)))
                    .unwrap_or_default();
                let server = hello
                    .map(|h| &*h.server.version)
                    .filter(|v| !v.is_empty())
                    .map(|v| format!(" (version {v}{uptime})"))
                    .unwrap_or_else(|| {
                        uptime
                            .strip_prefix(", ")
                            .map(|u| format!(" ({u})"))
                            .unwrap_or_default()
                    });
                say!("ok: the gateway is healthy{server}");
            }
            Ok(OK)
        }
        Command::Status(a) => {
            let (hello, payload) = call_with_hello(ctx, &a, "status")?;
            if a.json {
                output::print_json(&payload);
            } else {
                print_status(hello.as_ref(), &result_as("status", &payload)?);
            }
            Ok(OK)
        }
        Command::Call {
            method,
            params,
            client,
        } => {
            let params = params
                .map(|p| serde_json::from_str::<Value>(&p))
                .transpose()
                .context(
                    "--params is not valid JSON; pass an object such as '{\"endGrace\":true}'",
                )?;
            let payload = call(ctx, &client, &method, params)?;
            output::print_json(&payload);
            Ok(OK)
        }
    }
}

/// Prints a `status` payload: driftless's, or OpenClaw's (which has no uptime or auth block; those
/// come from its hello-ok when it sends them). A field neither has is left out, never `null`.
fn print_status(hello: Option<&HelloOk>, p: &Status) {
    let version = p
        .version
        .as_deref()
        .or(p.runtime_version.as_deref())
        .or(hello.map(|h| &*h.server.version))
        .filter(|v| !v.is_empty());
    if let Some(v) = version {
        say!("version      {v}");
    }
    if let Some(ms) = p.uptime_ms.or(hello.map(|h| h.snapshot.uptime_ms)) {
        say!("uptime       {}", output::span(ms / 1000));
    }
    let mode = p
        .auth
        .mode
        .as_deref()
        .or(hello.and_then(|h| h.snapshot.auth_mode.as_deref()));
    if let Some(mode) = mode {
        say!("auth mode    {mode}");
    }
    if let Some(fp) = &p.auth.fingerprint {
        say!("secret       {fp}");
    }
    for s in p.secrets.iter().filter(|s| s.behind_fleet) {
        say!(
            "source       {} here is {}, which the fleet already replaced: the fleet's secret is \
             accepted, not this one (update this replica's source)",
            s.name,
            s.fingerprint
        );
    }
    if let Some(g) = &p.auth.grace {
        say!(
            "grace        previous {} accepted until {}",
            g.previous_fingerprint,
            output::when(g.ends_at_ms)
        );
    }
    if let Some(r) = &p.last_reload {
        say!(
            "last reload  {} ({}) at {}{}",
            r.outcome,
            r.trigger,
            output::when(r.at_ms),
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        if !r.restart_required_for.is_empty() {
            say!(
                "restart      needed to apply {} (`driftless daemon restart`)",
                r.restart_required_for.join(", ")
            );
        }
    }
    if let Some(n) = p.connections {
        say!("connections  {n}");
    }
    if !p.replicas.is_empty() {
        say!("replicas     {} live", p.replicas.len());
        for r in &p.replicas {
            say!(
                "  {}  {}  started {}  seen {}  accepts {}",
                r.id,
                r.listen,
                output::when(r.started_at_ms),
                output::when(r.last_seen_ms),
                r.accepts.join(", ")
            );
        }
    }
    // OpenClaw's summary.
    if let Some(n) = p.sessions.and_then(|s| s.count) {
        say!("sessions     {n}");
    }
    for line in &p.channel_summary {
        say!("channel      {line}");
    }
}

/// A runtime for one command (the CLI's main stays synchronous).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn secret_arg(raw: &str) -> SecretValue {
    let v = SecretValue::new(raw.to_owned());
    // A value given on the command line must not come back out in an error or log line.
    redact::register(&v);
    v
}

/// The scopes a CLI device asks for, so one pairing covers every command (as OpenClaw's CLI).
pub(crate) const CLI_SCOPES: &[&str] = &[
    "operator.admin",
    "operator.approvals",
    "operator.pairing",
    "operator.read",
    "operator.talk.secrets",
    "operator.write",
];

/// Opens a session ([`driftless_client::session`]: the precedence table, self-heal, token
/// storage), runs `f`, closes.
pub(crate) fn with_connection<T>(
    ctx: &Ctx,
    a: &ClientArgs,
    f: impl AsyncFnOnce(&mut Session) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let request = session::Request {
        url: a.url.clone(),
        explicit: Explicit {
            token: a.token.as_deref().map(secret_arg),
            password: a.password.as_deref().map(secret_arg),
        },
        timeout: Duration::from_secs(a.timeout.max(1)),
        source_addr: a.source_addr,
        scopes: CLI_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let prepared = Prepared::load(&ctx.config_path, &ctx.state_dir, &ctx.env, request)?;
    runtime()?.block_on(async {
        let mut session = prepared.connect().await?;
        let r = f(&mut session).await;
        session.close().await;
        r
    })
}

/// Calls `method` and returns the hello-ok payload (when it has hello-ok's shape) with its result
/// (status output uses both).
fn call_with_hello(
    ctx: &Ctx,
    a: &ClientArgs,
    method: &str,
) -> anyhow::Result<(Option<HelloOk<'static>>, Value)> {
    with_connection(ctx, a, async |s| {
        let payload = s.conn.request(method, None).await?;
        Ok((s.conn.hello_ok(), payload))
    })
}

fn call(ctx: &Ctx, a: &ClientArgs, method: &str, params: Option<Value>) -> anyhow::Result<Value> {
    with_connection(ctx, a, async |s| Ok(s.conn.request(method, params).await?))
}

fn serve(
    ctx: &Ctx,
    port: Option<u16>,
    token: Option<String>,
    password: Option<String>,
) -> CmdResult {
    // First run: create config and token. Not when --config names the file: a service whose config
    // is hidden from it must fail loudly, not start with a fresh token nobody else knows.
    if !ctx.config_path.exists() && !ctx.config_explicit {
        let report = driftless_ops::init::init(&ctx.config_path, &ctx.state_dir, &ctx.env, false)?;
        // A running gateway never stops because nobody reads its stdout: these writes may fail.
        let _ = writeln!(
            std::io::stdout(),
            "created config {}",
            report.config_path.display()
        );
    }
    let mut loaded = Config::load(&ctx.config_path)?;
    if let Some(p) = port {
        loaded.config.gateway.port = p;
    }
    let mode = loaded.config.gateway.auth.mode;
    // clap makes --token and --password exclusive.
    let given = match (token, password) {
        (Some(t), _) => Some(("--token", t)),
        (None, Some(p)) => Some(("--password", p)),
        (None, None) => None,
    };
    let explicit = match (given, precedence::secret_slot(mode)) {
        (None, _) => None,
        (Some((flag, value)), Some(slot)) if slot.flag == flag => Some(value),
        (Some(_), None) => {
            return Err(anyhow::anyhow!(
                "gateway.auth.mode is \"none\", which uses no token or password; drop the flag or set the mode in {}",
                loaded.path.display()
            )
            .into());
        }
        (Some(_), Some(slot)) => {
            return Err(anyhow::anyhow!(
                "gateway.auth.mode is {:?}: pass {} instead (or change the mode in {})",
                mode.as_str(),
                slot.flag,
                loaded.path.display()
            )
            .into());
        }
    }
    .map(|v| SecretInput::Literal(secret_arg(&v)));
    let rt = runtime()?;
    rt.block_on(async {
        let gw = Gateway::bind(&loaded, &ctx.env, explicit).await?;
        // Installed before the ready line: a SIGTERM sent right after it must stop the gateway
        // cleanly, not kill it with the default action.
        let shutdown = shutdown_signal();
        let auth = match gw.secret_fingerprint() {
            Some(fp) => format!("{} {fp}", gw.auth_mode().as_str()),
            None => "auth none".to_owned(),
        };
        let _ = writeln!(std::io::stdout(), "listening on {} {auth}", gw.url());
        // Tests and supervisors read this line as soon as it is printed.
        let _ = std::io::stdout().flush();
        gw.serve(shutdown).await?;
        tracing::info!("gateway stopped");
        anyhow::Ok(())
    })?;
    Ok(OK)
}

/// Installs the SIGTERM/SIGINT handlers now (not on first poll) and returns the wait for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the gateway with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
