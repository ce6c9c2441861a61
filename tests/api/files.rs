//! Images and files: in (remote URLs, uploads as the chat's own user, refusals before
//! Dify is called, placeholders in later turns) and out (tool and chatflow files as
//! Markdown with absolute URLs; Dify 1.12.x's text chunks as `message_file`).

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
/// "%PDF-1.4\n%\u{e2}\u{e3}" and a little more, as base64.
const PDF: &str = "JVBERi0xLjQKJeLjz9MKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK";

fn decode(b64: &str) -> Vec<u8> {
    opendify::plan::files::decode_base64(b64).unwrap()
}

fn with_parts(parts: Value) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": parts}]})
}

fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

#[tokio::test]
async fn a_remote_image_goes_to_dify_as_a_url_and_the_answer_arrives_complete() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("A cat on a sofa."));
    let mut body = with_parts(json!([
        {"type": "text", "text": "What is in this picture?"},
        image_part("https://images.example/cat.png"),
    ]));
    body["stream"] = json!(true);
    let r = app.stream(body).await;
    assert_eq!(r.status, 200);
    // The fake is Dify 1.12.x: with a file attached, every text chunk came as
    // `message_file` with `answer`.
    assert_eq!(r.content(), "A cat on a sofa.");
    assert!(r.done());

    let sent = &app.dify.requests()[0];
    assert_eq!(
        sent.body["files"],
        json!([{"type": "image", "transfer_method": "remote_url", "url": "https://images.example/cat.png"}])
    );
    assert_eq!(sent.query(), Some("What is in this picture?\n[image]"));
    assert!(app.dify.uploads().is_empty());

    // A Dify without the quirk (plain `message` chunks) gives the same answer.
    app.dify.set_message_file_quirk(false);
    let (status, _, c) = app
        .chat(with_parts(json!([image_part(
            "https://images.example/cat.png"
        )])))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "A cat on a sofa.");
    assert_eq!(app.dify.requests()[1].query(), Some("[image]"));
}

#[tokio::test]
async fn a_base64_image_is_uploaded_as_the_chat_user_and_attached_by_id() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("A red dot."));
    let mut body = with_parts(json!([
        {"type": "text", "text": "Describe it."},
        image_part(&format!("data:image/png;base64,{PNG}")),
    ]));
    body["user"] = json!("alice");
    let (status, _, c) = app.chat(body).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "A red dot.");

    let uploads = app.dify.uploads();
    assert_eq!(uploads.len(), 1);
    let sent = &app.dify.requests()[0];
    // Dify lets only the uploading user attach a file: the same user on both calls.
    assert_eq!(Some(uploads[0].user.as_str()), sent.user());
    assert_eq!(uploads[0].key, APP_KEY);
    assert_eq!(uploads[0].bytes, decode(PNG));
    assert_eq!(
        (uploads[0].filename.as_str(), uploads[0].mime.as_str()),
        ("image.png", "image/png")
    );
    assert_eq!(
        sent.body["files"],
        json!([{"type": "image", "transfer_method": "local_file", "upload_file_id": uploads[0].id}])
    );
}

#[tokio::test]
async fn a_pdf_file_part_is_uploaded_as_a_document() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("It is a report."));
    let (status, _, c) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "Summarise the attachment."},
            {"type": "file", "file": {"filename": "Q3 report.pdf", "file_data": format!("data:application/pdf;base64,{PDF}")}},
        ])))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "It is a report.");
    let upload = &app.dify.uploads()[0];
    assert_eq!(
        (upload.filename.as_str(), upload.mime.as_str()),
        ("Q3 report.pdf", "application/pdf")
    );
    assert_eq!(upload.bytes, decode(PDF));
    let sent = &app.dify.requests()[0];
    assert_eq!(sent.body["files"][0]["type"], "document");
    assert_eq!(sent.body["files"][0]["upload_file_id"], upload.id.as_str());
    assert_eq!(
        sent.query(),
        Some("Summarise the attachment.\n[file: Q3 report.pdf]")
    );
}

#[tokio::test]
async fn refused_files_never_reach_dify() {
    // Room for an image over Dify's 10 MiB in one request.
    let app = spawn_app_with(&[("MAX_REQUEST_BYTES", "16777216")]).await;
    app.dify.set(APP_KEY, Scenario::answer("unused"));
    let big = format!(
        "data:image/png;base64,{}",
        "A".repeat((10 * 1024 * 1024 + 3) / 3 * 4)
    );
    let cases = [
        (
            with_parts(
                json!([{"type": "text", "text": "x"}, {"type": "text", "text": "y"}, image_part(&big)]),
            ),
            413,
            "file_too_large",
            "messages[0].content[2]",
        ),
        (
            with_parts(json!([image_part("data:application/pdf;base64,JVBERi0=")])),
            415,
            "unsupported_file_type",
            "messages[0].content[0]",
        ),
        (
            with_parts(json!([image_part("data:image/png;base64,not base64!")])),
            400,
            "",
            "messages[0].content[0]",
        ),
        (
            with_parts(json!([{"type": "file", "file": {"file_id": "file-abc123"}}])),
            400,
            "",
            "messages[0].content[0].file.file_id",
        ),
        (
            with_parts(json!(vec![image_part("https://images.example/a.png"); 11])),
            400,
            "",
            "messages[0].content[10]",
        ),
    ];
    for (body, status, code, param) in cases {
        let (got, headers, e) = app.chat(body).await;
        assert_eq!(got, status, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        if !code.is_empty() {
            assert_eq!(e["error"]["code"], code, "{e}");
        }
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(param), "{message}");
        assert!(headers.contains_key("x-request-id"));
    }
    let (_, _, e) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "x"}, {"type": "text", "text": "y"}, image_part(&big)
        ])))
        .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10 MiB"),
        "{e}"
    );
    assert!(app.dify.requests().is_empty());
    assert!(app.dify.uploads().is_empty());
}

#[tokio::test]
async fn an_upload_dify_refuses_is_an_error_naming_the_part() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("unused"));
    app.dify.refuse_uploads(413, "file_too_large", "");
    let (status, _, e) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "x"},
            image_part(&format!("data:image/png;base64,{PNG}")),
        ])))
        .await;
    assert_eq!(status, 413, "{e}");
    assert_eq!(e["error"]["code"], "file_too_large");
    assert_eq!(e["error"]["param"], "messages[0].content[1]");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[0].content[1]: Dify refused the file as too large"),
        "{e}"
    );
    app.dify
        .refuse_uploads(415, "unsupported_file_type", "File type not allowed.");
    let (status, _, e) = app
        .chat(with_parts(json!([image_part(&format!(
            "data:image/png;base64,{PNG}"
        ))])))
        .await;
    assert_eq!(status, 415, "{e}");
    assert_eq!(e["error"]["code"], "unsupported_file_type");
    assert!(
        app.dify.requests().is_empty(),
        "no chat message after a refused upload"
    );
}

#[tokio::test]
async fn a_later_turn_keeps_the_conversation_and_never_re_uploads() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("A red dot."));
    let first = json!({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        image_part(&format!("data:image/png;base64,{PNG}")),
    ]});
    let (status, _, c1) = app
        .chat(json!({"model": MODEL, "messages": [first.clone()]}))
        .await;
    assert_eq!(status, 200, "{c1}");
    let a1 = c1["choices"][0]["message"]["content"].as_str().unwrap();

    // No chat id: the client sends the whole history back, image included.
    let mut body = json!({"model": MODEL, "messages": [
        first, {"role": "assistant", "content": a1},
        {"role": "user", "content": "Which colour exactly?"},
    ]});
    body["stream"] = json!(true);
    let r = app.stream(body).await;
    assert_eq!(r.content(), "A red dot.");

    let reqs = app.dify.requests();
    let conversation = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    assert_eq!(reqs[0].conversation_id(), None);
    assert_eq!(
        (reqs[1].conversation_id(), reqs[1].query()),
        (Some(conversation.as_str()), Some("Which colour exactly?"))
    );
    assert!(reqs[1].body.get("files").is_none(), "{}", reqs[1].body);
    assert_eq!(
        app.dify.uploads().len(),
        1,
        "uploaded once, on its own turn"
    );
}

#[tokio::test]
async fn a_folded_history_names_earlier_files() {
    let app = spawn_app_with(&[("CONVERSATION_HISTORY_MATCHING", "false")]).await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    let (status, _, c) = app
        .chat(json!({"model": MODEL, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Read this."},
                {"type": "file", "file": {"filename": "notes.txt", "file_data": "data:text/plain;base64,aGk="}},
            ]},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Thanks."},
        ]}))
        .await;
    assert_eq!(status, 200, "{c}");
    let sent = &app.dify.requests()[0];
    assert_eq!(
        sent.query(),
        Some("User: Read this.\n[file: notes.txt]\n\nAssistant: Done.\n\nUser: Thanks.")
    );
    assert!(sent.body.get("files").is_none());
    assert!(app.dify.uploads().is_empty());
}

#[tokio::test]
async fn responses_input_image_and_input_file_become_dify_files() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("Two files."));
    let r = app
        .post_responses(&json!({"model": MODEL, "user": "bob", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Compare these."},
            {"type": "input_image", "image_url": "https://images.example/chart.png", "detail": "auto"},
            {"type": "input_file", "filename": "data.pdf", "file_data": format!("data:application/pdf;base64,{PDF}")},
            {"type": "input_file", "file_url": "https://docs.example/spec.docx"},
        ]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["output"][0]["content"][0]["text"], "Two files.");
    let upload = &app.dify.uploads()[0];
    let sent = &app.dify.requests()[0];
    assert_eq!(Some(upload.user.as_str()), sent.user());
    assert_eq!(
        sent.body["files"],
        json!([
            {"type": "image", "transfer_method": "remote_url", "url": "https://images.example/chart.png"},
            {"type": "document", "transfer_method": "local_file", "upload_file_id": upload.id},
            {"type": "document", "transfer_method": "remote_url", "url": "https://docs.example/spec.docx"},
        ])
    );
    assert_eq!(
        sent.query(),
        Some("Compare these.\n[image]\n[file: data.pdf]\n[file]")
    );

    let r = app
        .post_responses(
            &json!({"model": MODEL, "input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-abc"}]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input[0].content[0].file_id");
}

#[tokio::test]
async fn files_in_answers_become_markdown_with_absolute_urls() {
    let app = spawn_app().await;
    let origin = app.dify.base_url().trim_end_matches("/v1").to_string();
    for (fixture, text_before, file_id, text_after) in [
        (
            "chat-tool-file-stream.sse",
            "",
            "5f2a8c1e-3b7d-4e9f-a1c3-6d8e0f2a4b6c.png?timestamp=1784212500&nonce=3e9f1a7c5b2d&sign=Qm9ndXNTaWduYXR1cmU=",
            "Here is your chart.",
        ),
        (
            "chatflow-file-stream.sse",
            "Sales by month:",
            "9e1a3c5e-7a9c-4e3a-8c5e-7a9c1e3a5c7e.png?timestamp=1784212602&nonce=7c5e3a1c9e7a&sign=U2lnbmVkQ2hhcnQ=",
            "",
        ),
    ] {
        app.dify.set(APP_KEY, Scenario::replay(fixture));
        let expected =
            format!("{text_before}\n\n![image]({origin}/files/tools/{file_id})\n\n{text_after}");
        let r = app.stream(streaming("Draw the chart.")).await;
        assert_eq!(r.content(), expected, "{fixture}");
        assert!(r.done());
        let (_, _, c) = app.chat(user_message("Draw the chart.")).await;
        assert_eq!(c["choices"][0]["message"]["content"], expected, "{fixture}");
    }
}

#[tokio::test]
async fn an_app_with_uploads_off_refuses_files_instead_of_ignoring_them() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    // Vision off, documents only.
    app.dify.set_file_upload(
        APP_KEY,
        json!({"image": {"enabled": false}, "enabled": true, "allowed_file_types": ["document"]}),
    );
    let (status, _, e) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "What is this?"},
            image_part(&format!("data:image/png;base64,{PNG}")),
        ])))
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "messages[0].content[1]");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("Model `{MODEL}` does not accept images")),
        "{message}"
    );
    assert!(app.dify.uploads().is_empty() && app.dify.requests().is_empty());

    // A document is allowed; text alone always is.
    let (status, _, c) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "Summarise it."},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{PDF}")}},
        ])))
        .await;
    assert_eq!(status, 200, "{c}");

    // Uploads off altogether (a fresh proxy: the app's settings are cached).
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    app.dify.set_file_upload(
        APP_KEY,
        json!({"image": {"enabled": false}, "enabled": false}),
    );
    let (status, _, e) = app
        .chat(with_parts(json!([
            {"type": "text", "text": "Summarise it."},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{PDF}")}},
        ])))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not accept documents"),
        "{e}"
    );
}
