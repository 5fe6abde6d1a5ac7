//! `bodflow link` and `bodflow unlink`: an operator gives a hub record an application's ID,
//! or takes it away ([`crate::pipeline::link`]). Both work on the store offline (the service
//! holds the store's lock while it runs), are audited in the record's trail, and leave what
//! they emit (Syncs of released documents and re-linked contacts) in the outbox for the
//! service to publish.
//!
//! Exit 0 when done, 1 when refused (a missing record, an ID already linked elsewhere, a
//! record already linked for that application, ...), 2 on I/O errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::pipeline::link::{Done, LinkRequest, Refused, UnlinkRequest};
use crate::pipeline::{Pipeline, Report};
use crate::store::Kind;

#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// The application's logical ID.
    #[arg(long)]
    application: String,
    /// The application's ID for the record (its PartyIDs/ID or IDs/ID).
    #[arg(long)]
    id: String,
    /// The hub record (ACC-000042, CON-000007).
    #[arg(long)]
    record: String,
    /// The noun; must be the record's (default: the record's).
    #[arg(long, value_parser = ["CustomerPartyMaster", "ContactMaster"])]
    noun: Option<String>,
    /// The application's accounting entity for that ID (default: none).
    #[arg(long, default_value = "")]
    accounting_entity: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct UnlinkArgs {
    /// The application's logical ID.
    #[arg(long)]
    application: String,
    /// The hub record.
    #[arg(long)]
    record: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Store folder (default: the configured hub.store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Operator named in the audit trail (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// One JSON object (the audit entry and the released documents' reports).
    #[arg(long)]
    json: bool,
    /// Time of the audit entry and of emitted BODs (RFC 3339), for reproducible output.
    #[arg(long, hide = true)]
    now: Option<chrono::DateTime<Utc>>,
}

impl Common {
    fn operator(&self) -> String {
        super::operator(self.by.as_deref())
    }

    fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let (config, _) = Config::resolve(self.config.as_deref(), &[])?;
        let store = super::open_store(self.store.as_deref(), &config)?;
        Ok(Pipeline::new(Arc::new(config), Arc::new(store))?)
    }
}

pub fn link(args: LinkArgs) -> anyhow::Result<ExitCode> {
    let pipeline = args.common.pipeline()?;
    let operator = args.common.operator();
    let result = pipeline.link(&LinkRequest {
        application: &args.application,
        accounting_entity: &args.accounting_entity,
        id: &args.id,
        record: &args.record,
        kind: args.noun.as_deref().and_then(Kind::from_noun),
        operator: &operator,
        now: args.common.now.unwrap_or_else(Utc::now),
    })?;
    finish(&pipeline, result, args.common.json)
}

pub fn unlink(args: UnlinkArgs) -> anyhow::Result<ExitCode> {
    let pipeline = args.common.pipeline()?;
    let operator = args.common.operator();
    let result = pipeline.unlink(&UnlinkRequest {
        application: &args.application,
        record: &args.record,
        operator: &operator,
        now: args.common.now.unwrap_or_else(Utc::now),
    })?;
    finish(&pipeline, result, args.common.json)
}

fn finish(
    pipeline: &Pipeline,
    result: Result<Done, Refused>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let done = match result {
        Ok(done) => done,
        Err(refused) => {
            eprintln!("error: {refused} [{}]", refused.code());
            return Ok(ExitCode::from(1));
        }
    };
    pipeline.store.flush()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let Done { audit, report } = done;
    if json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({
                "audit": audit,
                "decisions": report.decisions,
                "outputs": report.outputs,
                "released": report.released,
            }),
        )?;
        writeln!(out)?;
    } else {
        for d in &report.decisions {
            writeln!(out, "{d}")?;
        }
        for r in &report.released {
            writeln!(out, "  {}", released_line(r))?;
        }
        if !report.outputs.is_empty() || report.released.iter().any(|r| !r.outputs.is_empty()) {
            writeln!(
                out,
                "(emitted documents wait in the outbox for `bodflow run`)"
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn released_line(r: &Report) -> String {
    let mut line = format!("{}: {}", r.source, r.outcome.as_str());
    if let Some(rec) = &r.record {
        line.push_str(&format!(" {rec}"));
    }
    if let Some(e) = &r.error {
        line.push(' ');
        line.push_str(&e.summary());
    }
    line
}
