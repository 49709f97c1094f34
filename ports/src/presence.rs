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
