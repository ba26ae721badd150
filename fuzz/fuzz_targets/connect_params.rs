//! `connect` params as the gateway reads them (`parse_params`), the protocol negotiation, and the
//! rules that neither `Debug` nor a parse error shows a credential.
#![no_main]

use driftless_protocol::{ConnectAuth, ConnectParams, negotiate, parse_params};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let params = match parse_params::<ConnectParams>(Some(raw)) {
        Ok(p) => p,
        Err(message) => {
            // A credential sent with the wrong type or in the wrong place is not echoed. Only
            // values that cannot be words of the message itself are checked (8+ characters,
            // letters and digits with at least one digit).
            let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            for field in ["token", "password", "deviceToken", "bootstrapToken"] {
                let v = &value["auth"][field];
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                let distinctive = v.len() >= 8
                    && v.chars().all(|c| c.is_ascii_alphanumeric())
                    && v.chars().any(|c| c.is_ascii_digit());
                assert!(
                    !(distinctive && message.contains(&v)),
                    "{message:?} echoes auth.{field}"
                );
            }
            return;
        }
    };
    if let Some(v) = negotiate(params.min_protocol, params.max_protocol) {
        assert!(v >= params.min_protocol && v <= params.max_protocol);
    }
    if let Some(auth) = &params.auth {
        // Debug depends on which credentials are present, not on their values.
        let blank = |v: &Option<_>| v.as_ref().map(|_| "".into());
        let blanked = ConnectAuth {
            token: blank(&auth.token),
            password: blank(&auth.password),
            device_token: blank(&auth.device_token),
            bootstrap_token: blank(&auth.bootstrap_token),
        };
        assert_eq!(format!("{auth:?}"), format!("{blanked:?}"));
    }
    let _ = format!("{params:?}");
    let text = serde_json::to_string(&params).expect("params serialize");
    serde_json::from_str::<ConnectParams>(&text).expect("serialized params parse");
});
