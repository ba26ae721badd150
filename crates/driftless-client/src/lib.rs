//! driftless-client: talking to a gateway over its WebSocket protocol.

pub mod connection;
pub mod credentials;
pub mod explain;
pub mod heal;
pub mod identity;
pub mod session;
pub mod store;
pub mod wire;
