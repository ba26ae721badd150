//! Results: the JSON document and the side-by-side table.

use comfy_table::Table;
use serde::Serialize;

use crate::floor::FloorReport;
use crate::proxy::Proxy;
use crate::relay::{RelayComparison, RelayReport};
use crate::scenarios::{Handshake, Idle, Rotation, Startup};

/// Scenarios of issue 8 this build cannot run for a target, and why.
const NOT_AVAILABLE: [(&str, &str); 1] = [(
    "proxy (OpenAI-compatible endpoint) on openclaw",
    "not measured: OpenClaw has no comparable OpenAI-compatible proxy set up here",
)];

/// A table row drawn from one scenario result: name, value, decimals.
type Metric<T> = (&'static str, fn(&T) -> f64, usize);
/// A relay row: name, (through driftless, direct), decimals.
type RelayMetric = (
    &'static str,
    fn(&RelayComparison) -> (f64, Option<f64>),
    usize,
);

#[derive(Debug, Default, Serialize)]
pub struct TargetReport {
    /// Set when the gateway could not be started or never became ready: exactly why.
    pub unavailable: Option<String>,
    pub startup: Option<Startup>,
    pub handshake: Vec<Handshake>,
    pub idle: Vec<Idle>,
    pub rotation: Option<Rotation>,
    pub proxy: Vec<Proxy>,
    /// Scenarios that failed to run, with the reason.
    pub failures: Vec<String>,
}

impl TargetReport {
    pub fn unavailable(why: String) -> TargetReport {
        TargetReport {
            unavailable: Some(why),
            ..TargetReport::default()
        }
    }

    pub fn fail(&mut self, scenario: String, e: anyhow::Error) {
        eprintln!("{scenario} failed: {e:#}");
        self.failures.push(format!("{scenario}: {e:#}"));
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib: memory_kib / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub smoke: bool,
    pub machine: Machine,
    pub driftless: TargetReport,
    /// driftless and the floor, alternating, on token sessions.
    pub floor: FloorReport,
    pub openclaw: TargetReport,
    /// Front mode: OpenClaw's requests direct and through driftless.
    pub relay: RelayReport,
    pub not_available: Vec<String>,
}

impl Report {
    pub fn new(
        smoke: bool,
        driftless: TargetReport,
        floor: FloorReport,
        openclaw: TargetReport,
        relay: RelayReport,
    ) -> Report {
        Report {
            smoke,
            machine: Machine::describe(),
            driftless,
            floor,
            openclaw,
            relay,
            not_available: NOT_AVAILABLE
                .iter()
                .map(|(what, why)| format!("{what}: {why}"))
                .collect(),
        }
    }

    /// metric | driftless | floor | openclaw | driftless ÷ floor | driftless ÷ openclaw. The floor
    /// has figures only in the floor comparison's rows.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
        table.set_header([
            "metric",
            "driftless",
            "floor",
            "openclaw",
            "driftless ÷ floor",
            "driftless ÷ openclaw",
        ]);
        let (d, o) = (&self.driftless, &self.openclaw);
        // (name, driftless, floor, openclaw, decimals)
        let mut row = |name: String, a: Option<f64>, f: Option<f64>, b: Option<f64>, digits| {
            let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
            let ratio = |other: Option<f64>| match (a, other) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "–".to_string(),
            };
            table.add_row([name, fmt(a), fmt(f), fmt(b), ratio(f), ratio(b)]);
        };
        let su = |t: &TargetReport| t.startup.clone();
        row(
            "start-up: /readyz 200 (ms)".into(),
            su(d).map(|s| s.readyz_ms),
            None,
            su(o).map(|s| s.readyz_ms),
            1,
        );
        row(
            "start-up: first connect+health (ms)".into(),
            su(d).map(|s| s.first_session_ms),
            None,
            su(o).map(|s| s.first_session_ms),
            1,
        );
        row(
            "start-up: base RSS (MiB)".into(),
            su(d).map(|s| s.base_rss_kib as f64 / 1024.0),
            None,
            su(o).map(|s| s.base_rss_kib as f64 / 1024.0),
            1,
        );
        for i in 0..d.handshake.len().max(o.handshake.len()) {
            let (mine, other) = (d.handshake.get(i), o.handshake.get(i));
            let Some(h) = mine.or(other) else {
                continue;
            };
            let c = h.concurrency;
            let variant = match (h.signed_device, h.device_token) {
                (true, true) => " signed device token",
                (true, false) => " signed device",
                (false, _) => "",
            };
            let metrics: [Metric<Handshake>; 6] = [
                ("sessions/s", |h| h.sessions_per_sec, 0),
                ("p50 (ms)", |h| h.latency.p50_ms, 2),
                ("p99 (ms)", |h| h.latency.p99_ms, 2),
                ("max (ms)", |h| h.latency.max_ms, 2),
                ("errors", |h| h.errors.values().sum::<u64>() as f64, 0),
                (
                    "server CPU per session (ms)",
                    |h| h.server_cpu_ms_per_session,
                    3,
                ),
            ];
            for (name, f, digits) in metrics {
                row(
                    format!("handshake c={c}{variant}: {name}"),
                    mine.map(f),
                    None,
                    other.map(f),
                    digits,
                );
            }
        }
        // driftless and the floor: medians of alternating runs; OpenClaw's figure is its token
        // handshake run at the same concurrency.
        let rounds = self.floor.rounds;
        for c in &self.floor.comparisons {
            let openclaw = o
                .handshake
                .iter()
                .find(|h| h.concurrency == c.concurrency && !h.signed_device)
                .map(|h| h.server_cpu_ms_per_session);
            row(
                format!(
                    "floor c={}: server CPU per session (ms), median of {rounds} alternating runs",
                    c.concurrency
                ),
                Some(c.driftless_cpu_ms_per_session),
                Some(c.floor_cpu_ms_per_session),
                openclaw,
                3,
            );
        }
        if let Some(c) = &self.floor.paced {
            let offered = c
                .driftless_runs
                .first()
                .and_then(|h| h.offered_per_sec)
                .unwrap_or(0.0);
            row(
                format!(
                    "floor c={} paced at {offered:.0} sessions/s: server CPU per session (ms), median of {rounds} alternating runs",
                    c.concurrency
                ),
                Some(c.driftless_cpu_ms_per_session),
                Some(c.floor_cpu_ms_per_session),
                None,
                3,
            );
        }
        for i in 0..d.idle.len().max(o.idle.len()) {
            let (mine, other) = (d.idle.get(i), o.idle.get(i));
            let Some(n) = mine.or(other).map(|x| x.target) else {
                continue;
            };
            let metrics: [Metric<Idle>; 3] = [
                ("connections held", |x| x.held as f64, 0),
                ("RSS after (MiB)", |x| x.rss_after_kib as f64 / 1024.0, 1),
                ("KiB per connection", |x| x.kib_per_connection, 1),
            ];
            for (name, f, digits) in metrics {
                row(
                    format!("idle {n}: {name}"),
                    mine.map(f),
                    None,
                    other.map(f),
                    digits,
                );
            }
        }
        for p in &d.proxy {
            let c = p.concurrency;
            let metrics: [Metric<Proxy>; 7] = [
                ("direct completions/s", |p| p.direct.per_sec, 0),
                ("via gateway completions/s", |p| p.gateway.per_sec, 0),
                (
                    "throughput ratio (gateway ÷ direct)",
                    |p| p.throughput_ratio,
                    2,
                ),
                ("added latency p50 (ms)", |p| p.added_p50_ms, 2),
                ("added latency p99 (ms)", |p| p.added_p99_ms, 2),
                ("errors", |p| (p.direct.errors + p.gateway.errors) as f64, 0),
                (
                    "server CPU per completion (ms)",
                    |p| p.server_cpu_ms_per_completion,
                    3,
                ),
            ];
            for (name, f, digits) in metrics {
                row(
                    format!("proxy c={c}: {name}"),
                    Some(f(p)),
                    None,
                    None,
                    digits,
                );
            }
        }
        let rot = |t: &TargetReport| t.rotation.clone();
        let metrics: [Metric<Rotation>; 6] = [
            ("sessions ok", |r| r.sessions_ok as f64, 0),
            ("failed sessions", |r| r.failed_total as f64, 0),
            ("dropped after auth", |r| r.dropped_after_auth as f64, 0),
            ("propagation p50 (ms)", |r| r.propagation.p50_ms, 1),
            ("propagation p99 (ms)", |r| r.propagation.p99_ms, 1),
            ("rotations never accepted", |r| r.not_propagated as f64, 0),
        ];
        for (name, f, digits) in metrics {
            row(
                format!("rotation: {name}"),
                rot(d).as_ref().map(f),
                None,
                rot(o).as_ref().map(f),
                digits,
            );
        }
        // Front mode: the driftless column is through driftless, the openclaw column direct.
        for c in &self.relay.comparisons {
            let n = c.concurrency;
            let method = self.relay.method;
            let metrics: [RelayMetric; 5] = [
                (
                    "requests/s",
                    |c| (c.relayed_per_sec, Some(c.direct_per_sec)),
                    0,
                ),
                ("p50 (ms)", |c| (c.relayed_p50_ms, Some(c.direct_p50_ms)), 3),
                ("p99 (ms)", |c| (c.relayed_p99_ms, Some(c.direct_p99_ms)), 3),
                (
                    "OpenClaw CPU per request (ms)",
                    |c| {
                        (
                            c.openclaw_cpu_ms_per_request_relayed,
                            Some(c.openclaw_cpu_ms_per_request_direct),
                        )
                    },
                    3,
                ),
                (
                    "driftless CPU per relayed request (ms)",
                    |c| (c.driftless_cpu_ms_per_relayed_request, None),
                    3,
                ),
            ];
            for (name, f, digits) in metrics {
                let (relayed, direct) = f(c);
                row(
                    format!("relay c={n} {method} (relayed | direct): {name}"),
                    Some(relayed),
                    None,
                    direct,
                    digits,
                );
            }
        }
        if let Some(r) = &self.relay.rotation {
            for (name, f, digits) in metrics {
                row(
                    format!("rotation through driftless (| OpenClaw alone): {name}"),
                    Some(f(r)),
                    None,
                    rot(o).as_ref().map(f),
                    digits,
                );
            }
        }
        table
    }
}
