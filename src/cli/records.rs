//! `bodflow records`: the hub's golden records with their cross-references.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder (default: the configured hub.store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// One JSON object per record.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::resolve(args.config.as_deref(), &[])?;
    let store = super::open_store(args.store.as_deref(), &config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0usize;
    for record in store.records() {
        let r = record?;
        count += 1;
        if args.json {
            serde_json::to_writer(&mut out, &r)?;
            writeln!(out)?;
            continue;
        }
        let mut flags = Vec::new();
        if r.deleted {
            flags.push("deleted");
        }
        if r.placeholder {
            flags.push("placeholder");
        }
        let xrefs: Vec<String> = r
            .xrefs
            .iter()
            .map(|x| r#ref(&x.application, &x.accounting_entity, &x.id))
            .collect();
        writeln!(
            out,
            "{}  {}{}  owner={}{}{}  xrefs: {}",
            r.id,
            r.display_name(),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            },
            r.owner.owner.as_deref().unwrap_or("-"),
            r.account
                .as_deref()
                .map(|a| format!(" account={a}"))
                .unwrap_or_default(),
            r.fields
                .address
                .as_ref()
                .and_then(|a| a.country.as_deref())
                .map(|c| format!(" country={c}"))
                .unwrap_or_default(),
            if xrefs.is_empty() {
                "-".to_string()
            } else {
                xrefs.join(", ")
            },
        )?;
    }
    out.flush()?;
    if !args.json {
        eprintln!("{count} records");
    }
    Ok(ExitCode::SUCCESS)
}

fn r#ref(application: &str, accounting_entity: &str, id: &str) -> String {
    if accounting_entity.is_empty() {
        format!("{application}|{id}")
    } else {
        format!("{application}|{accounting_entity}|{id}")
    }
}
