//! Token forging shared by the adapter's integration tests: tokens signed
//! with the OpenSSL fixture keys (fixtures/README.md), claims as JSON.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_domain::UserId;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The public halves of the fixture keys, by kid.
pub const JWKS: &str = include_str!("../fixtures/jwks.json");
pub const RSA_PRIVATE: &str = include_str!("../fixtures/rsa-2048.pem");
pub const EC_P256: &str = include_str!("../fixtures/ec-p256.pem");
pub const EC_P384: &str = include_str!("../fixtures/ec-p384.pem");
pub const ED25519: &str = include_str!("../fixtures/ed25519.pem");

/// The `sub` of the forged tokens.
pub const USER: &str = "0b6c3f1e-8a4d-4e2b-9c71-5f0d2a3b4c5d";

/// [`USER`] as a user id.
pub fn user() -> UserId {
    UserId::new(Uuid::parse_str(USER).unwrap())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The fixture private key for `alg` (RSA for every RS/PS algorithm).
fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_P256.as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(EC_P384.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED25519.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    }
}

/// `claims` signed with `alg` by the fixture key for it, the header naming
/// `kid` (none if `None`).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg)).unwrap()
}

/// `claims` signed RS256 by the fixture key `rsa-1`.
pub fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), claims)
}
