//! The bare HTTP server of the baseline (`invoq baseline`): the same HTTP stack as invoq's API
//! (axum on hyper), answering 202 to every request without reading a queue or a disk, so a
//! report can say how close invoq's accept path comes to what the machine allows.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode};

/// 202 with a request id header, whatever the request.
pub fn router() -> Router {
    Router::new().fallback(|| async {
        (
            StatusCode::ACCEPTED,
            [(
                HeaderName::from_static("x-amzn-requestid"),
                HeaderValue::from_static("baseline"),
            )],
        )
    })
}
