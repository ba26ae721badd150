//! `device.pair.list|approve|reject|remove` and `device.token.rotate|revoke`.

use driftless_protocol::payloads::{
    DeviceIdParams, DevicePairApproved, DevicePairList, DevicePairRejected, DevicePairRemoved,
    DeviceRoleParams, DeviceTokenRevoked, DeviceTokenRotated, Redacted, RequestIdParams,
};
use driftless_protocol::scopes::{ADMIN as ADMIN_SCOPE, PAIRING as PAIRING_SCOPE};
use serde::Deserialize;
use serde_json::Value;

use super::{DeviceStore, PairingEvent, StoreError, normalize_scopes, scopes_allow};

/// Whether `method` is one of ours.
pub fn is_device_method(method: &str) -> bool {
    matches!(
        method,
        "device.pair.list"
            | "device.pair.approve"
            | "device.pair.reject"
            | "device.pair.remove"
            | "device.token.rotate"
            | "device.token.revoke"
    )
}

/// The authenticated caller of a method.
#[derive(Debug, Clone)]
pub struct Caller {
    pub scopes: Vec<String>,
    /// Set when the caller authenticated as a paired device (device token).
    pub device_id: Option<String>,
    /// How the caller appears in the audit trail.
    pub label: String,
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == ADMIN_SCOPE)
    }

    /// A device-token caller without admin may only act on its own device.
    fn may_act_on(&self, device_id: &str) -> bool {
        self.is_admin() || self.device_id.as_deref().is_none_or(|d| d == device_id)
    }
}

/// Sessions that must be closed (4001) after a method succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub device_id: String,
    /// `None`: every role of the device.
    pub role: Option<String>,
    pub reason: &'static str,
}

impl Disconnect {
    /// Every reason a device's sessions are closed for (a shared store reads them back by name).
    pub const REASONS: [&'static str; 3] = [
        "device removed",
        "device token rotated",
        "device token revoked",
    ];

    pub fn removed(device_id: &str) -> Disconnect {
        Disconnect {
            device_id: device_id.to_owned(),
            role: None,
            reason: Disconnect::REASONS[0],
        }
    }

    pub fn rotated(device_id: &str, role: &str) -> Disconnect {
        Disconnect {
            device_id: device_id.to_owned(),
            role: Some(role.to_owned()),
            reason: Disconnect::REASONS[1],
        }
    }

    pub fn revoked(device_id: &str, role: &str) -> Disconnect {
        Disconnect {
            device_id: device_id.to_owned(),
            role: Some(role.to_owned()),
            reason: Disconnect::REASONS[2],
        }
    }
}

/// A method failure: `INVALID_REQUEST` unless `code` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MethodError {
    pub code: &'static str,
    pub message: String,
    /// `details.code`, when there is one.
    pub detail_code: Option<&'static str>,
}

impl MethodError {
    fn invalid(message: impl Into<String>) -> MethodError {
        MethodError {
            code: "INVALID_REQUEST",
            message: message.into(),
            detail_code: None,
        }
    }

    fn missing_scope(scope: &str) -> MethodError {
        MethodError {
            code: "INVALID_REQUEST",
            message: format!("missing scope: {scope}"),
            detail_code: Some("MISSING_SCOPE"),
        }
    }

    fn store(e: StoreError) -> MethodError {
        match e {
            StoreError::UnknownRequest | StoreError::UnknownDevice => {
                MethodError::invalid(e.to_string())
            }
            StoreError::Sqlite { .. }
            | StoreError::Postgres { .. }
            | StoreError::TokenKey(_)
            | StoreError::Task(_) => {
                tracing::error!(error = %e, "device store failed");
                MethodError {
                    code: "UNAVAILABLE",
                    message: "device store unavailable (see the gateway log)".into(),
                    detail_code: None,
                }
            }
        }
    }
}

/// `params` as `P`: what is missing or of the wrong type is named in the error.
fn params<'a, P: Deserialize<'a>>(params: &'a Value) -> Result<P, MethodError> {
    P::deserialize(params).map_err(|e| MethodError::invalid(format!("invalid params: {e}")))
}

/// A named id or role must say something.
fn non_blank<'a>(value: &'a str, name: &str) -> Result<&'a str, MethodError> {
    if value.trim().is_empty() {
        return Err(MethodError::invalid(format!(
            "invalid params: {name} (string) required"
        )));
    }
    Ok(value)
}

/// A device method's result, serialized as the payload itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum DeviceResult {
    List(DevicePairList),
    Approved(DevicePairApproved),
    Rejected(DevicePairRejected),
    Removed(DevicePairRemoved),
    Rotated(DeviceTokenRotated),
    Revoked(DeviceTokenRevoked),
}

/// Runs a device method. Returns the result payload, the sessions to close and the pairing event
/// to announce.
pub fn handle(
    store: &dyn DeviceStore,
    method: &str,
    raw: &Value,
    caller: &Caller,
    now_ms: u64,
) -> Result<(DeviceResult, Vec<Disconnect>, Option<PairingEvent>), MethodError> {
    if !scopes_allow(&caller.scopes, &[PAIRING_SCOPE.to_owned()]) {
        return Err(MethodError::missing_scope(PAIRING_SCOPE));
    }
    let s = MethodError::store;
    match method {
        "device.pair.list" => {
            let (pending, paired) = store.list(now_ms).map_err(s)?;
            Ok((
                DeviceResult::List(DevicePairList { pending, paired }),
                vec![],
                None,
            ))
        }
        "device.pair.approve" => {
            let p: RequestIdParams = params(raw)?;
            let id = non_blank(&p.request_id, "requestId")?;
            let req = store
                .pending(id, now_ms)
                .map_err(s)?
                .ok_or_else(|| MethodError::invalid("unknown requestId"))?;
            // An approver cannot grant what it does not hold.
            for scope in req.scopes.iter().filter(|x| x.starts_with("operator.")) {
                if !scopes_allow(&caller.scopes, std::slice::from_ref(scope)) {
                    return Err(MethodError::missing_scope(scope));
                }
            }
            let (device, _) = store.approve(id, &caller.label, false, now_ms).map_err(s)?;
            let event = PairingEvent::Resolved {
                request_id: id.to_owned(),
                device_id: device.device_id.clone(),
                approved: true,
                ts: now_ms,
            };
            Ok((
                DeviceResult::Approved(DevicePairApproved {
                    request_id: id.to_owned(),
                    device,
                }),
                vec![],
                Some(event),
            ))
        }
        "device.pair.reject" => {
            let p: RequestIdParams = params(raw)?;
            let id = non_blank(&p.request_id, "requestId")?;
            let req = store.reject(id, &caller.label, now_ms).map_err(s)?;
            Ok((
                DeviceResult::Rejected(DevicePairRejected {
                    request_id: id.to_owned(),
                    device_id: req.device_id.clone(),
                }),
                vec![],
                Some(PairingEvent::Resolved {
                    request_id: id.to_owned(),
                    device_id: req.device_id,
                    approved: false,
                    ts: now_ms,
                }),
            ))
        }
        "device.pair.remove" => {
            let p: DeviceIdParams = params(raw)?;
            let device_id = non_blank(&p.device_id, "deviceId")?;
            if !caller.may_act_on(device_id) {
                return Err(MethodError::invalid("device pairing removal denied"));
            }
            if !store.remove(device_id, &caller.label, now_ms).map_err(s)? {
                return Err(MethodError::invalid("unknown deviceId"));
            }
            Ok((
                DeviceResult::Removed(DevicePairRemoved {
                    device_id: device_id.to_owned(),
                    removed: true,
                }),
                vec![Disconnect::removed(device_id)],
                None,
            ))
        }
        "device.token.rotate" => {
            let p: DeviceRoleParams = params(raw)?;
            let device_id = non_blank(&p.device_id, "deviceId")?;
            let role = non_blank(&p.role, "role")?;
            let denied = || MethodError::invalid("device token rotation denied");
            if !caller.may_act_on(device_id) {
                return Err(denied());
            }
            let dev = store.paired(device_id).map_err(s)?.ok_or_else(denied)?;
            if !dev.roles.iter().any(|r| r == role) {
                return Err(denied());
            }
            let current = dev.tokens.iter().find(|t| t.role == role);
            let scopes = match &p.scopes {
                Some(sc) => normalize_scopes(sc),
                None => current
                    .map(|t| t.scopes.clone())
                    .unwrap_or_else(|| dev.approved_scopes.clone()),
            };
            if !scopes_allow(&dev.approved_scopes, &scopes)
                || !scopes_allow(&caller.scopes, &scopes)
            {
                return Err(denied());
            }
            let issued = store
                .mint(
                    device_id,
                    role,
                    &scopes,
                    &caller.label,
                    "token.rotated",
                    now_ms,
                )
                .map_err(s)?;
            let out = DeviceTokenRotated {
                device_id: device_id.to_owned(),
                role: role.to_owned(),
                // The new token goes only to the device it belongs to.
                token: (caller.device_id.as_deref() == Some(device_id))
                    .then(|| Redacted(issued.token.expose().to_owned())),
                scopes: issued.scopes,
                rotated_at_ms: issued.issued_at_ms,
                fingerprint: issued.token.fingerprint().to_string(),
            };
            Ok((
                DeviceResult::Rotated(out),
                vec![Disconnect::rotated(device_id, role)],
                None,
            ))
        }
        "device.token.revoke" => {
            let p: DeviceRoleParams = params(raw)?;
            let device_id = non_blank(&p.device_id, "deviceId")?;
            let role = non_blank(&p.role, "role")?;
            if !caller.may_act_on(device_id) {
                return Err(MethodError::invalid("device token revocation denied"));
            }
            let at = store
                .revoke(device_id, role, &caller.label, now_ms)
                .map_err(s)?;
            Ok((
                DeviceResult::Revoked(DeviceTokenRevoked {
                    device_id: device_id.to_owned(),
                    role: role.to_owned(),
                    revoked_at_ms: at,
                }),
                vec![Disconnect::revoked(device_id, role)],
                None,
            ))
        }
        other => Err(MethodError::invalid(format!("unknown method: {other}"))),
    }
}
