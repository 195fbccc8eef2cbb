//! Token verification: who a connection is and what it may do.
//!
//! Tokens are JWTs. HS256/384/512 are checked against the shared secret; RS*, PS*, ES* and
//! EdDSA against configured public keys. `alg: none` is never accepted (the JWT library
//! has no such algorithm). `exp` is required unless the configuration allows tokens
//! without it. Tokens are never logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::topic::Patterns;

/// Verifies tokens; built once from the configuration and shared by every connection.
pub struct Authenticator {
    secret: Option<DecodingKey>,
    public_keys: Vec<(KeyFamily, DecodingKey)>,
    allow_no_exp: bool,
    leeway: Duration,
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
    /// When the token stops being valid (`exp`), if it has an expiry.
    pub expires_at: Option<SystemTime>,
}

/// Why a token was refused. The text is safe to show to the client: it never contains
/// the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in `?token=` or `Authorization: Bearer`.
    #[error("missing token")]
    Missing,
    /// The token is malformed, badly signed, expired or uses an algorithm with no key.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names no identity (`sub` or `user_id`).
    #[error("token has no sub or user_id claim")]
    NoIdentity,
}

/// The claims Tidings reads. Unknown claims are ignored.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Claims {
    /// Identity (preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Identity as the original template's tokens carry it (string or number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<serde_json::Value>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Glob patterns of topics the holder may subscribe to (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Glob patterns of topics the holder may publish to (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

impl Authenticator {
    /// Load keys from the configuration.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let secret =
            match &config.jwt_secret {
                Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret),
                Some(s) => Some(DecodingKey::from_secret(s.as_bytes()).map_err(|_| {
                    ConfigError::Invalid {
                        name: "jwt_secret",
                        reason: "unusable as an HMAC key",
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
        })
    }

    /// Verify a token and return who it identifies.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
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
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.required_spec_claims.clear();
        if !self.allow_no_exp {
            validation.required_spec_claims.insert("exp".to_owned());
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
                Ok(data) => return identity(data.claims),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last_error))
    }
}

fn identity(claims: Claims) -> Result<Identity, AuthError> {
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
        expires_at: claims.exp.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
    })
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
}

/// Mint an HS256 token, for `tidings token`, `--dev` and tests.
pub fn mint(secret: &str, spec: &TokenSpec) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: Some(spec.sub.clone()),
        user_id: None,
        exp: spec.ttl.map(|ttl| now + ttl.as_secs()),
        iat: Some(now),
        subscribe: (!spec.subscribe.is_empty()).then(|| spec.subscribe.clone()),
        publish: (!spec.publish.is_empty()).then(|| spec.publish.clone()),
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

    fn auth(secret: &str) -> Authenticator {
        Authenticator::from_config(&Config {
            jwt_secret: Some(secret.into()),
            ..Config::default()
        })
        .expect("config")
    }

    fn spec(sub: &str) -> TokenSpec {
        TokenSpec {
            sub: sub.into(),
            ttl: Some(Duration::from_secs(3600)),
            ..TokenSpec::default()
        }
    }

    #[test]
    fn minted_token_verifies_with_patterns() {
        let a = auth("k");
        let token = mint(
            "k",
            &TokenSpec {
                subscribe: vec!["chat.*".into()],
                ..spec("alice")
            },
        )
        .expect("mint");
        let id = a.verify(&token).expect("verify");
        assert_eq!(id.user, "alice");
        assert!(id.subscribe.allows("chat.room1"));
        assert!(!id.subscribe.allows("admin"));
        assert!(id.publish.allows("anything"));
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn template_user_id_claim_is_an_identity() {
        let a = auth("k");
        let claims =
            serde_json::json!({"user_id": 42, "exp": unix_seconds(SystemTime::now()) + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k").expect("key"),
        )
        .expect("encode");
        assert_eq!(a.verify(&token).expect("verify").user, "42");
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth("k");
        assert!(matches!(a.verify(""), Err(AuthError::Missing)));
        assert!(a.verify("garbage").is_err());
        let wrong = mint("other", &spec("alice")).expect("mint");
        assert!(a.verify(&wrong).is_err());
        let no_exp = mint(
            "k",
            &TokenSpec {
                ttl: None,
                ..spec("alice")
            },
        )
        .expect("mint");
        assert!(a.verify(&no_exp).is_err(), "exp is required by default");
        let lenient = Authenticator::from_config(&Config {
            jwt_secret: Some("k".into()),
            allow_tokens_without_exp: true,
            ..Config::default()
        })
        .expect("config");
        assert!(lenient.verify(&no_exp).is_ok());
        let no_id = mint("k", &spec("")).expect("mint");
        assert!(matches!(a.verify(&no_id), Err(AuthError::NoIdentity)));
    }

    #[test]
    fn config_without_keys_or_with_empty_secret_is_refused() {
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
    }
}
