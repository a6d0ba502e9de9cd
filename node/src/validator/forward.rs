//! Transaction forwarding. A validator sends the transactions its RPC admitted to the leaders of
//! the next few rounds (by the leader schedule), whose ingress admits them like an RPC
//! submission, so the next leader has them. Without it a transaction would wait for the
//! validator that received it to lead.

use super::wire::{WireError, decode_all};
use alloy_primitives::Bytes;
use alloy_rlp::Encodable;
use kestrel_consensus::{
    Round,
    bft::{ValidatorIndex, ValidatorSet},
};
use kestrel_pipeline::mempool::IngressHandle;
use kestrel_types::RecoveredTx;
use std::thread;

/// Transactions in one forwarded batch.
pub const FORWARD_TXS_MAX: usize = 1_024;
/// Forwarded transactions waiting for this validator's ingress; more are dropped (the sender
/// still holds them).
const FORWARD_QUEUE_MAX: usize = 16_384;

pub const FORWARDED_TOTAL: &str = "kestrel_txforward_sent_total";
pub const RECEIVED_TOTAL: &str = "kestrel_txforward_received_total";

pub fn describe_metrics() {
    metrics::describe_counter!(
        FORWARDED_TOTAL,
        "Transactions forwarded to the other validators"
    );
    metrics::describe_counter!(
        RECEIVED_TOTAL,
        "Forwarded transactions received from other validators, by result (admitted, refused, dropped)"
    );
}

/// The leaders of `round` and the `leaders` rounds after it, each once, without `me`.
pub fn targets(
    set: &ValidatorSet,
    round: Round,
    me: ValidatorIndex,
    leaders: u64,
) -> Vec<ValidatorIndex> {
    let mut out = Vec::new();
    for r in round.0..=round.0 + leaders {
        let leader = set.leader(Round(r));
        if leader != me && !out.contains(&leader) {
            out.push(leader);
        }
    }
    out
}

pub fn encode(txs: &[RecoveredTx]) -> Vec<u8> {
    let raw: Vec<Bytes> = txs.iter().map(RecoveredTx::encoded).collect();
    let mut out = Vec::with_capacity(raw.length());
    raw.encode(&mut out);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<Bytes>, WireError> {
    decode_all(bytes)
}

/// Feeds forwarded transactions to the ingress stage from a thread of its own, since ingress
/// answers asynchronously and the consensus driver must not wait for it.
pub struct Admitter {
    queue: tokio::sync::mpsc::Sender<Bytes>,
    thread: thread::JoinHandle<()>,
}

impl Admitter {
    pub fn spawn(ingress: IngressHandle) -> std::io::Result<Self> {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<Bytes>(FORWARD_QUEUE_MAX);
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let thread = thread::Builder::new()
            .name("txforward".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(raw) = rx.recv().await {
                        let ingress = ingress.clone();
                        tokio::spawn(async move {
                            let result = match ingress.submit(raw).await {
                                Ok(_) => "admitted",
                                Err(_) => "refused",
                            };
                            metrics::counter!(RECEIVED_TOTAL, "result" => result).increment(1);
                        });
                    }
                })
            })?;
        Ok(Self { queue, thread })
    }

    /// Never blocks: a full queue drops the transaction.
    pub fn admit(&self, raw: Bytes) {
        if self.queue.try_send(raw).is_err() {
            metrics::counter!(RECEIVED_TOTAL, "result" => "dropped").increment(1);
        }
    }

    /// Stops taking transactions and waits for the thread (it lets go of the ingress handle,
    /// so the ingress stage can shut down).
    pub fn shutdown(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_consensus::bft::ValidatorKey;

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
        let targets = targets(&set, round, me, 3);
        assert_eq!(
            targets,
            expected
                .into_iter()
                .filter(|l| *l != me)
                .collect::<Vec<_>>()
        );
        assert_eq!(targets.len(), 3, "3 of the 6 others");
    }
}
