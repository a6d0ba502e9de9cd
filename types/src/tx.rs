//! Transactions whose sender has been recovered. Only [`RecoveredTx::recover`] makes one, so a value
//! of this type always carries a checked signature (the typestate that keeps unverified input out of
//! the mempool and blocks).
//!
//! Keep what you received: a transaction keeps the EIP-2718 bytes it was decoded from, and the
//! transactions root, block bodies, payloads and forwarding use them instead of encoding it again.
//! They are its canonical encoding: the decoder refuses any other (leading zeros, non-minimal
//! lengths, trailing bytes), checked on every decode in debug builds and by the property test
//! below.

use alloy_consensus::{Transaction, TxEnvelope, transaction::SignerRecoverable};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes};
use std::sync::Arc;

/// Why raw bytes could not become a [`RecoveredTx`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("rlp: {0}")]
    Decode(String),
    #[error("invalid sender: {0}")]
    Signature(String),
}

/// A transaction decoded from its EIP-2718 bytes, its signature not yet checked. Holds the bytes
/// it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTx {
    tx: TxEnvelope,
    raw: Bytes,
}

impl DecodedTx {
    pub fn tx(&self) -> &TxEnvelope {
        &self.tx
    }
    /// The EIP-2718 bytes it was decoded from.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// A transaction built here (signed by a test, a bench or the load generator): its encoding is
/// the canonical one by construction.
impl From<TxEnvelope> for DecodedTx {
    fn from(tx: TxEnvelope) -> Self {
        let raw = tx.encoded_2718().into();
        Self { tx, raw }
    }
}

/// A signed transaction with its recovered sender, its hash and its EIP-2718 encoding.
/// Cheap to clone: the body is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredTx(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    tx: TxEnvelope,
    sender: Address,
    raw: Bytes,
}

impl RecoveredTx {
    /// Decodes an EIP-2718 transaction (as `eth_sendRawTransaction` and block bodies carry it),
    /// keeping `raw`.
    pub fn decode(raw: Bytes) -> Result<DecodedTx, TxError> {
        let mut buf = &raw[..];
        let tx = TxEnvelope::decode_2718(&mut buf).map_err(|e| TxError::Decode(e.to_string()))?;
        if !buf.is_empty() {
            return Err(TxError::Decode("trailing bytes".into()));
        }
        debug_assert_eq!(
            tx.encoded_2718(),
            raw[..],
            "the decoder accepted a non-canonical encoding"
        );
        Ok(DecodedTx { tx, raw })
    }

    /// Recovers the sender from the signature (secp256k1, ~30 µs).
    pub fn recover(tx: impl Into<DecodedTx>) -> Result<Self, TxError> {
        let DecodedTx { tx, raw } = tx.into();
        let sender = tx
            .recover_signer()
            .map_err(|e| TxError::Signature(e.to_string()))?;
        Ok(Self(Arc::new(Inner { tx, sender, raw })))
    }

    /// Builds from a sender recovered earlier (e.g. read back from our own database).
    pub fn new_unchecked(tx: impl Into<DecodedTx>, sender: Address) -> Self {
        let DecodedTx { tx, raw } = tx.into();
        Self(Arc::new(Inner { tx, sender, raw }))
    }

    pub fn tx(&self) -> &TxEnvelope {
        &self.0.tx
    }
    pub fn sender(&self) -> Address {
        self.0.sender
    }
    pub fn hash(&self) -> B256 {
        *self.0.tx.tx_hash()
    }
    pub fn nonce(&self) -> u64 {
        self.0.tx.nonce()
    }
    pub fn gas_limit(&self) -> u64 {
        self.0.tx.gas_limit()
    }
    pub fn encoded_len(&self) -> usize {
        self.0.raw.len()
    }
    /// The EIP-2718 encoding it arrived as (a reference count, no copy).
    pub fn encoded(&self) -> Bytes {
        self.0.raw.clone()
    }
    /// The same, borrowed.
    pub fn raw(&self) -> &[u8] {
        &self.0.raw
    }
}

/// The transactions root of a block holding `txs`, from the bytes they arrived as.
pub fn transactions_root(txs: &[RecoveredTx]) -> B256 {
    alloy_trie::root::ordered_trie_root_with_encoder(txs, |tx, buf| buf.extend_from_slice(tx.raw()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEip2930, TxLegacy};
    use alloy_eips::eip2930::{AccessList, AccessListItem};
    use alloy_primitives::{Signature, TxKind, U256};
    use proptest::prelude::*;

    fn sign<T: SignableTransaction<Signature>>(tx: T, key: u8) -> alloy_consensus::Signed<T> {
        let secret = secp256k1::SecretKey::from_slice(&[key.max(1); 32]).unwrap();
        let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
        let (rec, bytes) = secp256k1::SECP256K1
            .sign_ecdsa_recoverable(&msg, &secret)
            .serialize_compact();
        tx.into_signed(Signature::from_bytes_and_parity(
            &bytes,
            i32::from(rec) != 0,
        ))
    }

    /// A signed transaction of one of three types, fields from `seed`.
    fn envelope(kind: u8, key: u8, nonce: u64, value: u128, input: Vec<u8>) -> TxEnvelope {
        let to = TxKind::Call(Address::with_last_byte(key));
        let access_list = AccessList(vec![AccessListItem {
            address: Address::with_last_byte(7),
            storage_keys: vec![B256::with_last_byte(key)],
        }]);
        match kind % 3 {
            0 => TxEnvelope::Legacy(sign(
                TxLegacy {
                    chain_id: Some(1337),
                    nonce,
                    gas_price: 1_000_000_000,
                    gas_limit: 21_000 + input.len() as u64 * 16,
                    to,
                    value: U256::from(value),
                    input: input.into(),
                },
                key,
            )),
            1 => TxEnvelope::Eip2930(sign(
                TxEip2930 {
                    chain_id: 1337,
                    nonce,
                    gas_price: 7,
                    gas_limit: 50_000,
                    to,
                    value: U256::from(value),
                    access_list,
                    input: input.into(),
                },
                key,
            )),
            _ => TxEnvelope::Eip1559(sign(
                TxEip1559 {
                    chain_id: 1337,
                    nonce,
                    gas_limit: 50_000,
                    max_fee_per_gas: u128::from(nonce) + 2,
                    max_priority_fee_per_gas: 1,
                    to,
                    value: U256::from(value),
                    access_list,
                    input: input.into(),
                },
                key,
            )),
        }
    }

    /// Decoding accepts only the canonical encoding: whatever it accepts encodes back to the
    /// very bytes it was given, so keeping those bytes is the same as encoding again.
    fn assert_canonical(raw: &[u8]) {
        if let Ok(decoded) = RecoveredTx::decode(Bytes::copy_from_slice(raw)) {
            assert_eq!(decoded.tx().encoded_2718(), raw);
            assert_eq!(decoded.raw()[..], raw[..]);
        }
    }

    #[test]
    fn keeps_the_bytes_it_was_decoded_from() {
        let tx = envelope(2, 3, 5, 10, vec![1, 2, 3]);
        let raw: Bytes = tx.encoded_2718().into();
        let recovered = RecoveredTx::recover(RecoveredTx::decode(raw.clone()).unwrap()).unwrap();
        assert_eq!(recovered.encoded(), raw);
        assert_eq!(recovered.encoded_len(), raw.len());
        assert_eq!(recovered.hash(), alloy_primitives::keccak256(&raw));
        // Built from an envelope, the same bytes.
        assert_eq!(RecoveredTx::recover(tx).unwrap(), recovered);
    }

    #[test]
    fn refuses_non_canonical_encodings() {
        let raw = envelope(0, 3, 5, 10, vec![]).encoded_2718();
        // Trailing bytes.
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(RecoveredTx::decode(trailing.into()).is_err());
        // The list length on two bytes although one holds it (a legacy transfer's list is
        // 56-255 bytes long: 0xf8, length).
        assert_eq!(raw[0], 0xf8);
        let mut long = vec![0xf9, 0x00, raw[1]];
        long.extend_from_slice(&raw[2..]);
        assert!(RecoveredTx::decode(long.into()).is_err());
        // The nonce (5, the byte 0x05) with a leading zero: 0x82 0x00 0x05.
        assert_eq!(raw[2], 0x05);
        let mut zero = vec![0xf8, raw[1] + 2, 0x82, 0x00, 0x05];
        zero.extend_from_slice(&raw[3..]);
        assert!(RecoveredTx::decode(zero.into()).is_err());
    }

    #[test]
    fn transactions_root_matches_alloys() {
        let txs: Vec<_> = (0..130u64)
            .map(|i| RecoveredTx::recover(envelope(i as u8, 9, i, 1, vec![])).unwrap())
            .collect();
        let envelopes: Vec<_> = txs.iter().map(|t| t.tx().clone()).collect();
        assert_eq!(
            transactions_root(&txs),
            alloy_consensus::proofs::calculate_transaction_root(&envelopes)
        );
        assert_eq!(transactions_root(&[]), alloy_trie::EMPTY_ROOT_HASH);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// decode(raw) re-encodes to raw, for valid encodings and for any single-byte change,
        /// insertion or removal in them that still decodes.
        #[test]
        fn decode_then_encode_is_identity(
            kind in 0u8..3,
            key in 1u8..=254, // [0xff; 32] is past the curve order: no key
            nonce in any::<u64>(),
            value in any::<u128>(),
            input in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let raw = envelope(kind, key, nonce, value, input).encoded_2718();
            assert_canonical(&raw);
            let i = at.index(raw.len());
            let mut changed = raw.clone();
            changed[i] = byte;
            assert_canonical(&changed);
            let mut inserted = raw.clone();
            inserted.insert(i, byte);
            assert_canonical(&inserted);
            let mut removed = raw.clone();
            removed.remove(i);
            assert_canonical(&removed);
        }
    }
}
