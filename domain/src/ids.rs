//! Identifiers and counters, validated when they are made ("parse, don't
//! validate"): once a value of these types exists it is well-formed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;

/// The largest integer on the wire: 2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER`, so every client holds every number exactly
/// (PROTOCOL.md "Bounds"). Versions, seqs, lengths and positions never
/// exceed it.
pub const MAX_WIRE_INT: u64 = (1 << 53) - 1;

/// [`MAX_WIRE_INT`] as a length or position.
pub const MAX_LEN: usize = MAX_WIRE_INT as usize;

/// A number outside `0..=2^53 - 1` where a version, seq, length or
/// position was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is out of range: it must be an integer from 0 to 2^53 - 1")]
pub struct OutOfRange {
    pub what: &'static str,
    pub value: i128,
}

macro_rules! counter {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// At most [`MAX_WIRE_INT`]: made only by its checked constructors,
        /// so an out-of-range value cannot exist.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "u64", into = "u64")]
        pub struct $name(u64);

        impl $name {
            pub const ZERO: $name = $name(0);
            pub const MAX: $name = $name(MAX_WIRE_INT);

            /// `n`: every `u32` is in range (a `const` for patterns and tests).
            pub const fn from_u32(n: u32) -> $name {
                $name(n as u64)
            }

            /// `n`, if it is at most 2^53 - 1.
            pub fn new(n: u64) -> Result<$name, OutOfRange> {
                if n > MAX_WIRE_INT {
                    Err(OutOfRange { what: $what, value: i128::from(n) })
                } else {
                    Ok($name(n))
                }
            }

            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + n`, if it stays in range.
            pub fn checked_add(self, n: u64) -> Option<$name> {
                self.0.checked_add(n).and_then(|v| $name::new(v).ok())
            }

            /// `self - earlier`, 0 if `earlier` is larger.
            pub fn since(self, earlier: $name) -> u64 {
                self.0.saturating_sub(earlier.0)
            }
        }

        /// Every `u32` is in range.
        impl From<u32> for $name {
            fn from(n: u32) -> $name {
                $name(u64::from(n))
            }
        }

        impl TryFrom<u64> for $name {
            type Error = OutOfRange;
            fn try_from(n: u64) -> Result<$name, OutOfRange> {
                $name::new(n)
            }
        }

        /// From a database's signed column: negative is out of range too.
        impl TryFrom<i64> for $name {
            type Error = OutOfRange;
            fn try_from(n: i64) -> Result<$name, OutOfRange> {
                u64::try_from(n)
                    .map_err(|_| OutOfRange { what: $what, value: i128::from(n) })
                    .and_then($name::new)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

        /// For a database's signed column: always fits, being at most 2^53 - 1.
        impl From<$name> for i64 {
            fn from(v: $name) -> i64 {
                // In range by construction: 2^53 - 1 < i64::MAX.
                i64::try_from(v.0).unwrap_or(i64::MAX)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

counter!(
    /// Number of operations applied to a document since it was created
    /// (0 = empty). Each accepted operation gets the next version.
    Version,
    "version"
);

impl Version {
    /// The version after this one, if there is one.
    pub fn next(self) -> Option<Version> {
        self.checked_add(1)
    }

    /// The version before this one (none before 0).
    pub fn prev(self) -> Option<Version> {
        self.0.checked_sub(1).map(Version)
    }
}

counter!(
    /// A client's submit counter, strictly increasing per `client_id`.
    Seq,
    "seq"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn new(id: Uuid) -> $name {
                $name(id)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> $name {
                $name(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A user: the `sub` of their token.
    UserId
);

uuid_id!(
    /// A document.
    DocumentId
);

/// A client instance (a browser tab), stable across its reconnects:
/// 1 to 64 characters, none of them U+0000 (PostgreSQL's `text` cannot
/// hold it). Shared, not copied: every op in history names its client.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(Arc<str>);

/// Longest accepted `client_id`, in characters.
pub const CLIENT_ID_MAX_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClientId {
    #[error("client_id must be 1 to {CLIENT_ID_MAX_CHARS} characters, got {0}")]
    Length(usize),
    /// U+0000-U+001F or U+007F-U+009F (PROTOCOL.md): a `client_id` reaches
    /// log lines and other clients' screens.
    #[error("client_id must not contain control characters")]
    Control,
}

impl ClientId {
    pub fn new(id: impl Into<String>) -> Result<ClientId, InvalidClientId> {
        let id = id.into();
        let n = id.chars().count();
        if n == 0 || n > CLIENT_ID_MAX_CHARS {
            return Err(InvalidClientId::Length(n));
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidClientId::Control);
        }
        Ok(ClientId(id.into()))
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
        c.0.as_ref().to_owned()
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
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds from the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A role on a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Owner];

    /// Whether the role may submit operations.
    pub fn can_edit(self) -> bool {
        matches!(self, Role::Editor | Role::Owner)
    }

    /// The role's name on the wire (and in the permissions table).
    pub fn as_str(self) -> &'static str {
        crate::wire_name::unit_variant_name(&self).expect("a role is a unit variant")
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected owner, editor or viewer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_stop_at_two_to_the_fifty_three_minus_one() {
        assert_eq!(Version::new(MAX_WIRE_INT).unwrap(), Version::MAX);
        assert!(Version::new(MAX_WIRE_INT + 1).is_err());
        assert!(Seq::new(u64::MAX).is_err());
        assert_eq!(Version::MAX.next(), None);
        assert_eq!(Version::ZERO.next(), Some(Version::from(1)));
        assert!(Version::try_from(-1i64).is_err());
        assert_eq!(Seq::try_from(7i64), Ok(Seq::from(7)));
        assert_eq!(i64::from(Version::MAX), (1i64 << 53) - 1);
        let parsed: Result<Seq, _> = serde_json::from_str("9007199254740992");
        assert!(parsed.is_err(), "2^53 is out of range");
        let parsed: Result<Seq, _> = serde_json::from_str("9007199254740991");
        assert_eq!(parsed.unwrap(), Seq::new(MAX_WIRE_INT).unwrap());
        assert!(serde_json::from_str::<Version>("-1").is_err());
    }

    #[test]
    fn client_ids_are_one_to_sixty_four_characters() {
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("t".repeat(64)).is_ok());
        assert!(ClientId::new("🙂".repeat(64)).is_ok());
        assert_eq!(
            ClientId::new("t".repeat(65)),
            Err(InvalidClientId::Length(65))
        );
        for control in [
            "a\0b",
            "a\nb",
            "\r",
            "\u{1b}[31m",
            "\u{7f}",
            "\u{85}",
            "\u{9f}",
        ] {
            assert_eq!(
                ClientId::new(control),
                Err(InvalidClientId::Control),
                "{control:?}"
            );
        }
        assert!(ClientId::new("\u{a0}caf\u{e9} \u{4e2d}").is_ok());
        let parsed: Result<ClientId, _> = serde_json::from_str("\"\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn roles_are_named_as_on_the_wire() {
        for role in Role::ALL {
            let wire = serde_json::to_value(role).unwrap();
            assert_eq!(wire, serde_json::Value::from(role.as_str()));
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            ["viewer", "editor", "owner"].map(|s| s.parse::<Role>()),
            [Ok(Role::Viewer), Ok(Role::Editor), Ok(Role::Owner)]
        );
        assert_eq!(
            "admin".parse::<Role>(),
            Err(r#"unknown role "admin": expected owner, editor or viewer"#.to_owned())
        );
    }
}
