//! `driftless devices list|approve|reject|remove|rotate|revoke`: device pairing on a gateway.

use driftless_client::connection::result_as;
use driftless_core::SecretValue;
use driftless_protocol::payloads::{
    DeviceIdParams, DevicePairApproved, DevicePairList, DeviceRoleParams, DeviceTokenRotated,
    EmptyParams, RequestIdParams,
};
use serde_json::Value;

use crate::cmd::gateway::{ClientArgs, with_connection};
use crate::exit::{CmdResult, OK};
use crate::{Ctx, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List pending pairing requests and paired devices (token fingerprints only)
    #[command(after_help = "Examples:\n  driftless devices list\n  driftless devices list --json")]
    List(ClientArgs),
    /// Approve a pending pairing request
    #[command(
        after_help = "Examples:\n  driftless devices approve 5b1e…   # the requestId from `devices list`"
    )]
    Approve {
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reject a pending pairing request
    Reject {
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unpair a device (its sessions are closed with 4001)
    Remove {
        device_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue a new device token (the old one stops working; sessions are closed with 4001)
    Rotate {
        device_id: String,
        #[arg(long, default_value = "operator")]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a device token (sessions are closed with 4001; the device must be approved again)
    Revoke {
        device_id: String,
        #[arg(long, default_value = "operator")]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `devices rotate --json`: the result without its token, and whether it was this device's own
/// and stored (only when a token came back).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotateOutput {
    #[serde(flatten)]
    rotated: DeviceTokenRotated,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_locally: Option<bool>,
}

fn params(p: &impl serde::Serialize) -> Value {
    serde_json::to_value(p).expect("params serialize")
}

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let (a, method, params) = match &cmd {
        Command::List(a) => (a, "device.pair.list", params(&EmptyParams {})),
        Command::Approve { request_id, client } => (
            client,
            "device.pair.approve",
            params(&RequestIdParams {
                request_id: request_id.clone(),
            }),
        ),
        Command::Reject { request_id, client } => (
            client,
            "device.pair.reject",
            params(&RequestIdParams {
                request_id: request_id.clone(),
            }),
        ),
        Command::Remove { device_id, client } => (
            client,
            "device.pair.remove",
            params(&DeviceIdParams {
                device_id: device_id.clone(),
            }),
        ),
        Command::Rotate {
            device_id,
            role,
            client,
        } => (
            client,
            "device.token.rotate",
            params(&role_params(device_id, role)),
        ),
        Command::Revoke {
            device_id,
            role,
            client,
        } => (
            client,
            "device.token.revoke",
            params(&role_params(device_id, role)),
        ),
    };
    let rotating = matches!(cmd, Command::Rotate { .. });
    let payload = with_connection(ctx, a, async |s| {
        let payload = s.conn.request(method, Some(params.clone())).await?;
        if !rotating {
            return Ok(payload);
        }
        // A rotated token comes back only when it is this device's own: keep it, never print it.
        let mut rotated: DeviceTokenRotated = result_as(method, &payload)?;
        let stored_locally = match rotated.token.take() {
            Some(token) => {
                let token = SecretValue::new(token.0);
                driftless_core::redact::register(&token);
                let role = Some(rotated.role.as_str())
                    .filter(|r| !r.is_empty())
                    .unwrap_or("operator");
                Some(s.store_own_token(&rotated.device_id, role, token, rotated.scopes.clone())?)
            }
            None => None,
        };
        Ok(serde_json::to_value(RotateOutput {
            rotated,
            stored_locally,
        })?)
    })?;
    if a.json {
        output::print_json(&payload);
        return Ok(OK);
    }
    match cmd {
        Command::List(_) => print_list(&result_as(method, &payload)?),
        Command::Approve { request_id, .. } => {
            let approved: DevicePairApproved = result_as(method, &payload)?;
            say!(
                "approved {request_id}: device {} is paired; it gets its device token on its next connect",
                approved.device.device_id
            )
        }
        Command::Reject { request_id, .. } => say!("rejected {request_id}"),
        Command::Remove { device_id, .. } => say!("removed device {device_id}"),
        Command::Rotate { device_id, .. } => {
            let out: RotateOutput = result_as(method, &payload)?;
            say!(
                "rotated the {} token of {device_id}: new fingerprint {}{}",
                or(&out.rotated.role, "?"),
                or(&out.rotated.fingerprint, "?"),
                if out.stored_locally == Some(true) {
                    " (this device's own; stored)"
                } else {
                    " (the device gets a new token on its next connect with the shared secret)"
                }
            )
        }
        Command::Revoke {
            device_id, role, ..
        } => {
            say!("revoked the {role} token of {device_id}")
        }
    }
    Ok(OK)
}

fn role_params(device_id: &str, role: &str) -> DeviceRoleParams {
    DeviceRoleParams {
        device_id: device_id.to_owned(),
        role: role.to_owned(),
        scopes: None,
    }
}

/// `value`, or `missing` for an empty one (a peer that left the field out).
fn or<'a>(value: &'a str, missing: &'a str) -> &'a str {
    if value.is_empty() { missing } else { value }
}

fn print_list(p: &DevicePairList) {
    let s = |v: &Option<String>| v.as_deref().unwrap_or("-").to_owned();
    let d = |v: &str| or(v, "-").to_owned();
    say!("Pending requests: {}", p.pending.len());
    if !p.pending.is_empty() {
        let mut t = output::table(&["REQUEST", "DEVICE", "ROLE", "SCOPES", "FROM", "REASON"]);
        for r in &p.pending {
            t.add_row(vec![
                d(&r.request_id),
                short(&d(&r.device_id)),
                d(&r.role),
                r.scopes.join(","),
                s(&r.metadata.remote_ip),
                d(&r.reason),
            ]);
        }
        say!("{t}");
    }
    say!("Paired devices: {}", p.paired.len());
    if !p.paired.is_empty() {
        let mut t = output::table(&["DEVICE", "CLIENT", "ROLES", "TOKENS", "LAST IP"]);
        for dev in &p.paired {
            let tokens: Vec<String> = dev
                .tokens
                .iter()
                .map(|tk| {
                    format!(
                        "{} {}{}",
                        d(&tk.role),
                        d(&tk.fingerprint),
                        if tk.revoked_at_ms.is_some() {
                            " (revoked)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            t.add_row(vec![
                d(&dev.device_id),
                s(&dev.metadata.client_id),
                dev.roles.join(","),
                tokens.join(", "),
                s(&dev.metadata.remote_ip),
            ]);
        }
        say!("{t}");
    }
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}
