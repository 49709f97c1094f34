//! The [`PermissionSource`] contract, for the two kinds of source:
//!
//! - [`claims_source`]: a source that reads the token's `docs` claim
//!   (PROTOCOL.md): a document's own entry wins over `"*"`, a document
//!   absent from the claim (or no claim) is no access;
//! - [`granted_source`]: a source holding grants of its own (a database table, a
//!   test map), set through the caller's `grant`. Such a source decides
//!   alone: the token's `docs` claim grants nothing.

use super::{fresh_document, fresh_user};
use crate::auth::{Claims, DocsClaim, PermissionSource};
use relay_domain::{DocumentId, Role, UserId};

/// Claims whose `docs` has these entries: a document's UUID or `*`.
fn claims(user: UserId, docs: Option<&[(&str, Role)]>) -> Claims {
    Claims {
        user,
        name: Some("Ada".into()),
        expires_at: u64::MAX,
        docs: docs.map(|entries| {
            let mut docs = DocsClaim::default();
            for (key, role) in entries {
                if *key == "*" {
                    docs.every = Some(*role);
                } else {
                    let id = uuid::Uuid::parse_str(key).expect("a document UUID or *");
                    docs.each.insert(DocumentId::new(id), *role);
                }
            }
            docs
        }),
    }
}

async fn role<P: PermissionSource>(
    source: &P,
    claims: &Claims,
    document: DocumentId,
) -> Option<Role> {
    source
        .role(claims, document)
        .await
        .expect("role must not fail on a reachable source")
}

/// Every case for a source that reads the `docs` claim.
pub async fn claims_source<P: PermissionSource>(make: &impl AsyncFn() -> P) {
    let source = make().await;
    let (listed, unlisted) = (fresh_document(), fresh_document());
    let listed_key = listed.to_string();

    for own in [Role::Viewer, Role::Editor, Role::Owner] {
        let only = claims(fresh_user(), Some(&[(&listed_key, own)]));
        assert_eq!(
            role(&source, &only, listed).await,
            Some(own),
            "a document's own entry gives its role"
        );
        assert_eq!(
            role(&source, &only, unlisted).await,
            None,
            "a document absent from the claim, with no \"*\", is no access"
        );
    }

    let lower_own = claims(
        fresh_user(),
        Some(&[(&listed_key, Role::Viewer), ("*", Role::Owner)]),
    );
    assert_eq!(
        role(&source, &lower_own, listed).await,
        Some(Role::Viewer),
        "a document's own entry wins over \"*\", even when \"*\" grants more"
    );
    assert_eq!(
        role(&source, &lower_own, unlisted).await,
        Some(Role::Owner),
        "\"*\" covers every document without an entry"
    );
    let higher_own = claims(
        fresh_user(),
        Some(&[(&listed_key, Role::Editor), ("*", Role::Viewer)]),
    );
    assert_eq!(role(&source, &higher_own, listed).await, Some(Role::Editor));
    assert_eq!(
        role(&source, &higher_own, unlisted).await,
        Some(Role::Viewer)
    );

    let empty = claims(fresh_user(), Some(&[]));
    assert_eq!(
        role(&source, &empty, listed).await,
        None,
        "an empty docs claim is no access"
    );
    let absent = claims(fresh_user(), None);
    assert_eq!(
        role(&source, &absent, listed).await,
        None,
        "no docs claim is no access"
    );
    // Keys that are neither a document nor "*" cannot be in the claim: the
    // verifier refuses the token (adapters/jwt/tests/jwt.rs,
    // name_and_docs_are_checked).
}

/// Every case for a source holding its own grants. `grant(source, user,
/// document, role)` sets (`Some`) or revokes (`None`) a user's role on a
/// document.
pub async fn granted_source<P: PermissionSource>(
    make: &impl AsyncFn() -> P,
    grant: &impl AsyncFn(&P, UserId, DocumentId, Option<Role>),
) {
    let source = make().await;
    let (document, other_document) = (fresh_document(), fresh_document());
    let (ada, bob) = (fresh_user(), fresh_user());
    let ada_claims = claims(ada, None);
    let bob_claims = claims(bob, None);

    assert_eq!(
        role(&source, &ada_claims, document).await,
        None,
        "without a grant there is no access"
    );

    grant(&source, ada, document, Some(Role::Editor)).await;
    assert_eq!(
        role(&source, &ada_claims, document).await,
        Some(Role::Editor)
    );
    assert_eq!(
        role(&source, &bob_claims, document).await,
        None,
        "a grant is for its user only"
    );
    assert_eq!(
        role(&source, &ada_claims, other_document).await,
        None,
        "a grant is for its document only"
    );

    grant(&source, ada, document, Some(Role::Viewer)).await;
    assert_eq!(
        role(&source, &ada_claims, document).await,
        Some(Role::Viewer),
        "granting again replaces the role"
    );

    grant(&source, ada, document, None).await;
    assert_eq!(
        role(&source, &ada_claims, document).await,
        None,
        "a revoked grant is no access"
    );

    let wildcard = claims(bob, Some(&[("*", Role::Owner)]));
    let own_entry_key = other_document.to_string();
    let own_entry = claims(bob, Some(&[(&own_entry_key, Role::Owner)]));
    assert_eq!(
        role(&source, &wildcard, document).await,
        None,
        "a source with its own grants ignores the token's docs claim"
    );
    assert_eq!(role(&source, &own_entry, other_document).await, None);
}
