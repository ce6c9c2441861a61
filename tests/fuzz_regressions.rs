//! Fuzz findings, replayed on stable by `cargo test`: every file under
//! `tests/fuzz/regressions/<target>/` (inputs that once crashed a fuzz target) and the
//! committed seed corpora under `tests/fuzz/corpus/<target>/` go through the same checks
//! the fuzz targets run (`tests/fuzz/src/checks.rs`, included below, not copied).

#[path = "fuzz/src/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Runs `check` on every file of `tests/fuzz/<dir>/<target>/`; reports all failures at once.
fn replay(dir: &str, target: &str, check: fn(&[u8])) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&path) else {
        return 0;
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("readable input");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
    files.len()
}

#[test]
fn request_corpus_and_regressions() {
    let n = replay("corpus", "request", checks::request);
    assert!(n > 0, "no seed corpus for `request`");
    replay("regressions", "request", checks::request);
}

#[test]
fn sse_frames_corpus_and_regressions() {
    let n = replay("corpus", "sse_frames", checks::sse_frames);
    assert!(n > 0, "no seed corpus for `sse_frames`");
    replay("regressions", "sse_frames", checks::sse_frames);
}

#[test]
fn translate_corpus_and_regressions() {
    let n = replay("corpus", "translate", checks::translate);
    assert!(n > 0, "no seed corpus for `translate`");
    replay("regressions", "translate", checks::translate);
}

#[test]
fn think_corpus_and_regressions() {
    let n = replay("corpus", "think", checks::think);
    assert!(n > 0, "no seed corpus for `think`");
    replay("regressions", "think", checks::think);
}
