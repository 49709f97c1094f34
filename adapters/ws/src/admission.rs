//! What a connection holds from `accept` until it joins: its connection
//! slot under MAX_CONNECTIONS and its place in its peer address's pending
//! budget (MAX_PENDING_PER_IP).
//!
//! The accept loop takes both before it reads a byte (`server`), and every
//! request on the connection carries them as an extension
//! ([`AdmissionCell`]); the upgrade takes them out and hands them to the
//! connection, which gives the slot to the service's `join` and drops the
//! pending place once joined. A connection that never upgrades holds them
//! until it ends.

use ipnet::IpNet;
use relay_ports::{ConnectionSlot, Refusal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What an accepted connection holds before its join.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Its slot under MAX_CONNECTIONS; `None` when the service refused one
    /// at accept (then `refused` says why, and an upgrade asks again).
    pub(crate) slot: Option<ConnectionSlot>,
    pub(crate) refused: Option<Refusal>,
    /// Its place in its address's pending budget (`None`: a trusted proxy,
    /// or the metrics port).
    pub(crate) pending: Option<PendingPlace>,
}

/// The request extension through which a connection's requests reach what
/// it holds: the upgrade takes it (once), `/health` looks at it.
#[derive(Clone, Debug)]
pub(crate) struct AdmissionCell(Arc<Mutex<Option<Admission>>>);

impl AdmissionCell {
    pub(crate) fn new(admission: Admission) -> Self {
        AdmissionCell(Arc::new(Mutex::new(Some(admission))))
    }

    /// What the connection holds, taken out (the upgrade's).
    pub(crate) fn take(&self) -> Option<Admission> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the connection still holds a slot (so `/health` can leave
    /// the asker's own connection out of its count).
    pub(crate) fn holds_slot(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|a| a.slot.is_some())
    }

    /// Whether the service refused this connection a slot because it is
    /// draining.
    pub(crate) fn draining(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|a| matches!(a.refused, Some(Refusal::Draining { .. })))
    }
}

/// Connections not yet joined, per peer address: at most `limit` each.
///
/// An IPv6 peer is counted by its /64 (one subscriber's prefix: one host
/// can use every address in it), an IPv4-mapped IPv6 peer as the IPv4
/// address. An entry exists only while it counts at least one open
/// connection, so the table holds at most as many entries as there are
/// open connections (bounded by MAX_CONNECTIONS and the overflow budget of
/// the accept loop).
#[derive(Debug)]
pub(crate) struct PendingTable {
    limit: usize,
    trusted: Vec<IpNet>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a peer got no pending place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OverBudget;

impl PendingTable {
    pub(crate) fn new(limit: usize, trusted: Vec<IpNet>) -> Arc<Self> {
        Arc::new(PendingTable {
            limit,
            trusted,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `peer`: `Ok(None)` for a trusted
    /// proxy (exempt), `Err` when the address holds `limit` already.
    pub(crate) fn enter(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Result<Option<PendingPlace>, OverBudget> {
        let peer = peer.to_canonical();
        if self.trusted.iter().any(|net| net.contains(&peer)) {
            return Ok(None);
        }
        let key = key_of(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                counts.remove(&key);
            }
            return Err(OverBudget);
        }
        *count += 1;
        Ok(Some(PendingPlace {
            table: self.clone(),
            key,
        }))
    }

    /// Addresses with a pending connection now.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The key an address is counted under.
fn key_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// One connection's place in its address's pending budget; freed when
/// dropped.
#[derive(Debug)]
pub(crate) struct PendingPlace {
    table: Arc<PendingTable>,
    key: IpAddr,
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_at_most_its_limit_and_a_place_freed_is_reusable() {
        let table = PendingTable::new(2, Vec::new());
        let a = table.enter(ip("10.0.0.1")).unwrap().unwrap();
        let _b = table.enter(ip("10.0.0.1")).unwrap().unwrap();
        assert_eq!(table.enter(ip("10.0.0.1")).unwrap_err(), OverBudget);
        // Another address is not affected.
        let _c = table.enter(ip("10.0.0.2")).unwrap().unwrap();
        drop(a);
        assert!(table.enter(ip("10.0.0.1")).unwrap().is_some());
    }

    #[test]
    fn entries_go_when_their_last_connection_does() {
        let table = PendingTable::new(4, Vec::new());
        let places: Vec<_> = (0..100)
            .map(|i| {
                table
                    .enter(ip(&format!("10.0.{}.{}", i / 200, i % 200)))
                    .unwrap()
            })
            .collect();
        assert_eq!(table.entries(), 100);
        drop(places);
        assert_eq!(table.entries(), 0);
        // A refusal leaves nothing behind either.
        let table = PendingTable::new(1, Vec::new());
        let _held = table.enter(ip("10.0.0.1")).unwrap();
        assert!(table.enter(ip("10.0.0.1")).is_err());
        assert_eq!(table.entries(), 1);
    }

    #[test]
    fn trusted_proxies_are_exempt() {
        let table = PendingTable::new(1, vec!["10.1.0.0/16".parse().unwrap()]);
        for _ in 0..10 {
            assert!(table.enter(ip("10.1.2.3")).unwrap().is_none());
        }
        assert_eq!(table.entries(), 0);
        // An IPv4-mapped IPv6 peer is the IPv4 address.
        assert!(table.enter(ip("::ffff:10.1.2.3")).unwrap().is_none());
        let _p = table.enter(ip("10.2.0.1")).unwrap().unwrap();
        assert!(table.enter(ip("::ffff:10.2.0.1")).is_err());
    }

    #[test]
    fn an_ipv6_peer_is_counted_by_its_64() {
        let table = PendingTable::new(1, Vec::new());
        let _p = table.enter(ip("2001:db8:1:2::1")).unwrap().unwrap();
        assert!(table.enter(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(table.enter(ip("2001:db8:1:3::1")).unwrap().is_some());
    }
}
