//! `bodflow parked list|release|reject`: documents parked by an inactive application or a
//! create policy (`match_only` without a match, `manual`, an ambiguous match), releasing them
//! through the pipeline under the current configuration, and refusing those an operator
//! decides should not be placed.
//!
//! Releasing and refusing work on the store offline; the replies and Syncs it produces wait in the outbox
//! for the service to publish. The service itself releases documents of re-activated
//! applications when it starts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::pipeline::{Pipeline, Report};
use crate::store::Parked;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List parked documents (oldest first).
    List(Select),
    /// Re-run parked documents through the pipeline; each is applied, rejected, or parked
    /// again with its current reason.
    Release(Select),
    /// Refuse parked documents (by sequence number): each is rejected with code
    /// `rejected_by_operator` — the sender answered as it asked, a delivered document
    /// dead-lettered — and leaves the parked list.
    Reject(Reject),
}

#[derive(Debug, clap::Args)]
pub struct Reject {
    #[command(flatten)]
    select: Select,
    /// Why, for the sender's ConfirmBOD and the dead letter.
    #[arg(long)]
    note: Option<String>,
    /// Operator named in the refusal (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Select {
    /// Store folder (default: the configured hub.store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only documents of this application (logical ID).
    #[arg(long)]
    application: Option<String>,
    /// Only documents parked for this reason (inactive_application, no_match,
    /// ambiguous_match, manual_link).
    #[arg(long)]
    reason: Option<String>,
    /// Only these parked sequence numbers (as `list` shows them).
    seqs: Vec<u64>,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Processing time written into emitted BODs (RFC 3339), for reproducible output.
    #[arg(long, hide = true)]
    now: Option<chrono::DateTime<Utc>>,
}

impl Select {
    fn matches(&self, p: &Parked) -> bool {
        self.application
            .as_ref()
            .is_none_or(|a| *a == p.application)
            && self.reason.as_ref().is_none_or(|r| r == p.reason.code())
            && (self.seqs.is_empty() || self.seqs.contains(&p.seq))
    }
}

pub fn run(action: Action) -> anyhow::Result<ExitCode> {
    let (Action::List(select) | Action::Release(select) | Action::Reject(Reject { select, .. })) =
        &action;
    if matches!(action, Action::Reject(_)) && select.seqs.is_empty() {
        anyhow::bail!(
            "name the parked documents to reject by sequence number (as `list` shows them)"
        );
    }
    let (config, _) = Config::resolve(select.config.as_deref(), &[])?;
    let store = super::open_store(select.store.as_deref(), &config)?;
    // A row that cannot be read is named and skipped (it stays in the store); the command
    // then exits 1.
    let mut failed = 0;
    let chosen: Vec<Parked> = store
        .parked()
        .filter_map(|p| {
            p.inspect_err(|e| {
                failed += 1;
                eprintln!("error: {e}");
            })
            .ok()
        })
        .filter(|p| select.matches(p))
        .collect();
    if matches!(action, Action::Reject(_)) {
        for seq in &select.seqs {
            if !chosen.iter().any(|p| p.seq == *seq) {
                failed += 1;
                eprintln!(
                    "error: no parked row {seq}{}",
                    if select.application.is_some() || select.reason.is_some() {
                        " of this application and reason"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match action {
        Action::List(_) => {
            for p in &chosen {
                if select.json {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({
                            "seq": p.seq, "reason": p.reason.code(), "application": p.application,
                            "key": p.key.as_ref().map(|k| k.display()), "message_id": p.message_id,
                            "source": p.source,
                        }),
                    )?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {:<21} {}  {}  message {}  from {}",
                        p.seq,
                        p.reason.code(),
                        p.application,
                        p.key.as_ref().map(|k| k.display()).unwrap_or_default(),
                        p.message_id,
                        p.source
                    )?;
                }
            }
            out.flush()?;
            eprintln!("{} parked", chosen.len());
        }
        Action::Release(_) | Action::Reject(_) => {
            let pipeline = Pipeline::new(Arc::new(config), Arc::new(store))?;
            let now = select.now.unwrap_or_else(Utc::now);
            let mut released_rows = 0;
            for p in &chosen {
                let outcome: Result<Report, String> = match &action {
                    Action::Reject(reject) => match pipeline.reject_parked(
                        p,
                        &super::operator(reject.by.as_deref()),
                        reject.note.as_deref(),
                        now,
                    ) {
                        Ok(Ok(report)) => Ok(report),
                        Ok(Err(why)) => Err(format!("not rejected: {why}")),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => pipeline.release(p, now).map_err(|e| e.to_string()),
                };
                let mut report = match outcome {
                    Ok(report) => report,
                    Err(e) => {
                        // Stays parked; the next rows go on.
                        failed += 1;
                        eprintln!("error: parked row {}: {e}", p.seq);
                        continue;
                    }
                };
                // Kept parked (bodflow failed on it), or released meanwhile.
                let not_refused = matches!(action, Action::Reject(_))
                    && report.outcome != crate::pipeline::Outcome::Rejected;
                if not_refused {
                    failed += 1;
                    eprintln!(
                        "error: parked row {}: not rejected: {}",
                        p.seq,
                        report.outcome.as_str()
                    );
                } else {
                    released_rows += 1;
                }
                // Documents this release's change released in turn (no_match ones it made
                // placeable) follow it.
                let released = std::mem::take(&mut report.released);
                for (seq, report) in std::iter::once((Some(p.seq), report))
                    .chain(released.into_iter().map(|r| (None, r)))
                {
                    if select.json {
                        serde_json::to_writer(&mut out, &report)?;
                        writeln!(out)?;
                    } else {
                        writeln!(
                            out,
                            "{:>6}  {} -> {}{}",
                            seq.map(|s| s.to_string()).unwrap_or_else(|| "+".into()),
                            report.source,
                            report.outcome.as_str(),
                            report
                                .record
                                .as_deref()
                                .map(|r| format!(" {r}"))
                                .unwrap_or_default()
                        )?;
                    }
                }
            }
            pipeline.store.flush()?;
            out.flush()?;
            match action {
                Action::Reject(_) => eprintln!("{released_rows} rejected"),
                _ => eprintln!("{released_rows} released"),
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} parked rows could not be read, found or handled; they stay parked");
        ExitCode::FAILURE
    })
}
