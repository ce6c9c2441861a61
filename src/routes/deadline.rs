//! Bounds every request by its [`Deadline`]: the Lambda invocation's (from the context
//! `lambda_http` puts in the request's extensions), else `MAX_STREAM_SECONDS` from now. A
//! request not answered by then gets a 504; a stream already under way is cut by the Dify
//! client at the same deadline and ends with an error event.

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
        .map(|context| context.deadline)
        // A context built without one (`Context::default()`, as tests do) says 0.
        .filter(|&ms| ms > 0);
    let deadline = Deadline::for_request(invocation, state.config().max_stream_duration);
    tracing::debug!(
        left_ms = deadline
            .at
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64,
        lambda = invocation.is_some(),
        "the request's time limit"
    );
    match tokio::time::timeout_at(deadline.at, deadline.scope(next.run(request))).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                limit = %deadline.describe(),
                "the request reached its time limit before its answer started"
            );
            deadline_reached(&deadline.describe()).into_response()
        }
    }
}
