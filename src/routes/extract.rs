//! The JSON body extractor: content type, size limit, and serde errors that name the field,
//! all as OpenAI-shaped errors (axum's own `Json` rejection is plain text).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::openai::bounded::parse_weight;
use crate::openai::bounded::{STRUCTURE_ALLOWANCE, with_allowance};

use crate::error::{ApiError, json_error_text};
use crate::openai::ChatCompletionRequest;
use crate::openai::responses::ResponsesRequest;
use crate::state::AppState;

/// A request body type, and how to describe it in errors about its shape.
pub trait JsonBody: DeserializeOwned {
    /// What the body must hold, for "The request body must be a JSON object with …".
    const SHAPE: &'static str;
}

impl JsonBody for ChatCompletionRequest {
    const SHAPE: &'static str = "`model` and `messages`";
}

impl JsonBody for ResponsesRequest {
    const SHAPE: &'static str = "`model` and `input`";
}

/// A parsed JSON request body.
pub struct OpenAiJson<T>(pub T);

impl<T: JsonBody> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_content_type(request.headers())?;
        let bytes = read_body(request.into_body(), state.config().max_request_bytes).await?;
        // Held until the parse is done; the raw body is dropped with it.
        let _reserved = reserve(state.parse_budget(), bytes.len(), PARSE_BUDGET_WAIT).await?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// Requests refused because the parse budget stayed spent, since the process started.
static BUSY: AtomicU64 = AtomicU64::new(0);

/// How long a request waits for the parse budget before a 503: parses take milliseconds,
/// so a wait this long means the process is flooded with large bodies.
const PARSE_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Takes a parse of `body_len` bytes' weight ([`parse_weight`]) from the process's parse
/// budget (`PARSE_BUDGET_BYTES`), waiting up to `wait`; then the request is refused with
/// a 503 and `retry-after`, never left to exhaust the memory other requests stream in.
pub async fn reserve(
    budget: &Arc<Semaphore>,
    body_len: usize,
    wait: Duration,
) -> Result<OwnedSemaphorePermit, ApiError> {
    // The configuration makes the budget hold one parse of the largest body.
    let weight = u32::try_from(parse_weight(body_len)).unwrap_or(u32::MAX);
    match tokio::time::timeout(wait, budget.clone().acquire_many_owned(weight)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) | Err(_) => {
            let n = BUSY.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                body_bytes = body_len,
                parse_budget_busy_total = n,
                "refused a request: the parse budget stayed spent (PARSE_BUDGET_BYTES)"
            );
            Err(ApiError::Busy)
        }
    }
}

/// JSON, or what quick clients send for it (curl's `-d` says form-urlencoded); anything
/// else (multipart, XML, …) is a mistake worth a clear 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let accepted = media == "application/json"
        || media.ends_with("+json")
        || media == "text/plain"
        || media == "application/x-www-form-urlencoded";
    if accepted {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { media })
    }
}

/// Reads the body up to the configured limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(_) => Err(ApiError::bad_request(
            "The request body could not be read.",
            None,
        )),
    }
}

/// The chat-completions body exactly as the route parses it (the fuzz targets use this).
pub fn parse_request(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    parse_json(bytes)
}

/// The Responses body exactly as the route parses it (the fuzz targets use this).
pub fn parse_responses_request(bytes: &[u8]) -> Result<ResponsesRequest, ApiError> {
    parse_json(bytes)
}

/// JSON syntax errors and type errors get different messages; type errors name the field.
pub fn parse_json<T: JsonBody>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            format!(
                "The request body is empty: send a JSON object with {}.",
                T::SHAPE
            ),
            None,
        ));
    }
    // serde would read a struct from an array too; say plainly what the body must be.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::bad_request(
                    format!("The request body must be a JSON object with {}.", T::SHAPE),
                    None,
                ),
                Err(e) => {
                    ApiError::bad_request(format!("The request body is not valid JSON: {e}."), None)
                }
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = with_allowance(STRUCTURE_ALLOWANCE, || {
        serde_path_to_error::deserialize(&mut deserializer)
    });
    match parsed {
        Ok(request) => match deserializer.end() {
            Ok(()) => Ok(request),
            Err(e) => Err(ApiError::bad_request(
                format!("The request body is not valid JSON: {e}."),
                None,
            )),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let param = (path != ".").then_some(path);
                let at = param
                    .as_deref()
                    .map(|p| format!(" at `{p}`"))
                    .unwrap_or_default();
                Err(ApiError::bad_request(
                    format!("Invalid request{at}: {}.", json_error_text(&inner)),
                    param,
                ))
            } else if json_error_text(&inner) == "recursion limit exceeded" {
                Err(ApiError::bad_request(
                    "The request body is nested too deeply: JSON nested more than 128 levels is refused.",
                    None,
                ))
            } else {
                Err(ApiError::bad_request(
                    format!("The request body is not valid JSON: {inner}."),
                    None,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> (String, Option<String>) {
        match parse_request(body.as_bytes()) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_parse_budget_is_a_503_with_retry_after_once_the_wait_is_over() {
        let weight = parse_weight(1000);
        let budget = Arc::new(Semaphore::new(weight + 10));
        let held = reserve(&budget, 1000, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(budget.available_permits(), 10);
        // Spent: the second parse waits, then is refused (time is paused, so the wait
        // passes at once).
        let refused = reserve(&budget, 1000, Duration::from_secs(2)).await;
        let client = crate::error::ClientError::from(&refused.unwrap_err());
        assert_eq!(client.status, 503);
        assert_eq!(client.retry_after.as_deref(), Some("1"));
        assert_eq!(client.body.error.code.as_deref(), Some("server_busy"));
        // Freed within the wait: the waiting parse goes ahead.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { reserve(&budget, 1000, Duration::from_secs(2)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held);
        assert!(waiting.await.unwrap());
    }

    #[test]
    fn syntax_and_type_errors_read_differently() {
        let (m, p) = bad("{\"model\": \"x\", ");
        assert!(m.starts_with("The request body is not valid JSON"), "{m}");
        assert_eq!(p, None);
        let (m, p) =
            bad(r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#);
        assert_eq!(
            m,
            "Invalid request at `stream`: invalid type: string \"yes\", expected a boolean."
        );
        assert_eq!(p.as_deref(), Some("stream"));
        let (m, p) = bad(r#"{"model":"x","messages":[{"role":"robot","content":"hi"}]}"#);
        assert!(
            m.contains("messages[0].role") && m.contains("unknown variant `robot`"),
            "{m}"
        );
        assert_eq!(p.as_deref(), Some("messages[0].role"));
        let (m, _) = bad(r#"{"messages":[]}"#);
        assert!(m.contains("missing field `model`"), "{m}");
        let (m, _) = bad("  ");
        assert!(m.contains("empty"), "{m}");
        let (m, _) = bad(r#"{"model":"x","messages":[]} trailing"#);
        assert!(
            m.contains("not valid JSON") || m.contains("trailing"),
            "{m}"
        );
    }
}
