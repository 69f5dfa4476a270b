//! Wire types of invoq's gRPC services, generated from `proto/invoq/v1`.
//!
//! Generated code, plus the one convention every service shares for errors ([`error_kind`]). Conversions to domain types belong to the crate that owns
//! the service, so this crate depends on nothing of invoq's.

#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("invoq.v1");
}

/// How services carry their own error kinds across gRPC: a status tagged with the kind in
/// metadata, so the client rebuilds exactly the error the server raised.
pub mod error_kind {
    use tonic::{Code, Status};

    const KEY: &str = "invoq-error-kind";

    /// A status for `code` and `message`, tagged with `kind`.
    pub fn tagged_status(code: Code, kind: &'static str, message: String) -> Status {
        let mut status = Status::new(code, message);
        status
            .metadata_mut()
            .insert(KEY, tonic::metadata::MetadataValue::from_static(kind));
        status
    }

    /// The kind a status was tagged with, if any.
    pub fn kind_of(status: &Status) -> Option<&str> {
        status
            .metadata()
            .get(KEY)
            .and_then(|kind| kind.to_str().ok())
    }
}
