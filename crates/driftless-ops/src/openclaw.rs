//! An existing OpenClaw installation, audited with the same checks as driftless's own, and
//! repaired only when asked (`doctor --fix --openclaw`).
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
use crate::doctor::{Action, Row, chmod_600, too_open};
use crate::scan::{self, Embedded, Live};

/// OpenClaw's gateway token variable.
pub const GATEWAY_TOKEN_ENV: &str = "OPENCLAW_GATEWAY_TOKEN";
const UNIT: &str = "openclaw-gateway.service";
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
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} exists: OpenClaw is writing this file right now (or crashed while doing so); retry, or delete the \
         lock if no OpenClaw process runs"
    )]
    Locked(PathBuf),
}

/// Where an OpenClaw installation keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub unit: PathBuf,
    pub plist: PathBuf,
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
    let unit_dir = env
        .non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
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

struct ProfileFile {
    path: PathBuf,
    agent: String,
    json: Value,
}

struct Install {
    paths: Paths,
    config: Option<Value>,
    profiles: Vec<ProfileFile>,
    live: Live,
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
fn parse_json5(path: &Path) -> Result<Option<Value>, String> {
    let text = match std::fs::read_to_string(path) {
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

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The plaintext secret fields of a profile and the ref field each one moves to.
const PROFILE_FIELDS: &[(&str, &str)] = &[("key", "keyRef"), ("token", "tokenRef")];

fn load(paths: Paths, env: &Env) -> Result<Install, String> {
    let config = parse_json5(&paths.config)?;
    let mut profiles = Vec::new();
    if let Ok(agents) = std::fs::read_dir(paths.state_dir.join("agents")) {
        let mut dirs: Vec<PathBuf> = agents.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for dir in dirs {
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
        for (id, p) in profile_entries(&pf.json) {
            for (field, _) in PROFILE_FIELDS {
                if let Some(v) = p
                    .get(*field)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                {
                    live.push((
                        format!("auth profile {id} {field}"),
                        SecretValue::new(v.into()),
                    ));
                }
            }
        }
    }
    if let Some(v) = env.non_empty(GATEWAY_TOKEN_ENV) {
        live.push((GATEWAY_TOKEN_ENV.into(), SecretValue::new(v.into())));
    }
    Ok(Install {
        paths,
        config,
        profiles,
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

fn config_secrets(config: &Value) -> Vec<SecretValue> {
    config_secrets_named(config)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn profile_entries(json: &Value) -> Vec<(String, &Map<String, Value>)> {
    json.get("profiles")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(id, p)| p.as_object().map(|o| (id.clone(), o)))
                .collect()
        })
        .unwrap_or_default()
}

enum DefKind {
    Systemd,
    Plist,
}

struct Def {
    kind: DefKind,
    path: PathBuf,
    bytes: Vec<u8>,
    embedded: Vec<Embedded>,
}

fn definitions(inst: &Install, env: &Env) -> Vec<Def> {
    let mut out = Vec::new();
    if let Ok(bytes) = std::fs::read(&inst.paths.unit) {
        let embedded = scan::scan_systemd(&String::from_utf8_lossy(&bytes), env, &inst.live);
        out.push(Def {
            kind: DefKind::Systemd,
            path: inst.paths.unit.clone(),
            bytes,
            embedded,
        });
    }
    if let Ok(bytes) = std::fs::read(&inst.paths.plist) {
        let embedded = scan::scan_plist(&bytes, &inst.live).unwrap_or_default();
        out.push(Def {
            kind: DefKind::Plist,
            path: inst.paths.plist.clone(),
            bytes,
            embedded,
        });
    }
    out
}

/// Only inline environment entries are removed automatically; OpenClaw's installer owns the rest
/// of its unit.
fn removable(e: &Embedded) -> bool {
    e.env_file.is_none()
        && (e.location.starts_with("Environment=")
            || e.location.starts_with("EnvironmentVariables."))
        && (e.copy_of.is_some() || e.name == GATEWAY_TOKEN_ENV)
}

/// The audit rows for an OpenClaw installation (none when there is none and it was not asked for).
pub fn audit(env: &Env, requested: bool) -> Vec<Row> {
    let paths = locate(env);
    if !paths.state_dir.exists() && !paths.config.exists() {
        return if requested {
            vec![Row::skipped(
                "openclaw",
                format!("no OpenClaw installation at {}", paths.state_dir.display()),
            )]
        } else {
            Vec::new()
        };
    }
    let inst = match load(paths, env) {
        Ok(i) => i,
        Err(e) => {
            return vec![Row::finding(
                "openclaw-config",
                e,
                "fix the file by hand at that line and column; doctor changes nothing in OpenClaw's files until it parses",
            )];
        }
    };
    let mut rows = Vec::new();
    rows.push(match &inst.config {
        Some(_) => Row::ok(
            "openclaw-config",
            format!("{} parses", inst.paths.config.display()),
        ),
        None => Row::skipped(
            "openclaw-config",
            format!("{} does not exist", inst.paths.config.display()),
        ),
    });
    let mut files = vec![inst.paths.config.clone()];
    files.extend(inst.profiles.iter().map(|p| p.path.clone()));
    for f in files {
        if let Some(mode) = too_open(&f) {
            rows.push(Row::finding(
                "openclaw-permissions",
                format!(
                    "{} is mode {mode:04o}: group/others can read it",
                    f.display()
                ),
                format!("chmod 600 {} (with --fix --openclaw)", f.display()),
            ));
        }
    }
    if let (Some(env_tok), Some(cfg_tok)) = (
        env.non_empty(GATEWAY_TOKEN_ENV),
        inst.config
            .as_ref()
            .and_then(|c| str_at(c, &["gateway", "auth", "token"])),
    ) && env_tok != cfg_tok
    {
        rows.push(Row::finding(
            "openclaw-env-vs-config",
            format!(
                "{GATEWAY_TOKEN_ENV} ({}) differs from gateway.auth.token in {} ({}); OpenClaw's gateway uses the \
                 config value, its CLI outside the service the env value",
                SecretValue::new(env_tok.to_owned()).fingerprint(),
                inst.paths.config.display(),
                SecretValue::new(cfg_tok.to_owned()).fingerprint()
            ),
            format!("config wins: unset {GATEWAY_TOKEN_ENV} (and remove it from your shell profile)"),
        ));
    }
    for def in definitions(&inst, env) {
        if def.embedded.is_empty() {
            rows.push(Row::ok(
                "openclaw-unit-secret",
                format!("{} holds no secret", def.path.display()),
            ));
        }
        for e in &def.embedded {
            let fix = if !removable(e) {
                "move it to a SecretRef source by hand, then reinstall with `openclaw gateway install --force`".to_owned()
            } else if e.name == GATEWAY_TOKEN_ENV && !has_gateway_token(&inst) {
                format!(
                    "write it to gateway.auth.token in {} first, then remove it from the service (--fix --openclaw)",
                    inst.paths.config.display()
                )
            } else {
                "remove it from the service; the gateway reads its own copy (--fix --openclaw)"
                    .to_owned()
            };
            rows.push(Row::finding(
                "openclaw-unit-secret",
                e.describe(&def.path),
                fix,
            ));
        }
    }
    for pf in &inst.profiles {
        for (id, p) in profile_entries(&pf.json) {
            for (field, ref_field) in PROFILE_FIELDS {
                if p.get(*field)
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
                {
                    rows.push(Row::finding(
                        "openclaw-auth-profile",
                        format!(
                            "{}: profile {id} holds a plaintext `{field}`; it shadows a rotated env var (drift D5)",
                            pf.path.display()
                        ),
                        format!("replace it with `{ref_field}` (--fix --openclaw)"),
                    ));
                }
            }
        }
    }
    rows
}

fn has_gateway_token(inst: &Install) -> bool {
    inst.config
        .as_ref()
        .and_then(|c| c.get("gateway")?.get("auth")?.get("token"))
        .is_some_and(|t| !t.is_null())
}

fn write_json(path: &Path, v: &Value) -> Result<(), OpenClawError> {
    let mut text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    text.push('\n');
    atomic::write_private(path, text.as_bytes())?;
    Ok(())
}

/// Holds OpenClaw's `<file>.lock` while we edit `<file>`.
struct Lock(PathBuf);

impl Lock {
    fn take(file: &Path) -> Result<Lock, OpenClawError> {
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
            Err(source) => Err(OpenClawError::Io {
                action: "lock",
                path,
                source,
            }),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The env var OpenClaw's convention reads a provider's key from (`<PROVIDER>_API_KEY`).
fn provider_env_var(provider: &str) -> String {
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

fn json_pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Repairs the OpenClaw installation: permissions, embedded service tokens (persisted to
/// `openclaw.json` first), plaintext auth-profile secrets (moved to `keyRef`/`tokenRef`).
pub fn fix(env: &Env, actions: &mut Vec<Action>) -> Result<(), OpenClawError> {
    let paths = locate(env);
    if !paths.state_dir.exists() && !paths.config.exists() {
        return Ok(());
    }
    let Ok(mut inst) = load(paths, env) else {
        // A file that does not parse is reported by the audit and never rewritten.
        return Ok(());
    };
    let mut files = vec![inst.paths.config.clone()];
    files.extend(inst.profiles.iter().map(|p| p.path.clone()));
    for f in files {
        if too_open(&f).is_some() {
            chmod_600(&f).map_err(|source| OpenClawError::Io {
                action: "chmod",
                path: f.clone(),
                source,
            })?;
            actions.push(Action {
                did: format!("chmod 600 {}", f.display()),
                path: Some(f),
                backup: None,
            });
        }
    }

    // Embedded service tokens: persist into openclaw.json first (as OpenClaw's own doctor does),
    // then remove them from the service definition.
    let defs = definitions(&inst, env);
    for def in &defs {
        let Some(e) = def
            .embedded
            .iter()
            .find(|e| e.name == GATEWAY_TOKEN_ENV && removable(e))
        else {
            continue;
        };
        if has_gateway_token(&inst) {
            continue;
        }
        let Some(config) = inst.config.as_mut() else {
            continue;
        };
        let kept = config_secrets(config);
        let kept: Vec<&SecretValue> = kept.iter().collect();
        let bak = backup::backup(&inst.paths.config, &kept)?;
        let gateway = config
            .as_object_mut()
            .map(|o| o.entry("gateway").or_insert_with(|| json!({})));
        if let Some(auth) = gateway
            .and_then(Value::as_object_mut)
            .map(|g| g.entry("auth").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            auth.insert("token".into(), Value::String(e.value.expose().to_owned()));
        }
        write_json(&inst.paths.config, config)?;
        actions.push(Action {
            did: format!(
                "persisted {} from {} into gateway.auth.token of {}",
                e.location,
                def.path.display(),
                inst.paths.config.display()
            ),
            path: Some(inst.paths.config.clone()),
            backup: Some(bak),
        });
    }
    for def in &defs {
        let gone: Vec<&Embedded> = def.embedded.iter().filter(|e| removable(e)).collect();
        if gone.is_empty()
            || (gone.iter().any(|e| e.name == GATEWAY_TOKEN_ENV) && !has_gateway_token(&inst))
        {
            continue;
        }
        let names: Vec<String> = gone.iter().map(|e| e.name.clone()).collect();
        let new_bytes = match def.kind {
            DefKind::Systemd => {
                scan::systemd_without_vars(&String::from_utf8_lossy(&def.bytes), &names)
                    .into_bytes()
            }
            DefKind::Plist => {
                let Ok(mut v) = plist::from_bytes::<plist::Value>(&def.bytes) else {
                    continue;
                };
                if let Some(vars) = v
                    .as_dictionary_mut()
                    .and_then(|d| d.get_mut("EnvironmentVariables"))
                    .and_then(plist::Value::as_dictionary_mut)
                {
                    for n in &names {
                        vars.remove(n);
                    }
                }
                let mut out = Vec::new();
                plist::to_writer_xml(&mut out, &v).expect("writing to a Vec");
                out
            }
        };
        let values: Vec<&SecretValue> = gone.iter().map(|e| &e.value).collect();
        let bak = backup::backup(&def.path, &values)?;
        atomic::write_with_mode(&def.path, &new_bytes, 0o644)?;
        actions.push(Action {
            did: format!("removed {} from {}", names.join(", "), def.path.display()),
            path: Some(def.path.clone()),
            backup: Some(bak),
        });
        if matches!(def.kind, DefKind::Systemd) {
            let reloaded = crate::service::run("systemctl", &["--user", "daemon-reload"])
                .and_then(|_| crate::service::run("systemctl", &["--user", "try-restart", UNIT]));
            actions.push(Action {
                did: match reloaded {
                    Ok(_) => format!("reloaded systemd and restarted {UNIT} (if it was running)"),
                    Err(e) => format!("could not reload/restart {UNIT} ({e}); run `systemctl --user daemon-reload && systemctl --user restart {UNIT}`"),
                },
                path: None,
                backup: None,
            });
        }
    }

    // Plaintext auth-profile secrets → refs.
    let store = inst
        .paths
        .state_dir
        .join("secrets/driftless-auth-profiles.json");
    for i in 0..inst.profiles.len() {
        let path = inst.profiles[i].path.clone();
        let _lock = Lock::take(&path)?;
        // Re-read under the lock: OpenClaw may have written since we loaded it.
        let Ok(Some(mut json)) = parse_json5(&path) else {
            continue;
        };
        let agent = inst.profiles[i].agent.clone();
        let mut moved: Vec<SecretValue> = Vec::new();
        let mut notes = Vec::new();
        let ids: Vec<String> = profile_entries(&json)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            for (field, ref_field) in PROFILE_FIELDS {
                let Some(p) = json
                    .get_mut("profiles")
                    .and_then(|p| p.get_mut(&id))
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let Some(value) = p
                    .get(*field)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                else {
                    continue;
                };
                let value = SecretValue::new(value.to_owned());
                let provider = p
                    .get("provider")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let var = provider_env_var(&provider);
                let reference = if *field == "key"
                    && env.get(&var).is_some_and(|v| value.matches(v))
                {
                    json!({"source": "env", "provider": "default", "id": var})
                } else {
                    let pointer = format!(
                        "/{}/{}",
                        json_pointer_escape(&agent),
                        json_pointer_escape(&id)
                    );
                    store_secret(&store, &agent, &id, &value)?;
                    if !declare_file_provider(&mut inst, &store, actions)? {
                        notes.push(format!("{id}: no openclaw.json to declare the `{FILE_PROVIDER}` file provider in"));
                        continue;
                    }
                    json!({"source": "file", "provider": FILE_PROVIDER, "id": pointer})
                };
                p.remove(*field);
                p.insert((*ref_field).into(), reference);
                moved.push(value);
                notes.push(format!("{id}.{field} → {ref_field}"));
            }
        }
        if moved.is_empty() {
            continue;
        }
        let refs: Vec<&SecretValue> = moved.iter().collect();
        let bak = backup::backup(&path, &refs)?;
        write_json(&path, &json)?;
        actions.push(Action {
            did: format!("{}: {}", path.display(), notes.join(", ")),
            path: Some(path),
            backup: Some(bak),
        });
    }
    Ok(())
}

/// Adds `value` at `/<agent>/<profile>` of the JSON secrets file (0600), keeping what is there.
fn store_secret(
    store: &Path,
    agent: &str,
    id: &str,
    value: &SecretValue,
) -> Result<(), OpenClawError> {
    let mut json = match std::fs::read_to_string(store) {
        Ok(t) => serde_json::from_str::<Value>(&t).unwrap_or_else(|_| json!({})),
        Err(_) => json!({}),
    };
    if let Some(root) = json.as_object_mut() {
        let a = root.entry(agent).or_insert_with(|| json!({}));
        if let Some(a) = a.as_object_mut() {
            a.insert(id.into(), Value::String(value.expose().to_owned()));
        }
    }
    if let Some(dir) = store.parent() {
        atomic::create_private_dir(dir).map_err(|source| OpenClawError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
    }
    write_json(store, &json)
}

/// Declares `secrets.providers.driftless` (a JSON file provider) in openclaw.json if missing.
fn declare_file_provider(
    inst: &mut Install,
    store: &Path,
    actions: &mut Vec<Action>,
) -> Result<bool, OpenClawError> {
    let Some(config) = inst.config.as_mut() else {
        return Ok(false);
    };
    let wanted = json!({"source": "file", "path": store.to_string_lossy(), "mode": "json"});
    if config.pointer(&format!("/secrets/providers/{FILE_PROVIDER}")) == Some(&wanted) {
        return Ok(true);
    }
    // The new file keeps every value the old one held, so the backup need not hold them too.
    let kept = config_secrets(config);
    let kept: Vec<&SecretValue> = kept.iter().collect();
    let bak = backup::backup(&inst.paths.config, &kept)?;
    if let Some(root) = config.as_object_mut() {
        let secrets = root.entry("secrets").or_insert_with(|| json!({}));
        if let Some(providers) = secrets
            .as_object_mut()
            .map(|s| s.entry("providers").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            providers.insert(FILE_PROVIDER.into(), wanted);
        }
    }
    write_json(&inst.paths.config, config)?;
    actions.push(Action {
        did: format!(
            "declared the `{FILE_PROVIDER}` file secret provider in {}",
            inst.paths.config.display()
        ),
        path: Some(inst.paths.config.clone()),
        backup: Some(bak),
    });
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
