//! A private PostgreSQL cluster for tests: a fresh temp directory (a copy of an `initdb` template
//! made once, see [`template`]), `postgres` listening only on a Unix socket in that directory,
//! password (SCRAM) authentication for the role `driftless` with a random password per cluster,
//! stopped and deleted when the [`Cluster`] is dropped.
//!
//! Tests run as root and PostgreSQL refuses to, so the server runs as the `postgres` account
//! (Debian's package creates it) through `setpriv`, which execs it directly (the child is the
//! postmaster) with a parent-death signal: a test process that dies without dropping the cluster
//! still takes its server with it. Run as another user, the server runs as that user.
//!
//! Without PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`, Debian's layout, else
//! `initdb` on `PATH`) [`Cluster::start`] returns `None` after printing why, and the test skips;
//! with `DRIFTLESS_REQUIRE_TOOLS=1` (CI, which installs `postgresql`) it fails instead. Any other
//! failure to start is a test failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role the tests (and the gateways they start) log in as.
pub const ROLE: &str = "driftless";

/// A running private cluster.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    password: String,
    /// Whether the server runs as the `postgres` account (the test runs as root).
    as_postgres: bool,
    server: Option<Child>,
    /// Further `-c name=value` server settings, kept across restarts.
    settings: Vec<String>,
    /// Databases created so far, for unique names.
    created: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The directory holding `initdb`, `postgres` and `psql`, if PostgreSQL is installed.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = driftless_core::Env::from_process().get("PATH")?.to_owned();
    std::env::split_paths(&path)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
}

fn is_root() -> bool {
    // `/proc/self` belongs to the process's effective user.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0
}

fn random_password() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The password `initdb` gives [`ROLE`] in the template; replaced at each cluster's start.
const TEMPLATE_PASSWORD: &str = "driftless-template";

/// An `initdb`-made data directory to copy, made once per machine, user and PostgreSQL build
/// (`initdb` is the slow part of a start): made in a temp directory and renamed into place, so
/// concurrent tests never see half of one.
fn template(bin: &std::path::Path, as_postgres: bool) -> PathBuf {
    let build = std::fs::metadata(bin.join("initdb"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"));
    let name = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("pg");
    let path = PathBuf::from(format!("/tmp/driftless-pg-template-{name}-{build}-{uid}"));
    if path.join("PG_VERSION").is_file() {
        return path;
    }
    let work = tempfile::Builder::new()
        .prefix("driftless-pg-initdb-")
        .tempdir_in("/tmp")
        .expect("create a temp directory for initdb");
    let pwfile = work.path().join("pwfile");
    std::fs::write(&pwfile, format!("{TEMPLATE_PASSWORD}\n")).expect("write the password file");
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(work.path())
            .status()
            .expect("run chown");
        assert!(status.success(), "chown of the initdb directory failed");
    }
    let data = work.path().join("data");
    let mut initdb = if as_postgres {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin.join("initdb"));
        c
    } else {
        Command::new(bin.join("initdb"))
    };
    let out = initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            ROLE,
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .args(["--no-sync", "--no-instructions"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test may have won the race; either template is as good.
    let _ = std::fs::rename(&data, &path);
    assert!(
        path.join("PG_VERSION").is_file(),
        "no initdb template at {}",
        path.display()
    );
    path
}

impl Cluster {
    /// Starts a fresh cluster, or `None` (printed) when PostgreSQL is not installed and
    /// `DRIFTLESS_REQUIRE_TOOLS` is not `1`.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(&[])
    }

    /// [`Cluster::start`] with further server settings (`name=value`, each passed as `-c`), e.g.
    /// `shared_preload_libraries=pg_stat_statements` for the bench.
    pub fn start_with(settings: &[&str]) -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            let env = driftless_core::Env::from_process();
            assert!(
                env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
                "DRIFTLESS_REQUIRE_TOOLS=1 but PostgreSQL is not installed (no initdb in \
                 /usr/lib/postgresql/*/bin or on PATH); install Debian's `postgresql` package"
            );
            eprintln!(
                "skipping: PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or \
                 on PATH); install Debian's `postgresql` package to run this test"
            );
            return None;
        };
        // Under /tmp, not the target directory: the `postgres` account must reach it, and the
        // socket path must stay under the kernel's 107-byte limit.
        let dir = tempfile::Builder::new()
            .prefix("driftless-pg-")
            .tempdir_in("/tmp")
            .expect("create the cluster's temp directory");
        let as_postgres = is_root();
        std::fs::create_dir(dir.path().join("sock")).expect("create the socket directory");
        let template = template(&bin, as_postgres);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.path().join("data"))
            .status()
            .expect("run cp");
        assert!(copied.success(), "copying the initdb template failed");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown of the cluster directory failed");
        }
        let mut cluster = Cluster {
            bin,
            dir,
            password: TEMPLATE_PASSWORD.to_owned(),
            as_postgres,
            server: None,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            created: Default::default(),
        };
        cluster.start_server();
        // Each cluster gets its own password; the template's is known to every test.
        let password = random_password();
        cluster.psql(
            "postgres",
            &format!("ALTER ROLE {ROLE} PASSWORD '{password}'"),
        );
        cluster.password = password;
        Some(cluster)
    }

    /// The cluster's data directory (owned by the server's account).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's Unix socket (the `host` of a connection string).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The postmaster's process id while the server runs (its backends are its children).
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The password of [`ROLE`]. Tests put it in a secret source; it is random per cluster.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Changes [`ROLE`]'s password (as an operator rotating it); new logins need the new one.
    pub fn set_password(&mut self, password: &str) {
        self.psql(
            "postgres",
            &format!("ALTER ROLE {ROLE} PASSWORD '{password}'"),
        );
        self.password = password.to_owned();
    }

    /// A connection string for `db` without the password (as the gateway's config holds it).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} user={ROLE} dbname={db}",
            self.socket_dir().display()
        )
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("server log");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .args(["--pdeathsig", "INT"])
                .arg(self.bin.join("postgres"));
            c
        } else {
            Command::new(self.bin.join("postgres"))
        };
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.socket_dir())
            // No TCP: nothing outside this machine's file system can reach it. Durability across
            // a server crash is not what these tests check (a killed *client* is), so no fsync.
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log);
        self.server = Some(cmd.spawn().expect("spawn postgres"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s: {}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: open sessions are ended), leaving its data in place.
    pub fn stop_server(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown (the child is the postmaster: setpriv execs).
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Creates a new, empty database and returns its name.
    pub fn create_database(&self) -> String {
        let n = self
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("driftless_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` in `db` with `psql`: its unaligned output, or the error it printed.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", ROLE, "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` in `db` with `psql` and returns its unaligned output (one row per line, columns
    /// separated by `|`); panics on an error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} in {db}: {e}"))
    }

    /// Runs `sql` in `db` and returns the error `psql` printed (panics if it succeeded).
    pub fn psql_err(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(out) => panic!("psql {sql:?} in {db} succeeded: {out}"),
            Err(e) => e,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}
