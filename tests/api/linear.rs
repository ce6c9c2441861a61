//! A Dify conversation is linear and must hold what the user sees: a request continues
//! one only when its history is exactly what the conversation holds now. Open WebUI's
//! regenerate, edit and delete shapes, identical openings, and system messages that
//! change between turns (its `RAG_SYSTEM_CONTEXT`), against DynamoDB in moto.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::Scenario;

fn chat(messages: &[(&str, &str)]) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(r, c)| json!({"role": r, "content": c}))
        .collect();
    json!({"model": MODEL, "messages": messages})
}

/// Sends one blocking turn (with Open WebUI's chat-id header, if any); returns the answer.
async fn ask(app: &TestApp, body: &Value, chat_id: Option<&str>) -> String {
    let mut req = app.post_chat(body);
    if let Some(c) = chat_id {
        req = req.header("X-OpenWebUI-Chat-Id", c);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The (conversation, query) Dify got for the request `i`.
fn sent(app: &TestApp, i: usize) -> (Option<String>, String) {
    let r = &app.dify.requests()[i];
    (
        r.conversation_id().map(str::to_string),
        r.query().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_regenerated_answer_starts_a_new_conversation_with_the_history_folded() {
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Paris."));
    let t1 = chat(&[("user", "Capital of France?")]);
    let t2 = chat(&[
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Spain?"),
    ]);
    ask(&app, &t1, Some("c-regen")).await;
    ask(&app, &t2, Some("c-regen")).await;
    let (first, _) = sent(&app, 0);
    assert_eq!(first, None);
    let a = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    assert_eq!(sent(&app, 1), (Some(a.clone()), "And of Spain?".into()));

    // Open WebUI's regenerate: the same history and message again, same chat id. Dify's
    // conversation already holds that question and its first answer.
    ask(&app, &t2, Some("c-regen")).await;
    assert_eq!(
        sent(&app, 2),
        (
            None,
            "User: Capital of France?\n\nAssistant: Paris.\n\nUser: And of Spain?".into()
        ),
        "the regenerated answer was asked in the conversation that holds the first one"
    );

    // The user goes on from the regenerated answer: its conversation continues.
    let t3 = chat(&[
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Spain?"),
        ("assistant", "Paris."),
        ("user", "Thanks"),
    ]);
    ask(&app, &t3, Some("c-regen")).await;
    let b = app
        .dify
        .conversation_ids(APP_KEY, &default_user())
        .last()
        .cloned();
    assert_ne!(b.as_deref(), Some(a.as_str()));
    assert_eq!(sent(&app, 3), (b, "Thanks".into()));
}

#[tokio::test]
async fn an_edited_earlier_message_or_a_deleted_turn_diverges() {
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    let turns = [
        chat(&[("user", "My name is Ada.")]),
        chat(&[
            ("user", "My name is Ada."),
            ("assistant", "Noted."),
            ("user", "I live in Paris."),
        ]),
        chat(&[
            ("user", "My name is Ada."),
            ("assistant", "Noted."),
            ("user", "I live in Paris."),
            ("assistant", "Noted."),
            ("user", "I like tea."),
        ]),
    ];
    for (chat_id, changed, folded) in [
        // Editing the second message: Open WebUI drops what followed it.
        (
            "c-edit",
            chat(&[
                ("user", "My name is Ada."),
                ("assistant", "Noted."),
                ("user", "I live in Rome."),
            ]),
            "User: My name is Ada.\n\nAssistant: Noted.\n\nUser: I live in Rome.",
        ),
        // Editing the first message: a first turn again.
        (
            "c-edit-first",
            chat(&[("user", "My name is Grace.")]),
            "My name is Grace.",
        ),
        // Deleting the last turn, then asking something else.
        (
            "c-delete",
            chat(&[
                ("user", "My name is Ada."),
                ("assistant", "Noted."),
                ("user", "I live in Paris."),
                ("assistant", "Noted."),
                ("user", "What do I drink?"),
            ]),
            "User: My name is Ada.\n\nAssistant: Noted.\n\nUser: I live in Paris.\n\nAssistant: Noted.\n\nUser: What do I drink?",
        ),
    ] {
        let before = app.dify.requests().len();
        for t in &turns {
            ask(&app, t, Some(chat_id)).await;
        }
        let (_, q3) = sent(&app, before + 2);
        assert_eq!(
            q3, "I like tea.",
            "{chat_id}: three turns of one conversation"
        );
        ask(&app, &changed, Some(chat_id)).await;
        assert_eq!(
            sent(&app, before + 3),
            (None, folded.to_string()),
            "{chat_id}: Dify's conversation holds turns the user no longer sees"
        );
    }
}

#[tokio::test]
async fn two_chats_with_identical_openings_never_merge() {
    // No chat id, no user (LangChain's shape): both chats open with "Hi" and get the
    // same answer, so their second turns send the same history.
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello!"));
    let opening = chat(&[("user", "Hi")]);
    ask(&app, &opening, None).await;
    ask(&app, &opening, None).await;
    for who in ["I am X.", "I am Y."] {
        let second = chat(&[("user", "Hi"), ("assistant", "Hello!"), ("user", who)]);
        ask(&app, &second, None).await;
    }
    let (x, qx) = sent(&app, 2);
    let (y, qy) = sent(&app, 3);
    assert!(x.is_some(), "the first second turn continues");
    assert_eq!(qx, "I am X.");
    // Each chat's conversation holds exactly its history: the other chat continues the
    // other one (its own), not the same one, and does not fork with its history folded.
    assert!(
        y.is_some(),
        "the other chat's second turn started anew: {qy:?}"
    );
    assert_ne!(
        x, y,
        "the other chat's second turn landed in the same Dify conversation"
    );
    assert_eq!(qy, "I am Y.");
}

#[tokio::test]
async fn a_changed_system_message_reaches_dify_with_the_new_query() {
    // Open WebUI with RAG_SYSTEM_CONTEXT=true puts a file's text into the system message
    // of the turn that has the file; the continued turn must bring it to Dify.
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Sure."));
    let with_file = "Be brief.\n<context>Quarterly report: revenue rose 12% on the year.</context>";
    for (n, chat_id) in [(0, Some("c-sys")), (3, None)] {
        ask(
            &app,
            &chat(&[("system", "Be brief."), ("user", "Hello")]),
            chat_id,
        )
        .await;
        ask(
            &app,
            &chat(&[
                ("system", with_file),
                ("user", "Hello"),
                ("assistant", "Sure."),
                ("user", "What was the growth?"),
            ]),
            chat_id,
        )
        .await;
        ask(
            &app,
            &chat(&[
                ("system", with_file),
                ("user", "Hello"),
                ("assistant", "Sure."),
                ("user", "What was the growth?"),
                ("assistant", "Sure."),
                ("user", "Thanks"),
            ]),
            chat_id,
        )
        .await;
        let (conversation, query) = sent(&app, n + 1);
        assert!(
            conversation.is_some(),
            "{chat_id:?}: the second turn continues"
        );
        assert_eq!(
            query,
            format!("System: {with_file}\n\nUser: What was the growth?"),
            "{chat_id:?}: the file's text never reached Dify"
        );
        let (same, query) = sent(&app, n + 2);
        assert_eq!(same, conversation);
        assert_eq!(
            query, "Thanks",
            "{chat_id:?}: an unchanged system is not re-sent"
        );
    }
}

#[tokio::test]
async fn the_next_turn_sent_at_the_end_of_a_stream_continues() {
    // A client may send its next turn as soon as it has `[DONE]`, before the body ends:
    // the mapping must be in the store by then, even when the store is slow to write.
    let (app, _) = spawn_app_slow_writes(std::time::Duration::from_millis(300)).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("One."));
    for round in 0..3 {
        let chat_id = format!("c-quick-{round}");
        let mut first = chat(&[("user", "Count.")]);
        first["stream"] = json!(true);
        let mut r = app
            .post_chat(&first)
            .header("X-OpenWebUI-Chat-Id", &chat_id)
            .send()
            .await
            .unwrap();
        let mut seen = String::new();
        while !seen.contains("data: [DONE]") {
            let chunk = r
                .chunk()
                .await
                .unwrap()
                .expect("the stream ends with [DONE]");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let before = app.dify.requests().len();
        let second = chat(&[("user", "Count."), ("assistant", "One."), ("user", "More.")]);
        ask(&app, &second, Some(&chat_id)).await;
        drop(r);
        let (conversation, query) = sent(&app, before);
        assert!(
            conversation.is_some() && query == "More.",
            "round {round}: the turn after [DONE] started anew: {query:?}"
        );
    }
}

#[tokio::test]
async fn callers_of_different_keys_are_different_users_in_dify() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    let body = user_message("hi");
    for key in [PROXY_KEY, "sk-another-key"] {
        let r = app
            .client
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut named = body.clone();
    named["user"] = json!("alice");
    for key in [PROXY_KEY, "sk-another-key"] {
        let r = app
            .client
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(key)
            .json(&named)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let users: Vec<String> = app
        .dify
        .requests()
        .iter()
        .map(|r| r.user().unwrap().to_string())
        .collect();
    assert_ne!(users[0], users[1], "two keys, one Dify user");
    // The key's tag: `k` and 8 hex digits, behind the default user, before a named one.
    let is_tag = |t: &str| {
        t.len() == 9 && t.starts_with('k') && t[1..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    for user in &users[..2] {
        let tag = user
            .strip_prefix("opendify-")
            .unwrap_or_else(|| panic!("{user}"));
        assert!(is_tag(tag), "{user}");
        assert!(
            !user.contains("proxy") && !user.contains("another"),
            "{user}"
        );
    }
    // A user the client names stays readable, and is each key's own.
    assert_ne!(users[2], users[3], "two keys, one Dify user for \"alice\"");
    for user in &users[2..] {
        let tag = user
            .strip_suffix("-alice")
            .unwrap_or_else(|| panic!("{user}"));
        assert!(is_tag(tag), "{user}");
    }
}
