//! Cross-cutting request handling: request deadlines, JSON error bodies for every error,
//! panics, unknown routes, and request tracing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Fallback for paths no route matches.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}

/// A request's deadline, in its extensions: a handler that waits on purpose, under a bound
/// of its own (a lock request with `wait`), lifts it.
#[derive(Clone, Default)]
pub struct Deadline(Arc<AtomicBool>);

impl Deadline {
    /// The request may take as long as its handler decides.
    pub fn lift(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn lifted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Answers 503 when a request takes longer than its deadline (unless its handler lifted it).
pub async fn deadline(limit: Duration, mut request: Request, next: Next) -> Response {
    let deadline = Deadline::default();
    request.extensions_mut().insert(deadline.clone());
    let response = next.run(request);
    tokio::pin!(response);
    if let Ok(response) = tokio::time::timeout(limit, &mut response).await {
        return response;
    }
    if deadline.lifted() {
        return response.await;
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!("the request took longer than {} s", limit.as_secs()),
    )
    .into_response()
}

/// Gives error answers that did not come from our handlers (405 from the router, 413 from
/// the body limit, ...) the stable JSON body.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(format!("{method} is not allowed on {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, "payload_too_large", "the request body is larger than the server accepts")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(status, "unsupported_media_type", "send the body as JSON with Content-Type: application/json")
        }
        other => ApiError::new(other, code_for(other), other.canonical_reason().unwrap_or("error")),
    };
    let fresh = error.into_response();
    // Keep headers such as `Allow` that tell the client what to do instead.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        409 => "conflict",
        422 => "unprocessable",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// A handler that panicked answers 500 with the stable body; the panic is logged.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

/// One span per request, named after its method and path, carrying the request id.
pub fn request_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
    )
}
