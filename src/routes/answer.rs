//! What an answer in progress needs besides Dify's event stream, for both ways of
//! delivering it (streamed in `stream.rs`, whole in `blocking.rs`).

use std::time::Instant;

use crate::answer::think::answer_part;
use crate::answer::{Accumulator, DifyDecoder, Flow, Piece};
use crate::conversation::ConversationLink;
use crate::dify::{DifyError, DifyEvent, RunningTask};
use crate::plan::Turn;

pub struct AnswerRun {
    pub decoder: DifyDecoder,
    pub task: RunningTask,
    pub link: ConversationLink,
    pub turn: Turn,
    pub model: String,
    pub started: Instant,
    /// Set once a complete answer's conversation has been recorded.
    pub recorded: bool,
}

impl AnswerRun {
    /// Decodes one network read's worth of Dify items into pieces, keeping the task id
    /// (to stop it) and the conversation id (to map it) as soon as a frame names them.
    /// Items after the end or a failure are dropped; `stream_over`: Dify's stream ended
    /// with this read, so an answer still open ends (or fails) here.
    pub fn decode(
        &mut self,
        items: &mut Vec<Result<DifyEvent, DifyError>>,
        stream_over: bool,
        pieces: &mut Vec<Piece>,
    ) {
        for item in items.drain(..) {
            let flow = self.decoder.on_item(item, pieces);
            self.task.learn(self.decoder.task_id());
            if let Some(conversation) = self.decoder.conversation_id() {
                self.link.on_conversation(conversation);
            }
            if flow == Flow::Stop {
                // Dropping the drain discards the rest.
                break;
            }
        }
        if stream_over {
            self.decoder.on_end(pieces);
        }
    }

    /// Records what the conversation holds after a complete answer and waits for the
    /// store: call before the client gets the end of the answer, so that its next turn,
    /// sent as soon as it has this one, finds the mapping. Does nothing otherwise.
    pub async fn record(&mut self, answer: &Accumulator, visible: &str) {
        if self.recorded || !answer.ended() || answer.failure().is_some() {
            return;
        }
        self.recorded = true;
        // The answer as clients send it back: without the thinking, whether it went out
        // apart or inline (Open WebUI strips an inline block itself), like the history.
        let answer = answer_part(visible);
        self.link.on_answer(
            self.decoder.conversation_id(),
            &self.turn.history,
            &self.turn.message,
            &answer,
        );
        self.link.finish_writes().await;
    }

    /// The answer is over and the client has all of it (or its error). A complete answer,
    /// or a failure Dify reported itself, needs no stop; any other end stops the Dify
    /// task, which may still be generating.
    /// Maps a complete answer for the next turn (if `record` has not); returns once the
    /// stop and the store writes are done, so under Lambda they finish inside the
    /// invocation.
    pub async fn close(&mut self, answer: &Accumulator, visible: &str) {
        let ms = self.started.elapsed().as_millis() as u64;
        match answer.failure() {
            None => {
                self.task.disarm();
                self.record(answer, visible).await;
                let tokens = answer.usage().total_tokens;
                tracing::info!(model = %self.model, ms, tokens, "answer complete");
            }
            Some(failure) => {
                let code = failure.error.body.error.code.as_deref().unwrap_or("");
                tracing::warn!(model = %self.model, ms, code, cause = %failure.cause, "Dify failed mid-answer");
            }
        }
        let dify_done = answer.ended() || answer.failure().is_some_and(|f| f.dify_ended);
        let throwaway = self
            .decoder
            .conversation_id()
            .filter(|_| self.link.is_detached() && dify_done)
            .map(str::to_string);
        match throwaway {
            // A background task's conversation would only clutter the user's list in
            // Dify (and its logs): deleted once answered, next to the store writes.
            Some(conversation) => {
                self.task.disarm();
                tokio::join!(
                    self.task.delete_conversation(&conversation),
                    self.link.finish_writes()
                );
            }
            None => self.finish(dify_done, "its answer ended early").await,
        }
    }

    /// Stops the task unless Dify is done with it, and waits for the store writes.
    pub async fn finish(&mut self, dify_done: bool, why: &str) {
        if dify_done {
            self.task.disarm();
            self.link.finish_writes().await;
        } else {
            tokio::join!(self.task.stop(why), self.link.finish_writes());
        }
    }
}
