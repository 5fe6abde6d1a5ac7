//! The HTTP endpoint (issue 4 item 1): the router driven without a socket (`oneshot`), then
//! the `bodflow run` binary against the real RabbitMQ (own vhost) scraped over real HTTP:
//! `/readyz` is 200 while it consumes, `/metrics` moves as documents flow and passes
//! `promtool check metrics` when promtool is installed (`.ci/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bodflow::amqp::topology;
use bodflow::config::Config;
use bodflow::telemetry::events::{emit, BodProcessed};
use bodflow::telemetry::{http::router, Readiness};
use broker::*;
use tower::ServiceExt as _;

async fn get(readiness: &Readiness, path: &str) -> (StatusCode, String) {
    let response = router(readiness.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn healthz_answers_200_whatever_the_readiness() {
    let (status, body) = get(&Readiness::default(), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
}

#[tokio::test]
async fn readyz_is_503_with_a_reason_until_store_and_consumer_are_up_then_200() {
    let readiness = Readiness::default();
    let (status, body) = get(&readiness, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("store not open"), "{body}");

    readiness.set_store_open(true);
    readiness.set_connected(true);
    let (status, body) = get(&readiness, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("not consuming"), "{body}");

    readiness.set_consuming(true);
    assert_eq!(get(&readiness, "/readyz").await.0, StatusCode::OK);

    readiness.set_connected(false);
    let (status, body) = get(&readiness, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "session lost");
    assert!(body.contains("broker not connected"), "{body}");
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_the_bodflow_names() {
    emit(BodProcessed {
        noun: Some("ContactMaster"),
        verb: Some("Sync"),
        outcome: bodflow::pipeline::Outcome::Applied,
        record: None,
        outputs: 0,
    });
    let response = router(Readiness::default())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for name in [
        "# TYPE bodflow_bods_received_total counter",
        "bodflow_bods_processed_total{noun=\"ContactMaster\",outcome=\"applied\",verb=\"Sync\"}",
        "# TYPE bodflow_end_to_end_seconds histogram",
        "bodflow_amqp_connected 0",
        "bodflow_outbox_pending",
        "bodflow_store_size_bytes",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    promtool_check(&text);
}

/// `promtool check metrics` on `text`, when promtool is installed (skipped with a note else).
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: skipping `promtool check metrics` (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` over HTTP/1.0: (status, body); `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Sum of every sample of `name` (all label sets) in a scrape.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const N: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_service_is_ready_and_its_scraped_metrics_move_with_the_documents() {
    let vhost = Vhost::new("http");
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    let port = free_port();
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&config_path, text).unwrap();
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    assert_eq!(config.http.listen, format!("127.0.0.1:{port}"));

    publish(&config, &generated(11, N)).await;
    let mut child = spawn(&config_path, &vhost.url());
    let _kill = KillOnDrop(child.id());

    wait_for("/readyz 200", Duration::from_secs(20), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    wait_for(
        "the inbound queue to empty",
        Duration::from_secs(30),
        || vhost.queue_total(topology::INBOUND_QUEUE) == Some(0),
    );
    let mut scraped = String::new();
    wait_for(
        "bodflow_bods_processed_total to reach N",
        Duration::from_secs(10),
        || {
            scraped = http_get(port, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            sample_sum(&scraped, "bodflow_bods_processed_total") >= N as f64
        },
    );
    assert_eq!(
        sample_sum(&scraped, "bodflow_bods_processed_total"),
        N as f64
    );
    assert_eq!(
        sample_sum(&scraped, "bodflow_bods_received_total"),
        N as f64
    );
    assert_eq!(
        sample_sum(&scraped, "bodflow_end_to_end_seconds_count"),
        N as f64
    );
    assert_eq!(sample_sum(&scraped, "bodflow_amqp_connected"), 1.0);
    assert!(sample_sum(&scraped, "bodflow_store_flush_seconds_count") >= 1.0);
    assert!(scraped.contains("bodflow_stage_duration_seconds_bucket{stage=\"prepare\""));
    assert!(scraped.contains("bodflow_stage_duration_seconds_bucket{stage=\"commit\""));
    promtool_check(&scraped);

    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(http_get(port, "/readyz").map(|(s, _)| s), Some(200));

    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "bodflow run: {status}");
    assert!(
        http_get(port, "/healthz").is_none(),
        "HTTP still up after exit"
    );
}

/// `bodflow run` with the config as written (its `http.listen` included).
fn spawn(config: &Path, url: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["run", "--config"])
        .arg(config)
        .env("BODFLOW_AMQP_URL", url)
        .env_remove("BODFLOW_HTTP_LISTEN")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

/// Kills the service if the test fails before its SIGTERM.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
