//! `bodflow publish PATH...`: sends BOD files to `bodflow.in` as ION would (DESIGN §5.1):
//! persistent, `message_id` = payload digest (so a resend is a duplicate), headers
//! `documentName` (from the root element) and `fromLogicalId` (the Sender's LogicalID), with
//! publisher confirms and up to [`WINDOW`] messages awaiting theirs.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::amqp::{self, InboundMessage, Sender};
use crate::config::{redact_url, Config};
use crate::pipeline::{emit, payload_digest};

/// Messages in flight before the oldest confirm is awaited.
const WINDOW: usize = 256;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::Inputs,
    /// At most this many messages per second (default: as fast as confirms allow).
    #[arg(long)]
    rate: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = args.inputs.config()?;
    let inputs = super::collect_inputs(&args.inputs.paths)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    runtime.block_on(publish(&config, &inputs, args.rate))?;
    tracing::info!(
        documents = inputs.len(),
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        broker = %redact_url(&config.amqp.url),
        "Published"
    );
    Ok(ExitCode::SUCCESS)
}

async fn publish(config: &Config, inputs: &[PathBuf], rate: Option<u32>) -> anyhow::Result<()> {
    let sender = Sender::connect(config)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&config.amqp.url)))?;
    let progress =
        ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut ticker = rate.filter(|r| *r > 0).map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut pending = VecDeque::with_capacity(WINDOW);
    // The file of each message id sent: a returned message is reported by its own id.
    let mut files: HashMap<String, &Path> = HashMap::with_capacity(inputs.len());
    for path in inputs {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let message_id = payload_digest(&bytes);
        let document_name = amqp::document_name(&bytes);
        let from = emit::sniff_area(&bytes).and_then(|a| a.logical_id);
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let sent = sender
            .send(&InboundMessage {
                bytes: &bytes,
                message_id: &message_id,
                document_name: document_name.as_deref(),
                from_logical_id: from.as_deref(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("publishing {}", path.display()))?;
        files.insert(message_id, path);
        pending.push_back(sent);
        if pending.len() >= WINDOW {
            if let Some(p) = pending.pop_front() {
                p.confirmed().await.map_err(|e| named(e, &files))?;
            }
        }
        progress.inc(1);
    }
    for p in pending {
        p.confirmed().await.map_err(|e| named(e, &files))?;
    }
    sender.close().await.map_err(|e| named(e, &files))?;
    progress.finish_and_clear();
    Ok(())
}

/// A publish error, with the file of a returned or refused (Nacked) message.
fn named(e: amqp::Error, files: &HashMap<String, &Path>) -> anyhow::Error {
    let file = match &e {
        amqp::Error::Returned(id) | amqp::Error::Nacked(id) => {
            files.get(id).map(|path| (id.clone(), *path))
        }
        _ => None,
    };
    let Some((id, path)) = file else {
        return e.into();
    };
    let hint = match e {
        amqp::Error::Returned(_) => format!(
            ": is {} bound to {}?",
            amqp::topology::IN_EXCHANGE,
            amqp::topology::INBOUND_QUEUE
        ),
        _ => String::new(),
    };
    anyhow::Error::new(e).context(format!(
        "publishing {} (message id {id}){hint}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_or_refused_message_is_reported_with_its_file() {
        let path = Path::new("fixtures/b.xml");
        let files = HashMap::from([("m-b".to_string(), path)]);
        let message = format!("{:#}", named(amqp::Error::Returned("m-b".into()), &files));
        assert_eq!(
            message,
            "publishing fixtures/b.xml (message id m-b): is bodflow.in bound to \
             bodflow.inbound?: message for m-b was returned unroutable"
        );
        let nacked = format!("{:#}", named(amqp::Error::Nacked("m-b".into()), &files));
        assert!(
            nacked.starts_with("publishing fixtures/b.xml (message id m-b): "),
            "{nacked}"
        );
        let other = format!("{:#}", named(amqp::Error::Returned("m-x".into()), &files));
        assert_eq!(other, "message for m-x was returned unroutable");
    }
}
