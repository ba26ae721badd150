//! Test support shared with other crates' tests (feature `test-support`).

pub mod postgres;
