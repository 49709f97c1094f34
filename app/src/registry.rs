//! The registry of open rooms on this instance: at most one per document.
//!
//! A room is started with a [`RoomLease`] on its entry. The lease removes
//! the entry when the room releases it or drops it (a room that ends in
//! any way, a panic included, never stays registered), so the room never
//! reaches back into the registry. The registry knows nothing of rooms
//! but their mailbox's message type.

use relay_domain::DocumentId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;

/// Mailbox size of a room: submits beyond it wait at the session (which
/// stops reading its socket), never in unbounded memory.
pub(crate) const MAILBOX: usize = 1024;

type Open<M> = HashMap<DocumentId, (mpsc::Sender<M>, u64)>;

struct Shared<M> {
    // A std mutex: held only for map operations, never across an await.
    open: Mutex<Open<M>>,
    generation: AtomicU64,
}

impl<M> Shared<M> {
    fn open(&self) -> MutexGuard<'_, Open<M>> {
        // Every critical section is a single map operation that cannot
        // leave the map half-changed: a panic elsewhere while holding the
        // lock leaves it consistent, so the map is used as it is.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(open: &mut Open<M>, document: DocumentId, generation: u64) {
        if open.get(&document).is_some_and(|(_, g)| *g == generation) {
            open.remove(&document);
        }
    }
}

/// The open rooms by document, each reached through its mailbox.
pub(crate) struct Registry<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Default for Registry<M> {
    fn default() -> Self {
        Registry {
            shared: Arc::new(Shared {
                open: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
            }),
        }
    }
}

/// What starts a room: its mailbox and the lease on its registry entry.
pub(crate) struct Start<M> {
    pub(crate) mailbox: mpsc::Receiver<M>,
    pub(crate) lease: RoomLease<M>,
}

impl<M> Registry<M> {
    /// The room's mailbox, and, when no room is open, what starts one.
    pub(crate) fn get_or_create(
        &self,
        document: DocumentId,
    ) -> (mpsc::Sender<M>, Option<Start<M>>) {
        let mut open = self.shared.open();
        if let Some((tx, _)) = open.get(&document)
            && !tx.is_closed()
        {
            return (tx.clone(), None);
        }
        let (tx, mailbox) = mpsc::channel(MAILBOX);
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        open.insert(document, (tx.clone(), generation));
        let lease = RoomLease {
            shared: self.shared.clone(),
            document,
            generation,
            released: false,
        };
        (tx, Some(Start { mailbox, lease }))
    }

    pub(crate) fn len(&self) -> usize {
        self.shared.open().len()
    }

    /// Every open room's mailbox.
    pub(crate) fn all(&self) -> Vec<mpsc::Sender<M>> {
        self.shared
            .open()
            .values()
            .map(|(tx, _)| tx.clone())
            .collect()
    }
}

/// A room's hold on its registry entry; the entry goes when the lease is
/// released or dropped. An entry a newer room took over is left alone.
pub(crate) struct RoomLease<M> {
    shared: Arc<Shared<M>>,
    document: DocumentId,
    generation: u64,
    released: bool,
}

impl<M> RoomLease<M> {
    /// Forgets the room now: the next join starts a new one.
    pub(crate) fn release(mut self) {
        self.forget();
    }

    /// Forgets an idle room unless something is waiting in its mailbox,
    /// under the registry's lock: a concurrent join then finds no entry
    /// (or a closed mailbox) and starts a new room instead.
    pub(crate) fn release_if_idle(&mut self, mailbox: &mpsc::Receiver<M>) -> bool {
        let mut open = self.shared.open();
        if !mailbox.is_empty() {
            return false;
        }
        Shared::forget(&mut open, self.document, self.generation);
        self.released = true;
        true
    }

    fn forget(&mut self) {
        if !self.released {
            Shared::forget(&mut self.shared.open(), self.document, self.generation);
            self.released = true;
        }
    }
}

impl<M> Drop for RoomLease<M> {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_dropped_lease_forgets_its_room_and_a_new_one_starts() {
        let registry = Registry::<u8>::default();
        let document = DocumentId::new(Uuid::new_v4());
        let (_tx, start) = registry.get_or_create(document);
        let start = start.expect("a new room");
        assert!(registry.get_or_create(document).1.is_none(), "one room");
        drop(start.lease);
        assert_eq!(registry.len(), 0);
        assert!(registry.get_or_create(document).1.is_some(), "a new room");
    }

    #[test]
    fn an_old_lease_does_not_forget_the_room_that_replaced_it() {
        let registry = Registry::<u8>::default();
        let document = DocumentId::new(Uuid::new_v4());
        let old = registry.get_or_create(document).1.expect("room");
        drop(old.mailbox);
        let new = registry
            .get_or_create(document)
            .1
            .expect("the closed one is replaced");
        old.lease.release();
        assert_eq!(registry.len(), 1, "the new room stays");
        drop(new);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn an_idle_room_with_mail_waiting_is_not_released() {
        let registry = Registry::<u8>::default();
        let document = DocumentId::new(Uuid::new_v4());
        let (tx, start) = registry.get_or_create(document);
        let Start { mailbox, mut lease } = start.expect("room");
        tx.try_send(1).expect("room for one");
        assert!(!lease.release_if_idle(&mailbox));
        assert_eq!(registry.len(), 1);
        let mut mailbox = mailbox;
        assert_eq!(mailbox.try_recv().ok(), Some(1));
        assert!(lease.release_if_idle(&mailbox));
        assert_eq!(registry.len(), 0);
    }
}
