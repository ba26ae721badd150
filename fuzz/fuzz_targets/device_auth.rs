//! The signed `device` block of `connect`, checked the way the gateway checks it (`conn.rs`
//! `prove_device`), and the PEM keys of a device identity file.
#![no_main]

use driftless_protocol::device_auth::{self, DeviceProof, SignedFields};
use driftless_protocol::{ConnectParams, parse_params};
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
    let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text) else {
        return;
    };
    let Ok(params) = parse_params::<ConnectParams>(Some(raw)) else {
        return;
    };
    let Some(device) = params.device.clone() else {
        return;
    };
    let Ok(proof) = serde_json::from_value::<DeviceProof>(device) else {
        return;
    };
    // As the gateway builds them (`conn.rs` `prove_device`).
    let fields = SignedFields::of_connect(&params, &proof);
    if let Ok(device) = device_auth::verify(&proof, &fields, NONCE, NOW_MS) {
        // The normalised key is the same key: it hashes to the verified id.
        let key =
            device_auth::public_key_bytes(&device.public_key).expect("normalised key decodes");
        assert_eq!(device_auth::device_id_of(&key), device.device_id);
        assert_eq!(device.device_id, proof.id);
    }
});
