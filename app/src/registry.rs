//! The registry of open rooms on this instance: at most one per document.
//!
//! A room is started with a [`RoomLease`] on its entry. The lease removes
//! the entry when the room releases it or drops it (a room that ends in
//! any way, a panic included, never stays registered), so the room never
//! reaches back into the registry. The registry knows nothing of rooms
//! but their mailbox's message type.
//!
//! A room's [`Mailbox`] is bounded in messages ([`MAILBOX`]) and in the
//! bytes they hold ([`MAILBOX_BYTES`]): a sender waits for both before its
//! message enters, and the bytes are given back when the room takes it.

use relay_domain::DocumentId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Mailbox size of a room: submits beyond it wait at the session (which
/// stops reading its socket), never in unbounded memory.
pub(crate) const MAILBOX: usize = 1024;

/// Bytes a room's mailbox holds at most (what its messages hold in memory,
/// see [`Weigh`]): 16 MiB, sixteen submits of the largest size (1 MiB of
/// JSON, MAX_MESSAGE_BYTES' default) or thousands of ordinary ones. A
/// message heavier than that takes the whole budget (it waits until the
/// mailbox is empty of bytes).
pub(crate) const MAILBOX_BYTES: usize = 16 << 20;

/// What a message holds in memory while it waits in a mailbox.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

/// A message in a mailbox with its share of the byte budget, given back
/// when the room opens it.
pub(crate) struct Letter<M> {
    message: M,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl<M> Letter<M> {
    /// The message; its bytes return to the mailbox's budget.
    pub(crate) fn open(self) -> M {
        self.message
    }
}

/// The room's end of its mailbox.
pub(crate) type Inbox<M> = mpsc::Receiver<Letter<M>>;

/// A room's mailbox, as senders hold it: bounded in messages and bytes.
pub(crate) struct Mailbox<M> {
    tx: mpsc::Sender<Letter<M>>,
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            limit: self.limit,
        }
    }
}

impl<M: Weigh> Mailbox<M> {
    /// Sends `message` once the mailbox has room for it in bytes and in
    /// messages (waiting for both); an error once the room is gone.
    pub(crate) async fn send(&self, message: M) -> Result<(), mpsc::error::SendError<M>> {
        let weight = message.weight().min(self.limit);
        let bytes = match u32::try_from(weight) {
            Ok(0) => None,
            Ok(n) => match self.bytes.clone().acquire_many_owned(n).await {
                Ok(permit) => Some(permit),
                Err(_) => return Err(mpsc::error::SendError(message)),
            },
            Err(_) => unreachable!("the limit fits a u32"),
        };
        self.tx
            .send(Letter {
                message,
                _bytes: bytes,
            })
            .await
            .map_err(|e| mpsc::error::SendError(e.0.message))
    }
}

impl<M> Mailbox<M> {
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

type Open<M> = HashMap<DocumentId, (Mailbox<M>, u64)>;

struct Shared<M> {
    // A std mutex: held only for map operations, never across an await.
    open: Mutex<Open<M>>,
    generation: AtomicU64,
    /// Each mailbox's bounds: messages and bytes.
    bounds: (usize, usize),
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
        Registry::with_bounds(MAILBOX, MAILBOX_BYTES)
    }
}

/// What starts a room: its mailbox and the lease on its registry entry.
pub(crate) struct Start<M> {
    pub(crate) mailbox: Inbox<M>,
    pub(crate) lease: RoomLease<M>,
}

impl<M> Registry<M> {
    /// A registry whose rooms' mailboxes hold at most `messages` messages
    /// and `bytes` bytes (at most `u32::MAX`).
    pub(crate) fn with_bounds(messages: usize, bytes: usize) -> Self {
        let bytes = bytes.clamp(1, u32::MAX as usize);
        Registry {
            shared: Arc::new(Shared {
                open: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                bounds: (messages.max(1), bytes),
            }),
        }
    }

    /// The room's mailbox, and, when no room is open, what starts one.
    pub(crate) fn get_or_create(&self, document: DocumentId) -> (Mailbox<M>, Option<Start<M>>) {
        let mut open = self.shared.open();
        if let Some((tx, _)) = open.get(&document)
            && !tx.is_closed()
        {
            return (tx.clone(), None);
        }
        let (messages, bytes) = self.shared.bounds;
        let (tx, mailbox) = mpsc::channel(messages);
        let tx = Mailbox {
            tx,
            bytes: Arc::new(Semaphore::new(bytes)),
            limit: bytes,
        };
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
    pub(crate) fn all(&self) -> Vec<Mailbox<M>> {
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
    pub(crate) fn release_if_idle(&mut self, mailbox: &Inbox<M>) -> bool {
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
    use std::time::Duration;
    use uuid::Uuid;

    /// A test message weighs its value in bytes.
    impl Weigh for u8 {
        fn weight(&self) -> usize {
            usize::from(*self)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mailbox_is_bounded_in_bytes_a_sender_waits_until_the_room_takes_mail() {
        let registry = Registry::<u8>::with_bounds(100, 100);
        let document = DocumentId::new(Uuid::new_v4());
        let (tx, start) = registry.get_or_create(document);
        let mut inbox = start.expect("room").mailbox;
        tx.send(60).await.expect("60 of 100 bytes");
        tx.send(40).await.expect("100 of 100 bytes");
        // Full in bytes (2 messages of 100 allowed): the next one waits.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(1).await }
        });
        // (The clock is paused: this returns once every task is waiting.)
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the bytes are taken");
        assert_eq!(inbox.len(), 2, "nothing more entered");
        // The room takes a letter: its bytes are free again.
        assert_eq!(inbox.recv().await.map(Letter::open), Some(60));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("sent once the room took mail")
            .expect("task")
            .expect("room open");
        assert_eq!(inbox.recv().await.map(Letter::open), Some(40));
        assert_eq!(inbox.recv().await.map(Letter::open), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_heavier_than_the_budget_takes_all_of_it_and_is_not_refused() {
        let registry = Registry::<u8>::with_bounds(100, 10);
        let document = DocumentId::new(Uuid::new_v4());
        let (tx, start) = registry.get_or_create(document);
        let mut inbox = start.expect("room").mailbox;
        tx.send(200).await.expect("takes the whole budget");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert_eq!(inbox.recv().await.map(Letter::open), Some(200));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("sent")
            .expect("task")
            .expect("room open");
    }

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

    #[tokio::test]
    async fn an_idle_room_with_mail_waiting_is_not_released() {
        let registry = Registry::<u8>::default();
        let document = DocumentId::new(Uuid::new_v4());
        let (tx, start) = registry.get_or_create(document);
        let Start { mailbox, mut lease } = start.expect("room");
        tx.send(1).await.expect("room for one");
        assert!(!lease.release_if_idle(&mailbox));
        assert_eq!(registry.len(), 1);
        let mut mailbox = mailbox;
        assert_eq!(mailbox.try_recv().ok().map(Letter::open), Some(1));
        assert!(lease.release_if_idle(&mailbox));
        assert_eq!(registry.len(), 0);
    }
}
