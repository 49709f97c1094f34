//! The presence registry within one process.

use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, PresenceEntry, Timestamp, UserId};
use relay_ports::{Clock, Held, InstanceId, PresenceError, PresenceRegistry};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// How often, at most, an upsert also sweeps expired entries out of
/// documents nobody lists any more.
const SWEEP_EVERY_MS: u64 = 60_000;

/// A [`PresenceRegistry`] for one process: it knows the clients of the
/// instances sharing it (one, when one instance runs). Each entry is owned
/// by the instance that wrote it, as in Redis.
///
/// Entries expire `ttl` after their last upsert, by the injected clock
/// (a [`ManualClock`](super::ManualClock) in tests). Expired entries are
/// dropped when their document is read or written, and by a sweep of every
/// document at most once a minute, so memory stays bounded by the live
/// entries.
pub struct MemoryPresence {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Ordered by (user, client_id, instance), the order `list` answers in.
    documents: HashMap<DocumentId, BTreeMap<Key, Stored>>,
    last_sweep: Timestamp,
}

/// (user, client_id, the holding instance's UUID).
type Key = (UserId, ClientId, Uuid);

fn key(user: UserId, client_id: &ClientId, instance: InstanceId) -> Key {
    (user, client_id.clone(), *instance.as_uuid())
}

struct Stored {
    entry: PresenceEntry,
    expires_at: Timestamp,
}

impl std::fmt::Debug for MemoryPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPresence")
            .field("documents", &self.state().documents.len())
            .finish_non_exhaustive()
    }
}

impl MemoryPresence {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let last_sweep = clock.now();
        MemoryPresence {
            clock,
            state: Mutex::new(State {
                documents: HashMap::new(),
                last_sweep,
            }),
        }
    }

    /// Never held across an `.await`; nothing panics while it is held.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Drops the document's expired entries, and the document if none is
    /// left.
    fn prune(&mut self, document: DocumentId, now: Timestamp) {
        if let Some(entries) = self.documents.get_mut(&document) {
            entries.retain(|_, stored| stored.expires_at > now);
            if entries.is_empty() {
                self.documents.remove(&document);
            }
        }
    }

    fn sweep(&mut self, now: Timestamp) {
        if now.since(self.last_sweep) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep = now;
        self.documents.retain(|_, entries| {
            entries.retain(|_, stored| stored.expires_at > now);
            !entries.is_empty()
        });
    }
}

#[async_trait]
impl PresenceRegistry for MemoryPresence {
    async fn upsert(
        &self,
        document: DocumentId,
        instance: InstanceId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let now = self.clock.now();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.state();
        state.sweep(now);
        let stored = Stored {
            expires_at: now.plus_ms(ttl_ms),
            entry,
        };
        let key = key(stored.entry.user, &stored.entry.client_id, instance);
        state
            .documents
            .entry(document)
            .or_default()
            .insert(key, stored);
        Ok(())
    }

    async fn remove(
        &self,
        document: DocumentId,
        instance: InstanceId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError> {
        let now = self.clock.now();
        let mut state = self.state();
        if let Some(entries) = state.documents.get_mut(&document) {
            entries.remove(&key(user, client_id, instance));
        }
        state.prune(document, now);
        Ok(())
    }

    async fn list(&self, document: DocumentId) -> Result<Vec<Held>, PresenceError> {
        let now = self.clock.now();
        let mut state = self.state();
        state.prune(document, now);
        Ok(state
            .documents
            .get(&document)
            .map(|entries| {
                entries
                    .iter()
                    .map(|((_, _, instance), s)| Held {
                        instance: InstanceId::from_uuid(*instance),
                        entry: s.entry.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use relay_domain::Version;

    fn here() -> InstanceId {
        InstanceId::from_uuid(Uuid::nil())
    }

    fn entry(client_id: &str) -> PresenceEntry {
        PresenceEntry {
            user: UserId::new(Uuid::nil()),
            client_id: ClientId::new(client_id).unwrap(),
            name: None,
            selection: None,
            version: Version::ZERO,
        }
    }

    #[tokio::test]
    async fn an_entry_expires_exactly_its_ttl_after_the_upsert() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        let presence = MemoryPresence::new(Arc::new(clock.clone()));
        let document = DocumentId::new(Uuid::new_v4());
        let ttl = Duration::from_millis(500);
        presence
            .upsert(document, here(), entry("a"), ttl)
            .await
            .unwrap();
        clock.advance(Duration::from_millis(499));
        assert_eq!(presence.list(document).await.unwrap().len(), 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(presence.list(document).await, Ok(vec![]));
        assert!(presence.state().documents.is_empty());
    }

    #[tokio::test]
    async fn upserts_sweep_expired_entries_of_documents_nobody_reads() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let presence = MemoryPresence::new(Arc::new(clock.clone()));
        let (forgotten, busy) = (
            DocumentId::new(Uuid::new_v4()),
            DocumentId::new(Uuid::new_v4()),
        );
        let ttl = Duration::from_secs(30);
        presence
            .upsert(forgotten, here(), entry("gone"), ttl)
            .await
            .unwrap();

        clock.advance(Duration::from_secs(31));
        presence
            .upsert(busy, here(), entry("a"), ttl)
            .await
            .unwrap();
        assert!(
            presence.state().documents.contains_key(&forgotten),
            "no sweep within a minute of the last"
        );

        clock.advance(Duration::from_secs(29));
        presence
            .upsert(busy, here(), entry("a"), ttl)
            .await
            .unwrap();
        let state = presence.state();
        assert!(!state.documents.contains_key(&forgotten));
        assert!(state.documents.contains_key(&busy));
    }
}
