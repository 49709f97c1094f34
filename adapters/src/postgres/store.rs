//! The operation store on PostgreSQL.
//!
//! An append is one statement: it advances the document's head (on its
//! `documents` row) with a compare-and-set and inserts the whole batch only
//! where that succeeded, so it is atomic without an explicit transaction.
//! Losing the compare-and-set to another writer becomes the `Conflict`
//! value, and an op whose `(actor, client, seq)` is already committed the
//! `Duplicate` value - never an error.

use super::PgPool;
use super::schema::{documents, operations, snapshots};
use async_trait::async_trait;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, Queryable};
use relay_domain::{ClientId, CommittedOp, Component, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::{Append, Loaded, OperationStore, Snapshot, StoreError};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The operation store on PostgreSQL. Durable: this is the source of truth
/// in production.
///
/// Appends go through a commit pipeline: committer tasks each take whatever
/// appends are waiting - from any documents - and write them with one
/// statement, so one WAL flush commits many documents' batches. A
/// document's batch goes in only if the document's head (kept on its
/// `documents` row) is the version before it: a compare-and-set on that
/// row, so a concurrent writer on another instance waits for the row lock
/// and then loses with `Conflict`. An idempotency key already committed
/// fails the statement on its unique index; the batches are then retried
/// one by one and that one is answered `Duplicate`.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    queue: mpsc::Sender<AppendRequest>,
}

/// Committer tasks: two, so one statement can execute while the other
/// waits for its WAL flush. More only add CPU contention (measured with
/// `relay-commit-bench`; see the README).
const COMMITTERS: usize = 2;

/// Most appends one committer transaction takes.
const PIPELINE_BATCH: usize = 256;

impl PgStore {
    /// Starts the committer tasks; call inside the runtime.
    pub fn new(pool: PgPool) -> PgStore {
        let (queue, rx) = mpsc::channel(4096);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..COMMITTERS {
            tokio::spawn(committer(pool.clone(), rx.clone()));
        }
        PgStore { pool, queue }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `f` with a connection, bounded by the call timeout; every
    /// failure to reach the database is `Unavailable`.
    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut diesel_async::AsyncPgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let work = async {
            let mut conn = self.pool.get().await.map_err(StoreError::Unavailable)?;
            f(&mut conn).await
        };
        match tokio::time::timeout(self.pool.call_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("database call timed out".into())),
        }
    }
}

fn unavailable(e: DieselError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Where the first change of a delta is.
fn position(delta: &Delta) -> i32 {
    match delta.components().first() {
        // The seed's `position INTEGER`: documents longer than i32::MAX are
        // refused by the configuration with this store.
        Some(Component::Retain { len, attributes }) if attributes.is_empty() => {
            i32::try_from(*len).unwrap_or(i32::MAX)
        }
        _ => 0,
    }
}

/// The text a delta inserts.
fn content(delta: &Delta) -> Option<String> {
    let text: String = delta
        .components()
        .iter()
        .filter_map(|c| match c {
            Component::Insert { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    (!text.is_empty()).then_some(text)
}

/// The formatting a delta applies (the first non-empty attribute map).
fn attributes(delta: &Delta) -> Option<String> {
    delta.components().iter().find_map(|c| match c {
        Component::Retain { attributes, .. } | Component::Insert { attributes, .. }
            if !attributes.is_empty() =>
        {
            serde_json::to_string(attributes).ok()
        }
        _ => None,
    })
}

#[derive(Queryable)]
struct OpRow {
    version: i64,
    actor_id: Uuid,
    client_id: String,
    seq: i64,
    delta: Value,
}

impl OpRow {
    fn into_op(self) -> Result<CommittedOp, StoreError> {
        Ok(CommittedOp {
            version: Version::try_from(self.version).map_err(corrupt)?,
            user: UserId::new(self.actor_id),
            client_id: ClientId::new(self.client_id).map_err(corrupt)?,
            seq: Seq::try_from(self.seq).map_err(corrupt)?,
            delta: Delta::from_json(&self.delta).map_err(corrupt)?,
        })
    }
}

const OP_COLUMNS: (
    operations::version,
    operations::actor_id,
    operations::client_id,
    operations::seq,
    operations::delta,
) = (
    operations::version,
    operations::actor_id,
    operations::client_id,
    operations::seq,
    operations::delta,
);

async fn head(
    conn: &mut diesel_async::AsyncPgConnection,
    document: Uuid,
) -> Result<Version, StoreError> {
    use diesel_async::RunQueryDsl;
    let v: Option<i64> = documents::table
        .filter(documents::id.eq(document))
        .select(documents::head)
        .first(conn)
        .await
        .optional()
        .map_err(unavailable)?;
    Version::try_from(v.unwrap_or(0)).map_err(corrupt)
}

/// After a refused append: which of the batch's keys is already committed
/// (`Duplicate`), else the head (`Conflict`).
async fn explain_refusal(
    conn: &mut diesel_async::AsyncPgConnection,
    document: Uuid,
    ops: &[CommittedOp],
) -> Result<Append, StoreError> {
    use diesel_async::RunQueryDsl;
    for op in ops {
        let found: Option<i64> = operations::table
            .filter(operations::document_id.eq(document))
            .filter(operations::actor_id.eq(*op.user.as_uuid()))
            .filter(operations::client_id.eq(op.client_id.as_str()))
            .filter(operations::seq.eq(i64::from(op.seq)))
            .select(operations::version)
            .first(conn)
            .await
            .optional()
            .map_err(unavailable)?;
        if let Some(v) = found {
            return Ok(Append::Duplicate {
                user: op.user,
                client_id: op.client_id.clone(),
                seq: op.seq,
                version: Version::try_from(v).map_err(corrupt)?,
            });
        }
    }
    Ok(Append::Conflict {
        current: head(conn, document).await?,
    })
}

/// One document's batch, columns ready for the insert.
#[derive(Default)]
struct Rows {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    actors: Vec<Uuid>,
    clients: Vec<String>,
    seqs: Vec<i64>,
    types: Vec<String>,
    positions: Vec<i32>,
    contents: Vec<Option<String>>,
    /// JSON text (PostgreSQL parses it into `jsonb` anyway; building
    /// `serde_json::Value` trees first only costs allocations).
    attributes: Vec<Option<String>>,
    clocks: Vec<String>,
    deltas: Vec<String>,
}

impl Rows {
    fn extend(&mut self, o: &Rows) {
        self.ids.extend_from_slice(&o.ids);
        self.versions.extend_from_slice(&o.versions);
        self.actors.extend_from_slice(&o.actors);
        self.clients.extend_from_slice(&o.clients);
        self.seqs.extend_from_slice(&o.seqs);
        self.types.extend_from_slice(&o.types);
        self.positions.extend_from_slice(&o.positions);
        self.contents.extend_from_slice(&o.contents);
        self.attributes.extend_from_slice(&o.attributes);
        self.clocks.extend_from_slice(&o.clocks);
        self.deltas.extend_from_slice(&o.deltas);
    }

    fn of(ops: &[CommittedOp]) -> Result<Rows, StoreError> {
        let n = ops.len();
        let mut r = Rows {
            ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            clients: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            contents: Vec::with_capacity(n),
            attributes: Vec::with_capacity(n),
            clocks: Vec::with_capacity(n),
            deltas: Vec::with_capacity(n),
        };
        for op in ops {
            r.ids.push(Uuid::new_v4());
            r.versions.push(i64::from(op.version));
            r.actors.push(*op.user.as_uuid());
            r.clients.push(op.client_id.as_str().to_owned());
            r.seqs.push(i64::from(op.seq));
            r.types
                .push(relay_ports::metrics::operation_type(&op.delta).to_owned());
            r.positions.push(position(&op.delta));
            r.contents.push(content(&op.delta));
            r.attributes.push(attributes(&op.delta));
            r.clocks.push(format!(
                r#"{{"server":{},"client":{}}}"#,
                op.version.get() - 1,
                op.seq
            ));
            r.deltas
                .push(serde_json::to_string(&op.delta).map_err(corrupt)?);
        }
        Ok(r)
    }
}

struct AppendRequest {
    document: Uuid,
    rows: Rows,
    ops: Vec<CommittedOp>,
    reply: oneshot::Sender<Result<Append, StoreError>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("document", &self.document)
            .finish_non_exhaustive()
    }
}

async fn committer(pool: PgPool, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<AppendRequest>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < PIPELINE_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let mut results: Vec<Option<Result<Append, StoreError>>> =
            batch.iter().map(|_| None).collect();
        for round in rounds(batch.iter().map(|r| r.document)) {
            let requests: Vec<&AppendRequest> = round.iter().map(|&i| &batch[i]).collect();
            let answers = commit_batch(&pool, &requests).await;
            for (i, result) in round.into_iter().zip(answers) {
                results[i] = Some(result);
            }
        }
        for (request, result) in batch.into_iter().zip(results) {
            let result = result.expect("every request is in a round");
            let _ = request.reply.send(result);
        }
    }
}

/// Splits a batch (given by each request's document) into statements in
/// which each document appears at most once, keeping each document's
/// requests in their order; returns the requests' indexes per statement.
fn rounds(documents: impl Iterator<Item = Uuid>) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut next_round: std::collections::HashMap<Uuid, usize> = Default::default();
    for (i, document) in documents.enumerate() {
        let round = next_round.entry(document).or_insert(0);
        if *round == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*round].push(i);
        *round += 1;
    }
    rounds
}

/// Inserts every request's batch in one statement. A request's rows go in
/// only if its document's head is the version before them: the statement
/// advances `documents.head` with a compare-and-set (creating the row for a
/// document's first append), and inserts the rows of the documents it
/// advanced - all or nothing per request. A concurrent writer of the same
/// document waits on the row lock and then finds the head moved. An
/// idempotency key that is already committed fails the whole statement on
/// the unique index; then each request is retried on its own.
///
/// The statement has a static query id, so each connection prepares it
/// once and PostgreSQL can reuse its plan. Its only lookups are on the
/// documents' primary key, so no plan can turn into a scan of the log.
/// A document appears at most once per statement (see [`rounds`]).
struct AppendMany<'a> {
    rows: &'a Rows,
    documents: &'a [Uuid],
    expected: &'a [i64],
}

const APPEND_MANY_HEAD: &str = "WITH b AS (SELECT * FROM unnest(";
const APPEND_MANY_TAIL: &str =
    ") AS b(id, document_id, version, actor_id, client_id, seq, operation_type, position,
             content, attributes, vector_clock, delta, expected_head)
),
r AS (
    SELECT document_id, expected_head, MAX(version) AS last
    FROM b GROUP BY document_id, expected_head
),
created AS (
    INSERT INTO documents AS d (id, head)
    SELECT document_id, last FROM r WHERE expected_head = 0
    ON CONFLICT (id) DO UPDATE SET head = EXCLUDED.head WHERE d.head = 0
    RETURNING d.id
),
advanced AS (
    UPDATE documents d SET head = r.last
    FROM r
    WHERE r.expected_head > 0 AND d.id = r.document_id AND d.head = r.expected_head
    RETURNING d.id
),
won AS (SELECT id FROM created UNION ALL SELECT id FROM advanced)
INSERT INTO operations (id, document_id, version, actor_id, client_id, seq, operation_type,
                        position, content, attributes, vector_clock, delta)
SELECT b.id, b.document_id, b.version, b.actor_id, b.client_id, b.seq, b.operation_type,
       b.position, b.content, b.attributes::jsonb, b.vector_clock::jsonb, b.delta::jsonb
FROM b JOIN won ON won.id = b.document_id
RETURNING document_id, version";

impl diesel::query_builder::QueryId for AppendMany<'_> {
    type QueryId = AppendMany<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for AppendMany<'_> {
    type SqlType = (SqlUuid, BigInt);
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for AppendMany<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        let r = self.rows;
        // The unnest's arguments, in its column order.
        macro_rules! then_bind {
            ($t:ty, $v:expr) => {
                out.push_sql(", ");
                out.push_bind_param::<$t, _>($v)?;
            };
        }
        out.push_sql(APPEND_MANY_HEAD);
        out.push_bind_param::<Array<SqlUuid>, _>(&r.ids)?;
        then_bind!(Array<SqlUuid>, self.documents);
        then_bind!(Array<BigInt>, &r.versions);
        then_bind!(Array<SqlUuid>, &r.actors);
        then_bind!(Array<Text>, &r.clients);
        then_bind!(Array<BigInt>, &r.seqs);
        then_bind!(Array<Text>, &r.types);
        then_bind!(Array<Integer>, &r.positions);
        then_bind!(Array<Nullable<Text>>, &r.contents);
        then_bind!(Array<Nullable<Text>>, &r.attributes);
        then_bind!(Array<Text>, &r.clocks);
        then_bind!(Array<Text>, &r.deltas);
        then_bind!(Array<BigInt>, self.expected);
        out.push_sql(APPEND_MANY_TAIL);
        Ok(())
    }
}

/// A row [`AppendMany`] wrote.
struct Written {
    document_id: Uuid,
    version: i64,
}

/// Runs [`AppendMany`] for `requests`; returns the rows written.
async fn insert(
    conn: &mut diesel_async::AsyncPgConnection,
    requests: &[&AppendRequest],
) -> Result<Vec<Written>, DieselError> {
    use diesel_async::RunQueryDsl;
    let mut rows = Rows::default();
    let mut documents = Vec::new();
    let mut expected = Vec::new();
    for r in requests {
        rows.extend(&r.rows);
        documents.extend(std::iter::repeat_n(r.document, r.ops.len()));
        expected.extend(std::iter::repeat_n(r.rows.versions[0] - 1, r.ops.len()));
    }
    let written: Vec<(Uuid, i64)> = AppendMany {
        rows: &rows,
        documents: &documents,
        expected: &expected,
    }
    .load(conn)
    .await?;
    Ok(written
        .into_iter()
        .map(|(document_id, version)| Written {
            document_id,
            version,
        })
        .collect())
}

/// Writes every request's batch with one statement (one WAL flush); returns
/// each outcome.
async fn commit_batch(pool: &PgPool, batch: &[&AppendRequest]) -> Vec<Result<Append, StoreError>> {
    let fail = |e: String| -> Vec<Result<Append, StoreError>> {
        batch
            .iter()
            .map(|_| Err(StoreError::Unavailable(e.clone())))
            .collect()
    };
    let mut conn = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let written = match insert(&mut conn, batch).await {
        Ok(w) => w,
        Err(DieselError::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            // An idempotency key is already committed: one by one, so only
            // that request is answered `Duplicate`.
            drop(conn);
            let mut results = Vec::with_capacity(batch.len());
            for r in batch {
                results.push(commit_one(pool, r).await);
            }
            return results;
        }
        Err(e) => return fail(e.to_string()),
    };
    let mut results = Vec::with_capacity(batch.len());
    for r in batch {
        let first = r.rows.versions[0];
        let last = r.rows.versions[r.rows.versions.len() - 1];
        let n = written
            .iter()
            .filter(|w| w.document_id == r.document && (first..=last).contains(&w.version))
            .count();
        results.push(match n {
            n if n == r.ops.len() => Ok(Append::Committed),
            0 => explain_refusal(&mut conn, r.document, &r.ops).await,
            n => Err(corrupt(format!("append wrote {n} of {} rows", r.ops.len()))),
        });
    }
    results
}

/// One request on its own (after its batch's statement hit a committed
/// idempotency key).
async fn commit_one(pool: &PgPool, r: &AppendRequest) -> Result<Append, StoreError> {
    let mut conn = pool.get().await.map_err(StoreError::Unavailable)?;
    match insert(&mut conn, &[r]).await.map(|w| w.len()) {
        Ok(n) if n == r.ops.len() => Ok(Append::Committed),
        Ok(0) => explain_refusal(&mut conn, r.document, &r.ops).await,
        Err(DieselError::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, e)) => {
            match explain_refusal(&mut conn, r.document, &r.ops).await? {
                duplicate @ Append::Duplicate { .. } => Ok(duplicate),
                // The head matched but a version is taken: the log and the
                // document's head disagree.
                _ => Err(corrupt(format!(
                    "operations past the document's head: {}",
                    e.message()
                ))),
            }
        }
        Ok(n) => Err(corrupt(format!("append wrote {n} of {} rows", r.ops.len()))),
        Err(e) => Err(unavailable(e)),
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
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            document: *document.as_uuid(),
            rows: Rows::of(ops)?,
            ops: ops.to_vec(),
            reply,
        };
        let wait = async {
            self.queue
                .send(request)
                .await
                .map_err(|_| StoreError::Unavailable("commit pipeline stopped".into()))?;
            answer
                .await
                .map_err(|_| StoreError::Unavailable("commit pipeline stopped".into()))?
        };
        // On a timeout the append may still commit: the client's retry is
        // then answered as a duplicate, so nothing is applied twice.
        match tokio::time::timeout(self.pool.call_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("database call timed out".into())),
        }
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
                return Err(corrupt("a snapshot past the head"));
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
        if self.pool.ping().await {
            Ok(())
        } else {
            Err(StoreError::Unavailable("database does not answer".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rounds;
    use uuid::Uuid;

    #[test]
    fn rounds_keep_each_document_once_per_statement_and_in_order() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(rounds([a, b, c].into_iter()), vec![vec![0, 1, 2]]);
        assert_eq!(
            rounds([a, b, a, a, c, b].into_iter()),
            vec![vec![0, 1, 4], vec![2, 5], vec![3]]
        );
        assert_eq!(rounds(std::iter::empty()), Vec::<Vec<usize>>::new());
    }
}
