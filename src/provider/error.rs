//! What went wrong talking to the provider, classified by one question: could the provider have
//! acted on the request?
//!
//! Invariants: every [`ProviderError`] has exactly one [`ErrorClass`]; anything that does not
//! prove the request was not processed is [`ErrorClass::Unknown`] (the safe default for calls
//! without an idempotency key). Display strings say what happened and what to do; they never
//! contain a secret, a header or a request body.

use std::fmt;

/// The sender's view of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The provider did not act on the request: safe to resend (connect failure, request not
    /// fully sent, 429 / FlowLimitExceeded*, 503 ServiceUnavailableTemp).
    NotProcessed,
    /// InvalidTimestamp: the clock is off. The client already re-signed once.
    Clock,
    /// The request can never succeed as it is (signature, access key, AccessDenied*,
    /// InvalidParameter*, other 4xx): stop and fix.
    Fatal,
    /// The request may or may not have been processed (read timeout, dropped connection after
    /// sending, 500, 502, 504).
    Unknown,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::NotProcessed => "not processed",
            ErrorClass::Clock => "clock",
            ErrorClass::Fatal => "fatal",
            ErrorClass::Unknown => "unknown outcome",
        })
    }
}

/// A provider call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The TCP/TLS connection could not be made.
    #[error("could not connect to {endpoint}: {detail} (nothing was sent; check the endpoint and network, then retry)")]
    Connect { endpoint: String, detail: String },
    /// The connection failed before the request was fully sent.
    #[error("the request to {endpoint} was not fully sent: {detail} (nothing was processed; safe to retry)")]
    NotSent { endpoint: String, detail: String },
    /// No response within the request timeout after the request was sent.
    #[error("no response from {endpoint} within the request timeout; the provider may or may not have processed the request")]
    Timeout { endpoint: String },
    /// The connection dropped after the request was sent, before a response.
    #[error("the connection to {endpoint} dropped before a response: {detail}; the provider may or may not have processed the request")]
    Dropped { endpoint: String, detail: String },
    /// The provider answered with `ResponseMetadata.Error`.
    #[error("{0}")]
    Api(Box<ApiFailure>),
    /// The response could not be understood (not the envelope, or neither Result nor Error).
    #[error("{action}: unreadable response (HTTP {status}): {detail}")]
    BadResponse {
        action: String,
        status: u16,
        detail: String,
    },
    /// The request could not be built (nothing was sent).
    #[error("could not build the {action} request: {detail}")]
    Build { action: String, detail: String },
    /// The client could not be set up.
    #[error("provider client setup failed: {0}")]
    Setup(String),
}

/// The details of a `ResponseMetadata.Error` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub action: String,
    pub status: u16,
    pub code: String,
    pub code_n: Option<i64>,
    pub message: String,
    pub request_id: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: HTTP {} {}: {} (request id {}); {}",
            self.action,
            self.status,
            self.code,
            self.message,
            self.request_id,
            hint(self.status, &self.code)
        )
    }
}

/// Classify an API error by code first, then by HTTP status.
pub fn classify(status: u16, code: &str) -> ErrorClass {
    if code == "InvalidTimestamp" {
        return ErrorClass::Clock;
    }
    if status == 429 || code.starts_with("FlowLimitExceeded") {
        return ErrorClass::NotProcessed;
    }
    if code == "ServiceUnavailableTemp" || status == 503 {
        return ErrorClass::NotProcessed;
    }
    if code.starts_with("InvalidParameter")
        || code.starts_with("AccessDenied")
        || matches!(
            code,
            "SignatureDoesNotMatch"
                | "InvalidAccessKey"
                | "MissingSignature"
                | "MissingAuthenticationToken"
                | "InvalidAuthorization"
                | "InvalidActionOrVersion"
        )
    {
        return ErrorClass::Fatal;
    }
    if (400..500).contains(&status) {
        return ErrorClass::Fatal;
    }
    ErrorClass::Unknown
}

/// What to tell the user for an API error.
pub fn hint(status: u16, code: &str) -> &'static str {
    match classify(status, code) {
        ErrorClass::Clock => "the local clock is off: fix the system time (NTP)",
        ErrorClass::NotProcessed if status == 429 || code.starts_with("FlowLimitExceeded") => {
            "rate limited: slow down (the throttle is per access key), then retry"
        }
        ErrorClass::NotProcessed => "the provider is temporarily unavailable; retry later",
        ErrorClass::Unknown => {
            "the provider may or may not have processed the request; do not resend blindly"
        }
        ErrorClass::Fatal => match code {
            "SignatureDoesNotMatch" | "MissingSignature" | "InvalidAuthorization" => {
                "check VOLC_SECRETKEY (the signature did not match)"
            }
            "InvalidAccessKey" | "MissingAuthenticationToken" => {
                "check VOLC_ACCESSKEY (the provider does not know this access key)"
            }
            c if c.starts_with("AccessDenied") => {
                "the access key may not use this AppId or service: check its permissions"
            }
            c if c.starts_with("InvalidParameter") => {
                "the request was rejected as invalid: fix the campaign (AppId, ids, Content)"
            }
            _ => "the provider rejected the request; fix it before retrying",
        },
    }
}

impl ProviderError {
    /// Could the provider have acted on this request?
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Connect { .. } | ProviderError::NotSent { .. } => {
                ErrorClass::NotProcessed
            }
            ProviderError::Timeout { .. } | ProviderError::Dropped { .. } => ErrorClass::Unknown,
            ProviderError::Api(a) => classify(a.status, &a.code),
            ProviderError::BadResponse { status, .. } => match *status {
                429 | 503 => ErrorClass::NotProcessed,
                400..=499 => ErrorClass::Fatal,
                _ => ErrorClass::Unknown,
            },
            ProviderError::Build { .. } | ProviderError::Setup(_) => ErrorClass::Fatal,
        }
    }

    /// The provider's error code (`ResponseMetadata.Error.Code`), if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProviderError::Api(a) => Some(&a.code),
            _ => None,
        }
    }

    /// The HTTP status, if a response arrived.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Api(a) => Some(a.status),
            ProviderError::BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// HTTP 429 or a FlowLimitExceeded* code.
    pub fn is_rate_limited(&self) -> bool {
        self.http_status() == Some(429)
            || self
                .code()
                .is_some_and(|c| c.starts_with("FlowLimitExceeded"))
    }

    /// Access-related failures (credentials or permissions): the CLI maps these to exit 5.
    pub fn is_access(&self) -> bool {
        self.code().is_some_and(|c| {
            c.starts_with("AccessDenied")
                || matches!(
                    c,
                    "SignatureDoesNotMatch"
                        | "InvalidAccessKey"
                        | "MissingSignature"
                        | "MissingAuthenticationToken"
                        | "InvalidAuthorization"
                )
        })
    }
}

/// Map a transport error from reqwest to a classified error. Conservative: only errors that prove
/// the request was not (fully) sent are `NotProcessed`.
pub(crate) fn from_transport(endpoint: &str, e: &reqwest::Error) -> ProviderError {
    let endpoint = endpoint.to_string();
    let detail = chain(e);
    if e.is_connect() {
        return ProviderError::Connect { endpoint, detail };
    }
    if e.is_builder() {
        return ProviderError::Build {
            action: String::new(),
            detail,
        };
    }
    // Walk the chain for hyper's view: a canceled request was never written; a body write that
    // aborted means the provider never saw a complete request.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_canceled() || h.is_body_write_aborted() {
                return ProviderError::NotSent { endpoint, detail };
            }
        }
        src = s.source();
    }
    if e.is_timeout() {
        return ProviderError::Timeout { endpoint };
    }
    ProviderError::Dropped { endpoint, detail }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_issue() {
        assert_eq!(classify(400, "InvalidTimestamp"), ErrorClass::Clock);
        assert_eq!(classify(429, "FlowLimitExceeded"), ErrorClass::NotProcessed);
        assert_eq!(
            classify(200, "FlowLimitExceeded.QPSOverLimit"),
            ErrorClass::NotProcessed
        );
        assert_eq!(
            classify(503, "ServiceUnavailableTemp"),
            ErrorClass::NotProcessed
        );
        assert_eq!(classify(401, "SignatureDoesNotMatch"), ErrorClass::Fatal);
        assert_eq!(classify(401, "InvalidAccessKey"), ErrorClass::Fatal);
        assert_eq!(
            classify(403, "AccessDenied.NoPermissionForApp"),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(200, "InvalidParameter.UserCountOverLimit"),
            ErrorClass::Fatal
        );
        assert_eq!(classify(404, "Whatever"), ErrorClass::Fatal);
        assert_eq!(classify(500, "InternalError"), ErrorClass::Unknown);
        assert_eq!(classify(502, "FailToConnect"), ErrorClass::Unknown);
        assert_eq!(classify(504, "InternalServiceTimeout"), ErrorClass::Unknown);
        assert_eq!(classify(200, "SomethingNew"), ErrorClass::Unknown);
    }
}
