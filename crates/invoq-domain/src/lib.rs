//! Lambda's domain vocabulary, shared by every invoq service: how functions are named and
//! addressed (`FunctionRef`, ARNs), which errors the API speaks (`ErrorCode`), and the limits
//! Lambda enforces.
//!
//! Boundary: no I/O, no async, no wire format of invoq's own. Everything here is something an
//! AWS user would recognise.

pub mod arn;
pub mod asynchronous;
mod error;
pub mod event_source;
mod function_ref;
pub mod limits;
pub mod recursion;

pub use arn::Arn;
pub use error::{ApiError, ErrorCode};
pub use function_ref::{FunctionRef, Qualifier, is_valid_name};

/// Where the functions live: the account and region that appear in every ARN invoq hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub region: String,
    pub account_id: String,
}

impl Location {
    /// `arn:aws:lambda:<region>:<account>:function:<name>`
    pub fn function_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account_id
        )
    }

    /// The ARN qualified with a version or alias.
    pub fn qualified_function_arn(&self, name: &str, qualifier: &str) -> String {
        format!("{}:{qualifier}", self.function_arn(name))
    }
}

/// The version every unqualified reference means.
pub const LATEST: &str = "$LATEST";

/// A new request id, as Lambda makes them: a random UUID.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A request id that is the same every time for the same `seed` (a UUID v5): for invokes
/// invoq makes itself and may make again, such as a function destination's delivery of one
/// outcome, so that the receiving side can tell a redelivery from a new event.
pub fn stable_request_id(seed: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, seed.as_bytes()).to_string()
}
