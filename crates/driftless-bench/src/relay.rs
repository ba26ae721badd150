//! Front mode (issue 13): what the relay costs, and a rotation through it. One OpenClaw gateway
//! serves both paths: clients call it directly with its own token, and through driftless in front
//! of it with driftless's token, in alternating runs (which path goes first alternates by round,
//! so drift in the machine's load falls on both alike; medians are reported). Each client holds
//! one session and sends one request after another, as a long-lived OpenClaw client does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::scenarios::{self, Percentiles, Rotation, read_token, source};
use crate::server::{self, OpenClawInstall, Server, Workdir};
use crate::wire;

/// The request each client repeats: OpenClaw's own `health`, relayed unchanged by driftless.
const METHOD: &str = "health";

/// One run of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub per_sec: f64,
    /// Request sent → its response read.
    pub latency: Percentiles,
    /// OpenClaw's CPU (its whole process tree) per request.
    pub openclaw_cpu_ms_per_request: f64,
    /// driftless's CPU per request (relayed runs only).
    pub driftless_cpu_ms_per_request: Option<f64>,
}

/// Direct and relayed at one concurrency: the medians of the alternating runs.
#[derive(Debug, Clone, Serialize)]
pub struct RelayComparison {
    pub concurrency: usize,
    pub direct_per_sec: f64,
    pub relayed_per_sec: f64,
    pub direct_p50_ms: f64,
    pub relayed_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub relayed_p99_ms: f64,
    pub openclaw_cpu_ms_per_request_direct: f64,
    pub openclaw_cpu_ms_per_request_relayed: f64,
    pub driftless_cpu_ms_per_relayed_request: f64,
    pub errors: u64,
    /// Every run, in order: (direct, relayed) per round.
    pub runs: Vec<(Requests, Requests)>,
}

#[derive(Debug, Default, Serialize)]
pub struct RelayReport {
    /// Set when OpenClaw or driftless in front of it could not be started: exactly why.
    pub unavailable: Option<String>,
    pub method: &'static str,
    pub rounds: usize,
    pub comparisons: Vec<RelayComparison>,
    /// Clients reconnecting through driftless while driftless's token rotates (compare with
    /// OpenClaw's own rotation row).
    pub rotation: Option<Rotation>,
    pub failures: Vec<String>,
}

impl RelayReport {
    pub fn unavailable(why: String) -> RelayReport {
        RelayReport {
            unavailable: Some(why),
            method: METHOD,
            ..RelayReport::default()
        }
    }
}

/// What the relay bench runs.
pub struct RelayPlan {
    pub concurrency: Vec<usize>,
    pub rounds: usize,
    pub run: Duration,
    pub rotation_clients: usize,
    pub rotation_every: Duration,
    pub rotation_total: Duration,
}

/// Starts OpenClaw and driftless in front of it, then runs the comparison and the rotation.
pub async fn bench(
    install: &OpenClawInstall,
    driftless_bin: &Path,
    plan: &RelayPlan,
) -> RelayReport {
    let dir = match tempfile::Builder::new()
        .prefix("driftless-bench-relay-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return RelayReport::unavailable(format!("creating a work directory: {e}")),
    };
    let started = async {
        let (o_work, d_work) = (dir.path().join("openclaw"), dir.path().join("driftless"));
        for path in [&o_work, &d_work] {
            std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mut openclaw = server::start_openclaw(install, &Workdir { dir: o_work })?;
        scenarios::startup(&mut openclaw, Duration::from_secs(300))
            .await
            .context("OpenClaw")?;
        let d_work = Workdir { dir: d_work };
        let mut front = server::start_driftless_front(
            driftless_bin,
            &d_work,
            Duration::from_secs(30),
            &openclaw,
        )?;
        // The first session also pairs driftless's own device with OpenClaw.
        scenarios::startup(&mut front, Duration::from_secs(60))
            .await
            .with_context(|| {
                format!(
                    "driftless in front; see {}",
                    d_work.dir.join("driftless.log").display()
                )
            })?;
        anyhow::Ok((openclaw, front))
    };
    let (openclaw, front) = match started.await {
        Ok(servers) => servers,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("relay: unavailable: {why}");
            return RelayReport::unavailable(why);
        }
    };
    eprintln!(
        "relay: driftless (pid {}) in front of OpenClaw (pid {})",
        front.pid, openclaw.pid
    );
    let mut report = RelayReport {
        method: METHOD,
        rounds: plan.rounds,
        ..RelayReport::default()
    };
    for &concurrency in &plan.concurrency {
        match compare(&openclaw, &front, concurrency, plan).await {
            Ok(c) => report.comparisons.push(c),
            Err(e) => {
                eprintln!("relay c={concurrency} failed: {e:#}");
                report
                    .failures
                    .push(format!("relay c={concurrency}: {e:#}"));
            }
        }
    }
    match scenarios::rotation(
        &front,
        plan.rotation_clients,
        plan.rotation_every,
        plan.rotation_total,
    )
    .await
    {
        Ok(r) => report.rotation = Some(r),
        Err(e) => report
            .failures
            .push(format!("rotation through driftless: {e:#}")),
    }
    eprintln!("relay: done");
    report
}

async fn compare(
    openclaw: &Server,
    front: &Server,
    concurrency: usize,
    plan: &RelayPlan,
) -> Result<RelayComparison> {
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        let direct_first = round % 2 == 0;
        let mut pair = [None, None];
        for relayed in [!direct_first, direct_first] {
            let run = requests(openclaw, relayed.then_some(front), concurrency, plan.run).await?;
            pair[usize::from(relayed)] = Some(run);
        }
        let [Some(direct), Some(relayed)] = pair else {
            unreachable!("both paths ran");
        };
        runs.push((direct, relayed));
    }
    let median = |f: fn(&(Requests, Requests)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(RelayComparison {
        concurrency,
        direct_per_sec: median(|r| r.0.per_sec),
        relayed_per_sec: median(|r| r.1.per_sec),
        direct_p50_ms: median(|r| r.0.latency.p50_ms),
        relayed_p50_ms: median(|r| r.1.latency.p50_ms),
        direct_p99_ms: median(|r| r.0.latency.p99_ms),
        relayed_p99_ms: median(|r| r.1.latency.p99_ms),
        openclaw_cpu_ms_per_request_direct: median(|r| r.0.openclaw_cpu_ms_per_request),
        openclaw_cpu_ms_per_request_relayed: median(|r| r.1.openclaw_cpu_ms_per_request),
        driftless_cpu_ms_per_relayed_request: median(|r| {
            r.1.driftless_cpu_ms_per_request.unwrap_or(0.0)
        }),
        errors: runs
            .iter()
            .flat_map(|(d, r)| d.errors.values().chain(r.errors.values()))
            .sum(),
        runs,
    })
}

/// `concurrency` clients each open one session (to OpenClaw, or through `front` when given) and
/// send [`METHOD`] one after another for `duration`.
async fn requests(
    openclaw: &Server,
    front: Option<&Server>,
    concurrency: usize,
    duration: Duration,
) -> Result<Requests> {
    let target = front.unwrap_or(openclaw);
    let token = Arc::new(read_token(&target.token_file)?);
    let mut sessions = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let ws = wire::open_authenticated(target.addr, source(i), &token, &["operator.read"], None)
            .await
            .map_err(|e| anyhow::anyhow!("client {i} could not open a session: {e:?}"))?;
        sessions.push(ws);
    }
    let (o_before, d_before) = (openclaw.cpu_ms(), front.map(Server::cpu_ms));
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = JoinSet::new();
    for mut ws in sessions {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut id = 0u64;
            while Instant::now() < deadline {
                id += 1;
                let begin = Instant::now();
                match wire::call(&mut ws, &id.to_string(), METHOD).await {
                    Ok(_) => latencies.push(begin.elapsed()),
                    Err(e) => {
                        *errors.entry(e.kind()).or_default() += 1;
                        break;
                    }
                }
            }
            wire::close(ws).await;
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.context("a relay client panicked")?;
        latencies.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let requests = latencies.len() as u64;
    let per_request = |cpu: f64| {
        if requests > 0 {
            cpu / requests as f64
        } else {
            0.0
        }
    };
    Ok(Requests {
        requests,
        errors,
        seconds,
        per_sec: requests as f64 / seconds,
        latency: Percentiles::of(latencies),
        openclaw_cpu_ms_per_request: per_request(openclaw.cpu_ms() - o_before),
        driftless_cpu_ms_per_request: front
            .zip(d_before)
            .map(|(f, before)| per_request(f.cpu_ms() - before)),
    })
}
