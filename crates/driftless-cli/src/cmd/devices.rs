//! `driftless devices list|approve|reject|remove|rotate|revoke`: device pairing on a gateway.

use driftless_core::SecretValue;
use serde_json::{Value, json};

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

pub fn run(ctx: &Ctx, cmd: Command) -> CmdResult {
    let (a, method, params) = match &cmd {
        Command::List(a) => (a, "device.pair.list", json!({})),
        Command::Approve { request_id, client } => (
            client,
            "device.pair.approve",
            json!({"requestId": request_id}),
        ),
        Command::Reject { request_id, client } => (
            client,
            "device.pair.reject",
            json!({"requestId": request_id}),
        ),
        Command::Remove { device_id, client } => {
            (client, "device.pair.remove", json!({"deviceId": device_id}))
        }
        Command::Rotate {
            device_id,
            role,
            client,
        } => (
            client,
            "device.token.rotate",
            json!({"deviceId": device_id, "role": role}),
        ),
        Command::Revoke {
            device_id,
            role,
            client,
        } => (
            client,
            "device.token.revoke",
            json!({"deviceId": device_id, "role": role}),
        ),
    };
    let payload = with_connection(ctx, a, async |s| {
        let mut payload = s.conn.request(method, Some(params.clone())).await?;
        // A rotated token comes back only when it is this device's own: keep it, never print it.
        if let Some(token) = payload.get("token").and_then(Value::as_str) {
            let token = SecretValue::new(token.to_owned());
            driftless_core::redact::register(&token);
            let scopes = serde_json::from_value(payload["scopes"].clone()).unwrap_or_default();
            let stored = s.store_own_token(
                payload["deviceId"].as_str().unwrap_or_default(),
                payload["role"].as_str().unwrap_or("operator"),
                token,
                scopes,
            )?;
            payload.as_object_mut().map(|o| o.remove("token"));
            payload["storedLocally"] = json!(stored);
        }
        Ok(payload)
    })?;
    if a.json {
        output::print_json(&payload);
        return Ok(OK);
    }
    match cmd {
        Command::List(_) => print_list(&payload),
        Command::Approve { request_id, .. } => say!(
            "approved {request_id}: device {} is paired; it gets its device token on its next connect",
            payload["device"]["deviceId"].as_str().unwrap_or("?")
        ),
        Command::Reject { request_id, .. } => say!("rejected {request_id}"),
        Command::Remove { device_id, .. } => say!("removed device {device_id}"),
        Command::Rotate { device_id, .. } => say!(
            "rotated the {} token of {device_id}: new fingerprint {}{}",
            payload["role"].as_str().unwrap_or("?"),
            payload["fingerprint"].as_str().unwrap_or("?"),
            if payload["storedLocally"] == true {
                " (this device's own; stored)"
            } else {
                " (the device gets a new token on its next connect with the shared secret)"
            }
        ),
        Command::Revoke {
            device_id, role, ..
        } => {
            say!("revoked the {role} token of {device_id}")
        }
    }
    Ok(OK)
}

fn print_list(p: &Value) {
    let empty = vec![];
    let pending = p["pending"].as_array().unwrap_or(&empty);
    let paired = p["paired"].as_array().unwrap_or(&empty);
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    say!("Pending requests: {}", pending.len());
    if !pending.is_empty() {
        let mut t = output::table(&["REQUEST", "DEVICE", "ROLE", "SCOPES", "FROM", "REASON"]);
        for r in pending {
            t.add_row(vec![
                s(&r["requestId"]),
                short(&s(&r["deviceId"])),
                s(&r["role"]),
                join(&r["scopes"]),
                s(&r["remoteIp"]),
                s(&r["reason"]),
            ]);
        }
        say!("{t}");
    }
    say!("Paired devices: {}", paired.len());
    if !paired.is_empty() {
        let mut t = output::table(&["DEVICE", "CLIENT", "ROLES", "TOKENS", "LAST IP"]);
        for d in paired {
            let tokens: Vec<String> = d["tokens"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|tk| {
                    format!(
                        "{} {}{}",
                        s(&tk["role"]),
                        s(&tk["fingerprint"]),
                        if tk.get("revokedAtMs").is_some() {
                            " (revoked)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            t.add_row(vec![
                s(&d["deviceId"]),
                s(&d["clientId"]),
                join(&d["roles"]),
                tokens.join(", "),
                s(&d["remoteIp"]),
            ]);
        }
        say!("{t}");
    }
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
