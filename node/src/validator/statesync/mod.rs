//! State sync (`kestrel node --full --sync state`): a new node fetches the state of a recent
//! finalized block from the validators, in chunks, instead of executing every block since
//! genesis; then it follows the chain from that block as any full node does.
//!
//! 1. **Tops.** It asks every connected validator for the top of its snapshot
//!    ([`SyncRequest::SnapshotTop`]; each serves a snapshot of its committed head, held in memory:
//!    `serve.rs`), and keeps the answer that most validators gave alike (the same block, root,
//!    chunking and top), or the one its own interrupted restore was of.
//! 2. **Anchor** (`anchor.rs`). Nothing in a top is trusted yet. It asks for the finalized
//!    blocks from the snapshot's block `B` on ([`SyncRequest::Blocks`]) and checks them as block
//!    sync does: a hash chain ending on a commit proof signed by a quorum of the genesis's
//!    validator set (`sync::verify_chain`), until it holds block `B + D`, which carries `B`'s
//!    execution result (block hash and state root) that a quorum voted for. The top's state root
//!    must be that root, its newest header must hash to that block hash, and the older headers
//!    must chain to it by their parent hashes.
//! 3. **Chunks.** The top, hashed up to the trusted root, gives each chunk's subtrie hash
//!    (`snapshot::verify::expected_subtries`). Chunks are asked of every validator that holds the
//!    same snapshot, several in flight each; a chunk larger than a message comes in parts
//!    (`snapshot::parts`), all asked of the validator that served its part 0 and put together as
//!    they come (`fetch.rs`). Each whole chunk is checked against its subtrie hash
//!    (`verify_chunk`): a validator that serves a bad one, or a misframed part, is dropped (asked
//!    nothing more for this sync) and the whole chunk is asked of another. Checked chunks are
//!    written in index order (`Store::restore_chunks`), with the count of chunks written in the
//!    same transaction: a restart resumes after it (whole chunks: a chunk half fetched is fetched
//!    again) if a validator still holds that snapshot, and starts over with a new one if none
//!    does.
//! 4. **Base.** The account trie is built from the written accounts and its root checked against
//!    the trusted one once more (`Store::restore_finish`); block `B` starts the block log and
//!    becomes the database's head and base. Block sync goes on from `B + 1`.

mod anchor;
mod fetch;
pub mod serve;

use self::{anchor::check_top, fetch::Fetch};
use super::{
    metrics::{SYNC_BLOCKS_TOTAL, SYNC_MODE},
    store::ChainLog,
    transport::Transport,
    wire::{SnapshotTop, SyncRequest, SyncResponse},
};
use alloy_primitives::B256;
use crossbeam_channel::Receiver;
use kestrel_consensus::bft::ValidatorSet;
use kestrel_net::{Inbound, Kind, PeerClass, PeerId};
use kestrel_storage::{
    StorageError, Store,
    snapshot::{
        chunk_count,
        parts::StatePart,
        restore::{RestoreError, RestoreTarget},
        verify::verify_chunk,
    },
};
use std::{
    collections::BTreeSet,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// How long to collect snapshot tops after asking for them (a validator making its snapshot
/// reads its whole state first: seconds at millions of accounts).
const TOPS_WAIT_MS: u64 = 3_000;
/// Look again for connected validators after this long.
const PEERS_WAIT_MS: u64 = 100;
/// Ask again for tops after this long without any answer: a validator first waits for its head
/// to reach the next aligned block (`serve::SNAPSHOT_ALIGN_BLOCKS`), then reads its state.
const TOPS_RETRY_MS: u64 = 30_000;
/// Checked chunks written per transaction at most (one fsync each).
const CHUNKS_PER_WRITE_MAX: usize = 16;
/// Longest wait on the inbound channel, so timeouts and a stop are noticed.
const IDLE_WAIT: Duration = Duration::from_millis(20);

const TARGET_BLOCK: &str = "kestrel_sync_target_block";
const CHUNKS: &str = "kestrel_sync_state_chunks";
const CHUNKS_DONE: &str = "kestrel_sync_state_chunks_done";
const BYTES: &str = "kestrel_sync_state_bytes_total";
const BAD_CHUNKS: &str = "kestrel_sync_state_bad_chunks_total";
const PARTS: &str = "kestrel_sync_state_parts_total";
const PEERS_DROPPED: &str = "kestrel_sync_state_peers_dropped_total";
const ACCOUNTS: &str = "kestrel_sync_state_accounts_total";

pub fn describe_metrics() {
    metrics::describe_gauge!(
        TARGET_BLOCK,
        "The block whose state state sync fetches (0: none)"
    );
    metrics::describe_gauge!(CHUNKS, "Chunks of the snapshot state sync fetches");
    metrics::describe_gauge!(
        CHUNKS_DONE,
        "Chunks of the snapshot checked and written by state sync"
    );
    metrics::describe_counter!(
        BYTES,
        metrics::Unit::Bytes,
        "Bytes of state sync answers received (tops, chunks, anchor blocks)"
    );
    metrics::describe_counter!(
        BAD_CHUNKS,
        "State chunks that failed their check against the trusted state root, or whose parts did not fit together"
    );
    metrics::describe_counter!(
        PARTS,
        "Parts of state chunks taken by state sync (a chunk larger than a message comes in several)"
    );
    metrics::describe_counter!(
        PEERS_DROPPED,
        "Validators state sync stopped asking because they served a bad chunk or top"
    );
    metrics::describe_counter!(ACCOUNTS, "Accounts written by state sync");
    serve::describe_metrics();
}

/// Declares the sync metrics and starts them at 0 (mode `following`), so that dashboards and
/// alerts see every node's series from start-up; state sync and the follower move them.
pub fn init_metrics() {
    describe_metrics();
    metrics::gauge!(TARGET_BLOCK).set(0.0);
    metrics::gauge!(CHUNKS).set(0.0);
    metrics::gauge!(CHUNKS_DONE).set(0.0);
    for counter in [
        BYTES,
        BAD_CHUNKS,
        PARTS,
        PEERS_DROPPED,
        ACCOUNTS,
        SYNC_BLOCKS_TOTAL,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    set_mode("following");
}

#[derive(Debug, thiserror::Error)]
pub enum StateSyncError {
    #[error("restore: {0}")]
    Restore(#[from] RestoreError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("block log: {0}")]
    Log(#[from] super::store::StoreError),
    #[error("removing a block log started at another block: {0}")]
    Io(#[from] std::io::Error),
    #[error("stopped")]
    Stopped,
}

/// The validators state sync talks to, and what it counts of them.
pub struct StateSync<'a> {
    net: &'a dyn Transport,
    inbound: &'a Receiver<Inbound>,
    store: &'a Store,
    set: &'a ValidatorSet,
    stop: &'a AtomicBool,
    /// Validators that served a bad top or chunk: never asked again.
    dropped: BTreeSet<PeerId>,
    bytes: u64,
    /// Test only ([`EXIT_AFTER_CHUNKS_ENV`]): stop the process dead once this many chunks are
    /// written.
    exit_after: Option<u32>,
}

/// Test only (tests/testnet): the process exits at once, as if killed, when this many chunks
/// are written, so that a test can restart it and watch the sync resume.
const EXIT_AFTER_CHUNKS_ENV: &str = "KESTREL_TEST_STATE_SYNC_EXIT_AFTER_CHUNKS";
/// The exit code of that exit.
const EXIT_AFTER_CHUNKS_CODE: i32 = 75;

impl<'a> StateSync<'a> {
    pub fn new(
        net: &'a dyn Transport,
        inbound: &'a Receiver<Inbound>,
        store: &'a Store,
        set: &'a ValidatorSet,
        stop: &'a AtomicBool,
    ) -> Self {
        Self {
            net,
            inbound,
            store,
            set,
            stop,
            dropped: BTreeSet::new(),
            bytes: 0,
            exit_after: std::env::var(EXIT_AFTER_CHUNKS_ENV)
                .ok()
                .and_then(|n| n.parse().ok()),
        }
    }

    /// Syncs the state into the empty (or half-restored) store and starts the block log in
    /// `log_dir` at its block; returns that block's number.
    ///
    /// `None` when the snapshots offered are of blocks below `min_height` (and no restore is
    /// under way): executing that many blocks from genesis is the cheaper way.
    pub fn run(mut self, log_dir: &Path, min_height: u64) -> Result<Option<u64>, StateSyncError> {
        let started = Instant::now();
        set_mode("state");
        loop {
            let (top, peers) = self.tops()?;
            if top.height < min_height && self.store.restore_progress()?.is_none() {
                tracing::info!(target: "node::statesync", block = top.height, min_height, "the chain is short: syncing from genesis instead");
                set_mode("blocks");
                return Ok(None);
            }
            let Some((base, result)) = self.anchor(&top, &peers)? else {
                continue;
            };
            let expected = match check_top(&top, &result) {
                Ok(expected) => expected,
                Err(lie) => {
                    for peer in &peers {
                        self.drop_peer(peer, &lie.to_string());
                    }
                    continue;
                }
            };
            let target = RestoreTarget {
                number: top.height,
                state_root: result.state_root,
                depth: top.depth,
            };
            if !self.chunks(target, &expected, peers)? {
                continue;
            }
            // The log first: a crash before the database's head moves leaves a complete
            // restore, which the next start finishes with whichever snapshot it then finds.
            let mut log = ChainLog::open(log_dir)?;
            if log.height() != 0 && log.head().block.id() != base.block.id() {
                drop(log);
                std::fs::remove_dir_all(log_dir.join(super::store::ARCHIVE_DIR))?;
                log = ChainLog::open(log_dir)?;
            }
            if log.height() == 0 {
                log.start_at(&base)?;
            }
            let headers = &top.headers;
            let ancestors: Vec<B256> = headers[..headers.len() - 1]
                .iter()
                .map(|h| h.hash_slow())
                .collect();
            self.store
                .restore_finish(headers.last().expect("checked"), &ancestors)?;
            tracing::info!(target: "node::statesync", block = top.height, root = %result.state_root, bytes = self.bytes, elapsed_s = started.elapsed().as_secs_f64(), "state sync done; block sync goes on from the next block");
            set_mode("blocks");
            return Ok(Some(top.height));
        }
    }

    /// Waits for the next answer from a validator, up to `until`; `None` at `until`.
    fn next_answer(
        &mut self,
        until: Instant,
    ) -> Result<Option<(PeerId, SyncResponse)>, StateSyncError> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(StateSyncError::Stopped);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            let msg = match self.inbound.recv_timeout((until - now).min(IDLE_WAIT)) {
                Ok(msg) => msg,
                Err(_) => continue,
            };
            if msg.class != PeerClass::Validator || msg.kind != Kind::SyncResponse {
                continue;
            }
            self.bytes += msg.payload.len() as u64;
            metrics::counter!(BYTES).increment(msg.payload.len() as u64);
            match SyncResponse::decode(&msg.payload) {
                Ok(response) => return Ok(Some((msg.peer, response))),
                Err(err) => {
                    tracing::debug!(target: "node::statesync", peer = %msg.peer, %err, "undecodable answer")
                }
            }
        }
    }

    fn peers(&self) -> Vec<PeerId> {
        self.net
            .connected_peers()
            .into_iter()
            .filter(|p| !self.dropped.contains(p))
            .collect()
    }

    fn drop_peer(&mut self, peer: &PeerId, why: &str) {
        if self.dropped.insert(*peer) {
            metrics::counter!(PEERS_DROPPED).increment(1);
            tracing::warn!(target: "node::statesync", %peer, why, "dropped a validator from state sync");
        }
    }

    /// Asks every validator for its snapshot's top; the top most of them gave (or the one an
    /// interrupted restore was of), with the validators that gave it. Validators that connect
    /// while the tops come in are asked too, and the answers are awaited from every validator
    /// not dropped, not only from those connected at first: a node started a moment ago has
    /// handshaken with some of them only, and choosing among those alone took a snapshot that
    /// the rest (their heads a block further, past the aligned one) did not hold.
    fn tops(&mut self) -> Result<(SnapshotTop, Vec<PeerId>), StateSyncError> {
        let resuming = self.store.restore_progress()?.map(|p| p.target);
        let request = SyncRequest::SnapshotTop {
            resume: resuming.map_or(0, |r| r.number),
        }
        .encode();
        loop {
            if self.peers().is_empty() {
                // Not connected yet (the handshakes take a moment after start).
                self.next_answer(Instant::now() + Duration::from_millis(PEERS_WAIT_MS))?;
                continue;
            }
            let expected = self.set.len().saturating_sub(self.dropped.len());
            let mut asked: BTreeSet<PeerId> = BTreeSet::new();
            let mut until = Instant::now() + Duration::from_millis(TOPS_RETRY_MS);
            let mut tops: Vec<(SnapshotTop, Vec<PeerId>)> = Vec::new();
            loop {
                for peer in self.peers() {
                    if asked.insert(peer) {
                        self.net
                            .send(&peer, Kind::SyncRequest, request.clone().into());
                    }
                }
                let tick = until.min(Instant::now() + Duration::from_millis(PEERS_WAIT_MS));
                let Some((peer, answer)) = self.next_answer(tick)? else {
                    if Instant::now() >= until {
                        break;
                    }
                    continue;
                };
                let SyncResponse::SnapshotTop(top) = answer else {
                    continue;
                };
                if tops.is_empty() {
                    until = Instant::now() + Duration::from_millis(TOPS_WAIT_MS);
                }
                offered(&mut tops, peer, *top);
                if tops.iter().map(|(_, from)| from.len()).sum::<usize>() >= expected {
                    break;
                }
            }
            self.align_tops(&mut tops)?;
            let same_as_before = |t: &SnapshotTop| {
                resuming.is_some_and(|r| {
                    (r.number, r.state_root, r.depth) == (t.height, t.state_root, t.depth)
                })
            };
            let best = tops
                .into_iter()
                .max_by_key(|(top, from)| (same_as_before(top), from.len(), top.height));
            if let Some((top, from)) = best {
                tracing::info!(target: "node::statesync", block = top.height, depth = top.depth, validators = from.len(), resuming = same_as_before(&top), "chose a snapshot");
                metrics::gauge!(TARGET_BLOCK).set(top.height as f64);
                return Ok((top, from));
            }
            tracing::info!(target: "node::statesync", validators = asked.len(), "no snapshot offered yet; asking again");
        }
    }

    /// Asks the validators that offered an older snapshot than the newest offered for the
    /// newest, by its block, and waits for their answers ([`TOPS_RETRY_MS`] at most). Validators
    /// snapshot the next aligned block after their head when asked, so heads a block apart
    /// around an aligned block offer blocks `SNAPSHOT_ALIGN_BLOCKS` apart; the ones behind can
    /// still snapshot the newer block once their head reaches it, and chunks are then fetched
    /// from all of them.
    fn align_tops(
        &mut self,
        tops: &mut Vec<(SnapshotTop, Vec<PeerId>)>,
    ) -> Result<(), StateSyncError> {
        let Some(newest) = tops.iter().map(|(top, _)| top.height).max() else {
            return Ok(());
        };
        let mut behind: BTreeSet<PeerId> = tops
            .iter()
            .filter(|(top, _)| top.height < newest)
            .flat_map(|(_, from)| from.iter().copied())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        tracing::info!(target: "node::statesync", block = newest, validators = behind.len(), "asking the validators with an older snapshot for the newest");
        let request = SyncRequest::SnapshotTop { resume: newest }.encode();
        for peer in &behind {
            self.net
                .send(peer, Kind::SyncRequest, request.clone().into());
        }
        let until = Instant::now() + Duration::from_millis(TOPS_RETRY_MS);
        while !behind.is_empty() {
            let Some((peer, answer)) = self.next_answer(until)? else {
                break;
            };
            if let SyncResponse::SnapshotTop(top) = answer
                && behind.remove(&peer)
            {
                offered(tops, peer, *top);
            }
        }
        Ok(())
    }

    /// Fetches, checks and writes every chunk of `target` not written yet. False if every
    /// validator holding the snapshot was dropped or let it go first.
    fn chunks(
        &mut self,
        target: RestoreTarget,
        expected: &[Option<B256>],
        peers: Vec<PeerId>,
    ) -> Result<bool, StateSyncError> {
        let count = chunk_count(target.depth);
        let done = match self.store.restore_progress()? {
            Some(p) if p.target == target => {
                tracing::info!(target: "node::statesync", block = target.number, done = p.chunks_done, count, "resuming a state restore");
                p.chunks_done
            }
            _ => {
                self.store.restore_start(target)?;
                0
            }
        };
        metrics::gauge!(CHUNKS).set(f64::from(count));
        metrics::gauge!(CHUNKS_DONE).set(f64::from(done));
        let mut fetch = Fetch::new(target.depth, done, count, peers);
        let mut last_log = Instant::now();
        while fetch.written < count {
            let now = Instant::now();
            // A validator that disconnected has lost its requests: ask the others at once.
            let connected = self.net.connected_peers();
            let gone: Vec<PeerId> = fetch
                .peers
                .keys()
                .filter(|p| !connected.contains(p))
                .copied()
                .collect();
            for peer in gone {
                tracing::info!(target: "node::statesync", %peer, "a validator disconnected: its chunks go to the others");
                fetch.forget(&peer);
            }
            for (peer, index, part) in fetch.requests(now, &self.dropped) {
                let request = SyncRequest::StatePart {
                    height: target.number,
                    depth: target.depth,
                    index,
                    part,
                };
                self.net
                    .send(&peer, Kind::SyncRequest, request.encode().into());
            }
            if fetch.peers.is_empty() {
                tracing::warn!(target: "node::statesync", block = target.number, written = fetch.written, "no validator serves this snapshot any more; choosing another");
                return Ok(false);
            }
            let Some((peer, answer)) = self.next_answer(now + IDLE_WAIT)? else {
                continue;
            };
            match answer {
                SyncResponse::StatePart(bytes) => {
                    let part: StatePart = match super::wire::decode_all(&bytes) {
                        Ok(part) => part,
                        Err(err) => {
                            self.bad_chunk(&mut fetch, &peer, &err.to_string());
                            continue;
                        }
                    };
                    if !fetch.is_pending(&peer, &part) {
                        continue;
                    }
                    metrics::counter!(PARTS).increment(1);
                    let index = part.index;
                    let chunk = match fetch.received(part, Instant::now()) {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => continue,
                        Err(err) => {
                            self.bad_chunk(&mut fetch, &peer, &err.to_string());
                            continue;
                        }
                    };
                    if let Err(err) =
                        verify_chunk(target.depth, index, expected[index as usize], &chunk)
                    {
                        fetch.requeue(index);
                        self.bad_chunk(&mut fetch, &peer, &err.to_string());
                        continue;
                    }
                    fetch.ready.insert(index, chunk);
                    self.write_ready(&mut fetch)?;
                }
                SyncResponse::SnapshotGone { held } => {
                    tracing::info!(target: "node::statesync", %peer, held, "a validator no longer holds the snapshot");
                    fetch.forget(&peer);
                }
                _ => {}
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(target: "node::statesync", block = target.number, written = fetch.written, count, bytes = self.bytes, validators = fetch.peers.len(), "state sync progress");
            }
        }
        Ok(true)
    }

    fn bad_chunk(&mut self, fetch: &mut Fetch, peer: &PeerId, why: &str) {
        metrics::counter!(BAD_CHUNKS).increment(1);
        fetch.forget(peer);
        self.drop_peer(peer, why);
    }

    /// Writes the checked chunks that follow the last written one.
    fn write_ready(&mut self, fetch: &mut Fetch) -> Result<(), StateSyncError> {
        loop {
            let mut batch = Vec::new();
            while batch.len() < CHUNKS_PER_WRITE_MAX
                && let Some(chunk) = fetch.ready.remove(&(fetch.written + batch.len() as u32))
            {
                batch.push(chunk);
            }
            if batch.is_empty() {
                return Ok(());
            }
            let accounts: usize = batch.iter().map(|c| c.accounts.len()).sum();
            fetch.written = self.store.restore_chunks(&batch)?;
            metrics::counter!(ACCOUNTS).increment(accounts as u64);
            metrics::gauge!(CHUNKS_DONE).set(f64::from(fetch.written));
            if self.exit_after.is_some_and(|n| fetch.written >= n) {
                tracing::warn!(target: "node::statesync", written = fetch.written, "TEST: exiting in the middle of the state sync");
                std::process::exit(EXIT_AFTER_CHUNKS_CODE);
            }
        }
    }
}

/// Records that `peer` offers `top`, in place of what it offered before.
fn offered(tops: &mut Vec<(SnapshotTop, Vec<PeerId>)>, peer: PeerId, top: SnapshotTop) {
    for (_, from) in tops.iter_mut() {
        from.retain(|p| *p != peer);
    }
    tops.retain(|(_, from)| !from.is_empty());
    match tops.iter_mut().find(|(t, _)| *t == top) {
        Some((_, from)) => from.push(peer),
        None => tops.push((top, vec![peer])),
    }
}

/// Sets `kestrel_sync_mode`: 1 for the mode the node is in, 0 for the others.
pub fn set_mode(mode: &'static str) {
    for m in ["state", "blocks", "following"] {
        metrics::gauge!(SYNC_MODE, "mode" => m).set(if m == mode { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(height: u64) -> SnapshotTop {
        SnapshotTop {
            height,
            state_root: B256::repeat_byte(height as u8),
            depth: 1,
            top: Vec::new(),
            headers: Vec::new(),
        }
    }

    fn peer(i: u8) -> PeerId {
        let key = secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap();
        PeerId::from(secp256k1::PublicKey::from_secret_key_global(&key))
    }

    #[test]
    fn a_validator_asked_again_moves_to_the_snapshot_it_offers_now() {
        let mut tops = Vec::new();
        offered(&mut tops, peer(1), top(32));
        offered(&mut tops, peer(2), top(48));
        offered(&mut tops, peer(3), top(32));
        offered(&mut tops, peer(3), top(32));
        assert_eq!(
            tops,
            vec![(top(32), vec![peer(1), peer(3)]), (top(48), vec![peer(2)])]
        );
        offered(&mut tops, peer(1), top(48));
        offered(&mut tops, peer(3), top(48));
        assert_eq!(tops, vec![(top(48), vec![peer(2), peer(1), peer(3)])]);
    }
}
