//! Power loss, not just a killed process: the store lives on a file system that forgets
//! every write not fsynced when the power is cut ([`powerloss_fs`]). After a cut while
//! clients write concurrently, every acknowledged write is there.
//!
//! The kill -9 test (`crash_safety.rs`) cannot catch a missing fsync, because the page
//! cache outlives a killed process. This one does: with the write-ahead log's
//! `self.file.sync_data()` removed from `Wal::write_durable`
//! (control-plane/src/store/wal.rs), it fails with "acknowledged object r0-w…-… lost"
//! (checked when it was written).

mod common;
mod powerloss_fs;

use std::time::Duration;

use common::{writers, Server};
use powerloss_fs::PowerLossFs;
use skiff_control_plane::bench::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    // The server keeps its store in DATA/store: that is where the power fails.
    let mut fs = PowerLossFs::mount(&dir.path().join("disk"), &dir.path().join("data/store"));
    let mut s = Server::start_in(dir);
    for round in 0..2 {
        let c = Client::connect(&s.kubeconfig(), 2).await.unwrap();
        let (writers, acked) = writers::spawn(&c, 8, &format!("r{round}-"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.kill9();
        for w in writers {
            w.await.unwrap();
        }
        fs.power_cut();
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() > 50,
            "round {round}: too few writes were acknowledged ({}) to test anything",
            acked.len()
        );
        s.restart();
        let c = Client::connect(&s.kubeconfig(), 1).await.unwrap();
        writers::assert_present(&c, &acked).await;
    }
}
