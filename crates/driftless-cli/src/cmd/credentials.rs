//! `driftless credentials explain`: every candidate source of the gateway's secret and of the
//! credential this client presents, which one wins and why (built by
//! [`driftless_client::explain`]; this renders it). Never a value, only fingerprints.

use driftless_client::explain::{Explanation, explain};
use driftless_core::precedence::Side;
use driftless_core::{Config, ConfigError};

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

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let Command::Explain { url, json } = cmd;
    let (config, found) = match Config::load(&ctx.config_path) {
        Ok(l) => (l.config, true),
        // Nothing configured is a state worth explaining, not an error.
        Err(ConfigError::NotFound(_)) => (Config::default(), false),
        Err(e) => return Err(e.into()),
    };
    let report = explain(
        &config,
        &ctx.config_path,
        found,
        &ctx.state_dir,
        &ctx.env,
        url.as_deref(),
    )?;
    if json {
        output::print_json(&serde_json::to_value(&report)?);
    } else {
        say!("{}", driftless_core::redact::redact(&human(&report)));
    }
    Ok(OK)
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

fn human(r: &Explanation) -> String {
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
