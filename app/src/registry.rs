//! The registry of open rooms on this instance: at most one per document.

use crate::room::Command;
use relay_domain::DocumentId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Mailbox size of a room: submits beyond it wait at the session (which
/// stops reading its socket), never in unbounded memory.
pub(crate) const MAILBOX: usize = 1024;

#[derive(Default)]
pub(crate) struct Rooms {
    // A std mutex: held only for map operations, never across an await.
    open: Mutex<HashMap<DocumentId, (mpsc::Sender<Command>, u64)>>,
    generation: AtomicU64,
}

impl Rooms {
    /// The room's mailbox, and whether it must be started (with the
    /// returned receiver and generation).
    pub(crate) fn get_or_create(
        &self,
        document: DocumentId,
    ) -> (
        mpsc::Sender<Command>,
        Option<(mpsc::Receiver<Command>, u64)>,
    ) {
        let mut open = self.open.lock().expect("rooms lock");
        if let Some((tx, _)) = open.get(&document)
            && !tx.is_closed()
        {
            return (tx.clone(), None);
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        open.insert(document, (tx.clone(), generation));
        (tx, Some((rx, generation)))
    }

    pub(crate) fn forget(&self, document: DocumentId, generation: u64) {
        let mut open = self.open.lock().expect("rooms lock");
        if open.get(&document).is_some_and(|(_, g)| *g == generation) {
            open.remove(&document);
        }
    }

    /// Forgets an idle room unless something is waiting in its mailbox.
    pub(crate) fn forget_if_idle(
        &self,
        document: DocumentId,
        generation: u64,
        mailbox: &mpsc::Receiver<Command>,
    ) -> bool {
        let mut open = self.open.lock().expect("rooms lock");
        if !mailbox.is_empty() {
            return false;
        }
        if open.get(&document).is_some_and(|(_, g)| *g == generation) {
            open.remove(&document);
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.open.lock().expect("rooms lock").len()
    }

    /// Every open room's mailbox.
    pub(crate) fn all(&self) -> Vec<mpsc::Sender<Command>> {
        self.open
            .lock()
            .expect("rooms lock")
            .values()
            .map(|(tx, _)| tx.clone())
            .collect()
    }
}
