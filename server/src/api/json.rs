//! The JSON body extractor of every handler: a body that is not JSON, or JSON of the wrong
//! shape, is answered with the stable error body naming what is wrong (400 for syntax, 422
//! for a missing field or a wrong type, 415 without a JSON content type).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> ApiError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", clean(&detail))
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not valid JSON: {}", clean(&detail)),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body could not be read")
        }
        _ => ApiError::bad_request(clean(&detail)),
    }
}

/// axum's text starts with a generic sentence; keep serde's part, which names the field.
fn clean(detail: &str) -> String {
    detail
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| detail.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(detail)
        .to_owned()
}
