//! The systemd unit scanner (`scan::scan_systemd`) as doctor and the OpenClaw audit run it, and the
//! rewrite that removes inline assignments (`scan::systemd_without_vars`).
#![no_main]

use std::path::Path;

use driftless_core::{Env, SecretValue};
use driftless_ops::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Units are read as bytes and scanned lossily (`openclaw.rs` `definitions`).
    let text = String::from_utf8_lossy(data);
    let env = Env::from_pairs([("HOME", "/nonexistent-fuzz-home")]);
    let live = vec![(
        "gateway.auth.token".to_owned(),
        SecretValue::new("canary-live-gateway-token".into()),
    )];
    let found = scan::scan_systemd(&text, &env, &live);
    let mut inline = Vec::new();
    for e in &found {
        let _ = e.describe(Path::new("/etc/systemd/system/fuzz.service"));
        if e.env_file.is_none() && e.location.starts_with("Environment=") {
            inline.push(e.name.clone());
        }
    }
    let _ = scan::systemd_without_vars(&text, &inline);
});
