//! `driftless`: the command line. Each command is a thin wrapper around a library function;
//! exit codes are decided in one place ([`exit`]).

#[macro_use]
mod output;
mod cmd;
mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use driftless_core::{Env, paths};

/// A gateway and its tooling in which a credential cannot drift.
#[derive(Parser)]
#[command(name = "driftless", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Config file [default: $DRIFTLESS_CONFIG, else $XDG_CONFIG_HOME/driftless/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log line format (logs go to stderr, always redacted)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  driftless gateway run              # start the gateway (creates config and token on first run)
  driftless init                     # write a config whose token is a file reference
  driftless secrets check --json     # resolve every secret reference, show fingerprints
  driftless config show              # the effective config, references only
  driftless daemon install           # run the gateway as a service (the unit holds no secret)
  driftless doctor --fix             # find copies of secrets that can drift, and repair them
  driftless supervise --env KEY=file:/run/secrets/key -- ./server   # restart on rotation";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a config and a random gateway token file (idempotent)
    Init(cmd::init::Args),
    /// Inspect the config file
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Check and manage secret references
    #[command(subcommand)]
    Secrets(cmd::secrets::Command),
    /// Explain which credential the gateway and this client use, and why
    #[command(subcommand)]
    Credentials(cmd::credentials::Command),
    /// Pair, list, rotate and revoke devices on a gateway
    #[command(subcommand)]
    Devices(cmd::devices::Command),
    /// Run the gateway, or talk to a running one
    #[command(subcommand)]
    Gateway(cmd::gateway::Command),
    /// Rotate the gateway token
    #[command(subcommand)]
    Token(cmd::token::Command),
    /// Install and manage the gateway service (systemd / launchd)
    #[command(subcommand)]
    Daemon(cmd::daemon::Command),
    /// Find secrets that can drift (units, plaintext, permissions) and repair them with --fix
    Doctor(cmd::doctor::Args),
    /// Run a program with secrets from references in its environment; restart or signal it when they change
    Supervise(Box<cmd::supervise::Args>),
}

/// What every command gets: the environment (read once) and the resolved paths.
pub struct Ctx {
    pub env: Env,
    pub config_path: PathBuf,
    /// The config path was named with `--config` (a service unit does this), so a missing file is
    /// an error rather than a first run.
    pub config_explicit: bool,
    pub state_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    init_logging(cli.log_format, &env);
    let ctx = Ctx {
        config_path: cli
            .config
            .clone()
            .unwrap_or_else(|| paths::config_file(&env)),
        config_explicit: cli.config.is_some(),
        state_dir: paths::state_dir(&env),
        env,
    };
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Config(c) => cmd::config::run(&ctx, c),
        Command::Secrets(c) => cmd::secrets::run(&ctx, c),
        Command::Credentials(c) => cmd::credentials::run(&ctx, c),
        Command::Devices(c) => cmd::devices::run(&ctx, c),
        Command::Gateway(c) => cmd::gateway::run(&ctx, c),
        Command::Token(c) => cmd::token::run(&ctx, c),
        Command::Daemon(c) => cmd::daemon::run(&ctx, c),
        Command::Doctor(a) => cmd::doctor::run(&ctx, a),
        Command::Supervise(a) => cmd::supervise::run(&ctx, *a),
    };
    exit::finish(result)
}

/// The `tracing` filter (`info` unless set).
const LOG_ENV: &str = "DRIFTLESS_LOG";

fn init_logging(format: LogFormat, env: &Env) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(env.get(LOG_ENV).unwrap_or("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = driftless_core::redact::RedactingWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(output::color_enabled(env)).init(),
        LogFormat::Json => builder.json().init(),
    }
}
