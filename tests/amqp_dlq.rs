//! `bodflow dlq` against the real RabbitMQ (see `tests/amqp.rs`), in its own vhost: the
//! service runs in-process, the `dlq` commands are the binary under test.
//!
//! An invalid document (Name cleared) lands in `bodflow.dead` with code `missing_field`;
//! `dlq list --json` shows it and leaves the queue as it was; `dlq replay ID --payload
//! fixed.xml` applies the fix once and empties the queue of it; a second replay of the same
//! message id (the dead letter put back, as after a crash between confirm and ack) is a
//! duplicate; `dlq discard` removes another dead letter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bodflow::amqp::{self, topology, InboundMessage, RunOptions, Sender};
use bodflow::config::Config;
use bodflow::pipeline::Pipeline;
use bodflow::store::Store;
use broker::{connect, ready_count, Vhost};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

const BROKEN: &str = "fixtures/111-crm-sync-account-missing-name.xml";

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
        sender
            .send(&InboundMessage {
                bytes: &broken,
                message_id: id,
                document_name: amqp::document_name(&broken).as_deref(),
                from_logical_id: Some("lid://infor.crm.crm01"),
                ..Default::default()
            })
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
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
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("documentName", "Sync.CustomerPartyMaster"),
        ("x-bodflow-stage", "validate"),
        ("x-bodflow-code", "missing_field"),
    ] {
        headers.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
    }
    ch.basic_publish(
        topology::DLX.into(),
        "Sync.CustomerPartyMaster".into(),
        BasicPublishOptions::default(),
        &broken,
        BasicProperties::default()
            .with_message_id("dlq-1".into())
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
