//! An existing OpenClaw installation: where it keeps things, what it holds, and the few careful
//! writes doctor's OpenClaw checks make (`doctor/openclaw_checks.rs`; repairs only when asked,
//! `doctor --fix --openclaw`).
//!
//! Facts from the shared design `openclaw-credentials.md`: the config is `~/.openclaw/openclaw.json`
//! (JSON5; `OPENCLAW_STATE_DIR`/`OPENCLAW_CONFIG_PATH` override), the service is
//! `openclaw-gateway.service` or the `ai.openclaw.gateway` LaunchAgent, provider keys live in
//! `agents/*/agent/auth-profiles.json`, and a SecretRef is exactly `{source, provider, id}`.
//! OpenClaw itself rewrites its files as plain JSON (comments are not kept), mode 0600, and takes
//! `<file>.lock` (created exclusively) before touching an auth-profiles file; so do we.

use std::path::{Path, PathBuf};

use driftless_core::{Env, SecretValue, atomic};
use serde_json::{Map, Value, json};

use crate::backup::{self, BackupError};
use crate::file_error::FileError;
use crate::findings::Action;
use crate::scan::{self, Embedded, Format, Live};

/// OpenClaw's gateway token variable.
pub const GATEWAY_TOKEN_ENV: &str = "OPENCLAW_GATEWAY_TOKEN";
pub(crate) const UNIT: &str = "openclaw-gateway.service";
const LABEL: &str = "ai.openclaw.gateway";
/// The file SecretRef provider doctor declares for keys it moves out of auth profiles. It cannot
/// be `default`: that name is OpenClaw's implicit *env* provider, and a file provider needs a path.
pub const FILE_PROVIDER: &str = "driftless";

#[derive(Debug, thiserror::Error)]
pub enum OpenClawError {
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{0} exists: OpenClaw is writing this file right now (or crashed while doing so); retry, or delete the \
         lock if no OpenClaw process runs"
    )]
    Locked(PathBuf),
    #[error("{0}; the file was left unchanged, fix it by hand first")]
    Unparsable(String),
}

/// Where an OpenClaw installation keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub unit: PathBuf,
    pub plist: PathBuf,
}

/// The JSON file doctor moves plaintext auth-profile secrets into (declared as the `driftless`
/// file provider).
pub(crate) fn secrets_store(paths: &Paths) -> PathBuf {
    paths.state_dir.join("secrets/driftless-auth-profiles.json")
}

/// OpenClaw's paths for this environment.
pub fn locate(env: &Env) -> Paths {
    let home = PathBuf::from(
        env.non_empty("OPENCLAW_HOME")
            .or(env.non_empty("HOME"))
            .unwrap_or("/"),
    );
    let state_dir = env
        .non_empty("OPENCLAW_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".openclaw"));
    let config = env
        .non_empty("OPENCLAW_CONFIG_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir.join("openclaw.json"));
    let unit_dir = driftless_core::paths::xdg_var(env, "XDG_CONFIG_HOME")
        .unwrap_or_else(|| home.join(".config"))
        .join("systemd/user");
    Paths {
        state_dir,
        config,
        unit: unit_dir.join(UNIT),
        plist: home
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist")),
    }
}

pub(crate) struct ProfileFile {
    pub path: PathBuf,
    pub agent: String,
    pub json: Value,
}

pub(crate) struct Install {
    pub paths: Paths,
    pub config: Option<Value>,
    pub profiles: Vec<ProfileFile>,
    /// Auth profiles OpenClaw holds elsewhere, read only (see [`HeldProfiles`]).
    pub held: Vec<HeldProfiles>,
    live: Live,
}

/// Auth profiles OpenClaw 2026.9 holds where doctor only reads: its SQLite stores (it imports
/// `auth-profiles.json` into them and reads only those at runtime; OpenClaw owns the databases, so
/// `openclaw models auth logout` is the way to remove a profile) and the archives its import
/// leaves beside the old file (`auth-profiles.json.migrated-*`).
pub(crate) struct HeldProfiles {
    /// Where, as a finding names it.
    pub place: String,
    /// A file of OpenClaw's import (to be deleted), not a database row.
    pub archive: bool,
    /// The agent whose own database it is (`None`: the machine's).
    pub agent: Option<String>,
    pub json: Value,
}

/// The rows of `sql` (key, JSON text) in the SQLite database `db`, opened read-only. A database
/// that is missing, locked past a second or of another schema holds nothing for doctor.
fn held_in_database(db: &Path, agent: Option<&str>, table: &str, sql: &str) -> Vec<HeldProfiles> {
    use rusqlite::{Connection, OpenFlags};
    if !db.is_file() {
        return Vec::new();
    }
    let Ok(conn) = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(1));
    let Ok(mut stmt) = conn.prepare(sql) else {
        return Vec::new();
    };
    let Ok(rows) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
    else {
        return Vec::new();
    };
    rows.flatten()
        .filter_map(|(key, text)| {
            Some(HeldProfiles {
                place: format!("{} ({table} {key})", db.display()),
                archive: false,
                agent: agent.map(str::to_owned),
                json: serde_json::from_str(&text).ok()?,
            })
        })
        .collect()
}

/// Every [`HeldProfiles`] under `state_dir`; `agent_dirs` are the `agents/<id>` folders.
fn held_profiles(state_dir: &Path, agent_dirs: &[PathBuf]) -> Vec<HeldProfiles> {
    let mut out = held_in_database(
        &state_dir.join("state/openclaw.sqlite"),
        None,
        "config_machine_state",
        "SELECT state_key, value_json FROM config_machine_state WHERE state_key LIKE 'authProfiles.store%'",
    );
    for dir in agent_dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let agent = dir.join("agent");
        out.extend(held_in_database(
            &agent.join("openclaw-agent.sqlite"),
            name.as_deref(),
            "auth_profile_store",
            "SELECT store_key, store_json FROM auth_profile_store",
        ));
        let Ok(entries) = std::fs::read_dir(&agent) else {
            continue;
        };
        let mut archives: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with("auth-profiles.json.migrated-")
                })
            })
            .collect();
        archives.sort();
        for path in archives {
            if let Ok(Some(json)) = parse_json5(&path) {
                out.push(HeldProfiles {
                    place: path.display().to_string(),
                    archive: true,
                    agent: name.clone(),
                    json,
                });
            }
        }
    }
    out
}

/// Deepest nesting accepted in a JSON5 file. OpenClaw's nest a handful of levels; the JSON5 parser
/// recurses once per level, so 100,000 nested `[` (200 KB) overflowed the stack.
const MAX_JSON5_DEPTH: usize = 128;

/// The deepest `[`/`{` nesting of JSON5 text, outside strings and comments.
fn json5_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                while let Some(s) = chars.next() {
                    if s == '\\' {
                        chars.next();
                    } else if s == c {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                chars.find(|&s| s == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for s in chars.by_ref() {
                    if prev == '*' && s == '/' {
                        break;
                    }
                    prev = s;
                }
            }
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses JSON5; the error names the line and column and never quotes the text.
pub(crate) fn parse_json5(path: &Path) -> Result<Option<Value>, String> {
    let text = match crate::input::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if json5_depth(&text) > MAX_JSON5_DEPTH {
        return Err(format!(
            "{}: nests deeper than {MAX_JSON5_DEPTH} levels, which no OpenClaw file does",
            path.display()
        ));
    }
    json5::from_str::<Value>(&text).map(Some).map_err(|e| {
        let pos = e
            .position()
            .map(|p| format!(":{}:{}", p.line + 1, p.column + 1))
            .unwrap_or_default();
        let what = e
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "invalid JSON5".into());
        format!("{}{pos}: {what}", path.display())
    })
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The plaintext secret fields of a profile and the ref field each one moves to.
pub(crate) const PROFILE_FIELDS: &[(&str, &str)] = &[("key", "keyRef"), ("token", "tokenRef")];

pub(crate) fn load(paths: Paths, env: &Env) -> Result<Install, String> {
    let config = parse_json5(&paths.config)?;
    let mut profiles = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(agents) = std::fs::read_dir(paths.state_dir.join("agents")) {
        dirs = agents.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for dir in &dirs {
            let path = dir.join("agent/auth-profiles.json");
            if let Some(json) = parse_json5(&path)? {
                let agent = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                profiles.push(ProfileFile { path, agent, json });
            }
        }
    }
    let mut live: Live = config
        .as_ref()
        .map(config_secrets_named)
        .unwrap_or_default();
    for pf in &profiles {
        for p in plaintext_secrets(&pf.json) {
            live.push((format!("auth profile {} {}", p.id, p.field), p.value));
        }
    }
    if let Some(v) = env.non_empty(GATEWAY_TOKEN_ENV) {
        live.push((GATEWAY_TOKEN_ENV.into(), SecretValue::new(v.into())));
    }
    let held = held_profiles(&paths.state_dir, &dirs);
    Ok(Install {
        paths,
        config,
        profiles,
        held,
        live,
    })
}

/// The plaintext gateway credentials in openclaw.json, by field.
fn config_secrets_named(config: &Value) -> Live {
    [
        ["gateway", "auth", "token"],
        ["gateway", "auth", "password"],
        ["gateway", "remote", "token"],
        ["gateway", "remote", "password"],
    ]
    .iter()
    .filter_map(|field| {
        let v = str_at(config, field).filter(|v| !v.is_empty())?;
        Some((
            format!("openclaw.json {}", field.join(".")),
            SecretValue::new(v.into()),
        ))
    })
    .collect()
}

pub(crate) fn config_secrets(config: &Value) -> Vec<SecretValue> {
    config_secrets_named(config)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

pub(crate) fn profile_entries(json: &Value) -> Vec<(String, &Map<String, Value>)> {
    json.get("profiles")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(id, p)| p.as_object().map(|o| (id.clone(), o)))
                .collect()
        })
        .unwrap_or_default()
}

/// A service definition of OpenClaw's and the secrets in it.
pub(crate) struct Def {
    pub format: Format,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub embedded: Vec<Embedded>,
}

/// OpenClaw's service definitions that exist (a plist that does not parse counts as holding none).
pub(crate) fn definitions(inst: &Install, env: &Env) -> Vec<Def> {
    [
        (Format::Systemd, &inst.paths.unit),
        (Format::Plist, &inst.paths.plist),
    ]
    .into_iter()
    .filter_map(|(format, path)| {
        let bytes = crate::input::read(path).ok()?;
        let embedded = scan::scan_definition(format, &bytes, env, &inst.live).unwrap_or_default();
        Some(Def {
            format,
            path: path.clone(),
            bytes,
            embedded,
        })
    })
    .collect()
}

impl Def {
    /// The secrets doctor removes from this definition, or none while the gateway token in it has
    /// no other home yet (it is persisted into openclaw.json first).
    pub(crate) fn removals(&self, inst: &Install) -> Vec<&Embedded> {
        let gone: Vec<&Embedded> = self.embedded.iter().filter(|e| removable(e)).collect();
        if gone.iter().any(|e| e.name == GATEWAY_TOKEN_ENV) && !has_gateway_token(inst) {
            return Vec::new();
        }
        gone
    }

    /// The gateway token this definition holds that openclaw.json lacks, which is to be persisted
    /// there before it is removed here.
    pub(crate) fn token_to_persist(&self, inst: &Install) -> Option<&Embedded> {
        if has_gateway_token(inst) {
            return None;
        }
        self.embedded
            .iter()
            .find(|e| e.name == GATEWAY_TOKEN_ENV && removable(e))
    }

    /// The definition without the inline variables `names`; `None` for a plist that does not parse.
    pub(crate) fn without(&self, names: &[String]) -> Option<Vec<u8>> {
        match self.format {
            Format::Systemd => Some(
                scan::systemd_without_vars(&String::from_utf8_lossy(&self.bytes), names)
                    .into_bytes(),
            ),
            Format::Plist => {
                let mut v = plist::from_bytes::<plist::Value>(&self.bytes).ok()?;
                if let Some(vars) = v
                    .as_dictionary_mut()
                    .and_then(|d| d.get_mut("EnvironmentVariables"))
                    .and_then(plist::Value::as_dictionary_mut)
                {
                    for n in names {
                        vars.remove(n);
                    }
                }
                let mut out = Vec::new();
                plist::to_writer_xml(&mut out, &v).expect("writing to a Vec");
                Some(out)
            }
        }
    }
}

/// A plaintext secret in an auth profile: `profiles.<id>.<field>`, which moves to `ref_field`.
pub(crate) struct PlainProfileSecret {
    pub id: String,
    pub field: &'static str,
    pub ref_field: &'static str,
    pub value: SecretValue,
    pub provider: String,
}

/// Every plaintext secret in an auth-profiles file, in order.
pub(crate) fn plaintext_secrets(json: &Value) -> Vec<PlainProfileSecret> {
    let mut out = Vec::new();
    for (id, p) in profile_entries(json) {
        for (field, ref_field) in PROFILE_FIELDS {
            if let Some(v) = p
                .get(*field)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            {
                out.push(PlainProfileSecret {
                    id: id.clone(),
                    field,
                    ref_field,
                    value: SecretValue::new(v.to_owned()),
                    provider: p
                        .get("provider")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
            }
        }
    }
    out
}

/// Only inline environment entries are removed automatically; OpenClaw's installer owns the rest
/// of its unit.
pub(crate) fn removable(e: &Embedded) -> bool {
    e.env_file.is_none()
        && (e.location.starts_with("Environment=")
            || e.location.starts_with("EnvironmentVariables."))
        && (e.copy_of.is_some() || e.name == GATEWAY_TOKEN_ENV)
}

pub(crate) fn has_gateway_token(inst: &Install) -> bool {
    inst.config
        .as_ref()
        .and_then(|c| c.get("gateway")?.get("auth")?.get("token"))
        .is_some_and(|t| !t.is_null())
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<(), OpenClawError> {
    let mut text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    text.push('\n');
    atomic::write_private(path, text.as_bytes())?;
    Ok(())
}

/// Holds OpenClaw's `<file>.lock` while we edit `<file>`.
pub(crate) struct Lock(PathBuf);

impl Lock {
    pub(crate) fn take(file: &Path) -> Result<Lock, OpenClawError> {
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => Ok(Lock(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(OpenClawError::Locked(path))
            }
            Err(e) => Err(FileError::of("lock", &path)(e).into()),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The env var OpenClaw's convention reads a provider's key from (`<PROVIDER>_API_KEY`).
pub(crate) fn provider_env_var(provider: &str) -> String {
    let p: String = provider
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{p}_API_KEY")
}

pub(crate) fn json_pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Adds `value` at `/<agent>/<profile>` of the JSON secrets file (0600), keeping what is there.
pub(crate) fn store_secret(
    store: &Path,
    agent: &str,
    id: &str,
    value: &SecretValue,
) -> Result<(), OpenClawError> {
    // A store that does not parse is never overwritten: it may hold the only copy of other keys.
    let mut json = match parse_json5(store) {
        Ok(Some(v)) => v,
        Ok(None) => json!({}),
        Err(e) => return Err(OpenClawError::Unparsable(e)),
    };
    if let Some(a) = json
        .as_object_mut()
        .and_then(|root| object_at(root, &[agent]))
    {
        a.insert(id.into(), Value::String(value.expose().to_owned()));
    }
    if let Some(dir) = store.parent() {
        atomic::create_private_dir(dir).map_err(FileError::of("create", dir))?;
    }
    write_json(store, &json)
}

/// The object at `keys` under `root`, created (as `{}`) where missing; `None` where a value on the
/// way is not an object.
pub(crate) fn object_at<'a>(
    root: &'a mut Map<String, Value>,
    keys: &[&str],
) -> Option<&'a mut Map<String, Value>> {
    keys.iter().try_fold(root, |obj, k| {
        obj.entry(*k).or_insert_with(|| json!({})).as_object_mut()
    })
}

/// Applies `edit` to `config` (openclaw.json, at `path`) and writes it, after a backup. The new
/// file keeps every value the old one held, so the backup need not hold them too.
pub(crate) fn edit_config(
    path: &Path,
    config: &mut Value,
    did: String,
    edit: impl FnOnce(&mut Map<String, Value>),
) -> Result<Action, OpenClawError> {
    let before = config.clone();
    if let Some(root) = config.as_object_mut() {
        edit(root);
    }
    replace_config(path, &before, config, &[], did)
}

/// Writes `wanted` as openclaw.json (at `path`, holding `current`) after a backup of it in which
/// the gateway credentials it keeps and `removed` (the values the change drops) appear as
/// fingerprints: a backup never becomes a second copy.
pub(crate) fn replace_config(
    path: &Path,
    current: &Value,
    wanted: &Value,
    removed: &[&SecretValue],
    did: String,
) -> Result<Action, OpenClawError> {
    let kept = config_secrets(current);
    let mut redacted: Vec<&SecretValue> = kept.iter().collect();
    redacted.extend_from_slice(removed);
    let bak = backup::backup(path, &redacted)?;
    write_json(path, wanted)?;
    Ok(Action::changed(did, path.to_owned(), Some(bak)))
}

/// Writes `token` as `gateway.auth.token` of openclaw.json (`config`, at `path`), backed up first.
pub(crate) fn persist_gateway_token(
    path: &Path,
    config: &mut Value,
    token: &SecretValue,
    did: String,
) -> Result<Action, OpenClawError> {
    edit_config(path, config, did, |root| {
        if let Some(auth) = object_at(root, &["gateway", "auth"]) {
            auth.insert("token".into(), Value::String(token.expose().to_owned()));
        }
    })
}

/// Declares `secrets.providers.driftless` (a JSON file provider at `store`) in openclaw.json if
/// missing. False when there is no openclaw.json to declare it in.
pub(crate) fn declare_file_provider(
    path: &Path,
    config: &mut Option<Value>,
    store: &Path,
    actions: &mut Vec<Action>,
) -> Result<bool, OpenClawError> {
    let Some(config) = config.as_mut() else {
        return Ok(false);
    };
    let wanted = json!({"source": "file", "path": store.to_string_lossy(), "mode": "json"});
    if config.pointer(&format!("/secrets/providers/{FILE_PROVIDER}")) == Some(&wanted) {
        return Ok(true);
    }
    let did = format!(
        "declared the `{FILE_PROVIDER}` file secret provider in {}",
        path.display()
    );
    actions.push(edit_config(path, config, did, |root| {
        if let Some(providers) = object_at(root, &["secrets", "providers"]) {
            providers.insert(FILE_PROVIDER.into(), wanted);
        }
    })?);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file nested deeper than any OpenClaw file is refused before the JSON5 parser, which
    /// recurses once per level, sees it (`doctor` died with SIGSEGV on 100,000 nested `[`).
    #[test]
    fn deeply_nested_json5_is_refused_without_overflowing_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openclaw.json");
        for open in ["[", "{a:"] {
            std::fs::write(&path, open.repeat(100_000)).unwrap();
            let err = parse_json5(&path).unwrap_err();
            assert!(err.contains("deeper than"), "{err}");
        }
        // Brackets inside strings and comments are not nesting.
        let deep_text = "[{".repeat(200);
        let text = format!(
            "// {deep_text}\n{{ a: '{deep_text}', /* {deep_text} */ b: \"{deep_text}\\\"\", c: [[1]] }}"
        );
        std::fs::write(&path, &text).unwrap();
        let v = parse_json5(&path).unwrap().unwrap();
        assert_eq!(v["c"], json!([[1]]));
    }
}
