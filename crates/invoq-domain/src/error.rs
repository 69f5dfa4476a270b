//! The errors Lambda's API returns, with the status, wire code and body key AWS uses for each
//! (lambda-spec.md §0), so every service maps failures to exactly one AWS error.

use std::fmt;

/// One of Lambda's error types, as it appears in `x-amzn-ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    ResourceNotFound,
    ResourceConflict,
    InvalidParameterValue,
    InvalidRequestContent,
    /// The model calls it RequestTooLargeException; AWS sends this name on the wire.
    RequestEntityTooLarge,
    /// An Event payload under the limit that is too large once stored with its metadata.
    SerializedRequestEntityTooLarge,
    /// Stopped by recursive loop detection.
    RecursiveInvocation,
    TooManyRequests,
    Validation,
    PreconditionFailed,
    InvalidZipFile,
    InvalidRuntime,
    UnknownOperation,
    Service,
    /// A `ServiceException` answered 503: invoq cannot store right now, try again.
    ServiceUnavailable,
    /// No `Authorization` header (or signature parameters) at all.
    MissingAuthenticationToken,
    /// An `Authorization` header without its Credential, SignedHeaders or Signature.
    IncompleteSignature,
    /// The access key id is not one invoq knows.
    UnrecognizedClient,
    /// The signature does not match the request, or is too old.
    InvalidSignature,
}

impl ErrorCode {
    /// The wire name, for `x-amzn-ErrorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ResourceNotFound => "ResourceNotFoundException",
            ErrorCode::ResourceConflict => "ResourceConflictException",
            ErrorCode::InvalidParameterValue => "InvalidParameterValueException",
            ErrorCode::InvalidRequestContent => "InvalidRequestContentException",
            ErrorCode::RequestEntityTooLarge => "RequestEntityTooLargeException",
            ErrorCode::SerializedRequestEntityTooLarge => {
                "SerializedRequestEntityTooLargeException"
            }
            ErrorCode::RecursiveInvocation => "RecursiveInvocationException",
            ErrorCode::TooManyRequests => "TooManyRequestsException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::PreconditionFailed => "PreconditionFailedException",
            ErrorCode::InvalidZipFile => "InvalidZipFileException",
            ErrorCode::InvalidRuntime => "InvalidRuntimeException",
            ErrorCode::UnknownOperation => "UnknownOperationException",
            ErrorCode::Service | ErrorCode::ServiceUnavailable => "ServiceException",
            ErrorCode::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorCode::IncompleteSignature => "IncompleteSignatureException",
            ErrorCode::UnrecognizedClient => "UnrecognizedClientException",
            ErrorCode::InvalidSignature => "InvalidSignatureException",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ResourceNotFound | ErrorCode::UnknownOperation => 404,
            ErrorCode::ResourceConflict => 409,
            ErrorCode::InvalidParameterValue
            | ErrorCode::InvalidRequestContent
            | ErrorCode::RecursiveInvocation
            | ErrorCode::Validation => 400,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::MissingAuthenticationToken
            | ErrorCode::IncompleteSignature
            | ErrorCode::UnrecognizedClient
            | ErrorCode::InvalidSignature => 403,
            ErrorCode::RequestEntityTooLarge | ErrorCode::SerializedRequestEntityTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Service => 500,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::InvalidZipFile => 502,
            ErrorCode::InvalidRuntime => 502,
        }
    }

    /// The JSON key of the message: the botocore model names it `Message` for some shapes
    /// and `message` for others, and SDKs only read the one they expect.
    pub fn message_key(self) -> &'static str {
        match self {
            ErrorCode::ResourceNotFound
            | ErrorCode::Service
            | ErrorCode::ServiceUnavailable
            | ErrorCode::RecursiveInvocation
            | ErrorCode::InvalidZipFile
            | ErrorCode::InvalidRuntime => "Message",
            _ => "message",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the API returns it: code, AWS's message text and, for throttles, the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// `Reason` of TooManyRequestsException, e.g. `ReservedFunctionConcurrentInvocationLimitExceeded`.
    pub reason: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceNotFound, message)
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameterValue, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceConflict, message)
    }

    pub fn service(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Service, message)
    }

    /// A ValidationException in AWS's wording for one failed constraint.
    pub fn validation(value: impl fmt::Display, field: &str, constraint: &str) -> Self {
        Self::new(
            ErrorCode::Validation,
            format!(
                "1 validation error detected: Value '{value}' at '{field}' failed to satisfy \
                 constraint: {constraint}"
            ),
        )
    }

    /// The JSON body AWS sends with this error.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        if self.code.http_status() < 500 {
            body.insert("Type".into(), "User".into());
        } else {
            body.insert("Type".into(), "Service".into());
        }
        body.insert(self.code.message_key().into(), self.message.clone().into());
        if let Some(reason) = &self.reason {
            body.insert("Reason".into(), reason.clone().into());
        }
        serde_json::Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_body_matches_aws() {
        let error = ApiError::new(ErrorCode::TooManyRequests, "Rate Exceeded.")
            .with_reason("ReservedFunctionConcurrentInvocationLimitExceeded");
        assert_eq!(
            error.body(),
            serde_json::json!({
                "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                "Type": "User",
                "message": "Rate Exceeded."
            })
        );
        assert_eq!(error.code.http_status(), 429);
    }

    #[test]
    fn not_found_uses_capitalised_message_key() {
        let body = ApiError::not_found("Function not found: x").body();
        assert_eq!(body["Message"], "Function not found: x");
        assert!(body.get("message").is_none());
    }
}
