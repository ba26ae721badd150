//! The OpenClaw gateway wire protocol, connection layer: frames, `connect` params, `hello-ok`,
//! error shapes and close codes (see the shared design `openclaw-protocol.md` and its appendix,
//! which records what OpenClaw 2026.9.6 really sends).

pub mod device_auth;
pub mod frames;
pub mod payloads;
pub mod relay;
pub mod scopes;
pub mod template;

pub use frames::*;
pub use payloads::*;
