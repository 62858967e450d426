//! Connecting to the PostgreSQL state store (`imcast.toml` `[state] url`): the URL, where its
//! password comes from, and the connection.
//!
//! Owns: [`PgUrl`] (a `postgres://user@host:port/db` URL, checked once when it is read; its
//! password, when one was given programmatically, is never displayed, logged or serialized), the
//! password lookup, [`connect`], and the store's schema ([`schema`]: versioned migrations, a newer
//! schema refused).
//!
//! The password never comes from `imcast.toml` (the config rejects one there: the file lives in
//! git). [`connect`] looks, in order, at `IMCAST_STATE_PASSWORD_FILE` (a file holding only the
//! password, e.g. a mounted secret; an unreadable file is an error, not a silent fallback),
//! `PGPASSWORD`, then the password file `PGPASSFILE` or `~/.pgpass` with libpq's rules (the first
//! line matching `host:port:database:user` wins, `*` matches anything, `\` escapes `:` and `\`, the
//! file is ignored with a warning when its group or others may read it). The client library
//! (tokio-postgres, under the blocking `postgres` crate) reads none of these itself and no
//! maintained crate does that lookup, so the few lines are here.
//!
//! The client is the blocking `postgres` crate (sfackler's, over tokio-postgres): it fits the
//! callers, which already do their database work on tokio's blocking pool. It runs a small
//! runtime of its own, so a [`postgres::Client`] must be created, used and dropped off the async
//! runtime's threads ([`connect`] says so; [`OffRuntime`] drops one safely anywhere).
//!
//! TLS ([`SslMode`], libpq's `sslmode=` names and meanings, read from the URL): `disable` (plain),
//! `prefer` (the default: TLS when the server offers it, unverified, else plain), `require`
//! (TLS or no connection; encrypts without checking who answers, as libpq does, unless
//! `sslrootcert=` is given, which makes it `verify-ca`, as libpq does when it finds a root
//! certificate), `verify-ca` (the server's certificate chains to a trusted CA) and `verify-full`
//! (that, and the certificate is valid for the URL's host name). Trusted CAs: the PEM file
//! `sslrootcert=/path/ca.pem` (a private CA; read when connecting), else the Mozilla roots
//! compiled in (`webpki-roots`). TLS is rustls (with the `ring` provider, as reqwest's), through
//! `tokio-postgres-rustls`; the client library understands only disable/prefer/require, so the
//! verification modes are ours: the URL's `sslmode` and `sslrootcert` are taken out before it sees
//! the URL, and the certificate check is a rustls verifier chosen by mode. A TLS failure is
//! [`PgError::Tls`]: the host, the mode and what to do.
//!
//! Must not: print a password (errors name the URL without it), be called on a runtime thread,
//! or fall back to plain text when the mode is `require` or stronger.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod schema;

/// How long [`connect`] waits for the server unless the URL says `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors connecting to the state store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to the PostgreSQL state store {target}: {source}")]
    Connect {
        target: String,
        source: postgres::Error,
    },
    #[error(
        "TLS to the PostgreSQL state store {target} failed (sslmode={mode}): {detail}; {hint}"
    )]
    Tls {
        target: String,
        mode: SslMode,
        detail: String,
        hint: String,
    },
    #[error(
        "cannot read the CA certificates for the PostgreSQL state store {target} from \
         sslrootcert={path}: {why}; name a PEM file holding your CA's certificate"
    )]
    RootCert {
        target: String,
        path: PathBuf,
        why: String,
    },
    #[error(
        "cannot read the state store's password from {path} (IMCAST_STATE_PASSWORD_FILE): {source}"
    )]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a connection uses TLS: `sslmode=` in the URL, with libpq's names and meanings (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked `postgres://user@host:port/db` URL. `Display`, `Debug` and `Serialize` show it
/// without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: url::Url,
}

impl PgUrl {
    /// Parse and check `s`. A password is accepted here (tests and programs may pass one); the
    /// config refuses one in `imcast.toml` with [`PgUrl::has_password`].
    pub fn parse(s: &str) -> Result<PgUrl, String> {
        let url = url::Url::parse(s.trim()).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "the URL must start with postgres:// (found {}://)",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host (write postgres://user@host:5432/db)".into());
        }
        if url.username().is_empty() {
            return Err("the URL names no user (write postgres://user@host:5432/db)".into());
        }
        let db = url.path().trim_start_matches('/');
        if db.is_empty() || db.contains('/') {
            return Err(
                "the URL must name one database after the host (postgres://user@host:5432/db)"
                    .into(),
            );
        }
        for (k, v) in url.query_pairs() {
            match &*k {
                "sslmode" if SslMode::parse(&v).is_none() => {
                    return Err(format!(
                        "sslmode={v}: write one of disable, prefer, require, verify-ca, verify-full"
                    ))
                }
                "sslrootcert" if v.is_empty() => {
                    return Err(
                        "sslrootcert= names no file (write sslrootcert=/path/ca.pem)".into(),
                    )
                }
                _ => {}
            }
        }
        let me = PgUrl { url };
        // The client library's own parser checks the other options (`?connect_timeout=5` …).
        me.client_config()
            .map_err(|e| format!("not a PostgreSQL URL the client accepts: {e}"))?;
        Ok(me)
    }

    /// Whether the URL carries a password (`user:secret@` or `?password=`).
    pub fn has_password(&self) -> bool {
        url_has_password(&self.url)
    }

    /// The same server and user, another database.
    pub fn with_database(&self, db: &str) -> PgUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{db}"));
        PgUrl { url }
    }

    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.url.port().unwrap_or(5432)
    }

    pub fn user(&self) -> String {
        percent_encoding::percent_decode_str(self.url.username())
            .decode_utf8_lossy()
            .into_owned()
    }

    pub fn database(&self) -> String {
        percent_encoding::percent_decode_str(self.url.path().trim_start_matches('/'))
            .decode_utf8_lossy()
            .into_owned()
    }

    /// The URL's `sslmode` (libpq's default, `prefer`, when it names none).
    pub fn ssl_mode(&self) -> SslMode {
        self.query("sslmode")
            .and_then(|v| SslMode::parse(&v))
            .unwrap_or(SslMode::Prefer)
    }

    /// The URL's `sslrootcert` (a PEM file of trusted CA certificates), if any.
    pub fn ssl_root_cert(&self) -> Option<PathBuf> {
        self.query("sslrootcert").map(PathBuf::from)
    }

    fn query(&self, key: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The URL with its password, for the client library only: without the TLS options it does
    /// not know (ours: [`SslMode`]), its own `sslmode` set to what carries ours.
    fn client_config(&self) -> Result<postgres::Config, postgres::Error> {
        let mut u = self.url.clone();
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        let mut cfg: postgres::Config = u.as_str().parse()?;
        cfg.ssl_mode(match self.ssl_mode() {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        });
        Ok(cfg)
    }

    /// The same URL with no password at all (what `imcast.toml` may hold), and the password it
    /// had, if any (for `PGPASSWORD` or a password file).
    pub fn split_password(&self) -> (PgUrl, Option<String>) {
        let mut u = self.url.clone();
        let pw = u.password().map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        });
        let _ = u.set_password(None);
        let mut qp = None;
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter_map(|(k, v)| {
                if k == "password" {
                    qp = Some(v.into_owned());
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        if qp.is_some() {
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
        }
        (PgUrl { url: u }, pw.or(qp))
    }

    /// The URL without its password (for messages).
    pub fn redacted(&self) -> String {
        let mut u = self.url.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        if u.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

impl serde::Serialize for PgUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Whether `s`, read as a URL, carries a password (checked before anything that could echo it).
pub fn str_has_password(s: &str) -> bool {
    url::Url::parse(s.trim()).is_ok_and(|u| url_has_password(&u))
}

fn url_has_password(u: &url::Url) -> bool {
    u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password")
}

/// The environment [`connect`] reads (a seam for tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// The password for `url` from the sources the module doc lists, in that order.
pub fn password(url: &PgUrl, env: &dyn Env) -> Result<Option<String>, PgError> {
    if let Some(p) = url.url.password() {
        return Ok(Some(
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned(),
        ));
    }
    if let Some(path) = env.var("IMCAST_STATE_PASSWORD_FILE") {
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| PgError::PasswordFile { path, source })?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(p) = env.var("PGPASSWORD") {
        return Ok(Some(p));
    }
    let file = env
        .var("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".pgpass")));
    let Some(file) = file else { return Ok(None) };
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(None);
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %file.display(),
                "password file ignored: others may read it (chmod 0600 it, as libpq requires)"
            );
            return Ok(None);
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    Ok(pgpass_lookup(
        &text,
        url.host(),
        &url.port().to_string(),
        &url.database(),
        &url.user(),
    ))
}

/// The password of the first line of a `.pgpass` text matching the four fields.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        // Split on unescaped ':' into five fields, unescaping `\:` and `\\`.
        let mut fields: Vec<(String, bool)> = vec![(String::new(), false)];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == ':' && fields.len() < 5 {
                fields.push((String::new(), false));
                continue;
            }
            let (cur, escaped) = fields.last_mut()?;
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                        *escaped = true;
                    }
                }
                _ => cur.push(c),
            }
        }
        if fields.len() != 5 {
            continue;
        }
        let matches =
            |(f, escaped): &(String, bool), want: &str| (f == "*" && !escaped) || f == want;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return Some(fields[4].0.clone());
        }
    }
    None
}

/// Connect to `url` (blocking: call it off the async runtime, e.g. in `spawn_blocking`), with
/// the password from the environment ([`password`]), [`CONNECT_TIMEOUT`] unless the URL sets one,
/// and `application_name=imcast`.
pub fn connect(url: &PgUrl) -> Result<postgres::Client, PgError> {
    connect_with(url, &ProcessEnv)
}

/// [`connect`] with an explicit environment.
pub fn connect_with(url: &PgUrl, env: &dyn Env) -> Result<postgres::Client, PgError> {
    let err = |source| PgError::Connect {
        target: url.redacted(),
        source,
    };
    let mut cfg = url.client_config().map_err(err)?;
    if cfg.get_password().is_none() {
        if let Some(p) = password(url, env)? {
            cfg.password(p);
        }
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("imcast");
    }
    // Notices ("relation already exists, skipping") are not worth a line.
    cfg.notice_callback(|n| tracing::debug!(notice = %n.message(), "postgres"));
    let mode = url.ssl_mode();
    if mode == SslMode::Disable {
        return cfg.connect(postgres::NoTls).map_err(err);
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(url)?);
    cfg.connect(tls)
        .map_err(|source| tls_error(url, mode, source).unwrap_or_else(err))
}

/// The rustls client configuration for `url`'s mode and trusted CAs.
fn tls_config(url: &PgUrl) -> Result<rustls::ClientConfig, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls {
            target: url.redacted(),
            mode: url.ssl_mode(),
            detail: e.to_string(),
            hint: "this build's TLS library refused its own settings".into(),
        })?;
    let root_cert = url.ssl_root_cert();
    let mode = match url.ssl_mode() {
        // As libpq: `require` with a root certificate checks the chain.
        SslMode::Require if root_cert.is_some() => SslMode::VerifyCa,
        m => m,
    };
    if matches!(mode, SslMode::Prefer | SslMode::Require) {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::Unverified(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &root_cert {
        Some(path) => {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let bad = |why: String| PgError::RootCert {
                target: url.redacted(),
                path: path.clone(),
                why,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| PgError::Tls {
                target: url.redacted(),
                mode,
                detail: e.to_string(),
                hint: "check the certificates sslrootcert= names".into(),
            })?;
    Ok(if mode == SslMode::VerifyCa {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::AnyName(webpki)))
            .with_no_client_auth()
    } else {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    })
}

/// `source` as a [`PgError::Tls`] with what to do, when TLS is what failed.
fn tls_error(
    url: &PgUrl,
    mode: SslMode,
    source: postgres::Error,
) -> Result<PgError, postgres::Error> {
    use rustls::{CertificateError, Error as Tls};
    let Some(cause) = tls::cause(&source) else {
        return Err(source);
    };
    let (host, port) = (url.host(), url.port());
    let hint = match &cause {
        tls::Cause::NoTls => format!(
            "the server at {host}:{port} does not accept TLS connections: turn on `ssl` in its \
             postgresql.conf, or, only on a network you trust, set sslmode=prefer or disable in \
             [state] url"
        ),
        tls::Cause::Rustls(Tls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's certificate is not issued for the host name {host} of [state] url: \
             write the name the certificate names as the url's host (sslmode=verify-full checks \
             it), or use sslmode=verify-ca to check only the CA"
        ),
        tls::Cause::Rustls(Tls::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => match url.ssl_root_cert() {
            Some(p) => format!(
                "the certificate of the server at {host}:{port} is not signed by a CA imcast \
                 trusts: the file sslrootcert= names ({}) holds no CA that signed it; name your \
                 CA's certificate there",
                p.display()
            ),
            None => format!(
                "the certificate of the server at {host}:{port} is not signed by a CA imcast \
                 trusts: add sslrootcert=/path/ca.pem (your CA's certificate) to [state] url"
            ),
        },
        tls::Cause::Rustls(Tls::InvalidCertificate(_)) => format!(
            "the certificate of the server at {host}:{port} was refused: renew or fix it on the \
             server"
        ),
        tls::Cause::Rustls(_) | tls::Cause::Other(_) => format!(
            "check that {host}:{port} is a PostgreSQL server with TLS turned on, and the \
             sslmode and sslrootcert of [state] url"
        ),
    };
    let detail = match cause {
        tls::Cause::NoTls => "the server does not support TLS".to_string(),
        tls::Cause::Rustls(e) => e.to_string(),
        tls::Cause::Other(s) => s,
    };
    Ok(PgError::Tls {
        target: url.redacted(),
        mode,
        detail,
        hint,
    })
}

/// The rustls pieces: certificate verifiers for the modes rustls has no ready one for, and
/// finding what failed in a client error.
mod tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `prefer` and `require`: any certificate (libpq's meaning: encrypted, not authenticated),
    /// but the handshake's signatures are still checked.
    #[derive(Debug)]
    pub(super) struct Unverified(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for Unverified {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain to a trusted CA, whatever host name the certificate names.
    #[derive(Debug)]
    pub(super) struct AnyName(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                r => r,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// What failed in a TLS connection attempt.
    pub(super) enum Cause {
        /// The server answered the TLS request with "no".
        NoTls,
        Rustls(Error),
        /// Some other failure during the handshake (its text).
        Other(String),
    }

    /// The TLS failure in `e`'s chain of causes, if the client says TLS failed.
    pub(super) fn cause(e: &postgres::Error) -> Option<Cause> {
        let text = e.to_string();
        if !text.contains("TLS") {
            return None;
        }
        let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(err) = next {
            if let Some(r) = err.downcast_ref::<Error>() {
                return Some(Cause::Rustls(r.clone()));
            }
            // tokio-rustls hands rustls's error over inside an io::Error, whose `source` skips it.
            if let Some(r) = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Error>())
            {
                return Some(Cause::Rustls(r.clone()));
            }
            if err.to_string().contains("server does not support TLS") {
                return Some(Cause::NoTls);
            }
            next = err.source();
        }
        if text.contains("server does not support TLS") {
            return Some(Cause::NoTls);
        }
        Some(Cause::Other(text))
    }
}

/// A value (a [`postgres::Client`]) that must not be dropped on an async runtime's thread: its
/// drop blocks on the client's own runtime, which tokio forbids there. Dropped inside a runtime
/// context, it is handed to a short-lived plain thread instead.
pub struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffRuntime<T> {
    pub fn new(v: T) -> Self {
        OffRuntime(Some(v))
    }
}

impl<T: Send + 'static> std::ops::Deref for OffRuntime<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Only `drop` takes the value out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl<T: Send + 'static> std::ops::DerefMut for OffRuntime<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        let Some(v) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            // A blocking-pool thread would do too, but it cannot be told from a worker here.
            let _ = std::thread::Builder::new()
                .name("imcast-pg-drop".into())
                .spawn(move || drop(v));
        } else {
            drop(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    #[test]
    fn parses_and_checks_urls() {
        let u = PgUrl::parse("postgres://imcast@db.internal:6432/imcast_state").expect("valid");
        assert_eq!(
            (u.host(), u.port(), u.user().as_str(), u.database().as_str()),
            ("db.internal", 6432, "imcast", "imcast_state")
        );
        assert!(!u.has_password());
        assert_eq!(
            PgUrl::parse("postgresql://a@h/d").expect("valid").port(),
            5432
        );
        for (bad, says) in [
            ("mysql://a@h/d", "postgres://"),
            ("postgres://h:5432/d", "no user"),
            ("postgres://a@h:5432", "one database"),
            ("postgres://a@h/d/e", "one database"),
            ("postgres://a@h/d?sslmode=allow", "verify-full"),
            ("postgres://a@h/d?sslrootcert=", "sslrootcert"),
            ("postgres://a@h/d?bogus=1", "client accepts"),
            ("not a url", "not a URL"),
        ] {
            let e = PgUrl::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_password_is_never_shown() {
        for s in [
            "postgres://imcast:s3cret@h:5432/d",
            "postgres://imcast@h:5432/d?password=s3cret",
        ] {
            let u = PgUrl::parse(s).expect("valid");
            assert!(u.has_password());
            for shown in [
                u.to_string(),
                format!("{u:?}"),
                serde_json::to_string(&u).expect("json"),
            ] {
                assert!(!shown.contains("s3cret"), "{shown}");
                assert!(shown.contains("***"), "{shown}");
            }
        }
        let u = PgUrl::parse("postgres://imcast:s3cret@h:5432/d").expect("valid");
        assert_eq!(
            password(&u, &MapEnv(HashMap::new()))
                .expect("pw")
                .as_deref(),
            Some("s3cret")
        );
        assert_eq!(u.with_database("other").database(), "other");
    }

    #[test]
    fn split_password_leaves_a_url_the_config_accepts() {
        for (s, want_url) in [
            (
                "postgres://imcast:s%3Acret@h:5432/d",
                "postgres://imcast@h:5432/d",
            ),
            (
                "postgres://imcast@h:5432/d?password=s:cret&connect_timeout=5",
                "postgres://imcast@h:5432/d?connect_timeout=5",
            ),
            (
                "postgres://imcast@h:5432/d?password=s:cret",
                "postgres://imcast@h:5432/d",
            ),
        ] {
            let (u, pw) = PgUrl::parse(s).expect("valid").split_password();
            assert_eq!(pw.as_deref(), Some("s:cret"), "{s}");
            assert!(!u.has_password(), "{s}");
            assert_eq!(u.to_string(), want_url);
        }
        let (u, pw) = PgUrl::parse("postgres://imcast@h/d")
            .expect("valid")
            .split_password();
        assert_eq!(
            (u.to_string().as_str(), pw),
            ("postgres://imcast@h/d", None)
        );
    }

    #[test]
    fn pgpass_follows_libpq() {
        let text = "# comment\n\
                    other:5432:*:imcast:wrong\n\
                    db\\:x:*:state:imcast:esc\\:aped\\\\\n\
                    db.internal:6432:*:imcast:right\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "db.internal", "6432", "state", "imcast").as_deref(),
            Some("right")
        );
        assert_eq!(
            pgpass_lookup(text, "db:x", "1", "state", "imcast").as_deref(),
            Some("esc:aped\\")
        );
        assert_eq!(
            pgpass_lookup(text, "elsewhere", "1", "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pgpass_lookup("h:1:d:u\n", "h", "1", "d", "u"),
            None,
            "4 fields"
        );
    }

    #[test]
    fn password_sources_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let u = PgUrl::parse("postgres://imcast@db:5432/state").expect("valid");
        let pgpass = dir.path().join("pgpass");
        std::fs::write(&pgpass, "db:5432:state:imcast:from-pgpass\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").expect("write");
        let mut env = HashMap::new();
        env.insert("PGPASSFILE", pgpass.display().to_string());
        let pw = |env: &HashMap<&'static str, String>| {
            password(&u, &MapEnv(env.clone())).expect("password")
        };
        assert_eq!(pw(&env).as_deref(), Some("from-pgpass"));
        env.insert("PGPASSWORD", "from-env".into());
        assert_eq!(pw(&env).as_deref(), Some("from-env"));
        env.insert("IMCAST_STATE_PASSWORD_FILE", file.display().to_string());
        assert_eq!(pw(&env).as_deref(), Some("from-file"), "newline trimmed");
        env.insert(
            "IMCAST_STATE_PASSWORD_FILE",
            dir.path().join("missing").display().to_string(),
        );
        let e = password(&u, &MapEnv(env.clone())).expect_err("unreadable file");
        assert!(e.to_string().contains("IMCAST_STATE_PASSWORD_FILE"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let mut env = HashMap::new();
            env.insert("PGPASSFILE", pgpass.display().to_string());
            assert_eq!(pw(&env), None, "a readable-by-others file is ignored");
        }
    }
}
