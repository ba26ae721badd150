use driftless_core::{Config, precedence};
use driftless_ops::migrate::{self, Target};

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
    /// Move literal secrets out of the config into 0600 files (or an env var) and reference them
    #[command(
        after_help = "Examples:\n  driftless secrets migrate\n  driftless secrets migrate gateway.auth.token\n  \
                      driftless secrets migrate gateway.auth.token --to-env DRIFTLESS_GATEWAY_TOKEN\n\n\
                      The file is written (or checked) first and the config backed up before it is rewritten;\n\
                      a second run changes nothing. `driftless doctor --fix` does the same for every literal."
    )]
    Migrate {
        /// Only this secret (its config path, e.g. gateway.auth.token)
        secret: Option<String>,
        /// Reference this environment variable instead of a file; it must already hold the value
        #[arg(long, value_name = "VAR")]
        to_env: Option<String>,
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
    match cmd {
        Command::Check { json } => check(ctx, json),
        Command::Migrate {
            secret,
            to_env,
            json,
        } => migrate(ctx, secret.as_deref(), to_env, json),
    }
}

fn migrate(ctx: &Ctx, secret: Option<&str>, to_env: Option<String>, json: bool) -> CmdResult {
    let target = to_env.map_or(Target::File, Target::Env);
    let moved =
        migrate::migrate_literals(&ctx.config_path, secret, &target, &ctx.env, &ctx.state_dir)?;
    if json {
        output::print_json(&serde_json::to_value(&moved)?);
    } else if moved.is_empty() {
        say!(
            "No changes: no literal secret to migrate in {}.",
            ctx.config_path.display()
        );
    } else {
        for m in &moved {
            if let Some(f) = &m.wrote_file {
                say!("Wrote {} (mode 0600)", f.display());
            }
            say!(
                "{} now references {} (config backup: {})",
                m.name,
                m.reference,
                m.backup.display()
            );
            if let Some(t) = &m.config_symlink_target {
                say!(
                    "{} is a symlink; its target {} was updated and the link kept",
                    ctx.config_path.display(),
                    t.display()
                );
            }
        }
    }
    Ok(OK)
}

fn check(ctx: &Ctx, json: bool) -> CmdResult {
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
        say!("No secrets are configured in {}.", loaded.path.display());
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
        say!("{}", driftless_core::redact::redact(&t.to_string()));
    }
    Ok(if failed { CHECK_FAILED } else { OK })
}
