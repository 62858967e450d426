//! TLS to the PostgreSQL state store (`sslmode=` and `sslrootcert=` in `[state] url`) against a
//! real server: a throwaway cluster with `ssl = on` and a certificate made here with the `openssl`
//! command (`imcast::testing::pg::{make_certs, tls_cluster}`), signed by a test CA for
//! `localhost` only. The session's encryption is read from the server (`pg_stat_ssl`), not assumed.

use imcast::pg::{connect, PgError, PgUrl};
use imcast::testing::pg::{make_certs, or_skip, test_db, tls_cluster, Certs};

/// Whether the server says this session is encrypted.
fn session_ssl(c: &mut postgres::Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .expect("pg_stat_ssl")
    .get(0)
}

/// Connect on a plain thread (the blocking client owns a runtime of its own).
fn try_connect(url: &str) -> Result<bool, PgError> {
    let url = PgUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| connect(&url).map(|mut c| session_ssl(&mut c)))
            .join()
            .expect("connect thread")
    })
}

fn refused(url: &str) -> String {
    match try_connect(url) {
        Ok(ssl) => panic!("{url}: connected (ssl {ssl}) but should be refused"),
        Err(e) => e.to_string(),
    }
}

fn certs(dir: &std::path::Path) -> Certs {
    make_certs(dir).unwrap_or_else(|e| panic!("making test certificates: {e}"))
}

#[test]
fn sslmodes_against_a_tls_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(dir.path());
    let Some(cluster) = or_skip(tls_cluster(&certs)) else {
        return;
    };
    let port = cluster.port;
    let ca = certs.ca.display().to_string();
    let other = certs.other_ca.display().to_string();
    let at = |host: &str, q: &str| format!("postgres://postgres@{host}:{port}/postgres?{q}");

    // require: encrypted, nothing verified (the test CA is trusted nowhere here).
    assert!(try_connect(&at("127.0.0.1", "sslmode=require")).expect("require"));
    // prefer (the default) takes TLS when offered; disable stays plain.
    assert!(try_connect(&at("127.0.0.1", "connect_timeout=10")).expect("prefer"));
    assert!(!try_connect(&at("127.0.0.1", "sslmode=disable")).expect("disable"));

    // verify-full with the right CA and the certificate's host name.
    assert!(try_connect(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}")
    ))
    .expect("verify-full with the test CA"));
    // verify-ca checks the chain only: any host name.
    assert!(try_connect(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}")
    ))
    .expect("verify-ca with the test CA"));

    // verify-full, another CA: refused, naming the host and the fix; the password never shown.
    let msg = refused(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}&password=s3cret-pw"),
    ));
    assert!(
        msg.contains("localhost")
            && msg.contains("sslmode=verify-full")
            && msg.contains("not signed by a CA imcast trusts")
            && msg.contains("sslrootcert"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret-pw"), "{msg}");
    // verify-full without sslrootcert: the built-in public roots do not know the test CA.
    let msg = refused(&at("localhost", "sslmode=verify-full"));
    assert!(msg.contains("add sslrootcert="), "{msg}");
    // verify-full, right CA, wrong host name (the certificate names only `localhost`).
    let msg = refused(&at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(
        msg.contains("not issued for the host name 127.0.0.1")
            && msg.contains("verify-ca")
            && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    // require with a root certificate checks the chain, as libpq does.
    let msg = refused(&at(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other}"),
    ));
    assert!(msg.contains("not signed by a CA imcast trusts"), "{msg}");
    // A root-certificate file that is not there: said so, with the path.
    let msg = refused(&at(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ));
    assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
}

#[test]
fn the_limiter_works_over_verified_tls() {
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs(dir.path());
    let Some(cluster) = or_skip(tls_cluster(&certs)) else {
        return;
    };
    let url = PgUrl::parse(&format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        certs.ca.display()
    ))
    .expect("url");
    let clock = imcast::clock::SimClock::new("2026-03-01T09:00:00Z".parse().expect("ts"));
    let limit = imcast::config::Limit::new(3, Duration::from_secs(60));
    let admitted = std::thread::scope(|s| {
        s.spawn(|| {
            let l = imcast::throttle::Limiter::open_postgres(
                &url,
                "batch",
                limit,
                imcast::throttle::LimiterOptions::default(),
                Arc::new(clock.clone()),
            )
            .expect("limiter over TLS");
            let first = l.try_acquire(2).expect("decide");
            let second = l.try_acquire(2).expect("decide");
            (first.is_ok(), second.is_ok())
        })
        .join()
        .expect("thread")
    });
    assert_eq!(admitted, (true, false), "2 of 3 admitted, the next 2 wait");
}

#[test]
fn require_against_a_server_without_tls_fails_clearly() {
    // The shared test server has no TLS.
    let Some(db) = test_db("no_tls") else { return };
    let (url, password) = db.toml_url();
    let url = PgUrl::parse(&url).expect("url");
    let plain = format!(
        "postgres://{}@{}:{}/{}?sslmode=require",
        url.user(),
        url.host(),
        url.port(),
        url.database()
    );
    let msg = refused(&plain);
    assert!(
        msg.contains("does not accept TLS")
            && msg.contains(&format!("{}:{}", url.host(), url.port()))
            && msg.contains("sslmode=require"),
        "{msg}"
    );
    // prefer falls back to plain text there (our own cluster trusts; an external server would
    // want its password, which this URL does not carry).
    if password.is_some() {
        return;
    }
    let prefer = plain.replace("sslmode=require", "sslmode=prefer");
    assert!(!try_connect(&prefer).expect("prefer falls back"));
}
