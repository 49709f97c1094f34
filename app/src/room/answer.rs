//! Answers after the write path: `ack` to a submitter, `error` to the
//! submits that failed, 1013 to the sessions no answer would be true for,
//! and, after ops became durable, `ops` frames to every other local session
//! and the publish for other instances.

use super::{Pending, Room, SessionId};
use crate::sink::Sink;
use relay_domain::{CommittedOp, Seq, Version};
use relay_ports::bus::BusMessage;
use relay_ports::protocol::{CloseCode, ErrorCode, ServerMessage, encode_op, encode_ops_frame};
use relay_ports::{OpStatus, OperationType};
use tokio::time::Instant;

impl Room {
    /// Closes the sessions waiting on `pending` with 1013 (no answer
    /// would be true); they reconnect and re-send.
    pub(super) fn send_away(&mut self, pending: &[Pending], reason: &str) {
        for p in pending {
            if let Some(s) = self.sessions.get_mut(&p.session)
                && s.awaiting.map(|a| a.0) == Some(p.submission.seq)
            {
                s.awaiting = None;
                s.sink.order_close(CloseCode::TryAgainLater, reason);
            }
        }
    }

    /// Answers a re-sent submit whose op is already committed.
    pub(super) fn ack(&mut self, session: SessionId, seq: Seq, version: Version) {
        if let Some(s) = self.sessions.get_mut(&session)
            && s.awaiting.map(|a| a.0) == Some(seq)
        {
            s.awaiting = None;
            s.duplicate_acked = Some(seq);
            s.sink
                .send(ServerMessage::Ack { seq, version }.encode().into());
        }
    }

    /// Answers submits with an error (non-fatal) and frees their sessions;
    /// `unavailable` counts as an `error` op.
    pub(super) fn fail(&mut self, pending: &[Pending], code: ErrorCode, message: &str) {
        if code == ErrorCode::Unavailable {
            for p in pending {
                self.instance
                    .ports
                    .metrics
                    .operation(OperationType::of(&p.submission.delta), OpStatus::Error);
            }
        }
        self.fail_as(pending, code, message);
    }

    /// [`Room::fail`] without counting (the caller counted).
    pub(super) fn fail_as(&mut self, pending: &[Pending], code: ErrorCode, message: &str) {
        for p in pending {
            if let Some(s) = self.sessions.get_mut(&p.session)
                && s.awaiting.map(|a| a.0) == Some(p.submission.seq)
            {
                s.awaiting = None;
                s.sink.error(code, message, Some(p.submission.seq));
            }
        }
    }

    /// After ops became durable (here, or on another instance): acks to
    /// their submitters, `ops` frames to everyone else, in version order.
    /// A frame holds at most OPERATION_BATCH_SIZE ops and at most
    /// MAX_MESSAGE_BYTES of them (or a single op, if one is larger).
    pub(super) async fn committed(&mut self, ops: &[CommittedOp], ours: bool) {
        if ops.is_empty() {
            return;
        }
        for op in ops {
            self.roster.apply(op);
        }
        let fanout = tracing::info_span!(target: crate::telemetry::SUBMIT_SPANS, "fanout", document = %self.document, ops = ops.len(), ours).entered();
        let encoded: Vec<String> = ops.iter().map(encode_op).collect();
        // The content cached for the version before is stale now.
        self.content_cache = None;
        self.op_lens.record(
            ops.iter().zip(encoded.iter().map(|json| json.len() + 1)),
            self.sequencer.oldest_base(),
        );
        let batch = self.instance.config.limits.operation_batch_size;
        let budget = self.instance.config.limits.max_message_bytes;
        let now = Instant::now();
        let mut dead = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            let mut run: Vec<&str> = Vec::new();
            let mut run_bytes = 0;
            let mut alive = true;
            for (op, json) in ops.iter().zip(&encoded) {
                let own = op.user == s.member.user
                    && op.client_id == s.member.client_id
                    && s.awaiting.map(|a| a.0) == Some(op.seq);
                if own {
                    alive &= flush(&s.sink, &mut run);
                    run_bytes = 0;
                    let (_, received) = s.awaiting.take().expect("checked");
                    self.instance
                        .ports
                        .metrics
                        .operation_latency(now.duration_since(received).as_secs_f64());
                    alive &= s.sink.send(
                        ServerMessage::Ack {
                            seq: op.seq,
                            version: op.version,
                        }
                        .encode()
                        .into(),
                    );
                } else {
                    if !run.is_empty() && run_bytes + json.len() > budget {
                        alive &= flush(&s.sink, &mut run);
                        run_bytes = 0;
                    }
                    run.push(json);
                    run_bytes += json.len() + 1;
                    if run.len() == batch {
                        alive &= flush(&s.sink, &mut run);
                        run_bytes = 0;
                    }
                }
            }
            alive &= flush(&s.sink, &mut run);
            if !alive {
                dead.push(*id);
            }
        }
        drop(fanout);
        if ours {
            for op in ops {
                self.instance
                    .ports
                    .metrics
                    .operation(OperationType::of(&op.delta), OpStatus::Ok);
            }
            self.publish_ops(ops.to_vec()).await;
            self.maybe_snapshot(false).await;
        }
        for id in dead {
            self.leave(id, "slow consumer").await;
        }
    }
}

impl Room {
    /// Publishes committed ops for other instances, with the identity of
    /// the op before them (so a room whose history holds another op there
    /// sees the contradiction), when history still holds it.
    ///
    /// One envelope holds at most [`PUBLISH_ENVELOPE_BYTES`] of ops (or a
    /// single larger op), so a group commit of large ops never makes one
    /// pub/sub message past Redis's output-buffer limit for subscribers
    /// (32 MiB by default, which would disconnect every instance).
    pub(super) async fn publish_ops(&mut self, ops: Vec<CommittedOp>) {
        let mut prev = ops
            .first()
            .and_then(|op| op.version.prev())
            .and_then(|v| self.sequencer.op_at(v))
            .map(CommittedOp::key);
        let mut chunk: Vec<CommittedOp> = Vec::new();
        let mut bytes = 0;
        for op in ops {
            let size = op.memory_bytes();
            if !chunk.is_empty() && bytes + size > PUBLISH_ENVELOPE_BYTES {
                let next_prev = chunk.last().map(CommittedOp::key);
                self.publish(BusMessage::Ops {
                    ops: std::mem::take(&mut chunk),
                    prev: std::mem::replace(&mut prev, next_prev),
                })
                .await;
                bytes = 0;
            }
            bytes += size;
            chunk.push(op);
        }
        if !chunk.is_empty() {
            self.publish(BusMessage::Ops { ops: chunk, prev }).await;
        }
    }
}

/// The most ops one bus envelope holds, in bytes in memory (about their
/// size as JSON): see [`Room::publish_ops`].
pub(super) const PUBLISH_ENVELOPE_BYTES: usize = 1 << 20;

fn flush(sink: &Sink, run: &mut Vec<&str>) -> bool {
    if run.is_empty() {
        return true;
    }
    let frame = encode_ops_frame(run.iter().copied());
    run.clear();
    sink.send(frame.into())
}
