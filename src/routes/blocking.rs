//! Blocking delivery: the whole answer read from Dify's stream, then one response.

use axum::http::StatusCode;
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
        run.decode(&mut items, &mut pieces);
        if !more {
            run.decoder.on_end(&mut pieces);
        }
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
    let completion = completion(&meta, &answer, content);
    (StatusCode::OK, axum::Json(completion)).into_response()
}
