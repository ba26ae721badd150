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
    // What the gateway sends parses back, and a second trip changes nothing (the first may drop
    // an explicit `null`, which reads as absent).
    let once = frame.to_text();
    let twice = serde_json::from_str::<Frame>(&once)
        .expect("a frame we serialize parses")
        .to_text();
    let thrice = serde_json::from_str::<Frame>(&twice)
        .expect("a frame we serialize parses")
        .to_text();
    assert_eq!(twice, thrice);
});
