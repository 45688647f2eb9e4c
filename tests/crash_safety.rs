//! Kill -9 the server while clients write concurrently: after a restart every
//! acknowledged write is there with its resourceVersion, and a watch resumes from the
//! last resourceVersion a client saw.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};
use skiff_control_plane::bench::client::{Client, Lines};

const WRITERS: usize = 8;

fn rv_of(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_watches_resume() {
    let mut s = Server::start();
    let c = Client::connect(&s.kubeconfig(), 2).await.unwrap();
    let base = "/api/v1/namespaces/default/configmaps";

    // A watcher that remembers the last resourceVersion it saw.
    let start = c.get(base).await.unwrap();
    let start_rv = rv_of(&start.body);
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
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (c, acked) = (c.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": "1"}});
                let Ok(r) = c.send(hyper::Method::POST, base, "application/json", body.to_string().into()).await else { return };
                if r.status != 201 {
                    return;
                }
                acked.lock().unwrap().insert(name.clone(), rv_of(&r.body));
                let patch = json!({"data": {"v": "2"}});
                let Ok(r) = c.send(hyper::Method::PATCH, &format!("{base}/{name}"), "application/merge-patch+json", patch.to_string().into()).await else { return };
                if r.status != 200 {
                    return;
                }
                acked.lock().unwrap().insert(name, rv_of(&r.body));
            }
        }));
    }
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
    for (name, rv) in &acked {
        let r = c.get(&format!("{base}/{name}")).await.unwrap();
        assert_eq!(
            r.status, 200,
            "acknowledged object {name} lost after kill -9"
        );
        let got = rv_of(&r.body);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        // The last acknowledged write is there (a later unacknowledged one may be too).
        assert!(
            got >= *rv,
            "{name}: resourceVersion {got} older than the acknowledged {rv}"
        );
        if got == *rv && v["data"]["v"] == "2" {
            continue;
        }
        assert!(v["data"]["v"] == "1" || v["data"]["v"] == "2");
    }

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
