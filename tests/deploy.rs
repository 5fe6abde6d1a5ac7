//! The deploy kit in `deploy/` (issue 4 item 6), checked with the real tools and a real service:
//!
//! - `rabbitmq/definitions.json` imported into a throw-away vhost equals, object for object and
//!   argument for argument, what `topology::declare` creates for `bodflow.example.toml`; the
//!   service's own declare then succeeds on it as the definitions' user (a mismatch would be
//!   `PRECONDITION_FAILED`, which the negative control shows);
//! - `prometheus/`: `promtool check config`, `check rules`, `test rules alerts_test.yml`, and
//!   every alert is tested firing and quiet;
//! - every metric, label and label value the alert rules and the Grafana dashboard query exists
//!   in a real scrape of `bodflow run` (run as the definitions' user with compose's password)
//!   and of RabbitMQ's exporter as `prometheus.yml` scrapes it; every bodflow metric is on the
//!   dashboard; the Dockerfile's HEALTHCHECK passes against the live service and fails after;
//! - the Dockerfile, `.dockerignore`, `compose.yaml`, the Grafana provisioning and the systemd
//!   unit agree with each other and with the code (paths, ports, drain timeout), and the unit
//!   passes `systemd-analyze verify` and `security`.
//!
//! Tools are required, never skipped: promtool (Debian `prometheus`), systemd-analyze
//! (`systemd`), curl, rabbitmqctl and RabbitMQ's `rabbitmq_prometheus` plugin — `.ci/test`
//! installs and enables them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bodflow::amqp::{topology, RunOptions};
use bodflow::config::Config;
use broker::{
    free_port, generated, http_get, http_request, publish, rabbitmqctl, wait_until,
    write_generated_config, Vhost,
};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------
// Files and tools
// ---------------------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> Yaml {
    let text = read(&deploy(path));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one YAML document expected");
    docs.remove(0)
}

fn json(path: &str) -> Value {
    serde_json::from_str(&read(&deploy(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn s(y: &Yaml) -> &str {
    y.as_str()
        .unwrap_or_else(|| panic!("string expected, got {y:?}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("list expected, got {y:?}"))
}

/// Runs a required tool; panics with the install hint when it is missing.
fn tool(program: &str, args: &[&str], hint: &str) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required ({hint}; .ci/test does it): {e}"))
}

fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) {
    let out = tool("promtool", args, "apt-get install prometheus");
    assert_ok(&format!("promtool {}", args.join(" ")), &out);
}

/// `30s`, `2min`, `1m`, `5` (seconds) as systemd and compose write durations.
fn duration(text: &str) -> Duration {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {text:?}"));
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        _ => panic!("duration unit of {text:?}"),
    }
}

/// `host:port` → port.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// The Dockerfile's instructions: (keyword, arguments), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(&deploy("Dockerfile")).lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

fn instructions<'a>(file: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    file.iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// A JSON-array instruction (`CMD ["run", ...]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form {args:?}: {e}"))
}

/// Whether `.dockerignore` (Docker's rules: later patterns win, `!` re-includes) lets `path`
/// into the build context.
fn docker_context_includes(path: &str) -> bool {
    let mut included = true;
    for pattern in read(&root().join(".dockerignore")).lines() {
        let pattern = pattern.trim();
        if pattern.is_empty() || pattern.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let pattern = pattern.trim_end_matches('/');
        let matches = pattern == "*"
            || path == pattern
            || path.starts_with(&format!("{pattern}/"))
            || pattern
                .strip_suffix("/*")
                .is_some_and(|dir| path.starts_with(&format!("{dir}/")));
        if matches {
            included = negate;
        }
    }
    included
}

/// What the runtime stage promises: the default config path, its store volume and port.
struct Image {
    config: String,
    volume: String,
    port: u16,
    healthcheck: String,
}

fn image() -> Image {
    let file = dockerfile();
    let cmd = exec_form(instructions(&file, "CMD").last().unwrap());
    let config_at = cmd.iter().position(|a| a == "--config").unwrap();
    let volumes = exec_form(instructions(&file, "VOLUME").last().unwrap());
    let healthcheck = instructions(&file, "HEALTHCHECK")
        .last()
        .unwrap()
        .to_string();
    Image {
        config: cmd[config_at + 1].clone(),
        volume: volumes[0].clone(),
        port: instructions(&file, "EXPOSE")
            .last()
            .unwrap()
            .parse()
            .unwrap(),
        healthcheck: healthcheck
            .split_once(" CMD ")
            .map(|(_, c)| c.to_string())
            .expect("HEALTHCHECK ... CMD command"),
    }
}

#[test]
fn dockerfile_builds_from_what_the_context_holds_and_its_runtime_settings_agree() {
    let file = dockerfile();
    let froms = instructions(&file, "FROM");
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with(" AS builder"),
        "{froms:?}"
    );
    assert!(froms[1].starts_with("debian:"), "{froms:?}");
    for from in &froms {
        assert!(
            from.contains("${DEBIAN_RELEASE}"),
            "builder and runtime must share the Debian release (glibc): {from}"
        );
    }

    // Every COPY from the context names something that exists and that .dockerignore lets in.
    for copy in instructions(&file, "COPY") {
        if copy.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                docker_context_includes(source),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
    for kept_out in ["target", ".git", "tests/golden", "fixtures"] {
        assert!(
            !docker_context_includes(kept_out),
            "{kept_out} must stay out of the build context"
        );
    }

    // The dependency layer builds stand-ins for every target Cargo.toml declares; a bench
    // added without one would fail `cargo build` there.
    let manifest: toml::Table = toml::from_str(&read(&root().join("Cargo.toml"))).unwrap();
    let run = instructions(&file, "RUN").join("\n");
    for bench in manifest["bench"].as_array().unwrap() {
        let name = bench["name"].as_str().unwrap();
        assert!(
            run.contains(&format!("benches/{name}.rs")),
            "the Dockerfile's dependency layer needs a stand-in benches/{name}.rs"
        );
    }

    // The crates Cargo.toml patches by path are in the context and copied before the
    // dependency layer's build, which needs them.
    let first_build = file
        .iter()
        .position(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .unwrap();
    let patches = manifest
        .get("patch")
        .and_then(|p| p.get("crates-io"))
        .and_then(|p| p.as_table())
        .cloned()
        .unwrap_or_default();
    assert!(!patches.is_empty(), "Cargo.toml patches lapin's parser");
    for (name, patch) in &patches {
        let path = patch["path"].as_str().unwrap();
        assert!(
            docker_context_includes(path),
            "{name}: {path} excluded by .dockerignore"
        );
        let copied = file[..first_build].iter().any(|(k, a)| {
            k == "COPY"
                && a.split_whitespace()
                    .rev()
                    .skip(1)
                    .any(|source| Path::new(path).starts_with(source.trim_end_matches('/')))
        });
        assert!(
            copied,
            "{name}: {path} is not copied before the first cargo build"
        );
    }

    // The runtime stage: non-root user, default config valid, store on the volume, port.
    let user = instructions(&file, "USER").last().unwrap().to_string();
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "runs as {user}"
    );
    let image = image();
    let copies = instructions(&file, "COPY");
    let default_config = copies
        .iter()
        .find_map(|c| c.strip_suffix(&format!(" {}", image.config)))
        .expect("the CMD's --config file is copied into the image");
    let out = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["check-config", "--config", default_config])
        .current_dir(root())
        .env_remove("BODFLOW_AMQP_URL")
        .env_remove("BODFLOW_HTTP_LISTEN")
        .output()
        .unwrap();
    assert_ok("bodflow check-config of the image's default config", &out);
    let config = Config::load(&root().join(default_config)).unwrap();
    assert!(
        config.hub.store.starts_with(&image.volume),
        "the store {} must be on the volume {}",
        config.hub.store.display(),
        image.volume
    );
    assert!(
        config.http.listen.starts_with("0.0.0.0:"),
        "inside a container http.listen must not be loopback only: {}",
        config.http.listen
    );
    assert_eq!(
        port_of(&config.http.listen),
        image.port,
        "EXPOSE vs http.listen"
    );
    assert!(
        image
            .healthcheck
            .contains(&format!("127.0.0.1:{}/healthz", image.port)),
        "HEALTHCHECK must ask /healthz on the exposed port: {}",
        image.healthcheck
    );
}

// ---------------------------------------------------------------------------------------------
// compose.yaml and Grafana provisioning
// ---------------------------------------------------------------------------------------------

/// `SOURCE:TARGET[:ro]` volume entries of a compose service.
fn mounts(service: &Yaml) -> Vec<(String, String)> {
    list(&service["volumes"])
        .iter()
        .map(|v| {
            let mut parts = s(v).split(':');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            )
        })
        .collect()
}

/// The container path a file of `deploy/` is bind-mounted at.
fn mounted_at(service: &Yaml, source: &str) -> String {
    mounts(service)
        .into_iter()
        .find(|(s, _)| s == source)
        .unwrap_or_else(|| panic!("{source} is not mounted"))
        .1
}

/// `amqp://USER:PASSWORD@HOST:PORT/VHOST` of compose's bodflow service.
fn compose_amqp_credentials() -> (String, String, String) {
    let compose = yaml("compose.yaml");
    let url = s(&compose["services"]["bodflow"]["environment"]["BODFLOW_AMQP_URL"]).to_string();
    let rest = url.strip_prefix("amqp://").unwrap();
    let (creds, location) = rest.split_once('@').unwrap();
    let (user, password) = creds.split_once(':').unwrap();
    let vhost = location.split_once('/').unwrap().1.replace("%2f", "/");
    (user.to_string(), password.to_string(), vhost)
}

#[test]
fn compose_services_mount_existing_files_and_agree_on_ports_paths_and_credentials() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for name in ["rabbitmq", "bodflow", "prometheus", "grafana"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
        for (source, _) in mounts(&services[name]) {
            if source.starts_with("./") {
                assert!(deploy(&source).exists(), "{name}: {source} does not exist");
            } else {
                assert!(
                    !compose["volumes"][source.as_str()].is_badvalue(),
                    "{name}: named volume {source} is not declared"
                );
            }
        }
    }

    // bodflow: built from the Dockerfile, config and store where the image expects them.
    let bodflow = &services["bodflow"];
    let context = deploy(s(&bodflow["build"]["context"]));
    assert!(context.join(s(&bodflow["build"]["dockerfile"])).exists());
    assert_eq!(
        context.canonicalize().unwrap(),
        root().canonicalize().unwrap()
    );
    let image = image();
    assert_eq!(mounted_at(bodflow, "./bodflow.example.toml"), image.config);
    assert!(mounts(bodflow)
        .iter()
        .any(|(s, t)| !s.starts_with("./") && *t == image.volume));
    let listen = s(&bodflow["environment"]["BODFLOW_HTTP_LISTEN"]);
    assert_eq!(listen, format!("0.0.0.0:{}", image.port));
    let grace = duration(s(&bodflow["stop_grace_period"]));
    assert!(
        grace > RunOptions::default().drain_timeout + Duration::from_secs(5),
        "stop_grace_period {grace:?} must exceed the outbox drain timeout"
    );

    // RabbitMQ: definitions loaded from where they are mounted; the exporter's port.
    let rabbitmq = &services["rabbitmq"];
    let conf = read(&deploy("rabbitmq/rabbitmq.conf"));
    let setting = |key: &str| {
        conf.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('=').map(str::trim))
            .unwrap_or_else(|| panic!("rabbitmq.conf: {key} missing"))
            .to_string()
    };
    assert_eq!(
        setting("load_definitions"),
        mounted_at(rabbitmq, "./rabbitmq/definitions.json")
    );
    assert!(mounted_at(rabbitmq, "./rabbitmq/rabbitmq.conf").starts_with("/etc/rabbitmq/conf.d/"));
    assert_eq!(
        mounted_at(rabbitmq, "./rabbitmq/enabled_plugins"),
        "/etc/rabbitmq/enabled_plugins"
    );
    assert!(read(&deploy("rabbitmq/enabled_plugins")).contains("rabbitmq_prometheus"));

    // The broker URL's user exists in the definitions with rights on the URL's vhost.
    let (user, _, vhost) = compose_amqp_credentials();
    let definitions = json("rabbitmq/definitions.json");
    assert!(definitions["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == user.as_str()));
    assert!(definitions["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["user"] == user.as_str() && p["vhost"] == vhost.as_str()));

    // Prometheus scrapes the services by their compose names and ports; rules are mounted
    // next to the config, where rule_files finds them.
    let prometheus_yml = yaml("prometheus/prometheus.yml");
    let targets: BTreeMap<&str, &str> = list(&prometheus_yml["scrape_configs"])
        .iter()
        .map(|job| {
            (
                s(&job["job_name"]),
                s(&list(&job["static_configs"][0]["targets"])[0]),
            )
        })
        .collect();
    assert_eq!(targets["bodflow"], format!("bodflow:{}", image.port));
    assert_eq!(
        targets["rabbitmq"],
        format!("rabbitmq:{}", setting("prometheus.tcp.port"))
    );
    let prometheus = &services["prometheus"];
    let config_at = mounted_at(prometheus, "./prometheus/prometheus.yml");
    let config_dir = Path::new(&config_at).parent().unwrap();
    for rule_file in list(&prometheus_yml["rule_files"]) {
        let local = format!("./prometheus/{}", s(rule_file));
        assert_eq!(
            Path::new(&mounted_at(prometheus, &local)),
            config_dir.join(s(rule_file))
        );
    }
    assert!(list(&prometheus["command"])
        .iter()
        .any(|a| s(a) == format!("--config.file={config_at}")));

    // Grafana: the datasource points at the prometheus service, the provider at the
    // dashboards mount, the home dashboard exists there.
    let grafana = &services["grafana"];
    let datasource = &yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"][0];
    assert_eq!(s(&datasource["url"]), "http://prometheus:9090");
    assert!(list(&prometheus["ports"])
        .iter()
        .any(|p| s(p).ends_with(":9090")));
    let provider = &yaml("grafana/provisioning/dashboards/bodflow.yml")["providers"][0];
    let dashboards_at = mounted_at(grafana, "./grafana/dashboards");
    assert_eq!(s(&provider["options"]["path"]), dashboards_at);
    let home = s(&grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]);
    let home_file = home.strip_prefix(&format!("{dashboards_at}/")).unwrap();
    assert!(deploy("grafana/dashboards").join(home_file).exists());
    for dir in ["datasources", "dashboards"] {
        assert_eq!(
            mounted_at(grafana, &format!("./grafana/provisioning/{dir}")),
            format!("/etc/grafana/provisioning/{dir}")
        );
    }
}

#[test]
fn grafana_dashboard_is_valid_json_with_unique_panels_on_the_provisioned_datasource() {
    let dashboard = json("grafana/dashboards/bodflow.json");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let provisioned = yaml("grafana/provisioning/datasources/prometheus.yml");
    let uid = s(&provisioned["datasources"][0]["uid"]);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["current"]["value"], uid);
    let ds_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId");
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");

    // Grafana only sends the queries; promtool parses them, as recording rules, with the
    // dashboard's variables replaced by what Grafana would put there.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in panels.iter().enumerate() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "6h")
                .replace("$instance", ".*")
                .replace("$vhost", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            rules.push_str(&format!(
                "      - record: dashboard:panel_{i}:{}\n        expr: {}\n",
                t["refId"].as_str().unwrap(),
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    promtool(&["check", "rules", file.path().to_str().unwrap()]);
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

fn unit_setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_unit_verifies_is_sandboxed_and_outlasts_the_drain_timeout() {
    let unit = read(&deploy("bodflow.service"));
    let exec_start = unit_setting(&unit, "ExecStart")[0];
    let (binary, args) = exec_start.split_once(' ').unwrap();
    assert!(
        args.starts_with("run --config /etc/bodflow/"),
        "{exec_start}"
    );
    assert_eq!(
        unit_setting(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
    let user = unit_setting(&unit, "User")[0];
    assert!(!["root", "0"].contains(&user));
    let stop = duration(unit_setting(&unit, "TimeoutStopSec")[0]);
    assert!(
        stop > RunOptions::default().drain_timeout + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} must exceed the outbox drain timeout"
    );
    assert!(
        unit_setting(&unit, "LimitNOFILE")[0]
            .parse::<u64>()
            .unwrap()
            >= 4096
    );
    assert_eq!(unit_setting(&unit, "Restart"), ["on-failure"]);
    // The store lives in the only writable place the sandbox leaves.
    assert_eq!(unit_setting(&unit, "StateDirectory"), ["bodflow"]);
    assert_eq!(unit_setting(&unit, "ProtectSystem"), ["strict"]);
    let example = Config::load(&deploy("bodflow.example.toml")).unwrap();
    assert!(example.hub.store.starts_with("/var/lib/bodflow"));

    // systemd-analyze checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodflow.service");
    std::fs::write(&path, unit.replace(binary, env!("CARGO_BIN_EXE_bodflow"))).unwrap();
    let path = path.to_str().unwrap();
    let out = tool(
        "systemd-analyze",
        &["verify", path],
        "apt-get install systemd",
    );
    assert_ok("systemd-analyze verify", &out);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify warns:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exposure 0 (locked down) .. 10 (unprotected): fail above 2.0.
    let out = tool(
        "systemd-analyze",
        &["security", "--offline=true", "--threshold=20", path],
        "apt-get install systemd",
    );
    assert_ok("systemd-analyze security --threshold=20", &out);
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules
// ---------------------------------------------------------------------------------------------

fn alert_rules() -> Vec<Yaml> {
    list(&yaml("prometheus/alerts.yml")["groups"])
        .iter()
        .flat_map(|g| list(&g["rules"]).to_vec())
        .collect()
}

#[test]
fn prometheus_config_and_rules_pass_promtool_and_every_alert_is_tested_firing_and_quiet() {
    let config = deploy("prometheus/prometheus.yml");
    let alerts = deploy("prometheus/alerts.yml");
    let tests = deploy("prometheus/alerts_test.yml");
    promtool(&["check", "config", config.to_str().unwrap()]);
    promtool(&["check", "rules", alerts.to_str().unwrap()]);
    promtool(&["test", "rules", tests.to_str().unwrap()]);

    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in list(&yaml("prometheus/alerts_test.yml")["tests"]) {
        for t in list(&case["alert_rule_test"]) {
            let name = s(&t["alertname"]).to_string();
            if list(&t["exp_alerts"]).is_empty() {
                quiet.insert(name);
            } else {
                fired.insert(name);
            }
        }
    }
    let names: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| s(&r["alert"]).to_string())
        .collect();
    for required in [
        "BodflowDown",
        "BodflowBrokerDisconnected",
        "BodflowDeadLettersRising",
        "BodflowOutboxBacklogGrowing",
    ] {
        assert!(names.contains(required), "{required} missing");
    }
    for name in &names {
        assert!(fired.contains(name), "{name}: no test where it fires");
        assert!(quiet.contains(name), "{name}: no test where it stays quiet");
        assert!(
            !alert_rules()
                .iter()
                .find(|r| s(&r["alert"]) == name)
                .unwrap()["labels"]["severity"]
                .is_badvalue(),
            "{name}: severity label"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ definitions
// ---------------------------------------------------------------------------------------------

/// A broker user created for one test, deleted on drop.
struct User(String);

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// Imports `definitions` (deploy/rabbitmq/definitions.json or a variant) into `vhost`: every
/// object and permission moved to it, users renamed to unique names (the broker is shared),
/// no vhost created. Waits for the asynchronous import. Returns the users with their renames.
fn import_definitions(definitions: &Value, vhost: &Vhost) -> Vec<(String, User)> {
    let mut d = definitions.clone();
    let mut users = Vec::new();
    for u in d["users"].as_array_mut().unwrap() {
        let original = u["name"].as_str().unwrap().to_string();
        let renamed = format!("{}-{original}", vhost.name);
        u["name"] = renamed.clone().into();
        users.push((original, User(renamed)));
    }
    for p in d["permissions"].as_array_mut().unwrap() {
        let renamed = users
            .iter()
            .find(|(o, _)| p["user"] == o.as_str())
            .map(|(_, u)| u.0.clone())
            .expect("permissions name a user of the definitions");
        p["user"] = renamed.into();
    }
    for key in ["permissions", "exchanges", "queues", "bindings"] {
        for o in d[key].as_array_mut().unwrap() {
            assert_eq!(o["vhost"], "/", "{key}: the definitions target vhost /");
            o["vhost"] = vhost.name.clone().into();
        }
    }
    d.as_object_mut().unwrap().remove("vhosts");
    // From standard input: the broker node, not this process, would read a file.
    let mut child = Command::new("rabbitmqctl")
        .args(["import_definitions", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rabbitmqctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&d).unwrap())
        .unwrap();
    assert_ok(
        "rabbitmqctl import_definitions",
        &child.wait_with_output().unwrap(),
    );
    let expected = definitions["queues"].as_array().unwrap().len();
    let start = Instant::now();
    while topology_of(vhost)["queues"].as_array().unwrap().len() < expected {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "import never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    users
}

/// The broker's definitions as JSON. `export_definitions` exits 0 but prints something else
/// now and then while other tests create and delete their vhosts (CI saw `{` followed by no
/// JSON key once), so an export that is not JSON is asked for again, a few times.
fn definitions() -> Value {
    let mut last = String::new();
    for _ in 0..20 {
        last = rabbitmqctl(&["export_definitions", "-", "--format", "json"]);
        if let Ok(export) = serde_json::from_str(&last) {
            return export;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("export_definitions never printed JSON; the last output: {last}");
}

/// Exchanges, queues and bindings of a vhost with every property the broker compares on a
/// declare (type, durable, auto_delete, internal, arguments), as the broker exports them, sorted.
fn topology_of(vhost: &Vhost) -> Value {
    let export = definitions();
    let mut topology = serde_json::Map::new();
    for key in ["exchanges", "queues", "bindings"] {
        let mut rows: Vec<Value> = export[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["vhost"] == vhost.name.as_str())
            .cloned()
            .map(|mut o| {
                o.as_object_mut().unwrap().remove("vhost");
                o
            })
            .collect();
        rows.sort_by_key(|r| r.to_string());
        topology.insert(key.to_string(), Value::Array(rows));
    }
    Value::Object(topology)
}

async fn declare_as(url: &str, config: &Config) -> Result<(), bodflow::amqp::Error> {
    let (conn, ch) = broker::connect(url).await;
    let result = topology::declare(&ch, config).await;
    let _ = conn.close(0, "done".into()).await;
    result
}

#[tokio::test]
async fn rabbitmq_definitions_equal_the_declared_topology_and_bodflow_can_declare_on_them() {
    let definitions = json("rabbitmq/definitions.json");
    let example = Config::load(&deploy("bodflow.example.toml")).unwrap();

    // What bodflow itself declares for the example configuration, in an empty vhost.
    let declared = Vhost::new("deploy-declared");
    declare_as(&declared.url(), &example).await.unwrap();
    let expected = topology_of(&declared);

    // The definitions, imported: the same objects with the same properties and arguments.
    let imported = Vhost::new("deploy-imported");
    let users = import_definitions(&definitions, &imported);
    let got = topology_of(&imported);
    let (got_text, expected_text) = (
        serde_json::to_string_pretty(&got).unwrap(),
        serde_json::to_string_pretty(&expected).unwrap(),
    );
    assert!(
        got == expected,
        "deploy/rabbitmq/definitions.json (+) differs from what topology::declare creates for \
         bodflow.example.toml (-):\n{}",
        similar::TextDiff::from_lines(&expected_text, &got_text).unified_diff()
    );

    // bodflow declares on top of them as the definitions' user with compose's password:
    // arguments equal (no PRECONDITION_FAILED), permissions sufficient, nothing added.
    let (user, password, _) = compose_amqp_credentials();
    let renamed = &users.iter().find(|(o, _)| *o == user).unwrap().1 .0;
    let url = format!(
        "amqp://{renamed}:{password}@127.0.0.1:5672/{}",
        imported.name
    );
    declare_as(&url, &example).await.unwrap();
    assert_eq!(topology_of(&imported), got);

    // Negative control: the broker does refuse a queue whose arguments differ, so the declare
    // above proves equality. The inbound queue, re-created without its dead-letter argument:
    let (conn, ch) = broker::connect(&declared.url()).await;
    ch.queue_delete(
        topology::INBOUND_QUEUE.into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        topology::INBOUND_QUEUE.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(0, "done".into()).await;
    let err = declare_as(&declared.url(), &example)
        .await
        .expect_err("a queue with other arguments must be refused");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Metric names: alert rules and dashboard against real scrapes
// ---------------------------------------------------------------------------------------------

/// A scrape: metric name → label name → values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn parse_scrape(text: &str) -> Scrape {
    let mut scrape = Scrape::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = scrape.entry(line[..end].to_string()).or_default();
        if let Some(body) = line[end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(b, _)| b)
        {
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap();
                labels
                    .entry(k.to_string())
                    .or_default()
                    .insert(v.trim_end_matches('"').to_string());
            }
        }
    }
    scrape
}

/// A selector in a PromQL expression: metric name and `(label, op, value)` matchers.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression uses: its selectors and the labels of by/on/without/ignoring
/// clauses (and of label_values).
#[derive(Debug, Default)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: BTreeSet<String>,
}

/// Aggregation operators: followed by `by (...)` or `(`, never metric names.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

const KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// Scans PromQL: identifiers followed by `(` are functions (or grouping keywords), other
/// identifiers are metric names; `{...}` holds matchers, `[...]` ranges are skipped.
fn promql_uses(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || "_:".contains(chars[*i])) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut label_values_label = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let name = ident(&mut i);
            skip_ws(&mut i);
            let next = chars.get(i).copied();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&name.as_str())
                && next == Some('(')
            {
                let close = i + chars[i..].iter().position(|&c| c == ')').unwrap();
                let inner: String = chars[i + 1..close].iter().collect();
                uses.grouping.extend(
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = close + 1;
            } else if next == Some('(')
                || KEYWORDS.contains(&name.as_str())
                || AGGREGATIONS.contains(&name.as_str())
            {
                label_values_label = name == "label_values";
            } else if label_values_label && uses.selectors.len() == 1 {
                // label_values(selector, label): the second argument is a label.
                uses.grouping.insert(name);
                label_values_label = false;
            } else {
                let mut selector = Selector {
                    metric: name,
                    matchers: Vec::new(),
                };
                if next == Some('{') {
                    let close = i + chars[i..].iter().position(|&c| c == '}').unwrap();
                    let inner: String = chars[i + 1..close].iter().collect();
                    for m in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                        let op_at = m.find(['=', '!']).unwrap();
                        let (label, rest) = m.split_at(op_at);
                        let op_len = if rest.starts_with("=~") || rest.starts_with("!") {
                            2
                        } else {
                            1
                        };
                        let value = rest[op_len..].trim().trim_matches('"');
                        selector.matchers.push((
                            label.trim().to_string(),
                            rest[..op_len].to_string(),
                            value.to_string(),
                        ));
                    }
                    i = close + 1;
                }
                uses.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// `{{label}}` / `{{ $labels.label }}` placeholders of a legend or annotation.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("{{").skip(1) {
        let inner = part.split("}}").next().unwrap().trim();
        if let Some(label) = inner.strip_prefix("$labels.") {
            out.insert(label.to_string());
        } else if inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(inner.to_string());
        }
    }
    out
}

/// Every PromQL expression of the alert rules and the dashboard, with what its result is
/// labelled by (legend / annotations), named for error messages.
fn queries() -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for rule in alert_rules() {
        let annotations = rule["annotations"]
            .as_hash()
            .unwrap()
            .values()
            .flat_map(|v| placeholders(s(v)))
            .collect();
        out.push((
            format!("alert {}", s(&rule["alert"])),
            s(&rule["expr"]).to_string(),
            annotations,
        ));
    }
    let dashboard = json("grafana/dashboards/bodflow.json");
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                t["expr"].as_str().unwrap().to_string(),
                placeholders(t["legendFormat"].as_str().unwrap_or("")),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["definition"].as_str() {
            out.push((
                format!("variable {}", variable["name"]),
                q.to_string(),
                BTreeSet::new(),
            ));
        }
    }
    out
}

/// Checks every query against the scrapes; returns the metric names used.
fn check_queries(scrape: &Scrape, jobs: &BTreeSet<String>) -> BTreeSet<String> {
    // Labels Prometheus adds to every series of a target.
    let target_labels = ["job", "instance"];
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, expr, shown) in queries() {
        let uses = promql_uses(&expr);
        if uses.selectors.is_empty() {
            problems.push(format!("{name}: no metric in {expr:?}"));
        }
        let mut available: BTreeSet<String> = target_labels.iter().map(|l| l.to_string()).collect();
        for sel in &uses.selectors {
            used.insert(sel.metric.clone());
            let labels = if sel.metric == "up" {
                Some(BTreeMap::new())
            } else {
                scrape.get(&sel.metric).cloned()
            };
            let Some(labels) = labels else {
                problems.push(format!("{name}: {} is not in the scrape", sel.metric));
                continue;
            };
            available.extend(labels.keys().cloned());
            for (label, op, value) in &sel.matchers {
                if label == "job" {
                    if op == "=" && !jobs.contains(value) {
                        problems.push(format!("{name}: job {value:?} is not in prometheus.yml"));
                    }
                } else if label == "instance" {
                } else if let Some(values) = labels.get(label) {
                    if op == "=" && !values.contains(value) {
                        problems.push(format!(
                            "{name}: {}{{{label}={value:?}}} never seen (seen: {values:?})",
                            sel.metric
                        ));
                    }
                } else {
                    problems.push(format!("{name}: {} has no label {label}", sel.metric));
                }
            }
        }
        for label in &uses.grouping {
            if !available.contains(label) {
                problems.push(format!("{name}: groups by {label}, which its metrics lack"));
            }
        }
        // What a legend or annotation shows must survive the aggregation.
        let kept: BTreeSet<String> = if uses.grouping.is_empty() {
            available.clone()
        } else {
            uses.grouping.clone()
        };
        for label in &shown {
            if !kept.contains(label) {
                problems.push(format!(
                    "{name}: shows {label}, which {expr:?} does not keep"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    used
}

/// RabbitMQ's exporter for `vhost`, asked exactly as prometheus.yml's `rabbitmq` job asks.
fn scrape_rabbitmq(vhost: &str) -> String {
    let prometheus = yaml("prometheus/prometheus.yml");
    let job = list(&prometheus["scrape_configs"])
        .iter()
        .find(|j| s(&j["job_name"]) == "rabbitmq")
        .unwrap();
    let mut query = Vec::new();
    for (key, values) in job["params"].as_hash().unwrap() {
        for v in list(values) {
            let v = if s(key) == "vhost" { vhost } else { s(v) };
            query.push(format!("{}={}", s(key), v.replace('/', "%2F")));
        }
    }
    let port = port_of(s(&list(&job["static_configs"][0]["targets"])[0]));
    let path = format!("{}?{}", s(&job["metrics_path"]), query.join("&"));
    match http_get(port, &path) {
        Some((200, body)) => body,
        other => panic!(
            "RabbitMQ's exporter on 127.0.0.1:{port}{path}: {other:?}; \
             enable it with `rabbitmq-plugins enable rabbitmq_prometheus` (.ci/test does)"
        ),
    }
}

/// Runs the HEALTHCHECK command of the Dockerfile against `port`.
fn healthcheck(port: u16) -> bool {
    let image = image();
    let command = image.healthcheck.replace(
        &format!("127.0.0.1:{}", image.port),
        &format!("127.0.0.1:{port}"),
    );
    Command::new("sh")
        .args(["-c", &command])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sh")
        .success()
}

const N: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_metrics_and_labels_that_real_scrapes_show() {
    let _ = tool("curl", &["--version"], "apt-get install curl");
    // The broker as compose sets it up: definitions imported, bodflow as their user.
    let vhost = Vhost::new("deploy-metrics");
    let users = import_definitions(&json("rabbitmq/definitions.json"), &vhost);
    let (user, password, _) = compose_amqp_credentials();
    let renamed = &users.iter().find(|(o, _)| *o == user).unwrap().1 .0;
    let service_url = format!("amqp://{renamed}:{password}@127.0.0.1:5672/{}", vhost.name);

    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    let mut config = Config::load(&config_path).unwrap();
    // `bodflow publish` (the same Sender) as the definitions' user.
    config.amqp.url = service_url.clone();
    publish(&config, &generated(23, N)).await;

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("BODFLOW_AMQP_URL", &service_url)
        .env("BODFLOW_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let _kill = common::KillOnDrop(child.id());

    wait_until("/readyz 200", Duration::from_secs(20), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(
        healthcheck(port),
        "the Dockerfile's HEALTHCHECK fails on a running service"
    );
    let mut text = String::new();
    wait_until("every document processed", Duration::from_secs(30), || {
        text = http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("bodflow_bods_processed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            >= N as f64
    });
    // A resync ("Run Now") through the service, so its metrics are in the scrape too.
    let (status, body) =
        http_request(port, "POST", "/resync?application=lid://load.crm").expect("POST /resync");
    assert_eq!(status, 200, "POST /resync: {body}");
    // The sampled gauges and the outbox confirm histogram catch up within a few seconds.
    wait_until("an outbox round", Duration::from_secs(15), || {
        text = http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        text.lines()
            .any(|l| l.starts_with("bodflow_outbox_published_total ") && !l.ends_with(" 0"))
    });

    let mut scrape = parse_scrape(&text);
    let rabbit = parse_scrape(&scrape_rabbitmq(&vhost.name));
    assert!(
        rabbit.contains_key("rabbitmq_detailed_queue_messages_ready"),
        "RabbitMQ's exporter gave no per-queue metrics for {}",
        vhost.name
    );
    scrape.extend(rabbit);
    let jobs: BTreeSet<String> = list(&yaml("prometheus/prometheus.yml")["scrape_configs"])
        .iter()
        .map(|j| s(&j["job_name"]).to_string())
        .collect();
    let used = check_queries(&scrape, &jobs);

    // And the other way round: every metric bodflow exports is on the dashboard.
    let dashboard = read(&deploy("grafana/dashboards/bodflow.json"));
    let missing: Vec<&String> = scrape
        .keys()
        .filter(|m| m.starts_with("bodflow_"))
        .filter(|m| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| m.strip_suffix(suffix))
                .unwrap_or(m);
            !dashboard.contains(family)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "exported but on no dashboard panel (deploy/grafana/dashboards/bodflow.json): {missing:?}"
    );
    assert!(used.len() >= 15, "{used:?}");

    // `bodflow dlq` as the definitions' user: the realistic mix has dead letters.
    let dlq = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["dlq", "list", "--config"])
        .arg(&config_path)
        .env("BODFLOW_AMQP_URL", &service_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_ok("bodflow dlq list as the definitions' user", &dlq);
    let listed = String::from_utf8_lossy(&dlq.stdout);
    let now = http_get(port, "/metrics").unwrap().1;
    let dead: f64 = now
        .lines()
        .filter(|l| l.starts_with("bodflow_dead_lettered_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dead > 0.0, "the workload dead-lettered nothing");
    assert_eq!(listed.lines().count() as f64, dead, "dlq list:\n{listed}");

    assert!(broker::terminate(&mut child, broker::STOP_WITHIN).success());
    assert!(
        !healthcheck(port),
        "the HEALTHCHECK passes with the service stopped"
    );
}

#[test]
fn promql_scanner_finds_metrics_matchers_and_grouping() {
    let uses = promql_uses(
        r#"sum by (instance, code) (increase(bodflow_dead_lettered_total{job="bodflow", code!="x"}[10m])) > 0
           and on() max(rabbitmq_detailed_queue_messages{queue=~"bodflow\\..*"}) > 1e3"#,
    );
    let metrics: Vec<&str> = uses.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        metrics,
        [
            "bodflow_dead_lettered_total",
            "rabbitmq_detailed_queue_messages"
        ]
    );
    assert_eq!(
        uses.selectors[0].matchers,
        [
            ("job".into(), "=".into(), "bodflow".into()),
            ("code".into(), "!=".into(), "x".into())
        ]
    );
    assert_eq!(uses.selectors[1].matchers[0].1, "=~");
    assert_eq!(
        uses.grouping,
        BTreeSet::from(["instance".to_string(), "code".to_string()])
    );
    let uses = promql_uses(r#"label_values(bodflow_bods_received_total, instance)"#);
    assert_eq!(uses.selectors.len(), 1);
    assert!(uses.grouping.contains("instance"));
    assert_eq!(
        placeholders("{{ $labels.code }} and {{outcome}} {{ $value | humanize }}"),
        BTreeSet::from(["code".to_string(), "outcome".to_string()])
    );
}
