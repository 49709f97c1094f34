//! A set of verification keys, parsed from a JWKS document.
//!
//! The algorithm a key may verify comes from the key, never from a token:
//!
//! - RSA: RS256/384/512 and PS256/384/512, or only the JWK's `alg` if it has
//!   one; the modulus must be 2048 to 4096 bits;
//! - EC P-256: ES256; EC P-384: ES384 (other curves are not supported);
//! - OKP Ed25519: EdDSA.
//!
//! Symmetric (`oct`) keys, HMAC and `none` are never usable. A key that
//! cannot be used is skipped with a reason (see [`KeySet::skipped`]); a set
//! without a usable key is "no keys" ([`KeySet::is_empty`]).

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::fmt;

/// Every algorithm an RSA key may verify when its JWK names none.
const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (the RSA implementation's limit).
pub const MAX_RSA_BITS: usize = 4096;

/// JWK members are base64url; tolerate padding, which some issuers emit.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One usable public key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerificationKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerificationKey {
    /// The key id (`kid`), if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key may verify (never empty, never HMAC).
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Whether a token signed with `alg` may be checked with this key.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A JWK that was left out of the set, and why (for the logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    /// The JWK's `kid`, if it had one.
    pub kid: Option<String>,
    pub reason: String,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key {kid:?} skipped: {}", self.reason),
            None => write!(f, "key without kid skipped: {}", self.reason),
        }
    }
}

/// The document as a whole could not be read as a JWK set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS document: {0}")]
    Malformed(String),
}

/// The usable keys of one JWKS document, by `kid`, and the issuer they
/// belong to (a key is identified by `(issuer, kid)`).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    issuer: Option<String>,
    keys: Vec<VerificationKey>,
    by_kid: HashMap<String, usize>,
    skipped: Vec<SkippedKey>,
}

impl KeySet {
    /// A set without keys: every verification answers "unavailable".
    pub fn empty(issuer: Option<String>) -> Self {
        KeySet {
            issuer,
            ..KeySet::default()
        }
    }

    /// Parses a JWKS document (`{"keys": [...]}`). Only a document that is
    /// not a JSON object with a `keys` array is an error; keys that cannot
    /// be used, including ones that do not parse as a JWK, are skipped.
    pub fn from_jwks_json(json: &[u8], issuer: Option<String>) -> Result<Self, KeySetError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(json)
            .map_err(|e| KeySetError::Malformed(format!("expected {{\"keys\": [...]}}: {e}")))?;
        let mut set = KeySet::empty(issuer);
        for value in document.keys {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            match serde_json::from_value::<Jwk>(value) {
                Ok(jwk) => set.add(&jwk),
                Err(e) => set.skipped.push(SkippedKey {
                    kid,
                    reason: format!("not a JWK: {e}"),
                }),
            }
        }
        Ok(set)
    }

    /// The usable keys of an already parsed JWK set.
    pub fn from_jwks(jwks: &JwkSet, issuer: Option<String>) -> Self {
        let mut set = KeySet::empty(issuer);
        for jwk in &jwks.keys {
            set.add(jwk);
        }
        set
    }

    fn add(&mut self, jwk: &Jwk) {
        let kid = jwk.common.key_id.clone();
        let skip = |reason: String| SkippedKey {
            kid: kid.clone(),
            reason,
        };
        if let Some(kid) = &kid
            && self.by_kid.contains_key(kid)
        {
            self.skipped
                .push(skip("duplicate kid (the first key with it is used)".into()));
            return;
        }
        match usable(jwk) {
            Ok(key) => {
                if let Some(kid) = &key.kid {
                    self.by_kid.insert(kid.clone(), self.keys.len());
                }
                self.keys.push(key);
            }
            Err(reason) => self.skipped.push(skip(reason)),
        }
    }

    /// The issuer these keys belong to, if known.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// No usable key: "no keys".
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The usable keys, in document order.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// The usable key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// The only usable key, if there is exactly one (for tokens without
    /// `kid`).
    pub fn only_key(&self) -> Option<&VerificationKey> {
        match self.keys.as_slice() {
            [key] => Some(key),
            _ => None,
        }
    }

    /// The keys left out, with reasons.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }
}

/// Turns one JWK into a usable key, or says why it cannot be used.
fn usable(jwk: &Jwk) -> Result<VerificationKey, String> {
    let common = &jwk.common;
    if common.key_id.as_deref() == Some("") {
        return Err("empty kid".into());
    }
    match &common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("\"use\" is not \"sig\"".into()),
    }
    if let Some(ops) = &common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("\"key_ops\" does not include \"verify\"".into());
    }
    let declared = match common.key_algorithm {
        None => None,
        Some(alg) => match Algorithm::try_from(alg) {
            Ok(a) if a.family() == AlgorithmFamily::Hmac => {
                return Err(format!("alg {alg} (HMAC) is never accepted"));
            }
            Ok(a) => Some(a),
            Err(_) => return Err(format!("alg {alg} is not a supported signature algorithm")),
        },
    };
    // The algorithms the key type allows, narrowed to the JWK's `alg`.
    let fit = |allowed: &[Algorithm], kind: &str| -> Result<Vec<Algorithm>, String> {
        match declared {
            None => Ok(allowed.to_vec()),
            Some(a) if allowed.contains(&a) => Ok(vec![a]),
            Some(a) => Err(format!("alg {a:?} does not fit {kind} key")),
        }
    };
    let (algorithms, key) = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never accepted".into());
        }
        AlgorithmParameters::RSA(rsa) => {
            let algorithms = fit(&RSA_ALGORITHMS, "an RSA")?;
            let n = decode_member(&rsa.n, "n")?;
            let e = decode_member(&rsa.e, "e")?;
            check_rsa(&n, &e)?;
            (algorithms, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, size) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                ref other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let algorithms = fit(&[alg], "this EC")?;
            let x = decode_member(&ec.x, "x")?;
            let y = decode_member(&ec.y, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("EC coordinates are not {size} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = DecodingKey::from_ec_der(&point);
            // Building a verifier parses the point; a bad point fails here
            // and not at the first token.
            if jsonwebtoken::crypto::verify("", b"", &key, alg).is_err() {
                return Err("EC point is not on the curve".into());
            }
            (algorithms, key)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(format!("unsupported OKP curve {:?}", okp.curve));
            }
            let algorithms = fit(&[Algorithm::EdDSA], "an Ed25519")?;
            let x = decode_member(&okp.x, "x")?;
            let bytes: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| "Ed25519 key is not 32 bytes".to_string())?;
            let point = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| "Ed25519 key is not a valid point".to_string())?;
            if point.is_weak() {
                return Err("Ed25519 key is a weak (small-order) point".into());
            }
            (algorithms, DecodingKey::from_ed_der(&bytes))
        }
        AlgorithmParameters::Other(other) => {
            let kty = other
                .fields
                .get("kty")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("(missing)");
            return Err(format!("unsupported or malformed key (kty {kty:?})"));
        }
        _ => return Err("unsupported key type".into()),
    };
    Ok(VerificationKey {
        kid: common.key_id.clone(),
        algorithms,
        key,
    })
}

fn decode_member(value: &str, name: &str) -> Result<Vec<u8>, String> {
    B64URL
        .decode(value)
        .map_err(|_| format!("\"{name}\" is not base64url"))
}

/// Rejects RSA public keys that the verifier would refuse (or should).
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let bits = match n.first() {
        None => 0,
        Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
        ));
    }
    if n.last().is_some_and(|b| b.is_multiple_of(2)) {
        return Err("RSA modulus is even".into());
    }
    // The exponent must be odd, at least 3 and below 2^33.
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        u64::MAX
    };
    if exponent < 3 || exponent.is_multiple_of(2) || exponent >= 1 << 33 {
        return Err("RSA exponent is unusable".into());
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../tests/fixtures/jwks.json");
    const JWKS_RSA_1024: &str = include_str!("../tests/fixtures/jwks-rsa-1024.json");

    fn parse(json: &str) -> KeySet {
        KeySet::from_jwks_json(json.as_bytes(), None).expect("a JWKS document")
    }

    fn first_jwk(kty: &str) -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == kty)
            .unwrap()
            .clone()
    }

    fn one(key: serde_json::Value) -> KeySet {
        parse(&serde_json::json!({ "keys": [key] }).to_string())
    }

    #[tokio::test]
    async fn fixture_keys_are_all_usable_with_their_algorithms() {
        let set = parse(JWKS);
        assert!(set.skipped().is_empty(), "{:?}", set.skipped());
        assert_eq!(set.len(), 4);
        assert_eq!(set.get("rsa-1").unwrap().algorithms(), RSA_ALGORITHMS);
        assert_eq!(set.get("ec-256").unwrap().algorithms(), [Algorithm::ES256]);
        assert_eq!(set.get("ec-384").unwrap().algorithms(), [Algorithm::ES384]);
        assert_eq!(set.get("ed-1").unwrap().algorithms(), [Algorithm::EdDSA]);
        assert!(set.get("nope").is_none());
        assert!(set.only_key().is_none());
        assert_eq!(set.issuer(), None);
    }

    #[tokio::test]
    async fn jwk_alg_narrows_an_rsa_key() {
        let mut rsa = first_jwk("RSA");
        rsa["alg"] = "PS384".into();
        let set = one(rsa);
        let key = set.only_key().unwrap();
        assert_eq!(key.algorithms(), [Algorithm::PS384]);
        assert!(!key.allows(Algorithm::RS256));
    }

    #[tokio::test]
    async fn unusable_keys_are_skipped_with_reasons() {
        let mut rsa_es = first_jwk("RSA");
        rsa_es["alg"] = "ES256".into();
        let mut rsa_hs = first_jwk("RSA");
        rsa_hs["alg"] = "HS256".into();
        let mut rsa_none = first_jwk("RSA");
        rsa_none["alg"] = "none".into();
        let mut rsa_enc = first_jwk("RSA");
        rsa_enc["use"] = "enc".into();
        let mut rsa_ops = first_jwk("RSA");
        rsa_ops["key_ops"] = serde_json::json!(["encrypt"]);
        let mut ec_bad_point = first_jwk("EC");
        ec_bad_point["y"] = ec_bad_point["x"].clone();
        let mut ec_short = first_jwk("EC");
        ec_short["x"] = "AAAA".into();
        let mut ec_p521 = first_jwk("EC");
        ec_p521["crv"] = "P-521".into();
        ec_p521["alg"] = serde_json::Value::Null;
        let mut okp_short = first_jwk("OKP");
        okp_short["x"] = "AAAA".into();
        let mut okp_weak = first_jwk("OKP");
        // The identity point: small order.
        okp_weak["x"] = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        let cases = [
            (
                serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
                "oct",
            ),
            (rsa_es, "does not fit"),
            (rsa_hs, "HMAC"),
            (rsa_none, "not a supported"),
            (rsa_enc, "use"),
            (rsa_ops, "key_ops"),
            (ec_bad_point, "not on the curve"),
            (ec_short, "32 bytes"),
            (ec_p521, "unsupported EC curve"),
            (okp_short, "32 bytes"),
            (okp_weak, "weak"),
            (serde_json::json!({"kty": "XYZ", "kid": "x"}), "kty"),
            (serde_json::json!({"kty": "RSA", "kid": 7}), "not a JWK"),
        ];
        for (jwk, reason) in cases {
            let set = one(jwk.clone());
            assert!(set.is_empty(), "{jwk} was accepted");
            let skipped = &set.skipped()[0];
            assert!(
                skipped.reason.contains(reason),
                "{jwk}: {skipped} lacks {reason:?}"
            );
        }
    }

    #[tokio::test]
    async fn small_rsa_keys_are_skipped() {
        let set = parse(JWKS_RSA_1024);
        assert!(set.is_empty());
        assert_eq!(set.skipped()[0].kid.as_deref(), Some("rsa-small"));
        assert!(set.skipped()[0].reason.contains("1024 bits"));
    }

    #[tokio::test]
    async fn duplicate_kid_keeps_the_first_key() {
        let mut ec = first_jwk("EC");
        ec["kid"] = "rsa-1".into();
        let set = one_of(vec![first_jwk("RSA"), ec]);
        assert_eq!(set.len(), 1);
        assert!(set.get("rsa-1").unwrap().allows(Algorithm::RS256));
        assert!(set.skipped()[0].reason.contains("duplicate"));
    }

    fn one_of(keys: Vec<serde_json::Value>) -> KeySet {
        parse(&serde_json::json!({ "keys": keys }).to_string())
    }

    #[tokio::test]
    async fn documents_that_are_not_jwks_are_errors() {
        for doc in ["", "[]", "{}", "{\"keys\": 1}", "not json"] {
            assert!(
                KeySet::from_jwks_json(doc.as_bytes(), None).is_err(),
                "{doc:?}"
            );
        }
        let empty = KeySet::from_jwks_json(b"{\"keys\": []}", Some("https://idp".into())).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.issuer(), Some("https://idp"));
    }

    #[tokio::test]
    async fn from_parsed_jwk_set_matches_from_json() {
        let jwks: JwkSet = serde_json::from_str(JWKS).unwrap();
        let set = KeySet::from_jwks(&jwks, Some("iss".into()));
        assert_eq!(set.len(), 4);
        assert_eq!(set.issuer(), Some("iss"));
    }
}
