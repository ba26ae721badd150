use driftless_core::Config;

use crate::exit::{CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the config file's path
    Path,
    /// Print the effective config (defaults filled in); secrets show as references, never values
    #[command(after_help = "Examples:\n  driftless config show\n  driftless config show --json")]
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Parse and check the config; exit 78 with file:line:column if it is invalid
    Validate,
    /// Print the config's JSON Schema (for editors)
    Schema,
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    match cmd {
        Command::Path => say!("{}", ctx.config_path.display()),
        Command::Show { json } => {
            let loaded = Config::load(&ctx.config_path)?;
            if json {
                output::print_json(&serde_json::to_value(&loaded.config)?);
            } else {
                say!("# {}", loaded.path.display());
                output::print_text(&toml::to_string(&loaded.config)?);
            }
        }
        Command::Validate => {
            Config::load(&ctx.config_path)?;
            say!("{}: valid", ctx.config_path.display());
        }
        Command::Schema => output::print_json(&Config::json_schema()),
    }
    Ok(OK)
}
