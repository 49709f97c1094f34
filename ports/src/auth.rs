//! Authentication and authorization: the token verifier and the permission
//! source.

use async_trait::async_trait;
use relay_domain::Role;
use relay_domain::{DocumentId, UserId};
use std::collections::BTreeMap;

/// What a verified token says. Never holds the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub user: UserId,
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The `docs` claim, if present.
    pub docs: Option<DocsClaim>,
}

/// The `docs` claim, parsed: a role on every document (its `*` entry) and
/// roles on named documents, which win over it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocsClaim {
    /// The `*` entry.
    pub every: Option<Role>,
    /// The documents named by their UUID.
    pub each: BTreeMap<DocumentId, Role>,
}

impl Claims {
    /// When a session on this token must end and the token be refused, in
    /// milliseconds since the Unix epoch: `exp` plus the verifier's leeway
    /// (saturating, so a far-future `exp` never wraps).
    pub fn expires_at_ms(&self, leeway_secs: u64) -> u64 {
        self.expires_at
            .saturating_add(leeway_secs)
            .saturating_mul(1000)
    }

    /// The role the `docs` claim grants on `document`: its own entry wins
    /// over `*`; absent means no access.
    pub fn role_from_docs(&self, document: DocumentId) -> Option<Role> {
        let docs = self.docs.as_ref()?;
        docs.each.get(&document).copied().or(docs.every)
    }
}

/// Why a token was refused. The reason is for logs and the client; it never
/// contains the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(InvalidToken),
    #[error("token expired")]
    Expired,
    /// No usable key set is loaded: fail closed.
    #[error("token keys unavailable")]
    Unavailable,
}

/// A claim a token must carry in a given form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimName {
    Exp,
    Nbf,
    Iss,
    Aud,
    /// Another registered claim the token library named.
    Other,
}

impl ClaimName {
    fn prefix(self) -> &'static str {
        match self {
            ClaimName::Exp => "exp ",
            ClaimName::Nbf => "nbf ",
            ClaimName::Iss => "iss ",
            ClaimName::Aud => "aud ",
            ClaimName::Other => "",
        }
    }
}

/// What is wrong with an invalid token. Its text is what the client and
/// the log are told; it never quotes the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token header")]
    MalformedHeader,
    #[error("malformed token")]
    Malformed,
    #[error("unsigned token (alg none)")]
    Unsigned,
    #[error("HMAC-signed token")]
    Hmac,
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// The `kid` is not in the key set: a JWKS-backed verifier refetches
    /// its keys (once per cooldown) on this one.
    #[error("unknown kid")]
    UnknownKid,
    #[error("token without kid, and more than one key")]
    NoKidAmongSeveralKeys,
    #[error("algorithm not allowed for this key")]
    AlgorithmNotAllowed,
    #[error("bad signature")]
    BadSignature,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("issuer does not match the key set")]
    IssuerMismatch,
    #[error("missing or malformed {}claim", .0.prefix())]
    MissingClaim(ClaimName),
    #[error("malformed {}claim", .0.prefix())]
    MalformedClaim(ClaimName),
    #[error("verification key unusable")]
    KeyUnusable,
    #[error("missing sub claim")]
    MissingSub,
    #[error("sub is not a UUID")]
    SubNotUuid,
    #[error("name is not a string")]
    NameNotString,
    #[error("docs is not an object")]
    DocsNotObject,
    #[error("docs has an unknown role")]
    DocsUnknownRole,
    #[error("docs key is not a document UUID or \"*\"")]
    DocsBadKey,
    #[error("docs names a document twice")]
    DocsRepeated,
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies a JWT. `Invalid` for anything malformed, unsigned, wrongly
    /// signed or with wrong claims; `Expired` past `exp` (with leeway);
    /// `Unavailable` when no keys are loaded.
    async fn verify(&self, token: &str) -> Result<Claims, AuthError>;

    /// Whether a usable key set is loaded (for `/ready`).
    fn has_keys(&self) -> bool;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("permission source unavailable")]
    Unavailable(#[source] crate::error::Cause),
}

#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait PermissionSource: Send + Sync + 'static {
    /// The user's role on the document, `None` for no access.
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError>;
}
