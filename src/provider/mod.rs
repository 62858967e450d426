//! The Volcengine RTC IM server API client: credentials, V4 signing ([`sign`]), typed requests and
//! responses ([`types`]) read leniently and written strictly ([`wire`]), the HTTP client
//! ([`client`]) and error classification ([`error`]).
//!
//! Invariants: secrets live in `secrecy` types and are exposed only to the signer; nothing here
//! logs a secret, an Authorization header, or (without `--log-bodies`) a body. This module does
//! not decide retries or throttling: it reports, per call, whether the provider could have acted
//! on the request, and the sender decides.

pub mod client;
pub mod error;
pub mod sign;
pub mod types;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub use client::Client;
pub use error::{retryable_failure, ApiFailure, ErrorClass, ProviderError};
pub use types::*;

/// `cn-north-1` host.
pub const ENDPOINT_CN_NORTH_1: &str = "https://rtc.volcengineapi.com";
/// `ap-southeast-1` host.
pub const ENDPOINT_AP_SOUTHEAST_1: &str = "https://open-ap-singapore-1.volcengineapi.com";

/// The endpoint for a known region.
pub fn region_endpoint(region: &str) -> Option<url::Url> {
    let s = match region {
        "cn-north-1" => ENDPOINT_CN_NORTH_1,
        "ap-southeast-1" => ENDPOINT_AP_SOUTHEAST_1,
        _ => return None,
    };
    url::Url::parse(s).ok()
}

/// An access key and its secret (and a session token for temporary credentials).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_key: SecretString,
    pub session_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Why credentials could not be read from the environment.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no access key: set VOLC_ACCESSKEY to your Volcengine access key id")]
    MissingAccessKey,
    #[error("no secret key: set VOLC_SECRETKEY, or VOLC_SECRETKEY_FILE to a file holding it")]
    MissingSecretKey,
    #[error("could not read VOLC_SECRETKEY_FILE {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VOLC_SECRETKEY_FILE {path} is empty")]
    EmptySecretFile { path: PathBuf },
}

impl Credentials {
    pub fn new(ak: impl Into<String>, sk: impl Into<String>, token: Option<String>) -> Self {
        Credentials {
            access_key_id: ak.into(),
            secret_key: SecretString::from(sk.into()),
            session_token: token.filter(|t| !t.is_empty()).map(SecretString::from),
        }
    }

    /// VOLC_ACCESSKEY + (VOLC_SECRETKEY | VOLC_SECRETKEY_FILE), optional VOLC_SESSION_TOKEN.
    pub fn from_env() -> Result<Credentials, CredentialsError> {
        Credentials::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Credentials::from_env`], reading variables through `get` (tests).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, CredentialsError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let ak = non_empty("VOLC_ACCESSKEY").ok_or(CredentialsError::MissingAccessKey)?;
        let sk = match non_empty("VOLC_SECRETKEY") {
            Some(sk) => sk,
            None => {
                let path = PathBuf::from(
                    non_empty("VOLC_SECRETKEY_FILE").ok_or(CredentialsError::MissingSecretKey)?,
                );
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    CredentialsError::SecretFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                let sk = text.trim().to_string();
                if sk.is_empty() {
                    return Err(CredentialsError::EmptySecretFile { path });
                }
                sk
            }
        };
        Ok(Credentials::new(
            ak.trim(),
            sk,
            non_empty("VOLC_SESSION_TOKEN"),
        ))
    }
}

/// How to reach the provider.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: url::Url,
    pub region: String,
    pub credentials: Credentials,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Defaults: 5 s to connect, 30 s per request.
    pub fn new(endpoint: url::Url, region: impl Into<String>, credentials: Credentials) -> Self {
        ClientConfig {
            endpoint,
            region: region.into(),
            credentials,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn credentials_from_lookup_names_what_to_set() {
        let e = Credentials::from_lookup(|_| None).expect_err("nothing set");
        assert!(e.to_string().contains("VOLC_ACCESSKEY"));
        let e = Credentials::from_lookup(|k| (k == "VOLC_ACCESSKEY").then(|| "AK".to_string()))
            .expect_err("no secret");
        assert!(e.to_string().contains("VOLC_SECRETKEY_FILE"));
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sk");
        std::fs::write(&p, "s3cret\n").expect("write");
        let c = Credentials::from_lookup(|k| match k {
            "VOLC_ACCESSKEY" => Some("AK".into()),
            "VOLC_SECRETKEY_FILE" => Some(p.display().to_string()),
            _ => None,
        })
        .expect("reads the file");
        assert_eq!(c.secret_key.expose_secret(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
