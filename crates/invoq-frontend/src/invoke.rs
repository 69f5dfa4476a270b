//! Invoke: `POST /2015-03-31/functions/{FunctionName}/invocations` (lambda-spec.md §1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use invoq_domain::asynchronous::{INVOKE_ASYNC_MAX_BYTES, JsonText};
use invoq_domain::limits::{CLIENT_CONTEXT_MAX_BYTES, SYNC_REQUEST_MAX_BYTES};
use invoq_domain::recursion;
use invoq_domain::{ApiError, ErrorCode, FunctionRef, LATEST, Qualifier};
use invoq_registry::EventInvoke;
use invoq_runtime::{Invocation, InvocationResult, RuntimeError};

use crate::Frontend;
use crate::functions::QualifierQuery;
use crate::http::{ApiResult, ErrorResponse, REQUEST_ID};

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
        let record = match (&qualifier, self.registry.functions().get(&function.name)) {
            (Qualifier::Latest, Some(record)) => record,
            _ => {
                return Err(self
                    .not_found(&function.name, Some(&qualifier.to_string()))
                    .into());
            }
        };
        let payload = read_payload(body, SYNC_REQUEST_MAX_BYTES, "InvokeFunction").await?;
        // The payload must be JSON; an Event's is kept as the text checked, in one pass.
        let event = if invocation_type == InvocationType::Event {
            Some(parse_event(&payload)?)
        } else {
            validate_json(&payload)?;
            None
        };
        let client_context = client_context(headers)?;
        let trace_header = header(headers, "x-amzn-trace-id");
        let chain_depth = recursion::chain_depth(trace_header);

        if invocation_type == InvocationType::DryRun {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let payload_len = payload.len();
        if let Some(payload) = event {
            self.registry
                .accept_event(EventInvoke {
                    request_id,
                    function: &function,
                    payload,
                    payload_bytes: payload_len,
                    chain_depth,
                })
                .await?;
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        record.check_active()?;
        let invoked_function_arn = match &function.qualifier {
            Some(qualifier) => self
                .registry
                .location()
                .qualified_function_arn(&record.name, &qualifier.to_string()),
            None => self.registry.location().function_arn(&record.name),
        };
        if record.recursive_loop.stops(chain_depth) {
            self.metrics.recursive_invocations_refused.inc();
            return Err(ApiError::new(
                ErrorCode::RecursiveInvocation,
                "Lambda has detected your function being invoked in a recursive loop with other \
                 AWS resources and stopped your function's invocation.",
            )
            .into());
        }
        let invocation = Invocation {
            function: record.spec(self.registry.location()),
            request_id: request_id.to_owned(),
            payload: empty_as_object(payload),
            invoked_function_arn,
            client_context,
            attempt: 1,
            trace_id: Some(recursion::trace_header(
                trace_header,
                request_id,
                chain_depth,
            )),
        };
        let result = self.run(invocation).await?;
        Ok(invoke_response(result, tail_log))
    }

    /// Runs a synchronous invocation and maps what the runtime refused to Lambda's errors.
    async fn run(&self, invocation: Invocation) -> Result<InvocationResult, ErrorResponse> {
        let result = invoq_runtime::invoke_deploying(self.runtime.as_ref(), invocation, |sha| {
            std::future::ready(self.code(&sha))
        })
        .await;
        match result {
            Ok(result) => {
                let counter = if result.function_error.is_some() {
                    &self.metrics.sync_function_errors
                } else {
                    &self.metrics.sync_succeeded
                };
                counter.inc();
                Ok(result)
            }
            Err(RuntimeError::Throttled(reason)) => {
                self.metrics.throttles.inc();
                Err(ApiError::new(ErrorCode::TooManyRequests, "Rate Exceeded.")
                    .with_reason(reason.as_str())
                    .into())
            }
            Err(RuntimeError::InvalidCode(message)) => Err(ApiError::new(
                ErrorCode::InvalidZipFile,
                format!("The deployment package could not be unpacked: {message}"),
            )
            .into()),
            Err(RuntimeError::UnsupportedRuntime(message)) => {
                Err(ApiError::new(ErrorCode::InvalidRuntime, message).into())
            }
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

/// The request body, at most `limit` bytes for `operation`.
async fn read_payload(body: Body, limit: usize, operation: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::RequestEntityTooLarge,
            format!("Request must be smaller than {limit} bytes for the {operation} operation"),
        )
    })
}

/// A synchronous event must be JSON; an empty body means `{}`.
fn validate_json(payload: &[u8]) -> Result<(), ApiError> {
    if payload.is_empty() {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        .map(drop)
        .map_err(not_json)
}

fn empty_as_object(payload: Bytes) -> Bytes {
    if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    }
}

/// An Event payload as it is queued: checked to be JSON in the same pass that keeps it.
fn parse_event(payload: &[u8]) -> Result<JsonText, ApiError> {
    if payload.is_empty() {
        return Ok(JsonText::from_value(&serde_json::Map::new()));
    }
    JsonText::parse(payload).map_err(not_json)
}

fn not_json(error: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidRequestContent,
        format!(
            "Could not parse request body into json: Could not parse payload into json: {error}"
        ),
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The deprecated InvokeAsync (`POST /2014-11-13/functions/{FunctionName}/invoke-async/`),
/// which older clients still call: an Event invoke with a 256 KB limit.
pub(crate) async fn invoke_async(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    body: Body,
) -> Response {
    let request_id = invoq_domain::new_request_id();
    let accepted = async {
        let function = FunctionRef::parse(&function_name, None)?;
        // An unknown function is refused before its body is read.
        if frontend.registry.functions().get(&function.name).is_none() {
            return Err(frontend.not_found(&function.name, Some(LATEST)).into());
        }
        let payload = read_payload(body, INVOKE_ASYNC_MAX_BYTES, "InvokeAsync").await?;
        let event = EventInvoke {
            request_id: &request_id,
            function: &function,
            payload: parse_event(&payload)?,
            payload_bytes: payload.len(),
            chain_depth: 0,
        };
        frontend.registry.accept_event(event).await?;
        Ok::<_, ErrorResponse>(
            (
                StatusCode::ACCEPTED,
                [("content-type", "application/json")],
                r#"{"Status":202}"#,
            )
                .into_response(),
        )
    };
    let mut response = accepted.await.unwrap_or_else(IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
