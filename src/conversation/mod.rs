//! Which Dify conversation a request continues: the store keys and the rules (pure, in
//! `keys`), and one request's reads and writes of the store (`link`).

pub mod keys;
pub mod link;

pub use keys::{Thread, chat_key, history_key, is_background_task, thread_for};
pub use link::ConversationLink;
