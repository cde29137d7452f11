//! Tenant tokens: JWTs shaped like Hatchet's (`sub` = tenant id, `server_url`,
//! `grpc_broadcast_address`, `token_id`). The SDKs read the addresses from the token without
//! checking its signature; the engine signs (HS256) and validates its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "sfp-engine";
const AUDIENCE: &str = "sfp-engine";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantClaims {
    /// The tenant id (a UUID).
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub token_id: String,
    /// REST base URL of the engine (`http://127.0.0.1:7077`).
    pub server_url: String,
    /// gRPC address of the engine (`127.0.0.1:7070`, no scheme).
    pub grpc_broadcast_address: String,
}

impl TenantClaims {
    pub fn tenant_id(&self) -> Result<Uuid, TokenError> {
        Uuid::parse_str(&self.sub).map_err(|_| TokenError::Invalid("the subject is not a tenant id".into()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
}

/// The signing key of an engine.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        TokenKey { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    /// Mints a token for `tenant` that tells clients where the engine is.
    pub fn mint(
        &self,
        tenant: Uuid,
        server_url: &str,
        grpc_address: &str,
        valid_for: Duration,
    ) -> Result<String, TokenError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = TenantClaims {
            sub: tenant.to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + valid_for.as_secs(),
            token_id: Uuid::new_v4().to_string(),
            server_url: server_url.into(),
            grpc_broadcast_address: grpc_address.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature (HS256 only), expiry, issuer and audience.
    pub fn validate(&self, token: &str) -> Result<TenantClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        jsonwebtoken::decode::<TenantClaims>(token, &self.decoding, &validation).map(|data| data.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            }
        })
    }
}

/// Reads a token's claims without checking its signature, as the SDKs do to find the
/// engine's addresses. Never use this to authenticate anyone.
pub fn read_unverified(token: &str) -> Result<TenantClaims, TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Invalid("a token has three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Invalid(e.to_string()))
}

/// The token of an `authorization` header value: `Bearer <token>`, scheme in any case.
pub fn bearer(header: &str) -> Result<&str, TokenError> {
    let (scheme, token) = header.trim().split_once(' ').ok_or(TokenError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_validate_and_carry_addresses() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let tenant = Uuid::new_v4();
        let token = key.mint(tenant, "http://127.0.0.1:7077", "127.0.0.1:7070", Duration::from_secs(60)).unwrap();
        let claims = key.validate(&token).unwrap();
        assert_eq!(claims.tenant_id().unwrap(), tenant);
        assert_eq!(claims.grpc_broadcast_address, "127.0.0.1:7070");
        assert_eq!(read_unverified(&token).unwrap(), claims);
        assert!(token.starts_with("ey"), "the Python SDK requires tokens starting with ey");
    }

    #[test]
    fn other_keys_forgeries_and_expired_tokens_are_refused() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let other = TokenKey::new(b"another-secret-another-secret-xx");
        let token = other.mint(Uuid::new_v4(), "http://x", "x:1", Duration::from_secs(60)).unwrap();
        assert!(matches!(key.validate(&token), Err(TokenError::Invalid(_))));

        // alg=none with the same claims
        let claims = read_unverified(&token).unwrap();
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&serde_json::to_vec(&claims).unwrap()));
        assert!(key.validate(&none).is_err());

        // An already-expired token (past the 5 s leeway), signed with the right key.
        let mut claims =
            read_unverified(&key.mint(Uuid::new_v4(), "http://x", "x:1", Duration::ZERO).unwrap()).unwrap();
        claims.exp = claims.iat - 60;
        let old = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).unwrap();
        assert_eq!(key.validate(&old), Err(TokenError::Expired));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc").unwrap(), "abc");
        assert_eq!(bearer("bearer abc").unwrap(), "abc");
        assert_eq!(bearer("BEARER  abc ").unwrap(), "abc");
        assert!(bearer("Basic abc").is_err());
        assert!(bearer("Bearer ").is_err());
        assert!(bearer("abc").is_err());
    }
}
