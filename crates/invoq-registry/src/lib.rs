//! invoq-registry is the function registry: every function with its code and async settings,
//! and every event source mapping. It is what the retry worker, the router and the pollers
//! ask, through one trait, [`Registry`], whether it lives in this process
//! ([`LocalRegistry`], the stores on disk) or in another ([`grpc::RegistryGrpcClient`]).
//!
//! It is also the one place an asynchronous invoke is written to the queue
//! ([`LocalRegistry::accept_event`]): the HTTP API's Event and InvokeAsync calls and function
//! destinations all go through it, with the same checks and limits.
//!
//! Boundary: no HTTP here. The Lambda API's shapes and validation are the frontend's; this
//! crate stores what they produce and serves it.

mod function_store;
pub mod grpc;
mod local;
mod mapping_store;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_domain::asynchronous::{AsyncSettings, EventInvokeConfig};
use invoq_domain::event_source::EventSourceMapping;
use invoq_domain::recursion::RecursiveLoop;
use invoq_runtime::{FunctionSpec, RuntimeError};
use tokio::sync::watch;

pub use crate::function_store::{
    CodeRef, FunctionRecord, FunctionState, FunctionStore, UpdateStatus, storage_error,
    write_atomically,
};
pub use crate::local::{AcceptCounters, EventInvoke, LocalRegistry};
pub use crate::mapping_store::MappingStore;

/// What the registry could not do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot answer now (its process is down, its storage failed): worth
    /// asking again later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the request, in AWS's words (an unknown function, a function
    /// that is not active, a payload too large).
    #[error("{0}")]
    Refused(String),
}

impl From<RegistryError> for RuntimeError {
    fn from(error: RegistryError) -> Self {
        RuntimeError::Internal(error.to_string())
    }
}

/// A function's settings that shape its asynchronous invocations, as stored.
#[derive(Clone, Debug)]
pub struct AsyncConfiguration {
    pub spec: FunctionSpec,
    pub event_invoke_config: Option<EventInvokeConfig>,
    pub dead_letter_target_arn: Option<String>,
    pub recursive_loop: RecursiveLoop,
}

/// A function as an event should run now, with its async settings resolved.
#[derive(Clone, Debug)]
pub struct AsyncTarget {
    pub spec: FunctionSpec,
    pub settings: AsyncSettings,
}

impl From<AsyncConfiguration> for AsyncTarget {
    fn from(found: AsyncConfiguration) -> Self {
        let settings = AsyncSettings::new(
            found.event_invoke_config,
            found.dead_letter_target_arn,
            found.recursive_loop,
        );
        AsyncTarget {
            spec: found.spec,
            settings,
        }
    }
}

/// The registry as the worker, the router and the pollers use it.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The function's configuration for an asynchronous invocation of `qualifier`;
    /// `Ok(None)` if it does not exist (any more).
    async fn async_configuration(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<AsyncConfiguration>, RegistryError>;

    /// The function as an event should run now: [`Registry::async_configuration`] with the
    /// defaults applied.
    async fn resolve(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<AsyncTarget>, RegistryError> {
        Ok(self
            .async_configuration(function_name, qualifier)
            .await?
            .map(AsyncTarget::from))
    }

    /// A deployment package by hex SHA-256, for a runtime that does not hold it yet.
    async fn code(&self, code_sha256_hex: &str) -> Result<Bytes, RegistryError>;

    /// An Event invoke of the function `function_arn` names with `event` (JSON text), under
    /// `request_id` (the same for every redelivery of one record) or a new one if empty:
    /// how function destinations are delivered. `chain_depth` counts the invocations of the
    /// chain before this one, for recursive loop detection.
    async fn invoke_event(
        &self,
        function_arn: &str,
        event: &str,
        request_id: &str,
        chain_depth: u32,
    ) -> Result<(), RegistryError>;

    /// The event source mappings, now and after every change: what the pollers run.
    fn watch_mappings(&self) -> watch::Receiver<Vec<EventSourceMapping>>;
}

/// Checks that an event source exists before a mapping to it is created (the pollers know
/// how to ask the source; the API that creates mappings does not).
#[async_trait]
pub trait EventSourceChecker: Send + Sync + 'static {
    /// `Err` carries AWS's message for the missing source.
    async fn check(&self, event_source_arn: &str) -> Result<(), String>;
}
