//! The HTTP client for the three IM actions: serialize, sign, send, parse the envelope, classify.
//!
//! Invariants: one `reqwest::Client` per [`Client`] (connection reuse; `Client` is a cheap
//! clone); the body is serialized once per call and the exact bytes sent are the bytes signed;
//! X-Date comes from the injected clock, never the system clock directly; on InvalidTimestamp
//! the request is re-signed with a fresh X-Date exactly once. It never logs the Authorization
//! header or the secret; bodies are logged only with `--log-bodies`. It never retries anything
//! else: retry policy belongs to the sender, which knows whether a call is idempotent.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{self, ApiFailure, ErrorClass, ProviderError};
use super::sign::{self, SignInput};
use super::types::*;
use super::{ClientConfig, Credentials};
use crate::clock::{SharedClock, SystemClock};

/// The API version every action uses.
pub const API_VERSION: &str = "2020-12-01";
/// The signing service name.
pub const SERVICE: &str = "rtc";

/// A request as the client would send it (see [`Client::signed_request`]).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub url: url::Url,
    /// Every header, Host and Authorization included (never log these).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: url::Url,
    /// Host header value (with a non-default port).
    host: String,
    region: String,
    credentials: Credentials,
    clock: SharedClock,
}

/// The provider client. Clone is cheap (an `Arc`).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("region", &self.inner.region)
            .field("access_key_id", &self.inner.credentials.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on the system clock.
    pub fn new(cfg: ClientConfig) -> Result<Client, ProviderError> {
        Client::with_clock(cfg, Arc::new(SystemClock))
    }

    /// A client whose X-Date comes from `clock`.
    pub fn with_clock(cfg: ClientConfig, clock: SharedClock) -> Result<Client, ProviderError> {
        let host = match (cfg.endpoint.host_str(), cfg.endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(ProviderError::Setup(format!(
                    "endpoint {} has no host",
                    cfg.endpoint
                )))
            }
        };
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .user_agent(concat!("imcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Setup(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoint: cfg.endpoint,
                host,
                region: cfg.region,
                credentials: cfg.credentials,
                clock,
            }),
        })
    }

    /// The endpoint this client sends to.
    pub fn endpoint(&self) -> &url::Url {
        &self.inner.endpoint
    }

    pub async fn batch_send(
        &self,
        r: &BatchSendMessageRequest,
    ) -> Result<BatchSendMessageResult, ProviderError> {
        self.call("BatchSendMessage", r).await
    }

    pub async fn send_message(
        &self,
        r: &SendMessageRequest,
    ) -> Result<SendMessageResult, ProviderError> {
        self.call("SendMessage", r).await
    }

    pub async fn p2p_send(
        &self,
        r: &P2pSendMessageRequest,
    ) -> Result<P2pSendMessageResult, ProviderError> {
        self.call("P2PSendMessage", r).await
    }

    /// Build the exact request (URL, headers, body) the client would send now, signed. Used by
    /// the interop test to have the official SDK re-derive the signature.
    pub fn signed_request<T: Serialize>(
        &self,
        action: &str,
        req: &T,
    ) -> Result<SignedRequest, ProviderError> {
        let body = request_body(action, req)?;
        let (url, headers) = self.sign_for(action, &body);
        Ok(SignedRequest { url, headers, body })
    }

    fn sign_for(&self, action: &str, body: &[u8]) -> (url::Url, Vec<(String, String)>) {
        let inner = &self.inner;
        let query = vec![
            ("Action".to_string(), action.to_string()),
            ("Version".to_string(), API_VERSION.to_string()),
        ];
        let mut url = inner.endpoint.clone();
        url.query_pairs_mut()
            .clear()
            .append_pair("Action", action)
            .append_pair("Version", API_VERSION);
        let x_date = sign::format_x_date(inner.clock.now());
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        let signed = sign::sign(&SignInput {
            access_key_id: &inner.credentials.access_key_id,
            secret_key: inner.credentials.secret_key.expose_secret(),
            session_token: inner
                .credentials
                .session_token
                .as_ref()
                .map(|t| t.expose_secret()),
            method: "POST",
            host: &inner.host,
            path: url.path(),
            query: &query,
            headers: &headers,
            body,
            x_date: &x_date,
            region: &inner.region,
            service: SERVICE,
        });
        (url, signed.headers_out)
    }

    async fn call<Req: Serialize, Res: DeserializeOwned>(
        &self,
        action: &str,
        req: &Req,
    ) -> Result<Res, ProviderError> {
        let body = request_body(action, req)?;
        if crate::logging::bodies_enabled() {
            tracing::debug!(action, body = %String::from_utf8_lossy(&body), "provider request body");
        }
        match self.attempt(action, &body).await {
            Err(e) if e.class() == ErrorClass::Clock => {
                tracing::warn!(action, "provider says the request time is off (InvalidTimestamp); re-signing once with a fresh X-Date");
                self.attempt(action, &body).await
            }
            other => other,
        }
    }

    async fn attempt<Res: DeserializeOwned>(
        &self,
        action: &str,
        body: &[u8],
    ) -> Result<Res, ProviderError> {
        let inner = &self.inner;
        let (url, headers) = self.sign_for(action, body);
        let mut rb = inner.http.post(url);
        for (k, v) in &headers {
            // reqwest sets Host from the URL; sending it twice would be wrong.
            if k.eq_ignore_ascii_case("host") {
                continue;
            }
            rb = rb.header(k.as_str(), v.as_str());
        }
        let started = crate::clock::Stopwatch::start();
        let endpoint = inner.endpoint.as_str();
        let resp = rb
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| error::from_transport(endpoint, &e))
            .inspect_err(|e| {
                tracing::debug!(action, class = %e.class(), error = %e, "provider transport error")
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            // The status line arrived, so the request was sent: a failure now is unknown.
            let e = error::from_transport(endpoint, &e);
            match e {
                ProviderError::Timeout { .. } => e,
                other => ProviderError::Dropped {
                    endpoint: endpoint.to_string(),
                    detail: other.to_string(),
                },
            }
        })?;
        tracing::debug!(
            action,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider response"
        );
        if crate::logging::bodies_enabled() {
            tracing::debug!(action, body = %String::from_utf8_lossy(&bytes), "provider response body");
        }
        parse_envelope(action, status, &bytes)
    }
}

/// The exact body bytes of a request: what is signed, sent, and shown by `imcast preview`.
/// Fails (nothing is sent) when a value is out of the provider's range (see [`super::wire`]).
pub fn request_body<T: Serialize>(action: &str, req: &T) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(req).map_err(|e| ProviderError::Build {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

/// Parse a response envelope: success means no `ResponseMetadata.Error` (or one that is present
/// but empty: no code, code number 0), whatever the status. Read leniently (see [`super::wire`]).
pub fn parse_envelope<Res: DeserializeOwned>(
    action: &str,
    status: u16,
    bytes: &[u8],
) -> Result<Res, ProviderError> {
    // `Result` kept as its raw text and read once into `Res` (not through a `Value` tree: a
    // BatchSendMessage answer names every receiver, and building the tree first measured about
    // half of this function's cost).
    let env: Envelope<Box<serde_json::value::RawValue>> = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => {
            return Err(ProviderError::BadResponse {
                action: action.to_string(),
                status,
                detail: format!("not a provider envelope: {e}"),
            })
        }
    };
    if let Some(err) = env.response_metadata.error.filter(|e| !e.is_empty()) {
        return Err(ProviderError::Api(Box::new(ApiFailure {
            action: action.to_string(),
            status,
            code: err.code.trim().to_string(),
            code_n: err.code_n,
            message: err.message,
            request_id: env.response_metadata.request_id,
        })));
    }
    if !(200..300).contains(&status) {
        return Err(ProviderError::BadResponse {
            action: action.to_string(),
            status,
            detail: "an error status without ResponseMetadata.Error".to_string(),
        });
    }
    let Some(result) = env.result.filter(|r| r.get().trim() != "null") else {
        return Err(ProviderError::BadResponse {
            action: action.to_string(),
            status,
            detail: "neither Result nor Error in the response".to_string(),
        });
    };
    serde_json::from_str(result.get()).map_err(|e| ProviderError::BadResponse {
        action: action.to_string(),
        status,
        detail: format!("unexpected Result shape: {e}"),
    })
}
