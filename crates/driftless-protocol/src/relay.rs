//! The frames driftless writes and reads when it relays a session to an upstream OpenClaw gateway
//! (front mode): the upstream `connect` (with driftless's own device proof), the upstream's
//! challenge and response, and the client's `hello-ok` built from the upstream's with driftless's
//! own `auth` block.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::device_auth::{DeviceProof, SignedFields};
use crate::{ErrorShape, HelloAuth, scopes};

/// The id of the `connect` request driftless sends upstream (the client's own ids are relayed
/// unchanged, so this one only has to differ from nothing: it is the first frame upstream).
pub const UPSTREAM_CONNECT_ID: &str = "driftless-relay-connect";

/// The `client.platform` every upstream session claims. OpenClaw pins a paired device's platform
/// and asks for a (never silent) `metadata-upgrade` pairing when a later session claims another,
/// so driftless's one upstream device always claims the same one, whatever its clients run on.
pub const RELAY_PLATFORM: &str = "driftless";

/// What driftless's upstream device is paired for: every operator scope driftless may grant, so
/// each session's own (narrower) scopes are always within the pairing and never ask for an upgrade.
pub const PAIRING_SCOPES: [&str; 9] = [
    scopes::ADMIN,
    scopes::READ,
    scopes::WRITE,
    scopes::PAIRING,
    scopes::APPROVALS,
    scopes::QUESTIONS,
    scopes::TALK,
    scopes::SESSIONS_READ,
    scopes::SESSIONS_WRITE,
];

/// The credential an upstream session presents beside driftless's device proof.
#[derive(Clone, Copy)]
pub enum UpstreamAuth<'a> {
    /// The upstream's shared token (`auth.token`): pairing driftless's device.
    SharedToken(&'a str),
    /// The device token the upstream issued to driftless's device (`auth.deviceToken`).
    DeviceToken(&'a str),
}

/// The client params of the session that pairs driftless's device (its own, not a client's).
pub fn pairing_client_params() -> Box<RawValue> {
    let params = serde_json::json!({
        "minProtocol": crate::MIN_PROTOCOL,
        "maxProtocol": crate::MAX_PROTOCOL,
        "client": {
            "id": "cli",
            "displayName": "driftless relay",
            "version": env!("CARGO_PKG_VERSION"),
            "platform": RELAY_PLATFORM,
            "mode": "cli",
        },
        "role": "operator",
    });
    serde_json::value::to_raw_value(&params).expect("JSON serializes")
}

/// The nonce of the upstream's `connect.challenge`, if `text` is it.
pub fn challenge_nonce(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Challenge {
        #[serde(rename = "type")]
        kind: String,
        event: Option<String>,
        payload: Option<ChallengePayload>,
    }
    #[derive(Deserialize)]
    struct ChallengePayload {
        nonce: String,
    }
    serde_json::from_str::<Challenge>(text)
        .ok()
        .filter(|c| c.kind == "event" && c.event.as_deref() == Some("connect.challenge"))
        .and_then(|c| c.payload)
        .map(|p| p.nonce)
        .filter(|n| !n.trim().is_empty())
}

/// The upstream `connect` frame: the client's own `connect` params (client info, caps, protocol
/// range, locale, ...) with its credentials and device proof removed, `client.platform` set to
/// [`RELAY_PLATFORM`], `scopes` set to what driftless granted, `auth` set to `auth` and a device
/// proof made by `prove` over the upstream's challenge `nonce`. The text holds the upstream
/// credential: send it, never log it.
pub fn upstream_connect_text(
    client_params: Option<&RawValue>,
    scopes: &[String],
    auth: UpstreamAuth<'_>,
    nonce: &str,
    signed_at_ms: u64,
    prove: impl FnOnce(&SignedFields<'_>) -> DeviceProof,
) -> Result<String, String> {
    let mut params: Map<String, Value> = match client_params {
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| crate::without_values(&e.to_string()))?
        }
        None => Map::new(),
    };
    // The client's device proof signs driftless's challenge, not the upstream's: it cannot be
    // forwarded; driftless's own device signs the upstream's.
    params.remove("device");
    let client = params
        .entry("client")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(client) = client else {
        return Err("client is not an object".into());
    };
    client.insert("platform".into(), Value::String(RELAY_PLATFORM.into()));
    let field = |name: &str| client.get(name).and_then(Value::as_str).map(str::to_owned);
    let (client_id, client_mode, device_family) =
        (field("id"), field("mode"), field("deviceFamily"));
    let (key, token) = match auth {
        UpstreamAuth::SharedToken(t) => ("token", t),
        UpstreamAuth::DeviceToken(t) => ("deviceToken", t),
    };
    let proof = prove(&SignedFields {
        client_id: client_id.as_deref().unwrap_or(""),
        client_mode: client_mode.as_deref().unwrap_or(""),
        role: "operator",
        scopes,
        signed_at_ms,
        token: Some(token),
        nonce,
        platform: Some(RELAY_PLATFORM),
        device_family: device_family.as_deref(),
    });
    let mut auth = Map::new();
    auth.insert(key.into(), Value::String(token.to_owned()));
    params.insert("auth".into(), Value::Object(auth));
    params.insert("role".into(), Value::String("operator".into()));
    params.insert(
        "scopes".into(),
        Value::Array(scopes.iter().cloned().map(Value::String).collect()),
    );
    params.insert(
        "device".into(),
        serde_json::to_value(&proof).map_err(|e| e.to_string())?,
    );
    let mut frame = Map::new();
    frame.insert("type".into(), Value::String("req".into()));
    frame.insert("id".into(), Value::String(UPSTREAM_CONNECT_ID.into()));
    frame.insert("method".into(), Value::String("connect".into()));
    frame.insert("params".into(), Value::Object(params));
    Ok(Value::Object(frame).to_string())
}

/// A response frame from the upstream, its payload left raw.
#[derive(Debug, Deserialize)]
pub struct IncomingResponse<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "crate::frames::borrowed_opt")]
    pub id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub ok: bool,
    #[serde(default, borrow)]
    pub payload: Option<&'a RawValue>,
    #[serde(default)]
    pub error: Option<ErrorShape>,
}

/// The upstream's answer to [`UPSTREAM_CONNECT_ID`], if `text` is it (`None`: another frame, such
/// as the challenge).
pub fn parse_upstream_hello(text: &str) -> Option<IncomingResponse<'_>> {
    serde_json::from_str::<IncomingResponse<'_>>(text)
        .ok()
        .filter(|r| r.kind == "res" && r.id.as_deref() == Some(UPSTREAM_CONNECT_ID))
}

/// The client's `hello-ok` payload: the upstream's (features, snapshot, policy, server, ...) with
/// its `auth` block (which describes driftless's upstream session, with its device token and
/// recovery material) replaced by driftless's own; and the device token the upstream's block
/// carried, which is driftless's alone and never reaches a client.
pub fn relayed_hello_payload(
    upstream: &RawValue,
    auth: &HelloAuth<'_>,
) -> Result<(Box<RawValue>, Option<String>), String> {
    let mut payload: Map<String, Value> =
        serde_json::from_str(upstream.get()).map_err(|e| crate::without_values(&e.to_string()))?;
    let device_token = take_device_token(&mut payload);
    let auth = serde_json::to_value(auth).map_err(|e| e.to_string())?;
    payload.insert("auth".into(), auth);
    let payload = serde_json::value::to_raw_value(&payload).map_err(|e| e.to_string())?;
    Ok((payload, device_token))
}

/// The device token in the upstream's `hello-ok` payload (`auth.deviceToken`), if it issued one.
pub fn upstream_device_token(upstream: &RawValue) -> Option<String> {
    let mut payload: Map<String, Value> = serde_json::from_str(upstream.get()).ok()?;
    take_device_token(&mut payload)
}

fn take_device_token(payload: &mut Map<String, Value>) -> Option<String> {
    match payload.get_mut("auth")?.get_mut("deviceToken")?.take() {
        Value::String(t) if !t.trim().is_empty() => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn upstream_connect_drops_the_clients_credentials_and_device() {
        let raw = RawValue::from_string(
            r#"{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","mode":"cli","platform":"darwin","deviceFamily":"Mac"},"role":"operator",
               "scopes":["operator.admin"],"auth":{"token":"client-canary","password":"client-canary"},
               "device":{"id":"d","publicKey":"k","signature":"s","signedAt":1,"nonce":"n"},"caps":["x"]}"#
                .into(),
        )
        .unwrap();
        let scopes = ["operator.read".to_owned()];
        let key = key();
        let text = upstream_connect_text(
            Some(&raw),
            &scopes,
            UpstreamAuth::SharedToken("upstream-canary"),
            "upstream-nonce",
            1_700_000_000_000,
            |f| crate::device_auth::prove(&key, f),
        )
        .unwrap();
        assert!(!text.contains("client-canary"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], UPSTREAM_CONNECT_ID);
        assert_eq!(
            v["params"]["auth"],
            serde_json::json!({"token": "upstream-canary"})
        );
        assert_eq!(v["params"]["scopes"], serde_json::json!(["operator.read"]));
        assert_eq!(v["params"]["client"]["id"], "cli");
        assert_eq!(v["params"]["client"]["platform"], RELAY_PLATFORM);
        assert_eq!(v["params"]["caps"], serde_json::json!(["x"]));
        // The device block is driftless's own, signed over the upstream's nonce and credential,
        // as the upstream checks it; nothing of the client's proof is left.
        let proof: DeviceProof = serde_json::from_value(v["params"]["device"].clone()).unwrap();
        assert_ne!(proof.id, "d");
        assert!(!text.contains(r#""signature":"s""#), "{text}");
        assert_eq!(proof.nonce, "upstream-nonce");
        let fields = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            signed_at_ms: proof.signed_at,
            token: Some("upstream-canary"),
            nonce: "upstream-nonce",
            platform: Some(RELAY_PLATFORM),
            device_family: Some("Mac"),
        };
        let verified =
            crate::device_auth::verify(&proof, &fields, "upstream-nonce", proof.signed_at).unwrap();
        assert_eq!(
            verified.device_id,
            crate::device_auth::device_id_of(key.verifying_key().as_bytes())
        );
    }

    #[test]
    fn a_device_token_session_signs_over_the_device_token() {
        let scopes = ["operator.read".to_owned()];
        let key = key();
        let text = upstream_connect_text(
            Some(&pairing_client_params()),
            &scopes,
            UpstreamAuth::DeviceToken("device-canary"),
            "n-2",
            5,
            |f| crate::device_auth::prove(&key, f),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["params"]["auth"],
            serde_json::json!({"deviceToken": "device-canary"})
        );
        let proof: DeviceProof = serde_json::from_value(v["params"]["device"].clone()).unwrap();
        let fields = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            signed_at_ms: 5,
            token: Some("device-canary"),
            nonce: "n-2",
            platform: Some(RELAY_PLATFORM),
            device_family: None,
        };
        assert!(crate::device_auth::verify(&proof, &fields, "n-2", 5).is_ok());
    }

    #[test]
    fn the_challenge_nonce_is_read_from_the_challenge_only() {
        assert_eq!(
            challenge_nonce(
                r#"{"type":"event","event":"connect.challenge","payload":{"nonce":"abc","ts":1}}"#
            )
            .as_deref(),
            Some("abc")
        );
        assert_eq!(
            challenge_nonce(r#"{"type":"event","event":"tick","payload":{"nonce":"abc"}}"#),
            None
        );
        assert_eq!(
            challenge_nonce(
                r#"{"type":"event","event":"connect.challenge","payload":{"nonce":" "}}"#
            ),
            None
        );
        assert_eq!(challenge_nonce("not json"), None);
    }

    /// driftless's auth block for a read-only shared-token client.
    fn read_only_auth() -> HelloAuth<'static> {
        HelloAuth {
            method: Some("token".into()),
            role: "operator".into(),
            scopes: vec!["operator.read".to_owned()].into(),
            device_token: None,
            issued_at_ms: None,
        }
    }

    #[test]
    fn hello_keeps_the_upstreams_features_and_takes_our_auth() {
        let up = RawValue::from_string(
            r#"{"type":"hello-ok","protocol":4,"features":{"methods":["chat.send"],"events":["chat"]},
               "auth":{"method":"token","role":"operator","scopes":["operator.admin"],"recoveryScope":"secret-ish"}}"#
                .into(),
        )
        .unwrap();
        let auth = read_only_auth();
        let (out, device_token) = relayed_hello_payload(&up, &auth).unwrap();
        assert_eq!(device_token, None);
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["features"]["methods"], serde_json::json!(["chat.send"]));
        assert_eq!(v["auth"]["scopes"], serde_json::json!(["operator.read"]));
        assert!(!out.get().contains("recoveryScope"));
        let res = format!(
            r#"{{"type":"res","id":"{UPSTREAM_CONNECT_ID}","ok":true,"payload":{}}}"#,
            up.get()
        );
        assert!(parse_upstream_hello(&res).unwrap().ok);
        assert!(parse_upstream_hello(r#"{"type":"event","event":"connect.challenge"}"#).is_none());
    }

    #[test]
    fn the_upstreams_device_token_is_taken_out_of_the_clients_hello() {
        let up = RawValue::from_string(
            r#"{"type":"hello-ok","auth":{"deviceToken":"device-canary","role":"operator","scopes":["operator.admin"]}}"#
                .into(),
        )
        .unwrap();
        assert_eq!(upstream_device_token(&up).as_deref(), Some("device-canary"));
        let auth = read_only_auth();
        let (out, device_token) = relayed_hello_payload(&up, &auth).unwrap();
        assert_eq!(device_token.as_deref(), Some("device-canary"));
        assert!(!out.get().contains("device-canary"), "{}", out.get());
    }
}
