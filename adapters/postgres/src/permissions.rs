//! The permission source on PostgreSQL: the document's owner, then
//! `document_permissions`. Anything else has no access.

use super::PgPool;
use super::schema::{document_permissions, documents};
use async_trait::async_trait;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
use relay_domain::{DocumentId, Role, UserId};
use relay_ports::Cause;
use relay_ports::{Claims, PermissionError, PermissionSource};

#[derive(Debug, Clone)]
pub struct PgPermissions {
    pool: PgPool,
}

impl PgPermissions {
    pub fn new(pool: PgPool) -> PgPermissions {
        PgPermissions { pool }
    }

    /// Grants `role` (for tests and tools; the platform writes these rows).
    /// Creates the document row if needed.
    pub async fn grant(
        &self,
        user: UserId,
        document: DocumentId,
        role: Role,
    ) -> Result<(), PermissionError> {
        use diesel_async::RunQueryDsl;
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| PermissionError::Unavailable(Cause::new(e)))?;
        let err = |e: diesel::result::Error| PermissionError::Unavailable(Cause::new(e));
        diesel::insert_into(documents::table)
            .values(documents::id.eq(*document.as_uuid()))
            .on_conflict_do_nothing()
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        if role == Role::Owner {
            diesel::update(documents::table.find(*document.as_uuid()))
                .set(documents::owner_id.eq(*user.as_uuid()))
                .execute(&mut *conn)
                .await
                .map_err(err)?;
        }
        diesel::insert_into(document_permissions::table)
            .values((
                document_permissions::document_id.eq(*document.as_uuid()),
                document_permissions::user_id.eq(*user.as_uuid()),
                document_permissions::role.eq(role.as_str()),
            ))
            .on_conflict((
                document_permissions::document_id,
                document_permissions::user_id,
            ))
            .do_update()
            .set(document_permissions::role.eq(role.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Removes a grant (ownership stays with the document).
    pub async fn revoke(&self, user: UserId, document: DocumentId) -> Result<(), PermissionError> {
        use diesel_async::RunQueryDsl;
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| PermissionError::Unavailable(Cause::new(e)))?;
        diesel::delete(document_permissions::table.find((*document.as_uuid(), *user.as_uuid())))
            .execute(&mut *conn)
            .await
            .map_err(|e| PermissionError::Unavailable(Cause::new(e)))?;
        Ok(())
    }
}

#[async_trait]
impl PermissionSource for PgPermissions {
    async fn role(
        &self,
        claims: &Claims,
        document: DocumentId,
    ) -> Result<Option<Role>, PermissionError> {
        use diesel_async::RunQueryDsl;
        let user = *claims.user.as_uuid();
        self.pool
            .with_conn(async |conn| {
                let err = |e: diesel::result::Error| PermissionError::Unavailable(Cause::new(e));
                let owner: Option<Option<uuid::Uuid>> = documents::table
                    .find(*document.as_uuid())
                    .select(documents::owner_id)
                    .first(conn)
                    .await
                    .optional()
                    .map_err(err)?;
                if owner.flatten() == Some(user) {
                    return Ok(Some(Role::Owner));
                }
                let role: Option<String> = document_permissions::table
                    .find((*document.as_uuid(), user))
                    .select(document_permissions::role)
                    .first(conn)
                    .await
                    .optional()
                    .map_err(err)?;
                // A role the schema's check should have refused: no access
                // (fail closed), and said loudly.
                Ok(role.and_then(|r| match r.parse() {
                    Ok(role) => Some(role),
                    Err(_) => {
                        tracing::error!(
                            %document,
                            role = %r.escape_debug(),
                            "document_permissions holds an unknown role: no access"
                        );
                        None
                    }
                }))
            })
            .await
    }
}
