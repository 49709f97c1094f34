//! [`JwtVerifier`]: the [`TokenVerifier`] port over jsonwebtoken and a
//! replaceable [`KeySet`].

use super::keys::{KeySet, VerificationKey};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use relay_domain::{DocumentId, Role, UserId};
use relay_ports::{AuthError, ClaimName, Claims, DocsClaim, InvalidToken, TokenVerifier};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// How tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// Required `iss` (`JWT_ISSUER`), if set.
    pub issuer: Option<String>,
    /// Required `aud` (`JWT_AUDIENCE`), if set. Unset, `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longer tokens are refused before anything is decoded.
    pub max_token_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: None,
            leeway_secs: 30,
            max_token_bytes: 8192,
        }
    }
}

/// Verifies JWTs against the current key set. The set is replaced whole
/// with [`JwtVerifier::set_keys`] (by a refresher, from any thread); a
/// verification in progress keeps the set it started with.
#[derive(Debug)]
pub struct JwtVerifier {
    config: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
}

fn invalid(reason: InvalidToken) -> AuthError {
    AuthError::Invalid(reason)
}

impl JwtVerifier {
    /// A verifier without keys: everything is `Unavailable` until
    /// [`set_keys`](Self::set_keys) is called with a usable set.
    pub fn new(config: JwtConfig) -> Self {
        JwtVerifier {
            config,
            keys: RwLock::new(Arc::new(KeySet::empty(None))),
        }
    }

    pub fn with_keys(config: JwtConfig, keys: KeySet) -> Self {
        let verifier = JwtVerifier {
            config,
            keys: RwLock::new(Arc::new(KeySet::empty(None))),
        };
        verifier.set_keys(keys);
        verifier
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Replaces the key set and logs the keys that were skipped. An empty
    /// set is installed as given (fail closed): a refresher that prefers to
    /// keep the previous keys checks [`KeySet::is_empty`] first.
    pub fn set_keys(&self, keys: KeySet) {
        for skipped in keys.skipped() {
            tracing::warn!(issuer = keys.issuer(), "JWKS {skipped}");
        }
        if keys.is_empty() {
            tracing::warn!(issuer = keys.issuer(), "no usable token verification key");
        } else {
            tracing::info!(
                issuer = keys.issuer(),
                keys = keys.len(),
                kids = ?keys.keys().iter().map(VerificationKey::kid).collect::<Vec<_>>(),
                "token verification keys loaded"
            );
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a usable key is loaded.
    pub fn has_keys(&self) -> bool {
        !self.keys().is_empty()
    }

    /// Verifies a token (synchronously; this is what
    /// [`TokenVerifier::verify`] does).
    pub fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > self.config.max_token_bytes {
            return Err(invalid(InvalidToken::TooLarge));
        }
        let (alg, kid) = read_header(token)?;
        let keys = self.keys();
        if keys.is_empty() {
            return Err(AuthError::Unavailable);
        }
        let key = match &kid {
            Some(kid) => keys
                .get(kid)
                .ok_or_else(|| invalid(InvalidToken::UnknownKid))?,
            None => keys
                .only_key()
                .ok_or_else(|| invalid(InvalidToken::NoKidAmongSeveralKeys))?,
        };
        if !key.allows(alg) {
            return Err(invalid(InvalidToken::AlgorithmNotAllowed));
        }

        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into();
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), &validation)
                .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;

        if let Some(issuer) = keys.issuer()
            && !issuer_matches(claims.get("iss"), issuer)
        {
            return Err(invalid(InvalidToken::IssuerMismatch));
        }
        let claims = read_claims(&claims)?;
        if expired(claims.expires_at_ms(self.config.leeway_secs)) {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Whether a token with this `exp` must no longer be accepted. RFC 7519:
/// not "on or after" `exp` (plus the leeway). jsonwebtoken compares whole
/// seconds and still accepts `exp == now`, up to a second past `exp`; a
/// session is closed at `exp` to the millisecond, and the token that was
/// just found expired there must not open a new one.
fn expired(expires_at_ms: u64) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    now_ms >= u128::from(expires_at_ms)
}

#[async_trait]
impl TokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_token(token)
    }

    fn has_keys(&self) -> bool {
        JwtVerifier::has_keys(self)
    }
}

/// The header's `alg` and `kid`, refusing what must never be verified
/// before any key is looked at.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
        crit: Option<Value>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(InvalidToken::Malformed));
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| invalid(InvalidToken::MalformedHeader))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(invalid(InvalidToken::Unsigned));
    }
    let alg = Algorithm::from_str(&header.alg)
        .map_err(|_| invalid(InvalidToken::UnsupportedAlgorithm))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(invalid(InvalidToken::Hmac));
    }
    if header.crit.is_some() {
        return Err(invalid(InvalidToken::CriticalHeader));
    }
    Ok((alg, header.kid))
}

/// Reasons are fixed strings: jsonwebtoken's own messages may quote the
/// token's contents.
fn map_error(kind: &ErrorKind) -> AuthError {
    let reason = match kind {
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::InvalidSignature => InvalidToken::BadSignature,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::InvalidIssuer => InvalidToken::WrongIssuer,
        ErrorKind::InvalidAudience => InvalidToken::WrongAudience,
        // Also what jsonwebtoken reports for a claim of the wrong type.
        ErrorKind::MissingRequiredClaim(claim) => {
            InvalidToken::MissingClaim(match claim.as_str() {
                "exp" => ClaimName::Exp,
                "iss" => ClaimName::Iss,
                "aud" => ClaimName::Aud,
                _ => ClaimName::Other,
            })
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            InvalidToken::MalformedClaim(match claim.as_str() {
                "exp" => ClaimName::Exp,
                "nbf" => ClaimName::Nbf,
                _ => ClaimName::Other,
            })
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            InvalidToken::AlgorithmNotAllowed
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            tracing::warn!("a loaded verification key was refused by the verifier");
            InvalidToken::KeyUnusable
        }
        _ => InvalidToken::Malformed,
    };
    invalid(reason)
}

fn issuer_matches(iss: Option<&Value>, expected: &str) -> bool {
    match iss {
        Some(Value::String(iss)) => iss == expected,
        Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(expected)),
        _ => false,
    }
}

/// Relay's claims, from a payload whose signature and registered claims
/// jsonwebtoken has checked.
fn read_claims(claims: &Map<String, Value>) -> Result<Claims, AuthError> {
    let expires_at = match claims.get("exp") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.round() as u64)
            })
            .ok_or_else(|| invalid(InvalidToken::MalformedClaim(ClaimName::Exp)))?,
        _ => return Err(invalid(InvalidToken::MalformedClaim(ClaimName::Exp))),
    };
    let user = match claims.get("sub") {
        None | Some(Value::Null) => return Err(invalid(InvalidToken::MissingSub)),
        Some(Value::String(sub)) => {
            Uuid::try_parse(sub).map_err(|_| invalid(InvalidToken::SubNotUuid))?
        }
        Some(_) => return Err(invalid(InvalidToken::SubNotUuid)),
    };
    let name = match claims.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return Err(invalid(InvalidToken::NameNotString)),
    };
    let docs = match claims.get("docs") {
        None | Some(Value::Null) => None,
        Some(Value::Object(entries)) => Some(read_docs(entries)?),
        Some(_) => return Err(invalid(InvalidToken::DocsNotObject)),
    };
    Ok(Claims {
        user: UserId::new(user),
        name,
        expires_at,
        docs,
    })
}

/// `docs`: document UUID (in any case) or `*`, to a role. Any other key,
/// an unknown role or a document named twice refuses the token.
fn read_docs(entries: &Map<String, Value>) -> Result<DocsClaim, AuthError> {
    let mut docs = DocsClaim::default();
    for (key, value) in entries {
        // `None` is `*`.
        let document = if key == "*" {
            None
        } else {
            let id = Uuid::try_parse(key).map_err(|_| invalid(InvalidToken::DocsBadKey))?;
            Some(DocumentId::new(id))
        };
        let role = value
            .as_str()
            .and_then(|role| Role::from_str(role).ok())
            .ok_or_else(|| invalid(InvalidToken::DocsUnknownRole))?;
        let repeated = match document {
            None => docs.every.replace(role).is_some(),
            Some(document) => docs.each.insert(document, role).is_some(),
        };
        if repeated {
            return Err(invalid(InvalidToken::DocsRepeated));
        }
    }
    Ok(docs)
}
