//! The metrics port's contract: every call is accepted in any order and
//! from many tasks, and never panics (metrics must not break the service).

use crate::{Metrics, OpStatus};
use relay_domain::DocumentId;

pub fn accepts_every_call<M: Metrics>(metrics: &M) {
    let doc = DocumentId::new(uuid::Uuid::new_v4());
    metrics.connection_closed(doc);
    metrics.connection_opened(doc);
    metrics.connection_opened(doc);
    metrics.connection_closed(doc);
    for status in [
        OpStatus::Ok,
        OpStatus::Duplicate,
        OpStatus::Rejected,
        OpStatus::Error,
    ] {
        for kind in ["insert", "delete", "format", "mixed", "noop"] {
            metrics.operation(kind, status);
        }
    }
    for s in [0.0, 0.0005, 0.02, 3.5, f64::MAX] {
        metrics.operation_latency(s);
    }
    metrics.presence_broadcast();
}
