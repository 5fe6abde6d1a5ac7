//! `bodflow replay PATH...`: the pipeline offline, on the embedded store (DESIGN §5.1).
//!
//! Files are read and prepared (decode + the stateless stages) on a reader thread while the
//! main thread commits in input order, so both cores work. The outbox is drained as the broker
//! publisher would: each row is written under `--out` (when given) and then removed; the rows
//! live in memory only (nothing publishes from a replay). The store is flushed before exit;
//! without `--store` it is temporary.
//!
//! Exit 0 when every input was processed — rejections are results. Exit 1 when bodflow failed
//! on a document inside its store transaction (a bug: see [`commit_group`]); the other inputs
//! are processed. Exit 2 on an I/O error (an unreadable input, an unwritable `--out`, a store
//! that keeps failing).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::{Input, Outcome, Pipeline, Prepared, Report};
use crate::store::{Store, StoreError, REPLAY_CACHE_BYTES};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::Inputs,
    /// Keep the hub store in this folder (default: a temporary store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Write every emitted BOD into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per input line instead of text.
    #[arg(long)]
    json: bool,
    /// Processing time written into emitted BODs (RFC 3339), for reproducible output.
    #[arg(long, hide = true)]
    now: Option<DateTime<Utc>>,
}

/// Attempts for a commit that fails with a store error before replay gives up.
const STORE_ATTEMPTS: u32 = 5;
/// Published outbox rows are removed in batches of this many rows.
const DRAIN_BATCH: usize = 1024;
/// Documents per store transaction (group commit).
const GROUP: usize = 64;

/// A committed group, for the output thread.
type Committed<'a> = (&'a [PathBuf], Vec<Prepared>, Vec<Report>);
/// A group of inputs and their prepared documents, from a prepare worker.
type Batch<'a> = (&'a [PathBuf], Vec<Prepared>);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, config_path) = args.inputs.config()?;
    match &config_path {
        Some(p) => {
            tracing::info!(config = %p.display(), applications = config.applications.len(), "Configuration loaded")
        }
        None => {
            tracing::warn!("No bodflow.toml found: built-in defaults, no applications configured")
        }
    }
    let inputs = super::collect_inputs(&args.inputs.paths)?;
    let cache = config.hub.store_cache_bytes(REPLAY_CACHE_BYTES);
    let mut store = match &args.store {
        Some(dir) => Store::open_with_cache(dir, cache)
            .with_context(|| format!("opening store {}", dir.display()))?,
        None => Store::temporary_with_cache(cache).context("opening a temporary store")?,
    };
    // Replay drains every emitted row into `--out` right after its commit; nothing ever
    // publishes them, so they need not be written to the store.
    store.keep_outbox_in_memory();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(store))?;
    // The folders given, which output file names are relative to (checked once, not per
    // document).
    let roots: Vec<PathBuf> = args
        .inputs
        .paths
        .iter()
        .filter(|p| p.is_dir())
        .cloned()
        .collect();
    let now = args.now;

    let progress = if inputs.len() >= 1000 {
        ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let mut counts = [0usize; 6];
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout);
    let mut drained: Vec<u64> = Vec::new();
    // Documents bodflow failed on inside their transaction ([`commit_group`]).
    let mut failed = 0usize;

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let window = workers * 2;
    let chunks: Vec<&[PathBuf]> = inputs.chunks(GROUP).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (token_tx, token_rx) = std::sync::mpsc::sync_channel::<()>(window);
    for _ in 0..window {
        token_tx.send(())?;
    }
    let token_rx = std::sync::Mutex::new(token_rx);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Workers (one per core) claim groups of files in input order, read and prepare them
        // (parse and the stateless stages); this thread commits the groups in input order.
        // A window of tokens bounds how far the workers run ahead, so memory stays flat even
        // when one group is slow. The token sender lives in this closure: if committing fails,
        // dropping it releases workers waiting for a token, so the scope can join them.
        let token_tx = token_tx;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, anyhow::Result<Batch>)>(window);
        let limit = pipeline.config.limits.max_bytes;
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, pipeline, chunks, next, token_rx) =
                (tx.clone(), pipeline.clone(), &chunks, &next, &token_rx);
            let handle = std::thread::Builder::new()
                .name(format!("prepare-{w}"))
                .spawn_scoped(scope, move || loop {
                    // Claim a token and the next group under one lock, so groups are claimed
                    // in order and never more than `window` ahead of the commit.
                    let claimed = {
                        let Ok(tokens) = token_rx.lock() else { return };
                        if tokens.recv().is_err() {
                            return;
                        }
                        next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    };
                    let Some(chunk) = chunks.get(claimed) else {
                        return;
                    };
                    let batch = chunk
                        .iter()
                        .map(|path| read_input(path, limit))
                        .collect::<anyhow::Result<Vec<InputFile>>>()
                        .map(|files| {
                            let prepared = chunk
                                .iter()
                                .zip(&files)
                                .map(|(path, file)| {
                                    let source = path.display().to_string();
                                    pipeline.prepare(&Input {
                                        message_id: file.message_id.as_deref(),
                                        ..Input::file(
                                            &file.bytes,
                                            &source,
                                            now.unwrap_or_else(Utc::now),
                                        )
                                    })
                                })
                                .collect();
                            (*chunk, prepared)
                        });
                    if tx.send((claimed, batch)).is_err() {
                        return;
                    }
                })?;
            handles.push(handle);
        }
        drop(tx);
        let mut waiting = std::collections::BTreeMap::new();
        let mut expected = 0;
        let in_order = std::iter::from_fn(|| loop {
            if let Some(batch) = waiting.remove(&expected) {
                expected += 1;
                // The committed group frees a slot of the window; the workers may all be gone.
                let _ = token_tx.send(());
                return Some(batch);
            }
            let (seq, batch) = rx.recv().ok()?;
            waiting.insert(seq, batch);
        });
        // Output (files, lines, draining the outbox) and freeing the prepared documents run on
        // their own thread, so this one only commits.
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Committed>(window);
        let (store, out_dir, roots, json) =
            (&pipeline.store, args.out.as_deref(), &roots, args.json);
        let (out, counts, drained, progress) = (&mut out, &mut counts, &mut drained, &progress);
        let writer = std::thread::Builder::new()
            .name("output".into())
            .spawn_scoped(scope, move || -> anyhow::Result<()> {
                for (paths, prepared, reports) in done_rx {
                    drop(prepared);
                    for (path, mut report) in paths.iter().zip(reports) {
                        // Parked documents this one released get their own lines, right after it.
                        let released = std::mem::take(&mut report.released);
                        let mut lines = vec![(false, report)];
                        lines.extend(released.into_iter().map(|r| (true, r)));
                        for (i, (released, mut report)) in lines.into_iter().enumerate() {
                            // File names are only needed for `--out`.
                            if out_dir.is_some() {
                                let stem = if released {
                                    let source = output_stem(Path::new(&report.source), roots);
                                    format!("{source}.released")
                                } else {
                                    output_stem(path, roots)
                                };
                                write_outputs(store, &mut report, &stem, out_dir)?;
                            }
                            drained.extend(report.outputs.iter().map(|o| o.seq));
                            counts[outcome_index(report.outcome)] += 1;
                            if json {
                                serde_json::to_writer(&mut *out, &report)?;
                                writeln!(out)?;
                            } else if i > 0 {
                                writeln!(
                                    out,
                                    "{} (released by {})",
                                    text_line(&report),
                                    path.display()
                                )?;
                            } else {
                                writeln!(out, "{}", text_line(&report))?;
                            }
                        }
                        progress.inc(1);
                    }
                    if drained.len() >= DRAIN_BATCH {
                        store.remove_outbox(drained)?;
                        drained.clear();
                    }
                }
                Ok(())
            })?;
        let committed = in_order.map(|batch| -> anyhow::Result<bool> {
            let (paths, prepared) = batch?;
            let reports = commit_group(|b| pipeline.commit_batch(b), &prepared, &mut failed)?;
            // A closed channel means the output thread failed: its error is reported below.
            Ok(done_tx.send((paths, prepared, reports)).is_ok())
        });
        let mut result = Ok(());
        for sent in committed {
            match sent {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(done_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the output thread panicked")));
        result?;
        written?;
        drop(handles);
        Ok(())
    })?;
    pipeline.store.remove_outbox(&drained)?;
    pipeline.store.flush()?;
    out.flush()?;
    progress.finish_and_clear();

    let elapsed = started.elapsed().as_secs_f64();
    let total: usize = counts.iter().sum();
    let names = [
        "applied",
        "duplicate",
        "stale",
        "rejected",
        "parked",
        "filtered",
    ];
    let summary: Vec<String> = names
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(n, c)| format!("{c} {n}"))
        .collect();
    tracing::info!(
        documents = total,
        seconds = format!("{elapsed:.3}"),
        per_second = format!("{:.0}", total as f64 / elapsed.max(1e-9)),
        "Replayed: {}",
        summary.join(", ")
    );
    if failed > 0 {
        tracing::error!(
            failed,
            "Not every input was processed: bodflow failed on these documents (a bug, please report it) and stored nothing of them; replaying them again tries them again"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One input as read.
struct InputFile {
    bytes: Vec<u8>,
    /// Set for a file over the size limit: the digest of the *whole* file, as the service
    /// computes it for the same payload (the pipeline would only see the prefix).
    message_id: Option<String>,
}

/// Reads one input, refusing to buffer a file over the size limit: it becomes a `too_large`
/// rejection from its first `max_bytes + 1` bytes, and the rest is only streamed through the
/// digest that names it.
fn read_input(path: &Path, max_bytes: usize) -> anyhow::Result<InputFile> {
    use std::io::Read as _;
    let context = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).with_context(context)?;
    let limit = max_bytes as u64 + 1;
    let meta = file.metadata().ok();
    let size = meta.as_ref().map_or(0, |m| m.len()).min(limit);
    let mut bytes = Vec::with_capacity(size as usize + 1);
    // A regular file's read returns less than asked only at its end: asking for one byte more
    // than it holds reads it whole in one call, without the extra call that finds the end.
    let at_once = meta.is_some_and(|m| m.is_file()) && size < limit;
    if at_once {
        bytes.resize(size as usize + 1, 0);
        let n = file.read(&mut bytes).with_context(context)?;
        bytes.truncate(n);
    }
    // Anything else (not a regular file, over the limit, or grown meanwhile), to the limit.
    if !at_once || bytes.len() as u64 == size + 1 {
        (&mut file)
            .take(limit - bytes.len() as u64)
            .read_to_end(&mut bytes)
            .with_context(context)?;
    }
    let message_id = if bytes.len() > max_bytes {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&bytes);
        std::io::copy(&mut file, &mut hasher).with_context(context)?;
        Some(hasher.finalize().to_hex()[..32].to_string())
    } else {
        None
    };
    Ok(InputFile { bytes, message_id })
}

/// Commits a group with `commit` ([`Pipeline::commit_batch`]). Store I/O errors are retried
/// with backoff, and the run stops when they persist or a stored value is corrupt. A failure
/// of bodflow's own inside the transaction (a bug some document triggers: `internal_error`)
/// is that document's, not the store's: the group is committed again one document at a time,
/// and a document that fails alone gets a `rejected` line with that code and nothing of it
/// stored (replaying it again tries it again), counted in `failed`; the others go on. A
/// parked document that the failing document releases in its transaction stays parked.
fn commit_group(
    commit: impl Fn(&[Prepared]) -> Result<Vec<Report>, StoreError>,
    prepared: &[Prepared],
    failed: &mut usize,
) -> anyhow::Result<Vec<Report>> {
    let group_failure = match retried(|| commit(prepared)) {
        Err(e @ StoreError::Internal(_)) => e,
        other => return Ok(other?),
    };
    let mut fail = |p: &Prepared, e: &StoreError| {
        tracing::error!(source = %p.ctx.source, message_id = %p.ctx.message_id, error = %e, "bodflow failed on a document inside its transaction (a bug); nothing of it was stored");
        *failed += 1;
        p.failed_commit(e)
    };
    if let [one] = prepared {
        return Ok(vec![fail(one, &group_failure)]);
    }
    let mut reports = Vec::with_capacity(prepared.len());
    let mut alone = 0;
    for one in prepared {
        match retried(|| commit(std::slice::from_ref(one))) {
            Ok(r) => reports.extend(r),
            Err(e @ StoreError::Internal(_)) => {
                alone += 1;
                reports.push(fail(one, &e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if alone == 0 {
        tracing::warn!(error = %group_failure, documents = prepared.len(), "bodflow failed on a group of documents inside its transaction (a bug), but on none of them alone; they were committed one by one");
    }
    Ok(reports)
}

/// `commit`, retried with backoff while the store's I/O fails.
fn retried(
    commit: impl Fn() -> Result<Vec<Report>, StoreError>,
) -> Result<Vec<Report>, StoreError> {
    let mut attempt = 0;
    loop {
        match commit() {
            Err(e @ StoreError::Io(_)) if attempt + 1 < STORE_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "Store commit failed, retrying");
                std::thread::sleep(Duration::from_millis(50 << attempt));
            }
            other => return other,
        }
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Applied => 0,
        Outcome::Duplicate => 1,
        Outcome::Stale => 2,
        Outcome::Rejected => 3,
        Outcome::Parked => 4,
        Outcome::Filtered => 5,
    }
}

/// `fixtures/sub/a.xml` under root `fixtures` → `sub__a`.
/// `path` relative to the first of `roots` (the input folders) it is in, as one file name.
fn output_stem(path: &Path, roots: &[PathBuf]) -> String {
    let rel = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok())
        .unwrap_or(path);
    let rel = rel.with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("__")
}

/// Writes a report's outputs as `<stem>.<n>.<Kind>.xml` under `out`.
fn write_outputs(
    store: &Store,
    report: &mut Report,
    stem: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(dir) = out else {
        return Ok(());
    };
    for (n, o) in report.outputs.iter_mut().enumerate() {
        let Some(row) = store.outbox_row(o.seq)? else {
            continue;
        };
        let file = dir.join(format!("{stem}.{}.{}.xml", n + 1, row.kind));
        std::fs::write(&file, row.xml.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        o.file = Some(file.display().to_string());
    }
    Ok(())
}

fn text_line(r: &Report) -> String {
    let mut line = format!("{}: {}", r.source, r.outcome.as_str());
    if let Some(a) = r.action {
        line.push_str(&format!(
            " {}",
            serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ));
    }
    if let Some(rec) = &r.record {
        line.push_str(&format!(" {rec}"));
    }
    if let Some(e) = &r.error {
        line.push(' ');
        line.push_str(&e.summary());
    }
    if let Some(o) = &r.owner {
        line.push_str(&format!(" owner={o}"));
    }
    if let Some(c) = &r.country {
        line.push_str(&format!(" country={c}"));
    }
    if !r.outputs.is_empty() {
        let outs: Vec<String> = r
            .outputs
            .iter()
            .map(|o| format!("{}→{}", o.kind, o.to))
            .collect();
        line.push_str(&format!(" => {}", outs.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Generator, Mix, CONFIG};

    /// Three new accounts prepared by a pipeline on a store of its own.
    fn three_new() -> (Pipeline, Vec<Prepared>) {
        let config = crate::config::Config::from_toml(CONFIG, "generated").unwrap();
        let pipeline =
            Pipeline::new(Arc::new(config), Arc::new(Store::temporary().unwrap())).unwrap();
        let prepared = Generator::new(7, Mix::NEW_ONLY)
            .take(3)
            .map(|g| {
                pipeline.prepare(&Input::file(
                    &g.bytes,
                    &format!("doc-{}.xml", g.index),
                    Utc::now(),
                ))
            })
            .collect();
        (pipeline, prepared)
    }

    #[test]
    fn a_document_bodflow_fails_on_inside_its_transaction_fails_alone() {
        let (pipeline, prepared) = three_new();
        let bad = prepared[1].ctx.message_id.clone();
        let commit = |batch: &[Prepared]| {
            if batch.iter().any(|p| p.ctx.message_id == bad) {
                return Err(StoreError::Internal("index out of bounds".into()));
            }
            pipeline.commit_batch(batch)
        };
        let mut failed = 0;
        let reports = commit_group(commit, &prepared, &mut failed).unwrap();
        assert_eq!(failed, 1);
        let outcomes: Vec<Outcome> = reports.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Applied, Outcome::Rejected, Outcome::Applied],
            "in input order"
        );
        let error = reports[1].error.as_ref().unwrap();
        assert_eq!(
            (error.stage.as_str(), error.code),
            ("upsert", "internal_error")
        );
        assert!(
            error.message.contains("index out of bounds"),
            "{}",
            error.message
        );
        assert_eq!(reports[1].message_id, bad);
        // The others are stored; nothing of the failed one is.
        for (i, report) in reports.iter().enumerate() {
            let marker = pipeline.store.marker(&report.message_id).unwrap();
            assert_eq!(marker.is_some(), i != 1, "{i}");
        }
        assert_eq!(pipeline.store.records().count(), 2);

        // A group of one is not committed a second time to find the document.
        let calls = std::cell::Cell::new(0);
        let failing = |_: &[Prepared]| {
            calls.set(calls.get() + 1);
            Err(StoreError::Internal("boom".into()))
        };
        let reports = commit_group(failing, &prepared[1..2], &mut failed).unwrap();
        assert_eq!((reports.len(), calls.get(), failed), (1, 1, 2));
        assert_eq!(reports[0].outcome, Outcome::Rejected);
    }

    #[test]
    fn store_io_errors_are_retried_and_stop_the_run_when_they_persist() {
        let (pipeline, prepared) = three_new();
        let io = || StoreError::Io(sled::Error::Io(std::io::Error::other("disk gone")));
        let calls = std::cell::Cell::new(0);
        let flaky = |batch: &[Prepared]| {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                return Err(io());
            }
            pipeline.commit_batch(batch)
        };
        let mut failed = 0;
        let reports = commit_group(flaky, &prepared, &mut failed).unwrap();
        assert_eq!((reports.len(), calls.get(), failed), (3, 3, 0));
        assert!(reports.iter().all(|r| r.outcome == Outcome::Applied));

        let calls = std::cell::Cell::new(0);
        let broken = |_: &[Prepared]| {
            calls.set(calls.get() + 1);
            Err(io())
        };
        let e = commit_group(broken, &prepared, &mut failed).unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        assert_eq!(
            (calls.get(), failed),
            (STORE_ATTEMPTS, 0),
            "not taken for one document's"
        );
    }
}
