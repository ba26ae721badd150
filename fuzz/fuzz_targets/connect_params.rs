//! `connect` params as the gateway reads them (a JSON value, then `ConnectParams`), the protocol
//! negotiation, and the rule that `Debug` never shows a credential.
#![no_main]

use driftless_protocol::{ConnectAuth, ConnectParams, negotiate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(params) = serde_json::from_value::<ConnectParams>(value) else {
        return;
    };
    if let Some(v) = negotiate(params.min_protocol, params.max_protocol) {
        assert!(v >= params.min_protocol && v <= params.max_protocol);
    }
    if let Some(auth) = &params.auth {
        // Debug depends on which credentials are present, not on their values.
        let blank = |v: &Option<String>| v.as_ref().map(|_| String::new());
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
