//! Invoke: `POST /2015-03-31/functions/{FunctionName}/invocations` (lambda-spec.md §1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use invoq_domain::limits::{CLIENT_CONTEXT_MAX_BYTES, SYNC_REQUEST_MAX_BYTES};
use invoq_domain::{ApiError, ErrorCode, FunctionRef, LATEST, Qualifier};
use invoq_runtime::{Invocation, InvocationResult, RuntimeError};

use crate::Frontend;
use crate::configuration::function_spec;
use crate::function_store::FunctionState;
use crate::functions::QualifierQuery;
use crate::http::{ApiResult, ErrorResponse, REQUEST_ID};
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

pub(crate) async fn invoke(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = invoq_domain::new_request_id();
    let mut response = frontend
        .invoke(
            &request_id,
            &function_name,
            query.qualifier.as_deref(),
            &headers,
            body,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

impl Frontend {
    async fn invoke(
        &self,
        request_id: &str,
        function_name: &str,
        qualifier: Option<&str>,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let invocation_type = invocation_type(headers)?;
        let tail_log = log_type_is_tail(headers)?;
        let function = FunctionRef::parse(function_name, qualifier)?;
        let qualifier = function.qualifier_or_latest();
        let record = match (&qualifier, self.store.get(&function.name)) {
            (Qualifier::Latest, Some(record)) => record,
            _ => {
                return Err(self
                    .not_found(&function.name, Some(&qualifier.to_string()))
                    .into());
            }
        };
        let payload = read_payload(body).await?;
        let client_context = client_context(headers)?;

        match invocation_type {
            InvocationType::DryRun => return Ok(StatusCode::NO_CONTENT.into_response()),
            InvocationType::Event => {
                return Err(ApiError::invalid_parameter(
                    "invoq does not run InvocationType Event yet: asynchronous invocation \
                     arrives with its durable event queue. Use RequestResponse.",
                )
                .into());
            }
            InvocationType::RequestResponse => {}
        }
        if record.state != FunctionState::Active {
            let state = if record.state == FunctionState::Pending {
                "Pending"
            } else {
                "Failed"
            };
            return Err(ApiError::conflict(format!(
                "The operation cannot be performed at this time. The function is currently in \
                 the following state: {state}"
            ))
            .into());
        }

        let invoked_function_arn = match &function.qualifier {
            Some(qualifier) => self
                .location
                .qualified_function_arn(&record.name, &qualifier.to_string()),
            None => self.location.function_arn(&record.name),
        };
        let invocation = Invocation {
            function: function_spec(&record, &self.location),
            request_id: request_id.to_owned(),
            payload,
            invoked_function_arn,
            client_context,
            attempt: 1,
            trace_id: headers
                .get("x-amzn-trace-id")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        };
        let result = self.run(invocation).await?;
        Ok(invoke_response(result, tail_log))
    }

    /// Runs an invocation, first handing the runtime the code if it does not have it yet
    /// (a runtime that restarted or joined later).
    async fn run(&self, invocation: Invocation) -> Result<InvocationResult, ErrorResponse> {
        let mut result = self.runtime.invoke(invocation.clone()).await;
        if let Err(RuntimeError::CodeMissing(code_sha256_hex)) = &result {
            match self.deploy_code(code_sha256_hex).await {
                Ok(()) => result = self.runtime.invoke(invocation).await,
                Err(error) => result = Err(error),
            }
        }
        match result {
            Ok(result) => {
                let counter = if result.function_error.is_some() {
                    &self.metrics.sync_function_errors
                } else {
                    &self.metrics.sync_succeeded
                };
                Metrics::count(counter);
                Ok(result)
            }
            Err(RuntimeError::Throttled(reason)) => {
                Metrics::count(&self.metrics.throttles);
                Err(ApiError::new(ErrorCode::TooManyRequests, "Rate Exceeded.")
                    .with_reason(reason.as_str())
                    .into())
            }
            Err(RuntimeError::InvalidCode(message)) => Err(ApiError::new(
                ErrorCode::InvalidZipFile,
                format!("The deployment package could not be unpacked: {message}"),
            )
            .into()),
            Err(error @ (RuntimeError::CodeMissing(_) | RuntimeError::Internal(_))) => {
                tracing::error!(%error, "invocation failed in the runtime");
                Err(ApiError::service(error.to_string()).into())
            }
        }
    }
}

fn invoke_response(result: InvocationResult, tail_log: bool) -> Response {
    let mut response = (StatusCode::OK, result.payload).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let executed_version = HeaderValue::from_str(&result.executed_version)
        .unwrap_or_else(|_| HeaderValue::from_static(LATEST));
    headers.insert("x-amz-executed-version", executed_version);
    if let Some(function_error) = result.function_error
        && let Ok(value) = HeaderValue::from_str(&function_error)
    {
        headers.insert("x-amz-function-error", value);
    }
    if tail_log && let Ok(value) = HeaderValue::from_str(&BASE64.encode(result.log_tail)) {
        headers.insert("x-amz-log-result", value);
    }
    response
}

fn invocation_type(headers: &HeaderMap) -> Result<InvocationType, ApiError> {
    match header(headers, "x-amz-invocation-type") {
        None | Some("RequestResponse") => Ok(InvocationType::RequestResponse),
        Some("Event") => Ok(InvocationType::Event),
        Some("DryRun") => Ok(InvocationType::DryRun),
        Some(other) => Err(ApiError::validation(
            other,
            "invocationType",
            "Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
        )),
    }
}

fn log_type_is_tail(headers: &HeaderMap) -> Result<bool, ApiError> {
    match header(headers, "x-amz-log-type") {
        None | Some("None") => Ok(false),
        Some("Tail") => Ok(true),
        Some(other) => Err(ApiError::validation(
            other,
            "logType",
            "Member must satisfy enum value set: [None, Tail]",
        )),
    }
}

/// The decoded `X-Amz-Client-Context`, which must be base64 of a JSON object.
fn client_context(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(encoded) = header(headers, "x-amz-client-context") else {
        return Ok(None);
    };
    if encoded.len() > CLIENT_CONTEXT_MAX_BYTES {
        return Err(ApiError::invalid_parameter(format!(
            "Client context must be at most {CLIENT_CONTEXT_MAX_BYTES} bytes, base64-encoded."
        )));
    }
    let decoded = BASE64
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object()))
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "Client context must be a valid Base64-encoded JSON object.",
            )
        })?;
    Ok(Some(decoded))
}

/// The event: at most 6 MB of JSON; an empty body is `{}`.
async fn read_payload(body: Body) -> Result<Bytes, ApiError> {
    let payload = axum::body::to_bytes(body, SYNC_REQUEST_MAX_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestEntityTooLarge,
                format!(
                    "Request must be smaller than {SYNC_REQUEST_MAX_BYTES} bytes for the \
                 InvokeFunction operation"
                ),
            )
        })?;
    if payload.is_empty() {
        return Ok(Bytes::from_static(b"{}"));
    }
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequestContent,
            format!(
                "Could not parse request body into json: Could not parse payload into json: \
                 {error}"
            ),
        ));
    }
    Ok(payload)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
