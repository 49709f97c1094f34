//! The token verifier's contract, given tokens the caller made with the
//! verifier's keys: a good token yields its claims, anything else is
//! refused without the token in the reason.

use crate::{AuthError, TokenVerifier};

/// `good` is a valid token for `user`; `bad` are tokens that must be
/// refused as invalid or expired.
pub async fn verifies_and_refuses<V: TokenVerifier>(
    verifier: &V,
    good: &str,
    user: uuid::Uuid,
    bad: &[String],
) {
    assert!(verifier.has_keys(), "a verifier with keys says so");
    let claims = verifier.verify(good).await.expect("a good token verifies");
    assert_eq!(*claims.user.as_uuid(), user);
    for token in bad {
        match verifier.verify(token).await {
            Err(AuthError::Invalid(reason)) => {
                let reason = reason.to_string();
                assert!(
                    !reason.contains(token.as_str()),
                    "the reason must not quote the token"
                );
                for part in token.split('.').filter(|p| p.len() > 8) {
                    assert!(
                        !reason.contains(part),
                        "the reason must not quote the token"
                    );
                }
            }
            Err(AuthError::Expired) => {}
            other => panic!("a bad token must be refused, got {other:?}"),
        }
    }
    assert!(matches!(
        verifier.verify("").await,
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        verifier.verify("not.a.jwt").await,
        Err(AuthError::Invalid(_))
    ));
}
