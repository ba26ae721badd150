//! The OpenClaw gateway wire protocol (placeholder until the protocol work lands).
