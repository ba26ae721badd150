//! Issue 15 (finding 3, "done when" 4): nothing that can block stops the gateway. With a FIFO moved
//! into place as the token file, an `exec` secret source that hangs, and a device database locked
//! by another process, each in turn and then all together, the real `driftless gateway run` keeps
//! answering `/healthz` and a correct-token connect gets hello-ok, each within a second (the
//! deadline of every such request: a bound for a loaded machine, not a performance figure).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use driftless_client::connection::{ConnectOptions, Credential, connect};
use driftless_client::identity::DeviceIdentity;
use driftless_core::SecretValue;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The deadline of each `/healthz` request and each correct-token handshake while something blocks.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// The hanging `exec` source's `timeout_ms`: long enough that probes run while it hangs.
const EXEC_TIMEOUT_MS: u64 = 5000;
/// Bound on work that is meant to wait (a reload killing its command, a device connect behind the
/// lock); generous for a loaded machine.
const SETTLES_WITHIN: Duration = Duration::from_secs(30);

/// `GET /healthz` answers 200 within [`PROBE_DEADLINE`].
async fn healthz_answers(port: u16, what: &str) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    match tokio::time::timeout(PROBE_DEADLINE, exchange).await {
        Ok(Ok(text)) => assert!(
            text.starts_with("HTTP/1.1 200"),
            "{what}: /healthz answered {text:?}"
        ),
        Ok(Err(e)) => panic!("{what}: /healthz failed: {e}"),
        Err(_) => panic!("{what}: /healthz did not answer within {PROBE_DEADLINE:?}"),
    }
}

/// A connect with the gateway token gets hello-ok within [`PROBE_DEADLINE`] (the client library's
/// deadline covers TCP, upgrade, challenge and hello-ok).
async fn token_connect_answers(url: &str, what: &str) {
    let mut opts = ConnectOptions::new(url, Credential::Token(SecretValue::new(CANARY.into())));
    opts.timeout = PROBE_DEADLINE;
    opts.retry_unavailable = false;
    if let Err(e) = connect(&opts).await {
        panic!("{what}: a correct-token connect got no hello-ok within {PROBE_DEADLINE:?}: {e}");
    }
}

/// Both probes, three times over a little more than a second (a stall that starts after the first
/// probe, as a blocked worker would, is caught too).
async fn stays_up(gw: &Gateway, what: &str) {
    for _ in 0..3 {
        healthz_answers(gw.port, what).await;
        token_connect_answers(&gw.url, what).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// A wrong-token connect is refused (its shared-secret miss re-reads the token file).
async fn wrong_token_refused(url: &str) {
    let mut c = Client::open(url).await;
    let (res, close) = c.connect(cli_params(Some(WRONG_CANARY))).await;
    assert_eq!(res["ok"], false, "{res}");
    assert!(close.is_some(), "no close after a refused connect: {res}");
}

fn sighup(gw: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -HUP failed");
}

fn failed_reloads(gw: &Gateway) -> f64 {
    gw.metric("driftless_gateway_secret_reloads_total{outcome=\"failed\"}")
}

fn settled_reloads(gw: &Gateway) -> f64 {
    gw.metric("driftless_gateway_secret_reloads_total{outcome=\"changed\"}")
        + gw.metric("driftless_gateway_secret_reloads_total{outcome=\"unchanged\"}")
}

/// Waits (bounded) until the gateway has counted more than `before` failed reloads.
async fn reload_failed_after(gw: &Gateway, before: f64, what: &str) {
    assert!(
        eventually(SETTLES_WITHIN, || async { failed_reloads(gw) > before }).await,
        "{what}: no failed reload was counted"
    );
}

/// The provider key's command: `body` after a line appended to `runs` (so a test sees it start).
fn set_command(script: &Path, runs: &Path, body: &str) {
    let text = format!("echo run >> '{}'\n{body}\n", runs.display());
    replace_by_rename(script, &text);
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits (bounded) until the command has started more than `before` times.
async fn command_started(runs: &Path, before: usize) {
    assert!(
        eventually(SETTLES_WITHIN, || async { lines(runs) > before }).await,
        "the exec source's command did not run"
    );
}

/// A device connect signed by a new identity, with the gateway token: from loopback it pairs
/// silently, which writes to the device database (and so waits while another process holds it).
fn device_connect(url: &str, identity_dir: &Path) -> tokio::task::JoinHandle<Result<(), String>> {
    let id = DeviceIdentity::load_or_create(identity_dir).unwrap();
    let mut opts = ConnectOptions::new(url, Credential::Token(SecretValue::new(CANARY.into())));
    opts.device = Some(Arc::new(id));
    opts.timeout = SETTLES_WITHIN;
    opts.retry_unavailable = false;
    tokio::spawn(async move { connect(&opts).await.map(|_| ()).map_err(|e| e.to_string()) })
}

/// Another process's exclusive lock on the gateway's device database (`BEGIN EXCLUSIVE`: in WAL
/// mode it keeps every other writer out; readers go on). Held until dropped.
struct DbLock(rusqlite::Connection);

impl DbLock {
    fn take(db: &Path) -> DbLock {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        DbLock(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

struct Setup {
    home: Home,
    token: PathBuf,
    script: PathBuf,
    runs: PathBuf,
    db: PathBuf,
    identities: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let home = Home::new();
        let token = home.path().join("secrets/token");
        write_secret(&token, CANARY);
        // Outside every watched folder: only the test's triggers run the command.
        let script = home.path().join("bin/provider-key.sh");
        let runs = home.path().join("exec-runs");
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        set_command(&script, &runs, "echo provider-key");
        home.write_config(&format!(
            "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\n\
             token = {{ source = \"file\", path = {:?} }}\n\
             [providers.local]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             api_key = {{ source = \"exec\", command = [\"sh\", {:?}], timeout_ms = {EXEC_TIMEOUT_MS} }}\n",
            token.to_str().unwrap(),
            script.to_str().unwrap(),
        ));
        // Where `SqliteStore::open_in` keeps it under the state directory.
        let db = home.state().join("devices/devices.sqlite3");
        Setup {
            home,
            token,
            script,
            runs,
            db,
            identities: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        }
    }

    /// Moves a FIFO into place as the token file (by rename, as a secret manager swaps a file).
    fn fifo_as_token(&self) {
        let fifo = self.token.with_extension("fifo-new");
        mkfifo(&fifo);
        std::fs::rename(&fifo, &self.token).unwrap();
    }

    fn regular_token(&self) {
        replace_by_rename(&self.token, &format!("{CANARY}\n"));
    }

    fn identity_dir(&self, name: &str) -> PathBuf {
        let dir = self.identities.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[tokio::test]
async fn a_fifo_a_hanging_exec_and_a_locked_device_database_block_nothing() {
    let s = Setup::new();
    let gw = Gateway::start(&s.home, &[], &[]);
    assert!(s.db.is_file(), "no device database at {}", s.db.display());
    stays_up(&gw, "at start").await;

    // (a) A FIFO moved into place as the token file: the watcher's reload and the re-read a
    // wrong token triggers both meet it (the issue: two wrong tokens stopped the whole gateway).
    let failed = failed_reloads(&gw);
    s.fifo_as_token();
    reload_failed_after(&gw, failed, "the FIFO's file-change reload").await;
    for _ in 0..3 {
        wrong_token_refused(&gw.url).await;
    }
    stays_up(&gw, "with a FIFO as the token file").await;
    // The token put back is reloaded by the debounced watcher: let that reload finish before the
    // exec changes below, or it would run the next step's hanging command too (one more bounded
    // reload queued ahead of the ones the steps watch).
    let settled = settled_reloads(&gw);
    s.regular_token();
    assert!(
        eventually(SETTLES_WITHIN, || async { settled_reloads(&gw) > settled }).await,
        "the token put back was not reloaded"
    );

    // (b1) A command that exits but leaves a background child holding its stdout, run by SIGHUP.
    let (failed, started) = (failed_reloads(&gw), lines(&s.runs));
    set_command(&s.script, &s.runs, "echo provider-key\nsleep 30 &");
    sighup(&gw);
    command_started(&s.runs, started).await;
    stays_up(&gw, "while an exec's background child holds its output").await;
    reload_failed_after(&gw, failed, "the held-output exec").await;
    assert!(
        gw.log_text().contains("still held its standard output"),
        "the log does not say why the reload failed"
    );

    // (b2) A command that just sleeps, run by `secrets.reload` while SIGHUPs pile further reloads
    // up behind it.
    let started = lines(&s.runs);
    set_command(&s.script, &s.runs, "sleep 30");
    let mut admin_params = cli_params(Some(CANARY));
    admin_params["scopes"] = json!(["operator.admin"]);
    let mut admin = session(&gw.url, admin_params).await;
    let probes = async {
        command_started(&s.runs, started).await;
        sighup(&gw);
        sighup(&gw);
        stays_up(&gw, "while an exec sleeps past its deadline").await;
    };
    // Its answer may wait behind a reload still running (the 30 s backstop may fire here).
    let reload = admin.call_within("r1", "secrets.reload", None, SETTLES_WITHIN);
    let (reply, ()) = tokio::join!(reload, probes);
    assert_eq!(reply["ok"], false, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("did not finish within {EXEC_TIMEOUT_MS} ms")),
        "{reply}"
    );
    drop(admin);

    // (c) Another process holds the device database: device connects, which must write (silent
    // pairing), wait on blocking threads; nothing else does.
    set_command(&s.script, &s.runs, "echo provider-key");
    let lock = DbLock::take(&s.db);
    let waiting = device_connect(&gw.url, &s.identity_dir("c"));
    stays_up(&gw, "with the device database locked").await;
    // It met the lock: still waiting, or refused as unavailable once the store's busy wait ran
    // out, never paired while the lock was held.
    if waiting.is_finished() {
        let e = waiting
            .await
            .unwrap()
            .expect_err("a device paired while the database was locked");
        assert!(e.contains("device store unavailable"), "{e}");
        lock.release();
    } else {
        lock.release();
        // Released during its wait: the write goes through, or its busy wait ran out just then.
        if let Err(e) = waiting.await.unwrap() {
            assert!(e.contains("device store unavailable"), "{e}");
        }
    }
    // With the lock gone, a new device pairs.
    device_connect(&gw.url, &s.identity_dir("c2"))
        .await
        .unwrap()
        .expect("a device connect after the lock was released");

    // All three at once.
    let (failed, started) = (failed_reloads(&gw), lines(&s.runs));
    set_command(&s.script, &s.runs, "sleep 30");
    let lock = DbLock::take(&s.db);
    let waiting = device_connect(&gw.url, &s.identity_dir("d"));
    sighup(&gw);
    command_started(&s.runs, started).await;
    s.fifo_as_token();
    wrong_token_refused(&gw.url).await;
    wrong_token_refused(&gw.url).await;
    stays_up(&gw, "with a FIFO, a sleeping exec and a locked database").await;
    lock.release();
    let _ = waiting.await.unwrap();
    reload_failed_after(&gw, failed, "the sleeping exec").await;

    // Put back, the gateway reloads cleanly and exits on SIGTERM in time.
    s.regular_token();
    set_command(&s.script, &s.runs, "echo provider-key");
    let mut admin_params = cli_params(Some(CANARY));
    admin_params["scopes"] = json!(["operator.admin"]);
    let mut admin = session(&gw.url, admin_params).await;
    let reply = admin
        .call_within("r2", "secrets.reload", None, SETTLES_WITHIN)
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    drop(admin);
    gw.finish();
}
