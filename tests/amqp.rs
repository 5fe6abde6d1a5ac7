//! The service against the real RabbitMQ on 127.0.0.1:5672 (guest/guest). Each test runs in
//! its own vhost, created with `rabbitmqctl` and deleted at the end, so tests run in parallel
//! and leave nothing behind. `.ci/run` starts the broker when it is not running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/raw_amqp.rs"]
mod raw_amqp;
#[path = "common/tls.rs"]
mod tls;

use raw_amqp::{is_method, read_frame};

use broker::{
    connect as channel, send_confirmed, start_service, wait_for, write_generated_config, Vhost,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bodflow::amqp::{self, topology, InboundMessage, RunOptions, Sender};
use bodflow::config::Config;
use bodflow::pipeline::{payload_digest, Input, Pipeline, Report};
use bodflow::store::{HubRecord, Store};
use chrono::Utc;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

fn fixtures() -> Vec<PathBuf> {
    bodflow::cli::collect_inputs(&[common::root().join("fixtures")]).unwrap()
}

fn fixture_config(vhost: &Vhost) -> Config {
    let mut config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
    config.amqp.url = vhost.url();
    config
}

/// One input as the tests send it: bytes, message id (payload digest unless given) and an
/// optional reply queue.
struct Doc {
    bytes: Vec<u8>,
    message_id: String,
    reply_to: Option<String>,
}

fn doc(bytes: Vec<u8>) -> Doc {
    Doc {
        message_id: payload_digest(&bytes),
        bytes,
        reply_to: None,
    }
}

async fn publish(config: &Config, docs: &[Doc]) {
    let sender = Sender::connect(config).await.unwrap();
    let mut pending = Vec::new();
    for d in docs {
        let name = amqp::document_name(&d.bytes);
        pending.push(
            sender
                .send(&InboundMessage {
                    bytes: &d.bytes,
                    message_id: &d.message_id,
                    document_name: name.as_deref(),
                    reply_to: d.reply_to.as_deref(),
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.confirmed().await.unwrap();
    }
    sender.close().await.unwrap();
}

/// What an offline replay of the same inputs, in the same order, produces.
struct Offline {
    records: Vec<HubRecord>,
    reports: Vec<Report>,
    /// (documentName, to, reply_to, BODID) of every outbox row, in order.
    rows: Vec<(String, String, Option<String>, String)>,
    /// Each outbox row's XML by BODID, its processing times blanked ([`timeless`]).
    bodies: BTreeMap<String, String>,
}

/// `xml` with the text of every `…DateTime` element blanked: the times of processing, which
/// differ between the service and the offline replay it is compared with.
fn timeless(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = rest.find("DateTime>") {
        let end = at + "DateTime>".len();
        let opening = rest[..at]
            .rfind('<')
            .is_some_and(|lt| rest.as_bytes().get(lt + 1) != Some(&b'/'));
        out.push_str(&rest[..end]);
        rest = &rest[end..];
        if opening {
            rest = &rest[rest.find('<').unwrap_or(rest.len())..];
        }
    }
    out.push_str(rest);
    out
}

fn offline(config: &Config, docs: &[Doc]) -> Offline {
    let store = Arc::new(Store::temporary().unwrap());
    let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).unwrap();
    let mut reports = Vec::new();
    for d in docs {
        let input = Input {
            bytes: &d.bytes,
            source: "test",
            message_id: Some(&d.message_id),
            reply_to: d.reply_to.as_deref(),
            received_at: Utc::now(),
            retry: false,
            envelope: None,
        };
        reports.push(pipeline.process(&input).unwrap());
    }
    let mut bodies = BTreeMap::new();
    let rows = store
        .outbox()
        .map(|r| {
            let (_, row) = r.unwrap();
            bodies.insert(row.bod_id.clone(), timeless(&row.xml));
            (row.document_name, row.to, row.reply_to, row.bod_id)
        })
        .collect();
    Offline {
        records: comparable_records(&store),
        reports,
        rows,
        bodies,
    }
}

/// The hub records without the processing time they carry (a promotion's `at`): the service
/// runs later than the offline replay it is compared with.
fn comparable_records(store: &Store) -> Vec<HubRecord> {
    store
        .records()
        .map(|r| {
            let mut r = r.unwrap();
            if let Some(p) = &mut r.promotion {
                p.at.clear();
            }
            r
        })
        .collect()
}

/// Every fixture as a message, and what an offline replay of them gives.
fn fixture_docs(config: &Config) -> (Vec<Doc>, Offline) {
    let docs: Vec<Doc> = fixtures()
        .iter()
        .map(|p| doc(std::fs::read(p).unwrap()))
        .collect();
    let expected = offline(config, &docs);
    (docs, expected)
}

fn header(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A message taken off a queue.
#[derive(Debug)]
struct Got {
    message_id: String,
    correlation_id: String,
    headers: Option<FieldTable>,
    body: String,
}

/// Takes every message off `queue` (acking them).
async fn drain_queue(ch: &Channel, queue: &str) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let p = &m.delivery.properties;
        out.push(Got {
            message_id: p
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            correlation_id: p
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            headers: p.headers().clone(),
            body: String::from_utf8_lossy(&m.delivery.data).into_owned(),
        });
    }
    out
}

/// `bodflow publish` (the binary) sends each file to `bodflow.in` as ION would: its payload
/// digest as message id, persistent, with the ION headers stamped from the document —
/// `documentName`, `fromLogicalId`, `toLogicalId` (the hub), `tenantId` and `variationId` —
/// and, for a file that is not well-formed, the name and the sender it could make out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodflow_publish_sends_each_file_with_the_ion_headers_of_its_document() {
    let vhost = Vhost::new("publish-cli");
    let fixtures = common::root().join("fixtures");
    let files = [
        "011-ln-sync-account-update-higher-variation.xml",
        "100-ln-sync-account-truncated-not-well-formed.xml",
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["publish", "--config"])
        .arg(fixtures.join("bodflow.toml"))
        .args(files.map(|f| fixtures.join(f)))
        .env("BODFLOW_AMQP_URL", vhost.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_conn, ch) = channel(&vhost.url()).await;
    let got = drain_queue(&ch, topology::INBOUND_QUEUE).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let headers = |m: &Got| {
        [
            "documentName",
            "fromLogicalId",
            "toLogicalId",
            "tenantId",
            "variationId",
        ]
        .map(|name| header(&m.headers, name))
    };
    let some = |v: &str| Some(v.to_string());
    let sync = std::fs::read(fixtures.join(files[0])).unwrap();
    assert_eq!(got[0].message_id, payload_digest(&sync));
    assert_eq!(
        headers(&got[0]),
        [
            some("Sync.CustomerPartyMaster"),
            some("lid://infor.ln.ln01/3555"),
            some("lid://bodflow.hub"),
            some("ACME_PRD"),
            some("2"),
        ]
    );
    assert_eq!(
        headers(&got[1]),
        [
            some("Sync.CustomerPartyMaster"),
            some("lid://infor.ln.ln01/3555"),
            some("lid://bodflow.hub"),
            None,
            None,
        ]
    );
}

/// Waits until the service on `store` has committed every one of `docs`, published every
/// outbox row, and `bodflow.dead` holds at least `dead` messages.
async fn wait_processed(ch: &Channel, store: &Store, docs: &[Doc], dead: usize) {
    wait_for(
        "every message processed and published",
        Duration::from_secs(30),
        async || {
            docs.iter()
                .all(|d| store.marker(&d.message_id).unwrap().is_some())
                && store.outbox_len() == 0
                && broker::ready_count(ch, topology::DEAD_QUEUE).await.unwrap() as usize >= dead
        },
    )
    .await;
}

/// Publishes every fixture, runs the service until all are processed, and compares with an
/// offline replay: same hub records, the same BODs (kind, receiver, BODID) on the
/// `bodflow.to.*` queues as replay's outbox rows, and every rejected document in
/// `bodflow.dead` with its stage, code and reason headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_end_to_end_equal_offline_replay_and_rejections_are_dead_lettered() {
    let vhost = Vhost::new("e2e");
    let config = fixture_config(&vhost);
    let (docs, expected) = fixture_docs(&config);

    publish(&config, &docs).await;
    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    let rejected: Vec<&Report> = expected
        .reports
        .iter()
        .filter(|r| r.error.is_some())
        .collect();
    let (_conn, ch) = channel(&vhost.url()).await;
    wait_processed(&ch, &store, &docs, rejected.len()).await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();

    let records = comparable_records(&store);
    assert_eq!(records, expected.records, "hub records differ from replay");
    assert!(!records.is_empty());

    let mut got = Vec::new();
    for app in &config.applications {
        for m in drain_queue(&ch, &topology::application_queue(&app.slug())).await {
            assert_eq!(
                header(&m.headers, "toLogicalId").as_deref(),
                Some(&*app.logical_id)
            );
            assert_eq!(
                header(&m.headers, "fromLogicalId").as_deref(),
                Some(&*config.hub.logical_id)
            );
            assert!(!m.correlation_id.is_empty());
            // A Sync or Process names the variation of the noun it carries (DESIGN §5.3: the
            // same ION headers); a reply carries no noun.
            let name = header(&m.headers, "documentName").unwrap_or_default();
            match header(&m.headers, "variationId") {
                Some(v) => assert!(
                    m.body.contains(&format!("variationID=\"{v}\"")),
                    "{name}: variationId {v} not in the document"
                ),
                None => assert!(
                    !name.starts_with("Sync.") && !name.starts_with("Process."),
                    "{name} without variationId"
                ),
            }
            assert_eq!(
                timeless(&m.body),
                expected.bodies[&m.message_id],
                "{name} {}: published body differs from replay's",
                m.message_id
            );
            got.push((
                header(&m.headers, "documentName").unwrap_or_default(),
                app.logical_id.clone(),
                None,
                m.message_id,
            ));
        }
    }
    assert_eq!(
        timeless("<A><CreationDateTime>now</CreationDateTime><B>b</B></A>"),
        "<A><CreationDateTime></CreationDateTime><B>b</B></A>"
    );
    let mut want = expected.rows.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "published BODs differ from replay's outbox");
    assert!(!got.is_empty());

    let dead = drain_queue(&ch, topology::DEAD_QUEUE).await;
    type DeadKey = (String, String, String, Option<String>, String);
    let dead_set: BTreeSet<DeadKey> = dead
        .iter()
        .map(|m| {
            (
                m.message_id.clone(),
                header(&m.headers, "x-bodflow-stage").unwrap(),
                header(&m.headers, "x-bodflow-code").unwrap(),
                header(&m.headers, "x-bodflow-path"),
                header(&m.headers, "x-bodflow-reason").unwrap(),
            )
        })
        .collect();
    let want_dead: BTreeSet<DeadKey> = rejected
        .iter()
        .filter_map(|r| {
            let e = r.error.as_ref()?;
            Some((
                r.message_id.clone(),
                e.stage.as_str().to_string(),
                e.code.to_string(),
                e.path.clone(),
                e.message.clone(),
            ))
        })
        .collect();
    assert!(
        dead_set.iter().filter(|d| d.3.is_some()).count() >= 10,
        "rejections with a path carry it: {dead_set:?}"
    );
    assert_eq!(dead_set, want_dead);
    assert_eq!(
        broker::ready_count(&ch, topology::INBOUND_QUEUE)
            .await
            .unwrap(),
        0
    );
}

/// A sender's headers larger than the 32 KiB frame bodflow asks for: the broker delivers the
/// message in a frame that size cannot hold. The service takes it all the same (it
/// reconnects with larger frames), the other messages are not held up, and the document —
/// one refused by validation here — reaches `bodflow.dead` with the sender's headers intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_headers_larger_than_the_frame_does_not_stop_the_service() {
    large_headers("large-headers", 60 * 1024).await;
}

/// Headers that just fit the 32 KiB frame the delivery came in, but not with the
/// `x-bodflow-*` headers its dead-letter copy adds: the broker would close the connection
/// over the copy, for ever. The service reconnects with larger frames to publish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_that_outgrows_the_frame_does_not_stop_the_service() {
    // The delivery's header frame: 111 bytes besides the note.
    large_headers("outgrown-headers", 32 * 1024 - 168).await;
}

/// The fixtures, reordered so that they begin with, for each of `first` in turn, the first
/// document rejected at that stage (`None`: the first one applied).
fn fixtures_in_order(config: &Config, first: &[Option<&str>]) -> Vec<Doc> {
    let (docs, offline) = fixture_docs(config);
    let mut docs: Vec<Option<Doc>> = docs.into_iter().map(Some).collect();
    let mut ordered = Vec::new();
    for stage in first {
        let at = offline
            .reports
            .iter()
            .enumerate()
            .position(|(i, r)| {
                docs[i].is_some() && r.error.as_ref().map(|e| e.stage.as_str()) == *stage
            })
            .unwrap_or_else(|| panic!("no fixture is {stage:?}"));
        ordered.push(docs[at].take().unwrap());
    }
    ordered.extend(docs.into_iter().flatten());
    ordered
}

/// The fixtures, the first one that validation refuses going first with a header of
/// `note_len` bytes: all processed as offline, that one in `bodflow.dead` with its header.
async fn large_headers(test: &str, note_len: usize) {
    let vhost = Vhost::new(test);
    let config = fixture_config(&vhost);
    let docs = fixtures_in_order(&config, &[Some("validate")]);
    let expected = offline(&config, &docs);

    let note = "x".repeat(note_len);
    amqp::declare_topology(&config).await.unwrap();
    let (_conn, ch) = channel(&vhost.url()).await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-sender-note".into(),
        AMQPValue::LongString(note.as_str().into()),
    );
    ch.basic_publish(
        topology::IN_EXCHANGE.into(),
        "bod".into(),
        lapin::options::BasicPublishOptions::default(),
        &docs[0].bytes,
        lapin::BasicProperties::default()
            .with_message_id(docs[0].message_id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish(&config, &docs[1..]).await;

    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    wait_processed(&ch, &store, &docs, 1).await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert_eq!(comparable_records(&store), expected.records);
    assert_eq!(
        store.meta("amqp.frames").unwrap().as_deref(),
        Some("131072"),
        "the next start asks for large frames at once"
    );

    // `bodflow dlq list` reads it too.
    let dead = amqp::dlq::DeadQueue::open(&config).await.unwrap();
    let copy = dead
        .messages
        .iter()
        .find(|m| m.message_id() == docs[0].message_id)
        .expect("the refused document is dead-lettered");
    assert_eq!(copy.header("x-sender-note"), Some(note));
    assert!(copy.code().is_some());
    dead.release().await.unwrap();
}

/// Properties lapin could not read, as a sender can write them and RabbitMQ passes them on: a
/// `message_id` and a header name that are not UTF-8, and a header nested 24,000 arrays deep
/// (120 KB, within the broker's 128 KiB frames). Before bodflow's patch of lapin's parser
/// (`vendor/amq-protocol-types`) the first closed every connection for ever (the message is
/// redelivered first) and the second overflowed the I/O thread's stack, aborting the process
/// at every start. Now both are processed like any other message — the invalid bytes read as
/// U+FFFD plus a hash of the bytes, the nesting cut at 64 levels — the documents behind them
/// too, and the rejected one reaches `bodflow.dead`, where `bodflow dlq` reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_lapin_could_not_read_are_read_lossily_and_hold_nothing_up() {
    let vhost = Vhost::new("raw-properties");
    let config = fixture_config(&vhost);
    let mut docs = fixtures_in_order(&config, &[Some("validate"), None, None]);
    // How the service reads the ids written with invalid bytes: U+FFFD for those, then `~`
    // and the FNV-1a hash of the bytes as sent, so that the last two (the same text once
    // lossy) stay two messages, not one and its duplicate.
    docs[0].message_id = "deep-\u{FFFD}~c9251a247c1a44fb".to_string();
    docs[1].message_id = "bad-\u{FFFD}\u{FFFD}-id~b18501328ce05ba0".to_string();
    docs[2].message_id = "bad-\u{FFFD}\u{FFFD}-id~e00f456963ca47d6".to_string();
    let expected = offline(&config, &docs);

    amqp::declare_topology(&config).await.unwrap();
    let mut raw = raw_amqp::RawPublisher::connect(&vhost.name);
    let mut deep = raw_amqp::nested_entry(b"x-deep", 24_000);
    deep.extend(raw_amqp::string_entry(b"x-note-\xff", b"kept"));
    raw.publish(
        topology::IN_EXCHANGE,
        "bod",
        &raw_amqp::properties(b"deep-\xff", &deep),
        &docs[0].bytes,
    );
    raw.publish(
        topology::IN_EXCHANGE,
        "bod",
        &raw_amqp::properties(b"bad-\xff\xfe-id", &[]),
        &docs[1].bytes,
    );
    raw.publish(
        topology::IN_EXCHANGE,
        "bod",
        &raw_amqp::properties(b"bad-\xfe\xff-id", &[]),
        &docs[2].bytes,
    );
    raw.close();
    publish(&config, &docs[3..]).await;

    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    let (_conn, ch) = channel(&vhost.url()).await;
    let dead = expected
        .reports
        .iter()
        .filter(|r| r.error.is_some())
        .count();
    wait_processed(&ch, &store, &docs, dead).await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert_eq!(comparable_records(&store), expected.records);
    let mut got: Vec<String> = Vec::new();
    for app in &config.applications {
        let queue = topology::application_queue(&app.slug());
        got.extend(
            drain_queue(&ch, &queue)
                .await
                .into_iter()
                .map(|m| m.message_id),
        );
    }
    let mut want: Vec<String> = expected.rows.iter().map(|r| r.3.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the BODs of an offline replay, once each");

    let dead = amqp::dlq::DeadQueue::open(&config).await.unwrap();
    let copy = dead
        .messages
        .iter()
        .find(|m| m.message_id() == docs[0].message_id)
        .expect("the rejected document is dead-lettered");
    assert_eq!(copy.stage().as_deref(), Some("validate"));
    assert_eq!(
        copy.header("x-note-\u{FFFD}~cc52a7b4063e38be").as_deref(),
        Some("kept")
    );
    dead.release().await.unwrap();
}

/// Declares the tests' reply queue `test.replies`; returns a fixture that gets a ConfirmBOD
/// (a CRM Sync rejected for its missing name).
async fn declare_reply_queue(ch: &Channel) -> Vec<u8> {
    ch.queue_declare(
        "test.replies".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    std::fs::read(common::root().join("fixtures/111-crm-sync-account-missing-name.xml")).unwrap()
}

/// A document with `reply_to` gets its ConfirmBOD on that queue (correlated by message id),
/// not on the sender's application queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_reply_to() {
    let vhost = Vhost::new("reply");
    let config = fixture_config(&vhost);
    let (_conn, ch) = channel(&vhost.url()).await;
    let bytes = declare_reply_queue(&ch).await;
    let d = Doc {
        bytes,
        message_id: "reply-test-1".into(),
        reply_to: Some("test.replies".into()),
    };
    publish(&config, std::slice::from_ref(&d)).await;
    // An RPC client's request: its reply carries the client's correlation id.
    let sender = Sender::connect(&config).await.unwrap();
    send_confirmed(
        &sender,
        InboundMessage {
            bytes: &d.bytes,
            message_id: "reply-test-2",
            document_name: amqp::document_name(&d.bytes).as_deref(),
            reply_to: Some("test.replies"),
            correlation_id: Some("rpc-call-2"),
            ..Default::default()
        },
    )
    .await;
    sender.close().await.unwrap();
    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    wait_for("the replies", Duration::from_secs(20), async || {
        broker::ready_count(&ch, "test.replies").await.unwrap() >= 2 && store.outbox_len() == 0
    })
    .await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();

    let mut replies = drain_queue(&ch, "test.replies").await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    replies.sort_by(|a, b| a.correlation_id.cmp(&b.correlation_id));
    assert_eq!(replies[0].correlation_id, "reply-test-1");
    assert_eq!(replies[1].correlation_id, "rpc-call-2");
    for reply in &replies {
        assert_eq!(
            header(&reply.headers, "documentName").as_deref(),
            Some("Confirm.BOD"),
            "{}",
            reply.correlation_id
        );
        assert!(reply.body.contains("<ConfirmBOD"), "{}", reply.body);
    }
    for app in &config.applications {
        let q = topology::application_queue(&app.slug());
        assert_eq!(
            broker::ready_count(&ch, &q).await.unwrap(),
            0,
            "{q} got a message"
        );
    }
}

/// A `reply_to` queue that no longer exists (an RPC client's exclusive queue, gone with its
/// connection): the broker returns the reply, and bodflow sends it to the sender's
/// application queue instead, as if no `reply_to` had been given — neither kept for ever nor
/// holding up the replies to other documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_queue_that_is_gone_gets_the_reply_on_the_application_queue() {
    let vhost = Vhost::new("reply-gone");
    let config = fixture_config(&vhost);
    let (_conn, ch) = channel(&vhost.url()).await;
    let bytes = declare_reply_queue(&ch).await;
    let gone = Doc {
        bytes: bytes.clone(),
        message_id: "reply-gone-1".into(),
        reply_to: Some("amq.gen-no-such-queue".into()),
    };
    // Behind it, other documents whose replies go to a queue that exists.
    let others: Vec<Doc> = (0..20)
        .map(|i| Doc {
            bytes: bytes.clone(),
            message_id: format!("reply-ok-{i}"),
            reply_to: Some("test.replies".into()),
        })
        .collect();
    let mut docs = vec![gone];
    docs.extend(others);
    publish(&config, &docs).await;
    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    let crm = config
        .applications
        .iter()
        .find(|a| a.logical_id == "lid://infor.crm.crm01")
        .unwrap();
    let crm_queue = topology::application_queue(&crm.slug());
    wait_for("every reply", Duration::from_secs(20), async || {
        broker::ready_count(&ch, "test.replies").await.unwrap() >= 20
            && broker::ready_count(&ch, &crm_queue).await.unwrap() >= 1
            && store.outbox_len() == 0
    })
    .await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();

    let rerouted = drain_queue(&ch, &crm_queue).await;
    assert_eq!(rerouted.len(), 1, "{rerouted:?}");
    assert_eq!(rerouted[0].correlation_id, "reply-gone-1");
    assert_eq!(
        header(&rerouted[0].headers, "documentName").as_deref(),
        Some("Confirm.BOD")
    );
    assert_eq!(
        header(&rerouted[0].headers, "toLogicalId").as_deref(),
        Some("lid://infor.crm.crm01")
    );
    let replies = drain_queue(&ch, "test.replies").await;
    let mut correlated: Vec<String> = replies.into_iter().map(|r| r.correlation_id).collect();
    correlated.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("reply-ok-{i}")).collect();
    want.sort();
    assert_eq!(correlated, want);
}

/// A receiver whose queue refuses messages (a `max-length` policy with `reject-publish`: the
/// broker Nacks) does not hold up the others: their BODs arrive while its rows wait in the
/// outbox, each retried on its own backoff; once the queue takes messages again, they arrive
/// too, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_messages_does_not_hold_up_the_others() {
    refusing_receiver("refusing", RunOptions::default().retry_base).await;
}

/// The same with no backoff at all, so the refused rows are due again at every round — as
/// a backlog of refused rows larger than a round can publish within the longest backoff is:
/// new rows still get their share of every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_due_again_at_every_round_do_not_starve_the_others() {
    refusing_receiver("refusing-no-backoff", Duration::ZERO).await;
}

async fn refusing_receiver(test: &str, retry_base: Duration) {
    let vhost = Vhost::new(test);
    let config = fixture_config(&vhost);
    let (docs, expected) = fixture_docs(&config);
    // The receiver with the most BODs refuses them all.
    let count_to = |to: &str| expected.rows.iter().filter(|r| r.1 == to).count();
    let refusing = config
        .applications
        .iter()
        .max_by_key(|a| count_to(&a.logical_id))
        .unwrap();
    let refused = count_to(&refusing.logical_id);
    assert!(refused >= 8, "{refused} BODs to {}", refusing.name);
    let refusing_queue = topology::application_queue(&refusing.slug());
    refuse(&vhost, &refusing_queue);

    publish(&config, &docs).await;
    let (store, stop, service) = start_in_small_rounds(&config, retry_base);
    let (_conn, ch) = channel(&vhost.url()).await;
    let others: Vec<(String, usize)> = config
        .applications
        .iter()
        .filter(|a| a.logical_id != refusing.logical_id)
        .map(|a| {
            (
                topology::application_queue(&a.slug()),
                count_to(&a.logical_id),
            )
        })
        .collect();
    // The rejected documents' dead letters, outbox rows too, go to a queue that takes them.
    let dead = expected
        .reports
        .iter()
        .filter(|r| r.error.is_some())
        .count();
    wait_for(
        "the other receivers' BODs and the dead letters while one refuses",
        Duration::from_secs(20),
        async || {
            for (queue, want) in &others {
                if (broker::ready_count(&ch, queue).await.unwrap() as usize) < *want {
                    return false;
                }
            }
            docs.iter()
                .all(|d| store.marker(&d.message_id).unwrap().is_some())
                && broker::ready_count(&ch, topology::DEAD_QUEUE)
                    .await
                    .unwrap() as usize
                    == dead
        },
    )
    .await;
    // A row goes once its confirm is in, which may come a moment after the queue has the
    // message.
    wait_for(
        "only the refusing receiver's rows to wait",
        Duration::from_secs(5),
        async || store.outbox_len() == refused,
    )
    .await;
    assert_eq!(broker::ready_count(&ch, &refusing_queue).await, Some(0));

    stop_refusing(&vhost);
    wait_for(
        "the refused BODs once the queue takes them",
        Duration::from_secs(20),
        async || {
            store.outbox_len() == 0
                && broker::ready_count(&ch, &refusing_queue).await.unwrap() as usize >= refused
        },
    )
    .await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    let mut got = Vec::new();
    for app in &config.applications {
        for m in drain_queue(&ch, &topology::application_queue(&app.slug())).await {
            got.push(m.message_id);
        }
    }
    let mut want: Vec<String> = expected.rows.iter().map(|r| r.3.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every BOD once");
}

/// Makes `queue` refuse every message (a `reject-publish` policy at length 0, as a full queue
/// would), until [`stop_refusing`].
fn refuse(vhost: &Vhost, queue: &str) {
    let policy = r#"{"max-length":0,"overflow":"reject-publish"}"#;
    broker::rabbitmqctl(&[
        "set_policy",
        "-p",
        &vhost.name,
        "--apply-to",
        "queues",
        "refuse",
        &format!("^{}$", queue.replace('.', "\\.")),
        policy,
    ]);
}

fn stop_refusing(vhost: &Vhost) {
    broker::rabbitmqctl(&["clear_policy", "-p", &vhost.name, "refuse"]);
}

/// The service on a store of its own, publishing the outbox in rounds of 4 rows: fewer than
/// the rows a refusing queue holds back, which come first in the outbox. `retry_base`: the
/// first backoff of a refused row.
fn start_in_small_rounds(
    config: &Config,
    retry_base: Duration,
) -> (
    Arc<Store>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), amqp::Error>>,
) {
    let store = Arc::new(Store::temporary().unwrap());
    let options = RunOptions {
        outbox_batch: 4,
        retry_base,
        ..RunOptions::default()
    };
    let (stop, service) = start_service(config, store.clone(), options);
    (store, stop, service)
}

/// A `bodflow.dead` that refuses messages holds up nothing but the dead-letter copies: every
/// document is processed and acked and the receivers get their BODs, while the copies wait in
/// the outbox; once the queue takes them, each rejected document is in it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_refusing_messages_holds_up_nothing_else() {
    let vhost = Vhost::new("dead-refusing");
    let config = fixture_config(&vhost);
    let (docs, expected) = fixture_docs(&config);
    let rejected: BTreeSet<&str> = expected
        .reports
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.message_id.as_str())
        .collect();
    assert!(rejected.len() >= 10);
    amqp::declare_topology(&config).await.unwrap();
    refuse(&vhost, topology::DEAD_QUEUE);
    publish(&config, &docs).await;
    let (store, stop, service) = start_in_small_rounds(&config, RunOptions::default().retry_base);
    let (_conn, ch) = channel(&vhost.url()).await;
    let to_receivers = expected.rows.len();
    wait_for(
        "every document processed and acked, its BODs out, while bodflow.dead refuses",
        Duration::from_secs(30),
        async || {
            let mut out = 0;
            for app in &config.applications {
                let queue = topology::application_queue(&app.slug());
                out += broker::ready_count(&ch, &queue).await.unwrap() as usize;
            }
            out == to_receivers
                && store.outbox_len() == rejected.len()
                && vhost.queue_total(topology::INBOUND_QUEUE) == Some(0)
        },
    )
    .await;
    assert_eq!(
        broker::ready_count(&ch, topology::DEAD_QUEUE).await,
        Some(0)
    );

    stop_refusing(&vhost);
    wait_processed(&ch, &store, &docs, rejected.len()).await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    let dead: Vec<String> = drain_queue(&ch, topology::DEAD_QUEUE)
        .await
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(dead.len(), rejected.len(), "each once: {dead:?}");
    assert_eq!(
        dead.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        rejected
    );
}

/// SIGTERM while deliveries flow: the binary exits 0 with its outbox drained; a restart
/// finishes the rest; the hub equals an offline replay (nothing lost, no record created
/// twice), every expected BOD was published and every rejected document dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_0_and_a_restart_processes_everything_once() {
    let broker::Scenario {
        vhost,
        dir: _dir,
        store_dir,
        config_path,
        config,
        docs,
        replay,
    } = broker::published_scenario("sigterm", 7, 3000).await;
    let (_conn, ch) = channel(&vhost.url()).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_bodflow"));

    let mut child = broker::spawn_service(binary, &config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_for("processing to start", Duration::from_secs(30), async || {
        (broker::ready_count(&ch, topology::INBOUND_QUEUE)
            .await
            .unwrap() as usize)
            < docs.len() * 9 / 10
    })
    .await;
    let status = broker::terminate(&mut child, broker::STOP_WITHIN);
    assert!(status.success(), "first run: {status}");
    let left = broker::ready_count(&ch, topology::INBOUND_QUEUE)
        .await
        .unwrap() as usize;
    assert!(left > 0, "SIGTERM came too late to be mid-stream");
    {
        let store = Store::open(&store_dir).unwrap();
        assert_eq!(
            store.outbox_len(),
            0,
            "the first run left committed BODs unpublished at its SIGTERM"
        );
    }

    let mut child = broker::spawn_service(binary, &config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    broker::settle_and_stop(&vhost, &ch, &config, &mut child, Duration::from_secs(60)).await;

    let expected = replay.await.unwrap();
    broker::assert_service_store(&store_dir, &docs, &expected);
    let published = broker::drain_applications(&ch, &config).await;
    broker::assert_all_published(&expected, &published);
    broker::assert_all_dead_lettered(&ch, &expected).await;
}

/// A SIGTERM that comes while the service is still starting (its store just opened, not yet
/// consuming) stops it cleanly once it runs: exit 0, not killed by the signal's default
/// action. (`.ci/run` once saw a test's SIGTERM, sent as soon as the service's start-up purge
/// showed in `/metrics`, kill it.)
#[test]
fn sigterm_while_the_service_starts_is_a_clean_stop() {
    use std::io::BufRead as _;
    let vhost = Vhost::new("sigterm-start");
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("BODFLOW_AMQP_URL", vhost.url())
        .env("BODFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = common::KillOnDrop(child.id());
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // "Starting" is logged once the store is open, before the service runs.
    assert!(
        lines.by_ref().any(|l| l.unwrap().contains("Starting")),
        "bodflow run never logged Starting"
    );
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = broker::terminate(&mut child, broker::STOP_WITHIN);
    let log = drain.join().unwrap();
    assert!(
        status.success(),
        "bodflow run: {status}\n{}",
        log.join("\n")
    );
}

/// Options for the connection tests: a short `connect_timeout` and a fast backoff.
fn quick_reconnects(connect_timeout: Duration) -> RunOptions {
    RunOptions {
        connect_timeout,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..RunOptions::default()
    }
}

type Service = tokio::task::JoinHandle<Result<(), amqp::Error>>;

/// Waits up to 20 s for `done`, the service running all along; `state` says where things
/// stood if it never came.
async fn while_serving(service: &Service, done: impl Fn() -> bool, state: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "after 20 s: {}",
            state()
        );
        assert!(!service.is_finished(), "the service stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the service and expects a clean end `within`.
async fn stop_cleanly(stop: tokio::sync::oneshot::Sender<()>, service: Service, within: Duration) {
    stop.send(()).unwrap();
    tokio::time::timeout(within, service)
        .await
        .expect("the service did not stop")
        .unwrap()
        .unwrap();
}

/// A peer that accepts TCP and then says nothing (a broker still starting, a half-open
/// proxy) must not hold the service for ever: the attempt is abandoned after
/// `connect_timeout` and retried with the backoff, the abandoned attempt's socket is shut
/// down (lapin's I/O thread would otherwise wait on it until the peer closes), and a shutdown
/// meanwhile is a clean stop that leaves no socket open either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_and_says_nothing_is_abandoned_and_retried() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tls_hellos = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (counter, closures, finished) = (accepted.clone(), closed.clone(), done.clone());
    let hellos = tls_hellos.clone();
    // Accepts every connection and never answers the AMQP header or the TLS hello; counts the
    // connections that began with a TLS handshake record and those the service closes (end of
    // stream) until the test is done.
    let silent = std::thread::spawn(move || {
        let mut held: Vec<(std::net::TcpStream, bool)> = Vec::new();
        while !finished.load(Ordering::SeqCst) {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(true).unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                held.push((stream, false));
            }
            held.retain_mut(|(stream, heard)| {
                let mut buf = [0u8; 64];
                loop {
                    match std::io::Read::read(stream, &mut buf) {
                        Ok(0) => {
                            closures.fetch_add(1, Ordering::SeqCst);
                            return false;
                        }
                        Ok(_) => {
                            if !*heard && buf[0] == 0x16 {
                                hellos.fetch_add(1, Ordering::SeqCst);
                            }
                            *heard = true;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(_) => {
                            closures.fetch_add(1, Ordering::SeqCst);
                            return false;
                        }
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // A TLS connection waits for the server's hello instead, within the same bound.
    for scheme in ["amqp", "amqps"] {
        let before = accepted.load(Ordering::SeqCst);
        let mut config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
        config.amqp.url = format!("{scheme}://guest:guest@127.0.0.1:{port}/%2f");
        let options = quick_reconnects(Duration::from_millis(300));
        let (stop, service) =
            start_service(&config, Arc::new(Store::temporary().unwrap()), options);
        while_serving(
            &service,
            || {
                accepted.load(Ordering::SeqCst) >= before + 3
                    && closed.load(Ordering::SeqCst) >= before + 2
            },
            || {
                format!(
                    "{scheme}: {} attempts accepted, {} of them closed by the service",
                    accepted.load(Ordering::SeqCst) - before,
                    closed.load(Ordering::SeqCst) - before
                )
            },
        )
        .await;
        stop_cleanly(stop, service, Duration::from_secs(10)).await;
        assert_eq!(
            tls_hellos.load(Ordering::SeqCst) > 0,
            scheme == "amqps",
            "{scheme}: TLS hellos"
        );
        // The attempt in flight at the stop is shut down as well.
        let stopped = Instant::now();
        while closed.load(Ordering::SeqCst) < accepted.load(Ordering::SeqCst) {
            assert!(
                stopped.elapsed() < Duration::from_secs(5),
                "{scheme}: {} of {} connections still open 5 s after the service stopped",
                accepted.load(Ordering::SeqCst) - closed.load(Ordering::SeqCst),
                accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A command's connection (`publish`, `dlq`, `resync`) is bounded as well, and shut down.
    let mut config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
    config.amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let error = Sender::connect(&config).await.err().expect("connected");
    assert!(matches!(error, amqp::Error::ConnectTimeout(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(20));
    wait_for(
        "the command's socket closed",
        Duration::from_secs(5),
        async || closed.load(Ordering::SeqCst) == accepted.load(Ordering::SeqCst),
    )
    .await;
    done.store(true, Ordering::SeqCst);
    silent.join().unwrap();
}

/// A TCP proxy to the real broker on 127.0.0.1:5672 that passes the AMQP handshake both ways
/// and then stops passing the broker's frames to the client (those after `Connection.OpenOk`
/// are read and dropped): a broker that completes the connection and then says nothing.
/// Counts the handshakes completed and the connections the client *abandoned*: ended by the
/// client without a `Connection.Close`, while the proxy still held both sides open.
struct StallingProxy {
    port: u16,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections to the broker that failed (the accepted client is then dropped).
    failures: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl StallingProxy {
    fn start() -> StallingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (h, a, f, d) = (
            handshakes.clone(),
            abandoned.clone(),
            failures.clone(),
            done.clone(),
        );
        let accept = std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(broker) = std::net::TcpStream::connect("127.0.0.1:5672") else {
                    f.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                // Set before the proxy ends the client's side itself.
                let proxy_closed = Arc::new(AtomicBool::new(false));
                let (client_r, broker_w) =
                    (client.try_clone().unwrap(), broker.try_clone().unwrap());
                let (abandoned, closed_here) = (a.clone(), proxy_closed.clone());
                // Client to broker, frame by frame after the protocol header, all passed on.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client_r, broker_w);
                    let mut header = [0u8; 8];
                    let mut close_sent = false;
                    if std::io::Read::read_exact(&mut from, &mut header).is_ok()
                        && std::io::Write::write_all(&mut to, &header).is_ok()
                    {
                        while let Ok(frame) = read_frame(&mut from) {
                            close_sent |= is_method(&frame, 10, 50);
                            if std::io::Write::write_all(&mut to, &frame).is_err() {
                                break;
                            }
                        }
                    }
                    if !close_sent && !closed_here.load(Ordering::SeqCst) {
                        abandoned.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
                let handshakes = h.clone();
                // Broker to client until OpenOk has gone through; then read and dropped.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (broker, client);
                    let mut stalled = false;
                    while let Ok(frame) = read_frame(&mut from) {
                        if stalled {
                            continue;
                        }
                        if std::io::Write::write_all(&mut to, &frame).is_err() {
                            break;
                        }
                        if is_method(&frame, 10, 41) {
                            stalled = true;
                            handshakes.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    proxy_closed.store(true, Ordering::SeqCst);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        StallingProxy {
            port,
            handshakes,
            abandoned,
            failures,
            done,
            accept: Some(accept),
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A broker that completes the connection and then stops answering (a stalled proxy, a
/// broker that hangs after the handshake): the session's setup — channels, topology, qos — is
/// abandoned after `connect_timeout`, its socket shut down, and the service connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stalls_after_the_handshake_is_abandoned_and_retried() {
    use std::sync::atomic::Ordering;
    let vhost = Vhost::new("stall");
    let proxy = StallingProxy::start();
    let mut config = fixture_config(&vhost);
    config.amqp.url = config
        .amqp
        .url
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port));
    let options = quick_reconnects(Duration::from_millis(500));
    let (stop, service) = start_service(&config, Arc::new(Store::temporary().unwrap()), options);
    // Two handshakes, the first of them given up: its connection ended by the service
    // without a Connection.Close (the broker had stopped answering).
    while_serving(
        &service,
        || {
            proxy.handshakes.load(Ordering::SeqCst) >= 2
                && proxy.abandoned.load(Ordering::SeqCst) >= 1
        },
        || {
            format!(
                "{} handshakes completed, {} connections abandoned by the service, {} \
                 connections to the broker failed",
                proxy.handshakes.load(Ordering::SeqCst),
                proxy.abandoned.load(Ordering::SeqCst),
                proxy.failures.load(Ordering::SeqCst)
            )
        },
    )
    .await;
    stop_cleanly(stop, service, Duration::from_secs(20)).await;
}

/// A throw-away vhost reached through a [`tls::TlsProxy`] of a fresh test CA (asking for a
/// client certificate when `mutual`), and the fixture configuration connecting to it by
/// `amqps://`, trusting that CA and presenting no client certificate.
async fn behind_tls(test: &str, mutual: bool) -> (Vhost, tls::Pki, tls::TlsProxy, Config) {
    let vhost = Vhost::new(test);
    let pki = tls::Pki::new();
    let proxy = tls::TlsProxy::start(&pki, mutual).await;
    let mut config = fixture_config(&vhost);
    config.amqp.url = proxy.url(&vhost.name);
    config.amqp.tls = pki.tls(false);
    (vhost, pki, proxy, config)
}

/// `amqps://` with a private CA: the sender and the service reach the broker only through a
/// TLS listener (the proxy; the broker behind it speaks plain AMQP), trusting the test CA from
/// `[amqp.tls] ca_file` and checking the host name the URL gives. What they do there is what
/// they do over plain AMQP: the fixtures give the records and as many BODs as an offline
/// replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_processes_the_fixtures_as_plain_amqp_does() {
    let (vhost, _pki, proxy, config) = behind_tls("tls", false).await;
    let (docs, expected) = fixture_docs(&config);
    publish(&config, &docs).await;
    assert_eq!(proxy.seen.sessions(), 1, "the sender did not use TLS");

    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    let rejected = expected
        .reports
        .iter()
        .filter(|r| r.error.is_some())
        .count();
    // The test's own view of the broker, in plain AMQP.
    let (_conn, ch) = channel(&vhost.url()).await;
    wait_processed(&ch, &store, &docs, rejected).await;
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();

    assert_eq!(comparable_records(&store), expected.records);
    let mut published = broker::drain_applications(&ch, &config).await;
    let mut want: Vec<String> = expected.rows.iter().map(|r| r.3.clone()).collect();
    published.sort();
    want.sort();
    assert_eq!(
        published, want,
        "published BODs differ from replay's outbox"
    );
    assert!(
        proxy.seen.sessions() >= 2,
        "the service did not connect through TLS"
    );
    assert_eq!((proxy.seen.refused(), proxy.seen.not_tls()), (0, 0));
    assert_eq!(proxy.seen.with_client_certificate(), 0);
}

/// A broker certificate the client cannot trust (a private CA, not in `[amqp.tls]`) or one for
/// another host is refused: no session, never a plain-text fallback. The service keeps
/// retrying (not ready meanwhile) and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused_and_retried_never_bypassed() {
    let (vhost, pki, proxy, mut config) = behind_tls("tls-untrusted", false).await;
    // Trusting another CA (and the system's, which did not sign it either).
    let other = tls::Pki::new();
    config.amqp.tls = other.tls(false);
    let error = Sender::connect(&config).await.err().expect("connected");
    assert!(
        error
            .to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    // The CA is trusted, but the certificate is for `localhost`, not the address the URL names.
    config.amqp.tls = pki.tls(false);
    config.amqp.url = proxy.url(&vhost.name).replace("localhost", "127.0.0.1");
    let error = Sender::connect(&config).await.err().expect("connected");
    assert!(
        error
            .to_string()
            .contains("invalid peer certificate: certificate not valid for name"),
        "{error}"
    );

    config.amqp.url = proxy.url(&vhost.name);
    config.amqp.tls = other.tls(false);
    let (stop, service) = start_service(
        &config,
        Arc::new(Store::temporary().unwrap()),
        quick_reconnects(Duration::from_secs(5)),
    );
    while_serving(
        &service,
        || proxy.seen.refused() >= 6,
        || format!("{} handshakes refused", proxy.seen.refused()),
    )
    .await;
    assert_eq!(proxy.seen.sessions(), 0, "a session without trust");
    assert_eq!(
        proxy.seen.not_tls(),
        0,
        "plain text after a refused certificate"
    );
    stop_cleanly(stop, service, Duration::from_secs(10)).await;
}

/// Mutual TLS: a broker that asks for a client certificate gets the one of `[amqp.tls]`
/// (`cert_file`, `key_file`); without one it refuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let (vhost, pki, proxy, mut config) = behind_tls("tls-mutual", true).await;
    assert!(
        Sender::connect(&config).await.is_err(),
        "no client certificate"
    );
    wait_for("the refusal", Duration::from_secs(5), async || {
        proxy.seen.refused() >= 1
    })
    .await;
    assert_eq!((proxy.seen.refused(), proxy.seen.sessions()), (1, 0));

    config.amqp.tls = pki.tls(true);
    let (docs, _) = fixture_docs(&config);
    publish(&config, &docs[..1]).await;
    assert_eq!(
        (proxy.seen.sessions(), proxy.seen.with_client_certificate()),
        (1, 1)
    );
    assert_eq!(proxy.seen.not_tls(), 0);
    let (_conn, ch) = channel(&vhost.url()).await;
    assert_eq!(
        broker::ready_count(&ch, topology::INBOUND_QUEUE)
            .await
            .unwrap(),
        1
    );
}

/// lapin 4.12 deadlocks when a connection closes with deliveries still arriving on a
/// consuming channel whose last handle is gone (`amqp::release_channels`): the service holds
/// its channels until lapin is done with the connection. With the handles let go of before
/// the close instead, this test hung at rounds 3, 9 and 0 in three tries (a runtime worker and
/// lapin's I/O thread stuck for good); with them held, 150 rounds passed in each of three. On
/// a runtime of its own, let go of with a timeout, so that a deadlock fails the test instead
/// of hanging it.
#[test]
fn closing_with_deliveries_in_flight_never_deadlocks() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let vhost = Vhost::new("close");
    let closes = runtime.block_on(close_with_deliveries_in_flight(&vhost.url()));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(round) = closes {
        panic!("round {round}: the close or the release of the channels hung (lapin deadlocked)");
    }
}

/// Rounds of: consume on a fresh connection, take a few deliveries, let go of every handle
/// but those passed to [`amqp::release_channels`], close, release. The first round whose close
/// or release hung.
async fn close_with_deliveries_in_flight(url: &str) -> Result<(), usize> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};

    const ROUNDS: usize = 150;
    // A close or a release that takes this long is stuck (lapin closes in milliseconds).
    const HUNG: Duration = Duration::from_secs(20);
    let (_conn, ch) = channel(url).await;
    ch.queue_declare(
        "close.test".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let body = vec![b'x'; 3_400];
    let mut confirms = Vec::new();
    for _ in 0..5_000 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "close.test".into(),
                Default::default(),
                &body,
                Default::default(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    for round in 0..ROUNDS {
        let conn = lapin::Connection::connect(url, Default::default())
            .await
            .unwrap();
        let inbound = conn.create_channel().await.unwrap();
        let other = conn.create_channel().await.unwrap();
        inbound
            .basic_qos(256, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = inbound
            .basic_consume(
                "close.test".into(),
                "close-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Taken, never acked: the rest of the prefetch is arriving as the connection closes.
        for _ in 0..5 {
            consumer.next().await.unwrap().unwrap();
        }
        let held = vec![inbound.clone(), other.clone()];
        drop((consumer, inbound, other));
        // The close may fail (the consumer's cancel, sent as its handle goes, can meet the
        // closing connection); what must not happen is a close that never ends, or handles
        // that cannot be let go of.
        let close = tokio::time::timeout(HUNG, conn.close(200, "bye".into())).await;
        let released = tokio::time::timeout(HUNG, amqp::release_channels(&conn, held)).await;
        if close.is_err() || released.is_err() {
            return Err(round);
        }
    }
    Ok(())
}
