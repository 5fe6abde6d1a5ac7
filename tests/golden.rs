//! Golden test: `bodflow replay fixtures/ --json --out DIR` must produce exactly the replay
//! lines in `tests/golden/replay.jsonl` and the emitted BODs in `tests/golden/out/`.
//!
//! After an intended change, regenerate with `BODFLOW_BLESS=1 cargo test --test golden` and
//! review `git diff tests/golden`. The emitted documents' CreationDateTime comes from the
//! hidden `--now` flag, so the output is byte-for-byte reproducible.
//!
//! Every document the replay writes under `--out` must also validate against its strict
//! schema `schemas/<Kind>.xsd` (needs `xmllint`, Debian/Ubuntu: `libxml2-utils`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const NOW: &str = "2026-01-01T00:00:00Z";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(e.path()).unwrap());
        }
    }
    files
}

fn diff(name: &str, expected: &str, actual: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, actual);
    format!(
        "--- {name} (golden)\n+++ {name} (actual)\n{}",
        d.unified_diff().context_radius(2)
    )
}

#[test]
fn replay_of_fixtures_matches_golden_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bodflow"))
        .current_dir(root)
        .args(["replay", "fixtures", "--json", "--now", NOW, "--out"])
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Output file paths point into the temporary folder: make them stable.
    let prefix = format!("{}/", out.path().display());
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .replace(&prefix, "out/");
    assert!(
        lines.lines().count() >= 40,
        "fewer replay lines than fixtures"
    );
    let emitted = read_dir_files(out.path());

    let golden = golden_dir();
    if std::env::var_os("BODFLOW_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(golden.join("out")).unwrap();
        std::fs::write(golden.join("replay.jsonl"), &lines).unwrap();
        for (name, text) in &emitted {
            std::fs::write(golden.join("out").join(name), text).unwrap();
        }
        eprintln!(
            "blessed {} lines and {} documents",
            lines.lines().count(),
            emitted.len()
        );
        return;
    }

    let mut problems = Vec::new();
    let expected_lines = std::fs::read_to_string(golden.join("replay.jsonl"))
        .expect("tests/golden/replay.jsonl missing: run BODFLOW_BLESS=1 cargo test --test golden");
    if expected_lines != lines {
        problems.push(diff("replay.jsonl", &expected_lines, &lines));
    }
    let expected_docs = read_dir_files(&golden.join("out"));
    for (name, text) in &expected_docs {
        match emitted.get(name) {
            Some(actual) if actual == text => {}
            Some(actual) => problems.push(diff(name, text, actual)),
            None => problems.push(format!("{name}: expected but not emitted")),
        }
    }
    for name in emitted.keys().filter(|n| !expected_docs.contains_key(*n)) {
        problems.push(format!("{name}: emitted but not in tests/golden/out"));
    }
    assert!(
        problems.is_empty(),
        "replay output differs from tests/golden (bless with BODFLOW_BLESS=1 if intended):\n{}",
        problems.join("\n")
    );
}

#[test]
fn replay_is_deterministic_across_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_bodflow"))
            .current_dir(root)
            .args(["replay", "fixtures", "--json", "--now", NOW])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    assert_eq!(run(), run());
}

#[test]
fn every_document_emitted_by_the_fixture_replay_validates_against_its_kind_schema() {
    common::require_xmllint();
    let out = tempfile::tempdir().unwrap();
    let output = common::bodflow()
        .current_dir(common::root())
        .args(["replay", "fixtures", "--json", "--now", NOW, "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every output named in the replay lines was written, and nothing else was.
    let named: usize = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["outputs"].as_array().unwrap().len()
        })
        .sum();
    let by_kind = common::emitted_by_kind(out.path());
    let written: usize = by_kind.values().map(Vec::len).sum();
    assert_eq!(
        written, named,
        "files under --out vs outputs in the replay lines"
    );
    for kind in [
        "ConfirmBOD",
        "SyncCustomerPartyMaster",
        "SyncContactMaster",
        "AcknowledgeCustomerPartyMaster",
        "AcknowledgeContactMaster",
    ] {
        assert!(
            by_kind.contains_key(kind),
            "the fixture replay emitted no {kind}, so its schema went unchecked; emitted: {:?}",
            by_kind.keys().collect::<Vec<_>>()
        );
    }
    let problems = common::xmllint_validate_by_kind(common::schema_for_kind, &by_kind);
    assert!(
        problems.is_empty(),
        "{} schema violation(s) in the fixture replay's output (kept in {}):\n{}",
        problems.len(),
        out.keep().display(),
        problems.join("\n")
    );
}
