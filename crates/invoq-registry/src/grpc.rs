//! The registry over gRPC (`invoq.v1.Registry`): [`RegistryGrpcServer`] serves any
//! [`Registry`] (the frontend process's [`crate::LocalRegistry`]) to the worker, router and
//! pollers of other processes; [`RegistryGrpcClient`] is the [`Registry`] they hold.

use invoq_proto::bearer::{AddToken, GrpcToken};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_domain::asynchronous::EventInvokeConfig;
use invoq_domain::event_source::EventSourceMapping;
use invoq_domain::recursion::RecursiveLoop;
use invoq_proto::v1 as pb;
use invoq_proto::v1::registry_client::RegistryClient;
use invoq_proto::v1::registry_server::{self, RegistryServer};
use invoq_runtime::grpc::MAX_MESSAGE_BYTES;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::{AsyncConfiguration, Registry, RegistryError};

/// How long a watcher waits before it reconnects to a registry that went away.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Serves a [`Registry`] as the gRPC `invoq.v1.Registry` service.
pub struct RegistryGrpcServer {
    registry: Arc<dyn Registry>,
}

impl RegistryGrpcServer {
    pub fn new(registry: Arc<dyn Registry>) -> RegistryServer<Self> {
        RegistryServer::new(RegistryGrpcServer { registry })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

type MappingStream = Pin<Box<dyn Stream<Item = Result<pb::Mappings, Status>> + Send>>;

fn status(error: RegistryError) -> Status {
    match error {
        RegistryError::Unavailable(message) => Status::unavailable(message),
        RegistryError::Refused(message) => Status::failed_precondition(message),
    }
}

fn registry_error(status: Status) -> RegistryError {
    match status.code() {
        Code::FailedPrecondition => RegistryError::Refused(status.message().to_owned()),
        _ => RegistryError::Unavailable(status.to_string()),
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryGrpcServer {
    async fn resolve_function(
        &self,
        request: Request<pb::ResolveFunctionRequest>,
    ) -> Result<Response<pb::ResolveFunctionResponse>, Status> {
        let request = request.into_inner();
        let found = self
            .registry
            .async_configuration(&request.function_name, &request.qualifier)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("function {}", request.function_name)))?;
        let event_invoke_config_json = found
            .event_invoke_config
            .map(|config| serde_json::to_string(&config))
            .transpose()
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(pb::ResolveFunctionResponse {
            function: Some(found.spec.into()),
            event_invoke_config_json,
            dead_letter_target_arn: found.dead_letter_target_arn,
            recursive_loop_allowed: found.recursive_loop == RecursiveLoop::Allow,
        }))
    }

    async fn get_code(
        &self,
        request: Request<pb::GetCodeRequest>,
    ) -> Result<Response<pb::GetCodeResponse>, Status> {
        let zip = self
            .registry
            .code(&request.into_inner().code_sha256_hex)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetCodeResponse { zip: zip.to_vec() }))
    }

    async fn invoke_event(
        &self,
        request: Request<pb::InvokeEventRequest>,
    ) -> Result<Response<pb::InvokeEventResponse>, Status> {
        let request = request.into_inner();
        self.registry
            .invoke_event(
                &request.function_arn,
                &request.event,
                &request.request_id,
                request.chain_depth,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InvokeEventResponse {}))
    }

    type WatchMappingsStream = MappingStream;

    async fn watch_mappings(
        &self,
        _request: Request<pb::WatchMappingsRequest>,
    ) -> Result<Response<MappingStream>, Status> {
        let stream = WatchStream::new(self.registry.watch_mappings()).map(|mappings| {
            let mapping_json = mappings
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()
                .map_err(|error| Status::internal(error.to_string()))?;
            Ok(pb::Mappings { mapping_json })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Calls a registry in another process.
#[derive(Clone)]
pub struct RegistryGrpcClient {
    client: AuthedRegistryClient,
}

type AuthedRegistryClient = RegistryClient<InterceptedService<Channel, AddToken>>;

impl RegistryGrpcClient {
    /// A client for `address` (e.g. `http://127.0.0.1:9101`). Connects on first use, and again
    /// after the registry restarts.
    pub fn connect_lazy(
        address: &str,
        token: Option<GrpcToken>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(address.to_owned())?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(RegistryGrpcClient {
            client: RegistryClient::with_interceptor(channel, AddToken(token))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

#[async_trait]
impl Registry for RegistryGrpcClient {
    async fn async_configuration(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<AsyncConfiguration>, RegistryError> {
        let request = pb::ResolveFunctionRequest {
            function_name: function_name.to_owned(),
            qualifier: qualifier.to_owned(),
        };
        let response = match self.client.clone().resolve_function(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(registry_error(status)),
        };
        let malformed = |error: String| RegistryError::Unavailable(format!("registry: {error}"));
        let spec = response
            .function
            .ok_or_else(|| malformed("answered no function".into()))?
            .try_into()
            .map_err(|status: Status| malformed(status.message().to_owned()))?;
        let event_invoke_config: Option<EventInvokeConfig> = response
            .event_invoke_config_json
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|error| malformed(error.to_string()))?;
        let recursive_loop = if response.recursive_loop_allowed {
            RecursiveLoop::Allow
        } else {
            RecursiveLoop::Terminate
        };
        Ok(Some(AsyncConfiguration {
            spec,
            event_invoke_config,
            dead_letter_target_arn: response.dead_letter_target_arn,
            recursive_loop,
        }))
    }

    async fn code(&self, code_sha256_hex: &str) -> Result<Bytes, RegistryError> {
        let request = pb::GetCodeRequest {
            code_sha256_hex: code_sha256_hex.to_owned(),
        };
        let response = self
            .client
            .clone()
            .get_code(request)
            .await
            .map_err(registry_error)?;
        Ok(Bytes::from(response.into_inner().zip))
    }

    async fn invoke_event(
        &self,
        function_arn: &str,
        event: &str,
        request_id: &str,
        chain_depth: u32,
    ) -> Result<(), RegistryError> {
        let request = pb::InvokeEventRequest {
            function_arn: function_arn.to_owned(),
            event: event.to_owned(),
            request_id: request_id.to_owned(),
            chain_depth,
        };
        self.client
            .clone()
            .invoke_event(request)
            .await
            .map(|_| ())
            .map_err(registry_error)
    }

    /// The event source mappings, kept current by a background watch that reconnects when
    /// the registry goes away. Starts empty until the registry first answers.
    fn watch_mappings(&self) -> watch::Receiver<Vec<EventSourceMapping>> {
        let (sender, receiver) = watch::channel(Vec::new());
        let client = self.client.clone();
        tokio::spawn(async move {
            while !sender.is_closed() {
                if let Err(status) = follow_mappings(client.clone(), &sender).await {
                    tracing::warn!(%status, "lost the registry's mappings; reconnecting");
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        });
        receiver
    }
}

async fn follow_mappings(
    mut client: AuthedRegistryClient,
    sender: &watch::Sender<Vec<EventSourceMapping>>,
) -> Result<(), Status> {
    let mut stream = client
        .watch_mappings(pb::WatchMappingsRequest {})
        .await?
        .into_inner();
    while let Some(mappings) = stream.message().await? {
        let mappings = mappings
            .mapping_json
            .iter()
            .map(|json| serde_json::from_str(json))
            .collect::<Result<Vec<EventSourceMapping>, _>>()
            .map_err(|error| Status::internal(error.to_string()))?;
        if sender.send(mappings).is_err() {
            break;
        }
    }
    Ok(())
}
