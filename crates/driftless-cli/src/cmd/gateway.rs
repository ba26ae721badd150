//! `driftless gateway run|health|status|call`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use driftless_client::connection::{self, ConnectOptions, Credential};
use driftless_client::credentials::{self, Candidates, Explicit};
use driftless_client::heal;
use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_core::config::AuthMode;
use driftless_core::{Config, ConfigError, SecretInput, SecretValue, redact};
use driftless_gateway::Gateway;
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
            let payload = call(ctx, &a, "health", None)?;
            if a.json {
                output::print_json(&payload);
            } else {
                println!(
                    "ok: the gateway is healthy (uptime {}s)",
                    payload["uptimeMs"].as_u64().unwrap_or(0) / 1000
                );
            }
            Ok(OK)
        }
        Command::Status(a) => {
            let payload = call(ctx, &a, "status", None)?;
            if a.json {
                output::print_json(&payload);
            } else {
                print_status(&payload);
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

fn print_status(p: &Value) {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    println!("version      {}", s(&p["version"]));
    println!(
        "uptime       {}s",
        p["uptimeMs"].as_u64().unwrap_or(0) / 1000
    );
    println!("auth mode    {}", s(&p["auth"]["mode"]));
    if let Some(fp) = p["auth"]["fingerprint"].as_str() {
        println!("secret       {fp}");
    }
    if let Some(g) = p["auth"]["grace"].as_object() {
        println!(
            "grace        previous {} accepted until {} (unix ms)",
            s(&g["previousFingerprint"]),
            s(&g["endsAtMs"])
        );
    }
    if let Some(r) = p["lastReload"].as_object() {
        println!(
            "last reload  {} ({}) at {} (unix ms){}",
            s(&r["outcome"]),
            s(&r["trigger"]),
            s(&r["atMs"]),
            r.get("error")
                .map(|e| format!(": {}", s(e)))
                .unwrap_or_default()
        );
        if let Some(settings) = r.get("restartRequiredFor").and_then(Value::as_array) {
            let names: Vec<&str> = settings.iter().filter_map(Value::as_str).collect();
            println!(
                "restart      needed to apply {} (`driftless daemon restart`)",
                names.join(", ")
            );
        }
    }
    println!("connections  {}", p["connections"]);
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

/// Connects with the one precedence table (explicit flag > stored device token > passive shared
/// credential), self-heals a stale device token once, stores an issued one, then runs `f`.
pub(crate) fn with_connection<T>(
    ctx: &Ctx,
    a: &ClientArgs,
    f: impl AsyncFnOnce(&mut connection::Connection) -> Result<T, connection::ClientError>,
) -> anyhow::Result<T> {
    let (config, base) = match Config::load(&ctx.config_path) {
        Ok(l) => {
            let base = l.base_dir().to_owned();
            (l.config, base)
        }
        Err(ConfigError::NotFound(_)) if a.url.is_some() => {
            (Config::default(), std::path::PathBuf::from("."))
        }
        Err(e) => return Err(e.into()),
    };
    let target = credentials::target(&config, a.url.as_deref())?;
    let identity = std::sync::Arc::new(DeviceIdentity::load_or_create(&ctx.state_dir)?);
    let mut store = TokenStore::load(&ctx.state_dir, identity.device_id())?;
    let explicit = Explicit {
        token: a.token.as_deref().map(secret_arg),
        password: a.password.as_deref().map(secret_arg),
    };
    let candidates = Candidates::gather(
        &config,
        &base,
        &ctx.env,
        target.clone(),
        connection::ROLE,
        &explicit,
        Some(&store),
    );
    for c in &candidates.list {
        if let Some(Err(e)) = &c.value {
            tracing::warn!(
                source = c.source.describe(),
                "credential source unresolved: {e}"
            );
        }
    }
    let timeout = Duration::from_secs(a.timeout.max(1));
    let url = a.url.clone().unwrap_or(target.url.clone());
    let rt = runtime()?;
    let out = rt.block_on(async {
        let connected = heal::connect(&candidates, &mut store, async |cred: &Credential| {
            let mut opts = ConnectOptions::new(url.clone(), cred.clone());
            opts.scopes = CLI_SCOPES.iter().map(|s| (*s).to_owned()).collect();
            opts.timeout = timeout;
            opts.device = Some(identity.clone());
            opts.bind_addr = a.source_addr;
            match connection::connect(&opts).await {
                Ok(conn) => {
                    let issued = conn.issued();
                    Ok((conn, issued))
                }
                Err(error) => Err(heal::Refused {
                    device_token_mismatch: error.is_device_token_mismatch(),
                    error,
                }),
            }
        })
        .await;
        let mut conn = match connected {
            Ok(c) => {
                tracing::debug!(used = ?c.used, healed = c.healed, "connected");
                c.value
            }
            Err(heal::ConnectError::Refused(e)) => {
                let hint = pairing_hint(&e);
                let err = anyhow::Error::new(e);
                return Err(match hint {
                    Some(h) => err.context(h),
                    None => err,
                });
            }
            Err(heal::ConnectError::Store(e)) => return Err(anyhow::Error::new(e)),
        };
        let r = f(&mut conn).await;
        conn.close().await;
        r.map_err(anyhow::Error::new)
    })?;
    Ok(out)
}

/// What to do when the gateway wants this device approved first.
fn pairing_hint(e: &connection::ClientError) -> Option<String> {
    let connection::ClientError::Rejected { error, .. } = e else {
        return None;
    };
    if error.detail_code() != Some("PAIRING_REQUIRED") {
        return None;
    }
    let id = error
        .details
        .as_ref()
        .and_then(|d| d.request_id.as_deref())
        .unwrap_or("<requestId from `driftless devices list`>");
    Some(format!(
        "this device is not approved on the gateway yet; on the gateway's host run `driftless devices approve {id}`, then try again"
    ))
}

fn call(ctx: &Ctx, a: &ClientArgs, method: &str, params: Option<Value>) -> anyhow::Result<Value> {
    with_connection(ctx, a, async |conn| conn.request(method, params).await)
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
        println!("created config {}", report.config_path.display());
    }
    let mut loaded = Config::load(&ctx.config_path)?;
    if let Some(p) = port {
        loaded.config.gateway.port = p;
    }
    let mode = loaded.config.gateway.auth.mode;
    let explicit = match (token, password, mode) {
        (None, None, _) => None,
        (Some(t), None, AuthMode::Token) => Some(t),
        (None, Some(p), AuthMode::Password) => Some(p),
        (_, _, AuthMode::None) => {
            return Err(anyhow::anyhow!(
                "gateway.auth.mode is \"none\", which uses no token or password; drop the flag or set the mode in {}",
                loaded.path.display()
            )
            .into());
        }
        _ => {
            return Err(anyhow::anyhow!(
                "gateway.auth.mode is {:?}: pass --{} instead (or change the mode in {})",
                mode.as_str(),
                mode.as_str(),
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
        println!("listening on {} {auth}", gw.url());
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
