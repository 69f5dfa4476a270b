//! SigV4 signing of the bench's requests (`--sign`), as an AWS SDK signs them, so the bench
//! can measure an invoq that authenticates.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::BenchError;

#[derive(Clone, Debug)]
pub struct Signer {
    pub access_key_id: String,
    secret_access_key: String,
    region: String,
}

impl Signer {
    /// The key in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (`test` / `test` without them).
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Signer {
            access_key_id: var("AWS_ACCESS_KEY_ID", "test"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY", "test"),
            region: var("AWS_REGION", "us-east-1"),
        }
    }

    /// `ID:SECRET`, for the `INVOQ_ACCESS_KEYS` of an invoq the bench starts.
    pub fn access_keys(&self) -> String {
        format!("{}:{}", self.access_key_id, self.secret_access_key)
    }

    /// Adds `x-amz-date` and `authorization` to a built request.
    pub fn sign(&self, request: &mut reqwest::Request) -> Result<(), BenchError> {
        let failed = |error: &dyn std::fmt::Display| BenchError::Setup(format!("signing: {error}"));
        let identity = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "invoq-bench",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("lambda")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|error| failed(&error))?
            .into();
        let body = request
            .body()
            .and_then(|body| body.as_bytes())
            .unwrap_or_default();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.url().as_str(),
            headers,
            SignableBody::Bytes(body),
        )
        .map_err(|error| failed(&error))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|error| failed(&error))?
            .into_parts();
        let (headers, _) = instructions.into_parts();
        for header in headers {
            let value = reqwest::header::HeaderValue::from_str(header.value())
                .map_err(|error| failed(&error))?;
            request.headers_mut().insert(header.name(), value);
        }
        Ok(())
    }
}
