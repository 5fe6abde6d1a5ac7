//! A full disk under the store (issue 3's transient failures): the `bodflow run` binary's
//! store lives on a small tmpfs (mounted by the test: `.ci/run` runs as root), which is filled
//! while generated BODs flow. sled writes nothing more after an I/O error until the store is
//! opened again, so every commit would fail for ever; the service must not dead-letter the
//! stream as `retries_exhausted` — the documents are fine, the disk is not. It stops (exit
//! status 2, naming the store) with those deliveries back in the queue, and once the disk has
//! room again a restart processes them: the result equals an offline replay of all inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bodflow::amqp::topology;
use bodflow::config::Config;
use broker::*;
use lapin::options::BasicGetOptions;

/// Documents before the disk fills, and after.
const BEFORE: usize = 400;
const AFTER: usize = 400;
const SEED: u64 = 77;

/// A tmpfs of `size` mounted at a folder, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (as .ci/run has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Writes `path` until the file system has no room left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
            return;
        }
    }
}

/// Takes `bodflow.dead`'s messages off the queue and fails if one was given up after its
/// commit attempts (`retries_exhausted`) rather than rejected for what it says.
async fn assert_none_given_up(ch: &lapin::Channel, when: &str) {
    let codes = dead_codes(ch).await;
    assert!(
        !codes.iter().any(|c| c == "retries_exhausted"),
        "documents were dead-lettered {when}: {codes:?}"
    );
}

/// The `x-bodflow-code` of every message in `bodflow.dead` (taken off the queue).
async fn dead_codes(ch: &lapin::Channel) -> Vec<String> {
    let mut codes = Vec::new();
    while let Some(m) = ch
        .basic_get(
            topology::DEAD_QUEUE.into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let code = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-bodflow-code")? {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        codes.push(code);
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_service_without_dead_lettering_and_a_restart_resumes() {
    let vhost = Vhost::new("disk-full");
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "48m");
    let store_dir = disk.0.join("store");
    let config_path = write_generated_config(dir.path(), &store_dir);
    let mut config = Config::load(&config_path).unwrap();
    config.amqp.url = vhost.url();
    let docs = generated(SEED, BEFORE + AFTER);
    let expected = tokio::task::spawn_blocking({
        let config = config.clone();
        let docs = generated(SEED, BEFORE + AFTER);
        move || offline(&config, &docs)
    });
    let binary = Path::new(env!("CARGO_BIN_EXE_bodflow"));
    let log = dir.path().join("service.log");

    publish(&config, &docs[..BEFORE]).await;
    let mut child = spawn_logged(binary, &config_path, &vhost.url(), &log);
    let first = common::KillOnDrop(child.id());
    let (_conn, ch) = connect(&vhost.url()).await;
    wait_until_settled(
        &vhost,
        &ch,
        &config,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    assert_none_given_up(&ch, "before the disk filled").await;

    fill(&disk.0.join("filler"));
    publish(&config, &docs[BEFORE..]).await;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "bodflow run kept running on a full disk: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Reaped: its pid is no longer ours to kill.
    std::mem::forget(first);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{logged}");
    assert!(
        logged.contains("the store cannot write"),
        "the exit names the store: {logged}"
    );
    assert_none_given_up(&ch, "for the store's failure").await;
    let waiting = vhost.queue_total(topology::INBOUND_QUEUE).unwrap();
    assert!(
        waiting > 0,
        "nothing was left to process after the disk filled"
    );

    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let mut child = spawn_logged(binary, &config_path, &vhost.url(), &log);
    let _second = common::KillOnDrop(child.id());
    settle_and_stop(&vhost, &ch, &config, &mut child, Duration::from_secs(90)).await;
    assert_none_given_up(&ch, "after the restart").await;
    let expected = expected.await.unwrap();
    assert_service_store(&store_dir, &docs, &expected);
    let published = drain_applications(&ch, &config).await;
    assert_all_published(&expected, &published);
    eprintln!("{waiting} of {AFTER} were waiting in the queue when the service stopped");
}

/// `bodflow run` with its log (warnings and up) appended to `log`.
fn spawn_logged(binary: &Path, config: &Path, url: &str, log: &Path) -> std::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("BODFLOW_AMQP_URL", url)
        .env("BODFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stderr(file)
        .spawn()
        .unwrap()
}
