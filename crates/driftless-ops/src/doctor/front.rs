//! Front mode's checks (`[upstream]`, docs/front-mode.md): OpenClaw reachable only through
//! driftless, one source for its gateway token, and driftless's own upstream device token file.

use std::path::Path;

use driftless_client::identity::{ISSUED_TOKEN_FILE, IssuedTokenFile, UPSTREAM_DIR};
use driftless_core::{Config, SecretInput, SecretRef, SecretValue};
use serde_json::{Value, json};

use super::check::{Check, Context, DoctorError, OpenClaw};
use crate::findings::{Action, Row};
use crate::openclaw::{self, Install};

/// The secret provider that reads the file `upstream.token` references, in openclaw.json.
pub(crate) const UPSTREAM_TOKEN_PROVIDER: &str = "driftless-upstream";

/// The host of a `ws://host:port/...` URL, brackets of an IPv6 literal removed.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.split_once(':').map_or(authority, |(h, _)| h))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn upstream<'a>(
    cx: &'a Context,
) -> Option<(&'a Config, &'a driftless_core::config::UpstreamConfig)> {
    let dl = cx.driftless.as_ref().ok()?;
    let config = &dl.loaded.config;
    Some((config, config.upstream.as_ref()?))
}

fn openclaw_config<'a>(cx: &'a Context) -> Option<(&'a Install, &'a Value)> {
    match &cx.openclaw {
        OpenClaw::Present(inst) => Some((inst, inst.config.as_ref()?)),
        _ => None,
    }
}

/// Why OpenClaw's configured bind reaches beyond loopback (`None`: loopback, its default).
fn bind_beyond_loopback(config: &Value) -> Option<String> {
    let bind = openclaw::str_at(config, &["gateway", "bind"]).unwrap_or("loopback");
    match bind {
        "loopback" => None,
        "custom" => {
            let host = openclaw::str_at(config, &["gateway", "customBindHost"]).unwrap_or("");
            (!is_loopback(host)).then(|| format!("gateway.bind is \"custom\" on {host:?}"))
        }
        other => Some(format!("gateway.bind is {other:?}")),
    }
}

/// `front-upstream`: OpenClaw can be reached only through driftless: `upstream.url` names a
/// loopback host and OpenClaw's own config binds it to loopback (its default). The repair sets
/// `gateway.bind` to `loopback` in openclaw.json (with `--fix --openclaw`); OpenClaw applies it
/// at its next start.
pub(crate) struct FrontUpstreamReach;

const REACH: &str = "front-upstream";

impl Check for FrontUpstreamReach {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some((_, up)) = upstream(cx) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        match url_host(&up.url) {
            Some(h) if is_loopback(h) => {}
            _ => rows.push(Row::finding(
                REACH,
                format!(
                    "upstream.url {} is not a loopback address: OpenClaw is reachable other than through driftless",
                    up.url
                ),
                "run OpenClaw beside driftless bound to loopback (the same machine or pod) and point upstream.url at 127.0.0.1",
            )),
        }
        if let Some((inst, config)) = openclaw_config(cx)
            && let Some(why) = bind_beyond_loopback(config)
        {
            rows.push(Row::finding(
                REACH,
                format!(
                    "{why} in {}: OpenClaw listens beyond loopback, reachable other than through driftless",
                    inst.paths.config.display()
                ),
                "set gateway.bind to \"loopback\" (--fix --openclaw), then restart OpenClaw",
            ));
        }
        if rows.is_empty() {
            rows.push(Row::ok(
                REACH,
                format!("the upstream {} is on loopback", up.url),
            ));
        }
        rows
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        if upstream(cx).is_none() || cx.openclaw_to_fix().is_none() {
            return Ok(());
        }
        let Some((inst, config)) = openclaw_config(cx) else {
            return Ok(());
        };
        if bind_beyond_loopback(config).is_none() {
            return Ok(());
        }
        let mut config = config.clone();
        let path = &inst.paths.config;
        actions.push(openclaw::edit_config(
            path,
            &mut config,
            format!("set gateway.bind to \"loopback\" in {}", path.display()),
            |root| {
                if let Some(gw) = openclaw::object_at(root, &["gateway"]) {
                    gw.insert("bind".into(), json!("loopback"));
                    gw.remove("customBindHost");
                }
            },
        )?);
        actions.push(Action::note(
            "restart OpenClaw's gateway (`openclaw gateway restart`) so it listens on loopback only",
        ));
        Ok(())
    }
}

/// Where OpenClaw holds its gateway token in plain text: openclaw.json's credential fields and
/// `env` block, and `<state>/.env`. Pairs of (where, value).
fn plaintext_tokens(inst: &Install, config: Option<&Value>) -> Vec<(String, SecretValue)> {
    let path = inst.paths.config.display();
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(config) = config {
        for field in [
            ["gateway", "auth", "token"],
            ["gateway", "auth", "password"],
        ] {
            if let Some(v) = openclaw::str_at(config, &field) {
                out.push((format!("{} in {path}", field.join(".")), v.to_owned()));
            }
        }
        // `env: { vars: { K: v } }` and the shorthand `env: { K: v }`.
        for block in [config.pointer("/env/vars"), config.get("env")] {
            for (k, v) in block.and_then(Value::as_object).into_iter().flatten() {
                if let Some(v) = v.as_str() {
                    out.push((format!("env.{k} in {path}"), v.to_owned()));
                }
            }
        }
    }
    let dotenv = inst.paths.state_dir.join(".env");
    if let Ok(text) = crate::input::read_to_string(&dotenv) {
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if let Some((k, v)) = line.split_once('=')
                && !k.trim_start().starts_with('#')
            {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                out.push((
                    format!("{} in {}", k.trim(), dotenv.display()),
                    v.to_owned(),
                ));
            }
        }
    }
    out.into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(w, v)| (w, SecretValue::new(v)))
        .collect()
}

/// `front-upstream-copy`: the value `upstream.token` resolves to is not also written literally in
/// OpenClaw's config or env files (compared by fingerprint): both must read one source. The repair
/// (with `--fix --openclaw`, when `upstream.token` is a file) replaces a literal
/// `gateway.auth.token` in openclaw.json with a SecretRef to that file; the other places are the
/// user's to edit.
pub(crate) struct FrontUpstreamCopy;

const COPY: &str = "front-upstream-copy";

/// The upstream token's value and, when it is a file reference, the file.
fn upstream_token(cx: &Context) -> Option<(SecretValue, Option<std::path::PathBuf>)> {
    let dl = cx.driftless.as_ref().ok()?;
    let up = dl.loaded.config.upstream.as_ref()?;
    let env = &cx.doctor.env;
    let value = up.token.resolve(env, dl.loaded.base_dir()).ok()?;
    let file = match &up.token {
        SecretInput::Ref(SecretRef::File { .. }) => up
            .token
            .file_path(env, dl.loaded.base_dir())
            .and_then(Result::ok)
            .map(|p| driftless_core::atomic::resolve_symlinks(&p).unwrap_or(p)),
        _ => None,
    };
    Some((value, file))
}

impl Check for FrontUpstreamCopy {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        let Some((value, file)) = upstream_token(cx) else {
            return Vec::new();
        };
        let OpenClaw::Present(inst) = &cx.openclaw else {
            return Vec::new();
        };
        let auth_token = format!("gateway.auth.token in {}", inst.paths.config.display());
        let copies: Vec<Row> = plaintext_tokens(inst, inst.config.as_ref())
            .into_iter()
            .filter(|(_, v)| v.same_as(&value))
            .map(|(at, _)| {
                let fix = match &file {
                    _ if at != auth_token => {
                        "remove it: OpenClaw's gateway reads its token from gateway.auth.token".to_owned()
                    }
                    Some(f) => format!(
                        "make it a SecretRef to {}, the file upstream.token names (--fix --openclaw)",
                        f.display()
                    ),
                    None => "reference one source from both: point upstream.token at a file and make gateway.auth.token a SecretRef to it".to_owned(),
                };
                Row::finding(
                    COPY,
                    format!(
                        "{at} is a copy of driftless's upstream.token ({}): a rotation of one leaves the other behind",
                        value.fingerprint()
                    ),
                    fix,
                )
            })
            .collect();
        if copies.is_empty() {
            return vec![Row::ok(
                COPY,
                "OpenClaw's files hold no copy of driftless's upstream.token",
            )];
        }
        copies
    }

    fn fix(&self, cx: &Context, actions: &mut Vec<Action>) -> Result<(), DoctorError> {
        let Some(inst) = cx.openclaw_to_fix() else {
            return Ok(());
        };
        let (Some((value, Some(file))), Some(config)) = (upstream_token(cx), inst.config.as_ref())
        else {
            return Ok(());
        };
        if !openclaw::str_at(config, &["gateway", "auth", "token"])
            .is_some_and(|t| value.matches(t))
        {
            return Ok(());
        }
        let path = &inst.paths.config;
        let wanted = {
            let mut c = config.clone();
            if let Some(root) = c.as_object_mut() {
                if let Some(p) = openclaw::object_at(root, &["secrets", "providers"]) {
                    p.insert(
                        UPSTREAM_TOKEN_PROVIDER.into(),
                        json!({"source": "file", "path": file.to_string_lossy(), "mode": "singleValue"}),
                    );
                }
                if let Some(auth) = openclaw::object_at(root, &["gateway", "auth"]) {
                    auth.insert(
                        "token".into(),
                        json!({"source": "file", "provider": UPSTREAM_TOKEN_PROVIDER, "id": "value"}),
                    );
                }
            }
            c
        };
        actions.push(openclaw::replace_config(
            path,
            config,
            &wanted,
            &[&value],
            format!(
                "gateway.auth.token in {} now reads {} (the file driftless's upstream.token names) instead of a copy",
                path.display(),
                file.display()
            ),
        )?);
        Ok(())
    }
}

/// `front-device-token`: `<state>/upstream/device-token.json`, the device token OpenClaw issued to
/// driftless, parses. Its permissions are the `permissions` check's (a secret state file). Nothing
/// to repair here: driftless sets an unparsable file aside at its next start and pairs again.
pub(crate) struct FrontDeviceToken;

const DEVICE_TOKEN: &str = "front-device-token";

impl Check for FrontDeviceToken {
    fn audit(&self, cx: &Context) -> Vec<Row> {
        if upstream(cx).is_none() {
            return Vec::new();
        }
        let path = cx
            .doctor
            .state_dir
            .join(UPSTREAM_DIR)
            .join(ISSUED_TOKEN_FILE);
        vec![match read_token_file(&path) {
            Ok(true) => Row::ok(DEVICE_TOKEN, format!("{} parses", path.display())),
            Ok(false) => Row::skipped(
                DEVICE_TOKEN,
                format!(
                    "{} does not exist yet (driftless pairs with OpenClaw at its first relayed session)",
                    path.display()
                ),
            ),
            Err(why) => Row::finding(
                DEVICE_TOKEN,
                format!("{}: {why}", path.display()),
                "restart driftless: it sets the file aside as device-token.json.invalid and pairs with OpenClaw again",
            ),
        }]
    }

    fn fix(&self, _: &Context, _: &mut Vec<Action>) -> Result<(), DoctorError> {
        Ok(())
    }
}

/// Whether the token file exists; why it is unusable. Never quotes the file.
fn read_token_file(path: &Path) -> Result<bool, String> {
    let bytes = match crate::input::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let mut bytes = zeroize::Zeroizing::new(bytes);
    let parsed = serde_json::from_slice::<IssuedTokenFile>(&bytes);
    zeroize::Zeroize::zeroize(&mut *bytes);
    match parsed {
        Ok(mut f) => {
            zeroize::Zeroize::zeroize(&mut f.device_token);
            Ok(true)
        }
        Err(e) => Err(format!(
            "does not parse as driftless's device token file (line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_upstream_urls() {
        for (url, host, lo) in [
            ("ws://127.0.0.1:18790", "127.0.0.1", true),
            ("ws://localhost:1/x", "localhost", true),
            ("ws://[::1]:18790", "::1", true),
            ("ws://10.0.0.5:18790", "10.0.0.5", false),
            ("ws://u:p@openclaw.internal:1?x", "openclaw.internal", false),
        ] {
            assert_eq!(url_host(url), Some(host), "{url}");
            assert_eq!(is_loopback(host), lo, "{url}");
        }
    }

    #[test]
    fn binds_beyond_loopback() {
        for (c, beyond) in [
            (json!({}), false),
            (json!({"gateway": {"bind": "loopback"}}), false),
            (
                json!({"gateway": {"bind": "custom", "customBindHost": "127.0.0.1"}}),
                false,
            ),
            (
                json!({"gateway": {"bind": "custom", "customBindHost": "0.0.0.0"}}),
                true,
            ),
            (json!({"gateway": {"bind": "lan"}}), true),
            (json!({"gateway": {"bind": "tailnet"}}), true),
            (json!({"gateway": {"bind": "auto"}}), true),
        ] {
            assert_eq!(bind_beyond_loopback(&c).is_some(), beyond, "{c}");
        }
    }
}
