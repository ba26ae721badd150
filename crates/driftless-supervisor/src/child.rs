//! One run of the child: spawned in its own process group with a built environment, its output
//! passed line by line through the redactor, stopped with SIGTERM → grace → SIGKILL to the group.

use std::collections::BTreeSet;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use driftless_core::{Env, Snapshot, redact};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Longest line passed through as one unit; longer lines are cut (and each piece redacted).
const MAX_LINE: u64 = 64 * 1024;

/// A running child.
pub struct Running {
    child: Child,
    pub pid: u32,
    pub started: Instant,
    /// The tasks copying its stdout and stderr out.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a stopped child's last output may take to be copied out after it exited (a
/// grandchild that still holds its pipes would otherwise hold the stop up).
const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// What to run and with which base environment.
pub struct Launch<'a> {
    pub command: &'a [String],
    /// The supervisor's own environment, which the child inherits...
    pub base: &'a Env,
    /// ...minus every name the supervisor manages (an unset name must not leak through from it).
    pub managed: &'a BTreeSet<String>,
}

/// Spawns the child with `snapshot`'s values as environment variables.
pub fn spawn(launch: &Launch<'_>, snapshot: &Snapshot) -> std::io::Result<Running> {
    // The child may print any value it was given, including one that has since left the
    // snapshot holder's current/previous pair: register what this child holds for its lifetime.
    for (_, s) in snapshot.iter() {
        redact::register(&s.value);
    }
    let mut cmd = Command::new(&launch.command[0]);
    cmd.args(&launch.command[1..])
        .env_clear()
        .envs(
            launch
                .base
                .iter()
                .filter(|(k, _)| !launch.managed.contains(*k)),
        )
        .envs(snapshot.iter().map(|(k, s)| (k.as_str(), s.value.expose())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop reaches grandchildren (a shell wrapper's real program) too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, tokio::io::stdout())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, tokio::io::stderr())));
    }
    Ok(Running {
        child,
        pid,
        started: Instant::now(),
        pumps,
    })
}

/// Copies `src` to `dst` one line at a time, redacting each line as a whole.
async fn pump(src: impl AsyncRead + Unpin, mut dst: impl AsyncWrite + Unpin) {
    let mut reader = BufReader::new(src);
    let mut line = Vec::with_capacity(256);
    // If our own output goes away, keep draining: a child blocked on a full pipe would hang.
    let mut sink_open = true;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !sink_open {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let clean = redact::redact(&text);
        sink_open = dst.write_all(clean.as_bytes()).await.is_ok() && dst.flush().await.is_ok();
    }
}

impl Running {
    /// Waits for the child to exit (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `sig` to the child itself (a reload signal).
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        let pid = Pid::from_raw(self.pid as i32).ok_or(std::io::ErrorKind::InvalidInput)?;
        rustix::process::kill_process(pid, sig).map_err(Into::into)
    }

    fn signal_group(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            // ESRCH means the group is already gone, which is what we want.
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }

    /// SIGTERM to the group, wait up to `grace`, then SIGKILL. Returns how the child ended.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal_group(Signal::TERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "child did not exit after SIGTERM within the grace period; sending SIGKILL"
                );
                self.signal_group(Signal::KILL);
                self.child.wait().await.ok()
            }
        };
        // What it printed last (its stop message) is copied out before the supervisor goes on,
        // or exits and loses it.
        let deadline = tokio::time::Instant::now() + DRAIN_WITHIN;
        for pump in self.pumps.drain(..) {
            if tokio::time::timeout_at(deadline, pump).await.is_err() {
                break;
            }
        }
        status
    }
}

/// The shell convention for an exit status: the code, or 128 + the signal number.
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}
