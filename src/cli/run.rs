//! `bodflow run`: the broker service (DESIGN §4, §5.3). Opens the store, then hands over to
//! [`crate::amqp::run`] with SIGINT/SIGTERM as its shutdown; exit 0 after a clean stop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::amqp::{self, RunOptions};
use crate::config::{redact_url, Config};
use crate::pipeline::Pipeline;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Commit attempts on store errors before a delivery is dead-lettered
    /// `retries_exhausted`.
    #[arg(long, default_value_t = RunOptions::default().store_attempts)]
    store_attempts: u32,
    /// Most deliveries per store transaction (group commit).
    #[arg(long, default_value_t = RunOptions::default().group_max)]
    group_max: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, config_path) = Config::resolve(args.config.as_deref(), &[])?;
    if config_path.is_none() {
        tracing::warn!("No bodflow.toml found: built-in defaults, no applications configured");
    }
    let store_path = config.hub.store.clone();
    let store = Store::open(&store_path)
        .with_context(|| format!("opening store {}", store_path.display()))?;
    tracing::info!(
        store = %store_path.display(),
        broker = %redact_url(&config.amqp.url),
        applications = config.applications.len(),
        prefetch = config.amqp.prefetch,
        "Starting"
    );
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(store))?;
    // Documents parked while their application was inactive go through now that it is active;
    // their replies wait in the outbox for the publisher.
    let released = pipeline.release_reactivated(chrono::Utc::now())?;
    pipeline.store.flush()?;
    if !released.is_empty() {
        tracing::info!(
            documents = released.len(),
            "Released documents of re-activated applications"
        );
    }
    let options = RunOptions {
        store_attempts: args.store_attempts.max(1),
        group_max: args.group_max.max(1),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(amqp::run(pipeline, options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
