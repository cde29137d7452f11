//! The one error type of the HTTP API. Every error answer has the same body,
//! `{"code": "...", "message": "..."}`, with the right status; the cause of an internal error
//! is logged server-side and never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: Option<String>,
    current_version: Option<i64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// On a version conflict: the version the resource is at now (0: it does not exist).
    #[serde(rename = "currentVersion", default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), cause: None, current_version: None }
    }

    /// A version conflict's answer carries the current version.
    pub fn with_current_version(mut self, version: i64) -> Self {
        self.current_version = Some(version);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// An unexpected failure: the client learns only that something went wrong; `cause` is
    /// logged.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal server error".into(),
            cause: Some(cause.to_string()),
            current_version: None,
        }
    }

    /// Keeps a cause for the server's log (never sent).
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => ApiError {
                cause: Some(e.to_string()),
                ..ApiError::unavailable("the database is not reachable; try again shortly")
            },
            // A statement that gave up waiting for a lock or ran out of time
            // (`sfp_postgres::LOCK_TIMEOUT`, `STATEMENT_TIMEOUT`): busy, not broken.
            sqlx::Error::Database(ref d) if matches!(d.code().as_deref(), Some("55P03" | "57014")) => ApiError {
                cause: Some(e.to_string()),
                ..ApiError::unavailable("the database is busy with this record; try again shortly")
            },
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            if self.status.is_server_error() {
                tracing::error!(status = self.status.as_u16(), code = self.code, cause = %cause, "request failed");
            } else {
                tracing::warn!(status = self.status.as_u16(), code = self.code, cause = %cause, "request failed");
            }
        }
        let body =
            ErrorBody { code: self.code.to_string(), message: self.message, current_version: self.current_version };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
