//! Open connections per document, for the bounded
//! `materi_websocket_connections_active{document_id}` gauge.
//!
//! Counted in shards so connections opening and closing on many documents
//! at once do not wait on one lock; read once per scrape or export.

use relay_domain::DocumentId;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 32;

/// Open connections per document.
#[derive(Debug)]
pub struct DocumentConnections {
    shards: Vec<Mutex<HashMap<DocumentId, u64>>>,
}

impl Default for DocumentConnections {
    fn default() -> Self {
        DocumentConnections {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// What the gauge reports: at most the limit's documents by name, the
/// largest first, and the rest summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    pub named: Vec<(DocumentId, u64)>,
    /// Connections on the documents left out (`document_id="other"`);
    /// `None` when every open document is named.
    pub other: Option<u64>,
}

impl DocumentConnections {
    fn shard(&self, document: DocumentId) -> &Mutex<HashMap<DocumentId, u64>> {
        let b = document.as_uuid().as_bytes();
        &self.shards[(b[15] as usize ^ b[7] as usize) % SHARDS]
    }

    pub fn opened(&self, document: DocumentId) {
        let mut shard = self
            .shard(document)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = shard.entry(document).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// A close without an open is ignored (never below zero); the document
    /// is forgotten at zero, so its series disappears.
    pub fn closed(&self, document: DocumentId) {
        let mut shard = self
            .shard(document)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = shard.get_mut(&document) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&document);
            }
        }
    }

    /// The series to report with at most `limit` named documents (the
    /// largest; ties by id, so a scrape is repeatable).
    pub fn series(&self, limit: usize) -> Series {
        let mut all: Vec<(DocumentId, u64)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            all.extend(shard.iter().map(|(d, n)| (*d, *n)));
        }
        let order = |a: &(DocumentId, u64), b: &(DocumentId, u64)| {
            b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
        };
        if all.len() <= limit {
            all.sort_unstable_by(order);
            return Series {
                named: all,
                other: None,
            };
        }
        if limit > 0 {
            all.select_nth_unstable_by(limit - 1, order);
        }
        let rest = all.split_off(limit);
        all.sort_unstable_by(order);
        Series {
            named: all,
            other: Some(rest.iter().map(|(_, n)| n).sum()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(i: u8) -> DocumentId {
        DocumentId::new(uuid::Uuid::from_bytes([i; 16]))
    }

    #[test]
    fn the_largest_documents_are_named_and_the_rest_summed() {
        let c = DocumentConnections::default();
        for (i, n) in [(1u8, 3), (2, 5), (3, 1), (4, 5)] {
            for _ in 0..n {
                c.opened(doc(i));
            }
        }
        let s = c.series(2);
        assert_eq!(s.named, vec![(doc(2), 5), (doc(4), 5)]);
        assert_eq!(s.other, Some(4));
        let all = c.series(10);
        assert_eq!(all.named.len(), 4);
        assert_eq!(all.other, None);
        assert_eq!(c.series(0).other, Some(14));
    }

    #[test]
    fn a_document_is_forgotten_when_its_last_connection_closes() {
        let c = DocumentConnections::default();
        c.opened(doc(1));
        c.opened(doc(1));
        c.closed(doc(1));
        assert_eq!(c.series(5).named, vec![(doc(1), 1)]);
        c.closed(doc(1));
        assert_eq!(c.series(5), Series::default());
        // A stray close does not go below zero or come back.
        c.closed(doc(1));
        assert_eq!(c.series(5), Series::default());
    }

    proptest! {
        #[test]
        fn the_reported_sum_is_exact_and_bounded(
            events in proptest::collection::vec((0u8..40, any::<bool>()), 0..400),
            limit in 0usize..50,
        ) {
            let c = DocumentConnections::default();
            let mut model: HashMap<u8, u64> = HashMap::new();
            for (d, open) in events {
                if open {
                    c.opened(doc(d));
                    *model.entry(d).or_default() += 1;
                } else {
                    c.closed(doc(d));
                    if let Some(n) = model.get_mut(&d) {
                        *n -= 1;
                        if *n == 0 { model.remove(&d); }
                    }
                }
            }
            let s = c.series(limit);
            prop_assert!(s.named.len() <= limit);
            let total: u64 = s.named.iter().map(|(_, n)| n).sum::<u64>() + s.other.unwrap_or(0);
            prop_assert_eq!(total, model.values().sum::<u64>());
            prop_assert!(s.named.iter().all(|(_, n)| *n > 0));
            // Every named document is at least as large as any left out.
            let smallest_named = s.named.iter().map(|(_, n)| *n).min();
            let named: std::collections::HashSet<_> = s.named.iter().map(|(d, _)| *d).collect();
            for (d, n) in &model {
                if !named.contains(&doc(*d)) {
                    prop_assert!(smallest_named.is_none_or(|m| m >= *n));
                }
            }
        }
    }
}
