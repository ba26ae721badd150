//! `driftless doctor [--fix] [--json] [--openclaw]`: every drift check, and idempotent repairs.

use driftless_ops::doctor::{Action, Audit, Doctor, Row};

use crate::cmd::daemon::{ScopeArgs, paths, scope};
use crate::exit::{CHECK_FAILED, CONFIG, CmdResult, OK};
use crate::{Ctx, output};

/// `doctor --json`.
#[derive(serde::Serialize)]
struct Report<'a> {
    checks: &'a [Row],
    findings: usize,
    stopped: bool,
    /// With `--fix` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<&'a [Action]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  driftless doctor\n  driftless doctor --fix\n  \
                        driftless doctor --json | jq '.checks[] | select(.status == \"finding\")'\n  \
                        driftless doctor --fix --openclaw   # also repair ~/.openclaw\n\n\
                        Exit status: 0 clean, 1 findings remain, 78 the config does not parse (nothing changed)."
)]
pub struct Args {
    /// Apply every fix (each writes a 0600 backup beside the file first), then audit again
    #[arg(long)]
    fix: bool,
    #[arg(long)]
    json: bool,
    /// With --fix, also repair an OpenClaw installation (it is always audited when present)
    #[arg(long)]
    openclaw: bool,
    #[command(flatten)]
    scope: ScopeArgs,
}

pub fn run(ctx: &Ctx, args: Args) -> CmdResult {
    let (binary, config_path, state_dir) = paths(ctx)?;
    let doctor = Doctor {
        env: ctx.env.clone(),
        config_path,
        state_dir,
        binary,
        scope: scope(ctx, &args.scope),
        openclaw: args.openclaw,
    };
    let (actions, fix_error) = match args.fix.then(|| doctor.fix()) {
        Some(outcome) => (Some(outcome.actions), outcome.error),
        None => (None, None),
    };
    let audit = doctor.audit();
    if args.json {
        let report = Report {
            checks: &audit.rows,
            findings: audit.findings(),
            stopped: audit.stopped,
            actions: actions.as_deref(),
            error: fix_error.as_ref().map(|e| format!("{e}")),
        };
        output::print_json(&serde_json::to_value(&report)?);
    } else {
        if let Some(actions) = &actions {
            if actions.is_empty() && fix_error.is_none() {
                say!("No changes: nothing doctor can repair was found.");
            } else if !actions.is_empty() {
                say!("Fixed:");
                for a in actions {
                    let bak = a
                        .backup
                        .as_ref()
                        .map(|b| format!(" (backup: {})", b.display()))
                        .unwrap_or_default();
                    say!("  - {}{bak}", a.did);
                }
            }
            say!();
        }
        print_table(&audit);
    }
    if let Some(e) = fix_error {
        // The changes above were made; this one failed. The table shows what remains.
        return Err(anyhow::Error::new(e).context("doctor --fix stopped").into());
    }
    Ok(if audit.stopped {
        CONFIG
    } else if audit.findings() > 0 {
        CHECK_FAILED
    } else {
        OK
    })
}

fn print_table(audit: &Audit) {
    let mut t = output::table(&["CHECK", "STATUS", "FINDING", "FIX"]);
    for r in &audit.rows {
        t.add_row(vec![
            r.check.to_owned(),
            serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.finding.clone(),
            r.fix.clone(),
        ]);
    }
    say!("{}", driftless_core::redact::redact(&t.to_string()));
    let n = audit.findings();
    if audit.stopped {
        say!(
            "Stopped: the config does not parse; nothing else was checked and nothing was changed."
        );
    } else if n == 0 {
        say!("Clean: no findings.");
    } else {
        say!("{n} finding(s). `driftless doctor --fix` repairs what it can.");
    }
}
