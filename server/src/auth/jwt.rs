//! User JWTs in GoTrue's shape: HS256 with the instance's JWT secret, the claims Supabase
//! clients and Realtime read. Tokens a real GoTrue issues with the same secret verify here.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// One entry of the `amr` claim (GoTrue writes objects; older tokens carry plain strings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Amr {
    Entry { method: String, timestamp: i64 },
    Method(String),
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    #[serde(default)]
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub aud: Value,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub app_metadata: Value,
    #[serde(default)]
    pub user_metadata: Value,
    pub role: String,
    #[serde(default)]
    pub aal: String,
    #[serde(default)]
    pub amr: Vec<Amr>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub is_anonymous: bool,
}

impl AccessClaims {
    pub fn user_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn session(&self) -> Option<Uuid> {
        self.session_id.as_deref().and_then(|s| Uuid::parse_str(s).ok())
    }
}

/// Why a token was refused. The message is safe to show; it never contains the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
}

impl JwtKeys {
    pub fn new(secret: &[u8], issuer: impl Into<String>) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: issuer.into(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `claims` (HS256).
    pub fn sign(&self, claims: &impl Serialize) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing with a secret key does not fail")
    }

    /// An access token for a user's session.
    #[allow(clippy::too_many_arguments)]
    pub fn access_token(
        &self,
        user_id: Uuid,
        email: &str,
        app_metadata: Value,
        user_metadata: Value,
        session_id: Uuid,
        method: &str,
        signed_in_at: i64,
        ttl: Duration,
    ) -> (String, AccessClaims) {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user_id.to_string(),
            aud: json!("authenticated"),
            exp: now + ttl.as_secs() as i64,
            iat: now,
            email: email.to_owned(),
            phone: String::new(),
            app_metadata,
            user_metadata,
            role: "authenticated".into(),
            aal: "aal1".into(),
            amr: vec![Amr::Entry { method: method.into(), timestamp: signed_in_at }],
            session_id: Some(session_id.to_string()),
            is_anonymous: false,
        };
        (self.sign(&claims), claims)
    }

    /// The long-lived `anon` key Supabase clients send as `apikey`.
    pub fn anon_key(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({"role": "anon", "iss": "supabase", "iat": now, "exp": now + 10 * 365 * 24 * 3600}))
    }

    /// The `service_role` key: full administration of users (`/auth/v1/admin`). Keep it secret.
    pub fn service_key(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({"role": "service_role", "iss": "supabase", "iat": now, "exp": now + 10 * 365 * 24 * 3600}))
    }

    /// Verifies any token of this instance (anon, service or user): signature and expiry.
    pub fn verify_any(&self, token: &str) -> Result<Value, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Value>(token, &self.decoding, &validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                kind => TokenError::Invalid(describe(kind)),
            }
        })
    }

    /// Verifies signature (HS256 only: `none` and other algorithms are refused) and expiry.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                kind => Err(TokenError::Invalid(describe(kind))),
            },
        }
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "only HS256 tokens are accepted".into(),
        K::MissingRequiredClaim(c) => format!("the {c} claim is missing"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        _ => "rejected".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn keys() -> JwtKeys {
        JwtKeys::new(b"a test secret of some length.....", "test")
    }

    #[test]
    fn issued_tokens_verify_with_gotrue_claims() {
        let keys = keys();
        let (token, claims) = keys.access_token(
            Uuid::new_v4(),
            "a@b.c",
            json!({"provider": "email"}),
            json!({}),
            Uuid::new_v4(),
            "password",
            1,
            Duration::from_secs(60),
        );
        let back = keys.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.role, "authenticated");
        let payload = token.split('.').nth(1).unwrap();
        let raw: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        for claim in ["aud", "exp", "iat", "sub", "email", "phone", "role", "aal", "session_id", "is_anonymous"] {
            assert!(raw.get(claim).is_some(), "claim {claim} present");
        }
        assert_eq!(raw["aud"], "authenticated", "aud is a string, not an array");
        assert_eq!(raw["amr"][0]["method"], "password");
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let keys = keys();
        let other = JwtKeys::new(b"another secret entirely.........", "test");
        let (token, _) = other.access_token(
            Uuid::new_v4(),
            "a@b.c",
            json!({}),
            json!({}),
            Uuid::new_v4(),
            "password",
            1,
            Duration::from_secs(60),
        );
        assert_eq!(keys.verify(&token), Err(TokenError::Invalid("bad signature".into())));

        let expired = keys.sign(&json!({"sub": Uuid::new_v4(), "role": "authenticated", "exp": 1000}));
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));

        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": Uuid::new_v4(), "role": "authenticated", "exp": 9_999_999_999i64}))
        );
        assert!(matches!(keys.verify(&unsigned), Err(TokenError::Invalid(_))));
        assert!(matches!(keys.verify("not-a-token"), Err(TokenError::Invalid(_))));
    }
}
