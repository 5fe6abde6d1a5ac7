//! Broker restart test (issue 3): `rabbitmqctl stop_app` / `start_app` while generated BODs
//! flow through the `bodflow run` binary; the service reconnects by itself and the result
//! equals an offline replay. Meanwhile `/readyz` (issue 4) answers 503 "broker not
//! connected" while the broker is stopped and 200 again once it is back, and the
//! `bodflow_amqp_connected` / `bodflow_amqp_reconnects_total` metrics follow.
//!
//! This stops RabbitMQ for the whole node, so it is its own test binary (cargo runs test
//! binaries one after another, never in parallel) with a single test. A guard restarts the
//! broker even when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bodflow::amqp::topology;
use broker::*;

const N: usize = 4_000;
const SEED: u64 = 3;

/// Runs `rabbitmqctl start_app` (and waits for the broker) when dropped, so a failing test
/// never leaves RabbitMQ stopped.
struct BrokerRestarter;

impl BrokerRestarter {
    fn stop() -> BrokerRestarter {
        rabbitmqctl(&["stop_app"]);
        BrokerRestarter
    }
}

impl Drop for BrokerRestarter {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .output();
    }
}

/// Polls until `/readyz` answers `status` (body containing `reason`); panics after 30 s.
fn wait_ready(port: u16, status: u16, reason: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((s, body)) = http_get(port, "/readyz") {
            if s == status && body.contains(reason) {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/readyz never answered {status} {reason:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_resumes_and_equals_offline_replay() {
    let started = Instant::now();
    // The offline replay (CPU) runs while the documents are published (I/O) and the
    // service runs; its result is needed only at the end.
    let Scenario {
        vhost,
        dir: _dir,
        store_dir,
        config_path,
        config,
        docs,
        replay,
    } = published_scenario("restart", SEED, N).await;
    let binary = Path::new(env!("CARGO_BIN_EXE_bodflow"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("BODFLOW_AMQP_URL", vhost.url())
        .env("BODFLOW_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    wait_ready(port, 200, "ready");

    {
        let (conn, ch) = connect(&vhost.url()).await;
        let wait = Instant::now();
        while ready_count(&ch, topology::INBOUND_QUEUE).await.unwrap() as usize > N * 3 / 4 {
            assert!(wait.elapsed() < Duration::from_secs(60), "no progress");
            assert!(child.try_wait().unwrap().is_none(), "bodflow run exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(ch);
        drop(conn);
    }
    let restarter = BrokerRestarter::stop();
    eprintln!("stop_app ({:.1?})", started.elapsed());
    let noticed = wait_ready(port, 503, "broker not connected");
    eprintln!("/readyz 503 after {noticed:.1?}");
    assert_eq!(metric(port, "bodflow_amqp_connected"), Some(0.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        http_get(port, "/readyz").map(|(s, _)| s),
        Some(503),
        "ready while the broker is down"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "bodflow run exited while the broker was down"
    );
    drop(restarter);
    eprintln!("start_app done ({:.1?})", started.elapsed());
    let back = wait_ready(port, 200, "ready");
    eprintln!("/readyz 200 again {back:.1?} after start_app");
    assert_eq!(metric(port, "bodflow_amqp_connected"), Some(1.0));
    assert!(metric(port, "bodflow_amqp_reconnects_total").is_some_and(|r| r >= 1.0));

    let (_conn, ch) = connect(&vhost.url()).await;
    let left = ready_count(&ch, topology::INBOUND_QUEUE).await.unwrap();
    assert!(left > 0, "the restart came too late to be mid-stream");
    settle_and_stop(&vhost, &ch, &config, &mut child, Duration::from_secs(90)).await;
    eprintln!(
        "finished ({:.1?}); {left} were left at the restart",
        started.elapsed()
    );

    let expected = replay.await.unwrap();
    assert_service_store(&store_dir, &docs, &expected);
    let published = drain_applications(&ch, &config).await;
    assert_all_published(&expected, &published);
    assert_all_dead_lettered(&ch, &expected).await;
    eprintln!(
        "{} BODs published for {} expected; total {:.1?}",
        published.len(),
        expected.bod_ids.len(),
        started.elapsed()
    );
}
