//! Test support for authentication: a JWKS server the tests control, test
//! signing keys (RSA, EC, Ed25519 fixtures in `tests/fixtures`) and the app
//! wired to verify tokens against the JWKS URL.

use crate::TestApp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_adapter_jwt::{DevKeys, JwksVerifier};
use relay_adapter_memory::MemoryMetrics;
use relay_app::config::Config;
use relay_app::wiring::{self, Background};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

/// A JWKS endpoint whose document, availability and hit count the test
/// controls (the jwt adapter's test server, serving fixtures by name).
#[derive(Debug)]
pub struct JwksServer(relay_adapter_jwt::testing::JwksServer);

impl JwksServer {
    /// Serves `body` (a fixture file name under `tests/fixtures`, or JSON).
    pub async fn start(body: &str) -> JwksServer {
        JwksServer(
            relay_adapter_jwt::testing::JwksServer::start(fixture_or_json(body))
                .await
                .expect("JWKS server"),
        )
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Serves another document from now on.
    pub fn set(&self, body: &str) {
        self.0.set(&fixture_or_json(body));
    }

    /// `false`: answer 503 to every request.
    pub fn set_up(&self, up: bool) {
        self.0.set_up(up);
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.0.hits()
    }
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn fixture_or_json(body: &str) -> String {
    if body.trim_start().starts_with('{') {
        body.to_owned()
    } else {
        std::fs::read_to_string(fixtures().join(body))
            .unwrap_or_else(|e| panic!("fixture {body}: {e}"))
    }
}

/// A signing key from `tests/fixtures` (its kid is its file name).
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pem: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `rsa-a`, `rsa-b` (RS256), `ec-a`, `ec-b` (ES256), `ec384-a` (ES384),
    /// `ed-a`, `ed-b` (EdDSA).
    pub fn fixture(name: &str) -> Signer {
        let pem = std::fs::read(fixtures().join(format!("{name}.pem"))).expect("fixture key");
        let (alg, key) = if name.starts_with("rsa") {
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&pem).expect("rsa"),
            )
        } else if name.starts_with("ec384") {
            (
                Algorithm::ES384,
                EncodingKey::from_ec_pem(&pem).expect("ec"),
            )
        } else if name.starts_with("ec") {
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&pem).expect("ec"),
            )
        } else {
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&pem).expect("ed"),
            )
        };
        Signer {
            kid: name.to_owned(),
            alg,
            key,
            pem,
        }
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    /// Signs with a header of the test's making.
    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    /// The private key's PEM bytes (for HMAC-confusion tests).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Standard claims: `sub`, `exp` in an hour, `docs` as given.
pub fn claims(sub: Uuid, docs: Value) -> Value {
    json!({"sub": sub.to_string(), "exp": now() + 3600, "iat": now(), "docs": docs})
}

/// The app verifying tokens against a JWKS URL.
#[derive(Debug)]
pub struct JwksApp {
    pub app: TestApp,
    pub verifier: Arc<JwksVerifier>,
    _background: Background,
}

/// Starts the app with `config` (its `jwt_public_key_url` must be set).
pub async fn spawn_jwks_app(config: Config) -> JwksApp {
    assert!(
        config.auth.jwt_public_key_url.is_some(),
        "set jwt_public_key_url"
    );
    let metrics = Arc::new(MemoryMetrics::new());
    let wired = wiring::build_with(config.clone(), None, metrics.clone())
        .await
        .expect("wiring");
    let app = TestApp::serve(
        &config,
        wired.relay,
        None,
        DevKeys::from_seed([0; 32]),
        metrics,
    )
    .await;
    JwksApp {
        app,
        verifier: wired.jwks_verifier.expect("a JWKS verifier"),
        _background: wired.background,
    }
}
