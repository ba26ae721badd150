//! Typed payloads: `hello-ok`, method results, events and error details. The gateway serializes
//! them; clients deserialize them, from driftless or from OpenClaw (whose payloads carry more and
//! sometimes less, so every field a peer may omit has a default).
//!
//! Fields that can carry a token (`HelloAuth::device_token`, `DeviceTokenRotated::token`) are
//! [`Redacted`]: `<set>` in `Debug`, the value itself on the wire.

use std::borrow::Cow;

pub use driftless_core::redact::Redacted;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `hello-ok`, the payload answering `connect`. Its strings and lists are `Cow`s so the gateway
/// writes one per session from what it already holds, without copying (a client reads an owned
/// `HelloOk<'static>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloOk<'a> {
    /// Always `hello-ok`.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub protocol: u32,
    pub server: ServerInfo<'a>,
    #[serde(default)]
    pub features: Features<'a>,
    #[serde(default)]
    pub snapshot: HelloSnapshot<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HelloAuth<'a>>,
    #[serde(default)]
    pub policy: Policy,
}

/// The `type` of [`HelloOk`].
pub const HELLO_OK: &str = "hello-ok";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo<'a> {
    #[serde(default)]
    pub version: Cow<'a, str>,
    #[serde(default)]
    pub conn_id: Cow<'a, str>,
}

/// `hello-ok.features`: the method and event names served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features<'a> {
    #[serde(default)]
    pub methods: Cow<'a, [Cow<'a, str>]>,
    #[serde(default)]
    pub events: Cow<'a, [Cow<'a, str>]>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloSnapshot<'a> {
    #[serde(default)]
    pub presence: Cow<'a, [PresenceEntry<'a>]>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub state_version: StateVersion,
    #[serde(default)]
    pub uptime_ms: u64,
    /// OpenClaw sends it to `operator.admin` connections only; driftless reports its mode in
    /// `status` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateVersion {
    #[serde(default)]
    pub presence: u64,
    #[serde(default)]
    pub health: u64,
}

/// `hello-ok.auth`: how the client authenticated, and its device token when one goes back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAuth<'a> {
    /// `token`, `password`, `none` or `device-token` (OpenClaw 2026.9 sends it; older ones not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'static, str>>,
    #[serde(default)]
    pub role: Cow<'a, str>,
    #[serde(default)]
    pub scopes: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<Redacted<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<u64>,
}

/// `hello-ok.policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub max_payload: u64,
    #[serde(default)]
    pub max_buffered_bytes: u64,
    #[serde(default)]
    pub tick_interval_ms: u64,
}

/// The `health` result (and `hello-ok.snapshot.health`). OpenClaw's carries much more (plugins,
/// agents, sessions); what it has beyond these fields is ignored here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub ts: u64,
    #[serde(default)]
    pub duration_ms: u64,
    /// driftless only; OpenClaw's health has no uptime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    #[serde(default)]
    pub channels: Map<String, Value>,
    #[serde(default)]
    pub channel_order: Vec<String>,
    #[serde(default)]
    pub channel_labels: Map<String, Value>,
    #[serde(default)]
    pub agents: Vec<Value>,
}

/// One `system-presence` entry (and `hello-ok.snapshot.presence`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry<'a> {
    #[serde(default)]
    pub host: Cow<'a, str>,
    #[serde(default)]
    pub ip: Cow<'a, str>,
    #[serde(default)]
    pub version: Cow<'a, str>,
    #[serde(default)]
    pub platform: Cow<'a, str>,
    #[serde(default)]
    pub mode: Cow<'a, str>,
    #[serde(default)]
    pub reason: Cow<'a, str>,
    #[serde(default)]
    pub instance_id: Cow<'a, str>,
    #[serde(default)]
    pub text: Cow<'a, str>,
    #[serde(default)]
    pub ts: u64,
}

/// The `status` result. driftless's own shape; OpenClaw's `status` is a different summary, so
/// every field defaults (a client reading OpenClaw gets `None`s, not made-up values). The last
/// three fields are OpenClaw's, which driftless does not send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    #[serde(default)]
    pub auth: StatusAuth,
    #[serde(default)]
    pub secrets: Vec<SecretStatus>,
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// driftless with several replicas on one database: every live replica (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// OpenClaw: its runtime's version (it has no `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
    /// OpenClaw: its session store summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<StatusSessions>,
    /// OpenClaw: one line per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_summary: Vec<String>,
}

/// One live replica in `status.replicas`, as its last heartbeat recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The replica's instance id (`system-presence`'s `instanceId`).
    #[serde(default)]
    pub id: String,
    /// The address it listens on.
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub started_at_ms: u64,
    #[serde(default)]
    pub last_seen_ms: u64,
    /// Fingerprints of the shared tokens it accepts, the current one first.
    #[serde(default)]
    pub accepts: Vec<String>,
}

/// OpenClaw's `status.sessions` (only the count is read; paths and recent sessions are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSessions {
    #[serde(default)]
    pub count: Option<u64>,
}

/// `status.auth`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Fingerprint of the current shared secret (`null` in mode `none`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The previous secret while its grace window lasts (`null` otherwise).
    #[serde(default)]
    pub grace: Option<Grace>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grace {
    pub previous_fingerprint: String,
    pub ends_at_ms: u64,
}

/// One secret in `status.secrets`: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    pub name: String,
    pub kind: Cow<'static, str>,
    pub fingerprint: String,
    pub can_change_live: bool,
    /// Several replicas: this replica's source holds a shared secret the fleet already replaced
    /// (its mount is stale). The fleet's secrets are accepted, not this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub behind_fleet: bool,
}

/// The last reload, in `status.lastReload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    pub at_ms: u64,
    /// `file-change`, `sighup`, `periodic`, `rpc`, `auth-miss`.
    pub trigger: Cow<'static, str>,
    /// `changed`, `unchanged` or `failed`.
    pub outcome: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings changed in the config since start that only a restart applies (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_required_for: Vec<String>,
}

/// `params` of `secrets.reload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsReloadParams {
    /// End the rotation overlap now (`token rotate --no-grace`).
    #[serde(default)]
    pub end_grace: bool,
}

/// The `secrets.reload` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsReloadResult {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub warning_count: u64,
    /// Names of the secrets that changed (driftless only).
    #[serde(default)]
    pub changed: Vec<String>,
}

/// What a device said about itself when it last connected, shared by [`PairedDevice`] and
/// [`PendingRequest`] (flattened into them; `null` where unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMetadata {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub device_family: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_mode: Option<String>,
    #[serde(default)]
    pub remote_ip: Option<String>,
}

/// A paired device, as `device.pair.list` and `device.pair.approve` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairedDevice {
    pub device_id: String,
    /// base64url raw Ed25519 key.
    pub public_key: String,
    #[serde(flatten)]
    pub metadata: DeviceMetadata,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub approved_scopes: Vec<String>,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub approved_at_ms: u64,
    #[serde(default)]
    pub tokens: Vec<TokenSummary>,
}

impl PairedDevice {
    /// Approved roles whose token has not been revoked (a revoked role needs a new approval).
    pub fn effective_roles(&self) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|r| {
                !self
                    .tokens
                    .iter()
                    .any(|t| &t.role == *r && t.revoked_at_ms.is_some())
            })
            .map(String::as_str)
            .collect()
    }
}

/// A device token as listed: never the token, only its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSummary {
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// Recorded at most once a minute, so it may lag by up to that much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<u64>,
}

/// A device waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRequest {
    pub request_id: String,
    pub device_id: String,
    #[serde(default)]
    pub public_key: String,
    #[serde(flatten)]
    pub metadata: DeviceMetadata,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub silent: bool,
    #[serde(default)]
    pub is_repair: bool,
    /// `not-paired`, `role-upgrade`, `scope-upgrade` or `metadata-upgrade`.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub ts: u64,
}

/// The `device.pair.list` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePairList {
    #[serde(default)]
    pub pending: Vec<PendingRequest>,
    #[serde(default)]
    pub paired: Vec<PairedDevice>,
}

/// `params` of a method that takes none but wants an object (`device.pair.list`): `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyParams {}

/// `params` naming a device (`device.pair.remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdParams {
    pub device_id: String,
}

/// `params` naming one role's token of a device (`device.token.rotate`, `device.token.revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRoleParams {
    pub device_id: String,
    pub role: String,
    /// `device.token.rotate` only: the new token's scopes (default: the current token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// `params` naming a pairing request (`device.pair.approve`, `device.pair.reject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdParams {
    pub request_id: String,
}

/// The `device.pair.approve` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePairApproved {
    pub request_id: String,
    pub device: PairedDevice,
}

/// The `device.pair.reject` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePairRejected {
    pub request_id: String,
    pub device_id: String,
}

/// The `device.pair.remove` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePairRemoved {
    pub device_id: String,
    pub removed: bool,
}

/// The `device.token.rotate` result. `token` goes only to the device it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenRotated {
    pub device_id: String,
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub rotated_at_ms: u64,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Redacted<String>>,
}

/// The `device.token.revoke` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenRevoked {
    pub device_id: String,
    pub role: String,
    pub revoked_at_ms: u64,
}

/// The `connect.challenge` event payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: String,
    #[serde(default)]
    pub ts: u64,
}

/// The `tick` event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub ts: u64,
}

/// The `shutdown` event payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    pub reason: Cow<'static, str>,
}

/// The `device.pair.requested` event payload (OpenClaw's pending-request shape: the public key and
/// metadata, never a token; absent optional fields are left out rather than sent as null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairRequested {
    pub request_id: String,
    pub device_id: String,
    pub public_key: String,
    pub role: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub silent: bool,
    #[serde(default)]
    pub is_repair: bool,
    #[serde(default)]
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
}

/// The `device.pair.resolved` event payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairResolved {
    pub request_id: String,
    pub device_id: String,
    /// `approved` or `rejected`.
    pub decision: Cow<'static, str>,
    pub ts: u64,
}

/// `error.details`: one struct for every detail shape OpenClaw sends (each error fills the fields
/// its shape has; the rest stay out of the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_reason: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_retry_with_device_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_next_step: Option<Cow<'static, str>>,
    /// `PAIRING_REQUIRED`: the pending request to approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Device-proof and pairing failures: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_scope: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_scopes: Option<Vec<Cow<'static, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_min_protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_probe_protocol: Option<u32>,
}

impl ErrorDetails {
    /// Details holding only `code`.
    pub fn code(code: &'static str) -> ErrorDetails {
        ErrorDetails {
            code: Some(Cow::Borrowed(code)),
            ..ErrorDetails::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_carrying_payloads_hide_the_token_in_debug() {
        let auth = HelloAuth {
            device_token: Some(Redacted("canary-hello-auth".into())),
            ..HelloAuth::default()
        };
        assert!(!format!("{auth:?}").contains("canary-hello-auth"));
        let rotated = DeviceTokenRotated {
            device_id: "d".into(),
            role: "operator".into(),
            scopes: vec![],
            rotated_at_ms: 1,
            fingerprint: "sha256:x".into(),
            token: Some(Redacted("canary-rotated".into())),
        };
        assert!(!format!("{rotated:?}").contains("canary-rotated"));
    }

    #[test]
    fn openclaw_hello_ok_and_health_parse() {
        // Abridged from the captured 2026.9.6 hello-ok (shared design, appendix 3.3).
        let text = r#"{"type":"hello-ok","protocol":4,"server":{"version":"2026.9.6","buildId":"b","connId":"c"},"features":{"methods":["health"],"events":["tick"]},"snapshot":{"presence":[],"health":{"ok":true,"ts":1,"durationMs":10,"plugins":{}},"stateVersion":{"presence":1,"health":3},"uptimeMs":47599},"auth":{"method":"token","role":"operator","scopes":["operator.read"],"recoveryScope":"x"},"policy":{"maxPayload":26214400,"maxBufferedBytes":52428800,"tickIntervalMs":30000,"attachments":{}}}"#;
        let h: HelloOk = serde_json::from_str(text).unwrap();
        assert_eq!(h.server.version, "2026.9.6");
        assert_eq!(h.snapshot.health.uptime_ms, None);
        assert_eq!(h.auth.unwrap().scopes, vec!["operator.read"]);
        assert_eq!(h.policy.tick_interval_ms, 30_000);
        let s: Status = serde_json::from_str(r#"{"heartbeat":{}}"#).unwrap();
        assert_eq!((s.version, s.uptime_ms, s.auth.mode), (None, None, None));
    }

    #[test]
    fn openclaw_status_and_admin_snapshot_fields_parse() {
        // OpenClaw's status summary (shared design §3.4) and the admin-only `snapshot.authMode`.
        let text = r#"{"runtimeVersion":"2026.9.6","heartbeat":{"defaultAgentId":"main","agents":[]},"channelSummary":["telegram: linked"],"queuedSystemEvents":[],"sessions":{"paths":[],"count":3,"recent":[]}}"#;
        let s: Status = serde_json::from_str(text).unwrap();
        assert_eq!(s.runtime_version.as_deref(), Some("2026.9.6"));
        assert_eq!(s.sessions.and_then(|x| x.count), Some(3));
        assert_eq!(s.channel_summary, ["telegram: linked"]);
        assert_eq!(s.connections, None);
        let snap: HelloSnapshot =
            serde_json::from_str(r#"{"presence":[],"health":{},"uptimeMs":5,"authMode":"token"}"#)
                .unwrap();
        assert_eq!(snap.auth_mode.as_deref(), Some("token"));
        // driftless's own status keeps its JSON: none of OpenClaw's fields appear.
        let ours = serde_json::to_value(Status {
            connections: Some(2),
            ..Status::default()
        })
        .unwrap();
        assert_eq!(
            ours,
            serde_json::json!({"auth": {"fingerprint": null, "grace": null}, "secrets": [],
                "lastReload": null, "connections": 2})
        );
    }

    #[test]
    fn device_metadata_is_flattened_with_nulls_kept() {
        let d = PairedDevice {
            device_id: "d".into(),
            public_key: "pk".into(),
            metadata: DeviceMetadata {
                platform: Some("linux".into()),
                ..DeviceMetadata::default()
            },
            roles: vec!["operator".into()],
            approved_scopes: vec![],
            created_at_ms: 1,
            approved_at_ms: 2,
            tokens: vec![],
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"deviceId": "d", "publicKey": "pk", "displayName": null,
                "platform": "linux", "deviceFamily": null, "clientId": null, "clientMode": null,
                "roles": ["operator"], "approvedScopes": [], "remoteIp": null, "createdAtMs": 1,
                "approvedAtMs": 2, "tokens": []})
        );
        assert_eq!(serde_json::from_value::<PairedDevice>(v).unwrap(), d);
    }
}
