//! The conversation store: one suite of semantics run against each backend (DynamoDB on a
//! real moto_server over HTTP, no mocks; the SQLite file; process memory), then what is
//! particular to each (DynamoDB's items and failures, SQLite's rows, file and locks).

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::future::join_all;
use opendify::store::dynamo::StoreBudget;
use opendify::store::{
    Claim, ConversationStore, DynamoStore, Mapping, MemoryStore, PutOutcome, SqliteStore,
    StoreError,
};
use support::moto::{Moto, number};
use support::tempdir::TempDir;

const HOUR: Duration = Duration::from_secs(3600);
/// What a broken store may cost one call beyond its budget: slack for a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

fn unix_now() -> i64 {
    opendify::unix_now()
}

/// Waits until the Unix second is past `t` (polling the clock, with a deadline): items
/// record whole seconds, so a write shows as newer only from the next one.
async fn past_second(t: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while unix_now() <= t {
        assert!(Instant::now() < deadline, "the clock did not pass {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dynamo(ttl: Duration) -> (&'static Moto, String, DynamoStore) {
    let moto = Moto::shared().await;
    let table = moto.fresh_table().await;
    let store = moto.store(&table, ttl);
    (moto, table, store)
}

fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

// ---- Semantics every store shares ---------------------------------------------------

async fn check_round_trips(store: &dyn ConversationStore) {
    assert_eq!(store.get("k1").await, Ok(None));
    store.put("k1", "conv-a").await.expect("put");
    assert_eq!(store.get("k1").await, Ok(Some("conv-a".into())));
    // put is unconditional: it replaces a live mapping.
    store.put("k1", "conv-b").await.expect("put over");
    assert_eq!(store.get("k1").await, Ok(Some("conv-b".into())));
    assert_eq!(store.get("k2").await, Ok(None), "keys are independent");
    store.delete("k1", "conv-b").await.expect("delete");
    assert_eq!(store.get("k1").await, Ok(None));
    // Deleting or touching what is not there is fine and creates nothing.
    store.delete("k1", "conv-b").await.expect("delete absent");
    store.touch("k1", "conv-b").await.expect("touch absent");
    assert_eq!(store.get("k1").await, Ok(None), "touch must not resurrect");
}

async fn check_put_new(store: &dyn ConversationStore) {
    assert_eq!(store.put_new("k", "first").await, Ok(PutOutcome::Stored));
    assert_eq!(
        store.put_new("k", "second").await,
        Ok(PutOutcome::Exists("first".into()))
    );
    assert_eq!(store.get("k").await, Ok(Some("first".into())));
}

async fn check_race(store: &dyn ConversationStore) {
    let ids: Vec<String> = (0..10).map(|i| format!("conv-{i}")).collect();
    let outcomes = join_all(ids.iter().map(|id| store.put_new("race", id))).await;
    let outcomes: Vec<PutOutcome> = outcomes.into_iter().map(|o| o.expect("put_new")).collect();
    let winners: Vec<&String> = ids
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == PutOutcome::Stored)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one winner: {outcomes:?}");
    let winner = winners[0].clone();
    for o in &outcomes {
        if let PutOutcome::Exists(id) = o {
            assert_eq!(*id, winner, "every loser learns the winner");
        }
    }
    assert_eq!(store.get("race").await, Ok(Some(winner)));
}

async fn check_mismatched_ids(store: &dyn ConversationStore) {
    store.put("k", "mine").await.expect("put");
    store.touch("k", "someone-else").await.expect("touch other");
    store
        .delete("k", "someone-else")
        .await
        .expect("delete other");
    assert_eq!(store.get("k").await, Ok(Some("mine".into())));
}

fn mapping<'a>(conversation_id: &'a str, state: &'a str) -> Mapping<'a> {
    Mapping {
        conversation_id,
        state,
        system: "sys-1",
    }
}

/// The linear-conversation protocol: a mapping is continued only from the state it holds,
/// by one request at a time; a claimed state cannot be claimed again.
async fn check_claims(store: &dyn ConversationStore) {
    assert_eq!(store.claim("c", "s0", "t1").await, Ok(Claim::Absent));
    assert_eq!(
        store.settle("c", mapping("conv-1", "s1"), None).await,
        Ok(true)
    );
    assert_eq!(store.claim("c", "s0", "t1").await, Ok(Claim::Diverged));
    assert_eq!(
        store.claim("c", "s1", "t1").await,
        Ok(Claim::Continue {
            conversation_id: "conv-1".into(),
            system: Some("sys-1".into())
        })
    );
    // The same state a second time (a regenerate, a twin chat): taken already.
    assert_eq!(store.claim("c", "s1", "t2").await, Ok(Claim::Diverged));
    // Only the holder of the claim moves the mapping on.
    assert_eq!(
        store.settle("c", mapping("conv-1", "s2"), Some("t2")).await,
        Ok(false)
    );
    assert_eq!(
        store.settle("c", mapping("conv-1", "s2"), Some("t1")).await,
        Ok(true)
    );
    assert!(matches!(
        store.claim("c", "s2", "t3").await,
        Ok(Claim::Continue { .. })
    ));
    // A fork remaps unconditionally; the claim it overtook can no longer settle.
    assert_eq!(
        store.settle("c", mapping("conv-2", "s3"), None).await,
        Ok(true)
    );
    assert_eq!(
        store.settle("c", mapping("conv-1", "s3"), Some("t3")).await,
        Ok(false)
    );
    assert_eq!(store.get("c").await, Ok(Some("conv-2".into())));
    // A mapping written without a state (before states existed) is never continued.
    store.put("old", "conv-0").await.expect("put");
    assert_eq!(store.claim("old", "s0", "t4").await, Ok(Claim::Diverged));
}

/// Of many requests continuing the same state at once, exactly one does.
async fn check_claim_race(store: &dyn ConversationStore) {
    store
        .settle("r", mapping("conv-r", "s1"), None)
        .await
        .expect("settle");
    let tokens: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let claims = join_all(tokens.iter().map(|t| store.claim("r", "s1", t))).await;
    let won = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Continue { .. })))
        .count();
    assert_eq!(won, 1, "{claims:?}");
    assert!(
        claims
            .iter()
            .all(|c| matches!(c, Ok(Claim::Continue { .. } | Claim::Diverged))),
        "{claims:?}"
    );
}

/// A mapping that expires comes back as absent everywhere: not found, not claimed, not
/// resurrected by a touch, and replaceable by a first turn. Polls (with a deadline) for
/// the expiry rather than guessing how long a loaded machine takes.
async fn check_expiry(store: &dyn ConversationStore, ttl: Duration) {
    assert_eq!(
        store.settle("e", mapping("conv-old", "s1"), None).await,
        Ok(true)
    );
    let deadline = Instant::now() + ttl + Duration::from_secs(30);
    while store.get("e").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "still live long after its TTL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.claim("e", "s1", "t").await, Ok(Claim::Absent));
    store.touch("e", "conv-old").await.expect("touch expired");
    assert_eq!(store.get("e").await, Ok(None), "touch must not resurrect");
    assert_eq!(store.put_new("e", "conv-new").await, Ok(PutOutcome::Stored));
    assert_eq!(store.get("e").await, Ok(Some("conv-new".into())));
}

// ---- The same suite against every backend --------------------------------------------

/// A store under test and what keeps it alive (the SQLite file's directory).
struct Backend {
    store: Box<dyn ConversationStore>,
    _dir: Option<TempDir>,
}

async fn open_dynamo(ttl: Duration) -> Backend {
    let (_, _, store) = dynamo(ttl).await;
    Backend {
        store: Box::new(store),
        _dir: None,
    }
}

async fn open_sqlite(ttl: Duration) -> Backend {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, ttl);
    Backend {
        store: Box::new(store),
        _dir: Some(dir),
    }
}

async fn open_memory(ttl: Duration) -> Backend {
    Backend {
        store: Box::new(MemoryStore::new(ttl)),
        _dir: None,
    }
}

/// Each case once per backend, as `<backend>::<case>`. `$short` is the shortest TTL the
/// backend keeps (DynamoDB counts whole seconds).
macro_rules! shared_suite {
    ($($backend:ident: $open:ident, $short:expr;)*) => {$(
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn round_trips() {
                check_round_trips(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn put_new_first_wins() {
                check_put_new(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn put_new_race_has_one_winner() {
                check_race(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn mismatched_ids_leave_the_mapping_untouched() {
                check_mismatched_ids(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn claims_follow_the_conversation_state() {
                check_claims(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn claim_race_has_one_winner() {
                check_claim_race(&*$open(HOUR).await.store).await;
            }

            #[tokio::test]
            async fn expired_mapping_is_absent_everywhere() {
                let ttl: Duration = $short;
                check_expiry(&*$open(ttl).await.store, ttl).await;
            }
        }
    )*};
}

shared_suite! {
    dynamo: open_dynamo, Duration::from_secs(1);
    sqlite: open_sqlite, Duration::from_millis(300);
    memory: open_memory, Duration::from_millis(300);
}

// ---- DynamoDB (moto) -----------------------------------------------------------------

#[tokio::test]
async fn dynamo_claims_follow_the_conversation_state() {
    let (moto, table, store) = dynamo(HOUR).await;
    check_claims(&store).await;
    // Only ids, digests and times.
    let item = moto.get_item_raw(&table, "c").await.expect("item");
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "conversation_id",
            "conversation_state",
            "expires_at",
            "pk",
            "system_digest",
            "updated_at"
        ]
    );
}

#[tokio::test]
async fn dynamo_expired_mapping_is_not_claimed() {
    let (moto, table, store) = dynamo(HOUR).await;
    moto.put_item_raw(
        &table,
        item(&[
            ("pk", s("x")),
            ("conversation_id", s("conv-x")),
            ("conversation_state", s("s1")),
            ("expires_at", n(unix_now() - 5)),
        ]),
    )
    .await;
    assert_eq!(store.claim("x", "s1", "t").await, Ok(Claim::Absent));
}

#[tokio::test]
async fn dynamo_put_new_first_wins() {
    let (moto, table, store) = dynamo(HOUR).await;
    check_put_new(&store).await;
    let stored = moto.get_item_raw(&table, "k").await.expect("item");
    assert_eq!(stored.get("conversation_id"), Some(&s("first")));
}

#[tokio::test]
async fn dynamo_put_new_race_has_one_winner() {
    let (moto, table, store) = dynamo(HOUR).await;
    check_race(&store).await;
    let winner = store.get("race").await.expect("get").expect("winner");
    let stored = moto.get_item_raw(&table, "race").await.expect("item");
    assert_eq!(stored.get("conversation_id"), Some(&s(&winner)));
}

#[tokio::test]
async fn dynamo_mismatched_ids_leave_the_item_untouched() {
    let (moto, table, store) = dynamo(HOUR).await;
    check_mismatched_ids(&store).await;
    let before = moto.get_item_raw(&table, "k").await.expect("item");
    past_second(number(&before, "updated_at")).await;
    store.touch("k", "someone-else").await.expect("touch other");
    store
        .delete("k", "someone-else")
        .await
        .expect("delete other");
    let after = moto.get_item_raw(&table, "k").await.expect("item");
    assert_eq!(
        before, after,
        "a mismatched touch or delete changes nothing"
    );
}

#[tokio::test]
async fn dynamo_item_schema_and_ttl() {
    let (moto, table, store) = dynamo(HOUR).await;
    let before = unix_now();
    store.put_new("k", "conv-1").await.expect("put_new");
    let after = unix_now();
    let stored = moto.get_item_raw(&table, "k").await.expect("item");
    let mut names: Vec<&str> = stored.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["conversation_id", "expires_at", "pk", "updated_at"],
        "only ids and times are stored"
    );
    assert_eq!(stored.get("pk"), Some(&s("k")));
    let expires = number(&stored, "expires_at");
    let updated = number(&stored, "updated_at");
    assert!(
        (before + 3600..=after + 3600).contains(&expires),
        "expires_at {expires}"
    );
    assert!((before..=after).contains(&updated), "updated_at {updated}");

    past_second(updated).await;
    store.touch("k", "conv-1").await.expect("touch");
    let touched = moto.get_item_raw(&table, "k").await.expect("item");
    assert!(
        number(&touched, "expires_at") > expires,
        "touch extends the expiry"
    );
    assert!(number(&touched, "updated_at") > updated);
    assert_eq!(touched.get("conversation_id"), Some(&s("conv-1")));

    // put refreshes the times as well.
    past_second(number(&touched, "updated_at")).await;
    store.put("k", "conv-2").await.expect("put");
    let replaced = moto.get_item_raw(&table, "k").await.expect("item");
    assert!(number(&replaced, "expires_at") > number(&touched, "expires_at"));
    assert_eq!(replaced.get("conversation_id"), Some(&s("conv-2")));
}

#[tokio::test]
async fn dynamo_losing_put_new_does_not_refresh_the_winner() {
    let (moto, table, store) = dynamo(HOUR).await;
    store.put_new("k", "winner").await.expect("put_new");
    let before = moto.get_item_raw(&table, "k").await.expect("item");
    past_second(number(&before, "updated_at")).await;
    assert_eq!(
        store.put_new("k", "loser").await,
        Ok(PutOutcome::Exists("winner".into()))
    );
    assert_eq!(moto.get_item_raw(&table, "k").await, Some(before));
}

#[tokio::test]
async fn dynamo_expired_item_is_absent_and_replaceable() {
    let (moto, table, store) = dynamo(HOUR).await;
    let past = unix_now() - 10;
    let expired = item(&[
        ("pk", s("k")),
        ("conversation_id", s("old")),
        ("expires_at", n(past)),
        ("updated_at", n(past - 3600)),
    ]);
    moto.put_item_raw(&table, expired.clone()).await;

    assert_eq!(store.get("k").await, Ok(None));
    // No resurrection: touching the expired mapping leaves it expired.
    store.touch("k", "old").await.expect("touch");
    assert_eq!(moto.get_item_raw(&table, "k").await, Some(expired));
    assert_eq!(store.get("k").await, Ok(None));

    assert_eq!(store.put_new("k", "new").await, Ok(PutOutcome::Stored));
    assert_eq!(store.get("k").await, Ok(Some("new".into())));
    let stored = moto.get_item_raw(&table, "k").await.expect("item");
    assert!(number(&stored, "expires_at") > unix_now());
}

#[tokio::test]
async fn dynamo_expired_item_can_be_deleted_by_its_owner() {
    let (moto, table, store) = dynamo(HOUR).await;
    let past = unix_now() - 10;
    moto.put_item_raw(
        &table,
        item(&[
            ("pk", s("k")),
            ("conversation_id", s("old")),
            ("expires_at", n(past)),
        ]),
    )
    .await;
    store.delete("k", "old").await.expect("delete");
    assert_eq!(moto.get_item_raw(&table, "k").await, None);
}

#[tokio::test]
async fn dynamo_malformed_items_are_absent_and_replaceable() {
    let (moto, table, store) = dynamo(HOUR).await;
    // Written by hand or by an older version: no expiry, no id, a string expiry.
    moto.put_item_raw(
        &table,
        item(&[("pk", s("no-expiry")), ("conversation_id", s("x"))]),
    )
    .await;
    moto.put_item_raw(
        &table,
        item(&[("pk", s("no-id")), ("expires_at", n(unix_now() + 999))]),
    )
    .await;
    for key in ["no-expiry", "no-id"] {
        assert_eq!(store.get(key).await, Ok(None), "{key}");
        assert_eq!(
            store.put_new(key, "new").await,
            Ok(PutOutcome::Stored),
            "{key}"
        );
        assert_eq!(store.get(key).await, Ok(Some("new".into())), "{key}");
    }
}

#[tokio::test]
async fn dynamo_missing_table_is_other() {
    let moto = Moto::shared().await;
    let store = moto.store("opendify-no-such-table", HOUR);
    match store.get("k").await {
        Err(StoreError::Other(cause)) => {
            assert!(cause.contains("ResourceNotFoundException"), "{cause}")
        }
        other => panic!("expected Other, got {other:?}"),
    }
    assert!(matches!(
        store.put_new("k", "c").await,
        Err(StoreError::Other(_))
    ));
}

#[tokio::test]
async fn dynamo_describe_names_the_table() {
    let (_, table, store) = dynamo(HOUR).await;
    assert_eq!(store.describe(), format!("dynamodb table {table}"));
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> (Result<(), StoreError>, Duration) {
    let started = Instant::now();
    let result = call.await.map(|_| ());
    (result, started.elapsed())
}

/// Every operation against a broken store, concurrently; each must fail as Unavailable
/// within its budget (lookups the short one, writes the long one), without panicking.
async fn assert_all_unavailable(store: &DynamoStore, budget: StoreBudget) {
    let started = Instant::now();
    let (get, put_new, put, touch, delete) = tokio::join!(
        timed(store.get("k")),
        timed(store.put_new("k", "c")),
        timed(store.put("k", "c")),
        timed(store.touch("k", "c")),
        timed(store.delete("k", "c")),
    );
    let calls = [
        ("get", get),
        ("put_new", put_new),
        ("put", put),
        ("touch", touch),
        ("delete", delete),
    ];
    for (name, (result, elapsed)) in calls {
        eprintln!("{name}: {elapsed:?} {result:?}");
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{name}: expected Unavailable, got {result:?}"
        );
        let allowed = if name == "get" {
            budget.lookup
        } else {
            budget.write
        };
        assert!(elapsed < allowed + SLACK, "{name} took {elapsed:?}");
    }
    eprintln!("all five calls done in {:?}", started.elapsed());
}

#[tokio::test]
async fn dynamo_store_down_fails_fast() {
    let moto = Moto::start_owned().await;
    let table = moto.fresh_table().await;
    let store = moto.store(&table, HOUR);
    store
        .put("k", "c")
        .await
        .expect("store works while moto runs");
    moto.stop().await;
    assert_all_unavailable(&store, StoreBudget::default()).await;
    // And sequentially, as a request would see it.
    let t = Instant::now();
    assert!(matches!(
        store.get("k").await,
        Err(StoreError::Unavailable(_))
    ));
    eprintln!("sequential get on a stopped store: {:?}", t.elapsed());
}

#[tokio::test]
async fn dynamo_store_hanging_times_out() {
    // Accepts connections and never answers: the worst case, bounded by the timeouts.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(format!("http://{addr}"));
    let client =
        aws_sdk_dynamodb::Client::from_conf(opendify::store::dynamo::with_budget(config).build());
    // Short budgets keep the test quick; each call must still keep to its own.
    let budget = StoreBudget {
        lookup: Duration::from_millis(1200),
        write: Duration::from_millis(2400),
    };
    let store = DynamoStore::new(client, "t".into(), HOUR).with_budget(budget);
    let started = Instant::now();
    assert_all_unavailable(&store, budget).await;
    // The writes ran into their own (longer) budget, not the lookup's.
    assert!(
        started.elapsed() >= budget.write - SLACK,
        "{:?}",
        started.elapsed()
    );
}

/// Runs the ignored `from_env_child` test in a child process with exactly `vars` as its
/// environment (edition 2024 forbids changing the environment in-process). Returns the
/// child's stderr.
fn run_from_env_child(vars: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args(["--ignored", "--exact", "from_env_child", "--nocapture"])
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed\n{stdout}\n{stderr}"
    );
    for line in stderr.lines().filter(|l| l.starts_with("from_env")) {
        eprintln!("child: {line}");
    }
    stderr
}

/// `from_env` takes endpoint, region and credentials from the standard environment.
#[tokio::test]
async fn dynamo_from_env_reads_the_standard_environment() {
    let moto = Moto::shared().await;
    let table = moto.fresh_table().await;
    let mut vars = moto.env_vars();
    vars.push(("OPENDIFY_TEST_TABLE", table.clone()));
    vars.push(("OPENDIFY_TEST_EXPECT", "stored".into()));
    run_from_env_child(&vars);
    let stored = moto.get_item_raw(&table, "from-env").await.expect("item");
    assert_eq!(stored.get("conversation_id"), Some(&s("conv-env")));
}

/// No credentials anywhere in the chain: AccessDenied, quickly, not a hang or a panic.
#[tokio::test]
async fn dynamo_from_env_without_credentials_is_access_denied() {
    let moto = Moto::shared().await;
    let vars: Vec<(&str, String)> = moto
        .env_vars()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"))
        .chain([
            ("OPENDIFY_TEST_TABLE", "any".to_string()),
            ("OPENDIFY_TEST_EXPECT", "access-denied".to_string()),
        ])
        .collect();
    run_from_env_child(&vars);
}

#[tokio::test]
#[ignore = "child process of the dynamo_from_env_* tests"]
async fn from_env_child() {
    let table = std::env::var("OPENDIFY_TEST_TABLE").expect("run by a parent test");
    let expect = std::env::var("OPENDIFY_TEST_EXPECT").expect("run by a parent test");
    let t = Instant::now();
    let store = DynamoStore::from_env(table, HOUR, Default::default()).await;
    eprintln!("from_env loaded in {:?}", t.elapsed());
    let t = Instant::now();
    let result = store.put_new("from-env", "conv-env").await;
    eprintln!(
        "from_env first call ({expect}) took {:?}: {result:?}",
        t.elapsed()
    );
    match expect.as_str() {
        "stored" => assert_eq!(result, Ok(PutOutcome::Stored)),
        "access-denied" => {
            assert!(
                matches!(result, Err(StoreError::AccessDenied(_))),
                "{result:?}"
            );
            assert!(t.elapsed() < Duration::from_secs(1));
        }
        other => panic!("unknown expectation {other}"),
    }
}

/// Client misconfiguration is reported as such, not as an outage.
#[tokio::test]
async fn dynamo_misconfigured_clients() {
    let moto = Moto::shared().await;
    let base = || {
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
    };
    let no_credentials = base().region(aws_sdk_dynamodb::config::Region::new("us-east-1"));
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(no_credentials.build()),
        "t".into(),
        HOUR,
    );
    let result = store.get("k").await;
    assert!(
        matches!(result, Err(StoreError::AccessDenied(_))),
        "{result:?}"
    );

    let no_region = base().credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
        "test", "test", None, None, "test",
    ));
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(no_region.build()),
        "t".into(),
        HOUR,
    );
    match store.get("k").await {
        Err(StoreError::Other(cause)) => assert!(cause.contains("region"), "{cause}"),
        other => panic!("expected Other, got {other:?}"),
    }
}

// ---- SQLite --------------------------------------------------------------------------

/// The store's file in `dir`, one directory deeper than exists (opening creates it).
fn db_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("data").join("opendify.db")
}

fn sqlite_at(dir: &TempDir, ttl: Duration) -> SqliteStore {
    SqliteStore::open(&db_path(dir), ttl, StoreBudget::default()).expect("open the sqlite store")
}

/// A second connection to the store's file, as the sqlite3 CLI or another instance has.
fn raw(dir: &TempDir) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db_path(dir)).expect("open raw");
    conn.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    conn
}

/// One row as (column, value as text) pairs, in column order; None when absent.
fn row(conn: &rusqlite::Connection, key: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut stmt = conn
        .prepare("SELECT * FROM conversations WHERE pk = ?1")
        .expect("prepare");
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    stmt.query_row([key], |r| {
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let v: rusqlite::types::Value = r.get(i)?;
            let text = match v {
                rusqlite::types::Value::Null => None,
                rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                rusqlite::types::Value::Text(t) => Some(t),
                other => Some(format!("{other:?}")),
            };
            out.push((name.clone(), text));
        }
        Ok(out)
    })
    .ok()
}

fn field(row: &[(String, Option<String>)], name: &str) -> Option<String> {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

fn millis(row: &[(String, Option<String>)], name: &str) -> i64 {
    field(row, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {row:?}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn insert_raw(
    conn: &rusqlite::Connection,
    key: &str,
    id: &str,
    expires_at_ms: i64,
    state: Option<&str>,
) {
    conn.execute(
        "INSERT OR REPLACE INTO conversations
             (pk, conversation_id, expires_at_ms, updated_at_ms, conversation_state, system_digest)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
        rusqlite::params![key, id, expires_at_ms, expires_at_ms - 1000, state],
    )
    .expect("insert raw row");
}

#[tokio::test]
async fn sqlite_rows_hold_only_ids_digests_and_times() {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, HOUR);
    let before = now_ms();
    check_claims(&store).await;
    let after = now_ms();
    let conn = raw(&dir);
    let r = row(&conn, "c").expect("row");
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "pk",
            "conversation_id",
            "expires_at_ms",
            "updated_at_ms",
            "conversation_state",
            "system_digest"
        ]
    );
    assert_eq!(field(&r, "conversation_id").as_deref(), Some("conv-2"));
    assert_eq!(field(&r, "conversation_state").as_deref(), Some("s3"));
    assert_eq!(field(&r, "system_digest").as_deref(), Some("sys-1"));
    let updated = millis(&r, "updated_at_ms");
    assert!(
        (before..=after).contains(&updated),
        "updated_at_ms {updated}"
    );
    assert_eq!(millis(&r, "expires_at_ms"), updated + 3_600_000);
    // A plain put holds no state: it is never continued (see check_claims).
    let old = row(&conn, "old").expect("row");
    assert_eq!(field(&old, "conversation_state"), None);
    assert_eq!(
        store.describe(),
        format!("sqlite file {}", db_path(&dir).display())
    );
}

#[tokio::test]
async fn sqlite_expired_rows_are_absent_and_stay_expired() {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, HOUR);
    let conn = raw(&dir);
    let past = now_ms() - 10_000;
    insert_raw(&conn, "x", "conv-x", past, Some("s1"));
    let expired = row(&conn, "x");
    assert_eq!(store.get("x").await, Ok(None));
    assert_eq!(store.claim("x", "s1", "t").await, Ok(Claim::Absent));
    store.touch("x", "conv-x").await.expect("touch");
    assert_eq!(row(&conn, "x"), expired, "no resurrection, no refresh");
    // Its owner may still delete it.
    store.delete("x", "conv-x").await.expect("delete");
    assert_eq!(row(&conn, "x"), None);

    insert_raw(&conn, "y", "conv-y", past, None);
    assert_eq!(store.put_new("y", "conv-new").await, Ok(PutOutcome::Stored));
    let replaced = row(&conn, "y").expect("row");
    assert_eq!(
        field(&replaced, "conversation_id").as_deref(),
        Some("conv-new")
    );
    assert!(millis(&replaced, "expires_at_ms") > now_ms());
}

#[tokio::test]
async fn sqlite_touch_refreshes_only_a_live_matching_row() {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, HOUR);
    let conn = raw(&dir);
    // Live for ten more seconds: well short of the store's hour.
    let soon = now_ms() + 10_000;
    insert_raw(&conn, "k", "mine", soon, None);
    store.touch("k", "someone-else").await.expect("touch other");
    store
        .delete("k", "someone-else")
        .await
        .expect("delete other");
    assert_eq!(
        millis(&row(&conn, "k").expect("row"), "expires_at_ms"),
        soon
    );
    let before = now_ms();
    store.touch("k", "mine").await.expect("touch");
    let touched = row(&conn, "k").expect("row");
    assert!(millis(&touched, "expires_at_ms") >= before + 3_600_000);
    assert!(millis(&touched, "updated_at_ms") >= before);

    // The losing first turn does not refresh the winner either.
    let winner = row(&conn, "k");
    assert_eq!(
        store.put_new("k", "loser").await,
        Ok(PutOutcome::Exists("mine".into()))
    );
    assert_eq!(row(&conn, "k"), winner);
}

/// What a restart sees: every mapping written before it, claims and all; expired rows
/// are swept when the file is opened.
#[tokio::test]
async fn sqlite_mappings_survive_reopening() {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, HOUR);
    assert_eq!(
        store.settle("chat", mapping("conv-1", "s1"), None).await,
        Ok(true)
    );
    store.put("history", "conv-2").await.expect("put");
    insert_raw(&raw(&dir), "stale", "conv-0", now_ms() - 1, None);
    drop(store);

    let reopened = sqlite_at(&dir, HOUR);
    assert_eq!(row(&raw(&dir), "stale"), None, "swept at open");
    assert_eq!(reopened.get("history").await, Ok(Some("conv-2".into())));
    assert_eq!(
        reopened.claim("chat", "s1", "t1").await,
        Ok(Claim::Continue {
            conversation_id: "conv-1".into(),
            system: Some("sys-1".into())
        })
    );
}

/// Two stores on one file (two instances on one machine, or a restart overlapping the
/// old process): the conditional operations still have one winner each.
#[tokio::test]
async fn sqlite_two_instances_on_one_file_agree() {
    let dir = TempDir::new("store");
    let a = sqlite_at(&dir, HOUR);
    let b = sqlite_at(&dir, HOUR);
    let ids: Vec<String> = (0..10).map(|i| format!("conv-{i}")).collect();
    let outcomes = join_all(ids.iter().enumerate().map(|(i, id)| {
        let store: &dyn ConversationStore = if i % 2 == 0 { &a } else { &b };
        store.put_new("race", id)
    }))
    .await;
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PutOutcome::Stored)))
        .count();
    assert_eq!(stored, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");

    a.settle("r", mapping("conv-r", "s1"), None)
        .await
        .expect("settle");
    let tokens: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let claims = join_all(tokens.iter().enumerate().map(|(i, t)| {
        let store: &dyn ConversationStore = if i % 2 == 0 { &a } else { &b };
        store.claim("r", "s1", t)
    }))
    .await;
    let won = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Continue { .. })))
        .count();
    assert_eq!(won, 1, "{claims:?}");
}

/// Another process holding the write lock (a long sqlite3 session): writes fail as
/// Unavailable within their budget, not after SQLite's own wait or never; lookups still
/// read (WAL).
#[tokio::test]
async fn sqlite_locked_file_fails_within_budget() {
    let dir = TempDir::new("store");
    let budget = StoreBudget {
        lookup: Duration::from_millis(800),
        write: Duration::from_millis(1500),
    };
    let store = SqliteStore::open(&db_path(&dir), HOUR, budget).expect("open");
    store.put("k", "c").await.expect("put");
    let holder = raw(&dir);
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE conversations SET updated_at_ms = 0;")
        .expect("take the write lock");
    assert_eq!(store.get("k").await, Ok(Some("c".into())), "readers go on");
    let (put_new, put, settle) = tokio::join!(
        timed(store.put_new("n", "c")),
        timed(store.put("k", "d")),
        timed(store.settle("k", mapping("c", "s"), None)),
    );
    for (name, (result, elapsed)) in [("put_new", put_new), ("put", put), ("settle", settle)] {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{name}: {result:?}"
        );
        assert!(elapsed < budget.write + SLACK, "{name} took {elapsed:?}");
    }
    holder.execute_batch("ROLLBACK;").expect("release");
    // Once the lock is gone, the store works again (polled: the timed-out calls may
    // still be finishing on the blocking pool).
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.put("k", "e").await.is_err() {
        assert!(Instant::now() < deadline, "the store never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.get("k").await, Ok(Some("e".into())));
}

/// Expired rows do not pile up while the process runs: they go every SWEEP_EVERY writes.
#[tokio::test]
async fn sqlite_expired_rows_are_swept_while_running() {
    let dir = TempDir::new("store");
    let store = sqlite_at(&dir, HOUR);
    let conn = raw(&dir);
    insert_raw(&conn, "stale", "conv-0", now_ms() - 1, None);
    insert_raw(&conn, "live", "conv-1", now_ms() + 3_600_000, None);
    for i in 0..opendify::store::sqlite::SWEEP_EVERY {
        store.put(&format!("k{}", i % 8), "c").await.expect("put");
    }
    assert_eq!(row(&conn, "stale"), None, "swept");
    assert!(row(&conn, "live").is_some(), "live rows stay");
}

#[tokio::test]
async fn sqlite_unusable_files_are_refused_at_open() {
    let dir = TempDir::new("store");
    // The parent "directory" is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let err = SqliteStore::open(&file.join("opendify.db"), HOUR, StoreBudget::default())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, StoreError::Unavailable(cause) if cause.contains("cannot create the directory")),
        "{err:?}"
    );
    // A file from a newer build.
    let store = sqlite_at(&dir, HOUR);
    drop(store);
    raw(&dir)
        .execute_batch("PRAGMA user_version = 99;")
        .expect("bump");
    let err = SqliteStore::open(&db_path(&dir), HOUR, StoreBudget::default())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, StoreError::Other(cause) if cause.contains("schema version 99")),
        "{err:?}"
    );
}

// ---- Memory --------------------------------------------------------------------------

// A paused clock: the sleeps advance time exactly, so a loaded machine cannot
// stretch them past the TTL.
#[tokio::test(start_paused = true)]
async fn memory_expiry_touch_and_replace() {
    let store = MemoryStore::new(Duration::from_millis(300));
    store.put_new("k", "old").await.expect("put_new");
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.touch("k", "old").await.expect("touch");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.get("k").await,
        Ok(Some("old".into())),
        "kept alive by touch"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get("k").await, Ok(None), "expired");
    store.touch("k", "old").await.expect("touch expired");
    assert_eq!(store.get("k").await, Ok(None), "touch must not resurrect");
    assert_eq!(store.put_new("k", "new").await, Ok(PutOutcome::Stored));
    assert_eq!(store.get("k").await, Ok(Some("new".into())));
}

#[tokio::test]
async fn memory_describes_itself() {
    assert_eq!(MemoryStore::new(HOUR).describe(), "in-process memory");
}
