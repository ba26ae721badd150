//! driftless-client: talking to a gateway over its WebSocket protocol.

pub mod connection;
