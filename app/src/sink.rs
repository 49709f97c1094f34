//! A session's outbound side as the room and the session see it: a queue
//! bounded in frames (OUTBOUND_QUEUE) and in bytes of frames that are its
//! alone (OUTBOUND_QUEUE_BYTES), and a close order. A client that cannot
//! keep up (its queue is full) is ordered closed with 1013 and resumes
//! later; it never stalls the room or grows memory.

use relay_domain::Seq;
use relay_ports::protocol::{CloseCode, ErrorCode, ServerMessage};
use relay_ports::{CloseOrder, Metrics, Outbound, OutboundQueue, OutboundSender, QueueRefusal};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub(crate) struct Sink {
    tx: OutboundSender,
    close: Arc<watch::Sender<Option<CloseOrder>>>,
    /// Counts the closes for a full queue.
    metrics: Arc<dyn Metrics>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// A sink with room for `frames` frames and `bytes` bytes, and the
    /// transport's ends.
    pub(crate) fn new(
        frames: usize,
        bytes: usize,
        metrics: Arc<dyn Metrics>,
    ) -> (Sink, OutboundQueue, watch::Receiver<Option<CloseOrder>>) {
        let (tx, rx) = relay_ports::outbound_queue(frames, bytes);
        let (close, close_rx) = watch::channel(None);
        (
            Sink {
                tx,
                close: Arc::new(close),
                metrics,
            },
            rx,
            close_rx,
        )
    }

    /// Queues a frame. `false` if the connection is gone or was just
    /// ordered closed for falling behind: the caller drops the session.
    pub(crate) fn send(&self, frame: Arc<str>) -> bool {
        self.send_item(Outbound::Text(frame))
    }

    /// Queues any text item (a `joined` with shared content): as
    /// [`Sink::send`].
    pub(crate) fn send_item(&self, item: Outbound) -> bool {
        if self.close.borrow().is_some() {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(QueueRefusal::Full) => {
                if self.order_close(
                    CloseCode::TryAgainLater,
                    "slow consumer: reconnect and resume",
                ) {
                    self.metrics.outbound_queue_closed();
                }
                false
            }
            Err(QueueRefusal::Closed) => false,
        }
    }

    /// Queues a non-fatal `error`.
    pub(crate) fn error(&self, code: ErrorCode, message: &str, seq: Option<Seq>) -> bool {
        self.send(
            ServerMessage::error(code, message, seq, false)
                .encode()
                .into(),
        )
    }

    /// Queues a close after what is already queued.
    pub(crate) fn close_after(&self, code: CloseCode, reason: &str) {
        let _ = self.tx.try_send(Outbound::Close(Box::new(CloseOrder {
            code,
            reason: reason.to_owned(),
        })));
    }

    /// Closes at once, skipping what is queued. `false` if a close was
    /// already ordered (the first order stands).
    pub(crate) fn order_close(&self, code: CloseCode, reason: &str) -> bool {
        self.close.send_if_modified(|c| {
            if c.is_some() {
                return false;
            }
            *c = Some(CloseOrder {
                code,
                reason: reason.to_owned(),
            });
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_orders_a_1013_close_and_refuses_more() {
        let metrics = Arc::new(relay_adapter_memory::MemoryMetrics::new());
        let (sink, mut rx, close_rx) = Sink::new(2, 1 << 20, metrics.clone());
        assert!(sink.send("a".into()));
        assert!(sink.send("b".into()));
        assert!(!sink.send("c".into()));
        assert_eq!(
            close_rx.borrow().as_ref().map(|c| c.code.as_u16()),
            Some(1013)
        );
        assert!(!sink.send("d".into()));
        let closes = metrics.samples().sum(
            relay_ports::metrics::names::OUTBOUND_QUEUE_CLOSES.exported,
            &[],
        );
        assert_eq!(closes, 1.0, "counted once");
        assert_eq!(rx.try_recv().unwrap(), Outbound::Text("a".into()));
    }

    #[test]
    fn a_queue_over_its_bytes_orders_a_1013_close() {
        let metrics = Arc::new(relay_adapter_memory::MemoryMetrics::new());
        let (sink, _rx, close_rx) = Sink::new(100, 10, metrics);
        assert!(sink.send("12345678".into()));
        assert!(!sink.send("123".into()), "8 + 3 bytes are over 10");
        assert_eq!(
            close_rx.borrow().as_ref().map(|c| c.code.as_u16()),
            Some(1013)
        );
    }
}
