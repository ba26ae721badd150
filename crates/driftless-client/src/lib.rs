//! driftless-client.
