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
//! TLS: not yet. `sslmode=require` is refused when the URL is read (rather than failing at the
//! first connection); until TLS lands, use it on a trusted network or through a tunnel.
//!
//! Must not: print a password (errors name the URL without it), or be called on a runtime thread.

use std::path::{Path, PathBuf};
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
        "cannot read the state store's password from {path} (IMCAST_STATE_PASSWORD_FILE): {source}"
    )]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
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
        let me = PgUrl { url };
        // The client library's own parser checks the options (`?connect_timeout=5` …).
        let cfg = me
            .client_config()
            .map_err(|e| format!("not a PostgreSQL URL the client accepts: {e}"))?;
        if !matches!(
            cfg.get_ssl_mode(),
            postgres::config::SslMode::Disable | postgres::config::SslMode::Prefer
        ) {
            return Err(
                "sslmode=require: imcast does not speak TLS to PostgreSQL yet; use it on a trusted \
                 network or through a tunnel (sslmode=disable or prefer)"
                    .into(),
            );
        }
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

    /// The URL with its password, for the client library only.
    fn client_config(&self) -> Result<postgres::Config, postgres::Error> {
        self.url.as_str().parse()
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
    cfg.connect(postgres::NoTls).map_err(err)
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
            ("postgres://a@h/d?sslmode=require", "TLS"),
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
