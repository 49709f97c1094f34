//! The append statement and what it writes: each op's row with the seed's
//! derived columns, one statement for many documents' batches, and the
//! lookups that explain a refused append.

use super::error::{corrupt, unavailable};
use super::schema::{documents, operations};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, Queryable};
use relay_domain::{ClientId, CommittedOp, Component, Delta, Seq, UserId, Version};
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

#[derive(Queryable)]
pub(super) struct OpRow {
    version: i64,
    actor_id: Uuid,
    client_id: String,
    seq: i64,
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
/// only if its document's head is the version before them: the statement
/// advances `documents.head` with a compare-and-set (creating the row for a
/// document's first append), and inserts the rows of the documents it
/// advanced - all or nothing per request. A concurrent writer of the same
/// document waits on the row lock and then finds the head moved. An
/// idempotency key that is already committed fails the whole statement on
/// the unique index; then each request is retried on its own.
///
/// Rows of `documents` are locked in id order (`locked`, which every row
/// the statement updates comes through), so two instances committing
/// overlapping sets of documents wait for each other instead of
/// deadlocking, whatever order their batches name the documents in.
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
locked AS MATERIALIZED (
    SELECT d.id, d.head FROM documents d
    WHERE d.id IN (SELECT document_id FROM r WHERE expected_head > 0)
    ORDER BY d.id
    FOR UPDATE
),
created AS (
    INSERT INTO documents AS d (id, head)
    SELECT document_id, last FROM r WHERE expected_head = 0
    ORDER BY document_id
    ON CONFLICT (id) DO UPDATE SET head = EXCLUDED.head WHERE d.head = 0
    RETURNING d.id
),
advanced AS (
    UPDATE documents d SET head = r.last
    FROM locked l JOIN r ON r.document_id = l.id
    WHERE d.id = l.id AND l.head = r.expected_head
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
pub(super) struct Written {
    pub(super) document_id: Uuid,
    pub(super) version: i64,
}

/// One document's ops for the statement: plain data, whoever asked.
pub(super) struct Batch<'a> {
    pub(super) document: Uuid,
    pub(super) rows: &'a Rows,
    /// How many ops `rows` holds.
    pub(super) len: usize,
}

/// Runs [`AppendMany`] for `batches`; returns the rows written.
pub(super) async fn insert(
    conn: &mut diesel_async::AsyncPgConnection,
    batches: &[Batch<'_>],
) -> Result<Vec<Written>, DieselError> {
    use diesel_async::RunQueryDsl;
    let mut rows = Rows::default();
    let mut documents = Vec::new();
    let mut expected = Vec::new();
    for b in batches {
        rows.extend(b.rows);
        documents.extend(std::iter::repeat_n(b.document, b.len));
        expected.extend(std::iter::repeat_n(b.rows.versions[0] - 1, b.len));
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
