//! `driftless-bench`: handshake, idle, start-up and rotation benchmarks of the driftless gateway,
//! side by side with OpenClaw's gateway (issue 8) and, for token sessions, with the floor: a
//! minimal server on the same stack doing the same exchange (issue 12). Loopback only, bounded in
//! count and time.
//!
//! With the peer enabled the bench re-executes itself inside a private network namespace
//! (`unshare -n`, then `ip link set lo up`): OpenClaw tries to reach the internet even with every
//! documented switch off, and both gateways and all clients then share the same loopback-only
//! network.

mod fleet;
mod floor;
mod proxy;
mod relay;
mod report;
mod scenarios;
mod server;
mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use driftless_core::Env;

use crate::floor::{Comparison, FloorReport};
use crate::report::{Report, TargetReport};
use crate::scenarios::HandshakeAuth;
use crate::server::{Kind, OpenClawInstall, Server, Workdir};

#[derive(Debug, Clone, Parser)]
#[command(name = "driftless-bench", version, about, after_help = EXAMPLES)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    /// Tiny counts, driftless only (CI): proves the tool still works, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// The `driftless` binary to benchmark [default: `driftless` next to this binary].
    #[arg(long, value_name = "PATH")]
    driftless_bin: Option<PathBuf>,
    /// Skip OpenClaw's gateway (the peer).
    #[arg(long)]
    no_peer: bool,
    /// Where scripts/install-openclaw-peer.sh installed Node 24 and OpenClaw
    /// [default: ${XDG_CACHE_HOME:-~/.cache}/driftless-bench].
    #[arg(long, value_name = "DIR")]
    openclaw_home: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH", default_value = "driftless-bench.json")]
    json: PathBuf,
    /// Idle connection counts to hold.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Seconds each handshake run lasts.
    #[arg(long, default_value_t = 10)]
    handshake_secs: u64,
    /// Seconds the rotation scenario lasts (one rotation every 2 s).
    #[arg(long, default_value_t = 60)]
    rotation_secs: u64,
    /// Alternating runs per target and concurrency in the floor comparison (median reported).
    #[arg(long, default_value_t = 5)]
    floor_rounds: usize,
    /// Seconds each run of the floor comparison lasts.
    #[arg(long, default_value_t = 3)]
    floor_secs: u64,
    /// Run only front mode's relay bench (needs OpenClaw): requests direct and through driftless,
    /// and a rotation through driftless.
    #[arg(long, conflicts_with_all = ["smoke", "no_peer"])]
    relay_only: bool,
    /// Set by the bench itself once it runs inside its private network namespace.
    #[arg(long, hide = true)]
    in_netns: bool,
    #[command(subcommand)]
    command: Option<Mode>,
}

const EXAMPLES: &str = "Examples:
  driftless-bench --no-peer --idle 100 --handshake-secs 3
  driftless-bench --smoke --json /tmp/smoke.json
  driftless-bench fleet --replicas 1,3";

const FLEET_EXAMPLES: &str = "Examples:
  driftless-bench fleet --replicas 1,3 --concurrency 64 --secs 10
  driftless-bench fleet --smoke --json /tmp/fleet.json

Needs PostgreSQL's server binaries (Debian's `postgresql` package); the cluster is private, in a
temp directory, and deleted afterwards.";

/// Other modes, and processes the bench starts of itself.
#[derive(Debug, Clone, Subcommand)]
enum Mode {
    /// Several replicas on one private PostgreSQL: sessions/s by handshake kind and fleet size,
    /// and each kind's cost to the database per session.
    Fleet(FleetArgs),
    /// The floor server (floor.rs), measured as its own process.
    #[command(hide = true)]
    FloorServer {
        /// The replies to send, captured from driftless.
        #[arg(long, value_name = "PATH")]
        frames: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = FLEET_EXAMPLES)]
struct FleetArgs {
    /// Fleet sizes to measure, in turn: gateway replicas on one database (each on a new one).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
    /// Clients in flight in every run, spread over the replicas (the same for every fleet size;
    /// at most 200, one source address each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each handshake kind runs.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Seconds the idle fleet is watched for its background cost to the database.
    #[arg(long, default_value_t = 5)]
    background_secs: u64,
    /// Tiny counts and no waiting for PostgreSQL's statistics (CI): proves the tool still works,
    /// measures nothing.
    #[arg(long)]
    smoke: bool,
    /// The `driftless` binary to benchmark [default: `driftless` next to this binary].
    #[arg(long, value_name = "PATH")]
    driftless_bin: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "driftless-bench-fleet.json"
    )]
    json: PathBuf,
}

impl FleetArgs {
    fn plan(&self) -> Result<fleet::FleetPlan> {
        if self.replicas.is_empty() || self.replicas.contains(&0) {
            bail!("--replicas takes fleet sizes of at least 1, e.g. --replicas 1,3");
        }
        if !(1..=200).contains(&self.concurrency) {
            bail!("--concurrency must be between 1 and 200 (one source address per client)");
        }
        if self.smoke {
            return Ok(fleet::FleetPlan {
                replicas: self.replicas.clone(),
                concurrency: self.concurrency.min(4),
                run: Duration::from_millis(300),
                max_sessions: 20,
                background: Duration::ZERO,
                settle: Duration::ZERO,
            });
        }
        Ok(fleet::FleetPlan {
            replicas: self.replicas.clone(),
            concurrency: self.concurrency,
            run: Duration::from_secs(self.secs),
            max_sessions: 10_000_000,
            background: Duration::from_secs(self.background_secs),
            settle: fleet::STATS_SETTLE,
        })
    }
}

/// Counts and times for one run.
struct Plan {
    /// (concurrency, duration, max sessions, how sessions authenticate)
    handshake: Vec<(usize, Duration, u64, HandshakeAuth)>,
    idle: Vec<usize>,
    idle_settle: Duration,
    rotation_clients: usize,
    rotation_every: Duration,
    rotation_total: Duration,
    /// (concurrency, duration) of each proxy run (driftless only).
    proxy: Vec<(usize, Duration)>,
    /// Token-session concurrencies compared with the floor.
    floor: Vec<usize>,
    floor_rounds: usize,
    floor_run: Duration,
    /// Front mode against the peer (requests direct vs through driftless, rotation through it).
    relay: relay::RelayPlan,
}

impl Plan {
    fn from_args(args: &Args) -> Plan {
        if args.smoke {
            return Plan {
                handshake: vec![
                    (1, Duration::from_secs(1), 20, HandshakeAuth::Shared),
                    (8, Duration::from_secs(1), 80, HandshakeAuth::Shared),
                    (8, Duration::from_secs(1), 80, HandshakeAuth::SignedShared),
                    (
                        8,
                        Duration::from_secs(1),
                        80,
                        HandshakeAuth::SignedDeviceToken,
                    ),
                ],
                idle: vec![20],
                idle_settle: Duration::from_millis(500),
                rotation_clients: 4,
                rotation_every: Duration::from_millis(500),
                rotation_total: Duration::from_millis(2600),
                proxy: vec![(2, Duration::from_millis(500))],
                floor: vec![1, 8],
                floor_rounds: 2,
                floor_run: Duration::from_millis(500),
                // Not run: the smoke has no peer.
                relay: relay::RelayPlan {
                    concurrency: vec![],
                    rounds: 0,
                    run: Duration::ZERO,
                    rotation_clients: 0,
                    rotation_every: Duration::ZERO,
                    rotation_total: Duration::ZERO,
                },
            };
        }
        let secs = Duration::from_secs(args.handshake_secs);
        Plan {
            handshake: vec![
                (1, secs, 1_000_000, HandshakeAuth::Shared),
                (64, secs, 1_000_000, HandshakeAuth::Shared),
                (1, secs, 1_000_000, HandshakeAuth::SignedShared),
                (64, secs, 1_000_000, HandshakeAuth::SignedShared),
                (1, secs, 1_000_000, HandshakeAuth::SignedDeviceToken),
                (64, secs, 1_000_000, HandshakeAuth::SignedDeviceToken),
            ],
            idle: args.idle.clone(),
            idle_settle: Duration::from_secs(3),
            rotation_clients: 64,
            rotation_every: Duration::from_secs(2),
            rotation_total: Duration::from_secs(args.rotation_secs),
            proxy: vec![(1, secs), (16, secs)],
            floor: vec![1, 64],
            floor_rounds: args.floor_rounds.max(1),
            floor_run: Duration::from_secs(args.floor_secs),
            relay: relay::RelayPlan {
                concurrency: vec![1, 16],
                rounds: 3,
                run: secs,
                rotation_clients: 64,
                rotation_every: Duration::from_secs(2),
                rotation_total: Duration::from_secs(args.rotation_secs),
            },
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("driftless-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    match &args.command {
        Some(Mode::FloorServer { frames }) => {
            floor::serve(frames)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Mode::Fleet(fleet_args)) => return run_fleet(fleet_args),
        None => {}
    }
    let env = Env::from_process();
    let plan = Plan::from_args(&args);
    raise_fd_limit(&plan)?;

    let mut peer_unavailable = None;
    let mut install = None;
    if args.smoke || args.no_peer {
        peer_unavailable = Some("not requested (--smoke or --no-peer)".to_string());
    } else {
        let cache = args
            .openclaw_home
            .clone()
            .unwrap_or_else(|| default_cache(&env));
        match OpenClawInstall::locate(&cache) {
            Ok(found) if args.in_netns => install = Some(found),
            Ok(_) => match reexec_in_netns() {
                Ok(code) => return Ok(code),
                Err(why) => peer_unavailable = Some(why),
            },
            Err(why) => peer_unavailable = Some(format!("OpenClaw is not installed: {why}")),
        }
    }

    let driftless_bin = driftless_bin(args.driftless_bin.as_deref())?;
    let runtime = runtime()?;
    if args.relay_only {
        let Some(install) = &install else {
            bail!(
                "--relay-only needs OpenClaw: {}",
                peer_unavailable.unwrap_or_default()
            );
        };
        let relay = runtime.block_on(relay::bench(install, &driftless_bin, &plan.relay));
        let failed = relay.unavailable.is_some() || !relay.failures.is_empty();
        let not_run = || TargetReport::unavailable("not run (--relay-only)".into());
        let floor = FloorReport {
            unavailable: Some("not run (--relay-only)".into()),
            ..FloorReport::default()
        };
        let report = Report::new(false, not_run(), floor, not_run(), relay);
        return write_report(&report, &args.json, failed);
    }
    let upstream = runtime.block_on(proxy::start_upstream())?;
    let driftless = runtime.block_on(bench_target(
        Kind::Driftless,
        &plan,
        Some(&upstream),
        |work| server::start_driftless(&driftless_bin, work, Duration::from_secs(30), &upstream),
    ));
    let bench = std::env::current_exe().context("locating this binary")?;
    let floor = runtime.block_on(floor_comparison(&plan, &bench, |work| {
        server::start_driftless(&driftless_bin, work, Duration::from_secs(30), &upstream)
    }));
    // OpenClaw has no OpenAI-compatible proxy set up here: no proxy scenario for the peer.
    let (openclaw, relay) = match &install {
        Some(install) => (
            runtime.block_on(bench_target(Kind::OpenClaw, &plan, None, |work| {
                server::start_openclaw(install, work)
            })),
            runtime.block_on(relay::bench(install, &driftless_bin, &plan.relay)),
        ),
        None => {
            let why = peer_unavailable.unwrap_or_else(|| "not started".into());
            eprintln!("openclaw: unavailable: {why}");
            (
                TargetReport::unavailable(why.clone()),
                relay::RelayReport::unavailable(why),
            )
        }
    };
    let failed = !driftless.failures.is_empty()
        || driftless.unavailable.is_some()
        || !floor.failures.is_empty()
        || floor.unavailable.is_some();

    let report = Report::new(args.smoke, driftless, floor, openclaw, relay);
    write_report(&report, &args.json, failed)
}

/// Prints the table, writes the JSON; exit 1 when a scenario failed.
fn write_report(report: &Report, json: &Path, failed: bool) -> Result<ExitCode> {
    println!("{}", report.table());
    let text = serde_json::to_string_pretty(report).context("serialising the results")?;
    std::fs::write(json, text).with_context(|| format!("writing {}", json.display()))?;
    println!("results: {}", json.display());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `driftless-bench fleet`: prints the table, writes the JSON; fails when a fleet or run failed.
fn run_fleet(args: &FleetArgs) -> Result<ExitCode> {
    let plan = args.plan()?;
    let bin = driftless_bin(args.driftless_bin.as_deref())?;
    let runtime = runtime()?;
    let report = fleet::run(&runtime, &bin, &plan, args.smoke);
    let failed = report.unavailable.is_some() || !report.failures.is_empty();
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report).context("serialising the results")?;
    std::fs::write(&args.json, json).with_context(|| format!("writing {}", args.json.display()))?;
    println!("results: {}", args.json.display());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The `driftless` binary to measure: `given`, or the one next to this binary.
fn driftless_bin(given: Option<&Path>) -> Result<PathBuf> {
    let bin = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("driftless"),
    };
    if !bin.is_file() {
        bail!(
            "{} does not exist; build it (cargo build --release -p driftless) or pass --driftless-bin",
            bin.display()
        );
    }
    Ok(bin)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs every scenario against one gateway, started fresh. A scenario that fails is recorded and
/// the next one still runs; a server that cannot start makes the whole target unavailable.
async fn bench_target(
    kind: Kind,
    plan: &Plan,
    upstream: Option<&proxy::Upstream>,
    start: impl FnOnce(&Workdir) -> Result<Server>,
) -> TargetReport {
    let dir = match tempfile::Builder::new()
        .prefix(&format!("driftless-bench-{}-", kind.name()))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return TargetReport::unavailable(format!("creating a work directory: {e}")),
    };
    let work = Workdir {
        dir: dir.path().to_path_buf(),
    };
    let log = work.dir.join(format!("{}.log", kind.name()));
    let unavailable = |e: anyhow::Error| {
        let why = format!("{e:#}; last lines of its log:\n{}", tail(&log, 15));
        eprintln!("{}: unavailable: {why}", kind.name());
        TargetReport::unavailable(why)
    };
    let mut report = TargetReport::default();
    let mut server = match start(&work) {
        Ok(server) => server,
        Err(e) => return unavailable(e),
    };
    eprintln!(
        "{}: started (pid {}) on {}",
        kind.name(),
        server.pid,
        server.addr
    );
    // Start-up doubles as the warm-up: OpenClaw refuses sessions (UNAVAILABLE/1013) for ~15 s.
    match scenarios::startup(&mut server, Duration::from_secs(120)).await {
        Ok(startup) => report.startup = Some(startup),
        Err(e) => return unavailable(e),
    }
    eprintln!("{}: ready", kind.name());
    for &(concurrency, duration, max, auth) in &plan.handshake {
        match scenarios::handshake(&server, concurrency, duration, max, auth).await {
            Ok(h) => report.handshake.push(h),
            Err(e) => report.fail(format!("handshake c={concurrency}"), e),
        }
    }
    for &count in &plan.idle {
        match scenarios::idle(&server, count, plan.idle_settle).await {
            Ok(i) => report.idle.push(i),
            Err(e) => report.fail(format!("idle {count}"), e),
        }
    }
    if let Some(upstream) = upstream {
        for &(concurrency, duration) in &plan.proxy {
            match proxy::proxy(&server, upstream, concurrency, duration).await {
                Ok(p) => report.proxy.push(p),
                Err(e) => report.fail(format!("proxy c={concurrency}"), e),
            }
        }
    }
    match scenarios::rotation(
        &server,
        plan.rotation_clients,
        plan.rotation_every,
        plan.rotation_total,
    )
    .await
    {
        Ok(r) => report.rotation = Some(r),
        Err(e) => report.fail("rotation".into(), e),
    }
    server.stop();
    eprintln!("{}: done", kind.name());
    report
}

/// driftless ÷ floor on token sessions: a fresh driftless and the floor side by side, one run of
/// each per round and concurrency, which one goes first alternating by round, so drift in the
/// machine's load falls on both alike; the medians are compared.
async fn floor_comparison(
    plan: &Plan,
    bench: &Path,
    start_driftless: impl FnOnce(&Workdir) -> Result<Server>,
) -> FloorReport {
    let mut report = FloorReport {
        rounds: plan.floor_rounds,
        ..FloorReport::default()
    };
    let dir = match tempfile::Builder::new()
        .prefix("driftless-bench-floor-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            report.unavailable = Some(format!("creating a work directory: {e}"));
            return report;
        }
    };
    let (d_work, f_work) = (dir.path().join("driftless"), dir.path().join("floor"));
    let started = async {
        for path in [&d_work, &f_work] {
            std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        }
        let d_work = Workdir { dir: d_work };
        let mut driftless = start_driftless(&d_work).map_err(|e| {
            e.context(format!(
                "driftless; last lines of its log:\n{}",
                tail(&d_work.dir.join("driftless.log"), 15)
            ))
        })?;
        // Start-up doubles as the warm-up and proves the server answers.
        scenarios::startup(&mut driftless, Duration::from_secs(30)).await?;
        let token = scenarios::read_token(&driftless.token_file)?;
        let frames = floor::capture(driftless.addr, &token).await?;
        let floor = server::start_floor(
            bench,
            &Workdir { dir: f_work },
            &frames,
            Duration::from_secs(10),
        )?;
        anyhow::Ok((driftless, floor))
    };
    let (mut driftless, mut floor) = match started.await {
        Ok(servers) => servers,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("floor: unavailable: {why}");
            report.unavailable = Some(why);
            return report;
        }
    };
    eprintln!(
        "floor: started (pid {}) on {}, beside driftless (pid {})",
        floor.pid, floor.addr, driftless.pid
    );
    let mut runs: Vec<(Vec<_>, Vec<_>)> = vec![(Vec::new(), Vec::new()); plan.floor.len()];
    for round in 0..plan.floor_rounds {
        for (i, &concurrency) in plan.floor.iter().enumerate() {
            let what = format!("floor comparison c={concurrency}");
            let run = |server| {
                scenarios::handshake(
                    server,
                    concurrency,
                    plan.floor_run,
                    1_000_000,
                    HandshakeAuth::Shared,
                )
            };
            let servers = [&driftless, &floor];
            alternate(
                round,
                servers,
                &mut runs[i],
                &mut report.failures,
                &what,
                run,
            )
            .await;
        }
    }
    report.comparisons = plan
        .floor
        .iter()
        .zip(runs)
        .map(|(&c, (d, f))| Comparison::new(c, d, f))
        .collect();
    // The highest concurrency again, at one rate offered to both.
    if let Some(last) = report.comparisons.last()
        && last.paced_rate() > 0.0
    {
        let (concurrency, per_sec) = (last.concurrency, last.paced_rate());
        let what = format!("paced floor comparison c={concurrency}");
        let run = |server| scenarios::handshake_paced(server, concurrency, plan.floor_run, per_sec);
        let mut paced = (Vec::new(), Vec::new());
        for round in 0..plan.floor_rounds {
            let servers = [&driftless, &floor];
            alternate(round, servers, &mut paced, &mut report.failures, &what, run).await;
        }
        report.paced = Some(Comparison::new(concurrency, paced.0, paced.1));
    }
    driftless.stop();
    floor.stop();
    eprintln!("floor: done");
    report
}

/// One round of a comparison: `run` on driftless then the floor, or the other way round on odd
/// rounds, so drift in the machine's load falls on both alike. Each result goes to its side of
/// `runs` (driftless, floor); a failure, named by `what` and the server, to `failures`.
async fn alternate<'s, F, Fut>(
    round: usize,
    [driftless, floor]: [&'s Server; 2],
    runs: &mut (Vec<scenarios::Handshake>, Vec<scenarios::Handshake>),
    failures: &mut Vec<String>,
    what: &str,
    run: F,
) where
    F: Fn(&'s Server) -> Fut,
    Fut: std::future::Future<Output = Result<scenarios::Handshake>>,
{
    let order = if round.is_multiple_of(2) {
        [(driftless, true), (floor, false)]
    } else {
        [(floor, false), (driftless, true)]
    };
    for (server, is_driftless) in order {
        match run(server).await {
            Ok(h) if is_driftless => runs.0.push(h),
            Ok(h) => runs.1.push(h),
            Err(e) => {
                let what = format!("{what} {}", server.kind.name());
                eprintln!("{what} failed: {e:#}");
                failures.push(format!("{what}: {e:#}"));
            }
        }
    }
}

/// Re-runs this command inside a private network namespace with loopback up; returns its exit code,
/// or why that is impossible (then the peer is skipped and driftless still measured).
fn reexec_in_netns() -> Result<ExitCode, String> {
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    match probe {
        Ok(status) if status.success() => {}
        Ok(status) => {
            return Err(format!(
                "`unshare -n` failed ({status}); OpenClaw must run in a private network namespace, which needs root or CAP_SYS_ADMIN"
            ));
        }
        Err(e) => return Err(format!("cannot run `unshare` ({e}); install util-linux")),
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let status = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .arg("--in-netns")
        .status()
        .map_err(|e| format!("running unshare: {e}"))?;
    Ok(ExitCode::from(status.code().unwrap_or(2) as u8))
}

/// 10,000 idle connections need 10,000 descriptors in the bench and as many in the server, which
/// inherits the raised limit.
fn raise_fd_limit(plan: &Plan) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = plan.idle.iter().copied().max().unwrap_or(0) as u64 + 4096;
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let raised = Rlimit {
        current: Some(want.max(current.current.unwrap_or(0))),
        maximum: Some(hard.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        // Not allowed to raise the hard limit: take what it allows.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        )
        .context("raising RLIMIT_NOFILE")?;
        if hard < want {
            bail!(
                "the open-file limit is {hard}, below the {want} the idle scenario needs; lower --idle or raise `ulimit -Hn`"
            );
        }
    }
    Ok(())
}

fn default_cache(env: &Env) -> PathBuf {
    driftless_core::paths::cache_home(env).join("driftless-bench")
}

/// The last `n` lines of a log, to say why a gateway did not start.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
