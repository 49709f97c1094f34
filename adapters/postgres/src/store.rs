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
use relay_domain::{
    ClientId, CommittedOp, Delta, DocumentId, OpKey, Seq, Timestamp, UserId, Version,
};
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

/// A version read with `sql_query`.
#[derive(diesel::QueryableByName)]
struct Versioned {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version: i64,
}

#[async_trait]
impl OperationStore for PgStore {
    async fn append(
        &self,
        document: DocumentId,
        prev: Option<OpKey>,
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
            .append(*document.as_uuid(), prev, rows, ops.to_vec())
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

    async fn read_within(
        &self,
        document: DocumentId,
        after: Version,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedOp>, StoreError> {
        use diesel::sql_types::{BigInt, Uuid as SqlUuid};
        use diesel_async::RunQueryDsl;
        let doc = *document.as_uuid();
        let (after, max_ops) = (i64::from(after), i64::try_from(max_ops).unwrap_or(i64::MAX));
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        self.with_conn(async |conn| {
            // The running size is summed over at most `max_ops` rows, in the
            // database; only the rows within the budget (and always the
            // first) are sent.
            let rows: Vec<OpRow> = diesel::sql_query(
                "SELECT version, actor_id, client_id, seq, delta FROM (
                     SELECT o.*,
                            row_number() OVER w AS n,
                            sum(octet_length(o.delta::text)) OVER w AS total
                     FROM (SELECT version, actor_id, client_id, seq, delta
                           FROM operations
                           WHERE document_id = $1 AND version > $2
                           ORDER BY version LIMIT $3) o
                     WINDOW w AS (ORDER BY o.version)
                 ) s
                 WHERE n = 1 OR total <= $4
                 ORDER BY version",
            )
            .bind::<SqlUuid, _>(doc)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(max_ops)
            .bind::<BigInt, _>(max_bytes)
            .load(conn)
            .await
            .map_err(unavailable)?;
            rows.into_iter().map(OpRow::into_op).collect()
        })
        .await
    }

    async fn snapshot(&self, document: DocumentId) -> Result<Option<Snapshot>, StoreError> {
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
            snap.map(|(v, content)| {
                Ok(Snapshot {
                    version: Version::try_from(v).map_err(corrupt)?,
                    content: Delta::from_json(&content).map_err(corrupt)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn head(&self, document: DocumentId) -> Result<Version, StoreError> {
        self.with_conn(async |conn| head(conn, *document.as_uuid()).await)
            .await
    }

    async fn heads(&self, documents: &[DocumentId]) -> Result<Vec<Version>, StoreError> {
        use diesel_async::RunQueryDsl;
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = documents.iter().map(|d| *d.as_uuid()).collect();
        self.with_conn(async |conn| {
            // One round trip: `id = ANY($1)`, a primary-key lookup each.
            let found: Vec<(uuid::Uuid, i64)> = documents::table
                .filter(documents::id.eq_any(&ids))
                .select((documents::id, documents::head))
                .load(conn)
                .await
                .map_err(unavailable)?;
            let found: std::collections::HashMap<uuid::Uuid, i64> = found.into_iter().collect();
            ids.iter()
                .map(|id| Version::try_from(found.get(id).copied().unwrap_or(0)).map_err(corrupt))
                .collect()
        })
        .await
    }

    async fn first_since(
        &self,
        document: DocumentId,
        at: Timestamp,
    ) -> Result<Option<Version>, StoreError> {
        use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
        use diesel_async::RunQueryDsl;
        let doc = *document.as_uuid();
        let Some(at) = i64::try_from(at.as_millis())
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
        else {
            // Past any time the database can hold: nothing was committed
            // then.
            return Ok(None);
        };
        self.with_conn(async |conn| {
            // The version after the newest op committed before `at`: the
            // log's primary key walked back from the head, as far as the
            // ops committed since `at` (what a history limit keeps anyway),
            // then one lookup forward. The index on `created_at` alone
            // would walk every document's ops since `at`.
            let found: Option<Versioned> = diesel::sql_query(
                "SELECT o.version FROM operations o
                 WHERE o.document_id = $1
                   AND o.version > COALESCE((
                       SELECT p.version FROM operations p
                       WHERE p.document_id = $1 AND p.created_at < $2
                       ORDER BY p.version DESC LIMIT 1), 0)
                 ORDER BY o.version LIMIT 1",
            )
            .bind::<SqlUuid, _>(doc)
            .bind::<Timestamptz, _>(at)
            .get_result(conn)
            .await
            .optional()
            .map_err(unavailable)?;
            found
                .map(|v| Version::try_from(v.version))
                .transpose()
                .map_err(corrupt)
        })
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
