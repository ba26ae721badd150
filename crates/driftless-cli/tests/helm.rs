//! The Helm chart in `deploy/helm/driftless`, tested with real tools: helm v3 and v4 (`lint`,
//! `template`, `install`/`upgrade`), a Kubernetes schema validator in strict mode, and the real
//! `driftless` binary reading what the chart renders and rotating live on a kubelet-style swap.
//!
//! Tools come from `scripts/install-test-tools.sh` (into `.tools/` of the workspace), or from
//! `DRIFTLESS_HELM` (v4) / `DRIFTLESS_HELM3` (v3); Python tools from `.tools/venv` or `PATH`. A
//! missing tool skips the test with a printed reason; with `DRIFTLESS_REQUIRE_TOOLS=1` (CI) it
//! fails it instead.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use driftless_core::Env;
use driftless_core::secret::Fingerprint;
use driftless_gateway::testing::postgres::Cluster;
use serde_json::Value;
use support::{chart_dir, workspace_root};

const RELEASE: &str = "rel";
const NAMESPACE: &str = "demo";
const SECRET_NAME: &str = "rel-driftless-token";
const SECRET_KEY: &str = "gateway-token";
/// The device-token key the PostgreSQL rendering's Secret holds (32 bytes, base64url).
const DEVICE_TOKEN_KEY: &str = "b7Kx3mQ9vR2tY8wE5nA1cF6hJ4pL0sD7gU3iO9zXk2M";

// ---------------------------------------------------------------------------------------------
// Finding the tools

struct Tools {
    env: Env,
    root: PathBuf,
}

fn tools() -> Tools {
    Tools {
        // The edge of this test binary: the environment is read once, here.
        env: Env::from_process(),
        root: workspace_root(),
    }
}

impl Tools {
    fn require(&self) -> bool {
        self.env.get("DRIFTLESS_REQUIRE_TOOLS") == Some("1")
    }

    /// `Some(tool)`, or `None` after printing why the test is skipped (a panic when tools are required).
    fn need<T>(&self, tool: Option<T>, what: &str) -> Option<T> {
        if tool.is_none() {
            let why = format!("{what} not found; run scripts/install-test-tools.sh");
            assert!(!self.require(), "DRIFTLESS_REQUIRE_TOOLS=1 but {why}");
            eprintln!("skipping: {why}");
        }
        tool
    }

    fn on_path(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(self.env.get("PATH").unwrap_or(""))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    fn helm(&self, major: u8) -> Option<Helm> {
        let (var, sub) = match major {
            3 => ("DRIFTLESS_HELM3", "v3"),
            _ => ("DRIFTLESS_HELM", "v4"),
        };
        let path = match self.env.non_empty(var) {
            Some(p) => PathBuf::from(p),
            None => self.root.join(".tools").join(sub).join("helm/helm"),
        };
        let found = path.is_file().then(|| Helm {
            path,
            major,
            home: tempfile::tempdir().expect("helm home"),
        });
        self.need(
            found,
            &format!("helm v{major} ({var} or .tools/{sub}/helm/helm)"),
        )
    }

    /// Both helm majors; empty (test skipped) unless both are present.
    fn helms(&self) -> Vec<Helm> {
        match (self.helm(3), self.helm(4)) {
            (Some(a), Some(b)) => vec![a, b],
            _ => Vec::new(),
        }
    }

    /// A Python tool from the install script's virtualenv, else from `PATH`.
    fn python_tool(&self, name: &str) -> Option<PathBuf> {
        let venv = self.root.join(".tools/venv/bin").join(name);
        let found = if venv.is_file() {
            Some(venv)
        } else {
            self.on_path(name)
        };
        self.need(found, name)
    }

    fn validator(&self) -> Option<PathBuf> {
        self.python_tool("kubernetes-validate")
    }
}

/// A real helm binary with its own cache/config/data homes.
struct Helm {
    path: PathBuf,
    major: u8,
    home: tempfile::TempDir,
}

impl Helm {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        let home = self.home.path();
        cmd.args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-kubeconfig"))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run helm")
    }

    /// `helm template` of `chart` with `--set` values; panics with helm's stderr on failure.
    fn template_at(&self, chart: &Path, sets: &[&str]) -> String {
        let chart = chart.to_str().expect("utf-8 path");
        let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "helm v{} template {sets:?} failed: {}",
            self.major,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 manifests")
    }

    fn template(&self, sets: &[&str]) -> String {
        self.template_at(&chart_dir(), sets)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading rendered manifests

fn docs(manifests: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(manifests)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(docs)))
}

fn workload(docs: &[Value]) -> &Value {
    docs.iter()
        .find(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .expect("a workload")
}

fn config_toml(docs: &[Value]) -> &str {
    find(docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("config.toml in the ConfigMap")
}

/// The generated token, decoded (a fresh random one under `helm template`).
fn rendered_token(docs: &[Value]) -> String {
    let b64 = find(docs, "Secret")["data"][SECRET_KEY]
        .as_str()
        .expect("token key");
    decode(b64)
}

fn decode(b64: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 token");
    String::from_utf8(bytes).expect("utf-8 token")
}

/// What must hold in every rendering: the invariants the chart exists for.
fn check_invariants(docs: &[Value], secret_name: &str, token_path: &str) {
    let w = workload(docs);
    let pod = &w["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(spec["securityContext"]["fsGroup"].as_u64().unwrap() > 0);
    assert_eq!(spec["automountServiceAccountToken"], false);
    let containers = spec["containers"].as_array().unwrap();
    // One container, the gateway; with `openclaw.enabled` (front mode) OpenClaw's beside it.
    let sidecar = config_toml(docs).contains("\n[upstream]\n");
    assert_eq!(containers.len(), 1 + usize::from(sidecar));
    assert!(
        spec.get("initContainers").is_none(),
        "no init container copies anything"
    );
    let c = &containers[0];
    assert_eq!(c["name"], "gateway");
    if sidecar {
        check_openclaw_sidecar(docs);
    }
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(
            m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
            "a subPath mount never sees updates: {m}"
        );
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c.get("envFrom").is_none(),
        "the token is mounted, not in env"
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        env,
        [
            ("DRIFTLESS_CONFIG", "/etc/driftless/config.toml"),
            ("DRIFTLESS_STATE_DIR", "/var/lib/driftless"),
        ]
    );
    // The token Secret is a whole-directory volume, 0440, and the config references a file in it.
    let volumes = spec["volumes"].as_array().unwrap();
    let token_vol = volumes.iter().find(|v| v["name"] == "token").unwrap();
    assert_eq!(token_vol["secret"]["secretName"], secret_name);
    assert_eq!(token_vol["secret"]["defaultMode"], 0o440);
    assert!(token_vol["secret"].get("items").is_none());
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "token")
        .unwrap();
    let mount_dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(
        Path::new(token_path).parent().unwrap(),
        Path::new(mount_dir)
    );
    let toml = config_toml(docs);
    assert!(toml.contains("bind = \"0.0.0.0\""), "{toml}");
    assert!(
        toml.contains(&format!(
            "token = {{ source = \"file\", path = \"{token_path}\" }}"
        )),
        "{toml}"
    );
    // Only the config's checksum rolls pods; a Secret change must not need a restart.
    let annotations = pod["metadata"]["annotations"].as_object().unwrap();
    let checksums: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with("checksum/"))
        .collect();
    assert_eq!(checksums, ["checksum/config"]);
    let svc = find(docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "gateway");
}

/// What must hold when OpenClaw runs beside driftless: OpenClaw is reachable on the pod's loopback
/// only, and its token is one Secret, which driftless references as a mounted file and OpenClaw
/// reads when its container starts.
fn check_openclaw_sidecar(docs: &[Value]) {
    let spec = &workload(docs)["spec"]["template"]["spec"];
    let (gateway, openclaw) = (&spec["containers"][0], &spec["containers"][1]);
    assert_eq!(openclaw["name"], "openclaw");
    assert!(openclaw.get("ports").is_none(), "OpenClaw declares no port");
    let command: Vec<&str> = openclaw["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let port = command[command.len() - 3];
    assert_eq!(
        command[command.len() - 6..],
        ["--bind", "loopback", "--port", port, "--auth", "token"]
    );
    let sc = &openclaw["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["runAsUser"].as_u64().unwrap() > 0);
    // The Service reaches driftless only.
    let svc = find(docs, "Service");
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "gateway");
    // One Secret: OpenClaw's env names it, driftless mounts it whole and references its file.
    let env = openclaw["env"].as_array().unwrap();
    let from = env
        .iter()
        .find(|e| e["name"] == "OPENCLAW_GATEWAY_TOKEN")
        .expect("OpenClaw's token env")["valueFrom"]["secretKeyRef"]
        .clone();
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "openclaw-token")
        .expect("OpenClaw's token Secret volume");
    assert_eq!(volume["secret"]["secretName"], from["name"]);
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert!(volume["secret"].get("items").is_none());
    let mount = gateway["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "openclaw-token")
        .expect("driftless mounts OpenClaw's token Secret");
    assert_eq!(mount["readOnly"], true);
    let toml = config_toml(docs);
    for line in [
        format!("url = \"ws://127.0.0.1:{port}\""),
        format!(
            "token = {{ source = \"file\", path = \"{}/{}\" }}",
            mount["mountPath"].as_str().unwrap(),
            from["key"].as_str().unwrap()
        ),
    ] {
        assert!(toml.contains(&line), "{line} in {toml}");
    }
    assert!(
        openclaw
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().all(|m| m["name"] != "token")),
        "OpenClaw never sees driftless's own token"
    );
}

/// `helm template` with `sets`, validated strictly, of exactly these `kinds`, with the chart's
/// invariants for the generated token Secret.
fn render_checked(helm: &Helm, validator: &Path, sets: &[&str], kinds_: &[&str]) -> Vec<Value> {
    let manifests = helm.template(sets);
    validate_strict(validator, &manifests);
    let docs = docs(&manifests);
    assert_eq!(kinds(&docs), kinds_);
    check_invariants(
        &docs,
        SECRET_NAME,
        "/var/run/secrets/driftless/gateway-token",
    );
    docs
}

fn validate_strict(validator: &Path, manifests: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(validator)
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout.matches(" passed for resource ").count();
    assert_eq!(passed, docs(manifests).len(), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// lint, template, schema

#[test]
fn lint_strict_passes_on_helm_v3_and_v4() {
    let t = tools();
    let chart = chart_dir();
    for helm in t.helms() {
        for sets in [
            vec![],
            vec!["persistence.enabled=true", "auth.existingSecret=mine"],
            vec![
                "replicaCount=3",
                "deviceStore.type=postgres",
                "deviceStore.postgres.url=postgres://driftless@db/driftless",
                "deviceStore.postgres.existingSecret=driftless-db",
            ],
            OPENCLAW_SETS.to_vec(),
        ] {
            let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
            for s in &sets {
                args.extend(["--set", s]);
            }
            let out = helm.run(&args);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "helm v{} lint --strict {sets:?}: {stdout}{}",
                helm.major,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{stdout}"
            );
            assert!(
                !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn default_render_is_valid_kubernetes_and_generates_one_kept_secret() {
    let t = tools();
    let Some(validator) = t.validator() else {
        return;
    };
    for helm in t.helms() {
        let docs = render_checked(
            &helm,
            &validator,
            &[],
            &[
                "ServiceAccount",
                "Secret",
                "ConfigMap",
                "Service",
                "Deployment",
            ],
        );
        let secret = find(&docs, "Secret");
        assert_eq!(secret["metadata"]["name"], SECRET_NAME);
        assert_eq!(
            secret["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        let token = rendered_token(&docs);
        assert_eq!(token.len(), 48);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
        // Offline, `lookup` sees nothing: every render is a fresh placeholder (documented).
        assert_ne!(token, rendered_token(&self::docs(&helm.template(&[]))));
    }
}

/// Front mode with OpenClaw's container beside driftless.
const OPENCLAW_SETS: [&str; 2] = [
    "openclaw.enabled=true",
    "openclaw.image.repository=openclaw",
];

#[test]
fn the_openclaw_sidecar_renders_valid_with_openclaw_on_loopback_and_one_kept_token_secret() {
    let t = tools();
    let Some(validator) = t.validator() else {
        return;
    };
    for helm in t.helms() {
        let docs = render_checked(
            &helm,
            &validator,
            &OPENCLAW_SETS,
            &[
                "ServiceAccount",
                "Secret",
                "Secret",
                "ConfigMap",
                "Service",
                "Deployment",
            ],
        );
        let secret = docs
            .iter()
            .find(|d| {
                d["kind"] == "Secret" && d["metadata"]["name"] == "rel-driftless-openclaw-token"
            })
            .expect("OpenClaw's generated token Secret");
        assert_eq!(
            secret["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        let token = decode(secret["data"]["openclaw-gateway-token"].as_str().unwrap());
        assert_eq!(token.len(), 48);
        assert_ne!(token, rendered_token(&docs), "two tokens, not one");
        // A Secret the user manages instead: none generated, that one referenced.
        let mut sets = OPENCLAW_SETS.to_vec();
        sets.push("openclaw.auth.existingSecret=openclaw-mine");
        let docs = render_checked(
            &helm,
            &validator,
            &sets,
            &[
                "ServiceAccount",
                "Secret",
                "ConfigMap",
                "Service",
                "Deployment",
            ],
        );
        let spec = &workload(&docs)["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"][1]["env"][1]["valueFrom"]["secretKeyRef"]["name"],
            "openclaw-mine"
        );
    }
}

#[test]
fn existing_secret_render_is_valid_and_generates_no_secret() {
    let t = tools();
    let Some(validator) = t.validator() else {
        return;
    };
    for helm in t.helms() {
        let manifests = helm.template(&[
            "auth.existingSecret=team-gateway",
            "auth.existingSecretKey=token",
            "auth.mountPath=/run/driftless",
        ]);
        validate_strict(&validator, &manifests);
        let docs = docs(&manifests);
        assert!(!kinds(&docs).contains(&"Secret"), "{:?}", kinds(&docs));
        check_invariants(&docs, "team-gateway", "/run/driftless/token");
    }
}

#[test]
fn persistence_renders_a_statefulset_with_a_kept_pvc() {
    let t = tools();
    let Some(validator) = t.validator() else {
        return;
    };
    for helm in t.helms() {
        let docs = render_checked(
            &helm,
            &validator,
            &["persistence.enabled=true", "persistence.size=2Gi"],
            &[
                "ServiceAccount",
                "Secret",
                "ConfigMap",
                "PersistentVolumeClaim",
                "Service",
                "StatefulSet",
            ],
        );
        let pvc = find(&docs, "PersistentVolumeClaim");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "2Gi");
        assert_eq!(
            pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        let vols = workload(&docs)["spec"]["template"]["spec"]["volumes"].clone();
        let state = vols
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "state")
            .unwrap();
        assert_eq!(
            state["persistentVolumeClaim"]["claimName"],
            "rel-driftless-state"
        );
    }
}

#[test]
fn schema_rejects_typos_bad_ports_and_subpath_style_values() {
    let t = tools();
    // (value, the key helm's error must name)
    let bad = [
        ("gatway.port=18789", "gatway"),
        ("gateway.prot=1", "prot"),
        ("auth.existingSecretName=x", "existingSecretName"),
        ("auth.subPath=gateway-token", "subPath"),
        ("gateway.port=0", "port"),
        ("gateway.port=70000", "port"),
        ("service.port=-1", "port"),
        // subPath-style: a key or mount that points into a file path instead of a directory entry.
        (
            "auth.existingSecretKey=secrets/gateway-token",
            "existingSecretKey",
        ),
        ("auth.existingSecretKey=..", "existingSecretKey"),
        ("auth.mountPath=token", "mountPath"),
        ("auth.mountPath=/var/run/../token", "mountPath"),
        ("securityContext.runAsUser=0", "runAsUser"),
        ("persistence.accessModes={ReadOnlyMany}", "accessModes"),
        // Several replicas need the PostgreSQL store; that store needs its URL and Secret.
        ("replicaCount=2", "deviceStore"),
        ("replicaCount=0", "replicaCount"),
        ("deviceStore.type=postgres", "existingSecret"),
        ("deviceStore.type=mysql", "deviceStore"),
        (
            "deviceStore.postgres.passwordKey=db/password",
            "passwordKey",
        ),
        // OpenClaw beside driftless needs its image; the chart alone decides where it listens.
        ("openclaw.enabled=true", "repository"),
        ("openclaw.command={openclaw,gateway,--bind=lan}", "command"),
        ("openclaw.command={openclaw,gateway,--port,80}", "command"),
        ("openclaw.runAsUser=0", "runAsUser"),
    ];
    for helm in t.helms() {
        for (set, key) in bad {
            let out = helm.run(&[
                "template",
                RELEASE,
                chart_dir().to_str().unwrap(),
                "--set",
                set,
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "helm v{} accepted {set}", helm.major);
            assert!(
                stderr.contains("values don't meet the specifications of the schema")
                    && stderr.contains(key),
                "helm v{} {set}: {stderr}",
                helm.major
            );
            assert!(out.stdout.is_empty(), "nothing is rendered for {set}");
        }
    }
}

/// The PostgreSQL store's values for `helm template`, the URL and mount given.
fn postgres_sets(url: &str, mount: &str) -> Vec<String> {
    vec![
        "deviceStore.type=postgres".into(),
        format!("deviceStore.postgres.url={url}"),
        "deviceStore.postgres.existingSecret=driftless-db".into(),
        format!("deviceStore.postgres.mountPath={mount}"),
    ]
}

#[test]
fn replicas_render_with_postgres_a_disruption_budget_a_spread_and_the_database_secret_as_files() {
    let t = tools();
    let Some(validator) = t.validator() else {
        return;
    };
    let mut sets = postgres_sets(
        "postgres://driftless@db.demo/driftless",
        "/var/run/secrets/driftless-db",
    );
    sets.push("replicaCount=3".into());
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    for helm in t.helms() {
        let docs = render_checked(
            &helm,
            &validator,
            &sets,
            &[
                "PodDisruptionBudget",
                "ServiceAccount",
                "Secret",
                "ConfigMap",
                "Service",
                "Deployment",
            ],
        );
        let w = workload(&docs);
        assert_eq!(w["spec"]["replicas"], 3);
        let selector = &w["spec"]["selector"]["matchLabels"];
        let pdb = find(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
        let spec = &w["spec"]["template"]["spec"];
        let spread = &spec["topologySpreadConstraints"][0];
        assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(&spread["labelSelector"]["matchLabels"], selector);
        // The database credentials: a whole Secret mounted as a directory, 0440, like the token.
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "database")
            .expect("the database Secret volume");
        assert_eq!(volume["secret"]["secretName"], "driftless-db");
        assert_eq!(volume["secret"]["defaultMode"], 0o440);
        assert!(volume["secret"].get("items").is_none());
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "database")
            .expect("the database Secret mount");
        assert_eq!(mount["mountPath"], "/var/run/secrets/driftless-db");
        assert_eq!(mount["readOnly"], true);
        let toml = config_toml(&docs);
        for line in [
            "store = \"postgres\"",
            "url = \"postgres://driftless@db.demo/driftless\"",
            "password = { source = \"file\", path = \"/var/run/secrets/driftless-db/password\" }",
            "token_key = { source = \"file\", path = \"/var/run/secrets/driftless-db/token-key\" }",
        ] {
            assert!(toml.contains(line), "{line} in {toml}");
        }
    }
}

#[test]
fn several_replicas_refuse_sqlite_and_persistence_with_the_reason() {
    let t = tools();
    let chart = chart_dir();
    for helm in t.helms() {
        let template = |sets: &[&str], flags: &[&str]| {
            let mut args = vec!["template", RELEASE, chart.to_str().unwrap()];
            args.extend_from_slice(flags);
            for s in sets {
                args.extend(["--set", s]);
            }
            let out = helm.run(&args);
            assert!(
                !out.status.success(),
                "helm v{} accepted {sets:?}",
                helm.major
            );
            assert!(out.stdout.is_empty());
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        // The schema names the value to change...
        let err = template(
            &[
                "replicaCount=2",
                "deviceStore.type=postgres",
                "deviceStore.postgres.url=x",
                "deviceStore.postgres.existingSecret=db",
                "persistence.enabled=true",
            ],
            &[],
        );
        assert!(err.contains("persistence"), "helm v{}: {err}", helm.major);
        // OpenClaw cannot run two gateways on one state: no sidecar with several replicas.
        let mut sets = vec![
            "replicaCount=2",
            "deviceStore.type=postgres",
            "deviceStore.postgres.url=x",
            "deviceStore.postgres.existingSecret=db",
        ];
        sets.extend(OPENCLAW_SETS);
        let err = template(&sets, &[]);
        assert!(err.contains("openclaw"), "helm v{}: {err}", helm.major);
        let err = template(&sets, &["--skip-schema-validation"]);
        assert!(
            err.contains("OpenClaw cannot run two gateways on one state"),
            "helm v{}: {err}",
            helm.major
        );
        // ...and without schema validation the chart itself refuses, saying why.
        let err = template(&["replicaCount=2"], &["--skip-schema-validation"]);
        assert!(
            err.contains("replicaCount > 1 needs deviceStore.type=postgres")
                && err.contains("one file that one process owns"),
            "helm v{}: {err}",
            helm.major
        );
    }
}

#[test]
fn values_yaml_matches_its_schema_with_check_jsonschema() {
    let t = tools();
    let Some(checker) = t.python_tool("check-jsonschema") else {
        return;
    };
    let chart = chart_dir();
    let run = |values: &Path| {
        Command::new(&checker)
            .arg("--schemafile")
            .arg(chart.join("values.schema.json"))
            .arg(values)
            .output()
            .expect("run check-jsonschema")
    };
    let ok = run(&chart.join("values.yaml"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "auth:\n  existingSecretKey: gateway-token\n  mountpath: /x\n",
    )
    .unwrap();
    let bad = run(&typo);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("mountpath"));
}

#[test]
fn rendered_manifests_snapshot_with_token_masked() {
    let t = tools();
    let helms = t.helms();
    let masked: Vec<String> = helms
        .iter()
        .map(|helm| {
            let manifests = helm.template(&[]);
            let b64 = find(&docs(&manifests), "Secret")["data"][SECRET_KEY]
                .as_str()
                .unwrap()
                .to_owned();
            let line = format!("{SECRET_KEY}: \"{b64}\"");
            assert_eq!(
                manifests.matches(&line).count(),
                1,
                "the token appears once"
            );
            manifests.replace(&line, &format!("{SECRET_KEY}: \"<masked>\""))
        })
        .collect();
    let Some(v4) = masked.last() else { return };
    // Both majors render the same objects (v3 only adds blank lines between documents).
    assert_eq!(docs(&masked[0]), docs(v4));
    insta::assert_snapshot!("rendered_default_manifests", v4);
}

// ---------------------------------------------------------------------------------------------
// The rendered config, read by the real binary

/// Publishes files the way the kubelet's atomic writer does for a Secret volume: a fresh
/// timestamped directory, a `..data` symlink swapped to it by an atomic rename, and one symlink
/// per key that goes through `..data`.
struct KubeletMount {
    dir: PathBuf,
    generation: u32,
}

impl KubeletMount {
    fn new(dir: &Path) -> KubeletMount {
        std::fs::create_dir_all(dir).unwrap();
        KubeletMount {
            dir: dir.to_owned(),
            generation: 0,
        }
    }

    fn publish(&mut self, files: &[(&str, &[u8])]) {
        use std::os::unix::fs::symlink;
        self.generation += 1;
        let ts = format!(
            "..2026_11_23_16_00_0{}.{}",
            self.generation,
            100 + self.generation
        );
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        for (name, bytes) in files {
            let f = ts_dir.join(name);
            std::fs::write(&f, bytes).unwrap();
            // The kubelet makes it root-owned 0440 with the fsGroup; a test cannot chown, and a
            // file the reader owns must be 0400/0600 to be accepted.
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

#[test]
fn driftless_reads_the_rendered_config_and_mounted_secret() {
    let t = tools();
    let Some(helm) = t.helm(4) else { return };
    let home = support::Home::new();
    let mount_dir = home.path().join("secrets");
    let set = format!("auth.mountPath={}", mount_dir.display());
    let docs = docs(&helm.template(&[&set]));

    // Lay the rendered objects out as the kubelet would: ConfigMap file, Secret directory volume.
    let config = home.path().join("config.toml");
    std::fs::write(&config, config_toml(&docs)).unwrap();
    let token = rendered_token(&docs);
    KubeletMount::new(&mount_dir).publish(&[(SECRET_KEY, token.as_bytes())]);

    // The pod's environment: the config and state dir are named by env, nothing else is set.
    let state = home.path().join("state");
    let env = [
        ("DRIFTLESS_CONFIG", config.to_str().unwrap()),
        ("DRIFTLESS_STATE_DIR", state.to_str().unwrap()),
    ];
    let driftless = |args: &[&str]| {
        let out = home.command().args(args).envs(env).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "driftless {args:?}: {stderr}");
        assert!(
            !stdout.contains(&token) && !stderr.contains(&token),
            "the token is never printed"
        );
        stdout
    };
    assert!(driftless(&["config", "validate"]).contains("valid"));
    let stdout = driftless(&["secrets", "check", "--json"]);
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["name"], "gateway.auth.token");
    assert_eq!(row["status"], "ok");
    assert_eq!(
        row["fingerprint"],
        Fingerprint::of(token.as_bytes()).as_str()
    );
}

/// What the chart renders for several replicas, run by the real gateway against a real PostgreSQL
/// server (a private cluster, `testing::postgres`): the config's references to the mounted
/// database Secret resolve, the store migrates the database, and the rendered token opens a
/// session. No secret in the log.
#[tokio::test]
async fn driftless_runs_on_the_rendered_postgres_config_and_mounted_database_secret() {
    let t = tools();
    let Some(helm) = t.helm(4) else { return };
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = cluster.create_database();
    let home = support::Home::new();
    let (token_dir, db_dir) = (home.path().join("secrets"), home.path().join("database"));
    let mut sets = postgres_sets(&cluster.url(&db), db_dir.to_str().unwrap());
    sets.push(format!("auth.mountPath={}", token_dir.display()));
    sets.push("replicaCount=2".into());
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let docs = docs(&helm.template(&sets));

    let config = home.path().join("config.toml");
    std::fs::write(&config, config_toml(&docs)).unwrap();
    let token = rendered_token(&docs);
    KubeletMount::new(&token_dir).publish(&[(SECRET_KEY, token.as_bytes())]);
    KubeletMount::new(&db_dir).publish(&[
        ("password", cluster.password().as_bytes()),
        ("token-key", DEVICE_TOKEN_KEY.as_bytes()),
    ]);
    let state = home.path().join("state");
    let gw = support::Gateway::try_start(
        &home,
        &["--port", "0"],
        &[
            ("DRIFTLESS_CONFIG", config.to_str().unwrap()),
            ("DRIFTLESS_STATE_DIR", state.to_str().unwrap()),
        ],
    )
    .unwrap_or_else(|log| panic!("the gateway did not start on the rendered config: {log}"));
    assert!(
        support::accepted(&gw.url, &token).await,
        "the rendered token opens a session"
    );
    let applied = cluster.psql(&db, "SELECT count(*) FROM driftless_schema");
    assert!(applied.trim().parse::<u32>().unwrap() > 0, "{applied}");
    let log = gw.finish();
    for secret in [token.as_str(), cluster.password(), DEVICE_TOKEN_KEY] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// What the chart renders with `openclaw.enabled`, run for real: OpenClaw 2026.9.6 with the
/// rendered container's command and environment (only the image's `node openclaw.mjs` is replaced
/// by the installed OpenClaw; no image can be pulled here), and driftless on the rendered config
/// with both Secrets laid out as the kubelet mounts them. A client holding driftless's token
/// reaches OpenClaw's methods through driftless; neither token reaches a log or a frame.
#[tokio::test]
async fn the_rendered_sidecar_runs_the_real_openclaw_behind_driftless() {
    let t = tools();
    let Some(helm) = t.helm(4) else { return };
    let Some(cli) = support::openclaw::install() else {
        return;
    };
    let home = support::Home::new();
    let (token_dir, openclaw_token_dir, openclaw_home) = (
        home.path().join("secrets"),
        home.path().join("openclaw-secrets"),
        home.path().join("openclaw-home"),
    );
    std::fs::create_dir_all(&openclaw_home).unwrap();
    let port = support::stable_port();
    let mut sets: Vec<String> = OPENCLAW_SETS.iter().map(|s| s.to_string()).collect();
    sets.extend([
        format!("auth.mountPath={}", token_dir.display()),
        format!("openclaw.auth.mountPath={}", openclaw_token_dir.display()),
        format!("openclaw.home={}", openclaw_home.display()),
        format!("openclaw.port={port}"),
    ]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let docs = docs(&helm.template(&sets));

    let token = rendered_token(&docs);
    let openclaw_secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "rel-driftless-openclaw-token")
        .expect("OpenClaw's token Secret");
    let openclaw_token = decode(
        openclaw_secret["data"]["openclaw-gateway-token"]
            .as_str()
            .unwrap(),
    );
    KubeletMount::new(&token_dir).publish(&[(SECRET_KEY, token.as_bytes())]);
    KubeletMount::new(&openclaw_token_dir)
        .publish(&[("openclaw-gateway-token", openclaw_token.as_bytes())]);

    // OpenClaw's container as rendered: its command after the image's entry point, its env with
    // the Secret's value where the kubelet puts it.
    let container = &workload(&docs)["spec"]["template"]["spec"]["containers"][1];
    let rendered: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        rendered[..2],
        ["node", "openclaw.mjs"],
        "the image's entry point"
    );
    let mut command = vec![cli.0.as_os_str(), cli.1.as_os_str()];
    command.extend(rendered[2..].iter().map(std::ffi::OsStr::new));
    let env: Vec<(&str, &std::ffi::OsStr)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            match e["value"].as_str() {
                Some(v) => (name, std::ffi::OsStr::new(v)),
                None => {
                    assert_eq!(name, "OPENCLAW_GATEWAY_TOKEN");
                    (name, std::ffi::OsStr::new(openclaw_token.as_str()))
                }
            }
        })
        .collect();
    let openclaw = support::openclaw::OpenClawGateway::run(&command, &env, home.path(), port);

    let config = home.path().join("config.toml");
    std::fs::write(&config, config_toml(&docs)).unwrap();
    let state = home.path().join("state");
    let gw = support::Gateway::try_start(
        &home,
        &["--port", "0"],
        &[
            ("DRIFTLESS_CONFIG", config.to_str().unwrap()),
            ("DRIFTLESS_STATE_DIR", state.to_str().unwrap()),
        ],
    )
    .unwrap_or_else(|log| panic!("the gateway did not start on the rendered config: {log}"));
    support::openclaw::wait_ready(&gw.url, &token).await;

    let mut c = support::Client::open(&gw.url).await;
    let (hello, close) = c.connect(support::cli_params(Some(&token))).await;
    assert!(close.is_none(), "{hello}");
    let methods = hello["payload"]["features"]["methods"].as_array().unwrap();
    assert!(methods.len() > 400, "OpenClaw's methods: {}", methods.len());
    let agents = c.call("r1", "agents.list", None).await;
    assert_eq!(agents["ok"], true, "{agents}");
    assert!(agents["payload"]["agents"].is_array(), "{agents}");
    for frame in [hello.to_string(), agents.to_string()] {
        assert!(!frame.contains(&token) && !frame.contains(&openclaw_token));
    }
    drop(c);
    let log = gw.finish();
    let openclaw_log = std::fs::read_to_string(&openclaw.log).unwrap_or_default();
    drop(openclaw);
    for (text, what) in [(&log, "driftless's log"), (&openclaw_log, "OpenClaw's log")] {
        assert!(
            !text.contains(&token) && !text.contains(&openclaw_token),
            "a token reached {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// install + upgrade against the fake API server

/// The stand-in Kubernetes API: this repository's `tests/harness/fake_kube_api.py` (or
/// `$DRIFTLESS_FAKE_KUBE_API`). A test double: no real kube-apiserver can run on these machines.
/// It stores objects and serves `lookup`, which is all the token's survival depends on.
struct FakeKube {
    child: Child,
    port: u16,
}

impl FakeKube {
    fn start(python: &Path, script: &Path) -> FakeKube {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake_kube_api.py");
        let fake = FakeKube { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "fake API server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fake
    }

    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\nusers:\n- name: u\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: u, namespace: {NAMESPACE}}}\ncurrent-context: fake\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// GET an object from the fake's store.
    fn get(&self, path: &str) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}: {body}"
        );
        serde_json::from_str(body).unwrap()
    }

    fn token(&self) -> String {
        let secret = self.get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET_NAME}"
        ));
        decode(
            secret["data"][SECRET_KEY]
                .as_str()
                .expect("token in stored Secret"),
        )
    }

    fn config(&self) -> String {
        let cm = self.get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps/rel-driftless"
        ));
        cm["data"]["config.toml"].as_str().unwrap().to_owned()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs `chart`, upgrades it with a changed value, and returns the token before and after.
/// With `kubectl`, also runs the NOTES' token command as a user would.
fn install_then_upgrade(
    helm: &Helm,
    python: &Path,
    script: &Path,
    chart: &Path,
    kubectl: Option<&Path>,
) -> (String, String) {
    let fake = FakeKube::start(python, script);
    let kubeconfig = fake.kubeconfig(helm.home.path());
    let chart = chart.to_str().unwrap();
    let helm_cmd = |args: &[&str]| {
        let mut all = args.to_vec();
        // The fake serves no OpenAPI document; the manifests are validated strictly elsewhere.
        all.extend(["--namespace", NAMESPACE, "--disable-openapi-validation"]);
        let out = helm
            .command(&all)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm v{} {args:?}: {}",
            helm.major,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let notes = helm_cmd(&["install", RELEASE, chart]);
    let before = fake.token();
    assert_eq!(before.len(), 48);
    assert!(!notes.contains(&before), "NOTES never print the token");
    if let Some(kubectl) = kubectl {
        run_notes_token_command(&notes, kubectl, &kubeconfig, &before);
    }
    assert!(fake.config().contains("rotation_grace_seconds = 300"));

    let notes = helm_cmd(&[
        "upgrade",
        RELEASE,
        chart,
        "--set",
        "gateway.rotationGraceSeconds=60",
    ]);
    assert!(notes.contains("REVISION: 2"), "{notes}");
    // The upgrade really reached the API server.
    assert!(fake.config().contains("rotation_grace_seconds = 60"));
    (before, fake.token())
}

#[test]
fn helm_upgrade_keeps_the_generated_token_and_the_control_shows_it_could_fail() {
    let t = tools();
    let Some(python) = t.need(t.on_path("python3"), "python3 (for fake_kube_api.py)") else {
        return;
    };
    let script = t
        .env
        .non_empty("DRIFTLESS_FAKE_KUBE_API")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/fake_kube_api.py")
        });
    let Some(script) = t.need(
        Some(script).filter(|p| p.is_file()),
        "tests/harness/fake_kube_api.py (or $DRIFTLESS_FAKE_KUBE_API)",
    ) else {
        return;
    };
    let Some(kubectl) = t.need(
        Some(t.root.join(".tools/v4/kubectl/kubectl")).filter(|p| p.is_file()),
        "kubectl (.tools/v4/kubectl/kubectl)",
    ) else {
        return;
    };
    // Negative control: the same chart with the `lookup` branch disabled.
    let control = tempfile::tempdir().unwrap();
    copy_dir(&chart_dir(), control.path());
    // Every generated token Secret goes through the one `driftless.keptTokenSecret` helper.
    let secret_tpl = control.path().join("templates/_helpers.tpl");
    let text = std::fs::read_to_string(&secret_tpl).unwrap();
    let lookup = "(lookup \"v1\" \"Secret\" .root.Release.Namespace .name)";
    assert_eq!(
        text.matches(lookup).count(),
        1,
        "_helpers.tpl has one lookup"
    );
    std::fs::write(&secret_tpl, text.replace(lookup, "(dict)")).unwrap();

    for helm in t.helms() {
        let (before, after) =
            install_then_upgrade(&helm, &python, &script, &chart_dir(), Some(&kubectl));
        assert_eq!(
            before, after,
            "helm v{}: upgrade changed the token",
            helm.major
        );

        let (before, after) = install_then_upgrade(&helm, &python, &script, control.path(), None);
        assert_ne!(
            before, after,
            "helm v{}: without lookup the token must change, or this test proves nothing",
            helm.major
        );
    }
}

/// Runs the command the NOTES give for reading the token, with a real kubectl and bash: it must
/// print nothing and leave the token in a 0600 file.
fn run_notes_token_command(notes: &str, kubectl: &Path, kubeconfig: &Path, token: &str) {
    let start = notes
        .find("(umask 077;")
        .expect("NOTES give the token command");
    let end = "driftless-gateway-token)";
    let len = notes[start..]
        .find(end)
        .expect("the command writes ./driftless-gateway-token")
        + end.len();
    let command = &notes[start..start + len];
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{}:/usr/bin:/bin", kubectl.parent().unwrap().display());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", command])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{command}: {}, {} bytes on stdout (never shown: it could be the token), stderr: {}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("driftless-gateway-token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The image recipe agrees with the chart (the image itself cannot be built here: no container
// engine).

#[test]
fn dockerfile_agrees_with_the_chart() {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let workload = std::fs::read_to_string(chart_dir().join("templates/workload.yaml")).unwrap();
    let line = |directive: &str| -> Vec<&str> {
        dockerfile
            .lines()
            .filter(|l| l.starts_with(directive))
            .map(|l| l[directive.len()..].trim())
            .collect()
    };
    // Multi-stage: a build stage and a slim runtime.
    let froms = line("FROM ");
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[1].contains("-slim"), "{froms:?}");
    // The numeric non-root user is the chart's default identity.
    let sc = &values["securityContext"];
    assert_eq!(
        line("USER "),
        [format!("{}:{}", sc["runAsUser"], sc["runAsGroup"])]
    );
    assert_ne!(sc["runAsUser"], 0);
    // Only the binary is copied into the runtime stage.
    assert_eq!(
        line("COPY --from=build "),
        ["/out/driftless /usr/local/bin/driftless"]
    );
    assert_eq!(line("ENTRYPOINT "), [r#"["/usr/local/bin/driftless"]"#]);
    assert_eq!(line("CMD "), [r#"["gateway", "run"]"#]);
    assert!(workload.contains(r#"args: ["gateway", "run"]"#));
    assert_eq!(line("EXPOSE "), [values["gateway"]["port"].to_string()]);
    for var in [
        "DRIFTLESS_CONFIG=/etc/driftless/config.toml",
        "DRIFTLESS_STATE_DIR=/var/lib/driftless",
    ] {
        assert!(dockerfile.contains(var), "{var}");
    }
}

// ---------------------------------------------------------------------------------------------
// Live rotation: the chart's rendered config, the real gateway, a kubelet-style Secret swap

/// A rotated token; like the support canaries, it must never appear in a log or a response.
const NEW_CANARY: &str = "canary-helm-rotated-token-9c2e71";

#[tokio::test]
async fn rendered_chart_rotates_live_on_a_kubelet_secret_swap() {
    let t = tools();
    let Some(helm) = t.helm(4) else { return };
    let home = support::Home::new();
    let mount_dir = home.path().join("secrets");
    let docs = docs(&helm.template(&[
        &format!("auth.mountPath={}", mount_dir.display()),
        "gateway.rotationGraceSeconds=3",
    ]));

    // The ConfigMap as the pod sees it (mode 0444), at the path the pod's env names. The pod
    // listens on all interfaces behind its Service; this test keeps to loopback.
    let config = config_toml(&docs);
    assert_eq!(config.matches("bind = \"0.0.0.0\"").count(), 1, "{config}");
    let config_path = home.path().join("etc/driftless/config.toml");
    std::fs::create_dir_all(config_path.parent().unwrap()).unwrap();
    std::fs::write(
        &config_path,
        config.replace("bind = \"0.0.0.0\"", "bind = \"127.0.0.1\""),
    )
    .unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let state_dir = home.path().join("var/lib/driftless");

    let mut mount = KubeletMount::new(&mount_dir);
    mount.publish(&[(SECRET_KEY, support::CANARY.as_bytes())]);
    let gw = support::Gateway::start(
        &home,
        &["--port", "0"],
        &[
            ("DRIFTLESS_CONFIG", config_path.to_str().unwrap()),
            ("DRIFTLESS_STATE_DIR", state_dir.to_str().unwrap()),
        ],
    );
    let mut old_session =
        support::session(&gw.url, support::cli_params(Some(support::CANARY))).await;

    // The kubelet's update: new timestamped dir, atomic rename of `..data`, old dir removed.
    mount.publish(&[(SECRET_KEY, NEW_CANARY.as_bytes())]);
    assert!(
        support::eventually(support::RELOAD_WITHIN, || support::accepted(
            &gw.url, NEW_CANARY
        ))
        .await,
        "new token not accepted within {:?} of the ..data swap",
        support::RELOAD_WITHIN
    );
    // During grace: the old token still works and no session was dropped by the swap.
    assert!(support::accepted(&gw.url, support::CANARY).await);
    assert_eq!(old_session.call("h1", "health", None).await["ok"], true);
    let mut new_session = support::session(&gw.url, support::cli_params(Some(NEW_CANARY))).await;

    // When grace ends, the old token (and only the old one) stops working.
    let mut closed = None;
    for _ in 0..3 {
        match old_session.next_within(Duration::from_secs(6)).await {
            support::Got::Closed(code, reason) => {
                closed = Some((code, reason));
                break;
            }
            support::Got::Frame(_) => continue,
        }
    }
    assert_eq!(closed, Some((4001, "gateway auth changed".to_owned())));
    assert!(!support::accepted(&gw.url, support::CANARY).await);
    assert!(support::accepted(&gw.url, NEW_CANARY).await);
    assert_eq!(new_session.call("h2", "health", None).await["ok"], true);

    let log = gw.finish();
    assert!(
        !log.contains(NEW_CANARY),
        "the new token leaked into the log"
    );
}
