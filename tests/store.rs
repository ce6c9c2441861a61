//! The conversation store against a real moto_server over HTTP (no mocks), and the same
//! semantics against the in-memory store.

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use futures_util::future::join_all;
use opendify::store::dynamo::StoreBudget;
use opendify::store::{
    Claim, ConversationStore, DynamoStore, Mapping, MemoryStore, PutOutcome, StoreError,
};
use support::moto::{Moto, number};

const HOUR: Duration = Duration::from_secs(3600);
/// What a broken store may cost one call beyond its budget: slack for a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

fn unix_now() -> i64 {
    opendify::unix_now()
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

// ---- Semantics shared by both stores -------------------------------------------------

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
async fn dynamo_claim_race_has_one_winner() {
    let (_, _, store) = dynamo(HOUR).await;
    check_claim_race(&store).await;
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
async fn dynamo_round_trips() {
    let (_, _, store) = dynamo(HOUR).await;
    check_round_trips(&store).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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

    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.touch("k", "conv-1").await.expect("touch");
    let touched = moto.get_item_raw(&table, "k").await.expect("item");
    assert!(
        number(&touched, "expires_at") > expires,
        "touch extends the expiry"
    );
    assert!(number(&touched, "updated_at") > updated);
    assert_eq!(touched.get("conversation_id"), Some(&s("conv-1")));

    // put refreshes the times as well.
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
async fn dynamo_short_ttl_expires() {
    let (_, _, store) = dynamo(Duration::from_secs(1)).await;
    store.put_new("k", "c").await.expect("put_new");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.get("k").await, Ok(None));
    assert_eq!(store.put_new("k", "d").await, Ok(PutOutcome::Stored));
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

// ---- Memory --------------------------------------------------------------------------

#[tokio::test]
async fn memory_round_trips() {
    check_round_trips(&MemoryStore::new(HOUR)).await;
}

#[tokio::test]
async fn memory_claims_follow_the_conversation_state() {
    check_claims(&MemoryStore::new(HOUR)).await;
}

#[tokio::test]
async fn memory_claim_race_has_one_winner() {
    check_claim_race(&MemoryStore::new(HOUR)).await;
}

#[tokio::test]
async fn memory_put_new_first_wins() {
    check_put_new(&MemoryStore::new(HOUR)).await;
}

#[tokio::test]
async fn memory_put_new_race_has_one_winner() {
    check_race(&MemoryStore::new(HOUR)).await;
}

#[tokio::test]
async fn memory_mismatched_ids_leave_the_item_untouched() {
    check_mismatched_ids(&MemoryStore::new(HOUR)).await;
}

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
