//! Shared helpers for the integration tests.
//!
//! Every test binary that says `mod support;` compiles this module on its own, so
//! helpers (and the re-export) one binary does not use would otherwise warn.
#![allow(dead_code, unused_imports)]

pub mod clients;
pub mod events;
pub mod fake_dify;
pub mod lambda_runtime;
pub mod moto;
pub mod process;
pub mod tempdir;
pub use fake_dify::*;
