//! The presence registry: who is in a document, across instances. Entries
//! expire unless refreshed, so a crashed instance's clients disappear.

use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence registry unavailable")]
    Unavailable(#[source] crate::error::Cause),
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Adds or refreshes an entry; it expires `ttl` after this call unless
    /// refreshed again.
    async fn upsert(
        &self,
        document: DocumentId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// Adds or refreshes several entries of a document, each expiring `ttl`
    /// after this call: in one round trip where the registry can (a room
    /// refreshes all of its entries at once). The default upserts them one
    /// by one and stops at the first failure.
    async fn upsert_many(
        &self,
        document: DocumentId,
        entries: Vec<PresenceEntry>,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        for entry in entries {
            self.upsert(document, entry, ttl).await?;
        }
        Ok(())
    }

    /// Removes an entry; removing an absent one is `Ok`.
    async fn remove(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError>;

    /// The unexpired entries of a document, ordered by (user, client_id).
    async fn list(&self, document: DocumentId) -> Result<Vec<PresenceEntry>, PresenceError>;
}
