//! The one WebSocket client codec: the CLI's [`crate::connection`], the bench and the end-to-end
//! tests all open, send and read through it.
//!
//! Every read takes a *deadline* (an instant), not a duration: a peer that keeps sending events
//! (a `tick` every second) but never answers cannot extend an exchange. Incoming messages are
//! capped at OpenClaw's `maxPayload`.

use std::net::{IpAddr, SocketAddr};

use driftless_protocol::{self as proto, Frame};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a close frame may take to leave (a peer that stopped reading cannot hold us).
const CLOSE_SEND: std::time::Duration = std::time::Duration::from_secs(1);

/// The socket under a [`Wire`].
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a wire operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// TCP connect or the HTTP upgrade failed; `status` is the HTTP status when the server
    /// answered the upgrade with one (e.g. 503 over OpenClaw's pre-auth budget).
    #[error("{message}")]
    Open {
        message: String,
        status: Option<u16>,
    },
    /// The deadline passed.
    #[error("no answer in time")]
    Timeout,
    /// The peer closed (1005 without a code, 1006 without a close frame).
    #[error("closed ({code} {reason})")]
    Closed { code: u16, reason: String },
    /// A socket or framing error (including a message over the size cap).
    #[error("{0}")]
    Io(String),
    /// A text message that is not a frame.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// How to open a socket.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Connect from this local address (tests and the bench use other loopback addresses).
    pub bind_addr: Option<IpAddr>,
    /// Small read buffer and no write buffer, for holding thousands of idle sockets (the bench).
    pub small_buffers: bool,
    /// Disable Nagle (the bench measures round trips).
    pub nodelay: bool,
}

/// One incoming message: a text frame or the close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// The peer's close code and reason (1005 without a code, 1006 when the socket just ended).
    Closed(u16, String),
}

/// `url` with any `user:password@` removed, for messages: a password in a URL is a secret.
pub fn display_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// An open WebSocket to a gateway.
pub struct Wire {
    ws: Ws,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

fn ws_config(opts: &OpenOptions) -> WebSocketConfig {
    let config = WebSocketConfig::default()
        .max_message_size(Some(proto::MAX_PAYLOAD_BYTES))
        .max_frame_size(Some(proto::MAX_PAYLOAD_BYTES));
    if opts.small_buffers {
        config.read_buffer_size(4096).write_buffer_size(0)
    } else {
        config
    }
}

fn open_error(e: WsError) -> WireError {
    match e {
        WsError::Http(resp) => WireError::Open {
            message: format!(
                "the server answered the upgrade with HTTP {}",
                resp.status()
            ),
            status: Some(resp.status().as_u16()),
        },
        // tungstenite's URL errors can quote the URL; say what is wrong without it.
        WsError::Url(e) => WireError::Open {
            message: format!("invalid URL ({})", url_error_kind(&e)),
            status: None,
        },
        other => WireError::Open {
            message: other.to_string(),
            status: None,
        },
    }
}

fn url_error_kind(e: &tokio_tungstenite::tungstenite::error::UrlError) -> &'static str {
    use tokio_tungstenite::tungstenite::error::UrlError as U;
    match e {
        U::TlsFeatureNotEnabled => "wss:// is not supported by this build",
        U::NoHostName | U::EmptyHostName => "no host name",
        U::UnableToConnect(_) => "unable to connect",
        U::UnsupportedUrlScheme => "the scheme must be ws://",
        U::NoPathOrQuery => "no path",
    }
}

impl Wire {
    /// Opens `url` (TCP connect and HTTP upgrade), all before `deadline`.
    pub async fn open(url: &str, opts: &OpenOptions, deadline: Instant) -> Result<Wire, WireError> {
        tokio::time::timeout_at(deadline, Wire::open_unbounded(url, opts))
            .await
            .map_err(|_| WireError::Timeout)?
    }

    async fn open_unbounded(url: &str, opts: &OpenOptions) -> Result<Wire, WireError> {
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().map_err(|_| WireError::Open {
                message: "invalid URL".into(),
                status: None,
            })?;
        let host = uri
            .host()
            .ok_or_else(|| WireError::Open {
                message: "the URL has no host".into(),
                status: None,
            })?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("wss") => 443,
            _ => 80,
        });
        let io = |what: &str, e: std::io::Error| WireError::Open {
            message: format!("{what}: {e}"),
            status: None,
        };
        let remote: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| io("cannot resolve the host", e))?
            .next()
            .ok_or_else(|| WireError::Open {
                message: "the host has no address".into(),
                status: None,
            })?;
        let socket = if remote.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io("socket", e))?;
        if let Some(local) = opts.bind_addr {
            socket
                .bind(SocketAddr::new(local, 0))
                .map_err(|e| io(&format!("cannot bind {local}"), e))?;
        }
        let stream = socket.connect(remote).await.map_err(|e| io("connect", e))?;
        if opts.nodelay {
            stream.set_nodelay(true).map_err(|e| io("nodelay", e))?;
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(ws_config(opts)),
        )
        .await
        .map_err(open_error)?;
        Ok(Wire { ws })
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: String) -> Result<(), WireError> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| WireError::Io(e.to_string()))
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        self.send_text(frame.to_text()).await
    }

    /// The next text message or the close, before `deadline` (pings and binary are skipped).
    pub async fn recv(&mut self, deadline: Instant) -> Result<Incoming, WireError> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| WireError::Timeout)?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Incoming::Text(t.as_str().to_owned())),
                Some(Ok(Message::Close(c))) => {
                    return Ok(c
                        .map(|c| Incoming::Closed(u16::from(c.code), c.reason.to_string()))
                        .unwrap_or(Incoming::Closed(1005, String::new())));
                }
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    return Ok(Incoming::Closed(1006, String::new()));
                }
                Some(Err(e)) => return Err(WireError::Io(e.to_string())),
            }
        }
    }

    /// The next frame before `deadline`; a close is [`WireError::Closed`].
    pub async fn recv_frame(&mut self, deadline: Instant) -> Result<Frame, WireError> {
        match self.recv(deadline).await? {
            Incoming::Text(t) => {
                serde_json::from_str(&t).map_err(|e| WireError::Invalid(e.to_string()))
            }
            Incoming::Closed(code, reason) => Err(WireError::Closed { code, reason }),
        }
    }

    /// Reads until the response to `id`, skipping events, all before `deadline`.
    pub async fn response(
        &mut self,
        id: &str,
        deadline: Instant,
    ) -> Result<proto::ResponseFrame, WireError> {
        loop {
            if let Frame::Res(r) = self.recv_frame(deadline).await?
                && r.id == id
            {
                return Ok(*r);
            }
        }
    }

    /// Sends a request and reads its response, the whole exchange before `deadline`.
    pub async fn call(
        &mut self,
        id: &str,
        method: &str,
        params: Option<serde_json::Value>,
        deadline: Instant,
    ) -> Result<proto::ResponseFrame, WireError> {
        let req = Frame::Req(proto::RequestFrame {
            id: id.to_owned(),
            method: method.to_owned(),
            params,
        });
        tokio::time::timeout_at(deadline, self.send(&req))
            .await
            .map_err(|_| WireError::Timeout)??;
        self.response(id, deadline).await
    }

    /// Sends a close frame (bounded by [`CLOSE_SEND`]) and reads until the peer's answer or
    /// `deadline` (a deadline already past sends and returns).
    pub async fn close(mut self, deadline: Instant) {
        let _ = tokio::time::timeout(CLOSE_SEND, self.ws.close(None)).await;
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// The socket itself, for tests that send what no client should (bad frames, raw closes).
    pub fn socket(&mut self) -> &mut Ws {
        &mut self.ws
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_drops_userinfo() {
        assert_eq!(
            display_url("ws://user:pw@127.0.0.1:9/x?a@b"),
            "ws://127.0.0.1:9/x?a@b"
        );
        assert_eq!(display_url("ws://a:b@c@host"), "ws://host");
        assert_eq!(display_url("ws://127.0.0.1:9"), "ws://127.0.0.1:9");
        assert_eq!(display_url("not a url"), "not a url");
        assert_eq!(display_url("user:pw@host:1/"), "host:1/");
    }
}
