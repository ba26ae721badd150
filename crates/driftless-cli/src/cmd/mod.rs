//! One module per top-level command; each parses its arguments and calls a library function.

pub mod config;
pub mod credentials;
pub mod daemon;
pub mod devices;
pub mod doctor;
pub mod gateway;
pub mod init;
pub mod secrets;
pub mod supervise;
pub mod token;
