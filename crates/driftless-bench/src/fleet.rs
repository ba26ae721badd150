//! `driftless-bench fleet` (issue 14): N real `driftless gateway run` replicas on one private
//! PostgreSQL cluster (the tests' harness, `driftless_gateway::testing::postgres`), handshakes of
//! each kind spread round-robin over them, and what each kind costs the database per session.
//!
//! The database's figures come from PostgreSQL itself: statements, transactions, rows written and
//! WAL from `pg_stat_statements` (loaded through `shared_preload_libraries`), commits and rows
//! written also from `pg_stat_database`, and its CPU from `/proc` (the postmaster and its
//! backends). Everything it does while the fleet is idle (each replica's listener poll and
//! heartbeat, autovacuum, checkpoints) is measured first and subtracted from every run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::Table;
use driftless_core::Config;
use driftless_core::config::{DeviceStoreKind, PostgresConfig};
use driftless_gateway::testing::postgres::Cluster;
use serde::Serialize;

use crate::report::Machine;
use crate::scenarios::{self, Handshake, HandshakeAuth};
use crate::server::{self, Server, Workdir, write_token};

/// Every handshake kind, in the order run: the reads first, then the writes (pairing adds devices,
/// which later reads would otherwise see).
pub const KINDS: [HandshakeAuth; 5] = [
    HandshakeAuth::Shared,
    HandshakeAuth::SignedShared,
    HandshakeAuth::SignedDeviceToken,
    HandshakeAuth::NewDevice,
    HandshakeAuth::WrongToken,
];

/// A backend that went idle less than a second after its last stats flush flushes its
/// `pg_stat_database` counts only after PostgreSQL's idle interval (10 s, `PGSTAT_IDLE_INTERVAL`):
/// a run's counts are read once that has passed. (`pg_stat_statements` counts at once.)
pub const STATS_SETTLE: Duration = Duration::from_millis(11_000);

/// Counts and times for one fleet run.
pub struct FleetPlan {
    pub replicas: Vec<usize>,
    /// Clients in flight in every run, whatever the number of replicas.
    pub concurrency: usize,
    pub run: Duration,
    pub max_sessions: u64,
    /// How long the idle fleet is watched for the background it costs the database.
    pub background: Duration,
    /// Wait before reading a run's `pg_stat_database` counts ([`STATS_SETTLE`]; none in smoke).
    pub settle: Duration,
}

/// What the database did in one window, and per session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbCost {
    /// Statements the gateways sent (`pg_stat_statements` calls, BEGIN and COMMIT included).
    pub statements: f64,
    /// Transactions the gateways began (`BEGIN`/`START TRANSACTION` statements; a statement sent
    /// outside one is its own and not counted here).
    pub transactions: f64,
    /// Commits, explicit or not (`pg_stat_database.xact_commit`).
    pub commits: f64,
    /// Rows inserted, updated or deleted (`pg_stat_database`: tup_inserted + tup_updated +
    /// tup_deleted, cascades and triggers included).
    pub rows_written: f64,
    /// Write-ahead log generated (`pg_stat_statements`), the database's durable write cost.
    pub wal_bytes: f64,
    /// CPU of the postmaster and all its backends and helpers (user + system).
    pub cpu_ms: f64,
}

impl DbCost {
    fn minus(&self, other: &DbCost) -> DbCost {
        DbCost {
            statements: self.statements - other.statements,
            transactions: self.transactions - other.transactions,
            commits: self.commits - other.commits,
            rows_written: self.rows_written - other.rows_written,
            wal_bytes: self.wal_bytes - other.wal_bytes,
            cpu_ms: self.cpu_ms - other.cpu_ms,
        }
    }

    /// Each figure times `k`, never below zero (a background subtracted from a window can
    /// overshoot by a heartbeat).
    fn scaled(&self, k: f64) -> DbCost {
        let f = |v: f64| (v * k).max(0.0);
        DbCost {
            statements: f(self.statements),
            transactions: f(self.transactions),
            commits: f(self.commits),
            rows_written: f(self.rows_written),
            wal_bytes: f(self.wal_bytes),
            cpu_ms: f(self.cpu_ms),
        }
    }
}

/// What an idle fleet of `replicas` costs the database per second.
#[derive(Debug, Serialize)]
pub struct Background {
    pub replicas: usize,
    pub per_sec: DbCost,
}

/// One handshake kind on one fleet size.
#[derive(Debug, Serialize)]
pub struct FleetRun {
    pub replicas: usize,
    pub kind: &'static str,
    pub handshake: Handshake,
    /// The database's work in the run's window (run and settle), the idle background subtracted.
    pub db: DbCost,
    /// `db` divided by the run's sessions.
    pub db_per_session: DbCost,
}

#[derive(Debug, Default, Serialize)]
pub struct FleetReport {
    pub smoke: bool,
    pub machine: Option<Machine>,
    pub postgres_version: Option<String>,
    pub concurrency: usize,
    pub run_seconds: f64,
    /// The idle fleet's cost to the database per second, by fleet size (subtracted from runs).
    pub background: Vec<Background>,
    pub runs: Vec<FleetRun>,
    /// Set when the cluster could not be started: exactly why.
    pub unavailable: Option<String>,
    /// Runs or fleets that failed, with the reason.
    pub failures: Vec<String>,
}

impl FleetReport {
    fn fail(&mut self, what: String, e: anyhow::Error) {
        eprintln!("{what} failed: {e:#}");
        self.failures.push(format!("{what}: {e:#}"));
    }

    /// kind | replicas | sessions/s | latency | errors | gateways' CPU | the database's cost.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
        table.set_header([
            "handshake kind",
            "replicas",
            "sessions/s",
            "p50 (ms)",
            "p99 (ms)",
            "errors",
            "gateways' CPU per session (ms)",
            "PG CPU per session (ms)",
            "statements per session",
            "transactions per session",
            "commits per session",
            "rows written per session",
            "WAL bytes per session",
        ]);
        for r in &self.runs {
            let (h, d) = (&r.handshake, &r.db_per_session);
            table.add_row([
                r.kind.to_string(),
                r.replicas.to_string(),
                format!("{:.0}", h.sessions_per_sec),
                format!("{:.2}", h.latency.p50_ms),
                format!("{:.2}", h.latency.p99_ms),
                h.errors.values().sum::<u64>().to_string(),
                format!("{:.3}", h.server_cpu_ms_per_session),
                format!("{:.3}", d.cpu_ms),
                format!("{:.2}", d.statements),
                format!("{:.2}", d.transactions),
                format!("{:.2}", d.commits),
                format!("{:.2}", d.rows_written),
                format!("{:.0}", d.wal_bytes),
            ]);
        }
        table
    }
}

/// The private cluster, with `pg_stat_statements` loaded and durable commits (the tests' harness
/// turns fsync off; a bench of writes must not).
struct Db {
    cluster: Cluster,
}

impl Db {
    fn start() -> Result<Db> {
        // The harness panics (with the reason) when a cluster cannot be set up; the bench reports
        // that as its error. On this thread: the server gets a parent-death signal tied to it.
        let started = std::panic::catch_unwind(|| {
            Cluster::start_with(&[
                "shared_preload_libraries=pg_stat_statements",
                "pg_stat_statements.track=top",
                "fsync=on",
            ])
        })
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no reason given".into());
            anyhow!("starting a private PostgreSQL cluster failed: {why}")
        })?;
        let cluster = started.context(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); \
             install Debian's `postgresql` package",
        )?;
        // The view lives in `postgres`; it counts every database's statements.
        cluster
            .try_psql("postgres", "CREATE EXTENSION pg_stat_statements")
            .map_err(|e| anyhow!("enabling pg_stat_statements: {e}"))?;
        Ok(Db { cluster })
    }

    fn version(&self) -> Result<String> {
        self.cluster
            .try_psql("postgres", "SHOW server_version")
            .map_err(|e| anyhow!("reading the server version: {e}"))
    }

    /// The counts so far of database `db`, and the cluster's CPU.
    fn snapshot(&self, db: &str) -> Result<DbCost> {
        let sql = format!(
            "SELECT coalesce(sum(s.calls), 0), \
                    coalesce(sum(s.calls) FILTER (WHERE s.query ~* '^\\s*(begin|start transaction)'), 0), \
                    coalesce(sum(s.wal_bytes), 0), \
                    d.xact_commit, d.tup_inserted + d.tup_updated + d.tup_deleted \
             FROM pg_stat_database d LEFT JOIN pg_stat_statements s ON s.dbid = d.datid \
             WHERE d.datname = '{db}' GROUP BY d.xact_commit, d.tup_inserted, d.tup_updated, d.tup_deleted"
        );
        let out = self
            .cluster
            .try_psql("postgres", &sql)
            .map_err(|e| anyhow!("reading the database's statistics: {e}"))?;
        let fields: Vec<f64> = out
            .trim()
            .split('|')
            .map(|f| f.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("unexpected statistics row {out:?}"))?;
        let [statements, transactions, wal_bytes, commits, rows_written] = fields[..] else {
            bail!("unexpected statistics row {out:?}");
        };
        Ok(DbCost {
            statements,
            transactions,
            commits,
            rows_written,
            wal_bytes,
            cpu_ms: self.cpu_ms()?,
        })
    }

    /// User + system CPU of the postmaster, its live children, and its children that exited (the
    /// kernel adds those to its `cutime`/`cstime` when it reaps them).
    fn cpu_ms(&self) -> Result<f64> {
        let pid = self
            .cluster
            .server_pid()
            .context("the PostgreSQL server is not running")?;
        let postmaster = server::proc_stat(pid).context("the PostgreSQL server exited")?;
        let mut ticks = postmaster.cutime + postmaster.cstime;
        for process in server::tree(pid) {
            if let Some(s) = server::proc_stat(process) {
                ticks += s.utime + s.stime;
            }
        }
        Ok(ticks as f64 * 1000.0 / rustix::param::clock_ticks_per_second() as f64)
    }
}

/// The replicas of one fleet, on one new database; stopped on drop.
struct Fleet {
    db: String,
    replicas: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `n` replicas on a new database of `db`'s cluster, sharing one token file, the database
    /// password and the device-token key (files), as pods with the same Secrets.
    fn start(bin: &Path, db: &Db, n: usize) -> Result<Fleet> {
        let dir = tempfile::Builder::new()
            .prefix("driftless-bench-fleet-")
            .tempdir()
            .context("creating a work directory")?;
        let name = db.cluster.create_database();
        let token_file = dir.path().join("gateway-token");
        write_token(&token_file)?;
        let password = dir.path().join("pg-password");
        driftless_core::atomic::write_private(&password, db.cluster.password().as_bytes())
            .with_context(|| format!("writing {}", password.display()))?;
        let token_key = dir.path().join("token-key");
        write_token(&token_key)?;
        let postgres: PostgresConfig = toml::from_str(&format!(
            "url = {url:?}\npassword = {{ source = \"file\", path = {pw:?} }}\n\
             token_key = {{ source = \"file\", path = {key:?} }}\n",
            url = db.cluster.url(&name),
            pw = password,
            key = token_key,
        ))
        .context("building the PostgreSQL store's config")?;
        let mut config = Config::default();
        config.gateway.devices.store = DeviceStoreKind::Postgres;
        config.gateway.devices.postgres = Some(postgres);
        // As a fleet's clients are (not loopback): every address is limited, so the wrong-token
        // kind costs what it costs in production. No budget ever runs out in a run, and each of
        // the other kinds' addresses has one session at a time, so right tokens never fail.
        let limit = &mut config.gateway.auth.rate_limit;
        limit.exempt_loopback = false;
        limit.max_attempts = u32::MAX;
        let mut replicas = Vec::new();
        for i in 0..n {
            let work = Workdir {
                dir: dir.path().join(format!("replica-{i}")),
            };
            std::fs::create_dir(&work.dir)
                .with_context(|| format!("creating {}", work.dir.display()))?;
            let replica = server::start_driftless_with(
                bin,
                &work,
                config.clone(),
                token_file.clone(),
                Duration::from_secs(30),
            )
            .map_err(|e| {
                e.context(format!(
                    "replica {i}; last lines of its log:\n{}",
                    crate::tail(&work.dir.join("driftless.log"), 15)
                ))
            })?;
            eprintln!(
                "fleet of {n}: replica {i} started (pid {}) on {}",
                replica.pid, replica.addr
            );
            replicas.push(replica);
        }
        Ok(Fleet {
            db: name,
            replicas,
            _dir: dir,
        })
    }
}

/// Runs every kind on every fleet size; a run that fails is recorded and the next one still runs.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    plan: &FleetPlan,
    smoke: bool,
) -> FleetReport {
    let mut report = FleetReport {
        smoke,
        machine: Some(Machine::describe()),
        concurrency: plan.concurrency,
        run_seconds: plan.run.as_secs_f64(),
        ..FleetReport::default()
    };
    let db = match Db::start() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("fleet: unavailable: {e:#}");
            report.unavailable = Some(format!("{e:#}"));
            return report;
        }
    };
    match db.version() {
        Ok(v) => report.postgres_version = Some(v),
        Err(e) => report.fail("postgres version".into(), e),
    }
    for &n in &plan.replicas {
        if let Err(e) = fleet_runs(runtime, bin, &db, n, plan, &mut report) {
            report.fail(format!("fleet of {n}"), e);
        }
    }
    report
}

/// One fleet of `n`: its idle background, then each kind.
fn fleet_runs(
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    db: &Db,
    n: usize,
    plan: &FleetPlan,
    report: &mut FleetReport,
) -> Result<()> {
    let mut fleet = Fleet::start(bin, db, n)?;
    for replica in &mut fleet.replicas {
        runtime.block_on(scenarios::startup(replica, Duration::from_secs(60)))?;
    }
    // The idle fleet: what the database does for it per second, whatever the clients do (its
    // start's counts settled first). Not measured in a zero-length window (smoke).
    let background = if plan.background.is_zero() {
        DbCost::default()
    } else {
        std::thread::sleep(plan.settle);
        let before = db.snapshot(&fleet.db)?;
        let t0 = Instant::now();
        std::thread::sleep(plan.background + plan.settle);
        db.snapshot(&fleet.db)?
            .minus(&before)
            .scaled(1.0 / t0.elapsed().as_secs_f64())
    };
    report.background.push(Background {
        replicas: n,
        per_sec: background.clone(),
    });
    let servers: Vec<&Server> = fleet.replicas.iter().collect();
    for kind in KINDS {
        let what = format!("fleet of {n}: {}", kind.name());
        let clients = match runtime.block_on(scenarios::prepare(&servers, plan.concurrency, kind)) {
            Ok(clients) => clients,
            Err(e) => {
                report.fail(what, e);
                continue;
            }
        };
        if clients.paired() {
            // The pairing sessions are not the run's: their counts settle before it starts.
            std::thread::sleep(plan.settle);
        }
        let before = db.snapshot(&fleet.db)?;
        let t0 = Instant::now();
        let run = runtime.block_on(scenarios::drive(
            &servers,
            clients,
            plan.run,
            plan.max_sessions,
        ));
        std::thread::sleep(plan.settle);
        let after = db.snapshot(&fleet.db)?;
        let handshake = match run {
            Ok(h) => h,
            Err(e) => {
                report.fail(what, e);
                continue;
            }
        };
        let window = t0.elapsed().as_secs_f64();
        let used = after.minus(&before).minus(&background.scaled(window));
        let sessions = handshake.sessions.max(1) as f64;
        eprintln!(
            "fleet of {n}: {}: {:.0} sessions/s",
            kind.name(),
            handshake.sessions_per_sec
        );
        report.runs.push(FleetRun {
            replicas: n,
            kind: kind.name(),
            db_per_session: used.scaled(1.0 / sessions),
            db: used.scaled(1.0),
            handshake,
        });
    }
    // All at once: each clean shutdown takes a moment (it removes its row from `replicas`).
    std::thread::scope(|scope| {
        for replica in &mut fleet.replicas {
            scope.spawn(|| replica.stop());
        }
    });
    Ok(())
}
