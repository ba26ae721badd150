//! Finding secret values inside service definitions: systemd units (`Environment=`, the contents
//! of `EnvironmentFile=`, `Exec*=` arguments) and launchd plists (`EnvironmentVariables`,
//! `ProgramArguments`).
//!
//! A value counts as a secret when its fingerprint equals a live secret's, or when its name looks
//! like one (token, key, password, ...). The installer, `doctor` and the OpenClaw import share
//! this scan, so "install, then audit" cannot disagree.

use std::path::{Path, PathBuf};

use driftless_core::{Env, SecretValue, redact};

/// Flags whose next argument (or `=value`) is a secret.
const SECRET_FLAGS: &[&str] = &["--token", "--password", "--api-key", "--secret"];

/// One secret found in a service definition.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Where it was found, e.g. `Environment=DRIFTLESS_GATEWAY_TOKEN`.
    pub location: String,
    /// The variable name or flag that carries it.
    pub name: String,
    pub value: SecretValue,
    /// The live secret it copies (by fingerprint), if any.
    pub copy_of: Option<String>,
    /// The environment file it came from (`EnvironmentFile=`), if not inline.
    pub env_file: Option<PathBuf>,
}

impl Embedded {
    /// The finding line `doctor` and the OpenClaw audit print for it (fingerprint, never the value).
    pub fn describe(&self, definition: &Path) -> String {
        format!(
            "{}: {} holds a secret ({}){}",
            definition.display(),
            self.location,
            self.value.fingerprint(),
            self.copy_of
                .as_deref()
                .map(|c| format!(", a copy of {c}"))
                .unwrap_or_default()
        )
    }
}

/// A live secret, by name, to compare definitions against.
pub type Live = Vec<(String, SecretValue)>;

/// Whether a variable name says it holds a secret.
pub fn name_looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_KEY")
}

fn copy_of(value: &str, live: &Live) -> Option<String> {
    live.iter()
        .find(|(_, v)| v.matches(value))
        .map(|(n, _)| n.clone())
}

fn candidate(
    location: String,
    name: &str,
    value: &str,
    live: &Live,
    env_file: Option<&Path>,
    by_name: bool,
) -> Option<Embedded> {
    if value.len() < redact::MIN_REDACT_LEN {
        return None;
    }
    let copy = copy_of(value, live);
    (copy.is_some() || by_name).then(|| Embedded {
        location,
        name: name.to_owned(),
        value: SecretValue::new(value.to_owned()),
        copy_of: copy,
        env_file: env_file.map(Path::to_owned),
    })
}

/// Splits a systemd value into words, honouring `"…"`, `'…'` and backslash escapes.
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                let quote = c;
                while let Some(q) = chars.next() {
                    if q == quote {
                        break;
                    }
                    if q == '\\' && quote == '"' {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                    } else {
                        cur.push(q);
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The `[Service]` settings of a unit, in order, with continuation lines joined.
pub fn service_settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if pending.is_empty()
            && (line.trim_start().starts_with('#') || line.trim_start().starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let full = full.trim();
        if full.starts_with('[') && full.ends_with(']') {
            section = full[1..full.len() - 1].to_owned();
            continue;
        }
        if section != "Service" {
            continue;
        }
        if let Some((k, v)) = full.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn expand_specifiers(s: &str, env: &Env) -> String {
    let home = driftless_core::paths::home(env);
    s.replace("%h", &home.to_string_lossy()).replace("%%", "%")
}

/// Parses an environment file (`KEY=VALUE` lines, `#` comments, optional `export ` and quotes).
fn env_file_vars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = split_words(v).join(" ");
            Some((k.trim().to_owned(), v))
        })
        .collect()
}

fn scan_args(words: &[String], key: &str, live: &Live, out: &mut Vec<Embedded>) {
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if let Some((flag, v)) = w.split_once('=').filter(|(f, _)| SECRET_FLAGS.contains(f)) {
            out.extend(candidate(
                format!("{key} argument {flag}"),
                flag,
                v,
                live,
                None,
                true,
            ));
        } else if SECRET_FLAGS.contains(&w.as_str()) {
            if let Some(v) = words.get(i + 1) {
                out.extend(candidate(
                    format!("{key} argument {w}"),
                    w,
                    v,
                    live,
                    None,
                    true,
                ));
                i += 1;
            }
        } else {
            out.extend(candidate(
                format!("{key} argument {}", i + 1),
                &format!("argument {}", i + 1),
                w,
                live,
                None,
                false,
            ));
        }
        i += 1;
    }
}

/// Every secret in a systemd unit. Environment files the unit names are read too; one that is
/// missing holds nothing, one that cannot be read (a FIFO, a device, too large) is skipped here
/// and reported by [`scan_definition`].
pub fn scan_systemd(text: &str, env: &Env, live: &Live) -> Vec<Embedded> {
    scan_systemd_reporting(text, env, live, &mut Vec::new())
}

/// [`scan_systemd`], with each environment file that could not be read added to `unreadable`.
fn scan_systemd_reporting(
    text: &str,
    env: &Env,
    live: &Live,
    unreadable: &mut Vec<ScanError>,
) -> Vec<Embedded> {
    let mut out = Vec::new();
    for (key, value) in service_settings(text) {
        if key == "Environment" {
            for word in split_words(&value) {
                if let Some((name, v)) = word.split_once('=') {
                    out.extend(candidate(
                        format!("Environment={name}"),
                        name,
                        v,
                        live,
                        None,
                        name_looks_secret(name),
                    ));
                }
            }
        } else if key == "EnvironmentFile" {
            let path = expand_specifiers(value.trim_start_matches('-'), env);
            let path = PathBuf::from(path);
            let contents = match crate::input::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unreadable.push(ScanError::EnvironmentFile { path, source: e });
                    continue;
                }
            };
            for (name, v) in env_file_vars(&contents) {
                out.extend(candidate(
                    format!("EnvironmentFile={}: {name}", path.display()),
                    &name,
                    &v,
                    live,
                    Some(&path),
                    name_looks_secret(&name),
                ));
            }
        } else if key.starts_with("Exec") {
            let cmd = value.trim_start_matches(['@', '-', ':', '+', '!']);
            scan_args(&split_words(cmd), &key, live, &mut out);
        }
    }
    out
}

/// The formats of service definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Systemd,
    Plist,
}

/// Every secret in a service definition of `format`. Fails when a plist does not parse or nests
/// too deep, or when an environment file a unit names exists but cannot be read (what it holds is
/// unknown, so the definition must not be called clean or rewritten).
pub fn scan_definition(
    format: Format,
    bytes: &[u8],
    env: &Env,
    live: &Live,
) -> Result<Vec<Embedded>, ScanError> {
    match format {
        Format::Systemd => {
            let mut unreadable = Vec::new();
            let found =
                scan_systemd_reporting(&String::from_utf8_lossy(bytes), env, live, &mut unreadable);
            match unreadable.into_iter().next() {
                Some(e) => Err(e),
                None => Ok(found),
            }
        }
        Format::Plist => scan_plist(bytes, live),
    }
}

/// Deepest nesting accepted in a plist. launchd's nest two or three levels; parsing and dropping a
/// value recurse once per level, so 20,000 nested `<array>`s (300 KB) overflowed the stack in
/// `plist::from_bytes`.
const MAX_PLIST_DEPTH: usize = 128;

/// Why a service definition was not scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("it does not parse: {0}")]
    Parse(#[from] plist::Error),
    #[error("it nests deeper than {MAX_PLIST_DEPTH} levels, which no launchd plist does")]
    TooDeep,
    #[error("its EnvironmentFile {} cannot be read: {source}", path.display())]
    EnvironmentFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `value` nests deeper than [`MAX_PLIST_DEPTH`], walked without recursion.
fn too_deep(value: &plist::Value) -> bool {
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            plist::Value::Array(_) | plist::Value::Dictionary(_) if depth > MAX_PLIST_DEPTH => {
                return true;
            }
            plist::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            plist::Value::Dictionary(d) => stack.extend(d.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    false
}

/// Drops a value one level at a time: the recursive drop of a deep one would overflow the stack.
fn dismantle(value: plist::Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            plist::Value::Array(items) => stack.extend(items),
            plist::Value::Dictionary(d) => stack.extend(d.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Every secret in a launchd plist. Fails only when the plist does not parse or nests too deep.
pub fn scan_plist(bytes: &[u8], live: &Live) -> Result<Vec<Embedded>, ScanError> {
    // `from_reader` builds the value without recursing (`plist::from_bytes` recurses per level).
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes))?;
    if too_deep(&value) {
        dismantle(value);
        return Err(ScanError::TooDeep);
    }
    let mut out = Vec::new();
    let Some(d) = value.as_dictionary() else {
        return Ok(out);
    };
    if let Some(vars) = d
        .get("EnvironmentVariables")
        .and_then(plist::Value::as_dictionary)
    {
        for (name, v) in vars {
            if let Some(v) = v.as_string() {
                out.extend(candidate(
                    format!("EnvironmentVariables.{name}"),
                    name,
                    v,
                    live,
                    None,
                    name_looks_secret(name),
                ));
            }
        }
    }
    if let Some(args) = d.get("ProgramArguments").and_then(plist::Value::as_array) {
        let words: Vec<String> = args
            .iter()
            .filter_map(|a| a.as_string().map(str::to_owned))
            .collect();
        scan_args(&words, "ProgramArguments", live, &mut out);
    }
    Ok(out)
}

/// Quotes one `ExecStart=` word: double quotes when needed; `%` and `$` are escaped so systemd
/// neither expands specifiers nor variables in a path.
pub fn systemd_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A unit with the inline environment assignments named in `drop` removed (other settings and
/// comments kept byte for byte). Used where the unit is not ours to regenerate (OpenClaw's).
pub fn systemd_without_vars(text: &str, drop: &[String]) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let Some(value) = body.trim_start().strip_prefix("Environment=") else {
            out.push_str(line);
            continue;
        };
        let words = split_words(value);
        let kept: Vec<&String> = words
            .iter()
            .filter(|w| {
                !w.split_once('=')
                    .is_some_and(|(n, _)| drop.iter().any(|d| d == n))
            })
            .collect();
        if kept.len() == words.len() {
            out.push_str(line);
        } else if !kept.is_empty() {
            let rebuilt: Vec<String> = kept.iter().map(|w| systemd_quote(w)).collect();
            out.push_str(&format!("Environment={}\n", rebuilt.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_inline_file_and_argument_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let envfile = dir.path().join("gw.env");
        std::fs::write(
            &envfile,
            "# c\nexport API_TOKEN=\"canary-envfile-1\"\nPLAIN=1\n",
        )
        .unwrap();
        let unit = format!(
            "[Unit]\nDescription=x Environment=NOT_THIS=canary-a\n[Service]\n\
             Environment=\"DRIFTLESS_GATEWAY_TOKEN=canary-inline-1\" KIND=gateway\n\
             Environment=HARMLESS=canary-live-copy\n\
             EnvironmentFile=-{}\n\
             ExecStart=/bin/gw run \\\n  --token=canary-arg-1 --port 1\n",
            envfile.display()
        );
        let live = vec![(
            "providers.x.api_key".to_string(),
            SecretValue::new("canary-live-copy".into()),
        )];
        let found = scan_systemd(&unit, &Env::default(), &live);
        let locs: Vec<&str> = found.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(found.len(), 4, "{locs:?}");
        assert_eq!(locs[0], "Environment=DRIFTLESS_GATEWAY_TOKEN");
        assert_eq!(found[1].copy_of.as_deref(), Some("providers.x.api_key"));
        assert!(locs[2].ends_with("gw.env: API_TOKEN"));
        assert!(found[2].value.matches("canary-envfile-1"));
        assert_eq!(locs[3], "ExecStart argument --token");
        assert!(found[3].value.matches("canary-arg-1"));
    }

    /// Runs `f` on its own thread and fails the test when it does not return within 10 s (a hang
    /// guard: the scan used to block for ever on a FIFO).
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
    }

    /// Issue 15: an `EnvironmentFile=` that is a FIFO blocked the scan (and `doctor`) for ever in
    /// `open()`, one that is `/dev/zero` read until memory ran out. Each is now refused at once, the
    /// definition is reported as not scanned (naming the file and what it is), and a missing file
    /// still holds nothing.
    #[test]
    fn an_environment_file_that_is_a_fifo_or_a_device_is_reported_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("gw.env");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        for (path, kind) in [
            (fifo.as_path(), "FIFO"),
            (Path::new("/dev/zero"), "character device"),
        ] {
            let unit = format!(
                "[Service]\nEnvironment=API_TOKEN=canary-inline-still-found\nEnvironmentFile={}\n",
                path.display()
            );
            let err = within(&format!("scanning a unit naming {kind}"), move || {
                scan_definition(
                    Format::Systemd,
                    unit.as_bytes(),
                    &Env::default(),
                    &Vec::new(),
                )
                .map(|found| found.len())
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains(kind),
                "{err}"
            );
        }
        let unit = format!(
            "[Service]\nEnvironmentFile=-{}\n",
            dir.path().join("absent.env").display()
        );
        let found = scan_definition(
            Format::Systemd,
            unit.as_bytes(),
            &Env::default(),
            &Vec::new(),
        )
        .unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn removes_only_named_assignments() {
        let unit =
            "[Service]\n# keep\nEnvironment=A=1 \"T=x y\" B=2\nEnvironment=T=z\nExecStart=/x\n";
        let out = systemd_without_vars(unit, &["T".into()]);
        assert_eq!(
            out,
            "[Service]\n# keep\nEnvironment=A=1 B=2\nExecStart=/x\n"
        );
    }

    /// A plist nested deeper than any launchd plist is refused, not parsed: parsing it overflowed
    /// the stack (`doctor` died with SIGSEGV on 20,000 nested arrays).
    #[test]
    fn deeply_nested_plist_is_refused_without_overflowing_the_stack() {
        for (open, close) in [("<array>", "</array>"), ("<dict><key>k</key>", "</dict>")] {
            let plist = format!(
                "<?xml version=\"1.0\"?><plist version=\"1.0\">{}<true/>{}</plist>",
                open.repeat(20_000),
                close.repeat(20_000)
            );
            let err = scan_plist(plist.as_bytes(), &Vec::new()).unwrap_err();
            assert!(matches!(err, ScanError::TooDeep), "{err}");
            // Never closed: a parse error, and no overflow either.
            let plist = format!("<plist version=\"1.0\">{}", open.repeat(20_000));
            let err = scan_plist(plist.as_bytes(), &Vec::new()).unwrap_err();
            assert!(matches!(err, ScanError::Parse(_)), "{err}");
        }
        let ok = format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\">{}<dict><key>ProgramArguments</key>\
             <array><string>--token=canary-deep-ok-1</string></array></dict>{}</plist>",
            "<array>".repeat(MAX_PLIST_DEPTH - 2),
            "</array>".repeat(MAX_PLIST_DEPTH - 2)
        );
        assert!(scan_plist(ok.as_bytes(), &Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn quoting() {
        assert_eq!(systemd_quote("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(systemd_quote("/a b/c"), "\"/a b/c\"");
        assert_eq!(systemd_quote("50%$HOME"), "50%%$$HOME");
        assert_eq!(systemd_quote("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn names() {
        assert!(name_looks_secret("OPENCLAW_GATEWAY_TOKEN"));
        assert!(name_looks_secret("anthropic_api_key"));
        assert!(name_looks_secret("SSH_KEY"));
        assert!(!name_looks_secret("DRIFTLESS_SERVICE_KIND"));
        assert!(!name_looks_secret("KEYBOARD"));
    }
}
