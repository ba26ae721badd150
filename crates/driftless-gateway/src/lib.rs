//! The driftless gateway: an OpenClaw-compatible WebSocket server whose shared secret is read only
//! through the live snapshot, reloaded without a restart and overlapped for a grace window.
//!
//! One task per connection (no extra per-connection tasks); global events reach connections
//! through a `watch` (auth generation, shutdown: never lost) and a `broadcast` (ticks and pairing
//! events: droppable, each filtered by the scope its event needs).

mod accept;
mod auth;
mod budget;
mod conn;
pub mod devices;
pub mod limiter;
mod methods;
pub mod metrics;
mod openai;
mod origin;
mod relay;
mod reload;
pub mod secrets;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
mod throttle;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use driftless_core::config::{AuthMode, LoadedConfig};
use driftless_core::{Env, SecretInput};
use driftless_protocol as proto;
use tokio::sync::broadcast;

use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::secrets::Secrets;

/// The environment variable that overrides the handshake timeout (milliseconds; tests use it).
pub const HANDSHAKE_TIMEOUT_ENV: &str = "DRIFTLESS_HANDSHAKE_TIMEOUT_MS";
/// The environment variable that overrides the tick interval (milliseconds; tests use it).
pub const TICK_INTERVAL_ENV: &str = "DRIFTLESS_TICK_INTERVAL_MS";
/// The environment variable that overrides how long file events are debounced before a reload
/// (milliseconds; tests use it to prove the re-read on a mismatch).
pub const RELOAD_DEBOUNCE_ENV: &str = "DRIFTLESS_RELOAD_DEBOUNCE_MS";
/// How long shutdown waits for connections to take their close frames.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "gateway.auth.mode = \"none\" is only allowed on a loopback bind, but gateway.bind = {0:?}; \
         bind to 127.0.0.1 or set gateway.auth.mode = \"token\""
    )]
    NoneOnNonLoopback(String),
    #[error(
        "no gateway {0} is configured; set gateway.auth.{0} in the config (or ${1}), or run `driftless init`"
    )]
    NoSecret(&'static str, &'static str),
    #[error("cannot resolve the gateway's secrets: {0}; fix the reference and start again")]
    Secrets(#[from] driftless_core::snapshot::SnapshotError),
    #[error("cannot listen on {addr}: {source}; is another gateway running there?")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the device store: {0}; {hint}", hint = .0.open_hint())]
    Devices(#[from] devices::StoreError),
    #[error(
        "cannot set up the HTTP client for [providers]: {0}; install the system's CA certificates \
         (or set SSL_CERT_FILE to a PEM bundle), or remove [providers] if none is used"
    )]
    HttpClient(String),
    #[error(
        "cannot load or create driftless's upstream device identity: {0}; check that the state \
         directory is writable by driftless's user"
    )]
    UpstreamIdentity(String),
    #[error(
        "cannot set up the HTTP client that relays OpenClaw's HTTP surface: {0}; check the \
         system's resources and start again"
    )]
    UpstreamHttp(String),
}

/// Shared by every connection.
pub(crate) struct State {
    pub secrets: Secrets,
    pub limiter: Limiter,
    pub metrics: Metrics,
    /// Broadcast events (`tick`, `device.pair.*`), sent through [`State::broadcast`].
    pub events: broadcast::Sender<Broadcast>,
    /// The last `seq` given to a broadcast event (one counter for all of them, as OpenClaw).
    pub event_seq: std::sync::Mutex<u64>,
    pub handshake_timeout: Duration,
    pub tick_interval: Duration,
    pub reload_debounce: Duration,
    pub started: Instant,
    pub instance_id: String,
    pub connections: AtomicU64,
    pub bind: String,
    /// Connections per address that have not authenticated yet.
    pub addresses: accept::AddressBook,
    /// Paired devices, pending requests, token hashes, audit trail.
    pub devices: Arc<dyn devices::DeviceStore>,
    /// Device sessions to close (rotate/revoke/remove).
    pub device_events: broadcast::Sender<devices::Disconnect>,
    /// The store is shared by several replicas (PostgreSQL): it delivers every replica's events,
    /// this one's included (a change made here is then not delivered locally as well), and counts
    /// the fleet's credential attempts.
    pub shared_store: bool,
    /// `gateway.devices.local_addresses`.
    pub local_addresses: Vec<IpAddr>,
    /// `gateway.allowed_origins`, lowercase.
    pub allowed_origins: Vec<String>,
    /// `[providers.*]` and the HTTP client for the OpenAI-compatible endpoints.
    pub openai: openai::Providers,
    /// Front mode: the OpenClaw gateway operator sessions are relayed to.
    pub upstream: Option<relay::Upstream>,
    /// The gateway's runtime, for timers started from the store's listener (on its own runtime).
    pub runtime: tokio::runtime::Handle,
    /// Wakes the fleet heartbeat early (what this replica accepts changed).
    pub heartbeat: tokio::sync::Notify,
    /// hello-ok and the health reply, prerendered on first use ([`State::prerendered`]).
    prerendered: std::sync::OnceLock<methods::Prerendered>,
}

/// An event frame for every session allowed to see it. A session that lags skips it (OpenClaw's
/// `dropIfSlow`).
#[derive(Clone)]
pub(crate) struct Broadcast {
    pub text: Arc<str>,
    /// The scope the event needs (`None`: every session).
    pub scope: Option<&'static str>,
}

impl State {
    /// The frames every session sends but for a few values, rendered once.
    pub(crate) fn prerendered(&self) -> &methods::Prerendered {
        self.prerendered
            .get_or_init(|| methods::Prerendered::new(self))
    }

    /// Numbers and sends a broadcast event. The lock spans numbering and sending, so every
    /// session receives events in `seq` order.
    pub(crate) fn broadcast(&self, event: &str, payload: &impl serde::Serialize) {
        let scope = proto::scopes::event_scope(event);
        let mut seq = self.event_seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        let text = proto::event_text(event, payload, Some(*seq));
        // No receivers is fine: nobody is connected.
        let _ = self.events.send(Broadcast {
            text: Arc::from(text),
            scope,
        });
    }

    /// Tells pairing operators about a pairing change.
    fn announce(&self, event: devices::PairingEvent) {
        let (name, payload) = event.to_wire();
        self.broadcast(name, &payload);
    }

    /// Delivers an event to this process's sessions.
    fn deliver(self: &Arc<Self>, event: devices::StoreEvent) {
        match event {
            // No receivers simply means the device has no open session.
            devices::StoreEvent::Disconnect(d) => {
                let _ = self.device_events.send(d);
            }
            devices::StoreEvent::Pairing(p) => self.announce(p),
            devices::StoreEvent::SharedSecrets(view) => {
                reload::serve_fleet_view(self, view);
                // The listener reconnected (or the fleet changed) while a publish was pending.
                if self.secrets.publish_pending() {
                    let st = self.clone();
                    self.runtime.spawn_blocking(move || reload::publish(&st));
                }
            }
        }
    }

    /// An event of a change this process made: delivered here, unless the store delivers it (to
    /// every replica, in the database's order).
    pub(crate) fn changed(self: &Arc<Self>, event: devices::StoreEvent) {
        if !self.shared_store {
            self.deliver(event);
        }
    }
}

/// A bound, not yet serving gateway.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    /// Started by `bind`, so a change made as soon as the gateway reports ready is not missed.
    background: reload::Background,
}

impl Gateway {
    /// Validates the auth setup, resolves the secrets and binds the listener. `explicit` is a
    /// secret given on the command line for the configured auth mode (it wins over config and env).
    pub async fn bind(
        loaded: &LoadedConfig,
        env: &Env,
        explicit: Option<SecretInput>,
    ) -> Result<Gateway, GatewayError> {
        let cfg = &loaded.config;
        let bind = cfg.gateway.bind.clone();
        let host_ip: Option<IpAddr> = if bind == "localhost" {
            Some(IpAddr::from([127, 0, 0, 1]))
        } else {
            bind.parse().ok()
        };
        let mode = cfg.gateway.auth.mode;
        if mode == AuthMode::None && !host_ip.is_some_and(|ip| ip.is_loopback()) {
            return Err(GatewayError::NoneOnNonLoopback(bind));
        }
        let secrets = Secrets::load(cfg, loaded.path.clone(), env.clone(), explicit)?;
        if let Some(slot) = driftless_core::precedence::secret_slot(mode)
            && secrets.current().is_none()
        {
            return Err(GatewayError::NoSecret(slot.field, slot.env));
        }
        let addr = SocketAddr::new(
            host_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            cfg.gateway.port,
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let millis = |name: &str, default: u64| {
            Duration::from_millis(
                env.non_empty(name)
                    .and_then(|v| v.parse().ok())
                    .filter(|ms| *ms > 0)
                    .unwrap_or(default),
            )
        };
        let handshake_timeout = millis(HANDSHAKE_TIMEOUT_ENV, proto::HANDSHAKE_TIMEOUT_MS);
        let tick_interval = millis(TICK_INTERVAL_ENV, proto::TICK_INTERVAL_MS);
        let reload_debounce = millis(RELOAD_DEBOUNCE_ENV, reload::DEBOUNCE_MS);
        let metrics = Metrics::new(secrets.mode);
        secrets.init_metrics(&metrics);
        let openai = openai::Providers::new(cfg).map_err(GatewayError::HttpClient)?;
        let device_store = devices::open_configured(
            cfg,
            env,
            loaded.base_dir(),
            &driftless_core::paths::state_dir(env),
        )?;
        let fleet_grace = join_fleet(&device_store, &secrets).await?;
        let runtime = tokio::runtime::Handle::current();
        // Front mode: driftless's upstream identity, read (or created) once, off the workers.
        let upstream = match &cfg.upstream {
            Some(upstream) => {
                let (upstream, state_dir) =
                    (upstream.clone(), driftless_core::paths::state_dir(env));
                let http = relay::http::client().map_err(GatewayError::UpstreamHttp)?;
                let loaded = tokio::task::spawn_blocking(move || {
                    relay::Upstream::new(&upstream, &state_dir, http)
                })
                .await
                .map_err(|e| GatewayError::UpstreamIdentity(e.to_string()))?;
                Some(loaded.map_err(|e| GatewayError::UpstreamIdentity(e.to_string()))?)
            }
            None => None,
        };
        let state = Arc::new_cyclic(|weak: &std::sync::Weak<State>| {
            let weak = weak.clone();
            // Before `State` exists (this closure) nothing is connected, so an event the store
            // delivers then has nobody to reach.
            let shared_store = device_store.deliver_events(Box::new(move |event| {
                if let Some(state) = weak.upgrade() {
                    state.deliver(event);
                }
            }));
            State {
                limiter: Limiter::new(&cfg.gateway.auth.rate_limit),
                secrets,
                metrics,
                // Room for a burst of pairing events between two polls of a busy session.
                events: broadcast::Sender::new(16),
                event_seq: std::sync::Mutex::new(0),
                handshake_timeout,
                tick_interval,
                reload_debounce,
                started: Instant::now(),
                instance_id: uuid::Uuid::new_v4().to_string(),
                connections: AtomicU64::new(0),
                bind,
                addresses: Default::default(),
                devices: device_store,
                device_events: broadcast::Sender::new(16),
                shared_store,
                local_addresses: cfg.gateway.devices.local_addresses.clone(),
                allowed_origins: cfg
                    .gateway
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
                openai,
                upstream,
                runtime,
                heartbeat: tokio::sync::Notify::new(),
                prerendered: std::sync::OnceLock::new(),
            }
        });
        if let Some(grace) = fleet_grace {
            reload::end_fleet_grace_after(&state, grace);
        }
        let background = reload::spawn(state.clone());
        Ok(Gateway {
            listener,
            state,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr())
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.state.secrets.mode
    }

    /// The fingerprint of the shared secret accepted as current (`None` in mode `none`): the
    /// fleet's newest with a store several replicas share, which this replica's source may be
    /// behind.
    pub fn secret_fingerprint(&self) -> Option<String> {
        self.state.secrets.accepted_fingerprint()
    }

    /// Serves until `shutdown` resolves, then sends `shutdown` and closes every connection 1012.
    /// Also reloads secrets on file changes, SIGHUP, a periodic backstop and `secrets.reload`.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let state = self.state;
        let background = self.background;
        let ticker = tokio::spawn(tick_loop(state.clone()));
        let heartbeats = reload::heartbeats(
            state.clone(),
            self.listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_handler))
            .merge(openai::routes())
            .fallback(relay::http::fallback)
            .with_state(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept::accept_loop(
            self.listener,
            app,
            state.clone(),
            stop_rx,
        ));
        shutdown.await;
        tracing::info!("shutting down: closing every connection with 1012");
        state.secrets.control.send_modify(|c| c.shutdown = true);
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while state.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
        ticker.abort();
        if let Some(h) = heartbeats {
            h.abort();
            reload::leave_fleet(&state).await;
        }
        drop(background);
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        Ok(())
    }
}

/// With a store several replicas share: publishes this replica's shared secret (or learns the
/// fleet already replaced it) and serves the fleet's secrets from then on. A replica therefore
/// never serves before it has the fleet's view; the store has just been opened, so the database
/// answers, and if it fails now the start fails as an unreachable store does. Returns the grace
/// the fleet's view holds open, to end here when it ends.
async fn join_fleet(
    store: &Arc<dyn devices::DeviceStore>,
    secrets: &Secrets,
) -> Result<Option<(u64, Duration)>, GatewayError> {
    let Some(secret) = secrets.current() else {
        return Ok(None);
    };
    let grace_period = secrets.grace_period();
    let joined = auth::on_fleet(store, move |fleet| {
        let (published, view) = reload::publish_secret(fleet, &secret, grace_period)?;
        Ok((fleet.verifier(), published, view))
    })
    .await?;
    let Some((verifier, published, view)) = joined else {
        return Ok(None);
    };
    let grace = secrets.use_fleet(verifier, view);
    secrets.published(Some(published));
    Ok(grace)
}

/// reqwest's builder, with rustls on ring (no aws-lc) installed as the process-wide provider
/// first; a second call (another gateway in the same process, tests) finds it installed.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Builds the client; an error carries its whole cause chain (reqwest's own text is only
/// "builder error").
pub(crate) fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    builder.build().map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        text
    })
}

async fn tick_loop(state: Arc<State>) {
    let period = state.tick_interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        interval.tick().await;
        state.broadcast(
            "tick",
            &proto::Tick {
                ts: secrets::now_ms(),
            },
        );
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"ok": true}))
}

async fn readyz(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": reason})),
        )
    };
    if state.secrets.control.borrow().shutdown {
        not_ready("shutting down")
    } else if let Some(upstream) = &state.upstream
        && let Some(reason) = upstream.not_ready().await
    {
        not_ready(&reason)
    } else {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"ready": true})),
        )
    }
}

async fn metrics_handler(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
