//! The floor: a minimal server on the gateway's own stack (tokio + tokio-tungstenite, the versions
//! in the workspace's lock file) doing the same exchange as a driftless token session and nothing
//! more. It sends the same `connect.challenge` (built by the protocol crate, with a fresh nonce),
//! then answers each request frame, after parsing its `id` and `method`, with driftless's own reply
//! bytes, captured from the driftless under test at the start of the run. No authentication, no
//! state, no logging. It runs as its own process (`driftless-bench floor-server`) and is measured
//! exactly as the gateways are, so driftless ÷ floor is what driftless costs beyond the kernel's
//! TCP and WebSocket work and the libraries it shares with the floor.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::scenarios::Handshake;

/// A captured response frame, split around its request id: `before + "<id>" + after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    before: String,
    after: String,
}

/// A placeholder that serialises without escapes, so it can be found in the text.
const ID_MARK: &str = "driftless-floor-id-mark";

impl Reply {
    fn from_captured(text: &str) -> Result<Reply> {
        let mut frame: Value = serde_json::from_str(text).context("a captured reply")?;
        frame["id"] = Value::String(ID_MARK.into());
        let text = frame.to_string();
        let (before, after) = text
            .split_once(&format!("\"{ID_MARK}\""))
            .context("the captured reply has no id")?;
        Ok(Reply {
            before: before.into(),
            after: after.into(),
        })
    }

    fn render(&self, id: &str) -> String {
        let id = serde_json::to_string(id).expect("a string serialises");
        let mut text = String::with_capacity(self.before.len() + id.len() + self.after.len());
        text.push_str(&self.before);
        text.push_str(&id);
        text.push_str(&self.after);
        text
    }
}

/// The replies the floor sends, by request method, as driftless sent them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frames {
    pub replies: BTreeMap<String, Reply>,
}

/// The part of a request frame the exchange needs.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
}

/// Longest the capture waits for any one frame.
const CAPTURE_STEP: Duration = Duration::from_secs(10);

/// One token session against driftless, recording its `hello-ok` and `health` replies. The
/// `connect` sent is the bench's (client `cli`, scope `operator.read`), so the replies are the
/// ones every measured session gets.
pub async fn capture(addr: SocketAddr, token: &str) -> Result<Frames> {
    let (mut ws, _) = tokio::time::timeout(
        CAPTURE_STEP,
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await
    .context("capturing driftless's replies: no upgrade in time")?
    .context("capturing driftless's replies: upgrade")?;
    let connect = json!({
        "type": "req", "id": "1", "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "cli", "version": "driftless-bench", "platform": "linux",
                       "deviceFamily": "Linux", "mode": "cli"},
            "caps": [], "role": "operator", "scopes": ["operator.read"],
            "auth": {"token": token},
        }
    });
    let mut replies = BTreeMap::new();
    for (id, method, frame) in [
        ("1", "connect", connect),
        (
            "2",
            "health",
            json!({"type": "req", "id": "2", "method": "health", "params": {}}),
        ),
    ] {
        ws.send(Message::text(frame.to_string())).await?;
        let text = loop {
            let msg = tokio::time::timeout(CAPTURE_STEP, ws.next())
                .await
                .with_context(|| format!("capturing driftless's {method} reply: none in time"))?;
            let Some(Ok(Message::Text(text))) = msg else {
                match msg {
                    Some(Ok(_)) => continue,
                    _ => bail!("capturing driftless's {method} reply: the connection ended"),
                }
            };
            let frame: Value = serde_json::from_str(text.as_str())?;
            if frame["type"] == "res" && frame["id"] == id {
                if frame["ok"] != true {
                    bail!("capturing driftless's replies: {method} was refused");
                }
                break text.to_string();
            }
        };
        if text.contains(token) {
            bail!("driftless's {method} reply carries the token; the floor will not replay it");
        }
        replies.insert(method.to_string(), Reply::from_captured(&text)?);
    }
    let _ = ws.close(None).await;
    Ok(Frames { replies })
}

/// `driftless-bench floor-server --frames FILE`: serves on a free loopback port until killed,
/// printing `listening on ws://ADDR/` first, as `driftless gateway run` does.
pub fn serve(frames: &Path) -> Result<()> {
    let text = std::fs::read(frames).with_context(|| format!("reading {}", frames.display()))?;
    let frames: Arc<Frames> = Arc::new(serde_json::from_slice(&text).context("the frames file")?);
    // The gateway's runtime: multi-threaded, two workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a loopback port")?;
        println!("listening on ws://{}/", listener.local_addr()?);
        loop {
            // An accept error (e.g. out of descriptors) ends no session already open.
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let frames = frames.clone();
            tokio::spawn(async move {
                let _ = session(stream, &frames).await;
            });
        }
    })
}

async fn session(stream: TcpStream, frames: &Frames) -> Result<(), WsError> {
    // As the gateway: no Nagle, a 4 KiB read buffer, no write buffer.
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let nonce = uuid::Uuid::new_v4().to_string();
    let challenge = driftless_protocol::challenge_text(&nonce, now_ms());
    ws.send(Message::text(challenge)).await?;
    // A Close is echoed by tungstenite on the next read, which then ends the stream.
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            let Ok(req) = serde_json::from_str::<Request>(text.as_str()) else {
                break;
            };
            let Some(reply) = frames.replies.get(req.method.as_ref()) else {
                break;
            };
            ws.send(Message::text(reply.render(&req.id))).await?;
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The share of the slower server's rate offered to both in the paced comparison.
pub const PACED_SHARE: f64 = 0.7;

/// driftless and the floor compared on token sessions at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub concurrency: usize,
    /// Median over the runs of server CPU per session, in ms.
    pub driftless_cpu_ms_per_session: f64,
    pub floor_cpu_ms_per_session: f64,
    pub driftless_over_floor: f64,
    pub driftless_runs: Vec<Handshake>,
    pub floor_runs: Vec<Handshake>,
}

impl Comparison {
    pub fn new(
        concurrency: usize,
        driftless_runs: Vec<Handshake>,
        floor_runs: Vec<Handshake>,
    ) -> Self {
        let cpu = |runs: &[Handshake]| median(runs.iter().map(|h| h.server_cpu_ms_per_session));
        let (d, f) = (cpu(&driftless_runs), cpu(&floor_runs));
        Comparison {
            concurrency,
            driftless_cpu_ms_per_session: d,
            floor_cpu_ms_per_session: f,
            driftless_over_floor: if f > 0.0 { d / f } else { 0.0 },
            driftless_runs,
            floor_runs,
        }
    }

    /// The rate to offer both in a paced comparison after this one: [`PACED_SHARE`] of the
    /// lower of the two median rates.
    pub fn paced_rate(&self) -> f64 {
        let rate = |runs: &[Handshake]| median(runs.iter().map(|h| h.sessions_per_sec));
        PACED_SHARE * rate(&self.driftless_runs).min(rate(&self.floor_runs))
    }
}

/// The floor comparison of one bench run.
#[derive(Debug, Default, Serialize)]
pub struct FloorReport {
    /// Set when driftless or the floor could not be started for it: exactly why.
    pub unavailable: Option<String>,
    /// Runs per target and concurrency, alternating which goes first.
    pub rounds: usize,
    pub comparisons: Vec<Comparison>,
    /// The highest concurrency again, both servers offered one rate: 70 % of the lower of their
    /// median rates above, so neither is saturated and both do the same work in the same time.
    pub paced: Option<Comparison>,
    /// Runs that failed, with the reason.
    pub failures: Vec<String>,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_replayed_at_the_same_size_with_the_request_id() {
        let captured = r#"{"type":"res","id":"1","ok":true,"payload":{"type":"hello-ok","n":1}}"#;
        let reply = Reply::from_captured(captured).unwrap();
        assert_eq!(reply.render("1").len(), captured.len());
        let again: Value = serde_json::from_str(&reply.render("x\"7")).unwrap();
        assert_eq!(again["id"], "x\"7");
        assert_eq!(again["payload"]["type"], "hello-ok");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
