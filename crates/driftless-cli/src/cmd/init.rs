use crate::exit::{CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  driftless init\n  driftless init --json\n  DRIFTLESS_CONFIG=./gw.toml driftless init"
)]
pub struct Args {
    /// Rewrite an existing config from the template (it is backed up first; an unparsable
    /// config is never replaced)
    #[arg(long)]
    force: bool,
    /// Print what was done as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> CmdResult {
    let report = driftless_ops::init::init(&ctx.config_path, &ctx.state_dir, &ctx.env, args.force)?;
    if args.json {
        output::print_json(&serde_json::to_value(&report)?);
        return Ok(OK);
    }
    if !report.changed() {
        say!(
            "Nothing to do: {} exists and its token file is in place.",
            report.config_path.display()
        );
    }
    if let Some(b) = &report.backup {
        say!("Backed up the previous config to {}", b.display());
    }
    if report.wrote_config {
        say!("Wrote config {}", report.config_path.display());
    }
    if let (true, Some(t)) = (report.wrote_token, &report.token_file) {
        say!("Generated gateway token in {} (mode 0600)", t.display());
    }
    Ok(OK)
}
