//! `bodflow dlq` against the real RabbitMQ (see `tests/amqp.rs`), in its own vhost: the
//! service runs in-process, the `dlq` commands are the binary under test.
//!
//! An invalid document (Name cleared) lands in `bodflow.dead` with code `missing_field`;
//! `dlq list --json` shows it and leaves the queue as it was; `dlq replay ID --payload
//! fixed.xml` applies the fix once and empties the queue of it; a second replay of the same
//! message id (the dead letter put back, as after a crash between confirm and ack) is a
//! duplicate; `dlq discard` removes another dead letter.
//!
//! An outbound message no queue takes goes to `bodflow.dead` (stage `publish`, code
//! `unroutable`) after a few returns, and `dlq replay` delivers it once its receiver has a
//! queue again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::sync::Arc;
use std::time::Duration;

use bodflow::amqp::{self, topology, InboundMessage, RunOptions, Sender};
use bodflow::config::Config;
use bodflow::pipeline::Pipeline;
use bodflow::store::Store;
use broker::{connect, ready_count, send_confirmed, wait_for, User, Vhost};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

const BROKEN: &str = "fixtures/111-crm-sync-account-missing-name.xml";

/// `bodflow dlq ARGS --config fixtures/bodflow.toml` against the vhost; (exit code, stdout).
fn dlq(vhost: &Vhost, args: &[&str]) -> (i32, String) {
    let out = common::bodflow()
        .arg("dlq")
        .args(args)
        .arg("--config")
        .arg(common::root().join("fixtures/bodflow.toml"))
        .env("BODFLOW_AMQP_URL", vhost.url())
        .env("BODFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code() != Some(2),
        "dlq {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn list(vhost: &Vhost) -> Vec<serde_json::Value> {
    let (code, out) = dlq(vhost, &["list", "--json"]);
    assert_eq!(code, 0);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_fixed_dead_letter_applies_it_once_and_discard_removes() {
    let vhost = Vhost::new("dlq");
    let mut config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
    config.amqp.url = vhost.url();
    let broken = std::fs::read(common::root().join(BROKEN)).unwrap();
    let fixed = String::from_utf8(broken.clone()).unwrap().replace(
        "<Name languageID=\"en-US\">\n      </Name>",
        "<Name languageID=\"en-US\">North Shore Supply</Name>",
    );
    assert_ne!(fixed.as_bytes(), &broken[..], "the fixture changed");
    let dir = tempfile::tempdir().unwrap();
    let fixed_path = dir.path().join("fixed.xml");
    std::fs::write(&fixed_path, &fixed).unwrap();

    // Two rejected documents: dlq-1 (to be fixed) and dlq-2 (to be discarded).
    let sender = Sender::connect(&config).await.unwrap();
    for id in ["dlq-1", "dlq-2"] {
        send_confirmed(
            &sender,
            InboundMessage {
                bytes: &broken,
                message_id: id,
                document_name: amqp::document_name(&broken).as_deref(),
                from_logical_id: Some("lid://infor.crm.crm01"),
                ..Default::default()
            },
        )
        .await;
    }
    sender.close().await.unwrap();

    let store = Arc::new(Store::temporary().unwrap());
    let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(amqp::run(pipeline, RunOptions::default(), async move {
        let _ = stopped.await;
    }));
    let (_conn, ch) = connect(&vhost.url()).await;
    wait_for("two dead letters", Duration::from_secs(10), async || {
        ready_count(&ch, topology::DEAD_QUEUE).await == Some(2)
    })
    .await;

    // list: both, in order, with their codes; the queue is left as it was.
    let listed = list(&vhost);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (i, (m, id)) in listed.iter().zip(["dlq-1", "dlq-2"]).enumerate() {
        assert_eq!(m["position"], i + 1);
        assert_eq!(m["message_id"], id);
        assert_eq!(m["code"], "missing_field");
        assert_eq!(m["stage"], "validate");
        assert!(
            m["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/SyncCustomerPartyMaster/")),
            "{m}"
        );
        assert_eq!(m["document_name"], "Sync.CustomerPartyMaster");
        assert_eq!(m["sender"], "lid://infor.crm.crm01");
        assert_eq!(m["size"], broken.len());
    }
    wait_for("the listing requeued", Duration::from_secs(5), async || {
        ready_count(&ch, topology::DEAD_QUEUE).await == Some(2)
    })
    .await;
    assert_eq!(list(&vhost), listed, "listing twice gives the same");
    let (code, shown) = dlq(&vhost, &["show", "dlq-1"]);
    assert_eq!(code, 0);
    assert!(shown.contains("x-bodflow-code: missing_field"), "{shown}");
    assert!(
        shown.contains("x-bodflow-path: /SyncCustomerPartyMaster/"),
        "{shown}"
    );
    assert!(shown.contains("<SyncCustomerPartyMaster"), "{shown}");
    assert!(store.records().next().is_none());

    // replay with the fix: applied once, gone from bodflow.dead.
    let (code, out) = dlq(
        &vhost,
        &["replay", "dlq-1", "--payload", fixed_path.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(out.contains("dlq-1"), "{out}");
    wait_for("the fix applied", Duration::from_secs(10), async || {
        store
            .marker("dlq-1")
            .unwrap()
            .is_some_and(|m| m.outcome == "applied")
    })
    .await;
    assert_eq!(store.records().count(), 1);
    let remaining = list(&vhost);
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert_eq!(remaining[0]["message_id"], "dlq-2");

    // The same dead letter again (as after a crash between confirm and ack): a duplicate.
    // Sent by another user, naming itself in `user_id` (RabbitMQ checks it is the
    // connection's): the replay, as bodflow's user, must leave it out or be refused.
    let sender = User::new(&vhost);
    let (_sender_conn, sender_ch) = connect(&sender.url(&vhost)).await;
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("documentName", "Sync.CustomerPartyMaster"),
        ("x-bodflow-stage", "validate"),
        ("x-bodflow-code", "missing_field"),
    ] {
        headers.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
    }
    sender_ch
        .basic_publish(
            topology::DLX.into(),
            "Sync.CustomerPartyMaster".into(),
            BasicPublishOptions::default(),
            &broken,
            BasicProperties::default()
                .with_message_id("dlq-1".into())
                .with_user_id(sender.name.as_str().into())
                .with_headers(headers),
        )
        .await
        .unwrap();
    wait_for(
        "the copy dead-lettered",
        Duration::from_secs(5),
        async || ready_count(&ch, topology::DEAD_QUEUE).await == Some(2),
    )
    .await;
    let (code, _) = dlq(
        &vhost,
        &["replay", "dlq-1", "--payload", fixed_path.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    wait_for(
        "the second replay consumed",
        Duration::from_secs(10),
        async || {
            ready_count(&ch, topology::INBOUND_QUEUE).await == Some(0)
                && vhost.queue_total(topology::INBOUND_QUEUE) == Some(0)
        },
    )
    .await;
    assert_eq!(
        store.records().count(),
        1,
        "a replayed duplicate was applied"
    );
    assert_eq!(
        store.marker("dlq-1").unwrap().map(|m| m.outcome).as_deref(),
        Some("applied")
    );

    // discard: removes dlq-2 and says so; nothing selected is exit 1.
    let (code, out) = dlq(&vhost, &["discard", "dlq-2"]);
    assert_eq!(code, 0);
    assert!(out.contains("discarded") && out.contains("dlq-2"), "{out}");
    assert!(list(&vhost).is_empty());
    assert_eq!(ready_count(&ch, topology::DEAD_QUEUE).await, Some(0));
    assert_eq!(dlq(&vhost, &["discard", "nope"]).0, 1);

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
}

/// A ConfirmBOD whose application queue was unbound from `bodflow.out` (by an operator, while
/// the service runs), and one to a `reply_to` queue that is gone from a
/// sender that is no application: `bodflow.out` returns them, and after
/// `unroutable_attempts` returns each goes to `bodflow.dead` as the message it would have
/// been, with stage `publish`, code `unroutable` and a reason naming its receiver — not
/// retried for ever, not dropped. `dlq replay` sends them to `bodflow.out` again: the
/// first arrives on its application queue (bound again by the topology `dlq` declares),
/// without our headers; the second, with no receiver at all, is returned and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_message_no_queue_takes_is_dead_lettered_and_replayed_to_its_receiver() {
    let vhost = Vhost::new("dlq-unroutable");
    let mut config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
    config.amqp.url = vhost.url();
    let crm = "lid://infor.crm.crm01";
    let crm_queue = topology::application_queue(
        &config
            .applications
            .iter()
            .find(|a| a.logical_id == crm)
            .unwrap()
            .slug(),
    );
    // Connecting declares the topology (the service does too): before the unbinding.
    let sender = Sender::connect(&config).await.unwrap();
    let store = Arc::new(Store::temporary().unwrap());
    let pipeline = Pipeline::new(Arc::new(config.clone()), store.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = RunOptions {
        unroutable_attempts: 3,
        retry_base: Duration::from_millis(10),
        ..RunOptions::default()
    };
    let service = tokio::spawn(amqp::run(pipeline, options, async move {
        let _ = stopped.await;
    }));
    // Unbound once the service has declared its topology and consumes.
    let (conn, ch) = connect(&vhost.url()).await;
    wait_for(
        "the service consuming",
        Duration::from_secs(10),
        async || consumers(&conn, topology::INBOUND_QUEUE).await > 0,
    )
    .await;
    ch.queue_unbind(
        crm_queue.as_str().into(),
        topology::OUT_EXCHANGE.into(),
        crm.into(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let broken = std::fs::read(common::root().join(BROKEN)).unwrap();
    let stranger = String::from_utf8(broken.clone())
        .unwrap()
        .replace(crm, "lid://nobody.we.know")
        .into_bytes();
    // The stranger's first: its dead letters come before CRM's in bodflow.dead.
    for (id, bytes, reply_to, dead) in [
        ("stranger-gone", &stranger, Some("amq.gen-no-such-queue"), 2),
        ("crm-unbound", &broken, None, 4),
    ] {
        send_confirmed(
            &sender,
            InboundMessage {
                bytes,
                message_id: id,
                document_name: amqp::document_name(bytes).as_deref(),
                reply_to,
                ..Default::default()
            },
        )
        .await;
        // The document's own dead letter, then its ConfirmBOD's.
        wait_for(
            "its dead letters and an empty outbox",
            Duration::from_secs(20),
            async || {
                ready_count(&ch, topology::DEAD_QUEUE).await == Some(dead)
                    && store.outbox_len() == 0
            },
        )
        .await;
    }
    sender.close().await.unwrap();
    // Each message's timeline says where its ConfirmBOD went (noted once confirmed).
    for id in ["stranger-gone", "crm-unbound"] {
        let dead_lettered = || {
            let track = store.tracked(id).unwrap().unwrap();
            let run = track.runs.last().unwrap().clone();
            run.outputs
                .iter()
                .find(|o| o.kind == "ConfirmBOD")
                .map(|o| (o.confirmed_at, o.dead_lettered_at.is_some()))
        };
        wait_for(
            "the timeline noting the dead-lettered output",
            Duration::from_secs(10),
            async || dead_lettered() == Some((None, true)),
        )
        .await;
    }
    let listed = list(&vhost);
    let outbound: Vec<&serde_json::Value> =
        listed.iter().filter(|m| m["stage"] == "publish").collect();
    assert_eq!(outbound.len(), 2, "{listed:?}");
    for m in &outbound {
        assert_eq!(m["code"], "unroutable", "{m}");
        assert_eq!(m["outbound"], true, "{m}");
        assert_eq!(m["document_name"], "Confirm.BOD", "{m}");
        assert!(
            m["reason"]
                .as_str()
                .is_some_and(|r| r.contains("returned it 3 times")),
            "{m}"
        );
    }
    let to_crm = outbound
        .iter()
        .find(|m| m["correlation_id"] == "crm-unbound")
        .unwrap();
    assert!(to_crm["reason"].as_str().unwrap().contains(crm), "{to_crm}");
    let to_stranger = outbound
        .iter()
        .find(|m| m["correlation_id"] == "stranger-gone")
        .unwrap();
    assert!(
        to_stranger["reason"]
            .as_str()
            .unwrap()
            .contains("amq.gen-no-such-queue"),
        "{to_stranger}"
    );
    let rejected: Vec<&serde_json::Value> =
        listed.iter().filter(|m| m["stage"] != "publish").collect();
    assert_eq!(rejected.len(), 2, "{listed:?}");
    assert!(rejected.iter().all(|m| m["outbound"] == false));

    // Both replayed: the stranger's reply has no receiver at all, so it is returned and stays,
    // and the replay goes on to CRM's. CRM is configured: `dlq` declares the topology (the
    // listing above already did), which binds its queue again, and its ConfirmBOD is delivered
    // there as bodflow sent it.
    let stranger_id = to_stranger["message_id"].as_str().unwrap().to_string();
    let confirm_id = to_crm["message_id"].as_str().unwrap().to_string();
    let replayed = common::bodflow()
        .args(["dlq", "replay", "--code", "unroutable", "--config"])
        .arg(common::root().join("fixtures/bodflow.toml"))
        .env("BODFLOW_AMQP_URL", vhost.url())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&replayed.stdout),
        String::from_utf8_lossy(&replayed.stderr),
    );
    assert_eq!(replayed.status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("refused") && lines[0].contains(&stranger_id),
        "{stdout}"
    );
    assert!(lines[0].contains("bodflow.out"), "{stdout}");
    assert!(
        lines[1].starts_with("replayed") && lines[1].contains(&confirm_id),
        "{stdout}"
    );
    assert!(stderr.contains("1 not replayed"), "{stderr}");
    let got = ch
        .basic_get(crm_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the replayed ConfirmBOD on the application queue");
    let p = &got.delivery.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), confirm_id);
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "crm-unbound");
    let headers = p.headers().as_ref().unwrap().inner();
    assert!(
        headers.keys().all(|k| !k.as_str().starts_with("x-bodflow")),
        "{headers:?}"
    );
    assert!(String::from_utf8_lossy(&got.delivery.data).contains("<ConfirmBOD"));
    assert_eq!(ready_count(&ch, topology::DEAD_QUEUE).await, Some(3));

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
}

/// Consumers of `queue` (a passive declare, on a channel of its own: the broker closes the
/// channel when the queue does not exist yet).
async fn consumers(conn: &lapin::Connection, queue: &str) -> u32 {
    let Ok(ch) = conn.create_channel().await else {
        return 0;
    };
    let count = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_or(0, |q| q.consumer_count());
    let _ = ch.close(200, "counted".into()).await;
    count
}
