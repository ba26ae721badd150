//! Relays an upstream's server-sent events to the client as they arrive, renaming `model` in
//! each `data:` JSON object to the `<provider>/<model>` the client routed to. A line is held only
//! until its newline arrives; anything that is not a one-line JSON object with a string `model`
//! passes unchanged. An upstream that sends nothing for the idle deadline, breaks off, or sends a
//! line longer than [`MAX_UPSTREAM_BYTES`] ends the stream with an OpenAI error event (the SDKs
//! raise it), after what had arrived.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};

use super::{MAX_UPSTREAM_BYTES, UpstreamFailure, with_model};

pub(super) type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Splits a byte stream into lines and renames `model` in `data:` lines.
pub(super) struct Rename {
    model: Arc<str>,
    /// The start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
}

/// A line longer than [`MAX_UPSTREAM_BYTES`].
#[derive(Debug)]
pub(super) struct LineTooLong;

impl Rename {
    pub(super) fn new(model: Arc<str>) -> Rename {
        Rename {
            model,
            partial: Vec::new(),
        }
    }

    /// The complete lines so far, renamed; the rest is kept for the next piece.
    pub(super) fn push(&mut self, piece: &[u8]) -> Result<Bytes, LineTooLong> {
        let Some(last_newline) = piece.iter().rposition(|b| *b == b'\n') else {
            if self.partial.len() + piece.len() > MAX_UPSTREAM_BYTES {
                return Err(LineTooLong);
            }
            self.partial.extend_from_slice(piece);
            return Ok(Bytes::new());
        };
        let (complete, rest) = piece.split_at(last_newline + 1);
        let mut out = Vec::with_capacity(self.partial.len() + complete.len() + 64);
        if self.partial.is_empty() {
            self.rename_lines(complete, &mut out);
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(complete);
            self.rename_lines(&joined, &mut out);
        }
        self.partial.extend_from_slice(rest);
        Ok(Bytes::from(out))
    }

    /// What is left when the upstream ends: an unterminated last line, unchanged.
    pub(super) fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.partial))
    }

    fn rename_lines(&self, lines: &[u8], out: &mut Vec<u8>) {
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let renamed = line.strip_prefix(b"data:").and_then(|data| {
                let (json, ending) = split_line_ending(data);
                let json = json.trim_ascii_start();
                if !json.starts_with(b"{") {
                    return None;
                }
                Some((with_model(json, &self.model)?, ending))
            });
            match renamed {
                Some((json, ending)) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&json);
                    out.extend_from_slice(ending);
                }
                None => out.extend_from_slice(line),
            }
        }
    }
}

fn split_line_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let cut = if line.ends_with(b"\r\n") {
        2
    } else if line.ends_with(b"\n") {
        1
    } else {
        0
    };
    line.split_at(line.len() - cut)
}

/// The error event that ends a failed stream.
fn error_event(failure: &UpstreamFailure, provider: &str) -> Bytes {
    let body = failure.body(provider);
    tracing::warn!(provider, code = %body["error"]["code"], "provider stream ended early");
    Bytes::from(format!("data: {body}\n\n"))
}

struct Relay {
    upstream: Upstream,
    rename: Rename,
    idle: Duration,
    provider: String,
}

/// The client's body: the upstream's events, renamed, until it ends or fails.
pub(super) fn relay(
    upstream: Upstream,
    rename: Rename,
    idle: Duration,
    provider: String,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let start = Relay {
        upstream,
        rename,
        idle,
        provider,
    };
    futures_util::stream::unfold(Some(start), |relay| async move {
        let mut r = relay?;
        loop {
            let failure = match tokio::time::timeout(r.idle, r.upstream.next()).await {
                Ok(Some(Ok(piece))) => match r.rename.push(&piece) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Some((Ok(out), Some(r))),
                    Err(LineTooLong) => UpstreamFailure::TooLarge,
                },
                Ok(None) => {
                    let rest = r.rename.finish();
                    return (!rest.is_empty()).then_some((Ok(rest), None));
                }
                Ok(Some(Err(e))) => UpstreamFailure::BrokenOff(super::without_url(&e)),
                Err(_) => UpstreamFailure::Stalled(r.idle),
            };
            let mut out = r.rename.finish().to_vec();
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(b"\n\n");
            }
            out.extend_from_slice(&error_event(&failure, &r.provider));
            return Some((Ok(Bytes::from(out)), None));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(pieces: &[&str]) -> String {
        let mut r = Rename::new(Arc::from("up/m-1"));
        let mut out = String::new();
        for p in pieces {
            out.push_str(std::str::from_utf8(&r.push(p.as_bytes()).unwrap()).unwrap());
        }
        out.push_str(std::str::from_utf8(&r.finish()).unwrap());
        out
    }

    #[test]
    fn renames_model_in_data_lines_across_piece_boundaries() {
        let out = renamed(&[
            ": keep-alive\n\ndata: {\"model\":\"m-1\",\"choices\":[]}\n\ndata: {\"mod",
            "el\": \"m-1\", \"x\": 1}\r\n\r\n",
            "data: [DONE]\n\n",
        ]);
        assert_eq!(
            out,
            ": keep-alive\n\ndata: {\"choices\":[],\"model\":\"up/m-1\"}\n\n\
             data: {\"model\":\"up/m-1\",\"x\":1}\r\n\r\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn leaves_what_it_does_not_understand() {
        let text =
            "event: x\ndata: {not json\n\ndata: {\"model\":7}\n\ndata: {\"other\":1}\n\ntail";
        assert_eq!(renamed(&[text]), text);
    }

    #[test]
    fn a_line_past_the_cap_is_refused() {
        let mut r = Rename::new(Arc::from("m"));
        let big = vec![b'x'; MAX_UPSTREAM_BYTES];
        assert!(r.push(&big).is_ok());
        assert!(r.push(b"y").is_err());
    }
}
