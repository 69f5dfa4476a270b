//! Wire types of invoq's gRPC services, generated from `proto/invoq/v1`.
//!
//! Generated code, plus the conventions every service shares: errors ([`error_kind`]) and
//! the bearer token between services ([`bearer`]). Conversions to domain types belong to the crate that owns
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

/// The shared secret between invoq's services (`INVOQ_GRPC_TOKEN`): clients send it as a
/// bearer token on every call, servers refuse calls without it. Health checks stay open.
pub mod bearer {
    use tonic::metadata::{Ascii, MetadataValue};
    use tonic::service::Interceptor;
    use tonic::{Request, Status};

    const HEADER: &str = "authorization";

    /// `Bearer <secret>`, ready to send or compare.
    #[derive(Clone)]
    pub struct GrpcToken(MetadataValue<Ascii>);

    impl std::fmt::Debug for GrpcToken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("GrpcToken(..)")
        }
    }

    #[derive(Debug)]
    pub struct InvalidToken;

    impl std::fmt::Display for InvalidToken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the gRPC token must be non-empty printable ASCII")
        }
    }

    impl std::error::Error for InvalidToken {}

    impl GrpcToken {
        pub fn new(secret: &str) -> Result<Self, InvalidToken> {
            let secret = secret.trim();
            if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(InvalidToken);
            }
            let mut value: MetadataValue<Ascii> = format!("Bearer {secret}")
                .parse()
                .map_err(|_| InvalidToken)?;
            value.set_sensitive(true);
            Ok(GrpcToken(value))
        }
    }

    /// Whether two secrets are equal, in time that does not depend on where they differ
    /// (every check of a secret uses it: this token, SigV4 signatures).
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Client side: adds the token, when there is one, to every request.
    #[derive(Clone, Debug, Default)]
    pub struct AddToken(pub Option<GrpcToken>);

    impl Interceptor for AddToken {
        fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
            if let Some(token) = &self.0 {
                request.metadata_mut().insert(HEADER, token.0.clone());
            }
            Ok(request)
        }
    }

    /// Server side: with a token, refuses every request that does not carry it.
    #[derive(Clone, Debug, Default)]
    pub struct RequireToken(pub Option<GrpcToken>);

    impl Interceptor for RequireToken {
        fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
            let Some(expected) = &self.0 else {
                return Ok(request);
            };
            let sent = request
                .metadata()
                .get(HEADER)
                .map(|value| value.as_bytes())
                .unwrap_or_default();
            if constant_time_eq(sent, expected.0.as_bytes()) {
                Ok(request)
            } else {
                Err(Status::unauthenticated(
                    "missing or wrong invoq gRPC token (INVOQ_GRPC_TOKEN)",
                ))
            }
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use prost::Message;

    use crate::v1;

    proptest! {
        /// What arrives off the wire may be anything: decoding fails cleanly, never panics.
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = v1::InvokeRequest::decode(bytes.as_slice());
            let _ = v1::PutCodeRequest::decode(bytes.as_slice());
            let _ = v1::EnqueueRequest::decode(bytes.as_slice());
            let _ = v1::SettleAndEnqueueRequest::decode(bytes.as_slice());
            let _ = v1::LeaseResponse::decode(bytes.as_slice());
            let _ = v1::PeekRequest::decode(bytes.as_slice());
            let _ = v1::InvokeEventRequest::decode(bytes.as_slice());
            let _ = v1::ResolveFunctionResponse::decode(bytes.as_slice());
            let _ = v1::Mappings::decode(bytes.as_slice());
        }
    }
}
