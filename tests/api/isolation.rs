//! Many users behind one deployment: a chat never continues another chat's Dify
//! conversation. What the client does not show in the visible history (system prompt, end
//! user) is part of what a conversation is matched on; chats that cannot be
//! told apart each keep their own conversation; a turn Dify never started gives its claim
//! back; and each proxy key has its own Dify users.

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

/// Sends one blocking turn through `key` (with a chat id, if any); returns the status.
async fn ask_as(app: &TestApp, key: &str, body: &Value, chat_id: Option<&str>) -> u16 {
    let mut req = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(key)
        .json(body);
    if let Some(c) = chat_id {
        req = req.header("X-OpenWebUI-Chat-Id", c);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn ask(app: &TestApp, body: &Value, chat_id: Option<&str>) {
    assert_eq!(ask_as(app, PROXY_KEY, body, chat_id).await, 200);
}

/// The conversation Dify was asked to continue by request `i` (None: a new one).
fn continued(app: &TestApp, i: usize) -> Option<String> {
    app.dify.requests()[i].conversation_id().map(str::to_string)
}

#[tokio::test]
async fn chats_with_different_system_prompts_never_share_a_conversation() {
    // One key, no user, no chat id: a backend giving each customer its own system prompt.
    // Both chats open with the same words and get the same answer.
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello!"));
    let alpha = "You are Alpha, the assistant of the Alpha company.";
    let beta = "You are Beta. Internal: the discount code is BETA-77.";
    ask(&app, &chat(&[("system", alpha), ("user", "Hi")]), None).await;
    ask(&app, &chat(&[("system", beta), ("user", "Hi")]), None).await;
    let issued = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(issued.len(), 2, "{issued:?}");
    let (a, b) = (issued[0].clone(), issued[1].clone());
    for (i, system, own) in [(2, alpha, &a), (3, beta, &b)] {
        ask(
            &app,
            &chat(&[
                ("system", system),
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("user", "What can you do?"),
            ]),
            None,
        )
        .await;
        assert_eq!(
            continued(&app, i).as_ref(),
            Some(own),
            "the chat's second turn went to the other chat's Dify conversation"
        );
    }
}

#[tokio::test]
async fn a_chat_id_with_another_system_prompt_is_another_chat() {
    // Two customers of one backend whose chat ids collide ("1"), no user.
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello!"));
    let opening = |system: &str, inputs: Value| {
        let mut body = chat(&[("system", system), ("user", "Hi")]);
        body["inputs"] = inputs;
        body
    };
    let second = |system: &str, inputs: Value| {
        let mut body = chat(&[
            ("system", system),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Go on."),
        ]);
        body["inputs"] = inputs;
        body
    };
    let cases = [("You are Alpha.", json!({})), ("You are Beta.", json!({}))];
    for (system, inputs) in &cases {
        ask(&app, &opening(system, inputs.clone()), Some("1")).await;
    }
    let issued = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(issued.len(), 2, "{issued:?}");
    for (n, (system, inputs)) in cases.iter().enumerate() {
        ask(&app, &second(system, inputs.clone()), Some("1")).await;
        assert_eq!(
            continued(&app, 2 + n).as_ref(),
            Some(&issued[n]),
            "chat {n} continued another chat's conversation"
        );
    }
}

#[tokio::test]
async fn responses_with_other_instructions_never_share_a_conversation() {
    let app = spawn_app().await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello!"));
    let post = |instructions: &str, input: Value| {
        let body = json!({"model": MODEL, "instructions": instructions, "input": input});
        let req = app.post_responses(&body);
        async move { assert_eq!(req.send().await.unwrap().status(), 200) }
    };
    post("You are Alpha.", json!("Hi")).await;
    post("You are Beta.", json!("Hi")).await;
    let issued = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(issued.len(), 2, "{issued:?}");
    for (n, instructions) in ["You are Alpha.", "You are Beta."].iter().enumerate() {
        post(
            instructions,
            json!([
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Go on."}
            ]),
        )
        .await;
        assert_eq!(continued(&app, 2 + n).as_ref(), Some(&issued[n]));
    }
}

#[tokio::test]
async fn chats_that_cannot_be_told_apart_each_continue_their_own_conversation() {
    // Same key, no user, same system prompt and visible history: both chats must go on
    // in a conversation that holds exactly their history, and not in the same one.
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello!"));
    let opening = chat(&[("system", "Be kind."), ("user", "Hi")]);
    for _ in 0..3 {
        ask(&app, &opening, None).await;
    }
    let issued = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(issued.len(), 3);
    let mut continued_ids = Vec::new();
    for (n, question) in ["Tell me a joke.", "What is 2+2?", "Bye."]
        .iter()
        .enumerate()
    {
        ask(
            &app,
            &chat(&[
                ("system", "Be kind."),
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("user", question),
            ]),
            None,
        )
        .await;
        let id = continued(&app, 3 + n)
            .unwrap_or_else(|| panic!("chat {n}'s second turn started anew (history folded)"));
        assert_eq!(app.dify.requests()[3 + n].query(), Some(*question));
        continued_ids.push(id);
    }
    let mut sorted = continued_ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "two chats continued one conversation");
    assert!(continued_ids.iter().all(|c| issued.contains(c)));

    // Each goes on in its own conversation: a third turn of the second chat continues
    // the conversation its second turn was in.
    ask(
        &app,
        &chat(&[
            ("system", "Be kind."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "What is 2+2?"),
            ("assistant", "Hello!"),
            ("user", "Thanks."),
        ]),
        None,
    )
    .await;
    assert_eq!(continued(&app, 6), Some(continued_ids[1].clone()));
    // A fourth chat at the opening, after the others moved on, reuses a freed slot.
    ask(&app, &opening, None).await;
    ask(
        &app,
        &chat(&[
            ("system", "Be kind."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Again."),
        ]),
        None,
    )
    .await;
    let fourth = app.dify.conversation_ids(APP_KEY, &default_user())[3].clone();
    assert_eq!(continued(&app, 8), Some(fourth));
}

#[tokio::test]
async fn a_turn_dify_refused_to_start_leaves_the_conversation_to_the_retry() {
    // A 429 (like a 5xx or a timeout) before the run starts: the retry must continue the
    // conversation with the new message only, not fork it with the whole history folded.
    for chat_id in [Some("c-retry"), None] {
        let (app, _) = spawn_app_dynamo(&[]).await;
        app.dify.set(
            APP_KEY,
            Scenario::Sequence(vec![
                Scenario::answer_with_conversations("Noted."),
                Scenario::error(429, "too_many_requests", "Too many requests."),
                Scenario::answer_with_conversations("Noted."),
            ]),
        );
        ask(&app, &chat(&[("user", "My name is Ada.")]), chat_id).await;
        let second = chat(&[
            ("user", "My name is Ada."),
            ("assistant", "Noted."),
            ("user", "What is my name?"),
        ]);
        assert_eq!(ask_as(&app, PROXY_KEY, &second, chat_id).await, 429);
        ask(&app, &second, chat_id).await;
        let issued = app.dify.conversation_ids(APP_KEY, &default_user());
        assert_eq!(issued.len(), 1, "{chat_id:?}: the retry forked: {issued:?}");
        assert_eq!(continued(&app, 2).as_ref(), Some(&issued[0]), "{chat_id:?}");
        assert_eq!(
            app.dify.requests()[2].query(),
            Some("What is my name?"),
            "{chat_id:?}"
        );
    }
}

#[tokio::test]
async fn an_open_webui_file_turn_and_its_stored_form_are_one_turn() {
    // The file turn is sent in the RAG template (the question in <user_query>); every
    // later request carries that turn as Open WebUI stored it (<attached_files> first).
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        Scenario::answer_with_conversations("It says hello."),
    );
    ask(&app, &chat(&[("user", "Hello there")]), None).await;
    let rag = "### Task:\nRespond using the context.\n\n<context>\n<source id=\"1\" name=\"notes.txt\">hello</source>\n</context>\n\n<user_query>\nWhat does the file say?\n</user_query>";
    ask(
        &app,
        &chat(&[
            ("user", "Hello there"),
            ("assistant", "It says hello."),
            ("user", rag),
        ]),
        None,
    )
    .await;
    let stored = "<attached_files>\n<file type=\"file\" id=\"0f2c\" name=\"notes.txt\"/>\n</attached_files>\n\nWhat does the file say?";
    ask(
        &app,
        &chat(&[
            ("user", "Hello there"),
            ("assistant", "It says hello."),
            ("user", stored),
            ("assistant", "It says hello."),
            ("user", "Thanks!"),
        ]),
        None,
    )
    .await;
    let issued = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(
        issued.len(),
        1,
        "the turn after the file turn forked: {issued:?}"
    );
    assert_eq!(continued(&app, 1).as_ref(), Some(&issued[0]));
    assert_eq!(continued(&app, 2).as_ref(), Some(&issued[0]));
    assert_eq!(app.dify.requests()[2].query(), Some("Thanks!"));
}

#[tokio::test]
async fn each_key_has_its_own_dify_users_and_its_tag_reveals_nothing_testable() {
    let app = spawn_app().await;
    app.dify.set(APP_KEY, Scenario::answer("ok"));
    let mut body = chat(&[("user", "Hi")]);
    for key in [PROXY_KEY, "sk-another-key"] {
        assert_eq!(ask_as(&app, key, &body, None).await, 200);
    }
    body["user"] = json!("alice");
    for key in [PROXY_KEY, "sk-another-key"] {
        assert_eq!(ask_as(&app, key, &body, None).await, 200);
    }
    let users: Vec<String> = app
        .dify
        .requests()
        .iter()
        .map(|r| r.user().unwrap().to_string())
        .collect();
    assert_ne!(users[0], users[1], "two keys, one default Dify user");
    assert_ne!(users[2], users[3], "two keys, one Dify user for \"alice\"");
    for user in &users[2..] {
        assert!(
            user.ends_with("-alice"),
            "the client's name is not readable: {user}"
        );
    }
    assert_eq!(users[2], named_user("alice"));
    // Nothing of the key, nor of its plain digest (which would let a reader of Dify's
    // logs test guesses of the key at the speed of one hash).
    use sha2::{Digest, Sha256};
    for (key, default, named) in [
        (PROXY_KEY, &users[0], &users[2]),
        ("sk-another-key", &users[1], &users[3]),
    ] {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let plain = hex(&Sha256::digest(format!("opendify-tenant\0{key}")));
        let plain_key = hex(&Sha256::digest(key));
        for user in [default, named] {
            assert!(
                !user.contains("proxy") && !user.contains("another"),
                "{user}"
            );
            for digest in [&plain, &plain_key] {
                assert!(!user.contains(&digest[..8]), "{user} shows {digest}");
            }
        }
    }
}

#[tokio::test]
async fn two_continuations_of_one_response_at_once_do_not_interleave() {
    use futures_util::StreamExt;
    use std::time::Duration;
    let app = spawn_app().await;
    let task = "6f1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    app.dify.set(
        APP_KEY,
        Scenario::Sequence(vec![
            Scenario::answer_with_conversations("Noted."),
            Scenario::endless("tick ", Duration::from_millis(30), task),
        ]),
    );
    let r = app
        .post_responses(&json!({"model": MODEL, "input": "My name is Ada."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    let next = |stream: bool| json!({"model": MODEL, "previous_response_id": id, "input": "Go on.", "stream": stream});

    // One continuation is under way in Dify...
    let running = app.post_responses(&next(true)).send().await.unwrap();
    assert_eq!(running.status(), 200);
    let mut body = running.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("response.output_text.delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a delta in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // ...so a second one at once is refused before it reaches Dify, as retryable.
    let r = app.post_responses(&next(false)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-should-retry"], "true");
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "previous_response_in_use", "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    assert_eq!(
        app.dify.requests().len(),
        2,
        "the second continuation reached Dify"
    );

    // That the claim is given back once an answer ends is what lets a response be
    // continued again (responses::continuing_one_response_twice_is_logged_as_a_branch);
    // continuing it again here would log that branch warning into the log the other
    // tests of this binary read.
    drop(body);
}

#[tokio::test]
async fn a_conversation_of_the_dify_user_before_the_upgrade_recovers_with_the_history_folded() {
    // Before the per-key tags, the key's default user was `opendify-` and 16 hex digits of
    // a plain digest. A mapping that still leads to a conversation of that user: Dify
    // answers 404 for the new user, and the turn starts over with its history folded.
    use opendify::conversation::keys::{chat_key, state_digest, system_digest};
    use opendify::openai::Role;
    use opendify::store::{ConversationStore, Mapping};
    use sha2::{Digest, Sha256};
    let (app, table) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted."));
    let plain = Sha256::digest(format!("opendify-tenant\0{PROXY_KEY}"));
    let hex: String = plain.iter().map(|b| format!("{b:02x}")).collect();
    let old_user = format!("opendify-{}", &hex[..16]);
    let r = app
        .client
        .post(format!("{}/chat-messages", app.dify.base_url()))
        .bearer_auth(APP_KEY)
        .json(&json!({"query": "My name is Ada.", "inputs": {}, "response_mode": "blocking", "user": old_user}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let old: Value = r.json().await.unwrap();
    let old = old["conversation_id"].as_str().unwrap().to_string();

    let history = [(Role::User, "My name is Ada."), (Role::Assistant, "Noted.")];
    let tenant = opendify::config::Tenant::of_key(PROXY_KEY);
    let key = chat_key(tenant.as_str(), MODEL, &default_user(), "c-upgrade");
    let store = crate::support::moto::Moto::shared()
        .await
        .store(&table, std::time::Duration::from_secs(3600));
    let (state, system) = (
        state_digest(history.iter().copied()),
        system_digest(history.iter().copied()),
    );
    let mapping = Mapping {
        conversation_id: &old,
        state: &state,
        system: &system,
    };
    assert!(store.settle(&key, mapping, None).await.unwrap());

    ask(
        &app,
        &chat(&[
            ("user", "My name is Ada."),
            ("assistant", "Noted."),
            ("user", "What is my name?"),
        ]),
        Some("c-upgrade"),
    )
    .await;
    let sent = app.dify.requests();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_eq!(sent[1].conversation_id(), Some(old.as_str()));
    assert_eq!(sent[1].user(), Some(default_user().as_str()));
    assert_eq!(sent[2].conversation_id(), None);
    assert_eq!(
        sent[2].query(),
        Some("User: My name is Ada.\n\nAssistant: Noted.\n\nUser: What is my name?")
    );
    // The chat goes on in its new conversation.
    let new = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    ask(
        &app,
        &chat(&[
            ("user", "My name is Ada."),
            ("assistant", "Noted."),
            ("user", "What is my name?"),
            ("assistant", "Noted."),
            ("user", "Thanks."),
        ]),
        Some("c-upgrade"),
    )
    .await;
    assert_eq!(continued(&app, 3), Some(new));
}
