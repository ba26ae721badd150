//! Prometheus metrics (`GET /metrics`). Labels carry outcomes, auth methods and secret *names*;
//! never a value or a fingerprint.

use driftless_core::config::AuthMode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub outcome: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub secret: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// `handshakes{outcome="ok"}` for the gateway's auth mode, and `auth_checks{outcome="ok"}`:
    /// every session counts both, so they are looked up once rather than through the family
    /// (which hashes the labels under a lock the workers share).
    pub handshakes_ok: Counter,
    /// Real secret comparisons, by result; the limiter test bounds the failures.
    pub auth_checks: Family<OutcomeLabels, Counter>,
    pub auth_checks_ok: Counter,
    pub limiter_rejections: Counter,
    pub preauth_rejections: Counter,
    pub address_cap_rejections: Counter,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub secret_generation: Family<SecretLabels, Gauge>,
    pub secret_last_rotation: Family<SecretLabels, Gauge>,
}

impl Metrics {
    /// The gateway's metrics; `mode` is its auth mode, the `method` of its handshakes.
    pub fn new(mode: AuthMode) -> Metrics {
        let mut registry = Registry::with_prefix("driftless_gateway");
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let handshakes_ok = handshakes
            .get_or_create(&HandshakeLabels {
                outcome: "ok",
                method: mode.as_str(),
            })
            .clone();
        let auth_checks = Family::<OutcomeLabels, Counter>::default();
        let auth_checks_ok = auth_checks
            .get_or_create(&OutcomeLabels { outcome: "ok" })
            .clone();
        let m = Metrics {
            registry: Registry::default(),
            connections_open: Gauge::default(),
            handshakes,
            handshakes_ok,
            auth_checks,
            auth_checks_ok,
            limiter_rejections: Counter::default(),
            preauth_rejections: Counter::default(),
            address_cap_rejections: Counter::default(),
            reloads: Family::default(),
            secret_generation: Family::default(),
            secret_last_rotation: Family::default(),
        };
        registry.register(
            "connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        registry.register(
            "handshakes",
            "Connect handshakes by outcome and auth method",
            m.handshakes.clone(),
        );
        registry.register(
            "auth_checks",
            "Shared-secret comparisons actually performed, by result",
            m.auth_checks.clone(),
        );
        registry.register(
            "limiter_rejections",
            "Connect attempts refused by the brute-force limiter without a secret check",
            m.limiter_rejections.clone(),
        );
        registry.register(
            "preauth_rejections",
            "WebSocket upgrades refused because the address holds too many unauthenticated sockets",
            m.preauth_rejections.clone(),
        );
        registry.register(
            "address_cap_rejections",
            "Connections closed on accept because the address holds too many unauthenticated ones",
            m.address_cap_rejections.clone(),
        );
        registry.register(
            "secret_reloads",
            "Secret reloads by outcome (changed, unchanged, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "secret_generation",
            "How many times each secret has changed since start (1 = initial value)",
            m.secret_generation.clone(),
        );
        registry.register(
            "secret_last_rotation_timestamp_seconds",
            "Unix time of each secret's last change (0 = never rotated since start)",
            m.secret_last_rotation.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
