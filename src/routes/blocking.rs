//! Blocking delivery: the whole answer read from Dify's stream, then one response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::answer::AnswerRun;
use crate::answer::Accumulator;
use crate::dify::EventStream;
use crate::openai::chat::{ChunkMeta, completion, content_text};

/// Reads the answer to its end and answers with one `chat.completion`, or the error that
/// ended it. If the client disconnects, axum drops this future and the task stops.
pub async fn complete_answer(
    mut upstream: EventStream,
    meta: ChunkMeta,
    mut run: AnswerRun,
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
    let completion = completion(&meta, &answer, content);
    if serde_json::to_writer(&mut body, &completion).is_err() {
        // Our own types always serialize; never a panic all the same.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    drop(completion);
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
