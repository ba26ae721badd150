//! The secret-reference syntax: the input is the TOML value of a secret field
//! (`token = { source = "file", path = "${CREDENTIALS_DIRECTORY}/token" }`), parsed by the real
//! config parser; a file reference's path is then expanded. Nothing is resolved: an `exec`
//! reference would run its command.
#![no_main]

use std::path::Path;

use driftless_core::{Config, Env};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let text = format!("[gateway.auth]\ntoken = {value}\n");
    let Ok(config) = Config::parse(&text, Path::new("/fuzz/config.toml")) else {
        return;
    };
    let env = Env::from_pairs([
        ("HOME", "/home/fuzz"),
        ("CREDENTIALS_DIRECTORY", "/run/creds"),
    ]);
    for (_, input) in config.secret_inputs() {
        let _ = (input.describe(), input.kind(), input.can_change_live());
        if let Some(Ok(path)) = input.file_path(&env, Path::new("/etc/driftless")) {
            assert!(path.is_absolute(), "{path:?}");
        }
    }
});
