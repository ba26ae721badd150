//! End-to-end regressions for the client side (issue 15: 5, 9, 11; issue 12: 7), on the real
//! binary and real sockets.

mod support;

use std::process::Stdio;

use support::Home;

/// The XDG spec says a relative `XDG_*_HOME` is invalid and must be ignored. A relative state dir
/// used to end up in config as a relative token path, which the next start (from another working
/// directory, or resolved against the config's directory) could not find.
#[test]
fn a_relative_xdg_dir_is_ignored() {
    let home = Home::new();
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = home
        .command()
        .current_dir(&work)
        .env("XDG_STATE_HOME", "relstate")
        .env("XDG_CONFIG_HOME", "relcfg")
        .args(["init"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = home.path().join(".config/driftless/config.toml");
    let token = home
        .path()
        .join(".local/state/driftless/secrets/gateway-token");
    let text = std::fs::read_to_string(&config).expect("config under ~/.config");
    assert!(
        text.contains(token.to_str().unwrap()),
        "the token path in config is absolute, under ~/.local/state:\n{text}"
    );
    assert!(token.is_file());
    assert!(!work.join("relstate").exists() && !work.join("relcfg").exists());
    // The next run, from another directory, resolves it.
    let out = home
        .command()
        .current_dir(home.path())
        .env("XDG_STATE_HOME", "relstate")
        .env("XDG_CONFIG_HOME", "relcfg")
        .args(["secrets", "check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
