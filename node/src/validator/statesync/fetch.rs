//! Which chunk of a state snapshot is asked of which validator: requests spread over the
//! validators holding the snapshot within per-validator bounds, timed-out and dropped ones asked
//! of others, and the chunks checked ahead of the next one to write held in a bounded window.

use kestrel_net::PeerId;
use kestrel_storage::snapshot::StateChunk;
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

/// Chunk requests in flight per validator.
const CHUNKS_IN_FLIGHT_PER_PEER: usize = 4;
/// Least time between two requests to one validator: 25 a second, half its
/// `full_node_requests_per_s` (50), so that a sync is never cut off as a flood.
const REQUEST_SPACING_MS: u64 = 40;
/// A chunk not answered in this long is asked of another validator.
const CHUNK_TIMEOUT_MS: u64 = 10_000;
/// Validators that let this many chunk requests time out are not asked again in this round.
const TIMEOUTS_MAX: u32 = 3;
/// Checked chunks waiting for an earlier one before being written, at most: requests past it
/// wait, so memory stays bounded whatever order answers come in.
const CHUNKS_AHEAD_MAX: u32 = 256;

/// Which chunk is asked of whom: the chunks not yet asked, those in flight, and those checked
/// but waiting for an earlier one to be written.
pub(super) struct Fetch {
    /// Chunks to ask for, lowest first (requeued ones go to the front).
    queue: VecDeque<u32>,
    in_flight: BTreeMap<u32, (PeerId, Instant)>,
    pub(super) ready: BTreeMap<u32, StateChunk>,
    pub(super) written: u32,
    /// Validators holding the snapshot, with when each was last asked and its timeouts.
    pub(super) peers: BTreeMap<PeerId, (Option<Instant>, u32)>,
}

impl Fetch {
    pub(super) fn new(written: u32, count: u32, peers: Vec<PeerId>) -> Self {
        Self {
            queue: (written..count).collect(),
            in_flight: BTreeMap::new(),
            ready: BTreeMap::new(),
            written,
            peers: peers.into_iter().map(|p| (p, (None, 0))).collect(),
        }
    }

    /// The requests to send now: timed-out ones requeued, then for each validator with room
    /// (in flight, spacing) the next chunk, within [`CHUNKS_AHEAD_MAX`] of the last written.
    pub(super) fn requests(
        &mut self,
        now: Instant,
        dropped: &BTreeSet<PeerId>,
    ) -> Vec<(PeerId, u32)> {
        self.peers.retain(|p, _| !dropped.contains(p));
        let timed_out: Vec<(u32, PeerId)> = self
            .in_flight
            .iter()
            .filter(|(_, (_, at))| {
                now.duration_since(*at) >= Duration::from_millis(CHUNK_TIMEOUT_MS)
            })
            .map(|(i, (p, _))| (*i, *p))
            .collect();
        // Highest first, so that the queue's front is in order again.
        for (index, peer) in timed_out.into_iter().rev() {
            // Requeued already when its validator was passed over for an earlier timeout.
            if self.in_flight.remove(&index).is_none() {
                continue;
            }
            self.queue.push_front(index);
            if let Some((_, timeouts)) = self.peers.get_mut(&peer) {
                *timeouts += 1;
                if *timeouts >= TIMEOUTS_MAX {
                    tracing::info!(target: "node::statesync", %peer, "a validator let chunk requests time out: not asked again this round");
                    self.forget(&peer);
                }
            }
        }
        let mut out = Vec::new();
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            let busy = self.in_flight.values().filter(|(p, _)| *p == peer).count();
            let (last, _) = self.peers[&peer];
            let spaced = last.is_none_or(|at| {
                now.duration_since(at) >= Duration::from_millis(REQUEST_SPACING_MS)
            });
            if busy >= CHUNKS_IN_FLIGHT_PER_PEER || !spaced {
                continue;
            }
            let Some(&index) = self.queue.front() else {
                break;
            };
            if index >= self.written + CHUNKS_AHEAD_MAX {
                break;
            }
            self.queue.pop_front();
            self.in_flight.insert(index, (peer, now));
            self.peers.get_mut(&peer).expect("listed").0 = Some(now);
            out.push((peer, index));
        }
        out
    }

    pub(super) fn is_pending(&self, peer: &PeerId, index: u32) -> bool {
        self.in_flight.get(&index).is_some_and(|(p, _)| p == peer)
    }

    pub(super) fn received(&mut self, peer: &PeerId, chunk: StateChunk) {
        debug_assert!(self.is_pending(peer, chunk.index));
        self.in_flight.remove(&chunk.index);
        self.ready.insert(chunk.index, chunk);
    }

    /// Stops asking `peer`; what it had in flight goes back to the queue.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        let mine: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, (p, _))| p == peer)
            .map(|(i, _)| *i)
            .collect();
        for index in mine.into_iter().rev() {
            self.in_flight.remove(&index);
            self.queue.push_front(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u8) -> Vec<PeerId> {
        (1..=n)
            .map(|i| {
                let key = secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap();
                PeerId::from(secp256k1::PublicKey::from_secret_key_global(&key))
            })
            .collect()
    }

    fn chunk(index: u32) -> StateChunk {
        StateChunk {
            depth: 1,
            index,
            accounts: Vec::new(),
        }
    }

    /// Requests spread over the validators within their in-flight and spacing bounds; a dropped
    /// validator's chunks go back to the front of the queue for the others, and a validator that
    /// lets requests time out is passed over.
    #[test]
    fn chunks_are_spread_requeued_and_bounded() {
        let peers = peers(2);
        let mut fetch = Fetch::new(0, 16, peers.clone());
        let t0 = Instant::now();
        let none = BTreeSet::new();
        let first = fetch.requests(t0, &none);
        assert_eq!(first.len(), 2, "one each: then the spacing holds them");
        assert!(fetch.requests(t0, &none).is_empty());
        let mut at = t0;
        for _ in 0..10 {
            at += Duration::from_millis(REQUEST_SPACING_MS);
            fetch.requests(at, &none);
        }
        assert_eq!(
            fetch.in_flight.len(),
            2 * CHUNKS_IN_FLIGHT_PER_PEER,
            "in flight per validator bounded"
        );
        // A chunk answered by another validator than the one asked is not taken.
        let (index, (asked, _)) = fetch
            .in_flight
            .iter()
            .next()
            .map(|(i, p)| (*i, *p))
            .unwrap();
        let other = peers.iter().find(|p| **p != asked).unwrap();
        assert!(!fetch.is_pending(other, index));
        fetch.received(&asked, chunk(index));
        assert!(fetch.ready.contains_key(&index));

        // The other validator is dropped (a bad chunk): its chunks are asked again, lowest first.
        let theirs: Vec<u32> = fetch
            .in_flight
            .iter()
            .filter(|(_, (p, _))| p == other)
            .map(|(i, _)| *i)
            .collect();
        fetch.forget(other);
        assert_eq!(
            fetch
                .queue
                .iter()
                .take(theirs.len())
                .copied()
                .collect::<Vec<_>>(),
            theirs
        );
        let dropped = BTreeSet::from([*other]);
        at += Duration::from_millis(REQUEST_SPACING_MS);
        let next = fetch.requests(at, &dropped);
        assert!(next.iter().all(|(p, _)| *p == asked), "{next:?}");

        // Unanswered requests time out and are asked again; TIMEOUTS_MAX of them and the
        // validator is not asked again.
        let later = at + Duration::from_millis(CHUNK_TIMEOUT_MS);
        fetch.requests(later, &dropped);
        assert!(
            fetch.peers.is_empty(),
            "the only validator left let its requests time out"
        );
        assert!(fetch.in_flight.is_empty());
        assert_eq!(fetch.queue.len() + fetch.ready.len(), 16);
    }

    /// A chunk is never asked for more than CHUNKS_AHEAD_MAX past the last one written, so the
    /// chunks held in memory waiting for an earlier one stay bounded.
    #[test]
    fn fetching_stays_within_a_window_of_the_written_chunks() {
        let mut fetch = Fetch::new(0, 4 * CHUNKS_AHEAD_MAX, peers(4));
        let mut at = Instant::now();
        let none = BTreeSet::new();
        for _ in 0..2 * CHUNKS_AHEAD_MAX {
            for (peer, index) in fetch.requests(at, &none) {
                fetch.received(&peer, chunk(index));
            }
            at += Duration::from_millis(REQUEST_SPACING_MS);
        }
        assert_eq!(fetch.ready.len() as u32, CHUNKS_AHEAD_MAX);
        assert_eq!(fetch.ready.keys().max(), Some(&(CHUNKS_AHEAD_MAX - 1)));
    }
}
