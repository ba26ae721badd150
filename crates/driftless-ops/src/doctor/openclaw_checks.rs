//! The checks of an OpenClaw installation: always audited when present, repaired only with
//! `--fix --openclaw`. OpenClaw's own files are edited the way OpenClaw does (plain JSON, 0600,
//! `<file>.lock` held around an auth-profiles edit); see `crate::openclaw`.

use driftless_core::SecretValue;
use serde_json::{Value, json};

use super::check::{
    Check, Context, DoctorError, OpenClaw, reload_and_restart, rewrite_definition, tighten,
};
use crate::findings::{Action, Row};
use crate::openclaw::{self, FILE_PROVIDER, GATEWAY_TOKEN_ENV, Install, Lock, UNIT, removable};
use crate::perms;
use crate::scan::Format;
use crate::service::{Manager, Scope};

fn present<'a>(cx: &'a Context) -> Option<&'a Install> {
    match &cx.openclaw {
        OpenClaw::Present(inst) => Some(inst),
        _ => None,
    }
}

/// `openclaw-config`: openclaw.json parses (or an installation is absent, said only when asked).
pub(crate) struct OcConfig;

impl Check for OcConfig {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        const CHECK: &str = "openclaw-config";
        match &cx.openclaw {
            OpenClaw::Absent(state_dir) if cx.doctor.openclaw => vec![Row::skipped(
                "openclaw",
                format!("no OpenClaw installation at {}", state_dir.display()),
            )],
            OpenClaw::Absent(_) => Vec::new(),
            OpenClaw::Unparsable(e) => vec![Row::finding(
                CHECK,
                e.clone(),
                "fix the file by hand at that line and column; doctor changes nothing in OpenClaw's files until it parses",
            )],
            OpenClaw::Present(inst) => vec![match &inst.config {
                Some(_) => Row::ok(CHECK, format!("{} parses", inst.paths.config.display())),
                None => Row::skipped(
                    CHECK,
                    format!("{} does not exist", inst.paths.config.display()),
                ),
            }],
        }
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        Ok(())
    }
}

/// `openclaw-permissions`: openclaw.json and the auth profiles are 0600.
pub(crate) struct OcPermissions;

impl OcPermissions {
    fn open_files(inst: &Install) -> Vec<perms::OpenFile> {
        let mut files = vec![inst.paths.config.clone()];
        files.extend(inst.profiles.iter().map(|p| p.path.clone()));
        perms::open_files(&files)
    }
}

impl Check for OcPermissions {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some(inst) = present(cx) else {
            return Vec::new();
        };
        Self::open_files(inst)
            .iter()
            .map(|f| {
                Row::finding(
                    "openclaw-permissions",
                    format!(
                        "{} is mode {:04o}: group/others can read it",
                        f.name(),
                        f.mode
                    ),
                    format!("{} (with --fix --openclaw)", f.fix_hint()),
                )
            })
            .collect()
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Some(inst) = cx.openclaw_to_fix() else {
            return Ok(());
        };
        tighten(Self::open_files(inst), actions)
    }
}

/// `openclaw-env-vs-config`: `OPENCLAW_GATEWAY_TOKEN` does not disagree with openclaw.json.
/// Reported only: the fix is in the user's shell profile.
pub(crate) struct OcEnvVsConfig;

impl Check for OcEnvVsConfig {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some(inst) = present(cx) else {
            return Vec::new();
        };
        let (Some(env_tok), Some(cfg_tok)) = (
            cx.doctor.env.non_empty(GATEWAY_TOKEN_ENV),
            inst.config
                .as_ref()
                .and_then(|c| openclaw::str_at(c, &["gateway", "auth", "token"])),
        ) else {
            return Vec::new();
        };
        if env_tok == cfg_tok {
            return Vec::new();
        }
        vec![Row::finding(
            "openclaw-env-vs-config",
            format!(
                "{GATEWAY_TOKEN_ENV} ({}) differs from gateway.auth.token in {} ({}); OpenClaw's gateway uses the \
                 config value, its CLI outside the service the env value",
                SecretValue::new(env_tok.to_owned()).fingerprint(),
                inst.paths.config.display(),
                SecretValue::new(cfg_tok.to_owned()).fingerprint()
            ),
            format!(
                "config wins: unset {GATEWAY_TOKEN_ENV} (and remove it from your shell profile)"
            ),
        )]
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        Ok(())
    }
}

/// `openclaw-unit-secret`: OpenClaw's service definitions hold no secret. The repair persists an
/// embedded gateway token into openclaw.json first (as OpenClaw's own doctor does), then removes
/// the inline entries; OpenClaw's installer owns the rest of its unit.
pub(crate) struct OcUnitSecret;

impl Check for OcUnitSecret {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        const CHECK: &str = "openclaw-unit-secret";
        let Some(inst) = present(cx) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for def in openclaw::definitions(inst, &cx.doctor.env) {
            if def.embedded.is_empty() {
                rows.push(Row::ok(
                    CHECK,
                    format!("{} holds no secret", def.path.display()),
                ));
            }
            for e in &def.embedded {
                let fix = if !removable(e) {
                    "move it to a SecretRef source by hand, then reinstall with `openclaw gateway install --force`".to_owned()
                } else if def.token_to_persist(inst).is_some_and(|t| t.name == e.name) {
                    format!(
                        "write it to gateway.auth.token in {} first, then remove it from the service (--fix --openclaw)",
                        inst.paths.config.display()
                    )
                } else {
                    "remove it from the service; the gateway reads its own copy (--fix --openclaw)"
                        .to_owned()
                };
                rows.push(Row::finding(CHECK, e.describe(&def.path), fix));
            }
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Some(inst) = cx.openclaw_to_fix() else {
            return Ok(());
        };
        let env = &cx.doctor.env;
        // 1. Persist the first embedded gateway token into openclaw.json, if it lacks one.
        let defs = openclaw::definitions(inst, env);
        let persist = defs
            .iter()
            .find_map(|def| def.token_to_persist(inst).map(|e| (def, e)));
        let fresh;
        let inst = match (persist, &inst.config) {
            (Some((def, e)), Some(config)) => {
                let mut config = config.clone();
                let did = format!(
                    "persisted {} from {} into gateway.auth.token of {}",
                    e.location,
                    def.path.display(),
                    inst.paths.config.display()
                );
                actions.push(openclaw::edit_config(
                    &inst.paths.config,
                    &mut config,
                    did,
                    |root| {
                        if let Some(auth) = openclaw::object_at(root, &["gateway", "auth"]) {
                            auth.insert("token".into(), Value::String(e.value.expose().to_owned()));
                        }
                    },
                )?);
                // 2. works from openclaw.json as it is now.
                fresh = Context::gather(cx.doctor);
                let Some(inst) = fresh.openclaw_to_fix() else {
                    return Ok(());
                };
                inst
            }
            _ => inst,
        };
        // 2. Remove what may go from each definition; reload and restart a systemd unit.
        for def in openclaw::definitions(inst, env) {
            let gone = def.removals(inst);
            if gone.is_empty() {
                continue;
            }
            let names: Vec<String> = gone.iter().map(|e| e.name.clone()).collect();
            let Some(bytes) = def.without(&names) else {
                continue;
            };
            let values: Vec<&SecretValue> = gone.iter().map(|e| &e.value).collect();
            actions.push(rewrite_definition(
                &def.path,
                &bytes,
                &values,
                format!("removed {} from {}", names.join(", "), def.path.display()),
            )?);
            if def.format == Format::Systemd {
                actions.push(reload_and_restart(&Manager::Systemd(Scope::User), UNIT));
            }
        }
        Ok(())
    }
}

/// `openclaw-auth-profile`: auth profiles hold `keyRef`/`tokenRef`, never a plaintext `key` or
/// `token` (which shadows a rotated env var, drift D5). The repair points a key at the env var
/// that already holds it, else moves it into a 0600 JSON file declared as a file provider.
pub(crate) struct OcAuthProfiles;

impl Check for OcAuthProfiles {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some(inst) = present(cx) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for pf in &inst.profiles {
            for s in openclaw::plaintext_secrets(&pf.json) {
                rows.push(Row::finding(
                    "openclaw-auth-profile",
                    format!(
                        "{}: profile {} holds a plaintext `{}`; it shadows a rotated env var (drift D5)",
                        pf.path.display(),
                        s.id,
                        s.field
                    ),
                    format!("replace it with `{}` (--fix --openclaw)", s.ref_field),
                ));
            }
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Some(inst) = cx.openclaw_to_fix() else {
            return Ok(());
        };
        let env = &cx.doctor.env;
        let store = openclaw::secrets_store(&inst.paths);
        // Declaring the provider edits openclaw.json; later profiles see that edit.
        let mut config = inst.config.clone();
        for pf in &inst.profiles {
            let _lock = Lock::take(&pf.path)?;
            // Re-read under the lock: OpenClaw may have written since we loaded it.
            let Ok(Some(mut json)) = openclaw::parse_json5(&pf.path) else {
                continue;
            };
            let mut moved: Vec<SecretValue> = Vec::new();
            let mut notes = Vec::new();
            for s in openclaw::plaintext_secrets(&json) {
                let var = openclaw::provider_env_var(&s.provider);
                let reference = if s.field == "key"
                    && env.get(&var).is_some_and(|v| s.value.matches(v))
                {
                    json!({"source": "env", "provider": "default", "id": var})
                } else {
                    openclaw::store_secret(&store, &pf.agent, &s.id, &s.value)?;
                    if !openclaw::declare_file_provider(
                        &inst.paths.config,
                        &mut config,
                        &store,
                        actions,
                    )? {
                        notes.push(format!(
                            "{}: no openclaw.json to declare the `{FILE_PROVIDER}` file provider in",
                            s.id
                        ));
                        continue;
                    }
                    let pointer = format!(
                        "/{}/{}",
                        openclaw::json_pointer_escape(&pf.agent),
                        openclaw::json_pointer_escape(&s.id)
                    );
                    json!({"source": "file", "provider": FILE_PROVIDER, "id": pointer})
                };
                if let Some(p) = json
                    .get_mut("profiles")
                    .and_then(|p| p.get_mut(&s.id))
                    .and_then(Value::as_object_mut)
                {
                    p.remove(s.field);
                    p.insert(s.ref_field.into(), reference);
                }
                notes.push(format!("{}.{} → {}", s.id, s.field, s.ref_field));
                moved.push(s.value);
            }
            if moved.is_empty() {
                continue;
            }
            let refs: Vec<&SecretValue> = moved.iter().collect();
            let bak = crate::backup::backup(&pf.path, &refs)?;
            openclaw::write_json(&pf.path, &json)?;
            actions.push(Action::changed(
                format!("{}: {}", pf.path.display(), notes.join(", ")),
                pf.path.clone(),
                Some(bak),
            ));
        }
        Ok(())
    }
}
