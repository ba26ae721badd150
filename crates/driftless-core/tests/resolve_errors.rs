//! Every way a secret reference can fail, each with its own distinct, actionable error — and a
//! canary secret that must appear in none of the messages.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use driftless_core::source::MAX_SECRET_BYTES;
use driftless_core::{Env, ResolveError, SecretInput, SecretRef, SecretValue, redact};

const CANARY: &str = "canary-7f3a9-SECRET-do-not-print";

fn file_ref(path: &Path) -> SecretInput {
    SecretInput::Ref(SecretRef::File {
        path: path.to_str().unwrap().into(),
    })
}

fn exec_ref(cmd: &[&str], timeout_ms: Option<u64>) -> SecretInput {
    SecretInput::Ref(SecretRef::Exec {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        timeout_ms,
    })
}

fn private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs every failure case and returns (case, error) pairs.
fn all_failures(dir: &Path) -> Vec<(&'static str, ResolveError)> {
    let env = Env::from_pairs([("EMPTY_VAR", ""), ("HOME", "/nonexistent-home")]);
    let base = dir;
    let mut out = Vec::new();
    let mut case = |name: &'static str, input: SecretInput| {
        let err = input.resolve(&env, base).expect_err(name);
        out.push((name, err));
    };

    case(
        "env unset",
        SecretInput::Ref(SecretRef::Env {
            id: "NOT_SET_ANYWHERE".into(),
        }),
    );
    case(
        "env empty",
        SecretInput::Ref(SecretRef::Env {
            id: "EMPTY_VAR".into(),
        }),
    );

    case("file missing", file_ref(&dir.join("missing")));
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Opening a socket fails (ENXIO) even for root, which ignores permission bits.
    case("file unreadable", file_ref(&sock));
    case("file is a directory", file_ref(dir));
    let empty = dir.join("empty");
    private(&empty, b"\n");
    case("file empty", file_ref(&empty));
    let big = dir.join("big");
    private(&big, &vec![b'x'; MAX_SECRET_BYTES + 1]);
    case("file too large", file_ref(&big));
    let open = dir.join("open");
    std::fs::write(&open, CANARY).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    case("file readable by others", file_ref(&open));
    let group = dir.join("group");
    std::fs::write(&group, CANARY).unwrap();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o640)).unwrap();
    case("file readable by group", file_ref(&group));
    let bin = dir.join("bin");
    private(&bin, &[0xff, 0xfe, b'a']);
    case("file not utf-8", file_ref(&bin));
    case(
        "path uses unset var",
        SecretInput::Ref(SecretRef::File {
            path: "${NO_SUCH}/tok".into(),
        }),
    );

    case("exec empty command", exec_ref(&[], None));
    case(
        "exec not found",
        exec_ref(&["/nonexistent/driftless-secret-helper"], None),
    );
    case(
        "exec non-zero exit",
        exec_ref(
            &[
                "sh",
                "-c",
                &format!("echo {CANARY}; echo 'vault sealed: run unseal' >&2; exit 3"),
            ],
            None,
        ),
    );
    case("exec timeout", exec_ref(&["sleep", "5"], Some(200)));
    case("exec empty output", exec_ref(&["true"], None));
    case(
        "exec invalid utf-8",
        exec_ref(&["printf", "\\377\\376"], None),
    );
    case(
        "exec output too large",
        exec_ref(&["head", "-c", "70000", "/dev/zero"], None),
    );
    out
}

#[test]
fn every_failure_is_distinct_and_actionable() {
    let dir = tempfile::tempdir().unwrap();
    let failures = all_failures(dir.path());
    let messages: Vec<String> = failures.iter().map(|(_, e)| e.to_string()).collect();
    for (i, (name, e)) in failures.iter().enumerate() {
        let msg = &messages[i];
        // Distinct: no other case produced the same variant.
        let same_variant = failures
            .iter()
            .filter(|(_, o)| std::mem::discriminant(o) == std::mem::discriminant(e))
            .count();
        let allowed_twice = matches!(e, ResolveError::FileTooOpen { .. });
        assert!(
            same_variant == 1 || allowed_twice,
            "{name}: variant shared: {msg}"
        );
        assert!(msg.len() > 20, "{name}: too terse: {msg}");
    }
    let by_name = |n: &str| messages[failures.iter().position(|(k, _)| *k == n).unwrap()].clone();
    assert!(by_name("env unset").contains("NOT_SET_ANYWHERE"));
    assert!(by_name("env empty").contains("empty"));
    assert!(by_name("file missing").contains("does not exist"));
    assert!(by_name("file unreadable").contains("cannot be read"));
    assert!(by_name("file is a directory").contains("directory"));
    assert!(by_name("file empty").contains("is empty"));
    assert!(by_name("file too large").contains("limit"));
    assert!(by_name("file readable by others").contains("chmod 600"));
    assert!(by_name("file readable by others").contains("others"));
    assert!(by_name("file readable by group").contains("group"));
    assert!(by_name("file not utf-8").contains("UTF-8"));
    assert!(by_name("path uses unset var").contains("NO_SUCH"));
    assert!(by_name("exec not found").contains("not found"));
    let nonzero = by_name("exec non-zero exit");
    assert!(
        nonzero.contains("exit status: 3") && nonzero.contains("vault sealed"),
        "{nonzero}"
    );
    assert!(by_name("exec timeout").contains("200 ms"));
    assert!(by_name("exec empty output").contains("printed nothing"));
    assert!(by_name("exec invalid utf-8").contains("UTF-8"));
    assert!(by_name("exec output too large").contains("more than"));
}

#[test]
fn canary_appears_in_no_error_and_stderr_lines_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    // The canary is a live value (as if it were in the current snapshot).
    redact::register(&SecretValue::new(CANARY.into()));
    let failures = all_failures(dir.path());
    for (name, e) in &failures {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(CANARY), "{name} leaked the canary: {shown}");
    }
    // A command that echoes the live secret on stderr gets it redacted in the error.
    let leaky = exec_ref(
        &[
            "sh",
            "-c",
            &format!("echo 'bad token {CANARY}' >&2; exit 1"),
        ],
        None,
    );
    let msg = leaky
        .resolve(&Env::default(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(!msg.contains(CANARY), "{msg}");
    assert!(msg.contains("[redacted sha256:"), "{msg}");
}

#[test]
fn successful_sources_trim_one_newline() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tok");
    private(&f, b"abc\n\n");
    let v = file_ref(&f).resolve(&Env::default(), dir.path()).unwrap();
    assert_eq!(v.expose(), "abc\n");
    let v = exec_ref(&["echo", "from-exec"], None)
        .resolve(&Env::default(), dir.path())
        .unwrap();
    assert_eq!(v.expose(), "from-exec");
    let env = Env::from_pairs([("TOK", "from-env")]);
    let v = SecretInput::Ref(SecretRef::Env { id: "TOK".into() })
        .resolve(&env, dir.path())
        .unwrap();
    assert_eq!(v.expose(), "from-env");
    // Relative paths are taken from the config's directory.
    let v = SecretInput::Ref(SecretRef::File { path: "tok".into() })
        .resolve(&Env::default(), dir.path())
        .unwrap();
    assert_eq!(v.expose(), "abc\n");
}

#[test]
fn group_readable_file_of_another_owner_is_accepted() {
    // Kubernetes mounts a Secret for a non-root pod as root-owned, mode 0440, group = fsGroup.
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tok");
    std::fs::write(&f, "k8s-token").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
    std::os::unix::fs::chown(&f, Some(4242), Some(4242)).unwrap();
    let v = file_ref(&f).resolve(&Env::default(), dir.path()).unwrap();
    assert_eq!(v.expose(), "k8s-token");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    assert!(matches!(
        file_ref(&f).resolve(&Env::default(), dir.path()),
        Err(ResolveError::FileTooOpen { .. })
    ));
}
