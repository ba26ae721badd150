//! `driftless gateway run|health|status|call`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use driftless_client::connection::{self, ConnectOptions, Credential};
use driftless_core::config::{AuthMode, LoadedConfig};
use driftless_core::{Config, ConfigError, SecretInput, SecretValue, precedence, redact};
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
    url: Option<String>,
    /// Shared token [default: the local gateway's token, resolved from config]
    #[arg(long, conflicts_with = "password")]
    token: Option<String>,
    /// Shared password [default: the local gateway's password, resolved from config]
    #[arg(long)]
    password: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the gateway
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    match cmd {
        Command::Run {
            port,
            token,
            password,
        } => serve(ctx, port, token, password),
        Command::Health(a) => {
            let payload = call(ctx, &a, "health", None, &[])?;
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
            let payload = call(ctx, &a, "status", None, &[driftless_protocol::scopes::READ])?;
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
            let payload = call(
                ctx,
                &client,
                &method,
                params,
                &[driftless_protocol::scopes::ADMIN],
            )?;
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

/// The local gateway's URL from config (a wildcard bind is reached over loopback).
pub(crate) fn local_url(config: &Config) -> String {
    let host = match config.gateway.bind.as_str() {
        "0.0.0.0" | "localhost" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_owned(),
    };
    format!("ws://{host}:{}", config.gateway.port)
}

/// The local gateway's own shared secret, resolved through the server precedence table.
pub(crate) fn local_credential(ctx: &Ctx, loaded: &LoadedConfig) -> anyhow::Result<Credential> {
    let cfg = &loaded.config;
    let Some((input, origin)) = precedence::server_secret(cfg, &ctx.env, None) else {
        return Ok(Credential::None);
    };
    let value = input
        .resolve(&ctx.env, loaded.base_dir())
        .with_context(|| {
            format!(
                "cannot resolve the gateway {} ({}, from {})",
                cfg.gateway.auth.mode.as_str(),
                input.describe(),
                origin.as_str()
            )
        })?;
    Ok(match cfg.gateway.auth.mode {
        AuthMode::Password => Credential::Password(value),
        _ => Credential::Token(value),
    })
}

fn secret_arg(raw: &str) -> SecretValue {
    let v = SecretValue::new(raw.to_owned());
    // A value given on the command line must not come back out in an error or log line.
    redact::register(&v);
    v
}

fn call(
    ctx: &Ctx,
    a: &ClientArgs,
    method: &str,
    params: Option<Value>,
    scopes: &[&str],
) -> anyhow::Result<Value> {
    let loaded = match Config::load(&ctx.config_path) {
        Ok(l) => Some(l),
        Err(ConfigError::NotFound(_)) if a.url.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    let url = match (&a.url, &loaded) {
        (Some(u), _) => u.clone(),
        (None, Some(l)) => local_url(&l.config),
        (None, None) => anyhow::bail!("no config to find the gateway in; pass --url"),
    };
    let credential = match (&a.token, &a.password, &loaded) {
        (Some(t), _, _) => Credential::Token(secret_arg(t)),
        (_, Some(p), _) => Credential::Password(secret_arg(p)),
        (None, None, Some(l)) => local_credential(ctx, l)?,
        (None, None, None) => Credential::None,
    };
    let mut opts = ConnectOptions::new(url, credential);
    opts.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    opts.timeout = Duration::from_secs(a.timeout.max(1));
    let rt = runtime()?;
    let payload = rt.block_on(async {
        let mut conn = connection::connect(&opts).await?;
        let r = conn.request(method, params).await;
        conn.close().await;
        r
    })?;
    Ok(payload)
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
        let auth = match gw.secret_fingerprint() {
            Some(fp) => format!("{} {fp}", gw.auth_mode().as_str()),
            None => "auth none".to_owned(),
        };
        println!("listening on {} {auth}", gw.url());
        // Tests and supervisors read this line as soon as it is printed.
        let _ = std::io::stdout().flush();
        gw.serve(shutdown_signal()).await?;
        tracing::info!("gateway stopped");
        anyhow::Ok(())
    })?;
    Ok(OK)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
