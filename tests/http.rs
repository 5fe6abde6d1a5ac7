//! The HTTP endpoint (issue 4 item 1): the router driven without a socket (`oneshot`), then
//! the `bodflow run` binary against the real RabbitMQ (own vhost) scraped over real HTTP:
//! `/readyz` is 200 while it consumes, `/metrics` moves as documents flow and passes
//! `promtool check metrics` when promtool is installed (`.ci/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bodflow::config::Config;
use bodflow::telemetry::events::{emit, BodProcessed, BodReceived};
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
    emit(BodReceived {
        bytes: 10,
        redelivered: false,
        noun: Some("ContactMaster"),
        verb: Some("Sync"),
    });
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
        "bodflow_bods_received_total{noun=\"ContactMaster\",verb=\"Sync\"}",
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

/// `promtool check metrics` on `text`. promtool is required (`.ci/test` installs it), never
/// skipped.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required: apt-get install prometheus (as .ci/test does)");
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

const N: usize = 60;

/// Sum of the samples of `name` whose labels include every `(label, value)` of `labels`.
fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// What the offline pipeline makes of the same documents: counts by outcome, by rejecting
/// stage, and the outbox rows.
struct Expected {
    outcomes: std::collections::BTreeMap<&'static str, usize>,
    rejected_at: std::collections::BTreeMap<&'static str, usize>,
    by_code: std::collections::BTreeMap<&'static str, usize>,
    rejected: usize,
    outbox_rows: usize,
}

fn expected(config: &Config, docs: &[Doc]) -> Expected {
    let store = std::sync::Arc::new(bodflow::store::Store::temporary().unwrap());
    let pipeline =
        bodflow::pipeline::Pipeline::new(std::sync::Arc::new(config.clone()), store.clone())
            .unwrap();
    let mut e = Expected {
        outcomes: Default::default(),
        rejected_at: Default::default(),
        by_code: Default::default(),
        rejected: 0,
        outbox_rows: 0,
    };
    for d in docs {
        let r = pipeline
            .process(&bodflow::pipeline::Input {
                bytes: &d.bytes,
                source: "test",
                message_id: Some(&d.message_id),
                reply_to: None,
                received_at: chrono::Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
        *e.outcomes.entry(r.outcome.as_str()).or_default() += 1;
        if let Some(err) = &r.error {
            e.rejected += 1;
            *e.rejected_at.entry(err.stage.as_str()).or_default() += 1;
            *e.by_code.entry(err.code).or_default() += 1;
        }
    }
    e.outbox_rows = store.outbox_len();
    e
}

/// The binary against the real broker, scraped over real HTTP before and after N generated
/// documents flow: every count the documents should move moves by exactly what an offline
/// run of the same documents predicts (received, processed by outcome, rejections and dead
/// letters, each stage's duration histogram, end-to-end latency, outbox publishes), the
/// gauges are exposed, and the scrape passes `promtool check metrics`.
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
    let docs = generated(11, N);
    let want = expected(&config, &docs);
    assert!(
        want.rejected > 0 && want.outbox_rows > 0,
        "the mix must reject and emit"
    );

    let mut child = broker::spawn_configured_service(&config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until("/readyz 200", Duration::from_secs(20), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let before = http_get(port, "/metrics").unwrap().1;
    assert_eq!(sample_sum(&before, "bodflow_bods_received_total"), 0.0);
    promtool_check(&before);

    publish(&config, &docs).await;
    let mut after = String::new();
    wait_until(
        "every delivery acked and every outbox row published",
        Duration::from_secs(30),
        || {
            after = http_get(port, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            sample_sum(&after, "bodflow_end_to_end_seconds_count") >= N as f64
                && sample_sum(&after, "bodflow_outbox_published_total") >= want.outbox_rows as f64
        },
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        labelled(&after, name, labels) - labelled(&before, name, labels)
    };
    let n = N as f64;
    assert_eq!(delta("bodflow_bods_received_total", &[]), n);
    assert_eq!(
        delta(
            "bodflow_bods_received_total",
            &[("noun", "CustomerPartyMaster"), ("verb", "Sync")]
        ),
        n
    );
    assert_eq!(delta("bodflow_bods_processed_total", &[]), n);
    for (outcome, count) in &want.outcomes {
        assert_eq!(
            delta("bodflow_bods_processed_total", &[("outcome", outcome)]),
            *count as f64,
            "outcome {outcome}"
        );
    }
    assert_eq!(delta("bodflow_rejections_total", &[]), want.rejected as f64);
    assert_eq!(
        delta("bodflow_dead_lettered_total", &[]),
        want.rejected as f64
    );
    for (code, count) in &want.by_code {
        assert_eq!(
            delta("bodflow_dead_lettered_total", &[("code", code)]),
            *count as f64,
            "dead letters {code}"
        );
        assert_eq!(
            delta("bodflow_rejections_total", &[("code", code)]),
            *count as f64,
            "rejections {code}"
        );
    }
    // Each stage's histogram counts the documents that reached it.
    let reached_validate = n - *want.rejected_at.get("decode").unwrap_or(&0) as f64;
    let reached_country = reached_validate - *want.rejected_at.get("validate").unwrap_or(&0) as f64;
    let reached_owner = reached_country - *want.rejected_at.get("country").unwrap_or(&0) as f64;
    for (stage, count) in [
        ("decode", n),
        ("validate", reached_validate),
        ("country", reached_country),
        ("owner", reached_owner),
        ("prepare", n),
        ("upsert", n),
    ] {
        assert_eq!(
            delta("bodflow_stage_duration_seconds_count", &[("stage", stage)]),
            count,
            "stage {stage}"
        );
        assert!(delta("bodflow_stage_duration_seconds_sum", &[("stage", stage)]) > 0.0);
    }
    for stage in ["commit", "flush"] {
        assert!(delta("bodflow_stage_duration_seconds_count", &[("stage", stage)]) >= 1.0);
    }
    assert_eq!(delta("bodflow_end_to_end_seconds_count", &[]), n);
    assert!(delta("bodflow_end_to_end_seconds_sum", &[]) > 0.0);
    assert!(delta("bodflow_group_documents_sum", &[]) == n);
    assert!(delta("bodflow_outbox_published_total", &[]) >= want.outbox_rows as f64);
    assert!(delta("bodflow_publish_confirm_seconds_count", &[]) >= 1.0);
    assert!(delta("bodflow_store_flush_seconds_count", &[]) >= 1.0);
    assert_eq!(sample_sum(&after, "bodflow_amqp_connected"), 1.0);
    assert_eq!(sample_sum(&after, "bodflow_amqp_reconnects_total"), 0.0);
    assert_eq!(sample_sum(&after, "bodflow_redeliveries_total"), 0.0);
    assert!(sample_sum(&after, "bodflow_store_size_bytes") > 0.0);
    assert!(after.contains("\nbodflow_outbox_pending "));
    assert!(after.contains("bodflow_build_info{version=\""));
    promtool_check(&after);

    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(http_get(port, "/readyz").map(|(s, _)| s), Some(200));

    let status = terminate(&mut child, STOP_WITHIN);
    assert!(status.success(), "bodflow run: {status}");
    assert!(
        http_get(port, "/healthz").is_none(),
        "HTTP still up after exit"
    );
}
