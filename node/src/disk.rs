//! The datadir's free space, watched once a second: a metric, and the pipeline's `disk_low` flag,
//! which makes the node refuse new transactions while the blocks already ordered can still be
//! committed. If the disk fills anyway, the failed commit stops the node (`fatal.rs`).

use kestrel_pipeline::status::ChainStatus;
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How often the free space is read.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct DiskMonitor {
    pub datadir: PathBuf,
    /// Below this many free bytes the node refuses new transactions; 0: never.
    pub min_free_bytes: u64,
    pub status: Arc<ChainStatus>,
    pub stop: Arc<AtomicBool>,
}

impl DiskMonitor {
    pub fn run(self) {
        metrics::gauge!("kestrel_storage_disk_free_min_bytes").set(self.min_free_bytes as f64);
        while !self.stop.load(Ordering::Acquire) {
            self.check();
            std::thread::sleep(CHECK_INTERVAL);
        }
    }

    fn check(&self) {
        let free = match rustix::fs::statvfs(&self.datadir) {
            // Blocks available to unprivileged users: what MDBX, running as the node's user,
            // can still write.
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(err) => {
                tracing::warn!(target: "node::disk", datadir = %self.datadir.display(), %err, "cannot read the disk's free space");
                return;
            }
        };
        metrics::gauge!("kestrel_storage_disk_free_bytes").set(free as f64);
        let low = free < self.min_free_bytes;
        if self.status.disk_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(target: "node::disk", free_bytes = free, min_free_bytes = self.min_free_bytes, "disk nearly full: refusing new transactions");
            } else {
                tracing::info!(target: "node::disk", free_bytes = free, "disk space recovered: accepting transactions");
            }
        }
    }
}

pub fn describe_metrics() {
    metrics::describe_gauge!(
        "kestrel_storage_disk_free_bytes",
        metrics::Unit::Bytes,
        "Free space on the datadir's disk, as the node's user can use it"
    );
    metrics::describe_gauge!(
        "kestrel_storage_disk_free_min_bytes",
        metrics::Unit::Bytes,
        "Below this free space the node refuses new transactions (--min-free-disk-mb; 0: off)"
    );
}
