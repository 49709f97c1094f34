//! JwtVerifier against RSA, EC and Ed25519 keys generated with OpenSSL
//! (tests/fixtures/README.md), and the ways a token must be refused.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{JWKS, USER, now, rs256, sign, user};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_adapter_jwt::{DevKeys, JwtConfig, JwtVerifier, KeySet, TokenRequest};
use relay_ports::protocol::Role;
use relay_ports::{AuthError, Claims, DocsClaim, TokenVerifier};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

const RSA_PUBLIC: &str = include_str!("fixtures/rsa-2048.pub.pem");
const DOC: &str = "6f1c0a52-3b7e-4d8f-a1c2-9e8d7c6b5a40";

fn doc() -> relay_domain::DocumentId {
    relay_domain::DocumentId::new(Uuid::parse_str(DOC).unwrap())
}

fn fixture_keys(issuer: Option<&str>) -> KeySet {
    KeySet::from_jwks_json(JWKS.as_bytes(), issuer.map(str::to_owned)).unwrap()
}

fn verifier_with(config: JwtConfig) -> JwtVerifier {
    JwtVerifier::with_keys(config, fixture_keys(None))
}

fn verifier() -> JwtVerifier {
    verifier_with(JwtConfig::default())
}

fn claims() -> Value {
    json!({
        "sub": USER,
        "exp": now() + 300,
        "iat": now(),
        "name": "Ada",
        "docs": { DOC: "editor", "*": "viewer" },
    })
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Verifies and expects `Invalid(reason)`; the reason must not repeat the
/// token or any part of it.
async fn rejected(verifier: &JwtVerifier, token: &str, reason: &str) {
    let result = verifier.verify(token).await;
    assert!(
        matches!(&result, Err(AuthError::Invalid(r)) if r.to_string() == reason),
        "expected Invalid({reason:?}), got {result:?}"
    );
    let message = result.unwrap_err().to_string();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!message.contains(part), "{message:?} repeats the token");
    }
}

fn expected_claims(exp: u64) -> Claims {
    Claims {
        user: user(),
        name: Some("Ada".into()),
        expires_at: exp,
        docs: Some(DocsClaim {
            every: Some(Role::Viewer),
            each: BTreeMap::from([(doc(), Role::Editor)]),
        }),
    }
}

#[tokio::test]
async fn every_rsa_algorithm_verifies_against_a_key_without_alg() {
    let verifier = verifier();
    let claims = claims();
    let exp = claims["exp"].as_u64().unwrap();
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let token = sign(alg, Some("rsa-1"), &claims);
        assert_eq!(
            verifier.verify(&token).await,
            Ok(expected_claims(exp)),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn ec_and_ed25519_tokens_verify() {
    let verifier = verifier();
    let claims = claims();
    let exp = claims["exp"].as_u64().unwrap();
    for (alg, kid) in [
        (Algorithm::ES256, "ec-256"),
        (Algorithm::ES384, "ec-384"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let token = sign(alg, Some(kid), &claims);
        assert_eq!(
            verifier.verify(&token).await,
            Ok(expected_claims(exp)),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn dev_token_verifies() {
    let keys = DevKeys::from_seed([42; 32]);
    let verifier = JwtVerifier::with_keys(JwtConfig::default(), keys.key_set());
    let token = keys
        .mint(&TokenRequest {
            sub: Uuid::parse_str(USER).unwrap(),
            name: None,
            docs: BTreeMap::from([(DOC.to_owned(), Role::Owner)]),
            ttl_secs: 60,
        })
        .unwrap();
    let claims = verifier.verify(&token).await.unwrap();
    assert_eq!(claims.user.to_string(), USER);
    assert_eq!(claims.name, None);
    assert_eq!(claims.role_from_docs(doc()), Some(Role::Owner));
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let verifier = verifier();
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        let token = format!("{}.{}.", b64(&header), b64(&claims()));
        rejected(&verifier, &token, "unsigned token (alg none)").await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let verifier = verifier();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    for secret in [RSA_PUBLIC.as_bytes(), JWKS.as_bytes()] {
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        rejected(&verifier, &token, "HMAC-signed token").await;
    }
}

#[tokio::test]
async fn unknown_and_missing_kid() {
    let verifier = verifier();
    rejected(
        &verifier,
        &sign(Algorithm::RS256, Some("rsa-2"), &claims()),
        "unknown kid",
    )
    .await;
    rejected(
        &verifier,
        &sign(Algorithm::RS256, None, &claims()),
        "token without kid, and more than one key",
    )
    .await;

    // With exactly one usable key, a token without kid uses it.
    let single = json!({"keys": [
        serde_json::from_str::<Value>(JWKS).unwrap()["keys"][0].clone()
    ]});
    let one_key = JwtVerifier::with_keys(
        JwtConfig::default(),
        KeySet::from_jwks_json(single.to_string().as_bytes(), None).unwrap(),
    );
    assert!(
        one_key
            .verify(&sign(Algorithm::RS256, None, &claims()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn algorithm_must_be_one_the_key_allows() {
    let verifier = verifier();
    // An RSA-signed token naming the EC key's kid.
    rejected(
        &verifier,
        &sign(Algorithm::RS256, Some("ec-256"), &claims()),
        "algorithm not allowed for this key",
    )
    .await;
    // The right family, the wrong curve.
    rejected(
        &verifier,
        &sign(Algorithm::ES384, Some("ec-256"), &claims()),
        "algorithm not allowed for this key",
    )
    .await;
    rejected(
        &verifier,
        &sign(Algorithm::EdDSA, Some("rsa-1"), &claims()),
        "algorithm not allowed for this key",
    )
    .await;

    // An RSA JWK with "alg": "RS256" refuses PS256.
    let mut jwks: Value = serde_json::from_str(JWKS).unwrap();
    jwks["keys"][0]["alg"] = "RS256".into();
    let narrowed = JwtVerifier::with_keys(
        JwtConfig::default(),
        KeySet::from_jwks_json(jwks.to_string().as_bytes(), None).unwrap(),
    );
    assert!(narrowed.verify(&rs256(&claims())).await.is_ok());
    rejected(
        &narrowed,
        &sign(Algorithm::PS256, Some("rsa-1"), &claims()),
        "algorithm not allowed for this key",
    )
    .await;
}

#[tokio::test]
async fn expiry_and_leeway() {
    let verifier = verifier();
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    assert_eq!(
        verifier.verify(&rs256(&expired)).await,
        Err(AuthError::Expired)
    );

    // Ten seconds late is within the default leeway of 30...
    let mut late = claims();
    late["exp"] = json!(now() - 10);
    assert!(verifier.verify(&rs256(&late)).await.is_ok());
    // ...but not with no leeway.
    let strict = verifier_with(JwtConfig {
        leeway_secs: 0,
        ..JwtConfig::default()
    });
    assert_eq!(strict.verify(&rs256(&late)).await, Err(AuthError::Expired));

    // A forged expired token is invalid, not expired.
    let token = rs256(&expired);
    let forged = format!("{}.{}", token.rsplit_once('.').unwrap().0, "AAAA");
    rejected(&verifier, &forged, "bad signature").await;
}

#[tokio::test]
async fn nbf_in_the_future_is_rejected() {
    let verifier = verifier();
    let mut early = claims();
    early["nbf"] = json!(now() + 300);
    rejected(&verifier, &rs256(&early), "token not yet valid (nbf)").await;
    let mut skewed = claims();
    skewed["nbf"] = json!(now() + 10);
    assert!(verifier.verify(&rs256(&skewed)).await.is_ok());
}

#[tokio::test]
async fn issuer_when_configured() {
    let verifier = verifier_with(JwtConfig {
        issuer: Some("https://idp.example".into()),
        ..JwtConfig::default()
    });
    let mut good = claims();
    good["iss"] = "https://idp.example".into();
    assert!(verifier.verify(&rs256(&good)).await.is_ok());
    let mut wrong = claims();
    wrong["iss"] = "https://evil.example".into();
    rejected(&verifier, &rs256(&wrong), "wrong issuer").await;
    rejected(
        &verifier,
        &rs256(&claims()),
        "missing or malformed iss claim",
    )
    .await;

    // Unconfigured, iss is not checked.
    assert!(
        verifier_with(JwtConfig::default())
            .verify(&rs256(&wrong))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn keys_belong_to_their_issuer() {
    let verifier = JwtVerifier::with_keys(
        JwtConfig::default(),
        fixture_keys(Some("https://idp.example")),
    );
    let mut own = claims();
    own["iss"] = "https://idp.example".into();
    assert!(verifier.verify(&rs256(&own)).await.is_ok());
    let mut other = claims();
    other["iss"] = "https://other.example".into();
    rejected(
        &verifier,
        &rs256(&other),
        "issuer does not match the key set",
    )
    .await;
    rejected(
        &verifier,
        &rs256(&claims()),
        "issuer does not match the key set",
    )
    .await;
}

#[tokio::test]
async fn audience_when_configured() {
    let verifier = verifier_with(JwtConfig {
        audience: Some("relay".into()),
        ..JwtConfig::default()
    });
    let mut good = claims();
    good["aud"] = "relay".into();
    assert!(verifier.verify(&rs256(&good)).await.is_ok());
    good["aud"] = json!(["other", "relay"]);
    assert!(verifier.verify(&rs256(&good)).await.is_ok());
    let mut wrong = claims();
    wrong["aud"] = "billing".into();
    rejected(&verifier, &rs256(&wrong), "wrong audience").await;
    rejected(
        &verifier,
        &rs256(&claims()),
        "missing or malformed aud claim",
    )
    .await;

    // Unconfigured, a token's aud does not matter.
    assert!(
        verifier_with(JwtConfig::default())
            .verify(&rs256(&wrong))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn tampered_payload_and_signature() {
    let verifier = verifier();
    let token = rs256(&claims());
    let parts: Vec<&str> = token.split('.').collect();

    let mut other = claims();
    other["docs"] = json!({"*": "owner"});
    let tampered = format!("{}.{}.{}", parts[0], b64(&other), parts[2]);
    rejected(&verifier, &tampered, "bad signature").await;

    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 0x01;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(&signature)
    );
    rejected(&verifier, &tampered, "bad signature").await;

    // The same for EdDSA.
    let token = sign(Algorithm::EdDSA, Some("ed-1"), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&other), parts[2]);
    rejected(&verifier, &tampered, "bad signature").await;
}

#[tokio::test]
async fn exp_is_required() {
    let verifier = verifier();
    let mut missing = claims();
    missing.as_object_mut().unwrap().remove("exp");
    rejected(
        &verifier,
        &rs256(&missing),
        "missing or malformed exp claim",
    )
    .await;
    let mut text = claims();
    text["exp"] = "tomorrow".into();
    rejected(&verifier, &rs256(&text), "missing or malformed exp claim").await;
    // A fractional NumericDate is allowed.
    let mut fractional = claims();
    let exp = now() + 300;
    fractional["exp"] = json!(exp as f64 + 0.25);
    let verified = verifier.verify(&rs256(&fractional)).await.unwrap();
    assert_eq!(verified.expires_at, exp);
}

#[tokio::test]
async fn sub_must_be_a_uuid() {
    let verifier = verifier();
    let mut missing = claims();
    missing.as_object_mut().unwrap().remove("sub");
    rejected(&verifier, &rs256(&missing), "missing sub claim").await;
    for sub in [json!("alice"), json!(42), json!("")] {
        let mut bad = claims();
        bad["sub"] = sub;
        rejected(&verifier, &rs256(&bad), "sub is not a UUID").await;
    }
}

#[tokio::test]
async fn name_and_docs_are_checked() {
    let verifier = verifier();
    let mut no_extras = claims();
    no_extras.as_object_mut().unwrap().remove("name");
    no_extras.as_object_mut().unwrap().remove("docs");
    let claims_out = verifier.verify(&rs256(&no_extras)).await.unwrap();
    assert_eq!((claims_out.name, claims_out.docs), (None, None));

    let cases = [
        ("name", json!(7), "name is not a string"),
        ("docs", json!(["editor"]), "docs is not an object"),
        ("docs", json!({DOC: "admin"}), "docs has an unknown role"),
        ("docs", json!({DOC: 1}), "docs has an unknown role"),
        (
            "docs",
            json!({"secret-doc": "viewer"}),
            "docs key is not a document UUID or \"*\"",
        ),
        (
            "docs",
            json!({"all": "owner"}),
            "docs key is not a document UUID or \"*\"",
        ),
        (
            "docs",
            json!({"": "owner"}),
            "docs key is not a document UUID or \"*\"",
        ),
        (
            "docs",
            json!({DOC: "viewer", DOC.to_uppercase(): "owner"}),
            "docs names a document twice",
        ),
    ];
    for (claim, value, reason) in cases {
        let mut bad = claims();
        bad[claim] = value;
        rejected(&verifier, &rs256(&bad), reason).await;
    }

    // Document ids are stored in canonical form.
    let mut upper = claims();
    upper["docs"] = json!({ DOC.to_uppercase(): "owner" });
    let docs = verifier.verify(&rs256(&upper)).await.unwrap().docs.unwrap();
    assert_eq!(docs.each, BTreeMap::from([(doc(), Role::Owner)]));
    assert_eq!(docs.every, None);
}

#[tokio::test]
async fn oversized_tokens_are_rejected_before_decoding() {
    let verifier = verifier();
    let mut big = claims();
    big["name"] = "x".repeat(9 * 1024).into();
    let token = rs256(&big);
    assert!(token.len() > 9 * 1024);
    rejected(&verifier, &token, "token too large").await;
    rejected(&verifier, &"a".repeat(9 * 1024), "token too large").await;

    // The limit is configurable.
    let roomy = verifier_with(JwtConfig {
        max_token_bytes: 64 * 1024,
        ..JwtConfig::default()
    });
    assert!(roomy.verify(&token).await.is_ok());
}

#[tokio::test]
async fn malformed_tokens() {
    let verifier = verifier();
    let header = b64(&json!({"alg": "RS256", "kid": "rsa-1"}));
    let body = b64(&claims());
    let cases = [
        (String::new(), "malformed token"),
        ("abc".to_owned(), "malformed token"),
        (format!("{header}.{body}"), "malformed token"),
        (format!("{header}.{body}.sig.extra"), "malformed token"),
        (format!("!!!.{body}.sig"), "malformed token header"),
        (
            format!("{}.{body}.sig", b64(&json!([1]))),
            "malformed token header",
        ),
        (
            format!("{}.{body}.sig", b64(&json!({"alg": "XS999"}))),
            "unsupported algorithm",
        ),
        (
            format!(
                "{}.{body}.sig",
                b64(&json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}))
            ),
            "critical header extensions are not supported",
        ),
        // The signature is checked before the payload is decoded.
        (format!("{header}.!!!.AAAA"), "bad signature"),
    ];
    for (token, reason) in cases {
        rejected(&verifier, &token, reason).await;
    }
}

#[tokio::test]
async fn no_keys_is_unavailable_until_keys_are_set() {
    let verifier = JwtVerifier::new(JwtConfig::default());
    assert!(!verifier.has_keys());
    let token = rs256(&claims());
    assert_eq!(verifier.verify(&token).await, Err(AuthError::Unavailable));
    // Too large and malformed tokens are still refused as such.
    rejected(&verifier, &"a".repeat(9000), "token too large").await;

    // A JWKS with only unusable keys is "no keys".
    let hmac_only = KeySet::from_jwks_json(
        br#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#,
        None,
    )
    .unwrap();
    assert!(hmac_only.is_empty());
    verifier.set_keys(hmac_only);
    assert!(!TokenVerifier::has_keys(&verifier));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::Unavailable));

    verifier.set_keys(fixture_keys(None));
    assert!(TokenVerifier::has_keys(&verifier));
    assert!(verifier.verify(&token).await.is_ok());

    // Replacing the set drops the old keys.
    verifier.set_keys(DevKeys::from_seed([5; 32]).key_set());
    rejected(&verifier, &token, "unknown kid").await;
}
