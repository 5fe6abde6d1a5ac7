//! `bodflow check PATH...` (decode + validate + country codes, no store) and
//! `bodflow check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;

use crate::config::Config;
use crate::pipeline::{prepare, Input, State};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::Inputs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = args.inputs.config()?;
    let mut invalid = 0usize;
    let inputs = super::collect_inputs(&args.inputs.paths)?;
    for path in &inputs {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let source = path.display().to_string();
        let prepared = prepare(&config, &Input::file(&bytes, &source, Utc::now()));
        match &prepared.state {
            State::Ready(doc) => println!(
                "{source}: valid {}{} ({} noun{})",
                doc.bod.verb,
                doc.bod.noun,
                doc.items.len(),
                if doc.items.len() == 1 { "" } else { "s" }
            ),
            State::Inactive { app } => println!(
                "{source}: valid, would be parked (application {:?} is inactive)",
                config.applications[*app].name
            ),
            State::Rejected { rejection, .. } => {
                invalid += 1;
                println!(
                    "{source}: invalid [{}/{}] {}",
                    rejection.stage.as_str(),
                    rejection.code,
                    rejection.message
                );
            }
        }
    }
    println!("{} checked, {invalid} invalid", inputs.len());
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn run_config(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = path.unwrap_or_else(|| PathBuf::from("bodflow.toml"));
    let config = Config::load(&path)?;
    println!(
        "{}: valid ({} applications, {} users)",
        path.display(),
        config.applications.len(),
        config.users.len()
    );
    Ok(ExitCode::SUCCESS)
}
