//! Identifiers and counters, validated when they are made ("parse, don't
//! validate"): once a value of these types exists it is well-formed.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Number of operations applied to a document since it was created
/// (0 = empty). Each accepted operation gets the next version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);

    #[must_use]
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client's submit counter, strictly increasing per `client_id`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user: the `sub` of their token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DocumentId(pub Uuid);

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client instance (a browser tab), stable across its reconnects:
/// 1 to 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

/// Longest accepted `client_id`, in characters.
pub const CLIENT_ID_MAX_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("client_id must be 1 to {CLIENT_ID_MAX_CHARS} characters, got {0}")]
pub struct InvalidClientId(pub usize);

impl ClientId {
    pub fn new(id: impl Into<String>) -> Result<ClientId, InvalidClientId> {
        let id = id.into();
        let n = id.chars().count();
        if n == 0 || n > CLIENT_ID_MAX_CHARS {
            return Err(InvalidClientId(n));
        }
        Ok(ClientId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientId {
    type Error = InvalidClientId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ClientId::new(s)
    }
}

impl From<ClientId> for String {
    fn from(c: ClientId) -> String {
        c.0
    }
}

/// Lets maps keyed by `ClientId` be searched with a `&str`.
impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A point in time, in milliseconds from an origin the caller chooses.
/// The domain never reads a clock: every time-dependent call takes one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_one_to_sixty_four_characters() {
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("t".repeat(64)).is_ok());
        assert!(ClientId::new("🙂".repeat(64)).is_ok());
        assert_eq!(ClientId::new("t".repeat(65)), Err(InvalidClientId(65)));
        let parsed: Result<ClientId, _> = serde_json::from_str("\"\"");
        assert!(parsed.is_err());
    }
}
