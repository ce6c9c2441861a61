//! Where conversation mappings live: `CONVERSATION_STORE`, `CONVERSATION_DB_PATH`, and
//! the default chosen from `CONVERSATION_TABLE` and where the binary runs.

use std::fmt;
use std::path::PathBuf;

use super::Problem;

/// The SQLite file's default path, relative to the working directory.
pub const DEFAULT_CONVERSATION_DB_PATH: &str = "data/opendify.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The table named by `CONVERSATION_TABLE`.
    DynamoDb,
    /// The file at `CONVERSATION_DB_PATH`.
    Sqlite,
    /// Process memory: lost on restart.
    Memory,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::DynamoDb => "dynamodb",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        })
    }
}

/// The store settings as given: `kind` is None when `CONVERSATION_STORE` is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub kind: Option<StoreKind>,
    pub db_path: PathBuf,
}

impl StoreSettings {
    /// The store to use, and why (for the start log). An explicit `CONVERSATION_STORE`
    /// wins; else a table means DynamoDB; else under Lambda process memory (its only
    /// writable place, /tmp, belongs to one execution environment: a file there would
    /// be neither shared by concurrent environments nor kept past a cold start), and
    /// anywhere else the SQLite file.
    pub fn choose(&self, has_table: bool, lambda: bool) -> (StoreKind, &'static str) {
        match self.kind {
            Some(kind) => (kind, "CONVERSATION_STORE"),
            None if has_table => (StoreKind::DynamoDb, "CONVERSATION_TABLE is set"),
            None if lambda => (
                StoreKind::Memory,
                "on Lambda without CONVERSATION_TABLE: only /tmp is writable there and it belongs to one execution environment, so a file would neither be shared nor outlive it; set CONVERSATION_TABLE to keep chats",
            ),
            None => (
                StoreKind::Sqlite,
                "the default without CONVERSATION_TABLE: chats survive a restart",
            ),
        }
    }
}

/// Reads the store settings; `table` is `CONVERSATION_TABLE` as given.
pub fn parse(
    get: impl Fn(&str) -> Option<String>,
    table: Option<&str>,
    problems: &mut Vec<Problem>,
) -> StoreSettings {
    let kind = get("CONVERSATION_STORE").and_then(|raw| {
        let v = raw.trim();
        let kind = if v.eq_ignore_ascii_case("dynamodb") {
            StoreKind::DynamoDb
        } else if v.eq_ignore_ascii_case("sqlite") {
            StoreKind::Sqlite
        } else if v.eq_ignore_ascii_case("memory") {
            StoreKind::Memory
        } else {
            problems.push(Problem::new(
                "CONVERSATION_STORE",
                format!(
                    "is {v:?}: use sqlite (a local file, the default), dynamodb (with CONVERSATION_TABLE) or memory (lost on restart)"
                ),
            ));
            return None;
        };
        match (kind, table) {
            (StoreKind::DynamoDb, None) => problems.push(Problem::new(
                "CONVERSATION_STORE",
                "is dynamodb but CONVERSATION_TABLE is not set: name the table",
            )),
            (StoreKind::Sqlite | StoreKind::Memory, Some(_)) => problems.push(Problem::new(
                "CONVERSATION_STORE",
                format!(
                    "is {kind} but CONVERSATION_TABLE is set too: unset one of them (CONVERSATION_TABLE alone means dynamodb)"
                ),
            )),
            _ => {}
        }
        Some(kind)
    });
    let db_path = get("CONVERSATION_DB_PATH").map_or_else(
        || PathBuf::from(DEFAULT_CONVERSATION_DB_PATH),
        |raw| PathBuf::from(raw.trim()),
    );
    if db_path.file_name().is_none() {
        problems.push(Problem::new(
            "CONVERSATION_DB_PATH",
            format!(
                "is {:?}: give a file path, e.g. {DEFAULT_CONVERSATION_DB_PATH}",
                db_path.display()
            ),
        ));
    }
    StoreSettings { kind, db_path }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(vars: &[(&str, &str)], table: Option<&str>) -> (StoreSettings, Vec<String>) {
        let mut problems = Vec::new();
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let settings = parse(get, table, &mut problems);
        (settings, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_to_sqlite_locally_memory_on_lambda_dynamodb_with_a_table() {
        let (s, problems) = parsed(&[], None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.db_path, PathBuf::from("data/opendify.db"));
        assert_eq!(s.choose(false, false).0, StoreKind::Sqlite);
        assert_eq!(s.choose(false, true).0, StoreKind::Memory);
        assert!(s.choose(false, true).1.contains("/tmp"));
        assert_eq!(s.choose(true, false).0, StoreKind::DynamoDb);
        assert_eq!(s.choose(true, true).0, StoreKind::DynamoDb);
    }

    #[test]
    fn explicit_choice_wins() {
        let (s, problems) = parsed(
            &[
                ("CONVERSATION_STORE", " SQLite "),
                ("CONVERSATION_DB_PATH", "/tmp/chats.db"),
            ],
            None,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            s.choose(false, true),
            (StoreKind::Sqlite, "CONVERSATION_STORE")
        );
        assert_eq!(s.db_path, PathBuf::from("/tmp/chats.db"));
        let (s, _) = parsed(&[("CONVERSATION_STORE", "memory")], None);
        assert_eq!(s.choose(false, false).0, StoreKind::Memory);
        let (s, problems) = parsed(&[("CONVERSATION_STORE", "dynamodb")], Some("t-1"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.choose(true, false).0, StoreKind::DynamoDb);
    }

    #[test]
    fn bad_values_are_problems() {
        let (_, problems) = parsed(&[("CONVERSATION_STORE", "redis")], None);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("CONVERSATION_STORE is \"redis\": use sqlite"),
            "{problems:?}"
        );
        let (_, problems) = parsed(&[("CONVERSATION_STORE", "dynamodb")], None);
        assert!(
            problems[0].contains("CONVERSATION_TABLE is not set"),
            "{problems:?}"
        );
        let (_, problems) = parsed(&[("CONVERSATION_STORE", "memory")], Some("t-1"));
        assert!(
            problems[0].contains("CONVERSATION_TABLE is set too"),
            "{problems:?}"
        );
        let (_, problems) = parsed(&[("CONVERSATION_DB_PATH", "data/..")], None);
        assert!(
            problems[0].starts_with("CONVERSATION_DB_PATH is \"data/..\": give a file path"),
            "{problems:?}"
        );
    }
}
