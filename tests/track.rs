//! Message tracking (issue 4 item 3): `bodflow track ID` and `GET /messages/{id}`.
//!
//! - Offline: the fixtures replayed into a store; `bodflow track` shows the whole timeline of
//!   an applied, a rejected and a parked message (then released), by message id and by
//!   BODID (several messages, newest first), as text and JSON.
//! - Retention: timelines replayed with an old clock (`replay --now`) are purged by the
//!   running service, young ones are kept; so are the tombstones of hard deletes and the
//!   message-id markers (the dedup window).
//! - Live: the service against the real RabbitMQ (own vhost) answers `GET /messages/{id}` with
//!   the timeline including the broker confirm time of every output, whose BODIDs are the
//!   message ids that arrived on the queues; `bodflow track` asks the service while it holds
//!   the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bodflow::amqp::{topology, InboundMessage, Sender};
use bodflow::config::Config;
use chrono::{SecondsFormat, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::Value;

use broker::{free_port, http_get, send_confirmed, wait_until};
use common::{bodflow, root};

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

const APPLIED: &str = "010-ln-sync-account-new-iso3-owner-by-personnel-number.xml";
const REJECTED: &str = "111-crm-sync-account-missing-name.xml";
const PARKED: &str = "070-webshop-process-account-inactive-application-parked.xml";

/// The fixtures' configuration with its store in `dir`, its HTTP port and extra TOML.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture("bodflow.toml")).unwrap();
    let store = dir.join("store");
    let text = text
        .replacen(
            "store = \"data/bodflow.db\"",
            &format!("store = {:?}", store.display().to_string()),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    let path = dir.join("bodflow.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.code().is_some(),
        "killed by a signal: {:?}",
        out.status
    );
    out
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bodflow replay FILES --json --store --config --out --now NOW`: the replay lines.
fn replay(dir: &Path, config: &Path, files: &[PathBuf], now: &str) -> Vec<Value> {
    let out = run(bodflow()
        .arg("replay")
        .args(files)
        .args(["--json", "--now", now, "--store"])
        .arg(dir.join("store"))
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(dir.join("out")));
    assert_exit(&out, 0);
    json_lines(&out)
}

/// `bodflow track ID --store --config [--json]`.
fn track(dir: &Path, config: &Path, id: &str, json: bool) -> Output {
    let mut cmd = bodflow();
    cmd.args(["track", id, "--store"])
        .arg(dir.join("store"))
        .arg("--config")
        .arg(config);
    if json {
        cmd.arg("--json");
    }
    run(&mut cmd)
}

fn track_json(dir: &Path, config: &Path, id: &str) -> Vec<Value> {
    let out = track(dir, config, id, true);
    assert_exit(&out, 0);
    json_lines(&out)
}

fn track_text(dir: &Path, config: &Path, id: &str) -> String {
    let out = track(dir, config, id, false);
    assert_exit(&out, 0);
    String::from_utf8(out.stdout).unwrap()
}

fn line_of<'a>(lines: &'a [Value], file: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["source"].as_str().is_some_and(|s| s.ends_with(file)))
        .unwrap_or_else(|| panic!("no replay line for {file}"))
}

fn stages(run: &Value) -> Vec<(String, String)> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_contains(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "{w:?} missing from:\n{text}");
    }
}

const NOW: &str = "2025-10-11T08:00:00Z";

/// The applied, rejected and parked fixtures as `bodflow track` shows them after a replay of
/// the whole fixture set: every stage's decision, the outcome, every output with the BODID of
/// the document that was written; the parked one again after its release.
#[test]
fn track_shows_the_timelines_of_an_applied_a_rejected_and_a_parked_message() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), 9464, "");
    let lines = replay(tmp.path(), &config, &[root().join("fixtures")], NOW);

    // Applied: received, validate → country → owner → upsert → emit, four Syncs.
    let applied = line_of(&lines, APPLIED);
    let id = applied["message_id"].as_str().unwrap();
    let tracked = track_json(tmp.path(), &config, id);
    assert_eq!(tracked.len(), 1);
    assert_eq!(tracked[0]["message_id"], id);
    let runs = tracked[0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["received_at"], "2025-10-11T08:00:00.000Z");
    assert_eq!(r["trigger"], "received");
    assert_eq!(r["sender"], "lid://infor.ln.ln01/3555");
    assert_eq!(r["bod_id"], applied["bod_id"]);
    assert!(r["source"].as_str().unwrap().ends_with(APPLIED));
    assert_eq!(
        r["size"].as_u64().unwrap(),
        std::fs::metadata(fixture(APPLIED)).unwrap().len()
    );
    assert_eq!(
        stages(r),
        [
            (
                "validate",
                "valid Sync of 1 CustomerPartyMaster from \"LN Europe\" (lid://infor.ln.ln01)"
            ),
            ("country", "country DEU→DE (iso3)"),
            (
                "owner",
                "owner U-JSMITH: SalesPersonReference role Internal, matched personnel number 1001"
            ),
            (
                "upsert",
                "created ACC-000001 for lid://infor.ln.ln01|3555|BPC000101"
            ),
            ("emit", "not sent to Legacy Webshop: inactive"),
            ("emit", "not sent to Field Service: outbound creates off"),
        ]
        .map(|(s, d)| (s.to_string(), d.to_string()))
    );
    assert_eq!(
        (&r["outcome"], &r["action"], &r["record"]),
        (&"applied".into(), &"created".into(), &"ACC-000001".into())
    );
    let outputs = r["outputs"].as_array().unwrap();
    let receivers: Vec<&str> = outputs.iter().map(|o| o["to"].as_str().unwrap()).collect();
    assert_eq!(
        receivers,
        [
            "lid://infor.crm.crm01",
            "lid://comarch.mobile",
            "lid://acme.marketing",
            "lid://acme.billing"
        ]
    );
    // Each tracked output is the document replay wrote: same receiver, its BODID inside.
    for (o, written) in outputs.iter().zip(applied["outputs"].as_array().unwrap()) {
        assert_eq!(o["kind"], "SyncCustomerPartyMaster");
        assert_eq!(o["to"], written["to"]);
        let bod_id = o["bod_id"].as_str().unwrap();
        let xml = std::fs::read_to_string(written["file"].as_str().unwrap()).unwrap();
        assert!(
            xml.contains(&format!(">{bod_id}</")),
            "{bod_id} not in {written}"
        );
        assert!(o["confirmed_at"].is_null(), "replay publishes nothing");
    }
    let text = track_text(tmp.path(), &config, id);
    assert_contains(
        &text,
        &[
            &format!("message {id}\n"),
            "2025-10-11T08:00:00.000Z  received: SyncCustomerPartyMaster",
            "from lid://infor.ln.ln01/3555 via ",
            "    country   country DEU→DE (iso3)\n",
            "    owner     owner U-JSMITH: SalesPersonReference role Internal, matched personnel number 1001\n",
            "    upsert    created ACC-000001 for lid://infor.ln.ln01|3555|BPC000101\n",
            "    outcome   applied created ACC-000001\n",
            "    output    SyncCustomerPartyMaster → lid://acme.billing  bodflow:",
            "  not published (offline replay)\n",
        ],
    );

    // Rejected: stage, code, message and path; the ConfirmBOD to the sender.
    let rejected = line_of(&lines, REJECTED);
    let id = rejected["message_id"].as_str().unwrap();
    let r = &track_json(tmp.path(), &config, id)[0]["runs"][0];
    assert_eq!(r["outcome"], "rejected");
    assert_eq!(r["error"]["stage"], "validate");
    assert_eq!(r["error"]["code"], "missing_field");
    assert_eq!(
        r["error"]["path"],
        "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Name"
    );
    assert_eq!(r["outputs"][0]["kind"], "ConfirmBOD");
    assert_eq!(r["outputs"][0]["to"], "lid://infor.crm.crm01");
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1);
    let text = track_text(tmp.path(), &config, id);
    assert_contains(
        &text,
        &[
            "    outcome   rejected [validate/missing_field] /SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Name: required\n",
            "    output    ConfirmBOD → lid://infor.crm.crm01  bodflow:",
        ],
    );

    // Parked: the reason and the row `bodflow parked` knows it by.
    let parked = line_of(&lines, PARKED);
    let id = parked["message_id"].as_str().unwrap();
    let listed = run(bodflow()
        .args(["parked", "list", "--json", "--store"])
        .arg(tmp.path().join("store"))
        .arg("--config")
        .arg(&config));
    assert_exit(&listed, 0);
    let seq = json_lines(&listed)
        .into_iter()
        .find(|p| p["message_id"] == id)
        .expect("listed as parked")["seq"]
        .as_u64()
        .unwrap();
    let r = &track_json(tmp.path(), &config, id)[0]["runs"][0];
    assert_eq!(r["outcome"], "parked");
    assert_eq!(r["parked"]["reason"], "inactive_application");
    assert_eq!(r["parked"]["seq"].as_u64(), Some(seq));
    assert_eq!(
        stages(r),
        [(
            "validate".to_string(),
            "parked: application \"Legacy Webshop\" is inactive (released on re-activation)"
                .to_string()
        )]
    );
    assert_contains(
        &track_text(tmp.path(), &config, id),
        &[&format!(
            "    outcome   parked (inactive_application), parked as {seq} — `bodflow parked release {seq}`\n"
        )],
    );

    // Released once its application is active: a second run on the same timeline.
    let text = std::fs::read_to_string(&config).unwrap();
    let active = tmp.path().join("active.toml");
    std::fs::write(
        &active,
        text.replacen(
            "logical_id = \"lid://acme.webshop\"\nactive = false",
            "logical_id = \"lid://acme.webshop\"\nactive = true",
            1,
        ),
    )
    .unwrap();
    let released = run(bodflow()
        .args(["parked", "release", "--store"])
        .arg(tmp.path().join("store"))
        .arg("--config")
        .arg(&active));
    assert_exit(&released, 0);
    let runs = track_json(tmp.path(), &active, id)[0]["runs"].clone();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "parked");
    assert_eq!(runs[1]["trigger"], "release");
    assert_eq!(runs[1]["outcome"], "applied");
    assert_eq!(runs[1]["action"], "created");
    assert!(stages(&runs[1])
        .iter()
        .any(|(s, d)| s == "validate" && d.contains("from \"Legacy Webshop\"")));
    assert!(!runs[1]["outputs"].as_array().unwrap().is_empty());
    assert_contains(
        &track_text(tmp.path(), &active, id),
        &[
            "released from parking: ProcessCustomerPartyMaster",
            "outcome   applied created ACC-",
        ],
    );

    // Nothing tracked under an unknown ID: exit 1 with a reason.
    let none = track(tmp.path(), &config, "no-such-message", false);
    assert_exit(&none, 1);
    assert!(String::from_utf8_lossy(&none.stderr).contains("nothing tracked under"));
}

/// A BODID is not unique: tracking it shows every message that carried it, newest first; an
/// exact resend (same message id) is a second run of the first message.
#[test]
fn a_bodid_shows_every_message_that_carried_it_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), 9464, "");
    let first = replay(
        tmp.path(),
        &config,
        &[
            fixture(APPLIED),
            fixture("011-ln-sync-account-update-higher-variation.xml"),
            fixture("012-ln-sync-account-exact-resend-of-011-duplicate.xml"),
        ],
        "2025-10-11T08:00:00Z",
    );
    let later = replay(
        tmp.path(),
        &config,
        &[fixture(
            "013-ln-sync-account-same-variation-other-document-duplicate.xml",
        )],
        "2025-10-11T09:30:00Z",
    );
    let bod_id = first[1]["bod_id"].as_str().unwrap();
    assert_eq!(first[2]["bod_id"], bod_id);
    assert_eq!(later[0]["bod_id"], bod_id);
    assert_eq!(first[2]["message_id"], first[1]["message_id"]);

    let tracked = track_json(tmp.path(), &config, bod_id);
    let ids: Vec<&str> = tracked
        .iter()
        .map(|t| t["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            later[0]["message_id"].as_str().unwrap(),
            first[1]["message_id"].as_str().unwrap()
        ]
    );
    assert_eq!(tracked[0]["runs"][0]["outcome"], "duplicate");
    assert_eq!(
        tracked[0]["runs"][0]["received_at"],
        "2025-10-11T09:30:00.000Z"
    );
    let resent: Vec<&Value> = tracked[1]["runs"].as_array().unwrap().iter().collect();
    assert_eq!(resent.len(), 2);
    assert_eq!(resent[0]["outcome"], "applied");
    assert_eq!(resent[1]["outcome"], "duplicate");
    assert!(stages(resent[1])
        .iter()
        .any(|(s, d)| s == "upsert" && d.contains("already processed (applied)")));
    assert!(resent[1]["outputs"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Against the running service (real RabbitMQ, own vhost).
// ---------------------------------------------------------------------------------------------

fn stop(child: &mut std::process::Child) {
    let status = broker::terminate(child, broker::STOP_WITHIN);
    assert!(status.success(), "bodflow run: {status}");
}

/// Timelines older than `tracking.retention` (replayed with a clock three days back) are
/// purged when the service starts; a young one (one day back) is kept, its BODID index too.
#[test]
fn the_service_purges_timelines_older_than_the_retention_and_keeps_young_ones() {
    let vhost = broker::Vhost::new("track-purge");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(tmp.path(), port, "[tracking]\nretention = \"2d\"\n");
    let at = |days: i64| {
        (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let old = replay(tmp.path(), &config, &[fixture(APPLIED)], &at(3));
    let young = replay(
        tmp.path(),
        &config,
        &[fixture(
            "020-ln-sync-account-owner-by-external-personnel-number.xml",
        )],
        &at(1),
    );
    let old_id = old[0]["message_id"].as_str().unwrap().to_string();
    let old_bod_id = old[0]["bod_id"].as_str().unwrap().to_string();
    let young_id = young[0]["message_id"].as_str().unwrap().to_string();
    assert_exit(&track(tmp.path(), &config, &old_id, false), 0);
    assert_exit(&track(tmp.path(), &config, &old_bod_id, false), 0);

    let mut child = broker::spawn_configured_service(&config, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until(
        "the old timeline to be purged",
        Duration::from_secs(30),
        || http_get(port, &format!("/messages/{old_id}")).is_some_and(|(s, _)| s == 404),
    );
    let (status, body) = http_get(port, &format!("/messages/{young_id}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("bodflow_tracking_purged_total 1\n"),
        "{metrics}"
    );
    stop(&mut child);

    assert_exit(&track(tmp.path(), &config, &old_id, false), 1);
    assert_exit(&track(tmp.path(), &config, &old_bod_id, false), 1);
    let kept = track_json(tmp.path(), &config, &young_id);
    assert_eq!(kept[0]["runs"][0]["outcome"], "applied");
}

/// Tracking turned off later: the service still purges the timelines an earlier
/// configuration tracked once they are older than the retention (they used to stay for ever).
#[test]
fn with_tracking_turned_off_the_service_still_purges_old_timelines() {
    let vhost = broker::Vhost::new("track-purge-off");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let tracked = write_config(tmp.path(), port, "[tracking]\nretention = \"2d\"\n");
    let three_days_ago =
        (Utc::now() - chrono::Duration::days(3)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let old = replay(tmp.path(), &tracked, &[fixture(APPLIED)], &three_days_ago);
    let old_id = old[0]["message_id"].as_str().unwrap().to_string();
    assert_exit(&track(tmp.path(), &tracked, &old_id, false), 0);
    let off = tmp.path().join("off.toml");
    let text = std::fs::read_to_string(&tracked).unwrap().replacen(
        "[tracking]\n",
        "[tracking]\nenabled = false\n",
        1,
    );
    std::fs::write(&off, text).unwrap();

    let mut child = broker::spawn_configured_service(&off, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until(
        "the old timeline to be purged",
        Duration::from_secs(30),
        || {
            http_get(port, "/metrics")
                .is_some_and(|(_, m)| m.contains("bodflow_tracking_purged_total 1\n"))
        },
    );
    stop(&mut child);
    assert_exit(&track(tmp.path(), &tracked, &old_id, false), 1);
}

/// The tombstones of hard deletes older than `hub.tombstone_retention` (replayed with a clock
/// three days back, retention two days) are removed by the service: afterwards a document
/// older than the delete creates the record again, where before it was `stale`; a young
/// tombstone (one day back) still holds.
#[test]
fn the_service_removes_tombstones_older_than_their_retention() {
    let vhost = broker::Vhost::new("tombstones");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(tmp.path(), port, "");
    // LN deletes accounts hard; tombstones are kept two days.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("[hub]\n", "[hub]\ntombstone_retention = \"2d\"\n", 1)
        .replacen(
            "inbound = { create = true, update = true, delete = \"soft\" }\noutbound",
            "inbound = { create = true, update = true, delete = \"hard\" }\noutbound",
            1,
        );
    assert!(text.contains("delete = \"hard\"") && text.contains("tombstone_retention"));
    std::fs::write(&config, text).unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    // LN's account `id` at `variation` with `action`; `name` tells otherwise equal bytes apart.
    let doc = |id: &str, variation: u32, action: &str, name: &str| {
        let text = std::fs::read_to_string(fixture(APPLIED))
            .unwrap()
            .replace("BPC000101", id)
            .replace(
                r#"variationID="1""#,
                &format!(r#"variationID="{variation}""#),
            )
            .replace("variationID=1<", &format!("variationID={variation}<"))
            .replace(r#"actionCode="Add""#, &format!(r#"actionCode="{action}""#))
            .replace("Brandt Maschinenbau GmbH", name);
        let path = docs.join(format!("{id}-{variation}-{action}-{name}.xml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let at = |days: i64| {
        (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let outcomes = |reports: Vec<Value>| -> Vec<String> {
        reports
            .iter()
            .map(|r| r["outcome"].as_str().unwrap().to_string())
            .collect()
    };
    let old = [
        doc("OLD1", 2, "Add", "Old"),
        doc("OLD1", 3, "Delete", "Old"),
    ];
    assert_eq!(
        outcomes(replay(tmp.path(), &config, &old, &at(3))),
        ["applied", "applied"]
    );
    let young = [
        doc("NEW1", 2, "Add", "New"),
        doc("NEW1", 3, "Delete", "New"),
    ];
    assert_eq!(
        outcomes(replay(tmp.path(), &config, &young, &at(1))),
        ["applied", "applied"]
    );
    // Older than the deletes: stale while the tombstones are there.
    let late = [
        doc("OLD1", 1, "Change", "Late"),
        doc("NEW1", 1, "Change", "Late"),
    ];
    assert_eq!(
        outcomes(replay(tmp.path(), &config, &late, &at(0))),
        ["stale", "stale"]
    );

    let mut child = broker::spawn_configured_service(&config, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until(
        "the old tombstone to be removed",
        Duration::from_secs(30),
        || {
            http_get(port, "/metrics")
                .is_some_and(|(_, m)| m.contains("bodflow_tombstones_purged_total 1\n"))
        },
    );
    stop(&mut child);

    // The old key is forgotten: a late document creates the record again; the young one holds.
    let later = [
        doc("OLD1", 1, "Change", "Later"),
        doc("NEW1", 1, "Change", "Later"),
    ];
    assert_eq!(
        outcomes(replay(tmp.path(), &config, &later, &at(0))),
        ["applied", "stale"]
    );
}

/// Message ids last processed before `hub.dedup_window` are forgotten by the service: one
/// replayed with a clock four days back, window two days, the last processing a day back
/// (the window counts up to it: three days back is the cut-off). The same file replayed
/// again is processed anew (and found `duplicate` by the record's variationID guard), where
/// the young one, and one of two and a half days back (outside the window by the wall clock
/// alone), are still duplicate message ids. (Replaying them before the service ran
/// would have made both young: with tracking on, a duplicate delivery is a run of its
/// message and writes its marker again.)
#[test]
fn the_service_forgets_message_ids_older_than_the_dedup_window() {
    let vhost = broker::Vhost::new("dedup-window");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(tmp.path(), port, "[tracking]\nretention = \"2d\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[hub]\n",
        "[hub]\ndedup_window = \"2d\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let hours_back = |hours: i64| {
        (Utc::now() - chrono::Duration::hours(hours)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    let at = |days: i64| hours_back(days * 24);
    let young_file = fixture("020-ln-sync-account-owner-by-external-personnel-number.xml");
    let middle_file = fixture("021-ln-sync-account-owner-by-first-and-last-name.xml");
    let old = replay(tmp.path(), &config, &[fixture(APPLIED)], &at(4));
    // Parked as long ago: its marker stays whatever its age, and it is counted as waiting.
    let parked = replay(tmp.path(), &config, &[fixture(PARKED)], &at(4));
    assert_eq!(parked[0]["outcome"], "parked");
    // Two and a half days back: outside the window by the wall clock, inside it counted up to
    // the last processing (a day back).
    let middle = replay(
        tmp.path(),
        &config,
        std::slice::from_ref(&middle_file),
        &hours_back(60),
    );
    assert_eq!(middle[0]["outcome"], "applied");
    let young = replay(
        tmp.path(),
        &config,
        std::slice::from_ref(&young_file),
        &at(1),
    );
    assert_eq!(old[0]["outcome"], "applied");
    assert_eq!(young[0]["outcome"], "applied");

    let mut child = broker::spawn_configured_service(&config, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until("the old marker to expire", Duration::from_secs(30), || {
        http_get(port, "/metrics")
            .is_some_and(|(_, m)| m.contains("bodflow_markers_expired_total 1\n"))
    });
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("bodflow_marker_filter_bytes 524288\n")
            && metrics.contains("bodflow_parked_messages 1\n"),
        "{metrics}"
    );
    stop(&mut child);

    let after = replay(
        tmp.path(),
        &config,
        &[fixture(APPLIED), young_file, middle_file],
        &at(0),
    );
    // Processed anew: the record's variationID guard answers, not the message id.
    let last_decision = |line: &Value| {
        let decisions = line["decisions"].as_array().unwrap();
        decisions.last().unwrap().as_str().unwrap().to_string()
    };
    assert_eq!(after[0]["message_id"], old[0]["message_id"]);
    assert_eq!(
        last_decision(&after[0]),
        "variationID 1 was already applied",
        "{}",
        after[0]
    );
    assert_eq!(after.len(), 3);
    for kept in &after[1..] {
        assert_eq!(kept["outcome"], "duplicate");
        assert!(
            last_decision(kept).starts_with("message id ")
                && last_decision(kept).ends_with(" already processed (applied)"),
            "{kept}"
        );
    }
}

/// Documents published to the running service: `GET /messages/{id}` gives their timelines
/// with the broker confirm time of every output, and those outputs are exactly the messages
/// on the receivers' queues (and the `reply_to` queue); by BODID too. `bodflow track` asks
/// the service while it holds the store, and reads the same from the store after it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_timelines_with_the_publish_confirm_times_of_the_outputs() {
    let vhost = broker::Vhost::new("track-http");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_path = write_config(tmp.path(), port, "");
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();

    let (_conn, ch) = broker::connect(&vhost.url()).await;
    let replies = "track-replies";
    ch.queue_declare(
        replies.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let applied_bytes = std::fs::read(fixture(APPLIED)).unwrap();
    let rejected_bytes = std::fs::read(fixture(REJECTED)).unwrap();
    let sender = Sender::connect(&config).await.unwrap();
    for message in [
        InboundMessage {
            bytes: &applied_bytes,
            message_id: "track-applied",
            document_name: Some("Sync.CustomerPartyMaster"),
            from_logical_id: Some("lid://infor.ln.ln01"),
            ..Default::default()
        },
        InboundMessage {
            bytes: &rejected_bytes,
            message_id: "track-rejected",
            document_name: Some("Sync.CustomerPartyMaster"),
            from_logical_id: Some("lid://infor.crm.crm01"),
            reply_to: Some(replies),
            ..Default::default()
        },
    ] {
        send_confirmed(&sender, message).await;
    }
    sender.close().await.unwrap();

    let mut child = broker::spawn_configured_service(&config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    // The timeline is complete once every output's confirm is recorded.
    let fetch = |id: &str| {
        http_get(port, &format!("/messages/{id}"))
            .filter(|(s, _)| *s == 200)
            .map(|(_, body)| serde_json::from_str::<Value>(&body).unwrap())
    };
    let all_confirmed = |v: &Value| {
        let outputs = v["messages"][0]["runs"][0]["outputs"].as_array().unwrap();
        !outputs.is_empty() && outputs.iter().all(|o| o["confirmed_at"].is_string())
    };
    let mut applied = Value::Null;
    let mut rejected = Value::Null;
    tokio::task::block_in_place(|| {
        wait_until(
            "both timelines with confirmed outputs",
            Duration::from_secs(30),
            || {
                applied = fetch("track-applied").unwrap_or(Value::Null);
                rejected = fetch("track-rejected").unwrap_or(Value::Null);
                !applied.is_null()
                    && !rejected.is_null()
                    && all_confirmed(&applied)
                    && all_confirmed(&rejected)
            },
        )
    });

    assert_eq!(applied["id"], "track-applied");
    let messages = applied["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    let r = &messages[0]["runs"][0];
    assert_eq!(r["source"], "amqp");
    assert_eq!(r["size"].as_u64(), Some(applied_bytes.len() as u64));
    assert_eq!(r["outcome"], "applied");
    assert_eq!(
        stages(r)
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["validate", "country", "owner", "upsert", "emit", "emit"]
    );
    let received =
        chrono::DateTime::parse_from_rfc3339(r["received_at"].as_str().unwrap()).unwrap();
    let mut sync_ids = BTreeSet::new();
    for o in r["outputs"].as_array().unwrap() {
        let confirmed =
            chrono::DateTime::parse_from_rfc3339(o["confirmed_at"].as_str().unwrap()).unwrap();
        assert!(confirmed >= received, "{o}: confirmed before received");
        assert!(confirmed - received < chrono::Duration::seconds(30));
        sync_ids.insert(o["bod_id"].as_str().unwrap().to_string());
    }
    assert_eq!(sync_ids.len(), 4);

    let r = &rejected["messages"][0]["runs"][0];
    assert_eq!(r["error"]["code"], "missing_field");
    assert_eq!(r["reply_to"], replies);
    assert_eq!(r["outputs"][0]["kind"], "ConfirmBOD");
    assert_eq!(r["outputs"][0]["to"], replies);
    let confirm_id = r["outputs"][0]["bod_id"].as_str().unwrap().to_string();

    // The tracked BODIDs are the messages that arrived.
    let on_queues: BTreeSet<String> = broker::drain_applications(&ch, &config)
        .await
        .into_iter()
        .collect();
    assert_eq!(on_queues, sync_ids);
    assert_eq!(broker::drain_ids(&ch, replies).await, [confirm_id]);
    assert_eq!(
        broker::ready_count(&ch, topology::INBOUND_QUEUE).await,
        Some(0)
    );

    // By BODID (percent-encoded: it holds ':', '?', '&', '=').
    let bod_id = applied["messages"][0]["runs"][0]["bod_id"]
        .as_str()
        .unwrap()
        .to_string();
    let encoded: String = bod_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let by_bod_id = fetch(&encoded).expect("found by BODID");
    assert_eq!(by_bod_id["id"], bod_id);
    assert_eq!(by_bod_id["messages"][0]["message_id"], "track-applied");
    assert_eq!(
        http_get(port, "/messages/never-seen").map(|(s, _)| s),
        Some(404)
    );

    // The CLI while the service holds the store: it asks the service.
    let out = tokio::task::block_in_place(|| {
        run(bodflow()
            .args(["track", "track-applied", "--config"])
            .arg(&config_path))
    });
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(" confirmed 20").count(), 4, "{text}");

    tokio::task::block_in_place(|| stop(&mut child));
    // And from the store itself once the service is gone: the confirms were persisted.
    let after =
        tokio::task::block_in_place(|| track_json(tmp.path(), &config_path, "track-applied"));
    assert_eq!(after[0], applied["messages"][0]);
}
