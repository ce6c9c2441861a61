//! Dify's speech endpoints: `POST /text-to-audio` (audio streamed back as the provider
//! makes it) and `POST /audio-to-text` (a multipart upload, answered with `{"text"}`).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::client::{DifyClient, read_limited};
use super::error::DifyError;
use crate::telemetry::error_chain;

/// More than any transcript of a 30 MB recording.
const MAX_TRANSCRIPT_BODY: usize = 4 * 1024 * 1024;

/// The body of `POST /text-to-audio`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextToAudioRequest {
    pub text: String,
    /// Absent: the voice of the app's Text to Speech feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    pub user: String,
    pub streaming: bool,
}

#[derive(Deserialize)]
struct Transcript {
    text: String,
}

/// Audio bytes as Dify sends them. Errors end it.
pub type AudioBody = Pin<Box<dyn Stream<Item = Result<Bytes, DifyError>> + Send>>;

/// The start of a text-to-speech answer: its type and first bytes are in hand, so a
/// provider that fails before speaking is still an HTTP error, not an empty 200.
pub struct SpeechAudio {
    pub content_type: String,
    pub body: AudioBody,
}

impl DifyClient {
    /// Starts `POST /text-to-audio` and waits for the first audio bytes (within the
    /// stream's idle limit). The rest is bounded by the stream limits.
    pub async fn text_to_audio(
        &self,
        app_key: &str,
        request: &TextToAudioRequest,
    ) -> Result<SpeechAudio, DifyError> {
        let url = self.url("text-to-audio")?;
        let send = self.http.post(url).bearer_auth(app_key).json(request);
        let response = self.send(send, self.timeout).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("audio/mpeg")
            .to_string();
        if !content_type.starts_with("audio/") {
            // `null` for an unknown message, or a body from something that is not Dify.
            return Err(DifyError::Stream(format!(
                "Dify answered text-to-speech with `{content_type}`, not audio"
            )));
        }
        let limits = self.limits;
        let deadline = tokio::time::Instant::now() + limits.total;
        let mut bytes = response.bytes_stream();
        let step = move || {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            limits.idle.min(left)
        };
        // The first non-empty chunk, or why there is none.
        let first = loop {
            match tokio::time::timeout(step(), bytes.next()).await {
                Err(_) => {
                    return Err(DifyError::Stream(format!(
                        "Dify sent no audio within {} s",
                        limits.idle.as_secs()
                    )));
                }
                Ok(None) => {
                    return Err(DifyError::Stream(
                        "Dify ended the text-to-speech answer without audio".to_string(),
                    ));
                }
                Ok(Some(Err(e))) => {
                    return Err(DifyError::Stream(format!(
                        "the connection to Dify broke before any audio: {}",
                        error_chain(&e)
                    )));
                }
                Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Ok(Some(Ok(chunk))) => break chunk,
            }
        };
        let mut read = first.len() as u64;
        let rest = futures_util::stream::unfold(Some(bytes), move |state| async move {
            let mut bytes = state?;
            let item = match tokio::time::timeout(step(), bytes.next()).await {
                Err(_) => Err(DifyError::Stream(
                    "Dify stopped sending audio within the stream limits".to_string(),
                )),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(DifyError::Stream(format!(
                    "the connection to Dify broke mid-audio: {}",
                    error_chain(&e)
                ))),
                Ok(Some(Ok(chunk))) => Ok(chunk),
            };
            // After an error the stream ends.
            let next = item.is_ok().then_some(bytes);
            Some((item, next))
        })
        .map(move |item| {
            let chunk = item?;
            read += chunk.len() as u64;
            if read > limits.max_bytes {
                return Err(DifyError::Stream(format!(
                    "the audio is larger than the limit of {} bytes",
                    limits.max_bytes
                )));
            }
            Ok(chunk)
        });
        let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
        Ok(SpeechAudio {
            content_type,
            body: Box::pin(body),
        })
    }

    /// `POST /audio-to-text` with one audio file of `user`: the transcript. Dify answers
    /// once the provider is done, so the whole call is bounded by the stream's total limit.
    pub async fn audio_to_text(
        &self,
        app_key: &str,
        user: &str,
        filename: &str,
        mime: &str,
        bytes: &[u8],
    ) -> Result<String, DifyError> {
        let limit = self.limits.total;
        let file = (filename, mime, bytes);
        let response = self
            .post_file("audio-to-text", app_key, user, file, limit)
            .await?;
        let body = tokio::time::timeout(limit, read_limited(response, MAX_TRANSCRIPT_BODY))
            .await
            .map_err(|_| DifyError::Timeout(limit))?;
        serde_json::from_slice::<Transcript>(&body)
            .map(|t| t.text)
            .map_err(|_| DifyError::Stream("Dify's transcript answer is unreadable".to_string()))
    }
}
