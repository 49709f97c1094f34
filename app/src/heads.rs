//! Bounded staleness: the store is the source of truth, the bus only the
//! fast path. Whatever happens between a commit and the bus (a lost or
//! dropped message, a failed publish, a full publish queue, the committing
//! instance killed after its commit, a stalled subscriber link, an append
//! of unknown outcome that lands later, a room that opened while others
//! committed), every open room on this instance learns of the commit
//! within one [`HeadWatch`] period.
//!
//! One task per instance reads the head of every open document in one
//! batched query ([`relay_ports::OperationStore::heads`], at most
//! [`HEADS_PER_QUERY`] documents a query) every HEAD_CHECK_MS, and wakes a
//! room whose document's head was ahead of it at one check and which has
//! still not reached that head at the next, with no message from the bus
//! in between; such a room then reads what it missed from the store (a gap
//! repair). Ops on their way on the bus, and a room's own commit not yet
//! counted, arrive within milliseconds and cost no read; a bus that still
//! delivers, only late (an overloaded instance), costs no read either until
//! the room has been short for [`SHORT_CHECKS_WHILE_HEARD`] checks - the
//! store is not loaded more when it is busiest. So a commit the bus lost
//! reaches every room within two periods and a store read (about 2 s with
//! the default of 1000 ms; 4 s when the bus is late as well), and the cost
//! is one query per period per instance per [`HEADS_PER_QUERY`] open
//! documents, not one per document: at 10,000 open documents, one query a
//! second.

use relay_domain::{DocumentId, Version};
use relay_ports::{Chain, OperationStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// Most documents whose heads one query reads.
pub(crate) const HEADS_PER_QUERY: usize = 10_000;

/// A room as the watch sees it.
struct Watched {
    /// The version the room holds (it updates it after each turn).
    version: Arc<AtomicU64>,
    /// Wakes the room: the store is ahead of it.
    behind: Arc<Notify>,
    /// How many messages of ops the room has had from the bus (it counts
    /// them).
    heard: Arc<AtomicU64>,
    /// The head the last check found ahead of the room, if it did, and
    /// what the room had heard by then.
    ahead: Option<(u64, u64)>,
    /// Checks in a row that found the room short of the head the check
    /// before saw.
    short: u32,
}

/// After this many checks in a row short of the head, a room is woken
/// even while the bus still brings it messages (a bus that delivers, but
/// late).
const SHORT_CHECKS_WHILE_HEARD: u32 = 3;

/// The open rooms of this instance whose heads are checked.
pub(crate) struct HeadWatch {
    rooms: Mutex<HashMap<DocumentId, Watched>>,
    store: Arc<dyn OperationStore>,
    every: Duration,
    /// How long one query may take before the check gives up on it (the
    /// next period asks again).
    patience: Duration,
    started: std::sync::Once,
}

impl std::fmt::Debug for HeadWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadWatch")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// A room's registration: it tells the watch its version and is woken when
/// the store is ahead. Dropping it stops the checks of that document.
pub(crate) struct Registration {
    watch: Arc<HeadWatch>,
    document: DocumentId,
    version: Arc<AtomicU64>,
    behind: Arc<Notify>,
    heard: Arc<AtomicU64>,
}

impl Registration {
    /// The room had ops from the bus for its document.
    pub(crate) fn heard(&self) {
        self.heard.fetch_add(1, Ordering::Relaxed);
    }

    /// The room holds `version` now.
    pub(crate) fn holds(&self, version: Version) {
        self.version.store(version.get(), Ordering::Release);
    }

    /// Resolves when a check found the store ahead of the room (at most
    /// one wake-up is kept while the room is busy).
    pub(crate) async fn behind(&self) {
        self.behind.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut rooms = self.watch.rooms();
        if rooms
            .get(&self.document)
            .is_some_and(|w| Arc::ptr_eq(&w.version, &self.version))
        {
            rooms.remove(&self.document);
        }
    }
}

impl HeadWatch {
    pub(crate) fn new(store: Arc<dyn OperationStore>, every: Duration) -> Arc<HeadWatch> {
        Arc::new(HeadWatch {
            rooms: Mutex::new(HashMap::new()),
            store,
            every,
            patience: every.max(Duration::from_secs(2)),
            started: std::sync::Once::new(),
        })
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<DocumentId, Watched>> {
        // Each critical section is one map operation: a panic elsewhere
        // cannot leave the map half-changed.
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a room holding `version` (the watch task starts with the
    /// first room and ends with the last reference to the watch).
    pub(crate) fn register(
        self: &Arc<Self>,
        document: DocumentId,
        version: Version,
    ) -> Registration {
        self.started.call_once(|| {
            tokio::spawn(run(Arc::downgrade(self)));
        });
        let version = Arc::new(AtomicU64::new(version.get()));
        let behind = Arc::new(Notify::new());
        let heard = Arc::new(AtomicU64::new(0));
        self.rooms().insert(
            document,
            Watched {
                version: version.clone(),
                behind: behind.clone(),
                heard: heard.clone(),
                ahead: None,
                short: 0,
            },
        );
        Registration {
            watch: self.clone(),
            document,
            version,
            behind,
            heard,
        }
    }

    /// One check of every open room: the heads in batched queries, and a
    /// wake-up for each room behind its document's head. Returns how many
    /// rooms were woken.
    pub(crate) async fn check(&self) -> usize {
        let documents: Vec<DocumentId> = self.rooms().keys().copied().collect();
        let mut woken = 0;
        for chunk in documents.chunks(HEADS_PER_QUERY) {
            let heads = match tokio::time::timeout(self.patience, self.store.heads(chunk)).await {
                Ok(Ok(heads)) if heads.len() == chunk.len() => heads,
                Ok(Ok(heads)) => {
                    warn!(
                        asked = chunk.len(),
                        answered = heads.len(),
                        "the store answered a heads query with the wrong number of heads"
                    );
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(error = %Chain(&e), "cannot read the heads of the open documents; checking again next period");
                    continue;
                }
                Err(_) => {
                    warn!(
                        documents = chunk.len(),
                        "no answer to a heads query in time; checking again next period"
                    );
                    continue;
                }
            };
            let mut rooms = self.rooms();
            for (document, head) in chunk.iter().zip(heads) {
                let Some(w) = rooms.get_mut(document) else {
                    continue;
                };
                let held = w.version.load(Ordering::Acquire);
                let heard = w.heard.load(Ordering::Relaxed);
                if head.get() <= held {
                    (w.ahead, w.short) = (None, 0);
                    continue;
                }
                match w.ahead {
                    Some((seen, heard_then)) if held < seen => {
                        w.short += 1;
                        // Still short of what the last check saw, and the
                        // bus said nothing since (or has been late for
                        // several periods): it is not bringing it.
                        if heard == heard_then || w.short >= SHORT_CHECKS_WHILE_HEARD {
                            w.behind.notify_one();
                            woken += 1;
                            w.short = 0;
                        }
                    }
                    _ => w.short = 0,
                }
                w.ahead = Some((head.get(), heard));
            }
        }
        woken
    }
}

async fn run(watch: Weak<HeadWatch>) {
    let every = match watch.upgrade() {
        Some(w) => w.every,
        None => return,
    };
    // The first check one period after the first room opened (it has
    // just read the store).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(watch) = watch.upgrade() else {
            return;
        };
        watch.check().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, UserId};
    use relay_ports::OperationStore;

    fn op(version: u32) -> CommittedOp {
        let mut delta = Delta::new();
        delta.insert("x");
        CommittedOp {
            version: Version::from(version),
            user: UserId::new(uuid::Uuid::nil()),
            client_id: ClientId::new("tab").unwrap(),
            seq: Seq::from(version),
            delta,
        }
    }

    #[tokio::test]
    async fn a_room_behind_its_documents_head_is_woken_and_one_that_is_not_is_left_alone() {
        let store = Arc::new(relay_adapter_memory::MemoryStore::default());
        let (a, b) = (
            DocumentId::new(uuid::Uuid::new_v4()),
            DocumentId::new(uuid::Uuid::new_v4()),
        );
        store.append(a, None, &[op(1)]).await.unwrap();
        store.append(b, None, &[op(1)]).await.unwrap();
        let watch = HeadWatch::new(store.clone(), Duration::from_secs(3600));
        let ra = watch.register(a, Version::ZERO);
        let rb = watch.register(b, Version::from(1));
        assert_eq!(watch.check().await, 0, "a is behind: seen once");
        assert_eq!(watch.check().await, 1, "a is still behind: woken");
        tokio::time::timeout(Duration::from_secs(5), ra.behind())
            .await
            .expect("a was woken");
        ra.holds(Version::from(1));
        assert_eq!(watch.check().await, 0, "both hold their heads");
        store.append(b, Some(op(1).key()), &[op(2)]).await.unwrap();
        assert_eq!(watch.check().await, 0, "b moved on: seen once");
        assert_eq!(watch.check().await, 1, "b is still short of it");
        tokio::time::timeout(Duration::from_secs(5), rb.behind())
            .await
            .expect("b was woken");
        assert_eq!(watch.check().await, 1, "woken again while still short");
        rb.holds(Version::from(2));
        // A room short of the head while the bus still brings it messages
        // (late) is woken only after several checks.
        store.append(b, Some(op(2).key()), &[op(3)]).await.unwrap();
        assert_eq!(watch.check().await, 0, "b: seen once");
        rb.heard();
        assert_eq!(watch.check().await, 0, "b heard from the bus");
        rb.heard();
        assert_eq!(watch.check().await, 0, "b heard again");
        rb.heard();
        assert_eq!(watch.check().await, 1, "b short for three checks");
        rb.holds(Version::from(3));
        // A room that reaches the head it was seen short of between two
        // checks (the bus brought it) is not woken.
        store.append(a, Some(op(1).key()), &[op(2)]).await.unwrap();
        assert_eq!(watch.check().await, 0);
        ra.holds(Version::from(2));
        assert_eq!(watch.check().await, 0, "a caught up on its own");
        drop(rb);
        assert_eq!(watch.check().await, 0, "a dropped room is not checked");
        assert_eq!(watch.rooms().len(), 1);
    }
}
