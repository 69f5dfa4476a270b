//! SigV4 authentication of the Lambda API, as AWS checks it: the request's
//! `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` must be the
//! signature of this very request (method, path, query, the signed headers, the body) under
//! a configured access key, made within five minutes of now.
//!
//! The signature is recomputed with `aws-sigv4`, the signer the AWS SDKs for Rust use, from
//! the headers the client says it signed; only the comparison is invoq's (constant time).
//! `GET /metrics` stays open for scrapers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use invoq_domain::{ApiError, ErrorCode};
use invoq_proto::bearer::constant_time_eq;

use crate::http::ErrorResponse;

/// How far a request's `X-Amz-Date` may be from now, as AWS allows.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Bodies are read whole to hash them; the largest the API takes is a zip upload.
const MAX_SIGNED_BODY: usize = crate::CONTROL_PLANE_BODY_LIMIT;

/// The access keys requests may be signed with.
#[derive(Clone, Default)]
pub struct AccessKeys {
    secrets: HashMap<String, String>,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeys")
            .field("ids", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: expected ACCESS_KEY_ID:SECRET_ACCESS_KEY")]
pub struct AccessKeysError {
    pub line: usize,
}

impl AccessKeys {
    /// Parses `ACCESS_KEY_ID:SECRET_ACCESS_KEY` pairs, one per line or comma-separated;
    /// blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, AccessKeysError> {
        let mut secrets = HashMap::new();
        for (index, entry) in text
            .lines()
            .enumerate()
            .flat_map(|(index, line)| line.split(',').map(move |entry| (index, entry)))
        {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            match entry.split_once(':') {
                Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                    secrets.insert(id.to_owned(), secret.to_owned());
                }
                _ => return Err(AccessKeysError { line: index + 1 }),
            }
        }
        Ok(AccessKeys { secrets })
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// Verifies every request but `GET /metrics`; a layer for [`crate::Frontend::router`].
pub(crate) async fn verify(
    State(keys): State<Arc<AccessKeys>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/metrics" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_SIGNED_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return ErrorResponse::from(ApiError::new(
                ErrorCode::RequestEntityTooLarge,
                "Request must be smaller than 70167211 bytes for the operation.",
            ))
            .into_response();
        }
    };
    if let Err(error) = check(&keys, &parts, &body, SystemTime::now()) {
        return ErrorResponse::from(error).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The parts of an `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(header: &str) -> Option<Authorization<'_>> {
    let fields = header.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',') {
        let (name, value) = field.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let authorization = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed_headers?.split(';').collect(),
        signature: signature?,
    };
    (scope.next() == Some("aws4_request")).then_some(authorization)
}

fn check(
    keys: &AccessKeys,
    parts: &http::request::Parts,
    body: &Bytes,
    now: SystemTime,
) -> Result<(), ApiError> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let Some(authorization) = header("authorization") else {
        return Err(ApiError::new(
            ErrorCode::MissingAuthenticationToken,
            "Missing Authentication Token",
        ));
    };
    let incomplete = || {
        ApiError::new(
            ErrorCode::IncompleteSignature,
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' \
                 parameters. Authorization={authorization}"
            ),
        )
    };
    let authorization = parse_authorization(authorization).ok_or_else(incomplete)?;
    let Some(secret) = keys.secrets.get(authorization.access_key_id) else {
        return Err(ApiError::new(
            ErrorCode::UnrecognizedClient,
            "The security token included in the request is invalid.",
        ));
    };
    let invalid_signature = |message: String| ApiError::new(ErrorCode::InvalidSignature, message);
    let amz_date = header("x-amz-date").ok_or_else(|| {
        invalid_signature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .to_owned(),
        )
    })?;
    let signed_at = parse_amz_date(amz_date)
        .filter(|_| amz_date.starts_with(authorization.date))
        .ok_or_else(|| invalid_signature(format!("Invalid date {amz_date}")))?;
    let skew = now
        .duration_since(signed_at)
        .or_else(|_| signed_at.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(invalid_signature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(now - MAX_CLOCK_SKEW),
            format_amz_date(now)
        )));
    }
    // Exactly the headers the client signed, as it sent them.
    let mut headers = Vec::with_capacity(authorization.signed_headers.len());
    for name in &authorization.signed_headers {
        let value = header(name).ok_or_else(|| {
            invalid_signature(format!("The request signed header {name} is missing."))
        })?;
        headers.push((*name, value));
    }
    let uri = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/");
    let computed = signature_of(
        parts.method.as_str(),
        uri,
        headers,
        body,
        (authorization.access_key_id, secret),
        (authorization.region, authorization.service),
        signed_at,
    )
    .ok_or_else(incomplete)?;
    if !constant_time_eq(computed.as_bytes(), authorization.signature.as_bytes()) {
        return Err(invalid_signature(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .to_owned(),
        ));
    }
    Ok(())
}

/// The SigV4 signature of a request, as the AWS SDKs compute it.
fn signature_of(
    method: &str,
    uri: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    (access_key_id, secret): (&str, &str),
    (region, service): (&str, &str),
    time: SystemTime,
) -> Option<String> {
    let identity = Credentials::new(access_key_id, secret, None, None, "invoq-access-keys").into();
    let mut settings = SigningSettings::default();
    // Sign what the client signed, nothing left out.
    settings.excluded_headers = Some(Vec::new());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .ok()?
        .into();
    let request =
        SignableRequest::new(method, uri, headers.into_iter(), SignableBody::Bytes(body)).ok()?;
    Some(sign(request, &params).ok()?.signature().to_owned())
}

/// `20261203T134501Z`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(text, &format).ok()?;
    Some(at.assume_utc().into())
}

fn format_amz_date(at: SystemTime) -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AccessKeys {
        AccessKeys::parse("# keys\nAKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n").unwrap()
    }

    /// A request signed by aws-sigv4 itself, the way the SDK signs Invoke.
    fn signed(secret: &str, at: SystemTime) -> (http::request::Parts, Bytes) {
        let body = Bytes::from_static(br#"{"hello":"world"}"#);
        let uri = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af/invocations?Qualifier=%24LATEST";
        let date = format_amz_date(at);
        let headers = vec![
            ("host", "127.0.0.1:9001"),
            ("content-type", "application/json"),
            ("x-amz-date", date.as_str()),
        ];
        let signature = signature_of(
            "POST",
            uri,
            headers.clone(),
            &body,
            ("AKIDEXAMPLE", secret),
            ("us-east-1", "lambda"),
            at,
        )
        .unwrap();
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{}/us-east-1/lambda/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={signature}",
            &date[..8]
        );
        let mut request = http::Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .header("authorization", authorization)
            .header("user-agent", "not signed")
            .body(())
            .unwrap();
        (request.into_parts().0, body)
    }

    #[test]
    fn a_signed_request_passes_and_any_change_fails() {
        let now = SystemTime::now();
        let (parts, body) = signed("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", now);
        check(&keys(), &parts, &body, now).expect("valid signature");

        let tampered = Bytes::from_static(br#"{"hello":"mallory"}"#);
        let error = check(&keys(), &parts, &tampered, now).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidSignature);

        let (parts, body) = signed("the wrong secret", now);
        let error = check(&keys(), &parts, &body, now).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidSignature);
        assert!(
            error
                .message
                .starts_with("The request signature we calculated")
        );
    }

    #[test]
    fn unknown_keys_missing_headers_and_old_signatures_are_refused() {
        let now = SystemTime::now();
        let (parts, body) = signed("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", now);
        let error = check(&AccessKeys::default(), &parts, &body, now).unwrap_err();
        assert_eq!(error.code, ErrorCode::UnrecognizedClient);
        assert_eq!(
            error.message,
            "The security token included in the request is invalid."
        );

        let later = now + Duration::from_secs(6 * 60);
        let error = check(&keys(), &parts, &body, later).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidSignature);
        assert!(
            error.message.starts_with("Signature expired: "),
            "{}",
            error.message
        );

        let mut unsigned = parts.clone();
        unsigned.headers.remove("authorization");
        let error = check(&keys(), &unsigned, &body, now).unwrap_err();
        assert_eq!(error.code, ErrorCode::MissingAuthenticationToken);
    }

    proptest::proptest! {
        /// Any Authorization header, any date: refused cleanly, never a panic, never a pass.
        #[test]
        fn any_authorization_header_is_refused_without_panicking(
            authorization in "\\PC{0,300}",
            date in "[0-9TZ]{0,20}",
        ) {
            let _ = parse_authorization(&authorization);
            let request = http::Request::builder()
                .method("POST")
                .uri("/2015-03-31/functions")
                .header("host", "127.0.0.1:9001")
                .header("x-amz-date", date)
                .header("authorization", authorization)
                .body(())
                .unwrap();
            let parts = request.into_parts().0;
            proptest::prop_assert!(check(&keys(), &parts, &Bytes::new(), SystemTime::now()).is_err());
        }
    }

    #[test]
    fn access_keys_parse_lines_and_commas() {
        let keys = AccessKeys::parse("a:1, b:2\n\n# c:3\nd:4:with:colons").unwrap();
        assert_eq!(keys.secrets.len(), 3);
        assert_eq!(keys.secrets["d"], "4:with:colons");
        assert_eq!(AccessKeys::parse("x:1\nbroken").unwrap_err().line, 2);
    }
}
