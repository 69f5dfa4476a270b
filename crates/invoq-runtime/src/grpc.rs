//! The runtime service over gRPC: [`RuntimeGrpcServer`] serves any [`RuntimeService`], and
//! [`RuntimeGrpcClient`] is a [`RuntimeService`] that calls one. Wire types are converted to
//! domain types here and nowhere else.

use invoq_proto::bearer::{AddToken, GrpcToken};
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_proto::error_kind::{kind_of, tagged_status};
use invoq_proto::v1 as pb;
use invoq_proto::v1::runtime_client::RuntimeClient;
use invoq_proto::v1::runtime_server::{Runtime, RuntimeServer};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::{
    FunctionSpec, Invocation, InvocationResult, RuntimeError, RuntimeService, ThrottleReason,
};

/// Invoke payloads go up to 6 MB each way, above tonic's 4 MB default.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves a [`RuntimeService`] as the gRPC `invoq.v1.Runtime` service.
pub struct RuntimeGrpcServer {
    service: Arc<dyn RuntimeService>,
}

impl RuntimeGrpcServer {
    pub fn new(service: Arc<dyn RuntimeService>) -> RuntimeServer<Self> {
        RuntimeServer::new(RuntimeGrpcServer { service })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[async_trait]
impl Runtime for RuntimeGrpcServer {
    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let invocation = Invocation::try_from(request.into_inner())?;
        let result = self
            .service
            .invoke(invocation)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::InvokeResponse {
            payload: result.payload.to_vec(),
            function_error: result.function_error.unwrap_or_default(),
            log_tail: result.log_tail,
            executed_version: result.executed_version,
            duration_micros: u64::try_from(result.duration.as_micros()).unwrap_or(u64::MAX),
        }))
    }

    async fn put_code(
        &self,
        request: Request<pb::PutCodeRequest>,
    ) -> Result<Response<pb::PutCodeResponse>, Status> {
        let request = request.into_inner();
        self.service
            .put_code(&request.code_sha256_hex, Bytes::from(request.zip))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::PutCodeResponse {}))
    }

    async fn check_runtime(
        &self,
        request: Request<pb::RuntimeRequest>,
    ) -> Result<Response<pb::RuntimeResponse>, Status> {
        self.service
            .check_runtime(&request.into_inner().runtime)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RuntimeResponse {}))
    }

    async fn prepare_runtime(
        &self,
        request: Request<pb::RuntimeRequest>,
    ) -> Result<Response<pb::RuntimeResponse>, Status> {
        self.service
            .prepare_runtime(&request.into_inner().runtime)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RuntimeResponse {}))
    }
}

/// A [`RuntimeService`] on the other end of a gRPC channel.
#[derive(Clone)]
pub struct RuntimeGrpcClient {
    client: RuntimeClient<InterceptedService<Channel, AddToken>>,
}

impl RuntimeGrpcClient {
    /// A client for `address` (e.g. `http://127.0.0.1:9102`). Connects lazily, so the
    /// runtime may start after the caller.
    pub fn connect_lazy(address: &str, token: Option<GrpcToken>) -> Result<Self, RuntimeError> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|error| RuntimeError::Internal(format!("bad runtime address: {error}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let client = RuntimeClient::with_interceptor(endpoint.connect_lazy(), AddToken(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(RuntimeGrpcClient { client })
    }
}

#[async_trait]
impl RuntimeService for RuntimeGrpcClient {
    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, RuntimeError> {
        let response = self
            .client
            .clone()
            .invoke(pb::InvokeRequest::from(invocation))
            .await
            .map_err(RuntimeError::from)?
            .into_inner();
        Ok(InvocationResult {
            payload: Bytes::from(response.payload),
            function_error: Some(response.function_error).filter(|error| !error.is_empty()),
            log_tail: response.log_tail,
            executed_version: response.executed_version,
            duration: Duration::from_micros(response.duration_micros),
        })
    }

    async fn put_code(&self, code_sha256_hex: &str, zip: Bytes) -> Result<(), RuntimeError> {
        let request = pb::PutCodeRequest {
            code_sha256_hex: code_sha256_hex.to_owned(),
            zip: zip.to_vec(),
        };
        self.client
            .clone()
            .put_code(request)
            .await
            .map_err(RuntimeError::from)?;
        Ok(())
    }

    async fn check_runtime(&self, runtime: &str) -> Result<(), RuntimeError> {
        let request = pb::RuntimeRequest {
            runtime: runtime.to_owned(),
        };
        self.client.clone().check_runtime(request).await?;
        Ok(())
    }

    async fn prepare_runtime(&self, runtime: &str) -> Result<(), RuntimeError> {
        let request = pb::RuntimeRequest {
            runtime: runtime.to_owned(),
        };
        self.client.clone().prepare_runtime(request).await?;
        Ok(())
    }
}

impl From<FunctionSpec> for pb::FunctionSpec {
    fn from(spec: FunctionSpec) -> Self {
        pb::FunctionSpec {
            function_name: spec.function_name,
            function_arn: spec.function_arn,
            version: spec.version,
            runtime: spec.runtime,
            handler: spec.handler,
            timeout_seconds: u32::try_from(spec.timeout.as_secs()).unwrap_or(u32::MAX),
            memory_size_mb: spec.memory_size_mb,
            environment: spec.environment.into_iter().collect(),
            code_sha256_hex: spec.code_sha256_hex.unwrap_or_default(),
            revision_id: spec.revision_id,
            reserved_concurrency: spec.reserved_concurrency,
            region: spec.region,
        }
    }
}

impl TryFrom<pb::FunctionSpec> for FunctionSpec {
    type Error = Status;

    fn try_from(spec: pb::FunctionSpec) -> Result<Self, Status> {
        if spec.timeout_seconds == 0 {
            return Err(Status::invalid_argument(
                "function timeout must be positive",
            ));
        }
        Ok(FunctionSpec {
            function_name: spec.function_name,
            function_arn: spec.function_arn,
            version: spec.version,
            runtime: spec.runtime,
            handler: spec.handler,
            timeout: Duration::from_secs(u64::from(spec.timeout_seconds)),
            memory_size_mb: spec.memory_size_mb,
            environment: spec.environment.into_iter().collect(),
            code_sha256_hex: non_empty(spec.code_sha256_hex),
            revision_id: spec.revision_id,
            reserved_concurrency: spec.reserved_concurrency,
            region: spec.region,
        })
    }
}

impl From<Invocation> for pb::InvokeRequest {
    fn from(invocation: Invocation) -> Self {
        pb::InvokeRequest {
            function: Some(invocation.function.into()),
            request_id: invocation.request_id,
            payload: invocation.payload.to_vec(),
            invoked_function_arn: invocation.invoked_function_arn,
            client_context: invocation.client_context.unwrap_or_default(),
            attempt: invocation.attempt,
            trace_id: invocation.trace_id.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::InvokeRequest> for Invocation {
    type Error = Status;

    fn try_from(request: pb::InvokeRequest) -> Result<Self, Status> {
        let spec = request
            .function
            .ok_or_else(|| Status::invalid_argument("invoke request without a function"))?;
        Ok(Invocation {
            function: spec.try_into()?,
            request_id: request.request_id,
            payload: Bytes::from(request.payload),
            invoked_function_arn: request.invoked_function_arn,
            client_context: non_empty(request.client_context),
            attempt: request.attempt.max(1),
            trace_id: non_empty(request.trace_id),
        })
    }
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|text| !text.is_empty())
}

impl From<RuntimeError> for Status {
    fn from(error: RuntimeError) -> Self {
        let (code, kind, message) = match error {
            RuntimeError::Throttled(reason) => (
                Code::ResourceExhausted,
                "throttled",
                reason.as_str().to_owned(),
            ),
            RuntimeError::CodeMissing(sha) => (Code::FailedPrecondition, "code-missing", sha),
            RuntimeError::InvalidCode(message) => (Code::InvalidArgument, "invalid-code", message),
            RuntimeError::UnsupportedRuntime(message) => {
                (Code::FailedPrecondition, "unsupported-runtime", message)
            }
            RuntimeError::Internal(message) => (Code::Internal, "internal", message),
        };
        tagged_status(code, kind, message)
    }
}

impl From<Status> for RuntimeError {
    fn from(status: Status) -> Self {
        let kind = kind_of(&status);
        let message = status.message().to_owned();
        match kind {
            Some("throttled") => ThrottleReason::parse(&message)
                .map(RuntimeError::Throttled)
                .unwrap_or(RuntimeError::Internal(message)),
            Some("code-missing") => RuntimeError::CodeMissing(message),
            Some("invalid-code") => RuntimeError::InvalidCode(message),
            Some("unsupported-runtime") => RuntimeError::UnsupportedRuntime(message),
            _ => RuntimeError::Internal(format!("runtime call failed: {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        let errors = [
            RuntimeError::Throttled(
                ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
            ),
            RuntimeError::CodeMissing("abc".into()),
            RuntimeError::InvalidCode("not a zip".into()),
        ];
        for error in errors {
            assert_eq!(RuntimeError::from(Status::from(error.clone())), error);
        }
    }
}
