//! The scenarios of issue 8, each bounded in count and time, each run against one [`Server`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use driftless_core::Fingerprint;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::server::{Kind, Server, write_token};
use crate::wire::{self, Credential, SessionError};
use driftless_protocol::codes;

/// Client `i`'s source address: 127.0.0.2 ... 127.0.0.201. OpenClaw admits at most 32
/// unauthenticated sockets per source IP, and penalises wrong tokens per IP, so clients spread out.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8))
}

/// The token currently in the gateway's token file (one trailing newline trimmed, as the gateways
/// read it).
pub fn read_token(path: &Path) -> Result<String> {
    let value = driftless_core::source::resolve_file(path)
        .with_context(|| format!("reading the token from {}", path.display()))?;
    Ok(value.expose().to_string())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort();
        let at = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

fn count_error(errors: &mut BTreeMap<String, u64>, e: &SessionError) {
    *errors.entry(e.kind()).or_default() += 1;
}

/// How the sessions of a handshake run authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeAuth {
    /// The shared token.
    Shared,
    /// The shared token and a signed device identity (one Ed25519 key per client), already
    /// paired: each client's device is paired in one untimed session first.
    SignedShared,
    /// A signed device identity and the device token the gateway issued to it, as a paired client
    /// reconnects: each client first fetches its token in one untimed session with the shared
    /// token (before the server CPU is sampled), then every timed session presents only that.
    SignedDeviceToken,
    /// The shared token and a signed identity of a device never seen before (a fresh key per
    /// session): every session pairs a new device, silently as loopback clients do.
    NewDevice,
    /// A wrong shared token, from addresses ([`wrong_source`]) no other run uses: every session
    /// must be refused (`INVALID_REQUEST`), which then counts as its completion.
    WrongToken,
}

impl HandshakeAuth {
    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeAuth::Shared => "shared token",
            HandshakeAuth::SignedShared => "signed device + shared token (paired)",
            HandshakeAuth::SignedDeviceToken => "signed device + device token",
            HandshakeAuth::NewDevice => "new device pairing",
            HandshakeAuth::WrongToken => "wrong shared token",
        }
    }
}

/// Client `i`'s source address in a [`HandshakeAuth::WrongToken`] run: 127.0.1.2 ... 127.0.1.201,
/// apart from [`source`], so no other run's client is an address with failures.
pub fn wrong_source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2 + (i % 200) as u8))
}

#[derive(Debug, Clone, Serialize)]
pub struct Handshake {
    pub concurrency: usize,
    /// Each session also sent a signed device identity (Ed25519, verified by the server).
    pub signed_device: bool,
    /// Each session authenticated with the device's own token instead of the shared token.
    pub device_token: bool,
    pub sessions: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub sessions_per_sec: f64,
    /// Sessions a second offered to the server (paced clients), if not as many as it takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_sec: Option<f64>,
    /// open → challenge → connect → hello-ok → health answered (the close is not timed); for a
    /// wrong token, open → refusal.
    pub latency: Percentiles,
    /// CPU of every server the run used, per session.
    pub server_cpu_ms_per_session: f64,
}

/// The key of client `i`'s device, or of its `n`-th new device: a fixed seed, as the bench needs
/// distinct, valid keys, not secret ones.
fn device_key(i: usize, n: Option<u64>) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    if let Some(n) = n {
        seed[8] = 9;
        seed[9..17].copy_from_slice(&n.to_le_bytes());
    }
    SigningKey::from_bytes(&seed)
}

/// `concurrency` clients each loop full sessions until `duration` passes or `max_sessions`
/// sessions were started in total, authenticating as `auth` says. Signed clients each have their
/// own Ed25519 key and sign every connect.
pub async fn handshake(
    server: &Server,
    concurrency: usize,
    duration: Duration,
    max_sessions: u64,
    auth: HandshakeAuth,
) -> Result<Handshake> {
    handshake_on(&[server], concurrency, duration, max_sessions, auth).await
}

/// Token sessions offered at `per_sec` a second in all by `concurrency` paced clients, for
/// `duration`: two servers compared at one rate do the same work in the same time, where
/// [`handshake`] lets each reach its own rate (and a server's CPU per session falls as its rate
/// rises, each wake-up's cost shared by more sessions).
pub async fn handshake_paced(
    server: &Server,
    concurrency: usize,
    duration: Duration,
    per_sec: f64,
) -> Result<Handshake> {
    let clients = prepare(&[server], concurrency, HandshakeAuth::Shared)
        .await?
        .paced(per_sec);
    drive(&[server], clients, duration, u64::MAX).await
}

/// [`handshake`] over several servers (replicas sharing one token and device store): each client
/// sends its sessions to the servers in turn, starting with server `i % n`, so consecutive
/// sessions of one device land on different replicas.
pub async fn handshake_on(
    servers: &[&Server],
    concurrency: usize,
    duration: Duration,
    max_sessions: u64,
    auth: HandshakeAuth,
) -> Result<Handshake> {
    let clients = prepare(servers, concurrency, auth).await?;
    drive(servers, clients, duration, max_sessions).await
}

/// The clients of a handshake run, ready to start: keys made, devices paired and device tokens
/// fetched (untimed).
pub struct Clients {
    auth: HandshakeAuth,
    token: Arc<String>,
    keys: Vec<Option<SigningKey>>,
    device_tokens: Vec<Option<String>>,
    /// Each client's interval between session starts, when paced.
    interval: Option<Duration>,
}

impl Clients {
    /// Offers `per_sec` sessions a second in all: each client starts one every
    /// `clients / per_sec` seconds, the clients' starts spread evenly over that interval.
    pub fn paced(self, per_sec: f64) -> Clients {
        let interval = Duration::from_secs_f64(self.keys.len() as f64 / per_sec);
        Clients {
            interval: Some(interval),
            ..self
        }
    }

    /// Whether preparing them paired devices (sessions outside the run).
    pub fn paired(&self) -> bool {
        self.keys.iter().any(Option::is_some)
    }
}

/// Makes `concurrency` clients authenticating as `auth` says. Signed clients pair their device
/// first (one session each with the shared token, to the server they start with), and keep the
/// device token it issues when they present it.
pub async fn prepare(
    servers: &[&Server],
    concurrency: usize,
    auth: HandshakeAuth,
) -> Result<Clients> {
    let first = servers.first().context("no server to run handshakes on")?;
    let token = Arc::new(match auth {
        // The right token's length, so only the compare fails.
        HandshakeAuth::WrongToken => "w".repeat(read_token(&first.token_file)?.len()),
        _ => read_token(&first.token_file)?,
    });
    let signed_device = matches!(
        auth,
        HandshakeAuth::SignedShared | HandshakeAuth::SignedDeviceToken
    );
    let keys: Vec<Option<SigningKey>> = (0..concurrency)
        .map(|i| signed_device.then(|| device_key(i, None)))
        .collect();
    let mut device_tokens = vec![None; concurrency];
    if signed_device {
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref().expect("signed clients have keys");
            let t = wire::device_token(servers[i % servers.len()].addr, source(i), &token, key)
                .await
                .map_err(|e| anyhow::anyhow!("client {i} got no device token: {e:?}"))?;
            if auth == HandshakeAuth::SignedDeviceToken {
                device_tokens[i] = Some(t);
            }
        }
    }
    Ok(Clients {
        auth,
        token,
        keys,
        device_tokens,
        interval: None,
    })
}

/// Runs `clients`' sessions on `servers` until `duration` passes or `max_sessions` sessions were
/// started in total.
pub async fn drive(
    servers: &[&Server],
    clients: Clients,
    duration: Duration,
    max_sessions: u64,
) -> Result<Handshake> {
    let Clients {
        auth,
        token,
        keys,
        device_tokens,
        interval,
    } = clients;
    let concurrency = keys.len();
    let signed_device = auth != HandshakeAuth::Shared && auth != HandshakeAuth::WrongToken;
    let addrs: Arc<[SocketAddr]> = servers.iter().map(|s| s.addr).collect();
    let started = Arc::new(AtomicU64::new(0));
    let cpu = |servers: &[&Server]| servers.iter().map(|s| s.cpu_ms()).sum::<f64>();
    let cpu_before = cpu(servers);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = JoinSet::new();
    for (i, (key, device_token)) in keys.into_iter().zip(device_tokens).enumerate() {
        let (token, started, addrs) = (token.clone(), started.clone(), addrs.clone());
        tasks.spawn(async move {
            let credential = match &device_token {
                Some(t) => Credential::DeviceToken(t),
                None => Credential::Shared(&token),
            };
            let from = match auth {
                HandshakeAuth::WrongToken => wrong_source(i),
                _ => source(i),
            };
            let mut latencies = Vec::new();
            let mut errors = BTreeMap::new();
            let mut k = 0;
            let mut next_start =
                interval.map(|every| t0 + every.mul_f64(i as f64 / concurrency as f64));
            loop {
                if let (Some(at), Some(every)) = (next_start.as_mut(), interval) {
                    tokio::time::sleep_until((*at).into()).await;
                    // A client that fell behind does not burst to catch up.
                    *at = (*at + every).max(Instant::now());
                }
                let n = started.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline || n >= max_sessions {
                    break;
                }
                let addr = addrs[(i + k) % addrs.len()];
                k += 1;
                let new_key = (auth == HandshakeAuth::NewDevice).then(|| device_key(i, Some(n)));
                let begin = Instant::now();
                let outcome =
                    wire::session(addr, from, credential, key.as_ref().or(new_key.as_ref())).await;
                let outcome = match (auth, outcome) {
                    (HandshakeAuth::WrongToken, Err(SessionError::Rejected(code)))
                        if code == codes::INVALID_REQUEST =>
                    {
                        Ok(())
                    }
                    (HandshakeAuth::WrongToken, Ok(())) => {
                        Err(SessionError::Io("a wrong token was accepted".into()))
                    }
                    (_, outcome) => outcome,
                };
                match outcome {
                    Ok(()) => latencies.push(begin.elapsed()),
                    Err(e) => {
                        count_error(&mut errors, &e);
                        // Do not spin on a failing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.context("a handshake client panicked")?;
        latencies.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu(servers) - cpu_before;
    let sessions = latencies.len() as u64;
    Ok(Handshake {
        concurrency,
        signed_device,
        device_token: auth == HandshakeAuth::SignedDeviceToken,
        sessions,
        errors,
        seconds,
        sessions_per_sec: sessions as f64 / seconds,
        offered_per_sec: interval.map(|every| concurrency as f64 / every.as_secs_f64()),
        latency: Percentiles::of(latencies),
        server_cpu_ms_per_session: if sessions > 0 {
            cpu / sessions as f64
        } else {
            0.0
        },
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub target: usize,
    pub held: usize,
    pub errors: BTreeMap<String, u64>,
    pub open_seconds: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
    /// Connections the server closed while they were held (should be 0).
    pub closed_by_server: u64,
}

/// Opens `count` authenticated connections (64 handshakes in flight at a time), lets them sit for
/// `settle`, and compares the server's RSS before and after. Closes them all before returning.
pub async fn idle(server: &Server, count: usize, settle: Duration) -> Result<Idle> {
    const IN_FLIGHT: usize = 64;
    let token = Arc::new(read_token(&server.token_file)?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = server.rss_kib();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let closed = Arc::new(AtomicU64::new(0));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    let mut held = JoinSet::new();
    for i in 0..count {
        let (token, gate, closed, opened_tx, addr) = (
            token.clone(),
            gate.clone(),
            closed.clone(),
            opened_tx.clone(),
            server.addr,
        );
        held.spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened =
                wire::open_authenticated(addr, source(i), &token, &["operator.read"], None).await;
            drop(permit);
            match opened {
                Ok(ws) => {
                    let _ = opened_tx.send(Ok(()));
                    wire::hold(ws).await;
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        });
    }
    drop(opened_tx);
    let mut errors = BTreeMap::new();
    let mut ok = 0;
    for _ in 0..count {
        match opened_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => count_error(&mut errors, &e),
            None => break,
        }
    }
    let open_seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = server.rss_kib();
    let closed_by_server = closed.load(Ordering::Relaxed);
    // Dropping the tasks drops their sockets; give the server a moment to reap them.
    held.shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Idle {
        target: count,
        held: ok,
        errors,
        open_seconds,
        rss_before_kib,
        rss_after_kib,
        kib_per_connection: if ok > 0 {
            (rss_after_kib as f64 - rss_before_kib as f64) / ok as f64
        } else {
            0.0
        },
        closed_by_server,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub readyz_ms: f64,
    pub first_session_ms: f64,
    pub base_rss_kib: u64,
    /// Sessions refused (mostly `UNAVAILABLE`/1013 while starting) before the first success.
    pub refused_before_ready: u64,
}

/// From spawn: `/readyz` answers 200, then the first full session succeeds. Bounded by `limit`.
pub async fn startup(server: &mut Server, limit: Duration) -> Result<Startup> {
    let deadline = server.spawned + limit;
    let token = read_token(&server.token_file)?;
    let readyz = loop {
        if let Ok(200) = wire::http_status(server.addr, "/readyz").await {
            break server.spawned.elapsed();
        }
        check_alive(server, deadline, "/readyz to answer 200")?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut refused = 0;
    let first = loop {
        match wire::session(server.addr, source(0), Credential::Shared(&token), None).await {
            Ok(()) => break server.spawned.elapsed(),
            Err(SessionError::Rejected(code)) if code != "UNAVAILABLE" => {
                bail!(
                    "{} rejected the bench's token ({code}); see its log",
                    server.kind.name()
                )
            }
            Err(_) => refused += 1,
        }
        check_alive(server, deadline, "a first successful session")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Startup {
        readyz_ms: readyz.as_secs_f64() * 1000.0,
        first_session_ms: first.as_secs_f64() * 1000.0,
        base_rss_kib: server.rss_kib(),
        refused_before_ready: refused,
    })
}

fn check_alive(server: &mut Server, deadline: Instant, waiting_for: &str) -> Result<()> {
    if let Some(status) = server.exited() {
        bail!(
            "{} exited ({status}) while waiting for {waiting_for}",
            server.kind.name()
        );
    }
    if Instant::now() > deadline {
        bail!("{} gave no {waiting_for} in time", server.kind.name());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub clients: usize,
    pub rotations: u32,
    pub seconds: f64,
    pub sessions_ok: u64,
    /// Every session that did not complete, by cause (target: none).
    pub failed: BTreeMap<String, u64>,
    pub failed_total: u64,
    /// Sessions closed by the server after `hello-ok` (e.g. 4001 on a token change; target 0).
    pub dropped_after_auth: u64,
    /// From the rename of the token file to the first session accepted with the new token.
    pub propagation: Percentiles,
    /// Rotations whose new token was never accepted before the next rotation or the end.
    pub not_propagated: usize,
    /// How the peer was told about the new token (OpenClaw does not watch its secret files).
    pub reload: &'static str,
}

struct Generation {
    fingerprint: Fingerprint,
    renamed: Instant,
    first_accept: Option<Instant>,
}

/// `clients` clients reconnect continuously, each reading the token from the gateway's token file
/// before every session, while the file is replaced by atomic rename every `every` for `total`.
/// driftless watches the file; OpenClaw only re-reads secret files on `secrets.reload`, which the
/// rotator sends (authenticated with the previous token) right after each rename.
pub async fn rotation(
    server: &Server,
    clients: usize,
    every: Duration,
    total: Duration,
) -> Result<Rotation> {
    let token_file: Arc<PathBuf> = Arc::new(server.token_file.clone());
    let initial = read_token(&token_file)?;
    let generations = Arc::new(Mutex::new(vec![Generation {
        fingerprint: Fingerprint::of(initial.as_bytes()),
        renamed: Instant::now(),
        first_accept: None,
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let (token_file, generations, stop, addr) = (
            token_file.clone(),
            generations.clone(),
            stop.clone(),
            server.addr,
        );
        tasks.spawn(async move {
            let mut ok = 0u64;
            let mut failed = BTreeMap::new();
            let mut dropped = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(token) = read_token(&token_file) else {
                    *failed
                        .entry("token-file-unreadable".to_string())
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let fingerprint = Fingerprint::of(token.as_bytes());
                let opened =
                    wire::open_authenticated(addr, source(i), &token, &["operator.read"], None)
                        .await;
                let mut ws = match opened {
                    Ok(ws) => ws,
                    Err(e) => {
                        count_error(&mut failed, &e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let accepted = Instant::now();
                for generation in generations.lock().expect("no panics under lock").iter_mut() {
                    if generation.fingerprint.as_str() == fingerprint.as_str() {
                        generation.first_accept.get_or_insert(accepted);
                    }
                }
                match wire::call(&mut ws, "2", "health").await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        dropped += 1;
                        count_error(&mut failed, &e);
                    }
                }
                wire::close(ws).await;
            }
            (ok, failed, dropped)
        });
    }

    let mut reload = "none (the gateway watches its token file)";
    let rotations = (total.as_millis() / every.as_millis().max(1)) as u32;
    let mut previous = initial;
    for k in 1..=rotations {
        // On schedule from the start, whatever the reload took.
        tokio::time::sleep_until((t0 + every * k).into()).await;
        let token = write_token(&token_file)?;
        let renamed = Instant::now();
        generations
            .lock()
            .expect("no panics under lock")
            .push(Generation {
                fingerprint: Fingerprint::of(token.as_bytes()),
                renamed,
                first_accept: None,
            });
        if server.kind == Kind::OpenClaw {
            reload = "secrets.reload RPC after each rename";
            secrets_reload(server.addr, &previous).await?;
        }
        previous = token;
    }
    // Let the last token be picked up before stopping the clients.
    tokio::time::sleep(every.min(Duration::from_secs(2))).await;
    stop.store(true, Ordering::Relaxed);

    let mut sessions_ok = 0;
    let mut failed = BTreeMap::new();
    let mut dropped_after_auth = 0;
    while let Some(joined) = tasks.join_next().await {
        let (ok, f, d) = joined.context("a rotation client panicked")?;
        sessions_ok += ok;
        dropped_after_auth += d;
        for (k, v) in f {
            *failed.entry(k).or_default() += v;
        }
    }
    let generations = generations.lock().expect("no panics under lock");
    let delays: Vec<Duration> = generations[1..]
        .iter()
        .filter_map(|g| Some(g.first_accept?.saturating_duration_since(g.renamed)))
        .collect();
    Ok(Rotation {
        clients,
        rotations,
        seconds: t0.elapsed().as_secs_f64(),
        sessions_ok,
        failed_total: failed.values().sum(),
        failed,
        dropped_after_auth,
        not_propagated: rotations as usize - delays.len(),
        propagation: Percentiles::of(delays),
        reload,
    })
}

/// Tells OpenClaw to re-read its secret files, as an admin authenticated with the token it still
/// holds. OpenClaw then closes every shared-token session, this one included (4001).
async fn secrets_reload(addr: SocketAddr, current: &str) -> Result<()> {
    let mut ws = wire::open_authenticated(
        addr,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250)),
        current,
        &["operator.admin"],
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("secrets.reload: connect failed: {e:?}"))?;
    match wire::call(&mut ws, "2", "secrets.reload").await {
        Ok(_) | Err(SessionError::Dropped(4001)) => {}
        Err(e) => bail!("secrets.reload failed: {e:?}"),
    }
    wire::close(ws).await;
    Ok(())
}
