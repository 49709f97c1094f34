//! The room's calls to the presence registry, beside its loop: a join's
//! upsert, a departure's removal and the periodic refresh run in order on
//! the room's own task, so a slow or stalled registry (Redis) never holds
//! up the document's writes. What a refresh lists comes back to the room
//! ([`Listed`]), which reconciles its roster with it.
//!
//! The queue is bounded ([`REGISTRY_QUEUE`] calls); a full queue drops the
//! call: a dropped upsert is made good by the next refresh, a dropped
//! removal by the entry's expiry (PRESENCE_TTL_SECS).

use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId};
use relay_ports::{Chain, Held, InstanceId, PresenceRegistry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Calls queued for the registry, per room.
const REGISTRY_QUEUE: usize = 256;
/// How long one registry call may take (the adapter bounds its own calls;
/// this bounds the wait whatever the adapter does).
const CALL_WAIT: Duration = Duration::from_secs(5);

enum Call {
    Upsert(PresenceEntry),
    Remove(UserId, ClientId),
    /// Upsert these (every local client), then list.
    Refresh(Vec<PresenceEntry>),
}

/// What a refresh found in the registry (every instance's entries).
pub(super) type Listed = mpsc::Receiver<Vec<Held>>;

/// The room's end of its registry queue.
pub(super) struct RegistryWriter {
    tx: mpsc::Sender<Call>,
    document: DocumentId,
}

impl RegistryWriter {
    /// Starts the room's registry task on `tasks`; it ends when the writer
    /// is dropped and its queue is empty.
    pub(super) fn spawn(
        registry: Arc<dyn PresenceRegistry>,
        tasks: &tokio_util::task::TaskTracker,
        document: DocumentId,
        instance: InstanceId,
        ttl: Duration,
    ) -> (RegistryWriter, Listed) {
        let (tx, mut rx) = mpsc::channel::<Call>(REGISTRY_QUEUE);
        // One listing waits at most: a newer one replaces what the room has
        // not read yet only when it has read the older one.
        let (listed_tx, listed) = mpsc::channel(1);
        tasks.spawn(async move {
            while let Some(call) = rx.recv().await {
                let (what, done) = match call {
                    Call::Upsert(entry) => (
                        "upsert",
                        bounded(registry.upsert(document, instance, entry, ttl)).await,
                    ),
                    Call::Remove(user, client_id) => (
                        "remove",
                        bounded(registry.remove(document, instance, user, &client_id)).await,
                    ),
                    Call::Refresh(entries) => {
                        let up = if entries.is_empty() {
                            Ok(())
                        } else {
                            bounded(registry.upsert_many(document, instance, entries, ttl)).await
                        };
                        match up {
                            Ok(()) => match bounded(registry.list(document)).await {
                                Ok(held) => {
                                    let _ = listed_tx.try_send(held);
                                    ("list", Ok(()))
                                }
                                Err(e) => ("list", Err(e)),
                            },
                            Err(e) => ("refresh", Err(e)),
                        }
                    }
                };
                if let Err(e) = done {
                    warn!(%document, call = what, error = %e, "presence registry");
                }
            }
        });
        (RegistryWriter { tx, document }, listed)
    }

    fn queue(&self, call: Call) {
        if self.tx.try_send(call).is_err() {
            debug!(document = %self.document, "presence registry queue full: a call was dropped (the next refresh, or the entry's expiry, makes up for it)");
        }
    }

    pub(super) fn upsert(&self, entry: PresenceEntry) {
        self.queue(Call::Upsert(entry));
    }

    pub(super) fn remove(&self, user: UserId, client_id: ClientId) {
        self.queue(Call::Remove(user, client_id));
    }

    pub(super) fn refresh(&self, local: Vec<PresenceEntry>) {
        self.queue(Call::Refresh(local));
    }
}

/// A registry call bounded by [`CALL_WAIT`]; its failure as text.
async fn bounded<T, E: std::error::Error + 'static>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_WAIT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Chain(&e).to_string()),
        Err(_) => Err(format!("no answer within {CALL_WAIT:?}")),
    }
}
