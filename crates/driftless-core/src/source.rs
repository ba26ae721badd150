//! Secret inputs and how each kind of reference is resolved.
//!
//! Every secret field in config takes a [`SecretInput`]: a literal string (discouraged; `doctor`
//! flags it) or a [`SecretRef`] naming the one place the value lives.

use std::borrow::Cow;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
    #[error("environment variable {0} is set but empty (or only whitespace); give it a value")]
    EnvEmpty(String),
    #[error("secret file path: {0}")]
    BadPath(String),
    #[error("secret file {0} does not exist; create it (mode 0600) or fix the path")]
    FileMissing(PathBuf),
    #[error("secret file {path} cannot be read ({reason}); check its owner and permissions")]
    FileUnreadable { path: PathBuf, reason: String },
    #[error("secret file {0} is a directory; point the reference at the file inside it")]
    FileIsDirectory(PathBuf),
    #[error(
        "secret file {path} is {kind}, not a regular file, so it cannot be read as a secret; point the reference at a regular file (mode 0600)"
    )]
    FileNotRegular { path: PathBuf, kind: &'static str },
    #[error("secret file {0} is empty (or only whitespace); write the secret into it")]
    FileEmpty(PathBuf),
    #[error("secret file {0} contains a NUL byte; secrets must be text (is it the right file?)")]
    FileHasNul(PathBuf),
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
    #[error(
        "secret command {program:?} exited, but a process it started still held its standard output after {timeout_ms} ms and was killed; make background processes close or redirect their output"
    )]
    ExecOutputHeld { program: String, timeout_ms: u64 },
    #[error(
        "secret command {0:?} printed nothing (or only whitespace); it must print the secret on standard output"
    )]
    ExecEmptyOutput(String),
    #[error("secret command {0:?} printed a NUL byte; secrets must be text")]
    ExecHasNul(String),
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
        Some(v) if v.trim().is_empty() => Err(ResolveError::EnvEmpty(id.to_owned())),
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
    let (file, meta) = open_regular(path).map_err(|e| match e {
        OpenError::Missing => ResolveError::FileMissing(path.to_owned()),
        OpenError::Directory => ResolveError::FileIsDirectory(path.to_owned()),
        OpenError::NotRegular(kind) => ResolveError::FileNotRegular {
            path: path.to_owned(),
            kind,
        },
        OpenError::Io(e) => unreadable(path, &e),
    })?;
    check_mode(path, &meta)?;
    let too_large = || ResolveError::FileTooLarge {
        path: path.to_owned(),
        size: meta.len(),
    };
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(too_large());
    }
    let bytes = match read_capped_file(file, meta.len(), MAX_SECRET_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(too_large()),
        Err(e) => return Err(unreadable(path, &e)),
    };
    let mut text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(ResolveError::FileNotUtf8(path.to_owned()));
        }
    };
    trim_one_newline(&mut text);
    match check_text(&text) {
        Ok(()) => Ok(SecretValue::new(text)),
        Err(problem) => {
            zeroize::Zeroize::zeroize(&mut text);
            Err(match problem {
                TextProblem::Blank => ResolveError::FileEmpty(path.to_owned()),
                TextProblem::Nul => ResolveError::FileHasNul(path.to_owned()),
            })
        }
    }
}

/// Why a secret's text cannot be a secret.
enum TextProblem {
    /// Empty or only whitespace: nothing a peer could present.
    Blank,
    /// A NUL byte: a binary file, or a padded one.
    Nul,
}

fn check_text(text: &str) -> Result<(), TextProblem> {
    if text.contains('\0') {
        Err(TextProblem::Nul)
    } else if text.trim().is_empty() {
        Err(TextProblem::Blank)
    } else {
        Ok(())
    }
}

/// Why [`open_regular`] refused a path.
#[derive(Debug)]
pub enum OpenError {
    Missing,
    Directory,
    /// A FIFO, socket or device; the kind, for the message ("a FIFO").
    NotRegular(&'static str),
    Io(std::io::Error),
}

/// Opens `path` for reading only if it is a regular file (after following symlinks). The open does
/// not block (a FIFO without a writer would wait forever; `O_NONBLOCK` has no effect on regular
/// files) and the check is made on the opened file, so a swap between check and read is caught.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(OpenError::Missing),
        // A socket cannot be opened at all (ENXIO): name what it is rather than the errno.
        Err(e) => {
            return Err(match std::fs::metadata(path) {
                Ok(m) if !m.is_file() && !m.is_dir() => OpenError::NotRegular(kind_of(&m)),
                _ => OpenError::Io(e),
            });
        }
    };
    let meta = file.metadata().map_err(OpenError::Io)?;
    if meta.is_dir() {
        return Err(OpenError::Directory);
    }
    if !meta.is_file() {
        return Err(OpenError::NotRegular(kind_of(&meta)));
    }
    Ok((file, meta))
}

fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Reads an opened regular file of `len` bytes (its size when checked), at most `max` bytes.
/// `None` if it holds more (it grew since, or it is a special file that reports size 0), with what
/// was read already zeroed.
pub fn read_capped_file(file: File, len: u64, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::with_capacity(len.min(max as u64) as usize);
    if let Err(e) = file.take(max as u64 + 1).read_to_end(&mut bytes) {
        zeroize::Zeroize::zeroize(&mut bytes);
        return Err(e);
    }
    if bytes.len() > max {
        zeroize::Zeroize::zeroize(&mut bytes);
        return Ok(None);
    }
    Ok(Some(bytes))
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

/// Runs the command in its own process group. The deadline covers everything the command
/// starts: at `timeout` the whole group is killed, and reading stops even if a process that left
/// the group still holds the output pipe (its reader thread is abandoned, not waited for).
fn resolve_exec(command: &[String], timeout: Duration) -> Result<SecretValue, ResolveError> {
    let Some(program) = command.first().filter(|p| !p.is_empty()) else {
        return Err(ResolveError::ExecEmptyCommand);
    };
    let deadline = Instant::now() + timeout;
    let timeout_ms = timeout.as_millis() as u64;
    let mut child = Command::new(program)
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ResolveError::ExecNotFound(program.clone()),
            _ => ResolveError::ExecSpawn {
                program: program.clone(),
                reason: e.kind().to_string(),
            },
        })?;
    let group = rustix::process::Pid::from_child(&child);
    let kill_group = |child: &mut std::process::Child| {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = child.kill();
        let _ = child.wait();
    };
    // Drain both pipes on threads so a chatty child cannot block on a full pipe (and so the cap
    // holds even if it never exits).
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || out_tx.send(read_capped(stdout)));
    std::thread::spawn(move || err_tx.send(read_capped(stderr)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                return Err(ResolveError::ExecTimeout {
                    program: program.clone(),
                    timeout_ms,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill_group(&mut child);
                return Err(ResolveError::ExecSpawn {
                    program: program.clone(),
                    reason: e.kind().to_string(),
                });
            }
        }
    };
    // The command exited; its output is complete only when every holder of the pipes closed them.
    let wait = |rx: &mpsc::Receiver<Captured>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    };
    let (Some(out), Some(err)) = (wait(&out_rx), wait(&err_rx)) else {
        kill_group(&mut child);
        return Err(ResolveError::ExecOutputHeld {
            program: program.clone(),
            timeout_ms,
        });
    };
    let (mut out, out_overflow) = (out.bytes, out.overflow);
    if !status.success() {
        zeroize::Zeroize::zeroize(&mut *out);
        let first = String::from_utf8_lossy(&err.bytes).lines().next().map(|l| {
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
        return Err(ResolveError::ExecOutputTooLarge(program.clone()));
    }
    let mut text = match String::from_utf8(std::mem::take(&mut *out)) {
        Ok(t) => t,
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(ResolveError::ExecNotUtf8(program.clone()));
        }
    };
    trim_one_newline(&mut text);
    match check_text(&text) {
        Ok(()) => Ok(SecretValue::new(text)),
        Err(problem) => {
            zeroize::Zeroize::zeroize(&mut text);
            Err(match problem {
                TextProblem::Blank => ResolveError::ExecEmptyOutput(program.clone()),
                TextProblem::Nul => ResolveError::ExecHasNul(program.clone()),
            })
        }
    }
}

/// What a reader thread collected from one pipe. The bytes are zeroed when dropped, including
/// when the thread outlives the resolution (a pipe held past the deadline).
struct Captured {
    bytes: zeroize::Zeroizing<Vec<u8>>,
    overflow: bool,
}

/// Reads up to the cap, then keeps draining (discarding) so the child is never blocked.
fn read_capped(mut r: impl Read) -> Captured {
    // Allocated once at the cap, so growing never leaves an unzeroed copy behind.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES));
    let mut chunk = zeroize::Zeroizing::new([0u8; 8192]);
    let mut overflow = false;
    loop {
        match r.read(&mut chunk[..]) {
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
    Captured {
        bytes: buf,
        overflow,
    }
}
