//! What only the PostgreSQL store has: migrations shared by replicas, the audit trigger, the
//! config's secret references (a password rotated live), and its errors.

use super::*;
use crate::testing::postgres::Cluster;

fn fixture() -> Option<(Cluster, String)> {
    let cluster = Cluster::start()?;
    let db = cluster.create_database();
    Some((cluster, db))
}

#[test]
fn migrations_apply_once_with_replicas_starting_together() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let key = new_key_text();
    let stores = at_once(4, |_| open_postgres(&cluster, &db, &key));
    assert_eq!(
        cluster.psql(&db, "SELECT count(*), max(version) FROM driftless_schema"),
        format!("{n}|{n}", n = MIGRATIONS.len())
    );
    drop(stores);
    // Opening again applies nothing.
    let store = open_postgres(&cluster, &db, &key);
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM driftless_schema"),
        MIGRATIONS.len().to_string()
    );
    drop(store);
    // A database migrated by a newer gateway is refused, with what to do.
    cluster.psql(&db, "INSERT INTO driftless_schema (version) VALUES (999)");
    let e = PostgresStore::open(PostgresOptions {
        url: cluster.url(&db),
        password: {
            let pw = SecretValue::new(cluster.password().to_owned());
            Box::new(move || Ok(Some(pw.clone())))
        },
        token_key: TokenKey::parse(&key).unwrap(),
        pool_size: 1,
    })
    .unwrap_err();
    assert!(e.to_string().contains("upgrade this gateway"), "{e}");
}

/// The fleet's limiter: two replicas count into one budget per address; the attempt that reaches
/// it is allowed and locks the address, later ones learn how long is left; another address is
/// unaffected; a right credential forgives; a lockout that ended starts a new window.
#[test]
fn two_replicas_count_attempts_into_one_budget() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let key = new_key_text();
    let (a, b) = (
        open_postgres(&cluster, &db, &key),
        open_postgres(&cluster, &db, &key),
    );
    let budget = crate::limiter::Budget {
        max_attempts: 4,
        window_ms: 60_000,
        lockout_ms: 300_000,
    };
    let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let t = 1_000_000;
    for i in 0..4 {
        let store = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            store.count_attempt(ip, &budget, t + i).unwrap(),
            None,
            "{i}"
        );
    }
    assert_eq!(b.count_attempt(ip, &budget, t + 10).unwrap(), Some(299_993));
    assert_eq!(
        a.count_attempt(ip, &budget, t + 1_000).unwrap(),
        Some(299_003)
    );
    let other: std::net::IpAddr = "203.0.113.8".parse().unwrap();
    assert_eq!(a.count_attempt(other, &budget, t).unwrap(), None);
    b.forgive_attempts(other).unwrap();
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT count(*) FROM attempts WHERE address = '203.0.113.8'"
        ),
        "0"
    );
    // Once the lockout has passed, a new window.
    assert_eq!(b.count_attempt(ip, &budget, t + 400_000).unwrap(), None);
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT count FROM attempts WHERE address = '203.0.113.7'"
        ),
        "1"
    );
}

#[test]
fn the_audit_trigger_keeps_the_newest_rows_and_refuses_the_rest() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    // The trigger's number is the constant's (SQL cannot read a Rust constant).
    assert!(MIGRATIONS[0].contains(&format!("- {AUDIT_KEEP_ROWS} THEN")));
    let store = open_postgres(&cluster, &db, &new_key_text());
    // Seeded so that the next append has a seq that triggers the trim.
    let seeded = (AUDIT_KEEP_ROWS / AUDIT_TRIM_EVERY + 2) * AUDIT_TRIM_EVERY - 1;
    cluster.psql(
        &db,
        &format!(
            "INSERT INTO audit (at_ms, event, actor, outcome)
             SELECT i, 'seed', 't', 'ok' FROM generate_series(1, {seeded}) AS i"
        ),
    );
    super::appends_trim_to_the_newest_rows(&store, seeded);
    // By hand, the newest rows can be neither deleted, changed nor truncated.
    for sql in [
        "DELETE FROM audit",
        "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
        "UPDATE audit SET outcome = 'x'",
        "TRUNCATE audit",
    ] {
        let e = cluster.psql_err(&db, sql);
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM audit"),
        (AUDIT_KEEP_ROWS + 3).to_string()
    );
}

/// Writes a secret source file, owner-only as a secret's must be.
fn secret_file(path: &std::path::Path, value: impl AsRef<[u8]>) {
    std::fs::write(path, value).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Writes a config choosing the PostgreSQL store with file references beside it.
fn config_in(dir: &std::path::Path, url: &str, extra: &str) -> driftless_core::Config {
    let text = format!(
        "[gateway.devices]\nstore = \"postgres\"\n[gateway.devices.postgres]\nurl = {url:?}\n\
         password = {{ source = \"file\", path = \"pg-password\" }}\n\
         token_key = {{ source = \"file\", path = \"token-key\" }}\npool_size = 1\n{extra}"
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).unwrap();
    driftless_core::Config::load(&path).unwrap().config
}

#[test]
fn the_config_chooses_postgres_and_a_rotated_password_needs_no_restart() {
    let Some((mut cluster, db)) = fixture() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = driftless_core::Env::from_pairs([("HOME", "/nonexistent")]);
    secret_file(&dir.path().join("pg-password"), cluster.password());
    secret_file(&dir.path().join("token-key"), new_key_text() + "\n");
    let config = config_in(dir.path(), &cluster.url(&db), "");
    assert!(
        config
            .secret_inputs()
            .iter()
            .any(|(n, _)| n == "gateway.devices.postgres.password")
    );
    let state = dir.path().join("state");
    let store = open_configured(&config, &env, dir.path(), &state).unwrap();
    assert!(
        !state.exists(),
        "the PostgreSQL store wrote to the state directory"
    );
    let sc = scopes(&["operator.read"]);
    let d = device("dev-pw", &sc, LOOPBACK);
    let tok = paired_silently(&*store, &d);

    // The password is rotated at the server and at its source; the gateway's open connection
    // ends. The next call logs in again with the new password, without a restart.
    let rotated = "rotated-password-canary-7f3a";
    cluster.set_password(rotated);
    secret_file(&dir.path().join("pg-password"), rotated);
    cluster.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'driftless-gateway'",
    );
    assert_eq!(
        verify_device_token(&*store, &d, tok.token.expose(), T0 + 1).unwrap(),
        TokenCheck::Ok
    );
    drop(store);

    // A wrong password fails with the server's reason, naming the database, never the password.
    secret_file(
        &dir.path().join("pg-password"),
        "wrong-password-canary-91c2",
    );
    let Err(e) = open_configured(&config, &env, dir.path(), &state) else {
        panic!("opened")
    };
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(shown.contains(&db), "{shown}");
    for secret in ["wrong-password-canary-91c2", rotated] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// A session the server ends while one of its statements waits (an administrator's
/// `pg_terminate_backend`, a shutdown) gets FATAL as that statement's answer, before its socket
/// reads as closed: the store tries again on a new connection rather than failing the caller.
#[test]
fn a_session_ended_mid_statement_is_tried_again_on_a_new_connection() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let store = open_postgres(&cluster, &db, &new_key_text());
    let sc = scopes(&["operator.read"]);
    let d = device("dev-fatal", &sc, LOOPBACK);
    let tok = paired_silently(&store, &d);
    // The store's session waiting for a lock, other than `seen`.
    let waiting = |seen: &str| {
        format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'driftless-gateway'
             AND wait_event_type = 'Lock' AND pid::text <> '{seen}'"
        )
    };
    std::thread::scope(|s| {
        // Another session holds the tokens table, so the store's next read waits for it.
        let holder = s.spawn(|| {
            cluster.try_psql(
                &db,
                "LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
            )
        });
        // Its lock granted (the session is active a moment before its LOCK has run).
        let holding = format!(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE d.datname = '{db}' AND l.locktype = 'relation'
             AND l.mode = 'AccessExclusiveLock' AND l.granted"
        );
        let holding = wait_for_row(&cluster, &holding, || false).expect("the lock is held");
        let verify = s.spawn(|| verify_device_token(&store, &d, tok.token.expose(), T0 + 1));
        let first = wait_for_row(&cluster, &waiting(""), || verify.is_finished())
            .expect("the read waits for the lock");
        cluster.psql("postgres", &format!("SELECT pg_terminate_backend({first})"));
        // The same read, on another connection, waits again (unless it gave up); then the lock
        // is let go.
        let retried = wait_for_row(&cluster, &waiting(&first), || verify.is_finished());
        cluster.psql("postgres", &format!("SELECT pg_cancel_backend({holding})"));
        assert!(
            holder.join().unwrap().is_err(),
            "the lock holder was not cancelled"
        );
        assert_eq!(verify.join().unwrap().unwrap(), TokenCheck::Ok);
        assert!(retried.is_some());
    });
}

/// The first row `sql` returns once it returns one (within 30 s), or `None` once `give_up`.
fn wait_for_row(cluster: &Cluster, sql: &str, give_up: impl Fn() -> bool) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cluster.psql("postgres", sql);
        if let Some(row) = out.lines().next() {
            return Some(row.to_owned());
        }
        if give_up() {
            return None;
        }
        assert!(std::time::Instant::now() < deadline, "no row from {sql}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn bad_settings_are_refused_without_echoing_secrets() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = driftless_core::Env::from_pairs([("HOME", "/nonexistent")]);
    secret_file(&dir.path().join("pg-password"), cluster.password());
    let state = dir.path().join("state");

    // A token key that is not one names the field, not its content.
    let garbage = "not-a-key-canary-d41d8cd98f00b204";
    secret_file(&dir.path().join("token-key"), garbage);
    let config = config_in(dir.path(), &cluster.url(&db), "");
    let Err(e) = open_configured(&config, &env, dir.path(), &state) else {
        panic!("opened")
    };
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains("gateway.devices.postgres.token_key"),
        "{shown}"
    );
    assert!(!shown.contains(garbage), "{shown}");

    // A password in the URL is refused and not repeated.
    secret_file(&dir.path().join("token-key"), new_key_text());
    let url = "postgres://driftless:url-password-canary-55e1@localhost/driftless";
    let config = config_in(dir.path(), url, "");
    let Err(e) = open_configured(&config, &env, dir.path(), &state) else {
        panic!("opened")
    };
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("password"), "{shown}");
    assert!(!shown.contains("url-password-canary-55e1"), "{shown}");

    // `store = "postgres"` without its table is a config error.
    let path = dir.path().join("bare.toml");
    std::fs::write(&path, "[gateway.devices]\nstore = \"postgres\"\n").unwrap();
    let e = driftless_core::Config::load(&path).unwrap_err();
    assert!(e.to_string().contains("[gateway.devices.postgres]"), "{e}");
}

/// The fleet's shared secrets: two replicas publish into one order. The same secret again changes
/// nothing; a new one becomes the newest and gives the one before the publisher's grace (by the
/// database's clock); a replica whose source still holds a replaced secret is told it is
/// superseded and does not bring it back; a grace of 0 and `end_grace` end the overlap at once;
/// the other replica's listener hears every change; the table holds keyed verifiers, never a
/// secret or its plain hash.
#[test]
fn two_replicas_publish_one_order_of_shared_secrets() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let key = new_key_text();
    let (a, b) = (
        open_postgres(&cluster, &db, &key),
        open_postgres(&cluster, &db, &key),
    );
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    let secrets = [
        "canary-fleet-one-5d1c",
        "canary-fleet-two-7e2a",
        "canary-fleet-three-9b4f",
    ];
    let v = |s: &str| fa.verifier().of(s);
    let fp = |s: &str| SecretValue::new(s.into()).fingerprint().to_string();
    assert_eq!(fa.verifier().of(secrets[0]), fb.verifier().of(secrets[0]));
    assert_ne!(v(secrets[0]), v(secrets[1]));

    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    assert!(b.deliver_events(Box::new(move |e| {
        if let StoreEvent::SharedSecrets(view) = e {
            let _ = tx.lock().unwrap().send(view);
        }
    })));
    let heard = |newest: &str| loop {
        let view = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("B's listener delivers the fleet's view");
        if view.newest.fingerprint == fp(newest) {
            return view;
        }
    };

    let (p, first) = fa.publish(&v(secrets[0]), &fp(secrets[0]), 4_000).unwrap();
    assert_eq!(p, Published::Newest);
    assert_eq!(first.newest.fingerprint, fp(secrets[0]));
    assert_eq!(first.newest.verifier, v(secrets[0]));
    assert_eq!(first.previous, None);
    assert_eq!(heard(secrets[0]), first);
    // The same secret from the other replica: nothing new.
    let (p, again) = fb.publish(&v(secrets[0]), &fp(secrets[0]), 4_000).unwrap();
    assert_eq!((p, &again), (Published::Newest, &first));

    // B sees a new secret first: the newest now, the first one in B's grace.
    let (p, second) = fb.publish(&v(secrets[1]), &fp(secrets[1]), 4_000).unwrap();
    assert_eq!(p, Published::Newest);
    assert!(second.newest.id > first.newest.id);
    let (prev, left) = second.previous.clone().expect("the first one in grace");
    assert_eq!(prev, first.newest);
    assert!((3_000..=4_000).contains(&left), "{left}");
    assert_eq!(heard(secrets[1]).newest, second.newest);

    // A restarted with its old source: superseded, not reinstated.
    let (p, view) = fa.publish(&v(secrets[0]), &fp(secrets[0]), 4_000).unwrap();
    assert_eq!(p, Published::Superseded);
    assert_eq!(view.newest, second.newest);

    // A grace of 0 ends the overlap at once, and the first secret's stays ended.
    let (p, third) = fa.publish(&v(secrets[2]), &fp(secrets[2]), 0).unwrap();
    assert_eq!((p, third.previous.clone()), (Published::Newest, None));
    assert_eq!(heard(secrets[2]).previous, None);

    // `end_grace` ends an open one for the fleet.
    let (_, fourth) = fb
        .publish(&v("canary-fleet-four-1a3e"), "fp4", 60_000)
        .unwrap();
    assert_eq!(fourth.previous.map(|(p, _)| p.id), Some(third.newest.id));
    let ended = fa.end_grace().unwrap().unwrap();
    assert_eq!((ended.newest.id, ended.previous), (fourth.newest.id, None));

    let dump = cluster.psql(&db, "SELECT t::text FROM shared_secrets t");
    for s in secrets {
        use sha2::Digest;
        let plain_hash: String = sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!dump.contains(s), "a shared secret is stored");
        assert!(!dump.contains(&plain_hash), "a plain hash is stored");
    }
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM shared_secrets"),
        "4"
    );
}

/// The replicas table: a heartbeat records a replica (again: updated, its start kept), the list
/// holds the live ones, and leaving removes one.
#[test]
fn replicas_heartbeat_list_and_leave() {
    let Some((cluster, db)) = fixture() else {
        return;
    };
    let key = new_key_text();
    let (a, b) = (
        open_postgres(&cluster, &db, &key),
        open_postgres(&cluster, &db, &key),
    );
    let (fa, fb) = (a.fleet().unwrap(), b.fleet().unwrap());
    fa.heartbeat(
        "replica-a",
        "10.0.0.1:18789",
        &["sha256:aaaaaaaaaaaa".into()],
    )
    .unwrap();
    fb.heartbeat("replica-b", "10.0.0.2:18789", &[]).unwrap();
    let first = fb.replicas().unwrap();
    assert_eq!(
        first.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["replica-a", "replica-b"]
    );
    let accepts = vec![
        "sha256:bbbbbbbbbbbb".to_owned(),
        "sha256:aaaaaaaaaaaa".into(),
    ];
    fa.heartbeat("replica-a", "10.0.0.1:18789", &accepts)
        .unwrap();
    let again = fb.replicas().unwrap();
    assert_eq!(again[0].accepts, accepts);
    assert_eq!(again[0].started_at_ms, first[0].started_at_ms);
    assert!(again[0].last_seen_ms >= first[0].last_seen_ms);
    assert_eq!(again[0].listen, "10.0.0.1:18789");
    fa.leave("replica-a").unwrap();
    assert_eq!(fb.replicas().unwrap().len(), 1);
    // A replica not seen for longer than the live window is not listed.
    cluster.psql(
        &db,
        "UPDATE replicas SET last_seen = now() - interval '1 minute' WHERE id = 'replica-b'",
    );
    assert!(fa.replicas().unwrap().is_empty());
}
