//! Operations on an installation: first-run setup (`init`), and later the service installer,
//! `doctor` and migrations. Each CLI command is a thin wrapper around a function here.

pub mod init;
