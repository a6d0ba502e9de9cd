//! Per-peer bounded outbound queue with two lanes.
//!
//! - Consensus lane, **drop-oldest**: a newer proposal, vote or timeout supersedes older ones, and
//!   consensus recovers lost messages through its own timeouts; the freshest messages are the ones
//!   worth the bandwidth when a peer falls behind. Drained first, so a transaction flood cannot
//!   delay a vote.
//! - Bulk lane (tx forwarding, sync), **drop-newest**: the refused message stays with the sender
//!   (a transaction is still in the local pool, a sync request is retried), `send` returns
//!   `QueueFull` so the caller knows, and what is already queued is not churned.
//!
//! The queue outlives connections: messages sent while a peer is down go out when it reconnects.
//! Only the connection that currently owns the queue may drain it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use crate::error::SendError;
use crate::frame::Kind;
use crate::metrics::{FULL_NODES_LABEL, OUTBOUND_DROPPED_TOTAL, OUTBOUND_QUEUE_DEPTH};
use crate::peer::{PeerClass, PeerId};

pub(crate) struct PeerQueue {
    peer: PeerId,
    consensus_max: usize,
    bulk_max: usize,
    state: Mutex<State>,
    /// None for a full node's queue: one gauge per connection would be an unbounded label.
    depth: Option<Gauge>,
    dropped: [Counter; Kind::ALL.len()],
}

struct State {
    consensus: VecDeque<Bytes>,
    bulk: VecDeque<(Kind, Bytes)>,
    /// Connection id allowed to drain the queue; 0 when none is.
    owner: u64,
    waker: Option<Waker>,
    closed: bool,
}

impl PeerQueue {
    pub(crate) fn new(
        peer: PeerId,
        class: PeerClass,
        consensus_max: usize,
        bulk_max: usize,
    ) -> Self {
        let label = match class {
            PeerClass::Validator => peer.to_string(),
            PeerClass::FullNode => FULL_NODES_LABEL.to_string(),
        };
        Self {
            peer,
            consensus_max,
            bulk_max,
            state: Mutex::new(State {
                consensus: VecDeque::new(),
                bulk: VecDeque::new(),
                owner: 0,
                waker: None,
                closed: false,
            }),
            depth: (class == PeerClass::Validator)
                .then(|| metrics::gauge!(OUTBOUND_QUEUE_DEPTH, "peer" => label.clone())),
            dropped: Kind::ALL.map(|kind| {
                metrics::counter!(OUTBOUND_DROPPED_TOTAL, "peer" => label.clone(), "kind" => kind.as_str())
            }),
        }
    }

    pub(crate) fn push(&self, kind: Kind, payload: Bytes) -> Result<(), SendError> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(SendError::Shutdown);
        }
        if kind == Kind::Consensus {
            if state.consensus.len() == self.consensus_max {
                state.consensus.pop_front();
                self.dropped[kind as usize].increment(1);
            }
            state.consensus.push_back(payload);
        } else {
            if state.bulk.len() == self.bulk_max {
                self.dropped[kind as usize].increment(1);
                return Err(SendError::QueueFull(self.peer));
            }
            state.bulk.push_back((kind, payload));
        }
        self.set_depth(&state);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn set_depth(&self, state: &State) {
        if let Some(depth) = &self.depth {
            depth.set((state.consensus.len() + state.bulk.len()) as f64);
        }
    }

    /// Hands the queue to connection `conn_id`; a previous owner's writer sees it and stops.
    pub(crate) fn set_owner(&self, conn_id: u64) {
        self.change_and_wake(|state| state.owner = conn_id);
    }

    /// Takes the queue back from `conn_id` if it still owns it; its writer stops after the
    /// batch in flight.
    pub(crate) fn release(&self, conn_id: u64) {
        self.change_and_wake(|state| {
            if state.owner == conn_id {
                state.owner = 0;
            }
        });
    }

    /// Refuses further sends and stops the writer.
    pub(crate) fn close(&self) {
        self.change_and_wake(|state| state.closed = true);
    }

    /// Applies `change` and wakes the waiting writer so it sees it (a spurious wake only makes
    /// it look again).
    fn change_and_wake(&self, change: impl FnOnce(&mut State)) {
        let waker = {
            let mut state = self.state.lock();
            change(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for messages and takes them, consensus lane first, up to about `bytes_max` of
    /// payload (at least one message). `None` once `conn_id` no longer owns the queue.
    pub(crate) async fn next_batch(
        &self,
        conn_id: u64,
        bytes_max: usize,
    ) -> Option<Vec<(Kind, Bytes)>> {
        poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.closed || state.owner != conn_id {
                return Poll::Ready(None);
            }
            if state.consensus.is_empty() && state.bulk.is_empty() {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while bytes < bytes_max {
                let next = match state.consensus.pop_front() {
                    Some(payload) => (Kind::Consensus, payload),
                    None => match state.bulk.pop_front() {
                        Some(item) => item,
                        None => break,
                    },
                };
                bytes += next.1.len();
                batch.push(next);
            }
            self.set_depth(&state);
            Poll::Ready(Some(batch))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use secp256k1::{PublicKey, SecretKey};

    use super::*;

    fn queue(consensus_max: usize, bulk_max: usize) -> PeerQueue {
        let key = PublicKey::from_secret_key_global(&SecretKey::from_byte_array(&[7; 32]).unwrap());
        PeerQueue::new(
            PeerId::from(key),
            PeerClass::Validator,
            consensus_max,
            bulk_max,
        )
    }

    fn drain(queue: &PeerQueue) -> Vec<(Kind, Bytes)> {
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(queue.next_batch(1, usize::MAX)).unwrap()
    }

    #[test]
    fn consensus_drops_oldest_bulk_drops_newest_consensus_first() {
        let q = queue(2, 2);
        q.set_owner(1);
        for i in 0..4u8 {
            q.push(Kind::Consensus, Bytes::from(vec![i])).unwrap();
        }
        q.push(Kind::TxForward, Bytes::from_static(b"a")).unwrap();
        q.push(Kind::SyncRequest, Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            q.push(Kind::TxForward, Bytes::from_static(b"c")),
            Err(SendError::QueueFull(q.peer))
        );
        let got = drain(&q);
        assert_eq!(
            got,
            vec![
                (Kind::Consensus, Bytes::from(vec![2])),
                (Kind::Consensus, Bytes::from(vec![3])),
                (Kind::TxForward, Bytes::from_static(b"a")),
                (Kind::SyncRequest, Bytes::from_static(b"b")),
            ]
        );
    }

    #[test]
    fn closed_queue_refuses_sends() {
        let q = queue(2, 2);
        q.close();
        assert_eq!(
            q.push(Kind::Consensus, Bytes::new()),
            Err(SendError::Shutdown)
        );
    }
}
