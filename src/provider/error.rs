//! What went wrong talking to the provider, classified by one question: could the provider have
//! acted on the request?
//!
//! Invariants: every [`ProviderError`] has exactly one [`ErrorClass`]; anything that does not
//! prove the request was not processed is [`ErrorClass::Unknown`] (the safe default for calls
//! without an idempotency key). Codes are read case-insensitively into one [`CodeKind`] (by
//! `CodeN` when `Code` is empty). An `Error` answer below HTTP 500 proves the request was refused,
//! so a code imcast does not recognize there is [`ErrorClass::Fatal`] (the run stops, the code
//! shown verbatim with the RequestId); at 5xx it stays `Unknown`. Display strings say what
//! happened and what to do; they never contain a secret, a header or a request body.

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
    /// `Error.Code`, verbatim (may be empty when only `CodeN` was given).
    pub code: String,
    pub code_n: Option<i64>,
    pub message: String,
    /// `ResponseMetadata.RequestId` (empty when the reply had none).
    pub request_id: String,
}

impl ApiFailure {
    /// The code to show and record: `Code` verbatim, or `CodeN` when `Code` is empty.
    pub fn shown_code(&self) -> String {
        match (self.code.trim().is_empty(), self.code_n) {
            (false, _) | (true, None) => self.code.clone(),
            (true, Some(n)) => format!("CodeN {n}"),
        }
    }

    /// What the code means (by `Code`, or by `CodeN` when `Code` is empty).
    pub fn kind(&self) -> CodeKind {
        if self.code.trim().is_empty() {
            if let Some(name) = self.code_n.and_then(code_n_name) {
                return code_kind(name);
            }
        }
        code_kind(&self.code)
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: HTTP {} {}",
            self.action,
            self.status,
            self.shown_code()
        )?;
        if !self.message.trim().is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if self.request_id.trim().is_empty() {
            f.write_str(" (the reply carried no request id)")?;
        } else {
            write!(f, " (request id {})", self.request_id)?;
        }
        write!(f, "; {}", hint_for(self.status, self.kind(), &self.code))
    }
}

/// What a provider error code is known to mean. Codes are compared case-insensitively (the
/// docs are not consistent about case), after trimming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// `InvalidTimestamp`: the local clock is off.
    Clock,
    /// `FlowLimitExceeded*`, `AccountFlowLimitExceeded*`: rate limited, whatever the HTTP status.
    RateLimited,
    /// `ServiceUnavailableTemp`: not processed, try later.
    Unavailable,
    /// Credentials or permissions: `InvalidCredential`, `InvalidSecretToken`, `LackPolicy`,
    /// `AccessDenied*`, `SignatureDoesNotMatch`, `InvalidAccessKey`, `MissingAuthenticationToken`,
    /// `MissingSignature`, `InvalidAuthorization` and the access-key codes of the IAM service.
    Access,
    /// The request itself is wrong: `InvalidParameter*`, `MissingParameter`, `MissingRequestInfo`,
    /// `InvalidActionOrVersion`, `ServiceNotFound`.
    Invalid,
    /// The provider failed on its side and may have acted: `InternalError*`, `FailToConnect`,
    /// `InternalServiceTimeout`.
    ServerSide,
    /// A code imcast does not know (or none at all).
    Unrecognized,
}

/// Access-related codes (lower case). The gateway's own (`docs.byteplus.com` common error codes,
/// PROTOCOL.md) plus the IAM access-key codes a gateway may pass on.
const ACCESS_CODES: [&str; 17] = [
    "invalidcredential",
    "invalidsecrettoken",
    "lackpolicy",
    "accessdenied",
    "accessdeniedexception",
    "signaturedoesnotmatch",
    "invalidaccesskey",
    "invalidaccesskeyid",
    "invalidaccesskeystatus",
    "accesskeynotexist",
    "accesskeyisexpire",
    "missingauthenticationtoken",
    "missingsignature",
    "invalidauthorization",
    "invalidsecuritytoken",
    "sessiontokeninvalid",
    "invalidsessiontoken",
];

/// Classify a code by name, case-insensitively.
pub fn code_kind(code: &str) -> CodeKind {
    let c = code.trim().to_ascii_lowercase();
    let family = |prefix: &str| c == prefix || c.starts_with(&format!("{prefix}."));
    if c.is_empty() {
        return CodeKind::Unrecognized;
    }
    if c == "invalidtimestamp" {
        return CodeKind::Clock;
    }
    if c.contains("flowlimitexceeded") {
        return CodeKind::RateLimited;
    }
    if c == "serviceunavailabletemp" {
        return CodeKind::Unavailable;
    }
    if family("accessdenied") || ACCESS_CODES.contains(&c.as_str()) {
        return CodeKind::Access;
    }
    if family("invalidparameter")
        || matches!(
            c.as_str(),
            "missingparameter"
                | "missingrequestinfo"
                | "invalidactionorversion"
                | "servicenotfound"
        )
    {
        return CodeKind::Invalid;
    }
    if family("internalerror") || matches!(c.as_str(), "failtoconnect" | "internalservicetimeout") {
        return CodeKind::ServerSide;
    }
    CodeKind::Unrecognized
}

/// The gateway's documented `CodeN`s, for an `Error` that carries only the number.
pub fn code_n_name(n: i64) -> Option<&'static str> {
    Some(match n {
        100002 => "MissingParameter",
        100003 => "MissingAuthenticationToken",
        100004 => "MissingRequestInfo",
        100005 => "MissingSignature",
        100006 => "InvalidTimestamp",
        100007 => "ServiceNotFound",
        100008 => "InvalidActionOrVersion",
        100009 => "InvalidAccessKey",
        100010 => "SignatureDoesNotMatch",
        100012 => "LackPolicy",
        100013 => "AccessDenied",
        100014 => "InternalError",
        100015 => "FailToConnect",
        100016 => "InternalServiceTimeout",
        _ => return None,
    })
}

/// Classify an API error: by code first, then by HTTP status. A code imcast does not recognize is
/// fatal for the run (shown verbatim with its request id), except with a 5xx status, where the
/// provider may have acted on the request: that stays an unknown outcome, never resent blindly.
pub fn classify(status: u16, code: &str) -> ErrorClass {
    class_of(status, code_kind(code))
}

fn class_of(status: u16, kind: CodeKind) -> ErrorClass {
    match kind {
        CodeKind::Clock => ErrorClass::Clock,
        CodeKind::RateLimited | CodeKind::Unavailable => ErrorClass::NotProcessed,
        _ if status == 429 || status == 503 => ErrorClass::NotProcessed,
        CodeKind::Access | CodeKind::Invalid => ErrorClass::Fatal,
        CodeKind::ServerSide => ErrorClass::Unknown,
        CodeKind::Unrecognized if status >= 500 => ErrorClass::Unknown,
        CodeKind::Unrecognized => ErrorClass::Fatal,
    }
}

/// What to tell the user for an API error.
pub fn hint(status: u16, code: &str) -> &'static str {
    hint_for(status, code_kind(code), code)
}

/// The words every access error carries (README and tests name them).
pub const ACCESS_HINT: &str = "check your access key and its policy";

fn hint_for(status: u16, kind: CodeKind, code: &str) -> &'static str {
    let c = code.trim().to_ascii_lowercase();
    let class = class_of(status, kind);
    match (kind, class) {
        (CodeKind::Clock, _) => "the local clock is off: fix the system time (NTP)",
        (CodeKind::RateLimited, _) => {
            "rate limited: slow down (the throttle is per access key), then retry"
        }
        (_, ErrorClass::NotProcessed) if status == 429 => {
            "rate limited: slow down (the throttle is per access key), then retry"
        }
        (_, ErrorClass::NotProcessed) => "the provider is temporarily unavailable; retry later",
        (CodeKind::Access, _) => match c.as_str() {
            "signaturedoesnotmatch" | "missingsignature" | "invalidauthorization" => {
                "access refused: check your access key and its policy (the signature did not match: check VOLC_SECRETKEY for this VOLC_ACCESSKEY)"
            }
            "invalidaccesskey" | "invalidaccesskeyid" | "accesskeynotexist" | "missingauthenticationtoken" | "invalidaccesskeystatus" | "accesskeyisexpire" => {
                "access refused: check your access key and its policy (the provider does not accept this VOLC_ACCESSKEY)"
            }
            "invalidcredential" | "invalidsecrettoken" | "invalidsecuritytoken" | "sessiontokeninvalid" | "invalidsessiontoken" => {
                "access refused: check your access key and its policy (the credential or VOLC_SESSION_TOKEN is not valid or has expired)"
            }
            _ => {
                "access refused: check your access key and its policy (it must allow the rtc service for this AppId)"
            }
        },
        (CodeKind::Invalid, _) => {
            "the request was rejected as invalid: fix the campaign (AppId, ids, Content)"
        }
        (CodeKind::Unrecognized, ErrorClass::Fatal) => {
            "imcast does not know this error code, so the run stops: search for the code and give the request id to Volcengine support"
        }
        (_, ErrorClass::Unknown) => {
            "the provider may or may not have processed the request; do not resend blindly"
        }
        _ => "the provider rejected the request; fix it before retrying",
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
            ProviderError::Api(a) => class_of(a.status, a.kind()),
            ProviderError::BadResponse { status, .. } => match *status {
                429 | 503 => ErrorClass::NotProcessed,
                400..=499 => ErrorClass::Fatal,
                _ => ErrorClass::Unknown,
            },
            ProviderError::Build { .. } | ProviderError::Setup(_) => ErrorClass::Fatal,
        }
    }

    /// The provider's error code (`ResponseMetadata.Error.Code`, verbatim), if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProviderError::Api(a) if !a.code.trim().is_empty() => Some(&a.code),
            _ => None,
        }
    }

    /// The code to record in the report: `Code` verbatim, or `CodeN N` when only the number came.
    pub fn shown_code(&self) -> Option<String> {
        match self {
            ProviderError::Api(a) => Some(a.shown_code()).filter(|c| !c.trim().is_empty()),
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

    /// HTTP 429, or a `FlowLimitExceeded*` / `AccountFlowLimitExceeded` code at any status.
    pub fn is_rate_limited(&self) -> bool {
        match self {
            ProviderError::Api(a) => a.status == 429 || a.kind() == CodeKind::RateLimited,
            other => other.http_status() == Some(429),
        }
    }

    /// Access-related failures (credentials or permissions): the CLI maps these to exit 5.
    pub fn is_access(&self) -> bool {
        matches!(self, ProviderError::Api(a) if a.kind() == CodeKind::Access)
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

/// The codes the send engine records on `failed` recipients of a request the provider never
/// processed when no provider code came with it (`send`): the HTTP status (`HTTP429`,
/// `HTTP503`) or, for a connection that failed before the request was fully sent, the class.
pub const NOT_PROCESSED_CODES: [&str; 3] = ["HTTP429", "HTTP503", "NotProcessed"];

/// Whether a recipient whose final status is `failed` with `code` may be sent again by
/// `imcast run --retry-failed` (after a person fixed the cause). Retryable: the provider said it
/// did not deliver, so a resend cannot duplicate —
/// - `FailedReceiver`: a BatchSendMessage answer listed the receiver as not delivered (the run
///   already re-queued it `retry.max_attempts` times);
/// - codes classified [`ErrorClass::NotProcessed`] by their name: `FlowLimitExceeded*` /
///   `AccountFlowLimitExceeded*` (rate limited) and `ServiceUnavailableTemp`, after the run's
///   retries ran out;
/// - [`NOT_PROCESSED_CODES`]: the same without a provider code (HTTP 429/503, connect failures).
///
/// Not retryable: every other code — a P2P per-user code other than `SUCCESS`/`NOT_ONLINE`, a
/// code imcast does not know (its status is not recorded with it, so a 429/503 answer with an
/// unrecognized code is not retried either), or no code. `unknown` outcomes are not `failed`:
/// they stay behind `--resend-unknown`.
pub fn retryable_failure(code: &str) -> bool {
    let c = code.trim();
    c.eq_ignore_ascii_case("FailedReceiver")
        || NOT_PROCESSED_CODES.contains(&c)
        || matches!(code_kind(c), CodeKind::RateLimited | CodeKind::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, code_n: Option<i64>) -> ProviderError {
        ProviderError::Api(Box::new(ApiFailure {
            action: "BatchSendMessage".into(),
            status,
            code: code.into(),
            code_n,
            message: "m".into(),
            request_id: "20240515160313C0FFEE".into(),
        }))
    }

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
        assert_eq!(classify(500, "InternalError.Timeout"), ErrorClass::Unknown);
        assert_eq!(classify(502, "FailToConnect"), ErrorClass::Unknown);
        assert_eq!(classify(504, "InternalServiceTimeout"), ErrorClass::Unknown);
    }

    #[test]
    fn rate_limits_are_rate_limits_at_any_status() {
        for (status, code) in [
            (200, "FlowLimitExceeded"),
            (400, "FlowLimitExceeded.QPSOverLimit"),
            (403, "AccountFlowLimitExceeded"),
            (500, "accountflowlimitexceeded"),
            (200, "FLOWLIMITEXCEEDED.TaskNumberOverLimit"),
            (429, "SomethingNew"),
        ] {
            let e = api(status, code, None);
            assert!(e.is_rate_limited(), "{status} {code}");
            assert_eq!(e.class(), ErrorClass::NotProcessed, "{status} {code}");
            assert!(e.to_string().contains("rate limited"), "{e}");
            assert!(!e.is_access());
        }
    }

    #[test]
    fn access_codes_say_check_the_key_and_its_policy() {
        for (status, code) in [
            (401, "InvalidCredential"),
            (401, "InvalidSecretToken"),
            (403, "LackPolicy"),
            (403, "AccessDenied"),
            (403, "AccessDenied.ServiceNotEnabled"),
            (403, "accessdenied.noPermissionForApp"),
            (401, "SignatureDoesNotMatch"),
            (401, "signaturedoesnotmatch"),
            (401, "InvalidAccessKey"),
            (401, "MissingAuthenticationToken"),
            (401, "MissingSignature"),
            (400, "InvalidAuthorization"),
            (200, "InvalidCredential"),
        ] {
            let e = api(status, code, None);
            assert!(e.is_access(), "{status} {code}");
            assert_eq!(e.class(), ErrorClass::Fatal, "{status} {code}");
            let s = e.to_string();
            assert!(s.contains(ACCESS_HINT), "{s}");
            assert!(s.contains("20240515160313C0FFEE"), "{s}");
        }
        assert!(!api(400, "InvalidParameter", None).is_access());
        assert!(!api(403, "AccessDeniedButNotReally", None).is_access());
    }

    #[test]
    fn an_unrecognized_code_is_fatal_and_shown_verbatim_with_its_request_id() {
        let e = api(200, "Brand.NewCode", None);
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert!(!e.is_access() && !e.is_rate_limited());
        assert_eq!(e.code(), Some("Brand.NewCode"));
        let s = e.to_string();
        assert!(s.contains("HTTP 200 Brand.NewCode: m"), "{s}");
        assert!(s.contains("request id 20240515160313C0FFEE"), "{s}");
        assert!(s.contains("imcast does not know this error code"), "{s}");
        assert_eq!(api(400, "Brand.NewCode", None).class(), ErrorClass::Fatal);
        // A 5xx may have been acted on: unknown outcome, never resent blindly.
        assert_eq!(api(500, "Brand.NewCode", None).class(), ErrorClass::Unknown);
    }

    #[test]
    fn code_n_alone_is_classified_and_shown() {
        let e = api(401, "", Some(100010));
        assert!(e.is_access());
        assert_eq!(e.code(), None);
        assert_eq!(e.shown_code().as_deref(), Some("CodeN 100010"));
        assert!(e.to_string().contains("HTTP 401 CodeN 100010"), "{e}");
        assert_eq!(api(400, "", Some(100006)).class(), ErrorClass::Clock);
        let e = api(400, "", None);
        assert_eq!(e.class(), ErrorClass::Fatal);
        let e = ProviderError::Api(Box::new(ApiFailure {
            action: "SendMessage".into(),
            status: 400,
            code: "InvalidParameter".into(),
            code_n: None,
            message: String::new(),
            request_id: String::new(),
        }));
        assert!(
            e.to_string().contains("the reply carried no request id"),
            "{e}"
        );
    }

    #[test]
    fn retryable_failures_are_the_codes_that_prove_nothing_was_delivered() {
        for c in [
            "FailedReceiver",
            "failedreceiver",
            "FlowLimitExceeded",
            "AccountFlowLimitExceeded.Batch",
            "ServiceUnavailableTemp",
            "HTTP429",
            "HTTP503",
            "NotProcessed",
        ] {
            assert!(super::retryable_failure(c), "{c}");
        }
        for c in [
            "",
            "InvalidParameter",
            "AccessDenied",
            "InternalError",
            "HTTP500",
            "USER_BLOCKED",
            "MissingFromAnswer",
            "Unknown",
        ] {
            assert!(!super::retryable_failure(c), "{c}");
        }
    }
}
