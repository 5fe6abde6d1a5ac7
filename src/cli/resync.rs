//! `bodflow resync --application LID [--noun N]`: "Run Now" — send one application every
//! record it may receive as `Sync<Noun>` (see [`crate::pipeline::resync`]).
//!
//! Where the Syncs go depends on who holds the store (sled allows one process per store):
//! - the store is free (no service running): the command opens it, writes the Syncs as outbox
//!   rows chunk by chunk (progress bar on a terminal), and then publishes the outbox to the
//!   broker with publisher confirms — or, with `--out DIR`, writes them as files instead and
//!   removes them from the outbox;
//! - the store is locked by `bodflow run`: the command asks the service with
//!   `POST /resync` on `http.listen`; the service writes the rows and its publisher sends them.
//!
//! Exit 0 when the resync ran; 2 on a refused resync (unknown or inactive application), a
//! store error, or a broker that did not take the rows (they stay in the outbox, and
//! `bodflow run` publishes them when it starts).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::amqp::{self, RunOptions};
use crate::config::Config;
use crate::pipeline::resync::{Request, Summary, Trigger};
use crate::pipeline::{OutputReport, Pipeline};
use crate::store::{Kind, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The receiving application (its logical ID).
    #[arg(long)]
    application: String,
    /// Only this noun (CustomerPartyMaster or ContactMaster); default both, accounts first.
    #[arg(long, value_parser = parse_noun)]
    noun: Option<Kind>,
    /// Store folder (default: the configured hub.store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the Syncs into this folder instead of publishing them (needs the store: not
    /// while the service runs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The summary as JSON.
    #[arg(long)]
    json: bool,
    /// Processing time written into emitted BODs (RFC 3339), for reproducible output.
    #[arg(long, hide = true)]
    now: Option<DateTime<Utc>>,
}

fn parse_noun(noun: &str) -> Result<Kind, String> {
    Kind::from_noun(noun)
        .ok_or_else(|| format!("{noun:?}: expected CustomerPartyMaster or ContactMaster"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::resolve(args.config.as_deref(), &[])?;
    if args.out.is_none() {
        // Before the run, not after it: without --out its Syncs go to the broker.
        amqp::endpoint(&config.amqp)?;
    }
    let nouns: Vec<Kind> = args.noun.into_iter().collect();
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| config.hub.store.clone());
    if !path.exists() {
        anyhow::bail!("no store at {} (give --store DIR)", path.display());
    }
    let store = match Store::open_configured(&path, &config.hub) {
        Ok(store) => store,
        Err(e) if e.is_locked() => {
            if args.out.is_some() {
                anyhow::bail!(
                    "{} is in use by a running service (sled allows one process per store): \
                     without --out the resync runs in the service, which publishes the Syncs",
                    path.display()
                );
            }
            return through_service(&config, &args, &nouns);
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(store))?;
    let request = Request {
        application: args.application.clone(),
        nouns,
        trigger: Trigger::Cli,
    };
    let mut run = pipeline.start_resync(&request, args.now.unwrap_or_else(Utc::now))?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let progress = ProgressBar::with_draw_target(Some(run.total()), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("resync {bar:40} {pos}/{len} records {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut written: Vec<String> = Vec::new();
    while let Some(outputs) = run.next_chunk()? {
        if let Some(out) = &args.out {
            written.extend(write_and_remove(&pipeline.store, &outputs, out)?);
        }
        progress.set_position(run.done());
    }
    progress.finish_and_clear();
    let summary = run.finish()?;
    let published = if args.out.is_none() && summary.sent() > 0 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let published = runtime
            .block_on(amqp::publish_outbox(
                pipeline.clone(),
                RunOptions::default(),
            ))
            .map_err(|e| {
                anyhow::anyhow!(
                    "publishing to the broker failed: {e}; the Syncs stay in the outbox and \
                     `bodflow run` publishes them when it starts"
                )
            })?;
        Some(published)
    } else {
        None
    };
    pipeline.store.flush()?;
    print(
        &summary,
        args.json,
        published,
        args.out.as_deref(),
        &written,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The resync runs in the service that holds the store.
fn through_service(config: &Config, args: &Args, nouns: &[Kind]) -> anyhow::Result<ExitCode> {
    let listen = &config.http.listen;
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!(
        "the store is held by the running service; resync of {} runs there ({listen})",
        args.application
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let result = crate::admin::resync_over_http(listen, &args.application, nouns);
    spinner.finish_and_clear();
    let summary = result.map_err(anyhow::Error::msg)?;
    print(&summary, args.json, None, None, &[])?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a chunk's rows as `resync-<run>.<n>.<Kind>.xml` (run: the resync's number, n: the
/// BODID's) and takes them out of the outbox; returns the files written.
fn write_and_remove(
    store: &Store,
    outputs: &[OutputReport],
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut seqs = Vec::with_capacity(outputs.len());
    let mut files = Vec::with_capacity(outputs.len());
    for o in outputs {
        let Some(row) = store.outbox_row(o.seq)? else {
            continue;
        };
        let run = row.correlation_id.split(':').nth(1).unwrap_or_default();
        let n = row.bod_id.rsplit(':').next().unwrap_or_default();
        let file = dir.join(format!("resync-{run}.{n}.{}.xml", row.kind));
        std::fs::write(&file, row.xml.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        files.push(file.display().to_string());
        seqs.push(o.seq);
    }
    store.remove_outbox(&seqs)?;
    Ok(files)
}

fn print(
    summary: &Summary,
    json: bool,
    published: Option<usize>,
    out: Option<&Path>,
    written: &[String],
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let (Some(map), Some(_)) = (value.as_object_mut(), out) {
            map.insert("files".into(), serde_json::json!(written));
        }
        if let (Some(map), Some(n)) = (value.as_object_mut(), published) {
            map.insert("published".into(), serde_json::json!(n));
        }
        println!("{value}");
        return Ok(());
    }
    let line = |what: &str, c: &crate::pipeline::resync::NounCount| {
        format!(
            "{what}: {} sent ({} Add, {} Change), {} skipped deleted/placeholder, {} skipped by its flow or rules",
            c.sent,
            c.added,
            c.sent - c.added,
            c.skipped_deleted,
            c.skipped_flow
        )
    };
    println!(
        "{} to {} ({:.2} s)",
        summary.run, summary.application, summary.seconds
    );
    println!("  {}", line("accounts", &summary.accounts));
    println!("  {}", line("contacts", &summary.contacts));
    match (published, out) {
        (_, Some(dir)) => println!("  {} documents written to {}", written.len(), dir.display()),
        (Some(n), None) => println!("  {n} outbox rows published to the broker"),
        (None, None) if summary.trigger == Trigger::Http => {
            println!("  the service's publisher sends them")
        }
        (None, None) => {}
    }
    Ok(())
}
