//! `bodflow track ID`: where is my message? The timeline of every message tracked under `ID`
//! as a message id or a BODID (BODIDs are not unique: all its messages, newest first):
//! received, each stage's decision, the outcome, every output and its publish confirm.
//!
//! Reads the store (`--store`, else `hub.store`). The running service holds the store's lock;
//! then the same lookup is asked of the service over HTTP (`GET /messages/{id}` on
//! `http.listen`, or `--url`), so the command works the same with the service up or down.
//!
//! Exit 0 when something is tracked under `ID`, 1 when nothing is, 2 on errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

use crate::config::Config;
use crate::store::track::{Millis, Run, Track, Trigger};
use crate::store::Store;
use crate::telemetry::http::{Messages, DEFAULT_LIMIT};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A message id (the AMQP message_id, or for replayed files the payload digest replay
    /// prints) or a BODID.
    id: String,
    /// Store folder (default: the configured hub.store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Configuration file (default: ./bodflow.toml, else built-in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// One JSON object per message (the `GET /messages/{id}` form) instead of text.
    #[arg(long)]
    json: bool,
    /// At most this many messages (a BODID may name many).
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// The service to ask when the store is in use (default: http://<http.listen>).
    #[arg(long)]
    url: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::resolve(args.config.as_deref(), &[])?;
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| config.hub.store.clone());
    let limit = args.limit.max(1);
    let found = if path.exists() {
        match Store::open_configured(&path, &config.hub) {
            Ok(store) => store.lookup_tracked(&args.id, limit)?,
            Err(e) if e.is_locked() => {
                let base = args
                    .url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", config.http.listen));
                eprintln!(
                    "{} is in use (the service is running?): asking {base}",
                    path.display()
                );
                ask_service(&base, &args.id, limit).with_context(|| {
                    format!(
                        "the store {} is in use by another process, and asking the service at {base} failed",
                        path.display()
                    )
                })?
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    } else {
        anyhow::bail!("no store at {} (give --store DIR)", path.display());
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for track in &found {
        if args.json {
            serde_json::to_writer(&mut out, track)?;
            writeln!(out)?;
        } else {
            write_timeline(&mut out, track)?;
        }
    }
    out.flush()?;
    if found.is_empty() {
        eprintln!(
            "nothing tracked under {:?} (not a message id or BODID bodflow processed within tracking.retention)",
            args.id
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET {base}/messages/{id}?limit=N` on the running service.
fn ask_service(base: &str, id: &str, limit: usize) -> anyhow::Result<Vec<Track>> {
    let base = base.trim_end_matches('/');
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{base}: only http:// is supported"))?;
    let path = format!(
        "/messages/{}?limit={limit}",
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(&path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    })?;
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    if !status.is_success() {
        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    let messages: Messages =
        serde_json::from_slice(&body).context("reading the service's answer")?;
    Ok(messages.messages)
}

/// The timeline as text: one block per message, one paragraph per processing.
pub fn write_timeline(out: &mut impl Write, track: &Track) -> std::io::Result<()> {
    writeln!(out, "message {}", track.message_id)?;
    for run in &track.runs {
        write_run(out, run)?;
    }
    writeln!(out)
}

fn write_run(out: &mut impl Write, run: &Run<'_>) -> std::io::Result<()> {
    let what = match (&run.verb, &run.noun) {
        (Some(v), Some(n)) => format!("{v}{n}"),
        _ => "document".into(),
    };
    let how = match run.trigger.as_str() {
        "release" => "released from parking",
        "retry" => "retried",
        _ => "received",
    };
    writeln!(
        out,
        "  {}  {how}: {what}, {} bytes, from {} via {}",
        run.received_at.rfc3339(),
        run.size,
        run.sender.as_deref().unwrap_or("(unknown sender)"),
        run.source,
    )?;
    if let Some(b) = &run.bod_id {
        writeln!(out, "    {:<9} {b}", "BODID")?;
    }
    if let Some(r) = &run.reply_to {
        writeln!(out, "    {:<9} {r}", "reply_to")?;
    }
    for s in &run.stages {
        writeln!(out, "    {:<9} {}", s.stage, s.decision)?;
    }
    let mut outcome = run.outcome.to_string();
    for part in [&run.action, &run.record].into_iter().flatten() {
        outcome.push(' ');
        outcome.push_str(part);
    }
    if let Some(e) = &run.error {
        outcome.push_str(&format!(" [{}/{}] {}", e.stage, e.code, e.message));
        if let Some(p) = &e.path {
            if !e.message.contains(p.as_ref()) {
                outcome.push_str(&format!(" at {p}"));
            }
        }
    }
    if let Some(p) = &run.parked {
        outcome.push_str(&format!(
            " ({}), parked as {} — `bodflow parked release {}`",
            p.reason, p.seq, p.seq
        ));
    }
    writeln!(out, "    {:<9} {outcome}", "outcome")?;
    for o in &run.outputs {
        let confirmed = match (o.confirmed_at, o.dead_lettered_at) {
            (Some(at), _) => format!("confirmed {}{}", at.rfc3339(), after(run.received_at, at)),
            (None, Some(at)) => format!(
                "no queue took it: dead-lettered {}{} (`bodflow dlq list --code unroutable`)",
                at.rfc3339(),
                after(run.received_at, at)
            ),
            // `replay` writes its outputs to files (or nowhere); only the service publishes.
            (None, None) if run.trigger == Trigger::Received && run.source != "amqp" => {
                "not published (offline replay)".into()
            }
            (None, None) => "not confirmed by the broker (yet)".into(),
        };
        writeln!(
            out,
            "    {:<9} {} → {}  {}  {confirmed}",
            "output", o.kind, o.to, o.bod_id
        )?;
    }
    Ok(())
}

/// ` (+12 ms)`: how long after receipt.
fn after(from: Millis, to: Millis) -> String {
    match to.0.checked_sub(from.0) {
        Some(ms) if ms < 10_000 => format!(" (+{ms} ms)"),
        Some(ms) => format!(" (+{:.1} s)", ms as f64 / 1000.0),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::track::{StageDecision, TrackedError, TrackedOutput, TrackedPark};

    fn run() -> Run<'static> {
        Run {
            received_at: Millis(1_714_564_800_000),
            trigger: Trigger::Received,
            source: "amqp".into(),
            sender: Some("lid://infor.ln.ln01/3555".into()),
            size: 3456,
            reply_to: None,
            bod_id: Some("infor-nid:X:1".into()),
            verb: Some("Sync".into()),
            noun: Some("CustomerPartyMaster".into()),
            stages: vec![StageDecision {
                stage: "country".into(),
                decision: "country DEU→DE (iso3)".into(),
            }],
            outcome: "applied".into(),
            action: Some("created".into()),
            record: Some("ACC-000001".into()),
            error: None,
            parked: None,
            outputs: vec![TrackedOutput {
                kind: "SyncCustomerPartyMaster".into(),
                to: "lid://infor.crm.crm01".into(),
                bod_id: "bodflow:abc:1".into(),
                confirmed_at: Some(Millis(1_714_564_800_042)),
                dead_lettered_at: None,
            }],
        }
    }

    fn text(track: &Track) -> String {
        let mut out = Vec::new();
        write_timeline(&mut out, track).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_timeline_reads_received_stages_outcome_outputs() {
        let t = text(&Track {
            message_id: "m1".into(),
            runs: vec![run()],
        });
        for want in [
            "message m1",
            "2024-05-01T12:00:00.000Z  received: SyncCustomerPartyMaster, 3456 bytes, from lid://infor.ln.ln01/3555 via amqp",
            "BODID     infor-nid:X:1",
            "country   country DEU→DE (iso3)",
            "outcome   applied created ACC-000001",
            "output    SyncCustomerPartyMaster → lid://infor.crm.crm01  bodflow:abc:1  confirmed 2024-05-01T12:00:00.042Z (+42 ms)",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
    }

    #[test]
    fn rejections_and_parking_say_where_and_what_next() {
        let rejected = Run {
            outcome: "rejected".into(),
            action: None,
            record: None,
            error: Some(TrackedError {
                stage: "validate".into(),
                code: "missing_field".into(),
                message: "/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Name: required"
                    .into(),
                path: Some("/SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Name".into()),
            }),
            outputs: vec![],
            ..run()
        };
        let parked = Run {
            outcome: "parked".into(),
            action: None,
            record: None,
            parked: Some(TrackedPark {
                reason: "no_match".into(),
                seq: 7,
            }),
            outputs: vec![],
            trigger: Trigger::Release,
            ..run()
        };
        let t = text(&Track {
            message_id: "m2".into(),
            runs: vec![rejected, parked],
        });
        assert!(
            t.contains("outcome   rejected [validate/missing_field] /SyncCustomerPartyMaster/DataArea/CustomerPartyMaster/Name: required\n"),
            "{t}"
        );
        assert!(
            t.contains("released from parking: SyncCustomerPartyMaster"),
            "{t}"
        );
        assert!(
            t.contains("outcome   parked (no_match), parked as 7 — `bodflow parked release 7`"),
            "{t}"
        );
    }

    #[test]
    fn an_output_no_queue_took_says_it_was_dead_lettered() {
        let mut r = run();
        r.outputs[0].confirmed_at = None;
        r.outputs[0].dead_lettered_at = Some(Millis(1_714_564_820_000));
        let t = text(&Track {
            message_id: "m3".into(),
            runs: vec![r],
        });
        assert!(
            t.contains("bodflow:abc:1  no queue took it: dead-lettered 2024-05-01T12:00:20.000Z (+20.0 s) (`bodflow dlq list --code unroutable`)"),
            "{t}"
        );
    }
}
