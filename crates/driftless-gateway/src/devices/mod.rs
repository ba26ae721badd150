//! Device pairing and device tokens (shared design `openclaw-protocol.md` §3.6–3.9).
//!
//! [`DeviceStore`] is the small interface the gateway needs; [`SqliteStore`] implements it in the
//! state directory (WAL, one durable transaction per state change, so a crash leaves a device paired
//! or pending, never half; a reconnect with a valid token only reads). Device tokens are derived from
//! a per-gateway key and a per-token nonce (`token_key`); the database holds only their SHA-256
//! hashes and nonces, so it alone leaks no token, yet a device that connects with the shared secret
//! gets its current token back (stable across reconnects, as OpenClaw's `ensureDeviceToken`) rather
//! than a new one that would break its other copies. Every pairing, token and revocation
//! event is appended to a bounded audit trail (the newest `AUDIT_KEEP_ROWS`); token uses are
//! recorded at most once per `LAST_USED_COALESCE_MS`, rejections always.

mod backend;
mod methods;
mod pairing;
mod postgres;
mod rules;
mod sqlite;
mod token_key;

pub use backend::open_configured;
pub use driftless_protocol::payloads::{
    DeviceMetadata, PairedDevice, PendingRequest, TokenSummary,
};
use driftless_protocol::payloads::{PairRequested, PairResolved};
pub use driftless_protocol::scopes::{covers_all as scopes_allow, normalize as normalize_scopes};
pub use methods::{
    Caller, DeviceResult, Disconnect, MethodError, handle as handle_method, is_device_method,
};
pub use pairing::{ConnectingDevice, PairingOutcome, on_connect, verify_device_token};
pub use postgres::{MIGRATIONS, PasswordSource, PostgresOptions, PostgresStore};
pub use sqlite::{AUDIT_KEEP_ROWS, AUDIT_TRIM_EVERY, LAST_USED_COALESCE_MS, SqliteStore};
pub use token_key::{KeyError, SharedVerifier, TOKEN_KEY_FILE, TokenKey, Verifier};

use std::net::IpAddr;

use driftless_core::SecretValue;

use crate::limiter::Budget;

/// Whether a client at `peer` counts as this machine for silent pairing: one of
/// `local_addresses` when configured, else any loopback address.
pub fn is_local(peer: std::net::IpAddr, local_addresses: &[std::net::IpAddr]) -> bool {
    if local_addresses.is_empty() {
        peer.is_loopback()
    } else {
        local_addresses.contains(&peer)
    }
}

/// How long a pairing request waits for approval (`PENDING_TTL_MS`).
pub const PENDING_TTL_MS: u64 = 5 * 60 * 1000;

/// A pairing change announced to operators holding `operator.pairing` (OpenClaw's
/// `device.pair.requested` / `device.pair.resolved`, shared design §3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingEvent {
    /// A request that needs a person: new, or replacing the device's older ones. A retry that
    /// refreshes the same request in place is not announced again.
    Requested(Box<PendingRequest>),
    /// Approved (manually or by silent pairing) or rejected.
    Resolved {
        request_id: String,
        device_id: String,
        approved: bool,
        ts: u64,
    },
}

/// A pairing event's payload, serialized as the payload itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum PairingPayload {
    Requested(Box<PairRequested>),
    Resolved(PairResolved),
}

impl PairingEvent {
    /// The event name and payload in OpenClaw's shape. Nothing secret: a pending request carries
    /// the device's public key and metadata, and no event carries a token.
    pub fn to_wire(&self) -> (&'static str, PairingPayload) {
        match self {
            PairingEvent::Requested(r) => (
                "device.pair.requested",
                PairingPayload::Requested(Box::new(PairRequested {
                    request_id: r.request_id.clone(),
                    device_id: r.device_id.clone(),
                    public_key: r.public_key.clone(),
                    role: r.role.clone(),
                    roles: vec![r.role.clone()],
                    scopes: r.scopes.clone(),
                    silent: r.silent,
                    is_repair: r.is_repair,
                    ts: r.ts,
                    display_name: r.metadata.display_name.clone(),
                    platform: r.metadata.platform.clone(),
                    device_family: r.metadata.device_family.clone(),
                    client_id: r.metadata.client_id.clone(),
                    client_mode: r.metadata.client_mode.clone(),
                    remote_ip: r.metadata.remote_ip.clone(),
                })),
            ),
            PairingEvent::Resolved {
                request_id,
                device_id,
                approved,
                ts,
            } => (
                "device.pair.resolved",
                PairingPayload::Resolved(PairResolved {
                    request_id: request_id.clone(),
                    device_id: device_id.clone(),
                    decision: if *approved { "approved" } else { "rejected" }.into(),
                    ts: *ts,
                }),
            ),
        }
    }
}

/// A change that sessions must hear about: close a device's sessions (4001), or tell pairing
/// operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    Disconnect(Disconnect),
    Pairing(PairingEvent),
    /// The fleet's shared secrets changed (or were read again after the listener reconnected).
    SharedSecrets(FleetView),
}

/// One shared secret the fleet published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSecret {
    /// The fleet's generation order (a newer publish has a larger id).
    pub id: u64,
    pub verifier: Verifier,
    pub fingerprint: String,
}

/// The shared secrets the fleet accepts: its newest, and the one before while its grace lasts
/// (with the milliseconds left, by the database's clock, so the replicas' clocks do not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetView {
    pub newest: FleetSecret,
    pub previous: Option<(FleetSecret, u64)>,
}

/// What publishing a replica's shared secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// It is the fleet's newest now (newly, or already).
    Newest,
    /// The fleet already replaced it: this replica's source is behind, and it is not reinstated.
    Superseded,
}

/// The shared-secret rotation of a store several replicas share: the one order of published
/// secrets, and the grace of the one before the newest, for the whole fleet.
pub trait FleetSecrets: Send + Sync {
    /// The keyed verifier every replica computes the same way.
    fn verifier(&self) -> SharedVerifier;
    /// Publishes a replica's shared secret, in one transaction: already the newest, nothing;
    /// an older one, [`Published::Superseded`]; else it becomes the newest, the one before gets
    /// `grace_ms` more (by the database's clock), any older one ends now, and every replica is
    /// told. Returns the fleet's view after it.
    fn publish(
        &self,
        verifier: &Verifier,
        fingerprint: &str,
        grace_ms: u64,
    ) -> Result<(Published, FleetView), StoreError>;
    /// Ends the grace of every secret but the newest now, for the fleet (`token rotate --no-grace`).
    fn end_grace(&self) -> Result<Option<FleetView>, StoreError>;
    /// Records that replica `id` (listening on `listen`) is alive and accepts the shared tokens
    /// with these fingerprints.
    fn heartbeat(&self, id: &str, listen: &str, accepts: &[String]) -> Result<(), StoreError>;
    /// The replicas whose last heartbeat is recent, oldest first.
    fn replicas(&self) -> Result<Vec<driftless_protocol::payloads::ReplicaStatus>, StoreError>;
    /// Removes replica `id` (a clean shutdown).
    fn leave(&self, id: &str) -> Result<(), StoreError>;
}

/// Where a store that several processes share delivers the events they commit.
pub type EventSink = Box<dyn Fn(StoreEvent) + Send + Sync>;

/// A device token on its way to its device: newly minted, or its current one recomputed. The value
/// exists only here and at the client; the store keeps its hash and nonce.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub device_id: String,
    pub role: String,
    pub token: SecretValue,
    pub scopes: Vec<String>,
    /// When this token was minted (its rotation time, or creation time if never rotated).
    pub issued_at_ms: u64,
}

/// The result of checking a presented device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Ok,
    /// Internal reason (never sent; the wire says `device token mismatch`).
    Rejected(&'static str),
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub seq: i64,
    pub at_ms: u64,
    /// e.g. `pair.requested`, `pair.approved`, `token.issued`, `token.used`, `token.revoked`.
    pub event: String,
    /// Who did it: `gateway (silent loopback pairing)`, `device:<id prefix>`, `shared-token`, ...
    pub actor: String,
    pub device_id: Option<String>,
    pub request_id: Option<String>,
    pub role: Option<String>,
    pub key_fingerprint: Option<String>,
    pub token_fingerprint: Option<String>,
    /// `ok`, `rejected`, `denied`, ...
    pub outcome: String,
    pub detail: Option<String>,
}

/// An event to append (the store adds `seq` and `at_ms`).
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub event: &'static str,
    pub actor: String,
    pub device_id: Option<String>,
    pub request_id: Option<String>,
    pub role: Option<String>,
    pub key_fingerprint: Option<String>,
    pub token_fingerprint: Option<String>,
    pub outcome: &'static str,
    pub detail: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The PostgreSQL store: `what` names the server and database (never a password), `detail`
    /// what went wrong.
    #[error("device store {what}: {detail}")]
    Postgres { what: String, detail: String },
    #[error("unknown requestId")]
    UnknownRequest,
    #[error("unknown deviceId/role")]
    UnknownDevice,
    #[error(transparent)]
    TokenKey(#[from] KeyError),
    #[error("device store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// What to check when the store cannot be opened at start.
    pub fn open_hint(&self) -> &'static str {
        match self {
            StoreError::Sqlite { .. } => "check that the state directory is writable",
            StoreError::Postgres { .. } => {
                "check [gateway.devices.postgres] (url, password) and that the server is reachable"
            }
            StoreError::TokenKey(_) => "check the device token key's reference",
            _ => "start again, and report it if it repeats",
        }
    }
}

/// Storage of paired devices, pending requests, token hashes and the audit trail. Each method is
/// one atomic transaction (a state change is durable when it returns), so replicas sharing a server
/// database can implement it too.
pub trait DeviceStore: Send + Sync {
    fn paired(&self, device_id: &str) -> Result<Option<PairedDevice>, StoreError>;
    /// Pending requests (expired ones pruned) and paired devices.
    fn list(&self, now_ms: u64) -> Result<(Vec<PendingRequest>, Vec<PairedDevice>), StoreError>;
    fn pending(&self, request_id: &str, now_ms: u64) -> Result<Option<PendingRequest>, StoreError>;
    /// Creates or refreshes the pending request for `req.device_id`: the same device, key, role and
    /// scopes keep their `requestId`; anything else replaces the device's older requests. The
    /// result keeps `req.request_id` exactly when a new request was stored (callers announce it).
    fn request(&self, req: PendingRequest, now_ms: u64) -> Result<PendingRequest, StoreError>;
    /// Approves a request: records the device and deletes the request; with `mint`, also issues a
    /// token for its role (a silent pairing hands it out at once; after a manual approval the
    /// device's next connect gets one from [`DeviceStore::ensure_token`]).
    fn approve(
        &self,
        request_id: &str,
        actor: &str,
        mint: bool,
        now_ms: u64,
    ) -> Result<(PairedDevice, Option<IssuedToken>), StoreError>;
    fn reject(
        &self,
        request_id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<PendingRequest, StoreError>;
    fn remove(&self, device_id: &str, actor: &str, now_ms: u64) -> Result<bool, StoreError>;
    /// Checks `token` for `device_id` and `role` against the stored hash and the approved scopes.
    /// Records a rejection (`token.used`, `rejected`) every time; an accepted use updates
    /// `last_used_at_ms` and appends `token.used` `ok` only when the recorded last use is missing
    /// or at least [`LAST_USED_COALESCE_MS`] old, so a frequent reconnect does not write.
    fn verify_token(
        &self,
        device_id: &str,
        role: &str,
        token: &str,
        scopes: &[String],
        now_ms: u64,
    ) -> Result<TokenCheck, StoreError>;
    /// The token for a paired device that proved the shared secret (OpenClaw's `ensureDeviceToken`):
    /// its active token for `role`, unchanged and with nothing written, when that covers `scopes`;
    /// otherwise (none, revoked, narrower, or stored before tokens were derived) a new one with
    /// `scopes`, recorded as `token.issued` by `actor`.
    fn ensure_token(
        &self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        actor: &str,
        now_ms: u64,
    ) -> Result<IssuedToken, StoreError>;
    /// Mints a new token for a paired device's role (replacing any existing one).
    fn mint(
        &self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        actor: &str,
        event: &'static str,
        now_ms: u64,
    ) -> Result<IssuedToken, StoreError>;
    fn revoke(
        &self,
        device_id: &str,
        role: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError>;
    /// Updates the descriptive fields of a paired device after a successful connect (called only
    /// when one of them changed).
    fn touch(&self, device: &PairedDevice) -> Result<(), StoreError>;
    fn append_audit(&self, event: NewAuditEvent, now_ms: u64) -> Result<(), StoreError>;
    fn audit(&self) -> Result<Vec<AuditEvent>, StoreError>;
    /// For a store several processes share: records every [`StoreEvent`] in the transaction of
    /// its state change and, from now on, delivers those committed by any process (this one's
    /// included) to `sink`, in commit order; returns true, and the caller then delivers none
    /// itself (one path, one order on every replica). A store one process owns returns false:
    /// the caller delivers its events locally, as they happen.
    fn deliver_events(&self, sink: EventSink) -> bool;
    /// For a store several processes share: counts one credential attempt from `address` in the
    /// fleet's `budget` (one statement, atomic across replicas) and returns the milliseconds until
    /// it may try again when this attempt is over the budget. A store one process owns counts
    /// nothing and returns `None`: the local limiter is the whole budget.
    fn count_attempt(
        &self,
        address: IpAddr,
        budget: &Budget,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Forgets the attempts [`DeviceStore::count_attempt`] counted for `address` (it presented a
    /// right credential).
    fn forgive_attempts(&self, address: IpAddr) -> Result<(), StoreError>;
    /// For a store several replicas share: the fleet's shared-secret rotation (its events arrive
    /// through [`DeviceStore::deliver_events`]). A store one process owns has none: the gateway's
    /// own secrets are the whole truth.
    fn fleet(&self) -> Option<&dyn FleetSecrets>;
}

#[cfg(test)]
mod tests;
