//! The `bodflow` binary against its DESIGN §5.1 contract: exit codes, one replay line per
//! input, the §5.4 JSON line, a persistent `--store` with idempotent re-replay, `records`,
//! `check`, `check-config`, hostile input (§6) and `generate`.
//!
//! Each test runs the debug binary in its own temporary folder (so no stray `./bodflow.toml`
//! is picked up) and finishes in well under a second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value};

mod common;
use common::bodflow;

/// Keys of a DESIGN §5.4 replay line.
const DESIGN_KEYS: [&str; 13] = [
    "source",
    "message_id",
    "bod_id",
    "verb",
    "noun",
    "sender",
    "outcome",
    "action",
    "record",
    "owner",
    "country",
    "error",
    "outputs",
];
/// Extension keys: always `decisions`, `nouns` only for documents with several nouns,
/// `released_by` only on the extra line of a parked document another one's change released.
const EXTENSION_KEYS: [&str; 3] = ["decisions", "nouns", "released_by"];
const OUTCOMES: [&str; 6] = [
    "applied",
    "duplicate",
    "stale",
    "rejected",
    "parked",
    "filtered",
];
const ACTIONS: [&str; 4] = ["created", "updated", "linked", "deleted"];
const STAGES: [&str; 5] = ["decode", "validate", "country", "owner", "upsert"];

fn fixtures() -> PathBuf {
    common::root().join("fixtures")
}

/// The fixture documents in name order (what `replay fixtures/` reads).
fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "fixtures/ has only {} documents",
        files.len()
    );
    files
}

/// Runs `cmd` in `dir`; panics (with both streams) if it panicked.
fn run_in(dir: &Path, cmd: &mut Command) -> Output {
    let out = cmd.current_dir(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "bodflow panicked:\n{stderr}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every stdout line as a JSON object.
fn json_lines(out: &Output) -> Vec<Map<String, Value>> {
    stdout(out)
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("not a JSON object line: {l}\n({other:?})"),
        })
        .collect()
}

/// `bodflow replay fixtures --config fixtures/bodflow.toml [extra...] --json`, exit 0.
fn replay_fixtures_json(dir: &Path, extra: &[&std::ffi::OsStr]) -> Vec<Map<String, Value>> {
    let out = run_in(
        dir,
        bodflow()
            .arg("replay")
            .arg(fixtures())
            .arg("--config")
            .arg(fixtures().join("bodflow.toml"))
            .args(extra)
            .arg("--json"),
    );
    assert_exit(&out, 0);
    json_lines(&out)
}

fn str_of<'a>(line: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    line.get(key).and_then(Value::as_str)
}

fn is_snake_case(code: &str) -> bool {
    code.starts_with(|c: char| c.is_ascii_lowercase())
        && !code.ends_with('_')
        && !code.contains("__")
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn replay_of_fixtures_prints_one_text_line_per_fixture_in_name_order_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_in(
        tmp.path(),
        bodflow()
            .arg("replay")
            .arg(fixtures())
            .arg("--config")
            .arg(fixtures().join("bodflow.toml")),
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    // A parked document released by a later fixture's change gets its own line after it.
    let (released, lines): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.contains(" (released by "));
    assert!(
        !released.is_empty(),
        "the fixtures release a parked document"
    );
    let files = fixture_files();
    assert_eq!(lines.len(), files.len(), "one line per fixture:\n{text}");
    for (line, file) in lines.iter().zip(&files) {
        let prefix = format!("{}: ", file.display());
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("line for {} out of order: {line}", file.display()));
        let outcome = rest.split_whitespace().next().unwrap_or_default();
        assert!(OUTCOMES.contains(&outcome), "unknown outcome in {line}");
    }
}

#[test]
fn replay_json_lines_have_exactly_the_design_keys_allowed_values_and_coded_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let all = replay_fixtures_json(tmp.path(), &[]);
    // Released documents' lines follow the line of the document that released them.
    for (i, line) in all.iter().enumerate() {
        if let Some(by) = str_of(line, "released_by") {
            let trigger = all[..i]
                .iter()
                .rev()
                .find(|l| !l.contains_key("released_by"))
                .unwrap();
            assert_eq!(str_of(trigger, "message_id"), Some(by));
        }
    }
    let lines: Vec<_> = all
        .into_iter()
        .filter(|l| !l.contains_key("released_by"))
        .collect();
    let files = fixture_files();
    assert_eq!(lines.len(), files.len(), "one JSON line per fixture");
    let required: BTreeSet<&str> = DESIGN_KEYS.iter().copied().chain(["decisions"]).collect();
    let allowed: BTreeSet<&str> = required.iter().copied().chain(EXTENSION_KEYS).collect();
    let mut seen_outcomes = BTreeSet::new();
    let mut seen_stages = BTreeSet::new();
    for (line, file) in lines.iter().zip(&files) {
        let source = str_of(line, "source").unwrap_or_default();
        assert_eq!(
            source,
            file.display().to_string(),
            "lines follow name order"
        );
        let keys: BTreeSet<&str> = line.keys().map(String::as_str).collect();
        let missing: Vec<_> = required.difference(&keys).collect();
        let extra: Vec<_> = keys.difference(&allowed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{source}: missing keys {missing:?}, unexpected keys {extra:?}"
        );
        assert!(
            str_of(line, "message_id").is_some_and(|m| !m.is_empty()),
            "{source}: message_id"
        );
        let outcome = str_of(line, "outcome").unwrap_or_default();
        assert!(OUTCOMES.contains(&outcome), "{source}: outcome {outcome:?}");
        seen_outcomes.insert(outcome.to_string());
        match &line["action"] {
            Value::Null => {}
            Value::String(a) => assert!(ACTIONS.contains(&a.as_str()), "{source}: action {a}"),
            other => panic!("{source}: action {other}"),
        }
        assert!(line["decisions"].is_array(), "{source}: decisions");
        if let Some(nouns) = line.get("nouns") {
            assert!(
                nouns.as_array().is_some_and(|n| n.len() > 1),
                "{source}: `nouns` only for several nouns: {nouns}"
            );
        }
        for o in line["outputs"].as_array().unwrap() {
            let o = o.as_object().unwrap();
            let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["kind", "to", "file"]),
                "{source}: {o:?}"
            );
        }

        let error = &line["error"];
        if outcome != "rejected" {
            assert!(error.is_null(), "{source}: {outcome} with an error {error}");
            continue;
        }
        let e = error
            .as_object()
            .unwrap_or_else(|| panic!("{source}: rejected without an error object"));
        let keys: BTreeSet<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["stage", "code", "message", "path"]),
            "{source}: error keys"
        );
        let stage = e["stage"].as_str().unwrap_or_default();
        assert!(STAGES.contains(&stage), "{source}: stage {stage:?}");
        seen_stages.insert(stage.to_string());
        let code = e["code"].as_str().unwrap_or_default();
        assert!(
            is_snake_case(code),
            "{source}: code {code:?} is not snake_case"
        );
        assert!(
            e["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
            "{source}: empty message"
        );
        if stage == "validate" {
            assert!(
                e["path"].as_str().is_some_and(|p| p.starts_with('/')),
                "{source}: validate-stage rejection without an XML path: {e:?}"
            );
        }
    }
    for outcome in OUTCOMES {
        assert!(
            seen_outcomes.contains(outcome),
            "the fixtures never produced {outcome}: the test would not notice a wrong one"
        );
    }
    for stage in ["decode", "validate", "country", "upsert"] {
        assert!(
            seen_stages.contains(stage),
            "no {stage} rejection in the fixtures"
        );
    }
}

/// Replays the fixtures into `store` and returns the lines.
fn replay_into_store(dir: &Path, store: &Path) -> Vec<Map<String, Value>> {
    replay_fixtures_json(dir, &["--store".as_ref(), store.as_os_str()])
}

/// `bodflow parked ACTION --json --store STORE --config CONFIG [extra...]` in `dir`.
fn parked_cli(dir: &Path, store: &Path, config: &Path, action: &str, extra: &[&str]) -> Output {
    run_in(
        dir,
        bodflow()
            .args(["parked", action, "--json", "--store"])
            .arg(store)
            .arg("--config")
            .arg(config)
            .args(extra),
    )
}

fn records_json(dir: &Path, store: &Path) -> Vec<Map<String, Value>> {
    let out = run_in(
        dir,
        bodflow().args(["records", "--json", "--store"]).arg(store),
    );
    assert_exit(&out, 0);
    json_lines(&out)
}

#[test]
fn replay_with_store_persists_records_that_records_json_lists_with_hub_ids_and_xrefs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let lines = replay_into_store(tmp.path(), &store);
    let records = records_json(tmp.path(), &store);
    assert!(!records.is_empty(), "no records after replay");

    let valid_id = |id: &str, prefix: &str| {
        id.strip_prefix(prefix)
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut ids = BTreeSet::new();
    for r in &records {
        let id = str_of(r, "id").unwrap_or_default();
        assert!(
            valid_id(id, "ACC-") || valid_id(id, "CON-"),
            "record id {id:?} is not ACC-nnnnnn / CON-nnnnnn"
        );
        let xrefs = r["xrefs"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: no xrefs array"));
        let placeholder = r.get("placeholder").and_then(Value::as_bool) == Some(true);
        assert!(
            placeholder || !xrefs.is_empty(),
            "{id}: a record made by a sender has its cross-reference"
        );
        for x in xrefs {
            assert!(
                str_of(x.as_object().unwrap(), "application").is_some_and(|a| !a.is_empty()),
                "{id}: xref without application: {x}"
            );
        }
        ids.insert(id.to_string());
    }
    assert!(ids.iter().any(|i| i.starts_with("ACC-")), "no account");
    assert!(ids.iter().any(|i| i.starts_with("CON-")), "no contact");
    // Every record a replay line names is in the store.
    for line in &lines {
        if let Some(record) = str_of(line, "record") {
            assert!(
                ids.contains(record),
                "{}: {record} not listed by records",
                str_of(line, "source").unwrap_or_default()
            );
        }
    }
}

/// Sources of the documents that were not rejected in a replay.
fn accepted_sources(lines: &[Map<String, Value>]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| str_of(l, "outcome") != Some("rejected"))
        .map(|l| str_of(l, "source").unwrap().to_string())
        .collect()
}

#[test]
fn second_replay_into_the_same_store_makes_every_accepted_document_a_silent_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let first = replay_into_store(tmp.path(), &store);
    let records_before = records_json(tmp.path(), &store);
    let accepted = accepted_sources(&first);
    assert!(
        accepted.len() >= 30,
        "too few accepted fixtures: {accepted:?}"
    );

    let out_dir = tmp.path().join("out");
    let second = replay_fixtures_json(
        tmp.path(),
        &[
            "--store".as_ref(),
            store.as_os_str(),
            "--out".as_ref(),
            out_dir.as_os_str(),
        ],
    );
    // The first run also printed the line of the parked document a later fixture released;
    // the second run has one line per fixture, every one a duplicate.
    let per_fixture = first
        .iter()
        .filter(|l| !l.contains_key("released_by"))
        .count();
    assert_eq!(second.len(), per_fixture);
    for line in second
        .iter()
        .filter(|l| accepted.contains(str_of(l, "source").unwrap()))
    {
        let source = str_of(line, "source").unwrap();
        assert_eq!(
            str_of(line, "outcome"),
            Some("duplicate"),
            "{source}: a message id already processed is a duplicate (DESIGN §3)"
        );
        assert_eq!(
            line["outputs"].as_array().map(Vec::len),
            Some(0),
            "{source}: a duplicate emits nothing"
        );
        assert!(line["error"].is_null(), "{source}");
    }
    assert_eq!(
        records_json(tmp.path(), &store),
        records_before,
        "the second replay changed hub records"
    );
    // Nothing was written under --out for them either (`<stem>.<n>.<Kind>.xml`).
    for (_, files) in common::emitted_by_kind(&out_dir) {
        for f in files {
            let stem = f.origin.split('.').next().unwrap();
            assert!(
                !accepted
                    .iter()
                    .any(|s| s.ends_with(&format!("/{stem}.xml"))),
                "{} written for an already processed document",
                f.origin
            );
        }
    }
}

/// DESIGN §3 ("A message id already processed is `duplicate` and re-emits nothing new") and
/// fixtures/README ("a second run with the same --store makes every document a duplicate"):
/// rejected documents are processed too, so their re-delivery is a duplicate as well.
#[test]
fn second_replay_into_the_same_store_makes_rejected_documents_silent_duplicates_too() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    replay_into_store(tmp.path(), &store);
    let second = replay_into_store(tmp.path(), &store);
    let offenders: Vec<String> = second
        .iter()
        .filter(|l| {
            str_of(l, "outcome") != Some("duplicate")
                || l["outputs"].as_array().is_none_or(|o| !o.is_empty())
        })
        .map(|l| {
            format!(
                "{}: {} with {} output(s)",
                str_of(l, "source").unwrap_or_default(),
                str_of(l, "outcome").unwrap_or_default(),
                l["outputs"].as_array().map_or(0, Vec::len)
            )
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "not silent duplicates on the second replay:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn check_of_fixtures_exits_1_because_the_fixtures_include_invalid_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_in(tmp.path(), bodflow().arg("check").arg(fixtures()));
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains(": invalid [decode/not_well_formed]")
            && text.contains(": invalid [validate/missing_field]"),
        "{text}"
    );
    let n = fixture_files().len();
    assert!(text.contains(&format!("{n} checked, ")), "{text}");
}

#[test]
fn check_of_a_folder_of_only_valid_fixtures_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("valid");
    std::fs::create_dir(&dir).unwrap();
    // The configuration is found beside the documents, as for fixtures/.
    std::fs::copy(fixtures().join("bodflow.toml"), dir.join("bodflow.toml")).unwrap();
    let valid = [
        "010-ln-sync-account-new-iso3-owner-by-personnel-number.xml",
        "024-marketing-sync-account-owner-fallback-no-role-configured.xml",
        "032-mobile-sync-account-alternate-uk-epoch-variation-no-namespace.xml",
        "040-ln-sync-contact-employer-known.xml",
        "050-crm-process-account-empty-id-hub-assigns-number.xml",
        "054-mobile-sync-contact-iso-8859-1-unknown-employer-no-default-account.xml",
        "070-webshop-process-account-inactive-application-parked.xml",
        "073-ln-sync-two-accounts-in-one-document.xml",
    ];
    for name in valid {
        std::fs::copy(fixtures().join(name), dir.join(name)).unwrap();
    }
    let out = run_in(tmp.path(), bodflow().arg("check").arg(&dir));
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} checked, 0 invalid", valid.len())),
        "{text}"
    );
    assert!(
        text.contains("would be parked"),
        "070 (inactive sender) is valid but parked:\n{text}"
    );
}

/// Also as DESIGN §5.2 spells it: `check --config F` without paths checks the file only;
/// `check` with neither is a usage error.
#[test]
fn check_config_accepts_the_documented_example_config() {
    let tmp = tempfile::tempdir().unwrap();
    let example = common::root().join("deploy/bodflow.example.toml");
    for command in ["check-config", "check"] {
        let out = run_in(
            tmp.path(),
            bodflow().args([command, "--config"]).arg(&example),
        );
        assert_exit(&out, 0);
        assert!(
            stdout(&out).contains(": valid ("),
            "{command}: {}",
            stdout(&out)
        );
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_byte = 10\n").unwrap();
    let out = run_in(tmp.path(), bodflow().args(["check", "--config"]).arg(&bad));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_byte"));
    assert_exit(&run_in(tmp.path(), bodflow().arg("check")), 2);
}

#[test]
fn check_config_rejects_a_misspelled_key_naming_its_full_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[hub]\nlogical_id = \"lid://bodflow.hub\"\n\n[[applications]]\nname = \"A\"\n\
             logical_id = \"lid://a\"\ncountry_code_fromat = \"iso2\"\n",
            "applications[0].country_code_fromat",
        ),
        (
            "[[applications]]\nname = \"A\"\nlogical_id = \"lid://a\"\n\n\
             [applications.flows.ContactMaster]\ninbound = { create = true, updte = false }\n",
            "applications[0].flows.ContactMaster.inbound.updte",
        ),
        ("[limits]\nmax_byte = 10\n", "limits.max_byte"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = run_in(
            tmp.path(),
            bodflow().args(["check-config", "--config"]).arg(&file),
        );
        assert!(!out.status.success(), "{key}: accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "stderr does not name {key}:\n{stderr}"
        );
    }
}

/// `bodflow run` would otherwise wait for a broker it can never reach (a URL lapin cannot
/// read), or reach it in plain text (`amqps` without TLS in this build): both are
/// configuration errors at the start, named without the URL's password, and `check-config`
/// reports them too.
#[test]
fn an_amqp_url_no_connection_could_honour_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bodflow.toml");
    let with_amqp = |amqp: &str| std::fs::write(&config, format!("[amqp]\n{amqp}\n")).unwrap();
    let with_url = |url: &str| with_amqp(&format!("url = \"{url}\""));
    let run = |env_url: Option<&str>| {
        let mut cmd = bodflow();
        cmd.args(["run", "--config"])
            .arg(&config)
            .current_dir(tmp.path())
            .env_remove("BODFLOW_AMQP_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(url) = env_url {
            cmd.env("BODFLOW_AMQP_URL", url);
        }
        let mut child = cmd.spawn().unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("bodflow run kept running with a URL it cannot use");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let url = |url: &str| format!("url = \"{url}\"");
    let cases = [
        (
            url("amqp://bodflow:s3cret@[::1x]:5672/%2f"),
            "amqp.url: not an AMQP URL",
        ),
        (
            url("amqp:bodflow:s3cret@rabbit.example"),
            "amqp.url: not an AMQP URL",
        ),
        // TLS settings that would not be used, or files that cannot be.
        (
            url("amqp://bodflow:s3cret@rabbit.example/%2f") + "\n[amqp.tls]\nca_file = \"ca.pem\"",
            "[amqp.tls] is set, but amqp.url is not an amqps:// URL",
        ),
        (
            url("amqps://bodflow:s3cret@rabbit.example/%2f") + "\n[amqp.tls]\nca_file = \"ca.pem\"",
            "amqp.tls.ca_file: ca.pem: cannot read it",
        ),
        (
            url("amqps://bodflow:s3cret@rabbit.example/%2f")
                + "\n[amqp.tls]\ncert_file = \"bodflow.toml\"\nkey_file = \"bodflow.toml\"",
            "amqp.tls.cert_file: bodflow.toml: no PEM certificate",
        ),
    ];
    for (amqp, says) in &cases {
        with_amqp(amqp);
        for out in [
            run(None),
            run_in(
                tmp.path(),
                bodflow()
                    .args(["check-config", "--config"])
                    .arg(&config)
                    .env_remove("BODFLOW_AMQP_URL"),
            ),
        ] {
            assert_exit(&out, 2);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(says), "{amqp}: {stderr}");
            assert!(
                !stderr.contains("s3cret"),
                "{amqp}: the password is shown: {stderr}"
            );
        }
    }
    assert!(
        !tmp.path().join("data").exists(),
        "the store was opened before the URL was checked"
    );
    // amqps with no CA certificate to trust: none in the system's store (here: SSL_CERT_FILE
    // names an empty bundle) and no ca_file. With a ca_file, the same is valid.
    let empty = tmp.path().join("empty-bundle.pem");
    std::fs::write(&empty, "").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["test CA".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tmp.path().join("ca.pem"), ca.pem()).unwrap();
    let check_config = |system_bundle: &std::path::Path| {
        run_in(
            tmp.path(),
            bodflow()
                .args(["check-config", "--config"])
                .arg(&config)
                .env_remove("BODFLOW_AMQP_URL")
                .env_remove("SSL_CERT_DIR")
                .env("SSL_CERT_FILE", system_bundle),
        )
    };
    with_url("amqps://bodflow:s3cret@rabbit.example/%2f");
    let out = check_config(&empty);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no CA certificate"), "{stderr}");
    // The system's certificates alone are enough.
    assert_exit(&check_config(&tmp.path().join("ca.pem")), 0);
    with_amqp(
        "url = \"amqps://bodflow:s3cret@rabbit.example/%2f\"\n[amqp.tls]\nca_file = \"ca.pem\"",
    );
    assert_exit(&check_config(&empty), 0);

    // The environment's URL is checked as well as the file's, and named.
    with_url("amqp://guest:guest@127.0.0.1:5672/%2f");
    let out = run(Some("garbage"));
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BODFLOW_AMQP_URL") && stderr.contains("not an AMQP URL"),
        "{stderr}"
    );
}

#[test]
fn replay_of_a_missing_path_exits_2_and_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let out = run_in(tmp.path(), bodflow().arg("replay").arg(&missing));
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-folder") && stderr.contains("error"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing replayed");
}

/// A minimal valid account from the one configured application of the hostile-input test.
const GOOD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea>
    <Sender><LogicalID>lid://test.erp</LogicalID><ConfirmationCode>OnError</ConfirmationCode></Sender>
    <CreationDateTime>2026-01-01T00:00:00Z</CreationDateTime>
    <BODID>good-1</BODID>
  </ApplicationArea>
  <DataArea>
    <Sync><ActionCriteria><ActionExpression actionCode="Add"/></ActionCriteria></Sync>
    <CustomerPartyMaster>
      <PartyIDs><ID variationID="1">CUST-1</ID></PartyIDs>
      <Name>Good Customer Ltd</Name>
      <!--BODY-->
    </CustomerPartyMaster>
  </DataArea>
</SyncCustomerPartyMaster>
"#;

const HOSTILE_CONFIG: &str = r#"
[[users]]
id = "U-ADMIN"

[[applications]]
name = "Test ERP"
logical_id = "lid://test.erp"
default_record_owner = "U-ADMIN"
"#;

#[test]
fn replay_of_hostile_inputs_rejects_each_with_its_code_and_still_applies_the_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("bodflow.toml"), HOSTILE_CONFIG).unwrap();
    let body = |inner: &str| GOOD.replace("<!--BODY-->", inner);
    let deep = format!(
        "<UserArea>{}x{}</UserArea>",
        "<a>".repeat(200),
        "</a>".repeat(200)
    );
    let huge = format!("<UserArea><Blob>{}</Blob></UserArea>", "x".repeat(5 << 20));
    let mut invalid_utf8 = body("<UserArea><Note>M\u{fc}ller</Note></UserArea>").into_bytes();
    let umlaut = invalid_utf8
        .windows(2)
        .position(|w| w == "ü".as_bytes())
        .unwrap();
    invalid_utf8.splice(umlaut..umlaut + 2, [0xFC]);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a-truncated.xml", GOOD.as_bytes()[..300].to_vec(), "not_well_formed"),
        (
            "b-billion-laughs.xml",
            br#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2">&lol4;</SyncCustomerPartyMaster>
"#
            .to_vec(),
            "doctype_forbidden",
        ),
        ("c-200-deep.xml", body(&deep).into_bytes(), "too_deep"),
        ("d-invalid-utf8.xml", invalid_utf8, "not_well_formed"),
        ("e-empty.xml", Vec::new(), "not_well_formed"),
        ("f-binary-garbage.xml", garbage, "not_well_formed"),
        ("g-5mb.xml", body(&huge).into_bytes(), "too_large"),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("z-good.xml"), GOOD).unwrap();

    let out = run_in(tmp.path(), bodflow().arg("replay").arg(&dir).arg("--json"));
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), cases.len() + 1, "one line per file");
    let by_file: BTreeMap<String, &Map<String, Value>> = lines
        .iter()
        .map(|l| {
            let source = str_of(l, "source").unwrap();
            let name = Path::new(source).file_name().unwrap().to_string_lossy();
            (name.into_owned(), l)
        })
        .collect();
    for (name, _, code) in &cases {
        let line = by_file[*name];
        assert_eq!(
            str_of(line, "outcome"),
            Some("rejected"),
            "{name}: {line:?}"
        );
        let error = line["error"].as_object().unwrap();
        assert_eq!(
            (error["stage"].as_str(), error["code"].as_str()),
            (Some("decode"), Some(*code)),
            "{name}: {error:?}"
        );
    }
    let good = by_file["z-good.xml"];
    assert_eq!(
        (str_of(good, "outcome"), str_of(good, "action")),
        (Some("applied"), Some("created")),
        "the good document behind the hostile ones: {good:?}"
    );
}

#[test]
fn generate_300_then_replay_yields_applied_duplicate_stale_and_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gen");
    let out = run_in(
        tmp.path(),
        bodflow()
            .args(["generate", "--count", "300", "--out"])
            .arg(&dir),
    );
    assert_exit(&out, 0);
    assert!(
        dir.join("bodflow.toml").is_file(),
        "generate writes its config"
    );
    let xml = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "xml")
        })
        .count();
    assert_eq!(xml, 300);

    let out = run_in(tmp.path(), bodflow().arg("replay").arg(&dir).arg("--json"));
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 300);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let outcome = str_of(l, "outcome").unwrap_or_default();
        assert!(OUTCOMES.contains(&outcome), "{l:?}");
        *counts.entry(outcome.to_string()).or_default() += 1;
    }
    for outcome in ["applied", "duplicate", "stale", "rejected"] {
        assert!(
            counts.get(outcome).is_some_and(|&n| n > 0),
            "no {outcome} in the generated mix: {counts:?}"
        );
    }
    assert!(counts["applied"] > 150, "mostly applied: {counts:?}");
}

/// `parked list` shows the web shop's document (its application is inactive); with the web
/// shop re-activated in the configuration, `parked release` applies it under its own message
/// id and the parked list is empty afterwards.
#[test]
fn parked_list_shows_the_inactive_applications_document_and_release_applies_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let lines = replay_into_store(tmp.path(), &store);
    let parked_line = lines
        .iter()
        .find(|l| str_of(l, "outcome") == Some("parked"))
        .expect("the fixtures park a document");
    let parked_id = str_of(parked_line, "message_id").unwrap().to_string();
    let config = fixtures().join("bodflow.toml");
    // Exit 0.
    let parked = |action: &str, config: &Path, extra: &[&str]| {
        let out = parked_cli(tmp.path(), &store, config, action, extra);
        assert_exit(&out, 0);
        json_lines(&out)
    };
    let inactive = ["--reason", "inactive_application"];

    let listed = parked("list", &config, &[]);
    assert!(listed
        .iter()
        .any(|p| str_of(p, "message_id") == Some(parked_id.as_str())
            && str_of(p, "reason") == Some("inactive_application")));

    // Still inactive: releasing parks it again.
    let still = parked("release", &config, &inactive);
    assert!(
        !still.is_empty(),
        "release must report the document it re-ran"
    );
    assert!(still.iter().all(|r| str_of(r, "outcome") == Some("parked")));

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("active = false"),
        "the fixture config has an inactive application"
    );
    let reactivated = tmp.path().join("reactivated.toml");
    std::fs::write(
        &reactivated,
        text.replace("active = false", "active = true"),
    )
    .unwrap();
    let reports = parked("release", &reactivated, &inactive);
    assert!(reports
        .iter()
        .any(|r| str_of(r, "message_id") == Some(parked_id.as_str())
            && str_of(r, "outcome") == Some("applied")));
    assert!(parked("list", &reactivated, &inactive).is_empty());
}

/// `parked reject SEQ --note --by`: the document is refused (`rejected_by_operator`, the note
/// and the operator in the reason) and leaves the list; naming no row, or a row that is not
/// parked, is an error.
#[test]
fn parked_reject_refuses_the_named_document_and_names_the_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    replay_into_store(tmp.path(), &store);
    let config = fixtures().join("bodflow.toml");
    let list = || {
        let out = parked_cli(tmp.path(), &store, &config, "list", &[]);
        assert_exit(&out, 0);
        json_lines(&out)
    };
    let before = list();
    assert!(!before.is_empty(), "the fixtures park documents");
    let seq = before[0]["seq"].as_u64().unwrap().to_string();
    let message_id = str_of(&before[0], "message_id").unwrap().to_string();

    let out = parked_cli(
        tmp.path(),
        &store,
        &config,
        "reject",
        &[&seq, "--note", "test data", "--by", "ops.jdoe"],
    );
    assert_exit(&out, 0);
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(str_of(&reports[0], "message_id"), Some(message_id.as_str()));
    assert_eq!(str_of(&reports[0], "outcome"), Some("rejected"));
    let error = reports[0]["error"].as_object().unwrap();
    assert_eq!(str_of(error, "code"), Some("rejected_by_operator"));
    let message = str_of(error, "message").unwrap();
    assert!(
        message.starts_with("rejected by operator ops.jdoe while parked (")
            && message.ends_with("): test data"),
        "{message}"
    );
    let after = list();
    assert_eq!(after.len(), before.len() - 1);
    assert!(after.iter().all(|p| p["seq"] != before[0]["seq"]));

    // No row named: refused before anything is done. A row that is not parked: exit 1.
    let out = parked_cli(tmp.path(), &store, &config, "reject", &[]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("by sequence number"),
        "{out:?}"
    );
    let out = parked_cli(tmp.path(), &store, &config, "reject", &[&seq]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no parked row {seq}")),
        "{out:?}"
    );
    assert_eq!(list().len(), after.len());
}

/// A parked row that cannot be read is named on stderr and skipped: `parked list` and
/// `parked release` go on with the others and exit 1; the row stays in the store.
#[test]
fn a_parked_row_that_cannot_be_read_holds_up_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    replay_into_store(tmp.path(), &store);
    let config = fixtures().join("bodflow.toml");
    let parked = |action: &str, exit: i32| {
        let out = parked_cli(tmp.path(), &store, &config, action, &[]);
        assert_exit(&out, exit);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.contains("unreadable"), exit == 1, "{stderr}");
        json_lines(&out)
    };
    // The fixtures leave one document parked; the same document as another message (one
    // byte more) parks a second row.
    let listed = parked("list", 0);
    let source = str_of(&listed[0], "source").unwrap().to_string();
    let again = tmp.path().join("again.xml");
    let mut bytes =
        std::fs::read(fixtures().join(Path::new(&source).file_name().unwrap())).unwrap();
    bytes.push(b'\n');
    std::fs::write(&again, bytes).unwrap();
    let out = run_in(
        tmp.path(),
        bodflow()
            .arg("replay")
            .arg(&again)
            .args(["--json", "--config"])
            .arg(fixtures().join("bodflow.toml"))
            .arg("--store")
            .arg(&store),
    );
    assert_exit(&out, 0);
    let parked_count = parked("list", 0).len();
    assert_eq!(parked_count, listed.len() + 1);
    {
        // The store's own layout: `p`, big-endian sequence.
        let db = sled::open(&store).unwrap();
        let hub = db.open_tree("hub").unwrap();
        let (first, _) = hub.scan_prefix(b"p").next().unwrap().unwrap();
        hub.insert(first, b"not a parked row".as_slice()).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(parked("list", 1).len(), parked_count - 1);
    let released = parked("release", 1);
    assert!(released.len() >= parked_count - 1, "the others re-ran");
    assert_eq!(parked("list", 1).len(), parked_count - 1, "nothing lost");
}

/// A file over `limits.max_bytes` is refused from its first bytes, but named by the digest of
/// the whole payload — the message id the service computes for the same document.
#[test]
fn an_oversized_file_is_named_by_the_digest_of_its_whole_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = replay_fixtures_json(tmp.path(), &[]);
    let line = lines
        .iter()
        .find(|l| str_of(l, "source").is_some_and(|s| s.contains("105-")))
        .expect("fixture 105 is the too-large one");
    let whole = std::fs::read(
        std::fs::read_dir(fixtures())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("105-"))
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(
        whole.len() > 65_536,
        "the fixture is over the fixtures' max_bytes"
    );
    assert_eq!(
        str_of(line, "message_id"),
        Some(bodflow::pipeline::payload_digest(&whole).as_str())
    );
    let error = line
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str());
    assert_eq!(error, Some("too_large"));
}
