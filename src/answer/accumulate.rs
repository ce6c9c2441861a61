//! What an answer amounts to so far: its content, usage, and how it ended. One copy of
//! this state serves every encoder, streaming or not.

use super::{Failure, FileKind, Piece, Usage};

/// One part of the answer's content, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    File { kind: FileKind, url: String },
}

#[derive(Debug, Default)]
pub struct Accumulator {
    /// Streamed answers went to the client piece by piece: holding their content too
    /// would only cost memory.
    skip_content: bool,
    content: Vec<Content>,
    /// The thinking, apart from the content.
    reasoning: String,
    usage: Option<Usage>,
    /// Output moderation replaced the answer (OpenAI's `content_filter`).
    replaced: bool,
    ended: bool,
    failure: Option<Failure>,
}

impl Accumulator {
    /// Keeps the content, for an answer delivered whole.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps usage and how the answer ended, not its content: for streamed answers.
    pub fn without_content() -> Self {
        Self {
            skip_content: true,
            ..Self::default()
        }
    }

    /// Adds one piece. Pieces after the end or a failure are ignored.
    pub fn apply(&mut self, piece: &Piece) {
        if self.is_over() {
            return;
        }
        match piece {
            Piece::KeepAlive => {}
            Piece::Text(_) | Piece::File { .. } | Piece::Reasoning(_) if self.skip_content => {}
            Piece::Reasoning(text) => self.reasoning.push_str(text),
            Piece::Replace(_) if self.skip_content => self.replaced = true,
            Piece::Text(text) => match self.content.last_mut() {
                Some(Content::Text(last)) => last.push_str(text),
                _ => self.content.push(Content::Text(text.clone())),
            },
            Piece::File { kind, url } => self.content.push(Content::File {
                kind: *kind,
                url: url.clone(),
            }),
            Piece::Replace(text) => {
                self.replaced = true;
                self.content = vec![Content::Text(text.clone())];
            }
            Piece::Usage(usage) => self.usage = Some(*usage),
            Piece::End => self.ended = true,
            Piece::Failed(failure) => self.failure = Some(failure.clone()),
        }
    }

    /// Moves the content out, so the answer is not held twice while it is encoded.
    pub fn take_content(&mut self) -> Vec<Content> {
        std::mem::take(&mut self.content)
    }

    /// Moves the reasoning out (empty when there was none, or for streamed answers).
    pub fn take_reasoning(&mut self) -> String {
        std::mem::take(&mut self.reasoning)
    }

    /// Dify's token counts; zeros when it sent none (workflow runs).
    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    pub fn replaced(&self) -> bool {
        self.replaced
    }

    /// The answer completed.
    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Complete or failed: nothing more belongs to this answer.
    pub fn is_over(&self) -> bool {
        self.ended || self.failure.is_some()
    }
}
