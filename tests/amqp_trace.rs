//! Tracing (issue 4 item 2) through the `bodflow run` binary and the real RabbitMQ (own
//! vhost): a W3C `traceparent` sent with a document comes back on every message it causes
//! (same trace id, bodflow's own span as parent, valid format, `tracestate` passed on); a
//! document without one, or with a malformed one, starts a new trace; `--log-format json`
//! writes one JSON object per line, and the delivery span carries message id, BODID, noun,
//! verb, sender and the trace id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bodflow::amqp::{self, topology, InboundMessage, Sender};
use bodflow::config::Config;
use bodflow::generate::{Generator, Kind, Mix};
use bodflow::pipeline::payload_digest;
use bodflow::telemetry::trace::TraceContext;
use broker::*;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const SENT_REJECTED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const MALFORMED: &str = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";

/// A sent document: message id, bytes, traceparent, tracestate.
type Sent<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<&'a str>);

/// A received message's traceparent and tracestate headers.
type Trace = (Option<String>, Option<String>);

fn header(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// (correlation id, traceparent, tracestate) of every message on `queue` (taken off it).
async fn take_all(ch: &Channel, queue: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let p = &m.delivery.properties;
        out.push((
            p.correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            header(p.headers(), "traceparent"),
            header(p.headers(), "tracestate"),
        ));
    }
    out
}

/// One generated document of `kind` from `sender`.
fn pick(kind: Kind, sender: &str) -> Vec<u8> {
    Generator::new(5, Mix::REALISTIC)
        .take(500)
        .find(|g| {
            g.kind == kind && String::from_utf8_lossy(&g.bytes).contains(&format!(">{sender}<"))
        })
        .map(|g| g.bytes)
        .expect("the generator yields that kind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_on_every_output_and_json_logs_carry_the_delivery_span() {
    let vhost = Vhost::new("trace");
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_generated_config(dir.path(), &dir.path().join("store"));
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();

    let sender = "lid://load.erp.eu";
    let applied = pick(Kind::New, sender);
    let invalid = pick(Kind::Invalid, sender);
    let plain = pick(Kind::New, "lid://load.crm");
    let odd = pick(Kind::New, "lid://load.erp.uk");
    let docs: Vec<Sent> = vec![
        (
            "m-traced",
            &applied,
            Some(SENT),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ),
        ("m-rejected", &invalid, Some(SENT_REJECTED), None),
        ("m-plain", &plain, None, None),
        ("m-malformed", &odd, Some(MALFORMED), Some("rojo=1")),
    ];
    let out = Sender::connect(&config).await.unwrap();
    for (id, bytes, traceparent, tracestate) in &docs {
        let name = amqp::document_name(bytes);
        send_confirmed(
            &out,
            InboundMessage {
                bytes,
                message_id: id,
                document_name: name.as_deref(),
                traceparent: *traceparent,
                tracestate: *tracestate,
                ..Default::default()
            },
        )
        .await;
    }
    out.close().await.unwrap();
    assert_ne!(payload_digest(&applied), payload_digest(&plain));

    let log_path = dir.path().join("bodflow.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config_path)
        .env("BODFLOW_AMQP_URL", vhost.url())
        .env("BODFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info,bodflow=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let (_conn, ch) = connect(&vhost.url()).await;
    let start = Instant::now();
    while vhost.queue_total(topology::INBOUND_QUEUE) != Some(0)
        || vhost.queue_total(topology::DEAD_QUEUE) != Some(1)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "not processed");
        assert!(child.try_wait().unwrap().is_none(), "bodflow run exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The outbox publishes right after the commit; give it its round, then stop (the
    // shutdown drains what is left).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(terminate(&mut child, STOP_WITHIN).success());

    let mut by_correlation: BTreeMap<String, Vec<Trace>> = BTreeMap::new();
    for app in &config.applications {
        for (correlation, tp, ts) in take_all(&ch, &topology::application_queue(&app.slug())).await
        {
            by_correlation
                .entry(correlation)
                .or_default()
                .push((tp, ts));
        }
    }
    let sent = TraceContext::parse(SENT, None).unwrap();
    let traced = &by_correlation["m-traced"];
    assert_eq!(traced.len(), 2, "a Sync to each other application");
    let mut ours = Vec::new();
    for (tp, ts) in traced {
        let got = TraceContext::parse(tp.as_deref().expect("traceparent header"), None)
            .expect("a valid traceparent");
        assert!(tp.as_deref().unwrap().starts_with("00-"), "{tp:?}");
        assert_eq!(got.trace_id, sent.trace_id, "same trace");
        assert_ne!(
            got.span_id, sent.span_id,
            "bodflow's span is the new parent"
        );
        assert_eq!(got.flags, sent.flags);
        assert_eq!(
            ts.as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        ours.push(got.span_id);
    }
    assert!(
        ours.windows(2).all(|w| w[0] == w[1]),
        "one span per delivery"
    );

    let rejected = TraceContext::parse(SENT_REJECTED, None).unwrap();
    let confirm = &by_correlation["m-rejected"];
    assert_eq!(confirm.len(), 1, "the ConfirmBOD to the sender");
    let got = TraceContext::parse(confirm[0].0.as_deref().unwrap(), None).unwrap();
    assert_eq!(got.trace_id, rejected.trace_id);
    assert_eq!(got.flags, 0, "the sender's sampling decision is kept");
    assert_eq!(confirm[0].1, None, "no tracestate was sent");

    let mut new_traces = Vec::new();
    for id in ["m-plain", "m-malformed"] {
        let msgs = &by_correlation[id];
        assert!(!msgs.is_empty(), "{id} emitted nothing");
        let first = TraceContext::parse(msgs[0].0.as_deref().unwrap(), None).unwrap();
        for (tp, ts) in msgs {
            let got = TraceContext::parse(tp.as_deref().unwrap(), None).unwrap();
            assert_eq!(got.trace_id, first.trace_id, "{id}: one trace");
            assert_eq!(ts, &None, "{id}: no tracestate without a valid traceparent");
        }
        assert_ne!(first.trace_id, sent.trace_id);
        new_traces.push(first.trace_id);
    }
    assert_ne!(
        new_traces[0], new_traces[1],
        "each delivery starts its own trace"
    );

    // The dead letter keeps the headers it came with.
    let dead = take_all(&ch, topology::DEAD_QUEUE).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.as_deref(), Some(SENT_REJECTED));

    check_json_log(&log_path, &applied, &sent);
}

/// Every line is a JSON object; the "Delivery processed" event of `m-traced` sits in its
/// delivery span with all the fields the span promises.
fn check_json_log(path: &Path, applied: &[u8], sent: &TraceContext) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "Connected to the broker"),
        "lifecycle lines are JSON too:\n{text}"
    );
    let processed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "Delivery processed" && l["span"]["message_id"] == "m-traced"
        })
        .collect();
    assert_eq!(processed.len(), 1, "{text}");
    let span = &processed[0]["span"];
    assert_eq!(span["name"], "delivery");
    let bod_id = String::from_utf8_lossy(applied)
        .split("<BODID>")
        .nth(1)
        .and_then(|r| r.split("</BODID>").next())
        .unwrap()
        .replace("&amp;", "&");
    assert_eq!(span["bod_id"], bod_id.as_str());
    assert_eq!(span["noun"], "CustomerPartyMaster");
    assert_eq!(span["verb"], "Sync");
    assert_eq!(span["sender"], "lid://load.erp.eu");
    assert_eq!(span["outcome"], "applied");
    assert_eq!(span["trace_id"], sent.trace_id_hex().as_str());
    assert_eq!(span["parent_span_id"], sent.span_id_hex().as_str());
    assert!(span["span_id"].as_str().is_some_and(|s| s.len() == 16));
    assert_eq!(processed[0]["level"], "DEBUG");
    assert!(
        lines.iter().any(
            |l| l["fields"]["message"] == "Malformed traceparent ignored"
                && l["fields"]["code"] == "hex"
        ),
        "{text}"
    );
}

/// A failing command under `--log-format json` reports its error as a JSON line as well.
#[test]
fn json_log_format_reports_a_failed_start_as_a_json_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            "/nonexistent/bodflow.toml",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/bodflow.toml")),
        "{stderr}"
    );
}
