//! What happens to a device whose proof checked out (steps 8, 10 and 11 of the handshake).

use std::net::IpAddr;

use driftless_protocol::device_auth::normalize_metadata;

use super::{
    DeviceMetadata, DeviceStore, IssuedToken, PairedDevice, PairingEvent, PendingRequest,
    StoreError, TokenCheck, normalize_scopes, scopes_allow,
};

/// Who performs a silent pairing, in the audit trail.
pub const SILENT_ACTOR: &str = "gateway (silent loopback pairing)";

/// A device on a connection, after its proof verified.
#[derive(Debug, Clone)]
pub struct ConnectingDevice<'a> {
    pub device_id: &'a str,
    /// Normalised base64url raw key.
    pub public_key: &'a str,
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub display_name: Option<&'a str>,
    pub platform: Option<&'a str>,
    pub device_family: Option<&'a str>,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub remote_ip: IpAddr,
}

impl ConnectingDevice<'_> {
    /// What the device says about itself, as a paired device or a request records it.
    fn metadata(&self) -> DeviceMetadata {
        DeviceMetadata {
            display_name: self.display_name.map(str::to_owned),
            platform: self.platform.map(str::to_owned),
            device_family: self.device_family.map(str::to_owned),
            client_id: Some(self.client_id.to_owned()),
            client_mode: Some(self.client_mode.to_owned()),
            remote_ip: Some(self.remote_ip.to_string()),
        }
    }
}

/// The pairing decision for a connection. `event` is what to announce to pairing operators: the
/// resolution of a silent pairing, or a new pending request.
#[derive(Debug)]
pub enum PairingOutcome {
    /// The device is paired for this role and scopes. `issued` is the token to return in
    /// `hello-ok.auth.deviceToken` (its current one, or a new one); `None` when the device already
    /// authenticated with a valid token of its own (it keeps that one).
    Paired {
        issued: Option<IssuedToken>,
        event: Option<PairingEvent>,
    },
    /// `NOT_PAIRED` / `PAIRING_REQUIRED` with this request id and reason.
    Required {
        request_id: String,
        reason: &'static str,
        event: Option<PairingEvent>,
    },
}

/// Step 8: a presented device token as the credential (only when shared auth did not succeed).
pub fn verify_device_token(
    store: &dyn DeviceStore,
    device: &ConnectingDevice<'_>,
    token: &str,
    now_ms: u64,
) -> Result<TokenCheck, StoreError> {
    store.verify_token(device.device_id, device.role, token, device.scopes, now_ms)
}

/// Steps 10–11: pairing (silent for a local client that proved the shared secret, otherwise a
/// pending request) and token issuance. `device_token_ok`: the connection authenticated with this
/// device's valid token.
pub fn on_connect(
    store: &dyn DeviceStore,
    device: &ConnectingDevice<'_>,
    shared_auth_ok: bool,
    device_token_ok: bool,
    local: bool,
    now_ms: u64,
) -> Result<PairingOutcome, StoreError> {
    let paired = store
        .paired(device.device_id)?
        .filter(|p| p.public_key == device.public_key);
    let requested = normalize_scopes(device.scopes);
    let reason = match &paired {
        None => Some("not-paired"),
        Some(p) if !p.effective_roles().contains(&device.role) => Some("role-upgrade"),
        Some(p) if !scopes_allow(&p.approved_scopes, &requested) => Some("scope-upgrade"),
        Some(p)
            if normalize_metadata(p.metadata.platform.as_deref())
                != normalize_metadata(device.platform)
                || normalize_metadata(p.metadata.device_family.as_deref())
                    != normalize_metadata(device.device_family) =>
        {
            Some("metadata-upgrade")
        }
        Some(_) => None,
    };
    if let Some(reason) = reason {
        // Scope and metadata upgrades always need a person; so does anything not local.
        let silent = local && shared_auth_ok && matches!(reason, "not-paired" | "role-upgrade");
        let proposed_id = uuid::Uuid::new_v4().to_string();
        let req = store.request(
            PendingRequest {
                request_id: proposed_id.clone(),
                device_id: device.device_id.to_owned(),
                public_key: device.public_key.to_owned(),
                metadata: device.metadata(),
                role: device.role.to_owned(),
                scopes: requested,
                silent,
                is_repair: paired.is_some(),
                reason: reason.to_owned(),
                ts: now_ms,
            },
            now_ms,
        )?;
        if !silent {
            // A refresh in place keeps the older id and was announced when it was created.
            let created = req.request_id == proposed_id;
            return Ok(PairingOutcome::Required {
                request_id: req.request_id.clone(),
                reason,
                event: created.then(|| PairingEvent::Requested(Box::new(req))),
            });
        }
        // As OpenClaw: a silent pairing announces only its resolution, never a request.
        let (device, issued) = store.approve(&req.request_id, SILENT_ACTOR, true, now_ms)?;
        return Ok(PairingOutcome::Paired {
            issued,
            event: Some(PairingEvent::Resolved {
                request_id: req.request_id,
                device_id: device.device_id,
                approved: true,
                ts: now_ms,
            }),
        });
    }
    let p = paired.expect("no reason means paired");
    // Platform and family changes need an approval (above); the rest is recorded as seen.
    let seen = PairedDevice {
        metadata: DeviceMetadata {
            platform: p.metadata.platform.clone(),
            device_family: p.metadata.device_family.clone(),
            ..device.metadata()
        },
        ..p.clone()
    };
    // A reconnect that changes none of these writes nothing (a write is a durable commit).
    if seen != p {
        store.touch(&seen)?;
    }
    if device_token_ok {
        return Ok(PairingOutcome::Paired {
            issued: None,
            event: None,
        });
    }
    // A device that proved the shared secret instead (lost its token, or another process sharing
    // its identity chose the shared secret) gets its current token back, so every copy stays
    // valid; a new one only when it has none that covers these scopes.
    let issued = store.ensure_token(
        device.device_id,
        device.role,
        device.scopes,
        "gateway (connect)",
        now_ms,
    )?;
    Ok(PairingOutcome::Paired {
        issued: Some(issued),
        event: None,
    })
}
