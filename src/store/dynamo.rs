//! The store in a DynamoDB table.
//!
//! Item schema (one item per key; no message text, ever):
//!
//! | attribute         | type | meaning                                                      |
//! |-------------------|------|--------------------------------------------------------------|
//! | `pk`              | S    | partition key: the opaque key the caller derived             |
//! | `conversation_id` | S    | the Dify conversation id                                     |
//! | `expires_at`      | N    | Unix seconds, last write or refresh + TTL; the TTL attribute |
//! | `updated_at`      | N    | Unix seconds of the last write or refresh                    |
//! | `conversation_state` | S | chats: digest of what the conversation holds, or the token   |
//! |                   |      | of the request continuing it right now                       |
//! | `system_digest`   | S    | chats: digest of the system messages it was last sent        |
//!
//! The table needs only the `pk` (S) hash key and TTL enabled on `expires_at`. DynamoDB
//! deletes expired items lazily (up to days later), so every read and condition here also
//! treats `expires_at <= now` as absent. An item missing `conversation_id` or `expires_at`
//! counts as absent too.
//!
//! Permissions used: `GetItem`, `PutItem`, `UpdateItem`, `DeleteItem` on the table.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::{BoxFuture, Claim, ConversationStore, Mapping, PutOutcome, StoreError};

/// Attempts per call. Each attempt gets an equal share of the call's budget, and connects
/// within it: a share of at least a second lets a SYN dropped by a full listen backlog be
/// retransmitted (Linux waits 1 s) instead of failing the attempt.
pub const LOOKUP_ATTEMPTS: u32 = 2;
pub const WRITE_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Our own cap around each call is its budget plus this, in case something outside the
/// SDK's operation timeout (such as credential resolution) hangs.
const HARD_CAP_SLACK: Duration = Duration::from_millis(500);

/// How long one store call may take. A lookup holds up the answer's first token, so it is
/// short, and a store that cannot answer in time means a new conversation (logged). A
/// write runs while the answer streams and only delays the end of the response body, and
/// a lost write loses the conversation for the next turn, so it gets more time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreBudget {
    pub lookup: Duration,
    pub write: Duration,
}

impl Default for StoreBudget {
    fn default() -> Self {
        Self {
            lookup: Duration::from_millis(crate::config::DEFAULT_STORE_LOOKUP_TIMEOUT_MS),
            write: Duration::from_millis(crate::config::DEFAULT_STORE_WRITE_TIMEOUT_MS),
        }
    }
}

/// Timeouts for calls of `budget` in `attempts` attempts.
pub fn timeout_config(budget: Duration, attempts: u32) -> TimeoutConfig {
    let attempt = budget / attempts.max(1);
    TimeoutConfig::builder()
        .connect_timeout(attempt)
        .operation_attempt_timeout(attempt)
        .operation_timeout(budget)
        .build()
}

/// Retries with a short backoff (the SDK default is three attempts with up to 20 s of
/// backoff).
pub fn retry_config(attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// Applies the default lookup budget to a client configuration; writes override it per
/// call (see [`DynamoStore`]).
pub fn with_budget(
    builder: aws_sdk_dynamodb::config::Builder,
) -> aws_sdk_dynamodb::config::Builder {
    let budget = StoreBudget::default();
    builder
        .timeout_config(timeout_config(budget.lookup, LOOKUP_ATTEMPTS))
        .retry_config(retry_config(LOOKUP_ATTEMPTS))
}

/// TTLs are clamped to [1 s, a century]: zero would expire items as they are written.
const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// Longest cause string kept from an SDK error; the full chain can be kilobytes.
const MAX_CAUSE: usize = 300;

const PK: &str = "pk";
const CONVERSATION_ID: &str = "conversation_id";
const EXPIRES_AT: &str = "expires_at";
const UPDATED_AT: &str = "updated_at";
const STATE: &str = "conversation_state";
const SYSTEM: &str = "system_digest";

/// Absent, expired or malformed: anything a first turn may overwrite.
const NOT_LIVE: &str = "attribute_not_exists(pk) OR attribute_not_exists(conversation_id) \
     OR attribute_not_exists(expires_at) OR expires_at <= :now";

pub struct DynamoStore {
    client: Client,
    table: String,
    ttl_secs: i64,
    budget: StoreBudget,
}

impl DynamoStore {
    /// Uses `client` as configured; build it with [`with_budget`] to keep the store's
    /// failure latency bounded.
    pub fn new(client: Client, table: String, ttl: Duration) -> Self {
        let ttl_secs = ttl.as_secs().clamp(1, MAX_TTL_SECS) as i64;
        Self {
            client,
            table,
            ttl_secs,
            budget: StoreBudget::default(),
        }
    }

    /// Calls get `budget` instead of the defaults.
    pub fn with_budget(mut self, budget: StoreBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Per-call settings for a lookup or a write, over the client's own.
    fn call_config(&self, write: bool) -> (aws_sdk_dynamodb::config::Builder, Duration) {
        let (budget, attempts) = if write {
            (self.budget.write, WRITE_ATTEMPTS)
        } else {
            (self.budget.lookup, LOOKUP_ATTEMPTS)
        };
        let config = aws_sdk_dynamodb::config::Builder::new()
            .timeout_config(timeout_config(budget, attempts))
            .retry_config(retry_config(attempts));
        (config, budget + HARD_CAP_SLACK)
    }

    /// Loads the AWS configuration once (call at cold start, not per request): region and
    /// credentials from the standard chain, endpoint from `AWS_ENDPOINT_URL_DYNAMODB` or
    /// `AWS_ENDPOINT_URL` when set, then the store's timeouts and retries.
    pub async fn from_env(table: String, ttl: Duration, budget: StoreBudget) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let config = with_budget(aws_sdk_dynamodb::config::Builder::from(&shared)).build();
        Self::new(Client::from_conf(config), table, ttl).with_budget(budget)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn item(&self, key: &str, conversation_id: &str, now: i64) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (PK.to_string(), AttributeValue::S(key.to_string())),
            (
                CONVERSATION_ID.to_string(),
                AttributeValue::S(conversation_id.to_string()),
            ),
            (EXPIRES_AT.to_string(), number(now + self.ttl_secs)),
            (UPDATED_AT.to_string(), number(now)),
        ])
    }

    async fn get_item(&self, key: &str) -> Result<Option<String>, StoreError> {
        let (config, cap) = self.call_config(false);
        let out = bounded(
            cap,
            self.client
                .get_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(key.to_string()))
                // A turn that follows right after the first must see its mapping.
                .consistent_read(true)
                .customize()
                .config_override(config)
                .send(),
        )
        .await?
        .map_err(classify)?;
        Ok(out
            .item()
            .and_then(|item| live_conversation(item, crate::unix_now())))
    }

    async fn put_new_item(
        &self,
        key: &str,
        conversation_id: &str,
    ) -> Result<PutOutcome, StoreError> {
        // Twice at most: the second pass only runs when the winner vanished (deleted or
        // expired) between our failed condition and the read that looked for it.
        for _ in 0..2 {
            let now = crate::unix_now();
            let (config, cap) = self.call_config(true);
            let result = bounded(
                cap,
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(self.item(key, conversation_id, now)))
                    .condition_expression(NOT_LIVE)
                    .expression_attribute_values(":now", number(now))
                    // The loser learns the winner's id from the failure itself.
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .customize()
                    .config_override(config)
                    .send(),
            )
            .await?;
            let err = match result {
                Ok(_) => return Ok(PutOutcome::Stored),
                Err(err) => err,
            };
            let winner = match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(ccf)) => {
                    ccf.item().and_then(|item| string(item, CONVERSATION_ID))
                }
                _ => return Err(classify(err)),
            };
            // The failed condition says the old item was live, whatever its expires_at
            // looks like to us.
            if let Some(id) = winner {
                return Ok(PutOutcome::Exists(id));
            }
            // Servers that ignore ALL_OLD: read the winner instead.
            if let Some(id) = self.get_item(key).await? {
                return Ok(PutOutcome::Exists(id));
            }
        }
        Err(StoreError::Other(
            "conditional create failed but no live item was found".to_string(),
        ))
    }

    async fn put_item(&self, key: &str, conversation_id: &str) -> Result<(), StoreError> {
        let (config, cap) = self.call_config(true);
        bounded(
            cap,
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(self.item(key, conversation_id, crate::unix_now())))
                .customize()
                .config_override(config)
                .send(),
        )
        .await?
        .map(|_| ())
        .map_err(classify)
    }

    async fn touch_item(&self, key: &str, conversation_id: &str) -> Result<(), StoreError> {
        let now = crate::unix_now();
        let (config, cap) = self.call_config(true);
        let result = bounded(
            cap,
            self.client
                .update_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(key.to_string()))
                .update_expression("SET expires_at = :exp, updated_at = :now")
                // Without a condition UpdateItem would create a missing item; requiring a
                // live item with our id also keeps an expired one from coming back.
                .condition_expression("conversation_id = :cid AND expires_at > :now")
                .expression_attribute_values(":exp", number(now + self.ttl_secs))
                .expression_attribute_values(":now", number(now))
                .expression_attribute_values(":cid", AttributeValue::S(conversation_id.to_string()))
                .customize()
                .config_override(config)
                .send(),
        )
        .await?;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(()),
                _ => Err(classify(err)),
            },
        }
    }

    async fn claim_item(
        &self,
        key: &str,
        expected: &str,
        token: &str,
    ) -> Result<Claim, StoreError> {
        let now = crate::unix_now();
        // A lookup: it holds up the first token, so it gets the lookup budget.
        let (config, cap) = self.call_config(false);
        let result = bounded(
            cap,
            self.client
                .update_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(key.to_string()))
                .update_expression("SET conversation_state = :token, expires_at = :exp, updated_at = :now")
                // Also keeps UpdateItem from creating a missing item.
                .condition_expression(
                    "attribute_exists(conversation_id) AND expires_at > :now AND conversation_state = :expected",
                )
                .expression_attribute_values(":token", AttributeValue::S(token.to_string()))
                .expression_attribute_values(":expected", AttributeValue::S(expected.to_string()))
                .expression_attribute_values(":exp", number(now + self.ttl_secs))
                .expression_attribute_values(":now", number(now))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .customize()
                .config_override(config)
                .send(),
        )
        .await?;
        match result {
            Ok(out) => {
                let item = out.attributes().cloned().unwrap_or_default();
                match string(&item, CONVERSATION_ID) {
                    Some(conversation_id) => Ok(Claim::Continue {
                        conversation_id,
                        system: string(&item, SYSTEM),
                    }),
                    None => Err(StoreError::Other(
                        "the claimed item has no conversation id".to_string(),
                    )),
                }
            }
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(ccf)) => Ok(
                    match ccf.item().and_then(|item| live_conversation(item, now)) {
                        Some(_) => Claim::Diverged,
                        None => Claim::Absent,
                    },
                ),
                _ => Err(classify(err)),
            },
        }
    }

    async fn settle_item(
        &self,
        key: &str,
        mapping: Mapping<'_>,
        claimed: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = crate::unix_now();
        let mut item = self.item(key, mapping.conversation_id, now);
        item.insert(
            STATE.to_string(),
            AttributeValue::S(mapping.state.to_string()),
        );
        item.insert(
            SYSTEM.to_string(),
            AttributeValue::S(mapping.system.to_string()),
        );
        let (config, cap) = self.call_config(true);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        if let Some(token) = claimed {
            put = put
                .condition_expression("conversation_state = :token")
                .expression_attribute_values(":token", AttributeValue::S(token.to_string()));
        }
        let result = bounded(cap, put.customize().config_override(config).send()).await?;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(_)) => Ok(false),
                _ => Err(classify(err)),
            },
        }
    }

    async fn delete_item(&self, key: &str, conversation_id: &str) -> Result<(), StoreError> {
        let (config, cap) = self.call_config(true);
        let result = bounded(
            cap,
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(key.to_string()))
                .condition_expression("conversation_id = :cid")
                .expression_attribute_values(":cid", AttributeValue::S(conversation_id.to_string()))
                .customize()
                .config_override(config)
                .send(),
        )
        .await?;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match err.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(_)) => Ok(()),
                _ => Err(classify(err)),
            },
        }
    }
}

impl ConversationStore for DynamoStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(self.get_item(key))
    }

    fn put_new<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>> {
        Box::pin(self.put_new_item(key, conversation_id))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_item(key, conversation_id))
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        expected: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(self.claim_item(key, expected, token))
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        mapping: Mapping<'a>,
        claimed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.settle_item(key, mapping, claimed))
    }

    fn touch<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.touch_item(key, conversation_id))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_item(key, conversation_id))
    }

    fn describe(&self) -> String {
        format!("dynamodb table {}", self.table)
    }
}

async fn bounded<T>(cap: Duration, call: impl Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(cap, call)
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer within {cap:?}")))
}

fn number(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The item's conversation id if it has one and has not expired at `now`.
fn live_conversation(item: &HashMap<String, AttributeValue>, now: i64) -> Option<String> {
    let expires_at = match item.get(EXPIRES_AT) {
        Some(AttributeValue::N(n)) => parse_number(n)?,
        _ => return None,
    };
    if expires_at <= now as f64 {
        return None;
    }
    string(item, CONVERSATION_ID)
}

/// DynamoDB numbers are decimal strings; we write integers, but accept any number a
/// person might have written by hand.
fn parse_number(n: &str) -> Option<f64> {
    n.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Maps an SDK failure to the store's error kinds. Service messages can name the table
/// and the caller's role, never a credential or an item's values.
fn classify<E>(err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => StoreError::Unavailable("timed out".to_string()),
        SdkError::DispatchFailure(failure) if failure.is_timeout() || failure.is_io() => {
            StoreError::Unavailable(cause(&err))
        }
        // Not the network: no credentials in the chain, no region, a bad endpoint URL.
        SdkError::DispatchFailure(_) => {
            let cause = cause(&err);
            let lower = cause.to_ascii_lowercase();
            if lower.contains("credential") || lower.contains("identity") {
                StoreError::AccessDenied(cause)
            } else {
                StoreError::Other(cause)
            }
        }
        // A body the SDK could not parse: usually a proxy or gateway page.
        SdkError::ResponseError(response) => StoreError::Unavailable(format!(
            "unreadable response (HTTP {})",
            response.raw().status().as_u16()
        )),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = truncate(service.err().message().unwrap_or(""));
            let cause = if code.is_empty() {
                format!("HTTP {status}: {message}")
            } else {
                format!("{code}: {message}")
            };
            classify_service(code, status, cause)
        }
        // Missing region, unresolvable credentials, an invalid request.
        _ => StoreError::Other(cause(&err)),
    }
}

fn classify_service(code: &str, status: u16, cause: String) -> StoreError {
    match code {
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException" => StoreError::Throttled(cause),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId" => StoreError::AccessDenied(cause),
        _ if status >= 500 => StoreError::Unavailable(cause),
        _ if status == 403 => StoreError::AccessDenied(cause),
        _ if status == 429 => StoreError::Throttled(cause),
        _ => StoreError::Other(cause),
    }
}

/// The error's `Display` chain, "outer: inner: root" (the SDK's own `DisplayErrorContext`
/// appends a long `Debug` dump).
fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    // One log line: the credential chain's report spans several.
    let text = crate::telemetry::error_chain(err);
    truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "))
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

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn live_only_before_expiry() {
        let i = item(&[
            (CONVERSATION_ID, AttributeValue::S("c".into())),
            (EXPIRES_AT, AttributeValue::N("100".into())),
        ]);
        assert_eq!(live_conversation(&i, 99).as_deref(), Some("c"));
        assert_eq!(live_conversation(&i, 100), None);
        assert_eq!(live_conversation(&i, 101), None);
    }

    #[test]
    fn malformed_items_are_absent() {
        let no_expiry = item(&[(CONVERSATION_ID, AttributeValue::S("c".into()))]);
        assert_eq!(live_conversation(&no_expiry, 0), None);
        let string_expiry = item(&[
            (CONVERSATION_ID, AttributeValue::S("c".into())),
            (EXPIRES_AT, AttributeValue::S("999".into())),
        ]);
        assert_eq!(live_conversation(&string_expiry, 0), None);
        let no_id = item(&[(EXPIRES_AT, AttributeValue::N("999".into()))]);
        assert_eq!(live_conversation(&no_id, 0), None);
        let junk = item(&[
            (CONVERSATION_ID, AttributeValue::S("c".into())),
            (EXPIRES_AT, AttributeValue::N("soon".into())),
        ]);
        assert_eq!(live_conversation(&junk, 0), None);
    }

    #[test]
    fn decimal_expiry_is_accepted() {
        let i = item(&[
            (CONVERSATION_ID, AttributeValue::S("c".into())),
            (EXPIRES_AT, AttributeValue::N("1.5E2".into())),
        ]);
        assert_eq!(live_conversation(&i, 149).as_deref(), Some("c"));
        assert_eq!(live_conversation(&i, 150), None);
    }

    #[test]
    fn service_codes_map_to_kinds() {
        let kind = |code: &str, status: u16| match classify_service(code, status, "x".to_string()) {
            StoreError::Throttled(_) => "throttled",
            StoreError::AccessDenied(_) => "denied",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Other(_) => "other",
        };
        for (code, status, expected) in [
            ("ProvisionedThroughputExceededException", 400, "throttled"),
            ("ThrottlingException", 400, "throttled"),
            ("AccessDeniedException", 400, "denied"),
            ("UnrecognizedClientException", 400, "denied"),
            ("InternalServerError", 500, "unavailable"),
            ("", 503, "unavailable"),
            ("ResourceNotFoundException", 400, "other"),
            ("ValidationException", 400, "other"),
        ] {
            assert_eq!(kind(code, status), expected, "{code} {status}");
        }
    }

    #[test]
    fn ttl_is_clamped() {
        let client = Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                .build(),
        );
        let zero = DynamoStore::new(client.clone(), "t".into(), Duration::ZERO);
        assert_eq!(zero.ttl_secs, 1);
        let huge = DynamoStore::new(client, "t".into(), Duration::MAX);
        assert_eq!(huge.ttl_secs, MAX_TTL_SECS as i64);
        assert_eq!(huge.describe(), "dynamodb table t");
    }

    #[test]
    fn causes_are_truncated_on_char_boundaries() {
        let long = "é".repeat(MAX_CAUSE + 10);
        let t = truncate(&long);
        assert_eq!(t.chars().count(), MAX_CAUSE + 1);
        assert_eq!(truncate("short"), "short");
    }
}
