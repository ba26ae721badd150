//! Secret and config sources under hostile or merely busy conditions, on the real binary: an idle
//! gateway whose files are being read stays idle.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Lines the exec source has appended to its counter file: one per run.
fn runs(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Sum of the gateway's `secret_reloads` counter over all outcomes.
fn reloads(gw: &Gateway) -> f64 {
    let (_, body) = gw.http_get("/metrics");
    body.lines()
        .filter(|l| l.starts_with("driftless_gateway_secret_reloads"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 15 finding 0: every open of a file in a watched directory used to trigger a reload, whose
/// own opens triggered the next one (~10 reloads/s, an exec source run at that rate). Over an idle
/// minute with the token file and config read all the time, the exec source may run only at the
/// periodic backstop (every 30 s, so at most twice), and a SIGHUP still runs it exactly once more.
#[tokio::test]
async fn an_idle_gateway_whose_files_are_read_does_not_reload() {
    let home = Home::new();
    let tok = home.path().join("secrets/token");
    write_secret(&tok, CANARY);
    let counter = home.path().join("exec-runs");
    let script = format!("echo run >> '{}'; echo provider-key", counter.display());
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\n\
         token = {{ source = \"file\", path = {:?} }}\n\
         [providers.local]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key = {{ source = \"exec\", command = [\"sh\", \"-c\", {script:?}] }}\n",
        tok.to_str().unwrap(),
    ));
    let gw = Gateway::start(&home, &[], &[]);
    // The periodic backstop ticks every 30 s from about here.
    let started = Instant::now();
    let at_start = runs(&counter);
    assert!(at_start >= 1, "the exec source did not run at start");
    let reloads_at_start = reloads(&gw);

    // A client reading the token file and a CLI loading the config, over and over for a minute.
    let config = home.config_path();
    let idle = Duration::from_secs(60);
    let began = Instant::now();
    let mut reads = 0u32;
    while began.elapsed() < idle {
        std::fs::read(&tok).unwrap();
        std::fs::read(&config).unwrap();
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reads > 500, "only {reads} reads in the idle minute");

    let idle_runs = runs(&counter) - at_start;
    assert!(
        idle_runs <= 2,
        "the exec source ran {idle_runs} times in an idle minute (allowed: 2 periodic backstops)"
    );
    let idle_reloads = reloads(&gw) - reloads_at_start;
    assert!(
        idle_reloads <= 2.0,
        "{idle_reloads} reloads in an idle minute (allowed: 2 periodic backstops)"
    );

    // The counter is live: a SIGHUP reloads, running the command exactly once. Sent halfway
    // between two backstop ticks (at about 60 and 90 s), so the tick's own run cannot land in
    // the count (a fresh-clone CI run saw the 60 s tick's run finish after `before` was read).
    tokio::time::sleep_until((started + Duration::from_secs(75)).into()).await;
    let before = runs(&counter);
    Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        eventually(RELOAD_WITHIN, || async { runs(&counter) > before }).await,
        "SIGHUP did not run the exec source"
    );
    // Settle past the debounce window: the reload's own reads must not start another one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        runs(&counter),
        before + 1,
        "SIGHUP ran the exec source more than once"
    );
    gw.finish();
}

/// Issue 15 findings 3 and 8: a FIFO as config or as the token file used to hang `secrets check`
/// and `gateway run` in `open()` (no writer ever comes). Now each ends at once with an error that
/// names what the file is; a config is a config error (exit 78).
#[test]
fn a_fifo_as_config_or_token_file_is_refused_at_once() {
    let home = Home::new();
    let config = home.config_path();
    mkfifo(&config);
    let (status, _, stderr) = home.run(&["secrets", "check"]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("FIFO") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    match Gateway::try_start(&home, &[], &[]) {
        Ok(_) => panic!("the gateway started with a FIFO as config"),
        Err(log) => assert!(log.contains("FIFO"), "{log}"),
    }

    let home = Home::new();
    let tok = home.path().join("secrets/token");
    mkfifo(&tok);
    home.write_config(&format!(
        "[gateway]\nbind = \"127.0.0.1\"\nport = 0\n[gateway.auth]\nmode = \"token\"\n\
         token = {{ source = \"file\", path = {:?} }}\n",
        tok.to_str().unwrap(),
    ));
    let (status, stdout, stderr) = home.run(&["secrets", "check"]);
    assert!(!status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("FIFO"),
        "{stdout}{stderr}"
    );
    match Gateway::try_start(&home, &[], &[]) {
        Ok(_) => panic!("the gateway started with a FIFO as its token file"),
        Err(log) => assert!(log.contains("FIFO"), "{log}"),
    }
}
