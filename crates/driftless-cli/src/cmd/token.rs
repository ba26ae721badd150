//! `driftless token rotate`: parses its flags, calls [`driftless_ops::rotation::rotate`], prints.

use driftless_core::Fingerprint;
use driftless_ops::rotation::{self, Rotated};

use crate::exit::{CmdResult, OK, UNREACHABLE};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a fresh random gateway token to its source and wait until the gateway accepts it
    #[command(
        after_help = "Examples:\n  driftless token rotate\n  driftless token rotate --no-grace --json\n  driftless token rotate --wait    # several replicas: until every live one accepts it"
    )]
    Rotate {
        /// End the old token's grace window at once (sessions using it are closed)
        #[arg(long)]
        no_grace: bool,
        /// Then wait (up to 60 s) until every live replica of the gateway's fleet accepts the new
        /// token; progress on stderr
        #[arg(long)]
        wait: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

/// `token rotate --json`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RotateReport<'a> {
    old_fingerprint: &'a Fingerprint,
    new_fingerprint: &'a Fingerprint,
    written_to: &'a str,
    gateway_accepted: bool,
    grace_ends_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas_accepting: Option<usize>,
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let Command::Rotate {
        no_grace,
        wait,
        json,
    } = cmd;
    let mut progress = |accepting: usize, live: usize| {
        eprintln!("{accepting} of {live} live replicas accept the new token");
    };
    let r = rotation::rotate(
        &ctx.config_path,
        &ctx.state_dir,
        &ctx.env,
        no_grace,
        wait.then_some(&mut progress as rotation::Progress<'_>),
        &mut |lock| {
            eprintln!(
                "another `driftless token rotate` is running (it holds {}); waiting for it to finish",
                lock.display()
            )
        },
    )?;
    if json {
        output::print_json(&serde_json::to_value(RotateReport {
            old_fingerprint: &r.old_fingerprint,
            new_fingerprint: &r.new_fingerprint,
            written_to: &r.written_to,
            gateway_accepted: r.gateway_accepted,
            grace_ends_at_ms: r.grace_ends_at_ms,
            replicas_accepting: r.replicas_accepting,
        })?);
    } else {
        print_human(&r);
    }
    Ok(if r.gateway_accepted { OK } else { UNREACHABLE })
}

fn print_human(r: &Rotated) {
    say!(
        "rotated gateway token {} -> {}",
        r.old_fingerprint,
        r.new_fingerprint
    );
    say!("wrote {}", r.written_to);
    let url = &r.url;
    match (r.gateway_accepted, r.grace_ends_at_ms) {
        (false, _) => {
            say!("no gateway answered at {url}; it will use the new token when it starts")
        }
        (true, Some(ms)) => say!(
            "the gateway at {url} accepts the new token; the old one works until {}",
            output::when(ms)
        ),
        (true, None) => {
            say!("the gateway at {url} accepts the new token; the old one no longer works")
        }
    }
    if let Some(n) = r.replicas_accepting.filter(|n| *n > 0) {
        say!("all {n} live replicas accept the new token");
    }
}
