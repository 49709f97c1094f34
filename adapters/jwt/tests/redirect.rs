//! The JWKS fetch follows no redirect from `https` to plain `http` (F8):
//! whoever answers the plain request could hand out keys that mint valid
//! tokens. Against a real HTTPS endpoint (a CA and a certificate for
//! 127.0.0.1 made with rcgen) that the fetch trusts: the system's roots
//! are read from `SSL_CERT_FILE`, which has to be set before the process
//! starts, so the test runs its HTTPS half in a child process of this
//! test binary.

use relay_adapter_jwt::testing::JwksServer;
use relay_adapter_jwt::{JwksConfig, JwksError, JwksVerifier, JwtConfig};
use relay_ports::TokenVerifier;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The key set the endpoints serve.
const JWKS: &str = include_str!("fixtures/jwks.json");

const DIR_VAR: &str = "RELAY_TEST_REDIRECT_DIR";

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed
/// (`server.pem`, `server.key.der`) in `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Relay redirect test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.der"), cert.der()).unwrap();
    std::fs::write(dir.join("server.key.der"), key.serialize_der()).unwrap();
}

#[test]
fn a_jwks_fetch_does_not_follow_a_redirect_from_https_to_http() {
    let dir = std::env::temp_dir().join(format!("relay-redirect-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    certificates(&dir);
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "https_half",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .env(DIR_VAR, &dir)
        .output()
        .expect("running the HTTPS half");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the HTTPS half failed:\n{stdout}\n{stderr}"
    );
}

/// An HTTPS endpoint: `/jwks.json` answers the key set, `/to/<url>`
/// redirects (302) to `<url>`. Counts requests.
async fn https_endpoint(dir: &Path) -> (String, Arc<AtomicUsize>) {
    use tokio_rustls::rustls;
    let cert =
        rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("server.der")).unwrap());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        std::fs::read(dir.join("server.key.der")).unwrap().into(),
    );
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = match path.strip_prefix("/to/") {
                    Some(target) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{JWKS}",
                        JWKS.len()
                    ),
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (base, hits)
}

fn verifier(url: String) -> Arc<JwksVerifier> {
    JwksVerifier::new(
        JwksConfig {
            timeout: Duration::from_secs(5),
            ..JwksConfig::new(url)
        },
        JwtConfig::default(),
    )
}

/// The half that needs `SSL_CERT_FILE` (run by the test above).
#[tokio::test]
#[ignore = "run by a_jwks_fetch_does_not_follow_a_redirect_from_https_to_http"]
async fn https_half() {
    let dir = PathBuf::from(std::env::var_os(DIR_VAR).expect("run by the test above"));
    let (https, https_hits) = https_endpoint(&dir).await;
    let plain = JwksServer::start(JWKS)
        .await
        .expect("the plain HTTP server");

    // The HTTPS endpoint is trusted, and a redirect that stays on https is
    // followed.
    let direct = verifier(format!("{https}/to/{https}/jwks.json"));
    assert_eq!(direct.refresh().await, Ok(4), "https to https");
    assert_eq!(https_hits.load(Ordering::SeqCst), 2);

    // From https to http: not followed, the plain server never asked.
    let down = verifier(format!("{https}/to/{}", plain.url()));
    match down.refresh().await {
        Err(JwksError::Request(e)) => assert!(e.contains("redirect"), "{e}"),
        other => panic!("expected a refused redirect, got {other:?}"),
    }
    assert_eq!(plain.hits(), 0, "the plain-HTTP key set was fetched");
    assert!(!down.has_keys());
}
