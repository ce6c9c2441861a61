//! OpenAI request → Dify request: the new user message, the earlier turns, the end user,
//! and the `/chat-messages` body they become. Pure. Chat completions here; the Responses
//! API's input in `responses`.

/// `/v1/audio/*` → Dify's speech endpoints.
pub mod audio;
/// Files in the new message → Dify files; placeholders for files of earlier ones.
pub mod files;
/// The app's `inputs`: configured defaults, the request's own, the required ones.
pub mod inputs;
/// Which remote file URLs Dify may be asked to fetch (`REMOTE_FILE_URLS`).
pub mod remote_url;
/// A Responses API request's `input` and `instructions` → a [`Turn`].
pub mod responses;
/// Parameters a Dify app cannot honour, refused when the client forces them.
pub mod unsupported;

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use self::files::{Attachment, FileType};

use crate::dify::types::{ChatMessageRequest, RunRequest};
use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, Role};

/// Dify `user` sent when the client identifies no end user.
pub const DEFAULT_USER: &str = "opendify";

/// A chat request reduced to what Dify can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Text of the last user message.
    pub message: String,
    /// Every other message, in order, with its role.
    pub history: Vec<(Role, String)>,
    /// Dify `user`.
    pub user: String,
    /// The app's input variables (`inputs::merge`): defaults and what the request set.
    pub inputs: Map<String, Value>,
    /// The new message's files; its text holds a placeholder for each ([`files::placeholder`]).
    pub files: Vec<Attachment>,
}

impl Turn {
    /// What the turn's conversation is matched on besides its visible history, key, model
    /// and user: its system messages (`conversation::keys::identity`).
    pub fn identity(&self) -> String {
        let messages = self.history.iter().map(|(r, t)| (*r, t.as_str()));
        crate::conversation::keys::identity(messages)
    }

    /// The Dify file types the turn attaches: what the app's upload settings
    /// (`/parameters` `file_upload`) must allow, or Dify drops the files silently.
    pub fn file_types(&self) -> BTreeSet<FileType> {
        self.files.iter().map(|f| f.kind).collect()
    }

    /// The Dify `query` for a new conversation: the message alone when there is no
    /// history, otherwise a readable transcript ending with it, so that no context is lost.
    pub fn folded_query(&self) -> String {
        if self.history.is_empty() {
            return self.message.clone();
        }
        let mut query = String::new();
        for (role, text) in &self.history {
            query.push_str(role.label());
            query.push_str(": ");
            query.push_str(text);
            query.push_str("\n\n");
        }
        query.push_str("User: ");
        query.push_str(&self.message);
        query
    }

    /// The query for a continued conversation whose system messages changed since it was
    /// last sent them (documents or search results a client puts there, an edited system
    /// prompt): the system messages, then the new message, in the folded form.
    pub fn query_with_system(&self) -> String {
        let mut query = String::new();
        for (role, text) in &self.history {
            if matches!(role, Role::System | Role::Developer) {
                query.push_str(role.label());
                query.push_str(": ");
                query.push_str(text);
                query.push_str("\n\n");
            }
        }
        if query.is_empty() {
            return self.message.clone();
        }
        query.push_str("User: ");
        query.push_str(&self.message);
        query
    }

    /// The `/chat-messages` body. A continued conversation's history is in Dify already,
    /// so it gets only the new message (after the system messages, if `resend_system`);
    /// a new one gets the folded history.
    pub fn chat_message(
        &self,
        continued: Option<String>,
        resend_system: bool,
    ) -> ChatMessageRequest {
        ChatMessageRequest {
            query: match continued {
                Some(_) if resend_system => self.query_with_system(),
                Some(_) => self.message.clone(),
                None => self.folded_query(),
            },
            inputs: self.inputs.clone(),
            response_mode: "streaming",
            user: self.user.clone(),
            conversation_id: continued,
            auto_generate_name: None,
            // Inline files are uploaded (and so replaced by their upload ids) before this.
            files: self
                .files
                .iter()
                .filter_map(Attachment::dify_file)
                .collect(),
        }
    }
}

impl Turn {
    /// The body for a completion or workflow app: the turn's inputs, and the folded query
    /// (they keep no conversation) in the input variable `query_variable`.
    pub fn run_request(&self, query_variable: &str) -> RunRequest {
        let mut inputs = self.inputs.clone();
        inputs.insert(
            query_variable.to_string(),
            Value::String(self.folded_query()),
        );
        RunRequest {
            inputs,
            response_mode: "streaming",
            user: self.user.clone(),
            files: self
                .files
                .iter()
                .filter_map(Attachment::dify_file)
                .collect(),
        }
    }

    /// A workflow takes files in an input variable: the (uploaded) files move there, one
    /// file object for a `file` variable, a list for a `file-list` one.
    pub fn files_into_input(&mut self, field: &crate::dify::parameters::FormField) {
        let files: Vec<_> = std::mem::take(&mut self.files)
            .iter()
            .filter_map(Attachment::dify_file)
            .collect();
        let value = if field.kind == "file-list" {
            serde_json::to_value(files)
        } else {
            serde_json::to_value(files.into_iter().next())
        };
        self.inputs
            .insert(field.variable.clone(), value.unwrap_or_default());
    }
}

/// Who the end user is: the request's `user` field, then Open WebUI's user header, then
/// `metadata.user_id`, then a fixed default.
pub fn end_user(request: &ChatCompletionRequest, user_header: Option<&str>) -> String {
    let from_field = match &request.user {
        Some(Value::String(s)) => Some(s.as_str()),
        // Open WebUI pipelines send `user` as an object.
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str),
        _ => None,
    };
    let from_metadata = request
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str);
    first_user([from_field, user_header, from_metadata])
}

/// The first non-blank candidate, trimmed, in order of precedence; else [`DEFAULT_USER`].
pub(crate) fn first_user<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> String {
    candidates
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|u| !u.is_empty())
        .unwrap_or(DEFAULT_USER)
        .to_string()
}

/// Checks the messages and splits off the last user message.
pub fn to_turn(
    request: &ChatCompletionRequest,
    user_header: Option<&str>,
) -> Result<Turn, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` is empty: send at least one user message.",
            Some("messages".into()),
        ));
    }
    if let Some(n) = request.n.filter(|&n| n > 1) {
        return Err(ApiError::bad_request(
            format!("`n` is {n}, but a Dify app gives one answer per request: use n = 1."),
            Some("n".into()),
        ));
    }
    let last_user = request
        .messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .ok_or_else(|| {
            ApiError::bad_request(
                "`messages` has no message with role `user`: there is nothing to answer.",
                Some("messages".into()),
            )
        })?;

    let mut message = String::new();
    let mut files = Vec::new();
    let mut history = Vec::with_capacity(request.messages.len().saturating_sub(1));
    for (i, m) in request.messages.iter().enumerate() {
        let text = content_text(m.content.as_ref(), i, m.role)?;
        if i == last_user {
            message = text;
            files = files::attachments(m.content.as_ref(), &format!("messages[{i}].content"))?;
        } else {
            let text = history_text(m.role, text);
            if !text.trim().is_empty() {
                history.push((m.role, text));
            }
        }
    }
    if message.trim().is_empty() {
        return Err(ApiError::bad_request(
            format!("messages[{last_user}].content is empty: the last user message needs text."),
            Some(format!("messages[{last_user}].content")),
        ));
    }
    Ok(Turn {
        message,
        history,
        user: end_user(request, user_header),
        inputs: Map::new(),
        files,
    })
}

/// An earlier message as history. An assistant answer some clients return with its
/// leading thinking block (`<think>…</think>`) counts without it: the thinking is not
/// part of the conversation Dify holds, nor of the answer recorded for it.
pub(crate) fn history_text(role: Role, text: String) -> String {
    if role == Role::Assistant && text.trim_start().starts_with('<') {
        crate::answer::think::answer_part(&text).into_owned()
    } else {
        text
    }
}

/// A message's text: a string, or the text parts of an array joined by newlines, with a
/// placeholder for each file part.
fn content_text(content: Option<&Value>, i: usize, role: Role) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        // Assistant turns that only called tools carry no content.
        None | Some(Value::Null) if role != Role::User => Ok(String::new()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match kind {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => texts.push(Cow::Borrowed(t.as_str())),
                        _ => {
                            return Err(ApiError::bad_request(
                                format!("{param}[{j}] is a text part without a string `text`."),
                                Some(format!("{param}[{j}].text")),
                            ));
                        }
                    },
                    Some("refusal") if role == Role::Assistant => {
                        if let Some(t) = part.get("refusal").and_then(Value::as_str) {
                            texts.push(Cow::Borrowed(t));
                        }
                    }
                    Some(kind) if let Some(placeholder) = files::placeholder(kind, part) => {
                        texts.push(Cow::Owned(placeholder));
                    }
                    Some(other) => {
                        return Err(ApiError::bad_request(
                            format!(
                                "{param}[{j}] has type `{other}`, which this proxy does not support: send text, `image_url`, `file` or `input_audio` parts."
                            ),
                            Some(format!("{param}[{j}].type")),
                        ));
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            format!(
                                "{param}[{j}] must be an object with a string `type`, like {{\"type\":\"text\",\"text\":\"...\"}}."
                            ),
                            Some(format!("{param}[{j}]")),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::bad_request(
            format!("{param} must be a string or an array of content parts."),
            Some(param),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    fn bad(v: Value) -> (String, Option<String>) {
        match to_turn(&request(v), None) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn single_message_is_sent_alone() {
        let t = to_turn(
            &request(json!({"model":"m","messages":[{"role":"user","content":"Hello"}]})),
            None,
        )
        .unwrap();
        assert_eq!(t.folded_query(), "Hello");
        assert_eq!(t.user, "opendify");
    }

    #[test]
    fn history_is_folded_into_a_transcript() {
        let t = to_turn(
            &request(json!({"model":"m","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"Hi"},
                {"role":"assistant","content":"Hello!"},
                {"role":"developer","content":[{"type":"text","text":"Use French."}]},
                {"role":"user","content":[{"type":"text","text":"Line one"},{"type":"text","text":"line two"}]}
            ]})),
            None,
        )
        .unwrap();
        assert_eq!(t.message, "Line one\nline two");
        assert_eq!(
            t.folded_query(),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nDeveloper: Use French.\n\nUser: Line one\nline two"
        );
    }

    #[test]
    fn user_precedence() {
        let body = |user: Value, meta: Value| {
            request(
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"user":user,"metadata":meta}),
            )
        };
        assert_eq!(
            end_user(
                &body(json!("alice"), json!({"user_id":"carol"})),
                Some("bob")
            ),
            "alice"
        );
        assert_eq!(
            end_user(
                &body(json!({"id":"u-1","name":"A"}), json!(null)),
                Some("bob")
            ),
            "u-1"
        );
        assert_eq!(
            end_user(&body(json!(null), json!({"user_id":"carol"})), Some("bob")),
            "bob"
        );
        assert_eq!(
            end_user(&body(json!(""), json!({"user_id":"carol"})), None),
            "carol"
        );
        // A `user` of the wrong type is refused when parsed (issue 20); a non-string
        // `metadata.user_id` is someone else's metadata, and passed over.
        assert_eq!(
            end_user(&body(json!(null), json!({"user_id":7})), None),
            "opendify"
        );
        assert!(
            serde_json::from_value::<ChatCompletionRequest>(
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"user":5})
            )
            .is_err()
        );
    }

    #[test]
    fn clear_errors_for_bad_messages() {
        assert_eq!(
            bad(json!({"model":"m","messages":[]})).1.as_deref(),
            Some("messages")
        );
        let (msg, _) = bad(json!({"model":"m","messages":[{"role":"system","content":"x"}]}));
        assert!(msg.contains("no message with role `user`"), "{msg}");
        let (msg, param) = bad(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"x"},{"type":"video_url","video_url":{"url":"https://x/y.mp4"}}]}]}));
        assert!(msg.contains("type `video_url`"), "{msg}");
        assert_eq!(param.as_deref(), Some("messages[0].content[1].type"));
        let (_, param) = bad(json!({"model":"m","messages":[{"role":"user","content":5}]}));
        assert_eq!(param.as_deref(), Some("messages[0].content"));
        let (_, param) = bad(json!({"model":"m","messages":[{"role":"user","content":"   "}]}));
        assert_eq!(param.as_deref(), Some("messages[0].content"));
        let (_, param) = bad(json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":2}));
        assert_eq!(param.as_deref(), Some("n"));
        let (_, param) = bad(json!({"model":"m","messages":[{"role":"user","content":null}]}));
        assert_eq!(param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn one_shot_apps_get_the_folded_query_in_their_variable() {
        let t = to_turn(
            &request(json!({"model":"m","user":"ada","messages":[
                {"role":"system","content":"Be brief."},{"role":"user","content":"Summarise this."}]})),
            None,
        )
        .unwrap();
        let body = serde_json::to_value(t.run_request("article")).unwrap();
        assert_eq!(
            body,
            json!({"inputs":{"article":"System: Be brief.\n\nUser: Summarise this."},"response_mode":"streaming","user":"ada"})
        );
    }

    #[test]
    fn tool_call_turns_without_content_are_fine() {
        let t = to_turn(
            &request(json!({"model":"m","messages":[
                {"role":"user","content":"a"},{"role":"assistant","content":null},{"role":"user","content":"b"}]})),
            None,
        )
        .unwrap();
        assert_eq!(t.folded_query(), "User: a\n\nUser: b");
    }

    #[test]
    fn files_of_the_new_message_are_attached_and_stand_in_its_text() {
        let first = json!({"role":"user","content":[
            {"type":"text","text":"What is this?"},
            {"type":"image_url","image_url":{"url":"https://x.test/cat.png"}},
            {"type":"file","file":{"filename":"report.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="}}]});
        let t = to_turn(
            &request(json!({"model":"m","messages":[first.clone()]})),
            None,
        )
        .unwrap();
        assert_eq!(t.message, "What is this?\n[image]\n[file: report.pdf]");
        assert_eq!(
            t.file_types().into_iter().collect::<Vec<_>>(),
            [FileType::Image, FileType::Document]
        );
        // Only the remote image can go before the upload step.
        let body = serde_json::to_value(t.chat_message(None, false)).unwrap();
        assert_eq!(
            body["files"],
            json!([{"type":"image","transfer_method":"remote_url","url":"https://x.test/cat.png"}])
        );

        // The next turn: the same message is history now, with the same text (so the
        // conversation digest matches) and nothing attached again.
        let next = to_turn(
            &request(json!({"model":"m","messages":[
                first, {"role":"assistant","content":"A cat."}, {"role":"user","content":"Sure?"}]})),
            None,
        )
        .unwrap();
        assert_eq!(next.history[0], (Role::User, t.message.clone()));
        assert!(next.files.is_empty());
        assert_eq!(
            next.folded_query(),
            "User: What is this?\n[image]\n[file: report.pdf]\n\nAssistant: A cat.\n\nUser: Sure?"
        );
        let body = serde_json::to_value(next.chat_message(None, false)).unwrap();
        assert!(body.get("files").is_none(), "{body}");
    }

    #[test]
    fn an_image_alone_is_a_message() {
        let t = to_turn(
            &request(json!({"model":"m","messages":[{"role":"user","content":[
                {"type":"image_url","image_url":{"url":"https://x.test/cat.png"}}]}]})),
            None,
        )
        .unwrap();
        assert_eq!(t.message, "[image]");
        assert_eq!(t.files.len(), 1);
    }

    #[test]
    fn broken_files_in_earlier_messages_are_only_placeholders() {
        // Never decoded or refused again: they were checked when they were new.
        let t = to_turn(
            &request(json!({"model":"m","messages":[
                {"role":"user","content":[{"type":"image_url","image_url":{"url":"data:nonsense"}}]},
                {"role":"user","content":"next"}]})),
            None,
        )
        .unwrap();
        assert_eq!(t.history, [(Role::User, "[image]".to_string())]);
        assert!(t.files.is_empty());
    }
}
