//! The shape of the ids Dify hands out (task, conversation, message, upload ids) before
//! one goes into a URL path. Dify makes them with `str(uuid.uuid4())`; a value with a
//! path separator, a query or fragment mark, an escape or whitespace would point the
//! request at another endpoint, so it is refused as a protocol error.

use std::sync::atomic::{AtomicU64, Ordering};

/// Longest id accepted: a UUID is 36; room for other generators, not for a payload.
const MAX_LEN: usize = 64;

/// Ids refused since start, for the log line.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// True for an id that can go into a URL path as one segment unchanged: 1 to 64 ASCII
/// letters, digits, `-` or `_` (a UUID, and the simpler ids of older builds and tests).
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `id` if it is valid; otherwise logs the refusal once (what kind of id, never its
/// text) with the running count, and returns `None`.
pub fn checked<'a>(kind: &str, id: &'a str) -> Option<&'a str> {
    if is_valid(id) {
        return Some(id);
    }
    let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        kind,
        len = id.len(),
        refused,
        "Dify sent an id that cannot go into a URL path; treated as a protocol error"
    );
    None
}

/// How many ids were refused since start.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_dify_hands_out_is_accepted() {
        for id in [
            "6a9d2c5f-1e4b-4a7d-b8c3-5f2e9a6d1c84",
            "6A9D2C5F-1E4B-4A7D-B8C3-5F2E9A6D1C84",
            "6a9d2c5f1e4b4a7db8c35f2e9a6d1c84",
            "task-0001",
            "file_01",
        ] {
            assert!(is_valid(id), "{id}");
        }
    }

    #[test]
    fn anything_that_changes_the_path_is_refused() {
        let long = "a".repeat(65);
        for id in [
            "",
            "../files/upload",
            "..",
            "a/b",
            "a?b=1",
            "a#b",
            "a%2Fb",
            "a b",
            "a\tb",
            "a\nb",
            "a.b",
            "a\\b",
            "ａｂ",
            long.as_str(),
        ] {
            assert!(!is_valid(id), "{id:?}");
        }
        assert!(is_valid(&"a".repeat(64)));
    }

    #[test]
    fn a_refusal_is_counted() {
        let before = refused();
        assert_eq!(checked("task_id", "../stop"), None);
        assert!(refused() > before);
        assert_eq!(checked("task_id", "t-1"), Some("t-1"));
    }
}
