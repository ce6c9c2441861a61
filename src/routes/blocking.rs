//! Blocking delivery: the whole answer read from Dify's stream, then one response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::answer::AnswerRun;
use crate::answer::Accumulator;
use crate::dify::EventStream;
use crate::openai::chat::content_text;

/// Reads the answer to its end and answers with the JSON `encode` makes of it (the
/// answer, and its content as one text), or the error that ended it. If the client
/// disconnects, axum drops this future and the task stops.
pub async fn complete_answer<T: Serialize>(
    mut upstream: EventStream,
    mut run: AnswerRun,
    encode: impl FnOnce(&mut Accumulator, String) -> T,
) -> Response {
    let mut answer = Accumulator::new();
    let mut items = Vec::new();
    let mut pieces = Vec::new();
    while !answer.is_over() {
        let more = upstream.next_batch(&mut items).await;
        run.decode(&mut items, !more, &mut pieces);
        for piece in pieces.drain(..) {
            answer.apply(&piece);
        }
    }
    if let Some(failure) = answer.failure() {
        let error = failure.error.clone();
        run.close(&answer, "").await;
        return error.into_response();
    }
    let content = content_text(answer.take_content());
    run.close(&answer, &content).await;
    // Sized for the text up front: a buffer grown by doubling would briefly hold up to
    // three copies of a large answer, next to the answer itself.
    let mut body = Vec::with_capacity(content.len() + 1024);
    let value = encode(&mut answer, content);
    if serde_json::to_writer(&mut body, &value).is_err() {
        // Our own types always serialize; never a panic all the same.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    drop(value);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
