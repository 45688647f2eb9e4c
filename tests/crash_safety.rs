//! Kill -9 the server while clients write concurrently: after a restart every
//! acknowledged write is there with its resourceVersion, and a watch resumes from the
//! last resourceVersion a client saw.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{writers, Server};
use skiff_control_plane::bench::client::{Client, Lines};

const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_watches_resume() {
    let mut s = Server::start();
    let c = Client::connect(&s.kubeconfig(), 2).await.unwrap();
    let base = writers::BASE;

    // A watcher that remembers the last resourceVersion it saw.
    let start = c.get(base).await.unwrap();
    let start_rv = writers::rv_of(&start.body);
    let last_seen = Arc::new(Mutex::new(start_rv));
    let seen = last_seen.clone();
    let watch = c
        .stream(&format!("{base}?watch=true&resourceVersion={start_rv}"))
        .await
        .unwrap();
    let watcher = tokio::spawn(async move {
        let mut lines = Lines::new(watch);
        while let Some(ev) = lines.next().await {
            if let Some(rv) = ev["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
            {
                *seen.lock().unwrap() = rv;
            }
        }
    });

    // Writers create and then update objects; every acknowledged write is recorded.
    let (writers, acked) = writers::spawn(&c, WRITERS, "");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for w in writers {
        w.await.unwrap();
    }
    watcher.abort();
    let acked = acked.lock().unwrap().clone();
    let resume_from = *last_seen.lock().unwrap();
    assert!(
        acked.len() > 50,
        "too few writes were acknowledged ({}) to test anything",
        acked.len()
    );

    s.restart();
    let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
    writers::assert_present(&c, &acked).await;

    // The watch resumes from the last resourceVersion the client saw, replaying every
    // later acknowledged write in order.
    let mut want: Vec<u64> = acked
        .values()
        .copied()
        .filter(|rv| *rv > resume_from)
        .collect();
    want.sort();
    let watch = c
        .stream(&format!("{base}?watch=true&resourceVersion={resume_from}"))
        .await
        .unwrap();
    let mut lines = Lines::new(watch);
    let mut last = resume_from;
    let mut missing: std::collections::BTreeSet<u64> = want.iter().copied().collect();
    while !missing.is_empty() {
        let ev = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("resumed watch stalled")
            .expect("watch ended");
        assert_ne!(ev["type"], "ERROR", "resume failed: {ev}");
        let rv: u64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv > last, "events out of order: {rv} after {last}");
        last = rv;
        missing.remove(&rv);
    }
}

/// Regression: a bad checksum in the middle of the newest log segment was taken for a torn
/// tail and the acknowledged writes after it were silently dropped. Now the server refuses
/// to start, saying why; `--repair` truncates the log at the damage and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_start_up_until_repaired() {
    let mut s = Server::start();
    let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
    for i in 0..20 {
        writers::create(&c, &format!("cm-{i}")).await;
    }
    s.kill9();
    // The newest segment holding records: the one this run wrote.
    let wal = s.data_dir().join("store/wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    // Inside the first record's payload (its 16-byte header comes first).
    data[20] ^= 0x55;
    std::fs::write(newest, &data).unwrap();

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir"])
        .arg(s.data_dir())
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started on a damaged log: {err}");
    assert!(
        err.contains("write-ahead log segment")
            && err.contains("checksum mismatch")
            && err.contains("--repair"),
        "{err}"
    );

    s.restart_with(&["--repair"]);
    let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
    let r = c.get(writers::BASE).await.unwrap();
    assert_eq!(r.status, 200, "the repaired server answers");
    // New writes get new revisions after whatever the store held.
    writers::create(&c, "after").await;
    let kept = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("damaged-"));
    assert!(kept, "what followed the damage is kept aside");
}
