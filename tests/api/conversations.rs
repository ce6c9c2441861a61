//! Multi-turn continuity against a real DynamoDB-protocol server (moto on 127.0.0.1).

use std::time::Duration;

use opendify::conversation::chat_key;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::moto::{Moto, number};
use crate::support::{AnswerSpec, Scenario};

fn turn(model: &str, history: &[(&str, &str)]) -> Value {
    let messages: Vec<Value> = history
        .iter()
        .map(|(r, c)| json!({"role": r, "content": c}))
        .collect();
    json!({"model": model, "messages": messages})
}

/// Sends one turn and returns the assistant's answer.
async fn send(
    app: &TestApp,
    body: Value,
    chat_header: Option<&str>,
    user_header: Option<&str>,
) -> String {
    let mut req = app.post_chat(&body);
    if let Some(c) = chat_header {
        req = req.header("X-OpenWebUI-Chat-Id", c);
    }
    if let Some(u) = user_header {
        req = req.header("X-OpenWebUI-User-Id", u);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The tenant of the main test key (every store key starts from it).
fn tenant() -> String {
    opendify::config::Tenant::of_key(PROXY_KEY)
        .as_str()
        .to_string()
}

async fn stored(table: &str, key: &str) -> Option<String> {
    let item = Moto::shared().await.get_item_raw(table, key).await?;
    item.get("conversation_id")
        .and_then(|v| v.as_s().ok())
        .cloned()
}

#[tokio::test]
async fn continues_by_chat_id_header_sending_only_the_new_message() {
    let (app, table) = spawn_app_dynamo(&[("CONVERSATION_HISTORY_MATCHING", "false")]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Hello Ada."));
    let b1 = turn(MODEL, &[("user", "My name is Ada.")]);
    let a1 = send(&app, b1, Some("chat-1"), None).await;
    let b2 = turn(
        MODEL,
        &[
            ("user", "My name is Ada."),
            ("assistant", &a1),
            ("user", "What is my name?"),
        ],
    );
    send(&app, b2, Some("chat-1"), None).await;

    let reqs = app.dify.requests();
    assert_eq!(reqs[0].conversation_id(), None);
    let conversation = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    assert_eq!(reqs[1].conversation_id(), Some(conversation.as_str()));
    assert_eq!(reqs[1].query(), Some("What is my name?"));
    assert_eq!(
        stored(
            &table,
            &chat_key(&tenant(), MODEL, &default_user(), "chat-1")
        )
        .await,
        Some(conversation)
    );
}

#[tokio::test]
async fn continues_by_metadata_chat_id_and_renamed_header() {
    // History matching off: only the chat id can make these turns continue.
    let (app, _) = spawn_app_dynamo(&[
        ("CHAT_ID_HEADER", "X-My-Chat"),
        ("CONVERSATION_HISTORY_MATCHING", "false"),
    ])
    .await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("ok"));
    let mut b1 = user_message("one");
    b1["metadata"] = json!({"chat_id": "meta-chat"});
    send(&app, b1, None, None).await;
    let mut b2 = json!({"model": MODEL, "messages": [{"role":"user","content":"one"},{"role":"assistant","content":"ok"},{"role":"user","content":"two"}]});
    b2["metadata"] = json!({"chat_id": "meta-chat"});
    send(&app, b2.clone(), None, None).await;

    // The renamed header.
    let r = app
        .post_chat(&user_message("three"))
        .header("X-My-Chat", "hdr-chat")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b4 = json!({"model": MODEL, "messages": [{"role":"user","content":"three"},{"role":"assistant","content":"ok"},{"role":"user","content":"four"}]});
    let r = app
        .post_chat(&b4)
        .header("X-My-Chat", "hdr-chat")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let reqs = app.dify.requests();
    let ids = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(ids.len(), 2);
    assert_eq!(
        (reqs[1].conversation_id(), reqs[1].query()),
        (Some(ids[0].as_str()), Some("two"))
    );
    assert_eq!(reqs[2].conversation_id(), None);
    assert_eq!(
        (reqs[3].conversation_id(), reqs[3].query()),
        (Some(ids[1].as_str()), Some("four"))
    );
}

#[tokio::test]
async fn switching_model_or_user_never_reuses_a_foreign_conversation() {
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("a"));
    app.dify
        .set(OTHER_KEY, Scenario::answer_with_conversations("z"));
    let history = [("user", "hi"), ("assistant", "a"), ("user", "again")];

    send(
        &app,
        turn(MODEL, &[("user", "hi")]),
        Some("shared"),
        Some("alice"),
    )
    .await;
    // Same chat id, other model: a new conversation in the other app, history folded.
    send(&app, turn("zeta", &history), Some("shared"), Some("alice")).await;
    // Same chat id, other user: a new conversation.
    send(
        &app,
        turn(MODEL, &[("user", "hi")]),
        Some("shared"),
        Some("bob"),
    )
    .await;
    // Each continues its own.
    send(&app, turn(MODEL, &history), Some("shared"), Some("alice")).await;
    send(&app, turn(MODEL, &history), Some("shared"), Some("bob")).await;

    let reqs = app.dify.requests();
    assert_eq!(
        (reqs[1].key.as_str(), reqs[1].conversation_id()),
        (OTHER_KEY, None)
    );
    assert_eq!(
        reqs[1].query(),
        Some("User: hi\n\nAssistant: a\n\nUser: again")
    );
    assert_eq!(reqs[2].conversation_id(), None);
    let alice = app.dify.conversation_ids(APP_KEY, &named_user("alice"));
    let bob = app.dify.conversation_ids(APP_KEY, &named_user("bob"));
    assert_eq!(reqs[3].conversation_id(), Some(alice[0].as_str()));
    assert_eq!(reqs[4].conversation_id(), Some(bob[0].as_str()));
    assert_ne!(alice[0], bob[0]);
}

#[tokio::test]
async fn concurrent_first_turns_end_with_one_mapping() {
    let (app, table) = spawn_app_dynamo(&[]).await;
    app.dify.set(
        APP_KEY,
        Scenario::Answer(AnswerSpec {
            delay: Duration::from_millis(30),
            conversations: true,
            ..AnswerSpec::new("one two three")
        }),
    );
    // Every first turn has looked up the store (and found nothing) before
    // Dify answers any of them, so all four race to write their mapping.
    app.dify.hold_answers_until(4);
    let first = turn(MODEL, &[("user", "start")]);
    let answers = futures_util::future::join_all(
        (0..4).map(|_| send(&app, first.clone(), Some("race"), None)),
    )
    .await;
    assert!(answers.iter().all(|a| a == "one two three"), "{answers:?}");
    let created = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(
        created.len(),
        4,
        "each first turn made its own Dify conversation"
    );
    let winner = stored(&table, &chat_key(&tenant(), MODEL, &default_user(), "race"))
        .await
        .expect("one mapping");
    assert!(created.contains(&winner));

    // The next turn continues the winner; the same turn sent again (a regenerate, a
    // retry) has diverged from what that conversation now holds: it starts anew.
    let next = turn(
        MODEL,
        &[
            ("user", "start"),
            ("assistant", "one two three"),
            ("user", "more"),
        ],
    );
    for _ in 0..3 {
        send(&app, next.clone(), Some("race"), None).await;
    }
    let reqs = app.dify.requests();
    assert_eq!(reqs[4].conversation_id(), Some(winner.as_str()));
    assert_eq!(reqs[4].query(), Some("more"));
    for r in &reqs[5..] {
        assert_eq!(r.conversation_id(), None);
        assert_eq!(
            r.query(),
            Some("User: start\n\nAssistant: one two three\n\nUser: more")
        );
    }
}

#[tokio::test]
async fn continues_without_chat_id_over_three_turns() {
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted,  Ada."));
    let a1 = send(
        &app,
        turn(MODEL, &[("system", "Be kind."), ("user", "I am Ada.")]),
        None,
        None,
    )
    .await;
    // Turn 2 streams; the client sends back what it saw, with cosmetic whitespace changes.
    let mut b2 = turn(
        MODEL,
        &[
            ("system", "Be kind. "),
            ("user", "I am Ada."),
            ("assistant", &format!("{a1}\n")),
            ("user", "Who am I?"),
        ],
    );
    b2["stream"] = json!(true);
    let r = app.stream(b2).await;
    let a2 = r.content();
    assert!(r.done());
    let b3 = turn(
        MODEL,
        &[
            ("developer", "Be kind."),
            ("user", "I am Ada."),
            ("assistant", &a1),
            ("user", "Who am I?"),
            ("assistant", &a2),
            ("user", "Thanks"),
        ],
    );
    send(&app, b3, None, None).await;

    let reqs = app.dify.requests();
    let conversation = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    assert_eq!(app.dify.conversation_ids(APP_KEY, &default_user()).len(), 1);
    assert_eq!(reqs[0].conversation_id(), None);
    assert_eq!(
        (reqs[1].conversation_id(), reqs[1].query()),
        (Some(conversation.as_str()), Some("Who am I?"))
    );
    assert_eq!(
        (reqs[2].conversation_id(), reqs[2].query()),
        (Some(conversation.as_str()), Some("Thanks"))
    );

    // An edited earlier message is another conversation: new, with the history folded.
    send(
        &app,
        turn(
            MODEL,
            &[
                ("user", "I am Bob."),
                ("assistant", &a1),
                ("user", "Who am I?"),
            ],
        ),
        None,
        None,
    )
    .await;
    let last = app.dify.requests().pop().unwrap();
    assert_eq!(last.conversation_id(), None);
    assert!(last.query().unwrap().starts_with("User: I am Bob."));
}

#[tokio::test]
async fn history_matching_can_be_switched_off() {
    let (app, _) = spawn_app_dynamo(&[("CONVERSATION_HISTORY_MATCHING", "false")]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("x"));
    send(&app, turn(MODEL, &[("user", "a")]), None, None).await;
    send(
        &app,
        turn(MODEL, &[("user", "a"), ("assistant", "x"), ("user", "b")]),
        None,
        None,
    )
    .await;
    let reqs = app.dify.requests();
    assert_eq!(reqs[1].conversation_id(), None);
    assert_eq!(reqs[1].query(), Some("User: a\n\nAssistant: x\n\nUser: b"));
}

#[tokio::test]
async fn deleted_upstream_conversation_recovers_with_a_normal_answer() {
    let (app, table) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("fine"));
    send(&app, turn(MODEL, &[("user", "first")]), Some("c-del"), None).await;
    let old = app.dify.conversation_ids(APP_KEY, &default_user())[0].clone();
    assert!(app.dify.delete_conversation(&old));

    for stream in [false, true] {
        let mut body = if stream {
            turn(
                MODEL,
                &[
                    ("user", "first"),
                    ("assistant", "fine"),
                    ("user", "second"),
                    ("assistant", "fine"),
                    ("user", "third"),
                ],
            )
        } else {
            turn(
                MODEL,
                &[("user", "first"), ("assistant", "fine"), ("user", "second")],
            )
        };
        body["stream"] = json!(stream);
        if stream {
            // Delete again so the streaming path meets the 404 too.
            let current = stored(
                &table,
                &chat_key(&tenant(), MODEL, &default_user(), "c-del"),
            )
            .await
            .unwrap();
            assert!(app.dify.delete_conversation(&current));
            let r = app
                .post_chat(&body)
                .header("X-OpenWebUI-Chat-Id", "c-del")
                .send()
                .await
                .unwrap();
            let r = read_sse(r).await;
            assert_eq!(r.content(), "fine");
            assert!(r.done());
        } else {
            assert_eq!(send(&app, body, Some("c-del"), None).await, "fine");
        }
    }
    let reqs = app.dify.requests();
    // turn 2: the stale id (404), then a retry as a new conversation with the folded history.
    assert_eq!(reqs[1].conversation_id(), Some(old.as_str()));
    assert_eq!(reqs[2].conversation_id(), None);
    assert_eq!(
        reqs[2].query(),
        Some("User: first\n\nAssistant: fine\n\nUser: second")
    );
    // turn 3 continued turn 2's new conversation, met the 404 too, and started over.
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[3].query(), Some("third"));
    assert!(reqs[3].conversation_id().is_some());
    assert_eq!(reqs[4].conversation_id(), None);
    let now = stored(
        &table,
        &chat_key(&tenant(), MODEL, &default_user(), "c-del"),
    )
    .await
    .unwrap();
    assert_ne!(now, old);
    assert_eq!(
        app.dify.conversation_ids(APP_KEY, &default_user()).last(),
        Some(&now)
    );
}

#[tokio::test]
async fn open_webui_background_tasks_stay_out_of_the_conversation() {
    let (app, table) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("A title"));
    send(
        &app,
        turn(MODEL, &[("user", "Plan my trip")]),
        Some("c-task"),
        None,
    )
    .await;
    let key = chat_key(&tenant(), MODEL, &default_user(), "c-task");
    let before = stored(&table, &key).await.unwrap();
    let task = "### Task:\nGenerate a concise, 3-5 word title for the chat history.\n<chat_history>\nUSER: Plan my trip\n</chat_history>";
    send(&app, turn(MODEL, &[("user", task)]), Some("c-task"), None).await;
    send(
        &app,
        turn(
            MODEL,
            &[
                ("user", "Plan my trip"),
                ("assistant", "A title"),
                ("user", task),
            ],
        ),
        Some("c-task"),
        None,
    )
    .await;

    let reqs = app.dify.requests();
    assert_eq!(reqs[1].conversation_id(), None);
    assert_eq!(reqs[2].conversation_id(), None);
    assert_eq!(stored(&table, &key).await, Some(before.clone()));
    send(
        &app,
        turn(
            MODEL,
            &[
                ("user", "Plan my trip"),
                ("assistant", "A title"),
                ("user", "Go on"),
            ],
        ),
        Some("c-task"),
        None,
    )
    .await;
    assert_eq!(
        app.dify.requests()[3].conversation_id(),
        Some(before.as_str())
    );
}

#[tokio::test]
async fn mappings_carry_a_ttl_that_is_refreshed_on_use() {
    let (app, table) = spawn_app_dynamo(&[("CONVERSATION_TTL_DAYS", "3")]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("ok"));
    send(&app, turn(MODEL, &[("user", "a")]), Some("c-ttl"), None).await;
    let moto = Moto::shared().await;
    let key = chat_key(&tenant(), MODEL, &default_user(), "c-ttl");
    let item = moto.get_item_raw(&table, &key).await.unwrap();
    let now = opendify::unix_now();
    let expires = number(&item, "expires_at");
    assert!(
        (expires - (now + 3 * 86_400)).abs() <= 60,
        "expires_at {expires} vs now {now}"
    );
    assert!(
        !item.contains_key("query") && item.len() == 6,
        "only ids, digests and times: {item:?}"
    );
    for digest in ["conversation_state", "system_digest"] {
        let d = item[digest].as_s().unwrap();
        assert!(
            d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
            "{item:?}"
        );
    }

    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(
        &app,
        turn(MODEL, &[("user", "a"), ("assistant", "ok"), ("user", "b")]),
        Some("c-ttl"),
        None,
    )
    .await;
    let refreshed = moto.get_item_raw(&table, &key).await.unwrap();
    assert!(number(&refreshed, "expires_at") > expires, "{refreshed:?}");
    assert!(number(&refreshed, "updated_at") > number(&item, "updated_at"));
}

#[tokio::test]
async fn the_turn_after_an_abandoned_stream_starts_anew_with_what_the_user_saw() {
    // Dify keeps part of an abandoned answer, the client another part: the conversation
    // no longer holds what the user sees, so the next turn folds the visible history.
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify.set(
        APP_KEY,
        Scenario::endless(" tok", Duration::from_millis(50), "task-abandon"),
    );
    let mut body = streaming("long story");
    body["metadata"] = json!({"chat_id": "c-abandon"});
    let r = app.post_chat(&body).send().await.unwrap();
    drop(r);
    app.dify
        .wait_for_stop(Duration::from_secs(10))
        .await
        .expect("stopped");

    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("fine"));
    let mut next = turn(
        MODEL,
        &[
            ("user", "long story"),
            ("assistant", "tok tok"),
            ("user", "go on"),
        ],
    );
    next["metadata"] = json!({"chat_id": "c-abandon"});
    assert_eq!(send(&app, next, None, None).await, "fine");
    let last = app.dify.requests().pop().unwrap();
    assert_eq!(last.conversation_id(), None);
    assert_eq!(
        last.query(),
        Some("User: long story\n\nAssistant: tok tok\n\nUser: go on")
    );
}

/// Sends `body` with proxy key `key` (and the chat id, if any); returns the answer.
async fn send_as(app: &TestApp, key: &str, body: &Value, chat_id: Option<&str>) -> String {
    let mut req = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(key)
        .json(body);
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

#[tokio::test]
async fn two_proxy_keys_never_share_a_conversation() {
    // Same model, no `user` (both are Dify's default user), same chat id, same history:
    // only the proxy key differs. Key B must not continue key A's Dify conversation.
    let (app, _) = spawn_app_dynamo(&[]).await;
    app.dify
        .set(APP_KEY, Scenario::answer_with_conversations("Noted, Ada."));
    let first = turn(MODEL, &[("user", "My secret word is quartz.")]);
    for chat_id in [Some("shared-chat"), None] {
        let answer = send_as(&app, PROXY_KEY, &first, chat_id).await;
        let second = turn(
            MODEL,
            &[
                ("user", "My secret word is quartz."),
                ("assistant", &answer),
                ("user", "What is my secret word?"),
            ],
        );
        send_as(&app, "sk-another-key", &second, chat_id).await;
        // Key A itself still continues its own conversation.
        send_as(&app, PROXY_KEY, &second, chat_id).await;
    }
    let reqs = app.dify.requests();
    assert_eq!(reqs.len(), 6);
    for (i, chat) in [(0, "chat id"), (3, "history digest")] {
        assert_eq!(reqs[i].conversation_id(), None);
        let a = app.dify.conversation_ids(APP_KEY, &default_user());
        assert_eq!(
            reqs[i + 1].conversation_id(),
            None,
            "key B continued key A's conversation by {chat}: {a:?}"
        );
        assert!(
            reqs[i + 1].query().unwrap().contains("quartz"),
            "key B's new conversation gets its own history folded"
        );
        assert!(
            reqs[i + 2].conversation_id().is_some(),
            "key A lost its conversation ({chat})"
        );
        assert_eq!(reqs[i + 2].query(), Some("What is my secret word?"));
    }
}

#[tokio::test]
async fn a_file_turn_in_open_webuis_rag_shape_stays_in_the_conversation() {
    // Open WebUI puts a turn with an attached file (or knowledge, or web results) into its
    // RAG template, which starts like a background task. It is a user turn: it must reach
    // the chat's Dify conversation, file text included, and keep the mapping.
    let (app, table) = spawn_app_dynamo(&[("CONVERSATION_HISTORY_MATCHING", "false")]).await;
    app.dify.set(
        APP_KEY,
        Scenario::answer_with_conversations("Revenue grew 12%."),
    );
    send(
        &app,
        turn(MODEL, &[("user", "Hello there")]),
        Some("c-rag"),
        None,
    )
    .await;
    let key = chat_key(&tenant(), MODEL, &default_user(), "c-rag");
    let conversation = stored(&table, &key).await.unwrap();
    let rag = "### Task:\nAnswer the question from the sources below, citing [id] where a source has one.\n\n<context>\n<source id=\"1\">Quarterly report: revenue rose 12% on the year.</source>\n</context>\n\nWhat was the revenue growth?";
    send(
        &app,
        turn(
            MODEL,
            &[
                ("user", "Hello there"),
                ("assistant", "Revenue grew 12%."),
                ("user", rag),
            ],
        ),
        Some("c-rag"),
        None,
    )
    .await;
    let reqs = app.dify.requests();
    assert_eq!(
        reqs[1].conversation_id(),
        Some(conversation.as_str()),
        "the file turn went to a throwaway conversation"
    );
    assert!(reqs[1].query().unwrap().contains("revenue rose 12%"));
    assert_eq!(stored(&table, &key).await, Some(conversation));
}

#[tokio::test]
async fn background_tasks_leave_no_conversation_behind_in_dify() {
    let app = spawn_app().await;
    app.dify.set(
        APP_KEY,
        Scenario::answer_with_conversations("Trip planning"),
    );
    send(
        &app,
        turn(MODEL, &[("user", "Plan my trip")]),
        Some("c-bg"),
        None,
    )
    .await;
    let task = "### Task:\nName this chat in a few words.\n<chat_history>\nUSER: Plan my trip\n</chat_history>";
    send(&app, turn(MODEL, &[("user", task)]), Some("c-bg"), None).await;
    let mut streamed = turn(MODEL, &[("user", task)]);
    streamed["stream"] = json!(true);
    let r = app.stream(streamed).await;
    assert!(r.done());

    let reqs = app.dify.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].body.get("auto_generate_name"), None);
    for task_request in &reqs[1..] {
        // No title generation in Dify for a throwaway conversation.
        assert_eq!(task_request.body["auto_generate_name"], json!(false));
        assert_eq!(task_request.conversation_id(), None);
    }
    // Both task conversations were deleted once answered (the stream's before its body
    // ended), by the same key and user; the fake forgets a conversation only when its
    // owner deletes it, so one conversation (the user's) is left of the three.
    let deleted = app.dify.deletions();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    for d in &deleted {
        assert_eq!(
            (d.key.as_str(), d.user.as_str()),
            (APP_KEY, default_user().as_str())
        );
    }
    assert_ne!(deleted[0].conversation_id, deleted[1].conversation_id);
    let left = app.dify.conversation_ids(APP_KEY, &default_user());
    assert_eq!(left.len(), 1, "task conversations left in Dify: {left:?}");
    assert!(deleted.iter().all(|d| d.conversation_id != left[0]));
}
