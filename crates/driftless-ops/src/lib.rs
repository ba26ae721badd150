//! driftless-ops.
