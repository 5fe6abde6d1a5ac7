//! Pipeline behaviour through the library API, on a real temporary sled store: message-id
//! idempotency and its deliberate exceptions, group commit, contacts before accounts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;

use bodflow::config::Config;
use bodflow::pipeline::{Input, Outcome, Pipeline};
use bodflow::store::Store;

mod common;

const CONFIG: &str = r#"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "LN"
logical_id = "lid://ln"
country_code_format = "iso3"
default_record_owner = "U-ADMIN"
default_account = "ORPHANS"
[[applications]]
name = "CRM"
logical_id = "lid://crm"
"#;

fn pipeline() -> Pipeline {
    pipeline_with(CONFIG)
}

/// A pipeline with `config` on a store of its own.
fn pipeline_with(config: &str) -> Pipeline {
    pipeline_on(config, &Arc::new(Store::temporary().unwrap()))
}

/// A pipeline with `config` on `store` (a store that outlives a configuration change).
fn pipeline_on(config: &str, store: &Arc<Store>) -> Pipeline {
    Pipeline::new(
        Arc::new(Config::from_toml(config, "test").unwrap()),
        store.clone(),
    )
    .unwrap()
}

/// The hub record `id` (a report's `record`), which must be stored.
fn stored(p: &Pipeline, id: Option<&str>) -> bodflow::store::HubRecord {
    p.store.record(id.expect("a record id")).unwrap().unwrap()
}

/// [`CONFIG`] with LN inactive: its documents park.
fn inactive_ln() -> String {
    CONFIG.replace("name = \"LN\"\n", "name = \"LN\"\nactive = false\n")
}

fn account(id: &str, name: &str, country: &str) -> String {
    format!(
        r#"<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender>
    <CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime><BODID>b-{id}</BODID></ApplicationArea>
  <DataArea><Sync><AccountingEntityID>1</AccountingEntityID></Sync>
    <CustomerPartyMaster><PartyIDs><ID variationID="1">{id}</ID></PartyIDs><Name>{name}</Name>
      <Location><Address><CountryCode>{country}</CountryCode></Address></Location>
    </CustomerPartyMaster></DataArea></SyncCustomerPartyMaster>"#
    )
}

fn contact(id: &str, employer: &str) -> String {
    format!(
        r#"<SyncContactMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender>
    <CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime></ApplicationArea>
  <DataArea><Sync><AccountingEntityID>1</AccountingEntityID></Sync>
    <ContactMaster><IDs><ID>{id}</ID></IDs><GivenName>Ada</GivenName><FamilyName>Byron</FamilyName>
      <EmployerReference><DocumentID><ID>{employer}</ID></DocumentID></EmployerReference>
    </ContactMaster></DataArea></SyncContactMaster>"#
    )
}

fn input<'a>(bytes: &'a [u8], message_id: &'a str, retry: bool) -> Input<'a> {
    Input {
        message_id: Some(message_id),
        retry,
        ..Input::file(bytes, "test", Utc::now())
    }
}

#[test]
fn a_rejected_message_id_is_a_duplicate_unless_retried_on_purpose() {
    let p = pipeline();
    let bad = account("C1", "Acme", "XXX");
    let first = p.process(&input(bad.as_bytes(), "m-1", false)).unwrap();
    assert_eq!(first.outcome, Outcome::Rejected);
    assert_eq!(first.error.as_ref().unwrap().code, "unknown_country_code");
    assert_eq!(first.outputs.len(), 1, "ConfirmBOD for the OnError default");

    let again = p.process(&input(bad.as_bytes(), "m-1", false)).unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(again.outputs.is_empty(), "a redelivery re-emits nothing");

    // Replayed unchanged: rejected again, its ConfirmBOD with a BODID of its own (the
    // message id's second run).
    let replayed = p.process(&input(bad.as_bytes(), "m-1", true)).unwrap();
    assert_eq!(replayed.outcome, Outcome::Rejected);
    assert_eq!(replayed.outputs.len(), 1);
    assert_ne!(replayed.outputs[0].bod_id, first.outputs[0].bod_id);
    assert_eq!(p.store.marker("m-1").unwrap().unwrap().run, 1);

    // A corrected document replayed from the dead letters under the same message id.
    let fixed = account("C1", "Acme", "DEU");
    let retried = p.process(&input(fixed.as_bytes(), "m-1", true)).unwrap();
    assert_eq!(retried.outcome, Outcome::Applied);
    assert_eq!(p.store.marker("m-1").unwrap().unwrap().run, 2);
    let ids: std::collections::BTreeSet<&str> = [&first, &replayed, &retried]
        .iter()
        .flat_map(|r| r.outputs.iter().map(|o| o.bod_id.as_str()))
        .collect();
    assert_eq!(
        ids.len(),
        first.outputs.len() + replayed.outputs.len() + retried.outputs.len(),
        "every run's outputs have BODIDs of their own"
    );
    let once_more = p.process(&input(fixed.as_bytes(), "m-1", true)).unwrap();
    assert_eq!(
        once_more.outcome,
        Outcome::Duplicate,
        "applied ids are final even for retries"
    );
}

/// A refused value as long as the document is echoed in part: neither the rejection's message
/// nor the ConfirmBOD grows with it (quoted, then escaped as XML, 100,000 `"` made a reply of
/// about 1.3 MB).
#[test]
fn a_refused_value_is_echoed_in_part_however_long_it_is() {
    let p = pipeline();
    let doc = account("C1", "Alpha", "ITA").replace(
        "<LogicalID>lid://ln</LogicalID>",
        &format!(
            "<LogicalID>lid://ln</LogicalID><ConfirmationCode>{}</ConfirmationCode>",
            "&quot;".repeat(100_000)
        ),
    );
    let r = p.process(&input(doc.as_bytes(), "m-long", false)).unwrap();
    assert_eq!(r.outcome, Outcome::Rejected);
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.code, "invalid_code");
    assert!(
        e.message.len() <= bodflow::bod::MAX_MESSAGE,
        "{}",
        e.message.len()
    );
    assert!(e.message.ends_with('…'));
    assert_eq!(r.outputs.len(), 1, "the ConfirmBOD");
    let (_, row) = p
        .store
        .outbox()
        .map(|r| r.unwrap())
        .find(|(_, row)| row.kind == "ConfirmBOD")
        .unwrap();
    assert!(row.xml.len() < 32 * 1024, "{} bytes", row.xml.len());
    assert!(row.xml.contains(&format!("{}…", "&quot;".repeat(100))));
    assert!(100_000 > 3 * row.xml.len());
}

/// A rejection names the element the refused value is in, wherever the reader found it: the
/// second of two locations, a street name that became an address line, the second
/// communication, a contact's address under `Location`, an employer under `PartyIDs`.
#[test]
fn a_rejection_names_the_element_the_value_came_from() {
    let p = pipeline();
    let long = "x".repeat(300);
    let noun = "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster";
    let in_account = |body: &str| {
        account("C1", "Alpha", "ITA").replace(
            "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>",
            body,
        )
    };
    let contact_noun = "/SyncContactMaster/DataArea/ContactMaster";
    let in_contact = |body: &str| {
        contact("P1", "C1").replace(
            "<GivenName>Ada</GivenName>",
            &format!("{body}<GivenName>Ada</GivenName>"),
        )
    };
    let cases = [
        (
            in_account(&format!(
                "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>\
                 <Location><Address><CityName>{long}</CityName></Address></Location>"
            )),
            format!("{noun}/Location[2]/Address/CityName"),
        ),
        (
            in_account(&format!(
                "<Location><Address><StreetName>{long}</StreetName><CountryCode>ITA</CountryCode></Address></Location>"
            )),
            format!("{noun}/Location/Address/StreetName"),
        ),
        (
            in_account(&format!(
                "<Location><Address><AddressLine>a</AddressLine><AddressLine>{long}</AddressLine>\
                 <CountryCode>ITA</CountryCode></Address></Location>"
            )),
            format!("{noun}/Location/Address/AddressLine[2]"),
        ),
        (
            in_account(
                "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>\
                 <Communication><ChannelCode>EMail</ChannelCode><URI>a@b.it</URI></Communication>\
                 <Communication><ChannelCode>EMail</ChannelCode><URI>not an address</URI></Communication>",
            ),
            format!("{noun}/Communication[2]/URI"),
        ),
        (
            in_contact(
                "<Location><Address><CountryCode>XQZ</CountryCode></Address></Location>",
            ),
            format!("{contact_noun}/Location/Address/CountryCode"),
        ),
        (
            contact("P1", "C1").replace(
                "<EmployerReference><DocumentID><ID>C1</ID></DocumentID></EmployerReference>",
                &format!("<EmployerReference><PartyIDs><ID>{long}</ID></PartyIDs></EmployerReference>"),
            ),
            format!("{contact_noun}/EmployerReference/PartyIDs/ID"),
        ),
        // An empty ID before it still counts in the position.
        (
            in_account(&format!(
                "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>\
                 <AccountIDs><ID/><ID>{long}</ID></AccountIDs>"
            )),
            format!("{noun}/AccountIDs/ID[2]"),
        ),
        // The account type read from a classification is refused there, not as `@role`.
        (
            in_account(&format!(
                "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>\
                 <Classification type=\"AccountType\"><Codes><Code>{long}</Code></Codes></Classification>"
            )),
            format!("{noun}/Classification/Codes/Code"),
        ),
        (
            in_account(&format!(
                "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>\
                 <Classification><Code>A</Code></Classification>\
                 <Classification><Codes><Code>B</Code><Code>{long}</Code></Codes></Classification>"
            )),
            format!("{noun}/Classification[2]/Codes/Code[2]"),
        ),
        (
            in_contact(&format!("<Classification><Code>{long}</Code></Classification>")),
            format!("{contact_noun}/Classification/Code"),
        ),
        // The name picked (no language: the application's is not among them) is the second.
        (
            account("C1", "Alpha", "ITA").replace(
                "<Name>Alpha</Name>",
                &format!("<Name languageID=\"xx-XX\">Alpha</Name><Name>{long}</Name>"),
            ),
            format!("{noun}/Name[2]"),
        ),
        // Street and number make one line: the number that does not fit is refused, not the
        // street that does; a post office box leaves room for `PO Box `.
        (
            in_account(&format!(
                "<Location><Address><StreetName>{}</StreetName><BuildingNumber>{}</BuildingNumber>\
                 <CountryCode>ITA</CountryCode></Address></Location>",
                "s".repeat(200),
                "1".repeat(60)
            )),
            format!("{noun}/Location/Address/BuildingNumber"),
        ),
        // A street that fills the line leaves no room for any number.
        (
            in_account(&format!(
                "<Location><Address><StreetName>{}</StreetName><BuildingNumber>5</BuildingNumber>\
                 <CountryCode>ITA</CountryCode></Address></Location>",
                "s".repeat(255)
            )),
            format!("{noun}/Location/Address/BuildingNumber"),
        ),
        (
            in_account(&format!(
                "<Location><Address><PostOfficeBox>{}</PostOfficeBox>\
                 <CountryCode>ITA</CountryCode></Address></Location>",
                "9".repeat(250)
            )),
            format!("{noun}/Location/Address/PostOfficeBox"),
        ),
        // A unit or floor given as a number is written after its label; one that begins with
        // a word is its own label and has the whole line. A building's name has its own line.
        (
            in_account(&format!(
                "<Location><Address type=\"Discrete\"><Unit>{}</Unit>\
                 <CountryCode>ITA</CountryCode></Address></Location>",
                "4".repeat(251)
            )),
            format!("{noun}/Location/Address/Unit"),
        ),
        (
            in_account(&format!(
                "<Location><Address type=\"Discrete\"><Floor>Level {}</Floor>\
                 <CountryCode>ITA</CountryCode></Address></Location>",
                "2".repeat(250)
            )),
            format!("{noun}/Location/Address/Floor"),
        ),
        (
            in_account(&format!(
                "<Location><Address type=\"Text\"><CountryCode>ITA</CountryCode></Address>\
                 <Address type=\"Discrete\"><BuildingName>{long}</BuildingName></Address></Location>"
            )),
            format!("{noun}/Location/Address[2]/BuildingName"),
        ),
        (
            in_account(&format!(
                "<Location><Address><AttentionOfName>{long}</AttentionOfName>\
                 <CountryCode>ITA</CountryCode></Address></Location>"
            )),
            format!("{noun}/Location/Address/AttentionOfName"),
        ),
        // Every reply repeats the BODID: refused when it could not come back whole.
        (
            account("C1", "Alpha", "ITA").replace("<BODID>b-C1</BODID>", &format!("<BODID>{long}</BODID>")),
            "/SyncCustomerPartyMaster/ApplicationArea/BODID".to_string(),
        ),
        // Checked like the IDs they are (an external number may be a match key; an employer's
        // entity is part of the key it waits under).
        (
            account("C1", "Alpha", "ITA").replace(
                "<ID variationID=\"1\">C1</ID>",
                &format!("<ID variationID=\"1\">C1</ID><ID schemeName=\"External\">{long}</ID>"),
            ),
            format!("{noun}/PartyIDs/ID[2]"),
        ),
        (
            contact("P1", "C1").replace(
                "<DocumentID><ID>C1</ID>",
                &format!("<DocumentID><ID accountingEntity=\"{}\">C1</ID>", "E".repeat(23)),
            ),
            format!("{contact_noun}/EmployerReference/DocumentID/ID/@accountingEntity"),
        ),
    ];
    for (i, (doc, path)) in cases.iter().enumerate() {
        let r = p
            .process(&input(doc.as_bytes(), &format!("m-path-{i}"), false))
            .unwrap();
        assert_eq!(r.outcome, Outcome::Rejected, "{path}: {:?}", r.decisions);
        let e = r.error.unwrap();
        assert_eq!(e.path.as_deref(), Some(path.as_str()), "{}", e.message);
        // What is left of the line for it, not the line's own limit.
        if path.ends_with("/PostOfficeBox") {
            assert!(
                e.message.contains("longer than 248 characters (what is left of the 255-character address line it shares with \"PO Box \")"),
                "{}",
                e.message
            );
        }
        if path.ends_with("/Unit") {
            assert!(
                e.message.contains("longer than 250 characters (what is left of the 255-character address line it shares with \"Unit \")"),
                "{}",
                e.message
            );
        }
        if path.ends_with("/Floor") {
            assert!(
                e.message.contains("longer than 255 characters") && !e.message.contains("shares"),
                "{}",
                e.message
            );
        }
        if path.ends_with("/BuildingNumber") {
            // 255 - 201 after the 200-character street; nothing after one of 255.
            let room = if doc.contains(&"s".repeat(255)) {
                0
            } else {
                54
            };
            assert!(
                e.message
                    .contains(&format!("longer than {room} characters")),
                "{}",
                e.message
            );
            assert!(
                e.message.contains(
                    " characters (what is left of the 255-character address line it shares with StreetName)"
                ),
                "{}",
                e.message
            );
        }
    }
}

/// A `Discrete` view alone keeps every part the sender gave, as the hub's address lines (and
/// the `AttentionOfName` beside them); with a `Text` view that has lines, those are the
/// address.
#[test]
fn a_discrete_address_alone_keeps_its_building_unit_floor_box_and_attention() {
    let p = pipeline();
    let with_location = |id: &str, location: &str| {
        account(id, "Alpha", "ITA").replace(
            "<Location><Address><CountryCode>ITA</CountryCode></Address></Location>",
            location,
        )
    };
    let cases = [
        (
            "<Location><Address type=\"Discrete\"><AttentionOfName>Accounts payable</AttentionOfName>\
             <BuildingName>Rose House</BuildingName>\
             <StreetName>Via Roma</StreetName><BuildingNumber>12</BuildingNumber>\
             <Unit>4</Unit><Floor>2</Floor><PostOfficeBox>17</PostOfficeBox>\
             <CityName>Torino</CityName><CountryCode>ITA</CountryCode></Address></Location>",
            vec!["Rose House", "Via Roma 12", "Unit 4", "Floor 2", "PO Box 17"],
        ),
        // Labels the sender wrote are not doubled, nor added to several words.
        (
            "<Location><Address type=\"Discrete\"><StreetName>Via Roma</StreetName>\
             <Unit>Suite 200</Unit><Floor>3rd floor</Floor><PostOfficeBox>P.O. Box 17</PostOfficeBox>\
             <CountryCode>ITA</CountryCode></Address></Location>",
            vec!["Via Roma", "Suite 200", "3rd floor", "P.O. Box 17"],
        ),
        // One word (a letter, a level below ground) gets its label.
        (
            "<Location><Address type=\"Discrete\"><Unit>B</Unit><Floor>-1</Floor>\
             <CountryCode>ITA</CountryCode></Address></Location>",
            vec!["Unit B", "Floor -1"],
        ),
        // The preferred `Text` view has no lines: the parts come from its `Discrete` sibling,
        // the city from the preferred view.
        (
            "<Location><Address type=\"Text\"><Preference><Indicator>true</Indicator></Preference>\
             <CityName>Torino</CityName><CountryCode>ITA</CountryCode></Address>\
             <Address type=\"Discrete\"><BuildingName>Rose House</BuildingName><Floor>3</Floor>\
             <CityName>Turin</CityName></Address></Location>",
            vec!["Rose House", "Floor 3"],
        ),
        // A `Text` view's lines are the address; the `Discrete` view's parts say the same.
        (
            "<Location><Address type=\"Text\"><AddressLine sequence=\"1\">Rose House, Via Roma 12</AddressLine>\
             <CityName>Torino</CityName><CountryCode>ITA</CountryCode></Address>\
             <Address type=\"Discrete\"><BuildingName>Rose House</BuildingName>\
             <StreetName>Via Roma</StreetName><BuildingNumber>12</BuildingNumber></Address></Location>",
            vec!["Rose House, Via Roma 12"],
        ),
    ];
    for (i, (location, lines)) in cases.iter().enumerate() {
        let doc = with_location(&format!("D{i}"), location);
        assert_ne!(doc, account(&format!("D{i}"), "Alpha", "ITA"), "case {i}");
        let r = p
            .process(&input(doc.as_bytes(), &format!("m-discrete-{i}"), false))
            .unwrap();
        assert_eq!(r.outcome, Outcome::Applied, "case {i}: {:?}", r.decisions);
        let address = stored(&p, r.record.as_deref()).fields.address.unwrap();
        assert_eq!(address.lines, *lines, "case {i}");
        assert_eq!(address.country.as_deref(), Some("IT"), "case {i}");
        if [0, 3, 4].contains(&i) {
            assert_eq!(address.city.as_deref(), Some("Torino"), "case {i}");
        }
        let attention = (i == 0).then_some("Accounts payable");
        assert_eq!(address.attention.as_deref(), attention, "case {i}");
    }
}

/// A link sends the other applications the record only when it changed what they have: a
/// second application's copy of an account that adds nothing is linked (and its waiting
/// contacts follow) without a Sync back to the first; one that brings a value it masters is
/// sent on.
#[test]
fn a_link_that_changes_nothing_is_not_sent_on() {
    let p = pipeline_with(&CONFIG.replace(
        "logical_id = \"lid://crm\"\n",
        r#"logical_id = "lid://crm"
default_record_owner = "U-ADMIN"
default_account = "CRM-ORPHANS"
create_policy = "match_or_create"
match_on = ["account_number"]
masters = ["communication"]
"#,
    ));
    let ln = |id: &str| account(id, "Alpha", "ITA");
    // The CRM's copy of LN's account `id` under its own ID, LN's number typed in, with
    // `extra` in the noun.
    let crm = |crm_id: &str, id: &str, extra: &str| {
        account(crm_id, "Alpha", "IT")
            .replace("lid://ln", "lid://crm")
            .replace(
                "</PartyIDs>",
                &format!("</PartyIDs><AccountIDs><ID>{id}</ID></AccountIDs>{extra}"),
            )
    };
    let run = |doc: String, id: &str| p.process(&input(doc.as_bytes(), id, false)).unwrap();
    for (i, id) in ["C1", "C2"].iter().enumerate() {
        let created = run(ln(id), &format!("m-ln-{id}"));
        assert_eq!(created.outcome, Outcome::Applied, "{:?}", created.decisions);
        let to: Vec<&str> = created.outputs.iter().map(|o| o.to.as_str()).collect();
        assert_eq!(to, ["lid://crm"], "{i}: the new account goes to the CRM");
    }
    // A contact of the CRM's, waiting for its account K1 on the CRM's default account.
    let waiting = run(
        contact("P1", "K1").replace("lid://ln", "lid://crm"),
        "m-crm-p1",
    );
    assert_eq!(waiting.outcome, Outcome::Applied, "{:?}", waiting.decisions);

    let same = run(crm("K1", "C1", ""), "m-crm-k1");
    assert_eq!(same.outcome, Outcome::Applied, "{:?}", same.decisions);
    assert!(
        same.decisions.iter().any(|d| d.text
            == format!(
                "{} unchanged by the link: not sent to other applications",
                same.record.as_deref().unwrap()
            )),
        "{:?}",
        same.decisions
    );
    let record = stored(&p, same.record.as_deref());
    assert_eq!(record.xrefs.len(), 2);
    // No account to LN; the link still moves the contact that waited for K1 to it, and LN
    // learns of that contact, now under an account it knows.
    let sent: Vec<(&str, &str)> = same
        .outputs
        .iter()
        .map(|o| (o.kind.as_str(), o.to.as_str()))
        .collect();
    assert_eq!(sent, [("SyncContactMaster", "lid://ln")]);
    assert!(
        same.decisions.iter().any(|d| d.contains("re-linked")),
        "{:?}",
        same.decisions
    );
    let contact = stored(&p, waiting.record.as_deref());
    assert_eq!(contact.account, same.record);

    let phone = "<Communication><ChannelCode>Phone</ChannelCode><DialNumber>+39 011 555 0100</DialNumber></Communication>";
    let more = run(crm("K2", "C2", phone), "m-crm-k2");
    assert_eq!(more.outcome, Outcome::Applied, "{:?}", more.decisions);
    assert!(
        !more
            .decisions
            .iter()
            .any(|d| d.contains("unchanged by the link")),
        "{:?}",
        more.decisions
    );
    let to: Vec<&str> = more.outputs.iter().map(|o| o.to.as_str()).collect();
    assert_eq!(to, ["lid://ln"], "the phone the CRM masters goes to LN");
}

#[test]
fn group_commit_sees_earlier_documents_of_the_same_group() {
    let p = pipeline();
    let a = account("C2", "Beta", "FRA");
    let prepared = vec![
        p.prepare(&input(a.as_bytes(), "m-a", false)),
        p.prepare(&input(a.as_bytes(), "m-a", false)),
        p.prepare(&input(contact("P1", "C2").as_bytes(), "m-c", false)),
    ];
    let reports = p.commit_batch(&prepared).unwrap();
    let outcomes: Vec<Outcome> = reports.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Applied, Outcome::Duplicate, Outcome::Applied]
    );
    let contact = stored(&p, reports[2].record.as_deref());
    assert_eq!(contact.account.as_deref(), reports[0].record.as_deref());
}

#[test]
fn a_contact_before_its_account_waits_on_the_default_account_and_is_relinked() {
    let p = pipeline();
    let early = p
        .process(&input(contact("P9", "C9").as_bytes(), "m-1", false))
        .unwrap();
    let con = stored(&p, early.record.as_deref());
    let placeholder = stored(&p, con.account.as_deref());
    assert!(placeholder.placeholder);
    assert_eq!(
        placeholder.fields.identity.account_number.as_deref(),
        Some("ORPHANS")
    );
    assert_eq!(con.intended_parent.as_ref().unwrap().id, "C9");

    let acc = p
        .process(&input(
            account("C9", "Gamma", "AUT").as_bytes(),
            "m-2",
            false,
        ))
        .unwrap();
    let con = stored(&p, Some(&con.id));
    assert_eq!(con.account, acc.record, "re-linked to the arrived account");
    assert!(con.intended_parent.is_none());
    assert!(acc.decisions.iter().any(|d| d.contains("re-linked")));
    // The CRM hears of the account before the re-linked contact.
    let kinds: Vec<&str> = acc.outputs.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, vec!["SyncCustomerPartyMaster", "SyncContactMaster"]);
}

#[test]
fn parked_documents_of_a_reactivated_application_are_released_once() {
    let store = Arc::new(Store::temporary().unwrap());
    let p = pipeline_on(&inactive_ln(), &store);
    let doc = account("C5", "Delta", "ITA");
    let parked = p.process(&input(doc.as_bytes(), "m-5", false)).unwrap();
    assert_eq!(parked.outcome, Outcome::Parked);
    assert!(parked.outputs.is_empty());
    assert_eq!(store.parked().count(), 1);
    let again = p.process(&input(doc.as_bytes(), "m-5", false)).unwrap();
    assert_eq!(
        again.outcome,
        Outcome::Duplicate,
        "a redelivery does not park twice"
    );
    assert_eq!(store.parked().count(), 1);
    assert!(
        p.release_reactivated(Utc::now()).0.is_empty(),
        "still inactive"
    );

    let active = pipeline_on(CONFIG, &store);
    let (released, failed) = active.release_reactivated(Utc::now());
    assert_eq!(failed, 0);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].outcome, Outcome::Applied);
    assert_eq!(
        released[0].message_id, "m-5",
        "released under its own message id"
    );
    assert_eq!(store.parked().count(), 0);
    assert!(store
        .record(released[0].record.as_deref().unwrap())
        .unwrap()
        .is_some());
    assert!(active.release_reactivated(Utc::now()).0.is_empty());
    let redelivered = active
        .process(&input(doc.as_bytes(), "m-5", false))
        .unwrap();
    assert_eq!(redelivered.outcome, Outcome::Duplicate);
}

/// A delivery's document parked for an inactive application is checked in full only when it
/// is released; should that reject it, its parked row — its only copy, the delivery was acked
/// — becomes a dead-letter row like a rejected delivery's. A parked row that cannot be read
/// stays where it is and does not stop the others (`release_reactivated` is what the service
/// runs when it starts).
#[test]
fn a_released_delivery_that_is_rejected_is_dead_lettered_and_a_bad_row_holds_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let invalid = account("C9", "Beta", "XXX");
    {
        let store = Arc::new(Store::open(&path).unwrap());
        let p = pipeline_on(&inactive_ln(), &store);
        for (id, doc, source) in [
            ("m-a", account("C8", "Alpha", "ITA"), "amqp"),
            ("m-b", invalid.clone(), "amqp"),
            ("m-c", account("C10", "Gamma", "DEU"), "amqp"),
            ("m-d", account("C11", "Delta", "XXX"), "fixtures/c11.xml"),
        ] {
            let r = p
                .process(&Input {
                    source,
                    reply_to: Some("amq.gen-reply").filter(|_| id == "m-b"),
                    ..input(doc.as_bytes(), id, false)
                })
                .unwrap();
            assert_eq!(r.outcome, Outcome::Parked, "{id}");
        }
        store.flush().unwrap();
    }
    {
        // The store's own layout: `p`, big-endian sequence. The first row becomes unreadable.
        let db = common::open_sled(&path);
        let hub = db.open_tree("hub").unwrap();
        let (first, _) = hub.scan_prefix(b"p").next().unwrap().unwrap();
        hub.insert(first, b"not a parked row".as_slice()).unwrap();
        db.flush().unwrap();
    }
    // Just closed by this process: sled's own threads may hold its lock a moment longer.
    let store = Arc::new(common::open_store(&path));
    let active = pipeline_on(CONFIG, &store);
    let (released, failed) = active.release_reactivated(Utc::now());
    assert_eq!(failed, 1, "the unreadable row");
    let outcomes: Vec<(&str, Outcome)> = released
        .iter()
        .map(|r| (r.message_id.as_str(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("m-b", Outcome::Rejected),
            ("m-c", Outcome::Applied),
            ("m-d", Outcome::Rejected)
        ]
    );
    assert_eq!(store.parked().count(), 1, "the unreadable row stays");
    let error = released[0].error.clone().unwrap();
    let dead: Vec<_> = store
        .outbox()
        .map(|r| r.unwrap().1)
        .filter_map(|row| Some((row.correlation_id.clone(), row.dead_letter?)))
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "the delivery's document only: a file stays a file"
    );
    let (message_id, row) = &dead[0];
    assert_eq!(message_id, "m-b");
    assert_eq!(row.delivered.payload, invalid.as_bytes(), "byte for byte");
    // Its ConfirmBOD goes where the delivery asked for replies, as it would have when it came;
    // the file's, which had no `reply_to`, to its sender's queue.
    let confirms: Vec<_> = store
        .outbox()
        .map(|r| r.unwrap().1)
        .filter(|row| row.kind == "ConfirmBOD")
        .map(|row| (row.correlation_id, row.to, row.reply_to))
        .collect();
    assert_eq!(
        confirms,
        [
            (
                "m-b".into(),
                "lid://ln".into(),
                Some("amq.gen-reply".into())
            ),
            ("m-d".into(), "lid://ln".into(), None)
        ]
    );
    assert_eq!(
        (row.stage.as_str(), row.code.as_str(), row.path.as_deref()),
        (error.stage.as_str(), error.code, error.path.as_deref())
    );
}

/// A parked delivery keeps its `reply_to` when it parks again, and a released document whose
/// sender is no longer an application gets no reply at all: its `reply_to` is long gone, most
/// likely, and there is no application queue to fall back on.
#[test]
fn a_parked_reply_to_survives_a_second_park_and_is_dropped_for_a_sender_no_longer_configured() {
    let store = Arc::new(Store::temporary().unwrap());
    let p = pipeline_on(&inactive_ln(), &store);
    let doc = account("C12", "Epsilon", "XXX");
    let parked = p
        .process(&Input {
            source: "amqp",
            reply_to: Some("amq.gen-rpc"),
            ..input(doc.as_bytes(), "m-12", false)
        })
        .unwrap();
    assert_eq!(parked.outcome, Outcome::Parked);
    let row = store.parked().next().unwrap().unwrap();
    assert_eq!(row.reply_to.as_deref(), Some("amq.gen-rpc"));
    // Released while still inactive: parked again, with its reply_to.
    let again = p.release(&row, Utc::now()).unwrap();
    assert_eq!(again.outcome, Outcome::Parked);
    let row = store.parked().next().unwrap().unwrap();
    assert_eq!(row.reply_to.as_deref(), Some("amq.gen-rpc"));
    // LN is no longer configured: rejected (unknown sender), no ConfirmBOD anywhere.
    let without_ln = pipeline_on(&CONFIG.replace("lid://ln", "lid://erp"), &store);
    let released = without_ln.release(&row, Utc::now()).unwrap();
    assert_eq!(released.outcome, Outcome::Rejected);
    assert!(released.outputs.is_empty(), "{:?}", released.outputs);
    assert!(store.outbox().all(|r| r.unwrap().1.kind != "ConfirmBOD"));
}

#[test]
fn a_parked_iso_8859_1_document_is_released_with_the_bytes_it_came_with() {
    let store = Arc::new(Store::temporary().unwrap());
    let p = pipeline_on(&inactive_ln(), &store);
    // The real C# sender's encoding: `ü` is the single byte 0xFC.
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n{}",
        account("C6", "München GmbH", "DEU")
    );
    let latin1: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
    assert!(std::str::from_utf8(&latin1).is_err());
    let parked = p.process(&input(&latin1, "m-6", false)).unwrap();
    assert_eq!(parked.outcome, Outcome::Parked);
    let stored = store.parked().next().unwrap().unwrap();
    assert_eq!(stored.payload.0, latin1, "kept byte for byte");

    let active = pipeline_on(CONFIG, &store);
    let (released, failed) = active.release_reactivated(Utc::now());
    assert_eq!(failed, 0);
    assert_eq!(
        released[0].outcome,
        Outcome::Applied,
        "{:?}",
        released[0].error
    );
    let record = store
        .record(released[0].record.as_deref().unwrap())
        .unwrap()
        .unwrap();
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains("München GmbH"), "{json}");
}

#[test]
fn the_account_a_placeholder_stood_for_takes_it_over_and_is_then_a_record_like_any_other() {
    let config = CONFIG.replace(
        "default_account = \"ORPHANS\"\n",
        "default_account = \"ORPHANS\"\ncreate_policy = \"match_or_create\"\nmatch_on = [\"account_number\"]\n",
    );
    let p = pipeline_with(&config);
    let orphan = p
        .process(&input(contact("P1", "").as_bytes(), "m-1", false))
        .unwrap();
    let con = stored(&p, orphan.record.as_deref());
    let placeholder_id = con.account.clone().unwrap();
    assert!(stored(&p, Some(&placeholder_id)).placeholder);

    // LN's own catch-all account: its account number is the default account's.
    let real = account("C1", "Orphans Ltd", "AUT").replace(
        "</PartyIDs>",
        "</PartyIDs><AccountIDs><ID>ORPHANS</ID></AccountIDs>",
    );
    let linked = p.process(&input(real.as_bytes(), "m-2", false)).unwrap();
    assert_eq!(
        linked.record.as_deref(),
        Some(placeholder_id.as_str()),
        "{:?}",
        linked.decisions
    );
    let record = stored(&p, Some(&placeholder_id));
    assert!(!record.placeholder);
    assert_eq!(record.created_by, "lid://ln");
    assert!(
        linked
            .outputs
            .iter()
            .any(|o| o.kind == "SyncCustomerPartyMaster"),
        "announced like any account: {:?}",
        linked.outputs
    );
    // Later orphans go to it.
    let next = p
        .process(&input(contact("P2", "").as_bytes(), "m-3", false))
        .unwrap();
    let con = stored(&p, next.record.as_deref());
    assert_eq!(con.account.as_deref(), Some(placeholder_id.as_str()));
}

/// [`CONFIG`] with LN's accounts and contacts deleted hard.
fn hard_deletes() -> String {
    CONFIG.replace(
        "default_account = \"ORPHANS\"\n",
        "default_account = \"ORPHANS\"\n[applications.flows.CustomerPartyMaster]\ninbound = { create = true, update = true, delete = \"hard\" }\n[applications.flows.ContactMaster]\ninbound = { create = true, update = true, delete = \"hard\" }\n",
    )
}

/// `bod` with `actionCode` `action`.
fn with_action(bod: &str, action: &str) -> String {
    bod.replace(
        "<Sync>",
        &format!(
            r#"<Sync><ActionCriteria><ActionExpression actionCode="{action}"/></ActionCriteria>"#
        ),
    )
}

/// LN's account C7 at `variation`, with `actionCode` `action`.
fn c7_at(variation: u32, action: &str) -> String {
    with_action(
        &account("C7", "Epsilon", "AUT").replace(
            r#"variationID="1""#,
            &format!(r#"variationID="{variation}""#),
        ),
        action,
    )
}

#[test]
fn after_a_hard_delete_only_a_newer_variation_brings_the_record_back() {
    let p = pipeline_with(&hard_deletes());
    let at = c7_at;
    let created = p
        .process(&input(at(6, "Change").as_bytes(), "m-6", false))
        .unwrap();
    assert_eq!(created.outcome, Outcome::Applied);
    let deleted = p
        .process(&input(at(7, "Delete").as_bytes(), "m-7", false))
        .unwrap();
    assert_eq!(deleted.outcome, Outcome::Applied, "{:?}", deleted.decisions);
    assert!(p
        .store
        .record(created.record.as_deref().unwrap())
        .unwrap()
        .is_none());

    // Older than the delete (out of order, or replayed from the dead-letter queue): stale.
    let older = p
        .process(&input(at(5, "Change").as_bytes(), "m-5", false))
        .unwrap();
    assert_eq!(older.outcome, Outcome::Stale, "{:?}", older.decisions);
    assert!(older.outputs.is_empty());
    assert!(p.store.records().next().is_none(), "not created again");
    let same = p
        .process(&input(at(7, "Change").as_bytes(), "m-7b", false))
        .unwrap();
    assert_eq!(same.outcome, Outcome::Duplicate);

    // Newer: the application created it again.
    let again = p
        .process(&input(at(8, "Add").as_bytes(), "m-8", false))
        .unwrap();
    assert_eq!(again.outcome, Outcome::Applied);
    assert_ne!(again.record, created.record, "a new record");
    // And the key is live again: the guard works on its xref as usual.
    let older = p
        .process(&input(at(5, "Change").as_bytes(), "m-5b", false))
        .unwrap();
    assert_eq!(older.outcome, Outcome::Stale);
}

#[test]
fn a_hard_deleted_accounts_contacts_wait_for_it_and_follow_it_when_it_comes_back() {
    // CRM's default account is LN's account C7 (by its account number).
    let p = pipeline_with(&hard_deletes().replace(
        "logical_id = \"lid://crm\"\n",
        "logical_id = \"lid://crm\"\ndefault_account = \"LNCATCH\"\n",
    ));
    let at = |variation: u32, action: &str| {
        c7_at(variation, action).replace(
            "</PartyIDs>",
            "</PartyIDs><AccountIDs><ID>LNCATCH</ID></AccountIDs>",
        )
    };
    let run = |bod: String, id: &str| {
        let report = p.process(&input(bod.as_bytes(), id, false)).unwrap();
        assert_eq!(
            report.outcome,
            Outcome::Applied,
            "{id}: {:?}",
            report.decisions
        );
        report
    };
    let created = run(at(6, "Change"), "m-6");
    let ada = run(contact("P1", "C7"), "m-p1").record;
    let bob = run(contact("P2", "C7"), "m-p2").record;
    let cara = run(contact("Q1", "").replace("lid://ln", "lid://crm"), "m-q1").record;
    for contact in [&ada, &bob, &cara] {
        assert_eq!(stored(&p, contact.as_deref()).account, created.record);
    }
    // An index entry its contact does not agree with (say, left by an older version) moves
    // nobody.
    let other = run(account("C8", "Zeta", "AUT"), "m-c8").record;
    let dan = run(contact("P3", "C8"), "m-p3").record;
    p.store
        .transact(|tx| {
            tx.move_contact(dan.as_deref().unwrap(), None, created.record.as_deref());
            Ok(())
        })
        .unwrap();

    let deleted = run(at(7, "Delete"), "m-7");
    assert_eq!(
        stored(&p, dan.as_deref()).account,
        other,
        "stays on its account"
    );
    let announced: Vec<&str> = deleted.outputs.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(
        announced, ["SyncContactMaster"; 3],
        "the contacts' new employer to CRM (which never had the account to delete)"
    );
    for (contact, default) in [(&ada, "ORPHANS"), (&bob, "ORPHANS"), (&cara, "LNCATCH")] {
        let con = stored(&p, contact.as_deref());
        let kept_on = con.account.clone().expect("kept on a default account");
        assert_ne!(
            Some(&kept_on),
            created.record.as_ref(),
            "not the deleted account"
        );
        let placeholder = stored(&p, Some(&kept_on));
        assert!(placeholder.placeholder);
        assert_eq!(
            placeholder.fields.identity.account_number.as_deref(),
            Some(default),
            "its own application's default account"
        );
        let waits_for = con.intended_parent.expect("waits for the account");
        assert_eq!(
            (waits_for.application.as_str(), waits_for.id.as_str()),
            ("lid://ln", "C7")
        );
    }
    assert!(
        deleted
            .decisions
            .iter()
            .any(|d| d.contains("wait for it again")),
        "{:?}",
        deleted.decisions
    );

    // LN creates the account again: its contacts follow it, CRM's too.
    let again = run(at(8, "Add"), "m-8");
    for contact in [&ada, &bob, &cara] {
        let con = stored(&p, contact.as_deref());
        assert_eq!(con.account, again.record);
        assert_eq!(con.intended_parent, None);
    }
    let relinked = again
        .outputs
        .iter()
        .filter(|o| o.kind == "SyncContactMaster")
        .count();
    assert_eq!(relinked, 3, "{:?}", again.outputs);

    // A hard-deleted contact leaves its account's contacts: the next delete of the account
    // releases only the others.
    run(with_action(&contact("P2", "C7"), "Delete"), "m-p2-delete");
    let deleted = run(at(9, "Delete"), "m-9");
    let released: Vec<&str> = deleted
        .decisions
        .iter()
        .map(|d| d.text.as_str())
        .filter(|d| d.contains("wait for it again"))
        .collect();
    assert_eq!(released.len(), 1, "{:?}", deleted.decisions);
    let (ada, bob, cara) = (ada.unwrap(), bob.unwrap(), cara.unwrap());
    assert!(
        released[0].contains(ada.as_str())
            && released[0].contains(cara.as_str())
            && !released[0].contains(bob.as_str()),
        "{released:?}"
    );
}

#[test]
fn a_record_keeps_about_one_documents_worth_of_userarea_values() {
    let p = pipeline();
    // LN's account C5 at `variation` with `values` in its UserArea.
    let carrying = |values: &str, variation: u32| {
        account("C5", "Delta", "AUT")
            .replace(
                r#"variationID="1""#,
                &format!(r#"variationID="{variation}""#),
            )
            .replace(
                "</CustomerPartyMaster>",
                &format!("<UserArea>{values}</UserArea></CustomerPartyMaster>"),
            )
    };
    // 3,000 UserArea values named `{prefix}0`..
    let with = |prefix: &str, variation: u32| {
        let values: String = (0..3_000)
            .map(|i| format!(r#"<Property><NameValue name="{prefix}{i}">v</NameValue></Property>"#))
            .collect();
        carrying(&values, variation)
    };
    let first = p
        .process(&input(with("a", 1).as_bytes(), "m-1", false))
        .unwrap();
    let record = stored(&p, first.record.as_deref());
    assert_eq!(record.fields.user_area.len(), 3_000);
    let second = p
        .process(&input(with("b", 2).as_bytes(), "m-2", false))
        .unwrap();
    assert_eq!(second.outcome, Outcome::Applied, "{:?}", second.decisions);
    let values = stored(&p, second.record.as_deref()).fields.user_area;
    assert_eq!(values.len(), 5_000, "as many as one document may carry");
    assert_eq!(
        values[0].name, "a1000",
        "the values first seen longest ago went"
    );
    assert_eq!(values[4_999].name, "b2999");
    assert!(
        second.decisions.iter().any(|d| d
            .text
            .contains("the 1000 values first seen longest ago dropped")),
        "{:?}",
        second.decisions
    );

    // And as many bytes (1 MiB): values of 300,000 bytes, three a document.
    let large = |prefix: &str, count: usize, variation: u32| {
        let values: String = (0..count)
            .map(|i| format!("<{prefix}{i}>{}</{prefix}{i}>", "x".repeat(300_000)))
            .collect();
        carrying(&values, variation)
    };
    let third = p
        .process(&input(large("c", 3, 3).as_bytes(), "m-3", false))
        .unwrap();
    assert_eq!(third.outcome, Outcome::Applied, "{:?}", third.decisions);
    let fourth = p
        .process(&input(large("d", 3, 4).as_bytes(), "m-4", false))
        .unwrap();
    assert_eq!(fourth.outcome, Outcome::Applied, "{:?}", fourth.decisions);
    let names: Vec<String> = stored(&p, fourth.record.as_deref())
        .fields
        .user_area
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["d0", "d1", "d2"], "the newest MiB");
    let too_much = p
        .process(&input(large("e", 4, 5).as_bytes(), "m-5", false))
        .unwrap();
    let e = too_much
        .error
        .expect("1.2 MB of UserArea values are refused");
    assert_eq!(
        (e.code, e.path.as_deref()),
        (
            "too_complex",
            Some("/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/UserArea")
        ),
        "{}",
        e.message
    );
}

#[test]
fn an_operator_link_to_the_placeholder_makes_it_the_applications_account() {
    let p = pipeline();
    let orphan = p
        .process(&input(contact("P1", "").as_bytes(), "m-1", false))
        .unwrap();
    let con = stored(&p, orphan.record.as_deref());
    let placeholder = con.account.clone().unwrap();
    let done = p
        .link(&bodflow::pipeline::link::LinkRequest {
            application: "lid://ln",
            accounting_entity: "1",
            id: "C-ORPHANS",
            record: &placeholder,
            kind: None,
            operator: "jdoe",
            now: Utc::now(),
        })
        .unwrap()
        .unwrap();
    assert!(
        done.report
            .decisions
            .iter()
            .any(|d| d.contains("no longer a placeholder")),
        "{:?}",
        done.report.decisions
    );
    let record = stored(&p, Some(&placeholder));
    assert!(!record.placeholder);
    assert_eq!(record.created_by, "lid://ln");
}
