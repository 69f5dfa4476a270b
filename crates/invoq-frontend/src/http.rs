//! Lambda's REST-JSON conventions (lambda-spec.md §0): error responses, request ids, JSON
//! bodies.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use invoq_domain::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// An [`ApiError`] on its way out as an HTTP response.
#[derive(Debug)]
pub(crate) struct ErrorResponse(pub(crate) ApiError);

impl From<ApiError> for ErrorResponse {
    fn from(error: ApiError) -> Self {
        ErrorResponse(error)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let error = self.0;
        let status =
            StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_TYPE, HeaderValue::from_static(error.code.as_str()));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        (status, headers, error.body().to_string()).into_response()
    }
}

pub(crate) type ApiResult<T = Response> = Result<T, ErrorResponse>;

/// Gives Lambda's error shape to the errors axum answers by itself, before a handler runs:
/// a path segment that is not UTF-8, a query that does not parse, a body over the limit.
/// They come as plain text, and SDKs read only `x-amzn-ErrorType` and a JSON body.
pub(crate) async fn lambda_error_shape(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || response.headers().contains_key(ERROR_TYPE) {
        return response;
    }
    let code = match status.as_u16() {
        404 | 405 => ErrorCode::UnknownOperation,
        413 => ErrorCode::RequestEntityTooLarge,
        503 => ErrorCode::ServiceUnavailable,
        500..=599 => ErrorCode::Service,
        _ => ErrorCode::Validation,
    };
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("Bad request")
            .to_owned()
    } else {
        text
    };
    ErrorResponse(ApiError::new(code, message)).into_response()
}

/// A JSON response with the given status.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Parses a request body as Lambda does: an unparseable body is InvalidRequestContentException.
pub(crate) fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidRequestContent,
            format!("Could not parse request body into json: {error}"),
        )
    })
}

/// Puts `x-amzn-RequestId` on every response that does not carry one yet (Invoke sets its
/// own: the id the function saw).
pub(crate) async fn ensure_request_id(request: Request<Body>, next: Next) -> Response {
    let mut response = next.run(request).await;
    if !response.headers().contains_key(REQUEST_ID) {
        let request_id = invoq_domain::new_request_id();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
    }
    response
}

/// Every path Lambda does not have.
pub(crate) async fn unknown_operation() -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::UnknownOperation,
        "Unknown operation",
    ))
}
