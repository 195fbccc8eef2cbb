//! Token verification: who a connection is and what it may do.
//!
//! Tokens are JWTs (RFC 7519). HS256/384/512 are checked against the shared secret; RS*, PS*,
//! ES* and EdDSA against configured public keys. `alg: none` is never accepted (the JWT
//! library has no such algorithm). Tokens are never logged.
//!
//! The time claims are checked here rather than by the JWT library, because RFC 7519 §2
//! defines a NumericDate as any JSON number (`1796017650.5` is valid) and because no value in
//! a token may overflow a clock (`"exp": 18446744073709551615` is clamped, never a panic):
//!
//! * `exp` (§4.1.4): the token is valid while `now < exp + leeway`, and that same instant is
//!   when an open connection is closed with 4001 ([`Identity::valid_until`]): one rule at the
//!   door, on the timer and for in-band `auth`. Required unless `allow_tokens_without_exp`.
//! * `nbf` (§4.1.5): refused while `now + leeway < nbf`.
//! * `iat` (§4.1.6): must be a number if present; informational only.
//! * `aud` / `iss` (§4.1.3, §4.1.1): checked only when `jwt_audience` / `jwt_issuer` are set,
//!   and then required. Unset, they are not checked, so tokens of identity providers that
//!   always send `aud` work out of the box; set `jwt_audience` when one provider issues tokens
//!   for several services.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::topic::Patterns;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 requires a key of at least the hash
/// output size (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Latest instant a token time is taken to mean (about the year 5138): later values, up to
/// `u64::MAX` seconds, are clamped to it so that no timer or timestamp can overflow.
const MAX_NUMERIC_DATE: f64 = 1e11;

/// Verifies tokens; built once from the configuration and shared by every connection.
pub struct Authenticator {
    secret: Option<DecodingKey>,
    public_keys: Vec<(KeyFamily, DecodingKey)>,
    allow_no_exp: bool,
    leeway: Duration,
    audience: Option<String>,
    issuer: Option<String>,
}

/// Which algorithms a public key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    Ec,
    Ed,
}

/// A verified identity and its permissions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `sub` claim, or `user_id` where there is no `sub` (the template's claim).
    pub user: String,
    /// Topic patterns this token may subscribe to.
    pub subscribe: Patterns,
    /// Topic patterns this token may publish (and append) to.
    pub publish: Patterns,
    /// The token's `exp`, if it has one (clamped to a representable time).
    pub expires_at: Option<SystemTime>,
    /// Until when the token is accepted: `exp + leeway`. A connection is closed with 4001
    /// at this instant unless `auth` replaced the token.
    pub valid_until: Option<SystemTime>,
    /// The token's optional `info` claim (any JSON): what presence shows of this user (a
    /// display name, an avatar), passed on as it was.
    pub info: Option<tidings_protocol::Json>,
}

/// Why a token was refused. The text is safe to show to the client: it never contains
/// the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in `?token=` or `Authorization: Bearer`.
    #[error("missing token")]
    Missing,
    /// The token is malformed, badly signed, or uses an algorithm with no key; or its
    /// `aud` / `iss` do not match the configured ones.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `now` is at or after `exp + leeway`.
    #[error("token expired")]
    Expired,
    /// `now + leeway` is before `nbf`.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The token has no `exp` and the server requires one.
    #[error("token has no exp claim")]
    NoExpiry,
    /// The token names no identity (`sub` or `user_id`).
    #[error("token has no sub or user_id claim")]
    NoIdentity,
}

/// The claims Tidings reads. Unknown claims are ignored. Time claims are NumericDates: any
/// JSON number of seconds since the Unix epoch (RFC 7519 §2), fractions allowed.
#[derive(Debug, Deserialize, Default)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    user_id: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    /// Read only to refuse a non-numeric `iat`.
    #[serde(default)]
    #[allow(dead_code)]
    iat: Option<f64>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    info: Option<tidings_protocol::Json>,
}

/// The claims of a minted token.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
}

impl Authenticator {
    /// Load keys from the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] when no key is configured, the secret is shorter than
    /// [`MIN_SECRET_BYTES`], or a public key file cannot be read or parsed.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let secret =
            match &config.jwt_secret {
                Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret),
                Some(s) if s.len() < MIN_SECRET_BYTES => {
                    return Err(ConfigError::WeakSecret { len: s.len() });
                }
                Some(s) => Some(DecodingKey::from_secret(s.as_bytes()).map_err(|_| {
                    ConfigError::Invalid {
                        name: "jwt_secret",
                        reason: "unusable as an HMAC key".into(),
                    }
                })?),
                None => None,
            };
        let mut public_keys = Vec::new();
        for path in &config.jwt_public_keys {
            let pem = std::fs::read(path).map_err(|e| ConfigError::PublicKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (KeyFamily::Rsa, k))
                .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (KeyFamily::Ed, k)))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (KeyFamily::Ec, k)))
                .map_err(|_| ConfigError::PublicKey {
                    path: path.clone(),
                    reason: "not an RSA, Ed25519 or EC public key in PEM form".into(),
                })?;
            public_keys.push(key);
        }
        if secret.is_none() && public_keys.is_empty() {
            return Err(ConfigError::NoJwtKey);
        }
        Ok(Authenticator {
            secret,
            public_keys,
            allow_no_exp: config.allow_tokens_without_exp,
            leeway: config.jwt_leeway,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
        })
    }

    /// Verify a token at the current time and return who it identifies.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Verify a token as of `now`.
    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let family = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(KeyFamily::Rsa),
            Algorithm::ES256 | Algorithm::ES384 => Some(KeyFamily::Ec),
            Algorithm::EdDSA => Some(KeyFamily::Ed),
            other => {
                return Err(AuthError::Invalid(format!(
                    "unsupported algorithm {other:?}"
                )));
            }
        };
        // The library checks the signature, `aud` and `iss`; the time claims are ours.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let mut last_error = format!("no key configured for {:?}", header.alg);
        let keys: Box<dyn Iterator<Item = &DecodingKey>> = match family {
            None => Box::new(self.secret.iter()),
            Some(f) => Box::new(
                self.public_keys
                    .iter()
                    .filter(move |(kf, _)| *kf == f)
                    .map(|(_, k)| k),
            ),
        };
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.identity(data.claims, now),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last_error))
    }

    fn identity(&self, claims: Claims, now: SystemTime) -> Result<Identity, AuthError> {
        let expires_at = claims.exp.map(numeric_date);
        let valid_until = expires_at.map(|exp| exp.checked_add(self.leeway).unwrap_or(exp));
        match valid_until {
            Some(until) if now >= until => return Err(AuthError::Expired),
            None if !self.allow_no_exp => return Err(AuthError::NoExpiry),
            _ => {}
        }
        if let Some(nbf) = claims.nbf.map(numeric_date)
            && now.checked_add(self.leeway).unwrap_or(now) < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        let user = match (claims.sub, claims.user_id) {
            (Some(sub), _) if !sub.is_empty() => sub,
            (_, Some(serde_json::Value::String(id))) if !id.is_empty() => id,
            (_, Some(serde_json::Value::Number(n))) => n.to_string(),
            _ => return Err(AuthError::NoIdentity),
        };
        Ok(Identity {
            user,
            subscribe: Patterns::from_claim(claims.subscribe),
            publish: Patterns::from_claim(claims.publish),
            expires_at,
            valid_until,
            info: claims.info.filter(|i| i.get() != "null"),
        })
    }
}

/// A NumericDate as a clock time: negative values are the epoch itself, values past
/// [`MAX_NUMERIC_DATE`] are clamped to it. Never panics.
fn numeric_date(seconds: f64) -> SystemTime {
    let clamped = seconds.clamp(0.0, MAX_NUMERIC_DATE);
    Duration::try_from_secs_f64(clamped)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or(UNIX_EPOCH)
}

/// The token of an `Authorization` header using the `Bearer` scheme (RFC 6750 §2.1): the
/// scheme name is case-insensitive (RFC 9110 §11.1) and one or more spaces separate it from
/// the credentials. `None` for another scheme, or an empty token.
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// What a minted token grants.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// The identity (`sub`).
    pub sub: String,
    /// Lifetime; `None` mints a token without `exp`.
    pub ttl: Option<Duration>,
    /// Subscribe patterns (empty: no restriction).
    pub subscribe: Vec<String>,
    /// Publish patterns (empty: no restriction).
    pub publish: Vec<String>,
    /// The `info` claim presence shows (e.g. `{"name": "Alice"}`).
    pub info: Option<serde_json::Value>,
}

/// Mint an HS256 token, for `tidings token`, `--dev` and tests.
///
/// # Errors
/// When the secret is unusable or the lifetime runs past the year 5138.
pub fn mint(secret: &str, spec: &TokenSpec) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_seconds(SystemTime::now());
    let exp = match spec.ttl {
        Some(ttl) => Some(
            now.checked_add(ttl.as_secs())
                .filter(|&exp| exp as f64 <= MAX_NUMERIC_DATE)
                .ok_or_else(|| {
                    jsonwebtoken::errors::Error::from(
                        jsonwebtoken::errors::ErrorKind::InvalidClaimFormat("exp".into()),
                    )
                })?,
        ),
        None => None,
    };
    let claims = MintClaims {
        sub: &spec.sub,
        exp,
        iat: now,
        subscribe: (!spec.subscribe.is_empty()).then_some(spec.subscribe.as_slice()),
        publish: (!spec.publish.is_empty()).then_some(spec.publish.as_slice()),
        info: spec.info.as_ref(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )
}

/// Seconds since the Unix epoch, for `authenticated.expires_at`.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";

    fn auth_with(config: Config) -> Authenticator {
        Authenticator::from_config(&Config {
            jwt_secret: Some(K.into()),
            ..config
        })
        .expect("config")
    }

    fn auth() -> Authenticator {
        auth_with(Config::default())
    }

    fn spec(sub: &str) -> TokenSpec {
        TokenSpec {
            info: None,
            sub: sub.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..TokenSpec::default()
        }
    }

    /// A token with exactly these claims, signed with `K`.
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(K.as_bytes()).expect("key"),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        unix_seconds(SystemTime::now())
    }

    #[test]
    fn minted_token_verifies_with_patterns() {
        let token = mint(
            K,
            &TokenSpec {
                info: None,
                subscribe: vec!["chat.*".into()],
                ..spec("alice")
            },
        )
        .expect("mint");
        let id = auth().verify(&token).expect("verify");
        assert_eq!(id.user, "alice");
        assert!(id.subscribe.allows("chat.room1"));
        assert!(!id.subscribe.allows("admin"));
        assert!(id.publish.allows("anything"));
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn template_user_id_claim_is_an_identity() {
        let token = signed(serde_json::json!({"user_id": 42, "exp": now() + 60}));
        assert_eq!(auth().verify(&token).expect("verify").user, "42");
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        assert!(matches!(a.verify(""), Err(AuthError::Missing)));
        assert!(a.verify("garbage").is_err());
        let wrong = mint("another-secret-of-32-bytes-or-more!", &spec("alice")).expect("mint");
        assert!(a.verify(&wrong).is_err());
        let no_exp = mint(
            K,
            &TokenSpec {
                info: None,
                ttl: None,
                ..spec("alice")
            },
        )
        .expect("mint");
        assert!(matches!(a.verify(&no_exp), Err(AuthError::NoExpiry)));
        let lenient = auth_with(Config {
            allow_tokens_without_exp: true,
            ..Config::default()
        });
        assert!(lenient.verify(&no_exp).is_ok());
        let no_id = mint(K, &spec("")).expect("mint");
        assert!(matches!(a.verify(&no_id), Err(AuthError::NoIdentity)));
    }

    #[test]
    fn numeric_dates_are_any_json_number() {
        let a = auth();
        let n = now() as f64;
        for claims in [
            serde_json::json!({"sub": "a", "exp": n + 3600.5}),
            serde_json::json!({"sub": "a", "exp": n + 3600.0, "nbf": n - 0.25, "iat": n - 0.5}),
            serde_json::json!({"sub": "a", "exp": 1e10}),
        ] {
            let token = signed(claims.clone());
            assert!(a.verify(&token).is_ok(), "{claims}");
        }
        for claims in [
            serde_json::json!({"sub": "a", "exp": "tomorrow"}),
            serde_json::json!({"sub": "a", "exp": n + 60.0, "iat": "now"}),
            serde_json::json!({"sub": "a", "exp": n + 60.0, "nbf": [1]}),
        ] {
            assert!(
                matches!(
                    a.verify(&signed(claims.clone())),
                    Err(AuthError::Invalid(_))
                ),
                "{claims}"
            );
        }
    }

    #[test]
    fn time_values_never_overflow() {
        let a = auth();
        for exp in [
            serde_json::json!(u64::MAX),
            serde_json::json!(1u64 << 63),
            serde_json::json!(1.7e308),
        ] {
            let id = a
                .verify(&signed(serde_json::json!({"sub": "a", "exp": exp})))
                .expect("far-future exp is valid");
            let until = id.valid_until.expect("valid_until");
            assert!(until > SystemTime::now() + Duration::from_secs(1000 * 365 * 86_400));
            assert!(unix_seconds(id.expires_at.expect("exp")) as f64 <= MAX_NUMERIC_DATE);
        }
        let past = signed(serde_json::json!({"sub": "a", "exp": -1e300}));
        assert!(matches!(a.verify(&past), Err(AuthError::Expired)));
        let nbf = signed(serde_json::json!({"sub": "a", "exp": u64::MAX, "nbf": u64::MAX}));
        assert!(matches!(a.verify(&nbf), Err(AuthError::NotYetValid)));
        assert!(
            mint(
                K,
                &TokenSpec {
                    info: None,
                    ttl: Some(Duration::MAX),
                    ..spec("a")
                }
            )
            .is_err()
        );
    }

    #[test]
    fn leeway_is_one_rule_for_exp_and_nbf() {
        let a = auth_with(Config {
            jwt_leeway: Duration::from_secs(30),
            ..Config::default()
        });
        let n = now();
        // Expired 10 s ago: inside the leeway, and valid until exp + 30 s.
        let id = a
            .verify(&signed(serde_json::json!({"sub": "a", "exp": n - 10})))
            .expect("inside leeway");
        let until = unix_seconds(id.valid_until.expect("until"));
        assert_eq!(until, n - 10 + 30);
        assert_eq!(unix_seconds(id.expires_at.expect("exp")), n - 10);
        assert!(matches!(
            a.verify(&signed(serde_json::json!({"sub": "a", "exp": n - 31}))),
            Err(AuthError::Expired)
        ));
        let soon = signed(serde_json::json!({"sub": "a", "exp": n + 7200, "nbf": n + 20}));
        assert!(a.verify(&soon).is_ok(), "nbf inside the leeway");
        let later = signed(serde_json::json!({"sub": "a", "exp": n + 7200, "nbf": n + 3600}));
        assert!(matches!(a.verify(&later), Err(AuthError::NotYetValid)));
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_configured() {
        let n = now();
        let with_aud = signed(serde_json::json!({
            "sub": "a", "exp": n + 60, "aud": ["tidings", "other"], "iss": "https://idp.example"
        }));
        let plain = signed(serde_json::json!({"sub": "a", "exp": n + 60}));
        assert!(
            auth().verify(&with_aud).is_ok(),
            "unset: aud/iss not checked"
        );
        let strict = auth_with(Config {
            jwt_audience: Some("tidings".into()),
            jwt_issuer: Some("https://idp.example".into()),
            ..Config::default()
        });
        assert!(strict.verify(&with_aud).is_ok());
        assert!(strict.verify(&plain).is_err(), "set: aud and iss required");
        let wrong = auth_with(Config {
            jwt_audience: Some("billing".into()),
            ..Config::default()
        });
        assert!(wrong.verify(&with_aud).is_err());
        let wrong_iss = auth_with(Config {
            jwt_issuer: Some("https://evil.example".into()),
            ..Config::default()
        });
        assert!(wrong_iss.verify(&with_aud).is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bearer   abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().expect("header"));
            assert_eq!(bearer(&h), expected.map(str::as_bytes), "{value:?}");
        }
    }

    #[test]
    fn config_without_keys_or_with_a_weak_secret_is_refused() {
        assert!(matches!(
            Authenticator::from_config(&Config::default()),
            Err(ConfigError::NoJwtKey)
        ));
        assert!(matches!(
            Authenticator::from_config(&Config {
                jwt_secret: Some(String::new()),
                ..Config::default()
            }),
            Err(ConfigError::EmptySecret)
        ));
        let weak = Authenticator::from_config(&Config {
            jwt_secret: Some("a".repeat(MIN_SECRET_BYTES - 1)),
            ..Config::default()
        });
        let Err(e) = weak else {
            panic!("a 31-byte secret was accepted")
        };
        assert!(e.to_string().contains("openssl rand -hex 32"), "{e}");
    }
}
