//! Checks of the driftless config itself: it parses, it holds no literal secret, and the
//! environment does not compete with it.

use driftless_core::{SecretInput, SecretValue, precedence};

use super::check::{Check, Context, DoctorError};
use crate::findings::{Action, Row};
use crate::migrate::{self, Target};

/// `config`: the config parses (a config that does not stops everything; the driver sees to it).
pub(crate) struct Parses;

impl Check for Parses {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        vec![match &cx.driftless {
            Ok(inst) => Row::ok("config", format!("{} parses", inst.loaded.path.display())),
            Err(problem) => problem.row.clone(),
        }]
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        // Only a person can repair a config: doctor never rewrites a file it cannot read.
        Ok(())
    }
}

/// `plaintext-secret`: every secret in config is a reference; a literal moves to a 0600 file.
pub(crate) struct PlaintextSecrets;

const PLAINTEXT: &str = "plaintext-secret";

impl Check for PlaintextSecrets {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let literals: Vec<String> = inst
            .loaded
            .config
            .secret_inputs()
            .into_iter()
            .filter(|(_, i)| matches!(i, SecretInput::Literal(_)))
            .map(|(n, _)| n)
            .collect();
        if literals.is_empty() {
            return vec![Row::ok(PLAINTEXT, "every secret in config is a reference")];
        }
        literals
            .into_iter()
            .map(|name| {
                Row::finding(
                    PLAINTEXT,
                    format!(
                        "{name} is a literal value in {}",
                        inst.loaded.path.display()
                    ),
                    format!(
                        "move it to {} (0600) and reference it (`driftless secrets migrate`)",
                        migrate::default_file(&name, &cx.doctor.state_dir).display()
                    ),
                )
            })
            .collect()
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Ok(inst) = &cx.driftless else {
            return Ok(());
        };
        let d = cx.doctor;
        let path = &inst.loaded.path;
        for moved in migrate::migrate_literals(path, None, &Target::File, &d.env, &d.state_dir)? {
            actions.push(Action::changed(
                format!(
                    "moved {} out of config; it now references {}",
                    moved.name, moved.reference
                ),
                path.clone(),
                Some(moved.backup),
            ));
        }
        Ok(())
    }
}

/// `env-vs-config`: `DRIFTLESS_GATEWAY_TOKEN` and config's token do not disagree. Reported only:
/// the fix is in the user's shell profile.
pub(crate) struct EnvVsConfig;

impl Check for EnvVsConfig {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        const CHECK: &str = "env-vs-config";
        let Ok(inst) = &cx.driftless else {
            return Vec::new();
        };
        let env = &cx.doctor.env;
        let (Some(env_tok), Some(cfg_tok)) = (
            env.non_empty(precedence::GATEWAY_TOKEN_ENV),
            inst.loaded.config.gateway.auth.token.as_ref(),
        ) else {
            return vec![Row::ok(
                CHECK,
                "DRIFTLESS_GATEWAY_TOKEN and config do not compete",
            )];
        };
        vec![match cfg_tok.resolve(env, inst.loaded.base_dir()) {
            Ok(v) if v.matches(env_tok) => {
                Row::ok(CHECK, "DRIFTLESS_GATEWAY_TOKEN equals config's token")
            }
            Ok(v) => Row::finding(
                CHECK,
                format!(
                    "DRIFTLESS_GATEWAY_TOKEN ({}) differs from gateway.auth.token ({}); the gateway uses config, \
                     clients started from this environment may present the stale value",
                    SecretValue::new(env_tok.to_owned()).fingerprint(),
                    v.fingerprint()
                ),
                "config wins: unset DRIFTLESS_GATEWAY_TOKEN (and remove it from your shell profile)",
            ),
            Err(e) => Row::skipped(CHECK, format!("gateway.auth.token does not resolve: {e}")),
        }]
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        Ok(())
    }
}
