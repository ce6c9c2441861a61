//! The store keys for a chat id or for the conversation so far, and the requests that must
//! stay out of any conversation. Pure functions; the store itself is I/O in `crate::store`.
//!
//! Keys are SHA-256 digests, so the table holds no user id, chat id or message text. Every
//! key starts from the caller's tenant (a digest of its proxy key): callers with different
//! keys never reach each other's conversations, whatever user, chat id or history they send.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::openai::Role;

/// Open WebUI's background tasks (title, tags, follow-ups, search queries, autocomplete,
/// image prompts) start their prompt with this and quote the chat in a `<chat_history>`
/// block. They reuse the chat id but must not become turns of the user's conversation.
/// Its RAG template (a user turn with a file, a knowledge base or web results) starts with
/// the same heading but quotes no chat history: that is a real turn.
const TASK_PREFIX: &str = "### Task:";
const HISTORY_OPEN: &str = "<chat_history>";
const HISTORY_CLOSE: &str = "</chat_history>";

/// What identifies the conversation a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thread {
    /// An Open WebUI background task: no conversation, nothing stored.
    Detached,
    /// Keyed by the client's chat id.
    Chat { key: String },
    /// Keyed by the conversation so far (clients that send no chat id). `lookup` is None
    /// for a first turn (no earlier messages).
    History { lookup: Option<String> },
    /// No chat id and history matching switched off: every request starts anew.
    Untracked,
    /// Continues a stored response (Responses API `previous_response_id`).
    Response { key: String },
}

pub fn is_background_task(message: &str) -> bool {
    let message = message.trim_start();
    message.starts_with(TASK_PREFIX)
        && message
            .find(HISTORY_OPEN)
            .is_some_and(|open| message[open..].contains(HISTORY_CLOSE))
}

/// Decides how a request is threaded. `identity` is the request's [`identity`]: two
/// requests that differ in it never share a conversation, whatever their history.
#[allow(clippy::too_many_arguments)]
pub fn thread_for(
    tenant: &str,
    model: &str,
    user: &str,
    identity: &str,
    chat_id: Option<&str>,
    history: &[(Role, String)],
    message: &str,
    history_matching: bool,
) -> Thread {
    if is_background_task(message) {
        return Thread::Detached;
    }
    match chat_id.map(str::trim).filter(|c| !c.is_empty()) {
        Some(chat_id) => Thread::Chat {
            key: chat_key_for(tenant, model, user, identity, chat_id),
        },
        None if history_matching => Thread::History {
            lookup: history.iter().any(|(r, _)| !is_system(*r)).then(|| {
                let messages = history.iter().map(|(r, t)| (*r, t.as_str()));
                history_key(tenant, model, user, identity, messages)
            }),
        },
        None => Thread::Untracked,
    }
}

/// What a conversation is matched on besides its visible history and the key, model and
/// end user: the system and developer messages (as one role, whitespace-normalised,
/// without a retrieval block a client adds per turn, see [`system_identity_text`]). Empty
/// when the request has none, so such chats keep the keys they had.
///
/// App inputs are not part of it: Dify takes them on a conversation's first turn only, and
/// clients that follow Dify send them only then, so a later turn without them must still
/// continue (a required input would otherwise refuse it).
pub fn identity<'a>(messages: impl Iterator<Item = (Role, &'a str)>) -> String {
    let mut h = Sha256::new();
    let mut any = false;
    for (_, text) in messages.filter(|(r, _)| is_system(*r)) {
        let own = system_identity_text(text);
        any |= own.split_whitespace().next().is_some();
        absorb_transcript(&mut h, std::iter::once((Role::System, own.as_ref())));
    }
    if any {
        hex(&h.finalize())
    } else {
        String::new()
    }
}

/// A system message as it identifies a chat: without a retrieval block (`<context>` …
/// `</context>`, from the `### Task:` heading before it if there is one, through a
/// `<user_query>` block after it), which a client such as Open WebUI with
/// `RAG_SYSTEM_CONTEXT` adds to the system message of the turns that have files. The
/// block still reaches Dify (a changed system message is resent); it only does not make
/// the chat another chat.
pub fn system_identity_text(text: &str) -> Cow<'_, str> {
    const CLOSE: &str = "</context>";
    const QUERY_OPEN: &str = "<user_query>";
    const QUERY_CLOSE: &str = "</user_query>";
    let Some(open) = text.find("<context>") else {
        return Cow::Borrowed(text);
    };
    let Some(mut end) = text[open..].find(CLOSE).map(|c| open + c + CLOSE.len()) else {
        return Cow::Borrowed(text);
    };
    if let Some(q) = text[end..].trim_start().strip_prefix(QUERY_OPEN)
        && let Some(q_end) = q.find(QUERY_CLOSE)
    {
        end = text.len() - q.len() + q_end + QUERY_CLOSE.len();
    }
    // The heading starts the block when it starts a line.
    let start = match text[..open].rfind(TASK_PREFIX) {
        Some(task) if text[..task].trim_end_matches([' ', '\t']).ends_with('\n') || task == 0 => {
            task
        }
        _ => open,
    };
    Cow::Owned(format!("{} {}", &text[..start], &text[end..]))
}

/// The user's own words in a message that a client wrapped: Open WebUI sends a turn with
/// files, a knowledge base or web results in its RAG template (the question inside
/// `<user_query>`), and in every later request sends that turn as it stored it, with an
/// `<attached_files>` block before the question. Both forms are the same turn.
fn own_words(role: Role, text: &str) -> &str {
    if role != Role::User {
        return text;
    }
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix("<attached_files>")
        && let Some(end) = rest.find("</attached_files>")
    {
        return &rest[end + "</attached_files>".len()..];
    }
    if t.starts_with(TASK_PREFIX)
        && let Some(close) = t.find("</context>")
        && let Some(q) = t[close..].find("<user_query>")
    {
        let q = &t[close + q + "<user_query>".len()..];
        if let Some(end) = q.find("</user_query>") {
            return &q[..end];
        }
    }
    text
}

/// Key for (tenant, model, user, chat id). Each part is length-prefixed so no two
/// different tuples can produce the same input.
pub fn chat_key(tenant: &str, model: &str, user: &str, chat_id: &str) -> String {
    chat_key_for(tenant, model, user, "", chat_id)
}

/// [`chat_key`] for a chat with an [`identity`]: a chat id sent with another system prompt
/// is another chat.
pub fn chat_key_for(
    tenant: &str,
    model: &str,
    user: &str,
    identity: &str,
    chat_id: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [tenant, model, user, chat_id] {
        absorb(&mut h, part);
    }
    if !identity.is_empty() {
        absorb(&mut h, identity);
    }
    format!("chat#{}", hex(&h.finalize()))
}

/// Key for a Responses API response id, scoped to the proxy key (`tenant`), model and
/// user that created it: any other caller computes another key, so the id is unknown to it.
pub fn response_key(tenant: &str, model: &str, user: &str, response_id: &str) -> String {
    let mut h = Sha256::new();
    // "v2": mappings are claimed while a request continues them (state `open` between
    // requests); those written before had no state, and would read as always taken.
    for part in ["v2", tenant, model, user, response_id] {
        absorb(&mut h, part);
    }
    format!("resp#{}", hex(&h.finalize()))
}

/// Key for (tenant, model, user, messages), for clients that send no chat id: the
/// conversation so far, as [`state_digest`] sees it.
pub fn history_key<'a>(
    tenant: &str,
    model: &str,
    user: &str,
    identity: &str,
    messages: impl Iterator<Item = (Role, &'a str)>,
) -> String {
    let mut h = Sha256::new();
    absorb(&mut h, tenant);
    absorb(&mut h, model);
    absorb(&mut h, user);
    if !identity.is_empty() {
        absorb(&mut h, identity);
    }
    absorb_transcript(&mut h, messages.filter(|(r, _)| !is_system(*r)));
    format!("hist#{}", hex(&h.finalize()))
}

/// What a Dify conversation holds, as the client shows it: the digest of its user,
/// assistant and tool messages. A request continues a conversation only when its history
/// (all but its last user message) has the digest the conversation has now.
///
/// Normalised so that cosmetic differences a client introduces when it sends the history
/// back do not count: whitespace runs count as one space, leading and trailing whitespace
/// is ignored, and empty messages are skipped (as they are when folding). System and
/// developer messages are not part of it: they are tracked apart ([`system_digest`]),
/// because clients change them between turns (documents, search results) without the
/// conversation having diverged.
pub fn state_digest<'a>(messages: impl Iterator<Item = (Role, &'a str)>) -> String {
    let mut h = Sha256::new();
    absorb_transcript(&mut h, messages.filter(|(r, _)| !is_system(*r)));
    hex(&h.finalize())
}

/// The digest of the request's system and developer messages (one role: Open WebUI
/// renames one to the other per model). When it differs from what the conversation was
/// last sent, the new system text goes to Dify with the query.
pub fn system_digest<'a>(messages: impl Iterator<Item = (Role, &'a str)>) -> String {
    let mut h = Sha256::new();
    absorb_transcript(
        &mut h,
        messages
            .filter(|(r, _)| is_system(*r))
            .map(|(_, t)| (Role::System, t)),
    );
    hex(&h.finalize())
}

fn is_system(role: Role) -> bool {
    matches!(role, Role::System | Role::Developer)
}

fn absorb_transcript<'a>(h: &mut Sha256, messages: impl Iterator<Item = (Role, &'a str)>) {
    for (role, text) in messages {
        let text = own_words(role, text);
        // The normalised text is hashed word by word, never built: an answer can be large.
        let words = || text.split_whitespace();
        let (chars, count) = words().fold((0usize, 0usize), |(l, n), w| (l + w.len(), n + 1));
        let len = chars + count.saturating_sub(1);
        if len == 0 {
            continue;
        }
        absorb(h, role.label());
        h.update((len as u64).to_le_bytes());
        for (i, word) in words().enumerate() {
            if i > 0 {
                h.update(b" ");
            }
            h.update(word.as_bytes());
        }
    }
}

fn absorb(h: &mut Sha256, part: &str) {
    h.update((part.len() as u64).to_le_bytes());
    h.update(part.as_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(messages: &[(Role, &str)]) -> String {
        history_key("t", "m", "u", "", messages.iter().copied())
    }

    #[test]
    fn response_keys_separate_tenant_model_user_and_id() {
        let k = response_key("t", "m", "u", "resp_1");
        assert!(k.starts_with("resp#") && k.len() == 5 + 64);
        assert_ne!(k, response_key("t2", "m", "u", "resp_1"));
        assert_ne!(k, response_key("t", "m2", "u", "resp_1"));
        assert_ne!(k, response_key("t", "m", "u2", "resp_1"));
        assert_ne!(k, response_key("t", "m", "u", "resp_2"));
        assert!(!k.contains("resp_1"));
    }

    #[test]
    fn chat_keys_separate_model_user_and_chat() {
        let k = chat_key("t", "m", "u", "c");
        assert!(k.starts_with("chat#") && k.len() == 5 + 64);
        assert_ne!(k, chat_key("t2", "m", "u", "c"));
        assert_ne!(k, chat_key("t", "m2", "u", "c"));
        assert_ne!(k, chat_key("t", "m", "u2", "c"));
        assert_ne!(k, chat_key("t", "m", "u", "c2"));
        // Length prefixes: shifting a boundary changes the key.
        assert_ne!(chat_key("t", "ab", "c", "d"), chat_key("t", "a", "bc", "d"));
    }

    /// The digest as first defined (the normalised text built, then absorbed): hashing in
    /// place must give the same keys, or every stored mapping would stop matching.
    fn reference_history_key(
        tenant: &str,
        model: &str,
        user: &str,
        messages: &[(Role, &str)],
    ) -> String {
        let mut h = Sha256::new();
        absorb(&mut h, tenant);
        absorb(&mut h, model);
        absorb(&mut h, user);
        for (role, text) in messages {
            let normalised = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if normalised.is_empty() || matches!(role, Role::System | Role::Developer) {
                continue;
            }
            absorb(&mut h, role.label());
            absorb(&mut h, &normalised);
        }
        format!("hist#{}", hex(&h.finalize()))
    }

    #[test]
    fn history_keys_match_their_definition() {
        let cases: &[&[(Role, &str)]] = &[
            &[(Role::User, "Hi")],
            &[
                (Role::Developer, " Be  brief.\n"),
                (Role::User, "a\tb  c"),
                (Role::Assistant, ""),
            ],
            &[(Role::User, "   "), (Role::Assistant, "Grüße, 世界 !")],
        ];
        for messages in cases {
            assert_eq!(
                history_key("t", "m", "u", "", messages.iter().copied()),
                reference_history_key("t", "m", "u", messages),
                "{messages:?}"
            );
        }
    }

    #[test]
    fn keys_hold_digests_not_ids_or_text() {
        // The table must not hold who chatted or what was said: only a fixed prefix and
        // 64 hex digits, none of the ids or words that went in.
        let chat = chat_key("t", "my-app", "alice@example.com", "chat-7f3-quartz");
        let hist = history_key(
            "t",
            "my-app",
            "alice@example.com",
            "",
            [(Role::User, "quartz pyramid")].into_iter(),
        );
        for (key, prefix) in [(chat, "chat#"), (hist, "hist#")] {
            let digest = key.strip_prefix(prefix).unwrap_or_else(|| panic!("{key}"));
            assert!(
                digest.len() == 64
                    && digest
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{key}"
            );
            for word in ["alice", "quartz", "pyramid", "my-app"] {
                assert!(!key.contains(word), "{key} contains {word}");
            }
        }
    }

    #[test]
    fn states_follow_the_visible_turns_and_systems_are_apart() {
        let s = |m: &[(Role, &str)]| state_digest(m.iter().copied());
        let sys = |m: &[(Role, &str)]| system_digest(m.iter().copied());
        let turns = [(Role::User, "Hi"), (Role::Assistant, "Hello!")];
        let with_system = [
            (Role::System, "Docs: v1"),
            (Role::User, "Hi "),
            (Role::Assistant, "Hello!"),
        ];
        // A changed system message is not a diverged conversation...
        assert_eq!(s(&turns), s(&with_system));
        // ...but it is a change to send.
        assert_ne!(sys(&turns), sys(&with_system));
        assert_eq!(
            sys(&with_system),
            sys(&[(Role::Developer, " Docs:  v1"), (Role::User, "other")])
        );
        // A regenerated or edited answer, a dropped turn: another state.
        assert_ne!(
            s(&turns),
            s(&[(Role::User, "Hi"), (Role::Assistant, "Hey!")])
        );
        assert_ne!(s(&turns), s(&[(Role::User, "Hi")]));
        assert_ne!(s(&turns), s(&[]));
        // Roles count: the same words said by the other side are another conversation.
        assert_ne!(
            s(&turns),
            s(&[(Role::Assistant, "Hi"), (Role::User, "Hello!")])
        );
        // The state is the history key's transcript, without tenant, model or user.
        assert_eq!(s(&[]).len(), 64);
    }

    #[test]
    fn history_keys_ignore_cosmetic_whitespace_and_system_messages() {
        let a = h(&[
            (Role::System, "Be brief."),
            (Role::User, "Hi  there"),
            (Role::Assistant, "Hello!\n"),
        ]);
        assert_eq!(
            a,
            h(&[
                (Role::Developer, " Be brief."),
                (Role::User, "Hi there"),
                (Role::Assistant, "Hello!")
            ])
        );
        assert_ne!(
            a,
            h(&[
                (Role::System, "Be brief."),
                (Role::User, "Hi there"),
                (Role::Assistant, "Hello?")
            ])
        );
        assert_ne!(
            a,
            h(&[
                (Role::User, "Be brief."),
                (Role::User, "Hi there"),
                (Role::Assistant, "Hello!")
            ])
        );
        assert_eq!(
            h(&[(Role::User, "x"), (Role::Assistant, "  ")]),
            h(&[(Role::User, "x")])
        );
        assert_ne!(
            history_key("t", "m", "u", "", std::iter::once((Role::User, "x"))),
            history_key("t", "m", "v", "", std::iter::once((Role::User, "x")))
        );
        // Another proxy key never reaches the same mapping.
        assert_ne!(
            history_key("t", "m", "u", "", std::iter::once((Role::User, "x"))),
            history_key("t2", "m", "u", "", std::iter::once((Role::User, "x")))
        );
    }

    #[test]
    fn background_tasks_are_told_from_rag_turns() {
        // Shapes of Open WebUI's prompts, in our own words: a task quotes the chat in a
        // <chat_history> block; a RAG turn carries sources and the user's question.
        let title = "### Task:\nName this chat in a few words.\n### Chat History:\n<chat_history>\nUSER: Plan my trip\n</chat_history>";
        let follow_ups = "  ### Task:\nSuggest follow-up questions.\n<chat_history>\nUSER: a\nASSISTANT: b\n</chat_history>\n";
        let rag = "### Task:\nAnswer the question from the sources below, citing [id] where a source has one.\n\n<context>\n<source id=\"1\">Revenue rose 12%.</source>\n</context>\n\nWhat was the growth?";
        let rag_with_query = "### Task:\nAnswer using the context.\n<context>\ntext of the file\n</context>\n<user_query>\nSummarise it\n</user_query>";
        assert!(is_background_task(title));
        assert!(is_background_task(follow_ups));
        assert!(!is_background_task(rag));
        assert!(!is_background_task(rag_with_query));
        // Only an opened and closed history block counts, and only under the heading.
        assert!(!is_background_task(
            "### Task:\nsee </chat_history> then <chat_history>"
        ));
        assert!(!is_background_task(
            "Please explain <chat_history>x</chat_history>"
        ));
    }

    #[test]
    fn threading_decisions() {
        let history = vec![
            (Role::User, "a".to_string()),
            (Role::Assistant, "b".to_string()),
        ];
        assert_eq!(
            thread_for(
                "t",
                "m",
                "u",
                "",
                Some("c1"),
                &history,
                "### Task:\nGenerate a title\n<chat_history>\nUSER: a\n</chat_history>",
                true
            ),
            Thread::Detached
        );
        assert!(
            matches!(thread_for("t", "m", "u", "", Some(" c1 "), &history, "next", true), Thread::Chat { key } if key == chat_key("t", "m", "u", "c1"))
        );
        assert!(matches!(
            thread_for("t", "m", "u", "", Some(""), &[], "first", true),
            Thread::History { lookup: None }
        ));
        assert!(matches!(
            thread_for("t", "m", "u", "", None, &history, "next", true),
            Thread::History { lookup: Some(_) }
        ));
        assert_eq!(
            thread_for("t", "m", "u", "", None, &history, "next", false),
            Thread::Untracked
        );
    }

    #[test]
    fn identity_holds_system_prompts_but_not_retrieval_blocks() {
        let id = |system: &str| identity([(Role::System, system), (Role::User, "Hi")].into_iter());
        // Nothing the client hides: the keys chats had before.
        assert_eq!(identity([(Role::User, "Hi")].into_iter()), "");
        assert_eq!(
            chat_key_for("t", "m", "u", "", "c"),
            chat_key("t", "m", "u", "c")
        );
        let alpha = id("You are Alpha.");
        assert_eq!(alpha.len(), 64);
        assert_ne!(alpha, id("You are Beta."));
        // Cosmetic whitespace and the developer role are the same prompt.
        assert_eq!(alpha, id(" You  are Alpha.\n"));
        assert_eq!(
            alpha,
            identity([(Role::Developer, "You are Alpha."), (Role::User, "x")].into_iter())
        );
        // A retrieval block added to the prompt for one turn is not another chat...
        let rag = "You are Alpha.\n### Task:\nAnswer from the context.\n<context>\n<source id=\"1\">Revenue rose.</source>\n</context>\n\n<user_query>\nGrowth?\n</user_query>";
        assert_eq!(alpha, id(rag));
        assert_eq!(alpha, id("You are Alpha.\n<context>x</context>"));
        assert_eq!(alpha, id("<context>x</context>\nYou are Alpha."));
        // ...but the prompt around it still counts, and an unclosed block is prompt text.
        assert_ne!(alpha, id("You are Beta.\n<context>x</context>"));
        assert_ne!(alpha, id("You are Alpha.\n<context>x"));
        // Distinct from the empty identity, and length-prefixed in the keys.
        assert_ne!(
            chat_key_for("t", "m", "u", &alpha, "c"),
            chat_key("t", "m", "u", "c")
        );
    }

    #[test]
    fn open_webuis_file_turn_and_its_stored_form_digest_alike() {
        let s = |m: &[(Role, &str)]| state_digest(m.iter().copied());
        let plain = [
            (Role::User, "What does the file say?"),
            (Role::Assistant, "Hi."),
        ];
        let rag = "### Task:\nRespond using the context.\n<context>\n<source id=\"1\">hello</source>\n</context>\n\n<user_query>\nWhat does the file say?\n</user_query>";
        let stored = "<attached_files>\n<file type=\"file\" id=\"0f2c\" name=\"notes.txt\"/>\n</attached_files>\n\nWhat does the file say?";
        assert_eq!(s(&plain), s(&[(Role::User, rag), (Role::Assistant, "Hi.")]));
        assert_eq!(
            s(&plain),
            s(&[(Role::User, stored), (Role::Assistant, "Hi.")])
        );
        // Only the user's turns are unwrapped, and only whole wrappers.
        assert_ne!(
            s(&plain),
            s(&[(Role::Assistant, stored), (Role::Assistant, "Hi.")])
        );
        assert_ne!(
            s(&plain),
            s(&[
                (Role::User, "<attached_files> What does the file say?"),
                (Role::Assistant, "Hi.")
            ])
        );
    }
}
