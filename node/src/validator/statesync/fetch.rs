//! Which chunk of a state snapshot is asked of which validator: requests spread over the
//! validators holding the snapshot within per-validator bounds, timed-out and dropped ones asked
//! of others, and the chunks checked ahead of the next one to write held in a bounded window.
//!
//! A chunk larger than a message comes in parts (`snapshot::parts`), asked one after the other
//! of the validator that served its part 0: only the whole chunk can be checked against its
//! subtrie hash, so a chunk put together from two validators' parts could not say which lied.
//! Its parts are put together as they come (`Assembly`) and the chunk held, in flight, until
//! its last part; a time-out or a dropped validator sends the whole chunk back to the queue.

use kestrel_net::PeerId;
use kestrel_storage::snapshot::{
    StateChunk,
    parts::{Assembly, StatePart},
    verify::SnapshotError,
};
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

/// Chunks in flight per validator (each held whole until its last part).
const CHUNKS_IN_FLIGHT_PER_PEER: usize = 4;
/// Least time between two requests to one validator: 25 a second, half its
/// `full_node_requests_per_s` (50), so that a sync is never cut off as a flood.
const REQUEST_SPACING_MS: u64 = 40;
/// A part not answered in this long sends its chunk to another validator.
const CHUNK_TIMEOUT_MS: u64 = 10_000;
/// Validators that let this many chunk requests time out are not asked again in this round.
const TIMEOUTS_MAX: u32 = 3;
/// Checked chunks waiting for an earlier one before being written, at most: requests past it
/// wait, so memory stays bounded whatever order answers come in.
const CHUNKS_AHEAD_MAX: u32 = 256;

/// A chunk asked of one validator: the parts in so far, and whether its next part is asked.
struct InFlight {
    peer: PeerId,
    /// When its last part was asked or answered.
    at: Instant,
    assembly: Assembly,
    /// The next part is asked (false: it is to be asked when the validator has room).
    asked: bool,
}

/// Which chunk is asked of whom: the chunks not yet asked, those in flight, and those checked
/// but waiting for an earlier one to be written.
pub(super) struct Fetch {
    depth: u8,
    /// Chunks to ask for, lowest first (requeued ones go to the front).
    queue: VecDeque<u32>,
    in_flight: BTreeMap<u32, InFlight>,
    pub(super) ready: BTreeMap<u32, StateChunk>,
    pub(super) written: u32,
    /// Validators holding the snapshot, with when each was last asked and its timeouts.
    pub(super) peers: BTreeMap<PeerId, (Option<Instant>, u32)>,
}

impl Fetch {
    pub(super) fn new(depth: u8, written: u32, count: u32, peers: Vec<PeerId>) -> Self {
        Self {
            depth,
            queue: (written..count).collect(),
            in_flight: BTreeMap::new(),
            ready: BTreeMap::new(),
            written,
            peers: peers.into_iter().map(|p| (p, (None, 0))).collect(),
        }
    }

    /// The requests to send now, (validator, chunk, part): timed-out ones requeued, then for
    /// each validator with room (spacing) the next part of a chunk it is serving, or else (in
    /// flight) the next chunk, within [`CHUNKS_AHEAD_MAX`] of the last written.
    pub(super) fn requests(
        &mut self,
        now: Instant,
        dropped: &BTreeSet<PeerId>,
    ) -> Vec<(PeerId, u32, u32)> {
        self.peers.retain(|p, _| !dropped.contains(p));
        let timed_out: Vec<(u32, PeerId)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.at) >= Duration::from_millis(CHUNK_TIMEOUT_MS))
            .map(|(i, f)| (*i, f.peer))
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
            let (last, _) = self.peers[&peer];
            let spaced = last.is_none_or(|at| {
                now.duration_since(at) >= Duration::from_millis(REQUEST_SPACING_MS)
            });
            if !spaced {
                continue;
            }
            // A chunk under way first: it is held in memory until its last part.
            let next_part = self
                .in_flight
                .iter_mut()
                .find(|(_, f)| f.peer == peer && !f.asked);
            if let Some((&index, f)) = next_part {
                f.asked = true;
                f.at = now;
                self.peers.get_mut(&peer).expect("listed").0 = Some(now);
                out.push((peer, index, f.assembly.next_part()));
                continue;
            }
            let busy = self.in_flight.values().filter(|f| f.peer == peer).count();
            if busy >= CHUNKS_IN_FLIGHT_PER_PEER {
                continue;
            }
            let Some(&index) = self.queue.front() else {
                continue;
            };
            if index >= self.written + CHUNKS_AHEAD_MAX {
                continue;
            }
            self.queue.pop_front();
            let assembly = Assembly::new(self.depth, index);
            self.in_flight.insert(
                index,
                InFlight {
                    peer,
                    at: now,
                    assembly,
                    asked: true,
                },
            );
            self.peers.get_mut(&peer).expect("listed").0 = Some(now);
            out.push((peer, index, 0));
        }
        out
    }

    /// Whether `part` is the part asked of `peer` for its chunk.
    pub(super) fn is_pending(&self, peer: &PeerId, part: &StatePart) -> bool {
        self.in_flight
            .get(&part.index)
            .is_some_and(|f| f.peer == *peer && f.asked && f.assembly.next_part() == part.part)
    }

    /// Takes a part [`Self::is_pending`] said was asked: the whole chunk, not yet checked, once
    /// its last part is in (no longer in flight then). A misframed part is an error, and its
    /// chunk stays in flight until its validator is forgotten.
    pub(super) fn received(
        &mut self,
        part: StatePart,
        now: Instant,
    ) -> Result<Option<StateChunk>, SnapshotError> {
        let index = part.index;
        let f = self.in_flight.get_mut(&index).expect("pending");
        let whole = f.assembly.add(part)?;
        if whole.is_some() {
            self.in_flight.remove(&index);
        } else {
            f.asked = false;
            f.at = now;
        }
        Ok(whole)
    }

    /// A whole chunk that failed its check goes back to the front of the queue (its validator
    /// is forgotten by the caller).
    pub(super) fn requeue(&mut self, index: u32) {
        self.queue.push_front(index);
    }

    /// Stops asking `peer`; what it had in flight, parts in or not, goes back to the queue.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        let mine: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.peer == *peer)
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

    fn part(index: u32, part: u32, parts: u32) -> StatePart {
        StatePart {
            depth: 1,
            index,
            part,
            parts,
            continues: false,
            accounts: Vec::new(),
        }
    }

    /// Requests spread over the validators within their in-flight and spacing bounds; a dropped
    /// validator's chunks go back to the front of the queue for the others, and a validator that
    /// lets requests time out is passed over.
    #[test]
    fn chunks_are_spread_requeued_and_bounded() {
        let peers = peers(2);
        let mut fetch = Fetch::new(1, 0, 16, peers.clone());
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
        let (index, asked) = fetch
            .in_flight
            .iter()
            .next()
            .map(|(i, f)| (*i, f.peer))
            .unwrap();
        let other = peers.iter().find(|p| **p != asked).unwrap();
        assert!(!fetch.is_pending(other, &part(index, 0, 1)));
        assert!(fetch.is_pending(&asked, &part(index, 0, 1)));
        let chunk = fetch.received(part(index, 0, 1), at).unwrap().unwrap();
        assert_eq!(chunk.index, index);
        assert!(!fetch.in_flight.contains_key(&index));

        // The other validator is dropped (a bad chunk): its chunks are asked again, lowest first.
        let theirs: Vec<u32> = fetch
            .in_flight
            .iter()
            .filter(|(_, f)| f.peer == *other)
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
        assert!(next.iter().all(|(p, _, _)| *p == asked), "{next:?}");

        // Unanswered requests time out and are asked again; TIMEOUTS_MAX of them and the
        // validator is not asked again.
        let later = at + Duration::from_millis(CHUNK_TIMEOUT_MS);
        fetch.requests(later, &dropped);
        assert!(
            fetch.peers.is_empty(),
            "the only validator left let its requests time out"
        );
        assert!(fetch.in_flight.is_empty());
        assert_eq!(fetch.queue.len(), 15, "all but the one received");
    }

    /// A chunk in parts: every part asked of the validator that served part 0, one after the
    /// other within its spacing, never of another; the chunk comes out whole at its last part.
    /// A part that does not come in time sends the whole chunk back to the queue, parts and all.
    #[test]
    fn a_chunk_in_parts_comes_from_one_validator() {
        let peers = peers(2);
        let mut fetch = Fetch::new(1, 0, 1, peers.clone());
        let none = BTreeSet::new();
        let mut at = Instant::now();
        let first = fetch.requests(at, &none);
        assert_eq!(first.len(), 1, "one chunk");
        let (peer, index, 0) = first[0] else {
            panic!("{first:?}")
        };
        let other = peers.iter().find(|p| **p != peer).unwrap();
        for k in 0..3 {
            assert!(fetch.is_pending(&peer, &part(index, k, 4)));
            assert!(!fetch.is_pending(other, &part(index, k, 4)));
            assert!(!fetch.is_pending(&peer, &part(index, k + 1, 4)));
            assert!(fetch.received(part(index, k, 4), at).unwrap().is_none());
            assert!(
                fetch.requests(at, &none).is_empty(),
                "spacing, and nothing else to ask"
            );
            at += Duration::from_millis(REQUEST_SPACING_MS);
            assert_eq!(fetch.requests(at, &none), vec![(peer, index, k + 1)]);
        }
        // A part out of order is a framing error; the chunk stays for its validator's drop.
        assert!(matches!(
            fetch.received(part(index, 2, 4), at),
            Err(SnapshotError::PartOrder { .. })
        ));
        let mut again = Fetch::new(1, 0, 1, peers.clone());
        let t0 = Instant::now();
        let (peer, index, _) = again.requests(t0, &none)[0];
        again.received(part(index, 0, 3), t0).unwrap();
        let late = t0 + Duration::from_millis(CHUNK_TIMEOUT_MS);
        let retry = again.requests(late, &none);
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].1, index);
        assert_eq!(retry[0].2, 0, "the whole chunk again, from part 0");
        assert!(again.peers.contains_key(&peer), "one timeout is not a drop");
        let whole = (0..3).fold(None, |_, k| {
            again.received(part(index, k, 3), late).unwrap()
        });
        assert_eq!(whole.map(|c| c.index), Some(index));
    }

    /// A chunk is never asked for more than CHUNKS_AHEAD_MAX past the last one written, so the
    /// chunks held in memory waiting for an earlier one stay bounded.
    #[test]
    fn fetching_stays_within_a_window_of_the_written_chunks() {
        let mut fetch = Fetch::new(1, 0, 4 * CHUNKS_AHEAD_MAX, peers(4));
        let mut at = Instant::now();
        let none = BTreeSet::new();
        for _ in 0..2 * CHUNKS_AHEAD_MAX {
            for (_, index, _) in fetch.requests(at, &none) {
                let chunk = fetch.received(part(index, 0, 1), at).unwrap().unwrap();
                fetch.ready.insert(index, chunk);
            }
            at += Duration::from_millis(REQUEST_SPACING_MS);
        }
        assert_eq!(fetch.ready.len() as u32, CHUNKS_AHEAD_MAX);
        assert_eq!(fetch.ready.keys().max(), Some(&(CHUNKS_AHEAD_MAX - 1)));
    }
}
