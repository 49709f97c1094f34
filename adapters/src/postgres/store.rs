//! The operation store on PostgreSQL.
//!
//! An append is one statement: it inserts the whole batch only if the
//! document's head is the version before the batch, so it is atomic without
//! an explicit transaction. A unique violation - another writer took the
//! version, or an op's `(actor, client, seq)` is already committed - becomes
//! the `Conflict` or `Duplicate` value, never an error.

use super::PgPool;
use super::schema::{documents, operations, snapshots};
use async_trait::async_trait;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, Queryable};
use relay_domain::{ClientId, CommittedOp, Component, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::{Append, Loaded, OperationStore, Snapshot, StoreError};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The operation store on PostgreSQL. Durable: this is the source of truth
/// in production.
///
/// Appends go through a commit pipeline: a few committer tasks each take
/// whatever appends are waiting - from any documents - and write them with
/// one statement, so one WAL flush commits many documents' batches. The
/// statement inserts a document's batch only if the document's head is the
/// version before it and none of its idempotency keys is committed: all or
/// nothing per batch. If a concurrent writer (another instance) takes a
/// version meanwhile, the statement fails on the unique (document, version)
/// and each batch is retried on its own, where that failure becomes the
/// `Conflict` or `Duplicate` value.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    queue: mpsc::Sender<AppendRequest>,
}

/// Most appends one committer transaction takes.
const PIPELINE_BATCH: usize = 256;

impl PgStore {
    /// Starts the committer tasks; call inside the runtime.
    pub fn new(pool: PgPool) -> PgStore {
        let (queue, rx) = mpsc::channel(4096);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let committers = (pool.size / 2).clamp(1, 8);
        let known = Arc::new(Mutex::new(HashSet::new()));
        for _ in 0..committers {
            tokio::spawn(committer(pool.clone(), rx.clone(), known.clone()));
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
        Some(Component::Retain { len, attributes }) if attributes.is_empty() => *len as i32,
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
fn attributes(delta: &Delta) -> Option<Value> {
    delta.components().iter().find_map(|c| match c {
        Component::Retain { attributes, .. } | Component::Insert { attributes, .. }
            if !attributes.is_empty() =>
        {
            serde_json::to_value(attributes).ok()
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
            version: Version(self.version as u64),
            user: UserId(self.actor_id),
            client_id: ClientId::new(self.client_id).map_err(corrupt)?,
            seq: Seq(self.seq as u64),
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
    use diesel::dsl::max;
    use diesel_async::RunQueryDsl;
    let v: Option<i64> = operations::table
        .filter(operations::document_id.eq(document))
        .select(max(operations::version))
        .first(conn)
        .await
        .map_err(unavailable)?;
    Ok(Version(v.unwrap_or(0) as u64))
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
            .filter(operations::actor_id.eq(op.user.0))
            .filter(operations::client_id.eq(op.client_id.as_str()))
            .filter(operations::seq.eq(op.seq.0 as i64))
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
                version: Version(v as u64),
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
    attributes: Vec<Option<Value>>,
    clocks: Vec<Value>,
    deltas: Vec<Value>,
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
            r.versions.push(op.version.0 as i64);
            r.actors.push(op.user.0);
            r.clients.push(op.client_id.as_str().to_owned());
            r.seqs.push(op.seq.0 as i64);
            r.types
                .push(relay_ports::metrics::operation_type(&op.delta).to_owned());
            r.positions.push(position(&op.delta));
            r.contents.push(content(&op.delta));
            r.attributes.push(attributes(&op.delta));
            r.clocks
                .push(json!({"server": op.version.0 - 1, "client": op.seq.0}));
            r.deltas
                .push(serde_json::to_value(&op.delta).map_err(corrupt)?);
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

async fn committer(
    pool: PgPool,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<AppendRequest>>>,
    known: Arc<Mutex<HashSet<Uuid>>>,
) {
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
        let results = commit_batch(&pool, &batch, &known).await;
        for (request, result) in batch.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}

/// Inserts every request's batch in one statement: a request's rows go in
/// only if its document's head is the version before them and none of its
/// idempotency keys is committed (all or nothing per request). The checks
/// read the statement's snapshot; a concurrent writer of the same version
/// makes the statement fail on a unique violation instead (then each
/// request is retried on its own).
const APPEND_MANY: &str = "
WITH b AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::int8[],
                         $7::text[], $8::int4[], $9::text[], $10::jsonb[], $11::jsonb[],
                         $12::jsonb[], $13::int8[])
        AS b(id, document_id, version, actor_id, client_id, seq, operation_type, position,
             content, attributes, vector_clock, delta, expected_head)
),
heads AS (
    SELECT d.document_id,
           (SELECT COALESCE(MAX(o.version), 0) FROM operations o
             WHERE o.document_id = d.document_id) AS head
    FROM (SELECT DISTINCT document_id FROM b) d
),
duplicated AS (
    SELECT DISTINCT b.document_id, b.expected_head
    FROM b JOIN operations o
      ON o.document_id = b.document_id AND o.actor_id = b.actor_id
     AND o.client_id = b.client_id AND o.seq = b.seq
)
INSERT INTO operations (id, document_id, version, actor_id, client_id, seq, operation_type,
                        position, content, attributes, vector_clock, delta)
SELECT b.id, b.document_id, b.version, b.actor_id, b.client_id, b.seq, b.operation_type,
       b.position, b.content, b.attributes, b.vector_clock, b.delta
FROM b JOIN heads h ON h.document_id = b.document_id
WHERE h.head = b.expected_head
  AND NOT EXISTS (SELECT 1 FROM duplicated x
                   WHERE x.document_id = b.document_id AND x.expected_head = b.expected_head)
RETURNING document_id, version
";

#[derive(diesel::QueryableByName)]
struct Written {
    #[diesel(sql_type = SqlUuid)]
    document_id: Uuid,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

/// Runs [`APPEND_MANY`] for `requests`; returns the rows written.
async fn insert(
    conn: &mut diesel_async::AsyncPgConnection,
    requests: &[&AppendRequest],
) -> Result<Vec<Written>, DieselError> {
    use diesel_async::RunQueryDsl;
    let mut all = Rows::default();
    let mut docs = Vec::new();
    let mut expected = Vec::new();
    for r in requests {
        all.extend(&r.rows);
        docs.extend(std::iter::repeat_n(r.document, r.ops.len()));
        expected.extend(std::iter::repeat_n(r.rows.versions[0] - 1, r.ops.len()));
    }
    diesel::sql_query(APPEND_MANY)
        .bind::<Array<SqlUuid>, _>(&all.ids)
        .bind::<Array<SqlUuid>, _>(&docs)
        .bind::<Array<BigInt>, _>(&all.versions)
        .bind::<Array<SqlUuid>, _>(&all.actors)
        .bind::<Array<Text>, _>(&all.clients)
        .bind::<Array<BigInt>, _>(&all.seqs)
        .bind::<Array<Text>, _>(&all.types)
        .bind::<Array<Integer>, _>(&all.positions)
        .bind::<Array<Nullable<Text>>, _>(&all.contents)
        .bind::<Array<Nullable<Jsonb>>, _>(&all.attributes)
        .bind::<Array<Jsonb>, _>(&all.clocks)
        .bind::<Array<Jsonb>, _>(&all.deltas)
        .bind::<Array<BigInt>, _>(&expected)
        .load::<Written>(conn)
        .await
}

/// Writes every request's batch with one statement (one WAL flush); returns
/// each outcome.
async fn commit_batch(
    pool: &PgPool,
    batch: &[AppendRequest],
    known: &Mutex<HashSet<Uuid>>,
) -> Vec<Result<Append, StoreError>> {
    use diesel_async::RunQueryDsl;
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
    let unknown: Vec<Uuid> = {
        let known = known.lock().expect("lock");
        batch
            .iter()
            .map(|r| r.document)
            .filter(|d| !known.contains(d))
            .collect()
    };
    // Two autocommit statements: the documents rows (idempotent), then the
    // single atomic insert of every batch.
    if !unknown.is_empty() {
        let r = diesel::sql_query(
            "INSERT INTO documents (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind::<Array<SqlUuid>, _>(&unknown)
        .execute(&mut *conn)
        .await;
        if let Err(e) = r {
            return fail(e.to_string());
        }
    }
    let requests: Vec<&AppendRequest> = batch.iter().collect();
    let written = insert(&mut conn, &requests).await;
    let written = match written {
        Ok(w) => w,
        Err(DieselError::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            // Another writer raced us on a version: one by one.
            drop(conn);
            let mut results = Vec::with_capacity(batch.len());
            for r in batch {
                results.push(commit_one(pool, r, known).await);
            }
            return results;
        }
        Err(e) => return fail(e.to_string()),
    };
    known
        .lock()
        .expect("lock")
        .extend(batch.iter().map(|r| r.document));
    let mut results = Vec::with_capacity(batch.len());
    for r in batch {
        let first = r.rows.versions[0];
        let last = first + r.ops.len() as i64 - 1;
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

/// One request on its own (after the batch statement lost a race).
async fn commit_one(
    pool: &PgPool,
    r: &AppendRequest,
    known: &Mutex<HashSet<Uuid>>,
) -> Result<Append, StoreError> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.map_err(StoreError::Unavailable)?;
    diesel::insert_into(documents::table)
        .values(documents::id.eq(r.document))
        .on_conflict_do_nothing()
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    known.lock().expect("lock").insert(r.document);
    let n = insert(&mut conn, &[r]).await.map(|w| w.len());
    match n {
        Ok(n) if n == r.ops.len() => Ok(Append::Committed),
        Ok(0)
        | Err(DieselError::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            explain_refusal(&mut conn, r.document, &r.ops).await
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
            document: document.0,
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
        let doc = document.0;
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
                    version: Version(v as u64),
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
        let doc = document.0;
        let limit = limit.min(i64::MAX as usize) as i64;
        let after = after.0.min(i64::MAX as u64) as i64;
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
        self.with_conn(async |conn| head(conn, document.0).await)
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
        let (doc, client) = (document.0, client_id.as_str().to_owned());
        self.with_conn(async |conn| {
            let v: Option<i64> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::actor_id.eq(user.0))
                .filter(operations::client_id.eq(&client))
                .filter(operations::seq.eq(seq.0 as i64))
                .select(operations::version)
                .first(conn)
                .await
                .optional()
                .map_err(unavailable)?;
            Ok(v.map(|v| Version(v as u64)))
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
        let (doc, client) = (document.0, client_id.as_str().to_owned());
        self.with_conn(async |conn| {
            let row: Option<(i64, i64)> = operations::table
                .filter(operations::document_id.eq(doc))
                .filter(operations::actor_id.eq(user.0))
                .filter(operations::client_id.eq(&client))
                .order(operations::seq.desc())
                .select((operations::seq, operations::version))
                .first(conn)
                .await
                .optional()
                .map_err(unavailable)?;
            Ok(row.map(|(s, v)| (Seq(s as u64), Version(v as u64))))
        })
        .await
    }

    async fn save_snapshot(
        &self,
        document: DocumentId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        use diesel_async::RunQueryDsl;
        let doc = document.0;
        let content = serde_json::to_value(&snapshot.content).map_err(corrupt)?;
        let version = snapshot.version.0 as i64;
        self.with_conn(async |conn| {
            if Version(version as u64) > head(conn, doc).await? {
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
