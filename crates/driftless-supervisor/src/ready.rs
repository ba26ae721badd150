//! Readiness probes: is the freshly started child serving yet?

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::ReadyProbe;

/// How long one probe attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// One probe attempt; true when the child answered as required.
pub async fn check(probe: &ReadyProbe) -> bool {
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(probe))
        .await
        .unwrap_or(false)
}

async fn attempt(probe: &ReadyProbe) -> bool {
    match probe {
        ReadyProbe::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
        ReadyProbe::Http { host, port, path } => http_ok(host, *port, path).await,
    }
}

/// A minimal HTTP/1.1 GET: only the status line is read, so any body or framing is fine.
async fn http_ok(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.1 200 ..." — the status code is bytes 9..12.
    n >= 12 && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let host = "127.0.0.1".to_string();
        assert!(
            check(&ReadyProbe::Tcp {
                host: host.clone(),
                port
            })
            .await
        );

        // The TCP probe's connection is first in the backlog; then serve one 200 and one 503.
        let server = tokio::spawn(async move {
            drop(listener.accept().await.unwrap());
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await.unwrap();
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let probe = ReadyProbe::Http {
            host: host.clone(),
            port,
            path: "/healthz".into(),
        };
        assert!(check(&probe).await);
        assert!(!check(&probe).await);
        server.await.unwrap();

        // Nothing listening any more.
        assert!(!check(&ReadyProbe::Tcp { host, port }).await);
    }
}
