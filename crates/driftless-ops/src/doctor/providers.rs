//! `openclaw-provider`: OpenClaw's model calls go through driftless's OpenAI-compatible endpoint,
//! so a provider key lives only in driftless's reference and rotates live (issue #13 item 9).
//!
//! The wanted state, in openclaw.json: `models.providers.driftless` with `baseUrl` = driftless's
//! `/v1`, `api` = `openai-completions`, and `apiKey` = a SecretRef to the *source* of driftless's
//! gateway token (what OpenClaw presents to driftless; never a copy of it, and never a provider
//! key), with one model per driftless provider (`<provider>/<model>`, driftless's routing). A key
//! OpenClaw holds in plain text that is also a driftless provider's key is a copy: the repair
//! removes it (the provider entry in openclaw.json, the profile in an auth-profiles file) and points
//! OpenClaw's model references that used it at the same model through driftless.

use std::path::{Path, PathBuf};

use driftless_core::{Config, Env, SecretInput, SecretRef, SecretValue, precedence};
use serde_json::{Map, Value, json};

use super::check::{Check, Context, DoctorError, OpenClaw};
use crate::findings::{Action, Row};
use crate::openclaw::{self, Install, Lock};

const CHECK: &str = "openclaw-provider";
/// The model provider doctor declares in openclaw.json.
pub(crate) const PROVIDER: &str = "driftless";
/// The secret provider that reads driftless's gateway token file (OpenClaw's `file` source in
/// `singleValue` mode). Not `driftless`: that one is the JSON store of `openclaw-auth-profile`.
pub(crate) const TOKEN_PROVIDER: &str = "driftless-gateway";

/// What driftless's endpoint looks like to OpenClaw (no secret in it: references only).
#[derive(Debug)]
struct Endpoint {
    base_url: String,
    /// The SecretRef OpenClaw's `apiKey` holds.
    key_ref: Value,
    /// The `secrets.providers` entry that ref needs, if any.
    secret_provider: Option<(&'static str, Value)>,
}

/// A plaintext copy of a driftless provider key in OpenClaw's files.
struct Copy {
    /// The driftless provider whose key it is.
    of: String,
    /// The OpenClaw provider that used it.
    oc_provider: String,
    at: CopyAt,
    value: SecretValue,
}

enum CopyAt {
    /// `models.providers.<oc_provider>.apiKey` in openclaw.json.
    Config,
    /// Profile `id` of an auth-profiles file: its plaintext `key`, or (`stored`: the JSON pointer)
    /// the value its `keyRef` names in OpenClaw's secrets file that `openclaw-auth-profile` writes.
    Profile {
        file: PathBuf,
        id: String,
        stored: Option<String>,
    },
    /// Profile `id` where OpenClaw holds it and doctor only reads (`HeldProfiles`).
    Held {
        place: String,
        id: String,
        archive: bool,
        agent: Option<String>,
    },
}

impl Copy {
    fn describe(&self, config: &Path) -> String {
        let where_ = match &self.at {
            CopyAt::Config => format!(
                "models.providers.{}.apiKey in {}",
                self.oc_provider,
                config.display()
            ),
            CopyAt::Profile {
                file,
                id,
                stored: None,
            } => format!("profile {id} in {}", file.display()),
            CopyAt::Profile {
                file,
                id,
                stored: Some(_),
            } => format!(
                "profile {id} in {} (the value its keyRef reads from OpenClaw's secrets file)",
                file.display()
            ),
            CopyAt::Held { place, id, .. } => format!("profile {id} in {place}"),
        };
        format!(
            "{where_} is a copy of driftless's providers.{}.api_key ({}): it goes stale when driftless's key rotates",
            self.of,
            self.value.fingerprint()
        )
    }

    /// What removes it.
    fn fix(&self) -> String {
        match &self.at {
            CopyAt::Held {
                archive: false,
                id,
                agent,
                ..
            } => format!(
                "`openclaw models auth{} logout {id} --yes` (OpenClaw's database: doctor does not write it), \
                 after --fix --openclaw points OpenClaw's models at driftless",
                agent
                    .as_ref()
                    .map(|a| format!(" --agent {a}"))
                    .unwrap_or_default()
            ),
            CopyAt::Held {
                archive: true,
                place,
                ..
            } => format!(
                "delete {place}, OpenClaw's archive of an imported file (doctor does not delete it)"
            ),
            _ => "point OpenClaw's models at driftless (--fix --openclaw)".to_owned(),
        }
    }
}

/// Every driftless provider's key that resolves, by provider id.
fn provider_keys(config: &Config, env: &Env, base: &Path) -> Vec<(String, SecretValue)> {
    config
        .providers
        .iter()
        .filter_map(|(id, p)| {
            let v = p.api_key.as_ref()?.resolve(env, base).ok()?;
            Some((id.clone(), v))
        })
        .collect()
}

/// OpenClaw's env SecretRef ids (`^[A-Z][A-Z0-9_]{0,127}$`).
fn openclaw_env_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn endpoint(config: &Config, env: &Env, base: &Path) -> Result<Endpoint, String> {
    let gw = &config.gateway;
    if gw.port == 0 {
        return Err(
            "gateway.port is 0 (a free port picked at each start): OpenClaw needs a fixed one; set gateway.port"
                .into(),
        );
    }
    let host = match gw.bind.as_str() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_owned(),
    };
    let base_url = format!("http://{host}:{}/v1", gw.port);
    let Some((input, _)) = precedence::server_secret(config, env, None) else {
        return Err(
            "driftless's gateway has no shared secret (auth mode none) for OpenClaw to present"
                .into(),
        );
    };
    let field = precedence::server_secret_name(gw.auth.mode).unwrap_or("gateway.auth.token");
    match input {
        SecretInput::Literal(_) => Err(format!(
            "{field} is written in driftless's config: move it to a file first (`driftless doctor --fix`)"
        )),
        SecretInput::Ref(SecretRef::File { .. }) => {
            let path = input
                .file_path(env, base)
                .and_then(Result::ok)
                .ok_or_else(|| format!("{field}'s file path does not expand"))?;
            // OpenClaw's file provider refuses a symlink: name the file that holds the bytes.
            let path = driftless_core::atomic::resolve_symlinks(&path).unwrap_or(path);
            Ok(Endpoint {
                base_url,
                key_ref: json!({"source": "file", "provider": TOKEN_PROVIDER, "id": "value"}),
                secret_provider: Some((
                    TOKEN_PROVIDER,
                    json!({"source": "file", "path": path.to_string_lossy(), "mode": "singleValue"}),
                )),
            })
        }
        SecretInput::Ref(SecretRef::Env { id }) if openclaw_env_id(&id) => Ok(Endpoint {
            base_url,
            key_ref: json!({"source": "env", "provider": "default", "id": id}),
            secret_provider: None,
        }),
        SecretInput::Ref(SecretRef::Env { id }) => Err(format!(
            "{field} comes from the variable {id}, a name OpenClaw's env SecretRefs do not accept"
        )),
        SecretInput::Ref(SecretRef::Exec { .. }) => Err(format!(
            "{field} comes from a command: declare an OpenClaw exec secret provider for it by hand \
             (docs/front-mode.md, \"OpenClaw's model providers through driftless\")"
        )),
    }
}

/// The plaintext copies of `keys` in OpenClaw's files.
fn copies(inst: &Install, keys: &[(String, SecretValue)]) -> Vec<Copy> {
    let copy_of = |v: &str| keys.iter().find(|(_, k)| k.matches(v));
    let store = openclaw::parse_json5(&openclaw::secrets_store(&inst.paths))
        .ok()
        .flatten();
    let mut out = Vec::new();
    if let Some(providers) = inst
        .config
        .as_ref()
        .and_then(|c| c.pointer("/models/providers"))
        .and_then(Value::as_object)
    {
        for (name, p) in providers {
            if name == PROVIDER {
                continue;
            }
            if let Some(v) = p.get("apiKey").and_then(Value::as_str)
                && let Some((of, _)) = copy_of(v)
            {
                out.push(Copy {
                    of: of.clone(),
                    oc_provider: name.clone(),
                    at: CopyAt::Config,
                    value: SecretValue::new(v.to_owned()),
                });
            }
        }
    }
    for held in &inst.held {
        for s in openclaw::plaintext_secrets(&held.json) {
            if s.field == "key"
                && let Some((of, _)) = keys.iter().find(|(_, k)| k.same_as(&s.value))
            {
                out.push(Copy {
                    of: of.clone(),
                    oc_provider: s.provider.clone(),
                    at: CopyAt::Held {
                        place: held.place.clone(),
                        id: s.id.clone(),
                        archive: held.archive,
                        agent: held.agent.clone(),
                    },
                    value: s.value,
                });
            }
        }
    }
    for pf in &inst.profiles {
        for s in openclaw::plaintext_secrets(&pf.json) {
            if s.field == "key"
                && let Some((of, _)) = keys.iter().find(|(_, k)| k.same_as(&s.value))
            {
                out.push(Copy {
                    of: of.clone(),
                    oc_provider: s.provider.clone(),
                    at: CopyAt::Profile {
                        file: pf.path.clone(),
                        id: s.id.clone(),
                        stored: None,
                    },
                    value: s.value,
                });
            }
        }
        // Keys an earlier `--fix --openclaw` moved into OpenClaw's secrets file.
        let Some(store) = &store else {
            continue;
        };
        for (id, p) in openclaw::profile_entries(&pf.json) {
            let Some(pointer) = stored_pointer(p.get("keyRef")) else {
                continue;
            };
            if let Some(v) = store.pointer(&pointer).and_then(Value::as_str)
                && let Some((of, _)) = copy_of(v)
            {
                out.push(Copy {
                    of: of.clone(),
                    oc_provider: p
                        .get("provider")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    at: CopyAt::Profile {
                        file: pf.path.clone(),
                        id,
                        stored: Some(pointer),
                    },
                    value: SecretValue::new(v.to_owned()),
                });
            }
        }
    }
    out
}

/// The JSON pointer a `keyRef` names in OpenClaw's secrets file that doctor writes.
fn stored_pointer(key_ref: Option<&Value>) -> Option<String> {
    let r = key_ref?.as_object()?;
    (r.get("source")?.as_str()? == "file"
        && r.get("provider")?.as_str()? == openclaw::FILE_PROVIDER)
        .then(|| r.get("id")?.as_str().map(str::to_owned))
        .flatten()
}

/// Removes the value at `pointer` (RFC 6901) from `root`; whether there was one.
fn remove_at(root: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    root.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .is_some_and(|o| o.remove(&last).is_some())
}

/// The model-reference fields of openclaw.json's agents: `model` (a string, or `primary` and
/// `fallbacks`) and the `models` allowlist (keyed by reference) of the defaults and each agent.
fn for_each_model_ref(root: &mut Value, f: &mut dyn FnMut(&mut String)) {
    fn model_field(model: &mut Value, f: &mut dyn FnMut(&mut String)) {
        match model {
            Value::String(s) => f(s),
            Value::Object(m) => {
                if let Some(Value::String(s)) = m.get_mut("primary") {
                    f(s);
                }
                if let Some(Value::Array(a)) = m.get_mut("fallbacks") {
                    for v in a {
                        if let Value::String(s) = v {
                            f(s);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    fn agent(a: &mut Value, f: &mut dyn FnMut(&mut String)) {
        if let Some(m) = a.get_mut("model") {
            model_field(m, f);
        }
        if let Some(Value::Object(models)) = a.get_mut("models") {
            let renamed: Map<String, Value> = std::mem::take(models)
                .into_iter()
                .map(|(mut k, v)| {
                    f(&mut k);
                    (k, v)
                })
                .collect();
            *models = renamed;
        }
    }
    let Some(agents) = root.get_mut("agents") else {
        return;
    };
    if let Some(d) = agents.get_mut("defaults") {
        agent(d, f);
    }
    if let Some(Value::Array(list)) = agents.get_mut("list") {
        for a in list {
            agent(a, f);
        }
    }
}

/// openclaw.json as the check wants it: the driftless provider (fields doctor does not own kept),
/// its secret provider, the copies in it removed, and the references that used a copy pointed
/// at driftless. The same function makes the audit's comparison and the repair's edit.
fn wanted_config(config: &Value, ep: &Endpoint, drift: &Config, copies: &[Copy]) -> Value {
    let mut out = config.clone();
    // `P/model` → `driftless/D/model` for each OpenClaw provider P whose key was D's.
    let mut routed: Vec<String> = Vec::new();
    for_each_model_ref(&mut out, &mut |r: &mut String| {
        if let Some((p, model)) = r.split_once('/')
            && let Some(c) = copies.iter().find(|c| c.oc_provider == p)
        {
            let id = format!("{}/{model}", c.of);
            *r = format!("{PROVIDER}/{id}");
            routed.push(id);
        }
    });
    let Some(root) = out.as_object_mut() else {
        return out;
    };
    if let Some((name, provider)) = &ep.secret_provider
        && let Some(providers) = openclaw::object_at(root, &["secrets", "providers"])
    {
        providers.insert((*name).to_owned(), provider.clone());
    }
    let Some(providers) = openclaw::object_at(root, &["models", "providers"]) else {
        return out;
    };
    // The models the copies' providers listed, under their driftless names.
    for c in copies.iter().filter(|c| matches!(c.at, CopyAt::Config)) {
        if let Some(Value::Object(old)) = providers.remove(&c.oc_provider)
            && let Some(Value::Array(models)) = old.get("models")
        {
            routed.extend(
                models
                    .iter()
                    .filter_map(|m| m.get("id")?.as_str())
                    .map(|m| format!("{}/{m}", c.of)),
            );
        }
    }
    routed.extend(
        drift
            .providers
            .iter()
            .filter_map(|(id, p)| Some(format!("{id}/{}", p.default_model.as_ref()?))),
    );
    let entry = providers.entry(PROVIDER).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    let Some(entry) = entry.as_object_mut() else {
        return out;
    };
    entry.insert("baseUrl".into(), Value::String(ep.base_url.clone()));
    entry.insert("api".into(), Value::String("openai-completions".into()));
    entry.insert("apiKey".into(), ep.key_ref.clone());
    let models = entry.entry("models").or_insert_with(|| json!([]));
    if !models.is_array() {
        *models = json!([]);
    }
    if let Some(models) = models.as_array_mut() {
        for id in routed {
            if !models
                .iter()
                .any(|m| m.get("id").and_then(Value::as_str) == Some(&id))
            {
                models.push(json!({"id": id, "name": id}));
            }
        }
    }
    out
}

/// Why the current openclaw.json differs from the wanted one, in words.
fn differences(config: &Value, wanted: &Value, ep: &Endpoint) -> Vec<String> {
    let at = |v: &Value, p: &str| v.pointer(p).cloned();
    let entry = format!("/models/providers/{PROVIDER}");
    let Some(current) = at(config, &entry) else {
        return vec![format!(
            "OpenClaw has no model provider `{PROVIDER}`: its model calls do not go through driftless"
        )];
    };
    let mut out = Vec::new();
    if current.get("baseUrl") != Some(&Value::String(ep.base_url.clone())) {
        out.push(format!(
            "models.providers.{PROVIDER}.baseUrl is not driftless's {}",
            ep.base_url
        ));
    }
    if current.get("apiKey") != Some(&ep.key_ref) {
        out.push(format!(
            "models.providers.{PROVIDER}.apiKey is not a reference to driftless's gateway token source"
        ));
    }
    if current.get("api") != wanted.pointer(&format!("{entry}/api")) {
        out.push(format!(
            "models.providers.{PROVIDER}.api is not openai-completions"
        ));
    }
    if let Some((name, _)) = &ep.secret_provider {
        let p = format!("/secrets/providers/{name}");
        if at(config, &p) != at(wanted, &p) {
            out.push(format!(
                "the secret provider `{name}` does not read driftless's gateway token file"
            ));
        }
    }
    if out.is_empty() && config != wanted {
        out.push(format!(
            "models.providers.{PROVIDER} lacks a model driftless serves, or a model reference still names a provider whose key is a copy"
        ));
    }
    out
}

/// The facts both halves read: driftless's endpoint (or why there is none), and the copies.
struct Facts<'a> {
    inst: &'a Install,
    config: Option<&'a Value>,
    drift: &'a Config,
    endpoint: Result<Endpoint, String>,
    copies: Vec<Copy>,
}

fn facts<'a>(cx: &'a Context) -> Option<Facts<'a>> {
    let OpenClaw::Present(inst) = &cx.openclaw else {
        return None;
    };
    let dl = cx.driftless.as_ref().ok()?;
    let drift = &dl.loaded.config;
    if drift.providers.is_empty() {
        return None;
    }
    let env = &cx.doctor.env;
    let keys = provider_keys(drift, env, dl.loaded.base_dir());
    Some(Facts {
        inst,
        config: inst.config.as_ref(),
        drift,
        endpoint: endpoint(drift, env, dl.loaded.base_dir()),
        copies: copies(inst, &keys),
    })
}

pub(crate) struct OcProviderViaDriftless;

impl Check for OcProviderViaDriftless {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some(f) = facts(cx) else {
            return Vec::new();
        };
        let config_path = &f.inst.paths.config;
        let fix = "point OpenClaw's models at driftless (--fix --openclaw)";
        let mut rows: Vec<Row> = f
            .copies
            .iter()
            .map(|c| Row::finding(CHECK, c.describe(config_path), c.fix()))
            .collect();
        match (&f.endpoint, f.config) {
            (Err(why), _) => rows.push(Row::finding(
                CHECK,
                format!("OpenClaw's models cannot be pointed at driftless yet: {why}"),
                "fix that, then run `driftless doctor --fix --openclaw`",
            )),
            (Ok(_), None) => rows.push(Row::skipped(
                CHECK,
                format!("{} does not exist", config_path.display()),
            )),
            (Ok(ep), Some(config)) => {
                let wanted = wanted_config(config, ep, f.drift, &f.copies);
                let diff = differences(config, &wanted, ep);
                if diff.is_empty() && rows.is_empty() {
                    rows.push(Row::ok(
                        CHECK,
                        format!(
                            "OpenClaw's provider `{PROVIDER}` reaches driftless at {} with a reference to its gateway token",
                            ep.base_url
                        ),
                    ));
                }
                rows.extend(diff.into_iter().map(|d| Row::finding(CHECK, d, fix)));
            }
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        if cx.openclaw_to_fix().is_none() {
            return Ok(());
        }
        let Some(f) = facts(cx) else {
            return Ok(());
        };
        let (Ok(ep), Some(config)) = (&f.endpoint, f.config) else {
            return Ok(());
        };
        // 1. openclaw.json: the provider through driftless first, so OpenClaw never lacks a
        //    working route, with the copies in it removed in the same write.
        let wanted = wanted_config(config, ep, f.drift, &f.copies);
        if &wanted != config {
            let path = &f.inst.paths.config;
            let removed: Vec<&SecretValue> = f
                .copies
                .iter()
                .filter(|c| matches!(c.at, CopyAt::Config))
                .map(|c| &c.value)
                .collect();
            let did = format!(
                "pointed OpenClaw's models at driftless ({}) in {}{}",
                ep.base_url,
                path.display(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(", and removed {} copied provider key(s)", removed.len())
                }
            );
            actions.push(openclaw::replace_config(
                path, config, &wanted, &removed, did,
            )?);
        }
        // 2. The copies in auth-profiles files: the profile goes (its key is driftless's now).
        let mut files: Vec<&PathBuf> = f
            .copies
            .iter()
            .filter_map(|c| match &c.at {
                CopyAt::Profile { file, .. } => Some(file),
                CopyAt::Config | CopyAt::Held { .. } => None,
            })
            .collect();
        files.sort();
        files.dedup();
        for file in files {
            let _lock = Lock::take(file)?;
            // Re-read under the lock: OpenClaw may have written since we loaded it.
            let Ok(Some(mut json)) = openclaw::parse_json5(file) else {
                continue;
            };
            let mut removed = Vec::new();
            if let Some(profiles) = json.get_mut("profiles").and_then(Value::as_object_mut) {
                for c in &f.copies {
                    if let CopyAt::Profile {
                        file: cf,
                        id,
                        stored,
                    } = &c.at
                        && cf == file
                        && profiles.get(id).is_some_and(|p| match stored {
                            None => p
                                .get("key")
                                .and_then(Value::as_str)
                                .is_some_and(|k| c.value.matches(k)),
                            Some(ptr) => stored_pointer(p.get("keyRef")).as_ref() == Some(ptr),
                        })
                    {
                        profiles.remove(id);
                        removed.push((id.clone(), &c.value));
                    }
                }
            }
            if removed.is_empty() {
                continue;
            }
            let values: Vec<&SecretValue> = removed.iter().map(|(_, v)| *v).collect();
            let bak = crate::backup::backup(file, &values)?;
            openclaw::write_json(file, &json)?;
            let ids: Vec<String> = removed.into_iter().map(|(id, _)| id).collect();
            actions.push(Action::changed(
                format!(
                    "removed the profile(s) {} from {}: their key is a copy of a driftless provider key",
                    ids.join(", "),
                    file.display()
                ),
                file.clone(),
                Some(bak),
            ));
        }
        // 3. The values those profiles read from OpenClaw's secrets file. A file that does not
        //    parse is never rewritten (it may hold the only copy of other keys).
        let stored: Vec<(&String, &SecretValue)> = f
            .copies
            .iter()
            .filter_map(|c| match &c.at {
                CopyAt::Profile {
                    stored: Some(p), ..
                } => Some((p, &c.value)),
                _ => None,
            })
            .collect();
        let store = openclaw::secrets_store(&f.inst.paths);
        if stored.is_empty() {
            return Ok(());
        }
        let Ok(Some(mut json)) = openclaw::parse_json5(&store) else {
            return Ok(());
        };
        let gone: Vec<&SecretValue> = stored
            .into_iter()
            .filter(|(p, v)| {
                json.pointer(p)
                    .and_then(Value::as_str)
                    .is_some_and(|s| v.matches(s))
                    && remove_at(&mut json, p)
            })
            .map(|(_, v)| v)
            .collect();
        if !gone.is_empty() {
            let bak = crate::backup::backup(&store, &gone)?;
            openclaw::write_json(&store, &json)?;
            actions.push(Action::changed(
                format!(
                    "removed {} copied provider key(s) from {}",
                    gone.len(),
                    store.display()
                ),
                store.clone(),
                Some(bak),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::parse(toml, Path::new("/x/config.toml")).unwrap()
    }

    #[test]
    fn the_endpoint_names_driftless_and_references_its_token_source() {
        let env = Env::from_pairs([("HOME", "/home/u")]);
        let c = config(
            "[gateway]\nport = 18789\n[gateway.auth]\nmode = \"token\"\ntoken = { source = \"env\", id = \"DL_TOKEN\" }\n",
        );
        let ep = endpoint(&c, &env, Path::new("/x")).unwrap();
        assert_eq!(ep.base_url, "http://127.0.0.1:18789/v1");
        assert_eq!(
            ep.key_ref,
            json!({"source": "env", "provider": "default", "id": "DL_TOKEN"})
        );
        let c = config(
            "[gateway]\nbind = \"::\"\nport = 9\n[gateway.auth]\nmode = \"token\"\ntoken = { source = \"file\", path = \"/s/tok\" }\n",
        );
        let ep = endpoint(&c, &env, Path::new("/x")).unwrap();
        assert_eq!(ep.base_url, "http://[::1]:9/v1");
        assert_eq!(
            ep.secret_provider.unwrap().1,
            json!({"source": "file", "path": "/s/tok", "mode": "singleValue"})
        );
        for (toml, why) in [
            ("[gateway]\nport = 0\n", "gateway.port is 0"),
            (
                "[gateway]\nport = 1\n[gateway.auth]\nmode = \"token\"\ntoken = \"canary-literal-1\"\n",
                "written in driftless's config",
            ),
            (
                "[gateway]\nport = 1\n[gateway.auth]\nmode = \"token\"\ntoken = { source = \"env\", id = \"lower\" }\n",
                "do not accept",
            ),
            (
                "[gateway]\nport = 1\n[gateway.auth]\nmode = \"none\"\n",
                "no shared secret",
            ),
        ] {
            let e = endpoint(&config(toml), &env, Path::new("/x")).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("canary-literal-1"), "{e}");
        }
    }

    #[test]
    fn references_that_used_a_copy_go_through_driftless_and_nothing_else_moves() {
        let mut v = json!({"agents": {
            "defaults": {"model": {"primary": "up/m1", "fallbacks": ["other/x", "up/m2"]},
                         "models": {"up/m1": {"alias": "fast"}}},
            "list": [{"id": "a", "model": "up/m3"}, {"id": "b"}],
        }});
        for_each_model_ref(&mut v, &mut |r: &mut String| {
            if let Some(m) = r.strip_prefix("up/") {
                *r = format!("driftless/dl/{m}");
            }
        });
        assert_eq!(
            v,
            json!({"agents": {
                "defaults": {"model": {"primary": "driftless/dl/m1", "fallbacks": ["other/x", "driftless/dl/m2"]},
                             "models": {"driftless/dl/m1": {"alias": "fast"}}},
                "list": [{"id": "a", "model": "driftless/dl/m3"}, {"id": "b"}],
            }})
        );
    }
}
