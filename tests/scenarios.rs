//! Scenario tests (issue 5 item 8): one folder per source system under `fixtures/scenarios/`,
//! each a story told in numbered steps against one store, with the expected results as golden
//! files beside it.
//!
//! A scenario folder holds:
//! - `bodflow.toml`: the configuration the story starts with;
//! - numbered steps, run in name order with the `bodflow` binary on one `--store`:
//!   - `NNN-*.xml`: a BOD, `bodflow replay FILE --json --out OUT`;
//!   - `NNN-*.toml`: a configuration change — from this step on the story runs under this
//!     whole file (an application re-activated, a flow switched off, ...);
//!   - `NNN-*.cmd`: an operator command: `#` lines say why, the other line is what follows
//!     `bodflow` (`parked release --reason inactive_application --json --now {now}`); the
//!     harness adds `--store` and `--config`, and fills `{now}` and `{out}`;
//! - `expected/`: the golden files — `steps.txt` (each step's output: the replay JSON lines,
//!   the command's output), `records.jsonl` (the final hub records with their
//!   cross-references), `parked.jsonl` (what is still parked) and `out/` (every emitted BOD:
//!   a replay's own `--out` files, or what a command left in the outbox, named after its step).
//!
//! Every scenario is compared with its golden files (readable diffs) and every emitted BOD is
//! validated with `xmllint --schema` against `schemas/` by [`every_scenario_matches_its_golden_files_and_schemas`];
//! adding a scenario is adding a folder and blessing it:
//! `BODFLOW_BLESS=1 cargo test --test scenarios`, then review `git diff fixtures/scenarios`.
//! The named tests below then assert each scenario's key facts explicitly, so a reader sees
//! what the golden files prove. Each scenario runs once per test process (cached).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bodflow::store::{HubRecord, Kind, Parked};
use serde_json::Value;

mod common;

/// The processing time written into every emitted BOD, so the output is reproducible.
const NOW: &str = "2026-01-01T00:00:00Z";

fn scenarios_dir() -> PathBuf {
    common::root().join("fixtures/scenarios")
}

/// One step's file and what it printed.
struct StepOutput {
    file: String,
    /// JSON lines of a replay or a `--json` command; empty for a configuration step.
    json: Vec<Value>,
    /// Documents a command left in the outbox: (file name under `out`, receiver).
    outbox: Vec<(String, String)>,
}

/// A scenario after all its steps.
struct Run {
    name: String,
    steps: Vec<StepOutput>,
    /// `steps.txt` as produced.
    transcript: String,
    records: Vec<HubRecord>,
    parked: Vec<Parked>,
    /// Emitted documents: file name → text.
    emitted: BTreeMap<String, String>,
    /// Where the emitted documents are (for xmllint).
    out: tempfile::TempDir,
}

impl Run {
    /// The step whose file name starts with `prefix` (`"030"`).
    fn step(&self, prefix: &str) -> &StepOutput {
        self.steps
            .iter()
            .find(|s| s.file.starts_with(prefix))
            .unwrap_or_else(|| panic!("{}: no step {prefix}", self.name))
    }

    /// The first JSON line of a step (a replay's report).
    fn report(&self, prefix: &str) -> &Value {
        self.step(prefix)
            .json
            .first()
            .unwrap_or_else(|| panic!("{}: step {prefix} printed no JSON", self.name))
    }

    fn record(&self, id: &str) -> &HubRecord {
        self.records
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{}: no record {id}", self.name))
    }

    /// Live records of a kind whose display name is `name`.
    fn named(&self, kind: Kind, name: &str) -> Vec<&HubRecord> {
        self.records
            .iter()
            .filter(|r| r.kind == kind && !r.deleted && r.display_name() == name)
            .collect()
    }

    /// The documents a step emitted to `to` (a logical ID), as text.
    fn emitted_to(&self, prefix: &str, to: &str) -> Vec<&str> {
        let step = self.step(prefix);
        step.json
            .iter()
            .flat_map(|line| line["outputs"].as_array().cloned().unwrap_or_default())
            .filter(|o| o["to"] == to)
            .filter_map(|o| {
                o["file"]
                    .as_str()
                    .map(|f| f.trim_start_matches("out/").to_string())
            })
            // A resync's files (`--out`) all go to its one application.
            .chain(
                step.json
                    .iter()
                    .filter(|line| line["application"] == to)
                    .flat_map(|line| line["files"].as_array().cloned().unwrap_or_default())
                    .filter_map(|f| f.as_str().map(|f| f.trim_start_matches("out/").to_string())),
            )
            .chain(
                step.outbox
                    .iter()
                    .filter(|(_, t)| t == to)
                    .map(|(f, _)| f.clone()),
            )
            .map(|f| self.emitted[&f].as_str())
            .collect()
    }
}

/// Runs (once per process) the scenario in `fixtures/scenarios/<name>`.
fn scenario(name: &str) -> Arc<Run> {
    /// One cell per scenario: the first test to ask runs it, the others wait for it.
    type Cell = Arc<OnceLock<Arc<Run>>>;
    static RUNS: OnceLock<Mutex<BTreeMap<String, Cell>>> = OnceLock::new();
    let cell = RUNS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| Arc::new(run_scenario(name))).clone()
}

fn run_scenario(name: &str) -> Run {
    let dir = scenarios_dir().join(name);
    assert!(
        dir.join("bodflow.toml").is_file(),
        "{}: a scenario needs its bodflow.toml",
        dir.display()
    );
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let out = tempfile::tempdir().unwrap();
    let mut config = dir.join("bodflow.toml");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{name}: no numbered steps");

    let mut steps = Vec::new();
    let mut transcript = String::new();
    for file in files {
        let path = dir.join(&file);
        let stem = file
            .rsplit_once('.')
            .map_or(file.as_str(), |(s, _)| s)
            .to_string();
        let stdout = match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => {
                transcript.push_str(&format!("## {file}\n"));
                run_bodflow(
                    &dir,
                    &[
                        "replay".into(),
                        file.clone(),
                        "--json".into(),
                        "--now".into(),
                        NOW.into(),
                        "--out".into(),
                        out.path().display().to_string(),
                    ],
                    &store,
                    &config,
                )
            }
            Some("toml") => {
                transcript.push_str(&format!("## {file}: the configuration from here on\n"));
                config = path.clone();
                String::new()
            }
            Some("cmd") => {
                let text = std::fs::read_to_string(&path).unwrap();
                let line = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .unwrap_or_else(|| panic!("{file}: no command line"));
                transcript.push_str(&format!("## {file}: bodflow {line}\n"));
                let args: Vec<String> = line
                    .split_whitespace()
                    .map(|a| {
                        a.replace("{now}", NOW)
                            .replace("{out}", &out.path().display().to_string())
                    })
                    .collect();
                run_bodflow(&dir, &args, &store, &config)
            }
            _ => panic!("{name}/{file}: a step is .xml, .toml or .cmd"),
        };
        // What a command left in the outbox is what the service would publish: take it out,
        // named after the step, its receiver noted in the transcript.
        let outbox = drain_outbox(&store, out.path(), &stem);
        let stdout = stdout.replace(&format!("{}/", out.path().display()), "out/");
        // A resync's duration is the one figure that differs between runs.
        let stdout: String = stdout
            .lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(mut v) if v.get("seconds").is_some() => {
                    v["seconds"] = Value::from(0);
                    v.to_string() + "\n"
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let json: Vec<Value> = stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}: {e}: {l}")))
            .collect();
        transcript.push_str(&stdout);
        for (f, to) in &outbox {
            transcript.push_str(&format!("outbox: out/{f} -> {to}\n"));
        }
        steps.push(StepOutput { file, json, outbox });
    }

    let guard = common::fork_guard();
    let db = common::open_store(&store);
    let records: Vec<HubRecord> = db.records().map(Result::unwrap).collect();
    let parked: Vec<Parked> = db.parked().map(Result::unwrap).collect();
    drop(db);
    drop(guard);
    let emitted = list(out.path())
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(out.path().join(&f)).unwrap();
            (f, text)
        })
        .collect();
    Run {
        name: name.to_string(),
        steps,
        transcript,
        records,
        parked,
        emitted,
        out,
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `bodflow ARGS --store STORE --config CONFIG` in the scenario folder; its stdout. A failed
/// command fails the scenario.
fn run_bodflow(dir: &Path, args: &[String], store: &Path, config: &Path) -> String {
    let out = common::output_unlocked(
        common::bodflow()
            .current_dir(dir)
            .args(args)
            .arg("--store")
            .arg(store)
            .arg("--config")
            .arg(config),
    );
    assert!(
        out.status.success(),
        "bodflow {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes the outbox rows left after a step as `<stem>.<n>.<Kind>.xml` and removes them, as
/// the service's publisher would; returns (file, receiver) of each.
fn drain_outbox(store: &Path, out: &Path, stem: &str) -> Vec<(String, String)> {
    if !store.exists() {
        return Vec::new();
    }
    let _guard = common::fork_guard();
    let db = common::open_store(store);
    let rows: Vec<(u64, bodflow::store::OutboxRow)> = db.outbox().map(Result::unwrap).collect();
    let mut written = Vec::new();
    for (n, (_, row)) in rows.iter().enumerate() {
        let file = format!("{stem}.{}.{}.xml", n + 1, row.kind);
        std::fs::write(out.join(&file), &row.xml).unwrap();
        written.push((file, row.reply_to.clone().unwrap_or_else(|| row.to.clone())));
    }
    let seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
    db.remove_outbox(&seqs).unwrap();
    db.flush().unwrap();
    written
}

fn records_jsonl(records: &[HubRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

fn parked_jsonl(parked: &[Parked]) -> String {
    parked
        .iter()
        .map(|p| {
            serde_json::json!({
                "seq": p.seq, "reason": p.reason.code(), "application": p.application,
                "key": p.key.as_ref().map(|k| k.display()), "message_id": p.message_id,
                "source": p.source,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn diff(name: &str, expected: &str, actual: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, actual);
    format!(
        "--- {name} (golden)\n+++ {name} (actual)\n{}",
        d.unified_diff().context_radius(2)
    )
}

/// Compares a run with `expected/` (or writes it with `BODFLOW_BLESS`); returns the problems.
fn compare_with_golden(run: &Run) -> Vec<String> {
    let expected = scenarios_dir().join(&run.name).join("expected");
    let files = [
        ("steps.txt", run.transcript.clone()),
        ("records.jsonl", records_jsonl(&run.records)),
        ("parked.jsonl", parked_jsonl(&run.parked)),
    ];
    if std::env::var_os("BODFLOW_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&expected);
        std::fs::create_dir_all(expected.join("out")).unwrap();
        for (name, text) in &files {
            std::fs::write(expected.join(name), text).unwrap();
        }
        for (name, text) in &run.emitted {
            std::fs::write(expected.join("out").join(name), text).unwrap();
        }
        eprintln!(
            "blessed {}: {} steps, {} records, {} parked, {} documents",
            run.name,
            run.steps.len(),
            run.records.len(),
            run.parked.len(),
            run.emitted.len()
        );
        return Vec::new();
    }
    let mut problems = Vec::new();
    for (name, actual) in &files {
        match std::fs::read_to_string(expected.join(name)) {
            Ok(golden) if golden == *actual => {}
            Ok(golden) => problems.push(diff(name, &golden, actual)),
            Err(_) => problems.push(format!(
                "{}/expected/{name} missing: bless with BODFLOW_BLESS=1",
                run.name
            )),
        }
    }
    let golden_out: BTreeMap<String, String> = std::fs::read_dir(expected.join("out"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(e.path()).unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, text) in &golden_out {
        match run.emitted.get(name) {
            Some(actual) if actual == text => {}
            Some(actual) => problems.push(diff(&format!("out/{name}"), text, actual)),
            None => problems.push(format!("out/{name}: expected but not emitted")),
        }
    }
    for name in run.emitted.keys().filter(|n| !golden_out.contains_key(*n)) {
        problems.push(format!("out/{name}: emitted but not in expected/out"));
    }
    problems
}

fn scenario_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("bodflow.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_scenario_matches_its_golden_files_and_schemas() {
    common::require_xmllint();
    let names = scenario_names();
    assert!(names.len() >= 5, "scenarios: {names:?}");
    let mut problems = Vec::new();
    for name in &names {
        let run = scenario(name);
        for p in compare_with_golden(&run) {
            problems.push(format!("[{name}] {p}"));
        }
        let by_kind = common::emitted_by_kind(run.out.path());
        assert!(!by_kind.is_empty(), "{name} emitted nothing");
        for p in common::xmllint_validate_by_kind(common::schema_for_kind, &by_kind) {
            problems.push(format!("[{name}] schema: {p}"));
        }
    }
    assert!(
        problems.is_empty(),
        "scenario output differs from fixtures/scenarios/*/expected (bless with BODFLOW_BLESS=1 if intended) or does not validate:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The key facts of each scenario, asserted one by one.
// ---------------------------------------------------------------------------------------------

fn outcome(report: &Value) -> (&str, &str) {
    (
        report["outcome"].as_str().unwrap_or(""),
        report["action"].as_str().unwrap_or(""),
    )
}

fn decisions(report: &Value) -> String {
    report["decisions"].to_string()
}

fn xref<'a>(record: &'a HubRecord, application: &str) -> Option<&'a str> {
    record.xref_for(application).map(|x| x.id.as_str())
}

const LN: &str = "lid://infor.ln.ln01";
const CRM: &str = "lid://infor.crm.crm01";

/// ERP back office into a CRM: default account for orphan contacts, default account manager
/// and record owner, the sales-person role, ISO3 vs alternate country codes, an inactive back
/// office that parks and releases on re-activation.
#[test]
fn erp_into_crm_orphans_owners_countries_and_an_inactive_back_office() {
    const M3: &str = "lid://infor.m3.m3uk";
    let run = scenario("erp-into-crm");

    // The contact arrives before its account: kept on the LN-ORPHANS placeholder, which
    // bodflow created on first use, with the intended parent remembered.
    let r = run.report("010");
    assert_eq!(outcome(r), ("applied", "created"));
    assert!(
        decisions(r).contains("kept on default account ACC-000001, re-linked when it arrives"),
        "{r}"
    );
    let placeholder = run.record("ACC-000001");
    assert!(placeholder.placeholder);
    assert_eq!(
        placeholder.fields.identity.account_number.as_deref(),
        Some("LN-ORPHANS")
    );
    // ... and re-linked when the account arrives.
    let r = run.report("020");
    assert_eq!(outcome(r), ("applied", "created"));
    assert!(
        decisions(r).contains("re-linked waiting contacts CON-000001 to ACC-000002"),
        "{r}"
    );
    let eva = run.record("CON-000001");
    assert_eq!(eva.account.as_deref(), Some("ACC-000002"));
    assert_eq!(eva.intended_parent, None);
    // The placeholder exists only in the hub: no application is ever sent it.
    assert!(
        !run.emitted.values().any(|xml| xml.contains("LN-ORPHANS")),
        "the placeholder account went out"
    );

    // Owner from the Internal sales person (personnel number 1001), who also becomes the
    // account manager of the new account.
    let nordwind = run.named(Kind::Account, "Nordwind Logistik GmbH");
    assert_eq!(nordwind.len(), 1, "no duplicate account: {nordwind:?}");
    let nordwind = nordwind[0];
    assert_eq!(nordwind.owner.owner.as_deref(), Some("U-JSMITH"));
    assert_eq!(nordwind.owner.account_manager.as_deref(), Some("U-JSMITH"));
    // Only an External sales person: the role decides, so the defaults apply.
    let alpenblick = run.named(Kind::Account, "Alpenblick Hotels GmbH")[0];
    assert_eq!(alpenblick.owner.owner.as_deref(), Some("U-ADMIN"));
    assert_eq!(
        alpenblick.owner.account_manager.as_deref(),
        Some("U-SALESTEAM")
    );

    // The CRM's answer links to the LN account by its number (no second account); the CRM
    // does not master the owner, so its sales person is noted and ignored.
    let r = run.report("040");
    assert_eq!(outcome(r), ("applied", "linked"));
    assert_eq!(xref(nordwind, CRM), Some("AKXW7B000411"));
    assert_eq!(xref(nordwind, LN), Some("BP500100"));
    assert!(decisions(r).contains("does not master identity, address, commercial, owner"));
    // The CRM's contact links by e-mail, compared case-insensitively.
    assert_eq!(outcome(run.report("050")), ("applied", "linked"));
    assert_eq!(xref(eva, CRM), Some("CKXW7B000901"));
    assert_eq!(run.named(Kind::Contact, "Eva Brandt").len(), 1);

    // The inactive back office: parked, not rejected; nothing is sent to it meanwhile.
    assert_eq!(outcome(run.report("060")), ("parked", ""));
    assert!(run.emitted_to("020", M3).is_empty());
    // Re-activated (070) and released (080): created, UK → GB, sent to LN as GBR.
    let r = run.report("080");
    assert_eq!(outcome(r), ("applied", "created"));
    assert_eq!(r["country"], "GB");
    assert!(decisions(r).contains("country UK→GB (alternate)"));
    let to_ln = run.emitted_to("080", LN);
    assert_eq!(to_ln.len(), 1);
    assert!(to_ln[0].contains("<CountryCode>GBR</CountryCode>"));
    assert!(run.parked.is_empty(), "still parked: {:?}", run.parked);

    // ISO3 in, alternate out: LN's GBR is GB for the CRM and UK for M3, now active.
    let to_crm = run.emitted_to("090", CRM);
    let to_m3 = run.emitted_to("090", M3);
    assert!(to_crm[0].contains("<CountryCode>GB</CountryCode>"));
    assert!(to_m3[0].contains("<CountryCode>UK</CountryCode>"));
    // M3 never saw it: an Add with an empty ID, so it can create the customer and answer.
    assert!(to_m3[0].contains(r#"actionCode="Add""#));

    // LN masters the address, not communication: the new address reaches the CRM, LN's new
    // phone number does not replace the CRM's.
    let to_crm = run.emitted_to("100", CRM);
    assert!(to_crm[0].contains("Grosser Grasbrook 10"));
    assert!(!to_crm[0].contains("+49 40 9999 0"));
    assert!(to_crm[0].contains(r#"actionCode="Change""#));
    assert!(to_crm[0].contains("AKXW7B000411"), "in the CRM's own ID");
    assert_eq!(
        nordwind
            .fields
            .address
            .as_ref()
            .and_then(|a| a.lines.first()),
        Some(&"Grosser Grasbrook 10".to_string())
    );
}

/// A marketing tool matching contacts by e-mail (trimmed, case-folded), with push/pull
/// (inbound/outbound flows on and off), add-new vs update-existing (flow `create`/`update`),
/// limited update fields (outbound `fields`, `masters`) and a resync of what it missed.
#[test]
fn marketing_tool_matches_by_email_with_push_pull_switches_and_limited_fields() {
    const MARKETING: &str = "lid://acme.marketing";
    let run = scenario("marketing-by-email");

    // Accounts do not flow to the marketing tool; contacts do, without the address.
    assert!(run.emitted_to("010", MARKETING).is_empty());
    let to_marketing = run.emitted_to("020", MARKETING);
    assert_eq!(to_marketing.len(), 1);
    assert!(to_marketing[0].contains(r#"actionCode="Add""#));
    assert!(to_marketing[0].contains("Eva.Lang@Alpine-Outdoor.example"));
    assert!(
        !to_marketing[0].contains("Bahnhofstrasse"),
        "outbound fields = identity, communication: no address"
    );

    // "update existing only" (inbound create off): its record of Eva Lang, e-mail padded and
    // in other case, links to the CRM's contact instead of creating a second one ...
    let r = run.report("040");
    assert_eq!(outcome(r), ("applied", "linked"));
    assert_eq!(r["record"], "CON-000001");
    assert!(decisions(r)
        .contains(r#"linked to CON-000001 by email \"eva.lang@ALPINE-OUTDOOR.example\""#));
    assert_eq!(
        run.named(Kind::Contact, "E. Lang").len(),
        0,
        "its name is not mastered"
    );
    let eva = run.record("CON-000001");
    assert_eq!(xref(eva, MARKETING), Some("MC-5501"));
    // ... its mobile number (communication, which it masters) is taken ...
    assert!(eva
        .fields
        .communication
        .phones
        .iter()
        .any(|p| p.number == "+41 79 555 10 10"));
    // ... and a contact nobody knows is not created.
    let r = run.report("050");
    assert_eq!(outcome(r), ("filtered", ""));
    assert!(decisions(r).contains("inbound ContactMaster creates are off"));

    // A CRM change reaches the marketing tool in its own ID, fields limited.
    let to_marketing = run.emitted_to("060", MARKETING);
    assert_eq!(to_marketing.len(), 1);
    assert!(to_marketing[0].contains(">MC-5501</ID>"));
    assert!(to_marketing[0].contains(r#"actionCode="Change""#));
    assert!(to_marketing[0].contains("Head of Buying"));
    assert!(!to_marketing[0].contains("Seestrasse"));
    // The CRM no longer masters communication once the marketing tool is linked.
    assert!(decisions(run.report("060")).contains("Infor CRM does not master communication"));

    // Pull off (070): changes and new contacts are applied in the hub and not sent.
    for step in ["080", "090"] {
        assert_eq!(run.report(step)["outcome"], "applied");
        assert!(run.emitted_to(step, MARKETING).is_empty(), "step {step}");
    }
    // Add new, no updates (100): the sign-up is created (owner: its default, no account) and
    // goes to the CRM; an update of a contact it knows is filtered.
    let r = run.report("110");
    assert_eq!(outcome(r), ("applied", "created"));
    let lea = run.named(Kind::Contact, "Lea Frei");
    assert_eq!(lea.len(), 1);
    assert_eq!(lea[0].owner.owner.as_deref(), Some("U-MARKETING"));
    assert_eq!(lea[0].account, None);
    assert_eq!(run.emitted_to("110", CRM).len(), 1);
    let r = run.report("120");
    assert_eq!(outcome(r), ("filtered", ""));
    assert!(decisions(r).contains("inbound ContactMaster updates are off"));
    assert!(!run
        .record("CON-000001")
        .fields
        .communication
        .phones
        .iter()
        .any(|p| p.number == "+41 79 555 99 99"));

    // Resync: every contact it may receive, in its IDs — Changes for the two it knows (Eva
    // with the name it missed while pull was off), Adds for the two it never answered.
    let summary = run.report("130");
    assert_eq!(summary["application"], MARKETING);
    assert_eq!(summary["contacts"]["sent"], 4);
    assert_eq!(summary["contacts"]["added"], 2);
    assert_eq!(summary["accounts"]["records"], 0, "--noun ContactMaster");
    let resent = run.emitted_to("130", MARKETING);
    assert_eq!(resent.len(), 4);
    let eva_again = resent
        .iter()
        .find(|x| x.contains(">MC-5501</ID>"))
        .expect("Eva in the marketing tool's ID");
    assert!(eva_again.contains("Lang-Meier") && eva_again.contains(r#"actionCode="Change""#));
    let mia = resent
        .iter()
        .find(|x| x.contains("Mia Huber"))
        .expect("the contact created while pull was off");
    assert!(mia.contains(r#"actionCode="Add""#));
    assert!(resent.iter().all(|x| !x.contains("Seestrasse")));
}

/// A CRM-first company: the ERP must not create accounts (match_only on account number), so
/// its customer waits parked until the CRM account carries its number — typed on the CRM side,
/// which releases and links it automatically; then updates flow both ways, each side changing only what it masters; the CRM asks for auto-numbered accounts
/// with ProcessCustomerPartyMaster.
#[test]
fn crm_first_erp_links_by_account_number_never_creates_and_autonumbers_via_process() {
    let run = scenario("crm-first");

    // The ERP's customer 100450 finds no account with its number: parked, not created.
    let r = run.report("020");
    assert_eq!(outcome(r), ("parked", ""));
    assert!(decisions(r).contains("create_policy match_only, no record matches"));
    // The CRM user types the number (030): in the same transaction the parked ERP document
    // is released and links — no operator step.
    let trigger = run.report("030");
    assert_eq!(outcome(trigger), ("applied", "updated"));
    assert!(
        decisions(trigger).contains("released parked message"),
        "{trigger}"
    );
    let released = &run.step("030").json[1];
    assert_eq!(
        released["source"],
        "020-ln-sync-account-no-match-parked.xml"
    );
    assert_eq!(released["released_by"], trigger["message_id"]);
    assert_eq!(outcome(released), ("applied", "linked"));
    assert!(decisions(released).contains(r#"linked to ACC-000001 by account_number \"100450\""#));
    // The CRM hears of the link (LN's address) in its own ID.
    assert!(run
        .emitted_to("030", CRM)
        .iter()
        .any(|x| x.contains(">AKXW4D000120</ID>") && x.contains("Postfach 1200")));
    let helvetia = run.record("ACC-000001");
    assert_eq!(xref(helvetia, LN), Some("100450"));
    assert_eq!(xref(helvetia, CRM), Some("AKXW4D000120"));
    // No duplicate account: the ERP's upper-case name created nothing.
    assert_eq!(
        run.records
            .iter()
            .filter(|r| r.kind == Kind::Account
                && r.display_name().to_lowercase() == "helvetia feinmechanik ag")
            .count(),
        1
    );
    assert_eq!(
        helvetia.fields.identity.name.as_deref(),
        Some("Helvetia Feinmechanik AG"),
        "the ERP does not master identity"
    );

    // ERP → CRM: LN's address and payment terms reach the CRM in the CRM's ID.
    let to_crm = run.emitted_to("050", CRM);
    assert_eq!(to_crm.len(), 1);
    assert!(to_crm[0].contains(">AKXW4D000120</ID>") && to_crm[0].contains("Technikumstrasse 2"));
    assert!(to_crm[0].contains("<PaymentTermID>N60</PaymentTermID>"));
    // CRM → ERP: the CRM's phone and e-mail reach LN in LN's ID, as ISO3; its address
    // (LN's to master) is ignored.
    let r = run.report("060");
    assert!(decisions(r).contains("Infor CRM does not master address, commercial (ignored)"));
    let to_ln = run.emitted_to("060", LN);
    assert_eq!(to_ln.len(), 1);
    assert!(to_ln[0].contains(">100450</ID>") && to_ln[0].contains(r#"actionCode="Change""#));
    assert!(
        to_ln[0].contains("+41 52 555 49 00")
            && to_ln[0].contains("<CountryCode>CHE</CountryCode>")
    );
    assert!(!to_ln[0].contains("Bahnhofplatz"));
    assert_eq!(
        helvetia.fields.address.as_ref().map(|a| a.lines.clone()),
        Some(vec![
            "Postfach 1200".to_string(),
            "Technikumstrasse 2".to_string()
        ])
    );

    // Process with an empty ID: a new account numbered by account_number_format, answered
    // with AcknowledgeCustomerPartyMaster Accepted carrying the number.
    let r = run.report("070");
    assert_eq!(outcome(r), ("applied", "created"));
    assert!(decisions(r).contains("assigned ID C000001"));
    let ack = run.emitted_to("070", CRM);
    assert_eq!(ack.len(), 1);
    assert!(ack[0].starts_with("<?xml") && ack[0].contains("<AcknowledgeCustomerPartyMaster"));
    assert!(ack[0].contains(r#"<ResponseExpression actionCode="Accepted"/>"#));
    assert!(ack[0].contains(">C000001</ID>"));
    assert!(ack[0].contains("<BODID>AKXW4D000188:PromoteToBackOffice</BODID>"));
    let rheintal = run.record("ACC-000002");
    assert_eq!(
        rheintal.fields.identity.account_number.as_deref(),
        Some("C000001")
    );
    // LN creating the customer under that number links at once.
    assert_eq!(outcome(run.report("080")), ("applied", "linked"));
    assert_eq!(xref(rheintal, LN), Some("C000001"));

    // What no CRM account carries stays parked — and is the only thing parked.
    assert_eq!(outcome(run.report("090")), ("parked", ""));
    assert_eq!(run.parked.len(), 1, "{:?}", run.parked);
    assert_eq!(run.parked[0].reason.code(), "no_match");
    assert_eq!(
        run.parked[0].key.as_ref().map(|k| k.id.as_str()),
        Some("100777")
    );
    assert_eq!(
        run.records
            .iter()
            .filter(|r| r.kind == Kind::Account)
            .count(),
        2,
        "the ERP created no account"
    );
}

/// A billing system: an operator links its accounts by hand (`manual`), later they link by the
/// ERP's account number (`match_only`); it masters the commercial terms only; accounts flow to
/// it as changes, contacts not at all in either direction; an unlinked account stops changing
/// the record and stops receiving Syncs.
#[test]
fn billing_links_by_hand_then_by_account_number_masters_commercial_and_unlinks() {
    const BILLING: &str = "lid://acme.billing";
    let run = scenario("billing");

    // Per-noun directions: the ERP's new customer and its contact are not sent to billing
    // (accounts: changes of linked accounts only; contacts: off).
    for step in ["010", "020"] {
        assert_eq!(outcome(run.report(step)), ("applied", "created"), "{step}");
        assert!(run.emitted_to(step, BILLING).is_empty(), "step {step}");
    }

    // Manual: billing's own account is parked until an operator links it ...
    let parked = run.report("030");
    assert_eq!(outcome(parked), ("parked", ""));
    assert!(decisions(parked).contains(
        "parked: create_policy manual, lid://acme.billing|PB-0093317 waits for `bodflow link`"
    ));
    // ... and the link applies it in the same transaction, audited.
    let link = run.report("040");
    assert_eq!(link["audit"]["action"], "link");
    assert_eq!(link["audit"]["operator"], "ops.jdoe");
    assert_eq!(link["audit"]["record"], "ACC-000001");
    assert_eq!(link["audit"]["released"][0], parked["message_id"]);
    let released = &link["released"][0];
    assert_eq!(
        released["source"],
        "030-billing-sync-account-manual-parked.xml"
    );
    assert_eq!(outcome(released), ("applied", "updated"));
    assert_eq!(released["record"], "ACC-000001");
    // Mastership: of billing's document only the commercial terms are taken; LN hears of them
    // in its own ID, with its own name and address.
    const BILLING_IGNORED: &str = "mastership: Postal Billing does not master identity, address, communication, owner, classification (ignored)";
    assert!(decisions(released).contains(BILLING_IGNORED));
    let to_ln = run.emitted_to("040", LN);
    assert_eq!(to_ln.len(), 1);
    assert!(to_ln[0].contains(">BP600100</ID>") && to_ln[0].contains(r#"actionCode="Change""#));
    assert!(to_ln[0].contains("<PaymentTermID>N45</PaymentTermID>"));
    assert!(to_ln[0].contains("Industriezeile 36") && !to_ln[0].contains("Postfach 118"));
    assert!(!to_ln[0].contains("DONAU KAELTETECHNIK GMBH"));

    // ERP → billing: LN's new address reaches billing in billing's ID, without phone numbers
    // (outbound fields); LN's payment terms are not LN's to change any more.
    let r = run.report("050");
    assert!(decisions(r).contains("mastership: LN Europe does not master commercial (ignored)"));
    let to_billing = run.emitted_to("050", BILLING);
    assert_eq!(to_billing.len(), 1);
    assert!(
        to_billing[0].contains(">PB-0093317</ID>")
            && to_billing[0].contains(r#"actionCode="Change""#)
    );
    assert!(to_billing[0].contains("Hafenstrasse 47-51"));
    assert!(to_billing[0].contains("<PaymentTermID>N45</PaymentTermID>"));
    assert!(
        !to_billing[0].contains("<DialNumber>"),
        "fields: no communication"
    );

    // Billing → ERP: billing's new terms are applied, its new address is ignored.
    let r = run.report("060");
    assert_eq!(outcome(r), ("applied", "updated"));
    assert!(decisions(r).contains(BILLING_IGNORED));
    assert!(decisions(r).contains("updated ACC-000001 (commercial)"));
    let to_ln = run.emitted_to("060", LN);
    assert_eq!(to_ln.len(), 1);
    assert!(to_ln[0].contains("<PaymentTermID>N30</PaymentTermID>"));
    assert!(to_ln[0].contains("Hafenstrasse 47-51") && !to_ln[0].contains("Postfach 200"));
    assert!(
        run.emitted_to("060", BILLING).is_empty(),
        "never back to the sender"
    );

    // Contacts from billing are filtered: counted, no record, no ConfirmBOD.
    let r = run.report("070");
    assert_eq!(outcome(r), ("filtered", ""));
    assert!(decisions(r).contains("inbound ContactMaster creates are off for Postal Billing"));
    assert_eq!(r["outputs"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        run.records
            .iter()
            .filter(|r| r.kind == Kind::Contact)
            .count(),
        1,
        "only LN's contact"
    );

    // Automatic linking (080): a billing account carrying the ERP number links by it ...
    let r = run.report("100");
    assert_eq!(outcome(r), ("applied", "linked"));
    assert!(decisions(r).contains(r#"linked to ACC-000002 by account_number \"BP600200\""#));
    assert!(decisions(r).contains(BILLING_IGNORED));
    let salzach = run.record("ACC-000002");
    assert_eq!(xref(salzach, BILLING), Some("PB-0094120"));
    assert_eq!(
        salzach.fields.commercial.payment_term.as_deref(),
        Some("N14")
    );
    assert_eq!(
        salzach.fields.identity.name.as_deref(),
        Some("Salzach Getränke AG")
    );
    assert!(run.emitted_to("100", LN)[0].contains("<PaymentTermID>N14</PaymentTermID>"));
    // ... one whose number no record carries yet waits `no_match`, and links when the ERP's
    // customer appears (released in the same transaction).
    assert_eq!(outcome(run.report("110")), ("parked", ""));
    let trigger = run.report("120");
    assert_eq!(outcome(trigger), ("applied", "created"));
    let released = &run.step("120").json[1];
    assert_eq!(
        released["source"],
        "110-billing-sync-account-no-match-parked.xml"
    );
    assert_eq!(released["released_by"], trigger["message_id"]);
    assert_eq!(outcome(released), ("applied", "linked"));
    assert_eq!(xref(run.record("ACC-000003"), BILLING), Some("PB-0094388"));
    assert_eq!(run.emitted_to("120", LN).len(), 1);
    assert_eq!(
        run.records
            .iter()
            .filter(|r| r.kind == Kind::Account)
            .count(),
        3,
        "billing created no account"
    );

    // Unlink: audited; the record keeps LN's link and loses billing's.
    let unlink = run.report("130");
    assert_eq!(unlink["audit"]["action"], "unlink");
    assert_eq!(unlink["audit"]["app_id"], "PB-0093317");
    assert_eq!(unlink["audit"]["record"], "ACC-000001");
    // Billing's next document for that ID no longer changes the record: it follows the create
    // policy (match_only: nothing carries billing's own number) and is parked.
    let r = run.report("140");
    assert_eq!(outcome(r), ("parked", ""));
    assert!(r["record"].is_null());
    assert!(run.emitted_to("140", LN).is_empty());
    // And billing receives no Sync for it any more.
    let r = run.report("150");
    assert_eq!(outcome(r), ("applied", "updated"));
    assert!(decisions(r)
        .contains("not sent to Postal Billing: unlinked from ACC-000001 by an operator"));
    assert!(run.emitted_to("150", BILLING).is_empty());
    let donau = run.record("ACC-000001");
    assert_eq!(xref(donau, BILLING), None);
    assert_eq!(xref(donau, LN), Some("BP600100"));
    assert_eq!(donau.unlinked, vec![BILLING.to_string()]);
    // Billing's VK never arrived; LN, the only linked application again, masters every group:
    // its 060 replaced billing's N30.
    assert_eq!(donau.fields.commercial.payment_term.as_deref(), Some("060"));
    assert_eq!(run.parked.len(), 1, "{:?}", run.parked);
    assert_eq!(run.parked[0].reason.code(), "no_match");
    assert_eq!(
        run.parked[0].source,
        "140-billing-sync-account-after-unlink-parked.xml"
    );
}

/// An ERP ↔ mobile sales app: customers flow to the app (in its country codes) and link by
/// the ERP number; only contacts classified `Sales` are sent to it; contacts it creates are
/// stamped `Sales`, become employees of their account and go to the ERP; a soft-deleted
/// contact stops syncing in both directions.
#[test]
fn mobile_sales_gets_only_sales_contacts_stamps_its_own_and_drops_deleted_ones() {
    const MOBILE: &str = "lid://comarch.mobile";
    let run = scenario("mobile-sales");

    // The ERP's customer goes to the app as an Add (empty ID) in its alternate code UK; its
    // answer links by the ERP number.
    let to_mobile = run.emitted_to("010", MOBILE);
    assert_eq!(to_mobile.len(), 1);
    assert!(to_mobile[0].contains(r#"actionCode="Add""#));
    assert!(to_mobile[0].contains(r#"<ID lid="lid://comarch.mobile" variationID="1"/>"#));
    assert!(to_mobile[0].contains("<CountryCode>UK</CountryCode>"));
    let r = run.report("020");
    assert_eq!(outcome(r), ("applied", "linked"));
    assert!(decisions(r).contains(r#"linked to ACC-000001 by account_number \"BP700100\""#));
    assert_eq!(xref(run.record("ACC-000001"), MOBILE), Some("MOB-A-20931"));

    // Classification gating: the Finance contact is not sent, the Sales contact is, with its
    // employer in the app's ID.
    let r = run.report("030");
    assert_eq!(outcome(r), ("applied", "created"));
    assert!(decisions(r).contains(
        "not sent to Mobile Sales: contact not classified Sales (require_classification)"
    ));
    assert!(run.emitted_to("030", MOBILE).is_empty());
    let to_mobile = run.emitted_to("040", MOBILE);
    assert_eq!(to_mobile.len(), 1);
    assert!(to_mobile[0].contains("Oliver Hughes") && to_mobile[0].contains(r#"actionCode="Add""#));
    assert!(to_mobile[0].contains(">MOB-A-20931</ID>"));
    assert!(to_mobile[0].contains("<Code>Sales</Code>"));
    // The app's answer links by e-mail.
    assert_eq!(outcome(run.report("050")), ("applied", "linked"));
    assert_eq!(xref(run.record("CON-000002"), MOBILE), Some("MOB-C-55120"));
    // A contact that gains Sales starts flowing: an Add, since the app never had her.
    let to_mobile = run.emitted_to("060", MOBILE);
    assert_eq!(to_mobile.len(), 1);
    assert!(
        to_mobile[0].contains("Claire Bennett") && to_mobile[0].contains(r#"actionCode="Add""#)
    );
    assert!(run
        .record("CON-000001")
        .xrefs
        .iter()
        .all(|x| x.application != MOBILE));

    // A contact created in the app: stamped Sales, an employee of its account, sent to the ERP.
    let r = run.report("070");
    assert_eq!(outcome(r), ("applied", "created"));
    assert!(
        decisions(r).contains("classification: stamped Sales (Mobile Sales stamp_classification)")
    );
    assert!(decisions(r)
        .contains("relationship: new contact from Mobile Sales is an employee of its account"));
    let priya = run.record(r["record"].as_str().unwrap());
    assert_eq!(priya.display_name(), "Priya Shah");
    assert_eq!(priya.fields.classification, vec!["Sales".to_string()]);
    assert_eq!(
        priya.fields.identity.relationship.as_deref(),
        Some("employee")
    );
    assert_eq!(priya.account.as_deref(), Some("ACC-000001"));
    assert_eq!(priya.created_by, MOBILE);
    let to_ln = run.emitted_to("070", LN);
    assert_eq!(to_ln.len(), 1);
    assert!(to_ln[0].contains(r#"<ContactMaster type="employee">"#));
    assert!(to_ln[0].contains(r#"actionCode="Add""#) && to_ln[0].contains(">BP700100</ID>"));
    assert!(to_ln[0].contains("<Code>Sales</Code>"));

    // The ERP deletes Oliver Hughes (soft): the app, which knows him, hears it once ...
    let r = run.report("080");
    assert_eq!(outcome(r), ("applied", "deleted"));
    assert!(decisions(r).contains("soft-deleted CON-000002"));
    let to_mobile = run.emitted_to("080", MOBILE);
    assert_eq!(to_mobile.len(), 1);
    assert!(
        to_mobile[0].contains(r#"actionCode="Delete""#)
            && to_mobile[0].contains(">MOB-C-55120</ID>")
    );
    // ... and from then on he stops flowing: later updates from either side are filtered and
    // produce no Sync.
    for step in ["090", "100"] {
        let r = run.report(step);
        assert_eq!(outcome(r), ("filtered", ""), "{step}");
        assert!(decisions(r).contains("CON-000002 is deleted; updates are not applied"));
        assert!(run.emitted_to(step, MOBILE).is_empty(), "step {step}");
        assert!(run.emitted_to(step, LN).is_empty(), "step {step}");
    }
    let oliver = run.record("CON-000002");
    assert!(oliver.deleted);
    assert!(!oliver
        .fields
        .communication
        .phones
        .iter()
        .any(|p| p.number == "+44 118 496 0799"));
    assert_eq!(
        oliver.fields.identity.job_title.as_deref(),
        Some("Purchasing Manager")
    );
    assert!(run.parked.is_empty(), "{:?}", run.parked);
}
