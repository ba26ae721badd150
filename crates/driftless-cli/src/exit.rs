//! Exit codes, decided in one place. Values follow sysexits.h where one fits.

use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// A check ran and found problems (e.g. `secrets check` with an unresolved secret).
pub const CHECK_FAILED: u8 = 1;
/// The config file is missing, unreadable or invalid (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// Anything else that went wrong (EX_SOFTWARE).
pub const FAILURE: u8 = 70;
/// The gateway could not be reached (EX_UNAVAILABLE).
pub const UNREACHABLE: u8 = 69;
/// The gateway refused our credential or scope (EX_NOPERM).
pub const AUTH: u8 = 77;
/// The gateway answered something we did not understand, or closed unexpectedly (EX_PROTOCOL).
pub const PROTOCOL: u8 = 76;

/// An error with the exit code it should produce.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        let error = e.into();
        let session = error
            .chain()
            .find_map(|c| c.downcast_ref::<driftless_client::session::SessionError>());
        let rotation = error
            .chain()
            .find_map(|c| c.downcast_ref::<driftless_ops::rotation::RotateError>());
        let client = error
            .chain()
            .find_map(|c| c.downcast_ref::<driftless_client::connection::ClientError>())
            .or_else(|| rotation.and_then(|r| r.client()))
            .or_else(|| session.and_then(|s| s.client()));
        let code = if let Some(c) = client {
            client_code(c)
        } else if error.chain().any(|c| c.is::<driftless_core::ConfigError>())
            || rotation.is_some_and(|r| r.is_config())
            || matches!(
                session,
                Some(driftless_client::session::SessionError::Config(_))
            )
        {
            CONFIG
        } else {
            FAILURE
        };
        Failure { code, error }
    }
}

/// The exit code for a gateway client error.
fn client_code(e: &driftless_client::connection::ClientError) -> u8 {
    use driftless_client::connection::ClientError as E;
    match e {
        _ if e.is_auth() => AUTH,
        E::Rpc { error, .. } if error.code == driftless_protocol::codes::FORBIDDEN => AUTH,
        E::Rpc { .. } => FAILURE,
        E::Unreachable { .. } | E::Timeout(_) => UNREACHABLE,
        E::Rejected { .. } | E::Closed { .. } | E::Protocol(_) => PROTOCOL,
    }
}

pub type CmdResult = Result<u8, Failure>;

/// Prints the error chain (redacted) and turns the result into the process exit code.
pub fn finish(result: CmdResult) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            let msg = format!("{:#}", f.error);
            eprintln!("error: {}", driftless_core::redact::redact(&msg));
            ExitCode::from(f.code)
        }
    }
}
