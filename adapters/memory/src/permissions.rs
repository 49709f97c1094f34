//! Permission sources that need no database: the token's `docs` claim, and
//! a map for tests.

use async_trait::async_trait;
use relay_domain::{DocumentId, UserId};
use relay_ports::{Claims, PermissionError, PermissionSource, Role};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Roles from the token's `docs` claim (PROTOCOL.md): a document's own
/// entry wins over `"*"`, and a document absent from the claim, or a token
/// without one, has no access. The platform's backend mints short-lived
/// tokens naming documents and roles, so this is a production source (the
/// one `PERMISSION_SOURCE=claims` selects) that never fails: the answer is
/// in the verified token.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClaimsPermissions;

impl ClaimsPermissions {
    pub fn new() -> Self {
        ClaimsPermissions
    }
}

#[async_trait]
impl PermissionSource for ClaimsPermissions {
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError> {
        Ok(claims.role_from_docs(document))
    }
}

/// Grants held in memory, for tests: a user has the role granted to them
/// on a document and nothing else. The token's `docs` claim is ignored, as
/// a database-backed source ignores it. Clones share the same grants, so a
/// test can keep one to grant and revoke while the service holds another.
#[derive(Clone, Debug, Default)]
pub struct MemoryPermissions {
    grants: Arc<Mutex<HashMap<(UserId, DocumentId), Role>>>,
}

impl MemoryPermissions {
    pub fn new() -> Self {
        MemoryPermissions::default()
    }

    /// Gives `user` the `role` on `document`, replacing any earlier one.
    pub fn grant(&self, user: UserId, document: DocumentId, role: Role) {
        self.grants().insert((user, document), role);
    }

    /// Takes away `user`'s role on `document`, if any.
    pub fn revoke(&self, user: UserId, document: DocumentId) {
        self.grants().remove(&(user, document));
    }

    /// Never held across an `.await`; nothing panics while it is held.
    fn grants(&self) -> MutexGuard<'_, HashMap<(UserId, DocumentId), Role>> {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PermissionSource for MemoryPermissions {
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError> {
        Ok(self.grants().get(&(claims.user, document)).copied())
    }
}
