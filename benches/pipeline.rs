//! Criterion benchmarks of the pipeline, stage by stage and whole, over generated documents
//! (`bodflow::generate`: ~3.4 KB SyncCustomerPartyMaster in the realistic mix).
//!
//! Run: `cargo bench --bench pipeline` (add `-- <filter>` for one group). Throughput is
//! reported in documents and bytes per second.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_group, BatchSize, Criterion, Throughput};

use bodflow::bod::{self, Limits};
use bodflow::config::Config;
use bodflow::generate::{Generator, Mix, CONFIG};
use bodflow::pipeline::{self, country, owner, validate, Input, Pipeline, Prepared, State};
use bodflow::store::{OutboxRow, Store};

const DOCS: usize = 2_000;

fn documents(mix: Mix) -> Vec<Vec<u8>> {
    Generator::new(42, mix)
        .take(DOCS)
        .map(|g| g.bytes)
        .collect()
}

fn input(bytes: &[u8]) -> Input<'_> {
    Input {
        bytes,
        source: "bench",
        message_id: None,
        reply_to: None,
        received_at: Utc::now(),
        retry: false,
        envelope: None,
    }
}

fn config() -> Config {
    Config::from_toml(CONFIG, "generate::CONFIG").expect("generated config is valid")
}

/// The generated three applications plus two more (a matching one and one with limited
/// outbound fields): the cost of policies and fan-out as applications are added.
fn config_five_apps() -> Config {
    let extra = r#"
[[applications]]
name = "Marketing"
logical_id = "lid://load.marketing"
create_policy = "match_or_create"
match_on = ["email"]
default_record_owner = "U-ADMIN"

[[applications]]
name = "Mobile"
logical_id = "lid://load.mobile"
country_code_format = "iso3"
default_record_owner = "U-ADMIN"
[applications.flows.CustomerPartyMaster]
outbound = { create = true, update = true, fields = ["address", "communication"] }
"#;
    Config::from_toml(&format!("{CONFIG}{extra}"), "five apps").expect("valid")
}

fn stages(c: &mut Criterion) {
    let docs = documents(Mix::REALISTIC);
    let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let cfg = config();

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(DOCS as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for d in &docs {
                let _ = black_box(bod::parse(d, Limits::default()));
            }
        })
    });
    let parsed: Vec<bod::Bod> = docs
        .iter()
        .filter_map(|d| bod::parse(d, Limits::default()).ok())
        .collect();
    g.bench_function("validate", |b| {
        b.iter_batched(
            || parsed.clone(),
            |parsed| {
                for p in parsed {
                    let _ = black_box(validate::validate(p, &cfg));
                }
            },
            BatchSize::LargeInput,
        )
    });
    let validated: Vec<pipeline::Doc> = parsed
        .iter()
        .cloned()
        .filter_map(|p| match validate::validate(p, &cfg) {
            Ok(validate::Checked::Doc(d)) => Some(*d),
            _ => None,
        })
        .collect();
    g.bench_function("country", |b| {
        b.iter_batched(
            || validated.iter().map(clone_doc).collect::<Vec<_>>(),
            |mut docs| {
                for d in &mut docs {
                    let app = &cfg.applications[d.app];
                    let _ = black_box(country::map_inbound(d, app));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("owner", |b| {
        b.iter_batched(
            || validated.iter().map(clone_doc).collect::<Vec<_>>(),
            |mut docs| {
                for d in &mut docs {
                    let app = &cfg.applications[d.app];
                    owner::assign(d, app, &cfg);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("parse_bytes");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for d in &docs {
                let _ = black_box(bod::parse(d, Limits::default()));
            }
        })
    });
    g.finish();
}

fn clone_doc(d: &pipeline::Doc) -> pipeline::Doc {
    pipeline::Doc {
        bod: d.bod.clone(),
        app: d.app,
        verb: d.verb,
        items: d.items.clone(),
        notes: d.notes.clone(),
    }
}

fn prepared(pipe: &Pipeline, docs: &[Vec<u8>]) -> Vec<Prepared> {
    docs.iter().map(|d| pipe.prepare(&input(d))).collect()
}

/// prepare (decode + stateless stages) and commit (upsert + outbox in the store), per group
/// of 64 documents as replay commits them.
fn whole(c: &mut Criterion) {
    for (name, cfg) in [
        ("three_apps_mix", config()),
        ("five_apps_mix", config_five_apps()),
    ] {
        let docs = documents(Mix::REALISTIC);
        let mut g = c.benchmark_group(format!("pipeline/{name}"));
        g.throughput(Throughput::Elements(DOCS as u64));
        g.sample_size(10);
        let cfg = Arc::new(cfg);
        g.bench_function("prepare", |b| {
            let store = Arc::new(Store::temporary().expect("store"));
            let pipe = Pipeline::new(cfg.clone(), store).expect("pipeline");
            b.iter(|| black_box(prepared(&pipe, &docs)))
        });
        g.bench_function("commit", |b| {
            b.iter_batched(
                || {
                    let store = Arc::new(Store::temporary().expect("store"));
                    let pipe = Pipeline::new(cfg.clone(), store).expect("pipeline");
                    let p = prepared(&pipe, &docs);
                    (pipe, p)
                },
                |(pipe, p)| {
                    for chunk in p.chunks(64) {
                        black_box(pipe.commit_batch(chunk).expect("commit"));
                    }
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
    // Sanity: the mix really contains what the bench claims to measure.
    let pipe = Pipeline::new(
        Arc::new(config()),
        Arc::new(Store::temporary().expect("store")),
    )
    .expect("pipeline");
    let p = prepared(&pipe, &documents(Mix::REALISTIC));
    assert!(p.iter().any(|p| matches!(p.state, State::Rejected { .. })));
    assert!(p.iter().any(|p| matches!(p.state, State::Ready(_))));
}

/// The generated configuration cut to its first application (ERP Europe): no receivers, no
/// match indexes — the single-application baseline of issue 5's performance target.
fn config_one_app() -> Config {
    let second = CONFIG
        .match_indices("[[applications]]")
        .nth(1)
        .map_or(CONFIG.len(), |(at, _)| at);
    Config::from_toml(&CONFIG[..second], "one app").expect("valid")
}

/// Documents of one sender only (ERP Europe), so the same documents are valid under both
/// configurations: the realistic mix, filtered.
fn one_sender_documents() -> Vec<Vec<u8>> {
    let docs: Vec<Vec<u8>> = Generator::new(42, Mix::REALISTIC)
        .map(|g| g.bytes)
        .filter(|b| {
            std::str::from_utf8(b)
                .is_ok_and(|t| t.contains("<LogicalID>lid://load.erp.eu</LogicalID>"))
        })
        .take(DOCS)
        .collect();
    assert_eq!(docs.len(), DOCS);
    docs
}

/// How the policies bench opens its store.
#[derive(Clone, Copy)]
enum StoreMode {
    /// As `bodflow replay` does: a larger page cache, the outbox kept in memory and drained
    /// after each commit (replay writes the rows out and never publishes from the store).
    Replay,
    /// As `bodflow run` commits: outbox rows written to sled in the same batch as the records.
    Durable,
    /// As `bodflow run` commits and publishes: [`StoreMode::Durable`], and after each commit
    /// the rows read back from the publisher's cursor and removed, as the outbox publisher
    /// takes rows and removes them once the broker confirms them (for instruction counts of
    /// the store's whole outbox path; no flush, so the count is not the disk's).
    Service,
}

impl StoreMode {
    fn open(self) -> Store {
        match self {
            StoreMode::Replay => {
                let mut store =
                    Store::temporary_with_cache(bodflow::store::REPLAY_CACHE_BYTES).expect("store");
                store.keep_outbox_in_memory();
                store
            }
            StoreMode::Durable | StoreMode::Service => Store::temporary().expect("store"),
        }
    }
}

/// One pass of the policies workload: prepare and commit in groups of 64, draining the rows
/// as replay does when the store keeps them in memory. Not inlined, so that an instruction
/// count can be limited to it (`BODFLOW_BENCH_ONE_PASS`, see `main`).
#[inline(never)]
fn policies_pass(pipe: &Pipeline, mode: StoreMode, docs: &[Vec<u8>]) {
    // The publisher's cursor: the row after the last one taken.
    let mut cursor = 0;
    for chunk in docs.chunks(64) {
        let p: Vec<Prepared> = chunk.iter().map(|d| pipe.prepare(&input(d))).collect();
        let reports = pipe.commit_batch(&p).expect("commit");
        match mode {
            StoreMode::Replay => {
                // As replay: the document's rows and those of the parked ones it released.
                let seqs: Vec<u64> = reports
                    .iter()
                    .flat_map(|r| std::iter::once(r).chain(&r.released))
                    .flat_map(|r| r.outputs.iter().map(|o| o.seq))
                    .collect();
                pipe.store.remove_outbox(&seqs).expect("drain");
            }
            StoreMode::Service => {
                let rows: Vec<(u64, OutboxRow)> = pipe
                    .store
                    .outbox_from(cursor)
                    .collect::<Result<_, _>>()
                    .expect("outbox");
                if let Some((last, _)) = rows.last() {
                    cursor = last + 1;
                }
                let seqs: Vec<u64> = rows.iter().map(|(seq, _)| *seq).collect();
                black_box(rows);
                pipe.store.remove_outbox(&seqs).expect("remove");
            }
            StoreMode::Durable => {}
        }
        black_box(reports);
    }
}

/// Issue 5 "Performance": the whole pipeline (prepare + commit in groups of 64, on a fresh
/// store) for the same documents of one sender, with only that application configured vs
/// five (policies, a match index, and Syncs to the four others, one with limited fields).
/// The cost of the rules is `1 - five/one` in throughput. `replay_*` is the target's measure
/// (replay throughput: the store as replay opens it, every emitted row drained after its
/// commit as replay drains it); `durable_*` writes the outbox rows to sled as the service does.
fn one_vs_five_apps(c: &mut Criterion) {
    let docs = one_sender_documents();
    let mut g = c.benchmark_group("policies");
    g.throughput(Throughput::Elements(DOCS as u64));
    g.sample_size(10);
    for (mode_name, mode) in [
        ("replay", StoreMode::Replay),
        ("durable", StoreMode::Durable),
    ] {
        for (name, cfg) in [
            ("one_app", config_one_app()),
            ("five_apps", config_five_apps()),
        ] {
            let cfg = Arc::new(cfg);
            g.bench_function(format!("{mode_name}_{name}"), |b| {
                b.iter_batched(
                    || Pipeline::new(cfg.clone(), Arc::new(mode.open())).expect("pipeline"),
                    |pipe| {
                        policies_pass(&pipe, mode, &docs);
                        // Dropped outside the timing, as in `BODFLOW_BENCH_PASSES`: closing
                        // the temporary store (its last flush, removing its folder) happens
                        // once a run, not once a document.
                        pipe
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
    // Sanity: same documents, applied under both, and only the five-application run fans out.
    for (cfg, receivers) in [(config_one_app(), false), (config_five_apps(), true)] {
        let pipe = Pipeline::new(Arc::new(cfg), Arc::new(Store::temporary().expect("store")))
            .expect("pipeline");
        let p: Vec<Prepared> = docs[..64].iter().map(|d| pipe.prepare(&input(d))).collect();
        let reports = pipe.commit_batch(&p).expect("commit");
        assert!(reports
            .iter()
            .any(|r| r.outcome == pipeline::Outcome::Applied));
        let syncs = reports
            .iter()
            .flat_map(|r| &r.outputs)
            .filter(|o| o.kind.starts_with("Sync"))
            .count();
        assert_eq!(syncs > 0, receivers, "Syncs out: {syncs}");
    }
}

/// Documents in the parked backlog of `store/parked_marker_keys` (a few hundred under `cargo
/// test`, where the bench only has to run).
fn parked_count() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        10_000
    } else {
        500
    }
}

/// `store/parked_marker_keys`: what the service's marker purge reads every minute to keep the
/// markers of parked documents, over a backlog of 10,000 generated documents parked whole
/// (every application inactive), each row holding its ~3.4 KB document.
fn parked_backlog(c: &mut Criterion) {
    let mut cfg = config();
    for app in &mut cfg.applications {
        app.active = false;
    }
    let store = Arc::new(Store::temporary().expect("store"));
    let pipe = Pipeline::new(Arc::new(cfg), store.clone()).expect("pipeline");
    let parked = parked_count();
    let docs: Vec<Vec<u8>> = Generator::new(7, Mix::REALISTIC)
        .take(parked)
        .map(|g| g.bytes)
        .collect();
    for chunk in prepared(&pipe, &docs).chunks(64) {
        pipe.commit_batch(chunk).expect("commit");
    }
    let held = store.parked_marker_keys().expect("parked").len();
    // The realistic mix holds some documents no inactive application could have sent.
    assert!(held > parked * 9 / 10, "{held} of {parked} parked");
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(parked as u64));
    g.sample_size(10);
    g.bench_function("parked_marker_keys", |b| {
        b.iter(|| black_box(store.parked_marker_keys().expect("parked")))
    });
    g.finish();
}

criterion_group!(benches, stages, whole, one_vs_five_apps, parked_backlog);

/// `BODFLOW_BENCH_ONE_PASS=replay_five_apps` (any of the `policies` names, or `service_one_app`
/// and `service_five_apps`: [`StoreMode::Service`]) runs exactly one
/// pass of that workload instead of criterion, for a machine-independent instruction count:
///
/// ```sh
/// BODFLOW_BENCH_ONE_PASS=replay_five_apps valgrind --tool=callgrind \
///     --toggle-collect='*policies_pass*' target/release/deps/pipeline-<hash>
/// ```
///
/// `BODFLOW_BENCH_PASSES=N` repeats it on a fresh store N times and prints the best time
/// (one configuration per process, so no benchmark inherits another's heap).
fn main() {
    if let Ok(which) = std::env::var("BODFLOW_BENCH_ONE_PASS") {
        let (mode, cfg) = which
            .split_once('_')
            .expect("mode_config, e.g. replay_one_app");
        let mode = match mode {
            "replay" => StoreMode::Replay,
            "durable" => StoreMode::Durable,
            "service" => StoreMode::Service,
            other => panic!("unknown store mode {other}"),
        };
        let cfg = match cfg {
            "one_app" => config_one_app(),
            "five_apps" => config_five_apps(),
            other => panic!("unknown configuration {other}"),
        };
        let passes: u32 = std::env::var("BODFLOW_BENCH_PASSES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let docs = one_sender_documents();
        let cfg = Arc::new(cfg);
        let mut best = std::time::Duration::MAX;
        for _ in 0..passes {
            let pipe = Pipeline::new(cfg.clone(), Arc::new(mode.open())).expect("pipeline");
            let started = std::time::Instant::now();
            policies_pass(&pipe, mode, &docs);
            best = best.min(started.elapsed());
        }
        println!(
            "{which}: best of {passes} passes {:.1} ms",
            best.as_secs_f64() * 1e3
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
