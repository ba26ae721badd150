//! The launchd plist scanner (`scan::scan_plist`), XML or binary, as doctor and the OpenClaw audit
//! run it.
#![no_main]

use std::path::Path;

use driftless_core::SecretValue;
use driftless_ops::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let live = vec![(
        "gateway.auth.token".to_owned(),
        SecretValue::new("canary-live-gateway-token".into()),
    )];
    if let Ok(found) = scan::scan_plist(data, &live) {
        for e in found {
            let _ = e.describe(Path::new("/Library/LaunchAgents/fuzz.plist"));
        }
    }
});
