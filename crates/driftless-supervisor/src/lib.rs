//! driftless-supervisor.
