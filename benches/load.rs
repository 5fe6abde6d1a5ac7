//! Load benchmark of `bodflow run` against the real RabbitMQ (issue 3). See
//! `benches/README.md` for the command and the output.
//!
//! `cargo bench --bench load` runs the full benchmark (release binary, N = 50,000, backlog
//! 200,000). Under `cargo test --all-targets` (no `--bench` argument) it is a smoke run with
//! tiny sizes against the debug binary, so the code keeps working; its figures mean nothing.
//!
//! One run, one dedicated vhost (`bodflow-load-<pid>-<µs>`, deleted at the end):
//! - (a) fill `bodflow.inbound` with N generated BODs (`Generator::new(SEED, REALISTIC)`),
//! - (b) bare lapin loop: consume (prefetch 256) → publish a 600-byte reply with confirm →
//!   ack, over those N,
//! - (c) fill again with the same documents asking `ConfirmationCode` `Always`, start
//!   `bodflow run` (durable store in a temp dir) on the generated configuration without
//!   `Sync` fan-out, so each delivery's one BOD out is its ConfirmBOD (the broker I/O of
//!   (b)), and time it until the inbound queue is empty and no more BODs arrive on the
//!   application queues,
//! - (e) on that same service, publish at half the rate of (c) and measure publish → reply
//!   (the ConfirmBOD correlated to it) latency,
//! - (c') fill again with the documents of (a), start a fresh service on the generated
//!   configuration as it is (each change sent as `Sync` to the other two applications) and
//!   time it the same way,
//! - (d) a fresh service on a fresh store with a BACKLOG-message backlog: peak RSS (VmHWM).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/broker.rs"]
mod broker;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bodflow::amqp::{self, topology, InboundMessage, Sender};
use bodflow::config::{Config, DeleteMode, DeleteModeOrBool, Direction, Flows};
use bodflow::generate::{Generator, Kind, Mix};
use bodflow::pipeline::payload_digest;
use broker::*;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

const SEED: u64 = 42;
const REPLY_QUEUE: &str = "bench.replies";

struct Sizes {
    n: usize,
    backlog: usize,
    latency_secs: f64,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            n: 50_000,
            backlog: 200_000,
            latency_secs: 10.0,
        }
    } else {
        Sizes {
            n: 200,
            backlog: 400,
            latency_secs: 1.0,
        }
    };
    // BODFLOW_BENCH_BACKLOG overrides the backlog of (d) (e.g. a smaller one to watch the
    // RSS slope quickly).
    let sizes = Sizes {
        backlog: std::env::var("BODFLOW_BENCH_BACKLOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(sizes.backlog),
        ..sizes
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(&sizes, full));
}

async fn bench(sizes: &Sizes, full: bool) {
    // BODFLOW_BENCH_BINARY runs another build (e.g. of the previous commit) through the same
    // steps, for a before/after under the same machine load.
    let other = std::env::var_os("BODFLOW_BENCH_BINARY").map(std::path::PathBuf::from);
    let binary = other
        .as_deref()
        .unwrap_or(Path::new(env!("CARGO_BIN_EXE_bodflow")));
    let vhost = Vhost::new("load");
    if let Some(mode) = queue_mode() {
        rabbitmqctl(&[
            "set_policy",
            "-p",
            &vhost.name,
            "mode",
            ".*",
            &format!(r#"{{"queue-mode":"{mode}"}}"#),
            "--apply-to",
            "queues",
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let config_path = write_bench_config(dir.path(), &store_dir, |_| {});
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    let (_conn, ch) = connect(&vhost.url()).await;
    println!(
        "bodflow load benchmark ({}): vhost {}, binary {}",
        if full { "full" } else { "smoke" },
        vhost.name,
        binary.display()
    );

    // BODFLOW_BENCH_ONLY=d runs only (d): the cheap way to measure peak RSS repeatedly.
    if std::env::var("BODFLOW_BENCH_ONLY").is_ok_and(|v| v == "d") {
        amqp::declare_topology(&config).await.unwrap();
        let backlog = backlog_rss(binary, &vhost, &ch, &config, sizes.backlog).await;
        println!(
            "| (d) peak RSS, {} backlog (VmHWM; target ≤ 64 MB) | {:.1} MB ({:.0} msg/s) |",
            sizes.backlog,
            mb(backlog.peak_kb),
            rate(sizes.backlog, backlog.elapsed)
        );
        return;
    }

    let mut generator = Generator::new(SEED, Mix::REALISTIC);
    let docs: Vec<Doc> = (&mut generator).take(sizes.n).map(doc).collect();
    let mean = docs.iter().map(|d| d.bytes.len()).sum::<usize>() / docs.len().max(1);

    // (a) + (b)
    let t = Instant::now();
    fill(&config, &docs).await;
    let fill_rate = rate(sizes.n, t.elapsed());
    ch.queue_declare(
        REPLY_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let broker = broker_pid();
    let cpu_before = (cpu_ticks(broker), cpu_ticks(Some(std::process::id())));
    let bare = bare_loop(&vhost.url(), sizes.n).await;
    let bare_rate = rate(sizes.n, bare);
    let bare_cpu = (
        ticks_between(cpu_before.0, cpu_ticks(broker)),
        ticks_between(cpu_before.1, cpu_ticks(Some(std::process::id()))),
    );
    purge(&ch, REPLY_QUEUE).await;

    // (a) again + (c): the same broker I/O as (b), one reply a message
    let asking: Vec<Doc> = docs.iter().map(asking_always).collect();
    purge(&ch, topology::DEAD_QUEUE).await;
    fill(&config, &asking).await;
    let reply_only_dir = tempfile::tempdir().unwrap();
    let reply_only = write_bench_config(
        reply_only_dir.path(),
        &reply_only_dir.path().join("store"),
        no_sync,
    );
    let reply_config = Config::load(&reply_only).unwrap();
    let expected = Expected::of(&reply_config, &asking);
    let prefetch = reply_config.amqp.prefetch;
    let mut service = spawn_service(binary, &reply_only, &vhost.url());
    let processed = time_service(&ch, &vhost, &config, sizes.n, (broker, service.id())).await;
    let bodflow_rate = rate(sizes.n, processed.elapsed);
    let reply_bytes = mean_ready_size(&vhost, &config);
    // One ConfirmBOD a message id (a re-delivery gets none), and a copy in bodflow.dead for
    // each invalid document: exactly, or the ratio would compare different work.
    assert_eq!(
        (processed.published, processed.dead_lettered),
        (expected.replies, expected.dead_lettered),
        "(c): (ConfirmBODs, dead letters) for {} documents",
        sizes.n
    );
    // BODFLOW_BENCH_ONLY=c stops here: (a), (b) and (c), the ratio, in about a minute.
    if std::env::var("BODFLOW_BENCH_ONLY").is_ok_and(|v| v == "c") {
        signal(&service, "-TERM");
        assert!(service.wait().unwrap().success(), "bodflow run failed");
        println!();
        println!("| measure | value |");
        println!("| --- | --- |");
        println!("| (b) bare lapin loop | {bare_rate:.0} msg/s |");
        println!("| (c) bodflow run, prefetch {prefetch}, one ConfirmBOD a message id | {bodflow_rate:.0} msg/s |");
        println!(
            "| ratio (target ≥ 0.90) | {:.2} |",
            bodflow_rate / bare_rate
        );
        print_cpu(sizes.n, bare_cpu, &processed, None);
        if std::env::var_os("BODFLOW_BENCH_THREADS").is_some() {
            print_threads(sizes.n, &processed.threads);
        }
        return;
    }

    // (e) on the same service, at half the rate of (c)
    for app in &config.applications {
        purge(&ch, &topology::application_queue(&app.slug())).await;
    }
    let target = (bodflow_rate / 2.0).max(10.0);
    let count = (target * sizes.latency_secs) as usize;
    // New, updated and invalid documents, each answered by a ConfirmBOD. Not the generator's
    // re-sent bytes nor its stale versions: under a message id of their own (`lat-<i>`) one
    // may carry the variationID the record has, a duplicate that gets no ConfirmBOD.
    let latency_docs: Vec<Doc> = (&mut generator)
        .filter(|g| matches!(g.kind, Kind::New | Kind::Update | Kind::Invalid))
        .take(count)
        .map(|g| asking_always(&doc(g)))
        .collect();
    let latency = latency(&vhost.url(), &config, &latency_docs, target).await;
    signal(&service, "-TERM");
    assert!(service.wait().unwrap().success(), "bodflow run failed");
    for app in &config.applications {
        purge(&ch, &topology::application_queue(&app.slug())).await;
    }

    // (a) again + (c'): the generated configuration, every change sent to the other two
    purge(&ch, topology::DEAD_QUEUE).await;
    fill(&config, &docs).await;
    let mut service = spawn_service(binary, &config_path, &vhost.url());
    let fan_out = time_service(&ch, &vhost, &config, sizes.n, (broker, service.id())).await;
    assert_eq!(
        fan_out.dead_lettered, expected.dead_lettered,
        "(c'): dead letters for {} documents",
        sizes.n
    );
    let fan_out_rate = rate(sizes.n, fan_out.elapsed);
    let rss_c = rss(service.id());
    signal(&service, "-TERM");
    assert!(service.wait().unwrap().success(), "bodflow run failed");

    // (d) fresh store, backlog, peak RSS
    let backlog = backlog_rss(binary, &vhost, &ch, &config, sizes.backlog).await;

    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| N (generated SyncCustomerPartyMaster, mean size) | {} ({mean} B) |",
        sizes.n
    );
    println!("| (a) fill rate, publisher confirms | {fill_rate:.0} msg/s |");
    println!("| (b) bare lapin loop (prefetch 256, 600 B reply + confirm, ack) | {bare_rate:.0} msg/s ({:.2} s) |", bare.as_secs_f64());
    println!(
        "| (c) bodflow run, durable store, prefetch {prefetch}, one ConfirmBOD a message id (the I/O of (b)) | {bodflow_rate:.0} msg/s ({:.2} s, {} BODs out, mean {reply_bytes} B; {} dead letters) |",
        processed.elapsed.as_secs_f64(),
        processed.published,
        processed.dead_lettered
    );
    println!(
        "| ratio bodflow / bare loop (target ≥ 0.90) | {:.2} |",
        bodflow_rate / bare_rate
    );
    println!(
        "| (c') bodflow run, durable store, Sync fan-out to the other applications | {fan_out_rate:.0} msg/s ({:.2} s, {} BODs out; ratio {:.2}) |",
        fan_out.elapsed.as_secs_f64(),
        fan_out.published,
        fan_out_rate / bare_rate
    );
    print_cpu(sizes.n, bare_cpu, &processed, Some(&fan_out));
    println!("| peak RSS after (c') (VmHWM) | {:.1} MB |", mb(rss_c.0));
    println!(
        "| (d) peak RSS, {} backlog (VmHWM; target ≤ 64 MB) | {:.1} MB ({:.0} msg/s) |",
        sizes.backlog,
        mb(backlog.peak_kb),
        rate(sizes.backlog, backlog.elapsed)
    );
    println!(
        "| (e) latency at {:.0} msg/s offered ({:.0} achieved), {} replies of {} sent | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        target, latency.achieved, latency.samples, latency.sent, latency.p50, latency.p99, latency.max
    );
}

/// The CPU a message of each side in (b), (c) and (c'), and bodflow's context switches a
/// message in (c) and (c').
fn print_cpu(
    n: usize,
    bare: (Option<u64>, Option<u64>),
    c: &Processed,
    fan_out: Option<&Processed>,
) {
    let per_msg = |ticks: Option<u64>| match ticks {
        Some(t) => format!("{:.0} µs", t as f64 * TICK_US / n as f64),
        None => "?".to_string(),
    };
    let mut rows = vec![
        ("(b): broker, bare loop", bare),
        ("(c): broker, bodflow", c.cpu),
    ];
    if let Some(f) = fan_out {
        rows.push(("(c'): broker, bodflow", f.cpu));
    }
    for (what, ticks) in rows {
        println!(
            "| CPU a message in {what} | {}, {} |",
            per_msg(ticks.0),
            per_msg(ticks.1)
        );
    }
    for (what, p) in [("(c)", Some(c)), ("(c')", fan_out)] {
        if let Some(p) = p {
            let switches: u64 = thread_deltas(&p.threads)
                .iter()
                .map(|(_, _, vol, invol)| vol + invol)
                .sum();
            println!(
                "| bodflow's context switches a message in {what} | {:.1} |",
                switches as f64 / n as f64
            );
        }
    }
}

struct Backlog {
    /// Peak RSS in kB: VmHWM at the end, or the highest VmRSS sampled if higher.
    peak_kb: u64,
    elapsed: Duration,
}

/// BODFLOW_BENCH_QUEUE_MODE (`lazy`, `default`): the classic-queue mode every queue of the
/// run's vhost gets by policy, the bare loop's and bodflow's alike (RabbitMQ before 3.12).
fn queue_mode() -> Option<String> {
    std::env::var("BODFLOW_BENCH_QUEUE_MODE")
        .ok()
        .filter(|m| !m.is_empty())
}

/// (d): a fresh service on a fresh store with `backlog` documents waiting; runs until the
/// inbound queue is empty. With BODFLOW_BENCH_TRACE set, prints VmRSS and the inbound queue
/// every 2 s (to see whether the RSS grows with the documents processed).
async fn backlog_rss(
    binary: &Path,
    vhost: &Vhost,
    ch: &Channel,
    config: &Config,
    backlog: usize,
) -> Backlog {
    let trace = std::env::var_os("BODFLOW_BENCH_TRACE").is_some();
    // One policy applies to a queue (the highest priority): this one keeps the queue mode of
    // BODFLOW_BENCH_QUEUE_MODE.
    let mode = queue_mode().map_or(String::new(), |m| format!(r#","queue-mode":"{m}""#));
    rabbitmqctl(&[
        "set_policy",
        "-p",
        &vhost.name,
        "sink",
        r"^bodflow\.to\.",
        &format!(r#"{{"max-length":10000{mode}}}"#),
        "--priority",
        "1",
        "--apply-to",
        "queues",
    ]);
    for app in &config.applications {
        purge(ch, &topology::application_queue(&app.slug())).await;
    }
    let backlog_dir = tempfile::tempdir().unwrap();
    let backlog_config =
        write_bench_config(backlog_dir.path(), &backlog_dir.path().join("s"), |_| {});
    let backlog_docs = Generator::new(SEED + 1, Mix::REALISTIC)
        .take(backlog)
        .map(doc);
    fill_iter(config, backlog_docs).await;
    let t = Instant::now();
    let mut service = spawn_service(binary, &backlog_config, &vhost.url());
    let mut peak_during = 0;
    let mut traced = Instant::now();
    loop {
        let now = rss(service.id()).1;
        peak_during = peak_during.max(now);
        let ready = ready_count(ch, topology::INBOUND_QUEUE).await;
        if trace && traced.elapsed() >= Duration::from_secs(2) {
            traced = Instant::now();
            println!(
                "trace {:6.1} s  VmRSS {:6.1} MB  processed {:>7}",
                t.elapsed().as_secs_f64(),
                mb(now),
                backlog.saturating_sub(ready.unwrap_or(0) as usize)
            );
        }
        if ready == Some(0) && vhost.queue_total(topology::INBOUND_QUEUE) == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (hwm, _) = rss(service.id());
    signal(&service, "-TERM");
    assert!(service.wait().unwrap().success(), "bodflow run failed");
    Backlog {
        peak_kb: hwm.max(peak_during),
        elapsed,
    }
}

/// The generated configuration (`write_generated_config`) changed by `edit`, with
/// `amqp.prefetch` set to `BODFLOW_BENCH_PREFETCH` and `hub.store_cache_mb` to
/// `BODFLOW_BENCH_STORE_CACHE_MB` when those are given (to compare settings; default:
/// bodflow's own).
fn write_bench_config(
    dir: &Path,
    store: &Path,
    edit: impl FnOnce(&mut Config),
) -> std::path::PathBuf {
    let path = write_generated_config(dir, store);
    let mut config = Config::load(&path).unwrap();
    if let Some(prefetch) = std::env::var("BODFLOW_BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.amqp.prefetch = prefetch;
    }
    if let Some(mb) = std::env::var("BODFLOW_BENCH_STORE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.hub.store_cache_mb = Some(mb);
    }
    edit(&mut config);
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

/// `d` with its sender asking for a ConfirmBOD on success too (`Always` instead of the
/// generator's `OnError`), under the message id of the new bytes.
fn asking_always(d: &Doc) -> Doc {
    let text = std::str::from_utf8(&d.bytes).expect("generated documents are UTF-8");
    assert!(
        text.contains("<ConfirmationCode>OnError</ConfirmationCode>"),
        "the generator no longer writes ConfirmationCode OnError: (c) would send no replies"
    );
    let bytes = text
        .replacen(
            "<ConfirmationCode>OnError</ConfirmationCode>",
            "<ConfirmationCode>Always</ConfirmationCode>",
            1,
        )
        .into_bytes();
    Doc {
        message_id: payload_digest(&bytes),
        bytes,
    }
}

/// No application receives `CustomerPartyMaster` changes: a delivery's only BOD out is the
/// ConfirmBOD its sender asks for, the broker I/O of (b).
fn no_sync(config: &mut Config) {
    let outbound = Direction {
        create: false,
        update: false,
        delete: DeleteModeOrBool(DeleteMode::Off),
        fields: None,
    };
    for app in &mut config.applications {
        app.flows.insert(
            "CustomerPartyMaster".into(),
            Flows {
                outbound: outbound.clone(),
                ..Flows::default()
            },
        );
    }
}

/// Mean body size of the messages ready on the application queues (one `rabbitmqctl` call).
fn mean_ready_size(vhost: &Vhost, config: &Config) -> u64 {
    let queues: Vec<String> = config
        .applications
        .iter()
        .map(|a| topology::application_queue(&a.slug()))
        .collect();
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "-p",
        &vhost.name,
        "name",
        "messages_ready",
        "message_bytes_ready",
    ]);
    let (count, bytes) = out
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            let count: u64 = parts.next()?.parse().ok()?;
            let bytes: u64 = parts.next()?.parse().ok()?;
            queues.iter().any(|q| q == name).then_some((count, bytes))
        })
        .fold((0, 0), |(c, b), (count, bytes)| (c + count, b + bytes));
    bytes / count.max(1)
}

fn doc(g: bodflow::generate::Generated) -> Doc {
    Doc {
        message_id: payload_digest(&g.bytes),
        bytes: g.bytes,
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Microseconds in a clock tick of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICK_US: f64 = 10_000.0;

/// CPU time (user + system, all threads) a process has used, in clock ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    cpu_ticks_of(Path::new(&format!("/proc/{}/stat", pid?)))
}

/// utime + stime of a `/proc/.../stat` file.
fn cpu_ticks_of(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // the 3rd field, utime the 14th, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Per thread of a process: (name, CPU ticks, voluntary, involuntary context switches).
fn thread_stats(pid: u32) -> ThreadStats {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Some(ticks) = cpu_ticks_of(&task.path().join("stat")) else {
            continue;
        };
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or(String::new(), |v| v.trim().to_string())
        };
        let switches = |name: &str| field(name).parse().unwrap_or(0);
        threads.insert(
            tid,
            (
                field("Name:"),
                ticks,
                switches("voluntary_ctxt_switches:"),
                switches("nonvoluntary_ctxt_switches:"),
            ),
        );
    }
    threads
}

/// Per thread alive at the end of a window: (name, CPU ticks, voluntary, involuntary context
/// switches) over the window (a thread started inside it counts from zero; one that ended
/// inside it takes its counts with it — the runtime's blocking threads live 10 s idle,
/// longer than any gap here).
fn thread_deltas((before, after): &(ThreadStats, ThreadStats)) -> Vec<(&str, u64, u64, u64)> {
    after
        .iter()
        .map(|(tid, (name, ticks, vol, invol))| {
            let (t0, v0, i0) = before.get(tid).map_or((0, 0, 0), |b| (b.1, b.2, b.3));
            (
                name.as_str(),
                ticks.saturating_sub(t0),
                vol.saturating_sub(v0),
                invol.saturating_sub(i0),
            )
        })
        .collect()
}

/// BODFLOW_BENCH_THREADS: bodflow's threads over (c), by name: CPU and context switches.
fn print_threads(n: usize, threads: &(ThreadStats, ThreadStats)) {
    let mut by_name: std::collections::BTreeMap<&str, (usize, u64, u64, u64)> =
        std::collections::BTreeMap::new();
    for (name, ticks, vol, invol) in thread_deltas(threads) {
        let row = by_name.entry(name).or_default();
        row.0 += 1;
        row.1 += ticks;
        row.2 += vol;
        row.3 += invol;
    }
    // The lanes' work a message (decoding and checking the same documents) does not change
    // with a change outside `prepare`, but their CPU moves with the machine's speed as all
    // the rest does: the quotient compares two builds across that noise.
    let lanes: u64 = by_name
        .iter()
        .filter(|(name, _)| name.starts_with("bodflow-lane-"))
        .map(|(_, row)| row.1)
        .sum();
    let all: u64 = by_name.values().map(|row| row.1).sum();
    println!();
    if lanes > 0 {
        println!(
            "bodflow's CPU ÷ its prepare lanes' CPU in (c): {:.2}",
            all as f64 / lanes as f64
        );
    }
    println!("| threads (c) | count | CPU a message | switches a message (vol + invol) |");
    println!("| --- | --- | --- | --- |");
    for (name, (count, ticks, vol, invol)) in by_name {
        println!(
            "| {name} | {count} | {:.0} µs | {:.2} + {:.2} |",
            ticks as f64 * TICK_US / n as f64,
            vol as f64 / n as f64,
            invol as f64 / n as f64
        );
    }
}

fn ticks_between(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// The RabbitMQ server's Erlang VM, to account the broker's share of the two cores.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// (VmHWM, VmRSS) of a process in kB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn purge(ch: &Channel, queue: &str) {
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
}

async fn fill(config: &Config, docs: &[Doc]) {
    fill_iter(
        config,
        docs.iter().map(|d| Doc {
            bytes: d.bytes.clone(),
            message_id: d.message_id.clone(),
        }),
    )
    .await;
}

/// Publishes to `bodflow.in` with confirms, up to 1024 in flight.
async fn fill_iter(config: &Config, docs: impl Iterator<Item = Doc>) {
    let sender = Sender::connect(config).await.unwrap();
    let mut pending = VecDeque::new();
    for d in docs {
        let name = amqp::document_name(&d.bytes);
        pending.push_back(
            sender
                .send(&InboundMessage {
                    bytes: &d.bytes,
                    message_id: &d.message_id,
                    document_name: name.as_deref(),
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
        if pending.len() >= 1024 {
            pending.pop_front().unwrap().confirmed().await.unwrap();
        }
    }
    for p in pending {
        p.confirmed().await.unwrap();
    }
    sender.close().await.unwrap();
}

/// (b): consume → publish a 600-byte reply with confirm → ack, no processing. Deliveries
/// are pipelined: the consumer publishes, a second task awaits each confirm in order and
/// then acks that delivery, so up to the prefetch are in flight (as in the service).
async fn bare_loop(url: &str, n: usize) -> Duration {
    let (conn, consume) = connect(url).await;
    consume
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let reply = vec![b'r'; 600];
    let start = Instant::now();
    let mut deliveries = consume
        .basic_consume(
            topology::INBOUND_QUEUE.into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while let Some((confirm, acker)) = rx.recv().await {
            let confirm: lapin::PublisherConfirm = confirm;
            let acker: lapin::Acker = acker;
            assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
            assert!(acker.ack(BasicAckOptions::default()).await.unwrap());
            acked += 1;
            if acked == n {
                break;
            }
        }
    });
    for _ in 0..n {
        let d = deliveries.next().await.unwrap().unwrap();
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/xml".into());
        if let Some(id) = d.properties.message_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let confirm = publish
            .basic_publish(
                "".into(),
                REPLY_QUEUE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &reply,
                properties,
            )
            .await
            .unwrap();
        tx.send((confirm, d.acker)).unwrap();
    }
    acker.await.unwrap();
    let elapsed = start.elapsed();
    let _ = conn.close(200, "done".into()).await;
    elapsed
}

struct Processed {
    elapsed: Duration,
    /// BODs on the `bodflow.to.*` queues at the end.
    published: u64,
    /// Copies on `bodflow.dead` at the end.
    dead_lettered: u64,
    /// CPU clock ticks of (the broker, bodflow) over `elapsed`.
    cpu: (Option<u64>, Option<u64>),
    /// [`thread_stats`] of bodflow at the start and the end of `elapsed`.
    threads: (ThreadStats, ThreadStats),
}

type ThreadStats = HashMap<u64, (String, u64, u64, u64)>;

/// The BODs a service run on [`asking_always`] documents must publish: what an offline
/// replay of the same documents through the same pipeline writes to its outbox (one
/// ConfirmBOD a document, none for a re-delivered message id nor for a document whose
/// variationID equals the one applied, which is a duplicate too), and one copy in
/// `bodflow.dead` for each document it rejects. Not timed: it runs between the fill and the
/// service's start.
struct Expected {
    replies: u64,
    dead_lettered: u64,
}

impl Expected {
    fn of(config: &Config, docs: &[Doc]) -> Expected {
        let replay = offline(config, docs);
        assert!(
            !replay.rejected.is_empty() || docs.len() < 100,
            "no invalid documents"
        );
        Expected {
            replies: replay.bod_ids.len() as u64,
            dead_lettered: replay.rejected.len() as u64,
        }
    }
}

/// (c): from the first consumed message until the inbound queue is empty and the
/// application queues and `bodflow.dead` stopped growing (the last change is the end; 1.5 s
/// of quiet decides). Then nothing may be left unacked on the inbound queue.
async fn time_service(
    ch: &Channel,
    vhost: &Vhost,
    config: &Config,
    n: usize,
    (broker, service): (Option<u32>, u32),
) -> Processed {
    let ticks = || {
        (
            cpu_ticks(broker),
            cpu_ticks(Some(service)),
            thread_stats(service),
        )
    };
    let wait = Instant::now();
    let (start, ticks_at_start) = loop {
        let before = ticks();
        if ready_count(ch, topology::INBOUND_QUEUE)
            .await
            .unwrap_or(u32::MAX)
            < n as u32
        {
            break (Instant::now(), before);
        }
        assert!(
            wait.elapsed() < Duration::from_secs(60),
            "service never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut last = (0, 0);
    let mut last_change = start;
    let mut ticks_at_change = ticks_at_start.clone();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let inbound = ready_count(ch, topology::INBOUND_QUEUE).await.unwrap();
        let out = applications_ready(ch, config).await.unwrap();
        let dead = u64::from(ready_count(ch, topology::DEAD_QUEUE).await.unwrap());
        if (out, dead) != last {
            last = (out, dead);
            last_change = Instant::now();
            ticks_at_change = ticks();
        }
        if inbound == 0 && last_change.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "service too slow"
        );
    }
    assert_eq!(
        vhost.queue_total(topology::INBOUND_QUEUE),
        Some(0),
        "deliveries left on bodflow.inbound (ready or unacked) after the service went quiet"
    );
    Processed {
        elapsed: last_change - start,
        published: last.0,
        dead_lettered: last.1,
        // Over the same window as `elapsed`: not the start-up wait nor the quiet tail.
        cpu: (
            ticks_between(ticks_at_start.0, ticks_at_change.0),
            ticks_between(ticks_at_start.1, ticks_at_change.1),
        ),
        threads: (ticks_at_start.2, ticks_at_change.2),
    }
}

struct Latency {
    sent: usize,
    samples: usize,
    achieved: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// (e): publishes `docs` at `rate` msg/s (message id `lat-<i>`), consumes every
/// `bodflow.to.*` queue and takes, per inbound message, its first correlated BOD.
async fn latency(url: &str, config: &Config, docs: &[Doc], rate: f64) -> Latency {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let first: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    let (conn, _) = connect(url).await;
    let mut consumers = Vec::new();
    for app in &config.applications {
        let ch = conn.create_channel().await.unwrap();
        let queue = topology::application_queue(&app.slug());
        let mut stream = ch
            .basic_consume(
                queue.as_str().into(),
                format!("lat-{queue}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (sent, first) = (sent.clone(), first.clone());
        consumers.push(tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = stream.next().await {
                let now = Instant::now();
                let Some(id) = d.properties.correlation_id() else {
                    continue;
                };
                let at = sent.lock().unwrap().get(id.as_str()).copied();
                if let Some(at) = at {
                    first
                        .lock()
                        .unwrap()
                        .entry(id.to_string())
                        .or_insert(now - at);
                }
            }
        }));
    }
    let sender = Sender::connect(config).await.unwrap();
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for (i, d) in docs.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let id = format!("lat-{i}");
        let name = amqp::document_name(&d.bytes);
        sent.lock().unwrap().insert(id.clone(), Instant::now());
        pending.push_back(
            sender
                .send(&InboundMessage {
                    bytes: &d.bytes,
                    message_id: &id,
                    document_name: name.as_deref(),
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
        if pending.len() >= 1024 {
            pending.pop_front().unwrap().confirmed().await.unwrap();
        }
    }
    let achieved = docs.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    for p in pending {
        p.confirmed().await.unwrap();
    }
    sender.close().await.unwrap();
    // Every document asked for a ConfirmBOD: wait for all of them, or fail. A missing reply
    // is never left out of the percentiles.
    let waited = Instant::now();
    while first.lock().unwrap().len() < docs.len() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "(e): {} of {} documents got no reply within 60 s of the last send",
            docs.len() - first.lock().unwrap().len(),
            docs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = conn.close(200, "done".into()).await;
    for c in consumers {
        c.abort();
    }
    let mut all: Vec<f64> = first
        .lock()
        .unwrap()
        .values()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(all.len(), docs.len(), "(e): one reply a document");
    let pick = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    Latency {
        sent: docs.len(),
        samples: all.len(),
        achieved,
        p50: pick(0.50),
        p99: pick(0.99),
        max: pick(1.0),
    }
}
