//! What can go wrong talking to Dify, as data. Mapped to client errors in one place,
//! `crate::error::dify`.

use std::time::Duration;

use super::sse::DecodeError;

/// Everything that can go wrong talking to Dify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DifyError {
    #[error("could not reach Dify: {0}")]
    Unreachable(String),
    #[error("Dify did not start answering within {} s", .0.as_secs())]
    Timeout(Duration),
    /// A non-2xx answer before the stream started. `code` is Dify's error code, or empty
    /// when the body was not Dify's JSON (a gateway page).
    #[error("Dify answered HTTP {status} ({code}): {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<String>,
        /// The URL path that answered (`/v1/chat-messages`), never its query. Boxed: it
        /// keeps every `Result<_, ApiError>` small.
        endpoint: Box<str>,
    },
    /// A 3xx answer: redirects are never followed (they could carry the app key to another
    /// host). `location` is the target's path only, without query or credentials.
    #[error("Dify answered a redirect (HTTP {status} to {location})")]
    Redirect { status: u16, location: String },
    /// An `error` event inside a stream.
    #[error("Dify reported an error ({code}): {message}")]
    Event {
        code: String,
        status: Option<u16>,
        message: String,
    },
    /// The stream broke: transport failure, undecodable frame, or end before the answer.
    #[error("{0}")]
    Stream(String),
}

impl DifyError {
    /// One log line: status and code, or our own description of a transport failure.
    /// Never Dify's message, which can echo request content.
    pub fn summary(&self) -> String {
        match self {
            DifyError::Http { status, code, .. } => format!("HTTP {status} {code}"),
            DifyError::Event { code, status, .. } => format!("error event {code} ({status:?})"),
            DifyError::Timeout(t) => format!("no response head within {} s", t.as_secs()),
            DifyError::Unreachable(cause) => format!("unreachable: {cause}"),
            DifyError::Redirect { status, location } => {
                format!("redirect HTTP {status} to {location}")
            }
            DifyError::Stream(cause) => cause.clone(),
        }
    }
}

impl From<DecodeError> for DifyError {
    fn from(e: DecodeError) -> Self {
        DifyError::Stream(e.to_string())
    }
}
