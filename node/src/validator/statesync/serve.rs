//! The serving side of state sync: a validator's snapshot of its committed state, made on a
//! thread of its own when a syncing node asks for one, and its chunks answered from memory.
//!
//! **Why a pinned copy in memory.** Every chunk of one sync must be of the same block, but the
//! head moves every block time while a sync takes seconds to minutes. Re-asking the top whenever
//! the head moved would never end on a busy chain, and holding an MDBX read transaction for the
//! whole sync would keep every page the commits free meanwhile from being reused (the file grows
//! with the chain's writes for as long as the sync lasts). So the snapshot is read once, in one
//! read transaction (one pass over the hashed tables, `Reader::snapshot_chunks`), each chunk cut
//! into its parts (`snapshot::parts::cut`) and encoded, and kept: about 35 bytes a funded account
//! without code or storage (35 MB for 1,000,000 of them) and 38 a token's slot (BENCHMARKS.md),
//! until nobody asked for it for [`SNAPSHOT_IDLE_SECS`]. It is of the first
//! block at a multiple of [`SNAPSHOT_ALIGN_BLOCKS`] after the request, so that validators asked
//! together snapshot the same block. A snapshot that was just made, or that a sync is still reading, is
//! given again to the next node that asks for a top ([`SNAPSHOT_FRESH_MS`], [`SNAPSHOT_BUSY_MS`]),
//! so that nodes syncing at once find the same block; and so is the one a node resuming after a
//! restart asks for by its block, while it is held.
//!
//! Requests come from the consensus driver (or a follower) through a bounded channel; a full one
//! drops the request, which the syncing node asks again after its timeout.

use super::super::wire::{SnapshotTop, SyncRequest, SyncResponse};
use alloy_primitives::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use kestrel_net::{Kind, NetworkHandle, PeerId};
use kestrel_storage::{
    ChainView, Reader, StorageError, Store,
    snapshot::{
        StateChunk, depth_for,
        parts::{self, StatePart},
        restore::BASE_ANCESTORS,
        verify::SnapshotError,
    },
};
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// Requests waiting for the snapshot thread; past it they are dropped (and asked again).
const REQUESTS_QUEUE_MAX: usize = 256;
/// A snapshot this young is given to whoever asks for a top, rather than a new one made.
const SNAPSHOT_FRESH_MS: u64 = 2_000;
/// A snapshot a chunk was served from this recently is kept for the next top request too: a
/// sync is reading it.
const SNAPSHOT_BUSY_MS: u64 = 10_000;
/// Snapshots are of blocks at multiples of this, so that validators asked at about the same
/// time snapshot the same block: 16 blocks, 8 s at 500 ms blocks.
const SNAPSHOT_ALIGN_BLOCKS: u64 = 16;
/// Longest wait for the head to reach that block.
const SNAPSHOT_ALIGN_WAIT_MS: u64 = 20_000;
/// A snapshot nobody asked anything of for this long is dropped (its memory freed).
const SNAPSHOT_IDLE_SECS: u64 = 60;
/// Largest encoded part of a chunk: under the 4 MiB frame cap of a full node's connection, with
/// room for the frame and tag. A chunk larger than this is served in several parts.
const STATE_PART_BYTES_MAX: usize = (4 << 20) - 4_096;
/// Test only (tests/testnet): a smaller part budget than [`STATE_PART_BYTES_MAX`], so that a
/// small state's chunks are served in several parts.
const PART_BYTES_ENV: &str = "KESTREL_TEST_STATE_PART_BYTES";
/// Test only (tests/testnet): a chunk index, or `all`, that this node serves damaged (one
/// value off by one), so that a syncing node's check of each chunk can be seen catching a
/// lying peer.
const CORRUPT_CHUNK_ENV: &str = "KESTREL_TEST_CORRUPT_STATE_CHUNK";

/// Whether `block` is one that validators snapshot.
fn is_aligned(block: u64) -> bool {
    block != 0 && block.is_multiple_of(SNAPSHOT_ALIGN_BLOCKS)
}

/// The block to snapshot at head `head` when asked for block `wanted` (0: none): `wanted` if it
/// is aligned and not passed yet, nor more than two alignments ahead (a syncing node that found
/// the other validators at the next aligned block while this one's head was just short of it);
/// else the next aligned block. Heads a block apart at a multiple of the alignment otherwise
/// snapshot blocks 16 apart.
fn snapshot_target(head: u64, wanted: u64) -> u64 {
    let within_reach = head <= wanted && wanted <= head + 2 * SNAPSHOT_ALIGN_BLOCKS;
    if is_aligned(wanted) && within_reach {
        wanted
    } else {
        head.next_multiple_of(SNAPSHOT_ALIGN_BLOCKS)
    }
}

/// Which chunks [`CORRUPT_CHUNK_ENV`] damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Chunk(u32),
    All,
}

impl Damage {
    fn from_env() -> Option<Self> {
        match std::env::var(CORRUPT_CHUNK_ENV).ok()?.as_str() {
            "all" => Some(Self::All),
            index => index.parse().ok().map(Self::Chunk),
        }
    }

    fn hits(self, index: u32) -> bool {
        self == Self::All || self == Self::Chunk(index)
    }
}

const SNAPSHOTS_MADE: &str = "kestrel_sync_snapshots_made_total";
const CHUNKS_SERVED: &str = "kestrel_sync_state_chunks_served_total";

/// Declares the serving side's metrics, at 0 from start-up.
pub fn describe_metrics() {
    metrics::describe_counter!(
        SNAPSHOTS_MADE,
        "State snapshots this node made of its committed head to serve state sync"
    );
    metrics::describe_counter!(
        CHUNKS_SERVED,
        "State chunks this node served to syncing nodes"
    );
    metrics::counter!(SNAPSHOTS_MADE).absolute(0);
    metrics::counter!(CHUNKS_SERVED).absolute(0);
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the database has no committed block")]
    Empty,
    #[error("cutting a chunk into parts: {0}")]
    Part(#[from] SnapshotError),
}

/// The handle the driver gives snapshot requests to.
pub struct SnapshotServer {
    requests: Sender<(PeerId, SyncRequest)>,
}

impl SnapshotServer {
    /// Starts the snapshot thread over `store`, answering through `net`. It ends when the
    /// server is dropped.
    pub fn spawn(store: Arc<Store>, net: NetworkHandle) -> std::io::Result<Self> {
        let corrupt = Damage::from_env();
        if let Some(damage) = corrupt {
            tracing::warn!(target: "node::statesync", ?damage, "TEST: serving damaged state chunks");
        }
        let part_bytes_max = match std::env::var(PART_BYTES_ENV)
            .ok()
            .and_then(|b| b.parse().ok())
        {
            Some(bytes) => {
                tracing::warn!(target: "node::statesync", bytes, "TEST: a small state part budget");
                bytes
            }
            None => STATE_PART_BYTES_MAX,
        };
        let (requests, rx) = crossbeam_channel::bounded(REQUESTS_QUEUE_MAX);
        thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                Serving {
                    store,
                    held: None,
                    corrupt,
                    part_bytes_max,
                }
                .run(rx, |peer, response| {
                    let bytes = response.encode().into();
                    if let Err(err) = net.send(&peer, Kind::SyncResponse, bytes) {
                        tracing::debug!(target: "node::statesync", %peer, %err, "state sync answer not sent");
                    }
                })
            })?;
        Ok(Self { requests })
    }

    /// Takes `request` if it is a state sync request (true), to be answered from the snapshot
    /// thread; other requests are the caller's.
    pub fn offer(&self, peer: &PeerId, request: &[u8]) -> bool {
        let request = match SyncRequest::decode(request) {
            Ok(r @ (SyncRequest::SnapshotTop { .. } | SyncRequest::StatePart { .. })) => r,
            _ => return false,
        };
        match self.requests.try_send((*peer, request)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!(target: "node::statesync", %peer, "snapshot requests queue full: dropped")
            }
        }
        true
    }
}

/// A snapshot held in memory: its top and every chunk's parts, encoded.
struct Held {
    top: SnapshotTop,
    chunks: Vec<Vec<Bytes>>,
    made: Instant,
    last_chunk: Option<Instant>,
    last_request: Instant,
}

struct Serving {
    store: Arc<Store>,
    held: Option<Held>,
    corrupt: Option<Damage>,
    /// The encoded size of a part at most ([`STATE_PART_BYTES_MAX`] but in tests).
    part_bytes_max: usize,
}

impl Serving {
    fn run(
        mut self,
        requests: Receiver<(PeerId, SyncRequest)>,
        send: impl Fn(PeerId, SyncResponse),
    ) {
        loop {
            let (peer, request) =
                match requests.recv_timeout(Duration::from_secs(1)) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.held.as_ref().is_some_and(|h| {
                            h.last_request.elapsed().as_secs() >= SNAPSHOT_IDLE_SECS
                        }) {
                            tracing::info!(target: "node::statesync", "dropped an idle snapshot");
                            self.held = None;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                };
            if let Some(response) = self.answer(request) {
                send(peer, response);
            }
        }
    }

    fn answer(&mut self, request: SyncRequest) -> Option<SyncResponse> {
        let now = Instant::now();
        match request {
            SyncRequest::SnapshotTop { resume } => {
                let keep = self.held.as_ref().is_some_and(|h| {
                    let busy = h
                        .last_chunk
                        .is_some_and(|at| at.elapsed() < Duration::from_millis(SNAPSHOT_BUSY_MS));
                    // A fresh snapshot of another block than the one asked for is not kept: the
                    // asker found the other validators at that block.
                    let fresh = h.made.elapsed() < Duration::from_millis(SNAPSHOT_FRESH_MS)
                        && (resume == 0 || !is_aligned(resume));
                    h.top.height == resume || fresh || busy
                });
                if !keep {
                    // Freed before the next one is read: never two in memory.
                    self.held = None;
                    match self.make(resume) {
                        Ok(held) => self.held = Some(held),
                        Err(err) => {
                            tracing::warn!(target: "node::statesync", %err, "cannot make a state snapshot");
                            return Some(SyncResponse::SnapshotGone { held: 0 });
                        }
                    }
                }
                let held = self.held.as_mut().expect("made above");
                held.last_request = now;
                Some(SyncResponse::SnapshotTop(Box::new(held.top.clone())))
            }
            SyncRequest::StatePart {
                height,
                depth,
                index,
                part,
            } => {
                let Some(held) = self
                    .held
                    .as_mut()
                    .filter(|h| (h.top.height, h.top.depth) == (height, depth))
                else {
                    let held = self.held.as_ref().map_or(0, |h| h.top.height);
                    return Some(SyncResponse::SnapshotGone { held });
                };
                let parts = held.chunks.get(index as usize)?;
                let bytes = parts.get(part as usize)?.clone();
                if part as usize + 1 == parts.len() {
                    metrics::counter!(CHUNKS_SERVED).increment(1);
                }
                held.last_chunk = Some(now);
                held.last_request = now;
                Some(SyncResponse::StatePart(bytes))
            }
            _ => None,
        }
    }

    /// Reads the snapshot of the first committed head at or past the next multiple of
    /// [`SNAPSHOT_ALIGN_BLOCKS`] (each validator then snapshots the same block, so a syncing node
    /// can take chunks from all of them), or past `wanted` ([`snapshot_target`]), at the depth
    /// for its size, each chunk in parts that fit a frame. The head is watched in read
    /// transactions a millisecond apart, and the snapshot read in the one that first sees the
    /// head there; a head that does not get there within [`SNAPSHOT_ALIGN_WAIT_MS`] (a stalled
    /// chain) is taken as it is.
    fn make(&self, wanted: u64) -> Result<Held, ServeError> {
        let started = Instant::now();
        let head = self.store.view(|r| r.head())??.ok_or(ServeError::Empty)?;
        let target = snapshot_target(head, wanted);
        let held = loop {
            let waited = started.elapsed() >= Duration::from_millis(SNAPSHOT_ALIGN_WAIT_MS);
            if let Some(held) = self.store.view(|r| -> Result<Option<Held>, ServeError> {
                let height = r.head()?.ok_or(ServeError::Empty)?;
                if height < target && !waited {
                    return Ok(None);
                }
                self.read(r, height).map(Some)
            })?? {
                break held;
            }
            thread::sleep(Duration::from_millis(1));
        };
        metrics::counter!(SNAPSHOTS_MADE).increment(1);
        let bytes: usize = held.chunks.iter().flatten().map(|p| p.len()).sum();
        let parts: usize = held.chunks.iter().map(Vec::len).sum();
        tracing::info!(target: "node::statesync", height = held.top.height, depth = held.top.depth, chunks = held.chunks.len(), parts, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "made a state snapshot to serve");
        Ok(held)
    }

    /// The snapshot of `r`, whose head is `height`, at the depth for its size: a chunk larger
    /// than a message goes in parts, so size never asks for a deeper cut.
    fn read(&self, r: &Reader<'_>, height: u64) -> Result<Held, ServeError> {
        let corrupt = self.corrupt;
        let depth = depth_for(r.snapshot_accounts()?);
        let (state_root, top) = r.snapshot_top(depth)?;
        let mut chunks = Vec::new();
        r.snapshot_chunks::<ServeError>(depth, |mut chunk| {
            if corrupt.is_some_and(|d| d.hits(chunk.index)) {
                damage(&mut chunk);
            }
            let parts = parts::cut(chunk, self.part_bytes_max)?
                .iter()
                .map(|part: &StatePart| {
                    let bytes = Bytes::from(alloy_rlp::encode(part));
                    assert!(bytes.len() <= self.part_bytes_max, "a part past its budget");
                    bytes
                })
                .collect();
            chunks.push(parts);
            Ok(())
        })?;
        // The headers back to BASE_ANCESTORS before the head, as far as this node has them (a
        // node that state-synced itself has only its base's and later ones).
        let mut headers = Vec::new();
        for number in (height.saturating_sub(BASE_ANCESTORS)..=height).rev() {
            match r.header(number)? {
                Some(header) => headers.push(header),
                None => break,
            }
        }
        headers.reverse();
        Ok(Held {
            top: SnapshotTop {
                height,
                state_root,
                depth,
                top,
                headers,
            },
            chunks,
            made: Instant::now(),
            last_chunk: None,
            last_request: Instant::now(),
        })
    }
}

/// The test-only damage ([`CORRUPT_CHUNK_ENV`]): the last slot of the last account with storage
/// one more (past the first part when that storage runs over several), else the first account's balance
/// one more, or an account added to an empty chunk.
fn damage(chunk: &mut StateChunk) {
    let one = alloy_primitives::U256::from(1);
    if let Some(slot) = chunk
        .accounts
        .iter_mut()
        .rev()
        .find_map(|a| a.storage.last_mut())
    {
        slot.value = slot.value.wrapping_add(one);
        return;
    }
    match chunk.accounts.first_mut() {
        Some(account) => account.balance += one,
        None => chunk
            .accounts
            .push(kestrel_storage::snapshot::ChunkAccount {
                address: alloy_primitives::Address::ZERO,
                nonce: 0,
                balance: alloy_primitives::U256::from(1),
                code: Bytes::new(),
                storage: Vec::new(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_of_the_block_asked_for_when_it_can_be() {
        let align = SNAPSHOT_ALIGN_BLOCKS;
        // Not asked for one, or asked for an unaligned one: the next aligned block.
        assert_eq!(snapshot_target(31, 0), 32);
        assert_eq!(snapshot_target(32, 0), 32);
        assert_eq!(snapshot_target(33, 0), 32 + align);
        assert_eq!(snapshot_target(31, 40), 32);
        // One block short of the aligned block when the others were past it: their block.
        assert_eq!(snapshot_target(31, 32 + align), 32 + align);
        assert_eq!(snapshot_target(32 + align, 32 + align), 32 + align);
        // Passed (its state is gone), or too far ahead to wait for: the next aligned block.
        assert_eq!(snapshot_target(33, 32), 32 + align);
        assert_eq!(snapshot_target(31, 32 + 3 * align), 32);
    }
}
