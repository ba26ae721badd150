//! [`DeviceStore`] in an SQLite file in the state directory (WAL mode, `synchronous=FULL`).
//!
//! Every state change (request, approve, reject, mint, rotate, revoke, remove, touch, and `list` /
//! `pending`, which prune expired requests) runs in one IMMEDIATE transaction, committed durably;
//! `paired` and `audit` only read. An approval deletes the request, writes the device and
//! its token hash and appends the audit line together, so a crash leaves either the pending request
//! or the paired device, never a mix.
//!
//! The connect path is kept off the disk: [`DeviceStore::verify_token`] checks in a read-only
//! (DEFERRED) transaction and writes only for a rejection, a token's first use, or a use more than
//! [`LAST_USED_COALESCE_MS`] after the recorded one; a reconnect within that window leaves the file
//! untouched. The audit trail is append-only for its newest [`AUDIT_KEEP_ROWS`] rows (triggers
//! refuse updates, and deletes of those rows); the transaction that appends trims older rows.
//!
//! Tokens are derived (`token_key`): a row holds the token's SHA-256 hash and the nonce it was
//! derived from, so [`DeviceStore::ensure_token`] can return a device's current token again, in a
//! read-only transaction, instead of minting (and writing) a new one on every shared-secret connect.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use std::net::IpAddr;

use super::rules::{self, RequestPlan, TokenRow, json, unjson};
use super::token_key::{TOKEN_KEY_FILE, TokenKey};
use super::{
    AuditEvent, DeviceMetadata, DeviceStore, EventSink, IssuedToken, NewAuditEvent, PENDING_TTL_MS,
    PairedDevice, PendingRequest, StoreError, TokenCheck, TokenSummary,
};
use crate::limiter::Budget;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paired (
  device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, display_name TEXT, platform TEXT,
  device_family TEXT, client_id TEXT, client_mode TEXT, roles TEXT NOT NULL,
  approved_scopes TEXT NOT NULL, remote_ip TEXT, created_at_ms INTEGER NOT NULL,
  approved_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  device_id TEXT NOT NULL REFERENCES paired(device_id) ON DELETE CASCADE, role TEXT NOT NULL,
  token_hash BLOB NOT NULL, fingerprint TEXT NOT NULL, scopes TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL, rotated_at_ms INTEGER, revoked_at_ms INTEGER,
  last_used_at_ms INTEGER, token_nonce BLOB, PRIMARY KEY (device_id, role));
CREATE TABLE IF NOT EXISTS pending (
  request_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, public_key TEXT NOT NULL,
  display_name TEXT, platform TEXT, device_family TEXT, client_id TEXT, client_mode TEXT,
  role TEXT NOT NULL, scopes TEXT NOT NULL, remote_ip TEXT, silent INTEGER NOT NULL,
  is_repair INTEGER NOT NULL, reason TEXT NOT NULL, ts_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, event TEXT NOT NULL,
  actor TEXT NOT NULL, device_id TEXT, request_id TEXT, role TEXT, key_fingerprint TEXT,
  token_fingerprint TEXT, outcome TEXT NOT NULL, detail TEXT);
CREATE TRIGGER IF NOT EXISTS audit_append_only_u BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
";

/// Databases from before derived tokens lack `tokens.token_nonce`; their rows stay valid (checked by
/// hash) and get a nonce the next time their device's token is minted.
const ADD_NONCE: &str = "ALTER TABLE tokens ADD COLUMN token_nonce BLOB";

/// How far apart two recorded uses of a device token are at least. A reconnect within this window
/// of the recorded last use writes nothing: recording every use cost one WAL fsync per handshake
/// (serialising concurrent device handshakes) and one audit row per connection. So
/// `last_used_at_ms` is accurate to this window, and the audit trail shows a token's first use and
/// then at most one `ok` use per window; rejections are always recorded.
pub const LAST_USED_COALESCE_MS: u64 = 60 * 1000;

/// How many audit rows are kept: the newest ones. Bounds the file on a long-lived gateway.
pub const AUDIT_KEEP_ROWS: i64 = 10_000;

/// The trim runs when an appended row's `seq` is a multiple of this, so the trail holds at most
/// [`AUDIT_KEEP_ROWS`] + `AUDIT_TRIM_EVERY` - 1 rows and an append rarely deletes anything.
pub const AUDIT_TRIM_EVERY: i64 = 256;

/// Deletes are refused for the newest [`AUDIT_KEEP_ROWS`] rows, so only the trim (or a manual
/// cleanup of the same old rows) can delete. Replaces the older trigger that refused every delete.
/// The number is part of the trigger: changing [`AUDIT_KEEP_ROWS`] needs a new trigger name.
fn audit_delete_trigger() -> String {
    format!(
        "DROP TRIGGER IF EXISTS audit_append_only_d;
CREATE TRIGGER IF NOT EXISTS audit_keep_newest BEFORE DELETE ON audit
  WHEN OLD.seq > (SELECT max(seq) FROM audit) - {AUDIT_KEEP_ROWS}
  BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only (only rows older than the newest {AUDIT_KEEP_ROWS} are trimmed)'); END;"
    )
}

/// The SQLite-backed device store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Derives tokens; never printed (`SqliteStore`'s `Debug` leaves it out, its own prints nothing).
    key: TokenKey,
    /// Test hook run inside the approval transaction (after the request is deleted, before the
    /// device is written), so a test can SIGKILL the process mid-approval.
    #[cfg(test)]
    pub(crate) approval_hook: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating) `<state>/devices/devices.sqlite3`.
    pub fn open_in(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        let dir = state_dir.join("devices");
        driftless_core::atomic::create_private_dir(&dir).map_err(|e| StoreError::Sqlite {
            path: dir.display().to_string(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        Self::open(&dir.join("devices.sqlite3"))
    }

    /// Opens (creating) the store at `path`, and its token key beside it ([`TOKEN_KEY_FILE`]).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        // The database holds token hashes and device keys: owner-only, like every state file.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(&audit_delete_trigger()).map_err(err)?;
        // Under the database's write lock, so two gateways opening one state directory at once
        // neither both add the column nor create two different keys.
        let key_path = path.with_file_name(TOKEN_KEY_FILE);
        let key = {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            let has_nonce = tx
                .prepare("SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'token_nonce'")
                .and_then(|mut st| st.exists([]))
                .map_err(err)?;
            if !has_nonce {
                tx.execute_batch(ADD_NONCE).map_err(err)?;
            }
            let key = TokenKey::load_or_create(&key_path)?;
            tx.commit().map_err(err)?;
            key
        };
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            key,
            #[cfg(test)]
            approval_hook: None,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Runs `f` in one DEFERRED transaction, for reads that must see one consistent state; it
    /// takes no write lock and, as long as `f` does not write, commits without touching the disk.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.in_transaction(rusqlite::TransactionBehavior::Deferred, f)
    }

    /// Runs `f` in one IMMEDIATE transaction (commit on Ok, rollback on Err).
    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.in_transaction(rusqlite::TransactionBehavior::Immediate, f)
    }

    fn in_transaction<T>(
        &self,
        behavior: rusqlite::TransactionBehavior,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| self.err(e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Mints a token for a paired device's role and appends `record` (its event and actor; the
    /// device, role and fingerprints are filled in), in the caller's transaction.
    fn mint_audited(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
        role: &str,
        scopes: &[String],
        record: NewAuditEvent,
        now_ms: u64,
    ) -> Result<IssuedToken, StoreError> {
        let dev = read_paired(tx, device_id)
            .map_err(|e| self.err(e))?
            .filter(|d| d.roles.iter().any(|r| r == role))
            .ok_or(StoreError::UnknownDevice)?;
        let run = || -> rusqlite::Result<IssuedToken> {
            let issued = mint_in(tx, &self.key, device_id, role, scopes, now_ms)?;
            audit_in(tx, &rules::token_audit(record, &dev, &issued), now_ms)?;
            Ok(issued)
        };
        run().map_err(|e| self.err(e))
    }
}

/// Appends `e`, and every [`AUDIT_TRIM_EVERY`] rows deletes those older than the newest
/// [`AUDIT_KEEP_ROWS`], in the caller's transaction.
fn audit_in(tx: &Transaction<'_>, e: &NewAuditEvent, now_ms: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at_ms, event, actor, device_id, request_id, role, key_fingerprint,
           token_fingerprint, outcome, detail) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
        params![
            now_ms as i64,
            e.event,
            e.actor,
            e.device_id,
            e.request_id,
            e.role,
            e.key_fingerprint,
            e.token_fingerprint,
            e.outcome,
            e.detail
        ],
    )?;
    let seq = tx.last_insert_rowid();
    if seq % AUDIT_TRIM_EVERY == 0 {
        tx.execute("DELETE FROM audit WHERE seq <= ?1", [seq - AUDIT_KEEP_ROWS])?;
    }
    Ok(())
}

/// Reads a paired device and its tokens. Runs on every signed connect, so its statements are
/// cached rather than parsed again each time.
fn read_paired(tx: &Connection, device_id: &str) -> rusqlite::Result<Option<PairedDevice>> {
    let dev = tx
        .prepare_cached(
            "SELECT device_id, public_key, display_name, platform, device_family, client_id,
               client_mode, remote_ip, roles, approved_scopes, created_at_ms, approved_at_ms
             FROM paired WHERE device_id = ?1",
        )?
        .query_row([device_id], |r| {
            Ok(PairedDevice {
                device_id: r.get(0)?,
                public_key: r.get(1)?,
                metadata: row_metadata(r, 2)?,
                roles: unjson(r.get(8)?),
                approved_scopes: unjson(r.get(9)?),
                created_at_ms: r.get::<_, i64>(10)? as u64,
                approved_at_ms: r.get::<_, i64>(11)? as u64,
                tokens: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut dev) = dev else { return Ok(None) };
    let mut stmt = tx.prepare_cached(
        "SELECT role, scopes, fingerprint, created_at_ms, rotated_at_ms, revoked_at_ms,
           last_used_at_ms FROM tokens WHERE device_id = ?1 ORDER BY role",
    )?;
    let opt = |v: Option<i64>| v.map(|v| v as u64);
    dev.tokens = stmt
        .query_map([device_id], |r| {
            Ok(TokenSummary {
                role: r.get(0)?,
                scopes: unjson(r.get(1)?),
                fingerprint: r.get(2)?,
                created_at_ms: r.get::<_, i64>(3)? as u64,
                rotated_at_ms: opt(r.get(4)?),
                revoked_at_ms: opt(r.get(5)?),
                last_used_at_ms: opt(r.get(6)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(dev))
}

/// A device's metadata from the six columns starting at `first` (`display_name, platform,
/// device_family, client_id, client_mode, remote_ip`, in that order in every query).
fn row_metadata(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<DeviceMetadata> {
    Ok(DeviceMetadata {
        display_name: r.get(first)?,
        platform: r.get(first + 1)?,
        device_family: r.get(first + 2)?,
        client_id: r.get(first + 3)?,
        client_mode: r.get(first + 4)?,
        remote_ip: r.get(first + 5)?,
    })
}

const PENDING_COLS: &str = "request_id, device_id, public_key, display_name, platform,
  device_family, client_id, client_mode, remote_ip, role, scopes, silent, is_repair, reason, ts_ms";

fn row_pending(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingRequest> {
    Ok(PendingRequest {
        request_id: r.get(0)?,
        device_id: r.get(1)?,
        public_key: r.get(2)?,
        metadata: row_metadata(r, 3)?,
        role: r.get(9)?,
        scopes: unjson(r.get(10)?),
        silent: r.get(11)?,
        is_repair: r.get(12)?,
        reason: r.get(13)?,
        ts: r.get::<_, i64>(14)? as u64,
    })
}

fn prune(tx: &Transaction<'_>, now_ms: u64) -> rusqlite::Result<()> {
    let cutoff = now_ms.saturating_sub(PENDING_TTL_MS) as i64;
    let expired: Vec<PendingRequest> = {
        let mut stmt = tx.prepare(&format!(
            "SELECT {PENDING_COLS} FROM pending WHERE ts_ms < ?1"
        ))?;
        stmt.query_map([cutoff], row_pending)?
            .collect::<rusqlite::Result<_>>()?
    };
    for p in expired {
        tx.execute("DELETE FROM pending WHERE request_id = ?1", [&p.request_id])?;
        audit_in(tx, &rules::expired_audit(p), now_ms)?;
    }
    Ok(())
}

fn mint_in(
    tx: &Transaction<'_>,
    key: &TokenKey,
    device_id: &str,
    role: &str,
    scopes: &[String],
    now_ms: u64,
) -> rusqlite::Result<IssuedToken> {
    let (issued, nonce) = rules::new_token(key, device_id, role, scopes, now_ms);
    let existed: bool = tx
        .query_row(
            "SELECT 1 FROM tokens WHERE device_id = ?1 AND role = ?2",
            params![device_id, role],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    tx.execute(
        "INSERT INTO tokens (device_id, role, token_hash, fingerprint, scopes, created_at_ms,
           rotated_at_ms, revoked_at_ms, last_used_at_ms, token_nonce)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8)
         ON CONFLICT (device_id, role) DO UPDATE SET token_hash = excluded.token_hash,
           fingerprint = excluded.fingerprint, scopes = excluded.scopes,
           rotated_at_ms = excluded.created_at_ms, revoked_at_ms = NULL, last_used_at_ms = NULL,
           token_nonce = excluded.token_nonce",
        params![
            device_id,
            role,
            &rules::stored_hash(&issued)[..],
            issued.token.fingerprint().as_str(),
            json(&issued.scopes),
            now_ms as i64,
            existed.then_some(now_ms as i64),
            &nonce[..],
        ],
    )?;
    Ok(issued)
}

/// The token row of `device_id`'s `role`, if any. Runs on every device connect, so its statement
/// is cached.
fn token_row(tx: &Connection, device_id: &str, role: &str) -> rusqlite::Result<Option<TokenRow>> {
    let opt = |v: Option<i64>| v.map(|v| v as u64);
    tx.prepare_cached(
        "SELECT token_hash, scopes, revoked_at_ms, fingerprint, last_used_at_ms, token_nonce,
           created_at_ms, rotated_at_ms FROM tokens WHERE device_id = ?1 AND role = ?2",
    )?
    .query_row(params![device_id, role], |r| {
        Ok(TokenRow {
            hash: r.get(0)?,
            scopes: unjson(r.get(1)?),
            revoked_at_ms: opt(r.get(2)?),
            fingerprint: r.get(3)?,
            last_used_at_ms: opt(r.get(4)?),
            nonce: r.get(5)?,
            created_at_ms: r.get::<_, i64>(6)? as u64,
            rotated_at_ms: opt(r.get(7)?),
        })
    })
    .optional()
}

/// The device's active token for `role`, recomputed ([`rules::recompute_token`]); reads only.
fn current_token(
    tx: &Connection,
    key: &TokenKey,
    device_id: &str,
    role: &str,
    scopes: &[String],
) -> rusqlite::Result<Option<IssuedToken>> {
    let dev = read_paired(tx, device_id)?;
    let row = match &dev {
        Some(_) => token_row(tx, device_id, role)?,
        None => None,
    };
    Ok(rules::recompute_token(
        key,
        dev.as_ref(),
        device_id,
        role,
        row,
        scopes,
    ))
}

/// Checks `token` for `device_id`/`role` and the requested `scopes` ([`rules::judge_token`]);
/// reads only.
fn check_token(
    tx: &Connection,
    device_id: &str,
    role: &str,
    token: &str,
    scopes: &[String],
) -> rusqlite::Result<rules::Checked> {
    let dev = read_paired(tx, device_id)?;
    let row = match &dev {
        Some(_) => token_row(tx, device_id, role)?,
        None => None,
    };
    Ok(rules::judge_token(dev.as_ref(), role, row, token, scopes))
}

impl DeviceStore for SqliteStore {
    fn paired(&self, device_id: &str) -> Result<Option<PairedDevice>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        read_paired(&conn, device_id).map_err(|e| self.err(e))
    }

    fn list(&self, now_ms: u64) -> Result<(Vec<PendingRequest>, Vec<PairedDevice>), StoreError> {
        self.tx(|tx| {
            let run = || -> rusqlite::Result<_> {
                prune(tx, now_ms)?;
                let pending = tx
                    .prepare(&format!(
                        "SELECT {PENDING_COLS} FROM pending ORDER BY ts_ms"
                    ))?
                    .query_map([], row_pending)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let ids = tx
                    .prepare("SELECT device_id FROM paired ORDER BY approved_at_ms, device_id")?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut paired = Vec::new();
                for id in ids {
                    paired.extend(read_paired(tx, &id)?);
                }
                Ok((pending, paired))
            };
            run().map_err(|e| self.err(e))
        })
    }

    fn pending(&self, request_id: &str, now_ms: u64) -> Result<Option<PendingRequest>, StoreError> {
        self.tx(|tx| {
            prune(tx, now_ms).map_err(|e| self.err(e))?;
            tx.query_row(
                &format!("SELECT {PENDING_COLS} FROM pending WHERE request_id = ?1"),
                [request_id],
                row_pending,
            )
            .optional()
            .map_err(|e| self.err(e))
        })
    }

    fn request(&self, req: PendingRequest, now_ms: u64) -> Result<PendingRequest, StoreError> {
        self.tx(|tx| {
            let run = || -> rusqlite::Result<PendingRequest> {
                prune(tx, now_ms)?;
                let existing: Vec<PendingRequest> = tx
                    .prepare(&format!(
                        "SELECT {PENDING_COLS} FROM pending WHERE device_id = ?1"
                    ))?
                    .query_map([&req.device_id], row_pending)?
                    .collect::<rusqlite::Result<_>>()?;
                let out = match rules::plan_request(&existing, &req, now_ms) {
                    RequestPlan::Refresh(out) => out,
                    RequestPlan::Replace(out) => {
                        tx.execute("DELETE FROM pending WHERE device_id = ?1", [&req.device_id])?;
                        audit_in(tx, &rules::requested_audit(&out, &req), now_ms)?;
                        out
                    }
                };
                tx.execute(
                    "INSERT OR REPLACE INTO pending (request_id, device_id, public_key, display_name,
                       platform, device_family, client_id, client_mode, role, scopes, remote_ip,
                       silent, is_repair, reason, ts_ms)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)",
                    params![
                        out.request_id,
                        out.device_id,
                        out.public_key,
                        out.metadata.display_name,
                        out.metadata.platform,
                        out.metadata.device_family,
                        out.metadata.client_id,
                        out.metadata.client_mode,
                        out.role,
                        json(&out.scopes),
                        out.metadata.remote_ip,
                        out.silent,
                        out.is_repair,
                        out.reason,
                        out.ts as i64
                    ],
                )?;
                Ok(out)
            };
            run().map_err(|e| self.err(e))
        })
    }

    fn approve(
        &self,
        request_id: &str,
        actor: &str,
        mint: bool,
        now_ms: u64,
    ) -> Result<(PairedDevice, Option<IssuedToken>), StoreError> {
        self.tx(|tx| {
            prune(tx, now_ms).map_err(|e| self.err(e))?;
            let req = tx
                .query_row(
                    &format!("SELECT {PENDING_COLS} FROM pending WHERE request_id = ?1"),
                    [request_id],
                    row_pending,
                )
                .optional()
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::UnknownRequest)?;
            rules::test_pause();
            let run = || -> rusqlite::Result<Option<IssuedToken>> {
                tx.execute("DELETE FROM pending WHERE request_id = ?1", [request_id])?;
                #[cfg(test)]
                if let Some(hook) = &self.approval_hook {
                    hook();
                }
                let prev = read_paired(tx, &req.device_id)?;
                // A different key under the same id cannot happen (id = hash of key), but a
                // re-pair replaces the record and its tokens rather than merging into them.
                let prev = prev.filter(|p| p.public_key == req.public_key);
                let (roles, scopes) = rules::approval_grants(prev.as_ref(), &req);
                if prev.is_none() {
                    tx.execute("DELETE FROM paired WHERE device_id = ?1", [&req.device_id])?;
                }
                tx.execute(
                    "INSERT INTO paired (device_id, public_key, display_name, platform,
                       device_family, client_id, client_mode, roles, approved_scopes, remote_ip,
                       created_at_ms, approved_at_ms)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?11)
                     ON CONFLICT (device_id) DO UPDATE SET roles = excluded.roles,
                       approved_scopes = excluded.approved_scopes,
                       approved_at_ms = excluded.approved_at_ms,
                       platform = excluded.platform, device_family = excluded.device_family",
                    params![
                        req.device_id,
                        req.public_key,
                        req.metadata.display_name,
                        req.metadata.platform,
                        req.metadata.device_family,
                        req.metadata.client_id,
                        req.metadata.client_mode,
                        json(&roles),
                        json(&scopes),
                        req.metadata.remote_ip,
                        now_ms as i64
                    ],
                )?;
                // A re-approval (role upgrade after a revocation) starts from a clean token row.
                tx.execute(
                    "DELETE FROM tokens WHERE device_id = ?1 AND role = ?2 AND revoked_at_ms IS NOT NULL",
                    params![req.device_id, req.role],
                )?;
                audit_in(tx, &rules::approved_audit(&req, actor), now_ms)?;
                if !mint {
                    return Ok(None);
                }
                let issued =
                    mint_in(tx, &self.key, &req.device_id, &req.role, &req.scopes, now_ms)?;
                let dev = read_paired(tx, &req.device_id)?.expect("written above");
                let record = rules::issued_by(actor, "token.issued");
                audit_in(tx, &rules::token_audit(record, &dev, &issued), now_ms)?;
                Ok(Some(issued))
            };
            let issued = run().map_err(|e| self.err(e))?;
            let dev = read_paired(tx, &req.device_id)
                .map_err(|e| self.err(e))?
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
        self.tx(|tx| {
            prune(tx, now_ms).map_err(|e| self.err(e))?;
            let req = tx
                .query_row(
                    &format!("SELECT {PENDING_COLS} FROM pending WHERE request_id = ?1"),
                    [request_id],
                    row_pending,
                )
                .optional()
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::UnknownRequest)?;
            tx.execute("DELETE FROM pending WHERE request_id = ?1", [request_id])
                .and_then(|_| audit_in(tx, &rules::rejected_audit(&req, actor), now_ms))
                .map_err(|e| self.err(e))?;
            Ok(req)
        })
    }

    fn remove(&self, device_id: &str, actor: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let run = || -> rusqlite::Result<bool> {
                let Some(dev) = read_paired(tx, device_id)? else {
                    return Ok(false);
                };
                tx.execute("DELETE FROM tokens WHERE device_id = ?1", [device_id])?;
                tx.execute("DELETE FROM paired WHERE device_id = ?1", [device_id])?;
                audit_in(tx, &rules::removed_audit(&dev, actor), now_ms)?;
                Ok(true)
            };
            run().map_err(|e| self.err(e))
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
        // The common case, a device reconnecting with its valid token, ends here: no write lock,
        // no write, no fsync.
        let read = self
            .read(|tx| check_token(tx, device_id, role, token, scopes).map_err(|e| self.err(e)))?;
        if !read.to_record(now_ms) {
            return Ok(read.check);
        }
        // Checked again under the write lock, so what is recorded is what is on disk now (a
        // rotation, or another connection's use of the same token, may have landed meanwhile).
        self.tx(|tx| {
            let run = || -> rusqlite::Result<TokenCheck> {
                let c = check_token(tx, device_id, role, token, scopes)?;
                let Some(record) = c.audit(device_id, role).filter(|_| c.to_record(now_ms)) else {
                    return Ok(c.check);
                };
                if c.check == TokenCheck::Ok {
                    tx.execute(
                        "UPDATE tokens SET last_used_at_ms = ?3 WHERE device_id = ?1 AND role = ?2",
                        params![device_id, role, now_ms as i64],
                    )?;
                }
                audit_in(tx, &record, now_ms)?;
                Ok(c.check)
            };
            run().map_err(|e| self.err(e))
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
        self.tx(|tx| {
            self.mint_audited(
                tx,
                device_id,
                role,
                scopes,
                rules::issued_by(actor, event),
                now_ms,
            )
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
        // The common case, a paired device connecting with the shared secret again, ends here:
        // its current token, recomputed, and nothing written.
        let current = self.read(|tx| {
            current_token(tx, &self.key, device_id, role, scopes).map_err(|e| self.err(e))
        })?;
        if let Some(current) = current {
            return Ok(current);
        }
        self.tx(|tx| {
            // Checked again under the write lock: a concurrent connect of the same device may have
            // just minted one, which this connect then shares rather than replaces.
            if let Some(current) =
                current_token(tx, &self.key, device_id, role, scopes).map_err(|e| self.err(e))?
            {
                return Ok(current);
            }
            rules::test_pause();
            self.mint_audited(
                tx,
                device_id,
                role,
                scopes,
                rules::issued_by(actor, "token.issued"),
                now_ms,
            )
        })
    }

    fn revoke(
        &self,
        device_id: &str,
        role: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.tx(|tx| {
            let dev = read_paired(tx, device_id)
                .map_err(|e| self.err(e))?
                .ok_or(StoreError::UnknownDevice)?;
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked_at_ms = ?3 WHERE device_id = ?1 AND role = ?2",
                    params![device_id, role, now_ms as i64],
                )
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(StoreError::UnknownDevice);
            }
            audit_in(tx, &rules::revoked_audit(&dev, role, actor), now_ms)
                .map_err(|e| self.err(e))?;
            Ok(now_ms)
        })
    }

    fn touch(&self, d: &PairedDevice) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE paired SET display_name = ?2, client_id = ?3, client_mode = ?4,
                   remote_ip = ?5 WHERE device_id = ?1",
                params![
                    d.device_id,
                    d.metadata.display_name,
                    d.metadata.client_id,
                    d.metadata.client_mode,
                    d.metadata.remote_ip
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn append_audit(&self, event: NewAuditEvent, now_ms: u64) -> Result<(), StoreError> {
        self.tx(|tx| audit_in(tx, &event, now_ms).map_err(|e| self.err(e)))
    }

    fn audit(&self) -> Result<Vec<AuditEvent>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let run = || -> rusqlite::Result<Vec<AuditEvent>> {
            conn.prepare(
                "SELECT seq, at_ms, event, actor, device_id, request_id, role, key_fingerprint,
                   token_fingerprint, outcome, detail FROM audit ORDER BY seq",
            )?
            .query_map([], |r| {
                Ok(AuditEvent {
                    seq: r.get(0)?,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    event: r.get(2)?,
                    actor: r.get(3)?,
                    device_id: r.get(4)?,
                    request_id: r.get(5)?,
                    role: r.get(6)?,
                    key_fingerprint: r.get(7)?,
                    token_fingerprint: r.get(8)?,
                    outcome: r.get(9)?,
                    detail: r.get(10)?,
                })
            })?
            .collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// One process owns the file: its events stay local.
    fn deliver_events(&self, _: EventSink) -> bool {
        false
    }

    /// One process owns the file: the gateway's own secrets and grace are the whole truth.
    fn fleet(&self) -> Option<&dyn super::FleetSecrets> {
        None
    }

    /// One process owns the file: the local limiter is the whole budget.
    fn count_attempt(&self, _: IpAddr, _: &Budget, _: u64) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn forgive_attempts(&self, _: IpAddr) -> Result<(), StoreError> {
        Ok(())
    }
}
