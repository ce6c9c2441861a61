//! Blocking delivery: the whole answer read from Dify's stream, then one response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::answer::AnswerRun;
use crate::answer::Accumulator;
use crate::dify::EventStream;
use crate::openai::chat::{ChunkMeta, completion};

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
    let result = completion(&meta, &answer);
    let visible = match &result {
        Ok(c) => c.choices.first().map_or("", |c| c.message.content.as_str()),
        Err(_) => "",
    };
    run.close(upstream.was_cut(), &answer, visible).await;
    match result {
        Ok(completion) => (StatusCode::OK, axum::Json(completion)).into_response(),
        Err(failure) => failure.error.clone().into_response(),
    }
}
