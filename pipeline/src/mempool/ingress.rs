//! The ingress stage: raw transactions from RPC are decoded, their senders recovered (~30 µs
//! each, so not on RPC threads), validated against the latest state and admitted to the pool.
//! Transactions other validators forwarded come through a queue of their own, and a batch takes
//! at least half its room from our RPC's queue: in a network every validator receives every
//! transaction forwarded, and in one queue a client's `eth_sendRawTransaction` waited behind
//! them (3.0–3.7 s a 1,000-transaction batch on the three validators not taking most of the
//! load, 0.2 s on the one that was, so a load generator spread over the four RPCs sent 81 % to
//! that one).

use super::{PoolError, TxPool, Validator, recover_reusing};
use crate::{state::LatestState, status::ChainStatus};
use alloy_primitives::{B256, Bytes};
use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use kestrel_types::{DecodedTx, RecoveredTx};
use parking_lot::{Condvar, Mutex};
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

/// Most raw transactions waiting for recovery in each queue (RPC's, forwarded); beyond it
/// `eth_sendRawTransaction` answers busy.
pub const INGRESS_QUEUE_MAX: usize = 65_536;
/// Requests one worker validates under one state snapshot.
const INGRESS_BATCH_MAX: usize = 512;
/// Each worker refreshes the pool size gauges at most this often: counting walks every sender
/// under the pool lock, which under load (100k senders) costs more than the batch itself.
const POOL_GAUGES_INTERVAL: Duration = Duration::from_millis(250);

struct Request {
    raw: Bytes,
    /// Another node forwarded it (not to be forwarded again).
    forwarded: bool,
    reply: oneshot::Sender<Result<B256, PoolError>>,
}

/// The submitting side of the ingress stage: RPC's queue and the forwarded transactions'.
#[derive(Clone)]
pub struct IngressHandle {
    local: Sender<Request>,
    forwarded: Sender<Request>,
}

impl IngressHandle {
    /// Submits a raw EIP-2718 transaction from our RPC; resolves once it is admitted or refused.
    pub async fn submit(&self, raw: Bytes) -> Result<B256, PoolError> {
        Self::submit_to(&self.local, false, raw).await
    }

    /// Submits a transaction another validator forwarded.
    pub async fn submit_forwarded(&self, raw: Bytes) -> Result<B256, PoolError> {
        Self::submit_to(&self.forwarded, true, raw).await
    }

    /// Submits raw transactions from our RPC together (a batch's `eth_sendRawTransaction`
    /// calls): all queued at once, then answered in order, each as [`Self::submit`] answers it.
    /// A batch of calls each awaiting its own answer cost the RPC thread about as much as
    /// ingress's work beside the signature (BENCHMARKS.md).
    pub async fn submit_all(&self, raws: Vec<Bytes>) -> Vec<Result<B256, PoolError>> {
        Self::submit_all_to(&self.local, false, raws).await
    }

    /// [`Self::submit_all`] for transactions other validators forwarded.
    pub async fn submit_all_forwarded(&self, raws: Vec<Bytes>) -> Vec<Result<B256, PoolError>> {
        Self::submit_all_to(&self.forwarded, true, raws).await
    }

    async fn submit_all_to(
        queue: &Sender<Request>,
        forwarded: bool,
        raws: Vec<Bytes>,
    ) -> Vec<Result<B256, PoolError>> {
        let queued: Vec<_> = raws
            .into_iter()
            .map(|raw| Self::enqueue(queue, forwarded, raw))
            .collect();
        Self::queue_depth(queue, forwarded);
        let mut answers = Vec::with_capacity(queued.len());
        for answer in queued {
            answers.push(match answer {
                Ok(rx) => rx.await.unwrap_or(Err(PoolError::ShuttingDown)),
                Err(refused) => Err(refused),
            });
        }
        answers
    }

    async fn submit_to(
        queue: &Sender<Request>,
        forwarded: bool,
        raw: Bytes,
    ) -> Result<B256, PoolError> {
        let rx = Self::enqueue(queue, forwarded, raw)?;
        Self::queue_depth(queue, forwarded);
        rx.await.unwrap_or(Err(PoolError::ShuttingDown))
    }

    /// Queues one transaction; its answer comes on the receiver.
    fn enqueue(
        queue: &Sender<Request>,
        forwarded: bool,
        raw: Bytes,
    ) -> Result<oneshot::Receiver<Result<B256, PoolError>>, PoolError> {
        let (reply, rx) = oneshot::channel();
        match queue.try_send(Request {
            raw,
            forwarded,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::ShuttingDown),
        }
    }

    fn queue_depth(queue: &Sender<Request>, forwarded: bool) {
        let source = if forwarded { "forwarded" } else { "rpc" };
        metrics::gauge!("kestrel_ingress_queue_depth", "source" => source).set(queue.len() as f64);
    }
}

/// The workers' side of the two queues.
#[derive(Clone)]
struct Queues {
    local: Receiver<Request>,
    forwarded: Receiver<Request>,
}

impl Queues {
    /// The next request, our RPC's first; blocks while both queues are empty. `None` once both
    /// are closed and drained.
    fn first(&self) -> Option<Request> {
        loop {
            let local = self.local.try_recv();
            if let Ok(req) = local {
                return Some(req);
            }
            let forwarded = self.forwarded.try_recv();
            if let Ok(req) = forwarded {
                return Some(req);
            }
            let (local_open, forwarded_open) = (
                !local.is_err_and(|e| e.is_disconnected()),
                !forwarded.is_err_and(|e| e.is_disconnected()),
            );
            if !local_open && !forwarded_open {
                return None;
            }
            let mut select = Select::new();
            if local_open {
                select.recv(&self.local);
            }
            if forwarded_open {
                select.recv(&self.forwarded);
            }
            select.ready();
        }
    }

    /// A batch of up to `max` after `first`: half its room from our RPC's queue, the rest from
    /// the forwarded queue, then from ours again if that left room. Neither source starves.
    fn fill(&self, first: Request, max: usize) -> Vec<Request> {
        let mut batch = vec![first];
        batch.extend(self.local.try_iter().take((max / 2).saturating_sub(1)));
        batch.extend(self.forwarded.try_iter().take(max - batch.len()));
        batch.extend(self.local.try_iter().take(max - batch.len()));
        batch
    }
}

/// Batches reach the pool in the order they were taken from the queue. Sender recovery runs on
/// every worker at once, but a client's transactions split across two workers' batches must not
/// be admitted out of order: the later nonces would wait behind a gap, and at the sender's limit
/// the gap-filling nonce would evict them although they were accepted.
#[derive(Default)]
struct Turns {
    /// Batches taken from the queue; held while taking one, so numbers follow queue order.
    taken: Mutex<u64>,
    /// Batches admitted to the pool.
    admitted: Mutex<u64>,
    turn: Condvar,
}

/// A taken batch's place in the admission order. Dropped unused (its worker panicked before
/// admitting), it still takes and passes its turn, so later batches are not held forever.
struct Ticket<'a> {
    turns: &'a Turns,
    seq: Option<u64>,
}

/// A worker's turn to admit its batch; the next batch's turn comes when it is dropped, also if
/// admission panicked.
struct Turn<'a> {
    turns: &'a Turns,
    admitted: parking_lot::MutexGuard<'a, u64>,
}

impl Turns {
    /// Takes the next batch from `queues` with its ticket; `None` once they are closed.
    fn take(&self, queues: &Queues) -> Option<(Ticket<'_>, Vec<Request>)> {
        let mut taken = self.taken.lock();
        let batch = queues.fill(queues.first()?, INGRESS_BATCH_MAX);
        *taken += 1;
        let ticket = Ticket {
            turns: self,
            seq: Some(*taken - 1),
        };
        Some((ticket, batch))
    }

    fn wait(&self, seq: u64) -> Turn<'_> {
        let mut admitted = self.admitted.lock();
        while *admitted != seq {
            self.turn.wait(&mut admitted);
        }
        Turn {
            turns: self,
            admitted,
        }
    }
}

impl<'a> Ticket<'a> {
    /// Waits until every batch taken before this one is admitted.
    fn turn(mut self) -> Turn<'a> {
        let seq = self.seq.take().expect("a ticket is used once");
        self.turns.wait(seq)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            drop(self.turns.wait(seq));
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.admitted += 1;
        self.turns.turn.notify_all();
    }
}

pub struct IngressStage {
    pub pool: Arc<TxPool>,
    pub validator: Validator,
    pub state: LatestState,
    pub status: Arc<ChainStatus>,
}

impl IngressStage {
    /// Starts `workers` threads; they exit once every handle is dropped and the queue is drained.
    pub fn spawn(self, workers: usize) -> (IngressHandle, Vec<thread::JoinHandle<()>>) {
        let (local, local_rx) = crossbeam_channel::bounded(INGRESS_QUEUE_MAX);
        let (forwarded, forwarded_rx) = crossbeam_channel::bounded(INGRESS_QUEUE_MAX);
        let queues = Queues {
            local: local_rx,
            forwarded: forwarded_rx,
        };
        let stage = Arc::new(self);
        let turns = Arc::new(Turns::default());
        let threads = (0..workers.max(1))
            .map(|i| {
                let (stage, queues, turns) = (stage.clone(), queues.clone(), turns.clone());
                thread::Builder::new()
                    .name(format!("ingress-{i}"))
                    .spawn(move || stage.run(&queues, &turns))
                    .expect("spawn ingress thread")
            })
            .collect();
        (IngressHandle { local, forwarded }, threads)
    }

    fn run(&self, queues: &Queues, turns: &Turns) {
        let mut gauges_at: Option<Instant> = None;
        while let Some((ticket, batch)) = turns.take(queues) {
            let started = Instant::now();
            let n = batch.len();
            // Stateless work first, outside the state snapshot.
            let base_fee = ChainStatus::get(&self.status.next_base_fee);
            let now_secs = unix_secs();
            let now = Instant::now();
            // Refused before the database write fails: the blocks already ordered still commit.
            let disk_low = self.status.disk_low();
            let (results, recoveries) = recover_batch(
                &self.validator,
                &self.pool,
                batch.iter().map(|req| req.raw.clone()),
                disk_low,
                now_secs,
                base_fee,
            );
            metrics::counter!(crate::SENDER_RECOVERIES, "path" => "ingress")
                .increment(recoveries as u64);
            let recovered: Vec<(Request, Result<RecoveredTx, PoolError>)> =
                batch.into_iter().zip(results).collect();
            let turn = ticket.turn();
            let admitted = self.state.with_view(|view| {
                recovered
                    .into_iter()
                    .map(|(req, result)| {
                        let result = result.and_then(|tx| {
                            let account = view
                                .account(tx.sender())
                                .map_err(|e| PoolError::Internal(e.to_string()))?;
                            let state_nonce = self.validator.check_state(&tx, account)?;
                            // The pool knows of in-flight transactions the state does not show yet.
                            if self
                                .pool
                                .tracked_next_nonce(tx.sender())
                                .is_some_and(|n| tx.nonce() < n)
                            {
                                return Err(PoolError::NonceTooLow);
                            }
                            if req.forwarded {
                                self.pool.insert_forwarded(tx, state_nonce, now)
                            } else {
                                self.pool.insert(tx, state_nonce, now)
                            }
                        });
                        (req.reply, result)
                    })
                    .collect::<Vec<_>>()
            });
            drop(turn);
            match admitted {
                Ok(replies) => {
                    for (reply, result) in replies {
                        if let Err(err) = &result {
                            metrics::counter!("kestrel_mempool_rejected_total", "reason" => reason_label(err)).increment(1);
                        }
                        let _ = reply.send(result);
                    }
                }
                Err(err) => tracing::error!(target: "pipeline::ingress", %err, "state read failed"),
            }
            metrics::counter!("kestrel_ingress_txs_total").increment(n as u64);
            metrics::histogram!("kestrel_ingress_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            if gauges_at.is_none_or(|at| at.elapsed() >= POOL_GAUGES_INTERVAL) {
                gauges_at = Some(Instant::now());
                let size = self.pool.size();
                metrics::gauge!("kestrel_mempool_pending_txs").set(size.pending as f64);
                metrics::gauge!("kestrel_mempool_queued_txs").set(size.queued as f64);
            }
        }
    }
}

/// A batch's transactions decoded, checked (`decode_checked`) and with their senders
/// (`recover_reusing`), in order, and how many senders were recovered. One the pool knows
/// (`TxPool::known_senders`: pooled, in flight or recovered lately) takes its sender from the
/// pool instead of ~30 µs of secp256k1: its hash is the keccak of the very bytes the pool's
/// copy was recovered from (the decoder accepts only canonical encodings), signature included,
/// so it is that transaction with that sender. It is then admitted or refused as any other (the
/// pool answers `already known` for one it holds; one refused earlier for its state, e.g.
/// unfunded, may be admitted now). Under load these are mostly forwarded copies of transactions
/// this validator first met in another leader's proposal. The senders recovered here are
/// remembered for the copies still to come.
pub(super) fn recover_batch(
    validator: &Validator,
    pool: &TxPool,
    raws: impl Iterator<Item = Bytes>,
    disk_low: bool,
    now_secs: u64,
    base_fee: u64,
) -> (Vec<Result<RecoveredTx, PoolError>>, usize) {
    let decoded: Vec<Result<DecodedTx, PoolError>> = raws
        .map(|raw| {
            if disk_low {
                return Err(PoolError::DiskLow);
            }
            decode_checked(validator, raw, now_secs, base_fee)
        })
        .collect();
    // The decoded ones go to recovery; each refused one keeps its place.
    let mut valid = Vec::with_capacity(decoded.len());
    let places: Vec<Result<(), PoolError>> = decoded
        .into_iter()
        .map(|tx| tx.map(|tx| valid.push(tx)))
        .collect();
    let (recovered, recoveries) = recover_reusing(valid, Some(pool));
    let mut recovered = recovered.into_iter();
    let results = places
        .into_iter()
        .map(|place| {
            place?;
            let tx = recovered.next().expect("one result a decoded transaction");
            tx.map_err(|_| PoolError::InvalidSender)
        })
        .collect();
    (results, recoveries)
}

/// What ingress does to a raw transaction before it looks at state: the size cap, EIP-2718
/// decoding, the static rules of the next block (`now_secs`, `base_fee`) and sender recovery.
/// The transaction keeps `raw` as its encoding. Public for the fuzz target
/// (`fuzz/fuzz_targets/tx_ingress.rs`), which feeds it arbitrary bytes.
pub fn decode_and_check(
    validator: &Validator,
    raw: Bytes,
    now_secs: u64,
    base_fee: u64,
) -> Result<RecoveredTx, PoolError> {
    let tx = decode_checked(validator, raw, now_secs, base_fee)?;
    RecoveredTx::recover(tx).map_err(|_| PoolError::InvalidSender)
}

/// `decode_and_check` but the sender: what is checked before the pool is asked about the hash.
fn decode_checked(
    validator: &Validator,
    raw: Bytes,
    now_secs: u64,
    base_fee: u64,
) -> Result<DecodedTx, PoolError> {
    if raw.len() > super::TX_SIZE_MAX {
        return Err(PoolError::Oversized);
    }
    let len = raw.len();
    let tx = RecoveredTx::decode(raw).map_err(|e| PoolError::Decode(e.to_string()))?;
    validator.check_stateless(tx.tx(), len, now_secs, base_fee)?;
    Ok(tx)
}

/// A bounded label for the rejection counter.
fn reason_label(err: &PoolError) -> &'static str {
    match err {
        PoolError::NonceTooLow => "nonce_too_low",
        PoolError::InsufficientFunds => "insufficient_funds",
        PoolError::AlreadyKnown => "already_known",
        PoolError::ReplacementUnderpriced => "replacement_underpriced",
        PoolError::Underpriced | PoolError::FeeCapBelowBaseFee => "underpriced",
        PoolError::SenderLimit => "sender_limit",
        PoolError::PoolFull => "pool_full",
        PoolError::Busy => "busy",
        PoolError::EmptyAuthList => "empty_auth_list",
        PoolError::DiskLow => "disk_low",
        _ => "invalid",
    }
}

pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn request(raw: &'static [u8]) -> Request {
        let (reply, _) = oneshot::channel();
        Request {
            raw: Bytes::from_static(raw),
            forwarded: false,
            reply,
        }
    }

    fn queues(capacity: usize) -> (Sender<Request>, Sender<Request>, Queues) {
        let (local, local_rx) = crossbeam_channel::bounded(capacity);
        let (forwarded, forwarded_rx) = crossbeam_channel::bounded(capacity);
        let queues = Queues {
            local: local_rx,
            forwarded: forwarded_rx,
        };
        (local, forwarded, queues)
    }

    /// With both queues full, a batch is half ours and half forwarded; with one empty, the other
    /// fills it; once both are closed and drained, the workers stop.
    #[test]
    fn a_batch_takes_half_its_room_from_our_rpc_and_the_rest_from_forwarded() {
        let (local, forwarded, queues) = queues(64);
        for _ in 0..20 {
            local.send(request(b"rpc")).unwrap();
            forwarded.send(request(b"fwd")).unwrap();
        }
        let sources = |batch: &[Request]| {
            let rpc = batch.iter().filter(|r| &r.raw[..] == b"rpc").count();
            (rpc, batch.len() - rpc)
        };
        let batch = queues.fill(queues.first().unwrap(), 8);
        assert_eq!(sources(&batch), (4, 4));
        // 16 ours and 16 forwarded left: a forwarded-only tail once ours run out.
        let batch = queues.fill(queues.first().unwrap(), 40);
        assert_eq!(sources(&batch), (16, 16));
        forwarded.send(request(b"fwd")).unwrap();
        let batch = queues.fill(queues.first().unwrap(), 8);
        assert_eq!(sources(&batch), (0, 1));
        drop((local, forwarded));
        assert!(queues.first().is_none());
    }

    /// Forwarded transactions waiting do not hold back one from our RPC: it is in the next
    /// batch.
    #[test]
    fn our_rpc_does_not_wait_behind_forwarded_transactions() {
        let (local, forwarded, queues) = queues(1_024);
        for _ in 0..1_000 {
            forwarded.send(request(b"fwd")).unwrap();
        }
        local.send(request(b"rpc")).unwrap();
        let batch = queues.fill(queues.first().unwrap(), 512);
        assert_eq!(&batch[0].raw[..], b"rpc");
        assert_eq!(batch.len(), 512);
    }

    #[test]
    fn batches_are_admitted_in_the_order_they_were_taken() {
        let (tx, _forwarded, queues) = queues(8);
        let turns = Turns::default();
        let take_one = || {
            tx.send(request(b"raw")).unwrap();
            turns.take(&queues).unwrap().0
        };
        let (first, second) = (take_one(), take_one());
        let admitted = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let _turn = second.turn();
                admitted.store(true, Ordering::SeqCst);
            });
            thread::sleep(Duration::from_millis(50));
            assert!(
                !admitted.load(Ordering::SeqCst),
                "the second batch went first"
            );
            // The first worker died before admitting: its ticket still passes the turn on.
            drop(first);
        });
        assert!(admitted.load(Ordering::SeqCst));
        assert_eq!(*turns.admitted.lock(), 2);
    }
}
