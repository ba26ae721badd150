//! `unit-secret` and `unit-drift`: the service definitions hold no secret and are what `daemon
//! install` writes now. One check, because one repair answers both: the definition is rewritten.
//!
//! The order never loses a value (shared design `credentials.md`, "Drift findings"): an embedded
//! gateway credential the config lacks is first persisted to its source and referenced from
//! config, only then is the definition rewritten, and only then is the manager reloaded and the
//! service restarted. A definition holding a secret doctor cannot keep anywhere is left alone.

use std::collections::BTreeSet;

use driftless_core::SecretValue;

use super::check::{
    Check, Context, Definition, DoctorError, config_field_set, gateway_field, reload_and_restart,
    rewrite_definition,
};
use crate::findings::{Action, Row};
use crate::migrate::{self, Target};
use crate::scan::Embedded;
use crate::service::UNIT_NAME;

pub(crate) struct Units;

/// What the repair will do about one embedded secret, and so what the audit advises.
enum Plan<'a> {
    /// Write it to its source and reference it as `field`, then drop it from the definition.
    Persist(&'static str),
    /// Config already holds `field`: the copy is dropped.
    ConfigWins(&'static str),
    /// It copies the live secret named here: dropped.
    Copy(&'a str),
    /// Doctor cannot keep it anywhere; the definition is left alone.
    Blocked,
}

fn plan<'a>(e: &'a Embedded, config: &driftless_core::Config) -> Plan<'a> {
    match (gateway_field(&e.name), &e.copy_of) {
        (Some(field), _) if !config_field_set(config, field) => Plan::Persist(field),
        (Some(field), _) => Plan::ConfigWins(field),
        (None, Some(live)) => Plan::Copy(live),
        (None, None) => Plan::Blocked,
    }
}

impl Units {
    fn advice(cx: &Context, e: &Embedded, plan: &Plan) -> String {
        let envfile = e
            .env_file
            .as_ref()
            .map(|f| {
                format!(
                    " (the unit stops loading {}; delete that file if nothing else uses it)",
                    f.display()
                )
            })
            .unwrap_or_default();
        let base = match plan {
            Plan::Persist(field) => format!(
                "persist it to {} (0600) and reference it as {field} in config, then rewrite the unit without it and restart",
                migrate::default_file(field, &cx.doctor.state_dir).display()
            ),
            Plan::ConfigWins(field) => {
                format!("config's {field} wins: rewrite the unit without this copy and restart")
            }
            Plan::Copy(live) => {
                format!("it copies {live}: rewrite the unit without it and restart")
            }
            Plan::Blocked => {
                "move it to its own source (a 0600 file referenced from config), then re-run \
                 `driftless doctor --fix`; doctor will not drop a value it cannot keep"
                    .to_owned()
            }
        };
        base + &envfile
    }

    /// Whether the repair rewrites `def`: something to change, nothing it cannot keep.
    fn rewrites(def: &Definition) -> bool {
        def.unreadable.is_none()
            && def.blockers().is_empty()
            && (!def.embedded.is_empty() || def.drifted())
    }
}

impl Check for Units {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let config = &inst.loaded.config;
        if inst.definitions.is_empty() {
            return vec![Row::skipped(
                "unit-secret",
                "no service installed (`driftless daemon install`)",
            )];
        }
        let mut rows = Vec::new();
        for def in &inst.definitions {
            if let Some(why) = &def.unreadable {
                rows.push(Row::finding(
                    "unit-secret",
                    format!("{} cannot be scanned: {why}", def.path.display()),
                    "fix or remove it by hand; doctor never rewrites a file it cannot read",
                ));
                continue;
            }
            if def.embedded.is_empty() {
                rows.push(Row::ok(
                    "unit-secret",
                    format!("{} holds no secret", def.path.display()),
                ));
            }
            for e in &def.embedded {
                rows.push(Row::finding(
                    "unit-secret",
                    e.describe(&def.path),
                    Self::advice(cx, e, &plan(e, config)),
                ));
            }
            if def.platform {
                rows.push(if def.drifted() {
                    Row::finding(
                        "unit-drift",
                        format!(
                            "{} differs from what `driftless daemon install` writes now",
                            def.path.display()
                        ),
                        "rewrite it (backup first), then reload the manager and restart the service",
                    )
                } else {
                    Row::ok(
                        "unit-drift",
                        format!("{} matches what install writes", def.path.display()),
                    )
                });
            }
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Ok(inst) = &cx.driftless else {
            return Ok(());
        };
        let d = cx.doctor;
        let cfg_path = &inst.loaded.path;
        // 1. Persist each embedded gateway credential the config lacks, BEFORE touching a unit.
        let mut persisted = BTreeSet::new();
        for def in &inst.definitions {
            for e in &def.embedded {
                let Plan::Persist(field) = plan(e, &inst.loaded.config) else {
                    continue;
                };
                // A second definition's copy of the same field: config holds the first one now.
                if !persisted.insert(field) {
                    continue;
                }
                let moved = migrate::move_to_source(
                    cfg_path,
                    field,
                    &e.value,
                    &Target::File,
                    &d.env,
                    &d.state_dir,
                )?;
                actions.push(Action::changed(
                    format!(
                        "persisted {} from {} to its source and referenced it as {field} ({})",
                        e.location,
                        def.path.display(),
                        moved.reference
                    ),
                    cfg_path.clone(),
                    Some(moved.backup),
                ));
            }
        }
        // 2. Rewrite each definition as install writes it, then reload and restart; from the state
        // as it is now, when step 1 changed the config and so the live secrets.
        let fresh;
        let inst = if persisted.is_empty() {
            inst
        } else {
            fresh = Context::gather(d);
            let Ok(inst) = &fresh.driftless else {
                return Ok(());
            };
            inst
        };
        for def in inst.definitions.iter().filter(|def| Self::rewrites(def)) {
            let moved: Vec<&SecretValue> = def.embedded.iter().map(|e| &e.value).collect();
            let removed = if def.embedded.is_empty() {
                String::new()
            } else {
                format!(" ({} secret(s) removed)", def.embedded.len())
            };
            actions.push(rewrite_definition(
                &def.path,
                &def.wanted,
                &moved,
                format!(
                    "rewrote {} as `driftless daemon install` writes it{removed}",
                    def.path.display()
                ),
            )?);
            if def.platform {
                actions.push(reload_and_restart(&def.manager, UNIT_NAME));
            }
        }
        Ok(())
    }
}
