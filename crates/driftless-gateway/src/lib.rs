//! driftless-gateway.
