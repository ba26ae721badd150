//! `driftless token rotate`: a fresh gateway token written to where the token lives, then proof
//! that the running gateway accepts it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use driftless_client::connection::{self, ClientError, ConnectOptions, Credential};
use driftless_core::config::AuthMode;
use driftless_core::config_edit::ConfigDocument;
use driftless_core::precedence::{self, ServerSecretOrigin};
use driftless_core::{Config, SecretInput, SecretRef, atomic, redact, secret};
use serde_json::json;

use crate::cmd::gateway::runtime;
use crate::exit::{CmdResult, OK, UNREACHABLE};
use crate::{Ctx, output};
use driftless_client::credentials::local_url;

/// How long to wait for the running gateway to pick the new token up.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(10);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a fresh random gateway token to its source and wait until the gateway accepts it
    #[command(
        after_help = "Examples:\n  driftless token rotate\n  driftless token rotate --no-grace --json"
    )]
    Rotate {
        /// End the old token's grace window at once (sessions using it are closed)
        #[arg(long)]
        no_grace: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let Command::Rotate { no_grace, json } = cmd;
    Ok(rotate(ctx, no_grace, json)?)
}

fn rotate(ctx: &Ctx, no_grace: bool, json: bool) -> anyhow::Result<u8> {
    let loaded = Config::load(&ctx.config_path)?;
    let cfg = &loaded.config;
    if cfg.gateway.auth.mode != AuthMode::Token {
        bail!(
            "gateway.auth.mode is {:?}, so there is no gateway token to rotate; change the {} at its source and run `driftless gateway call secrets.reload`",
            cfg.gateway.auth.mode.as_str(),
            cfg.gateway.auth.mode.as_str()
        );
    }
    let Some((input, origin)) = precedence::server_secret(cfg, &ctx.env, None) else {
        bail!("no gateway token is configured; run `driftless init` to create one");
    };
    let old = input
        .resolve(&ctx.env, loaded.base_dir())
        .context("cannot read the current gateway token")?;
    let new = secret::random_token();
    redact::register(&new);
    let written_to = match (&input, origin) {
        (_, ServerSecretOrigin::Env) | (SecretInput::Ref(SecretRef::Env { .. }), _) => bail!(
            "the gateway token comes from the environment ({}), which cannot change while the gateway runs; \
             set a new value where that variable is defined and restart the gateway, or move the token \
             to a file (`driftless init --force` writes a file-referenced config)",
            input.describe()
        ),
        (SecretInput::Ref(SecretRef::Exec { .. }), _) => bail!(
            "the gateway token comes from a command ({}); rotate it in the store that command reads, \
             then run `driftless gateway call secrets.reload`",
            input.describe()
        ),
        (SecretInput::Ref(SecretRef::File { .. }), _) => {
            let path = input
                .file_path(&ctx.env, loaded.base_dir())
                .expect("a file reference has a path")?;
            let written = atomic::write_private(&path, format!("{}\n", new.expose()).as_bytes())?;
            format!("file {}", written.describe())
        }
        (SecretInput::Literal(_), _) => {
            let mut doc = ConfigDocument::open(&loaded.path)?;
            doc.set_value("gateway.auth.token", new.expose().into());
            doc.save()?;
            format!(
                "config {} (a literal; consider a file reference)",
                loaded.path.display()
            )
        }
    };

    let url = local_url(cfg);
    let rt = runtime()?;
    let confirmed = rt.block_on(confirm(&url, &new, no_grace))?;
    let grace_ends_at_ms = confirmed
        .as_ref()
        .and_then(|s| s["auth"]["grace"]["endsAtMs"].as_u64());
    if json {
        output::print_json(&json!({
            "oldFingerprint": old.fingerprint(),
            "newFingerprint": new.fingerprint(),
            "writtenTo": written_to,
            "gatewayAccepted": confirmed.is_some(),
            "graceEndsAtMs": grace_ends_at_ms,
        }));
    } else {
        println!(
            "rotated gateway token {} -> {}",
            old.fingerprint(),
            new.fingerprint()
        );
        println!("wrote {written_to}");
        match (&confirmed, grace_ends_at_ms) {
            (None, _) => {
                println!("no gateway answered at {url}; it will use the new token when it starts")
            }
            (Some(_), Some(ms)) => println!(
                "the gateway at {url} accepts the new token; the old one works until {ms} (unix ms)"
            ),
            (Some(_), None) => {
                println!("the gateway at {url} accepts the new token; the old one no longer works")
            }
        }
    }
    if confirmed.is_none() {
        return Ok(UNREACHABLE);
    }
    Ok(OK)
}

/// Connects with the new token until the gateway accepts it (bounded). Returns its `status`, or
/// `None` when no gateway is listening.
async fn confirm(
    url: &str,
    new: &driftless_core::SecretValue,
    no_grace: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let mut opts = ConnectOptions::new(url, Credential::Token(new.clone()));
    opts.scopes = vec![driftless_protocol::scopes::ADMIN.to_owned()];
    opts.timeout = Duration::from_secs(3);
    let deadline = Instant::now() + ACCEPT_DEADLINE;
    let mut conn = loop {
        match connection::connect(&opts).await {
            Ok(c) => break c,
            Err(ClientError::Unreachable { .. }) => return Ok(None),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the gateway at {url} still refuses the new token after {ACCEPT_DEADLINE:?}; \
                     is it reading a different token source? Check `driftless gateway status`"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if no_grace {
        conn.request("secrets.reload", Some(json!({"endGrace": true})))
            .await
            .map_err(anyhow::Error::new)?;
    }
    let status = conn
        .request("status", None)
        .await
        .map_err(anyhow::Error::new)?;
    conn.close().await;
    Ok(Some(status))
}
