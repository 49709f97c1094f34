//! The [`PresenceRegistry`] contract.
//!
//! Expiry needs time to pass: the caller passes `advance`, which moves the
//! registry's time forward (a manual clock for the in-memory adapter, a
//! real wait for Redis), and `ttl`, the TTL the cases use: the shortest the
//! adapter honours reliably. The cases only look well inside or well past
//! a TTL (at least a fifth of it away), so real time works too.

use super::{client, fresh_document, fresh_user};
use crate::presence::PresenceRegistry;
use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId, Version};
use std::time::Duration;

/// A TTL no case outlives.
const LONG: Duration = Duration::from_secs(3600);

/// Runs every case.
pub async fn run_all<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
    advance: &impl AsyncFn(Duration),
    ttl: Duration,
) {
    entries_are_listed_in_user_then_client_order(make).await;
    upserting_again_replaces_the_entry(make).await;
    a_removed_entry_is_no_longer_listed(make).await;
    documents_are_isolated(make).await;
    entries_expire_after_their_ttl(make, advance, ttl).await;
    refreshing_an_entry_extends_its_ttl(make, advance, ttl).await;
    upserting_many_adds_or_refreshes_each_with_its_ttl(make, advance, ttl).await;
}

fn entry(user: UserId, client_id: &ClientId, anchor: usize) -> PresenceEntry {
    PresenceEntry {
        user,
        client_id: client_id.clone(),
        name: Some(format!("{user}")),
        anchor: Some(anchor),
        head: Some(anchor + 2),
        version: Version::new(anchor as u64).unwrap(),
    }
}

async fn upsert<P: PresenceRegistry>(
    registry: &P,
    document: DocumentId,
    entry: &PresenceEntry,
    ttl: Duration,
) {
    registry
        .upsert(document, entry.clone(), ttl)
        .await
        .expect("upsert must not fail on a reachable registry");
}

async fn list<P: PresenceRegistry>(registry: &P, document: DocumentId) -> Vec<PresenceEntry> {
    registry
        .list(document)
        .await
        .expect("list must not fail on a reachable registry")
}

pub async fn entries_are_listed_in_user_then_client_order<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
) {
    let registry = make().await;
    let document = fresh_document();
    let mut users = [fresh_user(), fresh_user(), fresh_user()];
    users.sort();
    let (tab_a, tab_b, tab_c) = (client("a"), client("b"), client("c"));
    // An entry without a caret or name is stored as it is.
    let mut hidden = entry(users[1], &tab_c, 0);
    hidden.name = None;
    hidden.anchor = None;
    hidden.head = None;
    let expected = vec![
        entry(users[0], &tab_a, 5),
        entry(users[0], &tab_b, 4),
        entry(users[1], &tab_a, 3),
        hidden,
        entry(users[2], &tab_b, 1),
    ];
    for i in [3, 0, 4, 2, 1] {
        upsert(&registry, document, &expected[i], LONG).await;
    }
    assert_eq!(list(&registry, document).await, expected);
}

pub async fn upserting_again_replaces_the_entry<P: PresenceRegistry>(make: &impl AsyncFn() -> P) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab) = (fresh_user(), client("tab"));
    upsert(&registry, document, &entry(user, &tab, 1), LONG).await;
    let moved = entry(user, &tab, 9);
    upsert(&registry, document, &moved, LONG).await;
    assert_eq!(list(&registry, document).await, vec![moved]);
}

pub async fn a_removed_entry_is_no_longer_listed<P: PresenceRegistry>(make: &impl AsyncFn() -> P) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab, other_tab) = (fresh_user(), client("tab"), client("other-tab"));
    let stays = entry(user, &other_tab, 2);
    upsert(&registry, document, &entry(user, &tab, 1), LONG).await;
    upsert(&registry, document, &stays, LONG).await;

    assert_eq!(registry.remove(document, user, &tab).await, Ok(()));
    assert_eq!(list(&registry, document).await, vec![stays]);
    assert_eq!(
        registry.remove(document, user, &tab).await,
        Ok(()),
        "removing an absent entry is Ok"
    );
    assert_eq!(
        registry.remove(fresh_document(), fresh_user(), &tab).await,
        Ok(()),
        "removing from an unknown document is Ok"
    );
    assert_eq!(registry.remove(document, user, &other_tab).await, Ok(()));
    assert_eq!(list(&registry, document).await, vec![]);
}

pub async fn documents_are_isolated<P: PresenceRegistry>(make: &impl AsyncFn() -> P) {
    let registry = make().await;
    let (a, b) = (fresh_document(), fresh_document());
    let (user, tab) = (fresh_user(), client("tab"));
    let on_a = entry(user, &tab, 1);
    let on_b = entry(user, &tab, 2);
    upsert(&registry, a, &on_a, LONG).await;
    upsert(&registry, b, &on_b, LONG).await;
    assert_eq!(list(&registry, a).await, vec![on_a.clone()]);
    assert_eq!(list(&registry, b).await, vec![on_b]);

    assert_eq!(registry.remove(b, user, &tab).await, Ok(()));
    assert_eq!(
        list(&registry, a).await,
        vec![on_a],
        "removing from one document leaves the other"
    );
    assert_eq!(list(&registry, fresh_document()).await, vec![]);
}

pub async fn upserting_many_adds_or_refreshes_each_with_its_ttl<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
    advance: &impl AsyncFn(Duration),
    ttl: Duration,
) {
    let registry = make().await;
    let document = fresh_document();
    let user = fresh_user();
    let (a, b) = (client("a"), client("b"));
    upsert(&registry, document, &entry(user, &a, 1), LONG).await;
    let many = vec![entry(user, &a, 5), entry(user, &b, 6)];
    registry
        .upsert_many(document, many.clone(), ttl)
        .await
        .expect("upsert_many must not fail on a reachable registry");
    assert_eq!(
        registry.upsert_many(document, vec![], ttl).await,
        Ok(()),
        "nothing to refresh"
    );
    assert_eq!(
        list(&registry, document).await,
        many,
        "each is added or replaced"
    );
    advance(ttl * 6 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![],
        "each expires with the TTL given (the earlier, longer one is replaced)"
    );
}

pub async fn entries_expire_after_their_ttl<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
    advance: &impl AsyncFn(Duration),
    ttl: Duration,
) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab) = (fresh_user(), client("tab"));
    let short = entry(user, &tab, 1);
    let long = entry(user, &client("long"), 2);
    upsert(&registry, document, &short, ttl).await;
    upsert(&registry, document, &long, ttl * 5).await;

    advance(ttl * 4 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![long.clone(), short],
        "nothing expires before its TTL"
    );
    advance(ttl * 2 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![long],
        "an entry is gone once its TTL has passed"
    );
}

pub async fn refreshing_an_entry_extends_its_ttl<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
    advance: &impl AsyncFn(Duration),
    ttl: Duration,
) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab) = (fresh_user(), client("tab"));
    upsert(&registry, document, &entry(user, &tab, 1), ttl).await;
    advance(ttl * 3 / 5).await;
    let refreshed = entry(user, &tab, 4);
    upsert(&registry, document, &refreshed, ttl).await;

    advance(ttl * 3 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![refreshed],
        "a refreshed entry outlives its first TTL"
    );
    advance(ttl * 3 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![],
        "a refreshed entry expires a TTL after the refresh"
    );
}
