//! A throwaway PostgreSQL server for tests and benchmarks, so that `cargo test` alone does all the
//! set-up.
//!
//! [`test_db`] gives each test a fresh database (`CREATE DATABASE` with a unique name) on one
//! server shared by the whole test process (started on first use, a [`OnceLock`]). The server is
//! either named by [`URL_VAR`] (`IMCAST_TEST_PG_URL=postgres://user:pw@127.0.0.1:5432/postgres`;
//! the user needs `CREATEDB`; each test's database is dropped when the test ends), or, by
//! default, a cluster of its own:
//! - the binaries (`initdb`, `pg_ctl`, `postgres`) come from `PATH` or Debian's
//!   `/usr/lib/postgresql/<highest version>/bin`;
//! - `initdb --auth=trust` in a temporary folder (`imcast-pg-*`), run as the `postgres` user via
//!   `runuser` when the tests run as root (PostgreSQL refuses root), the folder chowned to it;
//! - fsync, synchronous commit and full-page writes off (nothing here needs to survive a crash
//!   of the machine); listening on 127.0.0.1 only, on a free port (retried if another process
//!   takes it first), its unix socket inside the folder;
//! - stopped at the end although Rust's test harness runs no destructor for a static: a watchdog
//!   child (a few lines of `sh`, in its own process group so a Ctrl-C of the tests does not kill
//!   it) waits for EOF on its stdin, whose other end only the test process holds (close-on-exec,
//!   so no other child inherits it); when that process exits in any way, `kill -9` included, the
//!   watchdog runs `pg_ctl stop -m immediate` (killing the postmaster if that fails) and removes
//!   the folder. A folder whose test process and watchdog are both gone (the machine was reset)
//!   is swept by the next start.
//!
//! Where PostgreSQL is not installed: under CI (`CI=true`) that is a failure (a panic saying so);
//! elsewhere [`test_db`] says so loudly on stderr (past the harness's capture, visible even when
//! the tests pass) and returns `None`, and the test returns early. A server that is installed but
//! fails to start is always a failure.
//!
//! For the TLS tests, [`tls_cluster`] starts another cluster of its own the same way with
//! `ssl = on` and a certificate, which [`make_certs`] makes with the `openssl` command (a test CA,
//! a server certificate it signs for `localhost` only, and an unrelated CA); it stops when the
//! [`LocalCluster`] is dropped (its watchdog's stdin closes) or the test process ends.
//!
//! Everything that talks to the server runs on a plain thread of its own, so the fixture works
//! from sync tests and `#[tokio::test]`s alike (the blocking client must not run on a runtime
//! thread).
//!
//! Must not: listen on anything but 127.0.0.1, or leave a server running after the test process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use crate::config::StateStore;
use crate::pg::PgUrl;

/// Names an external server to use instead of a cluster of the tests' own.
pub const URL_VAR: &str = "IMCAST_TEST_PG_URL";
/// The folder-name prefix of the tests' clusters (in the temporary directory).
pub const DIR_PREFIX: &str = "imcast-pg-";
/// The superuser of the tests' own cluster.
const SUPERUSER: &str = "postgres";

/// One test's fresh database.
pub struct TestDb {
    url: PgUrl,
    name: String,
    /// Dropped at the end (an external server); a cluster of our own goes away whole.
    drop_after: bool,
}

impl TestDb {
    /// The database's URL (with the password, if [`URL_VAR`] gave one).
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state-store setting pointing at this database.
    pub fn store(&self) -> StateStore {
        StateStore::Postgres(self.url.clone())
    }

    /// The URL as `imcast.toml` may hold it (`[state] url`, no password), and the password a
    /// process needs in `PGPASSWORD` (an external server's; our own cluster trusts local
    /// connections).
    pub fn toml_url(&self) -> (String, Option<String>) {
        let (url, pw) = self.url.split_password();
        (url.to_string(), pw)
    }

    /// Run `f` with a fresh connection to this database, on a thread of its own.
    pub fn with_client<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        let url = self.url.clone();
        off_runtime(move || {
            let mut c = crate::pg::connect(&url).unwrap_or_else(|e| panic!("{e}"));
            f(&mut c)
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.drop_after {
            return;
        }
        if let Ok(server) = server() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name));
            let _ = server.admin(&sql);
        }
    }
}

/// A fresh database named after `label` on the shared server, or `None` when PostgreSQL is not
/// installed and `CI` is not set (said loudly on stderr). Panics when CI is set and there is no
/// PostgreSQL, or when the server cannot be started or the database created.
pub fn test_db(label: &str) -> Option<TestDb> {
    let server = match server() {
        Ok(s) => s,
        Err(Unavailable::NotInstalled(why)) => {
            let msg = format!(
                "POSTGRESQL TESTS NOT RUN: {why}. Install PostgreSQL (apt-get install -y postgresql) \
                 or name a server in {URL_VAR}. The PostgreSQL backends were NOT tested."
            );
            if in_ci() {
                panic!("{msg} CI is set, so this is a failure.");
            }
            static LOUD: Once = Once::new();
            LOUD.call_once(|| loud(&msg));
            return None;
        }
        Err(Unavailable::Failed(why)) => panic!("the test PostgreSQL server: {why}"),
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!("imcast_t{}_{n}_{clean}", std::process::id());
    server
        .admin(&format!("CREATE DATABASE {}", ident(&name)))
        .unwrap_or_else(|e| panic!("the test PostgreSQL server: CREATE DATABASE {name}: {e}"));
    Some(TestDb {
        url: server.url.with_database(&name),
        name,
        drop_after: server.local.is_none(),
    })
}

/// True under CI (`CI` set to anything but empty, `0` or `false`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Straight to the process's stderr, past the test harness's capture: always visible.
fn loud(msg: &str) {
    let line = "!".repeat(100);
    let _ = writeln!(std::io::stderr(), "\n{line}\n{msg}\n{line}\n");
}

/// Why there is no server.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// PostgreSQL is not installed (skip, or fail in CI).
    NotInstalled(String),
    /// It is, but the server could not be started or reached (always a failure).
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotInstalled(s) | Unavailable::Failed(s) => f.write_str(s),
        }
    }
}

/// The shared server.
pub struct Server {
    /// The maintenance database's URL (`postgres`, or the one [`URL_VAR`] names).
    pub url: PgUrl,
    /// Our own cluster (None: an external server).
    pub local: Option<LocalCluster>,
    admin: Mutex<Option<postgres::Client>>,
}

/// A cluster the tests started themselves.
pub struct LocalCluster {
    /// The temporary folder (data directory `data/`, socket, log `server.log`).
    pub dir: PathBuf,
    pub port: u16,
    /// Held, never written: the watchdog stops the server when this closes (process exit).
    _watchdog: std::process::ChildStdin,
}

impl Server {
    /// Run one statement on the maintenance database (on a thread of its own).
    fn admin(&self, sql: &str) -> Result<(), String> {
        let sql = sql.to_string();
        off_runtime(|| {
            let mut guard = self.admin.lock().unwrap_or_else(|p| p.into_inner());
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                *guard = Some(crate::pg::connect(&self.url).map_err(|e| e.to_string())?);
            }
            let c = guard.as_mut().ok_or("no connection")?;
            c.batch_execute(&sql).map_err(|e| e.to_string())
        })
    }
}

/// The server, started on first use.
pub fn server() -> Result<&'static Server, Unavailable> {
    static SERVER: OnceLock<Result<Server, Unavailable>> = OnceLock::new();
    SERVER
        .get_or_init(|| off_runtime(start))
        .as_ref()
        .map_err(Clone::clone)
}

/// Run `f` on a plain thread (no async runtime there) and wait for it.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    })
}

fn start() -> Result<Server, Unavailable> {
    if let Ok(u) = std::env::var(URL_VAR) {
        let url = PgUrl::parse(&u).map_err(|e| Unavailable::Failed(format!("{URL_VAR}: {e}")))?;
        let client =
            crate::pg::connect(&url).map_err(|e| Unavailable::Failed(format!("{URL_VAR}: {e}")))?;
        return Ok(Server {
            url,
            local: None,
            admin: Mutex::new(Some(client)),
        });
    }
    let bin = find_bin().ok_or_else(not_installed)?;
    let local = start_cluster(&bin, None).map_err(Unavailable::Failed)?;
    let url = PgUrl::parse(&format!(
        "postgres://{SUPERUSER}@127.0.0.1:{}/postgres",
        local.port
    ))
    .map_err(Unavailable::Failed)?;
    let client = crate::pg::connect(&url).map_err(|e| Unavailable::Failed(e.to_string()))?;
    Ok(Server {
        url,
        local: Some(local),
        admin: Mutex::new(Some(client)),
    })
}

fn not_installed() -> Unavailable {
    Unavailable::NotInstalled(
        "no initdb, pg_ctl and postgres on PATH or in /usr/lib/postgresql/*/bin".into(),
    )
}

/// Certificates for a TLS test (PEM files in one folder).
pub struct Certs {
    /// The test CA's certificate (trust it with `sslrootcert=`).
    pub ca: PathBuf,
    /// Another CA's certificate, which signed nothing the server holds.
    pub other_ca: PathBuf,
    /// The server's certificate (signed by `ca`, valid for `localhost` only) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Make [`Certs`] in `dir` with the `openssl` command (P-256 keys, valid two days).
pub fn make_certs(dir: &Path) -> Result<Certs, String> {
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(dir).stdin(Stdio::null());
        run(
            c,
            &format!("openssl {}", args.first().copied().unwrap_or("")),
        )
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "imcast test CA"), ("other_ca", "unrelated test CA")] {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args)?;
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| format!("server.ext: {e}"))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok(Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other_ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    })
}

/// A cluster of its own with TLS on (`ssl = on`, `certs`' server certificate and key), plain
/// connections still accepted (for `sslmode=disable`). Connect as `postgres` (trusted) to the
/// `postgres` database on 127.0.0.1 (`localhost`) at its port. Stops when dropped.
/// `NotInstalled` where PostgreSQL is not; see [`test_db`] for how tests treat that.
pub fn tls_cluster(certs: &Certs) -> Result<LocalCluster, Unavailable> {
    let bin = find_bin().ok_or_else(not_installed)?;
    off_runtime(|| start_cluster(&bin, Some(certs))).map_err(Unavailable::Failed)
}

/// `Some(v)`, or `None` after saying loudly that PostgreSQL is not installed (a panic under CI),
/// as [`test_db`] does.
pub fn or_skip<T>(r: Result<T, Unavailable>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Unavailable::NotInstalled(why)) => {
            let msg = format!(
                "POSTGRESQL TESTS NOT RUN: {why}. Install PostgreSQL (apt-get install -y postgresql). \
                 The PostgreSQL backends were NOT tested."
            );
            if in_ci() {
                panic!("{msg} CI is set, so this is a failure.");
            }
            loud(&msg);
            None
        }
        Err(Unavailable::Failed(why)) => panic!("the test PostgreSQL server: {why}"),
    }
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`: `PATH` first (symlinks resolved, so
/// the three come from one installation), then Debian's highest version.
pub fn find_bin() -> Option<PathBuf> {
    let complete = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let Ok(real) = std::fs::canonicalize(d.join("initdb")) else {
                continue;
            };
            if let Some(dir) = real.parent().filter(|d| complete(d)) {
                return Some(dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| complete(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command of the PostgreSQL installation, as the `postgres` user when we are root.
fn pg_cmd(bin: &Path, name: &str, as_postgres: bool, cwd: &Path) -> Command {
    let mut c = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(name));
        c
    } else {
        Command::new(bin.join(name))
    };
    // The tools look at the working directory; root's may be closed to `postgres`.
    c.current_dir(cwd).stdin(Stdio::null());
    // A client setting in the environment must not steer the tools.
    for v in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}): {}", out.status, text.trim()))
    }
}

/// The watchdog: waits for the test process to end (EOF on stdin), then stops the server and
/// removes the folder. Arguments: `$1` pg_ctl, `$2` data dir, `$3` folder, `$4` run-as user or "".
const WATCHDOG: &str = r#"
trap '' INT HUP
cat >/dev/null 2>&1
if [ -f "$2/postmaster.pid" ]; then
  pid=$(head -n 1 "$2/postmaster.pid")
  if [ -n "$4" ]; then
    runuser -u "$4" -- "$1" -D "$2" stop -m immediate -w -t 30 >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null
  else
    "$1" -D "$2" stop -m immediate -w -t 30 >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -rf "$3"
"#;

fn start_cluster(bin: &Path, tls: Option<&Certs>) -> Result<LocalCluster, String> {
    let root = is_root();
    // As root, /tmp: `postgres` must be able to reach the folder, and TMPDIR may be root's own.
    let tmp = if root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    sweep_stale(&tmp, bin, root);
    if root {
        run(
            {
                let mut c = Command::new("id");
                c.args(["-u", "postgres"]);
                c
            },
            "looking up the `postgres` user (running as root, the cluster must belong to it; \
             the postgresql package creates it)",
        )?;
    }
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(&tmp)
        .map_err(|e| format!("temporary folder in {}: {e}", tmp.display()))?
        .keep();
    std::fs::write(dir.join("owner"), std::process::id().to_string())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let data = dir.join("data");
    // The watchdog first: whatever happens next, the folder goes away with the test process.
    let mut watchdog = Command::new("sh");
    watchdog
        .args(["-c", WATCHDOG, "imcast-pg-watchdog"])
        .arg(bin.join("pg_ctl"))
        .arg(&data)
        .arg(&dir)
        .arg(if root { "postgres" } else { "" })
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        watchdog.process_group(0);
    }
    let mut child = watchdog
        .spawn()
        .map_err(|e| format!("starting the watchdog (sh): {e}"))?;
    let stdin = child.stdin.take().ok_or("the watchdog's stdin")?;
    // Never waited for: it outlives us on purpose (reaped by init).
    std::mem::forget(child);
    if root {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&dir);
                c
            },
            "chown postgres",
        )?;
    }
    let mut initdb = pg_cmd(bin, "initdb", root, &dir);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["--auth=trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
        .arg("--locale=C");
    run(initdb, "initdb")?;
    let mut conf = format!(
        "\n# imcast tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n\
         shared_buffers = 32MB\n",
        dir.display()
    );
    if let Some(certs) = tls {
        // The server's key must belong to the server's user and be readable by it alone.
        for (from, to) in [
            (&certs.server_cert, "server.crt"),
            (&certs.server_key, "server.key"),
        ] {
            let dest = dir.join(to);
            std::fs::copy(from, &dest).map_err(|e| format!("{}: {e}", from.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("{}: {e}", dest.display()))?;
            }
            if root {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&dest);
                run(c, "chown postgres")?;
            }
        }
        conf.push_str(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .map_err(|e| format!("postgresql.conf: {e}"))?;
    let log = dir.join("server.log");
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port().map_err(|e| format!("a free port on 127.0.0.1: {e}"))?;
        let mut pg_ctl = pg_cmd(bin, "pg_ctl", root, &dir);
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {port}"))
            .arg("start");
        match run(pg_ctl, "pg_ctl start") {
            Ok(_) => {
                return Ok(LocalCluster {
                    dir,
                    port,
                    _watchdog: stdin,
                })
            }
            Err(e) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                last = format!("{e}\n{}", tail.trim());
                // Another process took the port between our probe and the server's bind: retry.
                if !tail.contains("could not bind") && !tail.contains("already in use") {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// A port nobody listens on now (the server binds it a moment later; start retries if taken).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Remove clusters left by test processes that are gone and whose watchdog did not clean up
/// (the machine was reset mid-test, or the watchdog was killed).
fn sweep_stale(tmp: &Path, bin: &Path, root: bool) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let is_ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let owner = std::fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let gone = match owner {
            Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            // Being set up right now, or very old: only the latter.
            None => e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600)),
        };
        if !gone || !Path::new("/proc/self").exists() {
            continue;
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut c = pg_cmd(bin, "pg_ctl", root, tmp);
            c.arg("-D")
                .arg(&data)
                .args(["stop", "-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = c.status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
