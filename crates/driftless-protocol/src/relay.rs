//! The frames driftless writes and reads when it relays a session to an upstream OpenClaw gateway
//! (front mode): the upstream `connect`, the upstream's response, and the client's `hello-ok`
//! built from the upstream's with driftless's own `auth` block.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{ErrorShape, HelloAuth};

/// The id of the `connect` request driftless sends upstream (the client's own ids are relayed
/// unchanged, so this one only has to differ from nothing: it is the first frame upstream).
pub const UPSTREAM_CONNECT_ID: &str = "driftless-relay-connect";

/// The upstream `connect` frame: the client's own `connect` params (client info, caps, protocol
/// range, locale, ...) with its credentials and device proof removed, `auth.token` set to the
/// upstream credential, and `scopes` set to what driftless granted. The text holds the upstream
/// credential: send it, never log it.
pub fn upstream_connect_text(
    client_params: Option<&RawValue>,
    scopes: &[String],
    upstream_token: &str,
) -> Result<String, String> {
    let mut params: Map<String, Value> = match client_params {
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| crate::without_values(&e.to_string()))?
        }
        None => Map::new(),
    };
    // The device proof signs driftless's challenge, not the upstream's: it cannot be forwarded.
    params.remove("device");
    let mut auth = Map::new();
    auth.insert("token".into(), Value::String(upstream_token.to_owned()));
    params.insert("auth".into(), Value::Object(auth));
    params.insert(
        "scopes".into(),
        Value::Array(scopes.iter().cloned().map(Value::String).collect()),
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
    #[serde(rename = "type")]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
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
/// its `auth` block (which describes driftless's upstream session, with its recovery material)
/// replaced by driftless's own.
pub fn relayed_hello_payload(
    upstream: &RawValue,
    auth: &HelloAuth<'_>,
) -> Result<Box<RawValue>, String> {
    let mut payload: Map<String, Value> =
        serde_json::from_str(upstream.get()).map_err(|e| crate::without_values(&e.to_string()))?;
    let auth = serde_json::to_value(auth).map_err(|e| e.to_string())?;
    payload.insert("auth".into(), auth);
    serde_json::value::to_raw_value(&payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_connect_drops_the_clients_credentials_and_device() {
        let raw = RawValue::from_string(
            r#"{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","mode":"cli"},"role":"operator",
               "scopes":["operator.admin"],"auth":{"token":"client-canary","password":"client-canary"},
               "device":{"id":"d","publicKey":"k","signature":"s","signedAt":1,"nonce":"n"},"caps":["x"]}"#
                .into(),
        )
        .unwrap();
        let text = upstream_connect_text(Some(&raw), &["operator.read".into()], "upstream-canary")
            .unwrap();
        assert!(!text.contains("client-canary"), "{text}");
        assert!(!text.contains("signature"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], UPSTREAM_CONNECT_ID);
        assert_eq!(
            v["params"]["auth"],
            serde_json::json!({"token": "upstream-canary"})
        );
        assert_eq!(v["params"]["scopes"], serde_json::json!(["operator.read"]));
        assert_eq!(v["params"]["client"]["id"], "cli");
        assert_eq!(v["params"]["caps"], serde_json::json!(["x"]));
    }

    #[test]
    fn hello_keeps_the_upstreams_features_and_takes_our_auth() {
        let up = RawValue::from_string(
            r#"{"type":"hello-ok","protocol":4,"features":{"methods":["chat.send"],"events":["chat"]},
               "auth":{"method":"token","role":"operator","scopes":["operator.admin"],"recoveryScope":"secret-ish"}}"#
                .into(),
        )
        .unwrap();
        let auth = HelloAuth {
            method: Some("token".into()),
            role: "operator".into(),
            scopes: vec!["operator.read".to_owned()].into(),
            device_token: None,
            issued_at_ms: None,
        };
        let out = relayed_hello_payload(&up, &auth).unwrap();
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
}
