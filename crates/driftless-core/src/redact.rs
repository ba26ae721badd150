//! The one redactor every output passes through.
//!
//! It holds every live secret value (the current and the previous snapshot, plus values a process
//! registers itself, such as device tokens it minted). [`redact`] replaces any occurrence with
//! `[redacted sha256:…]`. [`RedactingWriter`] applies it to every tracing line.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, RwLock};

use crate::SecretValue;

/// Values shorter than this are not scrubbed: a 1-3 character "secret" would shred every line,
/// and such a value is not a secret anyway (`secrets check` warns about short values).
pub const MIN_REDACT_LEN: usize = 4;
/// How many extra (non-snapshot) values are remembered; the oldest go first.
const MAX_EXTRA: usize = 256;

#[derive(Default)]
struct Registry {
    snapshot: Vec<SecretValue>,
    extra: Vec<SecretValue>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    snapshot: Vec::new(),
    extra: Vec::new(),
});

/// A secret-bearing value that `Debug` shows as `<set>`, never the value; serde sees the value
/// itself (`transparent`), so a wire field can hold one and keep its JSON. The one way a type
/// derives a `Debug` that cannot leak a token: wrap the field, or wrap a reference to it in a
/// `Debug` impl that must stay hand-written.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(pub T);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<set>")
    }
}

/// Replaces the snapshot-derived values (current and previous snapshot).
pub fn set_snapshot_values(values: Vec<SecretValue>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.snapshot = values;
}

/// Registers one more value (for example a freshly minted device token).
pub fn register(value: &SecretValue) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if r.extra.iter().any(|v| v.same_as(value)) {
        return;
    }
    if r.extra.len() >= MAX_EXTRA {
        r.extra.remove(0);
    }
    r.extra.push(value.clone());
}

/// Scrubs every live secret value from `text`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for v in r.snapshot.iter().chain(r.extra.iter()) {
        let raw = v.expose();
        if raw.len() >= MIN_REDACT_LEN && out.contains(raw) {
            out = Cow::Owned(out.replace(raw, &format!("[redacted {}]", v.fingerprint())));
        }
    }
    out
}

/// A `tracing_subscriber` writer that redacts each formatted event before it reaches the sink.
#[derive(Clone)]
pub struct RedactingWriter<W: Write + Send + 'static> {
    sink: Arc<std::sync::Mutex<W>>,
}

impl<W: Write + Send + 'static> RedactingWriter<W> {
    pub fn new(sink: W) -> Self {
        RedactingWriter {
            sink: Arc::new(std::sync::Mutex::new(sink)),
        }
    }
}

/// One formatted event, buffered so it is redacted as a whole line.
pub struct LineBuffer<W: Write + Send + 'static> {
    buf: Vec<u8>,
    sink: Arc<std::sync::Mutex<W>>,
}

impl<W: Write + Send + 'static> Write for LineBuffer<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for LineBuffer<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let clean = redact(&text);
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = sink.write_all(clean.as_bytes());
        let _ = sink.flush();
    }
}

impl<'a, W: Write + Send + 'static> tracing_subscriber::fmt::MakeWriter<'a> for RedactingWriter<W> {
    type Writer = LineBuffer<W>;
    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer {
            buf: Vec::with_capacity(256),
            sink: self.sink.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_registered_values() {
        let v = SecretValue::new("canary-redact-unit-XYZ".into());
        register(&v);
        let out = redact("token=canary-redact-unit-XYZ and again canary-redact-unit-XYZ");
        assert!(!out.contains("canary-redact-unit-XYZ"));
        assert!(out.contains(v.fingerprint().as_str()));
        assert_eq!(redact("nothing here"), "nothing here");
    }
}
