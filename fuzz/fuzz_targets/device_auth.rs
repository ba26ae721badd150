//! The signed `device` block of `connect`, checked the way the gateway checks it (`conn.rs`
//! `verify_device`), and the PEM keys of a device identity file.
#![no_main]

use driftless_protocol::ConnectParams;
use driftless_protocol::device_auth::{self, DeviceProof, SignedFields};
use libfuzzer_sys::fuzz_target;

/// The challenge nonce and clock of the seeds (the Control UI connect in the protocol appendix).
const NONCE: &str = "ec8f6e9f-0f78-48c7-b433-d147dc8fa8c0";
const NOW_MS: u64 = 1_796_142_594_607;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("BEGIN") {
        let _ = device_auth::parse_private_key_pem(text);
        let _ = device_auth::public_key_bytes(text);
    }
    let Ok(params) = serde_json::from_str::<ConnectParams>(text) else {
        return;
    };
    let Some(raw) = params.device.clone() else {
        return;
    };
    let Ok(proof) = serde_json::from_value::<DeviceProof>(raw) else {
        return;
    };
    let auth = params.auth.as_ref();
    let fields = SignedFields {
        client_id: &params.client.id,
        client_mode: &params.client.mode,
        role: &params.role,
        scopes: &params.scopes,
        signed_at_ms: proof.signed_at,
        token: auth.and_then(|a| {
            device_auth::signature_token(
                a.token.as_deref(),
                a.device_token.as_deref(),
                a.bootstrap_token.as_deref(),
            )
        }),
        nonce: &proof.nonce,
        platform: Some(params.client.platform.as_str()),
        device_family: params.client.device_family.as_deref(),
    };
    if let Ok(device) = device_auth::verify(&proof, &fields, NONCE, NOW_MS) {
        // The normalised key is the same key: it hashes to the verified id.
        let key =
            device_auth::public_key_bytes(&device.public_key).expect("normalised key decodes");
        assert_eq!(device_auth::device_id_of(&key), device.device_id);
        assert_eq!(device.device_id, proof.id);
    }
});
