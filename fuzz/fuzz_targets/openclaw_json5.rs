//! The JSON5 import of an OpenClaw installation: the input is written as `openclaw.json` and as an
//! agent's `auth-profiles.json` in a scratch state directory, then audited by `openclaw::audit`
//! (which only reads).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use driftless_core::Env;
use driftless_ops::openclaw;
use libfuzzer_sys::fuzz_target;

struct Scratch {
    _dir: tempfile::TempDir,
    env: Env,
    config: PathBuf,
    profiles: PathBuf,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        // Two files are written per input: on a RAM-backed directory that is ~25x faster than on a
        // busy disk.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let home = dir.path().to_owned();
        let state = home.join(".openclaw");
        let agent = state.join("agents/main/agent");
        std::fs::create_dir_all(&agent).expect("state dir");
        let env = Env::from_pairs([
            ("HOME", home.to_str().expect("UTF-8 temp dir")),
            (
                "OPENCLAW_STATE_DIR",
                state.to_str().expect("UTF-8 temp dir"),
            ),
            ("OPENCLAW_GATEWAY_TOKEN", "fuzz-env-gateway-token"),
        ]);
        Scratch {
            config: state.join("openclaw.json"),
            profiles: agent.join("auth-profiles.json"),
            env,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    std::fs::write(&s.config, data).expect("write openclaw.json");
    std::fs::write(&s.profiles, data).expect("write auth-profiles.json");
    for row in openclaw::audit(&s.env, true) {
        let _ = format!("{row:?}");
    }
});
