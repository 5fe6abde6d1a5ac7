//! Robustness under hostile and broken input (DESIGN §6, "Bad input gets a clear error and
//! loses nothing"): a seeded mutation fuzzer over every document we have — our fixtures, the
//! scenario steps and the real samples in `../shared/samples/real/` — run through the real
//! pipeline into a real (temporary) sled store with the fixtures' configuration.
//!
//! Each mutant is one of: a flipped byte, a deleted or duplicated range, a truncation, a
//! splice from another document, a hostile fragment inserted at a random place (DOCTYPE and
//! entities, CDATA, character references, invalid UTF-8, control characters, overlong numbers
//! and IDs, namespace declarations, action codes), or a tag renamed. For every mutant:
//!
//! - nothing panics (a panic is caught and reported with the mutant written to a file to
//!   reproduce it; `prepare` refuses a document it panicked on with `internal_error`, which
//!   counts as a panic here) and no document takes longer than [`SLOW`] (measured when it returns: a
//!   document that never returned would hold the run, which is as visible);
//! - the pipeline returns a report, never a store error;
//! - a rejection names its stage, a stable snake_case code and a message (and a path when it
//!   has one, an absolute XML path);
//! - tracking knows the message afterwards (its timeline is readable).
//!
//! Afterwards the store reads back whole (records, parked, outbox), and every document the
//! mutants made bodflow emit — ConfirmBODs that echo broken ApplicationAreas, Syncs of records
//! the mutants changed — is well-formed and valid against `schemas/` (`xmllint --schema`).
//!
//! The suite runs [`DEFAULT_ITERATIONS`] mutants (seconds). A long run is an explicit command:
//! `BODFLOW_FUZZ_ITERATIONS=200000 BODFLOW_FUZZ_SEED=7 cargo test --release --test robustness`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bodflow::config::Config;
use bodflow::pipeline::{Input, Outcome, Pipeline, Report};
use bodflow::store::Store;
use chrono::{TimeZone, Utc};

mod common;

const DEFAULT_ITERATIONS: usize = 3_000;
const DEFAULT_SEED: u64 = 0x5eed_b0df_1037;
/// A document taking longer than this (in a debug build, on a busy machine) is a hang.
const SLOW: Duration = Duration::from_secs(5);

/// Fragments a hostile or careless sender produces.
const FRAGMENTS: &[&str] = &[
    "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>",
    "<!DOCTYPE x SYSTEM \"file:///etc/passwd\">",
    "&lol2;",
    "&amp;",
    "&#0;",
    "&#x1F600;",
    "&#xD800;",
    "&unknown;",
    "<![CDATA[ <not/> & markup ]]>",
    "]]>",
    "<?pi target?>",
    "<!-- comment -- inside -->",
    "\u{0}",
    "\u{1b}[31m",
    "\u{feff}",
    "<",
    ">",
    "</",
    "/>",
    "\"",
    "'",
    " xmlns=\"urn:other\"",
    " xmlns:oa=\"http://www.openapplications.org/oagis/9\"",
    " xmlns=\"http://schema.infor.com/InforOAGIS/2\"",
    " actionCode=\"Delete\"",
    " actionCode=\"Replace\"",
    " variationID=\"123456789012345678901234567890123456789012\"",
    " variationID=\"\"",
    " languageID=\"xx\"",
    "99999999999999999999999999999999999999999999999999",
    "<ID>",
    "</ID>",
    "<ID accountingEntity=\"\" lid=\"\"></ID>",
    "<CountryCode>ZZZ</CountryCode>",
    "<CountryCode></CountryCode>",
    "<URI>not an address</URI>",
    "<Status><Code>Inactive</Code></Status>",
    "<SalesPersonReference><ID>1001</ID><SalesPersonRole>Internal</SalesPersonRole></SalesPersonReference>",
    "<EmployerReference><PartyIDs><ID>NOPE</ID></PartyIDs></EmployerReference>",
    "<UserArea><Property><NameValue name=\"x\">y</NameValue></Property></UserArea>",
    "<LogicalID>lid://nobody</LogicalID>",
    "<LogicalID>lid://infor.crm.crm01</LogicalID>",
    "<TenantID>OTHER</TenantID>",
    "<BODID></BODID>",
    "<ConfirmationCode>Always</ConfirmationCode>",
];

/// Values to put in place of an element's text: what keeps a document well-formed but tests
/// the stages behind the reader.
const VALUES: &[&str] = &[
    "",
    "   ",
    "\u{1}",
    "a\u{7}b",
    "&amp;&lt;&gt;&quot;&apos;",
    "&#x41;&#66;",
    "Müller & Söhne GmbH — Ärger mit Ünïcödé 🎉",
    "0",
    "-1",
    "99999999999999999999999999999999999999999",
    "2026-13-45T25:61:61Z",
    "2026-01-01",
    "not-a-date",
    "jane.doe@example.com",
    "JANE.DOE@EXAMPLE.COM ",
    "@@",
    "DE",
    "DEU",
    "UK",
    "XX",
    "Delete",
    "Inactive",
    "Sales",
    "lid://infor.ln.ln01",
    "lid://infor.crm.crm01",
    "lid://nobody",
    "ACME_PRD",
    "1001",
    "SP01",
    "Internal",
];

/// Tag names to swap in (verbs and nouns bodflow knows, and some it does not).
const TAGS: &[&str] = &[
    "SyncCustomerPartyMaster",
    "ProcessCustomerPartyMaster",
    "AcknowledgeCustomerPartyMaster",
    "SyncContactMaster",
    "SyncItemMaster",
    "ApplicationArea",
    "DataArea",
    "CustomerPartyMaster",
    "ContactMaster",
    "PartyIDs",
    "Sync",
    "Process",
    "Show",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Every `*.xml` below `dir`, sorted.
fn xml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            // Emitted golden output is ours, not a sender's.
            if path.file_name().is_some_and(|n| n == "expected") {
                continue;
            }
            xml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "xml") {
            out.push(path);
        }
    }
}

/// The seed corpus: fixtures, scenario steps, real samples.
fn corpus() -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    xml_files(&common::root().join("fixtures"), &mut files);
    let real = common::root().join("../shared/samples/real");
    assert!(
        real.is_dir(),
        "{} is missing: the real samples sit next to the project",
        real.display()
    );
    xml_files(&real, &mut files);
    assert!(files.len() > 100, "only {} seed documents", files.len());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The next mutant of the sequence `rng` drives: a seed document picked and mutated.
fn next_mutant(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let source = rng.below(corpus.len());
    mutate(rng, &corpus[source], corpus)
}

/// Mutant `i` of the sequence of `seed` (the sequence depends on nothing else).
fn nth_mutant(seed: u64, i: usize, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    for _ in 0..i {
        next_mutant(&mut rng, corpus);
    }
    next_mutant(&mut rng, corpus)
}

/// One mutant of `doc` (sometimes two mutations stacked).
fn mutate(rng: &mut Rng, doc: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = doc.to_vec();
    let rounds = 1 + usize::from(rng.below(4) == 0);
    for _ in 0..rounds {
        if out.is_empty() {
            let seed = rng.below(corpus.len());
            out.extend_from_slice(&corpus[seed]);
        }
        let at = rng.below(out.len());
        match rng.below(10) {
            0 => out[at] = (rng.next() & 0xff) as u8,
            1 => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + 1 + rng.below(256)).min(out.len());
                let copy = out[at..end].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, copy);
            }
            3 => out.truncate(at),
            4 => {
                let other = rng.pick(corpus);
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(512)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            5 | 6 => {
                let fragment = rng.pick(FRAGMENTS).as_bytes();
                out.splice(at..at, fragment.iter().copied());
            }
            7..=9 => {
                // Replace the text of the element that ends at or after `at`.
                let Some(close) = find(&out[at..], b"</").map(|p| at + p) else {
                    continue;
                };
                let start = out[..close]
                    .iter()
                    .rposition(|&b| b == b'>')
                    .map_or(0, |p| p + 1);
                let value = rng.pick(VALUES).as_bytes();
                if rng.below(8) == 0 {
                    // Very long: past every field limit.
                    let long: Vec<u8> = value.iter().copied().cycle().take(5_000).collect();
                    out.splice(start..close, long);
                } else {
                    out.splice(start..close, value.iter().copied());
                }
            }
            _ => {
                // Rename the tag that starts at or after `at`.
                if let Some(lt) = out[at..].iter().position(|&b| b == b'<') {
                    let start = at + lt + 1 + usize::from(out.get(at + lt + 1) == Some(&b'/'));
                    let end = out[start..]
                        .iter()
                        .position(|&b| b == b'>' || b == b' ' || b == b'/')
                        .map_or(out.len(), |e| start + e);
                    out.splice(start..end, rng.pick(TAGS).bytes());
                }
            }
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What is wrong with a report, if anything.
fn check_report(report: &Report) -> Option<String> {
    if report.outcome == Outcome::Rejected {
        let Some(e) = &report.error else {
            return Some("rejected without an error".into());
        };
        let snake = !e.code.is_empty()
            && e.code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !snake {
            return Some(format!("code {:?} is not snake_case", e.code));
        }
        // `prepare` turns its own panics into this refusal, so it is how a panic shows here.
        if e.code == "internal_error" {
            return Some(format!("a panic while preparing: {}", e.message));
        }
        if e.message.trim().is_empty() {
            return Some(format!("{}: empty message", e.code));
        }
        if let Some(path) = &e.path {
            if !path.starts_with('/') {
                return Some(format!("{}: path {path:?} is not an XML path", e.code));
            }
        }
    } else if report.error.is_some() {
        return Some(format!("{} with an error", report.outcome.as_str()));
    }
    None
}

/// Writes a failing mutant next to the test's temp dir and returns where.
fn keep(dir: &Path, i: usize, bytes: &[u8]) -> PathBuf {
    let path = dir.join(format!("mutant-{i}.xml"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn mutants_of_every_document_get_coded_results_and_emit_only_valid_documents() {
    common::require_xmllint();
    let iterations = env_number("BODFLOW_FUZZ_ITERATIONS", DEFAULT_ITERATIONS as u64) as usize;
    let seed = env_number("BODFLOW_FUZZ_SEED", DEFAULT_SEED);
    let corpus = corpus();
    let config = Config::load(&common::root().join("fixtures/bodflow.toml")).unwrap();
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
    let kept = tempfile::tempdir().unwrap();
    // A fixed clock keeps runs reproducible for a given seed.
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();

    let mut rng = Rng(seed | 1);
    let mut problems: Vec<String> = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..iterations {
        let doc = next_mutant(&mut rng, &corpus);
        let message_id = format!("fuzz-{seed}-{i}");
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            pipeline.process(&Input {
                bytes: &doc,
                source: "fuzz",
                message_id: Some(&message_id),
                reply_to: (i % 7 == 0).then_some("amq.gen-fuzz-reply"),
                received_at: now,
                retry: false,
                envelope: None,
            })
        }));
        let took = started.elapsed();
        let problem = match result {
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(Err(e)) => Some(format!("store error: {e}")),
            Ok(Ok(report)) => {
                let label = match &report.error {
                    Some(e) => format!("rejected {}/{}", e.stage.as_str(), e.code),
                    None => report.outcome.as_str().to_string(),
                };
                *outcomes.entry(label).or_default() += 1;
                check_report(&report).or_else(|| {
                    match pipeline.store.lookup_tracked(&message_id, 1) {
                        Ok(t) if !t.is_empty() => None,
                        Ok(_) => Some("not tracked".into()),
                        Err(e) => Some(format!("tracking unreadable: {e}")),
                    }
                })
            }
        };
        let problem = problem
            .or_else(|| (took > SLOW).then(|| format!("took {took:?} (more than {SLOW:?})")));
        if let Some(p) = problem {
            let file = keep(kept.path(), i, &doc);
            problems.push(format!("mutant {i} ({}): {p}", file.display()));
            if problems.len() >= 10 {
                break;
            }
        }
    }

    // The store reads back whole.
    let records = pipeline.store.records().collect::<Result<Vec<_>, _>>();
    let parked = pipeline.store.parked().collect::<Result<Vec<_>, _>>();
    let outbox = pipeline.store.outbox().collect::<Result<Vec<_>, _>>();
    for (what, err) in [
        ("records", records.as_ref().err().map(|e| e.to_string())),
        ("parked", parked.as_ref().err().map(|e| e.to_string())),
        ("outbox", outbox.as_ref().err().map(|e| e.to_string())),
    ] {
        if let Some(e) = err {
            problems.push(format!("the store's {what} do not read back: {e}"));
        }
    }

    // Everything emitted is valid against the schemas.
    let out = tempfile::tempdir().unwrap();
    let mut by_kind: BTreeMap<String, Vec<common::ToCheck>> = BTreeMap::new();
    for (seq, row) in outbox.unwrap_or_default() {
        let file = out.path().join(format!("{seq}.{}.xml", row.kind));
        std::fs::write(&file, &row.xml).unwrap();
        by_kind
            .entry(row.kind.clone())
            .or_default()
            .push(common::ToCheck {
                origin: format!("outbox row {seq} ({} for {})", row.kind, row.correlation_id),
                file,
            });
    }
    let emitted: usize = by_kind.values().map(Vec::len).sum();
    let invalid = common::xmllint_validate_by_kind(common::schema_for_kind, &by_kind);
    // Keep the inbound mutants behind invalid outputs (`... for fuzz-<seed>-<i>)`).
    let prefix = format!("fuzz-{seed}-");
    let mut causes: Vec<usize> = invalid
        .iter()
        .filter_map(|p| {
            let at = p.find(&prefix)? + prefix.len();
            let digits: String = p[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    causes.sort_unstable();
    causes.dedup();
    for i in causes.into_iter().take(10) {
        let file = keep(kept.path(), i, &nth_mutant(seed, i, &corpus));
        problems.push(format!(
            "mutant {i} ({}) emitted an invalid document",
            file.display()
        ));
    }
    problems.extend(invalid);

    eprintln!(
        "{iterations} mutants (seed {seed}) of {} documents; {emitted} documents emitted; outcomes: {outcomes:?}",
        corpus.len()
    );
    if !problems.is_empty() {
        // Keep the mutants for a reproduction.
        let kept = kept.keep();
        panic!(
            "{} problem(s) (mutants kept in {}):\n{}",
            problems.len(),
            kept.display(),
            problems.join("\n")
        );
    }
    // The mutants reached every stage, not just the reader.
    for stage in ["decode", "validate"] {
        assert!(
            outcomes
                .keys()
                .any(|k| k.starts_with(&format!("rejected {stage}/"))),
            "no mutant was rejected at {stage}: {outcomes:?}"
        );
    }
    // One in fifty, up to a thousand: the store is shared, so in long runs ever more mutants
    // of the same documents are duplicates or stale, and "applied" grows slower than the run.
    assert!(
        outcomes.get("applied").copied().unwrap_or(0) > (iterations / 50).min(1_000),
        "too few mutants were applied to exercise upsert and emit: {outcomes:?}"
    );
}

/// Documents within the size limit built to cost memory or work that grows faster than their
/// size: each is refused by a structural limit (`too_complex`, `too_deep`) naming where, or
/// read in time linear in its size. Before the limits, the first would have asked for ~50 GB
/// (a `UserArea` value's name is its path) and the noun and attribute ones ran for hours.
#[test]
fn documents_built_to_cost_memory_or_work_are_refused_by_limits_with_a_path() {
    let config = Config::from_toml(
        "[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\n",
        "t",
    )
    .unwrap();
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
    let doc = |verb: &str, root_attrs: &str, noun_body: &str, nouns: &str| {
        format!(
            "<SyncCustomerPartyMaster{root_attrs}><ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender>\
             <BODID>b-1</BODID></ApplicationArea><DataArea>{verb}<CustomerPartyMaster><PartyIDs><ID>C1</ID></PartyIDs>\
             {noun_body}</CustomerPartyMaster>{nouns}</DataArea></SyncCustomerPartyMaster>"
        )
        .into_bytes()
    };
    let sync = "<Sync/>";
    let long = "N".repeat(200);
    let name_300 = "E".repeat(300);
    let attrs: String = (0..200).map(|i| format!(" a{i}=\"\"")).collect();
    let attrs_101: String = (0..101).map(|i| format!(" a{i}=\"\"")).collect();
    // The document-wide limits under the default `limits.max_bytes` (4 MiB).
    let max_elements = bodflow::bod::dom::max_elements(4 << 20);
    let max_attributes = bodflow::bod::dom::max_attributes(4 << 20);
    // 200 declarations in scope, 100 on an element and 100 on its child: under the attribute
    // limit on each.
    let xmlns = |from: usize| -> String {
        (from..from + 100)
            .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
            .collect()
    };
    let namespaces = format!("<X{}><Y{}/></X>", xmlns(0), xmlns(100));
    let user_area = format!(
        "<UserArea><{long}>{}</{long}></UserArea>",
        "<b>x</b>".repeat(6_000)
    );
    // Six nested 200-byte names: a value's name (its path) of 1,205 bytes.
    let deep_name = format!(
        "<UserArea>{}x{}</UserArea>",
        format!("<{long}>").repeat(6),
        format!("</{long}>").repeat(6)
    );
    // The user-area budget is the document's: two nouns of 3,000 values each pass it.
    let second = format!(
        "<CustomerPartyMaster><PartyIDs><ID>C2</ID></PartyIDs><UserArea>{}</UserArea></CustomerPartyMaster>",
        "<b>x</b>".repeat(3_000)
    );
    let half = format!("<UserArea>{}</UserArea>", "<b>x</b>".repeat(3_000));
    let root = "/SyncCustomerPartyMaster";
    let noun = "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster";
    let cases: Vec<(&str, Vec<u8>, &str, String)> = vec![
        (
            "UserArea values",
            doc(sync, "", &user_area, ""),
            "too_complex",
            format!("{noun}/UserArea"),
        ),
        (
            "a UserArea value name",
            doc(sync, "", &deep_name, ""),
            "too_complex",
            format!("{noun}/UserArea"),
        ),
        (
            "UserArea values of two nouns",
            doc(sync, "", &half, &second),
            "too_complex",
            "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster[2]/UserArea".to_string(),
        ),
        (
            "a long element name",
            doc(sync, "", &format!("<{name_300}/>"), ""),
            "too_complex",
            noun.to_string(),
        ),
        (
            "attributes",
            doc(sync, &attrs, "", ""),
            "too_complex",
            root.to_string(),
        ),
        (
            "elements",
            doc(sync, "", &"<Z/>".repeat(max_elements + 1), ""),
            "too_complex",
            format!("{noun}/Z"),
        ),
        (
            "attributes in the document",
            doc(
                sync,
                "",
                &format!("<Z{attrs_101}/>").repeat(max_attributes / 101 + 1),
                "",
            ),
            "too_complex",
            format!("{noun}/Z"),
        ),
        (
            "namespace declarations",
            doc(sync, "", &namespaces, ""),
            "too_complex",
            format!("{noun}/X/Y"),
        ),
        (
            "nesting",
            doc(sync, "", &"<U>".repeat(80), ""),
            "too_deep",
            // The 65th open element is the one too deep.
            format!("{noun}{}", "/U".repeat(62)),
        ),
        (
            "nesting, an empty element last",
            doc(sync, "", &format!("{}<E/>", "<U>".repeat(61)), ""),
            "too_deep",
            format!("{noun}{}/E", "/U".repeat(61)),
        ),
    ];
    for (what, bytes, code, path) in cases {
        let report = pipeline
            .process(&Input {
                bytes: &bytes,
                source: "test",
                message_id: Some(what),
                reply_to: None,
                received_at: Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
        let error = report
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!((what, error.code), (what, code), "{}", error.message);
        if what.starts_with("namespace") {
            assert!(
                error.message.contains("namespace declarations"),
                "{}",
                error.message
            );
        }
        assert_eq!(error.path.as_deref(), Some(path.as_str()), "{what}");
    }

    // Nouns: read in one pass (each one's path needs the count of its name), at most 1,000.
    // (90,000: under the limit on elements, which 200,000 would hit first.)
    assert!(bodflow::bod::dom::max_elements(4 << 20) > 90_000);
    for (count, refused) in [(1_000, false), (90_000, true)] {
        let many = doc(sync, "", "", &"<a/>".repeat(count - 1));
        let prepared = pipeline.prepare(&Input {
            bytes: &many,
            source: "test",
            message_id: Some("nouns"),
            reply_to: None,
            received_at: Utc::now(),
            retry: false,
            envelope: None,
        });
        let code = match &prepared.state {
            bodflow::pipeline::State::Rejected { rejection, .. } => Some(rejection),
            _ => None,
        };
        assert_eq!(
            code.is_some_and(|r| r.code == "too_complex"
                && r.path.as_deref() == Some("/SyncCustomerPartyMaster/DataArea")),
            refused,
            "{count}: {:?}",
            prepared.state
        );
    }

    // An over-long TenantID is refused `too_long` and is not echoed on the replies (it would
    // make an AMQP header larger than a frame).
    let tenant = doc(
        &format!("<Sync><TenantID>{}</TenantID></Sync>", "T".repeat(40_000)),
        "",
        "",
        "",
    );
    let prepared = pipeline.prepare(&Input {
        bytes: &tenant,
        source: "test",
        message_id: Some("tenant"),
        reply_to: None,
        received_at: Utc::now(),
        retry: false,
        envelope: None,
    });
    assert_eq!(prepared.ctx.tenant, None);
    let report = pipeline.commit(&prepared).unwrap();
    assert_eq!(report.error.as_ref().map(|e| e.code), Some("too_long"));
}

/// A bulk Sync of 500 nouns (2 MiB) to an application that creates nothing by itself: every
/// noun parks in a row of its own, and the document's bytes are stored once, not once a row
/// (500 copies would be a gigabyte written in one transaction, and held in memory until it
/// commits). Each row still reads back the whole document.
#[test]
fn a_document_whose_many_nouns_park_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        "[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\ncreate_policy = \"manual\"\n",
        "t",
    )
    .unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let pipeline = Pipeline::new(Arc::new(config), store.clone()).unwrap();
    let nouns: String = (0..500)
        .map(|i| {
            format!(
                "<CustomerPartyMaster><PartyIDs><ID>C{i}</ID></PartyIDs><Name>Acme {i}</Name></CustomerPartyMaster>"
            )
        })
        .collect();
    let doc = format!(
        "<SyncCustomerPartyMaster><ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender>\
         <BODID>b-bulk</BODID></ApplicationArea><DataArea><Sync/>{nouns}</DataArea><!-- {} --></SyncCustomerPartyMaster>",
        "p".repeat(2 << 20)
    );
    let started = Instant::now();
    let report = pipeline
        .process(&Input::file(doc.as_bytes(), "bulk.xml", Utc::now()))
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.outcome, Outcome::Parked, "{:?}", report.decisions);
    // One row at a time: each read holds a copy of the document.
    let mut rows = 0;
    for row in store.parked() {
        assert_eq!(row.unwrap().payload.0, doc.as_bytes());
        rows += 1;
    }
    assert_eq!(rows, 500, "a row a noun");
    store.flush().unwrap();
    let size = store.size_on_disk().unwrap();
    eprintln!(
        "500 nouns of a {} byte document parked in {took:.1?}; store {size} bytes",
        doc.len()
    );
    assert!(
        size < 64 << 20,
        "the store holds {size} bytes for one 2 MiB document"
    );
}

/// One document of 1,000 nouns of the same account, the first carrying a MiB of UserArea
/// values (the most a document may): each noun reads and writes that record, which the
/// transaction keeps decoded, so the document costs about a thousand copies of it in memory,
/// not a thousand JSON decodes and encodes. Before, it held the committer for seconds.
#[test]
fn many_nouns_of_one_record_with_a_mib_of_user_area_take_little_time() {
    let config = Config::from_toml(
        "[[applications]]\nname = \"ln\"\nlogical_id = \"lid://ln\"\n",
        "t",
    )
    .unwrap();
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
    let values: String = (0..16)
        .map(|i| format!("<V{i}>{}</V{i}>", "x".repeat(65_000)))
        .collect();
    let noun = |variation: usize, user_area: &str| {
        format!(
            "<CustomerPartyMaster><PartyIDs><ID variationID=\"{variation}\">C1</ID></PartyIDs>\
             <Name>Acme {variation}</Name>{user_area}</CustomerPartyMaster>"
        )
    };
    let nouns: String = std::iter::once(noun(1, &format!("<UserArea>{values}</UserArea>")))
        .chain((2..=1_000).map(|v| noun(v, "")))
        .collect();
    let doc = format!(
        "<SyncCustomerPartyMaster><ApplicationArea><Sender><LogicalID>lid://ln</LogicalID></Sender>\
         <BODID>b-same</BODID></ApplicationArea><DataArea><Sync/>{nouns}</DataArea></SyncCustomerPartyMaster>"
    );
    let started = Instant::now();
    let report = pipeline
        .process(&Input::file(doc.as_bytes(), "same.xml", Utc::now()))
        .unwrap();
    let took = started.elapsed();
    eprintln!("1,000 nouns of one record with a MiB of UserArea: {took:.1?}");
    assert_eq!(report.outcome, Outcome::Applied, "{:?}", report.error);
    let record = pipeline.store.records().next().unwrap().unwrap();
    assert_eq!(record.fields.user_area.len(), 16);
    assert_eq!(
        record.fields.identity.name.as_deref(),
        Some("Acme 1000"),
        "the last noun is the record's state"
    );
    assert!(took < SLOW, "took {took:?}");
}
