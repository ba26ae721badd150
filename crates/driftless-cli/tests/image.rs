//! The container image the Helm chart deploys (issue 15, item 14): built from the repository's
//! Dockerfile and run as `deploy/helm/driftless/templates/workload.yaml` runs it: read-only root
//! filesystem, uid/gid 10001 plus the fsGroup, every capability dropped, no privilege escalation,
//! the chart's rendered config mounted as a read-only file and the token as a Secret volume (the
//! kubelet's `..data` layout, owner root, group the fsGroup, mode 0440). The gateway must answer
//! `/readyz` and take a rotated token live while the old one works in its grace window.
//!
//! The engine is Debian's podman as root with runc. No registry is reachable here, so two things
//! are stood in, and only these: the `debian:bookworm-slim` base is a minimal Debian bookworm made
//! by `debootstrap` and imported under that name into the test's own image store (never the
//! machine's), and the build stage is replaced by the binary under test (`--build-context build=`),
//! so the runtime stage is built exactly as written, `apt-get` included. The store lives in
//! `${XDG_CACHE_HOME:-~/.cache}/driftless-tests/podman`, so later runs reuse the base and layers.
//! The containers get the host's network (a bridge cannot be set up here).
//!
//! Without podman or debootstrap the test skips and says why; with `DRIFTLESS_REQUIRE_TOOLS=1`
//! (CI) it fails instead.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use driftless_core::Env;
use serde_json::Value;
use support::{chart_dir, workspace_root};

/// The image this test builds, in its own store.
const IMAGE: &str = "localhost/driftless-image-test:latest";
/// The rotated token; like the support canaries it must never appear in the container's log.
const NEW_CANARY: &str = "canary-image-rotated-token-41d8e2";
/// A generous bound for start-up on a loaded machine (a functional timeout, not a benchmark).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A tool on PATH, or `None` after saying why the test cannot run (a failure under
/// `DRIFTLESS_REQUIRE_TOOLS=1`).
fn need(env: &Env, name: &str, package: &str) -> Option<PathBuf> {
    let found = env
        .get("PATH")
        .unwrap_or("/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!("{name} is not installed (Debian package `{package}`)");
        assert!(
            env.get("DRIFTLESS_REQUIRE_TOOLS") != Some("1"),
            "DRIFTLESS_REQUIRE_TOOLS=1: {why}"
        );
        eprintln!("skipped: {why}; the image cannot be built and run without it");
    }
    found
}

/// podman with the test's own store and containers.conf.
struct Podman {
    store: PathBuf,
}

impl Podman {
    fn new(env: &Env) -> Podman {
        let cache = env
            .non_empty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env.get("HOME").unwrap_or("/root")).join(".cache"));
        let store = cache.join("driftless-tests/podman");
        std::fs::create_dir_all(&store).unwrap();
        // podman's default `nofile`/`nproc` for containers are above what runc may set on these
        // machines (even `--ulimit host` fails for `nproc`): 4,096 each, or half the hard limit
        // where that is lower. No systemd runs here: cgroupfs, file events, runc.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let half_of = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| {
                    l[name.len()..]
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u64>()
                        .ok()
                })
                .map_or(1024, |hard| (hard / 2).min(4096))
        };
        let (nofile, nproc) = (half_of("Max open files"), half_of("Max processes"));
        std::fs::write(
            store.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n"
            ),
        )
        .unwrap();
        Podman { store }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.store.join("containers.conf"))
            .arg("--root")
            .arg(self.store.join("storage"))
            .arg("--runroot")
            .arg(self.store.join("run"))
            .args(["--storage-driver", "overlay"])
            .stdin(Stdio::null());
        c
    }

    /// Runs podman with `args`; panics with its output unless it succeeds.
    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn exists(&self, image: &str) -> bool {
        self.command()
            .args(["image", "exists", image])
            .status()
            .expect("running podman")
            .success()
    }

    /// The stand-in for `debian:bookworm-slim`: a minimal bookworm from Debian's own packages.
    fn ensure_base(&self, scratch: &Path) {
        const BASE: &str = "docker.io/library/debian:bookworm-slim";
        if self.exists(BASE) {
            return;
        }
        let rootfs = scratch.join("rootfs");
        let status = Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .stdout(Stdio::null())
            .status()
            .expect("running debootstrap");
        assert!(status.success(), "debootstrap failed: {status}");
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("running tar");
        let out = self
            .command()
            .args(["import", "-", BASE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("running podman import");
        assert!(tar.wait().unwrap().success());
        assert!(
            out.status.success(),
            "podman import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Removes the container, whatever happens to the test.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Container<'_> {
    fn logs(&self) -> String {
        let out = self.podman.run(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn running(&self) -> bool {
        let out = self
            .podman
            .run(&["inspect", "--format", "{{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    fn pid(&self) -> u32 {
        let out = self
            .podman
            .run(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["rm", "--force", "--time", "5", &self.name])
            .output();
    }
}

/// The chart's values.yaml.
fn values() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
        .unwrap()
}

/// The ConfigMap's `config.toml` as the chart renders it, from the template itself, with the
/// gateway on `port` (`--set gateway.port=...`) and the other values at their defaults.
fn rendered_config(values: &Value, port: u16) -> String {
    let template = std::fs::read_to_string(chart_dir().join("templates/configmap.yaml")).unwrap();
    let block = template
        .split_once("config.toml: |\n")
        .expect("the ConfigMap has config.toml")
        .1;
    let mut text = String::new();
    for line in block.lines() {
        match line.strip_prefix("    ") {
            Some(l) => text.push_str(l),
            None if line.trim().is_empty() => {}
            None => break,
        }
        text.push('\n');
    }
    // The default store is SQLite and OpenClaw is not beside driftless: the PostgreSQL and
    // `[upstream]` blocks render to nothing (neither holds a nested block).
    assert_eq!(values["deviceStore"]["type"], "sqlite");
    assert_eq!(values["openclaw"]["enabled"], false);
    for optional in [
        r#"{{- if eq .Values.deviceStore.type "postgres" }}"#,
        "{{- if .Values.openclaw.enabled }}",
    ] {
        let (before, rest) = text.split_once(optional).expect("the optional block");
        let (_, after) = rest.split_once("{{- end }}").expect("the block ends");
        text = format!("{}{after}", before.trim_end_matches(' '));
    }
    let token_path = format!(
        "{}/{}",
        values["auth"]["mountPath"].as_str().unwrap(),
        values["auth"]["existingSecretKey"].as_str().unwrap()
    );
    let text = text
        .replace("{{ .Values.gateway.port }}", &port.to_string())
        .replace(
            r#"{{ include "driftless.tokenPath" . | quote }}"#,
            &format!("{token_path:?}"),
        )
        .replace(
            "{{ .Values.gateway.rotationGraceSeconds }}",
            &values["gateway"]["rotationGraceSeconds"].to_string(),
        );
    assert!(!text.contains("{{"), "an unrendered expression:\n{text}");
    text
}

/// A Secret volume as the kubelet's atomic writer lays it out and updates it: a timestamped
/// directory, `..data` pointing at it (swapped by rename), one symlink per key through `..data`;
/// files owned by root with the fsGroup as group, mode 0440 (the chart's `defaultMode: 288`).
struct SecretVolume {
    dir: PathBuf,
    gid: u32,
    generation: u32,
}

impl SecretVolume {
    fn publish(&mut self, key: &str, value: &str) {
        self.generation += 1;
        let ts = format!(
            "..2026_12_01_17_00_0{}.{}",
            self.generation, self.generation
        );
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = ts_dir.join(key);
        std::fs::write(&file, value).unwrap();
        chown(&file, Some(0), Some(self.gid)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let link = self.dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// `GET /readyz` on loopback: the status code, or `None` while nothing answers.
fn readyz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A field of `/proc/<pid>/status` (e.g. `Uid`), whitespace-separated values.
fn proc_status(pid: u32, field: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The cause of item 14 without a container engine: where no CA certificates can be found
/// (`SSL_CERT_FILE` names an empty bundle, `SSL_CERT_DIR` an empty directory), a gateway with no
/// provider starts; with a provider it stops with exit 70 and says what to do.
#[test]
fn without_ca_certificates_only_a_gateway_with_providers_refuses_to_start() {
    let home = support::Home::new();
    home.token_config(support::CANARY, "");
    let bundle = home.path().join("empty-bundle.pem");
    std::fs::write(&bundle, "").unwrap();
    let dir = home.path().join("no-certs");
    std::fs::create_dir(&dir).unwrap();
    let env = [
        ("SSL_CERT_FILE", bundle.to_str().unwrap()),
        ("SSL_CERT_DIR", dir.to_str().unwrap()),
    ];
    let gw = support::Gateway::start(&home, &[], &env);
    assert_eq!(gw.http_get("/readyz").0, 200);
    gw.finish();

    let config = std::fs::read_to_string(home.config_path()).unwrap();
    home.write_config(&format!(
        "{config}\n[providers.upstream]\nbase_url = \"https://127.0.0.1:9/v1\"\n"
    ));
    let err = match support::Gateway::try_start(&home, &[], &env) {
        Ok(_) => panic!("a provider without CA certificates must stop the gateway"),
        Err(e) => e,
    };
    assert!(err.contains("exit status: 70"), "{err}");
    assert!(
        err.contains("No CA certificates were loaded")
            && err.contains("install the system's CA certificates"),
        "{err}"
    );
    support::assert_no_canary(&err, "start-up error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_image_starts_serves_and_rotates_its_mounted_token() {
    let env = Env::from_process();
    if need(&env, "podman", "podman").is_none()
        || need(&env, "debootstrap", "debootstrap").is_none()
    {
        return;
    }
    let podman = Podman::new(&env);
    let scratch = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| podman.ensure_base(scratch.path()));

    // The runtime stage as written; the build stage's /out/driftless is the binary under test.
    let stage = scratch.path().join("build-stage");
    std::fs::create_dir_all(stage.join("out")).unwrap();
    std::fs::copy(support::BIN, stage.join("out/driftless")).unwrap();
    let context = scratch.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let dockerfile = workspace_root().join("Dockerfile");
    tokio::task::block_in_place(|| {
        podman.run(&[
            "build",
            "--pull=never",
            "--network=host",
            "--build-context",
            &format!("build={}", stage.display()),
            "--file",
            dockerfile.to_str().unwrap(),
            "--tag",
            IMAGE,
            context.to_str().unwrap(),
        ])
    });

    // The providers' HTTPS endpoints are verified against the image's CA bundle.
    let bundle = podman.run(&[
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=/bin/sh",
        IMAGE,
        "-c",
        "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt || true",
    ]);
    let certificates: u32 = String::from_utf8_lossy(&bundle.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        certificates > 100,
        "the image has {certificates} CA certificates in /etc/ssl/certs/ca-certificates.crt"
    );

    // The pod's volumes, as the kubelet would lay them out.
    let values = values();
    let sc = &values["securityContext"];
    let (uid, gid, fs_group) = (
        sc["runAsUser"].as_u64().unwrap() as u32,
        sc["runAsGroup"].as_u64().unwrap() as u32,
        sc["fsGroup"].as_u64().unwrap() as u32,
    );
    let port = support::free_port();
    let config_dir = scratch.path().join("configmap");
    std::fs::create_dir(&config_dir).unwrap();
    let config = config_dir.join("config.toml");
    std::fs::write(&config, rendered_config(&values, port)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o444)).unwrap();
    let key = values["auth"]["existingSecretKey"].as_str().unwrap();
    let mut secret = SecretVolume {
        dir: scratch.path().join("secret"),
        gid: fs_group,
        generation: 0,
    };
    std::fs::create_dir(&secret.dir).unwrap();
    secret.publish(key, support::CANARY);
    // An emptyDir with an fsGroup: group-owned, setgid, writable by the group.
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chown(&state, Some(0), Some(fs_group)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770)).unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let name = format!("driftless-image-test-{}", std::process::id());
    let mount_path = values["auth"]["mountPath"].as_str().unwrap();
    let volume = |host: &Path, at: &str, mode: &str| format!("{}:{at}:{mode}", host.display());
    let user = format!("{uid}:{gid}");
    let group = fs_group.to_string();
    let vol_config = volume(&config_dir, "/etc/driftless", "ro");
    let vol_secret = volume(&secret.dir, mount_path, "ro");
    let vol_state = volume(&state, "/var/lib/driftless", "rw");
    podman.run(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--network=host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,size=16m,mode=1777",
        "--user",
        &user,
        "--group-add",
        &group,
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--env=DRIFTLESS_CONFIG=/etc/driftless/config.toml",
        "--env=DRIFTLESS_STATE_DIR=/var/lib/driftless",
        "--volume",
        &vol_config,
        "--volume",
        &vol_secret,
        "--volume",
        &vol_state,
        IMAGE,
        "gateway",
        "run",
    ]);
    let container = Container {
        podman: &podman,
        name,
    };

    let deadline = Instant::now() + READY_WITHIN;
    while readyz(port) != Some(200) {
        assert!(
            container.running(),
            "the container exited before /readyz answered 200:\n{}",
            container.logs()
        );
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer 200 within {READY_WITHIN:?}:\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It runs as the chart says: the numeric user, the fsGroup, no capabilities, no privilege
    // escalation, a read-only root.
    let pid = container.pid();
    assert_eq!(proc_status(pid, "Uid"), vec![uid.to_string(); 4]);
    assert_eq!(proc_status(pid, "Gid"), vec![gid.to_string(); 4]);
    assert!(proc_status(pid, "Groups").contains(&fs_group.to_string()));
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), ["1"]);
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[4] == "/")
        .expect("a root mount");
    assert!(
        root[5].split(',').any(|o| o == "ro"),
        "root mounted {}",
        root[5]
    );

    // A live rotation of the mounted token: the new one is taken, the old one works in grace.
    let url = format!("ws://127.0.0.1:{port}");
    assert!(support::accepted(&url, support::CANARY).await);
    assert!(!support::accepted(&url, support::WRONG_CANARY).await);
    secret.publish(key, NEW_CANARY);
    assert!(
        support::eventually(support::RELOAD_WITHIN, || support::accepted(
            &url, NEW_CANARY
        ))
        .await,
        "the rotated token was not accepted within {:?} of the ..data swap:\n{}",
        support::RELOAD_WITHIN,
        container.logs()
    );
    assert!(
        support::accepted(&url, support::CANARY).await,
        "the old token must work during the grace window"
    );
    assert!(container.running());
    let logs = container.logs();
    support::assert_no_canary(&logs, "container log");
    assert!(
        !logs.contains(NEW_CANARY),
        "the rotated token leaked:\n{logs}"
    );
}
