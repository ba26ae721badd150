//! `driftless credentials explain`: every candidate source of the gateway's secret and of the
//! credential this client presents, which one wins and why. Never a value, only fingerprints.

use driftless_client::credentials::{Candidates, Explicit, target};
use driftless_client::identity::DeviceIdentity;
use driftless_client::store::TokenStore;
use driftless_core::config::AuthMode;
use driftless_core::precedence::{self, ClientSource, Locality, ServerSecretOrigin};
use driftless_core::{Config, ConfigError, SecretInput, SecretRef};
use serde::Serialize;

use crate::exit::{CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show every candidate credential source, its fingerprint, the winner and why
    #[command(
        after_help = "Examples:\n  driftless credentials explain\n  driftless credentials explain --url ws://127.0.0.1:18789 --json"
    )]
    Explain {
        /// Gateway URL to explain the client side for [default: gateway.remote.url, else the local gateway]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Row {
    rank: usize,
    source: String,
    /// Where the value comes from (`file:/…`, `env:NAME`, …), never the value.
    origin: Option<String>,
    set: bool,
    fingerprint: Option<String>,
    error: Option<String>,
    wins: bool,
    note: Option<String>,
}

#[derive(Serialize)]
struct Side {
    subject: String,
    candidates: Vec<Row>,
    winner: Option<String>,
    why: String,
}

#[derive(Serialize)]
struct Report {
    config: String,
    config_found: bool,
    gateway: Side,
    client: Side,
    warnings: Vec<String>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let Command::Explain { url, json } = cmd;
    let (config, found) = match Config::load(&ctx.config_path) {
        Ok(l) => (l.config, true),
        // Nothing configured is a state worth explaining, not an error.
        Err(ConfigError::NotFound(_)) => (Config::default(), false),
        Err(e) => return Err(e.into()),
    };
    let base = ctx
        .config_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    let mut warnings = Vec::new();
    let gateway = gateway_side(&config, ctx, &base, &mut warnings);
    let client = client_side(&config, ctx, &base, url.as_deref(), &mut warnings)?;
    let report = Report {
        config: ctx.config_path.display().to_string(),
        config_found: found,
        gateway,
        client,
        warnings,
    };
    if json {
        output::print_json(&serde_json::to_value(&report)?);
    } else {
        say!("{}", driftless_core::redact::redact(&human(&report)));
    }
    Ok(OK)
}

fn resolve(
    input: &SecretInput,
    ctx: &Ctx,
    base: &std::path::Path,
) -> (Option<String>, Option<String>) {
    match input.resolve(&ctx.env, base) {
        Ok(v) => (Some(v.fingerprint().to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

fn gateway_side(
    config: &Config,
    ctx: &Ctx,
    base: &std::path::Path,
    warnings: &mut Vec<String>,
) -> Side {
    let mode = config.gateway.auth.mode;
    let subject = format!("the gateway configured here (auth mode {})", mode.as_str());
    let Some(name) = precedence::server_secret_name(mode) else {
        return Side {
            subject,
            candidates: vec![],
            winner: None,
            why: "auth mode none: no shared secret (allowed only on a loopback bind)".into(),
        };
    };
    let (configured, env_name) = match mode {
        AuthMode::Password => (
            &config.gateway.auth.password,
            precedence::GATEWAY_PASSWORD_ENV,
        ),
        _ => (&config.gateway.auth.token, precedence::GATEWAY_TOKEN_ENV),
    };
    let winner = precedence::server_secret(config, &ctx.env, None).map(|(_, o)| o);
    let flag = if mode == AuthMode::Password {
        "--password"
    } else {
        "--token"
    };
    let mut rows = vec![Row {
        rank: 1,
        source: format!("{flag} on gateway run"),
        origin: None,
        set: false,
        fingerprint: None,
        error: None,
        wins: false,
        note: Some("only the running gateway's command line shows it".into()),
    }];
    let (cfg_fp, cfg_err) = configured
        .as_ref()
        .map(|i| resolve(i, ctx, base))
        .unwrap_or((None, None));
    rows.push(Row {
        rank: 2,
        source: name.into(),
        origin: configured.as_ref().map(SecretInput::describe),
        set: configured.is_some(),
        fingerprint: cfg_fp.clone(),
        error: cfg_err,
        wins: winner == Some(ServerSecretOrigin::Config),
        note: None,
    });
    let env_input = SecretInput::Ref(SecretRef::Env {
        id: env_name.into(),
    });
    let env_set = ctx.env.non_empty(env_name).is_some();
    let env_fp = env_set.then(|| resolve(&env_input, ctx, base).0).flatten();
    rows.push(Row {
        rank: 3,
        source: env_name.into(),
        origin: env_set.then(|| env_input.describe()),
        set: env_set,
        fingerprint: env_fp.clone(),
        error: None,
        wins: winner == Some(ServerSecretOrigin::Env),
        note: (env_set && configured.is_some())
            .then(|| "ignored: config sets a value, and config comes first".into()),
    });
    if let (Some(c), Some(e)) = (&cfg_fp, &env_fp)
        && c != e
    {
        warnings.push(format!(
            "{env_name} ({e}) differs from {name} ({c}); the gateway uses the config value. Remove the variable (or make them equal) so nothing presents the wrong one."
        ));
    }
    let why = match winner {
        Some(ServerSecretOrigin::Config) => {
            format!("{name} is set in config; config comes before the environment")
        }
        Some(ServerSecretOrigin::Env) => format!("config sets no {name}, so {env_name} is used"),
        Some(ServerSecretOrigin::Explicit) => "an explicit flag".into(),
        None => format!(
            "nothing is set: `driftless init` (or `driftless gateway run`) creates {name} as a file reference"
        ),
    };
    Side {
        subject,
        candidates: rows,
        winner: winner.map(|o| o.as_str().to_owned()),
        why,
    }
}

fn client_side(
    config: &Config,
    ctx: &Ctx,
    base: &std::path::Path,
    url: Option<&str>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Side> {
    let t = target(config, url)?;
    let role = "operator";
    let identity = DeviceIdentity::load_existing(&ctx.state_dir);
    let store = match &identity {
        Some(id) => Some(TokenStore::load(&ctx.state_dir, id.device_id())?),
        None => None,
    };
    let subject = format!(
        "this client, talking to {} ({}), role {role}",
        t.url,
        match t.locality {
            Locality::Local => "the local gateway",
            Locality::Remote => "a remote gateway",
        }
    );
    let cands = Candidates::gather(
        config,
        base,
        &ctx.env,
        t,
        role,
        &Explicit::default(),
        store.as_ref(),
    );
    let winner = cands.winner();
    let rows = cands
        .list
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (fingerprint, error) = match &c.value {
                Some(Ok(v)) => (Some(v.fingerprint().to_string()), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, None),
            };
            let note = match c.source {
                ClientSource::ExplicitToken | ClientSource::ExplicitPassword => {
                    Some("given per command; always wins, never replaced".to_owned())
                }
                ClientSource::StoredDeviceToken if identity.is_none() => {
                    Some("no device identity yet (created on first connect)".to_owned())
                }
                s if c.present() && winner.is_some() && Some(s) != winner => Some(format!(
                    "not used: {} comes first",
                    winner.map(ClientSource::describe).unwrap_or_default()
                )),
                _ => None,
            };
            Row {
                rank: i + 1,
                source: c.source.describe().to_owned(),
                origin: c.origin.clone(),
                set: c.value.is_some(),
                fingerprint,
                error,
                wins: Some(c.source) == winner,
                note,
            }
        })
        .collect();
    for (a, b) in cands.disagreements() {
        warnings.push(format!(
            "{} and {} are both set and differ; {} comes first in the table.",
            a.describe(),
            b.describe(),
            a.describe()
        ));
    }
    let why = match winner {
        None => "nothing to present: no flag, no stored device token, no shared credential".into(),
        Some(ClientSource::StoredDeviceToken) => {
            let fallback = cands.passive_winner();
            format!(
                "a device token issued to this device for this gateway beats passive shared credentials{}",
                fallback
                    .map(|f| format!(
                        "; if the gateway rejects it, it is deleted and {} is tried once",
                        f.describe()
                    ))
                    .unwrap_or_default()
            )
        }
        Some(s) => format!("{} is the first set source in the table", s.describe()),
    };
    Ok(Side {
        subject,
        candidates: rows,
        winner: winner.map(|w| w.describe().to_owned()),
        why,
    })
}

fn side_text(out: &mut String, title: &str, side: &Side) {
    out.push_str(&format!("{title}: {}\n", side.subject));
    for r in &side.candidates {
        let state = match (&r.fingerprint, &r.error, r.set) {
            (Some(fp), _, _) => fp.clone(),
            (None, Some(e), _) => format!("unresolved ({e})"),
            (None, None, true) => "set".into(),
            (None, None, false) => "not set".into(),
        };
        let origin = r
            .origin
            .as_ref()
            .map(|o| format!(" [{o}]"))
            .unwrap_or_default();
        let mark = if r.wins { "  <= wins" } else { "" };
        let note = r
            .note
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {}. {}{origin}: {state}{mark}{note}\n",
            r.rank, r.source
        ));
    }
    out.push_str(&format!(
        "  winner: {}\n  why: {}\n",
        side.winner.as_deref().unwrap_or("none"),
        side.why
    ));
}

fn human(r: &Report) -> String {
    let mut out = String::new();
    if !r.config_found {
        out.push_str(&format!(
            "No config file at {} (defaults apply).\n\n",
            r.config
        ));
    } else {
        out.push_str(&format!("Config: {}\n\n", r.config));
    }
    side_text(&mut out, "Gateway", &r.gateway);
    out.push('\n');
    side_text(&mut out, "Client", &r.client);
    if !r.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in &r.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out.trim_end().to_owned()
}
