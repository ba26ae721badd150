use driftless_core::{Config, precedence};

use crate::exit::{CHECK_FAILED, CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Resolve every secret reference and show its fingerprint; exit 1 if any fails
    #[command(
        after_help = "Examples:\n  driftless secrets check\n  driftless secrets check --json | jq '.[] | select(.status != \"ok\")'"
    )]
    Check {
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct Row {
    name: String,
    source: String,
    fingerprint: Option<String>,
    status: &'static str,
    error: Option<String>,
    note: Option<&'static str>,
}

const ENV_NOTE: &str = "env values cannot change while the gateway runs; restart it to rotate";

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let Command::Check { json } = cmd;
    let loaded = Config::load(&ctx.config_path)?;
    // The gateway's own secret follows the server precedence (config, else env), like the gateway.
    let effective = precedence::with_effective_server_secret(&loaded.config, &ctx.env, None);
    let rows: Vec<Row> = effective
        .secret_inputs()
        .into_iter()
        .map(|(name, input)| {
            let note = (!input.can_change_live()).then_some(ENV_NOTE);
            let source = input.describe();
            match input.resolve(&ctx.env, loaded.base_dir()) {
                Ok(v) => Row {
                    name,
                    source,
                    fingerprint: Some(v.fingerprint().to_string()),
                    status: "ok",
                    error: None,
                    note,
                },
                Err(e) => Row {
                    name,
                    source,
                    fingerprint: None,
                    status: "error",
                    error: Some(e.to_string()),
                    note,
                },
            }
        })
        .collect();
    let failed = rows.iter().any(|r| r.status != "ok");
    if json {
        output::print_json(&serde_json::to_value(&rows)?);
    } else if rows.is_empty() {
        println!("No secrets are configured in {}.", loaded.path.display());
    } else {
        let mut t = output::table(&["NAME", "SOURCE", "FINGERPRINT", "STATUS"]);
        for r in &rows {
            let status = match (&r.error, r.note) {
                (Some(e), _) => format!("error: {e}"),
                (None, Some(n)) => format!("ok ({n})"),
                (None, None) => "ok".into(),
            };
            t.add_row(vec![
                r.name.clone(),
                r.source.clone(),
                r.fingerprint.clone().unwrap_or("-".into()),
                status,
            ]);
        }
        println!("{}", driftless_core::redact::redact(&t.to_string()));
    }
    Ok(if failed { CHECK_FAILED } else { OK })
}
