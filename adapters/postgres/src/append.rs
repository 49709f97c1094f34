//! The append statement and what it writes: each op's row with the seed's
//! derived columns, one statement for many documents' batches, and the
//! lookups that explain a refused append.

use super::error::{corrupt, unavailable};
use super::schema::{documents, operations};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, SmallInt, Text, Uuid as SqlUuid};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, Queryable, QueryableByName};
use relay_domain::{ClientId, CommittedOp, Component, Delta, OpKey, Seq, UserId, Version};
use relay_ports::Cause;
use relay_ports::{Append, StoreError};
use serde_json::Value;
use uuid::Uuid;

/// Where the first change of a delta is: the seed's `position INTEGER`.
/// A position past `i32::MAX` cannot be stored (the configuration keeps
/// documents shorter than that with this store): that batch is refused,
/// no other.
fn position(delta: &Delta) -> Result<i32, StoreError> {
    match delta.components().first() {
        Some(Component::Retain { len, attributes }) if attributes.is_empty() => i32::try_from(*len)
            .map_err(|_| {
                StoreError::Rejected(Cause::msg(format!("position {len} is over i32::MAX")))
            }),
        _ => Ok(0),
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

/// An op's row, read by the query builder or by `sql_query`.
#[derive(Queryable, QueryableByName)]
pub(super) struct OpRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = SqlUuid)]
    actor_id: Uuid,
    #[diesel(sql_type = Text)]
    client_id: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    delta: Value,
}

impl OpRow {
    pub(super) fn into_op(self) -> Result<CommittedOp, StoreError> {
        Ok(CommittedOp {
            version: Version::try_from(self.version).map_err(corrupt)?,
            user: UserId::new(self.actor_id),
            client_id: ClientId::new(self.client_id).map_err(corrupt)?,
            seq: Seq::try_from(self.seq).map_err(corrupt)?,
            delta: Delta::from_json(&self.delta).map_err(corrupt)?,
        })
    }
}

pub(super) const OP_COLUMNS: (
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

pub(super) async fn head(
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
pub(super) async fn explain_refusal(
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
pub(super) struct Rows {
    ids: Vec<Uuid>,
    pub(super) versions: Vec<i64>,
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

    pub(super) fn of(ops: &[CommittedOp]) -> Result<Rows, StoreError> {
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
            r.types.push(op.delta.kind().as_str().to_owned());
            r.positions.push(position(&op.delta)?);
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

/// Splits a batch (given by each request's document) into statements in
/// which each document appears at most once, keeping each document's
/// requests in their order; returns the requests' indexes per statement.
pub(super) fn rounds(documents: impl Iterator<Item = Uuid>) -> Vec<Vec<usize>> {
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
/// only if its document's head is the version before them and the op the
/// store holds at that head is the one the caller applied there (its
/// `prev`, when given): the statement advances `documents.head` with a
/// compare-and-set, and inserts the rows of the documents it advanced - all
/// or nothing per request. A concurrent writer of the same document waits
/// on the row lock and then finds the head moved. An idempotency key that
/// is already committed fails the whole statement on the unique index;
/// then each request is retried on its own.
///
/// Every `documents` row the statement touches is locked in id order
/// (`locked`, `FOR NO KEY UPDATE`: the foreign-key checks of snapshot and
/// operation inserts, which take `FOR KEY SHARE`, are not blocked), so two
/// instances committing overlapping sets of documents wait for each other
/// instead of deadlocking, whatever order their batches name the
/// documents in. A document's first append has its row inserted (head 0)
/// by [`CreateMissing`] before, in the same transaction, so it is locked
/// in that same order like every other (see [`insert`]).
///
/// The identity check (`checked`) looks up the op at the head by the log's
/// primary key. A head that reached the expected version only after the
/// statement's snapshot was taken (it waited on the row lock for the
/// writer of that very version) cannot be checked - that op's row is not
/// in the snapshot - so that document is reported `stale` and retried
/// alone with a fresh snapshot (see `commit`).
///
/// The statement has a static query id, so each connection prepares it
/// once and PostgreSQL can reuse its plan. Its only lookups are on primary
/// keys (the documents', and the log's at each head), so no plan can turn
/// into a scan of the log. A document appears at most once per statement
/// (see [`rounds`]).
struct AppendMany<'a> {
    rows: &'a Rows,
    /// Each row's document.
    row_documents: &'a [Uuid],
    heads: &'a Heads,
}

/// One entry per document of a statement: its expected head, its last
/// version, and the key of the op the caller holds at the head (all three
/// parts null when not given).
#[derive(Default)]
struct Heads {
    documents: Vec<Uuid>,
    expected: Vec<i64>,
    last: Vec<i64>,
    prev_actors: Vec<Option<Uuid>>,
    prev_clients: Vec<Option<String>>,
    prev_seqs: Vec<Option<i64>>,
}

const APPEND_MANY_HEAD: &str = "WITH b AS (SELECT * FROM unnest(";
const APPEND_MANY_MIDDLE: &str =
    ") AS b(id, document_id, version, actor_id, client_id, seq, operation_type, position,
             content, attributes, vector_clock, delta)
),
r AS (SELECT * FROM unnest(";
const APPEND_MANY_TAIL: &str =
    ") AS r(document_id, expected_head, last, prev_actor, prev_client, prev_seq)
),
locked AS MATERIALIZED (
    SELECT d.id, d.head FROM documents d
    WHERE d.id IN (SELECT document_id FROM r)
    ORDER BY d.id
    FOR NO KEY UPDATE
),
checked AS MATERIALIZED (
    SELECT r.document_id, r.last, l.head,
           r.expected_head > 0 AND r.prev_actor IS NOT NULL
               AND s.head IS DISTINCT FROM l.head AS stale,
           r.expected_head > 0 AND r.prev_actor IS NOT NULL
               AND s.head IS NOT DISTINCT FROM l.head
               AND EXISTS (
                   SELECT 1 FROM operations o
                   WHERE o.document_id = r.document_id AND o.version = r.expected_head
                     AND (o.actor_id, o.client_id, o.seq)
                         IS DISTINCT FROM (r.prev_actor, r.prev_client, r.prev_seq)
               ) AS diverged
    FROM r
    JOIN locked l ON l.id = r.document_id
    LEFT JOIN documents s ON s.id = r.document_id
    WHERE l.head = r.expected_head
),
advanced AS (
    UPDATE documents d SET head = c.last
    FROM checked c
    WHERE d.id = c.document_id AND NOT c.stale AND NOT c.diverged
    RETURNING d.id
),
written AS (
    INSERT INTO operations (id, document_id, version, actor_id, client_id, seq, operation_type,
                            position, content, attributes, vector_clock, delta)
    SELECT b.id, b.document_id, b.version, b.actor_id, b.client_id, b.seq, b.operation_type,
           b.position, b.content, b.attributes::jsonb, b.vector_clock::jsonb, b.delta::jsonb
    FROM b JOIN advanced a ON a.id = b.document_id
    RETURNING document_id, version
)
SELECT document_id, version, 0::int2 FROM written
UNION ALL
SELECT document_id, head, CASE WHEN diverged THEN 1 ELSE 2 END::int2
FROM checked WHERE diverged OR stale";

impl diesel::query_builder::QueryId for AppendMany<'_> {
    type QueryId = AppendMany<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for AppendMany<'_> {
    type SqlType = (SqlUuid, BigInt, SmallInt);
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for AppendMany<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        let r = self.rows;
        let h = self.heads;
        // The unnests' arguments, in their column order.
        macro_rules! then_bind {
            ($t:ty, $v:expr) => {
                out.push_sql(", ");
                out.push_bind_param::<$t, _>($v)?;
            };
        }
        out.push_sql(APPEND_MANY_HEAD);
        out.push_bind_param::<Array<SqlUuid>, _>(&r.ids)?;
        then_bind!(Array<SqlUuid>, self.row_documents);
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
        out.push_sql(APPEND_MANY_MIDDLE);
        out.push_bind_param::<Array<SqlUuid>, _>(&h.documents)?;
        then_bind!(Array<BigInt>, &h.expected);
        then_bind!(Array<BigInt>, &h.last);
        then_bind!(Array<Nullable<SqlUuid>>, &h.prev_actors);
        then_bind!(Array<Nullable<Text>>, &h.prev_clients);
        then_bind!(Array<Nullable<BigInt>>, &h.prev_seqs);
        out.push_sql(APPEND_MANY_TAIL);
        Ok(())
    }
}

/// Inserts the `documents` rows of documents that have none yet (head 0),
/// in id order, changing no existing row and locking none
/// (`DO NOTHING`). Run before [`AppendMany`] in the same transaction, for
/// the documents a statement expects at head 0, so that statement finds
/// every row it may advance and locks them all in one id order. Waits
/// (only) for a concurrent transaction inserting or updating the same row;
/// see [`insert`] for why that cannot close a cycle.
struct CreateMissing<'a> {
    documents: &'a [Uuid],
}

impl diesel::query_builder::QueryId for CreateMissing<'_> {
    type QueryId = CreateMissing<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for CreateMissing<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("INSERT INTO documents (id, head) SELECT id, 0 FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(self.documents)?;
        out.push_sql(") AS n(id) ORDER BY id ON CONFLICT (id) DO NOTHING");
        Ok(())
    }
}

/// What [`AppendMany`] reported for a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Row {
    /// A row it wrote, at this version.
    Written,
    /// The head is the expected one, but the op there is not the caller's:
    /// nothing written. The version is the head.
    Diverged,
    /// The head reached the expected version after the statement's
    /// snapshot, so the op there could not be checked: nothing written,
    /// retry. The version is the head.
    Stale,
}

/// A row [`AppendMany`] returned.
pub(super) struct Written {
    pub(super) document_id: Uuid,
    pub(super) version: i64,
    pub(super) row: Row,
}

/// One document's ops for the statement: plain data, whoever asked.
pub(super) struct Batch<'a> {
    pub(super) document: Uuid,
    pub(super) rows: &'a Rows,
    /// How many ops `rows` holds.
    pub(super) len: usize,
    /// The key of the op the caller holds at the head.
    pub(super) prev: Option<&'a OpKey>,
}

/// Runs [`AppendMany`] for `batches`; returns what it reported.
///
/// When a batch expects its document at head 0 (its first append, as far
/// as the caller knows), the missing rows are inserted first
/// ([`CreateMissing`]) in the same transaction; otherwise the statement
/// runs alone (one round trip). Why no set of such transactions can
/// deadlock: each takes, in order, (1) the new rows it inserts, in id
/// order, waiting only for another transaction inserting or having
/// updated the same row, then (2) every row of the statement in id order
/// (`FOR NO KEY UPDATE`), then writes only rows it holds. A locking read
/// never waits for a row inserted by an open transaction (that row is not
/// in its snapshot), and `DO NOTHING` never waits for a mere locker. So a
/// transaction only ever waits for one that is further along the order
/// (step 1 at a higher id, or in step 2; step 2 at a higher id): a cycle
/// would need someone to wait for someone behind them.
pub(super) async fn insert(
    conn: &mut diesel_async::AsyncPgConnection,
    batches: &[Batch<'_>],
) -> Result<Vec<Written>, DieselError> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let mut rows = Rows::default();
    let mut row_documents = Vec::new();
    let mut heads = Heads::default();
    for b in batches {
        rows.extend(b.rows);
        row_documents.extend(std::iter::repeat_n(b.document, b.len));
        heads.documents.push(b.document);
        heads.expected.push(b.rows.versions[0] - 1);
        heads.last.push(b.rows.versions[b.len - 1]);
        heads.prev_actors.push(b.prev.map(|k| *k.user.as_uuid()));
        heads
            .prev_clients
            .push(b.prev.map(|k| k.client_id.as_str().to_owned()));
        heads.prev_seqs.push(b.prev.map(|k| i64::from(k.seq)));
    }
    let new: Vec<Uuid> = heads
        .documents
        .iter()
        .zip(&heads.expected)
        .filter(|(_, e)| **e == 0)
        .map(|(d, _)| *d)
        .collect();
    let statement = AppendMany {
        rows: &rows,
        row_documents: &row_documents,
        heads: &heads,
    };
    let written: Vec<(Uuid, i64, i16)> = if new.is_empty() {
        statement.load(conn).await?
    } else {
        conn.transaction(async |conn| {
            CreateMissing { documents: &new }.execute(conn).await?;
            statement.load(conn).await
        })
        .await?
    };
    Ok(written
        .into_iter()
        .map(|(document_id, version, row)| Written {
            document_id,
            version,
            row: match row {
                0 => Row::Written,
                1 => Row::Diverged,
                _ => Row::Stale,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{Batch, Rows, insert, rounds};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    use relay_domain::{ClientId, CommittedOp, Delta, Seq, UserId, Version};
    use std::time::Duration;
    use uuid::Uuid;

    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }

    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        waiting: bool,
    }

    fn op(version: u64) -> CommittedOp {
        let mut delta = Delta::new();
        delta.retain(version as usize - 1).insert("x");
        CommittedOp {
            version: Version::new(version).unwrap(),
            user: UserId::new(Uuid::new_v4()),
            client_id: ClientId::new("lock-order").unwrap(),
            seq: Seq::new(version).unwrap(),
            delta,
        }
    }

    async fn connect() -> AsyncPgConnection {
        let url = crate::testdb::test_database();
        let mut c = AsyncPgConnection::establish(&url).await.expect("connect");
        // Every wait bounded (PostgreSQL's deadlock_timeout is 1 s).
        diesel::sql_query("SET lock_timeout = '5s'")
            .execute(&mut c)
            .await
            .expect("lock_timeout");
        c
    }

    async fn lock(c: &mut AsyncPgConnection, id: Uuid) -> diesel::QueryResult<usize> {
        diesel::sql_query("SELECT id FROM documents WHERE id = $1 FOR NO KEY UPDATE")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .execute(c)
            .await
    }

    /// F11: a statement whose batch believes a document is new (its room
    /// still at head 0) while another instance committed its version 1
    /// must not lock that row before the other documents of the statement.
    /// Here `hi` is that document and `lo` one it also appends to
    /// (`lo < hi`); another writer's statement has locked `lo` and will
    /// lock `hi` next (id order). Our statement waits for `lo` holding
    /// nothing, so the other writer gets `hi` at once and both finish -
    /// before, our statement held `hi` while waiting for `lo`: "deadlock
    /// detected" after a second, and one of them aborted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_document_believed_new_is_locked_in_id_order_with_the_others() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut setup = connect().await;
        diesel::sql_query("INSERT INTO documents (id, head) VALUES ($1, 1), ($2, 1)")
            .bind::<diesel::sql_types::Uuid, _>(lo)
            .bind::<diesel::sql_types::Uuid, _>(hi)
            .execute(&mut setup)
            .await
            .expect("documents at head 1");

        let mut other = connect().await;
        diesel::sql_query("BEGIN")
            .execute(&mut other)
            .await
            .expect("begin");
        assert_eq!(
            lock(&mut other, lo).await,
            Ok(1),
            "the other writer locks lo"
        );

        let mut ours = connect().await;
        let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut ours)
            .await
            .expect("pid")
            .pid;
        let statement = tokio::spawn(async move {
            let (lo_ops, hi_ops) = (vec![op(2)], vec![op(1)]);
            let (lo_rows, hi_rows) = (Rows::of(&lo_ops).unwrap(), Rows::of(&hi_ops).unwrap());
            let batches = [
                Batch {
                    document: hi,
                    rows: &hi_rows,
                    len: 1,
                    prev: None,
                },
                Batch {
                    document: lo,
                    rows: &lo_rows,
                    len: 1,
                    prev: None,
                },
            ];
            insert(&mut ours, &batches).await.map(|w| {
                w.into_iter()
                    .map(|w| (w.document_id, w.version))
                    .collect::<Vec<_>>()
            })
        });
        // Until our statement waits for a lock (bounded).
        let mut waited = false;
        for _ in 0..100 {
            let w = diesel::sql_query(
                "SELECT coalesce(wait_event_type = 'Lock', false) AS waiting
                 FROM pg_stat_activity WHERE pid = $1",
            )
            .bind::<diesel::sql_types::Integer, _>(pid)
            .get_result::<Waiting>(&mut setup)
            .await
            .expect("activity");
            if w.waiting {
                waited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            waited,
            "our statement must wait for the other writer's lock on lo"
        );

        let locked_hi = tokio::time::timeout(Duration::from_secs(10), lock(&mut other, hi))
            .await
            .expect("bounded by lock_timeout");
        let committed = diesel::sql_query("COMMIT").execute(&mut other).await;
        let ours = tokio::time::timeout(Duration::from_secs(10), statement)
            .await
            .expect("our statement finishes")
            .expect("task");
        assert_eq!(
            locked_hi,
            Ok(1),
            "the other writer must get hi while ours waits for lo (ours: {ours:?})"
        );
        assert_eq!(committed, Ok(0));
        assert_eq!(
            ours,
            Ok(vec![(lo, 2)]),
            "ours commits lo v2; hi is at head 1, not 0: nothing for it"
        );
    }

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
