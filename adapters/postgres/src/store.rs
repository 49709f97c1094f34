//! The operation store on PostgreSQL.
//!
//! An append is one statement: it advances the document's head (on its
//! `documents` row) with a compare-and-set and inserts the whole batch only
//! where that succeeded, so it is atomic without an explicit transaction.
//! Losing the compare-and-set to another writer becomes the `Conflict`
//! value, and an op whose `(actor, client, seq)` is already committed the
//! `Duplicate` value - never an error. Appends go through the commit
//! pipeline (`commit`), the statement and its rows are in `append`.

use super::PgPool;
use super::append::{OP_COLUMNS, OpRow, Rows, head};
use super::commit::Pipeline;
use super::error::{corrupt, corrupt_msg, unavailable};
use super::schema::{documents, operations, snapshots};
use async_trait::async_trait;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
use relay_domain::{ClientId, CommittedOp, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::Cause;
use relay_ports::{Append, Loaded, OperationStore, Snapshot, StoreError};
use serde_json::Value;

/// The operation store on PostgreSQL. Durable: this is the source of truth
/// in production.
///
/// Appends from every document go through one commit pipeline: committer
/// tasks write whatever is waiting with one statement, so one WAL flush
/// commits many documents' batches. A document's batch goes in only if the
/// document's head (kept on its `documents` row) is the version before it:
/// a compare-and-set on that row, so a concurrent writer on another
/// instance waits for the row lock and then loses with `Conflict`. A batch
/// whose data PostgreSQL refuses fails alone (`Rejected`), and an append
/// is `Unavailable` only when nothing was written (see `commit`).
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    pipeline: Pipeline,
    check_data: bool,
}

impl PgStore {
    /// Starts the committer tasks; call inside the runtime.
    pub fn new(pool: PgPool) -> PgStore {
        let pipeline = Pipeline::start(pool.clone());
        PgStore {
            pool,
            pipeline,
            check_data: true,
        }
    }

    /// A store that sends data it would refuse to PostgreSQL anyway (for
    /// tests of what the database's refusals do).
    #[doc(hidden)]
    pub fn without_data_checks(pool: PgPool) -> PgStore {
        PgStore {
            check_data: false,
            ..PgStore::new(pool)
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// [`PgPool::with_conn`], for the store's calls: every failure to reach
    /// the database is `Unavailable`.
    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut diesel_async::AsyncPgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.pool.with_conn(f).await
    }
}

#[async_trait]
impl OperationStore for PgStore {
    async fn append(
        &self,
        document: DocumentId,
        ops: &[CommittedOp],
    ) -> Result<Append, StoreError> {
        if ops.is_empty() {
            return Ok(Append::Committed);
        }
        relay_ports::store::check_batch(ops)?;
        // What PostgreSQL would refuse is refused here, for this batch only.
        if self.check_data {
            relay_ports::store::check_storable(ops)?;
        }
        let rows = Rows::of(ops)?;
        self.pipeline
            .append(*document.as_uuid(), rows, ops.to_vec())
            .await
    }

    async fn load(&self, document: DocumentId) -> Result<Loaded, StoreError> {
        use diesel_async::RunQueryDsl;
        let doc = *document.as_uuid();
        self.with_conn(async |conn| {
            let snap: Option<(i64, Value)> = snapshots::table
                .filter(snapshots::document_id.eq(doc))
                .order(snapshots::version.desc())
                .select((snapshots::version, snapshots::content))
                .first(conn)
                .await
                .optional()
                .map_err(unavailable)?;
            let after = snap.as_ref().map_or(0, |s| s.0);
            let rows: Vec<OpRow> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::version.gt(after))
                .order(operations::version.asc())
                .select(OP_COLUMNS)
                .load(conn)
                .await
                .map_err(unavailable)?;
            let snapshot = match snap {
                Some((v, content)) => Some(Snapshot {
                    version: Version::try_from(v).map_err(corrupt)?,
                    content: Delta::from_json(&content).map_err(corrupt)?,
                }),
                None => None,
            };
            let tail = rows
                .into_iter()
                .map(OpRow::into_op)
                .collect::<Result<_, _>>()?;
            Ok(Loaded { snapshot, tail })
        })
        .await
    }

    async fn read(
        &self,
        document: DocumentId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        use diesel_async::RunQueryDsl;
        let doc = *document.as_uuid();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = i64::from(after);
        self.with_conn(async |conn| {
            let rows: Vec<OpRow> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::version.gt(after))
                .order(operations::version.asc())
                .limit(limit)
                .select(OP_COLUMNS)
                .load(conn)
                .await
                .map_err(unavailable)?;
            rows.into_iter().map(OpRow::into_op).collect()
        })
        .await
    }

    async fn head(&self, document: DocumentId) -> Result<Version, StoreError> {
        self.with_conn(async |conn| head(conn, *document.as_uuid()).await)
            .await
    }

    async fn find(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
        seq: Seq,
    ) -> Result<Option<Version>, StoreError> {
        use diesel_async::RunQueryDsl;
        let (doc, client) = (*document.as_uuid(), client_id.as_str().to_owned());
        self.with_conn(async |conn| {
            let v: Option<i64> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::actor_id.eq(*user.as_uuid()))
                .filter(operations::client_id.eq(&client))
                .filter(operations::seq.eq(i64::from(seq)))
                .select(operations::version)
                .first(conn)
                .await
                .optional()
                .map_err(unavailable)?;
            v.map(Version::try_from).transpose().map_err(corrupt)
        })
        .await
    }

    async fn last_seq(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<Option<(Seq, Version)>, StoreError> {
        use diesel_async::RunQueryDsl;
        let (doc, client) = (*document.as_uuid(), client_id.as_str().to_owned());
        self.with_conn(async |conn| {
            let row: Option<(i64, i64)> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::actor_id.eq(*user.as_uuid()))
                .filter(operations::client_id.eq(&client))
                .order(operations::seq.desc())
                .select((operations::seq, operations::version))
                .first(conn)
                .await
                .optional()
                .map_err(unavailable)?;
            row.map(|(s, v)| {
                Ok::<_, relay_domain::ids::OutOfRange>((Seq::try_from(s)?, Version::try_from(v)?))
            })
            .transpose()
            .map_err(corrupt)
        })
        .await
    }

    async fn save_snapshot(
        &self,
        document: DocumentId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        use diesel_async::RunQueryDsl;
        let doc = *document.as_uuid();
        let content = serde_json::to_value(&snapshot.content).map_err(corrupt)?;
        let version = i64::from(snapshot.version);
        self.with_conn(async |conn| {
            if snapshot.version > head(conn, doc).await? {
                return Err(corrupt_msg("a snapshot past the head"));
            }
            let latest: Option<i64> = snapshots::table
                .filter(snapshots::document_id.eq(doc))
                .select(diesel::dsl::max(snapshots::version))
                .first(conn)
                .await
                .map_err(unavailable)?;
            if latest.is_some_and(|l| l >= version) {
                return Ok(());
            }
            if version == 0 {
                diesel::insert_into(documents::table)
                    .values(documents::id.eq(doc))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await
                    .map_err(unavailable)?;
            }
            diesel::insert_into(snapshots::table)
                .values((
                    snapshots::document_id.eq(doc),
                    snapshots::version.eq(version),
                    snapshots::content.eq(&content),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.pipeline.health.stalled(self.pool.statement_timeout) {
            return Err(StoreError::Unavailable(Cause::msg(
                "writes are stuck: appends waiting and none finished within the statement timeout",
            )));
        }
        if self.pool.ping().await {
            Ok(())
        } else {
            Err(StoreError::Unavailable(Cause::msg(
                "database does not answer",
            )))
        }
    }
}
