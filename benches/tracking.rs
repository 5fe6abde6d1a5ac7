//! Message tracking lookups at scale (issue 4 item 3: < 50 ms per lookup with 1,000,000
//! tracked messages).
//!
//! `cargo bench --bench tracking` builds a real sled store (in a temporary folder, durable
//! settings as `bodflow run` opens it) holding 1,000,000 tracked messages, then measures what
//! `bodflow track ID` and `GET /messages/{id}` do ([`Store::lookup_tracked`]): by message id,
//! by BODID (LN-style BODIDs reused per record: 4 messages each), and by a hot BODID carried
//! by 2,000 messages (the newest 20 are returned). Lookups pick random messages, so most
//! reads miss sled's 4 MiB cache.
//!
//! The timelines are realistic: templates are taken from generated documents (the realistic
//! mix) run through the real pipeline, then written through the same store call the commit
//! uses, with their markers, 64 messages per transaction as replay and the service commit
//! them. Building takes a minute or two; the build time, store size and run size are printed
//! first.
//!
//! Last, the dedup window's purge ([`expiry`]): the older 60 % of the markers expired as the
//! service does it, beside a thread committing, and the marker filter rebuilt from the rest.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) the same code runs as a smoke test
//! with 5,000 messages.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use criterion::Criterion;

use bodflow::config::Config;
use bodflow::generate::{Generator, Mix, CONFIG};
use bodflow::pipeline::{payload_digest, Input, Pipeline};
use bodflow::store::track::{Millis, Run};
use bodflow::store::{Marker, Store};

/// Messages per store transaction while building: replay's and the service's group commit,
/// so the tracking groups are the size they are in production.
const BATCH: usize = 64;
/// Messages per ordinary BODID (LN reuses one BODID per record).
const PER_BOD_ID: usize = 4;
/// Every HOT_EVERY-th message carries the hot BODID.
const HOT_EVERY: usize = 500;
const HOT_BOD_ID: &str = "infor-nid:ACME_PRD:3555::BPC9999999:?CustomerPartyMaster&verb=Sync";
/// Timelines returned per lookup, as `bodflow track` and the HTTP endpoint default to.
const LIMIT: usize = 20;

struct Fixture {
    store: Store,
    _dir: tempfile::TempDir,
    n: usize,
}

fn message_id(i: usize) -> String {
    payload_digest(&(i as u64).to_le_bytes())
}

fn bod_id(i: usize) -> String {
    if i.is_multiple_of(HOT_EVERY) {
        HOT_BOD_ID.to_string()
    } else {
        format!(
            "infor-nid:ACME_PRD:3555::BPC{:07}:?CustomerPartyMaster&verb=Sync",
            i / PER_BOD_ID
        )
    }
}

/// Runs of generated documents processed by the real pipeline: applied with Syncs, duplicates,
/// stale and rejected ones, as the realistic mix gives them.
fn templates() -> Vec<Run<'static>> {
    let config = Config::from_toml(CONFIG, "generate::CONFIG").unwrap();
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
    let mut runs = Vec::new();
    for g in Generator::new(7, Mix::REALISTIC).take(200) {
        let report = pipeline
            .process(&Input {
                bytes: &g.bytes,
                source: "amqp",
                message_id: None,
                reply_to: None,
                received_at: Utc::now(),
                retry: false,
                envelope: None,
            })
            .unwrap();
        let track = pipeline.store.tracked(&report.message_id).unwrap().unwrap();
        runs.extend(track.runs.into_iter().take(1));
    }
    runs
}

fn build(n: usize) -> Fixture {
    let templates = templates();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let start = Utc.with_ymd_and_hms(2025, 10, 1, 0, 0, 0).unwrap();
    let start = Millis::from_datetime(start).0;
    let started = Instant::now();
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(BATCH) {
        store
            .transact(|tx| {
                for &i in chunk {
                    let id = message_id(i);
                    let bod = bod_id(i);
                    let mut run = templates[i % templates.len()].clone();
                    run.received_at = Millis(start + i as u64 * 50);
                    run.bod_id = Some(bod.clone().into());
                    for (k, o) in run.outputs.iter_mut().enumerate() {
                        o.bod_id = format!("bodflow:{}:{}", &id[..20], k + 1).into();
                        o.confirmed_at = Some(Millis(run.received_at.0 + 12));
                    }
                    let at = tx.track_run(&id, &run)?;
                    tx.set_clock(run.received_at);
                    tx.put_marker(
                        &id,
                        &Marker {
                            outcome: run.outcome.to_string(),
                            record: run.record.as_ref().map(|r| r.to_string()),
                            bod_id: Some(bod),
                            tracked: vec![at],
                            run: 0,
                            parked: Vec::new(),
                            refused: Vec::new(),
                            retry: None,
                            at: None,
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }
    store.flush().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "built {n} tracked messages in {seconds:.1} s ({:.0} messages/s); store {} MB on disk; a run is {} bytes stored ({} as JSON)",
        n as f64 / seconds,
        store.size_on_disk().unwrap() / 1_000_000,
        store.tracked_bytes().unwrap() / n,
        serde_json::to_vec(&templates[0]).unwrap().len(),
    );
    Fixture {
        store,
        _dir: dir,
        n,
    }
}

/// SplitMix64: random picks without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn lookups(c: &mut Criterion, f: &Fixture) {
    let store = &f.store;
    // Sanity: each lookup finds what it should, so the bench measures real work.
    assert_eq!(
        store.lookup_tracked(&message_id(1), LIMIT).unwrap().len(),
        1
    );
    let found = store.lookup_tracked(&bod_id(1), LIMIT).unwrap();
    assert_eq!(
        found.len(),
        PER_BOD_ID - 1,
        "message 0 carries the hot BODID"
    );
    let hot = store.lookup_tracked(HOT_BOD_ID, LIMIT).unwrap();
    assert_eq!(hot.len(), LIMIT.min(f.n.div_ceil(HOT_EVERY)));
    assert!(hot
        .windows(2)
        .all(|w| w[0].runs[0].received_at >= w[1].runs[0].received_at));

    let mut g = c.benchmark_group(format!("tracking_lookup_{}", f.n));
    let mut rng = Rng(42);
    g.bench_function("by_message_id", |b| {
        b.iter(|| {
            let id = message_id(rng.below(f.n));
            let found = store.lookup_tracked(&id, LIMIT).unwrap();
            assert_eq!(found.len(), 1);
            black_box(found)
        })
    });
    g.bench_function("by_bod_id_4_messages", |b| {
        b.iter(|| {
            let bod = bod_id(rng.below(f.n));
            let found = store.lookup_tracked(&bod, LIMIT).unwrap();
            assert!(!found.is_empty());
            black_box(found)
        })
    });
    g.bench_function("by_hot_bod_id_newest_20", |b| {
        b.iter(|| black_box(store.lookup_tracked(HOT_BOD_ID, LIMIT).unwrap()))
    });
    g.finish();
}

/// A thread committing one small transaction after another while `during` runs: the
/// commit times it saw (ms), sorted.
fn commit_times_while(store: &Store, during: impl FnOnce()) -> Vec<f64> {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let committer = scope.spawn(|| {
            let mut times = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                store.transact(|tx| tx.next("bench.commits")).unwrap();
                times.push(started.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            times
        });
        during();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut times = committer.join().unwrap();
        times.sort_by(f64::total_cmp);
        times
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// The dedup window's purge as the service runs it (`hub.dedup_window`): the older 60 % of
/// the markers expired in batches of 16 commits' lists while another thread commits (as the
/// committer would), then the marker filter rebuilt from the rest. Prints the time, the rate,
/// and the commit times seen meanwhile against those seen before.
fn expiry(f: &Fixture) {
    const CHUNK: usize = 16;
    let store = &f.store;
    let cut = f.n * 3 / 5;
    // Message `i` was received at `start + 50 ms × i`: the first 60 % are before this.
    let before = Millis(store.marker(&message_id(cut)).unwrap().unwrap().at.unwrap());
    let idle = commit_times_while(store, || {
        std::thread::sleep(std::time::Duration::from_secs(2))
    });
    let parked = store.parked_marker_keys().unwrap();
    let (mut removed, mut batches, mut seconds) = (0, 0, 0.0);
    let busy = commit_times_while(store, || {
        let started = Instant::now();
        loop {
            let expired = store.expire_markers(before, CHUNK, &parked).unwrap();
            removed += expired.markers;
            batches += 1;
            if expired.lists < CHUNK {
                break;
            }
        }
        seconds = started.elapsed().as_secs_f64();
    });
    println!(
        "expired {removed} of {} markers in {seconds:.1} s ({:.0} markers/s, {batches} batches); a commit beside it took p50 {:.2} / p99 {:.2} / max {:.1} ms ({} commits; before: p50 {:.2} / p99 {:.2} / max {:.1} ms)",
        f.n,
        removed as f64 / seconds,
        quantile(&busy, 0.5),
        quantile(&busy, 0.99),
        quantile(&busy, 1.0),
        busy.len(),
        quantile(&idle, 0.5),
        quantile(&idle, 0.99),
        quantile(&idle, 1.0),
    );
    // A list goes once its newest marker is outside the window: the commit that straddles
    // the cut-off keeps its older markers until then.
    let whole = cut - cut % BATCH;
    assert_eq!(removed, whole);
    assert!(store.marker(&message_id(whole - 1)).unwrap().is_none());
    assert!(store.marker(&message_id(whole)).unwrap().is_some());
    let filter = store.marker_filter_bytes();
    let started = Instant::now();
    match store.rebuild_marker_filter_if_due().unwrap() {
        Some(bytes) => println!(
            "rebuilt the marker filter from the {} markers kept in {:.2} s: {filter} → {bytes} bytes",
            f.n - whole,
            started.elapsed().as_secs_f64()
        ),
        None => println!("marker filter ({filter} bytes) not due for a rebuild"),
    }
    assert!(store.marker(&message_id(f.n - 1)).unwrap().is_some());
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let fixture = build(if full { 1_000_000 } else { 5_000 });
    let mut c = Criterion::default().configure_from_args();
    lookups(&mut c, &fixture);
    c.final_summary();
    expiry(&fixture);
}
