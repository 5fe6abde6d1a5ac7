//! `bodflow resync` ("Run Now") against a real sled store and the real RabbitMQ, one
//! throw-away vhost per test:
//! - offline (no service): the Syncs are written through the store and published by the
//!   command itself with publisher confirms, accounts before contacts, in the receiver's IDs;
//! - with `bodflow run` holding the store: the command runs the resync in the service over
//!   `POST /resync` and the service's publisher sends the Syncs; refusals come back as errors;
//! - `resync_every` in the configuration: the service resyncs by itself and records when.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use bodflow::amqp::topology;
use bodflow::store::{Kind, Store};
use broker::{connect, ready_count, Vhost};
use futures_lite::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

const CRM: &str = "lid://infor.crm.crm01";
const MOBILE: &str = "lid://comarch.mobile";

/// A store holding the fixture replay, and a configuration naming it, the vhost and a free
/// HTTP port. `extra` is appended to the Mobile Sales application's block.
struct Setup {
    dir: tempfile::TempDir,
    store: PathBuf,
    config: PathBuf,
    listen: String,
    vhost: Vhost,
}

fn setup(test: &str, mobile_extra: &str) -> Setup {
    let vhost = Vhost::new(test);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let text = std::fs::read_to_string(common::root().join("fixtures/bodflow.toml"))
        .unwrap()
        .replace(
            "store = \"data/bodflow.db\"",
            &format!("store = {:?}", store.display().to_string()),
        )
        .replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = {listen:?}"),
        )
        .replace(
            "name = \"Mobile Sales\"\n",
            &format!("name = \"Mobile Sales\"\n{mobile_extra}\n"),
        );
    let config = dir.path().join("bodflow.toml");
    std::fs::write(&config, text).unwrap();
    let out = common::output_guarded(
        bodflow(&vhost)
            .args(["replay", "fixtures", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .current_dir(common::root()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Setup {
        dir,
        store,
        config,
        listen,
        vhost,
    }
}

fn bodflow(vhost: &Vhost) -> Command {
    let mut cmd = common::bodflow();
    cmd.env("BODFLOW_AMQP_URL", vhost.url())
        .env_remove("BODFLOW_HTTP_LISTEN");
    cmd
}

fn resync(setup: &Setup, args: &[&str]) -> Output {
    common::output_unlocked(
        bodflow(&setup.vhost)
            .arg("resync")
            .args(args)
            .arg("--config")
            .arg(&setup.config)
            .current_dir(setup.dir.path()),
    )
}

/// Runs `f` on the store at `path`, opened under [`common::fork_guard`] (no child is spawned
/// meanwhile, so none inherits its lock).
fn with_store<T>(path: &Path, f: impl FnOnce(&Store) -> T) -> T {
    let _guard = common::fork_guard();
    let db = common::open_store(path);
    f(&db)
}

fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "resync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a resync to `application` must send, from the store: (hub ID, Add or Change) of the
/// live, non-placeholder records, accounts first.
fn expected(store: &Path, application: &str) -> Vec<(String, &'static str)> {
    with_store(store, |db| expected_in(db, application))
}

fn expected_in(db: &Store, application: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for kind in [Kind::Account, Kind::Contact] {
        for r in db.records().map(Result::unwrap) {
            if r.kind == kind && !r.deleted && !r.placeholder {
                let action = if r.xref_for(application).is_some() {
                    "Change"
                } else {
                    "Add"
                };
                out.push((r.id.clone(), action));
            }
        }
    }
    out
}

/// A message from an application queue.
struct Got {
    correlation_id: String,
    document_name: String,
    hub_id: String,
    action: &'static str,
}

/// Consumes `count` messages from `queue` (within 20 s), in order.
async fn take(url: &str, queue: &str, count: usize) -> Vec<Got> {
    let (_conn, ch) = connect(url).await;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "resync-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages on {queue}", got.len()))
            .unwrap()
            .unwrap();
        let body = String::from_utf8(d.data.clone()).unwrap();
        let hub_id = body
            .split("<NameValue name=\"bodflow.HubID\" type=\"String\">")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_default()
            .to_string();
        let action = if body.contains(r#"actionCode="Add""#) {
            "Add"
        } else {
            "Change"
        };
        let document_name = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("documentName").cloned())
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => String::new(),
        };
        got.push(Got {
            correlation_id: d
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            document_name,
            hub_id,
            action,
        });
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_resync_publishes_every_eligible_record_with_confirms_accounts_first() {
    let setup = setup("resync-offline", "");
    let want = expected(&setup.store, CRM);
    assert!(
        want.iter().any(|(_, a)| *a == "Add") && want.iter().any(|(_, a)| *a == "Change"),
        "the fixtures give the CRM records it knows and records it never saw: {want:?}"
    );

    let s = summary(&resync(&setup, &["--application", CRM, "--json"]));
    assert_eq!(s["trigger"], "cli");
    let sent = s["accounts"]["sent"].as_u64().unwrap() + s["contacts"]["sent"].as_u64().unwrap();
    assert_eq!(sent as usize, want.len());
    assert_eq!(
        s["published"].as_u64(),
        Some(sent),
        "replay left the outbox empty"
    );

    let queue = topology::application_queue("infor-crm");
    let got = take(&setup.vhost.url(), &queue, want.len()).await;
    let run = s["run"].as_str().unwrap();
    assert!(got.iter().all(|g| g.correlation_id == run));
    // Accounts first, then contacts, each in the CRM's terms.
    let got_pairs: Vec<(String, &str)> = got.iter().map(|g| (g.hub_id.clone(), g.action)).collect();
    assert_eq!(got_pairs, want);
    let first_contact = got
        .iter()
        .position(|g| g.document_name == "Sync.ContactMaster")
        .unwrap();
    assert!(got[..first_contact]
        .iter()
        .all(|g| g.document_name == "Sync.CustomerPartyMaster"));
    // Nothing more, and nothing left behind in the outbox.
    let (_conn, ch) = connect(&setup.vhost.url()).await;
    assert_eq!(ready_count(&ch, &queue).await, Some(0));
    with_store(&setup.store, |db| {
        assert_eq!(db.outbox_len(), 0);
        assert!(db
            .meta(&bodflow::pipeline::resync::last_run_key(CRM))
            .unwrap()
            .is_some());
    });
}

/// `bodflow run`, killed if a test fails before stopping it.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `bodflow run` on the setup's store and port.
fn spawn_service(setup: &Setup) -> Service {
    let _guard = common::fork_guard();
    Service(
        bodflow(&setup.vhost)
            .args(["run", "--config"])
            .arg(&setup.config)
            .current_dir(setup.dir.path())
            .spawn()
            .unwrap(),
    )
}

/// `GET path` on the service's listener; (status, body), or None while it does not answer.
fn http_get(listen: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(listen).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

fn wait_ready(listen: &str) {
    let start = Instant::now();
    while http_get(listen, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "service not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(service: &mut Service) {
    let status = broker::terminate(&mut service.0, broker::STOP_WITHIN);
    assert!(status.success(), "service exit {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_service_running_resync_goes_through_post_resync_and_its_publisher() {
    let setup = setup("resync-http", "");
    let want = expected(&setup.store, MOBILE);
    let mut service = spawn_service(&setup);
    wait_ready(&setup.listen);

    let out = resync(&setup, &["--application", MOBILE, "--json"]);
    let s = summary(&out);
    assert_eq!(
        s["trigger"], "http",
        "the store is locked, so the service ran it"
    );
    let sent = (s["accounts"]["sent"].as_u64().unwrap() + s["contacts"]["sent"].as_u64().unwrap())
        as usize;
    assert_eq!(sent, want.len());
    let got = take(
        &setup.vhost.url(),
        &topology::application_queue("mobile-sales"),
        sent,
    )
    .await;
    let got_pairs: Vec<(String, &str)> = got.iter().map(|g| (g.hub_id.clone(), g.action)).collect();
    assert_eq!(got_pairs, want);

    // Refusals come back from the service as errors naming the cause.
    let out = resync(&setup, &["--application", "lid://nobody"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a configured application"));
    let out = resync(&setup, &["--application", "lid://acme.webshop"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inactive"));
    // --out needs the store, which the service holds.
    let out = resync(&setup, &["--application", MOBILE, "--out", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running service"));

    let (status, metrics) = http_get(&setup.listen, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "bodflow_resync_syncs_total{{application=\"{MOBILE}\"}} {sent}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "bodflow_resync_runs_total{{application=\"{MOBILE}\",outcome=\"finished\",trigger=\"http\"}} 1"
    )));
    stop(&mut service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_every_makes_the_service_resync_by_itself_and_remember_when() {
    let setup = setup("resync-schedule", "resync_every = \"2s\"");
    let want = expected(&setup.store, MOBILE);
    with_store(&setup.store, |db| {
        assert_eq!(
            db.meta(&bodflow::pipeline::resync::last_run_key(MOBILE))
                .unwrap(),
            None
        )
    });
    let mut service = spawn_service(&setup);
    wait_ready(&setup.listen);
    // First run 2 s after the start (it never ran), then every 2 s after the last one.
    let got = take(
        &setup.vhost.url(),
        &topology::application_queue("mobile-sales"),
        2 * want.len(),
    )
    .await;
    let runs: BTreeSet<&str> = got.iter().map(|g| g.correlation_id.as_str()).collect();
    assert_eq!(runs.len(), 2, "two scheduled runs: {runs:?}");
    assert!(runs.iter().all(|r| r.starts_with("resync:")));
    let (_, metrics) = http_get(&setup.listen, "/metrics").unwrap();
    assert!(metrics.contains(&format!(
        "bodflow_resync_runs_total{{application=\"{MOBILE}\",outcome=\"finished\",trigger=\"schedule\"}}"
    )));
    stop(&mut service);
    with_store(&setup.store, |db| {
        assert!(db
            .meta(&bodflow::pipeline::resync::last_run_key(MOBILE))
            .unwrap()
            .is_some())
    });
}

/// The library path, no broker: more records than one transaction takes, every row a distinct
/// BODID of the run, `Add` for records the receiver never saw and `Change` for its own;
/// deleted records and a closed outbound flow are counted as skipped.
#[test]
fn resync_spans_chunks_with_distinct_bodids_and_counts_what_it_skips() {
    use bodflow::config::Config;
    use bodflow::generate::{Generator, Mix, CONFIG};
    use bodflow::pipeline::resync::{Request, Trigger, CHUNK};
    use bodflow::pipeline::{Input, Pipeline};
    use std::sync::Arc;

    let config = Config::from_toml(CONFIG, "generated").unwrap();
    let store = Arc::new(Store::temporary().unwrap());
    let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).unwrap();
    let count = CHUNK + 50;
    for g in Generator::new(7, Mix::NEW_ONLY).take(count) {
        let r = pipeline
            .process(&Input {
                bytes: &g.bytes,
                source: "test",
                message_id: None,
                reply_to: None,
                received_at: chrono::Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
        assert_eq!(r.outcome.as_str(), "applied");
    }
    let crm_own = store
        .records()
        .map(Result::unwrap)
        .filter(|r| r.xref_for("lid://load.crm").is_some())
        .count();
    assert!(crm_own > 0 && crm_own < count);
    let before = store.outbox_len();

    let request = Request {
        application: "lid://load.crm".into(),
        nouns: Vec::new(),
        trigger: Trigger::Cli,
    };
    let summary = pipeline.resync(&request, chrono::Utc::now()).unwrap();
    assert_eq!(summary.accounts.records, count as u64);
    assert_eq!(summary.accounts.sent, count as u64);
    assert_eq!(summary.accounts.added, (count - crm_own) as u64);
    let rows: Vec<_> = store
        .outbox()
        .map(Result::unwrap)
        .skip(before)
        .map(|(_, row)| row)
        .collect();
    assert_eq!(rows.len(), count);
    assert!(rows
        .iter()
        .all(|r| r.correlation_id == summary.run && r.to == "lid://load.crm"));
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.bod_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        count,
        "BODIDs continue across the {CHUNK}-record chunks"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.xml.contains(r#"actionCode="Change""#))
            .count(),
        crm_own
    );

    // A second run is a new run; deleted records are skipped.
    let first = store.records().map(Result::unwrap).next().unwrap();
    store
        .transact(|tx| {
            let mut r = first.clone();
            r.deleted = true;
            tx.put_record(&r)
        })
        .unwrap();
    let again = pipeline.resync(&request, chrono::Utc::now()).unwrap();
    assert_ne!(again.run, summary.run);
    assert_eq!(again.accounts.skipped_deleted, 1);
    assert_eq!(again.accounts.sent, count as u64 - 1);

    // Outbound creates off: what the CRM never saw is not sent, what it knows still is.
    // (The CRM is the last application of the generated configuration.)
    let closed = format!(
        "{CONFIG}[applications.flows.CustomerPartyMaster]\noutbound = {{ create = false }}\n"
    );
    let closed = Config::from_toml(&closed, "closed").unwrap();
    assert!(
        !closed.applications[2]
            .flows_for("CustomerPartyMaster")
            .outbound
            .create
    );
    let pipeline = Pipeline::new(Arc::new(closed), store.clone()).unwrap();
    let third = pipeline.resync(&request, chrono::Utc::now()).unwrap();
    assert_eq!(
        third.accounts.sent,
        crm_own as u64 - u64::from(first.xref_for("lid://load.crm").is_some())
    );
    assert_eq!(third.accounts.added, 0);
    assert_eq!(
        third.accounts.skipped_flow + third.accounts.skipped_deleted + third.accounts.sent,
        count as u64
    );
}

/// A resync applies the fan-out's rules: no account Adds to the promotion's system of record
/// (it learns of accounts by promotion), and contacts only with the receiver's
/// `require_classification`.
#[test]
fn resync_follows_the_promotion_and_classification_rules() {
    use bodflow::config::Config;
    use bodflow::pipeline::resync::{Request, Trigger};
    use bodflow::pipeline::{Input, Pipeline};
    use std::sync::Arc;

    let text = std::fs::read_to_string(common::root().join("fixtures/bodflow.toml"))
        .unwrap()
        .replace(
            "name = \"Mobile Sales\"\n",
            "name = \"Mobile Sales\"\nrequire_classification = \"Sales\"\n",
        );
    let config = Config::from_toml(&text, "fixtures + require_classification").unwrap();
    let store = Arc::new(Store::temporary().unwrap());
    let pipeline = Pipeline::new(Arc::new(config), store.clone()).unwrap();
    for path in bodflow::cli::collect_inputs(&[common::root().join("fixtures")]).unwrap() {
        let bytes = std::fs::read(&path).unwrap();
        pipeline
            .process(&Input {
                bytes: &bytes,
                source: "test",
                message_id: None,
                reply_to: None,
                received_at: chrono::Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
    }
    let records: Vec<_> = store.records().map(Result::unwrap).collect();
    let live = |r: &&bodflow::store::HubRecord| !r.deleted && !r.placeholder;

    let ln = "lid://infor.ln.ln01";
    let s = pipeline
        .resync(
            &Request {
                application: ln.into(),
                nouns: vec![Kind::Account],
                trigger: Trigger::Cli,
            },
            chrono::Utc::now(),
        )
        .unwrap();
    let unknown_to_ln = records
        .iter()
        .filter(live)
        .filter(|r| r.kind == Kind::Account && r.xref_for(ln).is_none())
        .count() as u64;
    assert!(unknown_to_ln > 0);
    assert_eq!(s.accounts.added, 0, "no Sync Add to the system of record");
    assert_eq!(s.accounts.skipped_flow, unknown_to_ln);

    let sales = records
        .iter()
        .filter(live)
        .filter(|r| {
            r.kind == Kind::Contact
                && r.fields
                    .classification
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("sales"))
        })
        .count() as u64;
    let contacts = records
        .iter()
        .filter(live)
        .filter(|r| r.kind == Kind::Contact)
        .count() as u64;
    assert!(sales > 0 && sales < contacts, "{sales} of {contacts}");
    let s = pipeline
        .resync(
            &Request {
                application: MOBILE.into(),
                nouns: vec![Kind::Contact],
                trigger: Trigger::Cli,
            },
            chrono::Utc::now(),
        )
        .unwrap();
    assert_eq!(s.contacts.sent, sales);
    assert_eq!(s.contacts.skipped_flow, contacts - sales);
}
