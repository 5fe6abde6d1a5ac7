//! Every document bodflow emits validates against its strict schema in `schemas/`, and the
//! inbound documents bodflow accepts validate against the lax inbound schemas.
//!
//! The pipeline runs on a temporary store with three applications (iso3 + sales person role +
//! default account, alternate codes + match_or_create, iso2 CRM). It is fed generated
//! `SyncCustomerPartyMaster` bulk plus inline scenarios chosen so that every emitted kind and
//! variant appears: Sync Add/Change/Delete of accounts and contacts, ConfirmBOD failure and
//! success, Acknowledge Accepted and Rejected. Each emitted outbox row is written to a temp
//! folder and checked with `xmllint --schema schemas/<kind>.xsd`, many files per call. The test
//! fails if a variant was never emitted, so it cannot pass on an empty outbox.
//!
//! Needs `xmllint` (Debian/Ubuntu: `apt-get install -y libxml2-utils`).

// Helpers of this test crate may panic like its tests (clippy.toml covers only `#[test]` fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bodflow::config::Config;
use bodflow::generate::{self, Generator, Mix};
use bodflow::pipeline::{Input, Outcome, Pipeline, Report, Stage};
use bodflow::store::Store;

mod common;
use common::{require_xmllint, schemas_dir, xmllint_validate, ToCheck};

const CONFIG: &str = r#"
[hub]
logical_id = "lid://bodflow.hub"
tenant = "LOAD"

[[users]]
id = "U-ADMIN"
[[users]]
id = "U-SALES"
[[users]]
id = "U-JSMITH"
first_name = "Jane"
last_name = "Smith"
personnel_number = "1001"

[[applications]]
name = "ERP Europe"
logical_id = "lid://load.erp.eu"
country_code_format = "iso3"
sales_person_role = "Internal"
default_record_owner = "U-ADMIN"
default_account_manager = "U-SALES"
default_account = "EU-ORPHANS"

[[applications]]
name = "ERP UK"
logical_id = "lid://load.erp.uk"
country_code_format = "alternate"
alternate_country_codes = { UK = "GB" }
sales_person_role = "Internal"
default_record_owner = "U-ADMIN"
create_policy = "match_or_create"
match_on = ["account_number", "email"]

[[applications]]
name = "CRM"
logical_id = "lid://load.crm"
country_code_format = "iso2"
default_record_owner = "U-ADMIN"
create_policy = "match_or_create"
match_on = ["email"]
"#;

const EU: &str = "lid://load.erp.eu";
const UK: &str = "lid://load.erp.uk";
const CRM: &str = "lid://load.crm";

/// Generated documents fed before the scenarios.
const GENERATED: usize = 240;

/// What each emitted variant looks like; every one must be emitted at least once.
const VARIANTS: [(&str, &str); 11] = [
    ("SyncCustomerPartyMaster", r#"actionCode="Add""#),
    ("SyncCustomerPartyMaster", r#"actionCode="Change""#),
    ("SyncCustomerPartyMaster", r#"actionCode="Delete""#),
    ("SyncContactMaster", r#"actionCode="Add""#),
    ("SyncContactMaster", r#"actionCode="Change""#),
    ("SyncContactMaster", r#"actionCode="Delete""#),
    ("ConfirmBOD", "<BODFailureMessage>"),
    ("ConfirmBOD", "<BODSuccessMessage>"),
    ("AcknowledgeCustomerPartyMaster", r#"actionCode="Accepted""#),
    ("AcknowledgeCustomerPartyMaster", r#"actionCode="Rejected""#),
    ("AcknowledgeContactMaster", r#"actionCode="Accepted""#),
];

/// One inbound document of the scenario.
struct Case {
    name: &'static str,
    xml: String,
    reply_to: Option<&'static str>,
    /// The lax schema (relative to `schemas/`) it must validate against; `None` for documents
    /// bodflow refuses.
    inbound_schema: Option<&'static str>,
}

/// A BOD in the InforOAGIS namespace around `data_area` (verb and noun elements).
fn bod(
    root: &str,
    sender: &str,
    confirmation: Option<&str>,
    bod_id: &str,
    data_area: &str,
) -> String {
    let confirmation = confirmation
        .map(|c| format!("\n      <ConfirmationCode>{c}</ConfirmationCode>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<{root} xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2" versionID="2.14.0">
  <ApplicationArea>
    <Sender>
      <LogicalID>{sender}</LogicalID>
      <ComponentID>erp</ComponentID>{confirmation}
    </Sender>
    <CreationDateTime>2026-03-01T09:00:00Z</CreationDateTime>
    <BODID>{bod_id}</BODID>
  </ApplicationArea>
  <DataArea>
{data_area}
  </DataArea>
</{root}>
"#
    )
}

fn verb(verb: &str, action: &str) -> String {
    format!(
        r#"    <{verb}>
      <TenantID>LOAD</TenantID>
      <ActionCriteria><ActionExpression actionCode="{action}"/></ActionCriteria>
    </{verb}>"#
    )
}

fn sync(root: &str, sender: &str, bod_id: &str, action: &str, noun: &str) -> String {
    bod(
        root,
        sender,
        Some("OnError"),
        bod_id,
        &format!("{}\n{noun}", verb("Sync", action)),
    )
}

fn account(id: &str, variation: u32, body: &str) -> String {
    format!(
        r#"    <CustomerPartyMaster>
      <PartyIDs><ID variationID="{variation}">{id}</ID></PartyIDs>
{body}
    </CustomerPartyMaster>"#
    )
}

fn contact(id: &str, variation: u32, body: &str) -> String {
    format!(
        r#"    <ContactMaster>
      <IDs><ID variationID="{variation}">{id}</ID></IDs>
{body}
    </ContactMaster>"#
    )
}

/// A messy but acceptable Process: blank ID (assign one), elements out of order, comments,
/// elements bodflow does not read, a vendor namespace, Text and Discrete address views.
const PROCESS_ACCOUNT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ProcessCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" xmlns:v="urn:example:vendor" releaseID="9.2" versionID="2.12.x">
  <ApplicationArea>
    <BODID>0014W00002F5D5ZQAV:ExternalIdNotPresent</BODID>
    <CreationDateTime>3/3/2021, 6:08 AM</CreationDateTime>
    <Sender><ConfirmationCode>OnError</ConfirmationCode><LogicalID>lid://load.crm</LogicalID></Sender>
  </ApplicationArea>
  <DataArea>
    <Process>
      <AccountingEntityID>2000</AccountingEntityID>
      <LocationID/>
      <ActionCriteria><ActionExpression actionCode="add">Add</ActionExpression></ActionCriteria>
      <TenantID>load</TenantID>
    </Process>
    <CustomerPartyMaster>
      <Name languageID="en-US">Beta Supplies Inc.</Name><!-- the CRM account name -->
      <PartyIDs>
        <ID>
        </ID>
      </PartyIDs>
      <LastModificationDateTime>3/3/2021, 6:08 AM</LastModificationDateTime>
      <Communication sequence="2"><URI>orders@beta.example</URI><ChannelCode>EMail</ChannelCode></Communication>
      <Location>
        <Name>Head office</Name>
        <Address type="Discrete">
          <StreetName>Road 632</StreetName><BuildingNumber>50552</BuildingNumber>
          <CityName>Oakhurst</CityName><CountryCode listID="Countries">US</CountryCode>
          <Preference><Indicator>true</Indicator></Preference>
        </Address>
        <Address type="Text">
          <AddressLine sequence="2">
          </AddressLine>
          <AddressLine sequence="1">50552 Road 632</AddressLine>
          <PostalCode>93644</PostalCode><CountrySubDivisionCode>CA</CountrySubDivisionCode>
        </Address>
      </Location>
      <Communication preferredIndicator="true" sequence="1">
        <ChannelCode>Phone</ChannelCode><UseCode>Office</UseCode><DialNumber>5122229690</DialNumber>
      </Communication>
      <CurrencyCode>USD</CurrencyCode>
      <Status><Code>Open</Code></Status>
      <v:Rating>A</v:Rating>
      <UserArea>
        <Property><NameValue type="String" name="crm.Segment">Retail</NameValue></Property>
        <v:Extra><v:Flag>1</v:Flag></v:Extra>
      </UserArea>
    </CustomerPartyMaster>
  </DataArea>
</ProcessCustomerPartyMaster>
"#;

fn scenario() -> Vec<Case> {
    let accepted = |name, xml, schema| Case {
        name,
        xml,
        reply_to: None,
        inbound_schema: Some(schema),
    };
    let refused = |name, xml| Case {
        name,
        xml,
        reply_to: None,
        inbound_schema: None,
    };
    const SYNC_ACCOUNT: &str = "inbound/SyncCustomerPartyMaster.xsd";
    const SYNC_CONTACT: &str = "inbound/SyncContactMaster.xsd";
    vec![
        // New account from the ERP: Add to UK (alternate code, sales person) and CRM.
        accepted(
            "eu_account",
            sync(
                "SyncCustomerPartyMaster",
                EU,
                "eu-1",
                "Add",
                &account(
                    "EU-1",
                    1,
                    r#"      <Name languageID="en-US">Alpha Handel GmbH</Name>
      <CurrencyCode>EUR</CurrencyCode>
      <Status><Code>Open</Code></Status>
      <PaymentTermID>N30</PaymentTermID>
      <Classification><Codes><Code>Key</Code></Codes></Classification>
      <SalesPersonReference><IDs><ID>1001</ID></IDs><SalesPersonRole>Internal</SalesPersonRole></SalesPersonReference>
      <Location><Address>
        <AddressLine sequence="1">1 Market Street</AddressLine><AddressLine sequence="2">Floor 3</AddressLine>
        <CityName>Leeds</CityName><CountrySubDivisionCode>WYK</CountrySubDivisionCode>
        <CountryCode>GBR</CountryCode><PostalCode>LS1 1AA</PostalCode>
      </Address></Location>
      <Communication><ChannelCode>Phone</ChannelCode><UseCode>Office</UseCode><DialNumber>+44 113 000000</DialNumber></Communication>
      <Communication><ChannelCode>Phone</ChannelCode><UseCode>Fax</UseCode><DialNumber>+44 113 000001</DialNumber></Communication>
      <Communication><ChannelCode>EMail</ChannelCode><URI>info@alpha.example</URI></Communication>
      <Communication><ChannelCode>Web Site</ChannelCode><URI>https://alpha.example/</URI></Communication>"#,
                ),
            ),
            SYNC_ACCOUNT,
        ),
        // CRM links by e-mail and asks for confirmations: Change to EU, Add to UK, ConfirmBOD
        // success naming the record.
        accepted(
            "crm_account_link_always",
            bod(
                "SyncCustomerPartyMaster",
                CRM,
                Some("Always"),
                "crm-1",
                &format!(
                    "{}\n{}",
                    verb("Sync", "Change"),
                    account(
                        "CRM-1",
                        1,
                        r#"      <Name languageID="en-US">Alpha Handel GmbH</Name>
      <Communication><ChannelCode>EMail</ChannelCode><URI>info@alpha.example</URI></Communication>"#,
                    )
                ),
            ),
            SYNC_ACCOUNT,
        ),
        // UK links by account number: Change to EU and CRM.
        accepted(
            "uk_account_link",
            sync(
                "SyncCustomerPartyMaster",
                UK,
                "uk-1",
                "Change",
                &account(
                    "UK-1",
                    1,
                    r#"      <Name languageID="en-US">Alpha Handel Ltd</Name>
      <AccountIDs><ID>EU-1</ID></AccountIDs>
      <Location><Address><CityName>Leeds</CityName><CountryCode>UK</CountryCode></Address></Location>"#,
                ),
            ),
            SYNC_ACCOUNT,
        ),
        // Contact of that account: Add to UK and CRM, each with its own employer ID.
        accepted(
            "eu_contact",
            sync(
                "SyncContactMaster",
                EU,
                "eu-p1",
                "Add",
                &contact(
                    "EU-P1",
                    1,
                    r#"      <Name languageID="en-US">Pat Miller</Name>
      <GivenName>Pat</GivenName><FamilyName>Miller</FamilyName><JobTitle>Buyer</JobTitle>
      <CommunicationDetail><Address><AddressLine sequence="1">Hauptstrasse 1</AddressLine><CityName>Berlin</CityName><CountryCode>DEU</CountryCode></Address></CommunicationDetail>
      <CommunicationDetail><ChannelCode>EMail</ChannelCode><URI>pat@alpha.example</URI></CommunicationDetail>
      <CommunicationDetail><ChannelCode>Phone</ChannelCode><UseCode>Mobile</UseCode><DialNumber>+49 170 0000</DialNumber></CommunicationDetail>
      <EmployerReference><DocumentID><ID>EU-1</ID></DocumentID></EmployerReference>
      <Classification><Codes><Code>Sales</Code></Codes></Classification>
      <Status><Code>Open</Code></Status>"#,
                ),
            ),
            SYNC_CONTACT,
        ),
        // CRM links the contact by e-mail: Change to EU, Add to UK.
        accepted(
            "crm_contact_link",
            sync(
                "SyncContactMaster",
                CRM,
                "crm-p1",
                "Change",
                &contact(
                    "CRM-P1",
                    1,
                    r#"      <FamilyName>Miller</FamilyName>
      <CommunicationDetail><URI>pat@alpha.example</URI></CommunicationDetail>"#,
                ),
            ),
            SYNC_CONTACT,
        ),
        // Contact of an unknown account: kept on the default account, no EmployerReference out.
        accepted(
            "eu_orphan_contact",
            sync(
                "SyncContactMaster",
                EU,
                "eu-p2",
                "Add",
                &contact(
                    "EU-P2",
                    1,
                    r#"      <FamilyName>Orphan</FamilyName>
      <EmployerReference><DocumentID><ID>EU-404</ID></DocumentID></EmployerReference>"#,
                ),
            ),
            SYNC_CONTACT,
        ),
        // Process asking bodflow to assign an account number: Acknowledge Accepted + Sync Add.
        accepted(
            "crm_process_account",
            PROCESS_ACCOUNT.to_string(),
            "inbound/ProcessCustomerPartyMaster.xsd",
        ),
        // Process without a name: ConfirmBOD failure + Acknowledge Rejected.
        refused(
            "crm_process_account_without_name",
            bod(
                "ProcessCustomerPartyMaster",
                CRM,
                None,
                "crm-bad",
                &format!("{}\n{}", verb("Process", "Add"), account("", 0, "")),
            ),
        ),
        // Process of a contact: Acknowledge Accepted + Sync Add with employer IDs.
        accepted(
            "crm_process_contact",
            bod(
                "ProcessContactMaster",
                CRM,
                Some("OnError"),
                "crm-p3",
                &format!(
                    "{}\n{}",
                    verb("Process", "Add"),
                    r#"    <ContactMaster>
      <IDs><ID/></IDs>
      <FamilyName>Sample</FamilyName>
      <CommunicationDetail><ChannelCode>EMail</ChannelCode><URI>sam@alpha.example</URI></CommunicationDetail>
      <EmployerReference><DocumentID><ID>CRM-1</ID></DocumentID></EmployerReference>
    </ContactMaster>"#
                ),
            ),
            "ProcessContactMaster.xsd",
        ),
        // An invalid ConfirmationCode is refused; the ConfirmBOD echoes it verbatim.
        refused(
            "crm_bad_confirmation_code",
            bod(
                "SyncContactMaster",
                CRM,
                Some("Sometimes"),
                "crm-p4",
                &format!(
                    "{}\n{}",
                    verb("Sync", "Add"),
                    contact("CRM-P4", 1, "      <FamilyName>Code</FamilyName>")
                ),
            ),
        ),
        // Not well-formed, no CreationDateTime: ConfirmBOD from the sniffed sender.
        refused(
            "eu_broken",
            format!(
                "<SyncCustomerPartyMaster xmlns=\"http://schema.infor.com/InforOAGIS/2\"><ApplicationArea><Sender><LogicalID>{EU}</LogicalID></Sender><BODID>eu-broken</BODID></ApplicationArea><DataArea><Sync>"
            ),
        ),
        // An Acknowledge for a Process bodflow never sent: accepted by validation, refused
        // unknown_correlation with a ConfirmBOD.
        accepted(
            "uk_acknowledge",
            bod(
                "AcknowledgeCustomerPartyMaster",
                UK,
                Some("OnError"),
                "uk-ack",
                r#"    <Acknowledge>
      <TenantID>LOAD</TenantID>
      <OriginalApplicationArea>
        <Sender><LogicalID>lid://bodflow.hub</LogicalID></Sender>
        <CreationDateTime>2026-03-01T08:00:00Z</CreationDateTime>
        <BODID>bodflow:unknown:1</BODID>
      </OriginalApplicationArea>
      <ResponseCriteria><ResponseExpression actionCode="Accepted"/></ResponseCriteria>
    </Acknowledge>
    <CustomerPartyMaster>
      <PartyIDs><ID accountingEntity="100" variationID="">UK-77</ID></PartyIDs>
    </CustomerPartyMaster>"#,
            ),
            "inbound/AcknowledgeCustomerPartyMaster.xsd",
        ),
        // Unknown sender with an explicit reply queue: ConfirmBOD there.
        Case {
            name: "unknown_sender_reply_to",
            xml: sync(
                "SyncCustomerPartyMaster",
                "lid://nobody",
                "nobody-1",
                "Add",
                &account("X-1", 1, "      <Name>X</Name>"),
            ),
            reply_to: Some("amq.gen-reply"),
            inbound_schema: None,
        },
        // A delete of an unknown record is filtered; Always still confirms, without record ID.
        accepted(
            "crm_delete_unknown_always",
            bod(
                "SyncCustomerPartyMaster",
                CRM,
                Some("Always"),
                "crm-del",
                &format!("{}\n{}", verb("Sync", "Delete"), account("CRM-404", 3, "")),
            ),
            SYNC_ACCOUNT,
        ),
        // Deletes: Sync Delete to the applications that know the records.
        accepted(
            "eu_contact_delete",
            sync(
                "SyncContactMaster",
                EU,
                "eu-p1-del",
                "Delete",
                &contact("EU-P1", 2, ""),
            ),
            SYNC_CONTACT,
        ),
        accepted(
            "eu_account_delete",
            sync(
                "SyncCustomerPartyMaster",
                EU,
                "eu-1-del",
                "Delete",
                &account("EU-1", 2, ""),
            ),
            SYNC_ACCOUNT,
        ),
    ]
}

fn write(dir: &Path, name: &str, xml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, xml).unwrap();
    file
}

struct Run {
    pipeline: Pipeline,
}

impl Run {
    fn new() -> Run {
        let config = Config::from_toml(CONFIG, "tests/schemas.rs").unwrap();
        let store = Store::temporary().unwrap();
        Run {
            pipeline: Pipeline::new(Arc::new(config), Arc::new(store)).unwrap(),
        }
    }

    fn feed(&self, source: &str, xml: &[u8], reply_to: Option<&str>) -> Report {
        let received_at = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        self.pipeline
            .process(&Input {
                bytes: xml,
                source,
                message_id: None,
                reply_to,
                received_at,
                retry: false,
                envelope: None,
            })
            .unwrap()
    }

    /// The emitted documents of `report`: (kind, xml).
    fn outputs(&self, report: &Report) -> Vec<(String, String)> {
        report
            .outputs
            .iter()
            .map(|o| {
                let row = self
                    .pipeline
                    .store
                    .outbox_row(o.seq)
                    .unwrap()
                    .unwrap_or_else(|| panic!("outbox row {} of {} is gone", o.seq, report.source));
                (row.kind, row.xml)
            })
            .collect()
    }
}

/// Whether bodflow's validation accepted the document (a refusal at upsert, such as an
/// Acknowledge without pending Process, comes after validation).
fn accepted_by_validation(report: &Report) -> bool {
    report.outcome != Outcome::Rejected
        || report
            .error
            .as_ref()
            .is_some_and(|e| e.stage == Stage::Upsert)
}

#[test]
fn emitted_documents_validate_against_strict_schemas_and_inbound_against_lax_ones() {
    require_xmllint();
    let schemas = schemas_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::new();

    let mut emitted: BTreeMap<String, Vec<ToCheck>> = BTreeMap::new();
    let mut inbound: BTreeMap<&str, Vec<ToCheck>> = BTreeMap::new();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut n = 0usize;
    let mut keep = |origin: &str, outputs: Vec<(String, String)>| {
        for (kind, xml) in outputs {
            n += 1;
            for v in VARIANTS
                .iter()
                .filter(|(k, m)| *k == kind && xml.contains(m))
            {
                seen.insert(*v);
            }
            let file = write(
                &tmp.path().join("emitted").join(&kind),
                &format!("{n:05}.xml"),
                &xml,
            );
            emitted.entry(kind).or_default().push(ToCheck {
                origin: origin.to_string(),
                file,
            });
        }
    };

    for g in Generator::new(11, Mix::REALISTIC).take(GENERATED) {
        let source = format!("generated-{:04}-{:?}", g.index, g.kind);
        let report = run.feed(&source, &g.bytes, None);
        keep(&source, run.outputs(&report));
        if !matches!(g.kind, generate::Kind::Invalid | generate::Kind::Duplicate) {
            let file = write(
                &tmp.path().join("inbound"),
                &format!("{source}.xml"),
                std::str::from_utf8(&g.bytes).unwrap(),
            );
            inbound
                .entry("inbound/SyncCustomerPartyMaster.xsd")
                .or_default()
                .push(ToCheck {
                    origin: source,
                    file,
                });
        }
    }

    for case in scenario() {
        let report = run.feed(case.name, case.xml.as_bytes(), case.reply_to);
        assert_eq!(
            accepted_by_validation(&report),
            case.inbound_schema.is_some(),
            "scenario {} was expected to be {} by validation: {report:#?}",
            case.name,
            if case.inbound_schema.is_some() {
                "accepted"
            } else {
                "refused"
            },
        );
        keep(case.name, run.outputs(&report));
        if let Some(schema) = case.inbound_schema {
            let file = write(
                &tmp.path().join("inbound"),
                &format!("{}.xml", case.name),
                &case.xml,
            );
            inbound.entry(schema).or_default().push(ToCheck {
                origin: case.name.to_string(),
                file,
            });
        }
    }

    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for (kind, docs) in &emitted {
        let schema = schemas.join(format!("{kind}.xsd"));
        if !schema.is_file() {
            problems.push(format!(
                "{} emitted {kind} document(s) but there is no schema {}",
                docs.len(),
                schema.display()
            ));
            continue;
        }
        summary.push(format!("{kind}: {}", docs.len()));
        problems.extend(xmllint_validate(&schema, docs));
    }
    for (schema, docs) in &inbound {
        summary.push(format!("inbound {schema}: {}", docs.len()));
        problems.extend(xmllint_validate(&schemas.join(schema), docs));
    }
    println!("validated:\n  {}", summary.join("\n  "));

    let missing: Vec<String> = VARIANTS
        .iter()
        .filter(|v| !seen.contains(v))
        .map(|(k, m)| format!("{k} with {m}"))
        .collect();
    assert!(
        missing.is_empty(),
        "these variants were never emitted, so their schema went untested: {missing:?}"
    );
    assert!(
        problems.is_empty(),
        "{} schema violation(s) (documents kept in {}):\n{}",
        problems.len(),
        tmp.keep().display(),
        problems.join("\n")
    );
}

/// The schemas are not vacuous: they reject a wrong code, a wrong order, a missing element
/// and an inbound value bodflow would refuse.
#[test]
fn schemas_reject_what_bodflow_must_not_emit_or_accept() {
    require_xmllint();
    let schemas = schemas_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::new();
    let scenario = scenario();
    let first = |name: &str| {
        let case = scenario.iter().find(|c| c.name == name).unwrap();
        let report = run.feed(case.name, case.xml.as_bytes(), case.reply_to);
        run.outputs(&report)
    };
    let sync = first("eu_account")
        .into_iter()
        .find(|(k, _)| k == "SyncCustomerPartyMaster")
        .unwrap()
        .1;
    let name_line = sync
        .lines()
        .find(|l| l.trim_start().starts_with("<Name "))
        .unwrap()
        .to_string();
    let confirm = first("crm_bad_confirmation_code")
        .into_iter()
        .find(|(k, _)| k == "ConfirmBOD")
        .unwrap()
        .1;

    let mutate = |original: &str, from: &str, to: &str| {
        assert!(original.contains(from), "{from:?} not found in\n{original}");
        original.replacen(from, to, 1)
    };
    let moved_name = mutate(&sync, &format!("{name_line}\n"), "");
    let moved_name = mutate(
        &moved_name,
        "</CurrencyCode>\n",
        &format!("</CurrencyCode>\n{name_line}\n"),
    );
    let no_user_area = mutate(&mutate(&sync, "<UserArea>", "<!--"), "</UserArea>", "-->");
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "SyncCustomerPartyMaster.xsd",
            "actionCode Replace",
            mutate(&sync, r#"actionCode="Add""#, r#"actionCode="Replace""#),
        ),
        (
            "SyncCustomerPartyMaster.xsd",
            "Name after CurrencyCode",
            moved_name,
        ),
        ("SyncCustomerPartyMaster.xsd", "no UserArea", no_user_area),
        (
            "ConfirmBOD.xsd",
            "unknown stage",
            mutate(&confirm, "<Type>validate</Type>", "<Type>parse</Type>"),
        ),
        (
            "inbound/ProcessCustomerPartyMaster.xsd",
            "variationID not a number",
            mutate(PROCESS_ACCOUNT, "<ID>\n", "<ID variationID=\"7a\">\n"),
        ),
        (
            "inbound/ProcessCustomerPartyMaster.xsd",
            "unknown actionCode",
            mutate(
                PROCESS_ACCOUNT,
                r#"actionCode="add""#,
                r#"actionCode="Upsert""#,
            ),
        ),
    ];
    for (i, (schema, what, xml)) in cases.iter().enumerate() {
        let file = write(tmp.path(), &format!("{i}.xml"), xml);
        let problems = xmllint_validate(
            &schemas.join(schema),
            &[ToCheck {
                origin: what.to_string(),
                file,
            }],
        );
        assert!(
            !problems.is_empty(),
            "{schema} accepted a document with {what}:\n{xml}"
        );
    }
}
