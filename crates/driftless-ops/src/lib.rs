//! Operations on an installation: first-run setup (`init`), the service installer (`service`),
//! `doctor` (whose stored-device-token check probes gateways with the real client), the OpenClaw import (`openclaw`) and secret migration (`migrate`). Each CLI command
//! is a thin wrapper around a function here.

pub mod backup;
pub mod doctor;
pub mod init;
pub mod migrate;
pub mod openclaw;
pub mod rotation;
pub mod scan;
pub mod service;
mod stored_tokens;
