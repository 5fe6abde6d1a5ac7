//! The master-data rules of issue 5 through the library pipeline and the binary, on real sled
//! stores in temporary folders: automatic release of parked `no_match` documents, `bodflow
//! link` / `unlink` with their audit trail, classification rules, the account type, and
//! outbound promotion with Acknowledge correlation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Map, Value};

use bodflow::config::Config;
use bodflow::pipeline::link::{LinkRequest, Refused, UnlinkRequest};
use bodflow::pipeline::{Action, Input, Outcome, Pipeline, Report};
use bodflow::store::{Kind, ParkReason, Store};

mod common;
use common::bodflow;

#[path = "common/broker.rs"]
mod broker;

/// An ERP that must not create accounts (`match_only` on the account number) and a CRM that
/// creates them.
const CRM_FIRST: &str = r#"
[hub]
account_number_format = "C{seq:06}"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "ERP"
logical_id = "lid://erp"
default_record_owner = "U-ADMIN"
create_policy = "match_only"
match_on = ["account_number", "email"]
[[applications]]
name = "CRM"
logical_id = "lid://crm"
default_record_owner = "U-ADMIN"
create_policy = "create"
"#;

fn pipeline(config: &str) -> Pipeline {
    let config = Config::from_toml(config, "test").unwrap();
    Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap()
}

/// A SyncCustomerPartyMaster from `sender` for its account `id`; `number` goes to
/// AccountIDs, `email` to a Communication.
fn account(
    sender: &str,
    id: &str,
    variation: u32,
    number: Option<&str>,
    email: Option<&str>,
) -> String {
    let number = number
        .map(|n| format!("<AccountIDs><ID>{n}</ID></AccountIDs>"))
        .unwrap_or_default();
    let email = email
        .map(|e| {
            format!("<Communication><ChannelCode>EMail</ChannelCode><URI>{e}</URI></Communication>")
        })
        .unwrap_or_default();
    format!(
        r#"<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>{sender}</LogicalID></Sender>
    <CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime><BODID>{sender}:{id}:{variation}</BODID></ApplicationArea>
  <DataArea><Sync><ActionCriteria><ActionExpression actionCode="Change"/></ActionCriteria></Sync>
    <CustomerPartyMaster><PartyIDs><ID variationID="{variation}">{id}</ID></PartyIDs><Name>Acme {id}</Name>
      {number}<Location><Address><CountryCode>DE</CountryCode></Address></Location>{email}
    </CustomerPartyMaster></DataArea></SyncCustomerPartyMaster>"#
    )
}

fn input<'a>(bytes: &'a [u8], message_id: &'a str) -> Input<'a> {
    Input {
        bytes,
        source: message_id,
        message_id: Some(message_id),
        reply_to: None,
        received_at: Utc::now(),
        retry: false,
        envelope: None,
    }
}

fn run(p: &Pipeline, doc: &str, message_id: &str) -> Report {
    p.process(&input(doc.as_bytes(), message_id)).unwrap()
}

fn parked(p: &Pipeline) -> Vec<bodflow::store::Parked> {
    p.store.parked().collect::<Result<_, _>>().unwrap()
}

/// One document of `first`'s with the nouns of both (two documents of [`account`]).
fn two_nouns(first: &str, second: &str) -> String {
    let noun = |doc: &str| {
        let start = doc.find("<CustomerPartyMaster>").unwrap();
        let end = doc.find("</CustomerPartyMaster>").unwrap() + "</CustomerPartyMaster>".len();
        doc[start..end].to_string()
    };
    first.replace(&noun(first), &format!("{}{}", noun(first), noun(second)))
}

// ------------------------------------------------------------------------------------------
// 1. Automatic release of parked no_match documents
// ------------------------------------------------------------------------------------------

/// Two versions of one ERP account park `no_match`, each under the number it carried. When a
/// record comes to carry the first number, the first version links the key — and the second,
/// parked under a number no record carries, is now an update of that record: it is released
/// in the same transaction instead of waiting for ever.
#[test]
fn a_later_version_parked_under_another_value_follows_when_its_key_is_linked() {
    let p = pipeline(CRM_FIRST);
    let v1 = run(
        &p,
        &account("lid://erp", "E-7", 1, Some("N-1"), None),
        "erp-1",
    );
    let v2 = run(
        &p,
        &account("lid://erp", "E-7", 2, Some("N-2"), None),
        "erp-2",
    );
    assert_eq!((v1.outcome, v2.outcome), (Outcome::Parked, Outcome::Parked));
    assert_eq!(parked(&p).len(), 2);

    let crm = run(
        &p,
        &account("lid://crm", "CRM-7", 1, Some("N-1"), None),
        "crm-1",
    );
    let released: Vec<(&str, Outcome)> = crm
        .released
        .iter()
        .map(|r| (r.message_id.as_str(), r.outcome))
        .collect();
    assert_eq!(
        released,
        [("erp-1", Outcome::Applied), ("erp-2", Outcome::Applied)],
        "{:?}",
        crm.decisions
    );
    assert!(parked(&p).is_empty());
    let record = p
        .store
        .record(crm.record.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(record.xref_for("lid://erp").unwrap().variation, "2");
}

/// The CRM-first story: the ERP's account parks (no record has its number); the CRM user
/// types the ERP number on the CRM account; the CRM's Sync releases the ERP document in the
/// same transaction, which links to the CRM's record; later ERP updates are plain updates.
#[test]
fn a_record_that_comes_to_carry_the_number_releases_the_parked_document_and_links_it() {
    let p = pipeline(CRM_FIRST);
    let erp = run(
        &p,
        &account("lid://erp", "E-100", 1, Some("E-100"), None),
        "erp-1",
    );
    assert_eq!(erp.outcome, Outcome::Parked, "{:?}", erp.decisions);
    assert_eq!(parked(&p)[0].reason, ParkReason::NoMatch);

    let crm = run(&p, &account("lid://crm", "CRM-1", 1, None, None), "crm-1");
    assert_eq!(
        (crm.outcome, crm.action),
        (Outcome::Applied, Some(Action::Created))
    );
    assert!(crm.released.is_empty(), "no number yet: nothing to release");
    assert_eq!(parked(&p).len(), 1);

    // Typed with other case and spaces: match values are normalised.
    let crm2 = run(
        &p,
        &account("lid://crm", "CRM-1", 2, Some(" e-100 "), None),
        "crm-2",
    );
    assert_eq!(crm2.action, Some(Action::Updated));
    assert_eq!(crm2.released.len(), 1, "{:?}", crm2.decisions);
    let released = &crm2.released[0];
    assert_eq!(released.message_id, "erp-1");
    assert_eq!(released.released_by.as_deref(), Some("crm-2"));
    assert_eq!(
        (released.outcome, released.action),
        (Outcome::Applied, Some(Action::Linked))
    );
    assert_eq!(released.record, crm2.record);
    assert!(
        crm2.decisions
            .iter()
            .any(|d| d.contains("released parked message erp-1")),
        "{:?}",
        crm2.decisions
    );
    assert!(
        released
            .outputs
            .iter()
            .any(|o| o.kind == "SyncCustomerPartyMaster" && o.to == "lid://crm"),
        "the ERP's content goes to the CRM: {:?}",
        released.outputs
    );
    assert!(parked(&p).is_empty(), "released exactly once");

    let record = p
        .store
        .record(crm2.record.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert!(record.xref_for("lid://erp").is_some() && record.xref_for("lid://crm").is_some());

    // Bidirectional afterwards: the ERP's next update finds its cross-reference.
    let erp2 = run(
        &p,
        &account("lid://erp", "E-100", 2, Some("E-100"), None),
        "erp-2",
    );
    assert_eq!(
        (erp2.outcome, erp2.action),
        (Outcome::Applied, Some(Action::Updated))
    );
    assert!(erp2.released.is_empty());
    // A redelivery of the trigger is a duplicate and releases nothing again.
    let again = run(
        &p,
        &account("lid://crm", "CRM-1", 2, Some(" e-100 "), None),
        "crm-2",
    );
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(again.released.is_empty());
    // So is a redelivery of the released document's own message id.
    let erp_again = run(
        &p,
        &account("lid://erp", "E-100", 1, Some("E-100"), None),
        "erp-1",
    );
    assert_eq!(erp_again.outcome, Outcome::Duplicate);
}

/// A document whose two nouns both park: each is released on its own when a record comes to
/// carry its number. A release runs its own noun only: the noun released first is not
/// parked again by the second one's release, the second one does not wait in two rows, and
/// it is not taken for a duplicate of its message id, which the first release marked
/// applied.
#[test]
fn each_parked_noun_of_a_document_is_released_on_its_own() {
    let p = pipeline(CRM_FIRST);
    let erp = two_nouns(
        &account("lid://erp", "E-31", 1, Some("E-31"), None),
        &account("lid://erp", "E-32", 1, Some("E-32"), None),
    );
    let first = run(&p, &erp, "erp-two");
    assert_eq!(first.outcome, Outcome::Parked, "{:?}", first.decisions);
    let rows = parked(&p);
    assert_eq!(rows.len(), 2);
    let waits_for = |row: &bodflow::store::Parked| row.key.as_ref().unwrap().id.clone();
    assert_eq!(
        rows.iter().map(waits_for).collect::<Vec<_>>(),
        ["E-31", "E-32"]
    );

    let crm = run(
        &p,
        &account("lid://crm", "CRM-31", 1, Some("E-31"), None),
        "crm-31",
    );
    assert_eq!(crm.released.len(), 1, "{:?}", crm.decisions);
    let released = &crm.released[0];
    assert_eq!(
        (released.outcome, released.action),
        (Outcome::Applied, Some(Action::Linked))
    );
    assert_eq!(released.record, crm.record);
    let rows = parked(&p);
    assert_eq!(
        rows.iter().map(waits_for).collect::<Vec<_>>(),
        ["E-32"],
        "the other noun still waits, in its one row"
    );

    let crm = run(
        &p,
        &account("lid://crm", "CRM-32", 1, Some("E-32"), None),
        "crm-32",
    );
    assert_eq!(crm.released.len(), 1, "{:?}", crm.decisions);
    let released = &crm.released[0];
    assert_eq!(
        (released.outcome, released.action),
        (Outcome::Applied, Some(Action::Linked)),
        "{:?}",
        released.decisions
    );
    assert_eq!(released.record, crm.record);
    assert!(parked(&p).is_empty());
    assert_eq!(p.store.records().count(), 2, "two accounts, no third");
    assert_eq!(run(&p, &erp, "erp-two").outcome, Outcome::Duplicate);
}

/// A `Process` noun without an ID (the ERP asks the hub to place it), parked: once its
/// release has linked it, another row for it — parked again by a deliberate retry of the
/// document, or a copy of the row read before the release — is a duplicate. Run again, the
/// noun would find its record linked already and park once more.
#[test]
fn a_parked_noun_is_released_once_however_many_rows_wait_for_it() {
    let p = pipeline(CRM_FIRST);
    let process = account("lid://erp", "", 1, Some("E-40"), None)
        .replace("SyncCustomerPartyMaster", "ProcessCustomerPartyMaster")
        .replace("<Sync>", "<Process>")
        .replace("</Sync>", "</Process>");
    assert_eq!(run(&p, &process, "erp-40").outcome, Outcome::Parked);
    let stale = parked(&p).remove(0);
    let retry = Input {
        retry: true,
        ..input(process.as_bytes(), "erp-40")
    };
    assert_eq!(p.process(&retry).unwrap().outcome, Outcome::Parked);
    assert_eq!(parked(&p).len(), 2, "the retry parked the noun again");

    let crm = run(
        &p,
        &account("lid://crm", "CRM-40", 1, Some("E-40"), None),
        "crm-40",
    );
    let outcomes: Vec<_> = crm.released.iter().map(|r| (r.outcome, r.action)).collect();
    assert_eq!(
        outcomes,
        [
            (Outcome::Applied, Some(Action::Linked)),
            (Outcome::Duplicate, None)
        ],
        "{:?}",
        crm.decisions
    );
    assert!(parked(&p).is_empty());
    let again = p.release(&stale, Utc::now()).unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(parked(&p).is_empty());
    assert_eq!(p.store.records().count(), 1);
}

/// A noun's row released while its application is inactive parks again as that noun's row
/// (not the whole document's), and the noun stays listed as waiting: re-activated, the row
/// runs that noun only, parks `no_match` again, and is applied when its value appears.
#[test]
fn a_nouns_row_parked_again_for_an_inactive_application_stays_that_nouns_row() {
    let p = pipeline(CRM_FIRST);
    let inactive = CRM_FIRST.replace("name = \"ERP\"\n", "name = \"ERP\"\nactive = false\n");
    let off = Pipeline::new(
        Arc::new(Config::from_toml(&inactive, "test").unwrap()),
        p.store.clone(),
    )
    .unwrap();
    let erp = two_nouns(
        &account("lid://erp", "E-51", 1, Some("E-51"), None),
        &account("lid://erp", "E-52", 1, Some("E-52"), None),
    );
    assert_eq!(run(&p, &erp, "erp-5x").outcome, Outcome::Parked);
    let crm = run(
        &p,
        &account("lid://crm", "CRM-51", 1, Some("E-51"), None),
        "crm-51",
    );
    assert_eq!(crm.released[0].outcome, Outcome::Applied);

    let row = parked(&p).remove(0);
    let released = off.release(&row, Utc::now()).unwrap();
    assert_eq!(released.outcome, Outcome::Parked);
    let rows = parked(&p);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reason, ParkReason::InactiveApplication);
    assert_eq!(rows[0].noun, row.noun, "still the row of that noun");

    let (again, _) = p.release_reactivated(Utc::now());
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].outcome,
        Outcome::Parked,
        "{:?}",
        again[0].decisions
    );
    assert_eq!(parked(&p)[0].reason, ParkReason::NoMatch);
    let crm = run(
        &p,
        &account("lid://crm", "CRM-52", 1, Some("E-52"), None),
        "crm-52",
    );
    assert_eq!(crm.released.len(), 1, "{:?}", crm.decisions);
    assert_eq!(
        (crm.released[0].outcome, crm.released[0].action),
        (Outcome::Applied, Some(Action::Linked))
    );
    assert!(parked(&p).is_empty());
    assert_eq!(p.store.records().count(), 2);
}

/// A noun's row of a delivery whose release is refused (its sender is no longer configured)
/// is dead-lettered, as a rejected delivery is — the row was the document's only copy — with
/// the whole document and the noun's path (`x-bodflow-noun`). The document's other noun is
/// released and applied afterwards, which makes the message id `applied`; a replay of the
/// dead letter still runs — that noun only — and is then a duplicate like the message id.
#[test]
fn a_nouns_row_refused_at_its_release_is_dead_lettered_and_its_replay_runs_that_noun() {
    let p = pipeline(CRM_FIRST);
    let erp = two_nouns(
        &account("lid://erp", "E-61", 1, Some("E-61"), None),
        &account("lid://erp", "E-62", 1, Some("E-62"), None),
    );
    let delivery = Input {
        source: "amqp",
        ..input(erp.as_bytes(), "erp-6x")
    };
    assert_eq!(p.process(&delivery).unwrap().outcome, Outcome::Parked);

    // The ERP's logical ID changed in the configuration: its documents are refused
    // `unknown_sender`.
    let without_erp = Pipeline::new(
        Arc::new(
            Config::from_toml(
                &CRM_FIRST.replace(
                    "name = \"ERP\"\nlogical_id = \"lid://erp\"",
                    "name = \"ERP\"\nlogical_id = \"lid://erp-gone\"",
                ),
                "test",
            )
            .unwrap(),
        ),
        p.store.clone(),
    )
    .unwrap();
    let row = parked(&p).remove(0);
    let noun = row.noun.clone().expect("a noun's row");
    let refused = without_erp.release(&row, Utc::now()).unwrap();
    assert_eq!(
        refused.outcome,
        Outcome::Rejected,
        "{:?}",
        refused.decisions
    );
    assert_eq!(parked(&p).len(), 1, "the other noun still waits");
    let dead: Vec<_> = p
        .store
        .outbox()
        .map(|r| r.unwrap().1)
        .filter_map(|row| row.dead_letter)
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "the refused noun's document is dead-lettered"
    );
    assert_eq!(
        dead[0].delivered.payload,
        erp.as_bytes(),
        "the whole document"
    );
    assert_eq!(dead[0].code, "unknown_sender");

    // The ERP back: the other noun is released and applied.
    let crm = run(
        &p,
        &account("lid://crm", "CRM-62", 1, Some("E-62"), None),
        "crm-62",
    );
    assert_eq!(
        (crm.released[0].outcome, crm.released[0].action),
        (Outcome::Applied, Some(Action::Linked))
    );
    assert!(parked(&p).is_empty());

    // A record that carries the refused noun's number, and the dead letter replayed.
    run(
        &p,
        &account("lid://crm", "CRM-61", 1, Some("E-61"), None),
        "crm-61",
    );
    let envelope = bodflow::store::Envelope {
        noun: Some(noun),
        retry: Some("replay-1".into()),
        ..Default::default()
    };
    let replay = Input {
        source: "amqp",
        retry: true,
        envelope: Some(&envelope),
        ..input(&dead[0].delivered.payload, "erp-6x")
    };
    let replayed = p.process(&replay).unwrap();
    assert_eq!(
        (replayed.outcome, replayed.action),
        (Outcome::Applied, Some(Action::Linked)),
        "{:?}",
        replayed.decisions
    );
    // A report lists its nouns when it ran more than one.
    assert!(
        replayed.nouns.is_empty(),
        "that noun only: {:?}",
        replayed.nouns
    );
    let crm_61 = p.store.records().nth(1).unwrap().unwrap();
    assert_eq!(replayed.record.as_deref(), Some(crm_61.id.as_str()));
    assert_eq!(p.store.records().count(), 2, "two accounts, no third");
    // The same replay delivered again, another one, and the message id sent again: done.
    assert_eq!(p.process(&replay).unwrap().outcome, Outcome::Duplicate);
    let second = bodflow::store::Envelope {
        retry: Some("replay-2".into()),
        ..envelope.clone()
    };
    let again = Input {
        envelope: Some(&second),
        ..replay
    };
    assert_eq!(p.process(&again).unwrap().outcome, Outcome::Duplicate);
    assert_eq!(run(&p, &erp, "erp-6x").outcome, Outcome::Duplicate);
}

/// A parked row that cannot be read (its document's bytes gone from the store) is left
/// parked when a change wakes it: the change is applied, says so in its decisions, and the
/// other row it woke is released.
#[test]
fn a_woken_row_that_cannot_be_read_stays_parked_and_holds_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let config = Arc::new(Config::from_toml(CRM_FIRST, "test").unwrap());
    {
        let store = Arc::new(Store::open(&path).unwrap());
        let p = Pipeline::new(config.clone(), store.clone()).unwrap();
        for (id, message) in [("E-71", "erp-71"), ("E-72", "erp-72")] {
            let doc = account("lid://erp", id, 1, Some("N-7"), None);
            assert_eq!(run(&p, &doc, message).outcome, Outcome::Parked);
        }
        store.flush().unwrap();
    }
    {
        // The store's own layout: `v` and the digest hold a parked document's bytes.
        let db = common::open_sled(&path);
        let hub = db.open_tree("hub").unwrap();
        let (first, _) = hub.scan_prefix(b"v").next().unwrap().unwrap();
        hub.remove(first).unwrap();
        db.flush().unwrap();
    }
    let store = Arc::new(common::open_store(&path));
    let p = Pipeline::new(config, store.clone()).unwrap();
    let crm = run(
        &p,
        &account("lid://crm", "CRM-7", 1, Some("N-7"), None),
        "crm-7",
    );
    assert_eq!(crm.outcome, Outcome::Applied, "{:?}", crm.decisions);
    assert_eq!(crm.released.len(), 1, "{:?}", crm.decisions);
    assert_eq!(crm.released[0].outcome, Outcome::Applied);
    assert!(
        crm.decisions
            .iter()
            .any(|d| d.text.contains("cannot be read and stays parked")),
        "{:?}",
        crm.decisions
    );
    let left: Vec<_> = store.parked().collect();
    assert_eq!(left.len(), 1);
    assert!(left[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("payload is missing"));

    // Nor an operator's link of another key, which releases that key's document.
    let doc = account("lid://erp", "E-73", 1, Some("N-9"), None);
    assert_eq!(run(&p, &doc, "erp-73").outcome, Outcome::Parked);
    let other = run(
        &p,
        &account("lid://crm", "CRM-9", 1, Some("N-10"), None),
        "crm-9",
    );
    let hub = other.record.clone().unwrap();
    let request = bodflow::pipeline::link::LinkRequest {
        application: "lid://erp",
        accounting_entity: "",
        id: "E-73",
        record: &hub,
        kind: None,
        operator: "jdoe",
        now: Utc::now(),
    };
    let done = p.link(&request).unwrap().unwrap();
    let released: Vec<_> = done
        .report
        .released
        .iter()
        .map(|r| (r.message_id.as_str(), r.outcome))
        .collect();
    assert_eq!(released, [("erp-73", Outcome::Applied)]);
}

/// A new record carrying the value releases too (e-mail here), and so does a document in the
/// same group commit as the parked one's trigger; a record of the other kind does not.
#[test]
fn a_new_record_in_the_same_group_releases_by_email_and_other_kinds_do_not() {
    let p = pipeline(CRM_FIRST);
    let erp = account("lid://erp", "E-7", 1, None, Some("Info@Acme.example"));
    assert_eq!(run(&p, &erp, "erp-7").outcome, Outcome::Parked);

    let contact = r#"<SyncContactMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>lid://crm</LogicalID></Sender><CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime></ApplicationArea>
  <DataArea><Sync/><ContactMaster><IDs><ID>P-1</ID></IDs><FamilyName>Byron</FamilyName>
    <CommunicationDetail><ChannelCode>EMail</ChannelCode><URI>info@acme.example</URI></CommunicationDetail>
  </ContactMaster></DataArea></SyncContactMaster>"#;
    let crm = account("lid://crm", "CRM-7", 1, None, Some("info@ACME.example"));
    let batch = vec![
        p.prepare(&input(contact.as_bytes(), "crm-contact")),
        p.prepare(&input(crm.as_bytes(), "crm-7")),
    ];
    let reports = p.commit_batch(&batch).unwrap();
    assert!(
        reports[0].released.is_empty(),
        "a contact's e-mail does not place an account"
    );
    assert_eq!(reports[1].released.len(), 1);
    assert_eq!(reports[1].released[0].action, Some(Action::Linked));
    assert!(parked(&p).is_empty());
}

/// A released document that still cannot be placed is parked again with its current reason,
/// under a new parked row: here the CRM document that carries its number holds two accounts
/// with that number, so the release (after the whole document) finds two records.
#[test]
fn a_released_document_that_now_finds_two_records_parks_again_ambiguous() {
    let p = pipeline(CRM_FIRST);
    assert_eq!(
        run(
            &p,
            &account("lid://erp", "E-20", 1, Some("E-20"), None),
            "erp-20"
        )
        .outcome,
        Outcome::Parked
    );
    let seq = parked(&p)[0].seq;
    let one = account("lid://crm", "CRM-F", 1, Some("E-20"), None);
    let other = account("lid://crm", "CRM-G", 1, Some("E-20"), None);
    let crm = run(&p, &two_nouns(&one, &other), "crm-two");
    assert_eq!(crm.released.len(), 1, "{:?}", crm.decisions);
    let again = &crm.released[0];
    assert_eq!(again.outcome, Outcome::Parked);
    assert!(
        again
            .decisions
            .iter()
            .any(|d| d.contains("ambiguous_match")),
        "{:?}",
        again.decisions
    );
    let rows = parked(&p);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reason, ParkReason::AmbiguousMatch);
    assert!(rows[0].seq > seq, "a new parked row");
    assert!(
        rows[0].match_values.is_empty(),
        "only no_match rows are indexed"
    );
}

fn replay_json(dir: &Path, store: &Path, inputs: &Path, config: &Path) -> Vec<Map<String, Value>> {
    let out = bodflow()
        .current_dir(dir)
        .arg("replay")
        .arg(inputs)
        .args(["--json", "--config"])
        .arg(config)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn str_of<'a>(line: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    line.get(key).and_then(Value::as_str)
}

/// Through the binary and across processes: the ERP document parked by one `replay` run is
/// released by the next run's CRM document (the parked index is in the store), and the
/// released document gets its own JSON line, right after its trigger's, naming the trigger.
#[test]
fn replay_prints_the_released_document_as_its_own_line_after_its_trigger() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bodflow.toml");
    std::fs::write(&config, CRM_FIRST).unwrap();
    let store = tmp.path().join("store");
    let day1 = tmp.path().join("day1");
    let day2 = tmp.path().join("day2");
    std::fs::create_dir_all(&day1).unwrap();
    std::fs::create_dir_all(&day2).unwrap();
    std::fs::write(
        day1.join("1-erp.xml"),
        account("lid://erp", "E-1", 1, Some("E-1"), None),
    )
    .unwrap();
    std::fs::write(
        day1.join("2-crm.xml"),
        account("lid://crm", "CRM-1", 1, None, None),
    )
    .unwrap();
    std::fs::write(
        day2.join("3-crm.xml"),
        account("lid://crm", "CRM-1", 2, Some("E-1"), None),
    )
    .unwrap();
    std::fs::write(
        day2.join("4-erp.xml"),
        account("lid://erp", "E-1", 2, Some("E-1"), None),
    )
    .unwrap();

    let first = replay_json(tmp.path(), &store, &day1, &config);
    assert_eq!(
        first
            .iter()
            .map(|l| str_of(l, "outcome").unwrap())
            .collect::<Vec<_>>(),
        ["parked", "applied"]
    );
    let second = replay_json(tmp.path(), &store, &day2, &config);
    let summary: Vec<(String, Option<&str>, Option<&str>)> = second
        .iter()
        .map(|l| {
            let file = Path::new(str_of(l, "source").unwrap()).file_name().unwrap();
            (
                file.to_string_lossy().into_owned(),
                str_of(l, "action"),
                str_of(l, "released_by"),
            )
        })
        .collect();
    let trigger_id = str_of(&second[0], "message_id").unwrap();
    assert_eq!(
        summary,
        [
            ("3-crm.xml".to_string(), Some("updated"), None),
            ("1-erp.xml".to_string(), Some("linked"), Some(trigger_id)),
            ("4-erp.xml".to_string(), Some("updated"), None),
        ]
    );
    assert_eq!(
        str_of(&second[1], "message_id"),
        str_of(&first[0], "message_id")
    );
    let decisions = second[0]["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d.as_str().unwrap().contains("released parked message")),
        "{decisions:?}"
    );
}

/// The service path (`bodflow run` against the real RabbitMQ, one throw-away vhost): the CRM
/// delivery that carries the number releases the parked ERP document in its own group
/// transaction, the store ends linked with nothing parked, and the released document's Sync
/// (its BODID derives from the ERP message id) reaches the CRM's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_releases_the_parked_document_and_publishes_what_it_emits() {
    let vhost = broker::Vhost::new("rules-release");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let config_path = dir.path().join("bodflow.toml");
    let text = CRM_FIRST.replacen(
        "[hub]\n",
        &format!("[hub]\nstore = {:?}\n", store_dir.display().to_string()),
        1,
    );
    std::fs::write(&config_path, text).unwrap();
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    let docs: Vec<broker::Doc> = [
        ("erp-1", account("lid://erp", "E-1", 1, Some("E-1"), None)),
        ("crm-1", account("lid://crm", "CRM-1", 1, None, None)),
        ("crm-2", account("lid://crm", "CRM-1", 2, Some("E-1"), None)),
    ]
    .into_iter()
    .map(|(id, xml)| broker::Doc {
        message_id: id.into(),
        bytes: xml.into_bytes(),
    })
    .collect();
    broker::publish(&config, &docs).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_bodflow"));
    let mut child = broker::spawn_service(binary, &config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    let (_conn, ch) = broker::connect(&vhost.url()).await;
    broker::wait_until_settled(
        &vhost,
        &ch,
        &config,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(60),
    )
    .await;
    assert!(broker::terminate(&mut child, broker::STOP_WITHIN).success());

    let crm_queue = bodflow::amqp::topology::application_queue("crm");
    let to_crm = broker::drain_ids(&ch, &crm_queue).await;
    // The release is the message id's second run (its first parked it).
    let erp_prefix = format!("bodflow:{}:", &blake3::hash(b"erp-1#1").to_hex()[..20]);
    assert!(
        to_crm.iter().any(|id| id.starts_with(&erp_prefix)),
        "the released ERP document's Sync reached the CRM: {to_crm:?}"
    );
    let store = common::open_store(&store_dir);
    assert_eq!(store.parked().count(), 0);
    assert_eq!(store.marker("erp-1").unwrap().unwrap().outcome, "applied");
    let record = store.record("ACC-000001").unwrap().unwrap();
    assert!(record.xref_for("lid://erp").is_some() && record.xref_for("lid://crm").is_some());
    assert_eq!(store.outbox_len(), 0, "everything published");
}

// ------------------------------------------------------------------------------------------
// 2. bodflow link / unlink, audited
// ------------------------------------------------------------------------------------------

/// A billing system an operator links by hand (`manual`), next to a CRM that creates.
const MANUAL: &str = r#"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "Billing"
logical_id = "lid://billing"
default_record_owner = "U-ADMIN"
create_policy = "manual"
[[applications]]
name = "CRM"
logical_id = "lid://crm"
default_record_owner = "U-ADMIN"
"#;

fn link_request<'a>(application: &'a str, id: &'a str, record: &'a str) -> LinkRequest<'a> {
    LinkRequest {
        application,
        accounting_entity: "",
        id,
        record,
        kind: None,
        operator: "jdoe",
        now: Utc::now(),
    }
}

/// `link` creates the cross-reference and applies both documents parked for that key in one
/// transaction (audited with their message ids); every refusal has its code; `unlink` keeps
/// the record, stops the Syncs to the application, and its next document follows `manual`
/// again.
#[test]
fn link_applies_the_parked_documents_refuses_conflicts_and_unlink_stops_the_flow() {
    let p = pipeline(MANUAL);
    let crm = run(&p, &account("lid://crm", "CRM-1", 1, None, None), "crm-1");
    let hub = crm.record.clone().unwrap();
    assert!(
        crm.outputs.iter().any(|o| o.to == "lid://billing"),
        "billing gets the Add"
    );
    for (v, m) in [(1, "bill-1"), (2, "bill-2")] {
        let r = run(&p, &account("lid://billing", "B-1", v, None, None), m);
        assert_eq!(r.outcome, Outcome::Parked);
        assert!(r.decisions.iter().any(|d| d.contains("manual")));
    }

    let done = p
        .link(&link_request("lid://billing", "B-1", &hub))
        .unwrap()
        .unwrap();
    let released: Vec<(&str, Outcome, Option<Action>)> = done
        .report
        .released
        .iter()
        .map(|r| (r.message_id.as_str(), r.outcome, r.action))
        .collect();
    assert_eq!(
        released,
        [
            ("bill-1", Outcome::Applied, Some(Action::Updated)),
            ("bill-2", Outcome::Applied, Some(Action::Updated)),
        ]
    );
    assert_eq!(done.audit.released, ["bill-1", "bill-2"]);
    assert!(parked(&p).is_empty());
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(record.xref_for("lid://billing").unwrap().variation, "2");
    let audit = p.store.audit_for(&hub).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].operator.as_str(),
            audit[0].app_id.as_str()
        ),
        ("link", "jdoe", "B-1")
    );

    let refused = |r: Result<_, Refused>| r.err().map(|e| e.code());
    assert_eq!(
        refused(p.link(&link_request("lid://billing", "B-1", &hub)).unwrap()),
        Some("id_linked_elsewhere")
    );
    assert_eq!(
        refused(p.link(&link_request("lid://billing", "B-2", &hub)).unwrap()),
        Some("record_already_linked")
    );
    assert_eq!(
        refused(
            p.link(&link_request("lid://billing", "B-3", "ACC-999999"))
                .unwrap()
        ),
        Some("record_not_found")
    );
    assert_eq!(
        refused(p.link(&link_request("lid://nobody", "B-3", &hub)).unwrap()),
        Some("unknown_application")
    );
    let mut contact_link = link_request("lid://crm", "P-1", &hub);
    contact_link.kind = Some(Kind::Contact);
    assert_eq!(
        refused(p.link(&contact_link).unwrap()),
        Some("kind_mismatch")
    );
    assert_eq!(
        p.store.audit_for(&hub).unwrap().len(),
        1,
        "refusals are not audited"
    );

    let unlinked = p
        .unlink(&UnlinkRequest {
            application: "lid://billing",
            record: &hub,
            operator: "jdoe",
            now: Utc::now(),
        })
        .unwrap()
        .unwrap();
    assert_eq!(unlinked.audit.app_id, "B-1");
    let record = p.store.record(&hub).unwrap().unwrap();
    assert!(
        record.xref_for("lid://billing").is_none(),
        "the record stays, unlinked"
    );
    assert_eq!(record.unlinked, ["lid://billing"]);
    let change = run(
        &p,
        &account("lid://crm", "CRM-1", 2, None, Some("a@acme.example")),
        "crm-2",
    );
    assert!(
        change.outputs.iter().all(|o| o.to != "lid://billing"),
        "no Sync to an unlinked application: {:?}",
        change.outputs
    );
    assert!(
        change.decisions.iter().any(|d| d.contains("unlinked")),
        "{:?}",
        change.decisions
    );
    let next = run(
        &p,
        &account("lid://billing", "B-1", 3, None, None),
        "bill-3",
    );
    assert_eq!(next.outcome, Outcome::Parked, "manual again after unlink");
    assert_eq!(
        p.unlink(&UnlinkRequest {
            application: "lid://billing",
            record: &hub,
            operator: "jdoe",
            now: Utc::now(),
        })
        .unwrap()
        .err()
        .map(|e| e.code()),
        Some("not_linked")
    );

    // Re-linked: Syncs flow again.
    let relinked = p
        .link(&link_request("lid://billing", "B-1", &hub))
        .unwrap()
        .unwrap();
    assert_eq!(relinked.report.released.len(), 1);
    assert!(p.store.record(&hub).unwrap().unwrap().unlinked.is_empty());
    let change = run(
        &p,
        &account("lid://crm", "CRM-1", 3, None, Some("b@acme.example")),
        "crm-3",
    );
    assert!(change.outputs.iter().any(|o| o.to == "lid://billing"));
    let actions: Vec<String> = p
        .store
        .audit_for(&hub)
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["link", "unlink", "link"]);
}

/// `parked reject`: a `Process` without an ID, delivered from an application under `manual`,
/// has no ID an operator could link, so it would wait for ever; the operator refuses it
/// instead. Its row goes, the sender hears it (`Acknowledge` Rejected and, as it asked, a
/// ConfirmBOD, naming the operator and the note), the delivery is dead-lettered (its row was
/// its only copy), the marker says rejected; the same row again is a duplicate, and a
/// deliberate retry of the message id (its dead letter replayed) runs it again. The row of
/// one noun of a document with two is not refused alone.
#[test]
fn an_operator_rejects_a_parked_process_that_no_link_can_place() {
    let p = pipeline(MANUAL);
    let process = account("lid://billing", "", 1, None, None)
        .replace("SyncCustomerPartyMaster", "ProcessCustomerPartyMaster")
        .replace("<Sync>", "<Process>")
        .replace("</Sync>", "</Process>");
    let delivered = Input {
        source: bodflow::amqp::SOURCE,
        ..input(process.as_bytes(), "bill-p")
    };
    assert_eq!(p.process(&delivered).unwrap().outcome, Outcome::Parked);
    let row = parked(&p).remove(0);
    assert_eq!(row.reason, ParkReason::ManualLink);
    assert!(row.noun.is_some(), "a create policy parks the noun");
    let outbox_before = p.store.outbox_len();

    let report = p
        .reject_parked(&row, "jdoe", Some("a duplicate of ACC-000007"), Utc::now())
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, Outcome::Rejected);
    let e = report.error.as_ref().unwrap();
    assert_eq!(
        (e.stage.as_str(), e.code),
        ("upsert", "rejected_by_operator")
    );
    assert_eq!(
        e.message,
        "rejected by operator jdoe while parked (manual_link): a duplicate of ACC-000007"
    );
    assert!(parked(&p).is_empty());
    assert_eq!(
        p.store.marker("bill-p").unwrap().unwrap().outcome,
        "rejected"
    );
    let mut told: Vec<(&str, &str)> = report
        .outputs
        .iter()
        .map(|o| (o.kind.as_str(), o.to.as_str()))
        .collect();
    told.sort();
    assert_eq!(
        told,
        [
            ("AcknowledgeCustomerPartyMaster", "lid://billing"),
            ("ConfirmBOD", "lid://billing")
        ]
    );
    let rows: Vec<bodflow::store::OutboxRow> = p
        .store
        .outbox()
        .skip(outbox_before)
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        match &row.dead_letter {
            Some(dead) => {
                assert_eq!(
                    (dead.stage.as_str(), dead.code.as_str()),
                    ("upsert", "rejected_by_operator")
                );
                assert_eq!(dead.delivered.payload, process.as_bytes());
            }
            None => assert!(row.xml.contains("rejected by operator jdoe"), "{}", row.xml),
        }
    }
    assert_eq!(rows.iter().filter(|r| r.dead_letter.is_some()).count(), 1);

    // The same row again (read before the rejection): a duplicate, nothing more.
    let again = p
        .reject_parked(&row, "jdoe", None, Utc::now())
        .unwrap()
        .unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert_eq!(p.store.outbox().count(), outbox_before + 3);
    // A deliberate retry of the message id runs it again: parked again, nothing created.
    let retry = Input {
        retry: true,
        ..input(process.as_bytes(), "bill-p")
    };
    assert_eq!(p.process(&retry).unwrap().outcome, Outcome::Parked);
    assert_eq!(p.store.records().count(), 0);

    // Two nouns, both parked: neither row is refused alone, both stay.
    let two = two_nouns(
        &account("lid://billing", "B-8", 1, None, None),
        &account("lid://billing", "B-9", 1, None, None),
    );
    assert_eq!(run(&p, &two, "bill-two").outcome, Outcome::Parked);
    let rows: Vec<_> = parked(&p)
        .into_iter()
        .filter(|r| r.message_id == "bill-two")
        .collect();
    assert_eq!(rows.len(), 2);
    let refused = p.reject_parked(&rows[0], "jdoe", None, Utc::now()).unwrap();
    assert!(
        refused
            .as_ref()
            .is_err_and(|why| why.contains("one of the 2 nouns")),
        "{refused:?}"
    );
    assert_eq!(
        parked(&p)
            .iter()
            .filter(|r| r.message_id == "bill-two")
            .count(),
        2
    );
}

/// A matching application (`match_or_create` on account number) unlinked by an operator does
/// not match its way back onto that record: its next document for the key creates a record of
/// its own (`match_only`: parks), and says why; only `bodflow link` joins them again.
#[test]
fn an_unlink_stands_against_automatic_matching() {
    let config = |policy: &str| {
        format!(
            r#"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "ERP"
logical_id = "lid://erp"
default_record_owner = "U-ADMIN"
[[applications]]
name = "Billing"
logical_id = "lid://billing"
default_record_owner = "U-ADMIN"
create_policy = "{policy}"
match_on = ["account_number"]
"#
        )
    };
    for policy in ["match_or_create", "match_only"] {
        let p = pipeline(&config(policy));
        let erp = run(
            &p,
            &account("lid://erp", "E-1", 1, Some("C-100"), None),
            "erp-1",
        );
        let hub = erp.record.clone().unwrap();
        let billing = run(
            &p,
            &account("lid://billing", "B-1", 1, Some("C-100"), None),
            "bill-1",
        );
        assert_eq!(
            billing.record.as_deref(),
            Some(hub.as_str()),
            "{policy}: matched"
        );
        p.unlink(&UnlinkRequest {
            application: "lid://billing",
            record: &hub,
            operator: "jdoe",
            now: Utc::now(),
        })
        .unwrap()
        .unwrap();

        let next = run(
            &p,
            &account("lid://billing", "B-1", 2, Some("C-100"), None),
            "bill-2",
        );
        let expected = format!(
            "{hub} matches by account_number \"C-100\" but was unlinked from Billing by an operator: not matched (bodflow link joins them)"
        );
        assert!(
            next.decisions.iter().any(|d| *d == *expected),
            "{policy}: {:?}",
            next.decisions
        );
        assert!(p
            .store
            .record(&hub)
            .unwrap()
            .unwrap()
            .xref_for("lid://billing")
            .is_none());
        match policy {
            "match_or_create" => {
                assert_eq!(next.outcome, Outcome::Applied);
                assert_eq!(next.action, Some(Action::Created));
                assert_ne!(
                    next.record.as_deref(),
                    Some(hub.as_str()),
                    "a record of its own"
                );
            }
            _ => {
                assert_eq!(next.outcome, Outcome::Parked);
                assert_eq!(parked(&p).len(), 1);
                // An operator's link still joins them and applies the parked document.
                let done = p
                    .link(&link_request("lid://billing", "B-1", &hub))
                    .unwrap()
                    .unwrap();
                assert_eq!(done.report.released.len(), 1);
                assert_eq!(done.report.released[0].outcome, Outcome::Applied);
                assert!(parked(&p).is_empty());
            }
        }
    }
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = bodflow().current_dir(dir).args(args).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The binary: `link` prints what it released and exits 0; refusals exit 1 with a clear
/// message; `records --id` shows the cross-references and the audit trail; `unlink` too.
#[test]
fn link_and_unlink_commands_are_audited_and_shown_by_records_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("bodflow.toml"), MANUAL).unwrap();
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("1-crm.xml"),
        account("lid://crm", "CRM-1", 1, None, None),
    )
    .unwrap();
    std::fs::write(
        docs.join("2-bill.xml"),
        account("lid://billing", "B-1", 1, None, None),
    )
    .unwrap();
    let replayed = replay_json(dir, &dir.join("st"), &docs, &dir.join("bodflow.toml"));
    assert_eq!(str_of(&replayed[1], "outcome"), Some("parked"));
    let parked_id = str_of(&replayed[1], "message_id").unwrap();

    let base = ["--store", "st", "--config", "bodflow.toml"];
    let link = |extra: &[&str]| {
        let mut args = vec!["link", "--application", "lid://billing"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&base);
        cli(dir, &args)
    };
    let out = link(&["--id", "B-1", "--record", "ACC-000001", "--by", "ops"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("linked lid://billing|B-1 to ACC-000001 by ops"),
        "{text}"
    );
    assert!(text.contains("2-bill.xml: applied ACC-000001"), "{text}");

    let out = link(&["--id", "B-2", "--record", "ACC-000404"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hub record ACC-000404"));
    let out = link(&["--id", "B-9", "--record", "ACC-000001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("record_already_linked"));

    let out = cli(
        dir,
        &[
            &[
                "unlink",
                "--application",
                "lid://billing",
                "--record",
                "ACC-000001",
                "--by",
                "ops",
            ][..],
            &base,
        ]
        .concat(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli(
        dir,
        &[&["records", "--id", "ACC-000001", "--json"][..], &base].concat(),
    );
    assert_eq!(out.status.code(), Some(0));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit = shown["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["action"], "link");
    assert_eq!(audit[0]["operator"], "ops");
    assert_eq!(audit[0]["released"][0], parked_id);
    assert_eq!(audit[1]["action"], "unlink");
    assert_eq!(shown["record"]["unlinked"][0], "lid://billing");
    let text = cli(
        dir,
        &[&["records", "--id", "ACC-000001"][..], &base].concat(),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("link lid://billing|B-1 ACC-000001 by ops; released"),
        "{text}"
    );
    assert!(
        text.contains("unlinked (no outbound Syncs): lid://billing"),
        "{text}"
    );
    let out = cli(
        dir,
        &[&["records", "--id", "ACC-000404"][..], &base].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
}

// ------------------------------------------------------------------------------------------
// 3. Classification rules
// ------------------------------------------------------------------------------------------

/// ERP ↔ mobile sales: only `Sales` contacts go to the app, and what the app sends is stamped
/// `Sales`.
const MOBILE: &str = r#"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "ERP"
logical_id = "lid://erp"
default_record_owner = "U-ADMIN"
[[applications]]
name = "Mobile"
logical_id = "lid://mobile"
default_record_owner = "U-ADMIN"
require_classification = "Sales"
stamp_classification = "Sales"
[[applications]]
name = "CRM"
logical_id = "lid://crm"
default_record_owner = "U-ADMIN"
"#;

fn contact(sender: &str, id: &str, variation: u32, employer: &str, classes: &[&str]) -> String {
    let classes = if classes.is_empty() {
        String::new()
    } else {
        format!(
            "<Classification><Codes>{}</Codes></Classification>",
            classes
                .iter()
                .map(|c| format!("<Code>{c}</Code>"))
                .collect::<String>()
        )
    };
    format!(
        r#"<SyncContactMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>{sender}</LogicalID></Sender><CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime></ApplicationArea>
  <DataArea><Sync/><ContactMaster><IDs><ID variationID="{variation}">{id}</ID></IDs><GivenName>Ada</GivenName><FamilyName>Byron</FamilyName>
    <EmployerReference><DocumentID><ID>{employer}</ID></DocumentID></EmployerReference>{classes}
  </ContactMaster></DataArea></SyncContactMaster>"#
    )
}

fn sent_to(report: &Report) -> Vec<&str> {
    report.outputs.iter().map(|o| o.to.as_str()).collect()
}

/// Every outbox row of the store, validated by xmllint against `schemas/<kind>.xsd`; returns
/// the documents by kind.
fn validate_outbox(p: &Pipeline) -> std::collections::BTreeMap<String, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let mut by_kind: std::collections::BTreeMap<String, Vec<common::ToCheck>> = Default::default();
    let mut xml: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (i, row) in p.store.outbox().enumerate() {
        let (_, row) = row.unwrap();
        let file = dir.path().join(format!("{i}.{}.xml", row.kind));
        std::fs::write(&file, &row.xml).unwrap();
        by_kind
            .entry(row.kind.clone())
            .or_default()
            .push(common::ToCheck::file(file));
        xml.entry(row.kind).or_default().push(row.xml);
    }
    let problems = common::xmllint_validate_by_kind(common::schema_for_kind, &by_kind);
    assert!(problems.is_empty(), "{problems:#?}");
    xml
}

#[test]
fn contacts_flow_to_an_application_only_while_classified_as_it_requires() {
    let p = pipeline(MOBILE);
    run(&p, &account("lid://erp", "A-1", 1, None, None), "erp-a");
    let service = run(
        &p,
        &contact("lid://erp", "P-1", 1, "A-1", &["Service"]),
        "erp-p1",
    );
    assert_eq!(service.action, Some(Action::Created));
    assert_eq!(sent_to(&service), ["lid://crm"]);
    assert!(
        service
            .decisions
            .iter()
            .any(|d| d
                == "not sent to Mobile: contact not classified Sales (require_classification)"),
        "{:?}",
        service.decisions
    );
    let sales = run(
        &p,
        &contact("lid://erp", "P-1", 2, "A-1", &["Service", "sales"]),
        "erp-p2",
    );
    assert_eq!(
        sent_to(&sales),
        ["lid://mobile", "lid://crm"],
        "case-insensitive"
    );
    let lost = run(
        &p,
        &contact("lid://erp", "P-1", 3, "A-1", &["Service"]),
        "erp-p3",
    );
    assert_eq!(lost.action, Some(Action::Updated));
    assert_eq!(
        sent_to(&lost),
        ["lid://crm"],
        "a contact that loses it stops flowing"
    );
    validate_outbox(&p);
}

#[test]
fn contacts_from_a_stamping_application_are_stamped_and_new_ones_become_employees() {
    let p = pipeline(MOBILE);
    let new = run(&p, &contact("lid://mobile", "M-1", 1, "MA-1", &[]), "mob-1");
    assert_eq!(new.action, Some(Action::Created));
    for expected in [
        "classification: stamped Sales (Mobile stamp_classification)",
        "relationship: new contact from Mobile is an employee of its account",
    ] {
        assert!(
            new.decisions.iter().any(|d| d == expected),
            "{:?}",
            new.decisions
        );
    }
    let hub = new.record.clone().unwrap();
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(record.fields.classification, ["Sales"]);
    assert_eq!(
        record.fields.identity.relationship.as_deref(),
        Some("employee")
    );

    // Its own classification replaces the old one (it masters everything of its record),
    // and the stamp comes back.
    let update = run(
        &p,
        &contact("lid://mobile", "M-1", 2, "MA-1", &["VIP"]),
        "mob-2",
    );
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(
        record.fields.classification,
        ["VIP", "Sales"],
        "{:?}",
        update.decisions
    );
    // A contact already classified (any case) is not stamped twice.
    run(
        &p,
        &contact("lid://mobile", "M-1", 3, "MA-1", &["sales"]),
        "mob-3",
    );
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(record.fields.classification, ["sales"]);

    let xml = validate_outbox(&p);
    let syncs = &xml["SyncContactMaster"];
    assert!(syncs.len() >= 6, "to the ERP and the CRM, three times");
    assert!(
        syncs
            .iter()
            .all(|x| x.contains(r#"<ContactMaster type="employee">"#)),
        "the relationship is written as ContactMaster/@type"
    );
    // Contacts of other applications do not become employees.
    let erp = run(&p, &contact("lid://erp", "P-9", 1, "A-9", &[]), "erp-9");
    let record = p
        .store
        .record(erp.record.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(record.fields.identity.relationship, None);
    assert!(record.fields.classification.is_empty());
}

// ------------------------------------------------------------------------------------------
// 4. Account type
// ------------------------------------------------------------------------------------------

/// `account` with the account type as senders carry it: `@role` on the noun.
fn typed_account(sender: &str, id: &str, variation: u32, role: &str) -> String {
    account(sender, id, variation, None, None).replacen(
        "<CustomerPartyMaster>",
        &format!(r#"<CustomerPartyMaster role="{role}">"#),
        1,
    )
}

/// The account type lands in the commercial group, follows commercial mastership and outbound
/// field selection, and is written as `CustomerPartyMaster/@role`.
#[test]
fn the_account_type_is_kept_on_the_record_and_written_in_sync() {
    let p = pipeline(
        r#"
[[applications]]
name = "CRM"
logical_id = "lid://crm"
[[applications]]
name = "ERP"
logical_id = "lid://erp"
create_policy = "match_or_create"
match_on = ["account_number"]
masters = ["identity"]
[[applications]]
name = "Mobile"
logical_id = "lid://mobile"
[applications.flows.CustomerPartyMaster]
outbound = { fields = ["identity", "address"] }
"#,
    );
    let created = run(
        &p,
        &typed_account("lid://crm", "CRM-1", 1, "Prospect"),
        "crm-1",
    );
    let hub = created.record.clone().unwrap();
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(
        record.fields.commercial.account_type.as_deref(),
        Some("Prospect")
    );
    run(
        &p,
        &typed_account("lid://crm", "CRM-1", 2, "Customer"),
        "crm-2",
    );
    // The ERP links by number but does not master commercial data: its type is ignored.
    let erp = typed_account("lid://erp", "CRM-1", 1, "Competitor");
    let linked = run(&p, &erp, "erp-1");
    assert_eq!(
        linked.action,
        Some(Action::Linked),
        "{:?}",
        linked.decisions
    );
    run(
        &p,
        &typed_account("lid://erp", "CRM-1", 2, "Competitor"),
        "erp-2",
    );
    let record = p.store.record(&hub).unwrap().unwrap();
    assert_eq!(
        record.fields.commercial.account_type.as_deref(),
        Some("Customer")
    );

    let xml = validate_outbox(&p);
    let syncs = &xml["SyncCustomerPartyMaster"];
    let to = |lid: &str| {
        syncs
            .iter()
            .filter(|x| x.contains(&format!(r#"lid="{lid}""#)))
            .collect::<Vec<_>>()
    };
    assert!(to("lid://erp")
        .iter()
        .any(|x| x.contains(r#"<CustomerPartyMaster role="Customer">"#)));
    let mobile = to("lid://mobile");
    assert!(!mobile.is_empty());
    assert!(
        mobile.iter().all(|x| !x.contains("role=")),
        "commercial is not among the mobile app's fields"
    );
}

// ------------------------------------------------------------------------------------------
// 5. Outbound promotion and Acknowledge correlation
// ------------------------------------------------------------------------------------------

/// A CRM-first company: accounts that become Customers are promoted to the ERP, which assigns
/// their number.
const PROMOTION: &str = r#"
[hub.promotion]
when_type = "Customer"
system_of_record = "lid://erp"
accounting_entity = "3555"
[[applications]]
name = "ERP"
logical_id = "lid://erp"
create_policy = "match_only"
match_on = ["account_number"]
[[applications]]
name = "CRM"
logical_id = "lid://crm"
"#;

/// An AcknowledgeCustomerPartyMaster from `sender` answering the Process `original`.
fn acknowledge(
    sender: &str,
    original: &str,
    response: &str,
    id: &str,
    reason: Option<&str>,
) -> String {
    let status = reason
        .map(|r| {
            format!(
                "<ChangeStatus><Code>Rejected</Code><ReasonCode>{r}</ReasonCode></ChangeStatus>"
            )
        })
        .unwrap_or_default();
    format!(
        r#"<AcknowledgeCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>{sender}</LogicalID></Sender><CreationDateTime>2026-01-02T00:00:00Z</CreationDateTime><BODID>ack:{original}:{response}</BODID></ApplicationArea>
  <DataArea><Acknowledge><AccountingEntityID>3555</AccountingEntityID>
    <OriginalApplicationArea><Sender><LogicalID>lid://bodflow.hub</LogicalID></Sender><CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime><BODID>{original}</BODID></OriginalApplicationArea>
    <ResponseCriteria><ResponseExpression actionCode="{response}"/>{status}</ResponseCriteria></Acknowledge>
    <CustomerPartyMaster><PartyIDs><ID accountingEntity="3555" variationID="1">{id}</ID></PartyIDs><Name>Acme</Name></CustomerPartyMaster>
  </DataArea></AcknowledgeCustomerPartyMaster>"#
    )
}

fn process_sent(report: &Report) -> Option<String> {
    let row = report
        .outputs
        .iter()
        .find(|o| o.kind == "ProcessCustomerPartyMaster")?;
    assert_eq!(row.to, "lid://erp");
    Some(row.seq.to_string())
}

fn promotion_of(p: &Pipeline, hub: &str) -> Option<bodflow::store::PromotionState> {
    p.store.record(hub).unwrap().unwrap().promotion
}

/// Prospect → no Process; Customer → one Process, awaiting; no second one while waiting;
/// Accepted links the ERP's number; a later Modified for the same Process replaces it; the
/// ERP's Syncs then update the account; unknown or foreign correlations stay rejected.
#[test]
fn a_customer_is_promoted_once_and_the_acknowledge_links_the_assigned_number() {
    let p = pipeline(PROMOTION);
    let prospect = run(
        &p,
        &typed_account("lid://crm", "CRM-1", 1, "Prospect"),
        "crm-1",
    );
    let hub = prospect.record.clone().unwrap();
    assert!(
        prospect.outputs.is_empty(),
        "the ERP gets no Sync Add: {:?}",
        prospect.outputs
    );
    assert!(
        prospect
            .decisions
            .iter()
            .any(|d| d == "not sent to ERP: the system of record receives accounts by promotion"),
        "{:?}",
        prospect.decisions
    );
    assert!(promotion_of(&p, &hub).is_none());

    let customer = run(
        &p,
        &typed_account("lid://crm", "CRM-1", 2, "customer"),
        "crm-2",
    );
    assert!(
        process_sent(&customer).is_some(),
        "{:?}",
        customer.decisions
    );
    let state = promotion_of(&p, &hub).unwrap();
    assert_eq!(state.status.as_str(), "awaiting_acknowledgement");
    let process_bod = state.bod_id.clone();
    assert!(customer.decisions.iter().any(|d| d.contains(&process_bod)));

    let again = run(
        &p,
        &typed_account("lid://crm", "CRM-1", 3, "Customer").replace("Acme", "Acme AG"),
        "crm-3",
    );
    assert_eq!(again.action, Some(Action::Updated));
    assert!(
        process_sent(&again).is_none(),
        "not promoted twice while awaiting"
    );
    assert!(
        again.decisions.iter().any(|d| d.contains("still awaits")),
        "{:?}",
        again.decisions
    );

    // Only the application the Process went to may answer it.
    let foreign = run(
        &p,
        &acknowledge("lid://crm", &process_bod, "Accepted", "X-1", None),
        "ack-crm",
    );
    assert_eq!(
        foreign.error.as_ref().map(|e| e.code),
        Some("unknown_correlation")
    );
    let unknown = run(
        &p,
        &acknowledge("lid://erp", "nobody-sent-this", "Accepted", "X-1", None),
        "ack-unknown",
    );
    assert_eq!(
        unknown.error.as_ref().map(|e| e.code),
        Some("unknown_correlation")
    );

    let accepted = run(
        &p,
        &acknowledge("lid://erp", &process_bod, "Accepted", "E-500", None),
        "ack-1",
    );
    assert_eq!(
        (accepted.outcome, accepted.action),
        (Outcome::Applied, Some(Action::Linked)),
        "{:?}",
        accepted
    );
    assert_eq!(accepted.record.as_deref(), Some(hub.as_str()));
    let record = p.store.record(&hub).unwrap().unwrap();
    let xref = record.xref_for("lid://erp").unwrap();
    assert_eq!(
        (xref.accounting_entity.as_str(), xref.id.as_str()),
        ("3555", "E-500")
    );
    assert_eq!(
        record.promotion.as_ref().unwrap().status.as_str(),
        "promoted"
    );

    let modified = run(
        &p,
        &acknowledge("lid://erp", &process_bod, "Modified", "E-501", None),
        "ack-2",
    );
    assert_eq!(modified.action, Some(Action::Linked));
    assert!(
        modified
            .decisions
            .iter()
            .any(|d| d.contains("changed from E-500 to E-501")),
        "{:?}",
        modified.decisions
    );
    let key = |id: &str| bodflow::store::XrefKey {
        kind: Kind::Account,
        application: "lid://erp".into(),
        accounting_entity: "3555".into(),
        id: id.into(),
    };
    assert_eq!(p.store.resolve(&key("E-500")).unwrap(), None);
    assert_eq!(
        p.store.resolve(&key("E-501")).unwrap().as_deref(),
        Some(hub.as_str())
    );

    // The ERP then publishes the account: an update of the promoted record, not a parked
    // (match_only) document.
    let sync = account("lid://erp", "E-501", 2, Some("E-501"), None).replace(
        "<Sync>",
        "<Sync><AccountingEntityID>3555</AccountingEntityID>",
    );
    let erp = run(&p, &sync, "erp-1");
    assert_eq!(
        (erp.outcome, erp.action),
        (Outcome::Applied, Some(Action::Updated)),
        "{:?}",
        erp.decisions
    );
    // A promoted account is not promoted again; changes now flow to the ERP as Syncs.
    let change = run(
        &p,
        &typed_account("lid://crm", "CRM-1", 4, "Customer"),
        "crm-4",
    );
    assert!(process_sent(&change).is_none());
    assert!(change
        .outputs
        .iter()
        .any(|o| o.kind == "SyncCustomerPartyMaster" && o.to == "lid://erp"));

    let xml = validate_outbox(&p);
    let process = &xml["ProcessCustomerPartyMaster"];
    assert_eq!(process.len(), 1);
    assert!(process[0].contains(r#"<Process acknowledgeCode="Always">"#));
    assert!(process[0].contains(&format!("<BODID>{process_bod}</BODID>")));
    assert!(
        process[0].contains(r#"<ID accountingEntity="3555" lid="lid://erp"/>"#),
        "{}",
        process[0]
    );
    assert!(process[0].contains(r#"schemeName="bodflow.HubID""#));
}

/// Rejected: status `promotion_rejected` with the reason; the next change promotes again.
#[test]
fn a_rejected_promotion_is_recorded_with_its_reason_and_retried_on_the_next_change() {
    let p = pipeline(PROMOTION);
    let created = run(
        &p,
        &typed_account("lid://crm", "CRM-2", 1, "Customer"),
        "crm-1",
    );
    let hub = created.record.clone().unwrap();
    assert!(
        process_sent(&created).is_some(),
        "a new Customer is promoted at once"
    );
    let first = promotion_of(&p, &hub).unwrap().bod_id;
    let rejected = run(
        &p,
        &acknowledge(
            "lid://erp",
            &first,
            "Rejected",
            "",
            Some("credit_check_failed"),
        ),
        "ack-r",
    );
    assert_eq!(
        (rejected.outcome, rejected.action),
        (Outcome::Applied, Some(Action::Updated)),
        "{:?}",
        rejected
    );
    let state = promotion_of(&p, &hub).unwrap();
    assert_eq!(state.status.as_str(), "promotion_rejected");
    assert_eq!(state.reason.as_deref(), Some("credit_check_failed"));
    assert!(p
        .store
        .record(&hub)
        .unwrap()
        .unwrap()
        .xref_for("lid://erp")
        .is_none());

    let retry = run(
        &p,
        &typed_account("lid://crm", "CRM-2", 2, "Customer").replace("Acme", "Acme Corp"),
        "crm-2",
    );
    assert!(process_sent(&retry).is_some(), "{:?}", retry.decisions);
    let second = promotion_of(&p, &hub).unwrap();
    assert_eq!(second.status.as_str(), "awaiting_acknowledgement");
    assert_ne!(second.bod_id, first);
    validate_outbox(&p);
}
