//! The Volcengine OpenAPI "V4" request signer (HMAC-SHA256), used by the client to sign and by the
//! mock provider to verify, so both sides share one implementation of the canonical form.
//!
//! Invariants: the output for a given [`SignInput`] is a pure function of it (no clock, no
//! randomness: `x_date` is an input); it reproduces the official Python SDK byte for byte (the nine
//! vectors in `tests/data/sign_vectors.json`). This module does no I/O and never logs: its inputs
//! hold the secret key. The canonical query/URI encoding is hand-written on top of
//! `percent-encoding` because the SDK's rules (RFC 3986 unreserved set, stable sort by raw name,
//! repeated names in request order) are not what `url`'s form encoder does.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Everything except `A-Z a-z 0-9 - _ . ~` is escaped.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path encoding keeps `/` as well.
const PATH_SET: &AsciiSet = &QUERY_SET.remove(b'/');

/// The algorithm name in the string to sign and the Authorization header.
pub const ALGORITHM: &str = "HMAC-SHA256";
/// The scope terminator (AWS uses `aws4_request`).
pub const TERMINATOR: &str = "request";
/// Content type the SDK adds (and signs) to a non-GET request that has none.
pub const DEFAULT_POST_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// One request to sign. `headers` are the caller's own headers (not Host, X-Date,
/// X-Content-Sha256, X-Security-Token or Authorization: the signer adds those).
#[derive(Clone, Copy)]
pub struct SignInput<'a> {
    pub access_key_id: &'a str,
    pub secret_key: &'a str,
    pub session_token: Option<&'a str>,
    pub method: &'a str,
    /// Host as sent, with the port if any (`:80`/`:443` are dropped in the canonical form).
    pub host: &'a str,
    /// Raw (unencoded) path.
    pub path: &'a str,
    /// Raw (unencoded) query parameters in request order.
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// `YYYYMMDDTHHMMSSZ`.
    pub x_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl std::fmt::Debug for SignInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInput")
            .field("access_key_id", &self.access_key_id)
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("x_date", &self.x_date)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The signature and every intermediate value (the vectors check all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub x_date: String,
    pub x_content_sha256: String,
    pub canonical_uri: String,
    pub canonical_query: String,
    pub canonical_request: String,
    pub canonical_request_sha256: String,
    pub credential_scope: String,
    pub string_to_sign: String,
    pub signed_headers: String,
    pub signature: String,
    pub authorization: String,
    /// Headers to send: the caller's, plus Host, X-Date, X-Content-Sha256, X-Security-Token,
    /// Authorization (and a default Content-Type on a POST without one).
    pub headers_out: Vec<(String, String)>,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // new_from_slice accepts keys of any length for HMAC; the error case cannot happen.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC takes any key length (hmac crate docs); kept out of line so the hot path stays clean.
    panic!("HMAC-SHA256 rejected a key, which the hmac crate never does")
}

/// The signing key: HMAC chain over short date, region, service, "request" (no secret prefix).
pub fn signing_key(secret: &str, short_date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(secret.as_bytes(), short_date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, TERMINATOR.as_bytes())
}

/// Percent-encode a path, keeping `/`.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    utf8_percent_encode(path, PATH_SET).to_string()
}

/// Canonical query: stable sort by raw name (byte order), names and values RFC 3986-encoded.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut q: Vec<&(String, String)> = query.iter().collect();
    q.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::new();
    for (i, (k, v)) in q.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(
            out,
            "{}={}",
            utf8_percent_encode(k, QUERY_SET),
            utf8_percent_encode(v, QUERY_SET)
        );
    }
    out
}

/// Host as signed: `:80` and `:443` dropped, any other port kept.
pub fn canonical_host(host: &str) -> &str {
    host.strip_suffix(":80")
        .or_else(|| host.strip_suffix(":443"))
        .unwrap_or(host)
}

/// Whether the SDK signs a header of this (lower-case) name.
pub fn is_signed_header(lower: &str) -> bool {
    lower == "content-type" || lower == "content-md5" || lower == "host" || lower.starts_with("x-")
}

/// `YYYYMMDDTHHMMSSZ` for a timestamp.
pub fn format_x_date(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Parse an `X-Date` value.
pub fn parse_x_date(s: &str) -> Option<jiff::Timestamp> {
    if s.len() != 16 || !s.is_ascii() {
        return None;
    }
    jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", s)
        .ok()?
        .to_datetime()
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// The parts of a canonical request a verifier rebuilds from what it received.
pub struct Canonical<'a> {
    pub method: &'a str,
    pub canonical_uri: String,
    pub canonical_query: String,
    /// (lower-case name, value) for each signed header, sorted by name.
    pub signed: Vec<(String, String)>,
    pub body_sha256: String,
}

impl Canonical<'_> {
    fn signed_header_names(&self) -> String {
        self.signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";")
    }

    fn request(&self) -> String {
        let mut headers = String::new();
        for (k, v) in &self.signed {
            let _ = writeln!(headers, "{k}:{v}");
        }
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.canonical_uri,
            self.canonical_query,
            headers,
            self.signed_header_names(),
            self.body_sha256
        )
    }
}

/// Sign a canonical request: returns (canonical request, its sha256, scope, string to sign, signature).
pub fn sign_canonical(
    c: &Canonical<'_>,
    secret: &str,
    x_date: &str,
    region: &str,
    service: &str,
) -> (String, String, String, String, String) {
    let canonical_request = c.request();
    let cr_hash = sha256_hex(canonical_request.as_bytes());
    let short_date = x_date.get(..8).unwrap_or(x_date);
    let scope = format!("{short_date}/{region}/{service}/{TERMINATOR}");
    let string_to_sign = format!("{ALGORITHM}\n{x_date}\n{scope}\n{cr_hash}");
    let key = signing_key(secret, short_date, region, service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    (canonical_request, cr_hash, scope, string_to_sign, signature)
}

/// Sign a request the way the official SDK does.
pub fn sign(input: &SignInput<'_>) -> Signed {
    let body_sha = sha256_hex(input.body);
    let mut headers_out: Vec<(String, String)> = input.headers.to_vec();
    let has_ct = headers_out
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !input.method.eq_ignore_ascii_case("GET") && !has_ct {
        headers_out.push((
            "Content-Type".to_string(),
            DEFAULT_POST_CONTENT_TYPE.to_string(),
        ));
    }
    headers_out.push(("Host".to_string(), input.host.to_string()));
    headers_out.push(("X-Date".to_string(), input.x_date.to_string()));
    if let Some(tok) = input.session_token.filter(|t| !t.is_empty()) {
        headers_out.push(("X-Security-Token".to_string(), tok.to_string()));
    }
    headers_out.push(("X-Content-Sha256".to_string(), body_sha.clone()));

    let mut signed: Vec<(String, String)> = headers_out
        .iter()
        .filter_map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            if !is_signed_header(&lower) {
                return None;
            }
            // Values are signed verbatim, as the SDK does (callers send them without padding).
            let v = if lower == "host" {
                canonical_host(v).to_string()
            } else {
                v.clone()
            };
            Some((lower, v))
        })
        .collect();
    signed.sort_by(|a, b| a.0.cmp(&b.0));

    let c = Canonical {
        method: input.method,
        canonical_uri: canonical_uri(input.path),
        canonical_query: canonical_query(input.query),
        signed,
        body_sha256: body_sha.clone(),
    };
    let signed_headers = c.signed_header_names();
    let (canonical_request, canonical_request_sha256, credential_scope, string_to_sign, signature) =
        sign_canonical(
            &c,
            input.secret_key,
            input.x_date,
            input.region,
            input.service,
        );
    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        input.access_key_id
    );
    headers_out.push(("Authorization".to_string(), authorization.clone()));
    Signed {
        x_date: input.x_date.to_string(),
        x_content_sha256: body_sha,
        canonical_uri: c.canonical_uri,
        canonical_query: c.canonical_query,
        canonical_request,
        canonical_request_sha256,
        credential_scope,
        string_to_sign,
        signed_headers,
        signature,
        authorization,
        headers_out,
    }
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub access_key_id: String,
    pub short_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parse `HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/request, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(v: &str) -> Option<AuthHeader> {
    let rest = v.trim().strip_prefix(ALGORITHM)?.trim_start();
    let mut cred = None;
    let mut sh = None;
    let mut sig = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(x) = part.strip_prefix("Credential=") {
            cred = Some(x);
        } else if let Some(x) = part.strip_prefix("SignedHeaders=") {
            sh = Some(x);
        } else if let Some(x) = part.strip_prefix("Signature=") {
            sig = Some(x);
        }
    }
    let cred: Vec<&str> = cred?.split('/').collect();
    if cred.len() != 5 || cred[4] != TERMINATOR {
        return None;
    }
    let signed_headers: Vec<String> = sh?
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if signed_headers.is_empty() {
        return None;
    }
    Some(AuthHeader {
        access_key_id: cred[0].to_string(),
        short_date: cred[1].to_string(),
        region: cred[2].to_string(),
        service: cred[3].to_string(),
        signed_headers,
        signature: sig?.to_string(),
    })
}

/// Why a received request's signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request carries no Authorization header")]
    MissingAuthorization,
    #[error("the Authorization header is malformed")]
    BadAuthorization,
    #[error("the signed header {0} is missing from the request")]
    MissingSignedHeader(String),
    #[error("the signed headers must include host and x-date")]
    IncompleteSignedHeaders,
    #[error("X-Date is missing or malformed")]
    BadDate,
    #[error("the credential scope date does not match X-Date")]
    ScopeDate,
    #[error("X-Content-Sha256 does not match the body")]
    BodyHash,
    #[error("the signature does not match")]
    Signature,
}

/// A received request as a verifier sees it.
pub struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// All headers received (any case).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Received<'_> {
    fn header(&self, lower: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(lower))
            .map(|(_, v)| v.as_str())
    }
}

/// Verify a received request against `secret` (the caller looked the secret up by
/// `auth.access_key_id`). Checks the body hash, the scope date, and the signature.
pub fn verify(r: &Received<'_>, auth: &AuthHeader, secret: &str) -> Result<(), VerifyError> {
    if !auth.signed_headers.iter().any(|h| h == "host")
        || !auth.signed_headers.iter().any(|h| h == "x-date")
    {
        return Err(VerifyError::IncompleteSignedHeaders);
    }
    let x_date = r.header("x-date").ok_or(VerifyError::BadDate)?;
    if parse_x_date(x_date).is_none() {
        return Err(VerifyError::BadDate);
    }
    if x_date.get(..8) != Some(auth.short_date.as_str()) {
        return Err(VerifyError::ScopeDate);
    }
    let body_sha = sha256_hex(r.body);
    if let Some(claimed) = r.header("x-content-sha256") {
        if !claimed.trim().eq_ignore_ascii_case(&body_sha) {
            return Err(VerifyError::BodyHash);
        }
    }
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let v = r
            .header(name)
            .ok_or_else(|| VerifyError::MissingSignedHeader(name.clone()))?;
        let v = if name == "host" {
            canonical_host(v).to_string()
        } else {
            v.to_string()
        };
        signed.push((name.clone(), v));
    }
    signed.sort_by(|a, b| a.0.cmp(&b.0));
    let c = Canonical {
        method: r.method,
        canonical_uri: canonical_uri(r.path),
        canonical_query: canonical_query(r.query),
        signed,
        body_sha256: body_sha,
    };
    let (_, _, _, _, expected) = sign_canonical(&c, secret, x_date, &auth.region, &auth.service);
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Signature)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_date_round_trips() {
        let t: jiff::Timestamp = "2024-01-02T03:04:05Z".parse().expect("valid");
        assert_eq!(format_x_date(t), "20240102T030405Z");
        assert_eq!(parse_x_date("20240102T030405Z"), Some(t));
        assert_eq!(parse_x_date("2024-01-02"), None);
    }

    #[test]
    fn host_port_rules() {
        assert_eq!(canonical_host("a.com:443"), "a.com");
        assert_eq!(canonical_host("a.com:80"), "a.com");
        assert_eq!(canonical_host("127.0.0.1:8080"), "127.0.0.1:8080");
    }

    #[test]
    fn authorization_parses() {
        let a = parse_authorization("HMAC-SHA256 Credential=AK/20240102/cn-north-1/rtc/request, SignedHeaders=host;x-date, Signature=ab").expect("parses");
        assert_eq!(a.access_key_id, "AK");
        assert_eq!(a.signed_headers, vec!["host", "x-date"]);
        assert!(parse_authorization("AWS4 Credential=x").is_none());
    }
}
