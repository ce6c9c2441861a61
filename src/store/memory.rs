//! A store in process memory, for local runs without a table. Same semantics as
//! [`super::DynamoStore`]; lost on restart and not shared between instances.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
// tokio's Instant so tests can run the expiry on a paused clock; same as std's otherwise.
use std::time::Duration;
use tokio::time::Instant;

use super::{BoxFuture, Claim, ConversationStore, Mapping, PutOutcome, StoreError};

/// Below this many entries no sweep runs; above it, one runs each time the map doubles,
/// so expired entries cost amortised O(1) per write. Only expired entries are swept: live
/// mappings grow with the chats seen within one TTL (fine for a local run; Lambda uses
/// DynamoDB).
const MIN_SWEEP: usize = 1024;

/// TTLs are clamped to this (a century) so `Instant` arithmetic cannot overflow.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub struct MemoryStore {
    ttl: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    sweep_at: usize,
}

struct Entry {
    conversation_id: String,
    expires_at: Instant,
    /// What the conversation holds (or the token of the request continuing it), and the
    /// digest of its system messages; None for mappings written without them.
    state: Option<String>,
    system: Option<String>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

impl MemoryStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(MAX_TTL),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// Nothing panics while the lock is held, but a poisoned map is still a valid map.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, conversation_id: &str, now: Instant) -> Entry {
        Entry {
            conversation_id: conversation_id.to_string(),
            expires_at: now.checked_add(self.ttl).unwrap_or(now),
            state: None,
            system: None,
        }
    }

    fn claim_now(&self, key: &str, expected: &str, token: &str) -> Claim {
        let now = Instant::now();
        let fresh = now.checked_add(self.ttl).unwrap_or(now);
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(key).filter(|e| e.live(now)) else {
            return Claim::Absent;
        };
        if e.state.as_deref() != Some(expected) {
            return Claim::Diverged;
        }
        e.state = Some(token.to_string());
        e.expires_at = fresh;
        Claim::Continue {
            conversation_id: e.conversation_id.clone(),
            system: e.system.clone(),
        }
    }

    fn settle_now(&self, key: &str, mapping: Mapping<'_>, claimed: Option<&str>) -> bool {
        let now = Instant::now();
        let mut entry = self.entry(mapping.conversation_id, now);
        entry.state = Some(mapping.state.to_string());
        entry.system = Some(mapping.system.to_string());
        let mut inner = self.lock();
        if let Some(token) = claimed
            && inner
                .entries
                .get(key)
                .is_none_or(|e| e.state.as_deref() != Some(token))
        {
            return false;
        }
        inner.insert(key, entry, now);
        true
    }

    fn get_now(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .entries
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.conversation_id.clone())
    }

    fn put_new_now(&self, key: &str, conversation_id: &str) -> PutOutcome {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(existing) = inner.entries.get(key).filter(|e| e.live(now)) {
            return PutOutcome::Exists(existing.conversation_id.clone());
        }
        let entry = self.entry(conversation_id, now);
        inner.insert(key, entry, now);
        PutOutcome::Stored
    }

    fn put_now(&self, key: &str, conversation_id: &str) {
        let now = Instant::now();
        let entry = self.entry(conversation_id, now);
        self.lock().insert(key, entry, now);
    }

    fn touch_now(&self, key: &str, conversation_id: &str) {
        let now = Instant::now();
        let fresh = self.entry(conversation_id, now);
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get_mut(key)
            && e.live(now)
            && e.conversation_id == conversation_id
        {
            e.expires_at = fresh.expires_at;
        }
    }

    fn delete_now(&self, key: &str, conversation_id: &str) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(key)
            .is_some_and(|e| e.conversation_id == conversation_id)
        {
            inner.entries.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Inner {
    fn insert(&mut self, key: &str, entry: Entry, now: Instant) {
        self.entries.insert(key.to_string(), entry);
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|_, e| e.live(now));
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
        }
    }
}

impl ConversationStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { Ok(self.get_now(key)) })
    }

    fn put_new<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move { Ok(self.put_new_now(key, conversation_id)) })
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        expected: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move { Ok(self.claim_now(key, expected, token)) })
    }

    fn settle<'a>(
        &'a self,
        key: &'a str,
        mapping: Mapping<'a>,
        claimed: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.settle_now(key, mapping, claimed)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.put_now(key, conversation_id);
            Ok(())
        })
    }

    fn touch<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.touch_now(key, conversation_id);
            Ok(())
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.delete_now(key, conversation_id);
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "in-process memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    // The expiry tests run on tokio's paused clock (the store reads tokio's Instant):
    // `advance` moves time exactly, so a loaded machine cannot stretch a wait past a TTL.
    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[test]
    fn get_put_round_trip() {
        let s = MemoryStore::new(HOUR);
        assert_eq!(s.get_now("k"), None);
        s.put_now("k", "c1");
        assert_eq!(s.get_now("k").as_deref(), Some("c1"));
        s.put_now("k", "c2");
        assert_eq!(s.get_now("k").as_deref(), Some("c2"));
    }

    #[test]
    fn put_new_first_wins() {
        let s = MemoryStore::new(HOUR);
        assert_eq!(s.put_new_now("k", "a"), PutOutcome::Stored);
        assert_eq!(s.put_new_now("k", "b"), PutOutcome::Exists("a".into()));
        assert_eq!(s.get_now("k").as_deref(), Some("a"));
    }

    #[test]
    fn put_new_race_has_one_winner() {
        let s = std::sync::Arc::new(MemoryStore::new(HOUR));
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || s.put_new_now("k", &format!("c{i}")))
            })
            .collect();
        let outcomes: Vec<PutOutcome> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        assert_eq!(outcomes.len(), 10);
        let winner = s.get_now("k").expect("a winner is stored");
        let stored = outcomes
            .iter()
            .filter(|o| **o == PutOutcome::Stored)
            .count();
        assert_eq!(stored, 1);
        for o in &outcomes {
            if let PutOutcome::Exists(id) = o {
                assert_eq!(*id, winner);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entry_is_absent_and_replaceable() {
        let s = MemoryStore::new(Duration::from_millis(30));
        s.put_now("k", "old");
        advance(Duration::from_millis(60)).await;
        assert_eq!(s.get_now("k"), None);
        assert_eq!(s.put_new_now("k", "new"), PutOutcome::Stored);
        assert_eq!(s.get_now("k").as_deref(), Some("new"));
    }

    #[tokio::test(start_paused = true)]
    async fn touch_extends_only_the_matching_live_entry() {
        let s = MemoryStore::new(Duration::from_millis(200));
        s.put_now("k", "c");
        advance(Duration::from_millis(120)).await;
        s.touch_now("k", "other");
        s.touch_now("k", "c");
        advance(Duration::from_millis(120)).await;
        // 240 ms after the write, alive only thanks to the touch at 120 ms.
        assert_eq!(s.get_now("k").as_deref(), Some("c"));
        s.touch_now("k", "other");
        advance(Duration::from_millis(120)).await;
        assert_eq!(s.get_now("k"), None, "a mismatched touch must not extend");
    }

    #[tokio::test(start_paused = true)]
    async fn touch_does_not_resurrect() {
        let s = MemoryStore::new(Duration::from_millis(30));
        s.touch_now("missing", "c");
        assert_eq!(s.get_now("missing"), None);
        s.put_now("k", "c");
        advance(Duration::from_millis(60)).await;
        s.touch_now("k", "c");
        assert_eq!(s.get_now("k"), None);
    }

    #[test]
    fn delete_only_the_matching_entry() {
        let s = MemoryStore::new(HOUR);
        s.put_now("k", "newer");
        s.delete_now("k", "older");
        assert_eq!(s.get_now("k").as_deref(), Some("newer"));
        s.delete_now("k", "newer");
        assert_eq!(s.get_now("k"), None);
        s.delete_now("k", "newer");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept() {
        let s = MemoryStore::new(Duration::from_millis(1));
        for i in 0..MIN_SWEEP {
            s.put_now(&format!("k{i}"), "c");
        }
        advance(Duration::from_millis(5)).await;
        for i in 0..MIN_SWEEP {
            s.put_now(&format!("j{i}"), "c");
        }
        assert!(s.len() <= MIN_SWEEP, "len {}", s.len());
    }

    #[test]
    fn huge_ttl_does_not_panic() {
        let s = MemoryStore::new(Duration::MAX);
        s.put_now("k", "c");
        assert_eq!(s.get_now("k").as_deref(), Some("c"));
    }

    #[test]
    fn describes_itself() {
        assert_eq!(MemoryStore::new(HOUR).describe(), "in-process memory");
    }
}
