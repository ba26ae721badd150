//! Store, pairing and method tests: one suite run against both backends (a real SQLite file, and
//! a real PostgreSQL server started by `testing::postgres`; [`suite!`] instantiates each test for
//! both), then what only one backend has (files, migrations of old databases, the token key file,
//! races between two processes or replicas on one database).

use std::net::IpAddr;

use serde_json::json;

use super::*;
use super::{rules, token_key};
use driftless_core::SecretValue;

const T0: u64 = 1_700_000_000_000;

/// [`super::handle_method`] with its result as the JSON the gateway sends, which the assertions
/// below read.
fn handle_method(
    store: &dyn DeviceStore,
    method: &str,
    params: &serde_json::Value,
    caller: &Caller,
    now_ms: u64,
) -> Result<(serde_json::Value, Vec<Disconnect>, Option<PairingEvent>), MethodError> {
    super::handle_method(store, method, params, caller, now_ms)
        .map(|(out, disc, event)| (serde_json::to_value(out).unwrap(), disc, event))
}

/// A pairing event's name and payload as sent.
fn wire(event: &PairingEvent) -> (&'static str, serde_json::Value) {
    let (name, payload) = event.to_wire();
    (name, serde_json::to_value(payload).unwrap())
}
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const LAN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 20));

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).unwrap();
    (dir, store)
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn device<'a>(id: &'a str, sc: &'a [String], ip: IpAddr) -> ConnectingDevice<'a> {
    ConnectingDevice {
        device_id: id,
        public_key: "pk-a",
        client_id: "cli",
        client_mode: "cli",
        display_name: None,
        platform: Some("linux"),
        device_family: None,
        role: "operator",
        scopes: sc,
        remote_ip: ip,
    }
}

/// Pairs `d` silently (loopback, shared secret proven) at `T0` and returns its issued token.
fn paired_silently(store: &dyn DeviceStore, d: &ConnectingDevice<'_>) -> IssuedToken {
    let PairingOutcome::Paired {
        issued: Some(token),
        ..
    } = on_connect(store, d, true, false, true, T0).unwrap()
    else {
        panic!("expected silent pairing with a token")
    };
    token
}

fn admin() -> Caller {
    Caller {
        scopes: scopes(&["operator.admin"]),
        device_id: None,
        label: "shared-token".into(),
    }
}

fn events(store: &dyn DeviceStore) -> Vec<String> {
    store
        .audit()
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// One backend under test, with what the suite needs to look beneath the trait: another
/// connection for raw SQL, a counter of committed writes, the files that hold the data.
pub(super) struct Fixture {
    store: Option<Box<dyn DeviceStore>>,
    backend: Backend,
}

enum Backend {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        cluster: crate::testing::postgres::Cluster,
        db: String,
        key: String,
    },
}

/// A fresh token key in its text form (what `token_key`'s secret holds).
fn new_key_text() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token_key::random_bytes())
}

fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).unwrap();
    Fixture {
        store: Some(Box::new(store)),
        backend: Backend::Sqlite { dir },
    }
}

/// `None` (the test skips, saying why) only when PostgreSQL is not installed.
fn postgres_fixture() -> Option<Fixture> {
    let cluster = crate::testing::postgres::Cluster::start()?;
    let db = cluster.create_database();
    let key = new_key_text();
    let store = open_postgres(&cluster, &db, &key);
    // Counts committed write statements, as SQLite's `data_version` shows commits: a statement
    // trigger on every table bumps it in the writing transaction.
    cluster.psql(
        &db,
        "CREATE TABLE test_writes (n BIGINT NOT NULL); INSERT INTO test_writes VALUES (0);
         CREATE FUNCTION test_bump() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN UPDATE test_writes SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON paired
           FOR EACH STATEMENT EXECUTE FUNCTION test_bump();
         CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON tokens
           FOR EACH STATEMENT EXECUTE FUNCTION test_bump();
         CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON pending
           FOR EACH STATEMENT EXECUTE FUNCTION test_bump();
         CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE ON audit
           FOR EACH STATEMENT EXECUTE FUNCTION test_bump();",
    );
    Some(Fixture {
        store: Some(Box::new(store)),
        backend: Backend::Postgres { cluster, db, key },
    })
}

fn open_postgres(
    cluster: &crate::testing::postgres::Cluster,
    db: &str,
    key: &str,
) -> PostgresStore {
    let password = SecretValue::new(cluster.password().to_owned());
    PostgresStore::open(PostgresOptions {
        url: cluster.url(db),
        password: Box::new(move || Ok(Some(password.clone()))),
        token_key: TokenKey::parse(key).unwrap(),
        pool_size: 4,
    })
    .unwrap()
}

impl Fixture {
    fn store(&self) -> &dyn DeviceStore {
        self.store.as_deref().expect("the store is open")
    }

    /// Another store on the same data: a second gateway process on one state directory, or a
    /// second replica on one database.
    fn another(&self) -> Box<dyn DeviceStore> {
        match &self.backend {
            Backend::Sqlite { dir } => Box::new(SqliteStore::open_in(dir.path()).unwrap()),
            Backend::Postgres { cluster, db, key } => Box::new(open_postgres(cluster, db, key)),
        }
    }

    /// Closes the store and opens it again (a gateway restart).
    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(self.another());
    }

    /// A number that changes exactly when something is committed to the store.
    fn writes(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite { dir } => {
                // `PRAGMA data_version` of one connection changes when another commits; a fresh
                // connection starts from the file's state, so compare through one kept open.
                thread_local! {
                    static WATCHER: std::cell::RefCell<Option<(std::path::PathBuf, rusqlite::Connection)>> =
                        const { std::cell::RefCell::new(None) };
                }
                let path = dir.path().join("devices/devices.sqlite3");
                WATCHER.with(|w| {
                    let mut w = w.borrow_mut();
                    if w.as_ref().is_none_or(|(p, _)| *p != path) {
                        *w = Some((path.clone(), rusqlite::Connection::open(&path).unwrap()));
                    }
                    data_version(&w.as_ref().unwrap().1)
                })
            }
            Backend::Postgres { cluster, db, .. } => cluster
                .psql(db, "SELECT n FROM test_writes")
                .parse()
                .unwrap(),
        }
    }

    /// Runs `sql` on another connection (an operator with a SQL client).
    fn raw(&self, sql: &str) -> Result<(), String> {
        match &self.backend {
            Backend::Sqlite { dir } => {
                rusqlite::Connection::open(dir.path().join("devices/devices.sqlite3"))
                    .unwrap()
                    .execute_batch(sql)
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres { cluster, db, .. } => cluster.try_psql(db, sql).map(drop),
        }
    }

    /// The SQLite database file (`None` for PostgreSQL).
    fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Sqlite { dir } => Some(dir.path().join("devices/devices.sqlite3")),
            Backend::Postgres { .. } => None,
        }
    }

    /// Every file the data is kept in (for PostgreSQL after a checkpoint, so the tables' files
    /// hold what the log held).
    fn files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    walk(&entry.path(), out);
                } else if kind.is_file() {
                    out.push(entry.path());
                }
            }
        }
        let mut out = Vec::new();
        match &self.backend {
            Backend::Sqlite { dir } => walk(&dir.path().join("devices"), &mut out),
            Backend::Postgres { cluster, db, .. } => {
                cluster.psql(db, "CHECKPOINT");
                walk(&cluster.data_dir(), &mut out);
            }
        }
        assert!(!out.is_empty());
        out
    }
}

/// Instantiates each named suite test (`fn name(f: &mut Fixture)`) once per backend:
/// `devices::tests::sqlite::name` and `devices::tests::postgres::name`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut super::sqlite_fixture());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(mut f) = super::postgres_fixture() {
                        super::$name(&mut f);
                    }
                }
            )*
        }
    };
}

suite!(
    silent_loopback_pairing_then_stable_token,
    remote_device_needs_approval_and_requests_expire,
    unauthenticated_loopback_device_is_not_silently_paired,
    methods_scopes_rotate_revoke_remove,
    approver_cannot_grant_scopes_it_lacks,
    a_superseding_request_is_announced_with_merged_scopes,
    audit_trail_is_append_only,
    reconnects_within_the_window_write_nothing,
    every_rejection_is_recorded,
    shared_secret_connects_get_the_same_token_across_restarts,
    two_processes_approving_one_request_approve_it_once,
    concurrent_rotations_each_apply_and_the_last_one_holds,
    concurrent_first_connects_share_one_token,
    a_revocation_racing_reconnects_is_never_undone,
);

fn silent_loopback_pairing_then_stable_token(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-1", &sc, LOOPBACK);
    let PairingOutcome::Paired {
        issued: Some(tok),
        event: Some(event),
    } = on_connect(store, &d, true, false, true, T0).unwrap()
    else {
        panic!("expected silent pairing with a token and an event")
    };
    assert_eq!(tok.token.expose().len(), 43);
    // A silent pairing announces its resolution only.
    let request_id = store.audit().unwrap()[0].request_id.clone().unwrap();
    assert_eq!(
        wire(&event),
        (
            "device.pair.resolved",
            json!({"requestId": request_id, "deviceId": "dev-1", "decision": "approved", "ts": T0})
        )
    );
    assert_eq!(tok.scopes, sc);
    // Reconnect with the device token: verified, and no new token (stable).
    assert_eq!(
        verify_device_token(store, &d, tok.token.expose(), T0 + 1).unwrap(),
        TokenCheck::Ok
    );
    assert!(matches!(
        on_connect(store, &d, false, true, true, T0 + 1).unwrap(),
        PairingOutcome::Paired {
            issued: None,
            event: None
        }
    ));
    assert_eq!(
        verify_device_token(store, &d, "wrong-token", T0 + 2).unwrap(),
        TokenCheck::Rejected("token-mismatch")
    );
    assert_eq!(
        events(store),
        [
            "pair.requested",
            "pair.approved",
            "token.issued",
            "token.used",
            "token.used"
        ]
    );
    let audit = store.audit().unwrap();
    assert_eq!(audit[1].actor, pairing::SILENT_ACTOR);
    assert_eq!(
        audit[3].token_fingerprint.as_deref(),
        Some(tok.token.fingerprint().as_str())
    );
    assert_eq!(audit[4].outcome, "rejected");
    // Only hashes are on disk: the token is nowhere in the database files.
    for path in f.files() {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(43)
                .any(|w| w == tok.token.expose().as_bytes()),
            "token value found on disk in {}",
            path.display()
        );
    }
}

fn remote_device_needs_approval_and_requests_expire(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-2", &sc, LAN);
    let PairingOutcome::Required {
        request_id,
        reason,
        event: Some(event),
    } = on_connect(store, &d, true, false, false, T0).unwrap()
    else {
        panic!("expected pairing required, announced")
    };
    assert_eq!(reason, "not-paired");
    // OpenClaw's pending-request shape: absent optional fields left out, no token, no `reason`.
    assert_eq!(
        wire(&event),
        (
            "device.pair.requested",
            json!({
                "requestId": request_id, "deviceId": "dev-2", "publicKey": "pk-a",
                "platform": "linux", "clientId": "cli", "clientMode": "cli",
                "role": "operator", "roles": ["operator"], "scopes": ["operator.read"],
                "remoteIp": "192.168.1.20", "silent": false, "isRepair": false, "ts": T0,
            })
        )
    );
    // Retrying refreshes the same request, which is not announced again.
    let PairingOutcome::Required {
        request_id: again,
        event: None,
        ..
    } = on_connect(store, &d, true, false, false, T0 + 1000).unwrap()
    else {
        panic!("expected the same request, not announced")
    };
    assert_eq!(again, request_id);
    // Expired after 5 minutes.
    assert!(
        store
            .pending(&request_id, T0 + PENDING_TTL_MS + 1)
            .unwrap()
            .is_none()
    );
    assert!(events(store).contains(&"pair.expired".to_string()));
    // A fresh request, approved by an operator: no token yet; the next connect gets one.
    let PairingOutcome::Required {
        request_id,
        event: Some(PairingEvent::Requested(_)),
        ..
    } = on_connect(store, &d, true, false, false, T0 + PENDING_TTL_MS + 2).unwrap()
    else {
        panic!()
    };
    let now = T0 + PENDING_TTL_MS + 3;
    let (out, disc, event) = handle_method(
        store,
        "device.pair.approve",
        &json!({"requestId": request_id}),
        &admin(),
        now,
    )
    .unwrap();
    assert!(disc.is_empty());
    assert_eq!(
        event,
        Some(PairingEvent::Resolved {
            request_id: request_id.clone(),
            device_id: "dev-2".into(),
            approved: true,
            ts: now
        })
    );
    assert_eq!(out["device"]["deviceId"], "dev-2");
    assert!(!out.to_string().contains("\"token\""));
    let PairingOutcome::Paired {
        issued: Some(_),
        event: None,
    } = on_connect(store, &d, true, false, false, now).unwrap()
    else {
        panic!("expected a token after approval")
    };
    // A scope upgrade needs a new approval, even from loopback with the shared secret.
    let wider = scopes(&["operator.admin"]);
    let up = device("dev-2", &wider, LOOPBACK);
    assert!(matches!(
        on_connect(store, &up, true, false, true, now).unwrap(),
        PairingOutcome::Required {
            reason: "scope-upgrade",
            ..
        }
    ));
}

fn unauthenticated_loopback_device_is_not_silently_paired(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&[]);
    let d = device("dev-3", &sc, LOOPBACK);
    assert!(matches!(
        on_connect(store, &d, false, false, true, T0).unwrap(),
        PairingOutcome::Required {
            reason: "not-paired",
            ..
        }
    ));
}

fn methods_scopes_rotate_revoke_remove(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-4", &sc, LOOPBACK);
    let old = paired_silently(store, &d);
    let reader = Caller {
        scopes: scopes(&["operator.read"]),
        device_id: None,
        label: "reader".into(),
    };
    let err = handle_method(store, "device.pair.list", &json!({}), &reader, T0).unwrap_err();
    assert_eq!(err.message, "missing scope: operator.pairing");

    let (list, _, _) = handle_method(store, "device.pair.list", &json!({}), &admin(), T0).unwrap();
    assert_eq!(list["paired"][0]["deviceId"], "dev-4");
    assert_eq!(
        list["paired"][0]["tokens"][0]["fingerprint"],
        old.token.fingerprint().as_str()
    );
    assert!(!list.to_string().contains(old.token.expose()));

    // Rotation by an operator: token not echoed, device's operator sessions closed.
    let params = json!({"deviceId": "dev-4", "role": "operator"});
    let (out, disc, event) =
        handle_method(store, "device.token.rotate", &params, &admin(), T0 + 1).unwrap();
    assert!(out.get("token").is_none());
    assert_eq!(event, None);
    assert_eq!(
        disc,
        [Disconnect {
            device_id: "dev-4".into(),
            role: Some("operator".into()),
            reason: "device token rotated"
        }]
    );
    assert_eq!(
        verify_device_token(store, &d, old.token.expose(), T0 + 2).unwrap(),
        TokenCheck::Rejected("token-mismatch")
    );
    // The device rotating its own token gets the new one.
    let own = Caller {
        scopes: scopes(&["operator.pairing", "operator.read"]),
        device_id: Some("dev-4".into()),
        label: "device:dev-4".into(),
    };
    let (out, _, _) = handle_method(store, "device.token.rotate", &params, &own, T0 + 3).unwrap();
    let fresh = out["token"].as_str().unwrap().to_owned();
    assert_eq!(
        verify_device_token(store, &d, &fresh, T0 + 4).unwrap(),
        TokenCheck::Ok
    );
    // Another device may not touch it; widening beyond the approval is denied.
    let other = Caller {
        device_id: Some("dev-x".into()),
        ..own.clone()
    };
    assert_eq!(
        handle_method(store, "device.token.revoke", &params, &other, T0)
            .unwrap_err()
            .message,
        "device token revocation denied"
    );
    let wide = json!({"deviceId": "dev-4", "role": "operator", "scopes": ["operator.admin"]});
    assert_eq!(
        handle_method(store, "device.token.rotate", &wide, &admin(), T0)
            .unwrap_err()
            .message,
        "device token rotation denied"
    );

    let (_, disc, _) =
        handle_method(store, "device.token.revoke", &params, &admin(), T0 + 5).unwrap();
    assert_eq!(disc[0].reason, "device token revoked");
    assert_eq!(
        verify_device_token(store, &d, &fresh, T0 + 6).unwrap(),
        TokenCheck::Rejected("token-revoked")
    );
    // A revoked role needs approval again (silent from loopback with the shared secret).
    assert!(matches!(
        on_connect(store, &d, true, false, false, T0 + 7).unwrap(),
        PairingOutcome::Required {
            reason: "role-upgrade",
            ..
        }
    ));

    let rm = json!({"deviceId": "dev-4"});
    let (_, disc, _) = handle_method(store, "device.pair.remove", &rm, &admin(), T0 + 8).unwrap();
    assert_eq!(
        disc[0],
        Disconnect {
            device_id: "dev-4".into(),
            role: None,
            reason: "device removed"
        }
    );
    assert!(store.paired("dev-4").unwrap().is_none());
    assert_eq!(
        handle_method(
            store,
            "device.pair.approve",
            &json!({"requestId": "nope"}),
            &admin(),
            T0
        )
        .unwrap_err()
        .message,
        "unknown requestId"
    );
    let ev = events(store);
    for e in ["token.rotated", "token.revoked", "device.removed"] {
        assert!(ev.iter().any(|x| x == e), "{e} missing from {ev:?}");
    }
}

fn approver_cannot_grant_scopes_it_lacks(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.admin"]);
    let d = device("dev-5", &sc, LAN);
    let PairingOutcome::Required { request_id, .. } =
        on_connect(store, &d, true, false, false, T0).unwrap()
    else {
        panic!()
    };
    let pairer = Caller {
        scopes: scopes(&["operator.pairing"]),
        device_id: None,
        label: "pairer".into(),
    };
    let err = handle_method(
        store,
        "device.pair.approve",
        &json!({"requestId": request_id}),
        &pairer,
        T0,
    )
    .unwrap_err();
    assert_eq!(err.message, "missing scope: operator.admin");
    let (out, _, event) = handle_method(
        store,
        "device.pair.reject",
        &json!({"requestId": request_id}),
        &pairer,
        T0 + 1,
    )
    .unwrap();
    assert_eq!(out["deviceId"], "dev-5");
    assert_eq!(
        wire(&event.unwrap()),
        (
            "device.pair.resolved",
            json!({"requestId": request_id, "deviceId": "dev-5", "decision": "rejected", "ts": T0 + 1})
        )
    );
    assert!(store.pending(&request_id, T0).unwrap().is_none());
}

fn a_superseding_request_is_announced_with_merged_scopes(f: &mut Fixture) {
    let store = f.store();
    let read = scopes(&["operator.read"]);
    let PairingOutcome::Required {
        request_id: first, ..
    } = on_connect(store, &device("dev-6", &read, LAN), true, false, false, T0).unwrap()
    else {
        panic!()
    };
    let write = scopes(&["operator.approvals"]);
    let d = ConnectingDevice {
        display_name: Some("laptop"),
        ..device("dev-6", &write, LAN)
    };
    let PairingOutcome::Required {
        request_id: second,
        event: Some(PairingEvent::Requested(req)),
        ..
    } = on_connect(store, &d, true, false, false, T0 + 10).unwrap()
    else {
        panic!("expected a new, announced request")
    };
    assert_ne!(second, first);
    assert_eq!(req.request_id, second);
    assert_eq!(req.scopes, ["operator.approvals", "operator.read"]);
    assert_eq!(req.ts, T0 + 10);
    assert_eq!(req.metadata.display_name.as_deref(), Some("laptop"));
    let (_, wire) = wire(&PairingEvent::Requested(req));
    assert_eq!(wire["displayName"], "laptop");
}

fn audit_trail_is_append_only(f: &mut Fixture) {
    f.store()
        .append_audit(
            NewAuditEvent {
                event: "test",
                actor: "t".into(),
                outcome: "ok",
                ..Default::default()
            },
            T0,
        )
        .unwrap();
    // Another connection, as an operator's SQL client.
    assert!(f.raw("UPDATE audit SET outcome = 'x'").is_err());
    assert!(f.raw("DELETE FROM audit").is_err());
    assert_eq!(f.store().audit().unwrap().len(), 1);
    if let Some(path) = f.sqlite_file() {
        let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(path).unwrap());
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Child half of [`sigkill_mid_approval_leaves_pending_or_paired`]: approves with a pause inside
/// the transaction. Ignored unless that test runs it in a child process.
#[test]
#[ignore = "run as a child process by sigkill_mid_approval_leaves_pending_or_paired"]
fn child_approve_slowly() {
    let dir = std::path::PathBuf::from(
        std::fs::read_to_string(
            std::env::temp_dir().join(format!("driftless-crash-{}", child_key())),
        )
        .unwrap(),
    );
    let mut store = SqliteStore::open_in(&dir).unwrap();
    let marker = dir.join("child-in-transaction");
    store.approval_hook = Some(Box::new(move || {
        std::fs::write(&marker, b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(30));
    }));
    let id = std::fs::read_to_string(dir.join("request-id")).unwrap();
    store.approve(&id, "child", true, T0).unwrap();
}

fn child_key() -> String {
    // The parent passes its pid through the file name so parallel runs do not collide.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn sigkill_mid_approval_leaves_pending_or_paired() {
    let (dir, store) = open();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-crash", &sc, LAN);
    let PairingOutcome::Required { request_id, .. } =
        on_connect(&store, &d, true, false, false, T0).unwrap()
    else {
        panic!()
    };
    std::fs::write(dir.path().join("request-id"), &request_id).unwrap();
    let handoff = std::env::temp_dir().join(format!("driftless-crash-{}", std::process::id()));
    std::fs::write(&handoff, dir.path().to_str().unwrap()).unwrap();
    // A real process, killed with SIGKILL while its approval transaction is open.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "devices::tests::child_approve_slowly",
            "--ignored",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = dir.path().join("child-in-transaction");
    for _ in 0..200 {
        if started.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        started.exists(),
        "child never reached the middle of the approval"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::remove_file(&handoff).ok();
    drop(store);
    let store = SqliteStore::open_in(dir.path()).unwrap();
    let pending = store.pending(&request_id, T0).unwrap();
    let paired = store.paired("dev-crash").unwrap();
    // Never half: the request is still pending and nothing is paired (the transaction rolled back).
    assert!(pending.is_some(), "the pending request was lost");
    assert!(paired.is_none(), "a half-approved device appeared");
    assert!(!events(&store).contains(&"pair.approved".to_string()));
    // And the approval can simply be done again.
    let (dev, tok) = store.approve(&request_id, "retry", true, T0 + 1).unwrap();
    assert_eq!(dev.device_id, "dev-crash");
    assert!(tok.is_some());
}

/// `PRAGMA data_version` as seen by another connection: it changes exactly when the store commits
/// a change to the file, so an unchanged value proves an operation wrote nothing.
fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

fn used(store: &dyn DeviceStore, outcome: &str) -> usize {
    store
        .audit()
        .unwrap()
        .iter()
        .filter(|e| e.event == "token.used" && e.outcome == outcome)
        .count()
}

fn last_used(store: &dyn DeviceStore, device_id: &str) -> Option<u64> {
    store.paired(device_id).unwrap().unwrap().tokens[0].last_used_at_ms
}

fn reconnects_within_the_window_write_nothing(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-w", &sc, LOOPBACK);
    let tok = paired_silently(store, &d);
    let tok = tok.token.expose().to_owned();
    // The first use has no recorded last use: recorded.
    let first = T0 + 10;
    assert_eq!(
        verify_device_token(store, &d, &tok, first).unwrap(),
        TokenCheck::Ok
    );
    assert!(matches!(
        on_connect(store, &d, false, true, true, first).unwrap(),
        PairingOutcome::Paired { issued: None, .. }
    ));
    assert_eq!(used(store, "ok"), 1);
    assert_eq!(last_used(store, "dev-w"), Some(first));

    // Reconnects up to the end of the window, and one with a clock that stepped back: nothing
    // is committed (no audit row, no last-use update, no touch of unchanged metadata).
    let before = f.writes();
    for now in [first + 1, first + LAST_USED_COALESCE_MS - 1, first - 5] {
        assert_eq!(
            verify_device_token(store, &d, &tok, now).unwrap(),
            TokenCheck::Ok
        );
        assert!(matches!(
            on_connect(store, &d, false, true, true, now).unwrap(),
            PairingOutcome::Paired { issued: None, .. }
        ));
    }
    assert_eq!(f.writes(), before, "a reconnect wrote to the store");
    assert_eq!(used(store, "ok"), 1);
    assert_eq!(last_used(store, "dev-w"), Some(first));

    // Changed metadata is still recorded.
    let moved = device("dev-w", &sc, LAN);
    assert!(matches!(
        on_connect(store, &moved, false, true, true, first + 2).unwrap(),
        PairingOutcome::Paired { issued: None, .. }
    ));
    assert_ne!(f.writes(), before);
    let dev = store.paired("dev-w").unwrap().unwrap();
    assert_eq!(dev.metadata.remote_ip.as_deref(), Some("192.168.1.20"));

    // A use once the window has passed is recorded again.
    let later = first + LAST_USED_COALESCE_MS;
    assert_eq!(
        verify_device_token(store, &d, &tok, later).unwrap(),
        TokenCheck::Ok
    );
    assert_eq!(used(store, "ok"), 2);
    assert_eq!(last_used(store, "dev-w"), Some(later));
    let audit = store.audit().unwrap();
    let last = audit.last().unwrap();
    assert_eq!((last.event.as_str(), last.at_ms), ("token.used", later));
}

fn every_rejection_is_recorded(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-r", &sc, LOOPBACK);
    let tok = paired_silently(store, &d);
    assert_eq!(
        verify_device_token(store, &d, tok.token.expose(), T0 + 1).unwrap(),
        TokenCheck::Ok
    );
    for now in [T0 + 2, T0 + 2, T0 + 3] {
        assert_eq!(
            verify_device_token(store, &d, "wrong-token", now).unwrap(),
            TokenCheck::Rejected("token-mismatch")
        );
    }
    let wider = scopes(&["operator.admin"]);
    let greedy = device("dev-r", &wider, LOOPBACK);
    assert_eq!(
        verify_device_token(store, &greedy, tok.token.expose(), T0 + 4).unwrap(),
        TokenCheck::Rejected("scope-mismatch")
    );
    let rejected: Vec<_> = store
        .audit()
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "token.used" && e.outcome == "rejected")
        .map(|e| (e.at_ms, e.detail.unwrap(), e.token_fingerprint))
        .collect();
    assert_eq!(
        rejected,
        [
            (T0 + 2, "token-mismatch".to_owned(), None),
            (T0 + 2, "token-mismatch".to_owned(), None),
            (T0 + 3, "token-mismatch".to_owned(), None),
            (T0 + 4, "scope-mismatch".to_owned(), None),
        ]
    );
    // The rejections did not move the last accepted use.
    assert_eq!(last_used(store, "dev-r"), Some(T0 + 1));
}

#[test]
fn audit_trail_keeps_the_newest_rows() {
    let (dir, store) = open();
    drop(store);
    let path = dir.path().join("devices/devices.sqlite3");
    // A database from before the cap: its trigger refused every delete.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_keep_newest;
         CREATE TRIGGER audit_append_only_d BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;",
    )
    .unwrap();
    // Seeded so that the next append has a seq that triggers the trim.
    let seeded = (AUDIT_KEEP_ROWS / AUDIT_TRIM_EVERY + 2) * AUDIT_TRIM_EVERY - 1;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO audit (at_ms, event, actor, outcome) SELECT i, 'seed', 't', 'ok' FROM n",
        [seeded],
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open_in(dir.path()).unwrap();
    appends_trim_to_the_newest_rows(&store, seeded);
    // The newest rows cannot be deleted or changed by hand (a DELETE that reaches one of them
    // aborts as a whole).
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(conn.execute("DELETE FROM audit", []).is_err());
    assert!(
        conn.execute(
            "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
            []
        )
        .is_err()
    );
    assert!(conn.execute("UPDATE audit SET outcome = 'x'", []).is_err());
    let n: i64 = conn
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, AUDIT_KEEP_ROWS + 3);
}

/// A shared-secret connect of the paired device `d` that must hand out a token (no event).
fn shared_connect(store: &dyn DeviceStore, d: &ConnectingDevice<'_>, now: u64) -> IssuedToken {
    match on_connect(store, d, true, false, true, now).unwrap() {
        PairingOutcome::Paired {
            issued: Some(t),
            event: None,
        } => t,
        other => panic!("expected a token for a paired device, got {other:?}"),
    }
}

fn issued_count(store: &dyn DeviceStore) -> usize {
    events(store)
        .iter()
        .filter(|e| *e == "token.issued")
        .count()
}

fn shared_secret_connects_get_the_same_token_across_restarts(f: &mut Fixture) {
    let store = f.store();
    let sc = scopes(&["operator.read", "operator.write"]);
    let d = device("dev-s", &sc, LOOPBACK);
    let first = paired_silently(store, &d);
    assert_eq!(issued_count(store), 1);

    // Again with the shared secret (another process sharing this identity, or a client that did
    // not keep the token): the same token, and nothing committed to the store.
    let before = f.writes();
    for now in [T0 + 1, T0 + 2] {
        let again = shared_connect(store, &d, now);
        assert!(again.token.same_as(&first.token), "a new token was minted");
        assert_eq!(again.issued_at_ms, T0);
        assert_eq!(again.scopes, sc);
    }
    // Narrower scopes are covered by the same token.
    let read = scopes(&["operator.read"]);
    let narrow = device("dev-s", &read, LOOPBACK);
    assert!(
        shared_connect(store, &narrow, T0 + 3)
            .token
            .same_as(&first.token)
    );
    assert_eq!(f.writes(), before, "a shared connect wrote");
    assert_eq!(issued_count(store), 1);

    // A gateway restart (the store reopened) derives the same token from the same key.
    f.reopen();
    let store = f.store();
    assert!(
        shared_connect(store, &d, T0 + 4)
            .token
            .same_as(&first.token)
    );
    assert_eq!(
        verify_device_token(store, &d, first.token.expose(), T0 + 5).unwrap(),
        TokenCheck::Ok
    );

    // The device rotates its own token: a new nonce, so a new token, and the old one is refused.
    let own = Caller {
        scopes: scopes(&["operator.pairing", "operator.read", "operator.write"]),
        device_id: Some("dev-s".into()),
        label: "device:dev-s".into(),
    };
    let params = json!({"deviceId": "dev-s", "role": "operator"});
    let (out, _, _) = handle_method(store, "device.token.rotate", &params, &own, T0 + 6).unwrap();
    let rotated = out["token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, first.token.expose());
    assert_eq!(
        verify_device_token(store, &d, first.token.expose(), T0 + 7).unwrap(),
        TokenCheck::Rejected("token-mismatch")
    );
    // The shared secret now hands out the rotated token, not the old one and not a third.
    let after = shared_connect(store, &d, T0 + 8);
    assert!(after.token.matches(&rotated));
    assert_eq!(after.issued_at_ms, T0 + 6);
    assert_eq!(issued_count(store), 1);

    // A token narrower than the request (rotated down by an operator) is replaced once, with the
    // requested scopes, and that one is then stable.
    let down = json!({"deviceId": "dev-s", "role": "operator", "scopes": ["operator.read"]});
    handle_method(store, "device.token.rotate", &down, &admin(), T0 + 9).unwrap();
    let wide = shared_connect(store, &d, T0 + 10);
    assert!(!wide.token.matches(&rotated));
    assert_eq!(wide.scopes, sc);
    assert_eq!(issued_count(store), 2);
    assert!(
        shared_connect(store, &d, T0 + 11)
            .token
            .same_as(&wide.token)
    );
    assert_eq!(issued_count(store), 2);

    // A revoked token is never handed out again: the role needs approval again.
    handle_method(store, "device.token.revoke", &params, &admin(), T0 + 12).unwrap();
    let remote = device("dev-s", &sc, LAN);
    assert!(matches!(
        on_connect(store, &remote, true, false, false, T0 + 13).unwrap(),
        PairingOutcome::Required {
            reason: "role-upgrade",
            ..
        }
    ));
}

#[test]
fn a_row_from_before_derived_tokens_is_replaced_once_then_stable() {
    let (dir, store) = open();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-l", &sc, LOOPBACK);
    let legacy = paired_silently(&store, &d);
    drop(store);
    // A database from before: no nonce column at all (its rows hold only hashes).
    let path = dir.path().join("devices/devices.sqlite3");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE tokens DROP COLUMN token_nonce")
        .unwrap();
    drop(conn);

    // Opening migrates it; the old token still verifies by its hash.
    let store = SqliteStore::open_in(dir.path()).unwrap();
    assert_eq!(
        verify_device_token(&store, &d, legacy.token.expose(), T0 + 1).unwrap(),
        TokenCheck::Ok
    );
    // Its token cannot be recomputed, so the first shared connect mints one; then it is stable.
    let minted = shared_connect(&store, &d, T0 + 2);
    assert!(!minted.token.same_as(&legacy.token));
    assert_eq!(issued_count(&store), 2);
    for now in [T0 + 3, T0 + 4] {
        assert!(shared_connect(&store, &d, now).token.same_as(&minted.token));
    }
    assert_eq!(issued_count(&store), 2);
    assert_eq!(
        verify_device_token(&store, &d, legacy.token.expose(), T0 + 5).unwrap(),
        TokenCheck::Rejected("token-mismatch")
    );

    // A replaced key file cannot recompute the stored token (its hash no longer matches): the
    // device's token still verifies, and the next shared connect mints a new one, never a wrong one.
    drop(store);
    std::fs::remove_file(dir.path().join("devices").join(TOKEN_KEY_FILE)).unwrap();
    let store = SqliteStore::open_in(dir.path()).unwrap();
    assert_eq!(
        verify_device_token(&store, &d, minted.token.expose(), T0 + 6).unwrap(),
        TokenCheck::Ok
    );
    let fresh = shared_connect(&store, &d, T0 + 7);
    assert!(!fresh.token.same_as(&minted.token));
    assert_eq!(
        verify_device_token(&store, &d, fresh.token.expose(), T0 + 8).unwrap(),
        TokenCheck::Ok
    );
    assert!(
        shared_connect(&store, &d, T0 + 9)
            .token
            .same_as(&fresh.token)
    );
    assert_eq!(issued_count(&store), 3);
}

#[test]
fn the_token_key_is_private_and_never_printed() {
    let (dir, store) = open();
    let sc = scopes(&["operator.read"]);
    let d = device("dev-k", &sc, LOOPBACK);
    let tok = paired_silently(&store, &d);
    let key_path = dir.path().join("devices").join(TOKEN_KEY_FILE);
    let meta = std::fs::metadata(&key_path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    let key = key.trim();
    assert_eq!(key.len(), 43, "32 bytes, base64url");
    // Neither the key nor the token is in the audit trail or any Debug output.
    let audit = serde_json::to_string(&store.audit().unwrap()).unwrap();
    let printed = format!(
        "{audit}{store:?}{tok:?}{:?}{:?}",
        store.audit().unwrap(),
        store.paired("dev-k").unwrap()
    );
    for secret in [key, tok.token.expose()] {
        assert!(!printed.contains(secret), "a secret was printed: {printed}");
    }
    // Opening again reuses the key (the file is not rewritten).
    drop(store);
    let store = SqliteStore::open_in(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim(), key);
    drop(store);

    // A key that is not one fails the open, naming the file but not its content.
    let garbage = "not-a-key-canary-d41d8cd98f00b204";
    std::fs::write(&key_path, garbage).unwrap();
    let e = SqliteStore::open_in(dir.path()).unwrap_err();
    let shown = format!("{e} {e:?} {:?}", std::error::Error::source(&e));
    assert!(shown.contains(TOKEN_KEY_FILE), "{shown}");
    assert!(!shown.contains(garbage), "{shown}");
    assert!(matches!(e, StoreError::TokenKey(_)), "{e:?}");
    // So does an unreadable one (a directory in its place), and nothing replaces it.
    std::fs::remove_file(&key_path).unwrap();
    std::fs::create_dir(&key_path).unwrap();
    let e = SqliteStore::open_in(dir.path()).unwrap_err();
    assert!(e.to_string().contains(TOKEN_KEY_FILE), "{e}");
    assert!(key_path.is_dir());
}

/// Runs `f(i)` on `n` threads released together, and returns their results in order.
fn at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn two_processes_approving_one_request_approve_it_once(f: &mut Fixture) {
    let other = f.another();
    let stores = [f.store(), &*other];
    for round in 0..5 {
        let id = format!("dev-race-{round}");
        let sc = scopes(&["operator.read"]);
        let PairingOutcome::Required { request_id, .. } =
            on_connect(stores[0], &device(&id, &sc, LAN), true, false, false, T0).unwrap()
        else {
            panic!("expected a pending request")
        };
        // Both transactions read the request, then wait, so they surely overlap.
        let results = at_once(2, |i| {
            rules::TEST_PAUSE_MS.with(|p| p.set(300));
            stores[i].approve(&request_id, &format!("op-{i}"), true, T0 + 1)
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(StoreError::UnknownRequest))),
            "round {round}: {results:?}"
        );
        let approved = stores[1]
            .audit()
            .unwrap()
            .into_iter()
            .filter(|e| e.device_id.as_deref() == Some(id.as_str()))
            .map(|e| e.event)
            .collect::<Vec<_>>();
        assert_eq!(
            approved,
            ["pair.requested", "pair.approved", "token.issued"]
        );
        assert!(stores[0].pending(&request_id, T0 + 2).unwrap().is_none());
    }
}

fn concurrent_rotations_each_apply_and_the_last_one_holds(f: &mut Fixture) {
    let other = f.another();
    let stores = [f.store(), &*other];
    let sc = scopes(&["operator.read"]);
    let d = device("dev-rot", &sc, LOOPBACK);
    paired_silently(stores[0], &d);
    let n = 6;
    let tokens = at_once(n, |i| {
        stores[i % 2]
            .mint("dev-rot", "operator", &sc, "op", "token.rotated", T0 + 1)
            .unwrap()
    });
    // Every rotation was applied, one after the other: each is in the audit trail, and the one
    // that holds is the last one recorded. No other rotated token verifies.
    let rotated: Vec<String> = stores[1]
        .audit()
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "token.rotated")
        .map(|e| e.token_fingerprint.unwrap())
        .collect();
    assert_eq!(rotated.len(), n);
    let valid: Vec<_> = tokens
        .iter()
        .filter(|t| {
            verify_device_token(stores[0], &d, t.token.expose(), T0 + 2).unwrap() == TokenCheck::Ok
        })
        .collect();
    assert_eq!(valid.len(), 1, "exactly one rotated token holds");
    assert_eq!(
        valid[0].token.fingerprint().as_str(),
        rotated.last().unwrap()
    );
    let listed = stores[1].paired("dev-rot").unwrap().unwrap();
    assert_eq!(&listed.tokens[0].fingerprint, rotated.last().unwrap());
}

fn concurrent_first_connects_share_one_token(f: &mut Fixture) {
    let other = f.another();
    let stores = [f.store(), &*other];
    let sc = scopes(&["operator.read"]);
    let d = device("dev-first", &sc, LAN);
    let PairingOutcome::Required { request_id, .. } =
        on_connect(stores[0], &d, true, false, false, T0).unwrap()
    else {
        panic!("expected a pending request")
    };
    // Approved without a token: the device's next connects mint one.
    stores[0].approve(&request_id, "op", false, T0 + 1).unwrap();
    // Each transaction finds no token, then waits before minting, so they surely overlap.
    let tokens = at_once(4, |i| {
        rules::TEST_PAUSE_MS.with(|p| p.set(300));
        stores[i % 2]
            .ensure_token("dev-first", "operator", &sc, "gateway (connect)", T0 + 2)
            .unwrap()
    });
    for t in &tokens {
        assert!(
            t.token.same_as(&tokens[0].token),
            "two connects minted two tokens"
        );
    }
    assert_eq!(issued_count(stores[1]), 1);
}

fn a_revocation_racing_reconnects_is_never_undone(f: &mut Fixture) {
    let other = f.another();
    let stores = [f.store(), &*other];
    let sc = scopes(&["operator.read"]);
    let d = device("dev-rev", &sc, LOOPBACK);
    let tok = paired_silently(stores[0], &d);
    let tok = tok.token.expose();
    let revoked = std::sync::atomic::AtomicBool::new(false);
    at_once(2, |i| {
        if i == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            stores[0]
                .revoke("dev-rev", "operator", "op", T0 + 5)
                .unwrap();
            revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            // Each use is a window apart, so each one records (a write racing the revocation).
            for k in 1..40u64 {
                let was_revoked = revoked.load(std::sync::atomic::Ordering::SeqCst);
                let check = verify_device_token(stores[1], &d, tok, T0 + k * LAST_USED_COALESCE_MS)
                    .unwrap();
                if was_revoked {
                    assert_eq!(check, TokenCheck::Rejected("token-revoked"), "use {k}");
                }
            }
        }
    });
    let dev = stores[0].paired("dev-rev").unwrap().unwrap();
    assert_eq!(dev.tokens[0].revoked_at_ms, Some(T0 + 5));
    assert_eq!(
        verify_device_token(stores[0], &d, tok, T0 + 100 * LAST_USED_COALESCE_MS).unwrap(),
        TokenCheck::Rejected("token-revoked")
    );
}

mod postgres_only;

/// With `seeded` rows in the trail (so the next seq triggers a trim), one append keeps exactly
/// the newest [`AUDIT_KEEP_ROWS`], and between trims the trail grows by less than
/// [`AUDIT_TRIM_EVERY`] rows. Shared by the SQLite and PostgreSQL audit tests.
pub(super) fn appends_trim_to_the_newest_rows(store: &dyn DeviceStore, seeded: i64) {
    let append = |at| {
        store
            .append_audit(
                NewAuditEvent {
                    event: "test",
                    actor: "t".into(),
                    outcome: "ok",
                    ..Default::default()
                },
                at,
            )
            .unwrap()
    };
    append(T0);
    let a = store.audit().unwrap();
    assert_eq!(a.len() as i64, AUDIT_KEEP_ROWS);
    assert_eq!(a.last().unwrap().seq, seeded + 1);
    assert_eq!(a[0].seq, seeded + 2 - AUDIT_KEEP_ROWS);
    for i in 0..3 {
        append(T0 + 1 + i);
    }
    assert_eq!(store.audit().unwrap().len() as i64, AUDIT_KEEP_ROWS + 3);
}
