//! The commit pipeline: committer tasks take whatever appends are waiting -
//! from any documents - and write them with one statement, so one WAL flush
//! commits many documents' batches.
//!
//! Every answer is true:
//! - A request whose caller stopped waiting before a committer took it is
//!   withdrawn: it is never sent, and the caller says `Unavailable`
//!   (nothing was written).
//! - A statement PostgreSQL answered with an error was rolled back:
//!   `Unavailable`, or `Rejected` for a data error - after retrying the
//!   statement's batches one by one, so only the batch whose data is refused
//!   fails and every other document commits.
//! - A statement that got no answer within `statement_timeout` plus a grace
//!   period (PostgreSQL cancels it at `statement_timeout`; past that the
//!   network is at fault) may or may not have committed: `Unknown`, and its
//!   connection is discarded.
//!
//! [`Health`] watches the committers for readiness: work pending and no
//! statement finished for longer than the statement timeout means writes
//! are stuck.

use super::PgPool;
use super::append::{Batch, Row, Rows, Written, explain_refusal, insert, rounds};
use super::error::{Class, classify, corrupt_msg};
use relay_domain::{CommittedOp, OpKey};
use relay_ports::Cause;
use relay_ports::{Append, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Committer tasks: two, so one statement can execute while the other
/// waits for its WAL flush. More only add CPU contention (measured with
/// `relay-commit-bench`; see docs/performance.md).
const COMMITTERS: usize = 2;

/// Most appends one statement takes.
const PIPELINE_BATCH: usize = 256;

/// Appends waiting for a committer, at most (callers wait to queue beyond).
const QUEUE: usize = 4096;

/// How long past `statement_timeout` a committer waits for an answer
/// before it calls the outcome unknown.
const GRACE: Duration = Duration::from_secs(1);

/// Where a request is: the caller withdraws it, or a committer takes it,
/// whichever comes first, and the loser learns which.
#[derive(Debug)]
struct RequestState(AtomicU8);

impl RequestState {
    const QUEUED: u8 = 0;
    const TAKEN: u8 = 1;
    const WITHDRAWN: u8 = 2;

    fn queued() -> RequestState {
        RequestState(AtomicU8::new(Self::QUEUED))
    }

    /// A committer takes it for its statement; `false` if the caller
    /// withdrew it first.
    fn take(&self) -> bool {
        self.move_from_queued(Self::TAKEN)
    }

    /// The caller gives up waiting; `false` if a committer took it first
    /// (its statement is under way).
    fn withdraw(&self) -> bool {
        self.move_from_queued(Self::WITHDRAWN)
    }

    fn taken(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::TAKEN
    }

    fn move_from_queued(&self, to: u8) -> bool {
        self.0
            .compare_exchange(Self::QUEUED, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// One document's batch, waiting for a committer.
pub(super) struct Request {
    pub(super) document: Uuid,
    /// The key of the op the caller holds at the head.
    pub(super) prev: Option<OpKey>,
    pub(super) rows: Rows,
    pub(super) ops: Vec<CommittedOp>,
    reply: oneshot::Sender<Result<Append, StoreError>>,
    state: Arc<RequestState>,
}

impl Request {
    /// What the statement needs of this request.
    fn batch(&self) -> Batch<'_> {
        Batch {
            document: self.document,
            rows: &self.rows,
            len: self.ops.len(),
            prev: self.prev.as_ref(),
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("document", &self.document)
            .finish_non_exhaustive()
    }
}

/// Whether the committers make progress (for `/ready`).
#[derive(Debug)]
pub(super) struct Health {
    origin: Instant,
    /// Requests queued or being written.
    pending: AtomicUsize,
    /// When a statement last finished, or the pending count last rose from
    /// zero (ms since `origin`).
    progress_ms: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            origin: Instant::now(),
            pending: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn queued(&self) {
        if self.pending.fetch_add(1, Ordering::SeqCst) == 0 {
            self.progress_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    fn finished(&self, requests: usize) {
        self.progress_ms.store(self.now_ms(), Ordering::SeqCst);
        self.pending.fetch_sub(requests, Ordering::SeqCst);
    }

    /// Work has been pending with nothing finished for longer than `limit`.
    pub(super) fn stalled(&self, limit: Duration) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.progress_ms.load(Ordering::SeqCst));
        self.pending.load(Ordering::SeqCst) > 0 && u128::from(since) > limit.as_millis()
    }
}

/// The pipeline's entrance.
#[derive(Debug)]
pub(super) struct Pipeline {
    queue: mpsc::Sender<Request>,
    pub(super) health: Arc<Health>,
    call_timeout: Duration,
    /// The committers' tracker; they stop taking new work when the
    /// pipeline is dropped (a batch being written is finished and answered).
    _tasks: TaskTracker,
    _stop: DropGuard,
}

impl Pipeline {
    /// Starts the committer tasks; call inside the runtime.
    pub(super) fn start(pool: PgPool) -> Pipeline {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let health = Arc::new(Health::new());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        for _ in 0..COMMITTERS {
            tasks.spawn(committer(
                pool.clone(),
                rx.clone(),
                health.clone(),
                stop.clone(),
            ));
        }
        tasks.close();
        Pipeline {
            queue,
            health,
            call_timeout: pool.call_timeout,
            _tasks: tasks,
            _stop: stop.drop_guard(),
        }
    }

    /// Appends `ops` (checked by the caller) and answers truthfully; see
    /// the module documentation.
    pub(super) async fn append(
        &self,
        document: Uuid,
        prev: Option<OpKey>,
        rows: Rows,
        ops: Vec<CommittedOp>,
    ) -> Result<Append, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(RequestState::queued());
        let request = Request {
            document,
            prev,
            rows,
            ops,
            reply,
            state: state.clone(),
        };
        self.health.queued();
        match tokio::time::timeout(self.call_timeout, self.queue.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                self.health.finished(1);
                return Err(StoreError::Unavailable(Cause::msg(
                    "the commit pipeline is not taking appends",
                )));
            }
        }
        match tokio::time::timeout(self.call_timeout, &mut answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(lost(&state)),
            Err(_) => {
                if state.withdraw() {
                    return Err(StoreError::Unavailable(Cause::msg(
                        "the database did not take the append in time; nothing was written",
                    )));
                }
                // Taken: its statement is under way and bounded; the answer
                // is the truth.
                answer.await.unwrap_or_else(|_| Err(lost(&state)))
            }
        }
    }
}

/// The answer when a committer dropped a request without replying.
fn lost(state: &RequestState) -> StoreError {
    if state.taken() {
        StoreError::Unknown(Cause::msg("the committer stopped while writing"))
    } else {
        StoreError::Unavailable(Cause::msg("the commit pipeline stopped"))
    }
}

async fn committer(
    pool: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Request>>>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    loop {
        let mut batch = Vec::new();
        {
            // Stopped only between batches: one being written is finished.
            let Some(mut rx) = stop.run_until_cancelled(queue.lock()).await else {
                return;
            };
            let Some(Some(first)) = stop.run_until_cancelled(rx.recv()).await else {
                return;
            };
            let mut next = Some(first);
            while let Some(r) = next.take() {
                // Withdrawn by a caller that stopped waiting: never sent.
                if r.state.take() {
                    batch.push(r);
                } else {
                    health.finished(1);
                }
                if batch.len() < PIPELINE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let results = write(&pool, &batch).await;
        health.finished(batch.len());
        for (request, result) in batch.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}

/// A connection the committer writes with; one that timed out is thrown
/// away (its statement may still be running) and a fresh one taken.
struct Conn {
    pool: PgPool,
    conn: Option<super::PooledConnection>,
}

impl Conn {
    async fn get(&mut self) -> Result<&mut super::PooledConnection, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(
                self.pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Unavailable(Cause::new(e)))?,
            );
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    fn discard(&mut self) {
        if let Some(c) = self.conn.take() {
            // Out of the pool: nobody else gets a connection with a
            // statement of unknown fate on it.
            drop(deadpool::managed::Object::take(c));
        }
    }
}

/// How one statement ended.
enum Outcome {
    Written(Vec<Written>),
    /// A committed idempotency key: the statement wrote nothing.
    Duplicate,
    /// PostgreSQL refused the data: the statement wrote nothing.
    Data(Cause),
    /// PostgreSQL answered with another error: the statement wrote nothing.
    Refused(Cause),
    /// No answer, or the connection broke: it may have committed.
    Unknown(Cause),
}

/// Runs one statement for `requests`, bounded by the statement timeout plus
/// [`GRACE`].
async fn run(conn: &mut Conn, requests: &[&Request]) -> Outcome {
    let limit = conn.pool.statement_timeout + GRACE;
    let c = match conn.get().await {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(Cause::new(e)),
    };
    let batches: Vec<Batch<'_>> = requests.iter().map(|r| r.batch()).collect();
    match tokio::time::timeout(limit, insert(c, &batches)).await {
        Ok(Ok(written)) => Outcome::Written(written),
        Ok(Err(e)) => match classify(&e) {
            Class::Duplicate => Outcome::Duplicate,
            Class::Data => Outcome::Data(Cause::new(e)),
            Class::Refused => Outcome::Refused(Cause::new(e)),
            Class::Unknown => {
                conn.discard();
                Outcome::Unknown(Cause::new(e))
            }
        },
        Err(_) => {
            conn.discard();
            Outcome::Unknown(Cause::msg(format!(
                "no answer from the database within {limit:?}"
            )))
        }
    }
}

/// Writes a committer's batch: each document at most once per statement,
/// a statement's batches one by one when one of them is a duplicate or has
/// data PostgreSQL refuses.
async fn write(pool: &PgPool, batch: &[Request]) -> Vec<Result<Append, StoreError>> {
    let mut conn = Conn {
        pool: pool.clone(),
        conn: None,
    };
    let mut results: Vec<Option<Result<Append, StoreError>>> = batch.iter().map(|_| None).collect();
    for round in rounds(batch.iter().map(|r| r.document)) {
        let requests: Vec<&Request> = round.iter().map(|&i| &batch[i]).collect();
        let answers = write_round(&mut conn, &requests).await;
        for (i, result) in round.into_iter().zip(answers) {
            results[i] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every request is in a round"))
        .collect()
}

async fn write_round(conn: &mut Conn, requests: &[&Request]) -> Vec<Result<Append, StoreError>> {
    let all = |e: StoreError| requests.iter().map(|_| Err(e.clone())).collect();
    match run(conn, requests).await {
        Outcome::Written(written) => {
            let mut results = Vec::with_capacity(requests.len());
            for r in requests {
                results.push(settle(conn, r, &written, true).await);
            }
            results
        }
        Outcome::Duplicate | Outcome::Data(_) if requests.len() > 1 => {
            let mut results = Vec::with_capacity(requests.len());
            for r in requests {
                results.push(write_one(conn, r).await);
            }
            results
        }
        Outcome::Duplicate => vec![write_one(conn, requests[0]).await],
        Outcome::Data(e) => all(StoreError::Rejected(e)),
        Outcome::Refused(e) => all(StoreError::Unavailable(e)),
        Outcome::Unknown(e) => all(StoreError::Unknown(e)),
    }
}

/// One request on its own (after its statement hit a committed idempotency
/// key or refused data).
async fn write_one(conn: &mut Conn, r: &Request) -> Result<Append, StoreError> {
    write_alone(conn, r, true).await
}

/// [`write_one`]; `retry_stale`: whether a head that could not be checked
/// is tried once more.
async fn write_alone(
    conn: &mut Conn,
    r: &Request,
    retry_stale: bool,
) -> Result<Append, StoreError> {
    match run(conn, &[r]).await {
        Outcome::Written(written) => settle(conn, r, &written, retry_stale).await,
        Outcome::Duplicate => match explain(conn, r).await? {
            duplicate @ Append::Duplicate { .. } => Ok(duplicate),
            // The head matched but a version is taken: the log and the
            // document's head disagree.
            _ => Err(corrupt_msg("operations past the document's head")),
        },
        Outcome::Data(e) => Err(StoreError::Rejected(e)),
        Outcome::Refused(e) => Err(StoreError::Unavailable(e)),
        Outcome::Unknown(e) => Err(StoreError::Unknown(e)),
    }
}

/// A request's answer from the rows its statement reported: all of its
/// rows written (`Committed`), its head holding another op than the
/// caller's (`Diverged`, the head as `current`), none written (the
/// compare-and-set lost: `explain` says why). A head that reached the
/// expected version only after the statement's snapshot could not be
/// checked: that request is written again alone, once (`retry_stale`) -
/// its new snapshot holds the op at the head, and the head cannot come
/// back to that version, so a second statement checks it or conflicts.
async fn settle(
    conn: &mut Conn,
    r: &Request,
    written: &[Written],
    retry_stale: bool,
) -> Result<Append, StoreError> {
    let first = r.rows.versions[0];
    let last = r.rows.versions[r.rows.versions.len() - 1];
    let mut n = 0;
    for w in written.iter().filter(|w| w.document_id == r.document) {
        match w.row {
            Row::Written if (first..=last).contains(&w.version) => n += 1,
            Row::Written => {}
            Row::Diverged => {
                return Ok(Append::Diverged {
                    current: relay_domain::Version::try_from(w.version)
                        .map_err(super::error::corrupt)?,
                });
            }
            Row::Stale if retry_stale => return Box::pin(write_alone(conn, r, false)).await,
            Row::Stale => {
                return Err(StoreError::Unavailable(Cause::msg(
                    "the document's head moved under two statements in a row",
                )));
            }
        }
    }
    match n {
        n if n == r.ops.len() => Ok(Append::Committed),
        // The compare-and-set lost: committed, nothing of this batch.
        0 => explain(conn, r).await,
        n => Err(corrupt_msg(format!(
            "append wrote {n} of {} rows",
            r.ops.len()
        ))),
    }
}

/// Why a request wrote nothing (`Duplicate` or `Conflict`), bounded like a
/// statement. The request itself is settled (its statement ended), so a
/// failure here is only `Unavailable`.
async fn explain(conn: &mut Conn, r: &Request) -> Result<Append, StoreError> {
    let limit = conn.pool.statement_timeout + GRACE;
    let c = conn.get().await?;
    match tokio::time::timeout(limit, explain_refusal(c, r.document, &r.ops)).await {
        Ok(answer) => answer,
        Err(_) => {
            conn.discard();
            Err(StoreError::Unavailable(Cause::msg(
                "the append wrote nothing; the database did not say why in time",
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_stalled_when_work_waits_and_nothing_finishes() {
        let h = Health::new();
        let limit = Duration::from_millis(0);
        assert!(!h.stalled(limit), "nothing pending");
        h.queued();
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.stalled(limit), "pending, nothing finished since");
        assert!(!h.stalled(Duration::from_secs(60)));
        h.finished(1);
        assert!(!h.stalled(limit), "nothing pending again");
        h.queued();
        h.queued();
        h.finished(1);
        assert!(
            !h.stalled(Duration::from_millis(50)),
            "a statement just finished"
        );
    }
}
