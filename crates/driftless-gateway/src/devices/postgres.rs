//! [`DeviceStore`] in a PostgreSQL database, shared by several gateway replicas.
//!
//! The same guarantees as the SQLite store (`sqlite.rs`), across processes on different machines:
//! every state change is one transaction, run at SERIALIZABLE and retried on a serialization
//! failure or deadlock, so two replicas approving, rotating or revoking the same device at once
//! apply one after the other and neither update is lost (a second approval of one request finds it
//! gone: `unknown requestId`). The connect path only reads: a reconnect with a valid token, or a
//! shared-secret connect of a device whose token can be recomputed, runs one READ ONLY transaction
//! and writes nothing (within [`LAST_USED_COALESCE_MS`]). Tokens are derived as in SQLite
//! (`token_key`), with a key every replica reads from the same secret reference
//! (`gateway.devices.postgres.token_key`); the database holds hashes and nonces only. The audit
//! trail is append-only for its newest [`AUDIT_KEEP_ROWS`] rows (a trigger refuses updates,
//! truncation and deletes of those rows) and trimmed by the transaction that appends.
//!
//! The schema is versioned ([`MIGRATIONS`], the applied ones in `driftless_schema`) and migrated at
//! open under a transaction-scoped advisory lock, so replicas starting together apply each
//! migration once.
//!
//! Driving an async driver from a synchronous trait: [`DeviceStore`]'s calls already run on
//! blocking threads (the handshake and the methods call it through `spawn_blocking`), so each call
//! blocks its thread on its future with [`tokio::runtime::Runtime::block_on`] of a one-thread
//! runtime this store owns; the driver's connection tasks run there. The gateway's workers never
//! wait on the database, and the store works the same from a test without a runtime.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use driftless_core::SecretValue;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::{IsolationLevel, NoTls, Row, Transaction};

#[cfg(doc)]
use super::LAST_USED_COALESCE_MS;
use super::rules::{self, RequestPlan, TokenRow, json, unjson};
use super::token_key::TokenKey;
use super::{
    AUDIT_KEEP_ROWS, AUDIT_TRIM_EVERY, AuditEvent, DeviceMetadata, DeviceStore, Disconnect,
    EventSink, FleetSecret, FleetSecrets, FleetView, IssuedToken, NewAuditEvent, PENDING_TTL_MS,
    PairedDevice, PairingEvent, PendingRequest, Published, SharedVerifier, StoreError, StoreEvent,
    TokenCheck, TokenSummary, Verifier,
};
use crate::limiter::Budget;
use driftless_protocol::payloads::ReplicaStatus;

/// The schema, one migration per version (index + 1). Append only: an applied migration never
/// changes.
pub const MIGRATIONS: &[&str] = &[
    // 1: the SQLite schema, typed for PostgreSQL.
    "CREATE TABLE paired (
       device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, display_name TEXT, platform TEXT,
       device_family TEXT, client_id TEXT, client_mode TEXT, roles TEXT NOT NULL,
       approved_scopes TEXT NOT NULL, remote_ip TEXT, created_at_ms BIGINT NOT NULL,
       approved_at_ms BIGINT NOT NULL);
     CREATE TABLE tokens (
       device_id TEXT NOT NULL REFERENCES paired(device_id) ON DELETE CASCADE, role TEXT NOT NULL,
       token_hash BYTEA NOT NULL, fingerprint TEXT NOT NULL, scopes TEXT NOT NULL,
       created_at_ms BIGINT NOT NULL, rotated_at_ms BIGINT, revoked_at_ms BIGINT,
       last_used_at_ms BIGINT, token_nonce BYTEA, PRIMARY KEY (device_id, role));
     CREATE TABLE pending (
       request_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, public_key TEXT NOT NULL,
       display_name TEXT, platform TEXT, device_family TEXT, client_id TEXT, client_mode TEXT,
       role TEXT NOT NULL, scopes TEXT NOT NULL, remote_ip TEXT, silent BOOLEAN NOT NULL,
       is_repair BOOLEAN NOT NULL, reason TEXT NOT NULL, ts_ms BIGINT NOT NULL);
     CREATE INDEX pending_device ON pending (device_id);
     CREATE INDEX pending_ts ON pending (ts_ms);
     CREATE TABLE audit (
       seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at_ms BIGINT NOT NULL,
       event TEXT NOT NULL, actor TEXT NOT NULL, device_id TEXT, request_id TEXT, role TEXT,
       key_fingerprint TEXT, token_fingerprint TEXT, outcome TEXT NOT NULL, detail TEXT);
     CREATE FUNCTION driftless_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT max(seq) FROM audit) - 10000 THEN
         RETURN OLD;
       END IF;
       RAISE EXCEPTION 'the audit trail is append-only (only rows older than the newest 10000 are trimmed)';
     END $$;
     CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
       FOR EACH ROW EXECUTE FUNCTION driftless_audit_guard();
     CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
       FOR EACH STATEMENT EXECUTE FUNCTION driftless_audit_guard();",
    // 2: the events every replica delivers to its sessions (`StoreEvent`), in id order.
    "CREATE TABLE events (
       id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at_ms BIGINT NOT NULL,
       body TEXT NOT NULL);",
    // 3: the fleet's credential attempts per address (`count_attempt`).
    "CREATE TABLE attempts (
       address TEXT PRIMARY KEY, window_start_ms BIGINT NOT NULL, count INTEGER NOT NULL,
       locked_until_ms BIGINT);",
    // 4: the fleet's published gateway shared secrets (`FleetSecrets`): the id is the fleet's
    // generation order, `verifier` the keyed HMAC (`SharedVerifier`), never the secret;
    // `accepted_until` is set when a newer one supersedes it.
    "CREATE TABLE shared_secrets (
       id BIGSERIAL PRIMARY KEY, verifier BYTEA NOT NULL UNIQUE, fingerprint TEXT NOT NULL,
       published_at TIMESTAMPTZ NOT NULL DEFAULT now(), accepted_until TIMESTAMPTZ);",
    // 5: the live replicas (`FleetSecrets::heartbeat`), for `status`.
    "CREATE TABLE replicas (
       id TEXT PRIMARY KEY, listen TEXT NOT NULL, started_at TIMESTAMPTZ NOT NULL,
       last_seen TIMESTAMPTZ NOT NULL, accepts TEXT NOT NULL);",
];

/// The advisory lock key migrations run under ("dftless" in ASCII).
const MIGRATION_LOCK: i64 = 0x0064_6674_6c65_7373;

/// The advisory lock an event's id is taken under, held until its transaction ends.
const EVENTS_LOCK: i64 = MIGRATION_LOCK + 1;

/// The channel a committed event is announced on (the payload is empty: the table is the truth).
const EVENTS_CHANNEL: &str = "driftless_events";

/// Events kept: a replica that was cut off from the server catches up on this many (at least
/// [`EVENTS_KEEP_ROWS`] - [`EVENTS_TRIM_EVERY`]).
pub const EVENTS_KEEP_ROWS: i64 = 10_000;
/// The events table is trimmed when an id is a multiple of this.
const EVENTS_TRIM_EVERY: i64 = 1_000;

/// Published shared secrets kept: a replica whose source still holds one of these is told it is
/// superseded; one older than this would be taken for a new secret.
pub const SHARED_SECRETS_KEEP_ROWS: i64 = 1_000;

/// A replica whose last heartbeat is older than this is not live (three heartbeats missed).
pub const REPLICA_LIVE_MS: i64 = 15_000;

/// The fleet's accepted shared secrets, newest first: the newest, and the one before while its
/// grace lasts, with the milliseconds left by the database's clock.
const FLEET_VIEW: &str = "
  SELECT id, verifier, fingerprint,
    CASE WHEN accepted_until IS NOT NULL
      THEN greatest(1, ceil(extract(epoch FROM accepted_until - now()) * 1000))::BIGINT END
  FROM shared_secrets WHERE accepted_until IS NULL OR accepted_until > now()
  ORDER BY id DESC LIMIT 2";

/// How often the listener reads the table without being woken (a lost notification, or a
/// connection that died silently, costs at most this).
const EVENTS_BACKSTOP: Duration = Duration::from_secs(1);

/// Counts one attempt in one statement (the row lock orders replicas): a new window when the last
/// one ended or its lockout passed, locked for `$4` once the count reaches `$2`. Parameters:
/// address, max attempts, window ms, lockout ms, now ms.
const COUNT_ATTEMPT: &str = "
  INSERT INTO attempts AS a (address, window_start_ms, count, locked_until_ms)
  VALUES ($1::TEXT, $5::BIGINT, 1, CASE WHEN $2::INTEGER <= 1 THEN $5::BIGINT + $4::BIGINT END)
  ON CONFLICT (address) DO UPDATE SET
    window_start_ms = CASE WHEN (a.locked_until_ms IS NOT NULL AND a.locked_until_ms <= $5)
        OR (a.locked_until_ms IS NULL AND $5 - a.window_start_ms >= $3::BIGINT)
      THEN $5 ELSE a.window_start_ms END,
    count = CASE WHEN (a.locked_until_ms IS NOT NULL AND a.locked_until_ms <= $5)
        OR (a.locked_until_ms IS NULL AND $5 - a.window_start_ms >= $3)
      THEN 1 ELSE a.count + 1 END,
    locked_until_ms = CASE WHEN (a.locked_until_ms IS NOT NULL AND a.locked_until_ms <= $5)
        OR (a.locked_until_ms IS NULL AND $5 - a.window_start_ms >= $3)
      THEN excluded.locked_until_ms
      WHEN a.locked_until_ms IS NOT NULL THEN a.locked_until_ms
      WHEN a.count + 1 >= $2 THEN $5 + $4 END
  RETURNING count, locked_until_ms";

/// Every this many counted attempts, a replica deletes the rows whose window and lockout ended.
const ATTEMPTS_TRIM_EVERY: u64 = 256;

/// How often a transaction that lost a serialization conflict is tried again.
const MAX_ATTEMPTS: u32 = 20;

/// How long a call waits for a pooled connection, and a new connection for its server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the role's password for each new connection (`None`: no password, e.g. peer or trust
/// authentication), so a rotated password is used from the next connection on.
pub type PasswordSource = Box<dyn Fn() -> Result<Option<SecretValue>, String> + Send + Sync>;

/// What to connect to.
pub struct PostgresOptions {
    /// A libpq connection string (URL or `key=value`) without a password.
    pub url: String,
    pub password: PasswordSource,
    /// The key tokens are derived with, the same on every replica.
    pub token_key: TokenKey,
    pub pool_size: usize,
}

/// The PostgreSQL-backed device store.
pub struct PostgresStore {
    /// The server and database, for errors (never a password: the URL may not hold one).
    what: String,
    pool: deadpool::managed::Pool<Manager>,
    key: TokenKey,
    /// The last event committed before this store opened: its listener delivers the later ones.
    events_from: i64,
    /// Attempts this replica counted, for trimming `attempts`.
    attempts_counted: std::sync::atomic::AtomicU64,
    /// Runs the driver's connection tasks; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.what)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        // Dropping a runtime blocks, which is refused on an async worker (the gateway's state may
        // be dropped there); the connection tasks have nothing left to finish.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Opens connections with the password read at that moment, and drops closed ones.
struct Manager {
    config: tokio_postgres::Config,
    password: PasswordSource,
    handle: tokio::runtime::Handle,
}

impl Manager {
    /// A new connection with the password read now; the caller drives it.
    async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        ConnectError,
    > {
        let mut config = self.config.clone();
        if let Some(pw) = (self.password)().map_err(ConnectError::Password)? {
            config.password(pw.expose());
        }
        config.connect(NoTls).await.map_err(ConnectError::Db)
    }
}

#[derive(Debug)]
enum ConnectError {
    Password(String),
    Db(tokio_postgres::Error),
}

impl deadpool::managed::Manager for Manager {
    type Type = tokio_postgres::Client;
    type Error = ConnectError;

    async fn create(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let (client, connection) = self.connect().await?;
        self.handle.spawn(async move {
            // Ends when the client is dropped or the server goes away; the pool then sees the
            // client closed and replaces it.
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        if client.is_closed() {
            return Err(deadpool::managed::RecycleError::message(
                "connection closed",
            ));
        }
        Ok(())
    }
}

/// Why one attempt of a transaction failed.
enum Fail {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// A driver error as one line: the server's message and code when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Whether the server ended the session: it closed the connection, or sent a FATAL error
/// (`pg_terminate_backend`, a shutdown), which can reach a statement before the close does.
fn connection_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            )
        })
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl PostgresStore {
    /// Connects, applies pending migrations, and returns the store. Blocks (call it before
    /// serving, or on a blocking thread).
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let config: tokio_postgres::Config =
            options
                .url
                .parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Postgres {
                    what: "gateway.devices.postgres.url".into(),
                    detail: format!("not a connection string: {}", describe(&e)),
                })?;
        let what = describe_target(&config);
        if config.get_password().is_some() {
            return Err(StoreError::Postgres {
                what,
                detail: "the url holds a password; remove it from the url and set \
                         gateway.devices.postgres.password to a secret reference"
                    .into(),
            });
        }
        let mut config = config;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("driftless-gateway");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("driftless-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager = Manager {
            config,
            password: options.password,
            handle: rt.handle().clone(),
        };
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Task(format!("cannot build the connection pool: {e}")))?;
        let mut store = PostgresStore {
            what,
            pool,
            key: options.token_key,
            events_from: 0,
            attempts_counted: Default::default(),
            rt: Some(rt),
        };
        // On a thread of its own: `open` may be called on an async worker (the gateway's start),
        // where blocking on a runtime is refused.
        store.events_from = std::thread::scope(|s| {
            s.spawn(|| store.migrate())
                .join()
                .unwrap_or_else(|_| Err(StoreError::Task("the migration panicked".into())))
        })?;
        Ok(store)
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("the runtime lives until the store is dropped")
            .block_on(f)
    }

    fn err(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            what: self.what.clone(),
            detail: describe(e),
        }
    }

    async fn client(&self) -> Result<deadpool::managed::Object<Manager>, StoreError> {
        self.pool.get().await.map_err(|e| {
            let detail = match e {
                deadpool::managed::PoolError::Backend(ConnectError::Db(e)) => describe(&e),
                deadpool::managed::PoolError::Backend(ConnectError::Password(e)) => {
                    format!("cannot read gateway.devices.postgres.password: {e}")
                }
                deadpool::managed::PoolError::Timeout(_) => {
                    "no connection within 10 s; is the server up and reachable?".into()
                }
                // Closed, or no runtime: cannot happen while the store lives.
                other => format!("{other:?}"),
            };
            StoreError::Postgres {
                what: self.what.clone(),
                detail,
            }
        })
    }

    /// Applies every migration not yet recorded, under an advisory lock held until commit.
    /// Returns the id of the last event committed.
    fn migrate(&self) -> Result<i64, StoreError> {
        self.block_on(async {
            let mut client = self.client().await?;
            let run = async {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS driftless_schema (
                       version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )
                .await?;
                let applied: Option<i32> = tx
                    .query_one("SELECT max(version) FROM driftless_schema", &[])
                    .await?
                    .get(0);
                let applied = applied.unwrap_or(0);
                for (i, sql) in MIGRATIONS.iter().enumerate() {
                    let version = i as i32 + 1;
                    if version <= applied {
                        continue;
                    }
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO driftless_schema (version) VALUES ($1)",
                        &[&version],
                    )
                    .await?;
                }
                let last_event: i64 = tx
                    .query_one("SELECT coalesce(max(id), 0)::BIGINT FROM events", &[])
                    .await?
                    .get(0);
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>((applied, last_event))
            };
            let (applied, last_event) = run.await.map_err(|e| self.err(&e))?;
            if applied as usize > MIGRATIONS.len() {
                return Err(StoreError::Postgres {
                    what: self.what.clone(),
                    detail: format!(
                        "the database has schema version {applied}, newer than this gateway's \
                         {}; upgrade this gateway",
                        MIGRATIONS.len()
                    ),
                });
            }
            Ok(last_event)
        })
    }

    /// Runs `f` in one transaction: SERIALIZABLE for a write (retried on a serialization failure
    /// or deadlock), REPEATABLE READ READ ONLY for a read. Commit on Ok, rollback on Err.
    fn run<T>(
        &self,
        write: bool,
        f: impl AsyncFn(&Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.block_on(async {
            let mut client = self.client().await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                // Set once COMMIT is sent: a connection lost after that may have committed, so
                // the transaction is not tried again.
                let mut committing = false;
                let result = async {
                    let tx = client
                        .build_transaction()
                        .isolation_level(if write {
                            IsolationLevel::Serializable
                        } else {
                            IsolationLevel::RepeatableRead
                        })
                        .read_only(!write)
                        .start()
                        .await?;
                    let out = f(&tx).await?;
                    committing = true;
                    tx.commit().await?;
                    Ok(out)
                }
                .await;
                match result {
                    Ok(out) => return Ok(out),
                    Err(Fail::Store(e)) => return Err(e),
                    // The server ended this connection (restarted, or ended the session): once
                    // more on another one. The ended one leaves the pool at once: after a FATAL
                    // its socket may not read as closed yet, and the pool would hand it back.
                    Err(Fail::Db(e))
                        if connection_ended(&e) && !committing && attempt < MAX_ATTEMPTS =>
                    {
                        drop(deadpool::managed::Object::take(client));
                        client = self.client().await?;
                    }
                    Err(Fail::Db(e)) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                        // Spread the retries of replicas that collided.
                        let jitter = u64::from(super::token_key::random_bytes()[0]) % 20;
                        tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5 + jitter))
                            .await;
                    }
                    Err(Fail::Db(e)) => return Err(self.err(&e)),
                }
            }
        })
    }

    fn write<T>(
        &self,
        f: impl AsyncFn(&Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.run(true, f)
    }

    fn read<T>(
        &self,
        f: impl AsyncFn(&Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.run(false, f)
    }

    /// Mints a token for a paired device's role and appends `record`, in the caller's transaction.
    async fn mint_audited(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
        role: &str,
        scopes: &[String],
        record: NewAuditEvent,
        now_ms: u64,
    ) -> Result<IssuedToken, Fail> {
        let dev = read_paired(tx, device_id)
            .await?
            .filter(|d| d.roles.iter().any(|r| r == role))
            .ok_or(StoreError::UnknownDevice)?;
        let issued = mint_in(tx, &self.key, device_id, role, scopes, now_ms).await?;
        audit_in(tx, &rules::token_audit(record, &dev, &issued), now_ms).await?;
        Ok(issued)
    }
}

/// `host … dbname …` of a connection config, for messages.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "postgres {} database {}",
        if hosts.is_empty() {
            "localhost".to_owned()
        } else {
            hosts.join(",")
        },
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(default)")
    )
}

fn ms(v: u64) -> i64 {
    v as i64
}

fn opt_ms(v: Option<i64>) -> Option<u64> {
    v.map(|v| v as u64)
}

async fn audit_in(
    tx: &Transaction<'_>,
    e: &NewAuditEvent,
    now_ms: u64,
) -> Result<(), tokio_postgres::Error> {
    let seq: i64 = tx
        .query_one(
            "INSERT INTO audit (at_ms, event, actor, device_id, request_id, role, key_fingerprint,
               token_fingerprint, outcome, detail) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
             RETURNING seq",
            &[
                &ms(now_ms),
                &e.event,
                &e.actor,
                &e.device_id,
                &e.request_id,
                &e.role,
                &e.key_fingerprint,
                &e.token_fingerprint,
                &e.outcome,
                &e.detail,
            ],
        )
        .await?
        .get(0);
    // A sequence value taken by a transaction that rolled back is never seen, so a trim can be
    // skipped once; the next multiple catches up.
    if seq % AUDIT_TRIM_EVERY == 0 {
        tx.execute(
            "DELETE FROM audit WHERE seq <= $1",
            &[&(seq - AUDIT_KEEP_ROWS)],
        )
        .await?;
    }
    Ok(())
}

/// An event row's body (JSON in `events.body`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum EventBody {
    #[serde(rename_all = "camelCase")]
    Disconnect {
        device_id: String,
        role: Option<String>,
        reason: String,
    },
    Requested(Box<PendingRequest>),
    #[serde(rename_all = "camelCase")]
    Resolved {
        request_id: String,
        device_id: String,
        approved: bool,
        ts: u64,
    },
    /// The fleet's shared secrets changed: read them again (`FLEET_VIEW`).
    SharedSecret,
}

impl EventBody {
    fn new(e: &StoreEvent) -> EventBody {
        match e {
            StoreEvent::Disconnect(d) => EventBody::Disconnect {
                device_id: d.device_id.clone(),
                role: d.role.clone(),
                reason: d.reason.to_owned(),
            },
            StoreEvent::Pairing(PairingEvent::Requested(r)) => EventBody::Requested(r.clone()),
            StoreEvent::Pairing(PairingEvent::Resolved {
                request_id,
                device_id,
                approved,
                ts,
            }) => EventBody::Resolved {
                request_id: request_id.clone(),
                device_id: device_id.clone(),
                approved: *approved,
                ts: *ts,
            },
            StoreEvent::SharedSecrets(_) => EventBody::SharedSecret,
        }
    }

    /// `None` for a reason this gateway does not know (written by a newer one), and for
    /// [`EventBody::SharedSecret`], which carries no view (the listener reads it).
    fn into_event(self) -> Option<StoreEvent> {
        Some(match self {
            EventBody::Disconnect {
                device_id,
                role,
                reason,
            } => StoreEvent::Disconnect(Disconnect {
                device_id,
                role,
                reason: Disconnect::REASONS.into_iter().find(|r| *r == reason)?,
            }),
            EventBody::Requested(r) => StoreEvent::Pairing(PairingEvent::Requested(r)),
            EventBody::Resolved {
                request_id,
                device_id,
                approved,
                ts,
            } => StoreEvent::Pairing(PairingEvent::Resolved {
                request_id,
                device_id,
                approved,
                ts,
            }),
            EventBody::SharedSecret => return None,
        })
    }
}

/// Records `event` in the caller's transaction and wakes every replica's listener at commit. Call
/// it last in a transaction: the lock it takes is held until the end.
async fn emit(
    tx: &Transaction<'_>,
    event: StoreEvent,
    now_ms: u64,
) -> Result<(), tokio_postgres::Error> {
    emit_body(tx, &EventBody::new(&event), now_ms).await
}

/// [`emit`] of an event row's body.
async fn emit_body(
    tx: &Transaction<'_>,
    body: &EventBody,
    now_ms: u64,
) -> Result<(), tokio_postgres::Error> {
    // Ids are taken under this lock, held until commit, so events commit in id order: a reader
    // that has seen id n never later finds a row below n (without it, a transaction holding n
    // could commit after n + 1 was read, and n would be skipped).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
        .await?;
    let body = serde_json::to_string(body).expect("plain data serializes");
    let id: i64 = tx
        .query_one(
            "INSERT INTO events (at_ms, body) VALUES ($1, $2) RETURNING id",
            &[&ms(now_ms), &body],
        )
        .await?
        .get(0);
    if id % EVENTS_TRIM_EVERY == 0 {
        tx.execute(
            "DELETE FROM events WHERE id <= $1",
            &[&(id - EVENTS_KEEP_ROWS)],
        )
        .await?;
    }
    // Delivered at commit, and not at all on a rollback.
    tx.execute("SELECT pg_notify($1, '')", &[&EVENTS_CHANNEL])
        .await?;
    Ok(())
}

/// Why the listener's connection ended.
enum ListenError {
    Connect(ConnectError),
    Db(tokio_postgres::Error),
    Closed,
}

impl From<tokio_postgres::Error> for ListenError {
    fn from(e: tokio_postgres::Error) -> ListenError {
        ListenError::Db(e)
    }
}

/// The listener: one connection of its own, LISTENing; on every notification, every
/// [`EVENTS_BACKSTOP`] and after every reconnect it reads the events after the last it delivered.
/// It starts after `last`, the end of the table when the store opened (the sessions it serves are
/// all newer), and reconnects with a growing pause when the connection is lost, then catches up.
async fn listen(
    pool: deadpool::managed::Pool<Manager>,
    what: String,
    mut last: i64,
    sink: EventSink,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let why = listen_once(&pool, &mut last, &sink, &mut pause).await;
        let detail = match why {
            ListenError::Connect(ConnectError::Db(e)) | ListenError::Db(e) => describe(&e),
            ListenError::Connect(ConnectError::Password(e)) => {
                format!("cannot read gateway.devices.postgres.password: {e}")
            }
            ListenError::Closed => "the connection closed".into(),
        };
        tracing::warn!(
            database = %what,
            error = %detail,
            "the device event listener lost its connection; reconnecting, then catching up"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    pool: &deadpool::managed::Pool<Manager>,
    last: &mut i64,
    sink: &EventSink,
    pause: &mut Duration,
) -> ListenError {
    use futures_util::StreamExt;
    let (client, mut connection) = match pool.manager().connect().await {
        Ok(c) => c,
        Err(e) => return ListenError::Connect(e),
    };
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
    // Drives the connection and turns notifications into wake-ups; ends with the connection,
    // which closes `wake`.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                // Full: a wake-up is already pending, which reads this one's rows too.
                let _ = wake_tx.try_send(());
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    match deliver(&client, &mut wake, last, sink, pause).await {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Delivers events on `client` until its connection fails.
async fn deliver(
    client: &tokio_postgres::Client,
    wake: &mut tokio::sync::mpsc::Receiver<()>,
    last: &mut i64,
    sink: &EventSink,
    pause: &mut Duration,
) -> Result<std::convert::Infallible, ListenError> {
    // LISTEN first: an event committed from here on either wakes us or is read below.
    client
        .batch_execute(&format!("LISTEN {EVENTS_CHANNEL}"))
        .await?;
    *pause = Duration::from_millis(100);
    // The shared secrets may have changed while this replica was not listening (a trimmed event
    // would be missed otherwise), and a publish that failed then is retried on this view.
    deliver_view(client, sink).await?;
    loop {
        catch_up(client, last, sink).await?;
        tokio::select! {
            woken = wake.recv() => if woken.is_none() {
                return Err(ListenError::Closed);
            },
            _ = tokio::time::sleep(EVENTS_BACKSTOP) => {}
        }
    }
}

/// Delivers the events after `last`, in id order.
async fn catch_up(
    client: &tokio_postgres::Client,
    last: &mut i64,
    sink: &EventSink,
) -> Result<(), ListenError> {
    let rows = client
        .query(
            "SELECT id, body FROM events WHERE id > $1 ORDER BY id",
            &[&*last],
        )
        .await?;
    let mut shared_secrets = false;
    for row in rows {
        let (id, body): (i64, String) = (row.get(0), row.get(1));
        *last = id;
        match serde_json::from_str::<EventBody>(&body) {
            Ok(EventBody::SharedSecret) => shared_secrets = true,
            Ok(body) => match body.into_event() {
                Some(event) => sink(event),
                None => tracing::warn!(id, "skipped a device event this gateway does not know"),
            },
            Err(_) => tracing::warn!(id, "skipped a device event this gateway does not know"),
        }
    }
    // One read however many publishes there were: the view is the state, not a change.
    if shared_secrets {
        deliver_view(client, sink).await?;
    }
    Ok(())
}

/// Reads the fleet's view of its shared secrets and delivers it (nothing before any publish).
async fn deliver_view(
    client: &tokio_postgres::Client,
    sink: &EventSink,
) -> Result<(), ListenError> {
    if let Some(view) = read_view(client).await? {
        sink(StoreEvent::SharedSecrets(view));
    }
    Ok(())
}

/// The fleet's view of its shared secrets (`FLEET_VIEW`), `None` before the first publish.
async fn read_view(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<FleetView>, tokio_postgres::Error> {
    let rows = client.query(FLEET_VIEW, &[]).await?;
    let secret = |r: &Row| -> Option<FleetSecret> {
        let verifier: Vec<u8> = r.get(1);
        Some(FleetSecret {
            id: u64::try_from(r.get::<_, i64>(0)).ok()?,
            verifier: verifier.try_into().ok()?,
            fingerprint: r.get(2),
        })
    };
    let Some(newest) = rows.first().and_then(secret) else {
        return Ok(None);
    };
    let previous = rows.get(1).and_then(|r| {
        let left: Option<i64> = r.get(3);
        Some((secret(r)?, u64::try_from(left?).ok()?))
    });
    Ok(Some(FleetView { newest, previous }))
}

/// Aborts a task when dropped (the listener's connection driver, when the listener restarts).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const PAIRED_COLS: &str = "device_id, public_key, display_name, platform, device_family,
  client_id, client_mode, roles, approved_scopes, remote_ip, created_at_ms, approved_at_ms";

fn row_paired(r: &Row) -> PairedDevice {
    PairedDevice {
        device_id: r.get(0),
        public_key: r.get(1),
        metadata: DeviceMetadata {
            display_name: r.get(2),
            platform: r.get(3),
            device_family: r.get(4),
            client_id: r.get(5),
            client_mode: r.get(6),
            remote_ip: r.get(9),
        },
        roles: unjson(r.get(7)),
        approved_scopes: unjson(r.get(8)),
        created_at_ms: r.get::<_, i64>(10) as u64,
        approved_at_ms: r.get::<_, i64>(11) as u64,
        tokens: Vec::new(),
    }
}

async fn read_paired(
    tx: &Transaction<'_>,
    device_id: &str,
) -> Result<Option<PairedDevice>, tokio_postgres::Error> {
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {PAIRED_COLS} FROM paired WHERE device_id = $1"),
            &[&device_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut dev = row_paired(&row);
    dev.tokens = tx
        .query(
            "SELECT role, scopes, fingerprint, created_at_ms, rotated_at_ms, revoked_at_ms,
               last_used_at_ms FROM tokens WHERE device_id = $1 ORDER BY role",
            &[&device_id],
        )
        .await?
        .iter()
        .map(|r| TokenSummary {
            role: r.get(0),
            scopes: unjson(r.get(1)),
            fingerprint: r.get(2),
            created_at_ms: r.get::<_, i64>(3) as u64,
            rotated_at_ms: opt_ms(r.get(4)),
            revoked_at_ms: opt_ms(r.get(5)),
            last_used_at_ms: opt_ms(r.get(6)),
        })
        .collect();
    Ok(Some(dev))
}

async fn token_row(
    tx: &Transaction<'_>,
    device_id: &str,
    role: &str,
) -> Result<Option<TokenRow>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT token_hash, scopes, revoked_at_ms, fingerprint, last_used_at_ms, token_nonce,
               created_at_ms, rotated_at_ms FROM tokens WHERE device_id = $1 AND role = $2",
            &[&device_id, &role],
        )
        .await?
        .map(|r| TokenRow {
            hash: r.get(0),
            scopes: unjson(r.get(1)),
            revoked_at_ms: opt_ms(r.get(2)),
            fingerprint: r.get(3),
            last_used_at_ms: opt_ms(r.get(4)),
            nonce: r.get(5),
            created_at_ms: r.get::<_, i64>(6) as u64,
            rotated_at_ms: opt_ms(r.get(7)),
        }))
}

/// The device and its token row for `role` (no row when the device is not paired).
async fn device_and_token(
    tx: &Transaction<'_>,
    device_id: &str,
    role: &str,
) -> Result<(Option<PairedDevice>, Option<TokenRow>), tokio_postgres::Error> {
    let dev = read_paired(tx, device_id).await?;
    let row = match &dev {
        Some(_) => token_row(tx, device_id, role).await?,
        None => None,
    };
    Ok((dev, row))
}

const PENDING_COLS: &str = "request_id, device_id, public_key, display_name, platform,
  device_family, client_id, client_mode, role, scopes, remote_ip, silent, is_repair, reason, ts_ms";

fn row_pending(r: &Row) -> PendingRequest {
    PendingRequest {
        request_id: r.get(0),
        device_id: r.get(1),
        public_key: r.get(2),
        metadata: DeviceMetadata {
            display_name: r.get(3),
            platform: r.get(4),
            device_family: r.get(5),
            client_id: r.get(6),
            client_mode: r.get(7),
            remote_ip: r.get(10),
        },
        role: r.get(8),
        scopes: unjson(r.get(9)),
        silent: r.get(11),
        is_repair: r.get(12),
        reason: r.get(13),
        ts: r.get::<_, i64>(14) as u64,
    }
}

async fn pending_by_id(
    tx: &Transaction<'_>,
    request_id: &str,
) -> Result<Option<PendingRequest>, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            &format!("SELECT {PENDING_COLS} FROM pending WHERE request_id = $1"),
            &[&request_id],
        )
        .await?
        .map(|r| row_pending(&r)))
}

/// Deletes requests older than [`PENDING_TTL_MS`], recording each as `pair.expired`.
async fn prune(tx: &Transaction<'_>, now_ms: u64) -> Result<(), tokio_postgres::Error> {
    let cutoff = ms(now_ms.saturating_sub(PENDING_TTL_MS));
    let expired = tx
        .query(
            &format!("DELETE FROM pending WHERE ts_ms < $1 RETURNING {PENDING_COLS}"),
            &[&cutoff],
        )
        .await?;
    let mut expired: Vec<PendingRequest> = expired.iter().map(row_pending).collect();
    expired.sort_by(|a, b| (a.ts, &a.request_id).cmp(&(b.ts, &b.request_id)));
    for p in expired {
        audit_in(tx, &rules::expired_audit(p), now_ms).await?;
    }
    Ok(())
}

async fn mint_in(
    tx: &Transaction<'_>,
    key: &TokenKey,
    device_id: &str,
    role: &str,
    scopes: &[String],
    now_ms: u64,
) -> Result<IssuedToken, tokio_postgres::Error> {
    let (issued, nonce) = rules::new_token(key, device_id, role, scopes, now_ms);
    tx.execute(
        "INSERT INTO tokens (device_id, role, token_hash, fingerprint, scopes, created_at_ms,
           rotated_at_ms, revoked_at_ms, last_used_at_ms, token_nonce)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7)
         ON CONFLICT (device_id, role) DO UPDATE SET token_hash = excluded.token_hash,
           fingerprint = excluded.fingerprint, scopes = excluded.scopes,
           rotated_at_ms = excluded.created_at_ms, revoked_at_ms = NULL, last_used_at_ms = NULL,
           token_nonce = excluded.token_nonce",
        &[
            &device_id,
            &role,
            &&rules::stored_hash(&issued)[..],
            &issued.token.fingerprint().as_str(),
            &json(&issued.scopes),
            &ms(now_ms),
            &&nonce[..],
        ],
    )
    .await?;
    Ok(issued)
}

impl DeviceStore for PostgresStore {
    fn paired(&self, device_id: &str) -> Result<Option<PairedDevice>, StoreError> {
        self.read(async |tx| Ok(read_paired(tx, device_id).await?))
    }

    fn list(&self, now_ms: u64) -> Result<(Vec<PendingRequest>, Vec<PairedDevice>), StoreError> {
        self.write(async |tx| {
            prune(tx, now_ms).await?;
            let pending = tx
                .query(
                    &format!("SELECT {PENDING_COLS} FROM pending ORDER BY ts_ms, request_id"),
                    &[],
                )
                .await?
                .iter()
                .map(row_pending)
                .collect();
            let ids = tx
                .query(
                    "SELECT device_id FROM paired ORDER BY approved_at_ms, device_id",
                    &[],
                )
                .await?;
            let mut paired = Vec::new();
            for id in ids {
                paired.extend(read_paired(tx, id.get(0)).await?);
            }
            Ok((pending, paired))
        })
    }

    fn pending(&self, request_id: &str, now_ms: u64) -> Result<Option<PendingRequest>, StoreError> {
        self.write(async |tx| {
            prune(tx, now_ms).await?;
            Ok(pending_by_id(tx, request_id).await?)
        })
    }

    fn request(&self, req: PendingRequest, now_ms: u64) -> Result<PendingRequest, StoreError> {
        self.write(async |tx| {
            prune(tx, now_ms).await?;
            let existing: Vec<PendingRequest> = tx
                .query(
                    &format!(
                        "SELECT {PENDING_COLS} FROM pending WHERE device_id = $1
                         ORDER BY ts_ms, request_id"
                    ),
                    &[&req.device_id],
                )
                .await?
                .iter()
                .map(row_pending)
                .collect();
            let out = match rules::plan_request(&existing, &req, now_ms) {
                RequestPlan::Refresh(out) => out,
                RequestPlan::Replace(out) => {
                    tx.execute(
                        "DELETE FROM pending WHERE device_id = $1",
                        &[&req.device_id],
                    )
                    .await?;
                    audit_in(tx, &rules::requested_audit(&out, &req), now_ms).await?;
                    out
                }
            };
            let announce = out.request_id == req.request_id && !out.silent;
            tx.execute(
                "INSERT INTO pending (request_id, device_id, public_key, display_name, platform,
                   device_family, client_id, client_mode, role, scopes, remote_ip, silent,
                   is_repair, reason, ts_ms)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)
                 ON CONFLICT (request_id) DO UPDATE SET device_id = excluded.device_id,
                   public_key = excluded.public_key, display_name = excluded.display_name,
                   platform = excluded.platform, device_family = excluded.device_family,
                   client_id = excluded.client_id, client_mode = excluded.client_mode,
                   role = excluded.role, scopes = excluded.scopes,
                   remote_ip = excluded.remote_ip, silent = excluded.silent,
                   is_repair = excluded.is_repair, reason = excluded.reason,
                   ts_ms = excluded.ts_ms",
                &[
                    &out.request_id,
                    &out.device_id,
                    &out.public_key,
                    &out.metadata.display_name,
                    &out.metadata.platform,
                    &out.metadata.device_family,
                    &out.metadata.client_id,
                    &out.metadata.client_mode,
                    &out.role,
                    &json(&out.scopes),
                    &out.metadata.remote_ip,
                    &out.silent,
                    &out.is_repair,
                    &out.reason,
                    &ms(out.ts),
                ],
            )
            .await?;
            // As the caller announces it locally: a new request that needs a person.
            if announce {
                let event = PairingEvent::Requested(Box::new(out.clone()));
                emit(tx, StoreEvent::Pairing(event), now_ms).await?;
            }
            Ok(out)
        })
    }

    fn approve(
        &self,
        request_id: &str,
        actor: &str,
        mint: bool,
        now_ms: u64,
    ) -> Result<(PairedDevice, Option<IssuedToken>), StoreError> {
        self.write(async |tx| {
            prune(tx, now_ms).await?;
            let req = pending_by_id(tx, request_id)
                .await?
                .ok_or(StoreError::UnknownRequest)?;
            rules::test_pause();
            tx.execute("DELETE FROM pending WHERE request_id = $1", &[&request_id])
                .await?;
            // A re-pair under a new key replaces the record and its tokens.
            let prev = read_paired(tx, &req.device_id)
                .await?
                .filter(|p| p.public_key == req.public_key);
            let (roles, scopes) = rules::approval_grants(prev.as_ref(), &req);
            if prev.is_none() {
                tx.execute("DELETE FROM paired WHERE device_id = $1", &[&req.device_id])
                    .await?;
            }
            tx.execute(
                "INSERT INTO paired (device_id, public_key, display_name, platform,
                   device_family, client_id, client_mode, roles, approved_scopes, remote_ip,
                   created_at_ms, approved_at_ms)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$11)
                 ON CONFLICT (device_id) DO UPDATE SET roles = excluded.roles,
                   approved_scopes = excluded.approved_scopes,
                   approved_at_ms = excluded.approved_at_ms,
                   platform = excluded.platform, device_family = excluded.device_family",
                &[
                    &req.device_id,
                    &req.public_key,
                    &req.metadata.display_name,
                    &req.metadata.platform,
                    &req.metadata.device_family,
                    &req.metadata.client_id,
                    &req.metadata.client_mode,
                    &json(&roles),
                    &json(&scopes),
                    &req.metadata.remote_ip,
                    &ms(now_ms),
                ],
            )
            .await?;
            // A re-approval (role upgrade after a revocation) starts from a clean token row.
            tx.execute(
                "DELETE FROM tokens WHERE device_id = $1 AND role = $2
                   AND revoked_at_ms IS NOT NULL",
                &[&req.device_id, &req.role],
            )
            .await?;
            audit_in(tx, &rules::approved_audit(&req, actor), now_ms).await?;
            let issued = if mint {
                let record = rules::issued_by(actor, "token.issued");
                Some(
                    self.mint_audited(tx, &req.device_id, &req.role, &req.scopes, record, now_ms)
                        .await?,
                )
            } else {
                None
            };
            let event = PairingEvent::Resolved {
                request_id: request_id.to_owned(),
                device_id: req.device_id.clone(),
                approved: true,
                ts: now_ms,
            };
            emit(tx, StoreEvent::Pairing(event), now_ms).await?;
            let dev = read_paired(tx, &req.device_id)
                .await?
                .expect("just written in this transaction");
            Ok((dev, issued))
        })
    }

    fn reject(
        &self,
        request_id: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<PendingRequest, StoreError> {
        self.write(async |tx| {
            prune(tx, now_ms).await?;
            let req = pending_by_id(tx, request_id)
                .await?
                .ok_or(StoreError::UnknownRequest)?;
            tx.execute("DELETE FROM pending WHERE request_id = $1", &[&request_id])
                .await?;
            audit_in(tx, &rules::rejected_audit(&req, actor), now_ms).await?;
            let event = PairingEvent::Resolved {
                request_id: request_id.to_owned(),
                device_id: req.device_id.clone(),
                approved: false,
                ts: now_ms,
            };
            emit(tx, StoreEvent::Pairing(event), now_ms).await?;
            Ok(req)
        })
    }

    fn remove(&self, device_id: &str, actor: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.write(async |tx| {
            let Some(dev) = read_paired(tx, device_id).await? else {
                return Ok(false);
            };
            tx.execute("DELETE FROM tokens WHERE device_id = $1", &[&device_id])
                .await?;
            tx.execute("DELETE FROM paired WHERE device_id = $1", &[&device_id])
                .await?;
            audit_in(tx, &rules::removed_audit(&dev, actor), now_ms).await?;
            let event = StoreEvent::Disconnect(Disconnect::removed(device_id));
            emit(tx, event, now_ms).await?;
            Ok(true)
        })
    }

    fn verify_token(
        &self,
        device_id: &str,
        role: &str,
        token: &str,
        scopes: &[String],
        now_ms: u64,
    ) -> Result<TokenCheck, StoreError> {
        // The common case, a device reconnecting with its valid token, ends here: one read-only
        // transaction.
        let read = self.read(async |tx| {
            let (dev, row) = device_and_token(tx, device_id, role).await?;
            Ok(rules::judge_token(dev.as_ref(), role, row, token, scopes))
        })?;
        if !read.to_record(now_ms) {
            return Ok(read.check);
        }
        // Checked again in the writing transaction: a rotation, or another replica's record of
        // the same use, may have landed meanwhile.
        self.write(async |tx| {
            let (dev, row) = device_and_token(tx, device_id, role).await?;
            let c = rules::judge_token(dev.as_ref(), role, row, token, scopes);
            let Some(record) = c.audit(device_id, role).filter(|_| c.to_record(now_ms)) else {
                return Ok(c.check);
            };
            if c.check == TokenCheck::Ok {
                tx.execute(
                    "UPDATE tokens SET last_used_at_ms = $3 WHERE device_id = $1 AND role = $2",
                    &[&device_id, &role, &ms(now_ms)],
                )
                .await?;
            }
            audit_in(tx, &record, now_ms).await?;
            Ok(c.check)
        })
    }

    fn ensure_token(
        &self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        actor: &str,
        now_ms: u64,
    ) -> Result<IssuedToken, StoreError> {
        let current = async |tx: &Transaction<'_>| -> Result<Option<IssuedToken>, Fail> {
            let (dev, row) = device_and_token(tx, device_id, role).await?;
            Ok(rules::recompute_token(
                &self.key,
                dev.as_ref(),
                device_id,
                role,
                row,
                scopes,
            ))
        };
        // The common case: the current token recomputed, nothing written.
        if let Some(token) = self.read(async |tx| current(tx).await)? {
            return Ok(token);
        }
        self.write(async |tx| {
            // Another replica may have just minted one, which this connect then shares.
            if let Some(token) = current(tx).await? {
                return Ok(token);
            }
            rules::test_pause();
            let record = rules::issued_by(actor, "token.issued");
            self.mint_audited(tx, device_id, role, scopes, record, now_ms)
                .await
        })
    }

    fn mint(
        &self,
        device_id: &str,
        role: &str,
        scopes: &[String],
        actor: &str,
        event: &'static str,
        now_ms: u64,
    ) -> Result<IssuedToken, StoreError> {
        self.write(async |tx| {
            let record = rules::issued_by(actor, event);
            let issued = self
                .mint_audited(tx, device_id, role, scopes, record, now_ms)
                .await?;
            // The replaced token's sessions end.
            let event = StoreEvent::Disconnect(Disconnect::rotated(device_id, role));
            emit(tx, event, now_ms).await?;
            Ok(issued)
        })
    }

    fn revoke(
        &self,
        device_id: &str,
        role: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(async |tx| {
            let dev = read_paired(tx, device_id)
                .await?
                .ok_or(StoreError::UnknownDevice)?;
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked_at_ms = $3 WHERE device_id = $1 AND role = $2",
                    &[&device_id, &role, &ms(now_ms)],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::UnknownDevice.into());
            }
            audit_in(tx, &rules::revoked_audit(&dev, role, actor), now_ms).await?;
            let event = StoreEvent::Disconnect(Disconnect::revoked(device_id, role));
            emit(tx, event, now_ms).await?;
            Ok(now_ms)
        })
    }

    fn touch(&self, d: &PairedDevice) -> Result<(), StoreError> {
        self.write(async |tx| {
            tx.execute(
                "UPDATE paired SET display_name = $2, client_id = $3, client_mode = $4,
                   remote_ip = $5 WHERE device_id = $1",
                &[
                    &d.device_id,
                    &d.metadata.display_name,
                    &d.metadata.client_id,
                    &d.metadata.client_mode,
                    &d.metadata.remote_ip,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn append_audit(&self, event: NewAuditEvent, now_ms: u64) -> Result<(), StoreError> {
        self.write(async |tx| Ok(audit_in(tx, &event, now_ms).await?))
    }

    fn audit(&self) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(async |tx| {
            Ok(tx
                .query(
                    "SELECT seq, at_ms, event, actor, device_id, request_id, role,
                       key_fingerprint, token_fingerprint, outcome, detail
                     FROM audit ORDER BY seq",
                    &[],
                )
                .await?
                .iter()
                .map(|r| AuditEvent {
                    seq: r.get(0),
                    at_ms: r.get::<_, i64>(1) as u64,
                    event: r.get(2),
                    actor: r.get(3),
                    device_id: r.get(4),
                    request_id: r.get(5),
                    role: r.get(6),
                    key_fingerprint: r.get(7),
                    token_fingerprint: r.get(8),
                    outcome: r.get(9),
                    detail: r.get(10),
                })
                .collect())
        })
    }

    fn count_attempt(
        &self,
        address: IpAddr,
        budget: &Budget,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let address = address.to_canonical().to_string();
        let max = budget.max_attempts.min(i32::MAX as u32) as i32;
        let (window, lockout, now) = (ms(budget.window_ms), ms(budget.lockout_ms), ms(now_ms));
        let trim = self
            .attempts_counted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(ATTEMPTS_TRIM_EVERY);
        self.block_on(async {
            let client = self.client().await?;
            let row = client
                .query_one(COUNT_ATTEMPT, &[&address, &max, &window, &lockout, &now])
                .await
                .map_err(|e| self.err(&e))?;
            let (count, locked_until): (i32, Option<i64>) = (row.get(0), row.get(1));
            if trim {
                client
                    .execute(
                        "DELETE FROM attempts WHERE coalesce(locked_until_ms, window_start_ms + $2) < $1",
                        &[&now, &window],
                    )
                    .await
                    .map_err(|e| self.err(&e))?;
            }
            Ok((count > max).then(|| {
                locked_until.map_or(budget.lockout_ms, |until| (until - now).max(1) as u64)
            }))
        })
    }

    fn forgive_attempts(&self, address: IpAddr) -> Result<(), StoreError> {
        let address = address.to_canonical().to_string();
        self.block_on(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM attempts WHERE address = $1", &[&address])
                .await
                .map_err(|e| self.err(&e))?;
            Ok(())
        })
    }

    fn deliver_events(&self, sink: EventSink) -> bool {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives until the store is dropped");
        rt.spawn(listen(
            self.pool.clone(),
            self.what.clone(),
            self.events_from,
            sink,
        ));
        true
    }

    fn fleet(&self) -> Option<&dyn FleetSecrets> {
        Some(self)
    }
}

impl FleetSecrets for PostgresStore {
    fn verifier(&self) -> SharedVerifier {
        self.key.shared_verifier()
    }

    fn publish(
        &self,
        verifier: &Verifier,
        fingerprint: &str,
        grace_ms: u64,
    ) -> Result<(Published, FleetView), StoreError> {
        let verifier = verifier.to_vec();
        let grace_ms = ms(grace_ms);
        self.write(async |tx| {
            let newest = tx
                .query_opt(
                    "SELECT id, verifier FROM shared_secrets ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .await?;
            let newest = newest.map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)));
            let published = match newest {
                Some((_, v)) if v == verifier => Published::Newest,
                _ if tx
                    .query_opt(
                        "SELECT 1 FROM shared_secrets WHERE verifier = $1",
                        &[&verifier],
                    )
                    .await?
                    .is_some() =>
                {
                    Published::Superseded
                }
                newest => {
                    if let Some((id, _)) = newest {
                        // Only the immediate predecessor keeps a grace; anything older ends now.
                        tx.execute(
                            "UPDATE shared_secrets SET accepted_until = now()
                             WHERE id < $1 AND (accepted_until IS NULL OR accepted_until > now())",
                            &[&id],
                        )
                        .await?;
                        tx.execute(
                            "UPDATE shared_secrets
                             SET accepted_until = now() + $2::BIGINT * interval '1 millisecond'
                             WHERE id = $1",
                            &[&id, &grace_ms],
                        )
                        .await?;
                    }
                    let id: i64 = tx
                        .query_one(
                            "INSERT INTO shared_secrets (verifier, fingerprint) VALUES ($1, $2)
                             RETURNING id",
                            &[&verifier, &fingerprint],
                        )
                        .await?
                        .get(0);
                    tx.execute(
                        "DELETE FROM shared_secrets WHERE id <= $1",
                        &[&(id - SHARED_SECRETS_KEEP_ROWS)],
                    )
                    .await?;
                    emit_body(tx, &EventBody::SharedSecret, crate::secrets::now_ms()).await?;
                    Published::Newest
                }
            };
            let view = read_view(tx).await?.ok_or_else(|| StoreError::Postgres {
                what: self.what.clone(),
                detail: "shared_secrets is empty right after a publish".into(),
            })?;
            Ok((published, view))
        })
    }

    fn end_grace(&self) -> Result<Option<FleetView>, StoreError> {
        self.write(async |tx| {
            let ended = tx
                .execute(
                    "UPDATE shared_secrets SET accepted_until = now()
                     WHERE accepted_until > now()",
                    &[],
                )
                .await?;
            if ended > 0 {
                emit_body(tx, &EventBody::SharedSecret, crate::secrets::now_ms()).await?;
            }
            Ok(read_view(tx).await?)
        })
    }

    fn heartbeat(&self, id: &str, listen: &str, accepts: &[String]) -> Result<(), StoreError> {
        let accepts = json(accepts);
        self.block_on(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO replicas (id, listen, started_at, last_seen, accepts)
                     VALUES ($1, $2, now(), now(), $3)
                     ON CONFLICT (id) DO UPDATE
                     SET listen = excluded.listen, last_seen = now(), accepts = excluded.accepts",
                    &[&id, &listen, &accepts],
                )
                .await
                .map_err(|e| self.err(&e))?;
            // A replica killed without a clean shutdown leaves its row: gone after an hour.
            client
                .execute(
                    "DELETE FROM replicas WHERE last_seen < now() - interval '1 hour'",
                    &[],
                )
                .await
                .map_err(|e| self.err(&e))?;
            Ok(())
        })
    }

    fn replicas(&self) -> Result<Vec<ReplicaStatus>, StoreError> {
        self.block_on(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, listen, (extract(epoch FROM started_at) * 1000)::BIGINT,
                       (extract(epoch FROM last_seen) * 1000)::BIGINT, accepts
                     FROM replicas WHERE last_seen > now() - $1::BIGINT * interval '1 millisecond'
                     ORDER BY started_at, id",
                    &[&REPLICA_LIVE_MS],
                )
                .await
                .map_err(|e| self.err(&e))?;
            Ok(rows
                .iter()
                .map(|r| ReplicaStatus {
                    id: r.get(0),
                    listen: r.get(1),
                    started_at_ms: r.get::<_, i64>(2).max(0) as u64,
                    last_seen_ms: r.get::<_, i64>(3).max(0) as u64,
                    accepts: unjson(r.get(4)),
                })
                .collect())
        })
    }

    fn leave(&self, id: &str) -> Result<(), StoreError> {
        self.block_on(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM replicas WHERE id = $1", &[&id])
                .await
                .map_err(|e| self.err(&e))?;
            Ok(())
        })
    }
}
