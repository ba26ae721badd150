//! `~` and `${VAR}` expansion of secret file paths (`paths::expand`, `source::expand_file_path`).
//!
//! Input: `path NUL suffix`. Every `${NAME}` in the path is set (unless the first byte is `!`,
//! which leaves them unset). A suffix without `$`, `{` or `~` must come through unchanged:
//! expand(path + suffix) == expand(path) + suffix.
#![no_main]

use std::path::Path;

use driftless_core::paths::expand;
use driftless_core::{Env, source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw, suffix) = text.split_once('\0').unwrap_or((text, ""));
    let mut env = Env::from_pairs([("HOME", "/home/fuzz")]);
    if !raw.starts_with('!') {
        for part in raw.split("${").skip(1) {
            if let Some((name, _)) = part.split_once('}') {
                env.set(name, "v");
            }
        }
    }
    let _ = source::expand_file_path(raw, &env, Path::new("/base"));
    let Ok(head) = expand(raw, &env) else {
        return;
    };
    if raw.is_empty() || raw == "~" || suffix.contains(['$', '{', '~', '\0']) {
        return;
    }
    let whole = expand(&format!("{raw}{suffix}"), &env).expect("a plain suffix adds no error");
    assert_eq!(
        whole.as_os_str().to_string_lossy(),
        format!("{}{suffix}", head.display()),
        "expand({raw:?} + {suffix:?})"
    );
});
