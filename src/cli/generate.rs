//! `bodflow generate`: deterministic synthetic BODs plus the bodflow.toml they need.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::generate::{Generator, Mix, CONFIG};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// How many documents.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Seed; the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only new accounts instead of the realistic mix (updates, duplicates, stale, invalid).
    #[arg(long)]
    new_only: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("bodflow.toml"), CONFIG)?;
    let mix = if args.new_only {
        Mix::NEW_ONLY
    } else {
        Mix::REALISTIC
    };
    let width = args.count.max(1).to_string().len();
    for g in Generator::new(args.seed, mix).take(args.count) {
        let file = args.out.join(format!("{:0width$}.xml", g.index));
        std::fs::write(&file, &g.bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    println!(
        "{} documents and bodflow.toml written to {}",
        args.count,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
