//! Authentication, one path for the WebSocket handshake and the HTTP API: the limiter, the
//! shared-secret compare (current and in-grace previous), the re-read of a file source after a
//! miss, the device-token check and the metrics. Each caller composes these steps in its
//! protocol's order; none of them blocks an async worker (file reads and device-store calls run on
//! blocking threads, the re-read under a deadline).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use driftless_core::config::AuthMode;

use crate::State;
use crate::devices::{DeviceStore, FleetSecrets, StoreError, TokenCheck};
use crate::metrics::OutcomeLabels;
use crate::secrets::{Check, now_ms};
use crate::throttle::{LOG_EVERY, Throttle};

/// How long a shared-secret miss may wait for the re-read of its file. A file that does not
/// answer in time (a FIFO, a hung network mount) counts as unchanged.
const REREAD_DEADLINE: Duration = Duration::from_secs(2);

/// One counted attempt from an address (the limiter counts *before* comparing). Forgiven with
/// [`Attempt::succeeded`]; dropped otherwise, it stays counted. A wrong credential calls
/// [`Attempt::failed`] before it is answered.
pub(crate) struct Attempt<'a> {
    state: &'a State,
    ip: IpAddr,
    fleet: Fleet,
}

/// Where an attempt stands in the fleet's budget (a store several replicas share).
///
/// The address's first attempt in this replica's window is compared before it is counted there,
/// so a right credential from a client that has not failed here costs no database call; a miss is
/// counted before it is answered, and every later attempt is counted before it is compared. In a
/// sequence of guesses the fleet therefore compares no more than the budget; concurrent first
/// attempts on different replicas can add at most one comparison per other replica per lockout (a
/// replica that learns the address is locked locks it locally too).
enum Fleet {
    /// Not counted there: an exempt address, or a store one process owns.
    No,
    /// Counted before the compare.
    Counted,
    /// Compared first, counted if it fails.
    Deferred,
}

/// The address is locked out; retry after this many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimited(pub u64);

/// Counts one attempt from `ip`, or refuses it when `ip` is locked out (then nothing may be
/// compared), here or, with a shared store, in the fleet.
pub(crate) async fn begin(state: &State, ip: IpAddr) -> Result<Attempt<'_>, RateLimited> {
    let refused = |retry_after_ms| {
        state.metrics.limiter_rejections.inc();
        RateLimited(retry_after_ms)
    };
    let fleet = match state.limiter.attempt(ip).map_err(refused)? {
        Some(nth) if state.shared_store && nth > 1 => {
            // Boxed here and below: the fleet's steps would otherwise make every connection's
            // task larger.
            Box::pin(count_in_fleet(state, ip)).await.map_err(refused)?;
            Fleet::Counted
        }
        Some(_) if state.shared_store => Fleet::Deferred,
        _ => Fleet::No,
    };
    Ok(Attempt { state, ip, fleet })
}

/// Counts an attempt in the fleet's budget. `Err(retry_after_ms)` when it is spent; this replica
/// then locks the address as well.
async fn count_in_fleet(state: &State, ip: IpAddr) -> Result<(), u64> {
    let store = state.devices.clone();
    let budget = state.limiter.budget();
    match blocking(move || store.count_attempt(ip, &budget, now_ms())).await {
        Ok(None) => Ok(()),
        Ok(Some(retry_after_ms)) => {
            state.limiter.lock(ip, retry_after_ms);
            Err(retry_after_ms)
        }
        // This replica's own budget still holds.
        Err(e) => {
            static LOG: Throttle = Throttle::new(LOG_EVERY);
            if let Some(held_back) = LOG.admit() {
                tracing::warn!(error = %e, held_back, "cannot count a credential attempt in the fleet's budget; only this replica's applies");
            }
            Ok(())
        }
    }
}

impl Attempt<'_> {
    /// The credential was right: forget this address's failures.
    pub(crate) async fn succeeded(self) {
        self.state.limiter.success(self.ip);
        if let Fleet::Counted = self.fleet {
            let (store, ip) = (self.state.devices.clone(), self.ip);
            if let Err(e) = Box::pin(blocking(move || store.forgive_attempts(ip))).await {
                static LOG: Throttle = Throttle::new(LOG_EVERY);
                if let Some(held_back) = LOG.admit() {
                    tracing::warn!(error = %e, held_back, "cannot forgive an address's attempts in the fleet's budget");
                }
            }
        }
    }

    /// The credential was wrong: counted in the fleet's budget now if it was not before the
    /// compare, so the next attempt anywhere sees it.
    pub(crate) async fn failed(self) {
        if let Fleet::Deferred = self.fleet {
            // Over budget: this replica is locked now too; the answer stays a mismatch.
            let _ = Box::pin(count_in_fleet(self.state, self.ip)).await;
        }
    }
}

/// Records the outcome of a credential check in `driftless_auth_checks_total`.
pub(crate) fn record(state: &State, ok: bool) {
    if ok {
        state.metrics.auth_checks_ok.inc();
    } else {
        state
            .metrics
            .auth_checks
            .get_or_create(&OutcomeLabels {
                outcome: "mismatch",
            })
            .inc();
    }
}

/// Compares a presented shared secret with the current one and, in grace, the previous one. On a
/// mismatch against a file-sourced secret, the file is re-read on a blocking thread (a client can
/// read a rotated file before the debounced watcher fires); if it changed, the gateway reloads
/// and compares again, so a rotation never refuses the new token. A wrong guess against an
/// unchanged file costs one small read, bounded by [`REREAD_DEADLINE`].
pub(crate) async fn compare_shared(state: &Arc<State>, candidate: &str) -> Check {
    match state.secrets.check(candidate) {
        Check::Mismatch if state.secrets.has_shared_file() => {
            let st = state.clone();
            let reread = tokio::task::spawn_blocking(move || {
                if st.secrets.source_changed() {
                    let _ = crate::reload::reload_and_schedule(&st, "auth-miss");
                }
            });
            // Either way compare again: a concurrent reload may have swapped the secret. Boxed:
            // only a miss waits here, and the timer would otherwise make every connection's task
            // larger.
            let _ = Box::pin(tokio::time::timeout(REREAD_DEADLINE, reread)).await;
            state.secrets.check(candidate)
        }
        checked => checked,
    }
}

/// Why a shared-secret check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedRefusal {
    Missing,
    Mismatch,
    RateLimited(u64),
}

/// The whole shared-secret step: presence, one limiter attempt, the compare, the metric.
/// `Ok(None)` in mode `none`; otherwise the generation of the secret that matched.
pub(crate) async fn shared_secret(
    state: &Arc<State>,
    ip: IpAddr,
    candidate: Option<&str>,
) -> Result<Option<u64>, SharedRefusal> {
    if state.secrets.mode == AuthMode::None {
        return Ok(None);
    }
    let Some(candidate) = candidate.filter(|c| !c.is_empty()) else {
        return Err(SharedRefusal::Missing);
    };
    let attempt = begin(state, ip)
        .await
        .map_err(|RateLimited(ms)| SharedRefusal::RateLimited(ms))?;
    let checked = compare_shared(state, candidate).await;
    record(state, checked != Check::Mismatch);
    match checked {
        Check::Ok(generation) => {
            attempt.succeeded().await;
            Ok(Some(generation))
        }
        Check::Mismatch => {
            attempt.failed().await;
            Err(SharedRefusal::Mismatch)
        }
    }
}

/// A device token presented for a device and role.
pub(crate) struct DeviceTokenClaim {
    pub device_id: String,
    pub role: String,
    /// The scopes the token must cover.
    pub scopes: Vec<String>,
    pub token: String,
}

/// Checks a device token on a blocking thread (the store takes a database lock).
pub(crate) async fn verify_device_token(
    state: &State,
    claim: DeviceTokenClaim,
) -> Result<TokenCheck, StoreError> {
    let store = state.devices.clone();
    blocking(move || {
        store.verify_token(
            &claim.device_id,
            &claim.role,
            &claim.token,
            &claim.scopes,
            now_ms(),
        )
    })
    .await
}

/// Runs a device-store call on a blocking thread. A panic there is reported as a store failure.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

/// Runs a call on the fleet's shared secrets of `store` on a blocking thread (the database call
/// blocks). `Ok(None)` at once when the store has no fleet (one process owns it).
pub(crate) async fn on_fleet<T: Send + 'static>(
    store: &Arc<dyn DeviceStore>,
    f: impl FnOnce(&dyn FleetSecrets) -> Result<T, StoreError> + Send + 'static,
) -> Result<Option<T>, StoreError> {
    if store.fleet().is_none() {
        return Ok(None);
    }
    let store = store.clone();
    blocking(move || store.fleet().map(f).transpose()).await
}

/// What the HTTP API accepts: `Authorization: Bearer <gateway token>` (the scheme is
/// case-insensitive, RFC 7235 §2.1), or a device token with the device named.
pub(crate) enum HttpRefusal {
    Unauthorized,
    RateLimited(u64),
    StoreUnavailable,
}

/// The credential of an `Authorization` header value: `Bearer <credential>`, any case.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// The HTTP API's check: one limiter attempt per request covering the shared secret and, failing
/// it, the named device's token (as the WebSocket handshake does, through the same steps).
pub(crate) async fn http(
    state: &Arc<State>,
    ip: IpAddr,
    presented: Option<&str>,
    device: Option<(&str, &str)>,
) -> Result<(), HttpRefusal> {
    if state.secrets.mode == AuthMode::None {
        return Ok(());
    }
    let presented = presented.ok_or(HttpRefusal::Unauthorized)?;
    let attempt = begin(state, ip)
        .await
        .map_err(|RateLimited(ms)| HttpRefusal::RateLimited(ms))?;
    let ok = match (compare_shared(state, presented).await, device) {
        (Check::Ok(_), _) => true,
        (Check::Mismatch, None) => false,
        (Check::Mismatch, Some((device_id, role))) => {
            let claim = DeviceTokenClaim {
                device_id: device_id.to_owned(),
                role: role.to_owned(),
                scopes: Vec::new(),
                token: presented.to_owned(),
            };
            match verify_device_token(state, claim).await {
                Ok(TokenCheck::Ok) => true,
                Ok(TokenCheck::Rejected(_)) => false,
                Err(e) => {
                    static LOG: Throttle = Throttle::new(LOG_EVERY);
                    if let Some(held_back) = LOG.admit() {
                        tracing::error!(error = %e, held_back, "device store unavailable for a /v1 request");
                    }
                    return Err(HttpRefusal::StoreUnavailable);
                }
            }
        }
    };
    record(state, ok);
    if ok {
        attempt.succeeded().await;
        Ok(())
    } else {
        attempt.failed().await;
        Err(HttpRefusal::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer tok"), Some("tok"));
        assert_eq!(bearer("bearer tok"), Some("tok"));
        assert_eq!(bearer("BEARER  tok"), Some("tok"));
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic tok"), None);
        assert_eq!(bearer("Bearertok"), None);
    }
}
