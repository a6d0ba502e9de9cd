//! A block's payload: what a leader proposes besides the consensus block, i.e. everything
//! execution needs that the block does not carry. The block gives height, round, timestamp and the
//! delayed execution result; consensus names the payload by the hash of its encoding.

use alloy_primitives::{Address, B256, Bytes, keccak256};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use crossbeam_channel::{Receiver, Sender};
use kestrel_consensus::bft::Block;

/// Counter of senders taken from the pool (here, not in `metrics.rs`: the fuzz crate builds
/// this file on its own).
pub const SENDERS_REUSED: &str = "kestrel_consensus_payload_senders_reused_total";
use kestrel_pipeline::{
    SENDER_RECOVERIES,
    import::{ImportError, recover_senders_reusing},
    mempool::{BlockRules, PoolError, TxPool, check_static},
};
use kestrel_types::{BLOCK_TXS_MAX, ChainSpec, OrderedBlock, ParentFees, RecoveredTx};
use std::{sync::Arc, thread};

/// Received payloads waiting for the decoder thread; beyond it a proposal is dropped (its round
/// times out, or its block arrives later by a certificate and sync).
pub const DECODE_QUEUE_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed payload: {0}")]
    Rlp(#[from] alloy_rlp::Error),
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    #[error("{0} transactions, more than {BLOCK_TXS_MAX}")]
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
    /// Execution would drop it without charging anyone: the block space would be free.
    #[error("transaction {index} breaks the static rules: {source}")]
    StaticRule { index: usize, source: PoolError },
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
    /// Senders recovered when this validator decoded it (the others came from its pool; none
    /// for a payload it built).
    senders_recovered: usize,
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
        Self::decode_reusing(bytes, None)
    }

    /// As [`Payload::decode`], but a transaction whose sender `pool` knows (by hash) is not
    /// recovered again: the pool's, which this validator's own ingress recovered from the same
    /// signed bytes (the hash covers the signature); those recovered here are left in the
    /// pool's cache (`recover_senders_reusing`). Under load nearly every transaction of a
    /// proposal reached this validator first (submitted to it or forwarded), so this halves
    /// the sender recoveries of a validator that is not the leader.
    pub fn decode_reusing(bytes: Bytes, pool: Option<&TxPool>) -> Result<Self, PayloadError> {
        let mut buf = &bytes[..];
        let wire = PayloadWire::decode(&mut buf)?;
        if !buf.is_empty() {
            return Err(PayloadError::TrailingBytes(buf.len()));
        }
        if wire.txs.len() > BLOCK_TXS_MAX {
            return Err(PayloadError::TooManyTxs(wire.txs.len()));
        }
        let envelopes = wire
            .txs
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                RecoveredTx::decode(raw.clone())
                    .map_err(|source| PayloadError::Tx { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = envelopes.len();
        let (txs, recovered) = recover_senders_reusing(envelopes, pool)?;
        metrics::counter!(SENDERS_REUSED).increment((count - recovered) as u64);
        metrics::counter!(SENDER_RECOVERIES, "path" => "payload").increment(recovered as u64);
        let mut payload = Self::from_parts(wire, txs, bytes);
        Arc::get_mut(&mut payload.0)
            .expect("not shared yet")
            .senders_recovered = recovered;
        if payload.0.gas_committed > payload.0.gas_limit {
            return Err(PayloadError::GasOverLimit {
                gas: payload.0.gas_committed,
                limit: payload.0.gas_limit,
            });
        }
        Ok(payload)
    }

    /// Checks every transaction against the static rules of a block of `spec` stamped
    /// `timestamp_ms` with this payload's gas limit and base fee (`mempool::check_static`).
    /// A proposal failing this is not voted for: under delayed execution its failing
    /// transactions would take block space, and raise the base fee, without paying.
    pub fn check_static(&self, spec: &ChainSpec, timestamp_ms: u64) -> Result<(), PayloadError> {
        let rules = BlockRules::new(spec, timestamp_ms / 1000, self.0.gas_limit, self.0.base_fee);
        for (index, tx) in self.0.txs.iter().enumerate() {
            check_static(tx.tx(), &rules)
                .map_err(|source| PayloadError::StaticRule { index, source })?;
        }
        Ok(())
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
            senders_recovered: 0,
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

    /// How many of its senders decoding it recovered (the rest came from the pool).
    pub fn senders_recovered(&self) -> usize {
        self.0.senders_recovered
    }

    /// What the next block's base fee follows from.
    pub fn fees(&self) -> ParentFees {
        ParentFees {
            gas_limit: self.0.gas_limit,
            gas_committed: self.0.gas_committed,
            base_fee: self.0.base_fee,
        }
    }

    /// What the execution stage runs for the finalized `block` carrying this payload.
    pub fn ordered_block(&self, block: &Block) -> OrderedBlock {
        debug_assert_eq!(block.payload_hash, self.0.hash);
        OrderedBlock {
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

impl Rejected {
    /// The `reason` label of `kestrel_consensus_payloads_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Hash => "hash",
            Rejected::Invalid(PayloadError::StaticRule { .. }) => "static_rule",
            Rejected::Invalid(_) => "invalid",
        }
    }
}

/// Decodes received payloads on a thread of its own: sender recovery of a 10k-transaction
/// payload takes a few hundred milliseconds, during which the consensus thread must keep
/// voting, aggregating and timing out. `T` is what the caller needs back with the result.
pub struct Decoder<T> {
    mode: Mode<T>,
    results: Receiver<(T, Result<Payload, Rejected>)>,
}

enum Mode<T> {
    Thread {
        requests: Sender<Request<T>>,
        thread: thread::JoinHandle<()>,
    },
    /// Decodes in `submit`, on the caller's thread, so the result is ready (in `results`) when
    /// `submit` returns: what the deterministic simulation needs.
    Inline {
        spec: Arc<ChainSpec>,
        pool: Arc<TxPool>,
        done: Sender<(T, Result<Payload, Rejected>)>,
    },
}

/// A proposal's payload to decode: the caller's tag, the hash the block names, the bytes and
/// the block's timestamp (which picks the fork of its static rules).
struct Request<T> {
    tag: T,
    hash: B256,
    bytes: Bytes,
    timestamp_ms: u64,
}

impl<T: Send + 'static> Decoder<T> {
    /// Decodes payloads of blocks of `spec` and checks their transactions' static rules; the
    /// senders of transactions `pool` holds are taken from it ([`Payload::decode_reusing`]).
    pub fn spawn(spec: Arc<ChainSpec>, pool: Arc<TxPool>) -> std::io::Result<Self> {
        let (requests, inbox) = crossbeam_channel::bounded::<Request<T>>(DECODE_QUEUE_MAX);
        let (done, results) = crossbeam_channel::bounded(DECODE_QUEUE_MAX);
        let thread = thread::Builder::new()
            .name("payload-decode".into())
            .spawn(move || {
                for request in inbox {
                    if done.send(request.decode(&spec, &pool)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            mode: Mode::Thread { requests, thread },
            results,
        })
    }

    /// A decoder that decodes within `submit` (see `Mode::Inline`).
    pub fn inline(spec: Arc<ChainSpec>, pool: Arc<TxPool>) -> Self {
        let (done, results) = crossbeam_channel::bounded(DECODE_QUEUE_MAX);
        Self {
            mode: Mode::Inline { spec, pool, done },
            results,
        }
    }

    /// Queues the payload that should hash to `hash`, of a block stamped `timestamp_ms`; false
    /// (never blocks) when the queue is full.
    pub fn submit(&self, tag: T, hash: B256, bytes: Bytes, timestamp_ms: u64) -> bool {
        let request = Request {
            tag,
            hash,
            bytes,
            timestamp_ms,
        };
        match &self.mode {
            Mode::Thread { requests, .. } => requests.try_send(request).is_ok(),
            Mode::Inline { spec, pool, done } => done.try_send(request.decode(spec, pool)).is_ok(),
        }
    }

    /// Decoded payloads, in submission order.
    pub fn results(&self) -> &Receiver<(T, Result<Payload, Rejected>)> {
        &self.results
    }

    /// Stops the thread: it finishes the payload at hand and exits.
    pub fn shutdown(self) {
        let Self { mode, results } = self;
        drop(results);
        if let Mode::Thread { requests, thread } = mode {
            drop(requests);
            let _ = thread.join();
        }
    }
}

impl<T> Request<T> {
    fn decode(self, spec: &ChainSpec, pool: &TxPool) -> (T, Result<Payload, Rejected>) {
        let result = if keccak256(&self.bytes) == self.hash {
            Payload::decode_reusing(self.bytes, Some(pool))
                .and_then(|p| p.check_static(spec, self.timestamp_ms).map(|()| p))
                .map_err(Rejected::from)
        } else {
            Err(Rejected::Hash)
        };
        (self.tag, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::test_tx::sign;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEip7702, TxEnvelope};
    use alloy_primitives::{Signature, TxKind, U256};

    /// A signed transfer of 1 wei from the test key, at `nonce`.
    fn transfer(nonce: u64) -> RecoveredTx {
        sign(
            TxEip1559 {
                chain_id: 1337,
                nonce,
                gas_limit: 21_000,
                max_fee_per_gas: 2_000_000_000,
                to: TxKind::Call(Address::with_last_byte(1)),
                value: U256::from(1),
                ..Default::default()
            },
            TxEnvelope::Eip1559,
        )
    }

    #[test]
    fn a_payload_with_an_empty_authorization_list_is_refused() {
        let base_fee = 1_000_000_000;
        let transfer = transfer(0);
        // The attack of issue 19: 25M gas of block space, dropped unpaid at execution.
        let empty_auth = sign(
            TxEip7702 {
                chain_id: 1337,
                nonce: 1,
                gas_limit: 25_000_000,
                max_fee_per_gas: 20 * u128::from(base_fee),
                max_priority_fee_per_gas: 10 * u128::from(base_fee),
                to: Address::with_last_byte(2),
                ..Default::default()
            },
            TxEnvelope::Eip7702,
        );
        let decoder = Decoder::spawn(Arc::new(ChainSpec::dev()), Arc::new(TxPool::new())).unwrap();
        let now_ms = 1_800_000_000_000;
        let good = Payload::build(Address::ZERO, 200_000_000, base_fee, vec![transfer.clone()]);
        let bad = Payload::build(
            Address::ZERO,
            200_000_000,
            base_fee,
            vec![transfer, empty_auth],
        );
        assert!(decoder.submit(1, good.hash(), good.bytes().clone(), now_ms));
        assert!(decoder.submit(2, bad.hash(), bad.bytes().clone(), now_ms));
        let (_, result) = decoder.results().recv().unwrap();
        assert_eq!(result.unwrap().tx_count(), 1);
        let (_, result) = decoder.results().recv().unwrap();
        assert!(
            matches!(
                result,
                Err(Rejected::Invalid(PayloadError::StaticRule {
                    index: 1,
                    source: PoolError::EmptyAuthList
                }))
            ),
            "{result:?}"
        );
        decoder.shutdown();
    }

    #[test]
    fn decoder_checks_the_hash_and_decodes_off_thread() {
        let decoder = Decoder::spawn(Arc::new(ChainSpec::dev()), Arc::new(TxPool::new())).unwrap();
        let payload = Payload::build(Address::ZERO, 30_000_000, 7, Vec::new());
        assert!(decoder.submit(1, payload.hash(), payload.bytes().clone(), 0));
        assert!(decoder.submit(2, B256::ZERO, payload.bytes().clone(), 0));
        assert!(decoder.submit(3, keccak256(b"\xc0"), Bytes::from_static(b"\xc0"), 0));
        let (tag, result) = decoder.results().recv().unwrap();
        assert_eq!((tag, result.unwrap().base_fee()), (1, 7));
        let (tag, result) = decoder.results().recv().unwrap();
        assert!(tag == 2 && matches!(result, Err(Rejected::Hash)));
        let (tag, result) = decoder.results().recv().unwrap();
        assert!(tag == 3 && matches!(result, Err(Rejected::Invalid(_))));
        decoder.shutdown();
    }

    /// The decoder takes from the pool the senders of the transactions it holds, pooled or in
    /// flight, and recovers none of them; a transaction with other bytes (the same one signed
    /// with the other parity) has another hash, so it is recovered and gets its own sender; a
    /// broken signature still rejects the payload, also when the pool holds the transaction it
    /// was made from.
    #[test]
    fn a_payload_of_pooled_transactions_is_decoded_without_recovery() {
        let txs: Vec<RecoveredTx> = (0..5).map(transfer).collect();
        let pool = Arc::new(TxPool::new());
        // 0 and 1 in another leader's proposal; 2 and 3 in one that failed, back in the pool.
        pool.on_proposed(1, &txs[..2]);
        pool.on_proposed(1, &txs[2..4]);
        pool.on_abandoned(&txs[2..4]);
        let decoder = Decoder::inline(Arc::new(ChainSpec::dev()), pool);
        let resigned = |tx: &RecoveredTx, sig: fn(Signature) -> Signature| {
            let TxEnvelope::Eip1559(signed) = tx.tx().clone() else {
                unreachable!()
            };
            let sig = sig(*signed.signature());
            RecoveredTx::new_unchecked(
                TxEnvelope::Eip1559(signed.strip_signature().into_signed(sig)),
                Address::ZERO,
            )
        };
        let decode = |txs: Vec<RecoveredTx>| {
            let payload = Payload::build(Address::ZERO, 30_000_000, 1_000_000_000, txs);
            assert!(decoder.submit(
                (),
                payload.hash(),
                payload.bytes().clone(),
                1_800_000_000_000
            ));
            decoder.results().try_recv().unwrap().1
        };

        let pooled = decode(txs[..4].to_vec()).unwrap();
        assert_eq!(pooled.senders_recovered(), 0);
        assert_eq!(pooled.txs(), &txs[..4]);

        let other_parity = resigned(&txs[1], |s| Signature::new(s.r(), s.s(), !s.v()));
        assert_ne!(other_parity.hash(), txs[1].hash());
        let mixed = vec![txs[0].clone(), other_parity, txs[4].clone()];
        let decoded = decode(mixed.clone()).unwrap();
        assert_eq!(
            decoded.senders_recovered(),
            2,
            "the unknown one and the re-signed one"
        );
        assert_eq!(decoded.txs()[0].sender(), txs[0].sender());
        assert_ne!(decoded.txs()[1].sender(), txs[1].sender());
        assert_eq!(decoded.txs()[2].sender(), txs[4].sender());
        // Proposed again (its round failed; it never entered the pool here): the senders
        // recovered the first time are remembered.
        let again = decode(mixed).unwrap();
        assert_eq!(again.senders_recovered(), 0);
        assert_eq!(again.txs(), decoded.txs());

        let broken = resigned(&txs[2], |s| Signature::new(s.r(), U256::ZERO, s.v()));
        let err = decode(vec![txs[2].clone(), broken]).unwrap_err();
        assert!(
            matches!(
                err,
                Rejected::Invalid(PayloadError::Sender(ImportError::Signature {
                    index: 1,
                    ..
                }))
            ),
            "{err}"
        );
    }

    /// Senders the pool knows are taken from it, the rest recovered, with the same payload as a
    /// full decode; a bad signature is reported at its index in the payload.
    #[test]
    fn known_senders_are_reused_and_the_rest_recovered() {
        let txs: Vec<RecoveredTx> = (0..4).map(transfer).collect();
        let payload = Payload::build(Address::ZERO, 30_000_000, 1_000_000_000, txs.clone());
        let full = Payload::decode(payload.bytes().clone()).unwrap();
        // The pool knows the even ones.
        let pool = TxPool::new();
        pool.remember_senders([&txs[0], &txs[2]]);
        let reused = Payload::decode_reusing(payload.bytes().clone(), Some(&pool)).unwrap();
        assert_eq!(reused.senders_recovered(), 2);
        assert_eq!(reused.txs(), full.txs());
        assert!(reused.txs().iter().all(|tx| tx.sender() == txs[0].sender()));
        // The ones recovered are the pool's now.
        let again = Payload::decode_reusing(payload.bytes().clone(), Some(&pool)).unwrap();
        assert_eq!(again.senders_recovered(), 0);

        // Transaction 3's signature broken (s = 0): found while 0 and 2 come from the pool.
        let mut broken = PayloadWire::decode(&mut &payload.bytes()[..]).unwrap();
        let TxEnvelope::Eip1559(signed) = txs[3].tx().clone() else {
            unreachable!()
        };
        let bad_sig = Signature::new(signed.signature().r(), U256::ZERO, false);
        let forged = TxEnvelope::Eip1559(signed.strip_signature().into_signed(bad_sig));
        broken.txs[3] = RecoveredTx::new_unchecked(forged, Address::ZERO).encoded();
        let mut bytes = Vec::new();
        broken.encode(&mut bytes);
        let pool = TxPool::new();
        pool.remember_senders([&txs[0], &txs[2]]);
        let err = Payload::decode_reusing(bytes.into(), Some(&pool)).unwrap_err();
        assert!(
            matches!(
                err,
                PayloadError::Sender(ImportError::Signature { index: 3, .. })
            ),
            "{err}"
        );
    }
}
