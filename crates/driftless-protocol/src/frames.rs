//! Frame and payload types. Parsing is lenient (unknown fields are ignored) so newer clients still
//! connect; what we send follows the observed OpenClaw shapes.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lowest protocol version served (nodes and probes of current OpenClaw still speak 3).
pub const MIN_PROTOCOL: u32 = 3;
/// Highest protocol version served (the current OpenClaw CLI sends 4..4).
pub const MAX_PROTOCOL: u32 = 4;
/// Post-handshake inbound frame cap.
pub const MAX_PAYLOAD_BYTES: usize = 25 * 1024 * 1024;
/// Per-connection send buffer cap advertised to clients.
pub const MAX_BUFFERED_BYTES: usize = 50 * 1024 * 1024;
/// Pre-handshake inbound frame cap.
pub const MAX_PREAUTH_PAYLOAD_BYTES: usize = 64 * 1024;
/// Interval of `tick` events.
pub const TICK_INTERVAL_MS: u64 = 30_000;
/// Time a client has to complete `connect` after the upgrade.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 15_000;

/// WebSocket close codes that are part of the contract.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_MISMATCH: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const AUTH_CHANGED: u16 = 4001;
    pub const AUTH_CHANGED_REASON: &str = "gateway auth changed";
    pub const SERVICE_RESTART_REASON: &str = "service restart";
    pub const PREAUTH_TOO_LARGE_REASON: &str = "preauth payload too large";
}

/// Top-level error codes.
pub mod codes {
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const NOT_PAIRED: &str = "NOT_PAIRED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
}

/// Scopes this layer knows about.
pub mod scopes {
    pub const READ: &str = "operator.read";
    pub const WRITE: &str = "operator.write";
    pub const ADMIN: &str = "operator.admin";
}

/// One frame, discriminated by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Frame {
    Req(RequestFrame),
    Res(ResponseFrame),
    Event(EventFrame),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorShape>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventFrame {
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// The `error` of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorShape {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorShape {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorShape {
        ErrorShape {
            code: code.to_owned(),
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ErrorShape {
        self.details = Some(details);
        self
    }

    /// `details.code`, if any.
    pub fn detail_code(&self) -> Option<&str> {
        self.details.as_ref()?.get("code")?.as_str()
    }

    /// `protocol mismatch` for a client range that does not contain a served version.
    pub fn protocol_mismatch(client_min: u32, client_max: u32) -> ErrorShape {
        ErrorShape::new(codes::INVALID_REQUEST, "protocol mismatch").with_details(
            serde_json::json!({
                "code": "PROTOCOL_MISMATCH",
                "clientMinProtocol": client_min,
                "clientMaxProtocol": client_max,
                "expectedProtocol": MAX_PROTOCOL,
                "minimumProbeProtocol": MIN_PROTOCOL,
            }),
        )
    }

    /// `FORBIDDEN` for a method whose scope the connection lacks.
    pub fn missing_scope(scope: &str) -> ErrorShape {
        ErrorShape::new(codes::FORBIDDEN, format!("missing scope: {scope}")).with_details(
            serde_json::json!({"code": "MISSING_SCOPE", "missingScope": scope, "requiredScopes": [scope]}),
        )
    }
}

/// Why a shared-secret check failed (`details.authReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    TokenMissing,
    TokenMismatch,
    PasswordMissing,
    PasswordMismatch,
    RateLimited { retry_after_ms: u64 },
}

impl AuthFailure {
    /// The documented `unauthorized` error. `has_device`: the connect carried a device block.
    pub fn error(self, has_device: bool) -> ErrorShape {
        let token_hint = if has_device {
            "provide gateway auth token"
        } else {
            "use this gateway's gateway.auth.token or pair the device"
        };
        let (reason, code, next, message) = match self {
            AuthFailure::TokenMissing => (
                "token_missing",
                "AUTH_TOKEN_MISSING",
                "update_auth_configuration",
                format!("unauthorized: gateway token missing ({token_hint})"),
            ),
            AuthFailure::TokenMismatch => (
                "token_mismatch",
                "AUTH_TOKEN_MISMATCH",
                if has_device {
                    "retry_with_device_token"
                } else {
                    "update_auth_credentials"
                },
                format!("unauthorized: gateway token mismatch ({token_hint})"),
            ),
            AuthFailure::PasswordMissing => (
                "password_missing",
                "AUTH_PASSWORD_MISSING",
                "update_auth_configuration",
                "unauthorized: gateway password missing (provide gateway auth password)".into(),
            ),
            AuthFailure::PasswordMismatch => (
                "password_mismatch",
                "AUTH_PASSWORD_MISMATCH",
                "update_auth_credentials",
                "unauthorized: gateway password mismatch (provide gateway auth password)".into(),
            ),
            AuthFailure::RateLimited { .. } => (
                "rate_limited",
                "AUTH_RATE_LIMITED",
                "wait_then_retry",
                "unauthorized: too many failed authentication attempts (retry later)".into(),
            ),
        };
        let can_retry = matches!(self, AuthFailure::TokenMismatch) && has_device;
        let mut e =
            ErrorShape::new(codes::INVALID_REQUEST, message).with_details(serde_json::json!({
                "code": code,
                "authReason": reason,
                "canRetryWithDeviceToken": can_retry,
                "recommendedNextStep": next,
            }));
        if let AuthFailure::RateLimited { retry_after_ms } = self {
            e.retryable = Some(true);
            e.retry_after_ms = Some(retry_after_ms);
        }
        e
    }
}

/// `params` of `connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams {
    pub min_protocol: u32,
    pub max_protocol: u32,
    pub client: ClientInfo,
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectAuth>,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The signed device identity; verified by the device layer, opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Value>,
}

fn default_role() -> String {
    "operator".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Covered by the v3 device signature, so it must survive parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
}

/// `connect.params.auth`. Holds credentials in transit: its `Debug` shows only which are present.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    /// Covered by the device signature when no other token is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
}

impl fmt::Debug for ConnectAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("device_token", &self.device_token.as_ref().map(|_| "<set>"))
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// The highest served version inside the client's `[min, max]`, if any.
pub fn negotiate(client_min: u32, client_max: u32) -> Option<u32> {
    let hi = client_max.min(MAX_PROTOCOL);
    (hi >= client_min.max(MIN_PROTOCOL)).then_some(hi)
}

/// Builds a `connect.challenge` event.
pub fn challenge(nonce: &str, ts_ms: u64) -> Frame {
    Frame::Event(EventFrame {
        event: "connect.challenge".into(),
        payload: Some(serde_json::json!({"nonce": nonce, "ts": ts_ms})),
        seq: None,
    })
}

impl Frame {
    pub fn ok(id: &str, payload: Value) -> Frame {
        Frame::Res(ResponseFrame {
            id: id.to_owned(),
            ok: true,
            payload: Some(payload),
            error: None,
        })
    }

    pub fn err(id: &str, error: ErrorShape) -> Frame {
        Frame::Res(ResponseFrame {
            id: id.to_owned(),
            ok: false,
            payload: None,
            error: Some(error),
        })
    }

    pub fn event(event: &str, payload: Value, seq: Option<u64>) -> Frame {
        Frame::Event(EventFrame {
            event: event.to_owned(),
            payload: Some(payload),
            seq,
        })
    }

    /// The JSON text of this frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_highest_served_version_in_range() {
        assert_eq!(negotiate(4, 4), Some(4));
        assert_eq!(negotiate(3, 3), Some(3));
        assert_eq!(negotiate(3, 4), Some(4));
        assert_eq!(negotiate(3, 9), Some(4));
        assert_eq!(negotiate(1, 2), None);
        assert_eq!(negotiate(5, 6), None);
        assert_eq!(negotiate(4, 3), None);
    }

    #[test]
    fn real_cli_connect_parses_and_auth_debug_hides_values() {
        let text = r#"{"type":"req","id":"1:x","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","version":"2026.9.6","platform":"linux","deviceFamily":"Linux","mode":"cli","instanceId":"i"},"caps":[],"auth":{"token":"canary-frames-unit"},"role":"operator","scopes":["operator.read"]}}"#;
        let Frame::Req(req) = serde_json::from_str::<Frame>(text).unwrap() else {
            panic!("not a request")
        };
        let p: ConnectParams = serde_json::from_value(req.params.unwrap()).unwrap();
        assert_eq!((p.min_protocol, p.max_protocol), (4, 4));
        assert_eq!(p.scopes, vec!["operator.read"]);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("canary-frames-unit"), "{dbg}");
    }

    #[test]
    fn unauthorized_shapes() {
        let e = AuthFailure::TokenMismatch.error(false);
        assert_eq!(e.code, "INVALID_REQUEST");
        assert_eq!(e.detail_code(), Some("AUTH_TOKEN_MISMATCH"));
        let d = e.details.unwrap();
        assert_eq!(d["recommendedNextStep"], "update_auth_credentials");
        assert_eq!(d["canRetryWithDeviceToken"], false);
        let r = AuthFailure::RateLimited {
            retry_after_ms: 5000,
        }
        .error(false);
        assert_eq!(r.retry_after_ms, Some(5000));
        let text = Frame::err("1", r).to_text();
        assert!(text.contains("\"retryAfterMs\":5000"), "{text}");
    }
}
