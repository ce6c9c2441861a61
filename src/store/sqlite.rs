//! The store in an SQLite file: the local default, so chats survive a restart without
//! AWS. Same semantics as [`super::DynamoStore`]; one file per instance (or per set of
//! instances on one machine: SQLite locks the file, and the conditional operations run
//! in write transactions).
//!
//! Table `conversations` (one row per key; no message text, ever), the DynamoDB item's
//! attributes as columns, times in Unix milliseconds:
//!
//! | column               | type    | meaning                                             |
//! |----------------------|---------|-----------------------------------------------------|
//! | `pk`                 | TEXT    | primary key: the opaque key the caller derived      |
//! | `conversation_id`    | TEXT    | the Dify conversation id                            |
//! | `expires_at_ms`      | INTEGER | last write or refresh + TTL                         |
//! | `updated_at_ms`      | INTEGER | last write or refresh                               |
//! | `conversation_state` | TEXT    | chats: digest of what the conversation holds, or the|
//! |                      |         | token of the request continuing it right now        |
//! | `system_digest`      | TEXT    | chats: digest of the system messages last sent      |
//!
//! Rows past `expires_at_ms` count as absent and are deleted in passing (at start and
//! every [`SWEEP_EVERY`] writes). The file is in WAL mode with `synchronous=FULL`: a
//! mapping written when an answer ended is on disk before the write returns, so neither
//! `kill -9` nor a power cut loses it.
//!
//! SQLite calls block, so each runs on tokio's blocking pool, bounded by the same lookup
//! and write budgets as DynamoDB's ([`StoreBudget`]): a file locked by another process
//! means "no memory" for that turn, not a hung request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::dynamo::StoreBudget;
use super::{BoxFuture, Claim, ConversationStore, Mapping, PutOutcome, StoreError};

/// The schema this code writes, in `PRAGMA user_version`. A file from a newer version is
/// refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    pk                 TEXT PRIMARY KEY NOT NULL,
    conversation_id    TEXT NOT NULL,
    expires_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    conversation_state TEXT,
    system_digest      TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_expiry ON conversations (expires_at_ms);
";

/// Expired rows are deleted once every this many writes (and at start).
pub const SWEEP_EVERY: u64 = 1024;

/// TTLs are clamped to [1 ms, a century].
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// Longest cause string kept from an SQLite error.
const MAX_CAUSE: usize = 300;

pub struct SqliteStore {
    path: PathBuf,
    ttl_ms: i64,
    budget: StoreBudget,
    db: Arc<Mutex<Db>>,
}

struct Db {
    conn: Connection,
    writes: u64,
}

impl SqliteStore {
    /// Opens (creating it, and its directory, if missing) the file at `path`. Fails when
    /// the file cannot be created, is not an SQLite database, or holds a newer schema.
    pub fn open(path: &Path, ttl: Duration, budget: StoreBudget) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(truncate(&format!(
                    "cannot create the directory {}: {e}",
                    dir.display()
                )))
            })?;
        }
        let conn = Connection::open(path).map_err(classify)?;
        // Another process holding the write lock (a second instance, the sqlite3 CLI) is
        // waited for this long; the caller's own budget still bounds the whole call.
        conn.busy_timeout(budget.write).map_err(classify)?;
        // WAL: readers never block the writer. FULL: each commit is fsynced.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(format!(
                "the database did not switch to WAL mode (it is in {mode} mode)"
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(classify)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(classify)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Other(format!(
                "the database has schema version {version}, newer than this build's {SCHEMA_VERSION}"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(classify)?;
        conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};"))
            .map_err(classify)?;
        sweep(&conn, now_ms()).map_err(classify)?;
        let ttl_ms = i64::try_from(ttl.as_millis())
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_TTL_MS);
        Ok(Self {
            path: path.to_path_buf(),
            ttl_ms,
            budget,
            db: Arc::new(Mutex::new(Db { conn, writes: 0 })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` with the connection on the blocking pool, within the lookup or write
    /// budget. `now` is read once per call, in milliseconds.
    async fn run<T, F>(&self, write: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db, i64, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        let budget = if write {
            self.budget.write
        } else {
            self.budget.lookup
        };
        let db = self.db.clone();
        let ttl_ms = self.ttl_ms;
        let task = tokio::task::spawn_blocking(move || {
            let mut db = lock(&db);
            let result = op(&mut db, now_ms(), ttl_ms);
            if write && result.is_ok() {
                db.writes += 1;
                if db.writes.is_multiple_of(SWEEP_EVERY) {
                    // Best effort: a failed sweep is retried at the next one.
                    let _ = sweep(&db.conn, now_ms());
                }
            }
            result
        });
        match tokio::time::timeout(budget, task).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {budget:?}"
            ))),
            Ok(Err(join)) => Err(StoreError::Other(format!(
                "the store call did not finish: {join}"
            ))),
            Ok(Ok(result)) => result.map_err(classify),
        }
    }
}

/// Nothing panics while the lock is held, but a poisoned connection is still usable.
fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sweep(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM conversations WHERE expires_at_ms <= ?1",
        params![now],
    )
}

fn live_conversation(conn: &Connection, key: &str, now: i64) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT conversation_id FROM conversations WHERE pk = ?1 AND expires_at_ms > ?2",
        params![key, now],
        |row| row.get(0),
    )
    .optional()
}

/// Writes the whole row, replacing any other: what DynamoDB's `PutItem` does.
fn replace(
    conn: &Connection,
    key: &str,
    conversation_id: &str,
    now: i64,
    ttl_ms: i64,
    state: Option<&str>,
    system: Option<&str>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR REPLACE INTO conversations
             (pk, conversation_id, expires_at_ms, updated_at_ms, conversation_state, system_digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key,
            conversation_id,
            now.saturating_add(ttl_ms),
            now,
            state,
            system
        ],
    )
}

impl ConversationStore for SqliteStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = key.to_string();
        Box::pin(self.run(false, move |db, now, _| {
            live_conversation(&db.conn, &key, now)
        }))
    }

    fn put_new<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>> {
        let (key, id) = (key.to_string(), conversation_id.to_string());
        Box::pin(self.run(true, move |db, now, ttl| {
            // IMMEDIATE takes the write lock first, so another process cannot create the
            // row between our read and our write.
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(winner) = live_conversation(&tx, &key, now)? {
                return Ok(PutOutcome::Exists(winner));
            }
            replace(&tx, &key, &id, now, ttl, None, None)?;
            tx.commit()?;
            Ok(PutOutcome::Stored)
        }))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (key, id) = (key.to_string(), conversation_id.to_string());
        Box::pin(self.run(true, move |db, now, ttl| {
            replace(&db.conn, &key, &id, now, ttl, None, None).map(|_| ())
        }))
    }

    fn touch<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (key, id) = (key.to_string(), conversation_id.to_string());
        Box::pin(self.run(true, move |db, now, ttl| {
            db.conn
                .execute(
                    "UPDATE conversations SET expires_at_ms = ?1, updated_at_ms = ?2
                     WHERE pk = ?3 AND conversation_id = ?4 AND expires_at_ms > ?2",
                    params![now.saturating_add(ttl), now, key, id],
                )
                .map(|_| ())
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (key, id) = (key.to_string(), conversation_id.to_string());
        Box::pin(self.run(true, move |db, _, _| {
            db.conn
                .execute(
                    "DELETE FROM conversations WHERE pk = ?1 AND conversation_id = ?2",
                    params![key, id],
                )
                .map(|_| ())
        }))
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        expected: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let (key, expected, token) = (key.to_string(), expected.to_string(), token.to_string());
        // A lookup: it holds up the first token, so it gets the lookup budget (as on
        // DynamoDB), although it writes.
        Box::pin(self.run(false, move |db, now, ttl| {
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed: Option<(String, Option<String>)> = tx
                .query_row(
                    "UPDATE conversations
                     SET conversation_state = ?1, expires_at_ms = ?2, updated_at_ms = ?3
                     WHERE pk = ?4 AND expires_at_ms > ?3 AND conversation_state = ?5
                     RETURNING conversation_id, system_digest",
                    params![token, now.saturating_add(ttl), now, key, expected],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let claim = match claimed {
                Some((conversation_id, system)) => Claim::Continue {
                    conversation_id,
                    system,
                },
                None => match live_conversation(&tx, &key, now)? {
                    Some(_) => Claim::Diverged,
                    None => Claim::Absent,
                },
            };
            tx.commit()?;
            Ok(claim)
        }))
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        mapping: Mapping<'a>,
        claimed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = key.to_string();
        let id = mapping.conversation_id.to_string();
        let state = mapping.state.to_string();
        let system = mapping.system.to_string();
        let claimed = claimed.map(str::to_string);
        Box::pin(self.run(true, move |db, now, ttl| {
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(token) = &claimed {
                let held = tx
                    .query_row(
                        "SELECT 1 FROM conversations WHERE pk = ?1 AND conversation_state = ?2",
                        params![key, token],
                        |_| Ok(()),
                    )
                    .optional()?;
                if held.is_none() {
                    return Ok(false);
                }
            }
            replace(&tx, &key, &id, now, ttl, Some(&state), Some(&system))?;
            tx.commit()?;
            Ok(true)
        }))
    }

    fn describe(&self) -> String {
        format!("sqlite file {}", self.path.display())
    }
}

/// Maps an SQLite failure to the store's error kinds. SQLite's messages name tables and
/// columns, never a bound value.
fn classify(err: rusqlite::Error) -> StoreError {
    let cause = truncate(&err.to_string());
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(cause),
        Some(
            ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(cause),
        Some(
            ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::AuthorizationForStatementDenied,
        ) => StoreError::AccessDenied(cause),
        _ => StoreError::Other(cause),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_CAUSE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_and_describe_names_the_file() {
        let dir = std::env::temp_dir().join(format!("opendify-sqlite-unit-{}", std::process::id()));
        let path = dir.join("nested").join("unit.db");
        let zero = SqliteStore::open(&path, Duration::ZERO, StoreBudget::default()).expect("open");
        assert_eq!(zero.ttl_ms, 1);
        let huge = SqliteStore::open(&path, Duration::MAX, StoreBudget::default()).expect("open");
        assert_eq!(huge.ttl_ms, MAX_TTL_MS);
        assert_eq!(huge.describe(), format!("sqlite file {}", path.display()));
        drop((zero, huge));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = std::env::temp_dir().join(format!("opendify-sqlite-junk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("junk.db");
        std::fs::write(&path, vec![b'x'; 4096]).expect("write");
        let err = SqliteStore::open(&path, Duration::from_secs(60), StoreBudget::default())
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Other(_)), "{err:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn causes_are_truncated_on_char_boundaries() {
        let long = "é".repeat(MAX_CAUSE + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_CAUSE + 1);
    }
}
