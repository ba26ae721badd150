//! The control endpoint: HTTP/1.1 over a unix socket (mode 0600; the file permissions are the
//! authentication) or over loopback TCP with its own bearer token.
//!
//! `GET /status` → [`Status`]; `POST /env/patch` → [`PatchOutcome`]. Errors are
//! `{"ok": false, "error": "..."}` with a 4xx status and never echo a request value.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use driftless_core::SecretValue;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::SupervisorError;
use crate::spec::{ControlAddr, SECRET_INPUT_SYNTAX};
use crate::status::{PatchError, PatchRequest, Status};
use crate::supervisor::Request;

#[derive(Clone)]
struct Ctl {
    requests: mpsc::Sender<Request>,
    status: Arc<Mutex<Status>>,
    /// Required for the TCP endpoint; `None` on the unix socket.
    token: Option<Arc<SecretValue>>,
}

/// A bound control listener, ready to serve.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Binds the endpoint now, so a bad address fails the start instead of a later request.
pub async fn bind(addr: &ControlAddr) -> Result<Listener, SupervisorError> {
    let err = |e: std::io::Error| SupervisorError::ControlBind {
        addr: describe(addr),
        reason: e.to_string(),
    };
    match addr {
        ControlAddr::Http(sock) => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(sock).await.map_err(err)?,
        )),
        ControlAddr::Unix(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                driftless_core::atomic::create_private_dir(dir).map_err(err)?;
            }
            if path.exists() {
                // A live supervisor answers; a stale socket from a killed one does not.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(SupervisorError::ControlInUse(path.clone()));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            Ok(Listener::Unix(listener))
        }
    }
}

/// How the endpoint is shown in logs.
pub fn describe(addr: &ControlAddr) -> String {
    match addr {
        ControlAddr::Unix(p) => format!("unix:{}", p.display()),
        ControlAddr::Http(a) => format!("http://{a}"),
    }
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: Listener,
    requests: mpsc::Sender<Request>,
    status: Arc<Mutex<Status>>,
    token: Option<SecretValue>,
) {
    let ctl = Ctl {
        requests,
        status,
        token: token.map(Arc::new),
    };
    let app = Router::new()
        .route("/status", get(get_status))
        .route("/env/patch", post(post_patch))
        .with_state(ctl);
    let result = match listener {
        Listener::Tcp(l) => axum::serve(l, app).await,
        Listener::Unix(l) => axum::serve(l, app).await,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "the control endpoint stopped");
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    let body = json!({ "ok": false, "error": driftless_core::redact::redact(msg) });
    (status, axum::Json(body)).into_response()
}

fn authorized(ctl: &Ctl, headers: &HeaderMap) -> bool {
    let Some(token) = &ctl.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| token.matches(presented))
}

const UNAUTHORIZED: &str =
    "missing or wrong bearer token; send `Authorization: Bearer <control token>`";

async fn get_status(State(ctl): State<Ctl>, headers: HeaderMap) -> Response {
    if !authorized(&ctl, &headers) {
        return error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    let status = ctl.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(status).into_response()
}

async fn post_patch(State(ctl): State<Ctl>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&ctl, &headers) {
        return error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    let req: PatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        // serde's message can quote the offending value, which may be a secret: position only.
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "invalid body at line {} column {}; expected {{\"set\": {{\"NAME\": \"<reference>\"}}, \"unset\": [\"NAME\"]}} where a reference is {SECRET_INPUT_SYNTAX}",
                    e.line(),
                    e.column()
                ),
            );
        }
    };
    let (tx, rx) = oneshot::channel();
    if ctl.requests.send(Request::Patch(req, tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(outcome)) => axum::Json(outcome).into_response(),
        Ok(Err(e @ PatchError::Invalid(_))) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(e @ PatchError::Resolve(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is shutting down",
        ),
    }
}
