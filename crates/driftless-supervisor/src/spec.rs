//! The command-line forms the supervisor takes: `NAME=<secret input>`, `--reload`, `--ready` and
//! `--control`, each parsed into a type with an error that says what to write instead.
//!
//! A secret input on the command line is always a *reference*; a literal would be visible to every
//! user through `ps` and shell history, so it is refused (without echoing it).

use std::net::SocketAddr;
use std::path::PathBuf;

use driftless_core::{SecretInput, SecretRef};
use rustix::process::Signal;

/// The one-line description of the reference syntax, shared by errors and `--help`.
pub const SECRET_INPUT_SYNTAX: &str =
    "file:/path/to/secret, env:VARIABLE or exec:program arg1 arg2 (arguments split on whitespace)";

/// Why a command-line form could not be parsed. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--env {0:?} has no '='; write NAME=file:/path (or env:VAR, exec:cmd)")]
    MissingEquals(String),
    #[error(
        "environment variable name {0:?} is invalid; use letters, digits and '_', not starting with a digit"
    )]
    BadName(String),
    #[error(
        "the value for {0} is not a secret reference; literals are refused because they would show in `ps`. Use {SECRET_INPUT_SYNTAX}"
    )]
    NotAReference(String),
    #[error("the value for {0} is an empty {1}: reference; give it a {2}")]
    EmptyReference(String, &'static str, &'static str),
    #[error("--reload {0:?} is not understood; use signal:HUP (or another signal name) or none")]
    BadReload(String),
    #[error("signal {0:?} is not supported; use HUP, USR1, USR2, INT, QUIT, TERM or WINCH")]
    BadSignal(String),
    #[error(
        "--ready {0:?} is not understood; use tcp:PORT, tcp:HOST:PORT or http://HOST:PORT/path (plain http only)"
    )]
    BadReady(String),
    #[error(
        "--control {0:?} is not understood; use unix:/path/to/socket or http:127.0.0.1:PORT (loopback only)"
    )]
    BadControl(String),
}

/// Checks a name is usable as an environment variable (POSIX portable names).
pub fn check_env_name(name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c == '_' || c.is_ascii_alphabetic() => {
            chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName(name.to_owned()))
    }
}

/// Parses `file:PATH`, `env:VAR` or `exec:PROGRAM ARGS...` for the variable `name`.
pub fn parse_secret_input(name: &str, text: &str) -> Result<SecretInput, SpecError> {
    let empty = |kind, what| SpecError::EmptyReference(name.to_owned(), kind, what);
    if let Some(path) = text.strip_prefix("file:") {
        if path.is_empty() {
            return Err(empty("file", "path"));
        }
        return Ok(SecretInput::Ref(SecretRef::File {
            path: path.to_owned(),
        }));
    }
    if let Some(id) = text.strip_prefix("env:") {
        check_env_name(id).map_err(|_| empty("env", "variable name"))?;
        return Ok(SecretInput::Ref(SecretRef::Env { id: id.to_owned() }));
    }
    if let Some(cmd) = text.strip_prefix("exec:") {
        let command: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            return Err(empty("exec", "command"));
        }
        return Ok(SecretInput::Ref(SecretRef::Exec {
            command,
            timeout_ms: None,
        }));
    }
    Err(SpecError::NotAReference(name.to_owned()))
}

/// Parses one `--env NAME=<secret input>`.
pub fn parse_env_arg(arg: &str) -> Result<(String, SecretInput), SpecError> {
    let Some((name, value)) = arg.split_once('=') else {
        // Only the part that cannot be a secret: if there is no '=', the whole thing is a name.
        return Err(SpecError::MissingEquals(
            arg.chars().take(40).collect::<String>(),
        ));
    };
    check_env_name(name)?;
    Ok((name.to_owned(), parse_secret_input(name, value)?))
}

/// What to do when a secret changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadMode {
    /// The child cannot reload in place: restart it with a fresh environment.
    Restart,
    /// The child re-reads its sources on this signal.
    Signal(Signal),
}

impl ReloadMode {
    pub fn describe(&self) -> String {
        match self {
            ReloadMode::Restart => "none (restart)".into(),
            ReloadMode::Signal(s) => format!("signal:{}", signal_name(*s)),
        }
    }
}

const SIGNALS: [(&str, Signal); 7] = [
    ("HUP", Signal::HUP),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("TERM", Signal::TERM),
    ("WINCH", Signal::WINCH),
];

fn signal_name(s: Signal) -> &'static str {
    SIGNALS
        .iter()
        .find(|(_, sig)| *sig == s)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// Parses `HUP`, `SIGHUP` or `hup`.
pub fn parse_signal(text: &str) -> Result<Signal, SpecError> {
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, s)| *s)
        .ok_or_else(|| SpecError::BadSignal(text.to_owned()))
}

/// Parses `--reload signal:NAME | none | restart`.
pub fn parse_reload(text: &str) -> Result<ReloadMode, SpecError> {
    match text {
        "none" | "restart" => Ok(ReloadMode::Restart),
        _ => match text.strip_prefix("signal:") {
            Some(sig) => Ok(ReloadMode::Signal(parse_signal(sig)?)),
            None => Err(SpecError::BadReload(text.to_owned())),
        },
    }
}

/// How to tell the child is ready after a (re)start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyProbe {
    /// A TCP connect to `host:port` succeeds.
    Tcp { host: String, port: u16 },
    /// `GET path` on `host:port` answers 2xx.
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

/// Parses `tcp:PORT`, `tcp:HOST:PORT`, `http://HOST:PORT/path` or `http:HOST:PORT/path`.
pub fn parse_ready(text: &str) -> Result<ReadyProbe, SpecError> {
    let bad = || SpecError::BadReady(text.to_owned());
    if let Some(rest) = text.strip_prefix("tcp:") {
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => ("127.0.0.1".to_owned(), rest),
        };
        let port = port.parse().map_err(|_| bad())?;
        return Ok(ReadyProbe::Tcp { host, port });
    }
    let url = text.strip_prefix("http:").ok_or_else(bad)?;
    let url = url.strip_prefix("//").unwrap_or(url);
    let (authority, path) = match url.find('/') {
        Some(i) => (&url[..i], url[i..].to_owned()),
        None => (url, "/".to_owned()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
        None => (authority.to_owned(), 80),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(ReadyProbe::Http { host, port, path })
}

/// Where the control endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// HTTP/1.1 over a unix socket (mode 0600): the file permissions are the authentication.
    Unix(PathBuf),
    /// HTTP on a loopback address, authenticated by its own bearer token.
    Http(SocketAddr),
}

/// Parses `unix:PATH` or `http:127.0.0.1:PORT`.
pub fn parse_control(text: &str) -> Result<ControlAddr, SpecError> {
    let bad = || SpecError::BadControl(text.to_owned());
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(ControlAddr::Unix(PathBuf::from(path)));
    }
    let addr = text.strip_prefix("http:").ok_or_else(bad)?;
    let addr = addr.strip_prefix("//").unwrap_or(addr);
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    if !addr.ip().is_loopback() {
        return Err(bad());
    }
    Ok(ControlAddr::Http(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_input_forms() {
        let (n, i) = parse_env_arg("API_KEY=file:/run/secrets/key").unwrap();
        assert_eq!(n, "API_KEY");
        assert_eq!(i.describe(), "file:/run/secrets/key");
        let (_, i) = parse_env_arg("K=env:UPSTREAM_KEY").unwrap();
        assert_eq!(i.kind(), "env");
        let (_, i) = parse_env_arg("K=exec:pass show  api/key").unwrap();
        match i {
            SecretInput::Ref(SecretRef::Exec { command, .. }) => {
                assert_eq!(command, ["pass", "show", "api/key"])
            }
            other => panic!("not exec: {other:?}"),
        }
        // A value containing '=' stays whole.
        let (_, i) = parse_env_arg("K=file:/a=b").unwrap();
        assert_eq!(i.describe(), "file:/a=b");
    }

    #[test]
    fn literals_are_refused_without_echo() {
        let err = parse_env_arg("K=sk-canary-literal-123").unwrap_err();
        assert_eq!(err, SpecError::NotAReference("K".into()));
        assert!(!err.to_string().contains("sk-canary"));
        assert!(matches!(
            parse_env_arg("1K=file:/x"),
            Err(SpecError::BadName(_))
        ));
        assert!(matches!(
            parse_env_arg("K=file:"),
            Err(SpecError::EmptyReference(..))
        ));
        assert!(matches!(
            parse_env_arg("K=exec:  "),
            Err(SpecError::EmptyReference(..))
        ));
        assert!(matches!(
            parse_env_arg("K=env:"),
            Err(SpecError::EmptyReference(..))
        ));
        assert!(matches!(
            parse_env_arg("NOEQUALS"),
            Err(SpecError::MissingEquals(_))
        ));
    }

    #[test]
    fn reload_ready_control_forms() {
        assert_eq!(parse_reload("none").unwrap(), ReloadMode::Restart);
        assert_eq!(
            parse_reload("signal:HUP").unwrap(),
            ReloadMode::Signal(Signal::HUP)
        );
        assert_eq!(
            parse_reload("signal:sigusr1").unwrap(),
            ReloadMode::Signal(Signal::USR1)
        );
        assert!(parse_reload("signal:KILL").is_err());
        assert!(parse_reload("sometimes").is_err());

        assert_eq!(
            parse_ready("tcp:8080").unwrap(),
            ReadyProbe::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse_ready("http://127.0.0.1:9/healthz").unwrap(),
            ReadyProbe::Http {
                host: "127.0.0.1".into(),
                port: 9,
                path: "/healthz".into()
            }
        );
        assert_eq!(
            parse_ready("http:localhost:8080/ready").unwrap(),
            ReadyProbe::Http {
                host: "localhost".into(),
                port: 8080,
                path: "/ready".into()
            }
        );
        assert!(parse_ready("https://x/").is_err());
        assert!(parse_ready("tcp:notaport").is_err());

        assert_eq!(
            parse_control("unix:/tmp/s.sock").unwrap(),
            ControlAddr::Unix("/tmp/s.sock".into())
        );
        assert_eq!(
            parse_control("http:127.0.0.1:7000").unwrap(),
            ControlAddr::Http("127.0.0.1:7000".parse().unwrap())
        );
        assert!(parse_control("http:0.0.0.0:7000").is_err());
    }
}
