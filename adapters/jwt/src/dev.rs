//! The development signing key: what Relay verifies against when no
//! `JWT_PUBLIC_KEY_URL` is configured. One Ed25519 key; its public half is
//! served as `/.well-known/jwks.json`, and `relay token` mints tokens with
//! it (given the same key file, see [`DevKeys::to_pem`]).
//!
//! The `kid` is the key's RFC 7638 thumbprint: as random as the key, and
//! the same in every process that loads the key.

use super::keys::KeySet;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes, SecretDocument};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use relay_domain::Role;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// What to put in a minted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub sub: Uuid,
    pub name: Option<String>,
    /// Document UUID (or `*`) to role.
    pub docs: BTreeMap<String, Role>,
    /// Lifetime: `exp` is now plus this.
    pub ttl_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DevKeyError {
    #[error("not a PKCS#8 PEM Ed25519 private key")]
    Pem,
    #[error("docs key {0:?} is neither a document UUID nor \"*\"")]
    DocsKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The development Ed25519 key pair.
pub struct DevKeys {
    signing: SigningKey,
    encoding: EncodingKey,
    public_jwk: Jwk,
    kid: String,
}

impl fmt::Debug for DevKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevKeys {
    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let keys = Self::from_seed(seed);
        seed.fill(0);
        keys
    }

    /// The key with this secret (deterministic: for tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(&seed))
    }

    /// Loads a key written by [`to_pem`](Self::to_pem) (or `openssl genpkey
    /// -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<Self, DevKeyError> {
        let body = pem
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|rest| rest.strip_suffix(PEM_END))
            .ok_or(DevKeyError::Pem)?;
        let base64: String = body.split_whitespace().collect();
        let der = STANDARD.decode(base64).map_err(|_| DevKeyError::Pem)?;
        let signing = SigningKey::from_pkcs8_der(&der).map_err(|_| DevKeyError::Pem)?;
        Ok(Self::from_signing_key(signing))
    }

    /// The private key as PKCS#8 PEM. It is a secret: write it to a file
    /// only the server's user can read.
    pub fn to_pem(&self) -> String {
        let der = Self::pkcs8_der(&self.signing);
        let encoded = STANDARD.encode(der.as_bytes());
        let mut pem = String::with_capacity(encoded.len() + 64);
        pem.push_str(PEM_BEGIN);
        pem.push('\n');
        for line in encoded.as_bytes().chunks(64) {
            // Base64 output is ASCII.
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        pem
    }

    /// PKCS#8 v1 (no public key): the form `openssl genpkey` writes; OpenSSL
    /// 3.0 does not read the v2 form with the public key.
    fn pkcs8_der(signing: &SigningKey) -> SecretDocument {
        KeypairBytes {
            secret_key: signing.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_der()
        .expect("an Ed25519 key always encodes as PKCS#8")
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        let mut public_jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x,
            }),
        };
        let kid = public_jwk
            .thumbprint(ThumbprintHash::SHA256)
            .expect("an Ed25519 JWK has a thumbprint");
        public_jwk.common.key_id = Some(kid.clone());
        let encoding = EncodingKey::from_ed_der(Self::pkcs8_der(&signing).as_bytes());
        DevKeys {
            signing,
            encoding,
            public_jwk,
            kid,
        }
    }

    /// The key id put in every minted token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK set.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk.clone()],
        }
    }

    /// The public JWKS document served at `/.well-known/jwks.json`:
    /// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}]}`.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwks()).expect("a JWK set serializes")
    }

    /// The key set for [`JwtVerifier`](super::JwtVerifier) (no issuer).
    pub fn key_set(&self) -> KeySet {
        KeySet::from_jwks(&self.jwks(), None)
    }

    /// A signed EdDSA token with `kid`, `iat`, `exp` (now + ttl), `sub`,
    /// `name` (when given) and `docs`.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, DevKeyError> {
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            sub: Uuid,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            docs: &'a BTreeMap<String, Role>,
            iat: u64,
            exp: u64,
        }
        if let Some(bad) = request
            .docs
            .keys()
            .find(|k| *k != "*" && Uuid::try_parse(k).is_err())
        {
            return Err(DevKeyError::DocsKey(bad.clone()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let payload = Payload {
            sub: request.sub,
            name: request.name.as_deref(),
            docs: &request.docs,
            iat: now,
            exp: now.saturating_add(request.ttl_secs),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &payload, &self.encoding)
            .map_err(|e| DevKeyError::Signing(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn a_key_file_written_for_relay_passes_its_check_even_over_an_open_one() {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("relay-dev-test-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let keys = DevKeys::generate();
        write_private_key_file(&path, &keys).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let checked = check_private_file(&f.metadata().unwrap());
        let back = DevKeys::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(checked, Ok(()));
        assert_eq!(back.kid(), keys.kid());
    }

    use super::*;
    use crate::{JwtConfig, JwtVerifier};
    use relay_ports::{AuthError, TokenVerifier};

    const OPENSSL_ED25519: &str = include_str!("../tests/fixtures/ed25519.pem");

    fn request() -> TokenRequest {
        TokenRequest {
            sub: Uuid::from_u128(0x1234),
            name: Some("Ada".into()),
            docs: BTreeMap::from([
                (Uuid::from_u128(7).to_string(), Role::Owner),
                ("*".to_string(), Role::Viewer),
            ]),
            ttl_secs: 600,
        }
    }

    #[tokio::test]
    async fn minted_token_verifies_and_yields_the_claims() {
        let keys = DevKeys::generate();
        let verifier = JwtVerifier::with_keys(JwtConfig::default(), keys.key_set());
        assert!(verifier.has_keys());
        let token = keys.mint(&request()).unwrap();
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!(*claims.user.as_uuid(), Uuid::from_u128(0x1234));
        assert_eq!(claims.name.as_deref(), Some("Ada"));
        assert_eq!(
            claims.docs,
            Some(relay_ports::DocsClaim {
                every: Some(Role::Viewer),
                each: BTreeMap::from([(
                    relay_domain::DocumentId::new(Uuid::from_u128(7)),
                    Role::Owner
                )]),
            })
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(claims.expires_at.abs_diff(now + 600) <= 2);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));
    }

    #[tokio::test]
    async fn another_dev_key_does_not_verify() {
        let token = DevKeys::generate().mint(&request()).unwrap();
        let verifier = JwtVerifier::with_keys(JwtConfig::default(), DevKeys::generate().key_set());
        assert_eq!(
            verifier.verify(&token).await,
            Err(AuthError::Invalid(relay_ports::InvalidToken::UnknownKid))
        );
    }

    #[tokio::test]
    async fn seed_determines_key_and_kid() {
        let a = DevKeys::from_seed([9; 32]);
        let b = DevKeys::from_seed([9; 32]);
        let c = DevKeys::from_seed([10; 32]);
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks_json(), b.jwks_json());
        assert_ne!(a.kid(), c.kid());
        assert_eq!(a.kid().len(), 43, "base64url SHA-256");
    }

    #[tokio::test]
    async fn jwks_document_has_the_public_key_only() {
        let keys = DevKeys::from_seed([3; 32]);
        let doc: serde_json::Value = serde_json::from_str(&keys.jwks_json()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(keys.signing.verifying_key().as_bytes());
        assert_eq!(
            doc,
            serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": keys.kid(),
                "alg": "EdDSA", "use": "sig",
            }]})
        );
        let set = KeySet::from_jwks_json(keys.jwks_json().as_bytes(), None).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.get(keys.kid()).unwrap().algorithms(),
            [Algorithm::EdDSA]
        );
    }

    #[tokio::test]
    async fn pem_round_trip_mints_tokens_the_server_accepts() {
        let server = DevKeys::generate();
        let pem = server.to_pem();
        assert!(pem.starts_with(PEM_BEGIN));
        let cli = DevKeys::from_pem(&pem).unwrap();
        assert_eq!(cli.kid(), server.kid());
        let verifier = JwtVerifier::with_keys(JwtConfig::default(), server.key_set());
        let token = cli.mint(&request()).unwrap();
        assert!(verifier.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn loads_an_openssl_generated_key() {
        let keys = DevKeys::from_pem(OPENSSL_ED25519).unwrap();
        let again = DevKeys::from_pem(&keys.to_pem()).unwrap();
        // Written back in the same form OpenSSL writes.
        assert_eq!(keys.to_pem().trim(), OPENSSL_ED25519.trim());
        assert_eq!(keys.kid(), again.kid());
        // The fixture JWKS lists the same public key as "ed-1".
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/jwks.json")).unwrap();
        let x = URL_SAFE_NO_PAD.encode(keys.signing.verifying_key().as_bytes());
        assert!(
            fixture["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["x"] == x)
        );
    }

    #[tokio::test]
    async fn bad_pem_and_bad_docs_are_errors() {
        assert_eq!(DevKeys::from_pem("").unwrap_err(), DevKeyError::Pem);
        assert_eq!(
            DevKeys::from_pem(&format!("{PEM_BEGIN}\nAAAA\n{PEM_END}\n")).unwrap_err(),
            DevKeyError::Pem
        );
        let rsa = include_str!("../tests/fixtures/rsa-2048.pem");
        assert_eq!(DevKeys::from_pem(rsa).unwrap_err(), DevKeyError::Pem);
        let mut bad = request();
        bad.docs.insert("not-a-doc".into(), Role::Editor);
        assert_eq!(
            DevKeys::from_seed([1; 32]).mint(&bad).unwrap_err(),
            DevKeyError::DocsKey("not-a-doc".into())
        );
    }
}

/// Why a development key file may not be used: someone other than this
/// process's user could have written it (planted a key whose tokens they
/// can mint) or can read it (and mint tokens themselves).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileRefusal {
    #[error("it belongs to user {owner}, not to this process's user {me}")]
    NotOwned { owner: u32, me: u32 },
    #[error("other users may read or write it (mode {mode:03o}, 600 expected)")]
    OpenToOthers { mode: u32 },
    #[error("it is not a regular file")]
    NotAFile,
}

/// Writes `keys` to a new file at `path` readable and writable by this
/// user only (mode 600), as [`check_private_file`] requires: for tools that
/// give `relay` a key of their own (`RELAY_DEV_KEY_FILE`). A file already
/// there is replaced.
#[cfg(unix)]
pub fn write_private_key_file(path: &std::path::Path, keys: &DevKeys) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(keys.to_pem().as_bytes())
}

/// Checks the metadata of an opened development key file: a regular file,
/// owned by this process's (effective) user, with no permission for the
/// group or others.
#[cfg(unix)]
pub fn check_private_file(meta: &std::fs::Metadata) -> Result<(), KeyFileRefusal> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !meta.is_file() {
        return Err(KeyFileRefusal::NotAFile);
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(KeyFileRefusal::NotOwned {
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileRefusal::OpenToOthers { mode });
    }
    Ok(())
}
