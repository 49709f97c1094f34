//! Authentication and authorization: the token verifier and the permission
//! source.

use crate::protocol::Role;
use async_trait::async_trait;
use relay_domain::{DocumentId, UserId};
use std::collections::BTreeMap;

/// What a verified token says. Never holds the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub user: UserId,
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The `docs` claim: document UUID (or `*`) to role, if present.
    pub docs: Option<BTreeMap<String, Role>>,
}

impl Claims {
    /// The role the `docs` claim grants on `document`: its own entry wins
    /// over `*`; absent means no access.
    pub fn role_from_docs(&self, document: DocumentId) -> Option<Role> {
        let docs = self.docs.as_ref()?;
        docs.get(&document.to_string())
            .or_else(|| docs.get("*"))
            .copied()
    }
}

/// Why a token was refused. The reason is for logs and the client; it never
/// contains the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    /// No usable key set is loaded: fail closed.
    #[error("token keys unavailable")]
    Unavailable,
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
    #[error("permission source unavailable: {0}")]
    Unavailable(String),
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
