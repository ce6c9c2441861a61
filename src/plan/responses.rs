//! A Responses API request → a [`Turn`]: `input` (a string or message items), with
//! `instructions` as the system prompt of a new conversation. Pure.

use serde_json::Value;

use super::files::{self, Attachment, MAX_FILES};
use super::{Turn, first_user};
use crate::error::ApiError;
use crate::openai::Role;
use crate::openai::responses::ResponsesRequest;

/// Refuses what a Dify app cannot do, before anything is sent.
pub fn check_supported(request: &ResponsesRequest) -> Result<(), ApiError> {
    // `tools` the client does not force are ignored: `plan::unsupported` decides.
    if request.background == Some(true) {
        return Err(ApiError::bad_request(
            "`background` is not supported: send the request without it (stream it for long answers).",
            Some("background".into()),
        ));
    }
    if request.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::bad_request(
            "`conversation` is not supported: continue a conversation with `previous_response_id`.",
            Some("conversation".into()),
        ));
    }
    Ok(())
}

/// Who the end user is: `safety_identifier`, then `user`, then Open WebUI's user header,
/// then `metadata.user_id`, then a fixed default.
pub fn end_user(request: &ResponsesRequest, user_header: Option<&str>) -> String {
    let from_metadata = request
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str);
    first_user([
        request.safety_identifier.as_deref(),
        request.user.as_deref(),
        user_header,
        from_metadata,
    ])
}

/// The request's turn. `continues`: it continues a stored response, whose conversation
/// Dify holds already: every input item is new then, so all of them (not only the last
/// user message) become the query, their files included, and `instructions` are not
/// re-sent.
pub fn to_turn(
    request: &ResponsesRequest,
    user_header: Option<&str>,
    continues: bool,
) -> Result<Turn, ApiError> {
    let items = input_messages(request.input.as_ref())?;
    let last_user = items
        .iter()
        .rposition(|item| item.role == Role::User)
        .ok_or_else(|| {
            ApiError::bad_request(
                "`input` has no user message: there is nothing to answer.",
                Some("input".into()),
            )
        })?;
    if items[last_user].text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "The last user message of `input` has no text.",
            Some("input".into()),
        ));
    }
    let user = end_user(request, user_header);
    let new_items = if continues {
        0..items.len()
    } else {
        last_user..last_user + 1
    };
    let mut files = Vec::new();
    for item in &items[new_items] {
        if item.role == Role::User {
            files.extend(item.attachments()?);
        }
    }
    if let Some(extra) = files.get(MAX_FILES) {
        return Err(ApiError::bad_request(
            format!(
                "{}: a request may attach at most {MAX_FILES} files.",
                extra.part
            ),
            Some(extra.part.clone()),
        ));
    }
    let mut messages: Vec<(Role, String)> = items
        .into_iter()
        .map(|item| (item.role, item.text))
        .collect();
    if continues {
        let message = if messages.len() == 1 {
            messages.remove(0).1
        } else {
            Turn {
                message: messages.remove(last_user).1,
                history: messages,
                user: String::new(),
                inputs: Default::default(),
                files: Vec::new(),
            }
            .folded_query()
        };
        return Ok(Turn {
            message,
            history: Vec::new(),
            user,
            inputs: Default::default(),
            files,
        });
    }
    let message = messages.remove(last_user).1;
    let mut history = Vec::with_capacity(messages.len() + 1);
    if let Some(instructions) = request
        .instructions
        .as_deref()
        .filter(|i| !i.trim().is_empty())
    {
        history.push((Role::System, instructions.to_string()));
    }
    history.extend(messages.into_iter().filter(|(_, t)| !t.trim().is_empty()));
    Ok(Turn {
        message,
        history,
        user,
        inputs: Default::default(),
        files,
    })
}

/// One message of `input`: its text (file parts as placeholders), and where its files are.
struct Item<'a> {
    role: Role,
    text: String,
    content: Option<&'a Value>,
    /// `input[i]`.
    param: String,
}

impl Item<'_> {
    fn attachments(&self) -> Result<Vec<Attachment>, ApiError> {
        files::attachments(self.content, &format!("{}.content", self.param))
    }
}

/// `input` as messages, in order. Reasoning items a client echoes back are skipped; tool
/// items are refused, naming the item.
fn input_messages(input: Option<&Value>) -> Result<Vec<Item<'_>>, ApiError> {
    let items = match input {
        Some(Value::String(text)) => {
            return Ok(vec![Item {
                role: Role::User,
                text: text.clone(),
                content: None,
                param: "input".into(),
            }]);
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "`input` is missing or empty: send a string or a list of message items.",
                Some("input".into()),
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`input` must be a string or a list of message items.",
                Some("input".into()),
            ));
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {}
            "reasoning" => continue,
            "function_call"
            | "function_call_output"
            | "custom_tool_call"
            | "custom_tool_call_output" => {
                return Err(ApiError::bad_request(
                    format!(
                        "{param} is a `{kind}` item: a Dify app cannot take the client's tool calls."
                    ),
                    Some(param),
                ));
            }
            other => {
                return Err(ApiError::bad_request(
                    format!(
                        "{param} has type `{other}`, which this proxy does not support: send message items."
                    ),
                    Some(format!("{param}.type")),
                ));
            }
        }
        let role = match item.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("system") => Role::System,
            Some("developer") => Role::Developer,
            _ => {
                return Err(ApiError::bad_request(
                    format!("{param}.role must be `user`, `assistant`, `system` or `developer`."),
                    Some(format!("{param}.role")),
                ));
            }
        };
        let content = item.get("content");
        let text = super::history_text(role, content_text(content, &param, role)?);
        messages.push(Item {
            role,
            text,
            content,
            param,
        });
    }
    Ok(messages)
}

/// A message item's text: a string, or its text parts joined by newlines, with a
/// placeholder for each file part.
fn content_text(content: Option<&Value>, item: &str, role: Role) -> Result<String, ApiError> {
    let param = format!("{item}.content");
    let parts = match content {
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(ApiError::bad_request(
                format!("{param} must be a string or a list of content parts."),
                Some(param),
            ));
        }
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str);
        let field = match kind {
            Some("input_text" | "output_text" | "text") => "text",
            Some("refusal") if role == Role::Assistant => "refusal",
            Some("input_audio") => {
                return Err(ApiError::bad_request(
                    format!(
                        "{param}[{j}] is an `input_audio` part, which this proxy does not support here: send audio as an `input_file` with a data: URI."
                    ),
                    Some(format!("{param}[{j}]")),
                ));
            }
            Some(kind @ ("input_image" | "input_file")) => {
                texts.push(files::placeholder(kind, part).unwrap_or_default());
                continue;
            }
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!("{param}[{j}] has type `{other}`, which this proxy does not support."),
                    Some(format!("{param}[{j}].type")),
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    format!(
                        "{param}[{j}] must be an object with a string `type`, like {{\"type\":\"input_text\",\"text\":\"...\"}}."
                    ),
                    Some(format!("{param}[{j}]")),
                ));
            }
        };
        match part.get(field) {
            Some(Value::String(t)) => texts.push(t.clone()),
            _ => {
                return Err(ApiError::bad_request(
                    format!("{param}[{j}] has no string `{field}`."),
                    Some(format!("{param}[{j}].{field}")),
                ));
            }
        }
    }
    Ok(texts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::DEFAULT_USER;
    use serde_json::json;

    fn request(v: Value) -> ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    fn turn(v: Value, continues: bool) -> Turn {
        to_turn(&request(v), None, continues).unwrap()
    }

    fn bad(v: Value) -> (String, Option<String>) {
        let r = request(v);
        match check_supported(&r).and_then(|()| to_turn(&r, None, false)) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn a_string_input_is_the_message() {
        let t = turn(json!({"model":"m","input":"Hello"}), false);
        assert_eq!(t.folded_query(), "Hello");
        assert_eq!(t.user, "opendify");
    }

    #[test]
    fn instructions_and_items_fold_into_a_new_conversation() {
        // What the Agents SDK sends without previous_response_id: the whole history as
        // items, the assistant's earlier output echoed back with ids and statuses.
        let t = turn(
            json!({"model":"m","instructions":"Be brief.","input":[
                {"role":"user","content":"Hi"},
                {"id":"msg_1","type":"message","role":"assistant","status":"completed",
                 "content":[{"type":"output_text","text":"Hello!","annotations":[]}]},
                {"type":"reasoning","id":"rs_1","summary":[]},
                {"type":"message","role":"user","content":[{"type":"input_text","text":"Line one"},{"type":"input_text","text":"line two"}]}
            ]}),
            false,
        );
        assert_eq!(t.message, "Line one\nline two");
        assert_eq!(
            t.folded_query(),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Line one\nline two"
        );
    }

    #[test]
    fn a_continued_turn_sends_only_its_new_input() {
        let t = turn(
            json!({"model":"m","instructions":"Be brief.","previous_response_id":"resp_1","input":"And then?"}),
            true,
        );
        assert_eq!(t.chat_message(Some("c1".into()), false).query, "And then?");
        let t = turn(
            json!({"model":"m","previous_response_id":"resp_1","input":[
                {"role":"developer","content":"Answer in French."},{"role":"user","content":"And then?"}]}),
            true,
        );
        assert_eq!(
            t.chat_message(Some("c1".into()), false).query,
            "Developer: Answer in French.\n\nUser: And then?"
        );
    }

    #[test]
    fn end_user_precedence() {
        let r = |v: Value| request(v);
        assert_eq!(
            end_user(
                &r(
                    json!({"model":"m","safety_identifier":"s","user":"u","metadata":{"user_id":"x"}})
                ),
                Some("h")
            ),
            "s"
        );
        assert_eq!(
            end_user(&r(json!({"model":"m","user":" u "})), Some("h")),
            "u"
        );
        assert_eq!(end_user(&r(json!({"model":"m"})), Some("h")), "h");
        assert_eq!(
            end_user(&r(json!({"model":"m","metadata":{"user_id":"x"}})), None),
            "x"
        );
        assert_eq!(
            end_user(&r(json!({"model":"m","user":""})), None),
            DEFAULT_USER
        );
    }

    #[test]
    fn what_dify_cannot_do_is_refused_by_name() {
        let cases = [
            (
                json!({"model":"m","input":"x","background":true}),
                "background",
            ),
            (
                json!({"model":"m","input":"x","conversation":"conv_1"}),
                "conversation",
            ),
            (json!({"model":"m"}), "input"),
            (json!({"model":"m","input":[]}), "input"),
            (json!({"model":"m","input":5}), "input"),
            (
                json!({"model":"m","input":[{"role":"system","content":"x"}]}),
                "input",
            ),
            (
                json!({"model":"m","input":[{"role":"user","content":"  "}]}),
                "input",
            ),
            (
                json!({"model":"m","input":[{"type":"function_call_output","call_id":"c","output":"1"}]}),
                "input[0]",
            ),
            (
                json!({"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}),
                "input[0].type",
            ),
            (
                json!({"model":"m","input":[{"role":"tool","content":"x"}]}),
                "input[0].role",
            ),
            (
                json!({"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x"},
                {"type":"input_audio","input_audio":{"data":"aGk=","format":"mp3"}}]}]}),
                "input[0].content[1]",
            ),
            (
                json!({"model":"m","input":[{"role":"user","content":[{"type":"input_text"}]}]}),
                "input[0].content[0].text",
            ),
            (
                json!({"model":"m","input":[{"role":"user","content":7}]}),
                "input[0].content",
            ),
        ];
        for (body, param) in cases {
            let shown = body.to_string();
            assert_eq!(bad(body).1.as_deref(), Some(param), "{shown}");
        }
        // Harmless defaults pass.
        let r = request(
            json!({"model":"m","input":"x","tools":[],"background":false,"conversation":null}),
        );
        assert!(check_supported(&r).is_ok());
    }

    #[test]
    fn input_files_of_the_new_message_are_attached() {
        let first = json!({"role":"user","content":[
            {"type":"input_text","text":"Summarise"},
            {"type":"input_file","filename":"r.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="}]});
        let t = turn(json!({"model":"m","input":[first.clone()]}), false);
        assert_eq!(t.message, "Summarise\n[file: r.pdf]");
        assert_eq!(t.files.len(), 1);
        assert_eq!(t.files[0].part, "input[0].content[1]");
        let next = turn(
            json!({"model":"m","input":[first, {"role":"assistant","content":"Done."},
                {"role":"user","content":[{"type":"input_image","image_url":"https://x.test/b.png"}]}]}),
            false,
        );
        assert_eq!(next.history[0], (Role::User, t.message.clone()));
        assert_eq!(next.message, "[image]");
        assert_eq!(next.files.len(), 1);
        assert_eq!(next.files[0].part, "input[2].content[0]");
        // Continuing a response: every new item's files go.
        let cont = turn(
            json!({"model":"m","previous_response_id":"resp_1","input":[
                {"role":"user","content":[{"type":"input_image","image_url":"https://x.test/a.png"}]},
                {"role":"user","content":[{"type":"input_image","image_url":"https://x.test/b.png"}]}]}),
            true,
        );
        assert_eq!(cont.files.len(), 2);
        assert_eq!(cont.message, "User: [image]\n\nUser: [image]");
    }
}
