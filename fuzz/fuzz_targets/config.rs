//! `config.toml` through `Config::parse`, and what the gateway derives from a parsed config.
#![no_main]

use std::path::Path;

use driftless_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/fuzz/config.toml")) {
        // Errors name a position, and render without panicking.
        Err(e) => drop(e.to_string()),
        Ok(config) => {
            for (name, input) in config.secret_inputs() {
                let _ = (name, input.describe(), input.kind());
            }
            let _ = config.start_only_changes(&Config::default());
        }
    }
});
