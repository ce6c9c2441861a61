//! The fuzz targets' properties live in `checks.rs`, which `tests/fuzz_regressions.rs`
//! also includes, so a regression test replays an input through exactly the code the
//! fuzzer ran.

mod checks;

pub use checks::{request, sse_frames, think, translate};
