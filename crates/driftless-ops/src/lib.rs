//! Operations on an installation: first-run setup (`init`), the service installer (`service`),
//! `doctor` (a list of checks, each with its audit and its fix; its stored-device-token check
//! probes gateways with the real client), the OpenClaw installation it audits (`openclaw`) and
//! secret migration (`migrate`). Each CLI command is a thin wrapper around a function here.
//!
//! Modules depend one way: `input` (the bounded reader of every outside file) below all;
//! `findings`, `scan`, `backup` and `perms` below `service`, `migrate`
//! and `openclaw`, and `doctor` above them all.

pub mod backup;
pub mod doctor;
pub mod file_error;
pub mod findings;
pub mod init;
mod input;
pub mod migrate;
pub mod openclaw;
mod perms;
pub mod rotation;
pub mod scan;
pub mod service;
