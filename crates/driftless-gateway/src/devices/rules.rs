//! The decisions every [`super::DeviceStore`] backend makes the same way, apart from its SQL:
//! whether a presented token is accepted, whether a use is recorded, whether a stored token can be
//! handed out again, how a request refreshes or supersedes older ones, what an approval grants.
//! `sqlite.rs` and `postgres.rs` read rows and call these.

use driftless_core::Fingerprint;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token_key::TokenKey;
use super::{
    IssuedToken, LAST_USED_COALESCE_MS, NewAuditEvent, PairedDevice, PendingRequest, TokenCheck,
    normalize_scopes, scopes_allow,
};

pub(super) fn json(v: &[String]) -> String {
    serde_json::to_string(v).expect("string lists serialize")
}

pub(super) fn unjson(s: String) -> Vec<String> {
    serde_json::from_str(&s).unwrap_or_default()
}

/// What a token row stores instead of the token.
pub(super) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
thread_local! {
    /// Milliseconds a store waits inside a writing transaction at [`test_pause`], on this thread
    /// only: race tests widen the window between a transaction's read and its write, so two
    /// stores' transactions surely overlap.
    pub(super) static TEST_PAUSE_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Where a race test's pause takes effect (nothing outside tests).
pub(super) fn test_pause() {
    #[cfg(test)]
    {
        let ms = TEST_PAUSE_MS.with(|p| p.get());
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

/// The hash a token row stores for `issued`.
pub(super) fn stored_hash(issued: &IssuedToken) -> [u8; 32] {
    hash(issued.token.expose())
}

/// Fingerprint of a device's public key, for the audit trail.
pub(crate) fn key_fingerprint(public_key: &str) -> String {
    Fingerprint::of(public_key.as_bytes()).to_string()
}

/// The audit actor of a device acting for itself.
pub(super) fn device_actor(device_id: &str) -> String {
    format!("device:{}", &device_id[..device_id.len().min(12)])
}

/// The event and actor of a token issuance (the store fills in the device, role and fingerprints).
pub(super) fn issued_by(actor: &str, event: &'static str) -> NewAuditEvent {
    NewAuditEvent {
        event,
        actor: actor.to_owned(),
        ..Default::default()
    }
}

/// A device's token row, as the checks read it.
pub(super) struct TokenRow {
    pub hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub revoked_at_ms: Option<u64>,
    pub fingerprint: String,
    pub last_used_at_ms: Option<u64>,
    /// `None` for a row from before derived tokens.
    pub nonce: Option<Vec<u8>>,
    pub created_at_ms: u64,
    pub rotated_at_ms: Option<u64>,
}

/// A presented device token checked against the store, before anything is recorded.
pub(super) struct Checked {
    pub check: TokenCheck,
    /// The paired device and its token row; `None` when the device is not paired or lacks the role
    /// (nothing to record the attempt against).
    pub known: Option<KnownToken>,
}

pub(super) struct KnownToken {
    pub public_key: String,
    pub token_fingerprint: String,
    pub last_used_at_ms: Option<u64>,
}

impl Checked {
    /// Whether this use goes into the store: every rejection, and an accepted use only when the
    /// recorded last use is missing or older than [`LAST_USED_COALESCE_MS`] (a clock that stepped
    /// back counts as within the window).
    pub fn to_record(&self, now_ms: u64) -> bool {
        let Some(known) = &self.known else {
            return false;
        };
        match self.check {
            TokenCheck::Rejected(_) => true,
            TokenCheck::Ok => known
                .last_used_at_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= LAST_USED_COALESCE_MS),
        }
    }

    /// The `token.used` audit line recording this check (call only when [`Checked::to_record`]).
    pub fn audit(&self, device_id: &str, role: &str) -> Option<NewAuditEvent> {
        let known = self.known.as_ref()?;
        let (outcome, detail) = match self.check {
            TokenCheck::Ok => ("ok", None),
            TokenCheck::Rejected(r) => ("rejected", Some(r.to_owned())),
        };
        Some(NewAuditEvent {
            event: "token.used",
            actor: device_actor(device_id),
            device_id: Some(device_id.to_owned()),
            role: Some(role.to_owned()),
            key_fingerprint: Some(key_fingerprint(&known.public_key)),
            // The fingerprint of what was presented, when it is the stored one.
            token_fingerprint: (self.check == TokenCheck::Ok)
                .then(|| known.token_fingerprint.clone()),
            outcome,
            detail,
            ..Default::default()
        })
    }
}

/// Checks `token` for `device` (`None`: not paired) and `role` with its token row, against the
/// requested `scopes`.
pub(super) fn judge_token(
    device: Option<&PairedDevice>,
    role: &str,
    row: Option<TokenRow>,
    token: &str,
    scopes: &[String],
) -> Checked {
    let rejected = |r| Checked {
        check: TokenCheck::Rejected(r),
        known: None,
    };
    let Some(dev) = device else {
        return rejected("device-not-paired");
    };
    if !dev.roles.iter().any(|r| r == role) {
        return rejected("role-missing");
    }
    let Some(row) = row else {
        return rejected("token-missing");
    };
    let check = if row.revoked_at_ms.is_some() {
        TokenCheck::Rejected("token-revoked")
    } else if token.trim().is_empty() || !bool::from(row.hash.ct_eq(&hash(token)[..])) {
        TokenCheck::Rejected("token-mismatch")
    } else if !scopes_allow(&dev.approved_scopes, &row.scopes)
        || !scopes_allow(&row.scopes, &normalize_scopes(scopes))
    {
        TokenCheck::Rejected("scope-mismatch")
    } else {
        TokenCheck::Ok
    };
    Checked {
        check,
        known: Some(KnownToken {
            public_key: dev.public_key.clone(),
            token_fingerprint: row.fingerprint,
            last_used_at_ms: row.last_used_at_ms,
        }),
    }
}

/// The device's active token for `role` recomputed from its nonce, when it covers `scopes` (within
/// the approved scopes too, as [`judge_token`] requires); `None` when there is none to return: not
/// paired for the role, no row, revoked, scopes not covered, a row from before derived tokens (no
/// nonce), or a nonce whose token no longer matches the stored hash (the key was replaced).
pub(super) fn recompute_token(
    key: &TokenKey,
    device: Option<&PairedDevice>,
    device_id: &str,
    role: &str,
    row: Option<TokenRow>,
    scopes: &[String],
) -> Option<IssuedToken> {
    let dev = device.filter(|d| d.roles.iter().any(|r| r == role))?;
    let row = row.filter(|r| r.revoked_at_ms.is_none())?;
    let nonce = row.nonce.as_ref()?;
    if !scopes_allow(&dev.approved_scopes, &row.scopes)
        || !scopes_allow(&row.scopes, &normalize_scopes(scopes))
    {
        return None;
    }
    let token = key.derive(device_id, role, nonce);
    if !bool::from(row.hash.ct_eq(&hash(token.expose())[..])) {
        return None;
    }
    Some(IssuedToken {
        device_id: device_id.to_owned(),
        role: role.to_owned(),
        token,
        scopes: row.scopes,
        issued_at_ms: row.rotated_at_ms.unwrap_or(row.created_at_ms),
    })
}

/// How a new request relates to the device's pending ones.
pub(super) enum RequestPlan {
    /// The same device, key, role and scopes: the stored request is refreshed in place (same id,
    /// original time).
    Refresh(PendingRequest),
    /// A new request (with the superseded ones' scopes for its role merged in) replacing all of
    /// the device's pending ones; recorded as `pair.requested`.
    Replace(PendingRequest),
}

pub(super) fn plan_request(
    existing: &[PendingRequest],
    req: &PendingRequest,
    now_ms: u64,
) -> RequestPlan {
    let same = |p: &PendingRequest| {
        p.public_key == req.public_key
            && p.role == req.role
            && normalize_scopes(&p.scopes) == normalize_scopes(&req.scopes)
    };
    let mut out = req.clone();
    if let [only] = existing
        && same(only)
    {
        out.request_id = only.request_id.clone();
        out.ts = only.ts;
        out.silent = only.silent && req.silent;
        return RequestPlan::Refresh(out);
    }
    out.ts = now_ms;
    let mut scopes = req.scopes.clone();
    for p in existing {
        if p.role == req.role {
            scopes.extend(p.scopes.iter().cloned());
        }
    }
    out.scopes = normalize_scopes(&scopes);
    RequestPlan::Replace(out)
}

/// The `pair.requested` audit line of a new request.
pub(super) fn requested_audit(out: &PendingRequest, req: &PendingRequest) -> NewAuditEvent {
    NewAuditEvent {
        event: "pair.requested",
        actor: device_actor(&req.device_id),
        device_id: Some(req.device_id.clone()),
        request_id: Some(out.request_id.clone()),
        role: Some(req.role.clone()),
        key_fingerprint: Some(key_fingerprint(&req.public_key)),
        outcome: "pending",
        detail: Some(format!(
            "reason={} remote_ip={}",
            req.reason,
            req.metadata.remote_ip.as_deref().unwrap_or("-")
        )),
        ..Default::default()
    }
}

/// What approving `req` grants, given the device's record (`prev`, only when its key is the
/// request's: a re-pair under a new key replaces the record): the roles and approved scopes.
pub(super) fn approval_grants(
    prev: Option<&PairedDevice>,
    req: &PendingRequest,
) -> (Vec<String>, Vec<String>) {
    let mut roles = prev.map(|p| p.roles.clone()).unwrap_or_default();
    if !roles.contains(&req.role) {
        roles.push(req.role.clone());
    }
    roles.sort();
    let mut scopes = prev.map(|p| p.approved_scopes.clone()).unwrap_or_default();
    scopes.extend(req.scopes.iter().cloned());
    (roles, normalize_scopes(&scopes))
}

/// The `pair.approved` audit line.
pub(super) fn approved_audit(req: &PendingRequest, actor: &str) -> NewAuditEvent {
    NewAuditEvent {
        event: "pair.approved",
        actor: actor.to_owned(),
        device_id: Some(req.device_id.clone()),
        request_id: Some(req.request_id.clone()),
        role: Some(req.role.clone()),
        key_fingerprint: Some(key_fingerprint(&req.public_key)),
        outcome: "ok",
        detail: Some(format!(
            "reason={} scopes={}",
            req.reason,
            req.scopes.join(",")
        )),
        ..Default::default()
    }
}

/// The `pair.rejected` audit line.
pub(super) fn rejected_audit(req: &PendingRequest, actor: &str) -> NewAuditEvent {
    NewAuditEvent {
        event: "pair.rejected",
        actor: actor.to_owned(),
        device_id: Some(req.device_id.clone()),
        request_id: Some(req.request_id.clone()),
        role: Some(req.role.clone()),
        key_fingerprint: Some(key_fingerprint(&req.public_key)),
        outcome: "rejected",
        ..Default::default()
    }
}

/// The `pair.expired` audit line of a request pruned after [`super::PENDING_TTL_MS`].
pub(super) fn expired_audit(p: PendingRequest) -> NewAuditEvent {
    NewAuditEvent {
        event: "pair.expired",
        actor: "gateway".into(),
        key_fingerprint: Some(key_fingerprint(&p.public_key)),
        device_id: Some(p.device_id),
        request_id: Some(p.request_id),
        role: Some(p.role),
        outcome: "expired",
        ..Default::default()
    }
}

/// The `device.removed` audit line.
pub(super) fn removed_audit(dev: &PairedDevice, actor: &str) -> NewAuditEvent {
    NewAuditEvent {
        event: "device.removed",
        actor: actor.to_owned(),
        device_id: Some(dev.device_id.clone()),
        key_fingerprint: Some(key_fingerprint(&dev.public_key)),
        outcome: "ok",
        ..Default::default()
    }
}

/// The `token.revoked` audit line of `dev`'s `role`.
pub(super) fn revoked_audit(dev: &PairedDevice, role: &str, actor: &str) -> NewAuditEvent {
    NewAuditEvent {
        event: "token.revoked",
        actor: actor.to_owned(),
        device_id: Some(dev.device_id.clone()),
        role: Some(role.to_owned()),
        key_fingerprint: Some(key_fingerprint(&dev.public_key)),
        outcome: "ok",
        ..Default::default()
    }
}

/// A token's audit line with the device, role and fingerprints filled in.
pub(super) fn token_audit(
    record: NewAuditEvent,
    dev: &PairedDevice,
    issued: &IssuedToken,
) -> NewAuditEvent {
    NewAuditEvent {
        device_id: Some(issued.device_id.clone()),
        role: Some(issued.role.clone()),
        key_fingerprint: Some(key_fingerprint(&dev.public_key)),
        token_fingerprint: Some(issued.token.fingerprint().to_string()),
        outcome: "ok",
        ..record
    }
}

/// A new token for `device_id`'s `role`: a fresh nonce is a new token (the old one no longer
/// matches the stored hash). Returns the token and the nonce to store beside its hash.
pub(super) fn new_token(
    key: &TokenKey,
    device_id: &str,
    role: &str,
    scopes: &[String],
    now_ms: u64,
) -> (IssuedToken, [u8; super::token_key::KEY_LEN]) {
    let nonce = super::token_key::random_bytes();
    let token = key.derive(device_id, role, &nonce);
    (
        IssuedToken {
            device_id: device_id.to_owned(),
            role: role.to_owned(),
            token,
            scopes: normalize_scopes(scopes),
            issued_at_ms: now_ms,
        },
        nonce,
    )
}
