//! `driftless token rotate`: parses its flags, calls [`driftless_ops::rotation::rotate`], prints.

use driftless_ops::rotation::{self, Rotated};
use serde_json::json;

use crate::exit::{CmdResult, OK, UNREACHABLE};
use crate::{Ctx, output};

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
    let r = rotation::rotate(
        &ctx.config_path,
        &ctx.state_dir,
        &ctx.env,
        no_grace,
        &mut |lock| {
            eprintln!(
                "another `driftless token rotate` is running (it holds {}); waiting for it to finish",
                lock.display()
            )
        },
    )?;
    if json {
        output::print_json(&json!({
            "oldFingerprint": r.old_fingerprint,
            "newFingerprint": r.new_fingerprint,
            "writtenTo": r.written_to,
            "gatewayAccepted": r.gateway_accepted,
            "graceEndsAtMs": r.grace_ends_at_ms,
        }));
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
}
