//! Authentication and authorization end to end: real WebSocket clients
//! against the application wired to a JWKS endpoint inside the test
//! (PROTOCOL.md, "Authentication and roles").
//!
//! Every refused token must be refused clearly (close 4401, 4403, 1013 or
//! an HTTP status, as PROTOCOL.md says) and must not disturb anybody else:
//! the tests keep a healthy editor connected and check it still commits.

use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_app::config::Config;
use relay_domain::{DocumentId, Seq};
use relay_ports::protocol::{ErrorCode, Role, ServerMessage, close};
use relay_ports::{ClientMessage, TokenVerifier};
use relay_tests::auth::{JwksApp, JwksServer, Signer, claims, now, spawn_jwks_app};
use relay_tests::{
    Conn, Connect, ConnectOptions, Editor, Received, TestApp, WAIT, answer, new_document,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const ISSUER: &str = "https://id.example.com/";
const AUDIENCE: &str = "relay";

// ---------------------------------------------------------------------------
// Helpers

/// A JWKS endpoint serving the `-a` keys, the app verifying against it (keys
/// loaded), and a document.
struct Env {
    jwks: JwksServer,
    relay: JwksApp,
    doc: DocumentId,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Env {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Env {
        let jwks = JwksServer::start("jwks-first.json").await;
        let mut config = Config::default();
        config.auth.jwt_public_key_url = Some(jwks.url());
        adjust(&mut config);
        let (issuer, audience) = (
            config.auth.jwt.issuer.clone(),
            config.auth.jwt.audience.clone(),
        );
        let relay = spawn_jwks_app(config).await;
        wait_for_keys(&relay).await;
        Env {
            jwks,
            relay,
            doc: new_document(),
            issuer,
            audience,
        }
    }

    /// With JWT_ISSUER and JWT_AUDIENCE set.
    async fn with_issuer_and_audience() -> Env {
        Env::start(|c| {
            c.auth.jwt.issuer = Some(ISSUER.into());
            c.auth.jwt.audience = Some(AUDIENCE.into());
        })
        .await
    }

    fn app(&self) -> &TestApp {
        &self.relay.app
    }

    /// Claims a well-behaved identity provider would issue (with the
    /// configured `iss` and `aud`).
    fn claims(&self, user: Uuid, docs: Value) -> Value {
        let mut c = claims(user, docs);
        if let Some(iss) = &self.issuer {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = &self.audience {
            c["aud"] = json!(aud);
        }
        c
    }

    /// A valid token making `user` an editor of every document.
    fn editor_token(&self, signer: &Signer, user: Uuid) -> String {
        signer.sign(&self.claims(user, json!({"*": "editor"})))
    }

    /// An editor on the document with a valid `rsa-a` token, that has
    /// committed once.
    async fn healthy_editor(&self) -> Editor {
        let user = Uuid::new_v4();
        let token = self.editor_token(&Signer::fixture("rsa-a"), user);
        let mut editor = Editor::join(self.app(), self.doc, user, "healthy", &token).await;
        commit(&mut editor, "healthy;").await;
        editor
    }

    /// `token` must be refused with close `code`; the healthy editor
    /// connected meanwhile must still commit.
    async fn assert_refused(&self, healthy: &mut Editor, token: &str, code: u16) {
        assert_eq!(refusal(self.app(), self.doc, token).await, code);
        still_commits(healthy).await;
    }
}

/// Polls (bounded) until the verifier has loaded keys.
async fn wait_for_keys(relay: &JwksApp) {
    let deadline = Instant::now() + WAIT;
    while !relay.verifier.has_keys() {
        assert!(Instant::now() < deadline, "JWKS keys not loaded in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Joins with `token` and returns the close code it is refused with; panics
/// if it is accepted or the connection ends without a code.
async fn refusal(app: &TestApp, doc: DocumentId, token: &str) -> u16 {
    let mut conn = Conn::connect(&app.url(doc)).await;
    conn.join("intruder", Some(token), None).await;
    loop {
        match conn.recv().await {
            Received::Closed(Some(code)) => return code,
            Received::Closed(None) => panic!("connection ended without a close code"),
            Received::Message(m @ ServerMessage::Joined { .. }) => {
                panic!("the token was accepted: {m:?}")
            }
            // An error frame may precede the close.
            Received::Message(_) => {}
        }
    }
}

/// Inserts `text` at the end and waits for the ack.
async fn commit(editor: &mut Editor, text: &str) {
    let end = editor.text().chars().count();
    editor.insert(end, text).await;
    editor.settle().await;
    assert!(editor.text().contains(text));
}

/// The editor is still connected and its submits are still acknowledged.
async fn still_commits(editor: &mut Editor) {
    let before = editor.client.version();
    commit(editor, "ok;").await;
    assert!(editor.client.version() > before, "nothing was committed");
}

/// Settles every editor and brings them all to the latest version.
async fn converge(editors: &mut [&mut Editor]) {
    for e in editors.iter_mut() {
        e.settle().await;
    }
    let latest = editors
        .iter()
        .map(|e| e.client.version())
        .max()
        .expect("an editor");
    for e in editors.iter_mut() {
        e.catch_up_to(latest).await;
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (the JWT encoding).
fn b64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn un_b64url(text: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let v = B64URL.iter().position(|&x| x == c).expect("base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// The token's three segments.
fn segments(token: &str) -> [String; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token");
    [parts[0].into(), parts[1].into(), parts[2].into()]
}

/// A header with this algorithm and kid.
fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

fn editor_docs() -> Value {
    json!({"*": "editor"})
}

// ---------------------------------------------------------------------------
// Forged and malformed tokens: 4401

#[tokio::test]
async fn an_unsigned_token_with_alg_none_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let valid = env.editor_token(&Signer::fixture("rsa-a"), Uuid::new_v4());
    let [_, payload, signature] = segments(&valid);
    for alg in ["none", "None", "NONE"] {
        let head = b64url(
            json!({"alg": alg, "typ": "JWT", "kid": "rsa-a"})
                .to_string()
                .as_bytes(),
        );
        // Without a signature, and with the valid token's signature kept.
        for sig in ["", signature.as_str()] {
            let forged = format!("{head}.{payload}.{sig}");
            env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
                .await;
        }
    }
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_published_or_private_key_bytes_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let claims = env.claims(Uuid::new_v4(), editor_docs());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("jwks-first.json")).expect("fixture"),
    )
    .expect("JSON");
    for name in ["rsa-a", "ec-a", "ed-a"] {
        let signer = Signer::fixture(name);
        let public_pem = std::fs::read(fixtures.join(format!("{name}.pub.pem"))).expect("fixture");
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == name)
            .expect("published key")
            .to_string();
        // The secrets an attacker would try: what the server publishes (the
        // public key as PEM, as a JWK) and, for good measure, the private key.
        let secrets: [&[u8]; 3] = [&public_pem, jwk.as_bytes(), signer.pem()];
        for secret in secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                for kid in [Some(name), None] {
                    let forged = jsonwebtoken::encode(
                        &header(alg, kid),
                        &claims,
                        &EncodingKey::from_secret(secret),
                    )
                    .expect("sign");
                    env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
                        .await;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_token_whose_alg_does_not_fit_the_named_key_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let claims = env.claims(Uuid::new_v4(), editor_docs());
    // Signed correctly by rsa-a, but naming the EC key's kid; and an ES384
    // signature under the P-256 key's kid.
    let rsa = Signer::fixture("rsa-a");
    let forged = rsa.sign_with(header(Algorithm::RS256, Some("ec-a")), &claims);
    env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
        .await;
    let ec384 = Signer::fixture("ec384-a");
    let forged = ec384.sign_with(header(Algorithm::ES384, Some("ec-a")), &claims);
    env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
        .await;
}

#[tokio::test]
async fn a_token_signed_with_a_key_not_in_the_jwks_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    for name in ["rsa-b", "ec-b", "ed-b"] {
        let token = env.editor_token(&Signer::fixture(name), Uuid::new_v4());
        env.assert_refused(&mut healthy, &token, close::UNAUTHENTICATED)
            .await;
    }
}

#[tokio::test]
async fn a_flood_of_made_up_kids_causes_at_most_one_jwks_fetch_per_cooldown() {
    let env = Env::start(|c| c.auth.jwks_cooldown_secs = 3600).await;
    let mut healthy = env.healthy_editor().await;
    let (hits, fetches) = (env.jwks.hits(), env.relay.verifier.fetch_count());
    let rsa = Signer::fixture("rsa-a");
    let tokens: Vec<String> = (0..50)
        .map(|i| {
            let kid = format!("made-up-{i}-{}", Uuid::new_v4());
            rsa.sign_with(
                header(Algorithm::RS256, Some(&kid)),
                &env.claims(Uuid::new_v4(), editor_docs()),
            )
        })
        .collect();
    let codes = join_all(tokens.iter().map(|t| refusal(env.app(), env.doc, t))).await;
    assert!(
        codes.iter().all(|&c| c == close::UNAUTHENTICATED),
        "{codes:?}"
    );
    let (hits, fetches) = (
        env.jwks.hits() - hits,
        env.relay.verifier.fetch_count() - fetches,
    );
    assert!(hits <= 1, "{hits} JWKS requests for 50 unknown kids");
    assert!(fetches <= 1, "{fetches} JWKS fetches for 50 unknown kids");
    still_commits(&mut healthy).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    // Beyond the default 30 s leeway.
    c["exp"] = json!(now() - 120);
    c["iat"] = json!(now() - 3720);
    let token = Signer::fixture("ec-a").sign(&c);
    env.assert_refused(&mut healthy, &token, close::UNAUTHENTICATED)
        .await;
}

#[tokio::test]
async fn a_token_not_valid_before_a_time_beyond_the_leeway_is_refused_with_4401() {
    let env = Env::start(|c| c.auth.jwt.leeway_secs = 30).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ed-a");
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c["nbf"] = json!(now() + 300);
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
    // Within the leeway (clock skew) it is accepted.
    let user = Uuid::new_v4();
    let mut c = env.claims(user, editor_docs());
    c["nbf"] = json!(now() + 5);
    let mut skewed = Editor::join(env.app(), env.doc, user, "skewed", &signer.sign(&c)).await;
    still_commits(&mut skewed).await;
}

#[tokio::test]
async fn a_token_from_the_wrong_issuer_is_refused_with_4401() {
    let env = Env::with_issuer_and_audience().await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("rsa-a");
    for iss in [
        json!("https://id.example.com"),
        json!("https://ID.example.com/"),
        json!("https://id.example.com.evil.example/"),
        json!(""),
        json!(null),
        json!(["https://other.example/"]),
    ] {
        let mut c = env.claims(Uuid::new_v4(), editor_docs());
        c["iss"] = iss;
        env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
            .await;
    }
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c.as_object_mut().expect("object").remove("iss");
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_with_4401() {
    let env = Env::with_issuer_and_audience().await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ec-a");
    for aud in [
        json!("relay-staging"),
        json!("Relay"),
        json!(["billing", "search"]),
        json!(null),
    ] {
        let mut c = env.claims(Uuid::new_v4(), editor_docs());
        c["aud"] = aud;
        env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
            .await;
    }
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c.as_object_mut().expect("object").remove("aud");
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
    // A list that includes Relay is fine.
    let user = Uuid::new_v4();
    let mut c = env.claims(user, editor_docs());
    c["aud"] = json!(["billing", AUDIENCE]);
    let mut listed = Editor::join(env.app(), env.doc, user, "listed", &signer.sign(&c)).await;
    still_commits(&mut listed).await;
}

#[tokio::test]
async fn a_known_kid_with_the_iss_of_another_issuer_is_refused_with_4401() {
    let env = Env::with_issuer_and_audience().await;
    let mut healthy = env.healthy_editor().await;
    for name in ["rsa-a", "ec-a", "ec384-a", "ed-a"] {
        let mut c = env.claims(Uuid::new_v4(), editor_docs());
        c["iss"] = json!("https://other-tenant.example.com/");
        let token = Signer::fixture(name).sign(&c);
        env.assert_refused(&mut healthy, &token, close::UNAUTHENTICATED)
            .await;
    }
}

#[tokio::test]
async fn a_token_with_a_tampered_payload_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let other = new_document();
    for name in ["rsa-a", "ec-a", "ed-a"] {
        // A viewer of another document promotes itself to owner of all.
        let valid = Signer::fixture(name)
            .sign(&env.claims(Uuid::new_v4(), json!({ other.to_string(): "viewer" })));
        let [head, payload, sig] = segments(&valid);
        let mut c: Value = serde_json::from_slice(&un_b64url(&payload)).expect("payload JSON");
        c["docs"] = json!({"*": "owner"});
        let forged = format!("{head}.{}.{sig}", b64url(c.to_string().as_bytes()));
        env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
            .await;
        // The untampered token is refused for what it says: no access here.
        env.assert_refused(&mut healthy, &valid, close::FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn a_token_with_a_tampered_signature_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    for name in ["rsa-a", "ec-a", "ec384-a", "ed-a"] {
        let valid = env.editor_token(&Signer::fixture(name), Uuid::new_v4());
        let [head, payload, sig] = segments(&valid);
        let mut bytes = un_b64url(&sig);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        let forged = format!("{head}.{payload}.{}", b64url(&bytes));
        env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
            .await;
        // Truncated, and removed.
        let forged = format!("{head}.{payload}.{}", b64url(&bytes[..middle]));
        env.assert_refused(&mut healthy, &forged, close::UNAUTHENTICATED)
            .await;
        env.assert_refused(
            &mut healthy,
            &format!("{head}.{payload}."),
            close::UNAUTHENTICATED,
        )
        .await;
    }
}

#[tokio::test]
async fn a_token_without_exp_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("rsa-a");
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c.as_object_mut().expect("object").remove("exp");
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
    for exp in [json!(null), json!("tomorrow"), json!(-1)] {
        c["exp"] = exp;
        env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
            .await;
    }
}

#[tokio::test]
async fn a_token_without_sub_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ec-a");
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c.as_object_mut().expect("object").remove("sub");
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
    c["sub"] = json!(null);
    env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
        .await;
}

#[tokio::test]
async fn a_token_whose_sub_is_not_a_uuid_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ed-a");
    for sub in [
        json!("ada@example.com"),
        json!(""),
        json!("1234"),
        json!(42),
        json!({"id": Uuid::new_v4().to_string()}),
    ] {
        let mut c = env.claims(Uuid::new_v4(), editor_docs());
        c["sub"] = sub;
        env.assert_refused(&mut healthy, &signer.sign(&c), close::UNAUTHENTICATED)
            .await;
    }
}

#[tokio::test]
async fn a_9_kib_token_is_refused_with_4401() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("rsa-a");
    let mut c = env.claims(Uuid::new_v4(), editor_docs());
    c["pad"] = json!("x".repeat(7 * 1024));
    let token = signer.sign(&c);
    assert!(token.len() >= 9 * 1024, "{} bytes", token.len());
    env.assert_refused(&mut healthy, &token, close::UNAUTHENTICATED)
        .await;
    // The same token with a smaller pad is accepted: the size is the reason.
    let user = Uuid::new_v4();
    let mut c = env.claims(user, editor_docs());
    c["pad"] = json!("x".repeat(4 * 1024));
    let token = signer.sign(&c);
    assert!(token.len() < 8 * 1024, "{} bytes", token.len());
    let mut padded = Editor::join(env.app(), env.doc, user, "padded", &token).await;
    still_commits(&mut padded).await;
}

// ---------------------------------------------------------------------------
// Authorization: 4403 and `forbidden`

#[tokio::test]
async fn a_valid_token_for_another_document_is_refused_with_4403() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ec384-a");
    let other = new_document();
    let token = signer.sign(&env.claims(Uuid::new_v4(), json!({ other.to_string(): "owner" })));
    env.assert_refused(&mut healthy, &token, close::FORBIDDEN)
        .await;
    let token = signer.sign(&env.claims(Uuid::new_v4(), json!({})));
    env.assert_refused(&mut healthy, &token, close::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn a_viewer_submit_is_answered_forbidden_and_changes_nothing() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let before = (healthy.client.version(), healthy.text());

    let token = Signer::fixture("ed-a").sign(&env.claims(
        Uuid::new_v4(),
        json!({ env.doc.to_string(): "viewer", "*": "editor" }),
    ));
    let mut viewer = Conn::connect(&env.app().url(env.doc)).await;
    viewer.join("viewer-tab", Some(&token), None).await;
    let version = match viewer.message().await {
        ServerMessage::Joined { role, version, .. } => {
            assert_eq!(role, Role::Viewer, "the document's own entry wins over *");
            version
        }
        other => panic!("expected joined, got {other:?}"),
    };
    assert_eq!(version, before.0);
    let submit = json!({"type": "submit", "seq": 1, "base": version.get(), "delta": [{"insert": "vandalism"}]});
    viewer.send_text(submit.to_string()).await;
    match answer(&mut viewer).await {
        ServerMessage::Error {
            code, seq, fatal, ..
        } => assert_eq!(
            (code, seq, fatal),
            (ErrorCode::Forbidden, Some(Seq::from(1)), false)
        ),
        other => panic!("expected error forbidden, got {other:?}"),
    }

    // The document is unchanged: a newcomer sees what the healthy editor saw.
    let user = Uuid::new_v4();
    let token = env.editor_token(&Signer::fixture("rsa-a"), user);
    let newcomer = Editor::join(env.app(), env.doc, user, "newcomer", &token).await;
    assert_eq!((newcomer.client.version(), newcomer.text()), before);

    // The viewer is still connected and still receives the others' work.
    still_commits(&mut healthy).await;
    let ops = viewer
        .until(|m| match m {
            ServerMessage::Ops { ops } => Some(ops.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ops[0].version, healthy.client.version());
    assert!(!healthy.text().contains("vandalism"));
}

// ---------------------------------------------------------------------------
// Where the token may come from

#[tokio::test]
async fn a_token_in_the_url_query_is_refused_with_400_and_a_bearer_header_works() {
    let env = Env::start(|_| {}).await;
    let mut healthy = env.healthy_editor().await;
    let user = Uuid::new_v4();
    let token = env.editor_token(&Signer::fixture("rsa-a"), user);
    let url = env.app().url(env.doc);
    for query in [
        format!("?token={token}"),
        format!("?access_token={token}"),
        format!("?jwt={token}"),
        format!("?v=1&token={token}"),
    ] {
        match Conn::open(&format!("{url}{query}"), ConnectOptions::default()).await {
            Connect::Refused(status, _) => assert_eq!(status, 400, "{query}"),
            Connect::Open(_) => panic!("upgrade accepted with the token in the query"),
        }
    }
    still_commits(&mut healthy).await;

    // Only in `Authorization: Bearer`, not in the join.
    let bearer = ConnectOptions {
        bearer: Some(token.clone()),
        ..ConnectOptions::default()
    };
    let Connect::Open(mut conn) = Conn::open(&url, bearer).await else {
        panic!("upgrade with a bearer token refused");
    };
    conn.join("bearer-tab", None, None).await;
    let version = match conn.message().await {
        ServerMessage::Joined {
            role,
            user: info,
            version,
            ..
        } => {
            assert_eq!((role, *info.id.as_uuid()), (Role::Editor, user));
            version
        }
        other => panic!("expected joined, got {other:?}"),
    };
    let submit = json!({"type": "submit", "seq": 1, "base": version.get(), "delta": [{"insert": "bearer;"}]});
    conn.send_text(submit.to_string()).await;
    match answer(&mut conn).await {
        ServerMessage::Ack { seq, version: v } => {
            assert_eq!((seq, v), (Seq::from(1), version.next().unwrap()))
        }
        other => panic!("expected ack, got {other:?}"),
    }

    // A bad bearer token is refused like a bad join token.
    let forged = jsonwebtoken::encode(
        &header(Algorithm::HS256, Some("rsa-a")),
        &env.claims(user, editor_docs()),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("sign");
    let bearer = ConnectOptions {
        bearer: Some(forged),
        ..ConnectOptions::default()
    };
    let Connect::Open(mut conn) = Conn::open(&url, bearer).await else {
        panic!("upgrade refused");
    };
    conn.join("bearer-tab-2", None, None).await;
    assert_eq!(conn.closed().await, Some(close::UNAUTHENTICATED));
    still_commits(&mut healthy).await;
}

// ---------------------------------------------------------------------------
// Keys: availability and rotation

#[tokio::test]
async fn with_the_jwks_down_at_start_ready_is_503_and_joins_close_1013_until_it_is_back() {
    let jwks = JwksServer::start("jwks-first.json").await;
    jwks.set_up(false);
    let relay = spawn_jwks_app({
        let mut config = Config::default();
        config.auth.jwt_public_key_url = Some(jwks.url());
        config
    })
    .await;
    let doc = new_document();

    // The refresher has tried (bounded wait) and failed.
    let deadline = Instant::now() + WAIT;
    while jwks.hits() == 0 {
        assert!(Instant::now() < deadline, "the JWKS was never requested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = relay.app.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json()["checks"]["jwt_keys"],
        "error",
        "{}",
        ready.body
    );

    let user = Uuid::new_v4();
    let token = Signer::fixture("rsa-a").sign(&claims(user, editor_docs()));
    assert_eq!(
        refusal(&relay.app, doc, &token).await,
        close::TRY_AGAIN_LATER
    );
    let unknown = Signer::fixture("rsa-b").sign(&claims(user, editor_docs()));
    assert_eq!(
        refusal(&relay.app, doc, &unknown).await,
        close::TRY_AGAIN_LATER
    );

    // Back up: the refresher (retrying 1 s, 2 s, 4 s...) loads the keys.
    jwks.set_up(true);
    let mut ready = None;
    for _ in 0..300 {
        let r = relay.app.get("/ready").await;
        if r.status == 200 {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = ready.expect("/ready did not become 200 after the JWKS came back");
    assert_eq!(ready.json()["checks"]["jwt_keys"], "ok", "{}", ready.body);

    let mut editor = Editor::join(&relay.app, doc, user, "tab", &token).await;
    still_commits(&mut editor).await;
}

#[tokio::test]
async fn connected_sessions_survive_a_key_rotation_and_tokens_from_the_new_keys_are_accepted() {
    let env = Env::start(|c| c.auth.jwks_cooldown_secs = 0).await;
    let (ua, ub, uc, ud) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let token_a = env.editor_token(&Signer::fixture("rsa-a"), ua);
    let token_b = env.editor_token(&Signer::fixture("ec-a"), ub);
    let mut a = Editor::join(env.app(), env.doc, ua, "tab-a", &token_a).await;
    let mut b = Editor::join(env.app(), env.doc, ub, "tab-b", &token_b).await;
    commit(&mut a, "a1;").await;
    commit(&mut b, "b1;").await;
    converge(&mut [&mut a, &mut b]).await;

    // The identity provider publishes the new keys next to the old ones; a
    // token signed with a new key names an unknown kid, which makes the
    // verifier fetch at once (cooldown 0).
    env.jwks.set("jwks-both.json");
    let hits = env.jwks.hits();
    let mut c = Editor::join(
        env.app(),
        env.doc,
        uc,
        "tab-c",
        &env.editor_token(&Signer::fixture("rsa-b"), uc),
    )
    .await;
    assert!(
        env.jwks.hits() > hits,
        "the unknown kid did not cause a fetch"
    );
    commit(&mut c, "c1;").await;
    commit(&mut a, "a2;").await;

    // The old keys are withdrawn. A made-up kid makes the verifier fetch
    // again, so it holds the second set only.
    env.jwks.set("jwks-second.json");
    let hits = env.jwks.hits();
    let made_up = Signer::fixture("ed-b").sign_with(
        header(Algorithm::EdDSA, Some("not-published")),
        &env.claims(ud, editor_docs()),
    );
    assert_eq!(
        refusal(env.app(), env.doc, &made_up).await,
        close::UNAUTHENTICATED
    );
    assert!(
        env.jwks.hits() > hits,
        "the unknown kid did not cause a fetch"
    );
    // New tokens signed with a withdrawn key are refused...
    let withdrawn = env.editor_token(&Signer::fixture("ec-a"), ud);
    assert_eq!(
        refusal(env.app(), env.doc, &withdrawn).await,
        close::UNAUTHENTICATED
    );
    // ...tokens from the new keys accepted...
    let mut d = Editor::join(
        env.app(),
        env.doc,
        ud,
        "tab-d",
        &env.editor_token(&Signer::fixture("ed-b"), ud),
    )
    .await;
    // ...and the sessions opened with the old keys keep working.
    commit(&mut a, "a3;").await;
    commit(&mut b, "b2;").await;
    commit(&mut c, "c2;").await;
    commit(&mut d, "d1;").await;
    converge(&mut [&mut a, &mut b, &mut c, &mut d]).await;
    let text = a.text();
    for e in [&b, &c, &d] {
        assert_eq!(e.text(), text);
    }
    for part in ["a1;", "a2;", "a3;", "b1;", "b2;", "c1;", "c2;", "d1;"] {
        assert_eq!(text.matches(part).count(), 1, "{part} in {text:?}");
    }
}

// ---------------------------------------------------------------------------
// Expiry during a session

#[tokio::test]
async fn a_session_is_closed_with_4401_when_its_token_expires_and_resumes_with_a_fresh_token_losing_nothing()
 {
    let env = Env::start(|c| c.auth.jwt.leeway_secs = 0).await;
    let mut healthy = env.healthy_editor().await;
    let signer = Signer::fixture("ec-a");
    let user = Uuid::new_v4();

    // Expires 2 to 3 s from now.
    let exp = now() + 3;
    let mut short = env.claims(user, editor_docs());
    short["exp"] = json!(exp);
    let short = signer.sign(&short);
    let mut e = Editor::join(env.app(), env.doc, user, "expiring", &short).await;
    commit(&mut e, "[one]").await;
    converge(&mut [&mut e, &mut healthy]).await;

    // A submit whose ack the client never reads: unacknowledged for it.
    let end = e.text().chars().count();
    e.insert(end, "[two]").await;
    assert!(!e.client.is_synchronized());
    let inflight = e.client.inflight().cloned().expect("[two] in flight");
    let mut unread_ack = None;
    let deadline = Instant::now() + Duration::from_secs(exp.saturating_sub(now()) + 10);
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match e.conn.recv_within(left).await {
            Some(Received::Closed(code)) => break code,
            Some(Received::Message(ServerMessage::Ack { seq, version })) if seq == inflight.seq => {
                unread_ack = Some(version);
            }
            Some(Received::Message(_)) => {}
            None => panic!("the session was not closed when its token expired"),
        }
    };
    assert_eq!(code, Some(close::UNAUTHENTICATED));
    assert!(now() + 1 >= exp, "closed before the token expired");

    // The others go on meanwhile; the expired token is not accepted again.
    still_commits(&mut healthy).await;
    assert_eq!(
        refusal(env.app(), env.doc, &short).await,
        close::UNAUTHENTICATED
    );
    let fresh = env.editor_token(&signer, user);

    // Re-sending [two] exactly as first sent, on a new connection with the
    // fresh token, is acknowledged with the version it was committed at,
    // and commits nothing new.
    let mut again = Conn::connect(&env.app().url(env.doc)).await;
    again.join("expiring", Some(&fresh), None).await;
    let head = match again.message().await {
        ServerMessage::Joined { version, .. } => version,
        other => panic!("expected joined, got {other:?}"),
    };
    again
        .send(&ClientMessage::Submit {
            seq: inflight.seq,
            base: inflight.base,
            delta: inflight.delta.clone(),
        })
        .await;
    match answer(&mut again).await {
        ServerMessage::Ack { seq, version } => {
            assert_eq!(seq, inflight.seq);
            assert!(version <= head, "committed again as {version:?}");
            if let Some(first) = unread_ack {
                assert_eq!(version, first);
            }
        }
        other => panic!("expected the ack of the first commit, got {other:?}"),
    }
    again.send(&ClientMessage::Leave).await;
    assert_eq!(again.closed().await, Some(close::NORMAL));

    // An edit made while disconnected waits for the next submit.
    e.insert(0, "[three]").await;
    // The client rejoins with the fresh token and `since`, finds [two] in
    // the catch-up (or re-sends it), then sends [three].
    e.rejoin(env.app(), &fresh).await;
    converge(&mut [&mut e, &mut healthy]).await;
    // Editor::rejoin may re-send a submit it has just sent (after
    // recognising its own op in the catch-up); the server then answers
    // `in_flight`, which is harmless. Anything else is not.
    assert!(
        e.errors.iter().all(|(code, _)| code == "in_flight"),
        "{:?}",
        e.errors
    );

    let text = healthy.text();
    assert_eq!(e.text(), text);
    for part in ["healthy;", "[one]", "[two]", "[three]", "ok;"] {
        assert_eq!(text.matches(part).count(), 1, "{part} in {text:?}");
    }
    // And a newcomer reads the same document.
    let other = Uuid::new_v4();
    let newcomer = Editor::join(
        env.app(),
        env.doc,
        other,
        "newcomer",
        &env.editor_token(&signer, other),
    )
    .await;
    assert_eq!(newcomer.text(), text);
}
