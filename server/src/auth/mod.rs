//! Who is calling and what they may do: user JWTs (ours or a real GoTrue's), application
//! tokens, the control plane roles, the access rules of every route, the audit log, and the
//! limits on sign-in attempts.

pub mod access;
pub mod app_tokens;
pub mod audit;
pub mod identity_cache;
pub mod jwt;
pub mod password;
pub mod rate_limit;
pub mod rls;
pub mod sessions;
pub mod verified_tokens;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::AuthConfig;
use identity_cache::Credential;
use jwt::{JwtKeys, TokenError};

/// The control plane roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
    Application,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            "application" => Some(Role::Application),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
            Role::Application => "application",
        }
    }
}

/// What kind of credential the caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    User,
    Application,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub kind: CallerKind,
    /// The user, or for an application token the user who created it.
    pub user_id: Uuid,
    pub email: Option<String>,
    /// The caller's role: a user's own (None: signed in but no role on this instance), or
    /// `application`.
    pub role: Option<Role>,
    /// For application tokens: the creator's current role, which the token never exceeds.
    pub creator_role: Option<Role>,
    pub token_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
}

impl Caller {
    /// An owner or an application token: who may have an org's credentials and release
    /// someone else's lock (sfp server's role matrix).
    pub fn is_owner_or_application(&self) -> bool {
        self.kind == CallerKind::Application || self.role == Some(Role::Owner)
    }
}

/// Why a request is not authenticated (401). Messages never contain the credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the application token is unknown, revoked or expired")]
    UnknownApplicationToken,
    #[error("the session of this token has ended; sign in again")]
    SessionEnded,
    #[error("the user of this token does not exist")]
    UnknownUser,
    #[error("the user is banned")]
    Banned,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Everything the auth parts need, built once at start.
pub struct AuthState {
    pub keys: JwtKeys,
    pub config: AuthConfig,
    pub limiter: rate_limit::LoginLimiter,
    pub audit: audit::AuditLog,
    pub identities: identity_cache::IdentityCache,
    pub verified: verified_tokens::VerifiedTokens,
}

impl AuthState {
    pub fn new(secret: &[u8], config: AuthConfig, audit: audit::AuditLog) -> Self {
        let limiter =
            rate_limit::LoginLimiter::new(config.login_max_failures, Duration::from_secs(config.login_window_secs));
        let identities = identity_cache::IdentityCache::new(Duration::from_secs(config.identity_cache_secs));
        AuthState {
            keys: JwtKeys::new(secret, config.issuer.clone()),
            config,
            limiter,
            audit,
            identities,
            verified: verified_tokens::VerifiedTokens::default(),
        }
    }

    pub fn access_ttl(&self) -> Duration {
        Duration::from_secs(self.config.access_token_ttl_secs.max(60))
    }

    /// Authenticates a bearer credential: an application token, or a user JWT whose session
    /// is still active.
    pub async fn authenticate(&self, pool: &PgPool, bearer: &str) -> Result<Caller, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        if bearer.starts_with(app_tokens::PREFIX) {
            let key = Credential::ApplicationToken(app_tokens::hash(bearer));
            if let Some(caller) = self.identities.get(&key) {
                return Ok(caller);
            }
            let holder = app_tokens::authenticate(pool, bearer).await?.ok_or(AuthError::UnknownApplicationToken)?;
            let caller = Caller {
                kind: CallerKind::Application,
                user_id: holder.user_id,
                email: holder.email,
                role: Some(Role::Application),
                creator_role: Some(holder.creator_role),
                token_id: Some(holder.token_id),
                session_id: None,
            };
            let left = (holder.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
            self.identities.put(key, &caller, Some(left));
            return Ok(caller);
        }
        let now = chrono::Utc::now().timestamp();
        let verified = match self.verified.get(bearer, now) {
            Some(verified) => verified,
            None => {
                let claims = self.keys.verify(bearer)?;
                if claims.role != "authenticated" {
                    return Err(TokenError::Invalid(format!("a {:?} token is not a user's token", claims.role)).into());
                }
                let user_id = claims.user_id().ok_or_else(|| TokenError::Invalid("sub is not a user id".into()))?;
                let verified =
                    verified_tokens::VerifiedUser { user_id, session_id: claims.session(), expires_at: claims.exp };
                self.verified.put(bearer, verified, now);
                verified
            }
        };
        let (user_id, session_id) = (verified.user_id, verified.session_id);
        let key = Credential::Session(user_id, session_id);
        if let Some(caller) = self.identities.get(&key) {
            return Ok(caller);
        }
        let (user, session_active) =
            sessions::user_in_session(pool, user_id, session_id).await?.ok_or(AuthError::UnknownUser)?;
        if !session_active {
            return Err(AuthError::SessionEnded);
        }
        if user.is_banned() {
            return Err(AuthError::Banned);
        }
        let caller = Caller {
            kind: CallerKind::User,
            user_id,
            email: user.email.clone(),
            role: user.sfp_role(),
            creator_role: None,
            token_id: None,
            session_id,
        };
        self.identities.put(key, &caller, None);
        Ok(caller)
    }
}

/// The client's address (the peer of the connection; loopback when the server runs without
/// connection info, as in-process tests do).
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

pub fn client_ip(extensions: &axum::http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Makes sure the instance's administrator exists with the password from the data folder
/// and is an owner (first start), without touching a password changed since.
pub async fn bootstrap_admin(pool: &PgPool, email: &str, password: &str) -> sqlx::Result<()> {
    match sessions::user_by_email(pool, email).await? {
        Some(user) => {
            sqlx::query(
                "INSERT INTO app.user_role (user_id, role) VALUES ($1, 'owner') ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user.id)
            .execute(pool)
            .await?;
        }
        None => {
            sessions::create_user(pool, email, &password::hash(password), Role::Owner).await?;
        }
    }
    Ok(())
}
