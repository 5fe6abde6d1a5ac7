//! Live reload (issue 4 item 5) through the `bodflow run` binary and the real RabbitMQ (own
//! vhost per test): SIGHUPs while thousands of generated BODs flow — valid changes, a new
//! application, a restart-only change and an invalid file — lose nothing and apply nothing
//! twice (the hub equals an offline replay, every delivery is processed exactly once); and
//! re-activating an application by SIGHUP releases its parked documents through the
//! pipeline, whose outputs are then published. In-process, the lock that puts reloads
//! between commit groups is shown to hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bodflow::amqp::topology;
use bodflow::config::Config;
use bodflow::pipeline::{Input, Outcome, Pipeline};
use bodflow::store::Store;
use broker::*;
use lapin::options::BasicGetOptions;

/// `GET /metrics` body, `None` while nothing listens.
fn metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics").map(|(_, body)| body)
}

/// The value of one sample line (`name` with its labels exactly as printed), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn reloads(port: u16, result: &str) -> f64 {
    sample(
        &metrics(port).unwrap_or_default(),
        &format!("bodflow_config_reloads_total{{result=\"{result}\"}}"),
    )
}

/// `bodflow run` with HTTP on `port`, logging warnings to `log`.
fn spawn(config: &Path, url: &str, port: u16, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["run", "--config"])
        .arg(config)
        .env("BODFLOW_AMQP_URL", url)
        .env("BODFLOW_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn,bodflow=info")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, child: &mut Child, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "bodflow run exited while waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `text` as the configuration file and sends SIGHUP, then waits until the reload
/// is counted with `result`.
fn reload_with(child: &mut Child, path: &Path, text: &str, port: u16, result: &str) {
    let before = reloads(port, result);
    // Write-then-rename: the reload never reads a half-written file.
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    signal(child, "-HUP");
    wait_until(
        &format!("reload counted as {result}"),
        Duration::from_secs(20),
        child,
        || reloads(port, result) > before,
    );
}

const N: usize = 12_000;
const SEED: u64 = 55;

/// A new application whose outbound flows are off: it gets its queue, and the documents'
/// outcomes stay those of the offline replay under the original configuration.
const LATE_APP: &str = r#"
[[applications]]
name = "Late App"
logical_id = "lid://load.late"
default_record_owner = "U-ADMIN"
[applications.flows.CustomerPartyMaster]
outbound = { create = false, update = false }
[applications.flows.ContactMaster]
outbound = { create = false, update = false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_lose_nothing_and_apply_nothing_twice() {
    let started = Instant::now();
    let Scenario {
        vhost,
        dir,
        store_dir,
        config_path,
        config,
        docs,
        replay,
    } = published_scenario("reload", SEED, N).await;
    let original = std::fs::read_to_string(&config_path).unwrap();
    let port = free_port();
    let log = dir.path().join("bodflow.log");
    let mut child = spawn(&config_path, &vhost.url(), port, &log);
    let (_conn, ch) = connect(&vhost.url()).await;
    wait_until("/metrics", Duration::from_secs(20), &mut child, || {
        metrics(port).is_some_and(|m| m.contains("bodflow_amqp_connected 1"))
    });

    // Each reload happens while deliveries are in flight: wait for another slice of the
    // backlog to be consumed first.
    let ready = || {
        vhost
            .queue_totals()
            .get(topology::INBOUND_QUEUE)
            .copied()
            .unwrap_or(N)
    };
    let step = |child: &mut Child, percent: usize, text: &str, result: &str| {
        wait_until(
            &format!("{percent}% consumed"),
            Duration::from_secs(60),
            child,
            || ready() <= N - N * percent / 100,
        );
        reload_with(child, &config_path, text, port, result);
        let left = ready();
        eprintln!(
            "reload {result} at ≥{percent}% consumed; {left} left ({:.1?})",
            started.elapsed()
        );
        assert!(left > 0, "the reload came too late to be under load");
    };
    let with_user = format!("{original}\n[[users]]\nid = \"U-NEW\"\n");
    let with_app = format!("{with_user}{LATE_APP}");
    step(&mut child, 5, &with_user, "applied");
    step(&mut child, 15, &with_app, "applied");
    step(
        &mut child,
        25,
        &format!("{with_app}\n[limits]\nmax_bytez = 1\n"),
        "invalid",
    );
    step(
        &mut child,
        35,
        &with_app.replace(
            "tenant = \"LOAD\"\n",
            "tenant = \"LOAD\"\n[amqp]\nprefetch = 17\n",
        ),
        "applied",
    );
    // The new application's queue was declared by the reload.
    assert!(
        broker::ready_count(&ch, &topology::application_queue("late-app"))
            .await
            .is_some(),
        "bodflow.to.late-app not declared"
    );

    wait_until_settled(
        &vhost,
        &ch,
        &config,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await;
    let scraped = metrics(port).unwrap();
    assert_eq!(
        sample(&scraped, "bodflow_config_reloads_total{result=\"applied\"}"),
        3.0
    );
    assert_eq!(
        sample(&scraped, "bodflow_config_reloads_total{result=\"invalid\"}"),
        1.0
    );
    assert_eq!(sample(&scraped, "bodflow_config_restart_required"), 1.0);
    let processed: f64 = scraped
        .lines()
        .filter(|l| l.starts_with("bodflow_bods_processed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(processed, N as f64, "every delivery processed exactly once");
    assert_eq!(sample(&scraped, "bodflow_redeliveries_total"), 0.0);

    assert!(terminate(&mut child, STOP_WITHIN).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("Configuration reload refused") && logged.contains("max_bytez"),
        "the invalid file's error is logged:\n{logged}"
    );
    assert!(
        logged.contains("amqp.prefetch"),
        "the restart-only change is reported:\n{logged}"
    );

    let expected = replay.await.unwrap();
    assert_service_store(&store_dir, &docs, &expected);
    let published = drain_applications(&ch, &config).await;
    assert_all_published(&expected, &published);
    let dead = drain_ids(&ch, topology::DEAD_QUEUE).await;
    let mut want_dead = expected.rejected.clone();
    let mut got_dead = dead.clone();
    want_dead.sort();
    got_dead.sort();
    assert_eq!(
        got_dead, want_dead,
        "each rejected document dead-lettered once"
    );
    assert_eq!(
        broker::ready_count(&ch, &topology::application_queue("late-app"))
            .await
            .unwrap(),
        0,
        "outbound flows of the late application are off"
    );
    eprintln!("done in {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reactivating_an_application_releases_its_parked_documents() {
    let vhost = Vhost::new("reactivate");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let config_path = write_generated_config(dir.path(), &store_dir);
    let active = std::fs::read_to_string(&config_path).unwrap();
    let inactive = active.replacen(
        "logical_id = \"lid://load.crm\"\n",
        "logical_id = \"lid://load.crm\"\nactive = false\n",
        1,
    );
    assert_ne!(active, inactive);
    std::fs::write(&config_path, &inactive).unwrap();
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    // Exact re-deliveries (same message id) aside: a parked message id makes its repeat a
    // duplicate, which is not what this test is about.
    let mut seen = std::collections::HashSet::new();
    let docs: Vec<Doc> = generated(8, 400)
        .into_iter()
        .filter(|d| seen.insert(d.message_id.clone()))
        .collect();
    let crm: Vec<&Doc> = docs
        .iter()
        .filter(|d| String::from_utf8_lossy(&d.bytes).contains(">lid://load.crm<"))
        .collect();
    assert!(crm.len() > 50);

    // What the CRM documents become once active: the same pipeline offline, all active.
    let offline_config = Config::from_toml(&active, "active").unwrap();
    let offline = Pipeline::new(
        std::sync::Arc::new(offline_config),
        std::sync::Arc::new(Store::temporary().unwrap()),
    )
    .unwrap();
    let mut want = std::collections::BTreeMap::new();
    for d in &docs {
        let r = offline
            .process(&Input {
                bytes: &d.bytes,
                source: "test",
                message_id: Some(&d.message_id),
                reply_to: None,
                received_at: chrono::Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
        want.insert(d.message_id.clone(), r.outcome);
    }
    let records_offline = offline.store.records().count();

    publish(&config, &docs).await;
    let port = free_port();
    let log = dir.path().join("bodflow.log");
    let mut child = spawn(&config_path, &vhost.url(), port, &log);
    let (_conn, ch) = connect(&vhost.url()).await;
    let parked = |port| {
        sample(
            &metrics(port).unwrap_or_default(),
            "bodflow_bods_processed_total{noun=\"CustomerPartyMaster\",outcome=\"parked\",verb=\"Sync\"}",
        )
    };
    wait_until(
        "every document processed",
        Duration::from_secs(60),
        &mut child,
        || vhost.queue_total(topology::INBOUND_QUEUE) == Some(0) && parked(port) > 0.0,
    );
    let parked_count = parked(port);
    assert_eq!(parked_count, crm.len() as f64, "every CRM document parked");
    // Nothing of theirs was published while parked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let crm_ids: std::collections::HashSet<&str> =
        crm.iter().map(|d| d.message_id.as_str()).collect();
    let mut early = Vec::new();
    for app in ["erp-europe", "erp-uk"] {
        early.extend(correlations(&ch, &topology::application_queue(app)).await);
    }
    assert!(
        early.iter().all(|c| !crm_ids.contains(c.as_str())),
        "a parked document's output was published"
    );

    reload_with(&mut child, &config_path, &active, port, "applied");
    let mut released = Vec::new();
    let start = Instant::now();
    // Their Syncs reach the other applications' queues.
    while released.len()
        < want
            .iter()
            .filter(|(id, o)| crm_ids.contains(id.as_str()) && **o == Outcome::Applied)
            .count()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "released outputs not published: {} so far",
            released.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for app in ["erp-europe", "erp-uk"] {
            for c in correlations(&ch, &topology::application_queue(app)).await {
                if crm_ids.contains(c.as_str()) && !released.contains(&c) {
                    released.push(c);
                }
            }
        }
    }
    assert!(terminate(&mut child, STOP_WITHIN).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Configuration reloaded"), "{logged}");

    let store = Store::open(&store_dir).unwrap();
    assert_eq!(store.parked().count(), 0, "nothing left parked");
    assert_eq!(store.outbox_len(), 0);
    for d in &crm {
        let marker = store.marker(&d.message_id).unwrap().unwrap();
        assert_eq!(
            marker.outcome,
            want[&d.message_id].as_str(),
            "{}: released with the outcome an active application gets",
            d.message_id
        );
    }
    assert_eq!(store.records().count(), records_offline);
}

/// Correlation ids of the messages on `queue` (taken off it).
async fn correlations(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(
            m.delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
        );
    }
    out
}

/// The mechanism behind "between commit groups", in-process: a reload waits while a group
/// holds the pipeline, then swaps; a refused reload leaves the running configuration as it
/// was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waits_for_the_group_in_flight_and_a_refused_one_changes_nothing() {
    use bodflow::reload::{reload, Live};
    let vhost = Vhost::new("reload-lock");
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    // The broker URL in the file itself: the reload reads the file as `bodflow run` does.
    let original = format!(
        "{}\n[amqp]\nurl = {:?}\n",
        std::fs::read_to_string(&config_path).unwrap(),
        vhost.url()
    );
    std::fs::write(&config_path, &original).unwrap();
    let config = Config::load(&config_path).unwrap();
    let store = std::sync::Arc::new(Store::temporary().unwrap());
    let live = Live::new(Pipeline::new(std::sync::Arc::new(config), store).unwrap());

    std::fs::write(
        &config_path,
        format!("{original}\n[[users]]\nid = \"U-LATER\"\n"),
    )
    .unwrap();
    let group = live.read().await;
    let pending = tokio::spawn({
        let (live, path) = (live.clone(), config_path.clone());
        async move { reload(&live, Some(path)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "the reload did not wait for the group"
    );
    assert!(group.config.user("U-LATER").is_none());
    drop(group);
    let done = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the reload finishes once the group is done")
        .unwrap()
        .unwrap();
    assert!(done.restart_needed.is_empty(), "{:?}", done.restart_needed);
    assert!(live.current().await.config.user("U-LATER").is_some());

    std::fs::write(
        &config_path,
        format!("{original}\n[[applications]]\nname = \"x\"\n"),
    )
    .unwrap();
    let err = reload(&live, Some(config_path.clone())).await.unwrap_err();
    assert_eq!(err.result(), "invalid");
    assert!(err.to_string().contains("logical_id"), "{err}");
    let running = live.current().await;
    assert!(running.config.user("U-LATER").is_some());
    assert_eq!(running.config.applications.len(), 3);
}
