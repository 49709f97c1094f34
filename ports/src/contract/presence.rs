//! The [`PresenceRegistry`] contract.
//!
//! Expiry needs time to pass: the caller passes `advance`, which moves the
//! registry's time forward (a manual clock for the in-memory adapter, a
//! real wait for Redis), and `ttl`, the TTL the cases use: the shortest the
//! adapter honours reliably. The cases only look well inside or well past
//! a TTL (at least a fifth of it away), so real time works too.
//!
//! Every entry is owned by an instance: most cases write as one instance,
//! `here()`; the cases about ownership write as two.

use super::{client, fresh_document, fresh_user};
use crate::bus::InstanceId;
use crate::presence::{Held, PresenceRegistry};
use relay_domain::{ClientId, DocumentId, PresenceEntry, Selection, UserId, Version};
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
    a_client_held_by_two_instances_is_listed_twice_and_removed_per_instance(make).await;
    upserting_many_leaves_another_instances_entries(make, advance, ttl).await;
    entries_are_listed_in_user_then_client_then_instance_order(make).await;
}

/// The one instance of the cases that need only one.
fn here() -> InstanceId {
    InstanceId::from_uuid(uuid::Uuid::from_u128(
        0x5eed_0000_0000_4000_8000_0000_0000_0001,
    ))
}

/// Two new instances, the first with the smaller UUID (the order `list`
/// answers in).
fn two_instances() -> (InstanceId, InstanceId) {
    let mut two = [InstanceId::new_v4(), InstanceId::new_v4()];
    two.sort_by_key(|i| *i.as_uuid());
    (two[0], two[1])
}

fn held(instance: InstanceId, entry: &PresenceEntry) -> Held {
    Held {
        instance,
        entry: entry.clone(),
    }
}

/// `entries` as listed when `here()` holds them all.
fn held_here(entries: &[PresenceEntry]) -> Vec<Held> {
    entries.iter().map(|e| held(here(), e)).collect()
}

fn entry(user: UserId, client_id: &ClientId, anchor: usize) -> PresenceEntry {
    PresenceEntry {
        user,
        client_id: client_id.clone(),
        name: Some(format!("{user}")),
        selection: Some(Selection {
            anchor,
            head: anchor + 2,
        }),
        version: Version::new(anchor as u64).unwrap(),
    }
}

/// Upserts as `here()`.
async fn upsert<P: PresenceRegistry>(
    registry: &P,
    document: DocumentId,
    entry: &PresenceEntry,
    ttl: Duration,
) {
    upsert_as(registry, document, here(), entry, ttl).await;
}

async fn upsert_as<P: PresenceRegistry>(
    registry: &P,
    document: DocumentId,
    instance: InstanceId,
    entry: &PresenceEntry,
    ttl: Duration,
) {
    registry
        .upsert(document, instance, entry.clone(), ttl)
        .await
        .expect("upsert must not fail on a reachable registry");
}

async fn list<P: PresenceRegistry>(registry: &P, document: DocumentId) -> Vec<Held> {
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
    hidden.selection = None;
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
    assert_eq!(list(&registry, document).await, held_here(&expected));
}

pub async fn upserting_again_replaces_the_entry<P: PresenceRegistry>(make: &impl AsyncFn() -> P) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab) = (fresh_user(), client("tab"));
    upsert(&registry, document, &entry(user, &tab, 1), LONG).await;
    let moved = entry(user, &tab, 9);
    upsert(&registry, document, &moved, LONG).await;
    assert_eq!(list(&registry, document).await, held_here(&[moved]));
}

pub async fn a_removed_entry_is_no_longer_listed<P: PresenceRegistry>(make: &impl AsyncFn() -> P) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab, other_tab) = (fresh_user(), client("tab"), client("other-tab"));
    let stays = entry(user, &other_tab, 2);
    upsert(&registry, document, &entry(user, &tab, 1), LONG).await;
    upsert(&registry, document, &stays, LONG).await;

    assert_eq!(registry.remove(document, here(), user, &tab).await, Ok(()));
    assert_eq!(list(&registry, document).await, held_here(&[stays]));
    assert_eq!(
        registry.remove(document, here(), user, &tab).await,
        Ok(()),
        "removing an absent entry is Ok"
    );
    assert_eq!(
        registry
            .remove(fresh_document(), here(), fresh_user(), &tab)
            .await,
        Ok(()),
        "removing from an unknown document is Ok"
    );
    assert_eq!(
        registry.remove(document, here(), user, &other_tab).await,
        Ok(())
    );
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
    assert_eq!(
        list(&registry, a).await,
        held_here(std::slice::from_ref(&on_a))
    );
    assert_eq!(list(&registry, b).await, held_here(&[on_b]));

    assert_eq!(registry.remove(b, here(), user, &tab).await, Ok(()));
    assert_eq!(
        list(&registry, a).await,
        held_here(&[on_a]),
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
        .upsert_many(document, here(), many.clone(), ttl)
        .await
        .expect("upsert_many must not fail on a reachable registry");
    assert_eq!(
        registry.upsert_many(document, here(), vec![], ttl).await,
        Ok(()),
        "nothing to refresh"
    );
    assert_eq!(
        list(&registry, document).await,
        held_here(&many),
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
        held_here(&[long.clone(), short]),
        "nothing expires before its TTL"
    );
    advance(ttl * 2 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        held_here(&[long]),
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
        held_here(&[refreshed]),
        "a refreshed entry outlives its first TTL"
    );
    advance(ttl * 3 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![],
        "a refreshed entry expires a TTL after the refresh"
    );
}

/// A client that reconnected to another instance is held by both until the
/// first removes its entry, and that removal leaves the other's entry.
pub async fn a_client_held_by_two_instances_is_listed_twice_and_removed_per_instance<
    P: PresenceRegistry,
>(
    make: &impl AsyncFn() -> P,
) {
    let registry = make().await;
    let document = fresh_document();
    let (user, tab) = (fresh_user(), client("tab"));
    // The client was on the instance with the larger UUID first, then moved.
    let (moved_to, first_on) = two_instances();
    let old = entry(user, &tab, 1);
    let new = entry(user, &tab, 2);
    upsert_as(&registry, document, first_on, &old, LONG).await;
    upsert_as(&registry, document, moved_to, &new, LONG).await;
    assert_eq!(
        list(&registry, document).await,
        vec![held(moved_to, &new), held(first_on, &old)],
        "each instance's entry for the client is listed, ordered by instance"
    );

    assert_eq!(
        registry.remove(document, first_on, user, &tab).await,
        Ok(())
    );
    assert_eq!(
        list(&registry, document).await,
        vec![held(moved_to, &new)],
        "removing one instance's entry leaves the other instance's entry"
    );
    assert_eq!(
        registry.remove(document, first_on, user, &tab).await,
        Ok(()),
        "removing an entry this instance no longer holds is Ok"
    );
    assert_eq!(
        list(&registry, document).await,
        vec![held(moved_to, &new)],
        "and still leaves the other instance's entry"
    );
    assert_eq!(
        registry.remove(document, moved_to, user, &tab).await,
        Ok(())
    );
    assert_eq!(list(&registry, document).await, vec![]);
}

/// A room refreshing its clients touches only its own instance's entries.
pub async fn upserting_many_leaves_another_instances_entries<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
    advance: &impl AsyncFn(Duration),
    ttl: Duration,
) {
    let registry = make().await;
    let document = fresh_document();
    let user = fresh_user();
    let (tab, other_tab) = (client("tab"), client("other-tab"));
    let (mine, theirs) = two_instances();
    let their_entry = entry(user, &tab, 7);
    upsert_as(&registry, document, theirs, &their_entry, ttl * 5).await;
    let many = vec![entry(user, &other_tab, 1), entry(user, &tab, 2)];
    registry
        .upsert_many(document, mine, many.clone(), ttl)
        .await
        .expect("upsert_many must not fail on a reachable registry");
    assert_eq!(
        list(&registry, document).await,
        vec![
            held(mine, &many[0]),
            held(mine, &many[1]),
            held(theirs, &their_entry),
        ],
        "the other instance's entry for the same client is neither replaced nor hidden"
    );
    advance(ttl * 6 / 5).await;
    assert_eq!(
        list(&registry, document).await,
        vec![held(theirs, &their_entry)],
        "the other instance's entry keeps its own TTL"
    );
}

/// Ordered by user, then client_id, then instance (by UUID), whatever the
/// order of the upserts and of the entries' expiries.
pub async fn entries_are_listed_in_user_then_client_then_instance_order<P: PresenceRegistry>(
    make: &impl AsyncFn() -> P,
) {
    let registry = make().await;
    let document = fresh_document();
    let mut users = [fresh_user(), fresh_user()];
    users.sort();
    // Ordered as strings: '-' comes before '/'. A client_id may hold '/'.
    let clients = [client("a"), client("a-"), client("a/b")];
    let (first, second) = two_instances();
    let expected = vec![
        held(first, &entry(users[0], &clients[0], 1)),
        held(second, &entry(users[0], &clients[0], 2)),
        held(second, &entry(users[0], &clients[1], 3)),
        held(first, &entry(users[0], &clients[2], 4)),
        held(second, &entry(users[1], &clients[0], 5)),
        held(first, &entry(users[1], &clients[2], 6)),
        held(second, &entry(users[1], &clients[2], 7)),
    ];
    // The later an entry is listed, the sooner it expires: a registry
    // answering in expiry order would list them backwards.
    for i in [4, 1, 6, 0, 3, 5, 2] {
        let ttl = LONG * u32::try_from(expected.len() * 2 - i).expect("a few entries");
        upsert_as(
            &registry,
            document,
            expected[i].instance,
            &expected[i].entry,
            ttl,
        )
        .await;
    }
    assert_eq!(list(&registry, document).await, expected);
}
