//! The real BODs in `../shared/samples/real/` (public documents from Infor and OAGIS senders,
//! see that folder's README) are read file by file against an explicit expectation table:
//! what the decoder makes of each (root after unwrapping, verb, noun, sender, BODID, or a
//! decode rejection code), and what the full pipeline decides when every real sender's logical
//! ID is configured (applied with country and owner, or rejected with stage, code and path),
//! plus which replies go back to the sender.
//!
//! The table must name every file in the folder: a new sample without an expectation fails,
//! and so does a missing folder (these tests never skip). Every emitted reply and Sync must
//! validate against its strict schema (needs `xmllint`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bodflow::bod::{self, Limits, Noun};
use bodflow::config::Config;
use bodflow::pipeline::{Input, Outcome, Pipeline, Report, Stage};
use bodflow::store::{OutboxRow, Store};

mod common;
use common::ToCheck;

/// Every real sender, configured as DESIGN §5.2 would for its format. No hub tenant: the
/// samples come from different tenants.
const CONFIG: &str = r#"
[hub]
logical_id = "lid://bodflow.hub"

[[users]]
id = "U-ADMIN"

[[applications]]
name = "Salesforce via IMS"
logical_id = "lid://infor.ims.salesforceims"
country_code_format = "iso2"
sales_person_role = "Internal"
default_record_owner = "U-ADMIN"

[[applications]]
name = "WooCommerce via IMS"
logical_id = "lid://infor.ims.woocommercein"
country_code_format = "alternate"
alternate_country_codes = { UK = "GB" }
default_record_owner = "U-ADMIN"

[[applications]]
name = "LN"
logical_id = "lid://infor.ln.ln01"
country_code_format = "iso3"

[[applications]]
name = "M3"
logical_id = "lid://infor.m3.m3"

[[applications]]
name = "Document Management"
logical_id = "lid://infor.daf.daf"

[[applications]]
name = "ION Workflow"
logical_id = "infor.engine.workflow"
"#;

/// What the decoder makes of a file.
#[derive(Debug)]
enum Decoded {
    /// Read as a BOD: its root (after unwrapping an envelope), verb and first noun as named in
    /// the DataArea, Sender/LogicalID and BODID as sent.
    Bod {
        root: &'static str,
        verb: &'static str,
        noun: &'static str,
        sender: Option<&'static str>,
        bod_id: Option<&'static str>,
    },
    /// Refused by the decoder with this code (no current sample is; kept for the next one).
    #[allow(dead_code)]
    Refused(&'static str),
}

/// What the pipeline decides with [`CONFIG`].
#[derive(Debug)]
enum Decided {
    /// Applied: the account was created with this hub country and owner.
    Created {
        country: &'static str,
        owner: &'static str,
    },
    Rejected {
        stage: Stage,
        code: &'static str,
        path: Option<&'static str>,
    },
}

struct Expectation {
    file: &'static str,
    decoded: Decoded,
    decided: Decided,
    /// Kinds of the documents sent back to the sender's application, in order.
    replies: &'static [&'static str],
}

const UNSUPPORTED: &str = "unsupported_document";

fn expectations() -> Vec<Expectation> {
    use Decided::*;
    let bod = |root, verb, noun, sender, bod_id| Decoded::Bod {
        root,
        verb,
        noun,
        sender,
        bod_id,
    };
    let validate = |code, path| Rejected {
        stage: Stage::Validate,
        code,
        path: Some(path),
    };
    vec![
        // ION Workflow engine: no BODID of its own, LogicalID without lid://. A configured
        // sender, but bodflow does not handle Workflow; OnError (the default) → ConfirmBOD.
        Expectation {
            file: "AcknowledgeWorkflow_ION.xml",
            decoded: bod(
                "AcknowledgeWorkflow",
                "Acknowledge",
                "Workflow",
                Some("infor.engine.workflow"),
                None,
            ),
            decided: validate(UNSUPPORTED, "/AcknowledgeWorkflow/DataArea/Workflow"),
            replies: &["ConfirmBOD"],
        },
        // The SOAP Envelope is unwrapped: the BOD root is the ConfirmBOD in the Body. It has no
        // Sender, so nobody can be answered.
        Expectation {
            file: "ConfirmBOD_in_SOAP_envelope_HCL.xml",
            decoded: bod(
                "ConfirmBOD",
                "Confirm",
                "BOD",
                None,
                Some("532871c1-28b6-11db-a294-82dd44db8b7f"),
            ),
            decided: validate(
                "missing_field",
                "/ConfirmBOD/ApplicationArea/Sender/LogicalID",
            ),
            replies: &[],
        },
        // oa:-prefixed OAGIS 9, xsi:type on ApplicationArea, vendor elements: read by local
        // name; no Sender.
        Expectation {
            file: "ConfirmBOD_success_oa_prefix_HCL.xml",
            decoded: bod(
                "ConfirmBOD",
                "Confirm",
                "BOD",
                None,
                Some("4dd78e80-1fa9-11de-9dd0-827f49d4ef1b"),
            ),
            decided: validate(
                "missing_field",
                "/ConfirmBOD/ApplicationArea/Sender/LogicalID",
            ),
            replies: &[],
        },
        // OAGIS 9.2 generated instances: placeholder data, the sender is literally
        // "normalizedString", which no configuration knows.
        Expectation {
            file: "OAGIS92_ConfirmBOD.xml",
            decoded: bod(
                "ConfirmBOD",
                "Confirm",
                "BOD",
                Some("normalizedString"),
                Some("normalizedString"),
            ),
            decided: validate(
                "unknown_sender",
                "/ConfirmBOD/ApplicationArea/Sender/LogicalID",
            ),
            replies: &[],
        },
        Expectation {
            file: "OAGIS92_SyncCustomerPartyMaster.xml",
            decoded: bod(
                "SyncCustomerPartyMaster",
                "Sync",
                "CustomerPartyMaster",
                Some("normalizedString"),
                Some("normalizedString"),
            ),
            decided: validate(
                "unknown_sender",
                "/SyncCustomerPartyMaster/ApplicationArea/Sender/LogicalID",
            ),
            replies: &[],
        },
        // SX.e Process with an empty PartyIDs/ID: created, the hub assigns the account number
        // and acknowledges it. "UK" maps to GB through the alternate table. No
        // ConfirmationCode → OnError: no ConfirmBOD on success.
        Expectation {
            file: "ProcessCustomerPartyMaster_SXe_WooCommerce.xml",
            decoded: bod(
                "ProcessCustomerPartyMaster",
                "Process",
                "CustomerPartyMaster",
                Some("lid://infor.ims.woocommercein"),
                Some("AKXW7A0006M7:QKXW7A008ZZR-7"),
            ),
            decided: Created {
                country: "GB",
                owner: "U-ADMIN",
            },
            replies: &["AcknowledgeCustomerPartyMaster"],
        },
        // Whitespace-only PartyIDs/ID and SalesPersonReference IDs, junk CreationDateTime: the
        // Internal sales person (named by an e-mail) matches no user → default owner.
        Expectation {
            file: "ProcessCustomerPartyMaster_SXe_from_Salesforce.xml",
            decoded: bod(
                "ProcessCustomerPartyMaster",
                "Process",
                "CustomerPartyMaster",
                Some("lid://infor.ims.salesforceims"),
                Some("0014W00002F5D5ZQAV:ExternalIdNotPresent"),
            ),
            decided: Created {
                country: "US",
                owner: "U-ADMIN",
            },
            replies: &["AcknowledgeCustomerPartyMaster"],
        },
        Expectation {
            file: "ProcessSalesOrder_SXe_WooCommerce.xml",
            decoded: bod(
                "ProcessSalesOrder",
                "Process",
                "SalesOrder",
                Some("lid://infor.ims.woocommercein"),
                Some("60af603533409"),
            ),
            decided: validate(UNSUPPORTED, "/ProcessSalesOrder/DataArea/SalesOrder"),
            replies: &["ConfirmBOD"],
        },
        Expectation {
            file: "SyncContentDocument_IDM.xml",
            decoded: bod(
                "SyncContentDocument",
                "Sync",
                "ContentDocument",
                Some("lid://infor.daf.daf"),
                Some("infor.daf.daf:1763360144698:1659596980?ContentDocument&verb=Sync"),
            ),
            decided: validate(UNSUPPORTED, "/SyncContentDocument/DataArea/ContentDocument"),
            replies: &["ConfirmBOD"],
        },
        // LN's LogicalID carries a /company suffix and still names the LN application.
        Expectation {
            file: "SyncPurchaseOrder_LN.xml",
            decoded: bod(
                "SyncPurchaseOrder",
                "Sync",
                "PurchaseOrder",
                Some("lid://infor.ln.ln01/3555"),
                Some("infor-nid:TEST_TST:3555:S_350:PSU000049:?PurchaseOrder&verb=Sync"),
            ),
            decided: validate(UNSUPPORTED, "/SyncPurchaseOrder/DataArea/PurchaseOrder"),
            replies: &["ConfirmBOD"],
        },
        Expectation {
            file: "SyncPurchaseOrder_M3.xml",
            decoded: bod(
                "SyncPurchaseOrder",
                "Sync",
                "PurchaseOrder",
                Some("lid://infor.m3.m3"),
                Some("0b61d005-7e42-41e8-bf47-13039b8bd10d"),
            ),
            decided: validate(UNSUPPORTED, "/SyncPurchaseOrder/DataArea/PurchaseOrder"),
            replies: &["ConfirmBOD"],
        },
        // Root and noun disagree: the noun is taken from the DataArea.
        Expectation {
            file: "SyncSalesOrder_custom_WooSalesOrder_noun.xml",
            decoded: bod(
                "SyncSalesOrder",
                "Sync",
                "WooSalesOrder",
                Some("lid://infor.ims.woocommercein"),
                Some("610017a12b053"),
            ),
            decided: validate(UNSUPPORTED, "/SyncSalesOrder/DataArea/WooSalesOrder"),
            replies: &["ConfirmBOD"],
        },
    ]
}

fn samples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples/real");
    assert!(
        dir.is_dir(),
        "the real sample folder {} does not exist: these tests need the shared samples \
         (../shared/samples/real next to the crate) and must not pass without them",
        dir.display()
    );
    dir
}

/// The sample files, in name order.
fn sample_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(samples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.xml in {}", samples_dir().display());
    files
}

fn read_sample(file: &str) -> Vec<u8> {
    std::fs::read(samples_dir().join(file)).unwrap()
}

fn expectation(file: &str) -> Expectation {
    expectations()
        .into_iter()
        .find(|e| e.file == file)
        .unwrap_or_else(|| panic!("{file}: no expectation in the table"))
}

/// One sample through the pipeline: its report and the documents it emitted.
struct Processed {
    file: String,
    report: Report,
    outputs: Vec<OutboxRow>,
}

/// Every sample, in name order, through one pipeline on a temporary store with `config`.
fn process_all(config: &str) -> (Pipeline, Vec<Processed>) {
    let config = Config::from_toml(config, "tests/real_samples.rs").unwrap();
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
    let received_at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let processed = sample_files()
        .into_iter()
        .map(|file| {
            let bytes = read_sample(&file);
            let report = pipeline
                .process(&Input {
                    bytes: &bytes,
                    source: &file,
                    message_id: None,
                    reply_to: None,
                    received_at,
                    retry: false,
                    envelope: None,
                })
                .unwrap();
            let outputs = report
                .outputs
                .iter()
                .map(|o| pipeline.store.outbox_row(o.seq).unwrap().unwrap())
                .collect();
            Processed {
                file,
                report,
                outputs,
            }
        })
        .collect();
    (pipeline, processed)
}

/// The configured logical ID of the application that sent `report`, if any.
fn sender_app<'a>(pipeline: &'a Pipeline, report: &Report) -> Option<&'a str> {
    let sender = report.sender.as_deref()?;
    pipeline
        .config
        .application(sender)
        .map(|(_, a)| a.logical_id.as_str())
}

#[test]
fn expectation_table_names_exactly_the_files_in_the_real_sample_folder() {
    let files: BTreeSet<String> = sample_files().into_iter().collect();
    let table: Vec<&str> = expectations().iter().map(|e| e.file).collect();
    let named: BTreeSet<String> = table.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        table.len(),
        named.len(),
        "a file is listed twice: {table:?}"
    );
    let missing: Vec<&String> = files.difference(&named).collect();
    let stale: Vec<&String> = named.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "real samples without an expectation (add them to expectations()): {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "expectations for files that are not in the folder: {stale:?}"
    );
}

#[test]
fn every_real_sample_decodes_to_its_expected_root_verb_noun_sender_and_bodid() {
    let mut problems = Vec::new();
    for file in sample_files() {
        let expected = expectation(&file);
        let result = bod::parse(&read_sample(&file), Limits::default());
        match (&expected.decoded, result) {
            (
                Decoded::Bod {
                    root,
                    verb,
                    noun,
                    sender,
                    bod_id,
                },
                Ok(b),
            ) => {
                let actual = (
                    b.root.as_str(),
                    b.verb.as_str(),
                    b.noun.as_str(),
                    b.area.logical_id.as_deref(),
                    b.area.bod_id.as_deref(),
                );
                if actual != (*root, *verb, *noun, *sender, *bod_id) {
                    problems.push(format!(
                        "{file}: decoded as {actual:?}, expected {:?}",
                        (root, verb, noun, sender, bod_id)
                    ));
                }
            }
            (Decoded::Refused(code), Err(e)) if e.code() == *code => {}
            (expected, actual) => problems.push(format!(
                "{file}: expected {expected:?}, got {:?}",
                actual
                    .map(|b| (b.root, b.verb, b.noun))
                    .map_err(|e| e.code())
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_real_sample_gets_its_expected_outcome_and_replies_with_the_senders_configured() {
    let (pipeline, processed) = process_all(CONFIG);
    let mut problems = Vec::new();
    for p in &processed {
        let expected = expectation(&p.file);
        let r = &p.report;
        match &expected.decided {
            Decided::Created { country, owner } => {
                let actual = (
                    r.outcome,
                    r.action.map(|a| format!("{a:?}")),
                    r.country.as_deref(),
                    r.owner.as_deref(),
                    r.error.as_ref().map(|e| e.code),
                );
                let wanted = (
                    Outcome::Applied,
                    Some("Created".to_string()),
                    Some(*country),
                    Some(*owner),
                    None,
                );
                if actual != wanted {
                    problems.push(format!("{}: got {actual:?}, expected {wanted:?}", p.file));
                }
                if !r.record.as_deref().is_some_and(|id| id.starts_with("ACC-")) {
                    problems.push(format!("{}: no account record in {r:?}", p.file));
                }
            }
            Decided::Rejected { stage, code, path } => {
                let actual = r
                    .error
                    .as_ref()
                    .map(|e| (e.stage, e.code, e.path.as_deref()));
                if r.outcome != Outcome::Rejected || actual != Some((*stage, *code, *path)) {
                    problems.push(format!(
                        "{}: got {:?} {actual:?}, expected rejected {:?}",
                        p.file,
                        r.outcome,
                        (stage, code, path)
                    ));
                }
            }
        }
        let to_sender = sender_app(&pipeline, r);
        let replies: Vec<&str> = p
            .outputs
            .iter()
            .filter(|o| Some(o.to.as_str()) == to_sender)
            .map(|o| o.kind.as_str())
            .collect();
        if replies != expected.replies {
            problems.push(format!(
                "{}: replies to the sender {replies:?}, expected {:?}",
                p.file, expected.replies
            ));
        }
        for o in p
            .outputs
            .iter()
            .filter(|o| Some(o.to.as_str()) != to_sender)
        {
            if !o.kind.starts_with("Sync") {
                problems.push(format!(
                    "{}: {} to {} is neither a reply to the sender nor a Sync",
                    p.file, o.kind, o.to
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sxe_process_customer_samples_are_created_and_acknowledged_with_an_assigned_account_number() {
    let (pipeline, processed) = process_all(CONFIG);
    let mut seen = 0;
    for p in processed
        .iter()
        .filter(|p| p.file.starts_with("ProcessCustomerPartyMaster_SXe_"))
    {
        seen += 1;
        let r = &p.report;
        assert_eq!(r.outcome, Outcome::Applied, "{}: {r:#?}", p.file);
        let record = pipeline
            .store
            .record(r.record.as_deref().unwrap())
            .unwrap()
            .unwrap();
        let number = record
            .fields
            .identity
            .account_number
            .clone()
            .unwrap_or_default();
        assert!(
            number.len() == 7
                && number.starts_with('C')
                && number[1..].bytes().all(|b| b.is_ascii_digit()),
            "{}: account number {number:?} does not follow account_number_format C{{seq:06}}",
            p.file
        );
        let sender = sender_app(&pipeline, r).unwrap();
        assert!(
            record
                .xrefs
                .iter()
                .any(|x| x.application == sender && x.id == number),
            "{}: the sender's cross-reference does not carry the assigned number {number}: {:?}",
            p.file,
            record.xrefs
        );
        let ack = p
            .outputs
            .iter()
            .find(|o| o.kind == "AcknowledgeCustomerPartyMaster")
            .unwrap_or_else(|| panic!("{}: no Acknowledge emitted", p.file));
        assert_eq!(ack.to, sender, "{}: Acknowledge goes to the sender", p.file);
        let ack = bod::parse(ack.xml.as_bytes(), Limits::default()).unwrap();
        assert_eq!(
            ack.header.response_code.as_deref(),
            Some("Accepted"),
            "{}",
            p.file
        );
        assert_eq!(
            ack.header
                .original
                .as_ref()
                .and_then(|o| o.bod_id.as_deref()),
            r.bod_id.as_deref(),
            "{}: the Acknowledge echoes the Process BODID",
            p.file
        );
        match ack.nouns.first() {
            Some(Noun::Account(party)) => assert_eq!(
                party.ids.first().map(|i| i.value.as_str()),
                Some(number.as_str()),
                "{}: the Acknowledge carries the assigned number",
                p.file
            ),
            other => panic!("{}: Acknowledge without an account: {other:?}", p.file),
        }
    }
    assert_eq!(
        seen, 2,
        "expected the two SX.e ProcessCustomerPartyMaster samples"
    );
}

#[test]
fn woocommerce_uk_country_code_maps_to_gb_and_back_to_each_receivers_format() {
    let (pipeline, processed) = process_all(CONFIG);
    let p = processed
        .iter()
        .find(|p| p.file == "ProcessCustomerPartyMaster_SXe_WooCommerce.xml")
        .unwrap();
    assert!(
        p.report
            .decisions
            .iter()
            .any(|d| d.contains("UK→GB") && d.contains("alternate")),
        "no alternate-table decision: {:?}",
        p.report.decisions
    );
    let record = pipeline
        .store
        .record(p.report.record.as_deref().unwrap())
        .unwrap()
        .unwrap();
    let hub_country = record
        .fields
        .address
        .as_ref()
        .and_then(|a| a.country.as_deref());
    assert_eq!(hub_country, Some("GB"), "the hub keeps ISO alpha-2");
    let country_in = |to: &str| {
        let row = p
            .outputs
            .iter()
            .find(|o| o.to == to)
            .unwrap_or_else(|| panic!("nothing emitted to {to}"));
        let doc = bod::parse(row.xml.as_bytes(), Limits::default()).unwrap();
        match doc.nouns.first() {
            Some(Noun::Account(party)) => party
                .addresses
                .iter()
                .find_map(|a| a.country.clone())
                .unwrap_or_default(),
            other => panic!("{} to {to} without an account: {other:?}", row.kind),
        }
    };
    assert_eq!(country_in("lid://infor.ln.ln01"), "GBR", "LN is iso3");
    assert_eq!(country_in("lid://infor.ims.salesforceims"), "GB", "iso2");
    assert_eq!(
        country_in("lid://infor.ims.woocommercein"),
        "UK",
        "the Acknowledge speaks the sender's alternate code"
    );
}

/// The OAGIS 9.2 generated instances carry every element of the standard; with their
/// placeholder sender configured they get through decoding and validation, and stop where
/// placeholder data must stop.
#[test]
fn oagis92_placeholder_documents_are_read_fully_once_their_placeholder_sender_is_known() {
    let config = format!(
        "{CONFIG}\n[[applications]]\nname = \"OAGIS placeholder\"\nlogical_id = \"normalizedString\"\n"
    );
    let (_, processed) = process_all(&config);
    let error = |file: &str| {
        let p = processed.iter().find(|p| p.file == file).unwrap();
        assert_eq!(p.report.outcome, Outcome::Rejected, "{file}");
        let e = p.report.error.clone().unwrap();
        (e.stage, e.code, e.path, e.message)
    };
    let (stage, code, path, message) = error("OAGIS92_SyncCustomerPartyMaster.xml");
    assert_eq!((stage, code), (Stage::Country, "unknown_country_code"));
    assert_eq!(
        path.as_deref(),
        Some("/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Location/Address/CountryCode")
    );
    assert!(message.contains("normalizedString"), "{message}");
    let (stage, code, path, _) = error("OAGIS92_ConfirmBOD.xml");
    assert_eq!((stage, code), (Stage::Validate, UNSUPPORTED));
    assert_eq!(path.as_deref(), Some("/ConfirmBOD/DataArea/Confirm"));
}

#[test]
fn documents_emitted_for_real_samples_validate_against_their_schemas() {
    common::require_xmllint();
    let (_, processed) = process_all(CONFIG);
    let tmp = tempfile::tempdir().unwrap();
    let mut by_kind: BTreeMap<String, Vec<ToCheck>> = BTreeMap::new();
    for p in &processed {
        for (n, o) in p.outputs.iter().enumerate() {
            let file = tmp
                .path()
                .join(format!("{}.{}.{}.xml", p.file, n + 1, o.kind));
            std::fs::write(&file, &o.xml).unwrap();
            by_kind.entry(o.kind.clone()).or_default().push(ToCheck {
                origin: p.file.clone(),
                file,
            });
        }
    }
    assert!(by_kind.contains_key("ConfirmBOD"));
    assert!(by_kind.contains_key("AcknowledgeCustomerPartyMaster"));
    assert!(by_kind.contains_key("SyncCustomerPartyMaster"));
    let problems = common::xmllint_validate_by_kind(common::schema_for_kind, &by_kind);
    assert!(
        problems.is_empty(),
        "{} schema violation(s) (kept in {}):\n{}",
        problems.len(),
        tmp.keep().display(),
        problems.join("\n")
    );
}

/// `bodflow check` with no configuration reads every real sample and refuses each with a
/// coded reason (no sender is configured), without crashing.
#[test]
fn check_command_refuses_every_real_sample_with_a_code_and_exits_1_without_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::bodflow()
        .current_dir(tmp.path())
        .arg("check")
        .arg(samples_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for file in sample_files() {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("/{file}: ")))
            .unwrap_or_else(|| panic!("no line for {file} in\n{stdout}"));
        assert!(
            line.contains(": invalid [validate/unknown_sender]")
                || line.contains(": invalid [validate/missing_field]"),
            "{line}"
        );
    }
    let n = sample_files().len();
    assert!(
        stdout.contains(&format!("{n} checked, {n} invalid")),
        "{stdout}"
    );
}
