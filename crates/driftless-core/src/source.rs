//! Secret inputs and how each kind of reference is resolved.
//!
//! Every secret field in config takes a [`SecretInput`]: a literal string (discouraged; `doctor`
//! flags it) or a [`SecretRef`] naming the one place the value lives.

use std::borrow::Cow;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Env, SecretValue, redact};

/// Largest secret a file or command may produce.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Default time a secret command may run.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 2000;

/// A reference to where a secret lives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable of the resolving process. It cannot change while that process lives.
    Env { id: String },
    /// A whole file; one trailing newline is trimmed. `~` and `${VAR}` are expanded in the path.
    File { path: String },
    /// The standard output of a command (argv, no shell), killed after `timeout_ms`.
    Exec {
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// What a secret field in config holds.
#[derive(Clone)]
pub enum SecretInput {
    /// A value written into the config itself.
    Literal(SecretValue),
    Ref(SecretRef),
}

impl SecretInput {
    /// A short description for tables: `literal`, `env:NAME`, `file:/path`, `exec:cmd`.
    pub fn describe(&self) -> String {
        match self {
            SecretInput::Literal(_) => "literal (in config)".into(),
            SecretInput::Ref(SecretRef::Env { id }) => format!("env:{id}"),
            SecretInput::Ref(SecretRef::File { path }) => format!("file:{path}"),
            SecretInput::Ref(SecretRef::Exec { command, .. }) => {
                format!("exec:{}", command.first().map(String::as_str).unwrap_or(""))
            }
        }
    }

    /// The kind of source: `literal`, `env`, `file` or `exec`.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretInput::Literal(_) => "literal",
            SecretInput::Ref(SecretRef::Env { .. }) => "env",
            SecretInput::Ref(SecretRef::File { .. }) => "file",
            SecretInput::Ref(SecretRef::Exec { .. }) => "exec",
        }
    }

    /// Whether the value can change while a process that resolved it keeps running.
    pub fn can_change_live(&self) -> bool {
        !matches!(self, SecretInput::Ref(SecretRef::Env { .. }))
    }

    /// The file this input reads, expanded, if it is a file reference.
    pub fn file_path(&self, env: &Env, base: &Path) -> Option<Result<PathBuf, ResolveError>> {
        match self {
            SecretInput::Ref(SecretRef::File { path }) => Some(expand_file_path(path, env, base)),
            _ => None,
        }
    }

    /// Resolves the input. `base` is the directory relative file paths are taken from (the config's).
    pub fn resolve(&self, env: &Env, base: &Path) -> Result<SecretValue, ResolveError> {
        match self {
            SecretInput::Literal(v) => Ok(v.clone()),
            SecretInput::Ref(SecretRef::Env { id }) => resolve_env(id, env),
            SecretInput::Ref(SecretRef::File { path }) => {
                let path = expand_file_path(path, env, base)?;
                resolve_file(&path)
            }
            SecretInput::Ref(SecretRef::Exec {
                command,
                timeout_ms,
            }) => resolve_exec(
                command,
                Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS)),
            ),
        }
    }
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretInput::Literal(v) => write!(f, "Literal({})", v.fingerprint()),
            SecretInput::Ref(r) => write!(f, "{r:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretInput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a string, or a reference such as { source = \"file\", path = \"...\" }, \
                     { source = \"env\", id = \"...\" } or { source = \"exec\", command = [...] }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretInput, E> {
                Ok(SecretInput::Literal(SecretValue::new(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<SecretInput, E> {
                Ok(SecretInput::Literal(SecretValue::new(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretInput, A::Error> {
                SecretRef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(SecretInput::Ref)
            }
        }
        d.deserialize_any(V)
    }
}

/// How `config show` and `--json` output print an input: references as they are, literals as a
/// fingerprint only.
impl Serialize for SecretInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SecretInput::Ref(r) => r.serialize(s),
            SecretInput::Literal(v) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("source", "literal")?;
                m.serialize_entry("fingerprint", v.fingerprint())?;
                m.end()
            }
        }
    }
}

impl schemars::JsonSchema for SecretInput {
    fn schema_name() -> Cow<'static, str> {
        "SecretInput".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A secret: a literal string (discouraged) or a reference to its one source",
            "oneOf": [
                { "type": "string" },
                { "type": "object", "additionalProperties": false, "required": ["source", "id"],
                  "properties": { "source": { "const": "env" }, "id": { "type": "string", "minLength": 1 } } },
                { "type": "object", "additionalProperties": false, "required": ["source", "path"],
                  "properties": { "source": { "const": "file" }, "path": { "type": "string", "minLength": 1 } } },
                { "type": "object", "additionalProperties": false, "required": ["source", "command"],
                  "properties": { "source": { "const": "exec" },
                                  "command": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                                  "timeout_ms": { "type": "integer", "minimum": 1 } } }
            ]
        })
    }
}

/// Why a secret could not be resolved. Messages name the source and the fix, never the value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error("environment variable {0} is not set; export it or point the reference at a file")]
    EnvUnset(String),
    #[error("environment variable {0} is set but empty; give it a value")]
    EnvEmpty(String),
    #[error("secret file path: {0}")]
    BadPath(String),
    #[error("secret file {0} does not exist; create it (mode 0600) or fix the path")]
    FileMissing(PathBuf),
    #[error("secret file {path} cannot be read ({reason}); check its owner and permissions")]
    FileUnreadable { path: PathBuf, reason: String },
    #[error("secret file {0} is a directory; point the reference at the file inside it")]
    FileIsDirectory(PathBuf),
    #[error("secret file {0} is empty; write the secret into it")]
    FileEmpty(PathBuf),
    #[error(
        "secret file {path} is {size} bytes, over the {MAX_SECRET_BYTES}-byte limit; is it the right file?"
    )]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("secret file {path} is readable by {who} (mode {mode:04o}); run `chmod 600 {path}`")]
    FileTooOpen {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("secret file {0} is not valid UTF-8; secrets must be text")]
    FileNotUtf8(PathBuf),
    #[error("secret command is empty; give `command` at least the program to run")]
    ExecEmptyCommand,
    #[error("secret command {0:?} was not found; install it or use an absolute path")]
    ExecNotFound(String),
    #[error("secret command {program:?} could not start: {reason}")]
    ExecSpawn { program: String, reason: String },
    #[error("secret command {program:?} exited with {status}{}", stderr.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    ExecFailed {
        program: String,
        status: String,
        stderr: Option<String>,
    },
    #[error(
        "secret command {program:?} did not finish within {timeout_ms} ms and was killed; raise timeout_ms or fix the command"
    )]
    ExecTimeout { program: String, timeout_ms: u64 },
    #[error("secret command {0:?} printed nothing; it must print the secret on standard output")]
    ExecEmptyOutput(String),
    #[error(
        "secret command {0:?} printed more than {MAX_SECRET_BYTES} bytes; is it the right command?"
    )]
    ExecOutputTooLarge(String),
    #[error("secret command {0:?} printed invalid UTF-8; secrets must be text")]
    ExecNotUtf8(String),
}

fn resolve_env(id: &str, env: &Env) -> Result<SecretValue, ResolveError> {
    match env.get(id) {
        None => Err(ResolveError::EnvUnset(id.to_owned())),
        Some("") => Err(ResolveError::EnvEmpty(id.to_owned())),
        Some(v) => Ok(SecretValue::new(v.to_owned())),
    }
}

/// Expands `~`/`${VAR}` and makes a relative path relative to `base`.
pub fn expand_file_path(raw: &str, env: &Env, base: &Path) -> Result<PathBuf, ResolveError> {
    let p = crate::paths::expand(raw, env).map_err(ResolveError::BadPath)?;
    Ok(if p.is_relative() { base.join(p) } else { p })
}

/// Trims exactly one trailing newline (`\n` or `\r\n`).
fn trim_one_newline(s: &mut String) {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
}

/// Reads a secret file, refusing anything that is not a small, private, non-empty text file.
pub fn resolve_file(path: &Path) -> Result<SecretValue, ResolveError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ResolveError::FileMissing(path.to_owned()));
        }
        Err(e) => return Err(unreadable(path, &e)),
    };
    if meta.is_dir() {
        return Err(ResolveError::FileIsDirectory(path.to_owned()));
    }
    check_mode(path, &meta)?;
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(ResolveError::FileTooLarge {
            path: path.to_owned(),
            size: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| unreadable(path, &e))?;
    if bytes.len() > MAX_SECRET_BYTES {
        zeroize::Zeroize::zeroize(&mut bytes);
        return Err(ResolveError::FileTooLarge {
            path: path.to_owned(),
            size: meta.len(),
        });
    }
    let mut text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(ResolveError::FileNotUtf8(path.to_owned()));
        }
    };
    trim_one_newline(&mut text);
    if text.is_empty() {
        return Err(ResolveError::FileEmpty(path.to_owned()));
    }
    Ok(SecretValue::new(text))
}

fn unreadable(path: &Path, e: &std::io::Error) -> ResolveError {
    ResolveError::FileUnreadable {
        path: path.to_owned(),
        reason: e.kind().to_string(),
    }
}

/// Files we own must be private (0600 or stricter). A group-readable file owned by *another* user
/// is accepted: that is how Kubernetes mounts a Secret for a non-root pod (root-owned, mode 0440,
/// group = fsGroup), and the reader cannot chmod it anyway. World-readable is always refused.
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), ResolveError> {
    let mode = meta.permissions().mode() & 0o777;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    let who = if mode & 0o007 != 0 {
        Some("others")
    } else if mode & 0o070 != 0 && ours {
        Some("its group")
    } else {
        None
    };
    match who {
        Some(who) => Err(ResolveError::FileTooOpen {
            path: path.to_owned(),
            who,
            mode,
        }),
        None => Ok(()),
    }
}

fn resolve_exec(command: &[String], timeout: Duration) -> Result<SecretValue, ResolveError> {
    let Some(program) = command.first().filter(|p| !p.is_empty()) else {
        return Err(ResolveError::ExecEmptyCommand);
    };
    let mut child = Command::new(program)
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ResolveError::ExecNotFound(program.clone()),
            _ => ResolveError::ExecSpawn {
                program: program.clone(),
                reason: e.kind().to_string(),
            },
        })?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe (and so the cap
    // holds even if it never exits).
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || read_capped(stdout));
    let err_reader = std::thread::spawn(move || read_capped(stderr));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ResolveError::ExecTimeout {
                    program: program.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(ResolveError::ExecSpawn {
                    program: program.clone(),
                    reason: e.kind().to_string(),
                });
            }
        }
    };
    let (mut out, out_overflow) = out_reader.join().unwrap_or_default();
    let (err, _) = err_reader.join().unwrap_or_default();
    if !status.success() {
        zeroize::Zeroize::zeroize(&mut out);
        let first = String::from_utf8_lossy(&err).lines().next().map(|l| {
            let l: String = l.chars().take(200).collect();
            redact::redact(&l).into_owned()
        });
        return Err(ResolveError::ExecFailed {
            program: program.clone(),
            status: status.to_string(),
            stderr: first.filter(|l| !l.trim().is_empty()),
        });
    }
    if out_overflow {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(ResolveError::ExecOutputTooLarge(program.clone()));
    }
    let mut text = match String::from_utf8(out) {
        Ok(t) => t,
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(ResolveError::ExecNotUtf8(program.clone()));
        }
    };
    trim_one_newline(&mut text);
    if text.is_empty() {
        return Err(ResolveError::ExecEmptyOutput(program.clone()));
    }
    Ok(SecretValue::new(text))
}

/// Reads up to the cap, then keeps draining (discarding) so the child is never blocked.
fn read_capped(mut r: impl Read) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut overflow = false;
    loop {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.len() + n > MAX_SECRET_BYTES {
                    overflow = true;
                } else {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (buf, overflow)
}
