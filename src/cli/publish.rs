//! `bodflow publish PATH...`: sends BOD files to `bodflow.in` as ION would (DESIGN §5.1,
//! §5.3): persistent, `message_id` = payload digest (so a resend is a duplicate), the ION
//! headers stamped from the document ([`ion_headers`]), with publisher confirms and up to
//! [`WINDOW`] messages awaiting theirs.

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
        let ion = ion_headers(&bytes, config);
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let sent = sender
            .send(&InboundMessage {
                bytes: &bytes,
                message_id: &message_id,
                document_name: ion.document_name.as_deref(),
                from_logical_id: ion.from.as_deref(),
                to_logical_id: Some(&config.hub.logical_id),
                tenant_id: ion.tenant.as_deref(),
                variation_id: ion.variation.as_deref(),
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

/// The ION headers of a document besides `toLogicalId` (bodflow's own `hub.logical_id`), as
/// ION stamps them from the document: `documentName` (`Verb.Noun`, from the root element),
/// `fromLogicalId` (`Sender/LogicalID`), `tenantId` (the verb's `TenantID`) and, for a
/// document of one noun, `variationId` (its first ID's `@variationID`). A document the
/// pipeline cannot read still gets its name and, if it can be made out, its sender (so its
/// ConfirmBOD reaches it).
#[derive(Debug, Default, PartialEq, Eq)]
struct Ion {
    document_name: Option<String>,
    from: Option<String>,
    tenant: Option<String>,
    variation: Option<String>,
}

fn ion_headers(bytes: &[u8], config: &Config) -> Ion {
    let present = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let document_name = amqp::document_name(bytes);
    let Ok(bod) = crate::bod::parse(bytes, config.limits.into()) else {
        return Ion {
            document_name,
            from: present(emit::sniff_area(bytes).and_then(|a| a.logical_id)),
            ..Ion::default()
        };
    };
    let variation = match bod.nouns.as_slice() {
        [crate::bod::Noun::Account(p)] => p.ids.first().and_then(|id| id.variation.clone()),
        [crate::bod::Noun::Contact(c)] => c.ids.first().and_then(|id| id.variation.clone()),
        _ => None,
    };
    Ion {
        document_name,
        from: present(bod.area.logical_id),
        tenant: present(bod.header.tenant_id),
        variation: present(variation),
    }
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
    fn the_ion_headers_come_from_the_document() {
        let config = Config::from_toml("", "t").unwrap();
        let doc = |area: &str, verb: &str, ids: &str| {
            format!(
                "<SyncCustomerPartyMaster><ApplicationArea>{area}</ApplicationArea><DataArea>\
                 <Sync>{verb}</Sync><CustomerPartyMaster><PartyIDs>{ids}</PartyIDs>\
                 <Name>A</Name></CustomerPartyMaster></DataArea></SyncCustomerPartyMaster>"
            )
        };
        let sender = "<Sender><LogicalID>lid://infor.ln.ln01</LogicalID></Sender>";
        let ion = ion_headers(
            doc(
                sender,
                "<TenantID> ACME </TenantID>",
                "<ID variationID=\"7\">C-1</ID>",
            )
            .as_bytes(),
            &config,
        );
        assert_eq!(
            ion,
            Ion {
                document_name: Some("Sync.CustomerPartyMaster".into()),
                from: Some("lid://infor.ln.ln01".into()),
                tenant: Some("ACME".into()),
                variation: Some("7".into()),
            }
        );
        // Left out by the document: no header.
        let bare = ion_headers(doc(sender, "", "<ID>C-1</ID>").as_bytes(), &config);
        assert_eq!((bare.tenant, bare.variation), (None, None));
        // Not well-formed: the name and the sender as far as they can be made out.
        let broken = ion_headers(
            format!("<SyncCustomerPartyMaster><ApplicationArea>{sender}<BODID>x</BODID><DataArea>")
                .as_bytes(),
            &config,
        );
        assert_eq!(
            broken,
            Ion {
                document_name: Some("Sync.CustomerPartyMaster".into()),
                from: Some("lid://infor.ln.ln01".into()),
                ..Ion::default()
            }
        );
    }

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
