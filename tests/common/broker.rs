//! Broker helpers shared by `tests/amqp_crash.rs`, `tests/amqp_restart.rs` and
//! `benches/load.rs` (included with `#[path]`, so it is not part of `common` and the other
//! test crates do not compile it). Same conventions as `tests/amqp.rs`: RabbitMQ on
//! 127.0.0.1:5672 (guest/guest), one throw-away vhost per test, `rabbitmqctl` as root.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bodflow::amqp::{self, InboundMessage, Sender};
use bodflow::config::Config;
use bodflow::pipeline::{payload_digest, Input, Pipeline, Prepared};
use bodflow::store::{HubRecord, Store};
use chrono::Utc;
use futures_lite::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed (and RabbitMQ running: see .ci/run)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throw-away vhost, deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new(test: &str) -> Vhost {
        let name = format!(
            "bodflow-test-{test}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_micros()
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// `messages` (ready + unacknowledged) per queue, from the broker's own view.
    pub fn queue_totals(&self) -> BTreeMap<String, usize> {
        let out = Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "-p", &self.name, "name", "messages"])
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect()
    }

    pub fn queue_total(&self, queue: &str) -> Option<usize> {
        self.queue_totals().get(queue).copied()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// A throw-away broker user with every permission on `vhost`, deleted on drop: another
/// sender than the `guest` bodflow connects as.
pub struct User {
    pub name: String,
}

impl User {
    pub fn new(vhost: &Vhost) -> User {
        let name = format!("{}-user", vhost.name);
        rabbitmqctl(&["add_user", &name, "secret"]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            &name,
            ".*",
            ".*",
            ".*",
        ]);
        User { name }
    }

    pub fn url(&self, vhost: &Vhost) -> String {
        format!("amqp://{}:secret@127.0.0.1:5672/{}", self.name, vhost.name)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// One input as the tests send it.
pub struct Doc {
    pub bytes: Vec<u8>,
    pub message_id: String,
}

/// `count` generated documents (the realistic mix) with payload-digest message ids.
pub fn generated(seed: u64, count: usize) -> Vec<Doc> {
    bodflow::generate::Generator::new(seed, bodflow::generate::Mix::REALISTIC)
        .take(count)
        .map(|g| Doc {
            message_id: payload_digest(&g.bytes),
            bytes: g.bytes,
        })
        .collect()
}

/// `bodflow.toml` for generated documents with `[hub] store = store`, written into `dir`.
pub fn write_generated_config(dir: &Path, store: &Path) -> PathBuf {
    let text = bodflow::generate::CONFIG.replacen(
        "[hub]\n",
        &format!("[hub]\nstore = {:?}\n", store.display().to_string()),
        1,
    );
    let path = dir.join("bodflow.toml");
    std::fs::write(&path, text).expect("write bodflow.toml");
    path
}

/// A generated workload published to its own vhost, with the offline replay of the same
/// inputs running in the background (CPU) while the caller runs the service (I/O).
pub struct Scenario {
    pub vhost: Vhost,
    /// Holds the store folder and the config file; removed on drop.
    pub dir: tempfile::TempDir,
    pub store_dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub docs: Arc<Vec<Doc>>,
    pub replay: tokio::task::JoinHandle<Offline>,
}

/// `count` generated documents (seed `seed`) published to a fresh vhost named after `test`,
/// with `[hub] store` in a temporary folder and the offline replay started.
pub async fn published_scenario(test: &str, seed: u64, count: usize) -> Scenario {
    let vhost = Vhost::new(test);
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let config_path = write_generated_config(dir.path(), &store_dir);
    let mut config = Config::load(&config_path).expect("generated config");
    config.amqp.url = vhost.url();
    let docs = Arc::new(generated(seed, count));
    let replay = tokio::task::spawn_blocking({
        let (config, docs) = (config.clone(), docs.clone());
        move || offline(&config, &docs)
    });
    publish(&config, &docs).await;
    Scenario {
        vhost,
        dir,
        store_dir,
        config_path,
        config,
        docs,
        replay,
    }
}

/// Publishes `docs` in order with confirms (up to 512 in flight).
pub async fn publish(config: &Config, docs: &[Doc]) {
    let sender = Sender::connect(config).await.expect("connect sender");
    let mut pending = std::collections::VecDeque::new();
    for d in docs {
        let name = amqp::document_name(&d.bytes);
        pending.push_back(
            sender
                .send(&InboundMessage {
                    bytes: &d.bytes,
                    message_id: &d.message_id,
                    document_name: name.as_deref(),
                    ..Default::default()
                })
                .await
                .expect("send"),
        );
        if pending.len() >= 512 {
            if let Some(p) = pending.pop_front() {
                p.confirmed().await.expect("confirm");
            }
        }
    }
    for p in pending {
        p.confirmed().await.expect("confirm");
    }
    sender.close().await.expect("close sender");
}

/// What an offline replay of the same inputs, in the same order, produces.
pub struct Offline {
    pub records: Vec<HubRecord>,
    /// BODID of every outbox row.
    pub bod_ids: Vec<String>,
    /// Message ids of the rejected documents.
    pub rejected: Vec<String>,
}

/// Offline replay through the library on a temporary store: prepare, then `commit_batch`
/// in groups (each document still sees the ones before it, as `process` would).
pub fn offline(config: &Config, docs: &[Doc]) -> Offline {
    let store = Arc::new(Store::temporary().expect("temporary store"));
    let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).expect("pipeline");
    let received_at = Utc::now();
    let mut rejected = Vec::new();
    for chunk in docs.chunks(256) {
        let prepared: Vec<Prepared> = chunk
            .iter()
            .map(|d| {
                pipeline.prepare(&Input {
                    bytes: &d.bytes,
                    source: "test",
                    message_id: Some(&d.message_id),
                    reply_to: None,
                    received_at,
                    retry: false,
                    envelope: None,
                })
            })
            .collect();
        for r in pipeline.commit_batch(&prepared).expect("commit") {
            if r.error.is_some() {
                rejected.push(r.message_id);
            }
        }
    }
    let bod_ids = store
        .outbox()
        .map(|r| r.expect("outbox row").1.bod_id)
        .collect();
    Offline {
        records: store.records().map(|r| r.expect("record")).collect(),
        bod_ids,
        rejected,
    }
}

/// After a service run over `docs`: the store at `store_dir` has an empty outbox, a marker for
/// every document, and equals the offline replay ([`assert_store_equals_offline`]).
pub fn assert_service_store(store_dir: &Path, docs: &[Doc], expected: &Offline) {
    let store = Store::open(store_dir).expect("open the service's store");
    assert_eq!(store.outbox_len(), 0, "outbox not drained");
    for d in docs {
        assert!(
            store.marker(&d.message_id).unwrap().is_some(),
            "{} never processed",
            d.message_id
        );
    }
    assert_store_equals_offline(&store, expected);
}

/// Compares a hub store with the offline replay: identical records (xrefs included), no
/// two records sharing an xref, and every xref resolving to its record.
pub fn assert_store_equals_offline(store: &Store, expected: &Offline) {
    let records: Vec<HubRecord> = store.records().map(|r| r.expect("record")).collect();
    assert_eq!(
        records.len(),
        expected.records.len(),
        "record count differs from the offline replay"
    );
    let mut owners = BTreeMap::new();
    for r in &records {
        for x in &r.xrefs {
            let key = x.key(r.kind);
            if let Some(other) = owners.insert(key.clone(), r.id.clone()) {
                panic!("xref {key:?} on two records: {other} and {}", r.id);
            }
            assert_eq!(
                store.resolve(&key).expect("resolve").as_deref(),
                Some(&*r.id),
                "xref index disagrees with the record"
            );
        }
    }
    if records != expected.records {
        let first = records
            .iter()
            .zip(&expected.records)
            .position(|(a, b)| a != b);
        panic!(
            "hub records differ from the offline replay; first difference at {first:?}: {:#?}",
            first.map(|i| (&records[i], &expected.records[i]))
        );
    }
}

/// Sends `message` to `bodflow.in` and waits for its confirm.
pub async fn send_confirmed(sender: &Sender, message: InboundMessage<'_>) {
    sender
        .send(&message)
        .await
        .expect("publish")
        .confirmed()
        .await
        .expect("confirm");
}

/// Checks `done` every 50 ms until it holds; fails naming `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Ready messages of a queue (passive declare); `None` when it cannot be asked (broker down).
pub async fn ready_count(ch: &Channel, queue: &str) -> Option<u32> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .ok()
    .map(|q| q.message_count())
}

/// Takes every ready message off `queue` (no ack) and returns their message ids. Only for
/// queues nobody else consumes or fills any more.
pub async fn drain_ids(ch: &Channel, queue: &str) -> Vec<String> {
    let count = ready_count(ch, queue).await.expect("queue exists") as usize;
    let mut ids = Vec::with_capacity(count);
    if count == 0 {
        return ids;
    }
    let tag = format!("drain-{queue}");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    while ids.len() < count {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("draining timed out")
            .expect("consumer ended")
            .expect("delivery");
        ids.push(
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
    }
    let _ = ch
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    ids
}

/// Every expected BODID is among `published` (at least once).
pub fn assert_all_published(expected: &Offline, published: &[String]) {
    let got: std::collections::HashSet<&str> = published.iter().map(String::as_str).collect();
    let missing: Vec<&String> = expected
        .bod_ids
        .iter()
        .filter(|id| !got.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} expected BODs never published, e.g. {:?}",
        missing.len(),
        expected.bod_ids.len(),
        missing.first()
    );
}

/// Every document the offline replay rejected is in `bodflow.dead` at least once (drained);
/// the workload must have some.
pub async fn assert_all_dead_lettered(ch: &Channel, expected: &Offline) {
    assert!(
        !expected.rejected.is_empty(),
        "the workload has no rejected documents: nothing to check"
    );
    let dead: std::collections::HashSet<String> = drain_ids(ch, amqp::topology::DEAD_QUEUE)
        .await
        .into_iter()
        .collect();
    let undead: Vec<&String> = expected
        .rejected
        .iter()
        .filter(|id| !dead.contains(*id))
        .collect();
    assert!(
        undead.is_empty(),
        "{} of {} rejected documents not dead-lettered, e.g. {:?}",
        undead.len(),
        expected.rejected.len(),
        undead.first()
    );
}

/// Message ids on every `bodflow.to.*` queue of the configuration (drained).
pub async fn drain_applications(ch: &Channel, config: &Config) -> Vec<String> {
    let mut ids = Vec::new();
    for app in &config.applications {
        let q = amqp::topology::application_queue(&app.slug());
        ids.extend(drain_ids(ch, &q).await);
    }
    ids
}

/// Sum of ready messages on the application queues.
pub async fn applications_ready(ch: &Channel, config: &Config) -> Option<u64> {
    let mut sum = 0;
    for app in &config.applications {
        let q = amqp::topology::application_queue(&app.slug());
        sum += u64::from(ready_count(ch, &q).await?);
    }
    Some(sum)
}

/// `bodflow run --config CONFIG` of `binary` against `url`, logging warnings, with HTTP on a
/// port of its own choosing (tests that do not scrape it).
pub fn spawn_service(binary: &Path, config: &Path, url: &str) -> std::process::Child {
    service_command(binary, config, url)
        .env("BODFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .spawn()
        .expect("spawn bodflow run")
}

/// `bodflow run --config CONFIG` against `url` with the config's own `http.listen`.
pub fn spawn_configured_service(config: &Path, url: &str) -> std::process::Child {
    service_command(Path::new(env!("CARGO_BIN_EXE_bodflow")), config, url)
        .env_remove("BODFLOW_HTTP_LISTEN")
        .spawn()
        .expect("spawn bodflow run")
}

fn service_command(binary: &Path, config: &Path, url: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["run", "--config"])
        .arg(config)
        .env("BODFLOW_AMQP_URL", url)
        .env("RUST_LOG", "warn");
    command
}

/// How long a test gives `bodflow run` to stop after SIGTERM (its own stop timeout is 20 s).
pub const STOP_WITHIN: Duration = Duration::from_secs(60);

pub fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// Sends SIGTERM to a `bodflow run` child and waits for it to exit, at most `within`: a
/// service that does not stop is killed and fails the test (rather than hanging the suite).
pub fn terminate(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    signal(child, "-TERM");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for bodflow run") {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bodflow run did not stop within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lets a `bodflow run` child finish the stream ([`wait_until_settled`]: 2 s of quiet within
/// `timeout`), then stops it with SIGTERM and asserts a clean exit.
pub async fn settle_and_stop(
    vhost: &Vhost,
    ch: &Channel,
    config: &Config,
    child: &mut std::process::Child,
    timeout: Duration,
) {
    wait_until_settled(vhost, ch, config, Duration::from_secs(2), timeout).await;
    let status = terminate(child, STOP_WITHIN);
    assert!(status.success(), "bodflow run: {status}");
}

/// Waits until the inbound queue is empty (ready and unacked) and the application queues
/// stopped growing for `quiet`; then the outbox is drained (the service publishes right
/// after each commit).
pub async fn wait_until_settled(
    vhost: &Vhost,
    ch: &Channel,
    config: &Config,
    quiet: Duration,
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < timeout,
            "the service did not finish in {timeout:?}"
        );
        if ready_count(ch, amqp::topology::INBOUND_QUEUE).await == Some(0)
            && vhost.queue_total(amqp::topology::INBOUND_QUEUE) == Some(0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut last = applications_ready(ch, config).await;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(
            start.elapsed() < timeout,
            "the outbox did not drain in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = applications_ready(ch, config).await;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// SplitMix64, for kill points derived from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A free TCP port on 127.0.0.1 (for `http.listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 on 127.0.0.1: (status, body); `None` while nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path)
}

/// The value of an unlabelled metric in the scrape of the service on `port` (`None` while
/// nothing listens or the metric is not there).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `method path` (no body) over HTTP/1.0 on 127.0.0.1: (status, body); `None` while nothing
/// listens.
pub fn http_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `ok` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The service in-process on `store` with `options`, stopped by the returned sender.
pub fn start_service(
    config: &Config,
    store: Arc<Store>,
    options: amqp::RunOptions,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), amqp::Error>>,
) {
    let pipeline = Pipeline::new(Arc::new(config.clone()), store).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(amqp::run(pipeline, options, async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}
