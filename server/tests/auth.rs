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
            info: None,
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

/// Connect with `token` and return the `connected` user, or the refusal's status.
async fn try_connect(server: &TestServer, token: &str) -> Result<Client, u16> {
    match tokio_tungstenite::connect_async(server.ws_url(token)).await {
        Ok(_) => Ok(Client::connect(&server.ws_url(token)).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn time_claims_follow_rfc_7519_on_the_upgrade_and_in_band() {
    let server = start(config()).await;
    let key = SECRET.as_bytes();
    let n = now();
    // nbf an hour ahead: refused at the door and by `auth`.
    let early = hs256(
        &json!({"sub": "alice", "exp": n + 7200, "nbf": n + 3600}),
        key,
    );
    assert_eq!(try_connect(&server, &early).await.err(), Some(401));
    // NumericDate is any JSON number.
    let fractional = hs256(
        &json!({"sub": "alice", "exp": n as f64 + 3600.5, "iat": n as f64 - 0.25, "nbf": n as f64 - 1.5}),
        key,
    );
    let mut alice = try_connect(&server, &fractional)
        .await
        .expect("fractional dates");
    let reply = alice
        .request(&json!({"type": "auth", "token": early, "ref": "a1"}).to_string())
        .await;
    let ServerMessage::Error(e) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (e.code, e.r#ref.as_deref()),
        (tidings_protocol::ErrorCode::Unauthorized, Some("a1"))
    );
    // Expiries past any clock: accepted, never a panic, and `expires_at` is a real time.
    for exp in [json!(u64::MAX), json!(1u64 << 63), json!(1e300)] {
        let far = hs256(&json!({"sub": "alice", "exp": exp}), key);
        let mut c = try_connect(&server, &far).await.expect("far-future exp");
        let reply = c
            .request(&json!({"type": "auth", "token": far, "ref": "a2"}).to_string())
            .await;
        let ServerMessage::Authenticated(a) = reply else {
            panic!("{reply:?}")
        };
        let at = a.expires_at.expect("expires_at");
        assert!(at > n + 100 * 365 * 86_400 && at < 1u64 << 40, "{at}");
        assert!(matches!(
            c.request(r#"{"type":"ping"}"#).await,
            ServerMessage::Pong(_)
        ));
    }
    // A negative exp is simply expired.
    let past = hs256(&json!({"sub": "alice", "exp": -1e300}), key);
    assert_eq!(try_connect(&server, &past).await.err(), Some(401));
}

#[tokio::test]
async fn a_token_accepted_with_leeway_lives_until_exp_plus_leeway() {
    let server = start(Config {
        jwt_leeway: Duration::from_secs(3),
        ..config()
    })
    .await;
    // Expired a second ago, inside the leeway: accepted, and not closed at once.
    let token = hs256(
        &json!({"sub": "alice", "exp": now() - 1}),
        SECRET.as_bytes(),
    );
    let mut c = Client::connect(&server.ws_url(&token)).await;
    assert!(matches!(
        c.request(r#"{"type":"ping","ref":"p"}"#).await,
        ServerMessage::Pong(_)
    ));
    // Closed when exp + leeway passes.
    assert_eq!(c.closed().await, Ended::Close(4001));
    // Outside the leeway: refused.
    let old = hs256(
        &json!({"sub": "alice", "exp": now() - 5}),
        SECRET.as_bytes(),
    );
    assert_eq!(Client::refused(server.ws_url(&old)).await, 401);
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let n = now();
    let key = SECRET.as_bytes();
    let idp = hs256(
        &json!({"sub": "alice", "exp": n + 60, "aud": "tidings", "iss": "https://idp.example"}),
        key,
    );
    let other_aud = hs256(
        &json!({"sub": "alice", "exp": n + 60, "aud": ["billing"], "iss": "https://idp.example"}),
        key,
    );
    let bare = hs256(&json!({"sub": "alice", "exp": n + 60}), key);
    let open = start(config()).await;
    for token in [&idp, &other_aud, &bare] {
        try_connect(&open, token)
            .await
            .expect("aud and iss are not checked when unset");
    }
    let strict = start(Config {
        jwt_audience: Some("tidings".into()),
        jwt_issuer: Some("https://idp.example".into()),
        ..config()
    })
    .await;
    try_connect(&strict, &idp)
        .await
        .expect("matching aud and iss");
    assert_eq!(try_connect(&strict, &other_aud).await.err(), Some(401));
    assert_eq!(try_connect(&strict, &bare).await.err(), Some(401));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_an_empty_query_token_hides_nothing() {
    let server = start(config()).await;
    for (url, header) in [
        (format!("ws://{}/ws", server.addr), "BEARER"),
        (format!("ws://{}/ws?token=", server.addr), "bearer"),
        (format!("ws://{}/ws?token=", server.addr), "Bearer  "),
    ] {
        let mut req = url.clone().into_client_request().expect("request");
        req.headers_mut().insert(
            "Authorization",
            format!("{header} {}", token("bearer"))
                .parse()
                .expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("{url} with {header:?}: {e}"));
        use futures_util::StreamExt;
        let frame = ws.next().await.expect("frame").expect("ok");
        assert!(frame.to_text().expect("text").contains("\"connected\""));
    }
}
