//! JwksVerifier against a JWKS endpoint served by the test: fetching,
//! keeping the last good keys, the unknown-kid refetch and its cooldown,
//! and the refresher's retries.

mod common;

use common::{JWKS, USER, now, rs256, sign, user};
use futures::future::join_all;
use jsonwebtoken::Algorithm;
use relay_adapter_jwt::testing::JwksServer;
use relay_adapter_jwt::{DevKeys, JwksConfig, JwksError, JwksVerifier, JwtConfig};
use relay_ports::{AuthError, TokenVerifier};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a test waits for something before failing.
const WAIT: Duration = Duration::from_secs(15);

/// A JWKS endpoint answering what the test says, recording each request.
async fn server(body: &str) -> JwksServer {
    JwksServer::start(body).await.expect("JWKS server")
}

fn claims() -> Value {
    json!({"sub": USER, "exp": now() + 300, "iat": now(), "docs": {"*": "editor"}})
}

/// Signed with the fixture RSA key, naming a kid nobody published.
fn made_up_kid(i: usize) -> String {
    sign(Algorithm::RS256, Some(&format!("made-up-{i}")), &claims())
}

fn verifier(url: String, cooldown: Duration) -> Arc<JwksVerifier> {
    JwksVerifier::new(
        JwksConfig {
            cooldown,
            ..JwksConfig::new(url)
        },
        JwtConfig::default(),
    )
}

fn unknown_kid() -> Result<relay_ports::Claims, AuthError> {
    Err(AuthError::Invalid(relay_ports::InvalidToken::UnknownKid))
}

#[tokio::test]
async fn before_the_first_fetch_there_are_no_keys_and_every_token_is_unavailable() {
    let server = server(JWKS).await;
    let verifier = verifier(server.url(), Duration::from_secs(30));
    assert!(!verifier.has_keys());
    assert_eq!(
        verifier.verify(&rs256(&claims())).await,
        Err(AuthError::Unavailable)
    );
    assert_eq!(
        verifier.verify(&made_up_kid(0)).await,
        Err(AuthError::Unavailable)
    );
    assert!(!verifier.has_keys());
}

#[tokio::test]
async fn refresh_loads_the_keys() {
    let server = server(JWKS).await;
    let verifier = verifier(server.url(), Duration::from_secs(30));
    assert_eq!(verifier.refresh().await, Ok(4));
    assert_eq!(server.hits(), 1);
    assert_eq!(verifier.fetch_count(), 1);
    assert!(verifier.has_keys());
    for token in [
        rs256(&claims()),
        sign(Algorithm::EdDSA, Some("ed-1"), &claims()),
    ] {
        let verified = verifier.verify(&token).await.unwrap();
        assert_eq!(verified.user, user());
    }
}

/// What a failed refresh must report.
type Expected = fn(&JwksError) -> bool;

#[tokio::test]
async fn a_failed_refresh_keeps_the_previous_keys() {
    let server = server(JWKS).await;
    let verifier = JwksVerifier::new(
        JwksConfig {
            max_body_bytes: 16 * 1024,
            ..JwksConfig::new(server.url())
        },
        JwtConfig::default(),
    );
    verifier.refresh().await.unwrap();
    let hmac_only =
        json!({"keys": [{"kty": "oct", "kid": "rsa-1", "alg": "HS256", "k": "c2VjcmV0"}]});
    let huge = json!({"keys": [], "padding": "x".repeat(32 * 1024)});
    let failures: [(u16, String, Expected); 6] = [
        (503, "down".into(), |e| *e == JwksError::Status(503)),
        (200, "{\"keys\": [".into(), |e| {
            matches!(e, JwksError::Invalid(_))
        }),
        (200, "<html>oops</html>".into(), |e| {
            matches!(e, JwksError::Invalid(_))
        }),
        (200, hmac_only.to_string(), |e| *e == JwksError::NoUsableKey),
        (200, "{\"keys\": []}".into(), |e| {
            *e == JwksError::NoUsableKey
        }),
        (200, huge.to_string(), |e| {
            matches!(e, JwksError::TooLarge(_))
        }),
    ];
    for (i, (status, body, expected)) in failures.into_iter().enumerate() {
        server.answer(status, &body);
        let error = verifier.refresh().await.unwrap_err();
        assert!(expected(&error), "{status} {body:.40}: {error:?}");
        assert_eq!(server.hits(), i + 2, "the refresh did fetch");
        assert!(verifier.has_keys());
        let verified = verifier.verify(&rs256(&claims())).await.unwrap();
        assert_eq!(verified.user, user());
    }
}

#[tokio::test]
async fn an_unknown_kid_flood_fetches_at_most_once_per_cooldown() {
    let server = server(JWKS).await;
    let cooldown = Duration::from_secs(3600);
    let verifier = verifier(server.url(), cooldown);
    verifier.refresh().await.unwrap();
    let flood = || {
        join_all((0..50).map(|i| {
            let verifier = verifier.clone();
            async move { verifier.verify(&made_up_kid(i)).await }
        }))
    };

    // Within the cooldown of the last fetch: no fetch at all.
    let (hits, fetches) = (server.hits(), verifier.fetch_count());
    assert!(flood().await.into_iter().all(|r| r == unknown_kid()));
    assert_eq!(server.hits() - hits, 0);
    assert_eq!(verifier.fetch_count() - fetches, 0);

    // Once the cooldown has passed, the first unknown kid fetches and the
    // other 49 wait for the next cooldown.
    tokio::time::pause();
    tokio::time::advance(cooldown + Duration::from_secs(1)).await;
    tokio::time::resume();
    let (hits, fetches) = (server.hits(), verifier.fetch_count());
    assert!(flood().await.into_iter().all(|r| r == unknown_kid()));
    assert_eq!(verifier.fetch_count() - fetches, 1);
    assert!(server.hits() - hits <= 1);

    let (hits, fetches) = (server.hits(), verifier.fetch_count());
    assert!(flood().await.into_iter().all(|r| r == unknown_kid()));
    assert_eq!(server.hits() - hits, 0);
    assert_eq!(verifier.fetch_count() - fetches, 0);
    // Known kids are unaffected throughout.
    assert!(verifier.verify(&rs256(&claims())).await.is_ok());
}

/// Moves the paused-capable clock on by `by` (the verifier's times are
/// tokio's), then lets real time run again for the HTTP requests.
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// The negative cache (F12): a kid never looked up gets a fetch even
/// within the cooldown of another kid's fetch - so a made-up kid every
/// cooldown cannot hide a key the identity provider has just published -
/// while a kid known to be missing waits for the cooldown, and fetches
/// caused by unknown kids stay at most one per tenth of the cooldown.
#[tokio::test]
async fn a_kid_never_looked_up_gets_a_fetch_and_a_known_missing_kid_waits_for_the_cooldown() {
    let server = server(JWKS).await;
    let cooldown = Duration::from_secs(30);
    let verifier = verifier(server.url(), cooldown);
    verifier.refresh().await.unwrap();
    let fetches = |n: u64| {
        let verifier = verifier.clone();
        move |what: &str| assert_eq!(verifier.fetch_count(), n, "{what}")
    };
    fetches(1)("the first refresh");

    // An attacker's made-up kid, past the cooldown: looked for once.
    advance(cooldown + Duration::from_secs(1)).await;
    assert_eq!(verifier.verify(&made_up_kid(1)).await, unknown_kid());
    fetches(2)("a made-up kid never looked up");
    assert_eq!(verifier.verify(&made_up_kid(1)).await, unknown_kid());
    fetches(2)("the same kid again, known to be missing");

    // 4 s later the identity provider publishes a new key and signs with
    // it at once: its kid was never looked up, so it fetches although the
    // last fetch is well within the cooldown.
    advance(Duration::from_secs(4)).await;
    let new_key = DevKeys::from_seed([7; 32]);
    let mut both: Value = serde_json::from_str(JWKS).unwrap();
    both["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(&new_key.jwks().keys[0]).unwrap());
    server.answer(200, &both.to_string());
    let token = new_key.editor_token(user(), Duration::from_secs(300));
    assert_eq!(verifier.verify(&token).await.unwrap().user, user());
    fetches(3)("a newly published kid");
    assert!(verifier.verify(&token).await.is_ok());
    fetches(3)("a known kid");

    // The known-missing kid still waits for its cooldown.
    advance(Duration::from_secs(4)).await;
    assert_eq!(verifier.verify(&made_up_kid(1)).await, unknown_kid());
    fetches(3)("a known-missing kid within its cooldown");

    // New kids: one fetch per tenth of the cooldown (3 s); a kid refused
    // by that bound is not remembered and fetches once the bound allows.
    assert_eq!(verifier.verify(&made_up_kid(2)).await, unknown_kid());
    fetches(4)("a new kid 4 s after the last fetch");
    assert_eq!(verifier.verify(&made_up_kid(3)).await, unknown_kid());
    fetches(4)("another new kid at once: over the global bound");
    advance(Duration::from_secs(4)).await;
    assert_eq!(verifier.verify(&made_up_kid(3)).await, unknown_kid());
    fetches(5)("that kid once the bound allows: it was not remembered");

    // Once its cooldown is over, the missing kid is looked for again.
    advance(cooldown).await;
    assert_eq!(verifier.verify(&made_up_kid(1)).await, unknown_kid());
    fetches(6)("a missing kid past its cooldown");
}

#[tokio::test]
async fn with_cooldown_zero_a_rotated_in_kid_is_found() {
    let server = server(JWKS).await;
    let verifier = verifier(server.url(), Duration::ZERO);
    verifier.refresh().await.unwrap();

    let new_key = DevKeys::from_seed([42; 32]);
    let token = new_key.editor_token(user(), Duration::from_secs(300));
    // Not published yet: looked for (one fetch), not found.
    let hits = server.hits();
    assert_eq!(verifier.verify(&token).await, unknown_kid());
    assert_eq!(server.hits(), hits + 1);

    // Published next to the old keys: found by the fetch its kid causes.
    let mut both: Value = serde_json::from_str(JWKS).unwrap();
    let new_jwk = new_key.jwks().keys[0].clone();
    both["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(&new_jwk).unwrap());
    server.answer(200, &both.to_string());
    let verified = verifier.verify(&token).await.unwrap();
    assert_eq!(verified.user, user());
    assert_eq!(server.hits(), hits + 2);
    // Known kids do not fetch.
    assert!(verifier.verify(&rs256(&claims())).await.is_ok());
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(server.hits(), hits + 2);
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_at_most_once_a_second_even_with_cooldown_zero() {
    let server = server(JWKS).await;
    let verifier = JwksVerifier::new(
        JwksConfig {
            refresh: Duration::from_secs(1),
            cooldown: Duration::ZERO,
            ..JwksConfig::new(server.url())
        },
        JwtConfig::default(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let refresher = tokio::spawn(verifier.refresher(stop.clone()));
    let deadline = Instant::now() + WAIT;
    while !verifier.has_keys() {
        assert!(Instant::now() < deadline, "no keys in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.answer(503, "down");
    let failed = || {
        server
            .requests()
            .into_iter()
            .filter(|(_, status)| *status == 503)
            .map(|(at, _)| at)
            .collect::<Vec<_>>()
    };
    while failed().len() < 3 {
        assert!(Instant::now() < deadline, "the refresher stopped retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = refresher.await;
    let failed = failed();
    for pair in failed.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    }
    // The keys were kept through the failures.
    assert!(verifier.has_keys());
    assert!(verifier.verify(&rs256(&claims())).await.is_ok());
}

#[tokio::test]
async fn a_token_is_refused_from_its_exp_on_to_the_second() {
    let server = server(JWKS).await;
    let verifier = JwksVerifier::new(
        JwksConfig::new(server.url()),
        JwtConfig {
            leeway_secs: 0,
            ..JwtConfig::default()
        },
    );
    verifier.refresh().await.unwrap();
    // `exp` is the current second: it is already "on or after" exp.
    let mut c = claims();
    c["exp"] = json!(now());
    let token = rs256(&c);
    assert_eq!(verifier.verify(&token).await, Err(AuthError::Expired));
    // Still valid: two seconds left.
    c["exp"] = json!(now() + 2);
    let token = rs256(&c);
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn the_refresher_ends_when_its_token_is_cancelled() {
    // Nothing answers there: the refresher retries with backoff forever
    // unless stopped.
    let v = verifier(
        "http://127.0.0.1:1/jwks.json".into(),
        Duration::from_secs(30),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(v.refresher(stop.clone()));
    while v.fetch_count() < 1 {
        tokio::task::yield_now().await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the refresher stops when cancelled")
        .expect("no panic");
}
