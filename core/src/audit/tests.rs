use super::*;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::config::{AuditConfig, AuditFull};
fn cfg(dir: &std::path::Path, rotate: u64) -> (AuditConfig, PathBuf) {
    let c = AuditConfig {
        log_path: "logs/audit.log".into(),
        rotate_bytes: rotate,
        flush_interval: crate::config::ConfigDuration(Duration::from_millis(50)),
        ..AuditConfig::default()
    };
    (c, dir.join("logs/audit.log"))
}

#[test]
fn writes_lines_flushes_within_the_interval_and_closes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (c, path) = cfg(dir.path(), 1 << 30);
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    sink.record(AuditEvent::Other(Box::new(
        GenericEvent::new("ApiCall", "GET /v1/models", "Success").field("status", 200),
    )));
    // No shutdown: a crash now would keep what the flush interval wrote.
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(v["event_type"], "ApiCall");
    assert_eq!(v["action"], "GET /v1/models");
    assert_eq!(v["result"], "Success");
    assert_eq!(v["status"], 200);
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    for _ in 0..100 {
        sink.record(AuditEvent::Other(Box::new(GenericEvent::new(
            "ApiCall", "x", "Success",
        ))));
    }
    sink.close();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 101);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::Other(Box::new(GenericEvent::new(
        "ApiCall",
        format!("call {i}"),
        "Success",
    )))
}

#[test]
fn a_full_queue_drops_and_counts_under_the_drop_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, path) = cfg(dir.path(), 1 << 30);
    c.queue = 4;
    c.db_path = String::new();
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    // A burst far faster than the writer's 10 ms poll: most of it cannot be queued.
    for i in 0..2_000 {
        sink.record(event(i));
    }
    sink.close();
    let dropped = sink.dropped.load(Ordering::Relaxed);
    let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
    assert!(dropped > 0, "nothing dropped");
    assert_eq!(lines + dropped, 2_000, "every event is written or counted");
}

#[tokio::test]
async fn a_full_queue_waits_under_the_block_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, path) = cfg(dir.path(), 1 << 30);
    c.queue = 2;
    c.db_path = String::new();
    c.on_full = AuditFull::Block;
    c.block_timeout = crate::config::ConfigDuration(Duration::from_secs(5));
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    for i in 0..60 {
        sink.record_async(event(i)).await;
    }
    sink.close();
    assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 60);
    // With a short wait, the burst drops what did not fit in time.
    let dir = tempfile::tempdir().unwrap();
    c.block_timeout = crate::config::ConfigDuration(Duration::from_millis(1));
    c.queue = 1;
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    for i in 0..500 {
        sink.record_async(event(i)).await;
    }
    sink.close();
    let dropped = sink.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0);
    let lines = std::fs::read_to_string(dir.path().join("logs/audit.log"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines + dropped, 500);
}

#[test]
fn database_rows_are_committed_within_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cfg(dir.path(), 1 << 30);
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    for i in 0..10 {
        sink.record(event(i));
    }
    std::thread::sleep(Duration::from_millis(300));
    // A second connection sees only committed rows.
    let n: i64 = sink
        .with_db(|conn| {
            Ok(conn.query_row("SELECT count(*) FROM security_events", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(n, 10);
    sink.close();
}

#[test]
fn rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let (c, path) = cfg(dir.path(), 2048);
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    for i in 0..100 {
        sink.record(AuditEvent::Other(Box::new(GenericEvent::new(
            "ApiCall",
            format!("call {i}"),
            "Success",
        ))));
    }
    sink.close();
    let logs: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.len() > 1, "{logs:?}");
    let total: usize = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(total, 100, "nothing lost across rotations");
}

/// A log left world-readable (an earlier version, another umask) is made private on open.
#[cfg(unix)]
#[test]
fn an_existing_log_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (c, path) = cfg(dir.path(), 1 << 30);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sink = AuditSink::start(&c, dir.path()).unwrap().unwrap();
    sink.record(event(0));
    sink.close();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
