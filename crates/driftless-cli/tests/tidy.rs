//! Tidy tests: ARCHITECTURE.md's invariants, checked over the repository's own text, in the
//! spirit of rust-analyzer's `tidy.rs`. Each test reads files, never builds anything, and names
//! every offending file with what to do about it.
//!
//! To add an invariant: write a `#[test]` that walks [`source_files`] (or [`repo_files`]) and
//! collects offences with [`Offences`]; show once that it goes red when the invariant is broken.
//! Patterns that would match this file itself are assembled with `concat!`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace root (this crate is `crates/driftless-cli`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Folders never walked: build output, fetched test tools, VCS data, and what long fuzz runs
/// write (ignored by git, and changing while a fuzzer runs).
const SKIP_DIRS: &[&str] = &[
    "target",
    ".tools",
    ".git",
    "node_modules",
    "fuzz/target",
    "fuzz/work",
    "fuzz/artifacts",
    "fuzz/coverage",
];

/// Every regular file of the repository (relative paths, `/`-separated, sorted), text or not.
fn repo_files() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !SKIP_DIRS
                    .iter()
                    .any(|s| rel == *s || rel.ends_with(&format!("/{s}")))
                {
                    walk(root, &path, out);
                }
            } else if kind.is_file() {
                out.push(rel);
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// Text of a repository file; `None` for a file that is not UTF-8 (binary).
fn read(rel: &str) -> Option<String> {
    String::from_utf8(std::fs::read(root().join(rel)).unwrap()).ok()
}

/// The Rust sources of the workspace's crates, with their text.
fn source_files() -> Vec<(String, String)> {
    repo_files()
        .into_iter()
        .filter(|p| p.starts_with("crates/") && p.ends_with(".rs"))
        .filter_map(|p| read(&p).map(|t| (p, t)))
        .collect()
}

/// Whether a source file is test code as a whole: integration tests, benches, a `tests.rs`
/// module, test fixtures.
fn is_test_file(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    parts
        .iter()
        .any(|p| *p == "tests" || *p == "benches" || *p == "fuzz")
        || rel.ends_with("/tests.rs")
}

/// The non-test part of a source file: the file with each `#[cfg(test)]` module blanked, inline
/// (to its closing `}` at the start of a line) or declared (`mod tests;`), line for line so that
/// line numbers still match. Code after a test module is still checked; a `#[cfg(test)]` on
/// another item does not hide it.
fn non_test_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n').peekable();
    let mut in_test_module = false;
    while let Some(line) = lines.next() {
        if in_test_module {
            in_test_module = line.trim_end() != "}";
            out.push('\n');
            continue;
        }
        let next = lines.peek().map(|l| l.trim()).unwrap_or("");
        if line.trim() == "#[cfg(test)]"
            && (next.starts_with("mod ") || next.starts_with("pub mod "))
        {
            in_test_module = !next.ends_with(';');
            lines.next();
            out.push_str("\n\n");
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Collected violations of one invariant; `check` fails the test listing all of them.
struct Offences {
    invariant: &'static str,
    fix: &'static str,
    found: Vec<String>,
}

impl Offences {
    fn new(invariant: &'static str, fix: &'static str) -> Offences {
        Offences {
            invariant,
            fix,
            found: Vec::new(),
        }
    }

    fn add(&mut self, what: String) {
        self.found.push(what);
    }

    /// Every line of `text` containing `needle`, as `file:line: text`.
    fn add_lines(&mut self, rel: &str, text: &str, needle: &str) {
        for (i, line) in text.lines().enumerate() {
            if line.contains(needle) {
                self.add(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }

    fn check(self) {
        assert!(
            self.found.is_empty(),
            "tidy: {}\n  {}\nfix: {}",
            self.invariant,
            self.found.join("\n  "),
            self.fix
        );
    }
}

#[test]
fn the_environment_is_read_only_in_core_env_rs() {
    const ALLOWED: &str = "crates/driftless-core/src/env.rs";
    let mut off = Offences::new(
        "the process environment is read once, by driftless_core::Env (ARCHITECTURE.md)",
        "take a `driftless_core::Env` (from the caller, or `Env::from_process()` at a binary's or \
         test binary's edge) and call `.get()` / `.non_empty()` on it",
    );
    // The four readers of std::env, however they are imported.
    let needles = [
        concat!("env::", "var("),
        concat!("env::", "var_os("),
        concat!("env::", "vars("),
        concat!("env::", "vars_os("),
    ];
    let mut seen_allowed = false;
    for (rel, text) in source_files() {
        for needle in needles {
            if rel == ALLOWED {
                seen_allowed |= text.contains(needle);
            } else {
                off.add_lines(&rel, &text, needle);
            }
        }
    }
    off.check();
    assert!(
        seen_allowed,
        "tidy: {ALLOWED} no longer reads the environment; update this test's ALLOWED"
    );
}

/// The files whose non-test code may call `SecretValue::expose()`, and why (ARCHITECTURE.md:
/// "expose() is called only by verifiers, the redactor, and writers of a secret's own source";
/// presenting a credential on the wire and handing it to a child are the other two uses).
const EXPOSE_ALLOWED: &[(&str, &str)] = &[
    // core: the redactor.
    ("crates/driftless-core/src/redact.rs", "redactor"),
    // gateway: the device-token verifier, tokens issued to a device, provider keys upstream.
    ("crates/driftless-gateway/src/devices/rules.rs", "verifier"),
    (
        "crates/driftless-gateway/src/devices/token_key.rs",
        "reads the device token key from its reference; the fleet's keyed verifier of the shared secret",
    ),
    (
        "crates/driftless-gateway/src/devices/postgres.rs",
        "presents the database password to its server",
    ),
    (
        "crates/driftless-gateway/src/methods.rs",
        "issues a device token",
    ),
    (
        "crates/driftless-gateway/src/devices/methods.rs",
        "issues a device token",
    ),
    (
        "crates/driftless-gateway/src/openai.rs",
        "presents a provider key upstream",
    ),
    (
        "crates/driftless-gateway/src/relay.rs",
        "presents the upstream credential and driftless's device token to the upstream OpenClaw gateway",
    ),
    (
        "crates/driftless-gateway/src/relay/identity.rs",
        "writes driftless's upstream device token to its own source (its state file)",
    ),
    // client: presenting a credential, and storing the device token it was issued.
    (
        "crates/driftless-client/src/connection.rs",
        "presents a credential",
    ),
    (
        "crates/driftless-client/src/store.rs",
        "writes the token's own source",
    ),
    // ops: writers of a secret's own source, and the backup scrubber.
    (
        "crates/driftless-ops/src/init.rs",
        "writes the token's own source",
    ),
    (
        "crates/driftless-ops/src/migrate.rs",
        "writes the secret's own source",
    ),
    (
        "crates/driftless-ops/src/openclaw.rs",
        "writes OpenClaw's own credential",
    ),
    (
        "crates/driftless-ops/src/rotation.rs",
        "writes the rotated token's own source",
    ),
    (
        "crates/driftless-ops/src/backup.rs",
        "scrubs backups (a redactor)",
    ),
    // supervisor: the child's environment is the secret's destination.
    (
        "crates/driftless-supervisor/src/child.rs",
        "hands the value to the child",
    ),
    // bench: its own generated tokens for its own servers and clients.
    (
        "crates/driftless-bench/src/server.rs",
        "bench: writes its server's token",
    ),
    (
        "crates/driftless-bench/src/scenarios.rs",
        "bench: presents its token",
    ),
    (
        "crates/driftless-bench/src/proxy.rs",
        "bench: its proxy's key",
    ),
    (
        "crates/driftless-bench/src/wire.rs",
        "bench: presents the device token its own server issued",
    ),
];

#[test]
fn expose_is_called_only_from_the_listed_files() {
    // A method call, or the same through its path (`SecretValue::expose(&v)`).
    let needles = [concat!(".expose", "()"), concat!("::expose", "(")];
    let allowed: BTreeSet<&str> = EXPOSE_ALLOWED.iter().map(|(f, _)| *f).collect();
    let mut off = Offences::new(
        "SecretValue::expose() is called only from EXPOSE_ALLOWED in tests/tidy.rs \
         (verifiers, the redactor, writers of a secret's own source)",
        "keep the value inside SecretValue (compare with `matches`, print the fingerprint); if \
         this file really is a verifier or a writer of the secret's source, add it to \
         EXPOSE_ALLOWED with the reason",
    );
    let mut used = BTreeSet::new();
    for (rel, text) in source_files() {
        if is_test_file(&rel) {
            continue;
        }
        let code = non_test_code(&text);
        if !needles.iter().any(|n| code.contains(n)) {
            continue;
        }
        if allowed.contains(rel.as_str()) {
            used.insert(rel);
        } else {
            for needle in needles {
                off.add_lines(&rel, &code, needle);
            }
        }
    }
    for stale in allowed.iter().filter(|f| !used.contains(**f)) {
        off.add(format!(
            "{stale}: listed in EXPOSE_ALLOWED but no longer calls expose(); remove it from the list"
        ));
    }
    off.check();
}

#[test]
fn nothing_refers_to_folders_beside_the_checkout() {
    let needles = [concat!("..", "/shared"), concat!("/work", "/shared")];
    let mut off = Offences::new(
        "the repository never depends on folders beside the checkout (a fresh clone must pass \
         its own tests)",
        "put what the file needs into this repository (test harnesses live in \
         crates/driftless-cli/tests/harness) and refer to it there",
    );
    for rel in repo_files() {
        let Some(text) = read(&rel) else { continue };
        for needle in needles {
            off.add_lines(&rel, &text, needle);
        }
    }
    off.check();
}

#[test]
fn every_crate_root_has_a_module_doc() {
    let mut off = Offences::new(
        "every crate's lib.rs / main.rs starts with a `//!` doc saying what the crate is for",
        "open the file with a `//!` paragraph: what the crate owns and what it must not do",
    );
    let roots: Vec<String> = repo_files()
        .into_iter()
        .filter(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            matches!(parts.as_slice(), ["crates", _, "src", "lib.rs" | "main.rs"])
        })
        .collect();
    assert!(roots.len() >= 8, "too few crate roots found: {roots:?}");
    for rel in roots {
        let text = read(&rel).unwrap_or_default();
        if !text.trim_start().starts_with("//!") {
            off.add(format!("{rel}: no module doc"));
        }
    }
    off.check();
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    // The workspace lints forbid `unsafe` and enforce clippy.toml (the environment rule).
    let mut off = Offences::new(
        "every crate inherits the workspace lints (`unsafe_code = \"forbid\"`, clippy.toml's bans)",
        "add `[lints]\\nworkspace = true` to the crate's Cargo.toml",
    );
    let manifests: Vec<String> = repo_files()
        .into_iter()
        .filter(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            matches!(parts.as_slice(), ["crates", _, "Cargo.toml"])
        })
        .collect();
    assert!(
        manifests.len() >= 8,
        "too few crate manifests found: {manifests:?}"
    );
    for rel in manifests {
        let text = read(&rel).unwrap_or_default();
        let lints = text
            .split("\n[")
            .find(|section| section.starts_with("lints]"))
            .unwrap_or("");
        if !lints
            .lines()
            .any(|l| l.replace(' ', "") == "workspace=true")
        {
            off.add(format!("{rel}: no `[lints] workspace = true`"));
        }
    }
    off.check();
}

#[test]
fn peer_input_code_never_unwraps() {
    // The protocol crate parses what peers send and the gateway handles it, before and after
    // authentication: bad input must become a clear error, never a panic. `.expect("why")`
    // remains for invariants that cannot fail (a bound listener has an address) and says why.
    let needle = concat!(".unwrap", "()");
    let mut off = Offences::new(
        "no `.unwrap()` in the non-test code of driftless-protocol and driftless-gateway (they \
         handle peer input)",
        "return a typed error (it maps to OpenClaw's error shape), or, for an invariant that \
         cannot fail, `.expect(\"why it cannot fail\")`",
    );
    for (rel, text) in source_files() {
        let peer_facing = rel.starts_with("crates/driftless-protocol/src/")
            || rel.starts_with("crates/driftless-gateway/src/");
        if peer_facing && !is_test_file(&rel) {
            off.add_lines(&rel, &non_test_code(&text), needle);
        }
    }
    off.check();
}

#[test]
fn no_registry_urls_are_committed() {
    // Tools are fetched by their ordinary clients (cargo, npm, pip) by name and version; a
    // hard-coded registry URL ties the repository to one mirror. Cargo.lock's `source` lines are
    // cargo's own.
    let needles = [
        concat!("https://", "crates.io"),
        concat!("registry.", "npmjs.org"),
        concat!("pypi", ".org"),
        concat!("files.", "pythonhosted.org"),
        concat!("static.", "crates.io"),
    ];
    let mut off = Offences::new(
        "no package registry URL in committed files",
        "name the package and version and let its client (cargo, npm, pip) resolve it",
    );
    for rel in repo_files() {
        if rel == "Cargo.lock" {
            continue;
        }
        let Some(text) = read(&rel) else { continue };
        for needle in needles {
            off.add_lines(&rel, &text, needle);
        }
    }
    off.check();
}

#[test]
fn the_tidy_walk_sees_the_repository() {
    // Guards the other tests against passing vacuously (a wrong root, a skip list too wide).
    let files = repo_files();
    for expected in [
        "ARCHITECTURE.md",
        "Cargo.toml",
        ".ci/run",
        "scripts/test.sh",
        "crates/driftless-core/src/env.rs",
        "crates/driftless-cli/tests/tidy.rs",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "tidy walk misses {expected}"
        );
    }
    assert!(!files.iter().any(|f| f.starts_with("target/")));
}

/// Files outside driftless-protocol whose non-test code may build or read JSON by field name,
/// and why: each speaks a format other than the gateway wire (ARCHITECTURE.md: "only the protocol
/// crate knows wire field names").
const JSON_BY_NAME_ALLOWED: &[(&str, &str)] = &[
    // OpenAI's HTTP API: request bodies are proxied to providers as they came (an open schema),
    // and errors take OpenAI's exact shape.
    ("crates/driftless-gateway/src/openai.rs", "OpenAI HTTP API"),
    (
        "crates/driftless-gateway/src/openai/sse.rs",
        "OpenAI HTTP API",
    ),
    // The `/healthz` and `/readyz` probe bodies (HTTP, for orchestrators).
    ("crates/driftless-gateway/src/lib.rs", "HTTP probe bodies"),
    // OpenClaw's own config file (`openclaw.json`), which doctor audits and repairs.
    (
        "crates/driftless-ops/src/openclaw.rs",
        "OpenClaw's config file",
    ),
    (
        "crates/driftless-ops/src/doctor/openclaw_checks.rs",
        "OpenClaw's config file",
    ),
    (
        "crates/driftless-ops/src/doctor/providers.rs",
        "OpenClaw's config file",
    ),
    (
        "crates/driftless-ops/src/doctor/front.rs",
        "OpenClaw's config file",
    ),
    // launchd property lists.
    ("crates/driftless-ops/src/scan.rs", "launchd plists"),
    // Test support for a private PostgreSQL: `Env::get` of variables, not JSON.
    (
        "crates/driftless-gateway/src/testing/postgres.rs",
        "environment lookups",
    ),
    // The supervisor's own control socket reply.
    (
        "crates/driftless-supervisor/src/control.rs",
        "supervisor control socket",
    ),
    // bench: the floor server is protocol-free on purpose (it measures the stack, not our code);
    // the others write OpenClaw's config, fake an OpenAI provider, or send empty params.
    ("crates/driftless-bench/src/floor.rs", "bench: the floor"),
    (
        "crates/driftless-bench/src/server.rs",
        "bench: OpenClaw's config",
    ),
    (
        "crates/driftless-bench/src/proxy.rs",
        "bench: fake OpenAI provider",
    ),
    ("crates/driftless-bench/src/wire.rs", "bench: empty params"),
];

/// Where `line` builds JSON with `json!` or looks a field up by a string literal: `.get("…")`,
/// `.get_mut("…")`, `.pointer("…")`, or indexing `x["…"]` (not an array literal such as
/// `&["a"]` or `vec!["a"]`: indexing follows a name, `)` or `]`).
fn json_by_name(line: &str) -> Option<&'static str> {
    if line.contains(concat!("json", "!(")) {
        return Some("json!");
    }
    for call in [
        concat!(".get", "(\""),
        concat!(".get_mut", "(\""),
        concat!(".pointer", "(\""),
    ] {
        if line.contains(call) {
            return Some("lookup by name");
        }
    }
    let bytes = line.as_bytes();
    let indexed = line.match_indices(concat!("[", "\"")).any(|(i, _)| {
        i > 0 && {
            let b = bytes[i - 1];
            b.is_ascii_alphanumeric() || b == b'_' || b == b')' || b == b']'
        }
    });
    indexed.then_some("index by name")
}

#[test]
fn no_wire_field_names_outside_the_protocol_crate() {
    let allowed: BTreeSet<&str> = JSON_BY_NAME_ALLOWED.iter().map(|(f, _)| *f).collect();
    let mut off = Offences::new(
        "no JSON built with json! or read by field name (`.get(\"…\")`, `[\"…\"]`) outside \
         driftless-protocol: wire payloads are the typed structs of driftless_protocol::payloads",
        "serialize or deserialize a payload type of driftless_protocol::payloads (add one there, \
         tolerant of what OpenClaw sends); for a format that is not the gateway wire, add the \
         file to JSON_BY_NAME_ALLOWED with the reason",
    );
    let mut used = BTreeSet::new();
    let mut checked = 0;
    for (rel, text) in source_files() {
        if rel.starts_with("crates/driftless-protocol/") || is_test_file(&rel) {
            continue;
        }
        checked += 1;
        for (i, line) in non_test_code(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let Some(what) = json_by_name(code) else {
                continue;
            };
            if allowed.contains(rel.as_str()) {
                used.insert(rel.clone());
            } else {
                off.add(format!("{rel}:{}: {what}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(checked >= 50, "too few source files checked: {checked}");
    for stale in allowed.iter().filter(|f| !used.contains(**f)) {
        off.add(format!(
            "{stale}: listed in JSON_BY_NAME_ALLOWED but builds or reads no JSON by name; remove \
             it from the list"
        ));
    }
    off.check();
}

#[test]
fn the_json_by_name_rule_sees_what_it_should() {
    // Guards the rule above against passing vacuously, and against array literals.
    for hit in [
        concat!("let v = serde_json::json", "!({\"a\": 1});"),
        concat!("payload", "[\"deviceId\"].as_str()"),
        concat!("p[\"auth\"]", "[\"mode\"]"),
        concat!("f(x)", "[\"k\"]"),
        concat!("v.get", "(\"token\")"),
    ] {
        assert!(json_by_name(hit).is_some(), "missed: {hit}");
    }
    for miss in [
        concat!("run(\"launchctl\", &", "[\"version\"])"),
        concat!("vec!", "[\"a\", \"b\"]"),
        "let x = [\"a\"];",
        "map.get(&key)",
    ] {
        assert!(json_by_name(miss).is_none(), "false hit: {miss}");
    }
}
