//! A WebSocket text frame as the gateway reads it: before authentication through a JSON value
//! (`conn.rs` `connect`), after it straight into a `Frame`; a `connect` request's params too.
#![no_main]

use driftless_protocol::{ConnectParams, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time they reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && let Ok(Frame::Req(req)) = serde_json::from_value::<Frame>(value)
        && req.method == "connect"
    {
        let _ = serde_json::from_value::<ConnectParams>(req.params.unwrap_or_default());
    }
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return;
    };
    // What the gateway sends parses back to the same frame kind, id, method and event. (Payloads
    // are not compared: serde_json's default float parsing is not round-trip exact, e.g. 3e128
    // comes back as 3.0000000000000002e+128; see docs/fuzzing.md.)
    let again =
        serde_json::from_str::<Frame>(&frame.to_text()).expect("a frame we serialize parses");
    assert_eq!(routing(&again), routing(&frame));
});

fn routing(f: &Frame) -> (&str, &str, &str) {
    match f {
        Frame::Req(r) => ("req", &r.id, &r.method),
        Frame::Res(r) => ("res", &r.id, if r.ok { "ok" } else { "error" }),
        Frame::Event(e) => ("event", "", &e.event),
    }
}
