//! A block's payload: what a leader proposes besides the consensus block, i.e. everything
//! execution needs that the block does not carry. The block gives height, round, timestamp and the
//! delayed execution result; consensus names the payload by the hash of its encoding.

use alloy_primitives::{Address, B256, Bytes, keccak256};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use crossbeam_channel::{Receiver, Sender};
use kestrel_consensus::bft::Block;
use kestrel_pipeline::{
    import::{ImportError, recover_senders},
    stages::ParentFees,
};
use kestrel_types::{Proposal, RecoveredTx};
use std::{sync::Arc, thread};

/// Most transactions a payload may carry: a bound on work per block besides gas.
pub const PAYLOAD_TXS_MAX: usize = 50_000;
/// Received payloads waiting for the decoder thread; beyond it a proposal is dropped (its round
/// times out, or its block arrives later by a certificate and sync).
pub const DECODE_QUEUE_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed payload: {0}")]
    Rlp(#[from] alloy_rlp::Error),
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    #[error("{0} transactions, more than {PAYLOAD_TXS_MAX}")]
    TooManyTxs(usize),
    #[error("transactions' gas {gas} exceeds the block gas limit {limit}")]
    GasOverLimit { gas: u64, limit: u64 },
    #[error("transaction {index}: {source}")]
    Tx {
        index: usize,
        source: kestrel_types::TxError,
    },
    #[error(transparent)]
    Sender(#[from] ImportError),
}

/// The encoding: an RLP list, transactions as their EIP-2718 bytes.
#[derive(RlpEncodable, RlpDecodable)]
struct PayloadWire {
    beneficiary: Address,
    gas_limit: u64,
    base_fee: u64,
    txs: Vec<Bytes>,
}

/// A decoded payload with its encoding and hash. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payload(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    beneficiary: Address,
    gas_limit: u64,
    base_fee: u64,
    gas_committed: u64,
    txs: Vec<RecoveredTx>,
    bytes: Bytes,
    hash: B256,
}

impl Payload {
    /// A leader's payload from transactions it took from its pool.
    pub fn build(
        beneficiary: Address,
        gas_limit: u64,
        base_fee: u64,
        txs: Vec<RecoveredTx>,
    ) -> Self {
        let wire = PayloadWire {
            beneficiary,
            gas_limit,
            base_fee,
            txs: txs.iter().map(RecoveredTx::encoded).collect(),
        };
        let mut bytes = Vec::with_capacity(wire.length());
        wire.encode(&mut bytes);
        Self::from_parts(wire, txs, bytes.into())
    }

    /// A payload received from a peer. Recovers every sender (~30 µs a transaction, on all
    /// cores for large payloads), so a block whose payload decodes is one every validator can
    /// execute identically.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        let mut buf = &bytes[..];
        let wire = PayloadWire::decode(&mut buf)?;
        if !buf.is_empty() {
            return Err(PayloadError::TrailingBytes(buf.len()));
        }
        if wire.txs.len() > PAYLOAD_TXS_MAX {
            return Err(PayloadError::TooManyTxs(wire.txs.len()));
        }
        let envelopes = wire
            .txs
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                RecoveredTx::decode(raw).map_err(|source| PayloadError::Tx { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let txs = recover_senders(&envelopes)?;
        let payload = Self::from_parts(wire, txs, bytes);
        if payload.0.gas_committed > payload.0.gas_limit {
            return Err(PayloadError::GasOverLimit {
                gas: payload.0.gas_committed,
                limit: payload.0.gas_limit,
            });
        }
        Ok(payload)
    }

    fn from_parts(wire: PayloadWire, txs: Vec<RecoveredTx>, bytes: Bytes) -> Self {
        // Saturating: a hostile payload's sum must not wrap below the limit check.
        let gas_committed = txs
            .iter()
            .fold(0u64, |sum, tx| sum.saturating_add(tx.gas_limit()));
        Self(Arc::new(Inner {
            beneficiary: wire.beneficiary,
            gas_limit: wire.gas_limit,
            base_fee: wire.base_fee,
            gas_committed,
            txs,
            hash: keccak256(&bytes),
            bytes,
        }))
    }

    pub fn hash(&self) -> B256 {
        self.0.hash
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    pub fn base_fee(&self) -> u64 {
        self.0.base_fee
    }

    pub fn tx_count(&self) -> usize {
        self.0.txs.len()
    }

    pub fn txs(&self) -> &[RecoveredTx] {
        &self.0.txs
    }

    /// What the next block's base fee follows from.
    pub fn fees(&self) -> ParentFees {
        ParentFees {
            gas_limit: self.0.gas_limit,
            gas_committed: self.0.gas_committed,
            base_fee: self.0.base_fee,
        }
    }

    /// The proposal the execution stage runs for the finalized `block` carrying this payload.
    pub fn proposal(&self, block: &Block) -> Proposal {
        debug_assert_eq!(block.payload_hash, self.0.hash);
        Proposal {
            number: block.height,
            round: block.round.0,
            timestamp_ms: block.timestamp_ms,
            beneficiary: self.0.beneficiary,
            gas_limit: self.0.gas_limit,
            base_fee: self.0.base_fee,
            gas_committed: self.0.gas_committed,
            txs: self.0.txs.clone(),
            delayed_result: block.delayed_result,
        }
    }
}

/// Why a received payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("payload hash differs from the block's")]
    Hash,
    #[error(transparent)]
    Invalid(#[from] PayloadError),
}

/// Decodes received payloads on a thread of its own: sender recovery of a 10k-transaction
/// payload takes a few hundred milliseconds, during which the consensus thread must keep
/// voting, aggregating and timing out. `T` is what the caller needs back with the result.
pub struct Decoder<T> {
    requests: Sender<(T, B256, Bytes)>,
    results: Receiver<(T, Result<Payload, Rejected>)>,
    thread: thread::JoinHandle<()>,
}

impl<T: Send + 'static> Decoder<T> {
    pub fn spawn() -> std::io::Result<Self> {
        let (requests, inbox) = crossbeam_channel::bounded::<(T, B256, Bytes)>(DECODE_QUEUE_MAX);
        let (done, results) = crossbeam_channel::bounded(DECODE_QUEUE_MAX);
        let thread = thread::Builder::new()
            .name("payload-decode".into())
            .spawn(move || {
                for (tag, hash, bytes) in inbox {
                    let result = if keccak256(&bytes) == hash {
                        Payload::decode(bytes).map_err(Rejected::from)
                    } else {
                        Err(Rejected::Hash)
                    };
                    if done.send((tag, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests,
            results,
            thread,
        })
    }

    /// Queues the payload that should hash to `hash`; false (never blocks) when the queue is full.
    pub fn submit(&self, tag: T, hash: B256, bytes: Bytes) -> bool {
        self.requests.try_send((tag, hash, bytes)).is_ok()
    }

    /// Decoded payloads, in submission order.
    pub fn results(&self) -> &Receiver<(T, Result<Payload, Rejected>)> {
        &self.results
    }

    /// Stops the thread: it finishes the payload at hand and exits.
    pub fn shutdown(self) {
        let Self {
            requests,
            results,
            thread,
        } = self;
        drop((requests, results));
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_checks_the_hash_and_decodes_off_thread() {
        let decoder = Decoder::spawn().unwrap();
        let payload = Payload::build(Address::ZERO, 30_000_000, 7, Vec::new());
        assert!(decoder.submit(1, payload.hash(), payload.bytes().clone()));
        assert!(decoder.submit(2, B256::ZERO, payload.bytes().clone()));
        assert!(decoder.submit(3, keccak256(b"\xc0"), Bytes::from_static(b"\xc0")));
        let (tag, result) = decoder.results().recv().unwrap();
        assert_eq!((tag, result.unwrap().base_fee()), (1, 7));
        let (tag, result) = decoder.results().recv().unwrap();
        assert!(tag == 2 && matches!(result, Err(Rejected::Hash)));
        let (tag, result) = decoder.results().recv().unwrap();
        assert!(tag == 3 && matches!(result, Err(Rejected::Invalid(_))));
        decoder.shutdown();
    }
}
