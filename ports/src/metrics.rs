//! Metrics, named as the deployment document names them.

use relay_domain::DocumentId;

/// How an operation ended, the `status` label of
/// `materi_operations_processed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// Committed.
    Ok,
    /// Already committed: acknowledged again.
    Duplicate,
    /// Refused for the client's fault (invalid, stale, forbidden...).
    Rejected,
    /// Failed for the server's fault (store down...).
    Error,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Ok => "ok",
            OpStatus::Duplicate => "duplicate",
            OpStatus::Rejected => "rejected",
            OpStatus::Error => "error",
        }
    }
}

/// What an operation did, the `operation_type` label: `insert`, `delete`,
/// `format`, `mixed` (several kinds) or `noop`.
pub fn operation_type(delta: &relay_domain::Delta) -> &'static str {
    use relay_domain::Component;
    let (mut ins, mut del, mut fmt) = (false, false, false);
    for c in delta.components() {
        match c {
            Component::Insert { .. } => ins = true,
            Component::Delete { .. } => del = true,
            Component::Retain { attributes, .. } => fmt |= !attributes.is_empty(),
        }
    }
    match (ins, del, fmt) {
        (false, false, false) => "noop",
        (true, false, false) => "insert",
        (false, true, false) => "delete",
        (false, false, true) => "format",
        _ => "mixed",
    }
}

#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait Metrics: Send + Sync + 'static {
    /// `materi_websocket_connections_active{document_id}` goes up.
    fn connection_opened(&self, document: DocumentId);
    /// ... and down.
    fn connection_closed(&self, document: DocumentId);
    /// `materi_operations_processed_total{operation_type, status}`.
    fn operation(&self, operation_type: &'static str, status: OpStatus);
    /// `materi_operation_latency_seconds`: submit received to ack sent.
    fn operation_latency(&self, seconds: f64);
    /// `materi_presence_broadcasts_total`.
    fn presence_broadcast(&self);
}
