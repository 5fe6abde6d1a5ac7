//! Ordered parallel lanes (issue 3, item 2) against the real RabbitMQ on 127.0.0.1:5672 and a
//! real sled store: per-key order under parallel preparing, and a failing key that does not
//! hold back the others. Each test runs the service in-process in its own vhost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bodflow::amqp::{topology, RunOptions};
use bodflow::config::Config;
use bodflow::generate::{Generator, Mix};
use bodflow::pipeline::payload_digest;
use bodflow::store::{Kind, Store, XrefKey};
use broker::*;

const SENDER: &str = "lid://load.erp.eu";

/// A `SyncCustomerPartyMaster` from ERP Europe (iso3 countries) for customer `number` at
/// `variation`; `pad` bytes of comment make it a large document (over 64 KiB it may be
/// overtaken by other keys while it is prepared, never by its own).
fn account(number: u64, variation: u64, pad: usize) -> Doc {
    let padding = if pad > 0 {
        format!("<!-- {} -->", "p".repeat(pad))
    } else {
        String::new()
    };
    let bytes = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea>
    <Sender><LogicalID>{SENDER}</LogicalID><ConfirmationCode>OnError</ConfirmationCode></Sender>
    <CreationDateTime>2026-03-01T10:00:00Z</CreationDateTime>
    <BODID>lanes:{number}:{variation}</BODID>
  </ApplicationArea>
  <DataArea>
    <Sync><TenantID>LOAD</TenantID><AccountingEntityID>100</AccountingEntityID>
      <ActionCriteria><ActionExpression actionCode="Change"/></ActionCriteria></Sync>
    <CustomerPartyMaster>
      <PartyIDs><ID accountingEntity="100" lid="{SENDER}" variationID="{variation}">{number}</ID></PartyIDs>
      <Name languageID="en-US">Customer {number} at variation {variation}</Name>
      <Status><Code>Open</Code></Status>
      {padding}
      <Location><Address type="Text"><CityName>Berlin</CityName>
        <CountryCode listID="Countries">DEU</CountryCode></Address></Location>
    </CustomerPartyMaster>
  </DataArea>
</SyncCustomerPartyMaster>
"#
    )
    .into_bytes();
    Doc {
        message_id: payload_digest(&bytes),
        bytes,
    }
}

fn key(number: u64) -> XrefKey {
    XrefKey {
        kind: Kind::Account,
        application: SENDER.into(),
        accounting_entity: "100".into(),
        id: number.to_string(),
    }
}

/// A vhost, the generated configuration with `lanes` lanes, and its store folder.
fn setup(test: &str, lanes: usize) -> (Vhost, tempfile::TempDir, Config) {
    let vhost = Vhost::new(test);
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    config.amqp.lanes = lanes;
    (vhost, dir, config)
}

fn outcome(store: &Store, d: &Doc) -> Option<String> {
    store.marker(&d.message_id).unwrap().map(|m| m.outcome)
}

/// Four hot keys updated 60 times each with increasing variationIDs (every tenth update a
/// large document), interleaved with new accounts of other keys, through four lanes: every
/// update is applied (none is `stale`, which a reordering within a key would cause) and the
/// hub equals an offline replay of the same inputs in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_a_key_apply_in_arrival_order_across_parallel_lanes() {
    let (vhost, _dir, config) = setup("lanes-order", 4);
    const HOT: u64 = 4;
    const UPDATES: u64 = 60;
    let mut others = Generator::new(11, Mix::NEW_ONLY).map(|g| Doc {
        message_id: payload_digest(&g.bytes),
        bytes: g.bytes,
    });
    let mut docs = Vec::new();
    let mut hot = Vec::new();
    for variation in 1..=UPDATES {
        for k in 0..HOT {
            let pad = if variation % 10 == 5 { 80 * 1024 } else { 0 };
            let d = account(900_001 + k, variation, pad);
            hot.push(d.message_id.clone());
            docs.push(d);
            docs.extend(others.next());
        }
    }
    let expected = offline(&config, &docs);
    publish(&config, &docs).await;

    let store = Arc::new(Store::temporary().unwrap());
    let (stop, service) = start_service(&config, store.clone(), RunOptions::default());
    let (_conn, ch) = connect(&vhost.url()).await;
    wait_for(
        "every document processed",
        Duration::from_secs(90),
        async || docs.iter().all(|d| outcome(&store, d).is_some()) && store.outbox_len() == 0,
    )
    .await;
    let start = Instant::now();
    while vhost.queue_total(topology::INBOUND_QUEUE) != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(30), "not all acked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();

    for d in docs.iter().filter(|d| hot.contains(&d.message_id)) {
        assert_eq!(
            outcome(&store, d).as_deref(),
            Some("applied"),
            "an update of a hot key was not applied in order ({})",
            String::from_utf8_lossy(&d.bytes[..300.min(d.bytes.len())])
        );
    }
    for k in 0..HOT {
        let id = store.resolve(&key(900_001 + k)).unwrap().unwrap();
        let record = store.record(&id).unwrap().unwrap();
        assert_eq!(record.xrefs[0].variation, UPDATES.to_string());
    }
    assert_store_equals_offline(&store, &expected);
    let published = drain_applications(&ch, &config).await;
    assert_all_published(&expected, &published);
}

/// A key whose cross-reference is unreadable in the store fails every commit (a transient
/// store error: retried, never acked). Documents of every other key published after it are
/// applied and acked meanwhile; once the value is repaired, the key's three documents are
/// applied in their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_does_not_hold_back_other_keys() {
    let (vhost, dir, config) = setup("lanes-stall", 2);
    const STUCK: u64 = 900_100;
    let store_dir = dir.path().join("store");
    {
        // The store's own layout: `x`, kind, application, accounting entity, ID (0x1f apart).
        let db = sled::open(&store_dir).unwrap();
        let hub = db.open_tree("hub").unwrap();
        let k = key(STUCK);
        let raw = [
            b"x".as_slice(),
            k.kind.prefix().as_bytes(),
            b"\x1f",
            k.application.as_bytes(),
            b"\x1f",
            k.accounting_entity.as_bytes(),
            b"\x1f",
            k.id.as_bytes(),
        ]
        .concat();
        hub.insert(raw, b"{not json".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let stuck: Vec<Doc> = (1..=3).map(|v| account(STUCK, v, 0)).collect();
    let others: Vec<Doc> = Generator::new(12, Mix::REALISTIC)
        .take(300)
        .map(|g| Doc {
            message_id: payload_digest(&g.bytes),
            bytes: g.bytes,
        })
        .collect();
    let mut docs = vec![account(STUCK, 1, 0)];
    for (i, d) in others.iter().enumerate() {
        if i == 100 || i == 200 {
            docs.push(account(STUCK, if i == 100 { 2 } else { 3 }, 0));
        }
        docs.push(Doc {
            bytes: d.bytes.clone(),
            message_id: d.message_id.clone(),
        });
    }
    publish(&config, &docs).await;

    // sled's own threads may hold the file lock a moment after the raw handle is dropped.
    let store = Arc::new(common::open_store(&store_dir));
    let options = RunOptions {
        store_attempts: 10_000,
        retry_base: Duration::from_millis(10),
        ..Default::default()
    };
    let (stop, service) = start_service(&config, store.clone(), options);
    wait_for(
        "the other keys' documents while one key fails",
        Duration::from_secs(60),
        async || others.iter().all(|d| outcome(&store, d).is_some()),
    )
    .await;
    for d in &stuck {
        assert_eq!(outcome(&store, d), None, "the failing key was applied");
    }
    // Everything but the failing key's three deliveries is acked (one by one past the hole).
    let start = Instant::now();
    while vhost.queue_total(topology::INBOUND_QUEUE) != Some(stuck.len()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "unacked: {:?}",
            vhost.queue_total(topology::INBOUND_QUEUE)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        vhost.queue_total(topology::INBOUND_QUEUE),
        Some(stuck.len()),
        "the failing key's deliveries must stay unacked"
    );

    // An operator repairs the value: the retries go through, in order.
    store.transact(|tx| tx.remove_xref(&key(STUCK))).unwrap();
    wait_for("the repaired key", Duration::from_secs(30), async || {
        stuck.iter().all(|d| outcome(&store, d).is_some())
    })
    .await;
    for d in &stuck {
        assert_eq!(outcome(&store, d).as_deref(), Some("applied"));
    }
    let id = store.resolve(&key(STUCK)).unwrap().unwrap();
    let record = store.record(&id).unwrap().unwrap();
    assert_eq!(record.xrefs[0].variation, "3");
    assert_eq!(
        record.fields.identity.name.as_deref(),
        Some("Customer 900100 at variation 3")
    );
    let start = Instant::now();
    while vhost.queue_total(topology::INBOUND_QUEUE) != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(20), "not all acked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
}
