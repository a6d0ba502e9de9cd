//! Transaction forwarding. A validator sends the transactions its RPC admitted to the leaders of
//! the next few rounds (by the leader schedule), whose ingress admits them like an RPC
//! submission, so the next leader has them. Without it a transaction would wait for the
//! validator that received it to lead.

use super::wire::{WireError, decode_all};
use alloy_primitives::{B256, Bytes};
use alloy_rlp::Encodable;
use kestrel_consensus::{
    Round,
    bft::{ValidatorIndex, ValidatorSet},
};
use kestrel_pipeline::mempool::{IngressHandle, PoolError, TxPool};
use kestrel_types::RecoveredTx;
use std::thread;

/// Transactions in one forwarded batch.
pub const FORWARD_TXS_MAX: usize = 1_024;
/// Bytes of transactions in one forwarded message: the transactions taken at once go out in as
/// many messages as it takes. Well under the smallest frame cap a receiver applies (a
/// validator's for full nodes, 4 MiB by default), which 1,024 transactions of up to 128 KiB
/// (`TX_SIZE_MAX`) would pass, and the receiver would close the connection on.
const FORWARD_MESSAGE_BYTES_MAX: usize = 1 << 20;
/// Forwarded transactions waiting for this validator's ingress; more are dropped (the sender
/// still holds them).
const FORWARD_QUEUE_MAX: usize = 16_384;
/// How often newly admitted transactions are forwarded to the next leaders.
const FORWARD_INTERVAL_MS: u64 = 50;
/// Transactions go to the leaders of the current and this many next rounds.
pub const FORWARD_LEADERS: u64 = 3;
/// A full node forwards to the leaders of the round after its head and this many next: its head
/// trails the validators' round by two or three rounds (a block is final once its child is
/// certified), so it looks further ahead than a validator.
pub const FULL_NODE_FORWARD_ROUNDS: u64 = FORWARD_LEADERS + 3;

pub const FORWARDED_TOTAL: &str = "kestrel_txforward_sent_total";
pub const RECEIVED_TOTAL: &str = "kestrel_txforward_received_total";

pub fn describe_metrics() {
    metrics::describe_counter!(
        FORWARDED_TOTAL,
        "Transactions forwarded to the other validators"
    );
    metrics::describe_counter!(
        RECEIVED_TOTAL,
        "Forwarded transactions received from other validators, by result (admitted, refused, busy, dropped)"
    );
}

/// The leaders of `round` and the `leaders` rounds after it, each once, without `me` (a full
/// node is none of them).
fn targets(
    set: &ValidatorSet,
    round: Round,
    me: Option<ValidatorIndex>,
    leaders: u64,
) -> Vec<ValidatorIndex> {
    let mut out = Vec::new();
    for r in round.0..=round.0 + leaders {
        let leader = set.leader(Round(r));
        if Some(leader) != me && !out.contains(&leader) {
            out.push(leader);
        }
    }
    out
}

fn encode(txs: &[RecoveredTx]) -> Vec<u8> {
    let raw: Vec<Bytes> = txs.iter().map(RecoveredTx::encoded).collect();
    let mut out = Vec::with_capacity(raw.length());
    raw.encode(&mut out);
    out
}

/// `txs` in order, as messages of at most `FORWARD_MESSAGE_BYTES_MAX` of transactions each (a
/// transaction larger than that alone in one).
fn messages(txs: &[RecoveredTx]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, tx) in txs.iter().enumerate() {
        let len = tx.encoded().len();
        if i > start && size + len > FORWARD_MESSAGE_BYTES_MAX {
            out.push(Bytes::from(encode(&txs[start..i])));
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < txs.len() {
        out.push(Bytes::from(encode(&txs[start..])));
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<Bytes>, WireError> {
    decode_all(bytes)
}

/// Forwarding state: when we last forwarded. What other nodes forwarded is not sent on (the
/// pool gives out only our clients' transactions, `TxPool::take_fresh`).
pub struct Forwarder {
    admitter: Admitter,
    last_ms: u64,
}

impl Forwarder {
    pub fn spawn(ingress: IngressHandle) -> std::io::Result<Self> {
        Ok(Self::with(Admitter::spawn(ingress)?))
    }

    /// Admits each forwarded transaction before `incoming` returns (see `Admitter::Inline`).
    pub fn inline(ingress: IngressHandle) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(Self::with(Admitter::Inline { ingress, runtime }))
    }

    fn with(admitter: Admitter) -> Self {
        Self {
            admitter,
            last_ms: 0,
        }
    }

    /// Every `FORWARD_INTERVAL_MS`: the transactions our RPC admitted since the last time, for
    /// the leaders of `round` and the `leaders` next rounds (they stay in our pool too: if those
    /// leaders fail, we propose them when we lead). Returns the targets and the messages to send
    /// each of them.
    pub fn outgoing(
        &mut self,
        now: u64,
        pool: &TxPool,
        set: &ValidatorSet,
        round: Round,
        me: Option<ValidatorIndex>,
        leaders: u64,
    ) -> Option<(Vec<ValidatorIndex>, Vec<Bytes>)> {
        if self.last_ms + FORWARD_INTERVAL_MS > now {
            return None;
        }
        self.last_ms = now;
        let txs = pool.take_fresh(FORWARD_TXS_MAX);
        if txs.is_empty() {
            return None;
        }
        metrics::counter!(FORWARDED_TOTAL).increment(txs.len() as u64);
        Some((targets(set, round, me, leaders), messages(&txs)))
    }

    /// Transactions another validator forwarded: admitted through our ingress.
    pub fn incoming(&self, bytes: &[u8]) -> Result<(), WireError> {
        for raw in decode(bytes)?.into_iter().take(FORWARD_TXS_MAX) {
            self.admitter.admit(raw);
        }
        Ok(())
    }

    pub fn shutdown(self) {
        self.admitter.shutdown();
    }
}

/// Feeds forwarded transactions to the ingress stage from a thread of its own, since ingress
/// answers asynchronously and the consensus driver must not wait for it.
enum Admitter {
    Thread {
        queue: tokio::sync::mpsc::Sender<Bytes>,
        thread: thread::JoinHandle<()>,
    },
    /// Waits for ingress's answer to each transaction: the deterministic simulation's driver
    /// must not race the ingress workers.
    Inline {
        ingress: IngressHandle,
        runtime: tokio::runtime::Runtime,
    },
}

/// Counts a forwarded transaction by what ingress did with it. `busy` (ingress's forwarded
/// queue full) is told apart from other refusals: it means the validator cannot keep up with
/// the forwarded traffic, and each such transaction is recovered later from a proposal, on the
/// vote path.
fn admitted(result: &Result<B256, PoolError>) {
    let result = match result {
        Ok(_) => "admitted",
        Err(PoolError::Busy) => "busy",
        Err(_) => "refused",
    };
    metrics::counter!(RECEIVED_TOTAL, "result" => result).increment(1);
}

impl Admitter {
    fn spawn(ingress: IngressHandle) -> std::io::Result<Self> {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<Bytes>(FORWARD_QUEUE_MAX);
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let thread = thread::Builder::new()
            .name("txforward".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // What has come in goes to ingress together, answered in order by one task,
                    // rather than a task and a wake-up a transaction.
                    let mut raws = Vec::new();
                    while rx.recv_many(&mut raws, FORWARD_TXS_MAX).await > 0 {
                        let (ingress, raws) = (ingress.clone(), std::mem::take(&mut raws));
                        tokio::spawn(async move {
                            for result in ingress.submit_all_forwarded(raws).await {
                                admitted(&result);
                            }
                        });
                    }
                })
            })?;
        Ok(Self::Thread { queue, thread })
    }

    /// Never blocks (but `Inline`): a full queue drops the transaction.
    fn admit(&self, raw: Bytes) {
        match self {
            Self::Thread { queue, .. } => {
                if queue.try_send(raw).is_err() {
                    metrics::counter!(RECEIVED_TOTAL, "result" => "dropped").increment(1);
                }
            }
            Self::Inline { ingress, runtime } => {
                admitted(&runtime.block_on(ingress.submit_forwarded(raw)))
            }
        }
    }

    /// Stops taking transactions and waits for the thread (it lets go of the ingress handle,
    /// so the ingress stage can shut down).
    fn shutdown(self) {
        if let Self::Thread { queue, thread } = self {
            drop(queue);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::test_tx::sign;
    use alloy_consensus::{TxEip1559, TxEnvelope};
    use alloy_primitives::{Address, TxKind};
    use kestrel_consensus::bft::ValidatorKey;

    /// A real signed transaction with `calldata_bytes` of calldata.
    fn tx(nonce: u64, calldata_bytes: usize) -> RecoveredTx {
        let tx = TxEip1559 {
            chain_id: 1337,
            nonce,
            gas_limit: 3_000_000,
            max_fee_per_gas: 2_000_000_000,
            to: TxKind::Call(Address::with_last_byte(1)),
            input: vec![1; calldata_bytes].into(),
            ..Default::default()
        };
        sign(tx, TxEnvelope::Eip1559)
    }

    #[test]
    fn large_transactions_are_forwarded_in_messages_under_the_cap_in_order() {
        let txs: Vec<_> = (0..24).map(|n| tx(n, 100_000)).collect();
        let sent = messages(&txs);
        assert_eq!(sent.len(), 3, "10 of 100 kB to a message");
        let mut received = Vec::new();
        for message in &sent {
            assert!(
                message.len() <= FORWARD_MESSAGE_BYTES_MAX + 64,
                "{}",
                message.len()
            );
            received.extend(decode(message).unwrap());
        }
        let expected: Vec<_> = txs.iter().map(RecoveredTx::encoded).collect();
        assert_eq!(received, expected);
        // Small ones travel together.
        let small: Vec<_> = (0..1_024).map(|n| tx(n, 0)).collect();
        assert_eq!(messages(&small).len(), 1);
        assert!(messages(&[]).is_empty());
    }

    #[test]
    fn forwarding_goes_to_the_next_leaders_only() {
        let set = ValidatorSet::new(
            (1..=7u8)
                .map(|i| {
                    let key = secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap();
                    (ValidatorKey::new(key).id(), 1)
                })
                .collect(),
        )
        .unwrap();
        let round = Round(10);
        let expected: Vec<_> = (10..=13).map(|r| set.leader(Round(r))).collect();
        let me = set.leader(Round(11));
        let others = targets(&set, round, Some(me), 3);
        assert_eq!(
            others,
            expected
                .iter()
                .copied()
                .filter(|l| *l != me)
                .collect::<Vec<_>>()
        );
        assert_eq!(others.len(), 3, "3 of the 6 others");
        // A full node is none of them: every leader of those rounds.
        assert_eq!(targets(&set, round, None, 3), expected);
    }
}
