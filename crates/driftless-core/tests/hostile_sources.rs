//! Issue 15 (3, 8, 9): secret and config sources that used to hang, exhaust memory, outlive their
//! deadline or pass for a token. Real FIFOs, devices, sockets and processes.
//!
//! Every call that could hang runs on a thread with a generous functional bound, so a regression
//! fails with a message instead of hanging the suite.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use driftless_core::config::{ConfigError, MAX_CONFIG_BYTES};
use driftless_core::{Config, Env, ResolveError, SecretInput, SecretRef};

/// Far above any correct answer and far below the hangs this file guards against (30 s, forever).
const BOUND: Duration = Duration::from_secs(10);

fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} did not return within {BOUND:?}"))
}

fn file_ref(path: &Path) -> SecretInput {
    SecretInput::Ref(SecretRef::File {
        path: path.to_str().unwrap().into(),
    })
}

fn resolve_file(path: PathBuf) -> Result<String, ResolveError> {
    within(&format!("resolving {}", path.display()), move || {
        file_ref(&path)
            .resolve(&Env::default(), Path::new("/"))
            .map(|v| v.expose().to_owned())
    })
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "mkfifo failed");
}

fn private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn special_files_are_refused_as_secret_files_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let err = resolve_file(fifo.clone()).unwrap_err();
    assert!(
        matches!(err, ResolveError::FileNotRegular { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("FIFO") && msg.contains("regular file"),
        "{msg}"
    );

    // A link to a device (mode of the link itself is irrelevant; the target is a char device).
    let zero = dir.path().join("zero");
    symlink("/dev/zero", &zero).unwrap();
    let err = resolve_file(zero).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");

    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = resolve_file(sock).unwrap_err();
    assert!(err.to_string().contains("socket"), "{err}");
}

#[test]
fn blank_or_nul_token_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("spaces", &b"    \n"[..]),
        ("tabs-and-newlines", b" \t\r\n\n"),
    ] {
        let p = dir.path().join(name);
        private(&p, bytes);
        let err = resolve_file(p).unwrap_err();
        assert!(matches!(err, ResolveError::FileEmpty(_)), "{name}: {err:?}");
        assert!(err.to_string().contains("only whitespace"), "{err}");
    }
    for (name, bytes) in [("nuls", &b"\0\0\0\0"[..]), ("nul-inside", b"tok\0en\n")] {
        let p = dir.path().join(name);
        private(&p, bytes);
        let err = resolve_file(p).unwrap_err();
        assert!(
            matches!(err, ResolveError::FileHasNul(_)),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains("NUL"), "{err}");
    }
    // Spaces inside or around a real token are part of it, as before.
    let p = dir.path().join("real");
    private(&p, b" a token \n");
    assert_eq!(resolve_file(p).unwrap(), " a token ");

    let blank = SecretInput::Ref(SecretRef::Exec {
        command: vec!["printf".into(), "   \\n".into()],
        timeout_ms: None,
    });
    let err = blank.resolve(&Env::default(), dir.path()).unwrap_err();
    assert!(matches!(err, ResolveError::ExecEmptyOutput(_)), "{err:?}");
    let blank_env = SecretInput::Ref(SecretRef::Env { id: "TOK".into() });
    let env = Env::from_pairs([("TOK", "  ")]);
    let err = blank_env.resolve(&env, dir.path()).unwrap_err();
    assert!(matches!(err, ResolveError::EnvEmpty(_)), "{err:?}");
}

/// Whether `pid` is gone (or a zombie nobody reaps: it holds no pipe and runs nothing).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn eventually_dead(pid: i32) -> bool {
    for _ in 0..100 {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_background_child_holding_stdout_does_not_outlive_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("bg.pid");
    let script = format!("echo tok; sleep 30 & echo $! > '{}'", pid_file.display());
    let input = SecretInput::Ref(SecretRef::Exec {
        command: vec!["sh".into(), "-c".into(), script],
        timeout_ms: Some(2000),
    });
    let base = dir.path().to_owned();
    let err = within("an exec whose grandchild holds stdout", move || {
        input.resolve(&Env::default(), &base)
    })
    .unwrap_err();
    assert!(
        matches!(err, ResolveError::ExecOutputHeld { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("2000 ms"), "{err}");
    let bg = read_pid(&pid_file);
    assert!(
        eventually_dead(bg),
        "the background sleep {bg} outlived the deadline"
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("bg.pid");
    // The direct child waits; its background child would otherwise survive the kill of `sh`.
    let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
    let input = SecretInput::Ref(SecretRef::Exec {
        command: vec!["sh".into(), "-c".into(), script],
        timeout_ms: Some(2000),
    });
    let base = dir.path().to_owned();
    let err = within("an exec that times out", move || {
        input.resolve(&Env::default(), &base)
    })
    .unwrap_err();
    assert!(matches!(err, ResolveError::ExecTimeout { .. }), "{err:?}");
    let bg = read_pid(&pid_file);
    assert!(
        eventually_dead(bg),
        "the background sleep {bg} survived the timeout"
    );
}

fn load(path: PathBuf) -> Result<(), ConfigError> {
    within(&format!("loading config {}", path.display()), move || {
        Config::load(&path).map(|_| ())
    })
}

#[test]
fn config_reads_are_regular_files_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.toml");
    mkfifo(&fifo);
    let err = load(fifo).unwrap_err();
    assert!(matches!(err, ConfigError::NotRegular { .. }), "{err:?}");
    assert!(err.to_string().contains("FIFO"), "{err}");

    let zero = dir.path().join("zero.toml");
    symlink("/dev/zero", &zero).unwrap();
    let err = load(zero).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");

    // A regular file past the cap (sparse: no disk used) is refused before it is read.
    let big = dir.path().join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_CONFIG_BYTES as u64 + 1).unwrap();
    let err = load(big).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");

    // The config-editing path reads through the same door.
    let fifo2 = dir.path().join("edit.toml");
    mkfifo(&fifo2);
    let err = within("opening a FIFO config for editing", move || {
        driftless_core::config_edit::ConfigDocument::open(&fifo2).map(|_| ())
    })
    .unwrap_err();
    assert!(err.to_string().contains("FIFO"), "{err}");
}
