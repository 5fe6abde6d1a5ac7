//! `bodflow dlq list|show|replay|discard`: the dead letters in `bodflow.dead`.
//!
//! Every command takes all messages ready in the queue (unacked, in order), acts on the
//! selected ones and gives the rest back to their places (see [`crate::amqp::dlq`]): `list`
//! and `show` leave the queue as it was (the messages only get the `redelivered` flag).
//! `replay` re-publishes to `bodflow.in` as a retry of the same message id (an outbound
//! message no queue took, stage `publish`, to `bodflow.out` for its receiver) and removes a
//! message only after the broker confirmed its re-publish; `discard` removes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::amqp::dlq::{DeadMessage, DeadQueue};
use crate::amqp::Error;
use crate::config::{redact_url, Config};

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the dead letters, oldest first; the queue is left as it was.
    List {
        #[command(flatten)]
        common: Common,
        /// Only these rejection codes (x-bodflow-code).
        #[arg(long)]
        code: Option<String>,
    },
    /// Headers and payload of the dead letters with this message id.
    Show {
        #[command(flatten)]
        common: Common,
        /// Message id.
        id: String,
    },
    /// Re-publish dead letters to bodflow.in with their message id, correlation id, reply-to
    /// and headers, marked `x-bodflow-retry: true` (a rejected message id is processed
    /// again; an applied one stays a duplicate); outbound messages no queue took (stage
    /// `publish`) go to bodflow.out for their receiver instead. Each is removed from
    /// bodflow.dead once its re-publish is confirmed.
    Replay {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        select: Select,
        /// Replace the body by this file (the operator's fix); needs exactly one ID.
        #[arg(long)]
        payload: Option<PathBuf>,
    },
    /// Remove dead letters for good, printing each.
    Discard {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        select: Select,
    },
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// Configuration file (default: ./bodflow.toml, else built-in); BODFLOW_AMQP_URL
    /// overrides the broker.
    #[arg(long)]
    config: Option<PathBuf>,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Select {
    /// Message ids to act on.
    ids: Vec<String>,
    /// Every dead letter (with --code: every one of that code).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Only dead letters of this rejection code (x-bodflow-code).
    #[arg(long)]
    code: Option<String>,
}

impl Select {
    fn check(&self) -> anyhow::Result<()> {
        if self.ids.is_empty() && !self.all && self.code.is_none() {
            anyhow::bail!("give message ids, --all or --code");
        }
        Ok(())
    }

    fn matches(&self, m: &DeadMessage) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|id| id == m.message_id()))
            && self
                .code
                .as_ref()
                .is_none_or(|c| m.code().as_deref() == Some(c))
    }
}

pub fn run(action: Action) -> anyhow::Result<ExitCode> {
    let common = match &action {
        Action::List { common, .. }
        | Action::Show { common, .. }
        | Action::Replay { common, .. }
        | Action::Discard { common, .. } => common,
    };
    let (config, _) = Config::resolve(common.config.as_deref(), &[])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let queue = DeadQueue::open(&config)
            .await
            .with_context(|| format!("reading bodflow.dead at {}", redact_url(&config.amqp.url)))?;
        // Whatever happens, unselected messages go back (the broker would requeue them on
        // close anyway).
        let result = act(&queue, &action, common.json).await;
        let released = queue.release().await;
        let code = result?;
        released?;
        Ok(code)
    })
}

/// One line of `list` / the summary of a message.
fn summary(m: &DeadMessage) -> serde_json::Value {
    serde_json::json!({
        "position": m.position,
        "message_id": m.message_id(),
        "correlation_id": m.correlation_id(),
        "stage": m.stage(),
        "code": m.code(),
        "reason": m.reason(),
        "path": m.path(),
        "document_name": m.header("documentName"),
        "sender": m.header("fromLogicalId"),
        "size": m.payload().len(),
        "replayed": m.replayed(),
        "outbound": m.outbound(),
    })
}

fn line(m: &DeadMessage) -> String {
    format!(
        "{:>5}  {}  {}/{}  {}  from {}  {} bytes{}  {}",
        m.position,
        m.message_id(),
        m.stage().unwrap_or_else(|| "-".into()),
        m.code().unwrap_or_else(|| "-".into()),
        m.header("documentName").unwrap_or_else(|| "-".into()),
        m.header("fromLogicalId").unwrap_or_else(|| "-".into()),
        m.payload().len(),
        if m.replayed() { "  (replayed)" } else { "" },
        m.reason().unwrap_or_default().replace('\n', " "),
    )
}

async fn act(queue: &DeadQueue, action: &Action, json: bool) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match action {
        Action::List { code, .. } => {
            let mut n = 0;
            for m in queue
                .messages
                .iter()
                .filter(|m| code.as_ref().is_none_or(|c| m.code().as_deref() == Some(c)))
            {
                n += 1;
                if json {
                    serde_json::to_writer(&mut out, &summary(m))?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", line(m))?;
                }
            }
            out.flush()?;
            eprintln!("{n} dead letters");
        }
        Action::Show { id, .. } => {
            let found: Vec<&DeadMessage> = queue
                .messages
                .iter()
                .filter(|m| m.message_id() == id)
                .collect();
            if found.is_empty() {
                anyhow::bail!("no dead letter with message id {id}");
            }
            for m in found {
                if json {
                    let mut v = summary(m);
                    v["routing_key"] = m.routing_key().into();
                    v["reply_to"] = m.reply_to().into();
                    v["redelivered"] = m.redelivered().into();
                    v["headers"] = m
                        .headers()
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::from(v)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                    v["payload"] = String::from_utf8_lossy(m.payload()).into();
                    serde_json::to_writer(&mut out, &v)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "position:       {}", m.position)?;
                    writeln!(out, "message_id:     {}", m.message_id())?;
                    writeln!(out, "correlation_id: {}", m.correlation_id().unwrap_or("-"))?;
                    writeln!(out, "reply_to:       {}", m.reply_to().unwrap_or("-"))?;
                    writeln!(out, "routing_key:    {}", m.routing_key())?;
                    writeln!(out, "size:           {} bytes", m.payload().len())?;
                    writeln!(out, "headers:")?;
                    for (k, v) in m.headers() {
                        writeln!(out, "  {k}: {v}")?;
                    }
                    writeln!(out)?;
                    out.write_all(m.payload())?;
                    writeln!(out)?;
                }
            }
            out.flush()?;
        }
        Action::Replay {
            select, payload, ..
        } => {
            select.check()?;
            let fixed = match payload {
                Some(path) => {
                    if select.ids.len() != 1 || select.all {
                        anyhow::bail!("--payload needs exactly one message id");
                    }
                    Some(
                        std::fs::read(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                }
                None => None,
            };
            let (mut n, mut refused) = (0, 0);
            for m in queue.messages.iter().filter(|m| select.matches(m)) {
                match queue.replay(m, fixed.as_deref()).await {
                    Ok(()) => {
                        n += 1;
                        report(&mut out, json, "replayed", m)?;
                    }
                    // The broker refused this one (an outbound message whose receiver has no
                    // queue yet): it stays in bodflow.dead, and the others go on.
                    Err(e @ (Error::Returned(_) | Error::Nacked(_))) => {
                        refused += 1;
                        if json {
                            let mut v = summary(m);
                            v["action"] = "refused".into();
                            v["error"] = e.to_string().into();
                            serde_json::to_writer(&mut out, &v)?;
                            writeln!(out)?;
                        } else {
                            writeln!(out, "refused {}  ({e})", line(m))?;
                        }
                    }
                    Err(e) => {
                        return Err(
                            anyhow::Error::new(e).context(format!("replaying {}", m.message_id()))
                        )
                    }
                }
            }
            out.flush()?;
            eprintln!("{n} replayed");
            if refused > 0 {
                anyhow::bail!(
                    "{refused} not replayed: refused by the broker (left in bodflow.dead); \
                     an outbound message is returned while no queue of bodflow.out is bound \
                     for its receiver"
                );
            }
            if n == 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Action::Discard { select, .. } => {
            select.check()?;
            let mut n = 0;
            for m in queue.messages.iter().filter(|m| select.matches(m)) {
                queue.remove(m).await?;
                n += 1;
                report(&mut out, json, "discarded", m)?;
            }
            out.flush()?;
            eprintln!("{n} discarded");
            if n == 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(out: &mut impl Write, json: bool, what: &str, m: &DeadMessage) -> anyhow::Result<()> {
    if json {
        let mut v = summary(m);
        v["action"] = what.into();
        serde_json::to_writer(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{what} {}", line(m))?;
    }
    Ok(())
}
