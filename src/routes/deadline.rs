//! Bounds every request by its [`Deadline`]: the Lambda invocation's (from the context
//! `lambda_http` puts in the request's extensions), else `MAX_STREAM_SECONDS` from now. A
//! request whose answer has not started by then gets a 504. An answer under way is cut by
//! the Dify client at the same deadline and ends with its own error (an event, or a 502
//! for a blocking answer), given until the invocation's end to close.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::deadline::Deadline;
use crate::error::dify::deadline_reached;
use crate::state::AppState;

pub async fn bound(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let invocation = request
        .extensions()
        .get::<lambda_http::Context>()
        .map(|context| context.deadline);
    let deadline = Deadline::for_request(invocation, state.config().max_stream_duration);
    tracing::debug!(
        left_ms = deadline
            .at
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64,
        invocation_left_ms = deadline.hard.map(|h| h
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64),
        "the request's time limit"
    );
    let work = deadline.clone().scope(next.run(request));
    tokio::pin!(work);
    if let Ok(response) = tokio::time::timeout_at(deadline.at, &mut work).await {
        return response;
    }
    if deadline.started() {
        // The answer's stream has been cut at the same moment: let it close.
        let end = deadline
            .hard
            .unwrap_or_else(|| deadline.at + AFTER_THE_LIMIT);
        if let Ok(response) = tokio::time::timeout_at(end, &mut work).await {
            return response;
        }
    }
    tracing::warn!(
        limit = %deadline.describe(),
        started = deadline.started(),
        "the request reached its time limit before its answer started"
    );
    deadline_reached(&deadline.describe()).into_response()
}

/// Outside Lambda, how long a cut answer may take to close (its task's stop is bounded
/// by 5 s, the store writes by their own budget).
const AFTER_THE_LIMIT: Duration = Duration::from_secs(15);
