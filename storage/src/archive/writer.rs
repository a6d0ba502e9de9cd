//! The archive's writer stage: a thread that takes encoded records over a bounded channel,
//! writes whatever has queued up as one group, makes the group durable with one fsync per file
//! it touched, and then publishes the highest block the group completed. A slow disk therefore
//! makes groups larger, not the queue longer: group commit.

use super::{
    ArchiveError,
    io::{Disk, IoMode, WriteOp},
    metrics,
};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::{
    fs::File,
    os::unix::io::AsRawFd,
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Writes queued for the writer at most; `append` blocks beyond it (backpressure on the
/// finalizing thread rather than unbounded memory).
pub const QUEUE_WRITES_MAX: usize = 1024;
/// Records in one group (one fsync) at most.
pub const GROUP_WRITES_MAX: usize = 512;
/// Bytes in one group at most: a group of 5,000-transaction blocks is ~100 of them.
pub const GROUP_BYTES_MAX: usize = 64 << 20;

/// One write for the stage: bytes at an offset of a segment file.
pub struct Write {
    pub file: Arc<File>,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The file is new: its directory entry is made durable with the group.
    pub created: bool,
    /// The last write of block `Some(n)`: once durable, the archive holds block n.
    pub completes: Option<u64>,
}

#[derive(Default)]
struct State {
    /// Highest block durable, if any.
    durable: Option<u64>,
    /// Why the stage stopped, if it failed (every waiter gets it).
    failed: Option<String>,
    /// Groups written and synced since the stage started.
    groups: u64,
}

/// Durability as the stage reports it, for callers to wait on.
#[derive(Default)]
pub struct Durable {
    state: Mutex<State>,
    changed: Condvar,
}

impl Durable {
    pub fn starting_at(durable: Option<u64>) -> Self {
        Self {
            state: Mutex::new(State {
                durable,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    pub fn get(&self) -> Option<u64> {
        self.state.lock().durable
    }

    pub fn groups(&self) -> u64 {
        self.state.lock().groups
    }

    /// Blocks until block `number` is durable, or the stage failed.
    pub fn wait(&self, number: u64) -> Result<(), ArchiveError> {
        let mut state = self.state.lock();
        loop {
            if let Some(reason) = &state.failed {
                return Err(ArchiveError::WriterFailed {
                    reason: reason.clone(),
                });
            }
            if state.durable.is_some_and(|d| d >= number) {
                return Ok(());
            }
            self.changed.wait(&mut state);
        }
    }

    /// The archive was cut back to `last` (nothing queued: the caller synced first).
    pub fn truncated(&self, last: Option<u64>) {
        self.state.lock().durable = last;
    }

    /// A group is durable; it completed block `done`, if any.
    fn publish(&self, done: Option<u64>) {
        let mut state = self.state.lock();
        state.groups += 1;
        if done.is_some() {
            state.durable = done;
        }
        drop(state);
        self.changed.notify_all();
    }

    fn fail(&self, reason: String) {
        let mut state = self.state.lock();
        if state.failed.is_none() {
            state.failed = Some(reason);
        }
        drop(state);
        self.changed.notify_all();
    }
}

pub struct Writer {
    tx: Option<Sender<Write>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(
        mode: IoMode,
        dir: PathBuf,
        durable: Arc<Durable>,
        label: &'static str,
    ) -> Result<Self, ArchiveError> {
        let dir_file = File::open(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_WRITES_MAX);
        // The ring is made on the stage's thread (its only user); whether that worked comes back.
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let dir_path = dir.clone();
        let thread = std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || {
                let disk = match Disk::for_this_thread(mode) {
                    Ok(disk) => {
                        let _ = ready_tx.send(Ok(()));
                        disk
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let stage = Stage {
                    disk,
                    dir: dir_file,
                    dir_path,
                    durable,
                    label,
                };
                stage.run(rx);
            })
            .map_err(|source| ArchiveError::Io {
                path: PathBuf::from("archive-writer thread"),
                source,
            })?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the archive writer exited at start")));
        if let Err(source) = ready {
            let _ = thread.join();
            return Err(ArchiveError::Io { path: dir, source });
        }
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a write; blocks while the queue is full. Err once the stage has stopped.
    pub fn send(&self, write: Write) -> Result<(), ()> {
        self.tx
            .as_ref()
            .expect("sender lives until drop")
            .send(write)
            .map_err(drop)
    }
}

impl Drop for Writer {
    /// Closing the channel lets the stage write and sync what is queued, then exit.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Stage {
    disk: Disk,
    dir: File,
    dir_path: PathBuf,
    durable: Arc<Durable>,
    label: &'static str,
}

impl Stage {
    fn run(mut self, rx: Receiver<Write>) {
        // The stage's failure must reach the waiters even if it panics.
        struct FailOnUnwind(Arc<Durable>);
        impl Drop for FailOnUnwind {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.fail("the archive writer panicked".into());
                }
            }
        }
        let _guard = FailOnUnwind(self.durable.clone());
        let mut group: Vec<Write> = Vec::with_capacity(GROUP_WRITES_MAX);
        while let Ok(first) = rx.recv() {
            let mut bytes = first.bytes.len();
            group.push(first);
            while group.len() < GROUP_WRITES_MAX && bytes < GROUP_BYTES_MAX {
                match rx.try_recv() {
                    Ok(write) => {
                        bytes += write.bytes.len();
                        group.push(write);
                    }
                    Err(_) => break,
                }
            }
            if let Err(err) = self.write_group(&group, bytes) {
                tracing::error!(target: "storage::archive", path = %self.dir_path.display(), %err, "archive write failed; the archive stops taking blocks");
                self.durable
                    .fail(format!("{}: {err}", self.dir_path.display()));
                return;
            }
            group.clear();
        }
    }

    fn write_group(&mut self, group: &[Write], bytes: usize) -> std::io::Result<()> {
        let started = Instant::now();
        let ops: Vec<WriteOp<'_>> = group
            .iter()
            .map(|w| WriteOp {
                file: &w.file,
                offset: w.offset,
                bytes: &w.bytes,
            })
            .collect();
        let mut files: Vec<Arc<File>> = Vec::new();
        for w in group {
            if !files.iter().any(|f| f.as_raw_fd() == w.file.as_raw_fd()) {
                files.push(w.file.clone());
            }
        }
        let dir = group.iter().any(|w| w.created).then_some(&self.dir);
        self.disk.write_and_sync(&ops, &files, dir)?;
        let elapsed = started.elapsed();
        metrics::group_synced(self.label, elapsed);
        let done = group.iter().filter_map(|w| w.completes).max();
        self.durable.publish(done);
        if let Some(done) = done {
            ::metrics::gauge!(metrics::DURABLE_BLOCK, metrics::LABEL => self.label)
                .set(done as f64);
        }
        if elapsed > SLOW_SYNC {
            tracing::warn!(target: "storage::archive", writes = group.len(), bytes, elapsed_ms = elapsed.as_millis() as u64, "slow archive write and fsync");
        }
        Ok(())
    }
}

/// A group taking longer than this is logged: consensus waits on it.
const SLOW_SYNC: Duration = Duration::from_secs(1);
