//! `bodflow records`: the hub's golden records with their cross-references; `--id` shows one
//! record in full with its audit trail (operator links and unlinks).

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
    /// Show this record in full, with its cross-references and audit trail (exit 1 if it
    /// does not exist).
    #[arg(long)]
    id: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::resolve(args.config.as_deref(), &[])?;
    let store = super::open_store(args.store.as_deref(), &config)?;
    if let Some(id) = &args.id {
        return detail(&store, id, args.json);
    }
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
        if let Some(p) = &r.promotion {
            flags.push(p.status.as_str());
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

/// One record in full: every field group, cross-references, unlinked applications, and the
/// audit trail.
fn detail(store: &crate::store::Store, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(r) = store.record(id)? else {
        eprintln!("error: no hub record {id}");
        return Ok(ExitCode::from(1));
    };
    let audit = store.audit_for(id)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "record": r, "audit": audit }),
        )?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{}  {} ({:?}, revision {}{}{})",
        r.id,
        r.display_name(),
        r.kind,
        r.revision,
        if r.deleted { ", deleted" } else { "" },
        if r.placeholder { ", placeholder" } else { "" },
    )?;
    writeln!(
        out,
        "  owner: {}  account manager: {}",
        r.owner.owner.as_deref().unwrap_or("-"),
        r.owner.account_manager.as_deref().unwrap_or("-")
    )?;
    if let Some(a) = &r.account {
        writeln!(out, "  account: {a}")?;
    }
    if let Some(p) = &r.intended_parent {
        writeln!(out, "  waiting for account: {}", p.display())?;
    }
    writeln!(
        out,
        "  fields: {}",
        serde_json::to_string(&r.fields).unwrap_or_default()
    )?;
    writeln!(
        out,
        "  created by: {}",
        if r.created_by.is_empty() {
            "-"
        } else {
            &r.created_by
        }
    )?;
    writeln!(out, "  cross-references:")?;
    if r.xrefs.is_empty() {
        writeln!(out, "    -")?;
    }
    for x in &r.xrefs {
        writeln!(
            out,
            "    {}{}",
            r#ref(&x.application, &x.accounting_entity, &x.id),
            if x.variation.is_empty() {
                String::new()
            } else {
                format!("  variationID {}", x.variation)
            }
        )?;
    }
    if !r.unlinked.is_empty() {
        writeln!(
            out,
            "  unlinked (no outbound Syncs): {}",
            r.unlinked.join(", ")
        )?;
    }
    if let Some(p) = &r.promotion {
        writeln!(
            out,
            "  promotion: {} to {} (Process {}, {}){}",
            p.status.as_str(),
            p.application,
            p.bod_id,
            p.at,
            p.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )?;
    }
    writeln!(out, "  audit:")?;
    if audit.is_empty() {
        writeln!(out, "    -")?;
    }
    for a in &audit {
        writeln!(
            out,
            "    {}  {} {} {} by {}{}",
            a.at,
            a.action,
            r#ref(&a.application, &a.accounting_entity, &a.app_id),
            a.record,
            a.operator,
            if a.released.is_empty() {
                String::new()
            } else {
                format!("; released {}", a.released.join(", "))
            }
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
