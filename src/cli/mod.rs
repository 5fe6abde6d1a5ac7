//! The `bodflow` commands (DESIGN §5.1). Each command lives in its own module and returns an
//! `anyhow::Result<ExitCode>`; this module parses arguments, sets up logging and maps errors to
//! exit code 2 (1 is reserved for "some input is invalid" from `check`).

mod check;
mod dlq;
mod generate;
mod link;
mod parked;
mod publish;
mod records;
mod replay;
mod resync;
mod run;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bodflow",
    version,
    about = "Keeps customers and contacts in sync across business applications by processing OAGIS / Infor ION BODs"
)]
struct Cli {
    /// Log line format (levels via RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run BOD files or folders (*.xml, recursively, in name order) through the pipeline
    /// with the embedded store, no broker.
    Replay(replay::Args),
    /// Parse and validate only; exit 1 if any document is invalid.
    Check(check::Args),
    /// Validate a configuration file.
    CheckConfig {
        /// Configuration file (default: ./bodflow.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List hub records with their cross-references.
    Records(records::Args),
    /// Write deterministic synthetic BODs (and their bodflow.toml) for load tests.
    Generate(generate::Args),
    /// The service: consume BODs from RabbitMQ, process them, publish replies and outbound
    /// BODs; stops cleanly on SIGINT/SIGTERM.
    Run(run::Args),
    /// Send BOD files or folders to the inbound exchange with ION headers.
    Publish(publish::Args),
    /// Parked documents: list them, or release them through the pipeline.
    Parked {
        #[command(subcommand)]
        action: parked::Action,
    },
    /// Dead letters in bodflow.dead: list, show, replay to bodflow.in, discard.
    Dlq {
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// "Run Now": send one application every record it may receive as Sync<Noun> (through
    /// the running service when it holds the store).
    Resync(resync::Args),
    /// Link a hub record to an application's ID and apply the documents parked for it.
    Link(link::LinkArgs),
    /// Remove an application's cross-reference from a hub record (the record stays).
    Unlink(link::UnlinkArgs),
    /// Where is my message? Its timeline by message id or BODID: received, each stage's
    /// decision, outcome, outputs and their publish confirms.
    Track(track::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in `docker logs` or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        // One JSON object per line: timestamp, level, target, the event's fields, and the
        // spans it happened in (`span` = innermost, `spans` = all, with their fields).
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Replay(args) => replay::run(args),
        Command::Check(args) => check::run(args),
        Command::CheckConfig { config } => check::run_config(config),
        Command::Records(args) => records::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Run(args) => run::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Parked { action } => parked::run(action),
        Command::Dlq { action } => dlq::run(action),
        Command::Resync(args) => resync::run(args),
        Command::Link(args) => link::link(args),
        Command::Unlink(args) => link::unlink(args),
        Command::Track(args) => track::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            match cli.log_format {
                // Machines reading JSON lines get the failure as one too.
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "Command failed"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

/// The operator an action is recorded under: `--by`, else `$USER`, else `unknown`.
fn operator(by: Option<&str>) -> String {
    by.map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The inputs of `replay` and `check`.
#[derive(Debug, clap::Args)]
pub struct Inputs {
    /// BOD files or folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else PATH/bodflow.toml, else built-in).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl Inputs {
    /// The configuration these inputs run under (see [`crate::config::Config::resolve`]).
    pub fn config(&self) -> anyhow::Result<(crate::config::Config, Option<PathBuf>)> {
        Ok(crate::config::Config::resolve(
            self.config.as_deref(),
            &self.paths,
        )?)
    }
}

/// `*.xml` files under each path (recursively), each folder's files in name order; plain file
/// arguments are taken as they are. A sub-folder with a `bodflow.toml` of its own is a
/// separate scenario with its own applications (`fixtures/scenarios/<name>/`): it is not
/// entered, only named directly.
pub fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut scenarios = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, &mut scenarios)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", p.display());
        }
    }
    if let Some(first) = scenarios.first() {
        tracing::info!(
            folders = scenarios.len(),
            first = %first.display(),
            "Folders with a bodflow.toml of their own not entered (each is a scenario: name it to run it)"
        );
    }
    Ok(out)
}

/// Adds the `*.xml` files under `dir` to `out`, and to `scenarios` the folders it does not
/// enter because they hold a `bodflow.toml` of their own.
fn walk(
    dir: &std::path::Path,
    out: &mut Vec<PathBuf>,
    scenarios: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // Names and types come from the directory listing itself (no `stat` per file: a replay
    // folder holds tens of thousands); siblings sort by name, which is their path order.
    let mut entries: Vec<(std::ffi::OsString, bool)> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(|e| {
            let e = e.ok()?;
            // A symbolic link (or an unknown type) is followed, as `Path::is_dir` would.
            let is_dir = match e.file_type() {
                Ok(t) if !t.is_symlink() => t.is_dir(),
                _ => e.path().is_dir(),
            };
            Some((e.file_name(), is_dir))
        })
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, is_dir) in entries {
        let p = dir.join(name);
        if is_dir {
            if p.join("bodflow.toml").is_file() {
                scenarios.push(p);
            } else {
                walk(&p, out, scenarios)?;
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Opens the store for an operator command: `--store`, else the configured `hub.store`.
pub fn open_store(
    store: Option<&std::path::Path>,
    config: &crate::config::Config,
) -> anyhow::Result<crate::store::Store> {
    let path = store.unwrap_or(&config.hub.store);
    if !path.exists() {
        anyhow::bail!("no store at {} (give --store DIR)", path.display());
    }
    crate::store::Store::open_configured(path, &config.hub)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
