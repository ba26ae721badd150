//! `driftless supervise`: a thin wrapper over `driftless_supervisor::run`.

use std::time::Duration;

use anyhow::Context;
use driftless_supervisor::spec::{self, ControlAddr, ReadyProbe, ReloadMode};

use crate::Ctx;
use crate::exit::{CONFIG, CmdResult, Failure};

const HELP: &str = "\
Secret references (for --env and --control-token; literals are refused, `ps` would show them):
  file:/path/to/secret   the whole file minus one trailing newline; mode 0600 or stricter
  env:VARIABLE           the supervisor's own environment (cannot change while it runs)
  exec:program arg ...   a command's standard output (argv split on whitespace, no shell)

On a change the supervisor re-resolves first: a source that fails to resolve never disturbs
the running child (the error is logged and shown in /status). Then it sends --reload's signal,
or with --reload none restarts the child: SIGTERM to its process group, --grace, SIGKILL,
respawn with the fresh environment, wait for --ready. SIGTERM or SIGINT to the supervisor stop
the child and exit with its code; SIGHUP re-resolves at once.

Control endpoint (e.g. curl --unix-socket PATH http://localhost/status):
  GET  /status
  POST /env/patch  {\"set\": {\"NAME\": \"file:/new/path\"}, \"unset\": [\"OLD\"]}
       -> {\"ok\": true, \"restarted\": bool, \"signaled\": bool, \"pid\": N}

Examples:
  driftless supervise --env API_KEY=file:/run/secrets/api --ready tcp:8080 -- ./server
  driftless supervise --env 'TOKEN=exec:pass show ci/token' --reload signal:HUP -- ./worker
  driftless supervise --env KEY=file:key --control http:127.0.0.1:7070 \\
      --control-token file:/etc/driftless/ctl-token -- ./app";

#[derive(clap::Args)]
#[command(after_help = HELP)]
pub struct Args {
    /// A variable for the child: NAME=<secret reference> (repeatable; see the syntax below)
    #[arg(long = "env", value_name = "NAME=REF")]
    env: Vec<String>,
    /// On a change: `signal:HUP` (or USR1, USR2, ...) for programs that re-read their sources,
    /// `none` to restart env-only programs
    #[arg(long, value_name = "signal:NAME|none", default_value = "none", value_parser = spec::parse_reload)]
    reload: ReloadMode,
    /// When a (re)started child is ready: `tcp:PORT`, `tcp:HOST:PORT` or `http://HOST:PORT/path`
    #[arg(long, value_name = "PROBE", value_parser = spec::parse_ready)]
    ready: Option<ReadyProbe>,
    /// Control endpoint: `unix:PATH` or `http:127.0.0.1:PORT` [default: unix socket
    /// $XDG_RUNTIME_DIR/driftless/supervise.sock, else in the state directory]
    #[arg(long, value_name = "ADDR", value_parser = spec::parse_control)]
    control: Option<ControlAddr>,
    /// Bearer token for an HTTP control endpoint, as a secret reference
    #[arg(long, value_name = "REF")]
    control_token: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping the child
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace: u64,
    /// Quiet time after a file change before acting (a burst becomes one restart)
    #[arg(long, value_name = "MS", default_value_t = 250)]
    debounce_ms: u64,
    /// Re-resolve every source this often even without a file event (exec sources, missed events)
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    recheck: u64,
    /// How long to wait for --ready after a (re)start
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    ready_timeout: u64,
    /// First wait before respawning a crashed child; doubles per crash
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    backoff_min_ms: u64,
    /// Longest wait before respawning a crashed child
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    backoff_max: u64,
    /// The program to run and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> CmdResult {
    // Parsed here rather than by clap, whose errors would echo a mistyped literal secret.
    let env = args
        .env
        .iter()
        .map(|a| spec::parse_env_arg(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::new(CONFIG, e))?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some((dup, _)) = env.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(Failure::new(
            CONFIG,
            anyhow::anyhow!("--env {dup}=... is given twice; keep one reference per variable"),
        ));
    }
    let control_token = args
        .control_token
        .as_deref()
        .map(|t| spec::parse_secret_input("--control-token", t))
        .transpose()
        .map_err(|e| Failure::new(CONFIG, e))?;
    let control = args.control.unwrap_or_else(|| {
        let dir = match driftless_core::paths::runtime_dir(&ctx.env) {
            Some(run) => run.join("driftless"),
            None => ctx.state_dir.clone(),
        };
        ControlAddr::Unix(dir.join("supervise.sock"))
    });
    let opts = driftless_supervisor::Options {
        env,
        reload: args.reload,
        ready: args.ready,
        control,
        control_token,
        command: args.command,
        grace: Duration::from_secs(args.grace),
        debounce: Duration::from_millis(args.debounce_ms),
        recheck: Duration::from_secs(args.recheck.max(1)),
        ready_timeout: Duration::from_secs(args.ready_timeout),
        backoff_min: Duration::from_millis(args.backoff_min_ms.max(1)),
        backoff_max: Duration::from_secs(args.backoff_max)
            .max(Duration::from_millis(args.backoff_min_ms)),
    };
    let base = std::env::current_dir().context("cannot read the current directory")?;
    let code = driftless_supervisor::run(opts, ctx.env.clone(), base)?;
    Ok(u8::try_from(code).unwrap_or(1))
}
