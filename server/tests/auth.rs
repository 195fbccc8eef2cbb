//! Every refused-token variant gets HTTP 401 before the upgrade; good tokens of every
//! supported kind connect.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tidings_protocol::ServerMessage;
use tidings_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(claims: &serde_json::Value, key: &[u8]) -> String {
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    // Sign by hand so that even an empty key can be used (libraries refuse it).
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

#[tokio::test]
async fn refused_tokens_get_401_before_the_upgrade() {
    let server = start(config()).await;
    let good = json!({"sub": "alice", "exp": now() + 3600});
    let valid = hs256(&good, SECRET.as_bytes());
    let (h, p, s) = {
        let mut parts = valid.split('.');
        (
            parts.next().expect("h").to_owned(),
            parts.next().expect("p").to_owned(),
            parts.next().expect("s").to_owned(),
        )
    };
    let tampered_payload = b64(json!({"sub": "admin", "exp": now() + 3600})
        .to_string()
        .as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    let cases: Vec<(&str, String)> = vec![
        ("missing", format!("ws://{}/ws", server.addr)),
        ("empty", server.ws_url("")),
        ("garbage", server.ws_url("not.a.jwt")),
        (
            "wrong secret",
            server.ws_url(&hs256(&good, b"some-other-secret")),
        ),
        (
            "expired",
            server.ws_url(&hs256(
                &json!({"sub": "alice", "exp": now() - 3600}),
                SECRET.as_bytes(),
            )),
        ),
        (
            "no exp",
            server.ws_url(&hs256(&json!({"sub": "alice"}), SECRET.as_bytes())),
        ),
        ("alg none", server.ws_url(&alg_none)),
        (
            "tampered payload",
            server.ws_url(&format!("{h}.{tampered_payload}.{s}")),
        ),
        ("signature stripped", server.ws_url(&format!("{h}.{p}."))),
        ("empty HS256 key", server.ws_url(&hs256(&good, b""))),
        (
            "no identity",
            server.ws_url(&hs256(&json!({"exp": now() + 60}), SECRET.as_bytes())),
        ),
    ];
    for (name, url) in cases {
        assert_eq!(Client::refused(url).await, 401, "{name}");
    }
    let metrics = server.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("tidings_connections_refused_total{reason=\"auth\"} 11"),
        "{metrics}"
    );
    // The control: the unmodified token connects.
    Client::connect(&server.ws_url(&valid)).await;
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let server = start(config()).await;
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token("bearer"))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    use futures_util::StreamExt;
    let frame = ws.next().await.expect("frame").expect("ok");
    let ServerMessage::Connected(c) =
        ServerMessage::decode(frame.to_text().expect("text")).expect("decode")
    else {
        panic!("not connected")
    };
    assert_eq!(c.user.as_deref(), Some("bearer"));
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_verify_against_public_keys() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let server = start(Config {
        jwt_secret: None,
        jwt_public_keys: vec![keys.join("rsa_public.pem"), keys.join("ed_public.pem")],
        ..Config::default()
    })
    .await;
    let claims = json!({"sub": "svc", "exp": now() + 60});
    let rsa = std::fs::read(keys.join("rsa_private.pem")).expect("rsa key");
    let ed = std::fs::read(keys.join("ed_private.pem")).expect("ed key");
    let rs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa).expect("rsa"),
    )
    .expect("sign");
    let ed_token = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_pem(&ed).expect("ed"),
    )
    .expect("sign");
    Client::connect(&server.ws_url(&rs_token)).await;
    Client::connect(&server.ws_url(&ed_token)).await;
    // HS256 is not configured on this server: a shared-secret token is refused.
    assert_eq!(Client::refused(server.ws_url(&token("x"))).await, 401);
    // A token whose header claims RS256 but is signed by the Ed key fails.
    let mut forged = ed_token.split('.').map(str::to_owned).collect::<Vec<_>>();
    forged[0] = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    assert_eq!(Client::refused(server.ws_url(&forged.join("."))).await, 401);
}

#[tokio::test]
async fn expiry_closes_with_4001_unless_refreshed() {
    let server = start(Config {
        jwt_leeway: Duration::ZERO,
        ..config()
    })
    .await;
    let short = |sub: &str| {
        token_with(tidings_server::TokenSpec {
            sub: sub.into(),
            ttl: Some(Duration::from_secs(2)),
            ..Default::default()
        })
    };
    let mut stale = Client::connect(&server.ws_url(&short("u"))).await;
    let mut fresh = Client::connect(&server.ws_url(&short("u"))).await;
    let reply = fresh
        .request(&format!(
            r#"{{"type":"auth","token":"{}","ref":"r"}}"#,
            token("u")
        ))
        .await;
    let ServerMessage::Authenticated(a) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(a.user, "u");
    assert_eq!(stale.closed().await, Ended::Close(4001));
    // The refreshed connection outlived the old expiry and still answers.
    assert!(matches!(
        fresh.request(r#"{"type":"ping"}"#).await,
        ServerMessage::Pong(_)
    ));
}
