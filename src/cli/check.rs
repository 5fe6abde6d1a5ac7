//! `bodflow check PATH...` (decode + validate + country codes, no store) and
//! `bodflow check-config` (also `bodflow check --config F` without paths, DESIGN §5.2).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;

use crate::config::Config;
use crate::pipeline::{prepare, Input, State};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// BOD files or folders. None, with `--config F`: check the configuration file only (as
    /// `bodflow check-config --config F`).
    #[arg(required_unless_present = "config")]
    paths: Vec<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else PATH/bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.paths.is_empty() {
        return run_config(args.config);
    }
    let args = super::Inputs {
        paths: args.paths,
        config: args.config,
    };
    let (config, _) = args.config()?;
    let mut invalid = 0usize;
    let inputs = super::collect_inputs(&args.paths)?;
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
                println!("{source}: invalid {}", rejection.summary());
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
    crate::amqp::endpoint(&config.amqp)?;
    println!(
        "{}: valid ({} applications, {} users)",
        path.display(),
        config.applications.len(),
        config.users.len()
    );
    Ok(ExitCode::SUCCESS)
}
