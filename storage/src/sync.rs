//! Durability off the commit thread. MDBX commits with `SafeNoSync`: a commit writes its pages
//! to the OS page cache and returns, the database consistent. The store's sync thread then makes
//! the commits durable, while the next block's transaction goes on:
//!
//! 1. `fdatasync` of the data file, on the thread's own descriptor and without MDBX's writer
//!    lock: the pages of every commit so far reach the disk (the costly part, hundreds of
//!    milliseconds for a block at 10,000,000 accounts).
//! 2. Once no block's write transaction is open (a transaction holds MDBX's writer lock from
//!    begin to commit) and no commit came after step 1, `mdbx_env_sync_ex`: under the writer
//!    lock it finds the data already flushed and writes the head's meta page as *steady*, one
//!    page and a flush. A commit after step 1 sends the thread back to step 1.
//!
//! [`Store::begin_block`](crate::Store::begin_block) waits only for step 2 (the thread holds the
//! state lock through it), or when [`UNSYNCED_COMMITS_MAX`] commits are not durable: blocks
//! written back to back leave step 2 no gap between transactions, and the bound keeps what a
//! power loss takes back, and the pages MDBX cannot reuse before the next steady commit,
//! to a few blocks.
//!
//! What a crash loses: a process crash nothing (the pages are in the page cache, and MDBX keeps
//! a non-steady head when it reopens on the same boot); a power loss or kernel crash the commits
//! after the last steady one (MDBX rolls back to it at open). The block archive is durable
//! before each commit and consensus' block log before execution, so the node re-executes the
//! lost blocks at its next start; nothing that must outlive a power loss keys off a commit
//! rather than [`Store::durable_head`](crate::Store::durable_head).

use crate::{Env, StorageError};
use kestrel_types::BlockNumber;
use libmdbx::Database;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::{fs::File, sync::Arc, thread::JoinHandle, time::Instant};

/// Commits that may be not durable before [`crate::Store::begin_block`] waits for the sync
/// thread. Each is at most `COMMIT_GROUP_MAX` blocks that a power loss sends back to execution.
pub const UNSYNCED_COMMITS_MAX: u64 = 4;

/// What the sync thread has done, for benchmarks (the metrics say the same to Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncStats {
    /// Flushes of the data file (step 1), and their total and longest time.
    pub flushes: u64,
    pub flush_seconds: f64,
    pub flush_seconds_max: f64,
    /// Steady commits written (step 2, or [`crate::Store::sync`]).
    pub steady: u64,
    /// How often, and how long in all, `begin_block` waited for the sync thread.
    pub waits: u64,
    pub wait_seconds: f64,
}

#[derive(Default)]
struct State {
    /// Write transactions committed through `BlockWriter`s since open, and how many of them
    /// are durable.
    commits: u64,
    synced: u64,
    /// The head after the last commit, and after the last durable one.
    head: Option<BlockNumber>,
    durable: Option<BlockNumber>,
    /// Block write transactions open (or about to open): MDBX's writer lock is taken.
    writers: u32,
    /// Whether a sync thread runs (`Durability::Durable`); without one nothing waits for it.
    thread: bool,
    stop: bool,
    /// The sync thread's error: every later `begin_block` returns it.
    failed: Option<String>,
    stats: SyncStats,
}

/// The state the commit thread and the sync thread share.
pub(crate) struct Syncer {
    state: Mutex<State>,
    changed: Condvar,
}

/// A block's write transaction open: the sync thread does not take MDBX's writer lock.
pub(crate) struct Writing<'s>(&'s Syncer);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.state.lock().writers -= 1;
        self.0.changed.notify_all();
    }
}

impl Writing<'_> {
    /// The transaction committed, moving the head to `head` (`None`: no block inserted).
    pub(crate) fn committed(&self, head: Option<BlockNumber>) {
        let mut state = self.0.state.lock();
        state.commits += 1;
        if head.is_some() {
            state.head = head;
        }
        set_unsynced_gauge(&state);
        drop(state);
        self.0.changed.notify_all();
    }
}

fn set_unsynced_gauge(state: &State) {
    let blocks = match (state.head, state.durable) {
        (Some(head), Some(durable)) => head.saturating_sub(durable),
        (Some(head), None) => head + 1,
        (None, _) => 0,
    };
    metrics::gauge!("kestrel_storage_unsynced_blocks").set(blocks as f64);
}

impl Syncer {
    /// `head` is durable (the store syncs at open).
    pub(crate) fn new(head: Option<BlockNumber>) -> Self {
        let state = State {
            head,
            durable: head,
            ..State::default()
        };
        set_unsynced_gauge(&state);
        Self {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    /// Starts the sync thread, which flushes `data` (MDBX's data file) and makes `db`'s
    /// commits steady until [`Syncer::stop`].
    pub(crate) fn spawn(
        self: &Arc<Self>,
        db: Arc<Database<Env>>,
        data: File,
    ) -> std::io::Result<JoinHandle<()>> {
        self.state.lock().thread = true;
        let syncer = self.clone();
        std::thread::Builder::new()
            .name("db-sync".into())
            .spawn(move || syncer.run(&db, &data))
    }

    /// Asks the sync thread to make the last commits durable and exit.
    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.changed.notify_all();
    }

    /// Marks a block's write transaction about to open; waits while the sync thread writes a
    /// steady meta page, or while [`UNSYNCED_COMMITS_MAX`] commits are not durable.
    pub(crate) fn begin(&self) -> Result<Writing<'_>, StorageError> {
        let mut state = self.state.lock();
        if state.thread && state.commits - state.synced >= UNSYNCED_COMMITS_MAX {
            let started = Instant::now();
            while state.failed.is_none() && state.commits - state.synced >= UNSYNCED_COMMITS_MAX {
                self.changed.wait(&mut state);
            }
            state.stats.waits += 1;
            state.stats.wait_seconds += started.elapsed().as_secs_f64();
        }
        if let Some(err) = &state.failed {
            return Err(StorageError::SyncFailed(err.clone()));
        }
        state.writers += 1;
        Ok(Writing(self))
    }

    pub(crate) fn durable_head(&self) -> Option<BlockNumber> {
        self.state.lock().durable
    }

    pub(crate) fn stats(&self) -> SyncStats {
        self.state.lock().stats
    }

    /// Makes every commit durable now, on the caller's thread; waits for open block
    /// transactions to end (so never call it holding a `BlockWriter`).
    pub(crate) fn sync_now(&self, db: &Database<Env>) -> Result<Option<BlockNumber>, StorageError> {
        let mut state = self.state.lock();
        while state.writers > 0 {
            self.changed.wait(&mut state);
        }
        let started = Instant::now();
        db.sync(true)?;
        let commits = state.commits;
        self.steady(&mut state, commits);
        metrics::histogram!("kestrel_storage_sync_seconds").record(started.elapsed().as_secs_f64());
        Ok(state.durable)
    }

    /// Commits up to `commits` are durable.
    fn steady(&self, state: &mut MutexGuard<'_, State>, commits: u64) {
        state.synced = commits;
        state.durable = state.head;
        state.stats.steady += 1;
        set_unsynced_gauge(state);
        self.changed.notify_all();
    }

    fn run(&self, db: &Database<Env>, data: &File) {
        loop {
            let target = {
                let mut state = self.state.lock();
                while state.commits == state.synced && !state.stop {
                    self.changed.wait(&mut state);
                }
                if state.commits == state.synced {
                    return;
                }
                state.commits
            };
            // Step 1: no lock held, the commit thread goes on.
            let started = Instant::now();
            let flushed = data.sync_data();
            let took = started.elapsed();
            let mut state = self.state.lock();
            state.stats.flushes += 1;
            state.stats.flush_seconds += took.as_secs_f64();
            state.stats.flush_seconds_max = state.stats.flush_seconds_max.max(took.as_secs_f64());
            if let Err(err) = flushed {
                return self.fail(state, format!("fdatasync of the data file: {err}"));
            }
            // Step 2, once the writer lock is free, unless newer commits need step 1 again.
            while state.commits == target && state.writers > 0 {
                self.changed.wait(&mut state);
            }
            if state.commits != target {
                metrics::histogram!("kestrel_storage_sync_seconds").record(took.as_secs_f64());
                continue;
            }
            let started = Instant::now();
            if let Err(err) = db.sync(true) {
                return self.fail(state, format!("steady commit: {err}"));
            }
            self.steady(&mut state, target);
            let took = took + started.elapsed();
            metrics::histogram!("kestrel_storage_sync_seconds").record(took.as_secs_f64());
        }
    }

    /// A flush failed: the pages' fate is unknown (a failed fsync's dirty pages may be
    /// dropped), so no later commit may be taken for durable. The store refuses new blocks.
    fn fail(&self, mut state: MutexGuard<'_, State>, err: String) {
        tracing::error!(target: "storage::sync", %err, "database sync failed");
        state.failed = Some(err);
        drop(state);
        self.changed.notify_all();
    }
}
