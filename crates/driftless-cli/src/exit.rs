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

/// An error with the exit code it should produce.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    #[allow(dead_code)] // used by commands that pick their own exit code
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
        let code = if error.chain().any(|c| c.is::<driftless_core::ConfigError>()) {
            CONFIG
        } else {
            FAILURE
        };
        Failure { code, error }
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
