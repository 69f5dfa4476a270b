//! Wire types of invoq's gRPC services, generated from `proto/invoq/v1`.
//!
//! Only generated code lives here. Conversions to domain types belong to the crate that owns
//! the service, so this crate depends on nothing of invoq's.

#![allow(unreachable_pub, clippy::all)]

pub mod v1 {
    tonic::include_proto!("invoq.v1");
}
