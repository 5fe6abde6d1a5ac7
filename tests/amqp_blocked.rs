//! A stop while the broker blocks the connection (issue 3, shutdown): RabbitMQ's memory alarm
//! blocks every connection that publishes, and a blocked connection carries no frames at all —
//! no confirms, no acks — until the alarm clears. SIGTERM must still stop `bodflow run` within
//! its stop timeout (20 s, then the close and the store flush), exit 0, and lose nothing: after
//! the alarm, a restarted service finishes the stream and the hub equals an offline replay.
//!
//! The alarm is node-wide, so this is its own test binary (cargo runs test binaries one after
//! another) with a single test. A guard restores the watermark even when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use broker::*;

const N: usize = 3_000;
const SEED: u64 = 11;

/// Raises RabbitMQ's memory alarm (a watermark far below what the node uses) and puts the
/// previous watermark back when dropped.
struct MemoryAlarm {
    previous: String,
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let previous = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .trim()
            .to_string();
        assert!(
            previous.parse::<f64>().is_ok(),
            "watermark {previous:?} is not a fraction: not touching it"
        );
        rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "10MB"]);
        MemoryAlarm { previous }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", &self.previous])
            .output();
    }
}

fn unacked(vhost: &Vhost) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "-p",
            &vhost.name,
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()? == bodflow::amqp::topology::INBOUND_QUEUE)
                .then(|| parts.next()?.parse::<usize>().ok())?
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_blocks_the_connection_stops_in_time_and_loses_nothing() {
    let Scenario {
        vhost,
        dir: _dir,
        store_dir,
        config_path,
        config,
        docs,
        replay,
    } = published_scenario("blocked", SEED, N).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_bodflow"));

    let alarm = MemoryAlarm::raise();
    let mut child = spawn_service(binary, &config_path, &vhost.url());
    let _kill = common::KillOnDrop(child.id());
    wait_until(
        "the service takes deliveries",
        Duration::from_secs(30),
        || unacked(&vhost) > 0,
    );
    // Long enough to commit what it took and be blocked publishing the replies.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "bodflow run exited");
    let stopping = Instant::now();
    let status = terminate(&mut child, STOP_WITHIN);
    let took = stopping.elapsed();
    eprintln!("stopped {took:.1?} after SIGTERM, blocked");
    assert!(status.success(), "bodflow run: {status}");
    assert!(
        took >= Duration::from_secs(15),
        "stopped in {took:?}: the broker did not block it, so this tested nothing"
    );
    drop(alarm);

    let mut child = spawn_service(binary, &config_path, &vhost.url());
    let _kill_again = common::KillOnDrop(child.id());
    let (_conn, ch) = connect(&vhost.url()).await;
    settle_and_stop(&vhost, &ch, &config, &mut child, Duration::from_secs(120)).await;
    let expected = replay.await.unwrap();
    assert_service_store(&store_dir, &docs, &expected);
    let published = drain_applications(&ch, &config).await;
    assert_all_published(&expected, &published);
}
