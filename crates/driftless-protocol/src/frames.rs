//! Frame and payload types. Parsing is lenient (unknown fields are ignored) so newer clients still
//! connect; what we send follows the observed OpenClaw shapes.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::payloads::{Challenge, ErrorDetails, Redacted};

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
    /// RFC 6455 "Try Again Later": what the client needs is unavailable for now (OpenClaw closes
    /// with it while it starts).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const AUTH_CHANGED: u16 = 4001;
    pub const AUTH_CHANGED_REASON: &str = "gateway auth changed";
    pub const SERVICE_RESTART_REASON: &str = "service restart";
    pub const PREAUTH_TOO_LARGE_REASON: &str = "preauth payload too large";
    /// With [`POLICY`]: the client stopped reading (OpenClaw's words for its own such close).
    pub const SLOW_CONSUMER_REASON: &str = "slow consumer";
}

/// Top-level error codes.
pub mod codes {
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const NOT_PAIRED: &str = "NOT_PAIRED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
}

/// One frame, discriminated by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Frame {
    Req(RequestFrame),
    // Boxed: an error response is several times the size of the other frames.
    Res(Box<ResponseFrame>),
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
    pub details: Option<ErrorDetails>,
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

    pub fn with_details(mut self, details: ErrorDetails) -> ErrorShape {
        self.details = Some(details);
        self
    }

    /// `details.code`, if any.
    pub fn detail_code(&self) -> Option<&str> {
        self.details.as_ref()?.code.as_deref()
    }

    /// `protocol mismatch` for a client range that does not contain a served version.
    pub fn protocol_mismatch(client_min: u32, client_max: u32) -> ErrorShape {
        ErrorShape::new(codes::INVALID_REQUEST, "protocol mismatch").with_details(ErrorDetails {
            client_min_protocol: Some(client_min),
            client_max_protocol: Some(client_max),
            expected_protocol: Some(MAX_PROTOCOL),
            minimum_probe_protocol: Some(MIN_PROTOCOL),
            ..ErrorDetails::code("PROTOCOL_MISMATCH")
        })
    }

    /// `FORBIDDEN` for a method whose scope the connection lacks.
    pub fn missing_scope(scope: &'static str) -> ErrorShape {
        ErrorShape::new(codes::FORBIDDEN, format!("missing scope: {scope}")).with_details(
            ErrorDetails {
                missing_scope: Some(Cow::Borrowed(scope)),
                required_scopes: Some(vec![Cow::Borrowed(scope)]),
                ..ErrorDetails::code("MISSING_SCOPE")
            },
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
        let mut e = ErrorShape::new(codes::INVALID_REQUEST, message).with_details(ErrorDetails {
            auth_reason: Some(Cow::Borrowed(reason)),
            can_retry_with_device_token: Some(can_retry),
            recommended_next_step: Some(Cow::Borrowed(next)),
            ..ErrorDetails::code(code)
        });
        if let AuthFailure::RateLimited { retry_after_ms } = self {
            e.retryable = Some(true);
            e.retry_after_ms = Some(retry_after_ms);
        }
        e
    }
}

/// `params` of `connect`. Its strings borrow from the frame where they can: the gateway reads one
/// per connection and keeps only the role and scopes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams<'a> {
    pub min_protocol: u32,
    pub max_protocol: u32,
    #[serde(borrow)]
    pub client: ClientInfo<'a>,
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectAuth<'a>>,
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
pub struct ClientInfo<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
    #[serde(default, borrow)]
    pub platform: Cow<'a, str>,
    #[serde(default, borrow)]
    pub mode: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Cow<'a, str>>,
    /// Covered by the v3 device signature, so it must survive parsing.
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_family: Option<Cow<'a, str>>,
}

/// `connect.params.auth`. Holds credentials in transit: its `Debug` shows only which are present.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectAuth<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<Cow<'a, str>>,
    /// Covered by the device signature when no other token is sent.
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<Cow<'a, str>>,
}

/// A string borrowed from the text being parsed when it has no escapes. serde borrows a `Cow`
/// only when it is a field's whole type, so an optional one goes through this.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

/// `deserialize_with` for an `Option<Cow<str>>` field that should borrow as a bare `Cow` does.
pub(crate) fn borrowed_opt<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

impl fmt::Debug for ConnectAuth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectAuth")
            .field("token", &self.token.as_ref().map(Redacted))
            .field("password", &self.password.as_ref().map(Redacted))
            .field("device_token", &self.device_token.as_ref().map(Redacted))
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(Redacted),
            )
            .finish()
    }
}

/// The highest served version inside the client's `[min, max]`, if any.
pub fn negotiate(client_min: u32, client_max: u32) -> Option<u32> {
    let hi = client_max.min(MAX_PROTOCOL);
    (hi >= client_min.max(MIN_PROTOCOL)).then_some(hi)
}

/// The JSON text of a `connect.challenge` event.
pub fn challenge_text(nonce: &str, ts_ms: u64) -> String {
    event_text(
        "connect.challenge",
        &Challenge {
            nonce: nonce.to_owned(),
            ts: ts_ms,
        },
        None,
    )
}

/// A frame as received, parsed once: the discriminator, and for a request its id, method and
/// params left as raw JSON until the method says what they are.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
}

/// An incoming request: a frame of type `req` with an id and a method.
#[derive(Debug)]
pub struct IncomingRequest<'a> {
    pub id: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub params: Option<&'a RawValue>,
}

/// Why an incoming text is not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotARequest {
    /// Not JSON at all.
    NotJson,
    /// JSON, but not a request frame (a response, an event, a malformed frame).
    NotRequest,
}

/// Parses a frame from a peer, keeping only what a server needs of a request.
pub fn parse_request(text: &str) -> Result<IncomingRequest<'_>, NotARequest> {
    match serde_json::from_str::<Incoming<'_>>(text) {
        Ok(Incoming {
            kind,
            id: Some(id),
            method: Some(method),
            params,
        }) if kind == "req" => Ok(IncomingRequest { id, method, params }),
        Ok(_) => Err(NotARequest::NotRequest),
        // Only on this error path is the text looked at twice.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Err(NotARequest::NotRequest)
        }
        Err(_) => Err(NotARequest::NotJson),
    }
}

/// A session's first frame when it is a well-formed `connect` request, read in one pass (the
/// common case; `parse_request` then `parse_params` would read `params` twice).
#[derive(Deserialize)]
struct ConnectRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: ConnectParams<'a>,
}

/// The id and params of a well-formed `connect` request, or `None` for any other text: then
/// `parse_request` and `parse_params` say what is wrong with it, as for any request.
pub fn parse_connect_request(text: &str) -> Option<(Cow<'_, str>, ConnectParams<'_>)> {
    let r = serde_json::from_str::<ConnectRequest<'_>>(text).ok()?;
    (r.kind == "req" && r.method == "connect").then_some((r.id, r.params))
}

/// Parses `params` (absent = `null`) into `T`. The error names what is wrong but never echoes a
/// value (a credential sent in the wrong place must not come back or reach a log).
pub fn parse_params<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, String> {
    let text = params.map_or("null", RawValue::get);
    serde_json::from_str(text).map_err(|e| without_values(&e.to_string()))
}

/// serde quotes offending *values*, strings in double quotes (`invalid type: string "…"`) and
/// numbers, booleans and other values in backticks (`` invalid type: integer `123` ``); both are
/// replaced by `…`. Only a field name after `missing field` is kept: it comes from our schema.
pub fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[start] as char;
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let after = &after[1..];
        let end = after.find(quote).unwrap_or(after.len());
        if before.ends_with("missing field ") {
            out.push(quote);
            out.push_str(&after[..end]);
            out.push(quote);
        } else {
            out.push(quote);
            out.push('…');
            out.push(quote);
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// A response frame with a typed payload, serialized without an intermediate JSON tree.
#[derive(Serialize)]
struct OutResponse<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorShape>,
}

/// An event frame with a typed payload.
#[derive(Serialize)]
struct OutEvent<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    payload: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// The largest buffer a frame's serialization starts with (larger frames grow from there).
const MAX_START_CAPACITY: usize = 4096;

/// Serializes `frame` into a buffer as large as the largest frame `largest` has seen (up to
/// [`MAX_START_CAPACITY`]): frames of a kind are about one size, so most are written into one
/// allocation instead of one grown from 128 bytes through several copies (a hello-ok is ~1 KiB).
fn frame_text(frame: &impl Serialize, largest: &AtomicUsize) -> String {
    let mut out = Vec::with_capacity(largest.load(Ordering::Relaxed));
    serde_json::to_writer(&mut out, frame).expect("frames serialize");
    largest.fetch_max(out.len().min(MAX_START_CAPACITY), Ordering::Relaxed);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The JSON text of a successful response carrying `payload`.
pub fn ok_text<T: Serialize>(id: &str, payload: &T) -> String {
    static LARGEST: AtomicUsize = AtomicUsize::new(0);
    let frame = OutResponse {
        kind: "res",
        id,
        ok: true,
        payload: Some(payload),
        error: None,
    };
    frame_text(&frame, &LARGEST)
}

/// The JSON text of a failed response.
pub fn err_text(id: &str, error: &ErrorShape) -> String {
    static LARGEST: AtomicUsize = AtomicUsize::new(0);
    let frame = OutResponse::<()> {
        kind: "res",
        id,
        ok: false,
        payload: None,
        error: Some(error),
    };
    frame_text(&frame, &LARGEST)
}

/// The JSON text of an event frame carrying `payload`.
pub fn event_text<T: Serialize>(event: &str, payload: &T, seq: Option<u64>) -> String {
    static LARGEST: AtomicUsize = AtomicUsize::new(0);
    let frame = OutEvent {
        kind: "event",
        event,
        payload,
        seq,
    };
    frame_text(&frame, &LARGEST)
}

impl Frame {
    pub fn ok(id: &str, payload: Value) -> Frame {
        Frame::Res(Box::new(ResponseFrame {
            id: id.to_owned(),
            ok: true,
            payload: Some(payload),
            error: None,
        }))
    }

    pub fn err(id: &str, error: ErrorShape) -> Frame {
        Frame::Res(Box::new(ResponseFrame {
            id: id.to_owned(),
            ok: false,
            payload: None,
            error: Some(error),
        }))
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
        let params = req.params.unwrap();
        let p = ConnectParams::deserialize(&params).unwrap();
        assert_eq!((p.min_protocol, p.max_protocol), (4, 4));
        assert_eq!(p.scopes, vec!["operator.read"]);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("canary-frames-unit"), "{dbg}");
    }

    /// The handshake reads one request and one `connect` per connection: their strings borrow
    /// from the frame (an escaped one is still read right, into its own copy).
    #[test]
    fn a_request_and_its_connect_params_borrow_from_the_frame() {
        let text = r#"{"type":"req","id":"1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","version":"v\u0031","platform":"linux","mode":"cli","deviceFamily":"Linux"},"auth":{"token":"t0k"}}}"#;
        let req = parse_request(text).unwrap();
        assert!(matches!(req.id, Cow::Borrowed("1")));
        assert!(matches!(req.method, Cow::Borrowed("connect")));
        let p: ConnectParams<'_> = parse_params(req.params).unwrap();
        assert!(matches!(p.client.id, Cow::Borrowed("cli")));
        assert!(matches!(
            p.client.device_family,
            Some(Cow::Borrowed("Linux"))
        ));
        assert!(matches!(
            p.auth.as_ref().and_then(|a| a.token.as_ref()),
            Some(Cow::Borrowed("t0k"))
        ));
        assert!(matches!(&p.client.version, Cow::Owned(v) if v == "v1"));
    }

    /// The one-pass read of a `connect` agrees with the two-step one, and leaves every other
    /// text (another method, a malformed frame or params) to it.
    #[test]
    fn a_connect_request_reads_in_one_pass_as_in_two() {
        let text = r#"{"type":"req","id":"1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","mode":"cli"},"auth":{"token":"t0k"},"scopes":["operator.read"]}}"#;
        let (id, p) = parse_connect_request(text).unwrap();
        let req = parse_request(text).unwrap();
        let two: ConnectParams<'_> = parse_params(req.params).unwrap();
        assert!(matches!(id, Cow::Borrowed("1")));
        assert!(matches!(p.client.id, Cow::Borrowed("cli")));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&two).unwrap()
        );
        for other in [
            r#"{"type":"req","id":"1","method":"health","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"c"}}}"#,
            r#"{"type":"res","id":"1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"c"}}}"#,
            r#"{"type":"req","id":"1","method":"connect","params":{"minProtocol":4}}"#,
            r#"{"type":"req","id":"1","method":"connect"}"#,
            r#"{"type":"req","id":1,"method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"c"}}}"#,
            "{not json",
        ] {
            assert!(parse_connect_request(other).is_none(), "{other}");
        }
    }

    #[test]
    fn unauthorized_shapes() {
        let e = AuthFailure::TokenMismatch.error(false);
        assert_eq!(e.code, "INVALID_REQUEST");
        assert_eq!(e.detail_code(), Some("AUTH_TOKEN_MISMATCH"));
        let d = serde_json::to_value(e.details.unwrap()).unwrap();
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

    #[test]
    fn quoted_values_are_dropped_from_param_errors() {
        let e = serde_json::from_str::<ConnectParams>(
            r#"{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli"},"auth":"secret-in-wrong-place"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("secret-in-wrong-place"),
            "premise: serde echoes values: {e}"
        );
        let clean = without_values(&e);
        assert!(!clean.contains("secret-in-wrong-place"), "{clean}");
        assert!(clean.starts_with("invalid type: string \"…\""), "{clean}");
    }

    #[test]
    fn numeric_values_are_dropped_from_param_errors_and_field_names_kept() {
        let raw = RawValue::from_string(
            r#"{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli"},"auth":{"password":987654321}}"#
                .into(),
        )
        .unwrap();
        let e = parse_params::<ConnectParams>(Some(&raw)).unwrap_err();
        assert!(!e.contains("987654321"), "{e}");
        assert!(e.starts_with("invalid type: integer `…`"), "{e}");
        let e = parse_params::<ConnectParams>(None).unwrap_err();
        assert!(e.contains("null"), "{e}");
        let raw = RawValue::from_string(r#"{"minProtocol":4}"#.into()).unwrap();
        let e = parse_params::<ConnectParams>(Some(&raw)).unwrap_err();
        assert!(e.starts_with("missing field `maxProtocol`"), "{e}");
    }

    #[test]
    fn requests_parse_once_and_other_frames_are_told_apart() {
        let r = parse_request(r#"{"type":"req","id":"1","method":"health"}"#).unwrap();
        assert_eq!(
            (&*r.id, &*r.method, r.params.is_none()),
            ("1", "health", true)
        );
        let r =
            parse_request(r#"{"type":"req","id":"2","method":"m","params":{"a":[1]}}"#).unwrap();
        assert_eq!(r.params.unwrap().get(), r#"{"a":[1]}"#);
        assert_eq!(
            parse_request(r#"{"type":"res","id":"1","ok":true}"#).unwrap_err(),
            NotARequest::NotRequest
        );
        assert_eq!(
            parse_request(r#"{"type":"req","id":1,"method":"x"}"#).unwrap_err(),
            NotARequest::NotRequest
        );
        assert_eq!(
            parse_request("{not json").unwrap_err(),
            NotARequest::NotJson
        );
    }

    #[test]
    fn typed_frames_match_the_frame_types() {
        let text = ok_text("7", &serde_json::json!({"a": 1}));
        let Frame::Res(r) = serde_json::from_str::<Frame>(&text).unwrap() else {
            panic!("{text}")
        };
        assert!(r.ok && r.id == "7" && r.payload.unwrap()["a"] == 1);
        let text = err_text("8", &ErrorShape::missing_scope(crate::scopes::READ));
        let Frame::Res(r) = serde_json::from_str::<Frame>(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(r.error.unwrap().detail_code(), Some("MISSING_SCOPE"));
        let text = challenge_text("n", 5);
        assert_eq!(
            text,
            r#"{"type":"event","event":"connect.challenge","payload":{"nonce":"n","ts":5}}"#
        );
    }
}
