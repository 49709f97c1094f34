//! The presence registry: who is in a document, across instances. Entries
//! expire unless refreshed, so a crashed instance's clients disappear.
//!
//! Every entry is owned by the instance that wrote it: a client that
//! reconnected to another instance is held by both until the first one
//! removes its entry (or stops refreshing it), and that removal leaves the
//! other instance's entry alone.

use crate::bus::InstanceId;
use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence registry unavailable")]
    Unavailable(#[source] crate::error::Cause),
}

/// An entry as listed: which instance holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub instance: InstanceId,
    pub entry: PresenceEntry,
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Adds or refreshes `instance`'s entry for the entry's client; it
    /// expires `ttl` after this call unless refreshed again. Another
    /// instance's entry for the same client is left as it is.
    async fn upsert(
        &self,
        document: DocumentId,
        instance: InstanceId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// Adds or refreshes several of `instance`'s entries of a document,
    /// each expiring `ttl` after this call: in one round trip where the
    /// registry can (a room refreshes all of its entries at once). Other
    /// instances' entries are left as they are. The default upserts them
    /// one by one and stops at the first failure.
    async fn upsert_many(
        &self,
        document: DocumentId,
        instance: InstanceId,
        entries: Vec<PresenceEntry>,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        for entry in entries {
            self.upsert(document, instance, entry, ttl).await?;
        }
        Ok(())
    }

    /// Removes this instance's entry for the client; another instance's
    /// entry for the same client stays. Removing an absent one is `Ok`.
    async fn remove(
        &self,
        document: DocumentId,
        instance: InstanceId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError>;

    /// The unexpired entries of a document, ordered by (user, client_id,
    /// instance), the instance by its UUID: a client held by two instances
    /// is listed twice, once per instance.
    async fn list(&self, document: DocumentId) -> Result<Vec<Held>, PresenceError>;
}
